//! NRI as the only runtime source, standing in for CRI-O: pods and containers made through
//! containerd's CRI plugin as kubelet makes them, with containerd's NRI on (its socket in
//! the fixture's temp dir) and **pidmap given no containerd socket**. Everything pidmap
//! knows of a container comes from the runtime's NRI plugin connection.
//!
//! Needs containerd 1.7 or later (1.6 has no NRI): `cargo xtask test` runs this file
//! against containerd 2.1 (Debian sid's, unpacked privately, named by
//! `PIDMAP_TEST_NRI_CONTAINERD_BIN_DIR`), `cargo xtask matrix` against 1.7 and 2.1 (its
//! `nri` column; `skip` on 1.6). Run as root with `--test-threads=1`, after `cargo xtask
//! setup --for-tests` (which fetches the CRI API the client is compiled from).

#[cfg(not(cri_api))]
mod nri {
    #[test]
    fn containers_resolve_with_their_pod_from_nri_alone() {
        panic!("{}", pidmap_tests::containerd::CRI_MISSING);
    }
}

#[cfg(cri_api)]
mod nri {
    use std::{
        collections::BTreeSet,
        time::{Duration, Instant},
    };

    use pidmap::{
        Config,
        api::proto::{
            self, ListContainersRequest, ResolveRequest, StatusRequest, StatusResponse,
            pidmap_client::PidmapClient,
        },
    };
    use pidmap_tests::{
        AgentProcess, TestAgent,
        containerd::{CRI_IMAGE, CRI_NAMESPACE, Containerd, process_alive},
        cri::{Cri, Pod, PodSpec, first_pid, procs_files},
        eventually,
    };
    use tonic::transport::Channel;

    const WAIT: Duration = Duration::from_secs(20);
    const POD_NAMESPACE: &str = "shop";
    /// How often the first process of a starting container is looked for in its cgroup.
    const POLL: Duration = Duration::from_micros(200);

    /// An agent whose only runtime source is `ctrd`'s NRI socket: its containerd socket is a
    /// path where nothing listens.
    fn nri_only_config(ctrd: &Containerd) -> Config {
        Config {
            containerd_socket: ctrd.dir().join("no-containerd-here.sock"),
            nri_socket: ctrd.nri_socket(),
            containerd_max_backoff_ms: 200,
            ..Config::default()
        }
    }

    async fn status(client: &PidmapClient<Channel>) -> StatusResponse {
        client
            .clone()
            .status(StatusRequest {})
            .await
            .expect("Status")
            .into_inner()
    }

    /// Waits until Status says NRI is synchronized; panics with the last Status if not.
    async fn wait_nri_synced(client: &PidmapClient<Channel>) -> StatusResponse {
        eventually(WAIT, || async {
            let s = status(client).await;
            if s.nri_synced { Ok(s) } else { Err(s) }
        })
        .await
        .unwrap_or_else(|s| panic!("NRI never synchronized: {s:?}"))
    }

    fn uid(i: usize) -> String {
        format!("6c2d0e1f-7a3b-4c5d-8e9f-{i:012x}")
    }

    async fn resolve(client: &PidmapClient<Channel>, pid: u32) -> proto::ProcessRecord {
        client
            .clone()
            .resolve(ResolveRequest {
                pid: i64::from(pid),
                start_time: None,
            })
            .await
            .expect("Resolve")
            .into_inner()
    }

    /// What is wrong with `record` as the answer for a process of container `id` in `pod`
    /// (nothing: `None`). A process that is gone after the answer may have been answered
    /// `exited` (runc's own first stages exit within a millisecond); one that still runs
    /// must have been `running`.
    fn wrong(record: &proto::ProcessRecord, pod: &Pod, id: &str, name: &str) -> Option<String> {
        let Some(c) = record.container.as_ref() else {
            return Some(format!("no container: {record:?}"));
        };
        let exited_ok =
            record.state == proto::ProcessState::Exited as i32 && !process_alive(record.pid);
        let ok = (record.state == proto::ProcessState::Running as i32 || exited_ok)
            && record.source == proto::Source::Nri as i32
            && c.id == id
            && c.runtime_namespace == CRI_NAMESPACE
            && c.pod_name.as_deref() == Some(pod.spec.name.as_str())
            && c.pod_namespace.as_deref() == Some(POD_NAMESPACE)
            && c.pod_uid.as_deref() == Some(pod.spec.uid.as_str())
            && c.container_name.as_deref() == Some(name)
            && c.sandbox_id.as_deref() == Some(pod.id.as_str());
        (!ok).then(|| format!("{record:?}"))
    }

    /// Creates a container in `pod` and starts it while its cgroup is watched; asks pidmap
    /// about the first process the moment it appears (runc's init, before the command runs).
    /// Returns the container's id and that first answer.
    async fn start_and_ask_first(
        cri: &Cri<'_>,
        client: &PidmapClient<Channel>,
        pod: &Pod,
        name: &str,
    ) -> (String, u32, proto::ProcessRecord) {
        let id = cri.create_container(pod, name, CRI_IMAGE, &["/bin/sleep", "1000"]);
        let files = procs_files(pod, &id);
        let handle = tokio::runtime::Handle::current();
        let (pid, record) = tokio::task::block_in_place(|| {
            std::thread::scope(|s| {
                let starter = s.spawn(|| cri.start_container(&id));
                let (pid, _) = first_pid(&files, WAIT, POLL)
                    .unwrap_or_else(|| panic!("no process of {id} appeared in {files:?}"));
                let record = handle.block_on(resolve(client, pid));
                starter
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p));
                (pid, record)
            })
        });
        (id, pid, record)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn containers_resolve_with_their_pod_from_nri_alone() {
        let ctrd = Containerd::start_cri_nri();
        let agent = TestAgent::start(nri_only_config(&ctrd)).await;
        let client = agent.client().await;
        let s = wait_nri_synced(&client).await;
        assert!(s.nri_connected && !s.containerd_connected, "{s:?}");
        assert!(s.nri_runtime.starts_with("containerd "), "{s:?}");
        let cri = ctrd.cri();

        // Each container's very first process answers with its pod, not `pending`: NRI's
        // CreateContainer came before runc made the cgroup.
        const PODS: usize = 12;
        let mut wrong_answers = Vec::new();
        let mut made = Vec::new();
        for i in 0..PODS {
            let pod = cri.run_pod(&PodSpec::new(&format!("web-{i}"), POD_NAMESPACE, &uid(i)));
            let (id, pid, first) = start_and_ask_first(&cri, &client, &pod, "app").await;
            if let Some(w) = wrong(&first, &pod, &id, "app") {
                wrong_answers.push(format!("first process {pid} of {id}: {w}"));
            }
            // The pause process is the pod's sandbox.
            let pause = resolve(&client, cri.pod_pid(&pod)).await;
            let sandbox = pause.container.clone().unwrap_or_default();
            if !(sandbox.id == pod.id
                && sandbox.is_sandbox
                && sandbox.pod_name.as_deref() == Some(pod.spec.name.as_str()))
            {
                wrong_answers.push(format!("pause of {}: {pause:?}", pod.id));
            }
            made.push((pod, id));
        }
        assert!(
            wrong_answers.is_empty(),
            "{} of {} answers wrong: {wrong_answers:#?}",
            wrong_answers.len(),
            2 * PODS
        );

        // The store holds each pod's sandbox and container once, running.
        let listed = list(&client, false).await;
        let want: BTreeSet<String> = made
            .iter()
            .flat_map(|(pod, id)| [pod.id.clone(), id.clone()])
            .collect();
        assert_eq!(ids(&listed), want, "ListContainers: {listed:?}");
        assert!(listed.iter().all(|c| c.source == proto::Source::Nri as i32));

        // Kubelet's teardown: RemoveContainer and RemovePodSandbox delete them.
        for (pod, id) in &made {
            cri.tear_down(pod, id);
        }
        let gone = eventually(WAIT, || async {
            let live = list(&client, false).await;
            if live.is_empty() { Ok(()) } else { Err(live) }
        })
        .await;
        assert!(gone.is_ok(), "still listed after removal: {gone:?}");
        let deleted = list(&client, true).await;
        assert!(
            deleted.len() == want.len() && deleted.iter().all(|c| c.deleted),
            "{deleted:?}"
        );
        agent.stop().await;
    }

    async fn list(client: &PidmapClient<Channel>, include_deleted: bool) -> Vec<proto::Container> {
        client
            .clone()
            .list_containers(ListContainersRequest {
                include_deleted,
                ..Default::default()
            })
            .await
            .expect("ListContainers")
            .into_inner()
            .containers
            .into_iter()
            .filter(|c| c.pod_namespace.as_deref() == Some(POD_NAMESPACE))
            .collect()
    }

    fn ids(containers: &[proto::Container]) -> BTreeSet<String> {
        containers.iter().map(|c| c.id.clone()).collect()
    }

    /// A containerd restart ends the NRI connection; the plugin reconnects, synchronizes
    /// again, and every container is still there once, not deleted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_runtime_restart_is_survived_without_loss_or_duplicates() {
        let ctrd = Containerd::start_cri_nri();
        let agent = TestAgent::start(nri_only_config(&ctrd)).await;
        let client = agent.client().await;
        wait_nri_synced(&client).await;
        let cri = ctrd.cri();
        let pod = cri.run_pod(&PodSpec::new("db-0", POD_NAMESPACE, &uid(100)));
        let id = cri.create_container(&pod, "db", CRI_IMAGE, &["/bin/sleep", "1000"]);
        cri.start_container(&id);
        let pid = cri.container_pid(&id);
        let want: BTreeSet<String> = [pod.id.clone(), id.clone()].into();
        eventually(WAIT, || async {
            let l = list(&client, false).await;
            if ids(&l) == want { Ok(()) } else { Err(l) }
        })
        .await
        .expect("both listed");

        for round in 0..2 {
            ctrd.restart();
            let s = wait_nri_synced(&client).await;
            let listed = list(&client, true).await;
            assert_eq!(ids(&listed), want, "round {round}: {listed:?}");
            assert_eq!(listed.len(), 2, "round {round}: duplicates: {listed:?}");
            assert!(listed.iter().all(|c| !c.deleted), "{listed:?}");
            let record = resolve(&client, pid).await;
            assert!(
                wrong(&record, &pod, &id, "db").is_none(),
                "round {round}: {record:?}"
            );
            assert!(s.nri_connected, "{s:?}");
        }
        let metrics = agent.state().metrics().snapshot();
        assert!(metrics.nri_reconnects >= 2, "{metrics:?}");

        cri.tear_down(&pod, &id);
        agent.stop().await;
    }

    /// One step of churn: the oldest of three pods removed, one pod made (and its container
    /// started). `running` holds what runs.
    fn churn_once(cri: &Cri<'_>, running: &mut Vec<(Pod, String)>, n: usize) {
        if running.len() >= 3 {
            let (pod, id) = running.remove(0);
            cri.tear_down(&pod, &id);
        }
        let pod = cri.run_pod(&PodSpec::new(&format!("job-{n}"), POD_NAMESPACE, &uid(n)));
        let id = cri.create_container(&pod, "job", CRI_IMAGE, &["/bin/sleep", "1000"]);
        cri.start_container(&id);
        running.push((pod, id));
    }

    /// The agent killed (SIGKILL, as the OOM killer would) and started again while pods come
    /// and go: what it holds afterwards (NRI's Synchronize, then events) is exactly what the
    /// runtime runs — pods made while it was away included, none removed meanwhile left
    /// behind, none twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_agent_killed_and_restarted_mid_churn_finds_exactly_what_runs() {
        let ctrd = Containerd::start_cri_nri();
        let cri = ctrd.cri();
        let socket = pidmap_tests::private_socket();
        let args = nri_only_args(&ctrd);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let running = std::sync::Mutex::new(Vec::new());
        let stop = std::sync::atomic::AtomicBool::new(false);
        let first = AgentProcess::start(&socket, &args);
        let (agent, steps) = tokio::task::block_in_place(|| {
            std::thread::scope(|s| {
                let churn = s.spawn(|| {
                    let mut n = 200;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        churn_once(&cri, &mut running.lock().expect("running"), n);
                        n += 1;
                    }
                    n - 200
                });
                std::thread::sleep(Duration::from_millis(1500));
                first.kill();
                std::thread::sleep(Duration::from_millis(1500));
                let second = AgentProcess::start(&socket, &args);
                std::thread::sleep(Duration::from_millis(1500));
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                let steps = churn
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p));
                (second, steps)
            })
        });
        let mut running = running.into_inner().expect("running");
        assert!(
            steps >= 4,
            "only {steps} churn steps: the test proves little"
        );
        let client = pidmap::cli::client::connect(agent.socket())
            .await
            .unwrap_or_else(|f| panic!("connect: {}", f.message));
        wait_nri_synced(&client).await;
        let want: BTreeSet<String> = running
            .iter()
            .flat_map(|(pod, id)| [pod.id.clone(), id.clone()])
            .collect();
        let listed = eventually(WAIT, || async {
            let l = list(&client, false).await;
            if ids(&l) == want { Ok(l) } else { Err(l) }
        })
        .await
        .unwrap_or_else(|l| panic!("listed {:?}, running {want:?}", ids(&l)));
        assert_eq!(listed.len(), want.len(), "duplicates: {listed:?}");
        for (pod, id) in &running {
            let record = resolve(&client, cri.container_pid(id)).await;
            assert!(wrong(&record, pod, id, "job").is_none(), "{record:?}");
        }
        for (pod, id) in running.drain(..) {
            cri.tear_down(&pod, &id);
        }
        drop(agent);
    }

    /// The agent's arguments for an NRI-only agent process on `ctrd`.
    fn nri_only_args(ctrd: &Containerd) -> Vec<String> {
        vec![
            "--containerd-socket".into(),
            ctrd.dir()
                .join("no-containerd-here.sock")
                .display()
                .to_string(),
            "--nri-socket".into(),
            ctrd.nri_socket().display().to_string(),
            "--containerd-max-backoff-ms".into(),
            "200".into(),
        ]
    }

    /// A hung agent (SIGSTOP: it reads nothing, answers nothing) costs a pod at most the
    /// runtime's plugin timeout (2 s, after which containerd drops the plugin), never its
    /// creation; resumed, the agent reconnects, synchronizes and knows the pod.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_agent_never_fails_a_pod() {
        let ctrd = Containerd::start_cri_nri();
        let cri = ctrd.cri();
        let socket = pidmap_tests::private_socket();
        let args = nri_only_args(&ctrd);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let agent = AgentProcess::start(&socket, &args);
        let client = pidmap::cli::client::connect(agent.socket())
            .await
            .unwrap_or_else(|f| panic!("connect: {}", f.message));
        wait_nri_synced(&client).await;
        agent.signal(libc::SIGSTOP);
        let started = Instant::now();
        let made = tokio::task::block_in_place(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let pod = cri.run_pod(&PodSpec::new("hung-0", POD_NAMESPACE, &uid(400)));
                let id = cri.create_container(&pod, "app", CRI_IMAGE, &["/bin/sleep", "1000"]);
                cri.start_container(&id);
                (pod, id)
            }))
        });
        let took = started.elapsed();
        agent.signal(libc::SIGCONT);
        let (pod, id) = made.unwrap_or_else(|p| std::panic::resume_unwind(p));
        assert!(
            took < Duration::from_secs(10),
            "the pod took {took:?} with the agent stopped (containerd waits 2 s, then drops it)"
        );
        wait_nri_synced(&client).await;
        let pid = cri.container_pid(&id);
        let record = eventually(WAIT, || async {
            let r = resolve(&client, pid).await;
            match wrong(&r, &pod, &id, "app") {
                None => Ok(r),
                Some(w) => Err(w),
            }
        })
        .await;
        assert!(record.is_ok(), "after SIGCONT: {record:?}");
        cri.tear_down(&pod, &id);
        drop(agent);
    }

    /// containerd's socket and NRI's both given (a containerd 2.x node as deployed): each
    /// container is one record, containerd's (source `containerd`, with its image and task)
    /// carrying the pod identity, from its first process on; removed, it is deleted once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_containerd_and_nri_each_container_is_one_record() {
        let ctrd = Containerd::start_cri_nri();
        let agent = TestAgent::start_synced(Config {
            nri_socket: ctrd.nri_socket(),
            ..TestAgent::containerd_config(&ctrd)
        })
        .await;
        let client = agent.client().await;
        let s = wait_nri_synced(&client).await;
        assert!(s.containerd_synced, "{s:?}");
        let cri = ctrd.cri();
        let mut made = Vec::new();
        let mut wrong_answers = Vec::new();
        for i in 0..6 {
            let pod = cri.run_pod(&PodSpec::new(
                &format!("api-{i}"),
                POD_NAMESPACE,
                &uid(300 + i),
            ));
            let (id, pid, mut first) = start_and_ask_first(&cri, &client, &pod, "api").await;
            // Either source may answer first; both must carry the whole identity.
            if first.source == proto::Source::Containerd as i32 {
                first.source = proto::Source::Nri as i32;
            }
            if let Some(w) = wrong(&first, &pod, &id, "api") {
                wrong_answers.push(format!("first process {pid} of {id}: {w}"));
            }
            made.push((pod, id));
        }
        assert!(wrong_answers.is_empty(), "{wrong_answers:#?}");
        let want: BTreeSet<String> = made
            .iter()
            .flat_map(|(pod, id)| [pod.id.clone(), id.clone()])
            .collect();
        let listed = eventually(WAIT, || async {
            let l = list(&client, false).await;
            let merged = ids(&l) == want
                && l.iter().all(|c| {
                    c.source == proto::Source::Containerd as i32
                        && c.runtime == "io.containerd.runc.v2"
                        && c.pod_name.is_some()
                });
            if merged { Ok(l) } else { Err(l) }
        })
        .await
        .unwrap_or_else(|l| panic!("not one containerd record each: {l:?}"));
        assert_eq!(listed.len(), want.len(), "duplicates: {listed:?}");
        for (pod, id) in &made {
            cri.tear_down(pod, id);
        }
        let deleted = eventually(WAIT, || async {
            let all = list(&client, true).await;
            if all.len() == want.len() && all.iter().all(|c| c.deleted) {
                Ok(())
            } else {
                Err(all)
            }
        })
        .await;
        assert!(deleted.is_ok(), "{deleted:?}");
        agent.stop().await;
    }
}
