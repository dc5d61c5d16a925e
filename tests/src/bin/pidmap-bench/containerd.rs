//! containerd figures: start-to-resolvable, exec-to-resolvable, reconnect
//! and reconcile time, memory per container and per process.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use pidmap::{
    Agent, Config,
    testing::resolver::{Source, resolve},
    testing::state::State,
    testing::state::container::ContainerKey,
};
use pidmap_tests::{
    ChildGuard,
    containerd::{ContainerSpec, Containerd},
};
use tokio_util::sync::CancellationToken;

use crate::{agent_runtime, alloc};

/// An in-process agent beside a containerd, on a private socket, unpinned.
pub(crate) struct BenchAgent {
    pub(crate) agent: Agent,
    pub(crate) socket: std::path::PathBuf,
    shutdown: CancellationToken,
}

impl BenchAgent {
    /// Starts it (returns once it is ready) on `rt`, watching `ctrd`'s containerd socket.
    pub(crate) fn start(rt: &tokio::runtime::Runtime, ctrd: &Containerd) -> Result<Self> {
        Self::start_with(
            rt,
            Config {
                containerd_socket: ctrd.socket().to_path_buf(),
                no_nri: true,
                ..Config::default()
            },
        )
    }

    /// Starts it with `config`'s runtime sources (returns once it is ready) on `rt`.
    pub(crate) fn start_with(rt: &tokio::runtime::Runtime, config: Config) -> Result<Self> {
        let shutdown = CancellationToken::new();
        let socket = pidmap_tests::private_socket();
        let config = Config {
            socket: socket.clone(),
            no_pin: true,
            ..config
        };
        let agent = rt.block_on(Agent::start(config, shutdown.clone()))?;
        Ok(Self {
            agent,
            socket,
            shutdown,
        })
    }

    /// Stops it, waits for its tasks and removes its socket's directory.
    pub(crate) fn stop(self, rt: &tokio::runtime::Runtime) -> Result<()> {
        self.shutdown.cancel();
        rt.block_on(self.agent.wait())?;
        if let Some(dir) = self.socket.parent() {
            let _ = std::fs::remove_dir(dir);
        }
        Ok(())
    }
}

/// Runs every containerd measurement with `containers` containers.
pub(crate) fn run(containers: usize) -> Result<()> {
    let ctrd = Containerd::start();
    let rt = agent_runtime()?;
    let agent = BenchAgent::start(&rt, &ctrd)?;
    let state = Arc::clone(agent.agent.state());
    wait(Duration::from_secs(15), || state.containerd_synced()).context("connect")?;
    settle();

    let heap_before = alloc::in_use();
    start_to_resolvable(&ctrd, &state, containers)?;
    settle();
    let heap_containers = alloc::in_use();
    exec_to_resolvable(&ctrd, &state)?;
    reconnect(&ctrd, &state, containers)?;

    settle();
    let heap_before_procs = alloc::in_use();
    let sleepers = 2_000;
    let guards = crate::spawn_sleepers(sleepers)?;
    wait(Duration::from_secs(15), || {
        guards.iter().all(|g| state.process(g.pid()).is_some())
    })
    .context("sleepers in the table")?;
    settle();
    let heap_procs = alloc::in_use();
    println!(
        "memory: {:.0} bytes per container (with its init process and cgroup entries), {:.0} bytes per host process (heap, counted by the allocator)",
        heap_containers.saturating_sub(heap_before) as f64 / containers as f64,
        heap_procs.saturating_sub(heap_before_procs) as f64 / sleepers as f64,
    );
    drop(guards);
    agent.stop(&rt)
}

/// Lets the agent apply what is in flight before a heap measurement.
fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

pub(crate) fn wait(timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Wall-clock times by container id, filled by another thread.
pub(crate) type Times = Arc<Mutex<HashMap<String, SystemTime>>>;

/// Milliseconds from each container's `/tasks/start` (`starts`) to its time
/// in `done` (negative: before it), sorted.
pub(crate) fn ms_after_start(starts: &Times, done: &Times) -> Vec<f64> {
    let starts = starts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let done = done
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut ms: Vec<f64> = done
        .iter()
        .filter_map(|(id, at)| {
            let start = starts.get(id)?;
            Some(match at.duration_since(*start) {
                Ok(d) => d.as_secs_f64() * 1e3,
                Err(e) => -e.duration().as_secs_f64() * 1e3,
            })
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    ms
}

/// `ctr events` timestamps of `/tasks/start`, by container id.
pub(crate) fn task_start_times(ctrd: &Containerd) -> Result<(ChildGuard, Times)> {
    let mut child = ChildGuard(
        Command::new("ctr")
            .arg("-a")
            .arg(ctrd.socket())
            .arg("events")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("ctr events")?,
    );
    let out = child.0.stdout.take().context("ctr events stdout")?;
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let map = Arc::clone(&seen);
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            // 2026-11-23 11:21:03.123456789 +0000 UTC default /tasks/start {"container_id":"x","pid":1}
            if !line.contains(" /tasks/start ") {
                continue;
            }
            let (Some(ts), Some(id)) = (parse_time(&line), json_field(&line, "container_id"))
            else {
                continue;
            };
            map.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(id, ts);
        }
    });
    Ok((child, seen))
}

fn parse_time(line: &str) -> Option<SystemTime> {
    let mut f = line.split_whitespace();
    let (date, time) = (f.next()?, f.next()?);
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (h, min, s) = (t.next()??, t.next()??, t.next()??);
    let nanos: u64 = format!("{frac:0<9}")[..9].parse().ok()?;
    let days = days_from_civil(y, m, day);
    let secs = days * 86_400 + h * 3_600 + min * 60 + s;
    Some(
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(secs).ok()?)
            + Duration::from_nanos(nanos),
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn json_field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let end = line[start..].find('"')?;
    Some(line[start..start + end].to_owned())
}

fn start_to_resolvable(ctrd: &Containerd, state: &Arc<State>, n: usize) -> Result<()> {
    let (_events, starts) = task_start_times(ctrd)?;
    std::thread::sleep(Duration::from_millis(200)); // ctr events subscribed
    let resolved: Times = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (state, resolved, stop) = (Arc::clone(state), Arc::clone(&resolved), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let running: Vec<(ContainerKey, u32)> = state
                    .containers()
                    .iter()
                    .filter_map(|c| Some((c.key.clone(), c.task_pid?)))
                    .collect();
                let now = SystemTime::now();
                let mut done = resolved
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for (key, pid) in running {
                    if done.contains_key(&key.id) {
                        continue;
                    }
                    let r = resolve(&state, pid, None);
                    let full = r.source == Some(Source::Containerd)
                        && r.container
                            .as_ref()
                            .is_some_and(|c| c.key == key && c.cgroup_path.is_some());
                    if full {
                        done.insert(key.id.clone(), now);
                    }
                }
                drop(done);
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    for i in 0..n {
        ctrd.run(ContainerSpec::new(format!("bench{i}")).label("bench", "1"));
    }
    wait(Duration::from_secs(30), || {
        resolved.lock().map(|m| m.len() >= n).unwrap_or(false)
    })
    .context("all containers resolvable")?;
    stop.store(true, Ordering::Relaxed);
    let _ = poller.join();
    let ms = ms_after_start(&starts, &resolved);
    println!(
        "container start to resolvable (/tasks/start timestamp → init pid resolves with metadata, 0.2 ms polling): {} containers, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms.len(),
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}

fn exec_to_resolvable(ctrd: &Containerd, state: &Arc<State>) -> Result<()> {
    let execs = 1_000;
    let before = state.metrics().exec_to_resolvable.fine();
    let script = format!(
        "i=0; while [ $i -lt {execs} ]; do /bin/true; i=$((i+1)); done; exec /bin/sleep 1000"
    );
    let c = ctrd.run(ContainerSpec::new("execs").command(["/bin/sh", "-c", script.as_str()]));
    let pid = c.init_pid();
    wait(Duration::from_secs(60), || {
        state
            .process(pid)
            .is_some_and(|p| p.comm.as_string() == "sleep")
    })
    .context("exec loop finished")?;
    settle();
    let mut after = state.metrics().exec_to_resolvable.fine();
    after.subtract(&before)?;
    let ms = |q| after.value_at_quantile(q) as f64 / 1e6;
    println!(
        "exec to resolvable (kernel exec event → process in the table, inside a running container): {} execs, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (HDR histogram: 2 significant digits)",
        after.len(),
        ms(0.5),
        ms(0.99),
        ms(1.0)
    );
    Ok(())
}

fn reconnect(ctrd: &Containerd, state: &Arc<State>, containers: usize) -> Result<()> {
    let mut ms = Vec::new();
    for _ in 0..5 {
        ctrd.stop();
        wait(Duration::from_secs(15), || !state.containerd_connected())
            .context("disconnect seen")?;
        ctrd.restart();
        let t = Instant::now();
        wait(Duration::from_secs(15), || state.containerd_synced()).context("reconnect")?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    println!(
        "reconnect and reconcile after a containerd restart ({} containers; containerd ready → agent listed and reconciled): p50 {:.0} ms, max {:.0} ms over {} restarts (includes the reconnect backoff)",
        containers + 1,
        percentile(&ms, 0.5),
        ms.last().copied().unwrap_or(f64::NAN),
        ms.len()
    );
    Ok(())
}
