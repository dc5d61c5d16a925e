//! Kubelet's path: pods and containers made through containerd's CRI plugin (RunPodSandbox
//! with the host's network, CreateContainer, StartContainer, then StopContainer,
//! RemoveContainer, StopPodSandbox, RemovePodSandbox), checked through pidmap's API.
//!
//! The pods carry none of kubelet's `io.kubernetes.*` labels, so their identity (pod name,
//! namespace, uid, container name) must come from what CRI itself records.
//!
//! Run as root with `--test-threads=1`, after `cargo xtask setup --for-tests` (which
//! fetches the CRI API this client is compiled from).

// Without the CRI API (target/cri-api/api.proto, fetched by setup) there is no client: the
// test is still there, and says what is missing.
#[cfg(not(cri_api))]
mod kubelet {
    #[test]
    fn pods_made_through_cri_resolve_with_their_kubernetes_identity() {
        panic!("{}", pidmap_tests::containerd::CRI_MISSING);
    }
}

#[cfg(cri_api)]
mod kubelet {
    use std::time::Duration;

    use pidmap::api::proto::{
        self, ListContainersRequest, ListProcessesRequest, pidmap_client::PidmapClient,
    };
    use pidmap_tests::{
        TestAgent,
        containerd::{CRI_IMAGE, CRI_NAMESPACE, CRI_SANDBOX_IMAGE, Containerd},
        eventually, resolved_as,
    };
    use tonic::transport::Channel;

    const WAIT: Duration = Duration::from_secs(15);
    const POD_NAME: &str = "web-0";
    const POD_NAMESPACE: &str = "shop";
    const POD_UID: &str = "5a7c1e2d-0b3f-4c6d-8e9f-0a1b2c3d4e5f";
    const CONTAINER_NAME: &str = "nginx";

    /// The containers of pod `POD_NAME` that ListContainers shows.
    async fn listed(
        client: &PidmapClient<Channel>,
        include_deleted: bool,
    ) -> Vec<proto::Container> {
        client
            .clone()
            .list_containers(ListContainersRequest {
                pod_name: Some(POD_NAME.into()),
                pod_namespace: Some(POD_NAMESPACE.into()),
                include_deleted,
                ..Default::default()
            })
            .await
            .expect("ListContainers")
            .into_inner()
            .containers
    }

    /// The Kubernetes identity every container of the pod must carry.
    fn assert_pod_identity(c: &proto::Container, sandbox_id: &str) {
        assert_eq!(c.runtime_namespace, CRI_NAMESPACE, "{c:?}");
        assert_eq!(c.pod_name.as_deref(), Some(POD_NAME), "{c:?}");
        assert_eq!(c.pod_namespace.as_deref(), Some(POD_NAMESPACE), "{c:?}");
        assert_eq!(c.pod_uid.as_deref(), Some(POD_UID), "{c:?}");
        assert_eq!(c.sandbox_id.as_deref(), Some(sandbox_id), "{c:?}");
        assert!(
            c.labels.keys().all(|k| !k.starts_with("io.kubernetes.")),
            "the premise: CRI gave this container no io.kubernetes.* labels: {c:?}"
        );
        let parent = format!("/kubepods/besteffort/pod{POD_UID}/{}", c.id);
        assert_eq!(c.cgroup_path.as_deref(), Some(parent.as_str()), "{c:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pods_made_through_cri_resolve_with_their_kubernetes_identity() {
        let ctrd = Containerd::start_cri();
        let agent = TestAgent::start_with_containerd(&ctrd).await;
        let client = agent.client().await;
        let cri = ctrd.cri();

        let pod = cri.run_pod(
            &pidmap_tests::cri::PodSpec::new(POD_NAME, POD_NAMESPACE, POD_UID).label("app", "web"),
        );
        let app = cri.create_container(&pod, CONTAINER_NAME, CRI_IMAGE, &["/bin/sleep", "1000"]);
        cri.start_container(&app);
        let pause_pid = cri.pod_pid(&pod);
        let app_pid = cri.container_pid(&app);

        // The pause process: the pod's sandbox.
        let record = resolved_as(&client, pause_pid, &pod.id).await;
        assert_eq!(
            record.state,
            proto::ProcessState::Running as i32,
            "{record:?}"
        );
        let sandbox = record.container.expect("container");
        assert_pod_identity(&sandbox, &pod.id);
        assert!(sandbox.is_sandbox, "{sandbox:?}");
        assert_eq!(sandbox.image, CRI_SANDBOX_IMAGE, "{sandbox:?}");
        assert_eq!(sandbox.labels.get("app").map(String::as_str), Some("web"));

        // The app container's process.
        let record = resolved_as(&client, app_pid, &app).await;
        assert_eq!(
            record.state,
            proto::ProcessState::Running as i32,
            "{record:?}"
        );
        let container = record.container.expect("container");
        assert_pod_identity(&container, &pod.id);
        assert!(!container.is_sandbox, "{container:?}");
        assert_eq!(container.container_name.as_deref(), Some(CONTAINER_NAME));
        assert_eq!(container.image, CRI_IMAGE, "{container:?}");
        assert_eq!(container.status, "running", "{container:?}");

        // `pidmap ls --pod web-0` (ListContainers) shows both, ListProcesses the app's process.
        let mut ids: Vec<String> = listed(&client, false)
            .await
            .into_iter()
            .map(|c| c.id)
            .collect();
        ids.sort();
        let mut want = vec![pod.id.clone(), app.clone()];
        want.sort();
        assert_eq!(
            ids, want,
            "ListContainers for pod {POD_NAMESPACE}/{POD_NAME}"
        );
        let processes = client
            .clone()
            .list_processes(ListProcessesRequest {
                container_id: app.clone(),
                runtime_namespace: Some(CRI_NAMESPACE.into()),
            })
            .await
            .expect("ListProcesses")
            .into_inner()
            .processes;
        assert!(
            processes.iter().any(|p| p.pid == app_pid),
            "ListProcesses({app}) lacks {app_pid}: {processes:?}"
        );

        // Kubelet's teardown: then both are `deleted` (shown only with include_deleted).
        cri.stop_container(&app);
        cri.remove_container(&app);
        cri.remove_pod(&pod);
        let deleted = eventually(WAIT, || async {
            let all = listed(&client, true).await;
            let gone = all.len() == 2 && all.iter().all(|c| c.deleted && c.status == "deleted");
            if gone { Ok(()) } else { Err(all) }
        })
        .await;
        if let Err(all) = deleted {
            panic!("after RemovePodSandbox: {all:?}");
        }
        assert!(
            listed(&client, false).await.is_empty(),
            "deleted containers are hidden without include_deleted"
        );
        agent.stop().await;
    }
}
