//! The Prometheus endpoint end to end: an agent with real eBPF programs,
//! scraped over plain TCP like Prometheus would.
//!
//! Run as root with `--test-threads=1`.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use pidmap::{Agent, Config, Error, testing::metrics::server::HEADER_TIMEOUT};
use pidmap_tests::{ChildGuard, TestAgent, init_logging, private_socket, require_root};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

/// An HTTP answer, split up.
#[derive(Debug)]
struct Answer {
    status: String,
    head: String,
    body: String,
}

impl Answer {
    /// The value of the sample line `name` (with labels), if present.
    fn sample(&self, name: &str) -> Option<f64> {
        self.body.lines().find_map(|l| {
            let (n, v) = l.rsplit_once(' ')?;
            (n == name).then(|| v.parse().ok())?
        })
    }
}

/// `GET path` over a fresh connection (the server closes it after one
/// answer), from a blocking thread.
async fn get(addr: SocketAddr, path: &str) -> Answer {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: pidmap-tests\r\n\r\n");
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).expect("connect to the metrics endpoint");
        stream.set_read_timeout(Some(WAIT)).expect("set timeout");
        stream.write_all(request.as_bytes()).expect("send request");
        let mut raw = String::new();
        stream
            .read_to_string(&mut raw)
            .expect("read the whole answer");
        let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
        Answer {
            status: head.lines().next().unwrap_or_default().to_owned(),
            head: head.to_ascii_lowercase(),
            body: body.to_owned(),
        }
    })
    .await
    .expect("scrape thread")
}

async fn start() -> (TestAgent, SocketAddr) {
    let agent = TestAgent::start(Config {
        metrics_addr: Some("127.0.0.1:0".parse().expect("address")),
        ..Config::default()
    })
    .await;
    let addr = agent
        .agent()
        .metrics_addr()
        .expect("metrics endpoint is on");
    assert_ne!(addr.port(), 0, "the bound port is reported");
    (agent, addr)
}

const EXEC: &str = r#"pidmap_events_total{kind="exec"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_shows_events_rising_and_table_sizes() {
    let (agent, addr) = start().await;
    let first = get(addr, "/metrics").await;
    assert_eq!(first.status, "HTTP/1.1 200 OK", "{first:?}");
    assert!(
        first
            .head
            .contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{}",
        first.head
    );
    assert!(first.body.ends_with("# EOF\n"), "{}", first.body);
    assert!(first.body.contains("# TYPE pidmap_events counter\n"));
    let live = first
        .sample(r#"pidmap_processes{state="live"}"#)
        .expect("live process gauge");
    assert!(live >= 1.0, "the seeded table is not empty: {live}");
    assert!(
        first
            .sample("pidmap_scan_added_total")
            .is_some_and(|n| n >= 1.0)
    );
    assert_eq!(first.sample("pidmap_containerd_connected"), Some(0.0));
    let before = first.sample(EXEC).expect("exec counter");

    let mut child = ChildGuard::spawn(&mut Command::new("/bin/true"));
    assert!(child.wait().success());
    let deadline = Instant::now() + WAIT;
    let mut last = before;
    while last <= before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        last = get(addr, "/metrics")
            .await
            .sample(EXEC)
            .expect("exec counter");
    }
    assert!(
        last > before,
        "exec count stayed at {before} after /bin/true ran"
    );
    let scrape = get(addr, "/metrics").await;
    assert!(
        scrape
            .sample("pidmap_exec_to_resolvable_seconds_count")
            .is_some_and(|n| n >= 1.0),
        "{}",
        scrape.body
    );

    let nope = get(addr, "/nope").await;
    assert_eq!(nope.status, "HTTP/1.1 404 Not Found", "{nope:?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_dropped_after_the_header_timeout() {
    let (agent, addr) = start().await;
    let silent = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("set timeout");
        let connected = Instant::now();
        let mut rest = Vec::new();
        // EOF (or a reset) means the server hung up; a 408 may come first.
        let closed = match stream.read_to_end(&mut rest) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        (
            closed,
            connected.elapsed(),
            String::from_utf8_lossy(&rest).into_owned(),
        )
    });
    // While the silent client waits, scrapes are served.
    let scrape = get(addr, "/metrics").await;
    assert_eq!(scrape.status, "HTTP/1.1 200 OK");

    let (closed, after, rest) = silent.await.expect("silent client thread");
    assert!(
        closed,
        "the silent client was not hung up on within {WAIT:?}"
    );
    assert!(
        rest.is_empty() || rest.starts_with("HTTP/1.1 408"),
        "{rest}"
    );
    assert!(
        after >= HEADER_TIMEOUT - Duration::from_millis(500),
        "hung up after {after:?}, before the {HEADER_TIMEOUT:?} header timeout"
    );
    let scrape = get(addr, "/metrics").await;
    assert_eq!(scrape.status, "HTTP/1.1 200 OK");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taken_metrics_address_fails_the_start() {
    require_root();
    init_logging();
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = taken.local_addr().expect("its address");
    // The API socket is bound before the metrics address: keep it private.
    let socket = SocketGuard(private_socket());
    let shutdown = CancellationToken::new();
    let started = Agent::start(
        Config {
            metrics_addr: Some(addr),
            socket: socket.0.clone(),
            // Were anything loaded before the address is checked, this
            // would fail the start first.
            btf_path: "/nonexistent/vmlinux".into(),
            ..Config::default()
        },
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    match started {
        Err(Error::MetricsBind { addr: a, .. }) => assert_eq!(a, addr),
        Err(other) => panic!(
            "wrong error (the metrics address must be checked before the eBPF programs load): {}",
            pidmap::error::chain(&other)
        ),
        Ok(_) => panic!("the agent started on a taken metrics address"),
    }
    assert!(
        !socket.0.exists(),
        "a start that failed left its API socket behind"
    );
}

/// Removes an API socket (and its private directory) on drop.
struct SocketGuard(std::path::PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
