//! The pinned containers map's costs: to the agent (writes per container
//! event, the recompute with many cgroups, an exec storm with the map on
//! and off) and to a consumer (one lookup in a BPF program, from the
//! kernel's own run-time statistics). Everything on a private bpffs.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use agent_common::containers::{ContainerRecord, STATE_CONTAINER};
use anyhow::{Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, MapData};
use pidmap::{Agent, Config, testing::pinned};
use pidmap_tests::{
    CgroupGuard, PrivateBpfFs, consumer,
    containerd::{ContainerSpec, Containerd},
};
use tokio_util::sync::CancellationToken;

use crate::{
    agent_runtime,
    containerd::{Times, ms_after_start, percentile},
};

/// Runs every measurement: `containers` containers, `groups` host cgroups
/// with a process each, a storm of `storm` execs.
pub(crate) fn run(containers: usize, groups: usize, storm: usize, spawners: usize) -> Result<()> {
    let bpffs = PrivateBpfFs::mount();
    let pin_dir = bpffs.path().join("pidmap");
    let pin = pin_dir.join(agent_common::CONTAINERS_MAP);
    let pinned = Config {
        pin_dir: Some(pin_dir.clone()),
        ..Config::default()
    };
    crate::exec_storm(storm, spawners, &pinned, "containers map pinned", false)?;
    let unpinned = Config {
        no_pin: true,
        ..Config::default()
    };
    crate::exec_storm(
        storm,
        spawners,
        &unpinned,
        "containers map off (--no-pin)",
        false,
    )?;

    let ctrd = Containerd::start();
    let rt = agent_runtime()?;
    let shutdown = CancellationToken::new();
    let socket = pidmap_tests::private_socket();
    let config = Config {
        socket: socket.clone(),
        containerd_socket: ctrd.socket().to_path_buf(),
        ..pinned
    };
    let agent = rt.block_on(Agent::start(config, shutdown.clone()))?;
    let state = Arc::clone(agent.state());
    let map: BpfHashMap<MapData, u64, ContainerRecord> = BpfHashMap::try_from(
        aya::maps::Map::HashMap(MapData::from_pin(&pin).context("open the pin")?),
    )?;
    let map = Arc::new(map);

    container_events(&ctrd, &state, &map, containers)?;
    recompute(&state, groups)?;
    consumer_lookup(&pin, &ctrd)?;

    shutdown.cancel();
    rt.block_on(agent.wait())?;
    if let Some(dir) = socket.parent() {
        let _ = std::fs::remove_dir(dir);
    }
    Ok(())
}

/// The container name a record carries (these names are not hex).
fn name_of(r: &ContainerRecord) -> String {
    let end = r.container_id.iter().position(|&b| b == 0).unwrap_or(32);
    String::from_utf8_lossy(&r.container_id[..end]).into_owned()
}

/// Writes per container start and deletion, and task start → entry.
fn container_events(
    ctrd: &Containerd,
    state: &pidmap::testing::state::State,
    map: &Arc<BpfHashMap<MapData, u64, ContainerRecord>>,
    n: usize,
) -> Result<()> {
    let (_events, starts) = crate::containerd::task_start_times(ctrd)?;
    std::thread::sleep(Duration::from_millis(200)); // ctr events subscribed
    let seen: Times = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (map, seen, stop) = (Arc::clone(map), Arc::clone(&seen), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let now = SystemTime::now();
                let mut seen = seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for (_, r) in map.iter().filter_map(Result::ok) {
                    if r.state == STATE_CONTAINER {
                        seen.entry(name_of(&r)).or_insert(now);
                    }
                }
                drop(seen);
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let before = state.metrics().snapshot();
    let running: Vec<_> = (0..n)
        .map(|i| ctrd.run(ContainerSpec::new(format!("pin{i}"))))
        .collect();
    crate::containerd::wait(Duration::from_secs(30), || {
        seen.lock().map(|m| m.len() >= n).unwrap_or(false)
    })
    .context("every container in the map")?;
    std::thread::sleep(Duration::from_millis(300));
    let started = state.metrics().snapshot();
    stop.store(true, Ordering::Relaxed);
    let _ = poller.join();
    for c in &running {
        c.delete_task();
        ctrd.ctr_ok(["-n", c.namespace(), "containers", "rm", c.id()]);
    }
    std::thread::sleep(Duration::from_millis(500));
    let deleted = state.metrics().snapshot();

    let ms = ms_after_start(&starts, &seen);
    println!(
        "containers map, task start → entry (/tasks/start timestamp → the container's entry in the pinned map, 0.2 ms polling): {} containers, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (negative: before containerd's event)",
        ms.len(),
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms.last().copied().unwrap_or(f64::NAN)
    );
    let left = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, r)| r.state == STATE_CONTAINER && name_of(r).starts_with("pin"))
        .count();
    println!(
        "containers map writes: {:.2} updates per container started (ctr run); per container deleted (task and container), {:.2} removals by the agent, the rest by the kernel side at rmdir; {left} of {n} entries left",
        (started.pinned_map_writes - before.pinned_map_writes) as f64 / n as f64,
        (deleted.pinned_map_removals - started.pinned_map_removals) as f64 / n as f64,
    );
    Ok(())
}

/// The publisher's recompute (under the state's read locks) with `groups`
/// more host cgroups holding a process each.
fn recompute(state: &pidmap::testing::state::State, groups: usize) -> Result<()> {
    let cgroups: Vec<CgroupGuard> = (0..groups).map(|_| CgroupGuard::new_v2()).collect();
    let sleepers = crate::spawn_sleepers(groups)?;
    for (cgroup, sleeper) in cgroups.iter().zip(&sleepers) {
        cgroup.add(sleeper.pid());
    }
    std::thread::sleep(Duration::from_millis(500));
    let distinct = state.table().groups().count();
    let mut ns: Vec<f64> = Vec::new();
    let mut entries = 0;
    for _ in 0..200 {
        let t = Instant::now();
        entries = pinned::desired(state, pinned::Keyed::V2).len();
        ns.push(t.elapsed().as_nanos() as f64);
    }
    ns.sort_by(f64::total_cmp);
    println!(
        "containers map recompute (every change, 5 ms apart at most, and every second): {distinct} cgroup groups in the table, {entries} entries: p50 {:.0} µs, p99 {:.0} µs ({:.2} µs per group)",
        percentile(&ns, 0.5) / 1e3,
        percentile(&ns, 0.99) / 1e3,
        percentile(&ns, 0.5) / 1e3 / distinct.max(1) as f64,
    );
    drop(sleepers);
    drop(cgroups);
    Ok(())
}

/// What one lookup in the pinned map costs a consumer's BPF program: the
/// example consumer's run time per exec, from the kernel's statistics.
fn consumer_lookup(pin: &std::path::Path, ctrd: &Containerd) -> Result<()> {
    let work = tempfile::tempdir()?;
    let object = consumer::build(work.path());
    let mut ebpf = aya::EbpfLoader::new()
        .map_pin_path(agent_common::CONTAINERS_MAP, pin)
        .load(&object)
        .context("load the consumer")?;
    let btf = aya::Btf::from_sys_fs()?;
    let program: &mut aya::programs::BtfTracePoint = ebpf
        .program_mut("count_exec")
        .context("count_exec")?
        .try_into()?;
    program.load("sched_process_exec", &btf)?;
    program.attach()?;
    let c = ctrd.run(ContainerSpec::new("consumer"));
    let procs = pidmap_tests::cgroup2_root()
        .context("cgroup2")?
        .join(c.cgroup_path().trim_start_matches('/'))
        .join("cgroup.procs");
    // Statistics only while this fd is open.
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
    let program: &aya::programs::BtfTracePoint = ebpf
        .program("count_exec")
        .context("count_exec")?
        .try_into()?;
    let n = 2_000;
    for (label, procs) in [
        ("an entry (a container of no pod)", Some(procs.as_path())),
        ("no entry (the bench's own cgroup)", None),
    ] {
        let before = program.info()?;
        consumer::exec_true(procs, n);
        let after = program.info()?;
        let runs = after.run_count() - before.run_count();
        let ns = (after.run_time() - before.run_time()).as_nanos() as f64;
        println!(
            "consumer (examples/ebpf-consumer, lookup in the pinned map then a per-pod counter), exec with {label}: {runs} runs, {:.0} ns per run",
            ns / runs.max(1) as f64
        );
    }
    drop(stats);
    c.delete_task();
    Ok(())
}
