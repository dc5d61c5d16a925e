//! Fault injection (issue 13): PID reuse across a full wrap, a ring buffer
//! that overflows, the agent stopped mid-storm, hostile and abandoned
//! connections, a Watch client that stops reading (the faults that involve
//! containerd are in `faults_containerd.rs`, which the containerd matrix
//! runs against every version). Each test compares pidmap's answers with the ground truth
//! (`pidmap_tests::checker`: /proc and the containers made in containerd)
//! and fails on any wrong answer, at every moment: where a fault makes
//! pidmap lose kernel events, it must answer `pending` what may have changed
//! until it has repaired its table (and say so in `Status`), never a stale
//! answer. The tests measure the time until every answer is right again and
//! count the `pending` ones meanwhile. Every figure is printed (run with
//! `--nocapture`); RELIABILITY.md quotes them. Run as root with
//! `--test-threads=1`.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use pidmap::{
    Config,
    api::proto::{self, pidmap_client::PidmapClient},
};
use pidmap_tests::{
    AgentProcess, ChildGuard, TestAgent,
    checker::{self, Checker, Currency, Run, client},
    load::Storm,
    private_socket, proc_comm, proc_start_time,
    wire::{
        CONTINUATION, DATA, END_HEADERS, HEADERS, PREFACE, SETTINGS, frame, grpc_request_headers,
        hpack,
    },
};
use tonic::{Code, transport::Channel};

/// Generous bound for things that must happen; never a timing check.
const EVENTUALLY: Duration = Duration::from_secs(20);

fn seed() -> u64 {
    0x2545_f491_4f6c_dd1d ^ u64::from(std::process::id())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Processes a fault test follows by name: some started while the fault
/// lasted (they must resolve running with their true start time), some
/// that exited meanwhile (they must not read running).
#[derive(Default)]
struct Targets {
    started: Vec<(ChildGuard, u64)>,
    ended: Vec<(u32, u64)>,
}

impl Targets {
    fn sleeper() -> (ChildGuard, u64) {
        let child = ChildGuard::spawn(Command::new("/bin/sleep").arg("1000"));
        let start = proc_start_time(child.pid()).expect("the sleeper's start time");
        (child, start)
    }

    /// Starts one follower now.
    fn start_one(&mut self) {
        self.started.push(Self::sleeper());
    }

    /// Ends `victim` now (killed and reaped).
    fn end(&mut self, (mut child, start): (ChildGuard, u64)) {
        let pid = child.pid();
        let _ = child.0.kill();
        child.wait();
        self.ended.push((pid, start));
    }

    /// What pidmap answers wrong about them now; and how many answers were
    /// `pending` while it said its table was not current (not wrong: not
    /// answers yet).
    async fn wrong(&self, c: &mut PidmapClient<Channel>) -> (Vec<String>, u64) {
        let before = Currency::of(c).await;
        let mut answers = Vec::new();
        for (child, start) in &self.started {
            answers.push((
                true,
                child.pid(),
                *start,
                resolve(c, child.pid(), Some(*start)).await,
            ));
        }
        for &(pid, start) in &self.ended {
            answers.push((false, pid, start, resolve(c, pid, Some(start)).await));
        }
        let unconfirmed_now = Currency::unconfirmed_between(before, Currency::of(c).await);
        let (mut wrong, mut unconfirmed) = (Vec::new(), 0);
        for (started, pid, start, answer) in answers {
            let Ok(r) = answer else {
                wrong.push(format!("pid {pid}: no answer"));
                continue;
            };
            if unconfirmed_now && r.state == proto::ProcessState::Pending as i32 {
                unconfirmed += 1;
                continue;
            }
            let running = r.state == proto::ProcessState::Running as i32;
            if started {
                if !running || r.start_time != Some(start) || r.comm != proc_comm(pid) {
                    wrong.push(format!("started meanwhile, pid {pid}: {r:?}"));
                }
            } else if running || r.state == proto::ProcessState::Pending as i32 {
                wrong.push(format!("exited meanwhile, pid {pid}: {r:?}"));
            }
        }
        (wrong, unconfirmed)
    }
}

async fn resolve(
    c: &mut PidmapClient<Channel>,
    pid: u32,
    start_time: Option<u64>,
) -> Result<proto::ProcessRecord, tonic::Status> {
    c.resolve(proto::ResolveRequest {
        pid: pid.into(),
        start_time,
    })
    .await
    .map(tonic::Response::into_inner)
}

/// How a repair went.
struct Repair {
    /// From the end of the fault to the first round with every answer
    /// right and none `pending`.
    after: Duration,
    /// `pending` answers (the agent not yet current) in the rounds before
    /// that.
    pending_meanwhile: u64,
    rounds: u64,
}

/// One checker round (over all of /proc, plus the targets), its wrong
/// answers recorded: returns how many answers were `pending` while the
/// agent said its table was not current.
async fn checked_round(
    checker: &mut Checker,
    c: &mut PidmapClient<Channel>,
    run: &Run,
    targets: &Targets,
) -> u64 {
    let mut unconfirmed = 0;
    match checker.round(c).await {
        Ok(round) => {
            unconfirmed += round.unconfirmed;
            for what in round.wrong {
                run.wrong(what);
            }
        }
        Err(status) => run.wrong(format!("a round failed: {status}")),
    }
    let (wrong, pending) = targets.wrong(c).await;
    for what in wrong {
        run.wrong(what);
    }
    unconfirmed + pending
}

/// Checker rounds until one has every answer right and none `pending`; at
/// most [`EVENTUALLY`]. Every wrong answer, before or after, is recorded:
/// while the agent repairs, it must answer `pending`, not stale.
async fn until_repaired(
    checker: &mut Checker,
    c: &mut PidmapClient<Channel>,
    run: &Run,
    targets: &Targets,
    since: Instant,
) -> Repair {
    let mut pending_meanwhile = 0;
    let mut rounds = 0;
    loop {
        rounds += 1;
        let wrong_before = run.wrong_answers().len();
        let pending = checked_round(checker, c, run, targets).await;
        if pending == 0 && run.wrong_answers().len() == wrong_before {
            return Repair {
                after: since.elapsed(),
                pending_meanwhile,
                rounds,
            };
        }
        pending_meanwhile += pending;
        if since.elapsed() > EVENTUALLY {
            run.wrong(format!(
                "still answering pending {EVENTUALLY:?} after the fault ended"
            ));
            return Repair {
                after: since.elapsed(),
                pending_meanwhile,
                rounds,
            };
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Checker rounds for `period` (at least one); every wrong answer is
/// recorded.
async fn right_for(
    checker: &mut Checker,
    c: &mut PidmapClient<Channel>,
    run: &Run,
    targets: &Targets,
    period: Duration,
) {
    let started = Instant::now();
    loop {
        checked_round(checker, c, run, targets).await;
        if started.elapsed() >= period {
            return;
        }
        tokio::time::sleep(checker::ROUND).await;
    }
}

// ---------------------------------------------------------------------------

/// Forks (`(exit 0) &`, reaped at once) until the pid counter has wrapped
/// and come back to `$1`, at most `$2` times; prints `FORKS WRAPPED LAST`.
/// A shell's fork is the cheapest a script gets (a small process to copy).
const ADVANCE_PIDS: &str = r#"
target=$1; max=$2; n=0; first=; last=0; wrapped=0; p=0
while [ $n -lt $max ]; do
    (exit 0) & p=$!
    wait $p
    n=$((n + 1))
    [ -z "$first" ] && first=$p
    [ $p -lt $last ] && wrapped=1
    last=$p
    if [ $wrapped = 1 ] && [ $p -ge $target ]; then break; fi
done
echo "$n $wrapped $p"
"#;

/// Old processes whose pids the wrap hands to new ones.
const OLD_PROCESSES: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid_reuse_across_a_full_wrap_never_answers_an_old_key_with_the_new_process() {
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .expect("pid_max");
    // A grace window longer than the test: old keys should read exited.
    let agent = TestAgent::start(Config {
        exit_grace_seconds: 600,
        ..Config::default()
    })
    .await;
    let socket = agent.socket().to_path_buf();
    let mut c = client(&socket).await;
    let run = Run::new(seed());

    // Old processes: alive and resolved, then killed and reaped.
    let mut old = Vec::new();
    for _ in 0..OLD_PROCESSES {
        old.push(Targets::sleeper());
    }
    for (child, start) in &old {
        let r = resolve(&mut c, child.pid(), Some(*start))
            .await
            .expect("resolve");
        assert_eq!(r.state, proto::ProcessState::Running as i32, "{r:?}");
    }
    let old: Vec<(u32, u64)> = old
        .into_iter()
        .map(|(child, start)| {
            let pid = child.pid();
            drop(child);
            (pid, start)
        })
        .collect();

    // The wrap, with the checker comparing all of /proc meanwhile: the pid
    // counter goes once around, to just before the first old pid.
    let checking = tokio::spawn(checker::check_rounds(socket.clone(), Arc::clone(&run)));
    let started = Instant::now();
    let target = old[0].0.saturating_sub(2).to_string();
    let max = (2 * pid_max).to_string();
    let advanced = tokio::task::spawn_blocking(move || {
        Command::new("sh")
            .args(["-c", ADVANCE_PIDS, "advance-pids", &target, &max])
            .stdin(Stdio::null())
            .output()
    })
    .await
    .expect("join")
    .expect("run the pid advancer");
    let wrap_time = started.elapsed();
    let line = String::from_utf8_lossy(&advanced.stdout);
    let words: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(words.len(), 3, "advancer said {line:?}");
    let (forks, wrapped) = (words[0], words[1] == 1);
    assert!(wrapped, "the pid counter never wrapped in {forks} forks");
    // New processes, on the pids the old ones had (those nobody else took).
    let new: Vec<(ChildGuard, u64)> = (0..OLD_PROCESSES).map(|_| Targets::sleeper()).collect();
    run.stop();
    checking.await.expect("checker");

    let (mut lookups, mut exited, mut unknown) = (0u64, 0u64, 0u64);
    for &(pid, start) in &old {
        lookups += 1;
        let r = resolve(&mut c, pid, Some(start)).await.expect("resolve");
        match proto::ProcessState::try_from(r.state) {
            Ok(proto::ProcessState::Exited) if r.start_time == Some(start) => exited += 1,
            Ok(proto::ProcessState::Unknown) => unknown += 1,
            _ => run.wrong(format!("old key ({pid}, {start}) answered {r:?}")),
        }
    }
    let mut reused = 0;
    for (child, new_start) in &new {
        let pid = child.pid();
        let Some(&(_, old_start)) = old.iter().find(|(p, _)| *p == pid) else {
            continue;
        };
        reused += 1;
        assert_ne!(*new_start, old_start, "pid {pid}: the same process?");
        for start_time in [Some(*new_start), None] {
            lookups += 1;
            let r = resolve(&mut c, pid, start_time).await.expect("resolve");
            let right = r.state == proto::ProcessState::Running as i32
                && r.start_time == Some(*new_start)
                && r.comm == proc_comm(pid)
                && r.ppid == Some(std::process::id());
            if !right {
                run.wrong(format!(
                    "new process ({pid}, {new_start}) asked with {start_time:?} answered {r:?}"
                ));
            }
        }
    }
    let (mut checker, targets) = (Checker::new(Arc::clone(&run)), Targets::default());
    right_for(&mut checker, &mut c, &run, &targets, Duration::ZERO).await;
    drop(new);

    run.report(&format!(
        "pid wrap: {forks} forks in {:.1} s took the pid counter once around pid_max \
         {pid_max}; {} old keys (exited {exited}, unknown {unknown}); {reused} of their pids \
         now held by new processes of ours; {lookups} targeted lookups",
        wrap_time.as_secs_f64(),
        old.len()
    ));
    assert!(
        reused > 0,
        "no old pid came round to a new process of ours (others took them all)"
    );
    run.assert_no_wrong_answers();
    agent.stop().await;
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smallest_ring_overflowing_under_an_exec_storm_is_repaired() {
    let agent = TestAgent::start(Config {
        ring_buffer_bytes: 4096,
        ..Config::default()
    })
    .await;
    let mut c = client(agent.socket()).await;
    let run = Run::new(seed());
    let mut checker = Checker::new(Arc::clone(&run));
    let mut targets = Targets::default();
    right_for(&mut checker, &mut c, &run, &targets, Duration::ZERO).await;
    let victims: Vec<_> = (0..10).map(|_| Targets::sleeper()).collect();
    let metrics = agent.state().metrics();
    let before = metrics.snapshot();

    // 10,000 execs from two threads; followers start and exit amid them,
    // while rounds keep asking.
    let storm = Storm::start(2, 10_000);
    let mut victims = victims.into_iter();
    let mut pending_during = 0;
    let mut rounds_during = 0;
    while storm.spawned() < 10_000 {
        if let Some(v) = victims.next() {
            targets.end(v);
            targets.start_one();
        }
        rounds_during += 1;
        pending_during += checked_round(&mut checker, &mut c, &run, &targets).await;
    }
    let spawned = storm.join();
    let storm_end = Instant::now();
    let repair = until_repaired(&mut checker, &mut c, &run, &targets, storm_end).await;
    right_for(&mut checker, &mut c, &run, &targets, Duration::from_secs(1)).await;
    let after = metrics.snapshot();

    run.report(&format!(
        "ring overflow: 4096-byte ring, {spawned} execs; {} events lost, {} rescans; \
         {pending_during} answers pending (not current) in {rounds_during} rounds during \
         the storm; repaired {} after the storm ({} pending answers in {} rounds before); \
         {} processes started and {} exited during it followed",
        after.lost_events - before.lost_events,
        after.rescans - before.rescans,
        ms(repair.after),
        repair.pending_meanwhile,
        repair.rounds,
        targets.started.len(),
        targets.ended.len()
    ));
    assert!(
        after.lost_events > before.lost_events,
        "the 4 KiB ring never overflowed: nothing was tested"
    );
    run.assert_no_wrong_answers();
    drop(targets);
    agent.stop().await;
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_stopped_for_ten_seconds_mid_storm_repairs_its_table() {
    let socket = private_socket();
    let agent = AgentProcess::start(&socket, &[]);
    let mut c = client(&socket).await;
    let run = Run::new(seed());
    let mut checker = Checker::new(Arc::clone(&run));
    let mut targets = Targets::default();
    right_for(&mut checker, &mut c, &run, &targets, Duration::ZERO).await;
    let status = |c: &mut PidmapClient<Channel>| {
        let mut c = c.clone();
        async move {
            c.status(proto::StatusRequest {})
                .await
                .expect("status")
                .into_inner()
        }
    };
    let before = status(&mut c).await;
    let victims: Vec<_> = (0..10).map(|_| Targets::sleeper()).collect();
    let rss_before = agent.rss_kib().unwrap_or(0);

    let storm = Storm::start(2, u64::MAX);
    tokio::time::sleep(Duration::from_secs(1)).await;
    agent.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    // While it is stopped: processes start and exit, unseen.
    for v in victims {
        tokio::time::sleep(Duration::from_millis(900)).await;
        targets.end(v);
        targets.start_one();
    }
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed())).await;
    let spawned_while_stopped = storm.spawned();
    agent.signal(libc::SIGCONT);
    let continued = Instant::now();
    let repair = until_repaired(&mut checker, &mut c, &run, &targets, continued).await;
    let spawned = storm.finish();
    right_for(&mut checker, &mut c, &run, &targets, Duration::from_secs(1)).await;
    let after = status(&mut c).await;
    let rss_after = agent.rss_kib().unwrap_or(0);

    run.report(&format!(
        "SIGSTOP: agent stopped {:.1} s amid a storm ({spawned_while_stopped} execs by then, \
         {spawned} in all); {} events lost, {} rescans; repaired {} after SIGCONT, still \
         storming ({} pending answers in {} rounds before); RSS {} before, {} after",
        continued.duration_since(stopped).as_secs_f64(),
        after.events_lost - before.events_lost,
        after.rescans - before.rescans,
        ms(repair.after),
        repair.pending_meanwhile,
        repair.rounds,
        mib(rss_before),
        mib(rss_after)
    ));
    assert!(after.ready, "{after:?}");
    run.assert_no_wrong_answers();
    drop(targets);
    drop(agent);
}

// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------

/// How many files `pid` holds open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Sends `bytes` on a fresh connection and reads until the agent closes it
/// or 5 s pass; returns how many bytes it answered.
fn send_raw(socket: &Path, bytes: &[u8]) -> usize {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(bytes);
    let mut answered = 0;
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        answered += n;
    }
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_abandoned_connections_leave_the_agent_serving_in_bounded_memory() {
    let socket = private_socket();
    // This test is about abandoned connections and the idle timeout, so
    // this one process may hold 200 of them; the per-peer bound (64 by
    // default) is proven in tests/tests/api.rs.
    let agent = AgentProcess::start(
        &socket,
        &[
            "--idle-timeout-seconds",
            "2",
            "--max-connections-per-peer",
            "256",
        ],
    );
    let run = Run::new(seed());
    let mut checker = Checker::new(Arc::clone(&run));
    let mut c = client(&socket).await;
    let targets = Targets::default();
    right_for(&mut checker, &mut c, &run, &targets, Duration::ZERO).await;
    let rss_before = agent.rss_kib().unwrap_or(0);
    let fds_before = open_fds(agent.pid());
    let started = Instant::now();
    let hostile = {
        let socket = socket.clone();
        let run = Arc::clone(&run);
        tokio::task::spawn_blocking(move || {
            // Random bytes: 100 connections × 64 KiB.
            for _ in 0..100 {
                let junk: Vec<u8> = (0..64 * 1024).map(|_| run.random(256) as u8).collect();
                send_raw(&socket, &junk);
            }
            run.count("connections of random bytes", 100);
            // A frame header that claims 16 MiB - 1 and sends 64 KiB of it.
            let mut huge_frame = PREFACE.to_vec();
            huge_frame.extend(frame(SETTINGS, 0, 0, &[]));
            huge_frame.extend([0xff, 0xff, 0xff, DATA, 0, 0, 0, 0, 1]);
            huge_frame.extend(vec![0u8; 64 * 1024]);
            send_raw(&socket, &huge_frame);
            // A gRPC message that claims 2 GiB.
            let mut huge_message = PREFACE.to_vec();
            huge_message.extend(frame(SETTINGS, 0, 0, &[]));
            huge_message.extend(frame(
                HEADERS,
                END_HEADERS,
                1,
                &grpc_request_headers("/pidmap.v1.Pidmap/ResolveBatch"),
            ));
            let mut body = vec![0, 0x7f, 0xff, 0xff, 0xff];
            body.extend(vec![0x0au8; 16 * 1024]);
            huge_message.extend(frame(DATA, 0, 1, &body));
            let answered = send_raw(&socket, &huge_message);
            run.count("2 GiB length prefix: bytes answered", answered as u64);
            // A header flood: 1 MiB of CONTINUATION frames that never end.
            let mut flood = PREFACE.to_vec();
            flood.extend(frame(SETTINGS, 0, 0, &[]));
            flood.extend(frame(
                HEADERS,
                0,
                3,
                &grpc_request_headers("/pidmap.v1.Pidmap/Status"),
            ));
            // 140 fields of 110 bytes: under the 16 KiB frame size.
            let chunk = hpack(&[("x-flood", &"f".repeat(100))]).repeat(140);
            for _ in 0..(1 << 20) / chunk.len() {
                flood.extend(frame(CONTINUATION, 0, 3, &chunk));
            }
            send_raw(&socket, &flood);
            // 2,000 connections opened and dropped at once.
            for _ in 0..2_000 {
                drop(UnixStream::connect(&socket));
            }
            run.count("connections opened and dropped", 2_000);
        })
    };
    // Meanwhile real clients are served.
    while !hostile.is_finished() {
        right_for(&mut checker, &mut c, &run, &targets, Duration::ZERO).await;
        tokio::time::sleep(checker::ROUND).await;
    }
    hostile.await.expect("hostile connections");
    // Connections their clients closed count until the agent reads their
    // end; wait for that, or the idle ones below could meet the limit.
    let reaped = Instant::now();
    while open_fds(agent.pid()) > fds_before + 8 && reaped.elapsed() < EVENTUALLY {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 200 idle connections (below the limit of 256) abandoned open, and a
    // batch far over the request-size limit (refused, not buffered): the
    // agent keeps serving, and closes the idle ones after the idle timeout.
    let idle: Vec<UnixStream> = (0..200)
        .filter_map(|_| UnixStream::connect(&socket).ok())
        .collect();
    let mut fresh = client(&socket).await;
    let huge: Vec<_> = (1..=100_000)
        .map(|pid| proto::ResolveRequest {
            pid,
            start_time: None,
        })
        .collect();
    let refused = fresh
        .resolve_batch(proto::ResolveBatchRequest { requests: huge })
        .await
        .expect_err("a 100,000-pid batch");
    assert!(
        matches!(
            refused.code(),
            Code::ResourceExhausted | Code::OutOfRange | Code::InvalidArgument
        ),
        "{refused}; the agent's log:\n{}",
        agent.log()
    );
    let served_while_idle = Duration::from_millis(500);
    right_for(&mut checker, &mut fresh, &run, &targets, served_while_idle).await;
    let idle_since = Instant::now();
    let closed = tokio::task::spawn_blocking(move || {
        idle.into_iter()
            .filter_map(|mut s| {
                s.set_read_timeout(Some(EVENTUALLY)).ok()?;
                let mut buf = [0u8; 256];
                // EOF (or a reset) once the agent closes the connection.
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => return Some(()),
                        Ok(_) => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                        Err(_) => return Some(()),
                    }
                }
            })
            .count()
    })
    .await
    .expect("idle connections");
    let idle_closed_after = idle_since.elapsed();
    let rss_after = agent.rss_kib().unwrap_or(0);
    let peak = pidmap_tests::proc_status_kib(agent.pid(), "VmHWM").unwrap_or(0);

    run.report(&format!(
        "hostile connections: {:.1} s; 200 idle connections, {closed} closed by the agent \
         {:.1} s after the last checks (idle timeout 2 s); 100,000-pid batch refused with {:?}; agent RSS {} \
         before, {} after (peak {})",
        started.elapsed().as_secs_f64(),
        idle_closed_after.as_secs_f64(),
        refused.code(),
        mib(rss_before),
        mib(rss_after),
        mib(peak)
    ));
    assert_eq!(closed, 200, "idle connections left open");
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS grew from {} to {}",
        mib(rss_before),
        mib(rss_after)
    );
    run.assert_no_wrong_answers();
    drop(agent);
}

// ---------------------------------------------------------------------------

/// Issue 13, row 2: a Watch client that subscribes, stops reading while
/// 20,000 processes churn, then reads must learn that it lost changes: its
/// stream ends with RESOURCE_EXHAUSTED, never OK. (Before the fix it got
/// every buffered change, then OK: the reason was dropped when it did not fit.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_client_that_stops_reading_is_cut_off_with_resource_exhausted() {
    let agent = TestAgent::start(Config::default()).await;
    let mut c = client(agent.socket()).await;
    let mut stream = c
        .watch(proto::WatchRequest {})
        .await
        .expect("watch")
        .into_inner();
    let started = Instant::now();
    let churned = Storm::start(2, 20_000).join();
    let churn_time = started.elapsed();
    let mut events = 0u64;
    let ended = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => events += 1,
                Ok(None) => return Code::Ok,
                Err(status) => return status.code(),
            }
        }
    })
    .await
    .expect("the stream ended");
    println!(
        "slow Watch client: {churned} processes churned in {:.1} s while it did not read; \
         then it read {events} events and the stream ended with {ended:?}",
        churn_time.as_secs_f64()
    );
    assert_eq!(ended, Code::ResourceExhausted, "after {events} events");
    agent.stop().await;
}
