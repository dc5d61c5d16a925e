//! Container start to resolvable with pod identity, through CRI as kubelet drives it, with
//! the agent's runtime sources three ways: NRI only (a CRI-O node), containerd only, both.
//!
//! For each container: StartContainer runs on another thread while this one reads the
//! container's `cgroup.procs` every 0.2 ms; from the moment its first process (runc's init)
//! shows there, the agent is asked about that pid as the API asks (the table caught up with
//! the kernel's events first, then the resolver), every 0.2 ms until it answers with the
//! container and its pod name. The figure is that wait; "at first look" counts the
//! containers whose very first question was answered whole.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use pidmap::{Config, testing::resolver::resolve, testing::state::State};
use pidmap_tests::containerd::Containerd;

use crate::{
    agent_runtime,
    containerd::{BenchAgent, percentile, wait},
};

/// How often the cgroup and the resolver are looked at.
const POLL: Duration = Duration::from_micros(200);

#[derive(Clone, Copy)]
enum Sources {
    NriOnly,
    ContainerdOnly,
    Both,
}

impl Sources {
    fn name(self) -> &'static str {
        match self {
            Self::NriOnly => "NRI only",
            Self::ContainerdOnly => "containerd only",
            Self::Both => "containerd and NRI",
        }
    }

    fn config(self, ctrd: &Containerd) -> Config {
        let absent = ctrd.dir().join("no-containerd-here.sock");
        Config {
            containerd_socket: match self {
                Self::NriOnly => absent,
                _ => ctrd.socket().to_path_buf(),
            },
            nri_socket: ctrd.nri_socket(),
            no_nri: matches!(self, Self::ContainerdOnly),
            ..Config::default()
        }
    }

    fn synced(self, state: &State) -> bool {
        use pidmap::testing::state::NriLink;
        let nri = state.nri_link() == NriLink::Synced;
        match self {
            Self::NriOnly => nri,
            Self::ContainerdOnly => state.containerd_synced(),
            Self::Both => nri && state.containerd_synced(),
        }
    }
}

/// Every way, `pods` pods each.
pub(crate) fn run(pods: usize) -> Result<()> {
    if cfg!(not(cri_api)) {
        anyhow::bail!("{}", pidmap_tests::containerd::CRI_MISSING);
    }
    let ctrd = Containerd::start_cri_nri();
    let rt = agent_runtime()?;
    for sources in [Sources::NriOnly, Sources::ContainerdOnly, Sources::Both] {
        let agent = BenchAgent::start_with(&rt, sources.config(&ctrd))?;
        let state = Arc::clone(agent.agent.state());
        wait(Duration::from_secs(15), || sources.synced(&state)).context("synced")?;
        let (mut ms, first_look) = measure(&rt, &ctrd, &state, pods)?;
        ms.sort_by(f64::total_cmp);
        println!(
            "container start to resolvable with pod identity, {} (CRI; first process in the container's cgroup → catch-up and resolve, as the API does, answer with the container and its pod; 0.2 ms polling): {} containers, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; answered whole at first look: {} of {}",
            sources.name(),
            ms.len(),
            percentile(&ms, 0.5),
            percentile(&ms, 0.99),
            ms.last().copied().unwrap_or(f64::NAN),
            first_look,
            ms.len()
        );
        if !matches!(sources, Sources::ContainerdOnly) {
            let answers = state.metrics().nri_answer.fine();
            let us = |q| answers.value_at_quantile(q) as f64 / 1e3;
            println!(
                "NRI answers, {} (request decoded → answer written, the store updated in between; the runtime waits for it, containerd allows 2 s): {} answers, p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs (HDR histogram: 2 significant digits)",
                sources.name(),
                answers.len(),
                us(0.5),
                us(0.99),
                us(1.0)
            );
        }
        agent.stop(&rt)?;
    }
    Ok(())
}

#[cfg(not(cri_api))]
fn measure(
    _: &tokio::runtime::Runtime,
    _: &Containerd,
    _: &Arc<State>,
    _: usize,
) -> Result<(Vec<f64>, usize)> {
    unreachable!("checked in run")
}

#[cfg(cri_api)]
fn measure(
    rt: &tokio::runtime::Runtime,
    ctrd: &Containerd,
    state: &Arc<State>,
    pods: usize,
) -> Result<(Vec<f64>, usize)> {
    use pidmap_tests::{
        containerd::CRI_IMAGE,
        cri::{PodSpec, first_pid, procs_files},
    };
    let cri = ctrd.cri();
    let mut ms = Vec::with_capacity(pods);
    let mut first_look = 0;
    let mut made = Vec::new();
    for i in 0..pods {
        let pod = cri.run_pod(&PodSpec::new(
            &format!("bench-{i}"),
            "bench",
            &format!("7d3e1f20-8b4c-4d6e-9fa0-{i:012x}"),
        ));
        let id = cri.create_container(&pod, "app", CRI_IMAGE, &["/bin/sleep", "1000"]);
        let files = procs_files(&pod, &id);
        let (waited, at_once) = std::thread::scope(|s| {
            let starter = s.spawn(|| cri.start_container(&id));
            let result = first_pid(&files, Duration::from_secs(20), POLL)
                .map(|(pid, seen)| until_whole(rt, state, pid, &id, seen));
            starter
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            result
        })
        .with_context(|| format!("no process of {id} appeared in {files:?}"))??;
        ms.push(waited.as_secs_f64() * 1e3);
        first_look += usize::from(at_once);
        made.push((pod, id));
    }
    for (pod, id) in made {
        cri.tear_down(&pod, &id);
    }
    Ok((ms, first_look))
}

/// Asks about `pid` as the API does until the answer is container `id` with a pod name;
/// returns the wait since `seen` and whether the first question was answered whole.
fn until_whole(
    rt: &tokio::runtime::Runtime,
    state: &State,
    pid: u32,
    id: &str,
    seen: Instant,
) -> Result<(Duration, bool)> {
    let mut first = true;
    let deadline = seen + Duration::from_secs(20);
    loop {
        rt.block_on(state.catch_up(pidmap::testing::state::QUERY_CATCH_UP));
        let r = resolve(state, pid, None);
        if r.container
            .as_ref()
            .is_some_and(|c| c.key.id == id && c.pod.pod_name.is_some())
        {
            return Ok((seen.elapsed(), first));
        }
        if Instant::now() > deadline {
            anyhow::bail!("pid {pid} of {id} never resolved with its pod: {r:?}");
        }
        first = false;
        std::thread::sleep(POLL);
    }
}
