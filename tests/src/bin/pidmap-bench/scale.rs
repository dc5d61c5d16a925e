//! `--scale-only`: a big node, made and removed by the bench.
//!
//! Processes: a helper (this binary, re-run with `--fork-sleepers N`) forks N children that
//! sleep in `pause()`; the release agent is started beside them three times, and the
//! figures are its time to "agent ready" (the /proc seed, eBPF loaded, the socket bound),
//! its peak RSS, `pidmap ls` and a `ResolveBatch` of every pid. Containers: P pods with one
//! container each, made through CRI as kubelet makes them (2·P containers with the
//! sandboxes), then an agent started in-process: its first containerd list and reconcile,
//! the re-list after each of three containerd restarts (the agent's own
//! `pidmap_containerd_list_seconds`, and containerd ready → synced including the reconnect
//! backoff), and a check that every container's init process resolves with its pod.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use pidmap::{
    api::proto::{self, pidmap_client::PidmapClient},
    testing::resolver::{Source, resolve},
};
use pidmap_tests::{
    ChildGuard,
    containerd::{CRI_IMAGE, Containerd},
    cri::PodSpec,
};

use crate::{
    agent_runtime,
    containerd::{BenchAgent, wait},
};

/// The argument that makes this binary the sleeper-forking helper.
pub(crate) const FORK_SLEEPERS: &str = "--fork-sleepers";
/// Agent starts per measurement.
const RUNS: usize = 3;
/// containerd restarts after the first list.
const RESTARTS: usize = 3;
/// pids per `ResolveBatch` call: the agent's default `--batch-limit`.
const BATCH: usize = 4096;

pub(crate) fn run(agent_bin: &Path, processes: usize, pods: usize) -> Result<()> {
    if processes > 0 {
        big_process_table(agent_bin, processes)?;
    }
    if pods > 0 {
        many_containers(agent_bin, pods)?;
    }
    Ok(())
}

/// The helper's body: forks `n` children that sleep until killed, says `ready` on stdout,
/// and when its stdin closes kills and reaps them all. Runs single-threaded (a fresh
/// process), so forking without exec is safe.
pub(crate) fn fork_sleepers(n: usize) -> Result<()> {
    let parent = std::process::id();
    let mut children = Vec::with_capacity(n);
    for _ in 0..n {
        // SAFETY: this process is single-threaded (the helper does nothing before this
        // loop); the child calls only async-signal-safe functions.
        match unsafe { libc::fork() } {
            0 => {
                // SAFETY: prctl, getppid, pause and _exit are async-signal-safe and take
                // no pointers.
                unsafe {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    if libc::getppid() as u32 != parent {
                        libc::_exit(0);
                    }
                    loop {
                        libc::pause();
                    }
                }
            }
            -1 => break,
            pid => children.push(pid),
        }
    }
    let forked = children.len();
    let mut out = std::io::stdout();
    writeln!(out, "ready {forked}")?;
    out.flush()?;
    let mut byte = [0u8; 1];
    let _ = std::io::stdin().read(&mut byte);
    for &pid in &children {
        // SAFETY: kill and waitpid take no pointers but the status, a live local.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    for &pid in &children {
        let mut status = 0;
        // SAFETY: as above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
    if forked < n {
        bail!("forked {forked} of {n} sleepers");
    }
    Ok(())
}

/// The helper and its sleepers; dropping it closes the helper's stdin, which kills and
/// reaps every sleeper, and waits for the helper.
struct Sleepers {
    helper: ChildGuard,
    stdin: Option<ChildStdin>,
}

impl Sleepers {
    fn spawn(n: usize) -> Result<Self> {
        let exe = std::env::current_exe().context("the bench's own path")?;
        let mut helper = ChildGuard(
            Command::new(exe)
                .arg(FORK_SLEEPERS)
                .arg(n.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .context("start the sleeper helper")?,
        );
        let stdin = helper.0.stdin.take();
        let stdout = helper.0.stdout.take().context("helper stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let forked: usize = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("the helper said {line:?}"))?;
        let sleepers = Self { helper, stdin };
        if forked < n {
            bail!("the helper forked {forked} of {n} sleepers (pid_max, threads-max?)");
        }
        Ok(sleepers)
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.helper.0.wait();
    }
}

/// Raises `kernel.pid_max` for the run when `needed` pids would not fit, and puts it back.
struct PidMax(Option<String>);

impl PidMax {
    const PATH: &str = "/proc/sys/kernel/pid_max";

    fn at_least(needed: usize) -> Result<Self> {
        let old = std::fs::read_to_string(Self::PATH).context("read pid_max")?;
        let current: usize = old.trim().parse().context("parse pid_max")?;
        if current >= needed {
            return Ok(Self(None));
        }
        let raised = needed.next_power_of_two().min(1 << 22);
        std::fs::write(Self::PATH, raised.to_string()).context("raise pid_max")?;
        println!(
            "scale: kernel.pid_max raised from {} to {raised} for the run",
            old.trim()
        );
        Ok(Self(Some(old)))
    }
}

impl Drop for PidMax {
    fn drop(&mut self) {
        if let Some(old) = self.0.take() {
            let _ = std::fs::write(Self::PATH, old.trim());
        }
    }
}

fn big_process_table(agent_bin: &Path, n: usize) -> Result<()> {
    let before = crate::count_processes();
    let _pid_max = PidMax::at_least((before + n) * 2)?;
    let t = Instant::now();
    let sleepers = Sleepers::spawn(n)?;
    let procs = crate::count_processes();
    println!(
        "scale: {n} sleepers forked in {:.1} s; {procs} processes on the node",
        t.elapsed().as_secs_f64()
    );
    let mut ready_ms = Vec::new();
    let mut peaks = Vec::new();
    for run in 0..RUNS {
        let socket = pidmap_tests::private_socket();
        let started = Instant::now();
        let mut agent = ChildGuard(
            Command::new(agent_bin)
                .args(["agent", "--no-pin", "--socket"])
                .arg(&socket)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("start {}", agent_bin.display()))?,
        );
        let stderr = agent.0.stderr.take().context("agent stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        if !lines.any(|l| l.is_ok_and(|l| l.contains("agent ready"))) {
            bail!("agent exited before it was ready: {:?}", agent.0.wait());
        }
        let ready = started.elapsed();
        std::thread::spawn(move || lines.for_each(drop));
        ready_ms.push(ready.as_secs_f64() * 1e3);
        if run == 0 {
            let (took, pids, answers) = resolve_everything(&socket)?;
            println!(
                "scale: ResolveBatch of every pid ({pids}), {BATCH} a call (the default batch limit): {answers} answers in {:.0} ms",
                ms(took)
            );
        }
        let peak = pidmap_tests::proc_status_kib(agent.pid(), "VmHWM").context("VmHWM")?;
        peaks.push(peak as f64 / 1024.0);
        stop_agent(&mut agent.0);
        if let Some(dir) = socket.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    let per = |ms: f64| ms * 1e3 / procs as f64;
    println!(
        "scale: agent ready with {procs} processes (start → \"agent ready\", {RUNS} starts): {} ms = {} µs per process; peak RSS {} MiB",
        list(&ready_ms, 0),
        list(&ready_ms.iter().map(|&m| per(m)).collect::<Vec<_>>(), 1),
        list(&peaks, 1)
    );
    drop(sleepers);
    Ok(())
}

/// A `ResolveBatch` of every pid on the node, in calls of [`BATCH`] pids: how long, and
/// how many answers.
fn resolve_everything(socket: &Path) -> Result<(Duration, usize, usize)> {
    let pids = pidmap_tests::proc_pids().context("list /proc")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let channel = pidmap::cli::client::channel(socket)
            .await
            .map_err(|f| anyhow::anyhow!("connect: {}", f.message))?;
        let mut client = PidmapClient::new(channel).max_decoding_message_size(64 << 20);
        let t = Instant::now();
        let mut answers = 0;
        for chunk in pids.chunks(BATCH) {
            let requests = chunk
                .iter()
                .map(|&pid| proto::ResolveRequest {
                    pid: i64::from(pid),
                    start_time: None,
                })
                .collect();
            let request = proto::ResolveBatchRequest { requests };
            answers += client
                .resolve_batch(request)
                .await?
                .into_inner()
                .records
                .len();
        }
        Ok((t.elapsed(), pids.len(), answers))
    })
}

/// `pidmap ls` as a person runs it (every container, a table): how long, and its lines.
fn pidmap_ls(agent_bin: &Path, socket: &Path) -> Result<(Duration, usize)> {
    let t = Instant::now();
    let out = Command::new(agent_bin)
        .args(["ls", "--socket"])
        .arg(socket)
        .stderr(Stdio::inherit())
        .output()
        .context("pidmap ls")?;
    let took = t.elapsed();
    if !out.status.success() {
        bail!("pidmap ls failed: {}", out.status);
    }
    Ok((took, out.stdout.iter().filter(|&&b| b == b'\n').count()))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn stop_agent(agent: &mut Child) {
    // SAFETY: kill has no memory-safety preconditions; the pid is our child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let _ = agent.wait();
}

fn many_containers(agent_bin: &Path, pods: usize) -> Result<()> {
    let ctrd = Containerd::start_cri();
    let cri = ctrd.cri();
    let t = Instant::now();
    let mut made = Vec::with_capacity(pods);
    for i in 0..pods {
        let uid = format!("5ca1e000-0000-4000-8000-{i:012x}");
        let spec = PodSpec::new(&format!("web-{i}"), "scale", &uid).label("app", "web");
        let pod = cri.run_pod(&spec);
        let id = cri.create_container(&pod, "app", CRI_IMAGE, &["/bin/sleep", "100000"]);
        cri.start_container(&id);
        let pid = cri.container_pid(&id);
        made.push((spec, id, pid));
    }
    println!(
        "scale: {pods} pods with one container each ({} containers with the sandboxes) made through CRI in {:.0} s",
        2 * pods,
        t.elapsed().as_secs_f64()
    );

    let rt = agent_runtime()?;
    let mut first = Vec::new();
    let mut start_ms = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let agent = BenchAgent::start(&rt, &ctrd)?;
        start_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let state = Arc::clone(agent.agent.state());
        wait(Duration::from_secs(30), || state.containerd_synced()).context("first list")?;
        first.push(state.metrics().snapshot().containerd_list_us as f64 / 1e3);
        check_pods(&state, &made)?;
        if first.len() == 1 {
            let (took, lines) = pidmap_ls(agent_bin, &agent.socket)?;
            let (batch, pids, _) = resolve_everything(&agent.socket)?;
            println!(
                "scale: pidmap ls: {lines} lines in {:.0} ms; ResolveBatch of every pid ({pids}): {:.0} ms",
                ms(took),
                ms(batch)
            );
        }
        agent.stop(&rt)?;
    }
    let per = |ms: &[f64]| {
        ms.iter()
            .map(|m| m * 1e3 / (2 * pods) as f64)
            .collect::<Vec<_>>()
    };
    println!(
        "scale: first containerd list and reconcile, {} containers: {} ms = {} µs per container (pidmap_containerd_list_seconds; {RUNS} agent starts); Agent::start → ready {} ms",
        2 * pods,
        list(&first, 0),
        list(&per(&first), 0),
        list(&start_ms, 0)
    );

    // The re-list after containerd restarts, on one agent.
    let agent = BenchAgent::start(&rt, &ctrd)?;
    let state = Arc::clone(agent.agent.state());
    wait(Duration::from_secs(30), || state.containerd_synced()).context("synced")?;
    let (mut relist, mut back) = (Vec::new(), Vec::new());
    for _ in 0..RESTARTS {
        ctrd.stop();
        wait(Duration::from_secs(15), || !state.containerd_connected())
            .context("disconnect seen")?;
        ctrd.restart();
        let t = Instant::now();
        wait(Duration::from_secs(30), || state.containerd_synced()).context("re-list")?;
        back.push(t.elapsed().as_secs_f64() * 1e3);
        relist.push(state.metrics().snapshot().containerd_list_us as f64 / 1e3);
    }
    check_pods(&state, &made)?;
    println!(
        "scale: re-list after a containerd restart, {} containers: list and reconcile {} ms = {} µs per container; containerd ready → synced {} ms (with the reconnect backoff)",
        2 * pods,
        list(&relist, 0),
        list(&per(&relist), 0),
        list(&back, 0)
    );
    agent.stop(&rt)?;
    let t = Instant::now();
    drop(ctrd); // Removes every pod through CRI, then stops containerd.
    println!(
        "scale: pods removed and containerd stopped in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Every container's init process resolves from containerd's metadata with its pod.
fn check_pods(
    state: &pidmap::testing::state::State,
    made: &[(PodSpec, String, u32)],
) -> Result<()> {
    let wrong = made
        .iter()
        .filter(|(spec, id, pid)| {
            let r = resolve(state, *pid, None);
            !(r.source == Some(Source::Containerd)
                && r.container.as_ref().is_some_and(|c| {
                    c.key.id == *id
                        && c.pod.pod_name.as_deref() == Some(spec.name.as_str())
                        && c.pod.pod_uid.as_deref() == Some(spec.uid.as_str())
                }))
        })
        .count();
    if wrong > 0 {
        bail!(
            "{wrong} of {} containers did not resolve with their pod",
            made.len()
        );
    }
    Ok(())
}

/// `a / b / c` with `decimals`.
fn list(values: &[f64], decimals: usize) -> String {
    values
        .iter()
        .map(|v| format!("{v:.decimals$}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// The agent binary: `--agent-bin`, else `pidmap` next to this binary.
pub(crate) fn agent_bin(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(bin) = given {
        return Ok(bin);
    }
    let exe = std::env::current_exe().context("the bench's own path")?;
    let bin = exe.with_file_name("pidmap");
    if !bin.exists() {
        bail!(
            "--scale-only needs the release agent: `cargo build --release -p pidmap` (or pass --agent-bin PATH)"
        );
    }
    Ok(bin)
}
