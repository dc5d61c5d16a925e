//! podman: a runtime pidmap does not watch. Its containers (podman 4.3, cgroupfs manager:
//! cgroup `/libpod_parent/libpod-<id>`) must resolve from their cgroup paths
//! (`source: cgroup-path`, runtime `podman`), be listed by ListContainers and their
//! processes by ListProcesses — started before the agent or after. Checked through
//! pidmap's API, with no containerd to ask.
//!
//! Run as root with `--test-threads=1`, after `cargo xtask setup --for-tests` (which
//! installs `podman`).

use std::time::Duration;

use pidmap::{
    Config,
    api::proto::{self, ListProcessesRequest, pidmap_client::PidmapClient},
};
use pidmap_tests::{
    TestAgent, children, containers_in, eventually,
    podman::{Podman, PodmanContainer},
    resolved_when,
};
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(15);
/// The namespace pidmap lists path-known containers under: their runtime's name.
const RUNTIME: &str = "podman";

/// Waits until `pid` resolves from its cgroup path as podman container `c`.
async fn resolves_from_path(client: &PidmapClient<Channel>, pid: u32, c: &PodmanContainer) {
    let answer = resolved_when(client, pid, |r| {
        r.source == proto::Source::CgroupPath as i32
            && r.state == proto::ProcessState::Running as i32
            && r.path_container_id.as_deref() == Some(c.id.as_str())
            && r.path_runtime.as_deref() == Some(RUNTIME)
            && r.cgroup_path.as_deref() == Some(c.cgroup.as_str())
    })
    .await;
    if let Err(r) = answer {
        panic!(
            "pid {pid} never resolved from its path as podman container {}: {r:?}",
            c.id
        );
    }
}

/// The podman container `id` as ListContainers shows it, if it does.
async fn listed(client: &PidmapClient<Channel>, id: &str) -> Option<proto::Container> {
    containers_in(client, RUNTIME)
        .await
        .into_iter()
        .find(|c| c.id == id)
}

/// The pids ListProcesses gives for podman container `id`.
async fn processes(client: &PidmapClient<Channel>, id: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = client
        .clone()
        .list_processes(ListProcessesRequest {
            container_id: id.to_owned(),
            runtime_namespace: Some(RUNTIME.into()),
        })
        .await
        .expect("ListProcesses")
        .into_inner()
        .processes
        .into_iter()
        .map(|p| p.pid)
        .collect();
    pids.sort_unstable();
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_containers_resolve_from_their_cgroup_paths() {
    let podman = Podman::new();
    // Found by the /proc seed.
    let early = podman.run("early");
    let agent = TestAgent::start(Config {
        // No containerd: path answers are all there is.
        containerd_socket: podman.dir().join("no-containerd.sock"),
        ..Config::default()
    })
    .await;
    let client = agent.client().await;
    resolves_from_path(&client, early.pid, &early).await;

    // Started while the agent runs: found from kernel events.
    let late = podman.run("late");
    resolves_from_path(&client, late.pid, &late).await;
    let mut child = None;
    let forked = eventually(WAIT, || {
        child = children(late.pid).first().copied();
        std::future::ready(child.ok_or(()))
    })
    .await;
    let child = forked.unwrap_or_else(|()| panic!("{}'s shell never forked", late.id));
    resolves_from_path(&client, child, &late).await;

    for c in [&early, &late] {
        let listed = listed(&client, &c.id)
            .await
            .unwrap_or_else(|| panic!("{} not listed", c.id));
        assert_eq!(
            listed.source,
            proto::Source::CgroupPath as i32,
            "{listed:?}"
        );
        assert_eq!(listed.runtime, RUNTIME, "{listed:?}");
        assert_eq!(listed.status, "running", "{listed:?}");
        assert_eq!(listed.cgroup_path.as_deref(), Some(c.cgroup.as_str()));
        assert_eq!(listed.task_pid, Some(c.pid), "{listed:?}");
    }
    let mut want = vec![late.pid, child];
    want.sort_unstable();
    assert_eq!(processes(&client, &late.id).await, want, "ListProcesses");

    // Removed: its processes exit, and the container reads stopped.
    podman.remove(&late.id);
    let stopped = eventually(WAIT, || async {
        match listed(&client, &late.id).await {
            Some(c) if c.status == "stopped" => Ok(()),
            other => Err(other),
        }
    })
    .await;
    if let Err(c) = stopped {
        panic!("{} never stopped: {c:?}", late.id);
    }
    assert!(processes(&client, &late.id).await.is_empty());
    agent.stop().await;
}
