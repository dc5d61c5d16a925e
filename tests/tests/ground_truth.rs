//! Ground truth (issue 9): for minutes, churn the node — containers started,
//! exec'd into, killed and deleted in a real containerd (kubelet's cgroup
//! layout and labels), processes that rename themselves, orphans under a
//! subreaper, a containerd SIGKILL and restart, one agent restart — while a
//! checker that uses none of pidmap's code compares every answer pidmap
//! gives over its socket with /proc (start time, comm, ppid, cgroup) and
//! with the containers the churn made in containerd.
//!
//! Each round the checker reads every process in /proc, asks pidmap about
//! all of them in one `ResolveBatch` (with their start times), and reads
//! /proc again; a process that changed between the two reads is counted
//! inconclusive, every other answer must equal the truth. `pending` is
//! accepted only while containerd is not synced (before/after the batch,
//! by `Status`) — or, counted apart, for a container created less than a
//! second before (its metadata in flight). A ppid may lag a re-parenting by
//! 100 ms. Kernel threads' comm is not compared: procfs makes a kworker's
//! name up from the work it is doing when read. A process in `do_exit`
//! (`PF_EXITING`) may answer running or exited: the kernel reports the exit
//! as `do_exit` begins, /proc shows the process alive until it ends.
//!
//! It fails on any wrong answer, prints the counts and the time from each
//! kind of event to a correct answer, and takes `PIDMAP_GROUND_TRUTH_SECS`
//! (default 120) seconds. Run as root with `--test-threads=1`.

use std::{
    collections::{BTreeMap, HashMap},
    io::BufRead as _,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use pidmap::{
    api::proto::{self, pidmap_client::PidmapClient},
    Config,
};
use pidmap_tests::{
    containerd::{ContainerSpec, Containerd, RunningContainer},
    oracle::{self, ProcTruth},
    private_socket, ChildGuard, PidGuard, TestAgent,
};
use tonic::transport::Channel;

/// Pause between checker rounds.
const ROUND: Duration = Duration::from_millis(50);
/// How long a ppid may lag a re-parenting.
const PPID_LAG: Duration = Duration::from_millis(100);
/// How long after its start a container's processes may be `pending` while
/// containerd is synced (its metadata is being fetched).
const METADATA_IN_FLIGHT: Duration = Duration::from_secs(1);
/// An event whose answer is not right after this is a wrong answer.
const EVENT_DEADLINE: Duration = Duration::from_secs(5);
const CONTAINER_NAMESPACE: &str = "k8s.io";

fn duration() -> Duration {
    let secs = std::env::var("PIDMAP_GROUND_TRUTH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    Duration::from_secs(secs)
}

/// A container the churn made, by cgroup path.
#[derive(Debug, Clone)]
struct Made {
    id: String,
    pod_name: String,
    started: Instant,
}

/// What should become true of a process, and since when.
#[derive(Debug, Clone)]
enum Want {
    Container(String),
    Comm(String),
    Ppid(u32),
}

#[derive(Debug, Clone)]
struct Expectation {
    kind: &'static str,
    pid: u32,
    start_time: u64,
    want: Want,
    since: Instant,
}

/// What the churn and the checker share.
#[derive(Default)]
struct Shared {
    /// Containers alive in containerd, by cgroup path.
    made: Mutex<HashMap<String, Made>>,
    expectations: Mutex<Vec<Expectation>>,
    latencies: Mutex<BTreeMap<&'static str, Vec<Duration>>>,
    counts: Mutex<BTreeMap<&'static str, u64>>,
    wrong: Mutex<Vec<String>>,
    stop: AtomicBool,
    /// Set while the agent restarts (its socket is away).
    agent_away: AtomicBool,
    seed: AtomicU64,
}

impl Shared {
    fn count(&self, what: &'static str, n: u64) {
        *self.counts.lock().unwrap().entry(what).or_default() += n;
    }

    fn wrong(&self, what: String) {
        let mut wrong = self.wrong.lock().unwrap();
        if wrong.len() < 50 {
            eprintln!("WRONG: {what}");
        }
        wrong.push(what);
    }

    fn expect(&self, kind: &'static str, pid: u32, want: Want) {
        if let Some(t) = ProcTruth::read(pid) {
            self.expectations.lock().unwrap().push(Expectation {
                kind,
                pid,
                start_time: t.start_time,
                want,
                since: Instant::now(),
            });
        }
    }

    /// A small deterministic random number generator (xorshift).
    fn random(&self, below: u64) -> u64 {
        let mut x = self.seed.load(Ordering::Relaxed) | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed.store(x, Ordering::Relaxed);
        x % below.max(1)
    }
}

async fn connect(socket: &std::path::Path) -> Option<PidmapClient<Channel>> {
    pidmap::cli::client::connect(socket).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_equals_the_ground_truth_under_churn() {
    let total = duration();
    let ctrd = Arc::new(Containerd::start());
    let socket = private_socket();
    let config = Config {
        containerd_socket: ctrd.socket().to_path_buf(),
        containerd_max_backoff_ms: 200,
        socket: socket.clone(),
        ..Config::default()
    };
    let mut agent = Some(TestAgent::start(config.clone()).await);
    let shared = Arc::new(Shared {
        seed: AtomicU64::new(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id())),
        ..Shared::default()
    });
    let started = Instant::now();

    // Host-side churn: a process renaming itself, and orphans made under a
    // child subreaper (which reaps them once they exit).
    let renamer = spawn_lines(
        "import ctypes, sys, time\n\
         libc = ctypes.CDLL(None)\n\
         i = 0\n\
         while True:\n\
         \x20   i += 1\n\
         \x20   name = 'rn-%d' % i\n\
         \x20   libc.prctl(15, name.encode(), 0, 0, 0)\n\
         \x20   print(name, flush=True)\n\
         \x20   time.sleep(0.2)\n",
    );
    let reaper = spawn_lines(
        "import ctypes, signal, subprocess, time\n\
         ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)\n\
         signal.signal(signal.SIGCHLD, signal.SIG_IGN)\n\
         while True:\n\
         \x20   out = subprocess.run(['sh', '-c', 'sleep 20 </dev/null >/dev/null 2>&1 & echo $!'],\n\
         \x20                        capture_output=True, text=True).stdout.strip()\n\
         \x20   print(out, flush=True)\n\
         \x20   time.sleep(0.4)\n",
    );
    let (renamer_pid, reaper_pid) = (renamer.pid(), reaper.pid());
    let orphans = Arc::new(Mutex::new(Vec::<PidGuard>::new()));
    let host_churn = {
        let shared = Arc::clone(&shared);
        let orphans = Arc::clone(&orphans);
        std::thread::spawn(move || host_lines(renamer, reaper, &shared, &orphans))
    };

    // Container churn, on a thread of its own (the fixture blocks).
    let churn = {
        let ctrd = Arc::clone(&ctrd);
        let shared = Arc::clone(&shared);
        tokio::task::spawn_blocking(move || container_churn(&ctrd, &shared, total))
    };
    let checker = tokio::spawn(check_rounds(socket.clone(), Arc::clone(&shared)));
    let poller = tokio::spawn(poll_expectations(socket.clone(), Arc::clone(&shared)));

    // One agent restart, two thirds in.
    tokio::time::sleep(total * 2 / 3).await;
    shared.agent_away.store(true, Ordering::Release);
    let stopping = Instant::now();
    if let Some(a) = agent.take() {
        a.stop().await;
    }
    agent = Some(TestAgent::start(config.clone()).await);
    let restart = stopping.elapsed();
    shared.agent_away.store(false, Ordering::Release);
    shared
        .latencies
        .lock()
        .unwrap()
        .entry("agent restart → ready")
        .or_default()
        .push(restart);

    tokio::time::sleep(total.saturating_sub(started.elapsed())).await;
    shared.stop.store(true, Ordering::Release);
    let containers = churn.await.expect("container churn");
    checker.await.expect("checker");
    poller.await.expect("poller");
    let _ = host_churn.join();
    drop(orphans);
    drop(containers);
    if let Some(a) = agent.take() {
        a.stop().await;
    }

    report(&shared, started.elapsed(), renamer_pid, reaper_pid);
    let wrong = shared.wrong.lock().unwrap();
    assert!(
        wrong.is_empty(),
        "{} wrong answers; the first: {:#?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
}

/// A python script whose stdout lines the test reads.
fn spawn_lines(script: &str) -> ChildGuard {
    ChildGuard::spawn(
        Command::new("python3")
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
    )
}

/// Turns the renamer's and the reaper's lines into expectations.
fn host_lines(
    mut renamer: ChildGuard,
    mut reaper: ChildGuard,
    shared: &Shared,
    orphans: &Mutex<Vec<PidGuard>>,
) {
    let renamer_pid = renamer.pid();
    let reaper_pid = reaper.pid();
    let names = std::io::BufReader::new(renamer.0.stdout.take().expect("stdout"));
    let orphan_lines = std::io::BufReader::new(reaper.0.stdout.take().expect("stdout"));
    std::thread::scope(|s| {
        s.spawn(|| {
            for line in names.lines() {
                let Ok(name) = line else { break };
                if shared.stop.load(Ordering::Acquire) {
                    break;
                }
                shared.count("renames", 1);
                shared.expect("rename → comm", renamer_pid, Want::Comm(name));
            }
        });
        s.spawn(|| {
            for line in orphan_lines.lines() {
                let Ok(pid) = line.map(|l| l.trim().parse::<u32>()) else {
                    break;
                };
                let Ok(pid) = pid else { continue };
                if shared.stop.load(Ordering::Acquire) {
                    break;
                }
                shared.count("orphans", 1);
                orphans.lock().unwrap().push(PidGuard::new(pid));
                shared.expect("parent exit → ppid", pid, Want::Ppid(reaper_pid));
            }
        });
        while !shared.stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(100));
        }
        // Ends both readers: their pipes close.
        drop(renamer);
        drop(reaper);
    });
}

/// Starts, execs into, kills and deletes containers until the end; kills
/// and restarts containerd once, 40 % in. Returns the containers left.
fn container_churn(ctrd: &Containerd, shared: &Shared, total: Duration) -> Vec<RunningContainer> {
    let started = Instant::now();
    let mut alive: Vec<RunningContainer> = Vec::new();
    let mut next = 0u64;
    let mut execs = 0u64;
    let mut restarted = false;
    while started.elapsed() < total && !shared.stop.load(Ordering::Acquire) {
        if !restarted && started.elapsed() > total * 2 / 5 {
            restarted = true;
            ctrd.kill();
            shared.count("containerd kills", 1);
            ctrd.restart();
            // Containers made while pidmap is still reconnecting.
            for _ in 0..2 {
                alive.push(start_container(ctrd, shared, &mut next));
            }
            continue;
        }
        match shared.random(100) {
            0..30 if alive.len() < 8 => alive.push(start_container(ctrd, shared, &mut next)),
            30..60 if !alive.is_empty() => {
                let c = &alive[shared.random(alive.len() as u64) as usize];
                execs += 1;
                let pid = c.exec(
                    &format!("loop{execs}"),
                    ["/bin/sh", "-c", "while true; do /bin/sleep 1; done"],
                );
                shared.count("execs", 1);
                shared.expect("exec → container", pid, Want::Container(c.id().to_owned()));
            }
            60..75 if !alive.is_empty() => {
                // An exec whose child is orphaned inside the container (the
                // exec itself is gone at once: no pid to wait for).
                let c = &alive[shared.random(alive.len() as u64) as usize];
                execs += 1;
                let exec_id = format!("orphan{execs}");
                ctrd.ctr_ok([
                    "-n",
                    c.namespace(),
                    "tasks",
                    "exec",
                    "-d",
                    "--exec-id",
                    exec_id.as_str(),
                    c.id(),
                    "/bin/sh",
                    "-c",
                    "/bin/sleep 600 </dev/null >/dev/null 2>&1 & exit 0",
                ]);
                shared.count("execs", 1);
            }
            75..90 if alive.len() > 3 => {
                let c = alive.swap_remove(shared.random(alive.len() as u64) as usize);
                let path = c.cgroup_path().to_owned();
                c.delete();
                shared.made.lock().unwrap().remove(&path);
                shared.count("container deletes", 1);
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    alive
}

fn start_container(ctrd: &Containerd, shared: &Shared, next: &mut u64) -> RunningContainer {
    *next += 1;
    let n = *next;
    let id = format!("{:016x}{:048x}", u64::from(std::process::id()), n);
    let uid = format!("{:08x}-0000-4000-8000-{n:012x}", std::process::id());
    let pod_name = format!("web-{n}");
    // Known as ours before its first process exists.
    let cgroup = format!("/kubepods/besteffort/pod{uid}/{id}");
    shared.made.lock().unwrap().insert(
        cgroup.clone(),
        Made {
            id: id.clone(),
            pod_name: pod_name.clone(),
            started: Instant::now(),
        },
    );
    let c = ctrd.run(
        ContainerSpec::new(id.clone())
            .namespace(CONTAINER_NAMESPACE)
            .kubepods("besteffort", &uid)
            .label("io.kubernetes.pod.name", pod_name.clone())
            .label("io.kubernetes.pod.namespace", "gt")
            .label("io.kubernetes.pod.uid", uid.clone())
            .label("io.kubernetes.container.name", "app"),
    );
    assert_eq!(c.cgroup_path(), cgroup);
    shared.count("container starts", 1);
    shared.expect(
        "container start → container",
        c.init_pid(),
        Want::Container(id),
    );
    c
}

/// Whether containerd is synced, by the agent's own Status.
async fn synced(c: &mut PidmapClient<Channel>) -> Option<bool> {
    let s = c.status(proto::StatusRequest {}).await.ok()?.into_inner();
    Some(s.containerd_synced)
}

/// The checker: every round, every process in /proc.
async fn check_rounds(socket: std::path::PathBuf, shared: Arc<Shared>) {
    let mut client: Option<PidmapClient<Channel>> = None;
    // When a process's ppid first disagreed (it may lag a re-parenting).
    let mut ppid_lag: HashMap<(u32, u64), Instant> = HashMap::new();
    while !shared.stop.load(Ordering::Acquire) {
        tokio::time::sleep(ROUND).await;
        if shared.agent_away.load(Ordering::Acquire) {
            client = None;
            continue;
        }
        let Some(c) = client.as_mut() else {
            client = connect(&socket).await;
            continue;
        };
        let pids = oracle::pids();
        let before: Vec<ProcTruth> = pids.iter().filter_map(|&p| ProcTruth::read(p)).collect();
        let synced_before = synced(c).await;
        let answers = c
            .resolve_batch(proto::ResolveBatchRequest {
                requests: before
                    .iter()
                    .map(|t| proto::ResolveRequest {
                        pid: t.pid.into(),
                        start_time: Some(t.start_time),
                    })
                    .collect(),
            })
            .await;
        let synced_after = synced(c).await;
        let answers = match answers {
            Ok(a) => a.into_inner().records,
            Err(status) => {
                // Only while the agent restarts may it not answer.
                if !shared.agent_away.load(Ordering::Acquire)
                    && !shared.stop.load(Ordering::Acquire)
                {
                    shared.count("rounds the agent did not answer", 1);
                }
                let _ = status;
                client = None;
                continue;
            }
        };
        let not_synced = synced_before != Some(true) || synced_after != Some(true);
        let made = shared.made.lock().unwrap().clone();
        shared.count("rounds", 1);
        for (truth, answer) in before.iter().zip(&answers) {
            let Some(after) = ProcTruth::read(truth.pid) else {
                shared.count("inconclusive (changed during the query)", 1);
                continue;
            };
            if &after != truth {
                shared.count("inconclusive (changed during the query)", 1);
                continue;
            }
            shared.count("answers checked", 1);
            check(truth, answer, &made, not_synced, &shared, &mut ppid_lag);
        }
    }
}

/// Compares one answer with the truth.
fn check(
    truth: &ProcTruth,
    a: &proto::ProcessRecord,
    made: &HashMap<String, Made>,
    not_synced: bool,
    shared: &Shared,
    ppid_lag: &mut HashMap<(u32, u64), Instant>,
) {
    let pid = truth.pid;
    let state = proto::ProcessState::try_from(a.state).unwrap_or_default();
    let wrong = |what: String| {
        shared.wrong(format!(
            "pid {pid} ({}): {what}; pidmap said {a:?}; /proc said {truth:?}",
            truth.comm
        ));
    };
    if truth.is_zombie() {
        if state != proto::ProcessState::Exited {
            wrong(format!("an exited (zombie) process answered {state:?}"));
        }
        return;
    }
    if truth.is_exiting() {
        // In do_exit: the kernel reported the exit at its start; running
        // and exited are both true for a moment.
        if !matches!(
            state,
            proto::ProcessState::Running | proto::ProcessState::Exited
        ) {
            wrong(format!("an exiting process answered {state:?}"));
        }
        shared.count("exiting (in do_exit) when checked", 1);
        return;
    }
    let container = truth.unified.as_deref().and_then(|path| made.get(path));
    if container.is_none() && truth.unified.as_deref().is_some_and(foreign_container) {
        // Another containerd's container (another test's, on a shared
        // machine): not in the containerd the agent watches, so neither
        // side of the comparison knows it.
        shared.count("skipped: another containerd's containers", 1);
        return;
    }
    match state {
        proto::ProcessState::Running => {}
        proto::ProcessState::Pending if container.is_some() && not_synced => {
            shared.count("pending (containerd not synced)", 1);
            return;
        }
        proto::ProcessState::Pending
            if container.is_some_and(|m| m.started.elapsed() < METADATA_IN_FLIGHT) =>
        {
            shared.count("pending (metadata in flight)", 1);
            return;
        }
        other => return wrong(format!("state {other:?}")),
    }
    if a.start_time != Some(truth.start_time) {
        wrong(format!("start time {:?}", a.start_time));
    }
    if !truth.kernel_thread && a.comm.as_deref() != Some(truth.comm.as_str()) {
        wrong(format!("comm {:?}", a.comm));
    }
    let key = (pid, truth.start_time);
    if a.ppid == Some(truth.ppid) {
        ppid_lag.remove(&key);
    } else {
        let since = *ppid_lag.entry(key).or_insert_with(Instant::now);
        if since.elapsed() > PPID_LAG {
            wrong(format!("ppid {:?} for over {PPID_LAG:?}", a.ppid));
        } else {
            shared.count("ppid not yet re-parented (within 100 ms)", 1);
        }
    }
    match (
        truth.placement(),
        a.cgroup_hierarchy.as_deref(),
        a.cgroup_path.as_deref(),
    ) {
        (Some((h, path)), Some(ah), Some(ap)) if h == ah && path == ap => {}
        (placement, ah, ap) => wrong(format!("cgroup {ah:?} {ap:?}, truth {placement:?}")),
    }
    let source = proto::Source::try_from(a.source).unwrap_or_default();
    match container {
        Some(m) => {
            let by_containerd = source == proto::Source::Containerd
                && a.container.as_ref().is_some_and(|c| {
                    c.id == m.id && c.pod_name.as_deref() == Some(m.pod_name.as_str())
                });
            let by_path = not_synced
                && source == proto::Source::CgroupPath
                && a.path_container_id.as_deref() == Some(m.id.as_str());
            if by_path {
                shared.count("cgroup-path answers (containerd not synced)", 1);
            } else if !by_containerd {
                wrong(format!("not container {} (pod {})", m.id, m.pod_name));
            }
        }
        None => {
            if source != proto::Source::Host {
                wrong(format!("source {source:?} for a host process"));
            }
        }
    }
}

/// A containerd cgroup layout (kubepods, or `/<namespace>/…` of the
/// namespaces containerd always has).
fn foreign_container(path: &str) -> bool {
    ["/kubepods/", "/k8s.io/", "/default/", "/moby/"]
        .iter()
        .any(|prefix| path.starts_with(prefix))
}

/// Resolves each expectation until it holds, and records how long that took.
async fn poll_expectations(socket: std::path::PathBuf, shared: Arc<Shared>) {
    let mut client: Option<PidmapClient<Channel>> = None;
    while !shared.stop.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(1)).await;
        if shared.agent_away.load(Ordering::Acquire) {
            client = None;
            continue;
        }
        let Some(c) = client.as_mut() else {
            client = connect(&socket).await;
            continue;
        };
        let waiting = std::mem::take(&mut *shared.expectations.lock().unwrap());
        let mut still = Vec::new();
        for e in waiting {
            let answer = c
                .resolve(proto::ResolveRequest {
                    pid: e.pid.into(),
                    start_time: Some(e.start_time),
                })
                .await;
            let Ok(a) = answer.map(tonic::Response::into_inner) else {
                still.push(e);
                client = None;
                break;
            };
            let gone = ProcTruth::read(e.pid).is_none_or(|t| t.start_time != e.start_time);
            let met = match &e.want {
                Want::Container(id) => a.container.as_ref().is_some_and(|c| &c.id == id),
                Want::Comm(name) => a.comm.as_deref() == Some(name.as_str()),
                Want::Ppid(p) => a.ppid == Some(*p),
            };
            // A later rename of the same process makes this one moot.
            let superseded = matches!(&e.want, Want::Comm(_))
                && shared
                    .expectations
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|x| x.pid == e.pid && x.since > e.since);
            if met {
                shared
                    .latencies
                    .lock()
                    .unwrap()
                    .entry(e.kind)
                    .or_default()
                    .push(e.since.elapsed());
            } else if gone || superseded {
                shared.count("events superseded or gone before checked", 1);
            } else if e.since.elapsed() > EVENT_DEADLINE {
                shared.wrong(format!(
                    "{}: pid {} never got {:?} within {EVENT_DEADLINE:?}: {a:?}",
                    e.kind, e.pid, e.want
                ));
            } else {
                still.push(e);
            }
        }
        shared.expectations.lock().unwrap().extend(still);
    }
}

fn report(shared: &Shared, elapsed: Duration, renamer: u32, reaper: u32) {
    println!(
        "ground truth: {:.0} s of churn (renamer pid {renamer}, subreaper pid {reaper})",
        elapsed.as_secs_f64()
    );
    for (what, n) in shared.counts.lock().unwrap().iter() {
        println!("  {what}: {n}");
    }
    println!("  wrong answers: {}", shared.wrong.lock().unwrap().len());
    for (kind, samples) in shared.latencies.lock().unwrap().iter_mut() {
        samples.sort();
        let q = |q: f64| {
            let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i]
        };
        println!(
            "  {kind}: {} samples, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            samples.len(),
            q(0.5).as_secs_f64() * 1e3,
            q(0.99).as_secs_f64() * 1e3,
            q(1.0).as_secs_f64() * 1e3
        );
    }
}
