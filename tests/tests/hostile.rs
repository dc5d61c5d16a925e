//! Hostile peers against the agent in the DaemonSet's memory limit (issue
//! 16, rows 1 and 2): one peer's HPACK bombs, then one peer's 8 connections
//! of 64 `Watch` streams that grant 2 GiB windows and never read, while
//! 1,000 processes run and 3,000 more churn. The agent runs as its own
//! process in a memory cgroup limited to 256 MiB, as the DaemonSet limits
//! it; the attacks come from another process (`pidmap-attack`), so the
//! test's own probe is another peer, which must be served throughout.

use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::TcpStream,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use pidmap::api::proto;
use pidmap_tests::{
    AgentProcess, ChildGuard, MemoryCgroup, checker::client, init_logging, load::Storm,
    private_socket, proc_status_kib, require_root,
};

/// The DaemonSet's memory limit (deploy/kubernetes/daemonset.yaml).
const DAEMONSET_LIMIT: u64 = 256 * 1024 * 1024;
/// How long the agent gives any request (`request_timeout`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The agent's budget of unread bytes for one peer (its default).
const PER_PEER_BUDGET_KIB: u64 = 16 * 1024;

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// A free TCP port on 127.0.0.1 for the agent's metrics.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The value of metric sample `name` (with its labels, as printed) on the
/// agent's metrics endpoint.
fn metric(port: u16, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Asks the agent on `socket` every 50 ms until stopped; counts answers and
/// failures.
struct Probe {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    /// The slowest round answered, in ms.
    slowest: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Probe {
    fn start(socket: std::path::PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let slowest = Arc::new(AtomicU64::new(0));
        let task = {
            let (stop, answered, failed, slowest) = (
                Arc::clone(&stop),
                Arc::clone(&answered),
                Arc::clone(&failed),
                Arc::clone(&slowest),
            );
            tokio::spawn(async move {
                let mut errors = Vec::new();
                let mut c = client(&socket).await;
                let pid = i64::from(std::process::id());
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    // The agent's own bound on a request (a loaded node and
                    // a flood's snapshots make it slower, never silent).
                    let asked = tokio::time::timeout(REQUEST_TIMEOUT, async {
                        c.status(proto::StatusRequest {}).await?;
                        c.resolve(proto::ResolveRequest {
                            pid,
                            start_time: None,
                        })
                        .await
                    })
                    .await;
                    match asked {
                        // `pending`: the agent could not confirm its table
                        // current in time (a loaded node) and says so.
                        Ok(Ok(r))
                            if matches!(
                                r.get_ref().state(),
                                proto::ProcessState::Running | proto::ProcessState::Pending
                            ) =>
                        {
                            answered.fetch_add(1, Ordering::Relaxed);
                            slowest.fetch_max(
                                u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                                Ordering::Relaxed,
                            );
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.push(format!("{other:?}"));
                            // A new connection, should that one be gone.
                            c = client(&socket).await;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                errors
            })
        };
        Self {
            stop,
            answered,
            failed,
            slowest,
            task,
        }
    }

    /// Rounds answered, rounds failed (with why), the slowest round in ms.
    async fn finish(self) -> (u64, u64, Vec<String>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self.task.await.expect("probe");
        (
            self.answered.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
            self.slowest.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_cannot_push_the_agent_past_its_daemonset_memory_limit() {
    require_root();
    init_logging();
    let memcg = MemoryCgroup::new(DAEMONSET_LIMIT)
        .expect("a memory cgroup (cgroup v1 memory, or cgroup2 with the memory controller)");
    let socket = private_socket();
    let port = free_port();
    let agent = AgentProcess::start_in(
        &socket,
        &["--metrics-addr", &format!("127.0.0.1:{port}")],
        Some(&memcg),
    );
    let pid = agent.pid();
    // 1,000 processes on the node: every Watch snapshot carries them.
    let sleepers: Vec<ChildGuard> = (0..1000)
        .map(|_| ChildGuard::spawn(Command::new("/bin/sleep").arg("1000")))
        .collect();
    let probe = Probe::start(socket.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_at_rest = agent.rss_kib().unwrap_or(0);
    let attack = env!("CARGO_BIN_EXE_pidmap-attack");

    // Row 1: HPACK bombs, 8 connections at a time, 25 rounds.
    let started = Instant::now();
    let bombs = tokio::task::spawn_blocking({
        let socket = socket.clone();
        move || {
            Command::new(attack)
                .args(["hpack-bomb", &socket.to_string_lossy(), "8", "25"])
                .output()
                .expect("run pidmap-attack")
        }
    })
    .await
    .expect("bombs");
    let bombs_took = started.elapsed();
    let bomb_report = String::from_utf8_lossy(&bombs.stdout).trim().to_owned();
    let rss_after_bombs = agent.rss_kib().unwrap_or(0);
    let hwm_after_bombs = proc_status_kib(pid, "VmHWM").unwrap_or(0);

    // Row 2: 8 connections × 64 Watch streams with 2 GiB windows, never
    // read, while 3,000 processes churn.
    let mut flood = ChildGuard::spawn(
        Command::new(attack)
            .args(["watch-flood", &socket.to_string_lossy(), "8", "64"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let mut ready = String::new();
    std::io::BufReader::new(flood.0.stdout.as_mut().expect("stdout"))
        .read_line(&mut ready)
        .expect("the flood says it is ready");
    assert!(ready.starts_with("ready"), "{ready}");
    let churned = tokio::task::spawn_blocking(|| Storm::start(2, 3000).join())
        .await
        .expect("storm");
    // Whatever the agent will hold for the flood, it holds once the
    // streams have taken all they can.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_flooded = agent.rss_kib().unwrap_or(0);
    let unread = metric(port, "pidmap_api_unread_bytes").unwrap_or(-1.0);
    let cut_offs = metric(port, r#"pidmap_api_cut_offs_total{reason="unread_bytes"}"#);
    let open = metric(port, "pidmap_api_connections").unwrap_or(-1.0);
    // The flood ends: its connections close, and what they held goes (the
    // probe stops first: its own answers in flight count too).
    drop(flood.0.stdin.take());
    flood.wait();
    let (answered, failed, errors, slowest) = probe.finish().await;
    let released = Instant::now();
    let mut unread_after = metric(port, "pidmap_api_unread_bytes").unwrap_or(-1.0);
    while unread_after != 0.0 && released.elapsed() < REQUEST_TIMEOUT {
        tokio::time::sleep(Duration::from_millis(100)).await;
        unread_after = metric(port, "pidmap_api_unread_bytes").unwrap_or(-1.0);
    }
    let released = released.elapsed();
    let rss_after = agent.rss_kib().unwrap_or(0);
    let hwm = proc_status_kib(pid, "VmHWM").unwrap_or(0);
    let cgroup_peak = memcg.peak_bytes().unwrap_or(0);
    let oom_kills = memcg.oom_kills();
    let alive = agent.rss_kib().is_some();

    println!(
        "hostile peers in a {} memory cgroup, 1,000 processes on the node:\n\
         - at rest: RSS {}\n\
         - HPACK bombs ({bomb_report}) in {:.1} s: RSS {} after, peak {}\n\
         - 8 × 64 Watch streams with 2 GiB windows, never read, {churned} processes churned: \
           RSS {} ({unread:.0} bytes unread, budget {} per peer; {cut_offs:?} cut off for \
           unread bytes; {open:.0} connections)\n\
         - after the flood ended: RSS {} ({unread_after:.0} bytes unread after {:.1} s)\n\
         - peak RSS {}; the cgroup's peak {}; OOM kills {oom_kills}\n\
         - the probe (another peer): {answered} rounds answered (the slowest in {slowest} ms), \
           {failed} failed",
        mib(DAEMONSET_LIMIT / 1024),
        mib(rss_at_rest),
        bombs_took.as_secs_f64(),
        mib(rss_after_bombs),
        mib(hwm_after_bombs),
        mib(rss_flooded),
        mib(PER_PEER_BUDGET_KIB),
        mib(rss_after),
        released.as_secs_f64(),
        mib(hwm),
        mib(cgroup_peak / 1024),
    );
    assert!(alive, "the agent died; its log:\n{}", agent.log());
    assert_eq!(oom_kills, 0, "the agent was OOM-killed");
    assert_eq!(failed, 0, "the probe failed: {errors:?}");
    assert!(
        answered > 20,
        "the probe was answered only {answered} times"
    );
    assert!(
        bomb_report.contains("200 requests sent"),
        "the bombs were not all sent: {bomb_report}"
    );
    assert!(
        (0.0..=(PER_PEER_BUDGET_KIB * 1024) as f64).contains(&unread),
        "{unread} bytes held unread for one peer"
    );
    assert_eq!(unread_after, 0.0, "bytes still held for closed connections");
    // What one peer can make the agent hold: its budget, and a few MiB for
    // its connections and streams (docs/architecture.md, "Bounded memory").
    let ceiling = rss_at_rest + PER_PEER_BUDGET_KIB + 48 * 1024;
    assert!(
        hwm <= ceiling,
        "peak RSS {} over {} (at rest {})",
        mib(hwm),
        mib(ceiling),
        mib(rss_at_rest)
    );
    drop(sleepers);
    drop(agent);
}
