//! containerd correlation end to end: a real containerd with runc, real
//! containers, the real eBPF programs; checked through the resolver.
//!
//! Run as root with `--test-threads=1`.

use std::{process::Command, time::Duration};

use pidmap::{
    Config,
    testing::resolver::{Resolution, Resolved, Source, resolve},
    testing::state::State,
    testing::state::container::{ContainerKey, TaskStatus},
};
use pidmap_tests::{
    TestAgent, children,
    containerd::{ContainerSpec, Containerd},
    wait_until,
};

const WAIT: Duration = Duration::from_secs(15);

/// Waits until `pid` resolves through containerd to `key`; returns the answer.
async fn resolves_to(state: &State, pid: u32, key: &ContainerKey) -> Resolution {
    let ok = wait_until(WAIT, || {
        let r = resolve(state, pid, None);
        r.source == Some(Source::Containerd) && r.container.as_ref().is_some_and(|c| &c.key == key)
    })
    .await;
    let r = resolve(state, pid, None);
    assert!(ok, "pid {pid} never resolved to {key}: {r:?}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_started_before_the_agent_resolves_at_start_up() {
    let ctrd = Containerd::start();
    let c = ctrd.run(ContainerSpec::new("early").label("team", "infra"));
    let pid = c.init_pid();
    let agent = TestAgent::start_with_containerd(&ctrd).await;
    // Connected means listed: no more waiting.
    let r = resolve(agent.state(), pid, None);
    assert_eq!(r.source, Some(Source::Containerd), "{r:?}");
    assert_eq!(r.state, Resolved::Running);
    let container = r.container.expect("container metadata");
    assert_eq!(container.key, ContainerKey::new("default", "early"));
    assert_eq!(
        container.labels.get("team").map(String::as_str),
        Some("infra")
    );
    assert_eq!(container.task_pid, Some(pid));
    assert_eq!(container.cgroup_path.as_deref(), Some("/default/early"));
    assert_eq!(r.cgroup_path.as_deref(), Some("/default/early"));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_started_after_resolves_with_image_labels_and_pod() {
    let ctrd = Containerd::start();
    let agent = TestAgent::start_with_containerd(&ctrd).await;
    let uid = "0b8f3c3e-2a9a-4c8e-9b3a-5d7f1e2c4a6b";
    ctrd.import_busybox_image("k8s.io", "registry.test/busybox:1.0");
    let c = ctrd.run(
        ContainerSpec::new("web")
            .namespace("k8s.io")
            .image("registry.test/busybox:1.0")
            .label("io.kubernetes.pod.name", "web-0")
            .label("io.kubernetes.pod.namespace", "shop")
            .label("io.kubernetes.pod.uid", uid)
            .label("io.kubernetes.container.name", "nginx")
            .kubepods("besteffort", uid),
    );
    let pid = c.init_pid();
    let key = ContainerKey::new("k8s.io", "web");
    let r = resolves_to(agent.state(), pid, &key).await;
    let container = r.container.expect("metadata");
    assert_eq!(container.image, "registry.test/busybox:1.0");
    assert_eq!(container.pod.pod_name.as_deref(), Some("web-0"));
    assert_eq!(container.pod.pod_namespace.as_deref(), Some("shop"));
    assert_eq!(container.pod.pod_uid.as_deref(), Some(uid));
    assert_eq!(container.pod.container_name.as_deref(), Some("nginx"));
    assert!(!container.pod.is_sandbox);
    let want_path = format!("/kubepods/besteffort/pod{uid}/web");
    assert_eq!(container.cgroup_path.as_deref(), Some(want_path.as_str()));
    assert_eq!(r.cgroup_path.as_deref(), Some(want_path.as_str()));
    assert_eq!(container.status, TaskStatus::Running);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_its_grandchild_resolve_to_the_container() {
    let ctrd = Containerd::start();
    let c = ctrd.run(ContainerSpec::new("box"));
    let agent = TestAgent::start_with_containerd(&ctrd).await;
    let key = ContainerKey::new("default", "box");
    let exec_pid = c.exec("probe", ["/bin/sh", "-c", "/bin/sleep 1000 & wait"]);
    let state = agent.state();
    let r = resolves_to(state, exec_pid, &key).await;
    assert_eq!(r.state, Resolved::Running);
    let mut grandchild = None;
    assert!(
        wait_until(WAIT, || {
            grandchild = children(exec_pid).first().copied();
            grandchild.is_some()
        })
        .await,
        "the exec'd shell never forked"
    );
    let grandchild = grandchild.expect("found above");
    let r = resolves_to(state, grandchild, &key).await;
    let p = r.process.expect("process");
    assert_eq!(p.parent.map(|k| k.pid), Some(exec_pid));
    // Its exec may still be in the ring for one poll after its fork.
    assert!(
        wait_until(WAIT, || state
            .process(grandchild)
            .is_some_and(|p| p.comm.as_string() == "sleep"))
        .await,
        "grandchild never showed comm sleep: {:?}",
        state.process(grandchild)
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_container_resolves_running_then_exited() {
    let ctrd = Containerd::start();
    let agent = TestAgent::start_with_containerd(&ctrd).await;
    let state = agent.state();
    let key = ContainerKey::new("default", "brief");
    let c =
        ctrd.run(ContainerSpec::new("brief").command(["/bin/sh", "-c", "/bin/sleep 2; exit 3"]));
    let pid = c.init_pid();
    let r = resolves_to(state, pid, &key).await;
    assert_eq!(r.state, Resolved::Running, "while it runs: {r:?}");
    c.wait_exited(WAIT);
    assert!(
        wait_until(WAIT, || {
            let r = resolve(state, pid, None);
            r.state == Resolved::Exited
                && r.container
                    .as_ref()
                    .is_some_and(|c| c.key == key && c.status == TaskStatus::Stopped)
        })
        .await,
        "never resolved exited: {:?}",
        resolve(state, pid, None)
    );
    let r = resolve(state, pid, None);
    assert_eq!(r.container.expect("kept").exit_code, Some(3));

    // Even a container whose process lives for a moment: `exit 3` at once.
    let instant = ctrd.run(ContainerSpec::new("instant").command(["/bin/sh", "-c", "exit 3"]));
    instant.wait_exited(WAIT);
    let key = ContainerKey::new("default", "instant");
    let mut pid = None;
    assert!(
        wait_until(WAIT, || {
            pid = state.containers().get(&key).and_then(|c| c.task_pid);
            pid.is_some()
        })
        .await,
        "task start of the instant container never seen"
    );
    let pid = pid.expect("found above");
    resolves_to(state, pid, &key).await;
    // containerd's task start can be applied while the kernel's exec and exit
    // events of that pid still wait in the ring buffer (the resolver reads the
    // table as it is; only the API drains the ring first): wait for them.
    assert!(
        wait_until(WAIT, || resolve(state, pid, None).state == Resolved::Exited).await,
        "{:?}",
        resolve(state, pid, None)
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_id_in_two_namespaces_never_mixes() {
    let ctrd = Containerd::start();
    let a = ctrd.run(ContainerSpec::new("same").namespace("alpha"));
    let agent = TestAgent::start_with_containerd(&ctrd).await;
    // The second namespace is created while the agent watches.
    let b = ctrd.run(ContainerSpec::new("same").namespace("beta"));
    let state = agent.state();
    let ra = resolves_to(state, a.init_pid(), &ContainerKey::new("alpha", "same")).await;
    let rb = resolves_to(state, b.init_pid(), &ContainerKey::new("beta", "same")).await;
    assert_ne!(ra.cgroup_id, rb.cgroup_id);
    assert_eq!(ra.cgroup_path.as_deref(), Some("/alpha/same"));
    assert_eq!(rb.cgroup_path.as_deref(), Some("/beta/same"));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_while_containerd_is_down_is_noticed_after_restart() {
    let ctrd = Containerd::start();
    let c = ctrd.run(ContainerSpec::new("victim"));
    let survivor = ctrd.run(ContainerSpec::new("survivor"));
    let pid = c.init_pid();
    let agent = TestAgent::start_with_containerd(&ctrd).await;
    let state = agent.state();
    let key = ContainerKey::new("default", "victim");
    // By its start time from here on: in the 20 s it is gone, another
    // process may take its pid (other work on the machine forks too).
    let start = resolves_to(state, pid, &key)
        .await
        .process
        .expect("a known process")
        .key
        .start_time;
    let reconnects = state.metrics().snapshot().containerd_reconnects;

    ctrd.stop();
    assert!(
        wait_until(WAIT, || !state.containerd_connected()).await,
        "agent did not notice containerd going away"
    );
    // Killed while containerd is down, and down for long enough (20 s) that
    // the shim gives up delivering the exit.
    let status = Command::new("kill").args(["-9", &pid.to_string()]).status();
    assert!(status.is_ok_and(|s| s.success()), "kill {pid}");
    tokio::time::sleep(Duration::from_secs(20)).await;
    ctrd.restart();

    agent.wait_connected().await;
    assert!(state.metrics().snapshot().containerd_reconnects > reconnects);
    assert!(
        wait_until(WAIT, || state
            .containers()
            .get(&key)
            .is_some_and(|c| c.status == TaskStatus::Stopped))
        .await,
        "container not reported stopped after reconnect: {:?}",
        state.containers().get(&key)
    );
    let r = resolve(state, pid, Some(start));
    assert_eq!(r.state, Resolved::Exited, "{r:?}");
    assert_eq!(r.container.map(|c| c.key), Some(key));
    resolves_to(
        state,
        survivor.init_pid(),
        &ContainerKey::new("default", "survivor"),
    )
    .await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_killed_during_the_first_list_is_recovered() {
    let ctrd = Containerd::start();
    let containers: Vec<_> = (0..8)
        .map(|i| ctrd.run(ContainerSpec::new(format!("c{i}"))))
        .collect();
    let agent = TestAgent::start(Config {
        containerd_socket: ctrd.socket().to_path_buf(),
        containerd_max_backoff_ms: 200,
        ..Config::default()
    })
    .await;
    // The watcher connects and lists right after start: kill containerd
    // with SIGKILL as close to mid-list as a test can aim.
    ctrd.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    ctrd.restart();
    agent.wait_connected().await;
    let state = agent.state();
    for c in &containers {
        resolves_to(state, c.init_pid(), &ContainerKey::new("default", c.id())).await;
    }
    agent.stop().await;
}
