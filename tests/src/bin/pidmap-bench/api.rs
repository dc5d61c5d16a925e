//! Query API figures: `Resolve` latency and throughput over the Unix socket
//! with 1 and 8 concurrent clients, the same lookup over HTTP/JSON on a
//! kept-alive connection, batches of 1,000 pids over both (time per pid),
//! a lookup in pidmap-client's cache, and how long a change takes to reach
//! a `Watch` stream. Each is printed next to the baseline that /proc-based
//! tools use, measured in the same run for the same pids: read
//! `/proc/PID/cgroup`, take the `0::` (or v1 memory) line and guess a
//! container id from the path.

use std::{
    hint::black_box,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use hdrhistogram::Histogram;
use pidmap::{
    Agent, Config,
    api::proto::{self, pidmap_client::PidmapClient},
    testing::cgroup::{container_from_path, parse_proc_cgroup},
};
use pidmap_tests::{ChildGuard, private_socket};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::agent_runtime;

/// Calls made and thrown away before each latency/throughput run.
const WARM_UP: Duration = Duration::from_millis(500);
/// Measured time of each latency/throughput run, after the warm-up.
const MEASURE: Duration = Duration::from_secs(3);
/// Concurrent clients (and baseline threads) of the "many" runs.
const MANY: usize = 8;
/// Worker threads of the clients' runtime (the agent has its own).
const CLIENT_THREADS: usize = 2;
/// Whole-set batch calls (and baseline passes) thrown away first.
const BATCH_WARM_UP: usize = 10;
/// Whole-set batch calls (and baseline passes) measured.
const BATCH_RUNS: usize = 200;
/// Cache lookups thrown away first.
const CACHE_WARM_UP: usize = 100_000;
/// Cache lookups measured.
const CACHE_LOOKUPS: usize = 2_000_000;
/// Cache lookups per timed run, so that the clock's own cost is spread.
const CACHE_BATCH: usize = 100;
/// Processes spawned to time Watch delivery.
const WATCH_SPAWNS: usize = 200;

/// Runs every API measurement over `n` live `sleep` processes.
pub(crate) fn run(n: usize) -> Result<()> {
    ensure!(n > 0, "--api-pids must be at least 1");
    let agent = BenchAgent::start()?;
    let sleepers = crate::spawn_sleepers(n)?;
    let pids: Arc<[u32]> = sleepers.iter().map(ChildGuard::pid).collect();
    let state = Arc::clone(agent.state()?);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !pids.iter().all(|&pid| state.process(pid).is_some()) {
        if Instant::now() > deadline {
            bail!("the agent's table did not get all {n} sleepers within 15 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CLIENT_THREADS)
        .thread_name("pidmap-bench-client")
        .enable_all()
        .build()
        .context("client runtime")?;
    let socket = agent.socket.clone();
    clients.block_on(check_api(&socket, &pids))?;
    for &pid in pids.iter() {
        proc_lookup(pid)?;
    }

    println!(
        "query API vs /proc ({n} live `sleep` pids; agent in-process on a private socket, its runtime 1 worker thread; clients on their own {CLIENT_THREADS}-thread runtime; all share {} CPUs)",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    println!(
        "  socket: one gRPC (HTTP/2) round trip over the Unix socket per call, client encode/decode included; answers the agent's full record (state, start time, cgroup, container/pod metadata; exited processes too, for the grace window)"
    );
    println!(
        "  /proc: open+read /proc/PID/cgroup, parse the 0::/memory line, guess a container id from the path (pidmap's own parser); gives a cgroup path and a guessed id only: no image/pod/labels, nothing once the process has exited"
    );
    // The floor: a Status call is the same gRPC round trip over the same
    // socket, with no catch-up and no look-up.
    let floor = clients.block_on(resolve_clients(&socket, &pids, 1, Call::Status))?;
    floor.print(
        "status over the socket (the gRPC round trip alone: no catch-up, no look-up), 1 client",
        "calls",
    );
    for concurrency in [1, MANY] {
        let api = clients.block_on(resolve_clients(&socket, &pids, concurrency, Call::Resolve))?;
        let (clients_label, conns) = if concurrency == 1 {
            ("1 client".to_owned(), String::new())
        } else {
            (
                format!("{concurrency} clients"),
                " (one connection each, one call at a time)".to_owned(),
            )
        };
        api.print(
            &format!("resolve over the socket, {clients_label}{conns}"),
            "calls",
        );
        let base = proc_threads(&pids, concurrency)?;
        let threads = if concurrency == 1 {
            "1 thread".to_owned()
        } else {
            format!("{concurrency} threads")
        };
        base.print(&format!("/proc/PID/cgroup read+parse, {threads}"), "pids");
    }
    let batch = clients.block_on(batch_calls(&socket, &pids))?;
    print_pass(
        &format!(
            "resolve_batch over the socket, {} pids per call, {BATCH_RUNS} calls",
            thousands(n as f64)
        ),
        "call",
        &batch,
        n,
    );
    let http_batch = clients.block_on(http_batch_calls(&socket, &pids))?;
    print_pass(
        &format!(
            "GET /v1/processes?pid=… over HTTP/JSON (kept alive), {} pids per call, {BATCH_RUNS} calls",
            thousands(n as f64)
        ),
        "call",
        &http_batch,
        n,
    );
    let loops = proc_passes(&pids)?;
    print_pass(
        &format!(
            "/proc/PID/cgroup read+parse, {} pids in a loop, {BATCH_RUNS} passes",
            thousands(n as f64)
        ),
        "pass",
        &loops,
        n,
    );
    let http = clients.block_on(http_clients(&socket, &pids))?;
    http.print(
        "GET /v1/processes/PID over HTTP/JSON, 1 client, one kept-alive connection (JSON parsed)",
        "calls",
    );
    let base = proc_threads(&pids, 1)?;
    base.print("/proc/PID/cgroup read+parse, 1 thread", "pids");
    let cached = cached_lookups(&clients, &socket, &pids)?;
    cached.per_call.print(
        "pidmap-client cache lookup (Cache::get, in-process), timed one by one: two clock reads included, 1 thread",
        "lookups",
    );
    let quantiles = |h: &Histogram<u64>, per: f64| {
        format!(
            "p50 {}, p99 {}, max {}",
            fmt_ns(h.value_at_quantile(0.5) as f64 / per),
            fmt_ns(h.value_at_quantile(0.99) as f64 / per),
            fmt_ns(h.max() as f64 / per)
        )
    };
    println!(
        "  the clock reads alone (Instant::now, elapsed): {}",
        quantiles(&cached.clock, 1.0)
    );
    let per = CACHE_BATCH as f64;
    println!(
        "pidmap-client cache lookup, timed in runs of {CACHE_BATCH}, per lookup: {}",
        quantiles(&cached.batched, per)
    );
    let base = proc_threads(&pids, 1)?;
    base.print("/proc/PID/cgroup read+parse, 1 thread, just after", "pids");
    let ratio = |q: f64| {
        base.latency.value_at_quantile(q) as f64
            / (cached.batched.value_at_quantile(q) as f64 / per).max(1.0)
    };
    println!(
        "cache lookup vs /proc read: {:.0}x faster at p50, {:.0}x at p99",
        ratio(0.5),
        ratio(0.99)
    );
    let delivery = clients.block_on(watch_delivery(&socket))?;
    println!(
        "Watch delivery (spawn of `sleep` → its exec'd record received on a gRPC Watch), {WATCH_SPAWNS} spawns: {}; of it the spawn (fork+exec, until Command::spawn returns): {}",
        quantiles(&delivery.total, 1.0),
        quantiles(&delivery.spawn, 1.0)
    );
    drop(clients);
    drop(sleepers);
    drop(agent);
    Ok(())
}

/// An in-process agent on a private socket under /tmp. Dropping it stops
/// the agent and removes the socket directory, also when a measurement
/// failed half-way.
struct BenchAgent {
    rt: tokio::runtime::Runtime,
    agent: Option<Agent>,
    shutdown: CancellationToken,
    socket: PathBuf,
}

impl BenchAgent {
    /// Starts the agent with the default configuration and a private
    /// socket; returns once its table is seeded.
    fn start() -> Result<Self> {
        let mut this = Self {
            rt: agent_runtime()?,
            agent: None,
            shutdown: CancellationToken::new(),
            socket: private_socket(),
        };
        let config = Config {
            socket: this.socket.clone(),
            no_pin: true,
            ..Config::default()
        };
        let agent = this
            .rt
            .block_on(Agent::start(config, this.shutdown.clone()))
            .map_err(|e| anyhow!("agent failed to start: {}", pidmap::error::chain(&e)))?;
        this.agent = Some(agent);
        Ok(this)
    }

    /// The agent's shared state.
    fn state(&self) -> Result<&Arc<pidmap::testing::state::State>> {
        Ok(self.agent.as_ref().context("agent not running")?.state())
    }
}

impl Drop for BenchAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(agent) = self.agent.take() {
            let _ = self.rt.block_on(agent.wait());
        }
        let _ = std::fs::remove_file(&self.socket);
        if let Some(dir) = self.socket.parent()
            && dir.starts_with(std::env::temp_dir())
        {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Connects a client to the agent's socket.
async fn connect(socket: &Path) -> Result<PidmapClient<Channel>> {
    pidmap::cli::client::connect(socket)
        .await
        .map_err(|f| anyhow!(f.message))
}

/// A new latency histogram in nanoseconds (1 ns to 60 s, 3 digits).
pub(crate) fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).context("histogram")
}

pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Fails unless `r` is `pid`'s live record.
fn check_record(r: &proto::ProcessRecord, pid: u32) -> Result<()> {
    ensure!(
        r.pid == pid && r.state == proto::ProcessState::Running as i32,
        "pid {pid} answered {:?} for pid {}, not running",
        proto::ProcessState::try_from(r.state),
        r.pid
    );
    Ok(())
}

/// One ResolveBatch over every pid, to check they all resolve before
/// anything is timed.
async fn check_api(socket: &Path, pids: &[u32]) -> Result<()> {
    let mut client = connect(socket).await?;
    let records = client
        .resolve_batch(batch_request(pids))
        .await
        .context("ResolveBatch")?
        .into_inner()
        .records;
    ensure!(
        records.len() == pids.len(),
        "{} records for {} pids",
        records.len(),
        pids.len()
    );
    records
        .iter()
        .zip(pids)
        .try_for_each(|(r, &pid)| check_record(r, pid))
}

fn batch_request(pids: &[u32]) -> proto::ResolveBatchRequest {
    proto::ResolveBatchRequest {
        requests: pids
            .iter()
            .map(|&pid| proto::ResolveRequest {
                pid: i64::from(pid),
                start_time: None,
            })
            .collect(),
    }
}

/// Which call the clients make.
#[derive(Debug, Clone, Copy)]
enum Call {
    /// `Resolve` of the next pid.
    Resolve,
    /// `Status`: the round trip alone.
    Status,
}

/// Per-call latencies and the throughput of one concurrent run.
struct Run {
    latency: Histogram<u64>,
    calls: u64,
    secs: f64,
}

/// The timed window of a latency/throughput run: [`WARM_UP`], then
/// [`MEASURE`].
#[derive(Debug, Clone, Copy)]
struct Window {
    measured_from: Instant,
    end: Instant,
}

impl Window {
    fn starting_now() -> Self {
        let measured_from = Instant::now() + WARM_UP;
        Self {
            measured_from,
            end: measured_from + MEASURE,
        }
    }
}

/// One worker's calls within a [`Window`].
struct Sample {
    window: Window,
    latency: Histogram<u64>,
    calls: u64,
    /// When its last measured call finished.
    last: Instant,
}

impl Sample {
    fn new(window: Window) -> Result<Self> {
        Ok(Self {
            window,
            latency: histogram()?,
            calls: 0,
            last: window.measured_from,
        })
    }

    /// Records a call that started at `started` and has just finished
    /// (counted if it started after the warm-up); false once the window is
    /// over.
    fn record(&mut self, started: Instant) -> bool {
        let done = Instant::now();
        if started >= self.window.measured_from {
            self.latency.saturating_record(nanos(done - started));
            self.calls += 1;
            self.last = done;
        }
        done < self.window.end
    }
}

impl Run {
    /// Merges the workers' samples of one window.
    fn merge(parts: Vec<Sample>, window: Window) -> Result<Self> {
        let mut latency = histogram()?;
        let mut calls = 0;
        let mut last = window.measured_from;
        for part in parts {
            latency.add(&part.latency).context("merge histograms")?;
            calls += part.calls;
            last = last.max(part.last);
        }
        Ok(Self {
            latency,
            calls,
            secs: (last - window.measured_from).as_secs_f64(),
        })
    }

    /// Prints `label: p50, p99, max, throughput`, counting `what` (calls
    /// or pids).
    fn print(&self, label: &str, what: &str) {
        println!(
            "{label}: p50 {}, p99 {}, max {}, {} {what}/s ({} {what} in {:.1} s)",
            fmt_ns(self.latency.value_at_quantile(0.5) as f64),
            fmt_ns(self.latency.value_at_quantile(0.99) as f64),
            fmt_ns(self.latency.max() as f64),
            thousands(self.calls as f64 / self.secs.max(1e-9)),
            thousands(self.calls as f64),
            self.secs
        );
    }
}

/// `concurrency` clients, one connection each, each calling Resolve one pid
/// at a time over the pid set (starting at different places) for
/// [`WARM_UP`] + [`MEASURE`].
async fn resolve_clients(
    socket: &Path,
    pids: &Arc<[u32]>,
    concurrency: usize,
    call: Call,
) -> Result<Run> {
    let mut connections = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        connections.push(connect(socket).await?);
    }
    let window = Window::starting_now();
    let tasks: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            let pids = Arc::clone(pids);
            tokio::spawn(async move {
                let mut sample = Sample::new(window)?;
                let mut next = i * pids.len() / concurrency;
                loop {
                    let pid = pids[next % pids.len()];
                    next += 1;
                    let t = Instant::now();
                    match call {
                        Call::Resolve => {
                            let r = client
                                .resolve(proto::ResolveRequest {
                                    pid: i64::from(pid),
                                    start_time: None,
                                })
                                .await
                                .with_context(|| format!("Resolve {pid}"))?
                                .into_inner();
                            check_record(&r, pid)?;
                        }
                        Call::Status => {
                            client
                                .status(proto::StatusRequest {})
                                .await
                                .context("Status")?;
                        }
                    }
                    if !sample.record(t) {
                        return Ok::<_, anyhow::Error>(sample);
                    }
                }
            })
        })
        .collect();
    let mut parts = Vec::with_capacity(tasks.len());
    for task in tasks {
        parts.push(task.await.context("client task")??);
    }
    Run::merge(parts, window)
}

/// The baseline's lookup of one pid: its cgroup path and the container id
/// the path suggests.
fn proc_lookup(pid: u32) -> Result<(String, Option<String>)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .with_context(|| format!("read /proc/{pid}/cgroup"))?;
    let paths = parse_proc_cgroup(&text);
    let path = paths
        .v2
        .or(paths.v1_memory)
        .with_context(|| format!("/proc/{pid}/cgroup has no 0:: or memory line"))?;
    let id = container_from_path(&path).map(|c| c.container_id);
    Ok((path, id))
}

/// The baseline of [`resolve_clients`]: `threads` threads, each looking up
/// one pid at a time from /proc for the same time.
fn proc_threads(pids: &[u32], threads: usize) -> Result<Run> {
    let window = Window::starting_now();
    let parts = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|i| {
                s.spawn(move || {
                    let mut sample = Sample::new(window)?;
                    let mut next = i * pids.len() / threads;
                    loop {
                        let pid = pids[next % pids.len()];
                        next += 1;
                        let t = Instant::now();
                        black_box(proc_lookup(black_box(pid))?);
                        if !sample.record(t) {
                            return Ok::<_, anyhow::Error>(sample);
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().map_err(|_| anyhow!("baseline thread panicked"))?)
            .collect::<Result<Vec<_>>>()
    })?;
    Run::merge(parts, window)
}

/// ResolveBatch of the whole pid set, [`BATCH_RUNS`] times after a
/// warm-up: the time of each call.
async fn batch_calls(socket: &Path, pids: &[u32]) -> Result<Histogram<u64>> {
    let mut client = connect(socket).await?;
    let request = batch_request(pids);
    let mut latency = histogram()?;
    for run in 0..BATCH_WARM_UP + BATCH_RUNS {
        let req = request.clone();
        let t = Instant::now();
        let records = client
            .resolve_batch(req)
            .await
            .context("ResolveBatch")?
            .into_inner()
            .records;
        let elapsed = t.elapsed();
        ensure!(
            records.len() == pids.len(),
            "{} records for {} pids",
            records.len(),
            pids.len()
        );
        if run >= BATCH_WARM_UP {
            latency.saturating_record(nanos(elapsed));
        }
    }
    Ok(latency)
}

/// The baseline of [`batch_calls`]: the whole pid set looked up from /proc
/// in a loop, [`BATCH_RUNS`] times: the time of each pass.
fn proc_passes(pids: &[u32]) -> Result<Histogram<u64>> {
    let mut latency = histogram()?;
    for run in 0..BATCH_WARM_UP + BATCH_RUNS {
        let t = Instant::now();
        for &pid in pids {
            black_box(proc_lookup(black_box(pid))?);
        }
        let elapsed = t.elapsed();
        if run >= BATCH_WARM_UP {
            latency.saturating_record(nanos(elapsed));
        }
    }
    Ok(latency)
}

/// Prints whole-set timings: per `what` (call or pass) and per pid.
fn print_pass(label: &str, what: &str, latency: &Histogram<u64>, n: usize) {
    let p50 = latency.value_at_quantile(0.5) as f64;
    let p99 = latency.value_at_quantile(0.99) as f64;
    println!(
        "{label}: p50 {} per {what} = {} per pid, p99 {} per {what} = {} per pid, {} pids/s at p50",
        fmt_ns(p50),
        fmt_ns(p50 / n as f64),
        fmt_ns(p99),
        fmt_ns(p99 / n as f64),
        thousands(n as f64 * 1e9 / p50.max(1.0))
    );
}

/// A duration in nanoseconds as ns, µs or ms, with sensible precision.
pub(crate) fn fmt_ns(ns: f64) -> String {
    if ns < 1_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 10_000.0 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1_000_000.0 {
        format!("{:.0} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

/// A count rounded to a whole number, with thousands separators.
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A kept-alive HTTP/1.1 connection to the agent's socket.
struct Http {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
}

impl Http {
    async fn connect(socket: &Path) -> Result<Self> {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .with_context(|| format!("connect to {}", socket.display()))?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .context("HTTP/1.1 handshake")?;
        tokio::spawn(conn);
        Ok(Self { sender })
    }

    /// `GET path`: the body, parsed, once the status is 200.
    async fn get(&mut self, path: &str) -> Result<serde_json::Value> {
        use http_body_util::BodyExt as _;
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, "localhost")
            .body(http_body_util::Empty::new())
            .context("request")?;
        self.sender.ready().await.context("connection")?;
        let response = self.sender.send_request(request).await.context("send")?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .context("body")?
            .to_bytes();
        ensure!(status == hyper::StatusCode::OK, "GET {path}: {status}");
        serde_json::from_slice(&body).context("JSON body")
    }
}

/// One client on one kept-alive HTTP/1.1 connection, looking up one pid at
/// a time over the pid set for [`WARM_UP`] + [`MEASURE`].
async fn http_clients(socket: &Path, pids: &Arc<[u32]>) -> Result<Run> {
    let mut http = Http::connect(socket).await?;
    let window = Window::starting_now();
    let mut sample = Sample::new(window)?;
    for &pid in pids.iter().cycle() {
        let t = Instant::now();
        let r = http.get(&format!("/v1/processes/{pid}")).await?;
        ensure!(
            r["pid"].as_u64() == Some(u64::from(pid)) && r["state"] == "running",
            "pid {pid} answered {r}"
        );
        if !sample.record(t) {
            break;
        }
    }
    Run::merge(vec![sample], window)
}

/// `GET /v1/processes?pid=…` of the whole pid set, [`BATCH_RUNS`] times
/// after a warm-up, on one kept-alive connection: the time of each call.
async fn http_batch_calls(socket: &Path, pids: &[u32]) -> Result<Histogram<u64>> {
    let mut http = Http::connect(socket).await?;
    let query: Vec<String> = pids.iter().map(|pid| format!("pid={pid}")).collect();
    let path = format!("/v1/processes?{}", query.join("&"));
    let mut latency = histogram()?;
    for run in 0..BATCH_WARM_UP + BATCH_RUNS {
        let t = Instant::now();
        let records = http.get(&path).await?;
        let elapsed = t.elapsed();
        ensure!(
            records.as_array().map(Vec::len) == Some(pids.len()),
            "not {} records",
            pids.len()
        );
        if run >= BATCH_WARM_UP {
            latency.saturating_record(nanos(elapsed));
        }
    }
    Ok(latency)
}

/// Cache lookup timings.
struct Cached {
    /// Each lookup timed alone.
    per_call: Run,
    /// Two clock reads with nothing between them.
    clock: Histogram<u64>,
    /// Runs of [`CACHE_BATCH`] lookups.
    batched: Histogram<u64>,
}

/// [`CACHE_LOOKUPS`] lookups of the pid set in a synced pidmap-client
/// cache, on this thread: timed one by one, then in runs of
/// [`CACHE_BATCH`].
fn cached_lookups(
    clients: &tokio::runtime::Runtime,
    socket: &Path,
    pids: &[u32],
) -> Result<Cached> {
    let _guard = clients.enter();
    let cache = pidmap_client::Cache::spawn(pidmap_client::Settings::new(socket).into());
    clients.block_on(async {
        tokio::time::timeout(Duration::from_secs(15), cache.wait_synced())
            .await
            .context("the cache did not sync within 15 s")
    })?;
    for &pid in pids {
        let entry = cache
            .get(pid, None)
            .with_context(|| format!("pid {pid} not in the cache"))?;
        ensure!(
            entry.process.state == proto::ProcessState::Running as i32,
            "pid {pid} cached as {:?}",
            entry.process.state
        );
    }
    for &pid in pids.iter().cycle().take(CACHE_WARM_UP) {
        black_box(cache.get(black_box(pid), None));
    }
    let mut per_call = histogram()?;
    let started = Instant::now();
    for &pid in pids.iter().cycle().take(CACHE_LOOKUPS) {
        let t = Instant::now();
        black_box(cache.get(black_box(pid), None));
        per_call.saturating_record(nanos(t.elapsed()));
    }
    let secs = started.elapsed().as_secs_f64();
    let mut clock = histogram()?;
    for _ in 0..CACHE_LOOKUPS {
        let t = black_box(Instant::now());
        clock.saturating_record(nanos(t.elapsed()));
    }
    let mut batched = histogram()?;
    let mut next = pids.iter().cycle();
    for _ in 0..CACHE_LOOKUPS / CACHE_BATCH {
        let t = Instant::now();
        for &pid in next.by_ref().take(CACHE_BATCH) {
            black_box(cache.get(black_box(pid), None));
        }
        batched.saturating_record(nanos(t.elapsed()));
    }
    Ok(Cached {
        per_call: Run {
            latency: per_call,
            calls: CACHE_LOOKUPS as u64,
            secs,
        },
        clock,
        batched,
    })
}

/// Watch delivery timings.
struct Delivery {
    /// From just before the spawn to the record's arrival.
    total: Histogram<u64>,
    /// From just before the spawn to its return (the child has exec'd).
    spawn: Histogram<u64>,
}

/// Spawns `sleep` [`WATCH_SPAWNS`] times, one at a time, and times each
/// from just before the spawn to the moment a gRPC Watch stream delivers
/// its record with the exec'd comm.
async fn watch_delivery(socket: &Path) -> Result<Delivery> {
    use proto::watch_event::Event;
    let mut client = pidmap_client::Client::connect(&pidmap_client::Settings::new(socket))
        .await
        .map_err(|e| anyhow!(pidmap::error::chain(&e)))?;
    let mut stream = client.watch().await.context("Watch")?;
    let mut next = async || -> Result<Option<Event>> {
        let message = stream.message().await.context("Watch")?;
        Ok(message.context("Watch ended")?.event)
    };
    while !matches!(next().await?, Some(Event::SnapshotDone(_))) {}
    let (mut total, mut spawn) = (histogram()?, histogram()?);
    for _ in 0..WATCH_SPAWNS {
        let t = Instant::now();
        let child = ChildGuard::spawn(
            std::process::Command::new("sleep")
                .arg("1000")
                .stdin(std::process::Stdio::null()),
        );
        spawn.saturating_record(nanos(t.elapsed()));
        let pid = child.pid();
        let seen = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(Event::ProcessChanged(r)) = next().await?
                    && r.pid == pid
                    && r.comm() == "sleep"
                {
                    return Ok::<_, anyhow::Error>(t.elapsed());
                }
            }
        })
        .await
        .with_context(|| format!("no change for pid {pid} within 5 s"))??;
        total.saturating_record(nanos(seen));
        drop(child);
    }
    Ok(Delivery { total, spawn })
}
