//! The pinned containers map, read as another eBPF tool's userspace would
//! (open the pin, look up a cgroup id): pods and containers made through
//! CRI as kubelet makes them, a cgroup made inside a container, a host
//! cgroup, an agent restart (the map is reused, its entries not rewritten)
//! and a container's deletion. And a consumer nobody would mistake for the
//! agent: `examples/ebpf-consumer/execs_per_pod.bpf.c`, built with clang
//! against `include/pidmap.h`, counting execs per pod in the kernel.
//!
//! Run as root with `--test-threads=1`, after `cargo xtask setup
//! --for-tests`. The map is pinned on a BPF filesystem of the test's own.

#[cfg(not(cri_api))]
mod kubelet {
    #[test]
    fn the_pinned_map_follows_pods_containers_nested_cgroups_and_restarts() {
        panic!("{}", pidmap_tests::containerd::CRI_MISSING);
    }

    #[test]
    fn another_tools_ebpf_program_counts_execs_per_pod_through_the_pinned_map() {
        panic!("{}", pidmap_tests::containerd::CRI_MISSING);
    }
}

#[cfg(cri_api)]
mod kubelet {
    use std::{os::unix::fs::MetadataExt, path::Path, process::Command, time::Duration};

    use agent_common::containers::*;
    use aya::maps::{HashMap, MapData};
    use pidmap::config::Config;
    use pidmap_tests::{
        CgroupGuard, ChildGuard, PrivateBpfFs, TestAgent, cgroup2_id_of, cgroup2_path_of,
        cgroup2_root, consumer,
        containerd::{CRI_IMAGE, Containerd},
        cri::PodSpec,
        resolved_as, wait_until,
    };

    const WAIT: Duration = Duration::from_secs(15);
    const POD_UID: &str = "6b1f2a3c-0d4e-4f5a-8b9c-0d1e2f3a4b5c";

    type Map = HashMap<MapData, u64, ContainerRecord>;

    fn open(pin: &Path) -> Map {
        let data = MapData::from_pin(pin).unwrap_or_else(|e| panic!("open {}: {e}", pin.display()));
        HashMap::try_from(aya::maps::Map::HashMap(data)).expect("a hash map of pidmap's shape")
    }

    fn entry(map: &Map, id: u64) -> Option<ContainerRecord> {
        map.get(&id, 0).ok()
    }

    /// Waits until `id`'s entry satisfies `want`; panics with the last one.
    async fn entry_when(
        map: &Map,
        id: u64,
        what: &str,
        want: impl Fn(&ContainerRecord) -> bool,
    ) -> ContainerRecord {
        let mut last = None;
        let found = wait_until(WAIT, || {
            last = entry(map, id);
            last.as_ref().is_some_and(&want)
        })
        .await;
        assert!(found, "{what}: cgroup {id}'s entry is {last:?}");
        last.expect("an entry")
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn uuid_bytes(uid: &str) -> [u8; 16] {
        let mut r = ContainerRecord::new(STATE_CONTAINER);
        r.set_pod_uid(uid);
        assert_ne!(r.flags & FLAG_POD_UID, 0);
        r.pod_uid
    }

    fn assert_container(r: &ContainerRecord, id: &str, sandbox: bool) {
        assert_eq!(r.version, RECORD_VERSION, "{r:?}");
        assert_eq!(r.state, STATE_CONTAINER, "{r:?}");
        assert_eq!(r.runtime, RUNTIME_CONTAINERD, "{r:?}");
        assert_eq!(hex(&r.container_id), id, "{r:?}");
        assert_eq!(r.pod_uid, uuid_bytes(POD_UID), "{r:?}");
        let want = FLAG_CONTAINER_ID | FLAG_POD_UID | if sandbox { FLAG_SANDBOX } else { 0 };
        assert_eq!(r.flags & !FLAG_NESTED, want, "{r:?}");
        assert_ne!(r.generation, 0, "{r:?}");
    }

    fn config(ctrd: &Containerd, pin_dir: &Path) -> Config {
        Config {
            pin_dir: Some(pin_dir.to_path_buf()),
            ..TestAgent::containerd_config(ctrd)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pinned_map_follows_pods_containers_nested_cgroups_and_restarts() {
        let bpffs = PrivateBpfFs::mount();
        let pin_dir = bpffs.path().join("pidmap");
        let ctrd = Containerd::start_cri();
        let agent = TestAgent::start_synced(config(&ctrd, &pin_dir)).await;
        let client = agent.client().await;
        let pin = pin_dir.join(agent_common::CONTAINERS_MAP);
        let mode = std::fs::metadata(&pin_dir).expect("pin dir").mode() & 0o777;
        assert_eq!(mode, 0o700, "the pin directory is root's only");
        let map = open(&pin);

        let cri = ctrd.cri();
        let pod = cri.run_pod(&PodSpec::new("web-0", "shop", POD_UID));
        let app = cri.create_container(&pod, "app", CRI_IMAGE, &["/bin/sleep", "1000"]);
        cri.start_container(&app);
        let app_pid = cri.container_pid(&app);
        let app_cgroup = cgroup2_id_of(app_pid).expect("the app's cgroup");
        let record = entry_when(&map, app_cgroup, "the app container", |r| {
            r.state == STATE_CONTAINER && r.flags & FLAG_POD_UID != 0
        })
        .await;
        assert_container(&record, &app, false);
        let pause = cgroup2_id_of(cri.pod_pid(&pod)).expect("the sandbox's cgroup");
        let sandbox = entry_when(&map, pause, "the sandbox", |r| r.state == STATE_CONTAINER).await;
        assert_container(&sandbox, &pod.id, true);

        // A cgroup made inside the container's: the kernel side copies the
        // container's entry at mkdir, before anything can run in it.
        let app_path = cgroup2_path_of(app_pid).expect("the app's cgroup path");
        let nested_dir = CgroupGuard::new_v2_named(&format!(
            "{}/pidmap-nested",
            app_path.trim_start_matches('/')
        ));
        let nested = nested_dir.id();
        let copy = entry(&map, nested).expect("the nested cgroup's entry, at once");
        assert_ne!(copy.flags & FLAG_NESTED, 0, "{copy:?}");
        assert_container(&copy, &app, false);
        // A process in it resolves to the container, through the API too.
        let sleeper = ChildGuard::spawn(Command::new("sleep").arg("1000"));
        nested_dir.add(sleeper.pid());
        resolved_as(&client, sleeper.pid(), &app).await;
        let copy = entry_when(&map, nested, "the nested cgroup with a process", |r| {
            r.flags & FLAG_NESTED != 0
        })
        .await;
        assert_container(&copy, &app, false);

        // A host cgroup with a process.
        let host = CgroupGuard::new_v2();
        let host_sleeper = ChildGuard::spawn(Command::new("sleep").arg("1000"));
        host.add(host_sleeper.pid());
        let record = entry_when(&map, host.id(), "a host cgroup", |r| r.state == STATE_HOST).await;
        assert_eq!(record.flags & FLAG_CONTAINER_ID, 0, "{record:?}");

        // An agent restart: the pinned map stays, and what did not change
        // is not written again.
        let before = entry(&map, app_cgroup).expect("entry");
        agent.stop().await;
        assert_eq!(
            entry(&map, app_cgroup),
            Some(before),
            "kept while no agent runs"
        );
        let agent = TestAgent::start_synced(config(&ctrd, &pin_dir)).await;
        let published = wait_until(WAIT, || {
            agent.state().metrics().snapshot().pinned_map_entries > 0
        })
        .await;
        assert!(published, "the new agent published");
        assert_eq!(
            entry(&map, app_cgroup),
            Some(before),
            "the same entry, not refilled"
        );
        assert_eq!(
            entry(&map, nested).map(|r| r.flags & FLAG_NESTED),
            Some(FLAG_NESTED)
        );

        // The nested cgroup removed: its entry goes with it, at once.
        drop(sleeper);
        drop(nested_dir); // rmdir (after the sleeper's exit frees it)
        assert!(
            !cgroup2_root()
                .expect("cgroup2")
                .join(&app_path[1..])
                .join("pidmap-nested")
                .exists()
        );
        assert_eq!(entry(&map, nested), None, "the removed cgroup's entry");

        // The host cgroup emptied: its entry goes.
        drop(host_sleeper);
        let gone = wait_until(WAIT, || entry(&map, host.id()).is_none()).await;
        assert!(gone, "an emptied host cgroup leaves the map");

        // The container stopped and removed: its entry goes.
        cri.stop_container(&app);
        cri.remove_container(&app);
        let gone = wait_until(WAIT, || entry(&map, app_cgroup).is_none()).await;
        assert!(
            gone,
            "a removed container leaves the map: {:?}",
            entry(&map, app_cgroup)
        );
        cri.stop_pod(&pod);
        cri.remove_pod(&pod);
        let gone = wait_until(WAIT, || entry(&map, pause).is_none()).await;
        assert!(gone, "a removed pod leaves the map");
        agent.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_tools_ebpf_program_counts_execs_per_pod_through_the_pinned_map() {
        const A: &str = "0a0b0c0d-1111-4222-8333-444455556666";
        const B: &str = "0f0e0d0c-7777-4888-9999-aaaabbbbcccc";
        let bpffs = PrivateBpfFs::mount();
        let pin_dir = bpffs.path().join("pidmap");
        let ctrd = Containerd::start_cri();
        let agent = TestAgent::start_synced(config(&ctrd, &pin_dir)).await;
        let pin = pin_dir.join(agent_common::CONTAINERS_MAP);
        let map = open(&pin);

        let cri = ctrd.cri();
        let mut apps = Vec::new();
        for (name, uid) in [("a-0", A), ("b-0", B)] {
            let pod = cri.run_pod(&PodSpec::new(name, "shop", uid));
            let app = cri.create_container(&pod, "app", CRI_IMAGE, &["/bin/sleep", "1000"]);
            cri.start_container(&app);
            let pid = cri.container_pid(&app);
            let id = cgroup2_id_of(pid).expect("the app's cgroup");
            entry_when(&map, id, name, |r| {
                r.state == STATE_CONTAINER && r.flags & FLAG_POD_UID != 0
            })
            .await;
            let procs = cgroup2_root()
                .expect("cgroup2")
                .join(cgroup2_path_of(pid).expect("path").trim_start_matches('/'))
                .join("cgroup.procs");
            apps.push((pod, app, procs, uuid_bytes(uid)));
        }

        // Another tool: its own object, its own loader, pidmap's map bound
        // by its pin path.
        let work = tempfile::tempdir().expect("temp dir");
        let object = consumer::build(work.path());
        let mut consumer = aya::EbpfLoader::new()
            .map_pin_path(agent_common::CONTAINERS_MAP, pin.as_path())
            .load(&object)
            .expect("load the consumer");
        let btf = aya::Btf::from_sys_fs().expect("kernel BTF");
        let program: &mut aya::programs::BtfTracePoint = consumer
            .program_mut("count_exec")
            .expect("count_exec")
            .try_into()
            .expect("a BTF tracepoint program");
        program
            .load("sched_process_exec", &btf)
            .expect("the verifier accepts the consumer");
        program.attach().expect("attach to sched_process_exec");
        let counts: HashMap<MapData, [u8; 16], u64> =
            HashMap::try_from(consumer.take_map("execs_per_pod").expect("execs_per_pod"))
                .expect("a hash map");

        consumer::exec_true(Some(&apps[0].2), 7);
        consumer::exec_true(Some(&apps[1].2), 3);
        consumer::exec_true(None, 5); // the host's: no pod
        let count = |uid: &[u8; 16]| counts.get(uid, 0).unwrap_or(0);
        assert_eq!(
            count(&apps[0].3),
            7,
            "pod a-0's execs, counted in the kernel"
        );
        assert_eq!(
            count(&apps[1].3),
            3,
            "pod b-0's execs, counted in the kernel"
        );
        assert_eq!(
            counts.keys().filter_map(Result::ok).count(),
            2,
            "no other pod counted"
        );

        drop(consumer);
        for (pod, app, _, _) in &apps {
            cri.stop_container(app);
            cri.remove_container(app);
            cri.stop_pod(pod);
            cri.remove_pod(pod);
        }
        agent.stop().await;
    }
}
