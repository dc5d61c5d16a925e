//! `cargo xtask bench`: measures the figures BENCHMARKS.md reports and
//! prints them. Needs root (it loads the agent's eBPF programs).
//!
//! Figures: exec-storm throughput, the agent's CPU per event and drops at
//! that rate; agent RSS and peak with the node's process table loaded
//! (`--agent-bin PATH`; alone with `--rss-only`); /proc seed time per 1,000
//! processes; query API Resolve/ResolveBatch latency and throughput next to
//! the /proc/PID/cgroup baseline (`--api-only`); container start to
//! resolvable (`--containerd-only`); the pinned containers map's costs
//! (`--pinned-only`); container start to resolvable with pod identity through CRI with NRI
//! only, containerd only and both (`--nri-only`, `--nri-pods N` default 30; needs a
//! containerd with NRI: `cargo xtask bench` gives it 2.1); a big node, made and removed (`--scale-only`,
//! `--scale-processes N` default 30,000, `--scale-pods P` default 250, 0 skips
//! either; not in the default run). `--storm-only` runs the exec storms alone. The node's
//! own pin (/sys/fs/bpf/pidmap) is never touched.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

mod alloc;
mod api;
mod containerd;
mod nri;
mod pinned;
mod scale;

use std::io::BufRead as _;

use anyhow::{Context as _, Result, bail};
use pidmap::{Agent, Config, testing::cgroup::CgroupFs};
use pidmap_tests::{ChildGuard, require_root};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

/// Name of the agent's runtime threads, so their CPU time can be told apart
/// from the spawning thread's.
const AGENT_THREADS: &str = "pidmap-agent";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(scale::FORK_SLEEPERS) {
        let n = args
            .get(1)
            .and_then(|n| n.parse().ok())
            .context("how many sleepers")?;
        return scale::fork_sleepers(n);
    }
    require_root();
    let storm: usize = arg(&args, "--storm").unwrap_or(20_000);
    let spawners: usize = arg(&args, "--spawners").unwrap_or(2);
    let extra: usize = arg(&args, "--extra-processes").unwrap_or(2_000);
    let containers: usize = arg(&args, "--containers").unwrap_or(50);
    let only_containerd = args.iter().any(|a| a == "--containerd-only");
    let only_api = args.iter().any(|a| a == "--api-only");
    let only_rss = args.iter().any(|a| a == "--rss-only");
    let only_storm = args.iter().any(|a| a == "--storm-only");
    let only_pinned = args.iter().any(|a| a == "--pinned-only");
    let only_scale = args.iter().any(|a| a == "--scale-only");
    let only_nri = args.iter().any(|a| a == "--nri-only");
    let nri_pods: usize = arg(&args, "--nri-pods").unwrap_or(30);
    let scale_processes: usize = arg(&args, "--scale-processes").unwrap_or(30_000);
    let scale_pods: usize = arg(&args, "--scale-pods").unwrap_or(250);
    let groups: usize = arg(&args, "--cgroups").unwrap_or(500);
    let api_pids: usize = arg(&args, "--api-pids").unwrap_or(1_000);
    let agent_bin = args
        .iter()
        .position(|a| a == "--agent-bin")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);

    println!("# pidmap bench");
    println!("machine: {}", machine());
    if only_containerd {
        return containerd::run(containers);
    }
    if only_nri {
        return nri::run(nri_pods);
    }
    if only_api {
        return api::run(api_pids);
    }
    if only_scale {
        let bin = scale::agent_bin(agent_bin)?;
        return scale::run(&bin, scale_processes, scale_pods);
    }
    if only_pinned {
        return pinned::run(containers, groups, storm, spawners);
    }
    if only_rss {
        let bin = agent_bin.context("--rss-only needs --agent-bin target/release/pidmap")?;
        return agent_rss(&bin, extra);
    }
    // The default wake-up policy (wake on the first waiting event, collect
    // for ring_batch_us), reading at every wake-up, and the old batched
    // policy (wake once 64 events wait, else the 10 ms poll), side by side;
    // then the default again with a query-like catch-up every millisecond.
    let default = Config {
        no_pin: true,
        ..Config::default()
    };
    exec_storm(
        storm,
        spawners,
        &default,
        "default: wake on the first event, 1 ms batches",
        false,
    )?;
    let eager = Config {
        ring_batch_us: 0,
        ..default.clone()
    };
    exec_storm(
        storm,
        spawners,
        &eager,
        "read at every wake-up (ring_batch_us = 0)",
        false,
    )?;
    let polled = Config {
        ring_wakeup_events: 64,
        ..default.clone()
    };
    exec_storm(
        storm,
        spawners,
        &polled,
        "wake once 64 wait, else the 10 ms poll (ring_wakeup_events = 64)",
        false,
    )?;
    exec_storm(storm, spawners, &default, "default", true)?;
    // The same with one core left to the agent: how much of the catch-up's
    // tail is waiting for a CPU.
    exec_storm(storm, 1, &default, "default, one spawner thread", true)?;
    if only_storm {
        return Ok(());
    }
    seed_time(extra)?;
    if let Some(bin) = agent_bin {
        agent_rss(&bin, extra)?;
    } else {
        println!("agent RSS: skipped (pass --agent-bin target/release/pidmap)");
    }
    api::run(api_pids)?;
    containerd::run(containers)?;
    nri::run(nri_pods)?;
    pinned::run(containers, groups, storm, spawners)
}

fn arg(args: &[String], name: &str) -> Option<usize> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    format!("Linux {}, {cpus} CPUs ({model})", kernel.trim())
}

/// utime+stime in ticks of this process's threads named `AGENT_THREADS`.
fn agent_cpu_ticks() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter(|s| {
            // The runtime's threads, and the tracker's own (named by the
            // agent: `pidmap-tracker`).
            s.contains(&format!("({AGENT_THREADS}")) || s.contains("(pidmap-tracker)")
        })
        .filter_map(|s| {
            let after = s[s.rfind(')')? + 2..].to_owned();
            let f: Vec<&str> = after.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

pub(crate) fn agent_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(AGENT_THREADS)
        .enable_all()
        .build()
        .context("tokio runtime")
}

/// Spawns `n` × `/bin/true` from `spawners` threads against an in-process
/// agent configured as `base` and prints throughput, events, drops, agent
/// CPU and the time from exec to the table. With `probe`, another thread
/// meanwhile calls `State::catch_up` (what every Resolve, ResolveBatch and
/// WhoAmI does first) once a millisecond and prints its latency and how
/// often it gave up.
pub(crate) fn exec_storm(
    n: usize,
    spawners: usize,
    base: &Config,
    label: &str,
    probe: bool,
) -> Result<()> {
    let rt = agent_runtime()?;
    let shutdown = CancellationToken::new();
    let socket = pidmap_tests::private_socket();
    let config = Config {
        socket: socket.clone(),
        exit_grace_seconds: 600,
        ..base.clone()
    };
    let agent = rt.block_on(Agent::start(config, shutdown.clone()))?;
    let state = Arc::clone(agent.state());
    let before = state.metrics().snapshot();
    let exec_latency_before = state.metrics().exec_to_resolvable.fine();
    let cpu_before = agent_cpu_ticks();
    let started = Instant::now();
    let storming = std::sync::atomic::AtomicBool::new(true);
    let probed = std::thread::scope(|s| {
        let prober = probe.then(|| {
            s.spawn(|| -> Result<(hdrhistogram::Histogram<u64>, u64)> {
                let mut latency = api::histogram()?;
                let mut gave_up = 0;
                while storming.load(std::sync::atomic::Ordering::Relaxed) {
                    let t = Instant::now();
                    if !rt
                        .block_on(state.catch_up(pidmap::testing::state::QUERY_CATCH_UP))
                        .is_current()
                    {
                        gave_up += 1;
                    }
                    latency.record(api::nanos(t.elapsed()))?;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok((latency, gave_up))
            })
        });
        let workers: Vec<_> = (0..spawners)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..n / spawners {
                        if let Ok(mut child) = Command::new("/bin/true").spawn() {
                            let _ = child.wait();
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            let _ = worker.join();
        }
        storming.store(false, std::sync::atomic::Ordering::Relaxed);
        prober.map(|p| p.join().expect("probe thread"))
    });
    let spawn_secs = started.elapsed().as_secs_f64();
    let total = (n / spawners) * spawners;
    // Every /bin/true gives fork + exec + exit, and a rename (its exec
    // renames it from the spawner's name to `true`).
    let expected = 4 * total as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    let received = loop {
        let got = state.metrics().snapshot().events_received() - before.events_received();
        if got >= expected || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let drain_secs = started.elapsed().as_secs_f64();
    let cpu_ticks = agent_cpu_ticks() - cpu_before;
    let after = state.metrics().snapshot();
    let lost = after.lost_events - before.lost_events;
    let cpu_secs = cpu_ticks as f64 / 100.0;
    let with = if probe { ", catch-up every 1 ms" } else { "" };
    println!(
        "exec storm ({label}{with}): {total} x /bin/true from {spawners} threads in {spawn_secs:.2} s = {:.0} processes/s",
        total as f64 / spawn_secs
    );
    println!(
        "  events: {received} received of {expected} expected (fork+exec+rename+exit), {:.0} events/s sustained, {lost} dropped",
        received as f64 / drain_secs
    );
    println!(
        "  agent CPU: {cpu_secs:.2} s = {:.2} µs per event ({:.1}% of one core during the storm)",
        cpu_secs * 1e6 / received.max(1) as f64,
        cpu_secs * 100.0 / drain_secs
    );
    let mut exec = state.metrics().exec_to_resolvable.fine();
    exec.subtract(&exec_latency_before)?;
    let ms = |q| exec.value_at_quantile(q) as f64 / 1e6;
    println!(
        "  exec → in the table: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} execs (HDR histogram: 2 significant digits)",
        ms(0.5),
        ms(0.99),
        ms(1.0),
        exec.len()
    );
    if let Some(probed) = probed {
        let (latency, gave_up) = probed?;
        let q = |q| api::fmt_ns(latency.value_at_quantile(q) as f64);
        println!(
            "  catch-up during the storm: {} calls, p50 {}, p99 {}, max {}, {gave_up} gave up after {:?}",
            latency.len(),
            q(0.5),
            q(0.99),
            api::fmt_ns(latency.max() as f64),
            pidmap::testing::state::QUERY_CATCH_UP,
        );
    }
    shutdown.cancel();
    rt.block_on(agent.wait())?;
    if let Some(dir) = socket.parent() {
        let _ = std::fs::remove_dir(dir);
    }
    Ok(())
}

pub(crate) fn spawn_sleepers(n: usize) -> Result<Vec<ChildGuard>> {
    (0..n)
        .map(|_| {
            Command::new("/bin/sleep")
                .arg("600")
                .spawn()
                .map(ChildGuard)
                .context("spawn sleeper")
        })
        .collect()
}

pub(crate) fn count_processes() -> usize {
    pidmap_tests::proc_pids().map_or(0, |pids| pids.len())
}

fn seed_time(extra: usize) -> Result<()> {
    let _sleepers = spawn_sleepers(extra)?;
    let fs = CgroupFs::discover()?;
    let root = PathBuf::from("/proc");
    let runs = 10;
    let mut best = Duration::MAX;
    let mut total = Duration::ZERO;
    let mut scanned = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let result = pidmap::testing::proc::scan(&fs, &root);
        let e = t.elapsed();
        best = best.min(e);
        total += e;
        scanned = result.processes.len();
    }
    let mean = total / runs;
    let per_k = |d: Duration| d.as_secs_f64() * 1e3 * 1000.0 / scanned.max(1) as f64;
    println!(
        "/proc seed: {scanned} processes, mean {:.1} ms (best {:.1} ms) over {runs} scans = {:.2} ms per 1,000 processes (best {:.2})",
        mean.as_secs_f64() * 1e3,
        best.as_secs_f64() * 1e3,
        per_k(mean),
        per_k(best)
    );
    Ok(())
}

fn agent_rss(bin: &std::path::Path, extra: usize) -> Result<()> {
    for (label, sleepers) in [("node as is", 0), ("with extra sleepers", extra)] {
        let _sleepers = spawn_sleepers(sleepers)?;
        let procs = count_processes();
        // A private socket: never the host's /run/pidmap, where a real agent may serve.
        let socket = pidmap_tests::private_socket();
        let mut agent = ChildGuard(
            Command::new(bin)
                .arg("agent")
                .arg("--socket")
                .arg(&socket)
                .arg("--no-pin")
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("start {}", bin.display()))?,
        );
        // The agent logs "agent ready" once its table is seeded.
        let stderr = agent.0.stderr.take().context("agent stderr")?;
        let mut lines = std::io::BufReader::new(stderr).lines();
        let ready = lines.any(|l| l.is_ok_and(|l| l.contains("agent ready")));
        if !ready {
            bail!("agent exited before it was ready: {:?}", agent.0.wait());
        }
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let pid = agent.pid();
        let status =
            |field| pidmap_tests::proc_status_kib(pid, field).context("agent /proc/PID/status");
        let (rss, peak) = (status("VmRSS")?, status("VmHWM")?);
        let mib = |kib: u64| kib as f64 / 1024.0;
        let (heap, ring) = (
            mapping_rss_kib(pid, "[heap]"),
            mapping_rss_kib(pid, "anon_inode:bpf-map"),
        );
        println!(
            "agent RSS ({label}, {procs} processes on the node): {:.1} MiB (peak {:.1} MiB); \
             of it: heap {:.1} MiB, BPF map mappings {:.1} MiB (the ring buffer's data pages \
             are mapped twice), the rest binary, libraries and stacks",
            mib(rss),
            mib(peak),
            mib(heap),
            mib(ring)
        );
        // SAFETY: kill has no memory-safety preconditions; the pid is our child.
        unsafe { libc::kill(agent.pid() as i32, libc::SIGTERM) };
        let _ = agent.wait();
        if let Some(dir) = socket.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    Ok(())
}

/// The summed `Rss:` of the mappings in /proc/PID/smaps whose name starts
/// with `name` (0 if none or unreadable).
fn mapping_rss_kib(pid: u32, name: &str) -> u64 {
    let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return 0;
    };
    let mut matching = false;
    let mut total = 0;
    for line in smaps.lines() {
        if let Some(kib) = line.strip_prefix("Rss:") {
            if matching {
                total += kib
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            }
        } else if line
            .split(' ')
            .next()
            .is_some_and(|range| range.contains('-') && !range.ends_with(':'))
        {
            // A mapping's header: `start-end perms offset dev inode [name]`.
            matching = line
                .split_whitespace()
                .nth(5)
                .is_some_and(|n| n.starts_with(name));
        }
    }
    total
}
