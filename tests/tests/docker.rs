//! Docker: a private `dockerd` (Debian's `docker.io`) on the fixture's containerd runs its
//! containers in containerd namespace `moby`, but tells containerd neither their image
//! name nor their labels. pidmap resolves them as containerd's, and reads image and
//! labels from the Docker Engine API when its socket answers (`--docker-socket`),
//! without it otherwise. Checked through pidmap's API.
//!
//! Run as root with `--test-threads=1`, after `cargo xtask setup --for-tests` (which
//! installs `docker.io`).

use std::{path::Path, time::Duration};

use pidmap::Config;
use pidmap_tests::{
    TestAgent,
    containerd::Containerd,
    containers_in,
    docker::{CGROUP_PARENT, Dockerd},
    eventually, resolved_as,
};

const IMAGE: &str = "localhost/busybox:docker";
const MOBY: &str = "moby";

/// An agent on `ctrd` that asks Docker at `docker_socket`.
async fn agent(ctrd: &Containerd, docker_socket: &Path) -> TestAgent {
    TestAgent::start_synced(Config {
        docker_socket: docker_socket.to_path_buf(),
        ..TestAgent::containerd_config(ctrd)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_containers_resolve_as_moby_with_dockers_image_and_labels() {
    let ctrd = Containerd::start();
    let docker = Dockerd::start(&ctrd);
    docker.import_busybox_image(IMAGE);
    // Running before the agent: found by its first list.
    let early = docker.run("early", IMAGE, &[("team", "infra")]);
    let agent = agent(&ctrd, &docker.socket()).await;
    let client = agent.client().await;

    let record = resolved_as(&client, early.pid, &early.id).await;
    let c = record.container.expect("container");
    assert_eq!(c.runtime_namespace, MOBY, "{c:?}");
    assert_eq!(c.image, IMAGE, "Docker's image name: {c:?}");
    assert_eq!(c.labels.get("team").map(String::as_str), Some("infra"));
    assert_eq!(c.status, "running", "{c:?}");
    let path = format!("{CGROUP_PARENT}/{}", early.id);
    assert_eq!(record.cgroup_path.as_deref(), Some(path.as_str()));

    // Started while the agent runs: found from containerd's events.
    let late = docker.run("late", IMAGE, &[("tier", "web")]);
    let record = resolved_as(&client, late.pid, &late.id).await;
    let c = record.container.expect("container");
    assert_eq!(c.image, IMAGE, "{c:?}");
    assert_eq!(c.labels.get("tier").map(String::as_str), Some("web"));
    assert!(!c.labels.contains_key("team"), "{c:?}");

    // `pidmap ls -n moby` shows both, with their image.
    let listed = containers_in(&client, MOBY).await;
    for id in [&early.id, &late.id] {
        let c = listed
            .iter()
            .find(|c| &c.id == id)
            .unwrap_or_else(|| panic!("{id} not listed: {listed:?}"));
        assert_eq!(c.image, IMAGE, "{c:?}");
    }
    let lookups = agent.state().metrics().docker_lookups();
    assert!(lookups.found >= 2, "{lookups:?}");
    assert_eq!(lookups.unreachable + lookups.failed, 0, "{lookups:?}");

    // `docker rm -f`: the container is deleted, and keeps its image for the grace window.
    docker.docker_ok(["rm", "-f", &late.id]);
    let deleted = eventually(Duration::from_secs(15), || async {
        let listed = containers_in(&client, MOBY).await;
        match listed.iter().find(|c| c.id == late.id) {
            Some(c) if c.deleted && c.image == IMAGE => Ok(()),
            _ => Err(listed),
        }
    })
    .await;
    if let Err(listed) = deleted {
        panic!("{} not deleted: {listed:?}", late.id);
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_dockers_socket_its_containers_resolve_without_image() {
    let ctrd = Containerd::start();
    let docker = Dockerd::start(&ctrd);
    docker.import_busybox_image(IMAGE);
    let box_ = docker.run("box", IMAGE, &[("team", "infra")]);
    let absent = ctrd.dir().join("no-docker.sock");
    let agent = agent(&ctrd, &absent).await;
    let client = agent.client().await;

    let record = resolved_as(&client, box_.pid, &box_.id).await;
    let c = record.container.expect("container");
    assert_eq!(c.runtime_namespace, MOBY, "{c:?}");
    assert_eq!(
        c.image, "",
        "containerd has no image name for Docker's containers"
    );
    assert!(!c.labels.contains_key("team"), "{c:?}");
    let lookups = agent.state().metrics().docker_lookups();
    assert!(lookups.unreachable >= 1, "{lookups:?}");
    assert_eq!(lookups.found, 0, "{lookups:?}");
    agent.stop().await;
}
