use super::*;

const SEC: u64 = 1_000_000_000;

fn key(ns: &str, id: &str) -> ContainerKey {
    ContainerKey::new(ns, id)
}

fn listed(ns: &str, id: &str, status: TaskStatus, pid: Option<u32>, cg: u64) -> Container {
    let mut c = Container::placeholder(key(ns, id));
    c.image = format!("img/{id}");
    c.status = status;
    c.task_pid = pid;
    c.cgroup_path = Some(format!("/{ns}/{id}"));
    c.cgroup_v2 = Some(CgroupId(cg));
    c
}

fn start(ns: &str, id: &str, pid: u32) -> ContainerEvent {
    ContainerEvent::TaskStart {
        namespace: ns.into(),
        container_id: id.into(),
        pid,
    }
}

fn exit(ns: &str, id: &str, exec: &str, pid: u32, status: u32) -> ContainerEvent {
    ContainerEvent::TaskExit {
        namespace: ns.into(),
        container_id: id.into(),
        exec_id: exec.into(),
        pid,
        exit_status: status,
        exited_at: Some(100),
    }
}

#[test]
fn reconcile_indexes_by_cgroup_and_keeps_namespaces_apart() {
    let mut s = ContainerStore::new();
    let stats = s.reconcile(
        Snapshot {
            namespaces: vec!["a".into(), "b".into()],
            containers: vec![
                listed("a", "x", TaskStatus::Running, Some(10), 100),
                listed("b", "x", TaskStatus::Running, Some(20), 200),
            ],
        },
        0,
    );
    assert_eq!(stats.added, 2);
    assert_eq!(s.by_cgroup_v2(CgroupId(100)).unwrap().key, key("a", "x"));
    assert_eq!(s.by_cgroup_v2(CgroupId(200)).unwrap().key, key("b", "x"));
    assert_eq!(s.by_cgroup_path("/b/x").unwrap().task_pid, Some(20));
    assert_eq!(s.get(&key("a", "x")).unwrap().task_pid, Some(10));
    assert_eq!(s.namespaces().collect::<Vec<_>>(), ["a", "b"]);
}

#[test]
fn events_for_unknown_containers_make_placeholders_and_ask_for_metadata() {
    let mut s = ContainerStore::new();
    let fetch = s.apply(&start("k8s.io", "c1", 42), 0);
    assert_eq!(fetch, Some(key("k8s.io", "c1")));
    let c = s.get(&key("k8s.io", "c1")).unwrap();
    assert_eq!(c.status, TaskStatus::Running);
    assert_eq!(c.task_pid, Some(42));
    // Known now: no second fetch for the next event.
    assert_eq!(s.apply(&start("k8s.io", "c1", 42), 0), None);
}

#[test]
fn metadata_arriving_after_task_start_keeps_the_task_state() {
    let mut s = ContainerStore::new();
    s.apply(&start("default", "c1", 42), 0);
    let mut meta = Container::placeholder(key("default", "c1"));
    meta.image = "busybox".into();
    meta.cgroup_path = Some("/default/c1".into());
    s.upsert(meta);
    let c = s.get(&key("default", "c1")).unwrap();
    assert_eq!(c.image, "busybox");
    assert_eq!(c.task_pid, Some(42));
    assert_eq!(c.status, TaskStatus::Running);
    assert!(s.by_cgroup_path("/default/c1").is_some());
}

#[test]
fn an_exec_exit_leaves_the_task_running_and_the_init_exit_stops_it() {
    let mut s = ContainerStore::new();
    s.apply(&start("d", "c", 10), 0);
    s.apply(
        &ContainerEvent::ExecStarted {
            namespace: "d".into(),
            container_id: "c".into(),
            exec_id: "e1".into(),
            pid: 11,
        },
        0,
    );
    s.apply(&exit("d", "c", "e1", 11, 0), 0);
    let c = s.get(&key("d", "c")).unwrap();
    assert_eq!((c.status, c.task_pid), (TaskStatus::Running, Some(10)));
    s.apply(&exit("d", "c", "c", 10, 3), 0);
    let c = s.get(&key("d", "c")).unwrap();
    assert_eq!(c.status, TaskStatus::Stopped);
    assert_eq!(c.exit_code, Some(3));
}

#[test]
fn delete_keeps_the_container_for_the_grace_window() {
    let mut s = ContainerStore::new();
    s.upsert(listed("d", "c", TaskStatus::Running, Some(10), 100));
    s.apply(
        &ContainerEvent::ContainerDelete {
            namespace: "d".into(),
            container_id: "c".into(),
        },
        5 * SEC,
    );
    assert_eq!(
        s.by_cgroup_v2(CgroupId(100)).unwrap().deleted_at_ns,
        Some(5 * SEC)
    );
    assert_eq!(s.expire(30 * SEC, 30 * SEC), 0);
    assert_eq!(s.expire(35 * SEC, 30 * SEC), 1);
    assert!(s.is_empty());
    assert!(s.by_cgroup_v2(CgroupId(100)).is_none(), "index cleaned too");
    assert!(s.by_cgroup_path("/d/c").is_none());
}

#[test]
fn recreated_container_survives_the_old_deletion_expiring() {
    let mut s = ContainerStore::new();
    s.upsert(listed("d", "c", TaskStatus::Running, Some(10), 100));
    s.apply(
        &ContainerEvent::ContainerDelete {
            namespace: "d".into(),
            container_id: "c".into(),
        },
        SEC,
    );
    s.upsert(listed("d", "c", TaskStatus::Running, Some(11), 101));
    assert_eq!(s.expire(100 * SEC, 30 * SEC), 0);
    assert_eq!(s.get(&key("d", "c")).unwrap().task_pid, Some(11));
}

#[test]
fn reconcile_notices_exits_and_deletions_missed_while_disconnected() {
    let mut s = ContainerStore::new();
    s.upsert(listed("d", "alive", TaskStatus::Running, Some(10), 100));
    s.upsert(listed("d", "killed", TaskStatus::Running, Some(11), 101));
    s.upsert(listed("d", "removed", TaskStatus::Running, Some(12), 102));
    let mut killed = listed("d", "killed", TaskStatus::Stopped, None, 101);
    killed.exit_code = Some(137);
    let stats = s.reconcile(
        Snapshot {
            namespaces: vec!["d".into()],
            containers: vec![
                listed("d", "alive", TaskStatus::Running, Some(10), 100),
                killed,
            ],
        },
        7,
    );
    assert_eq!(stats.stopped, 1);
    assert_eq!(stats.deleted, 1);
    let k = s.get(&key("d", "killed")).unwrap();
    assert_eq!((k.status, k.exit_code), (TaskStatus::Stopped, Some(137)));
    assert_eq!(s.get(&key("d", "removed")).unwrap().deleted_at_ns, Some(7));
    assert_eq!(
        s.get(&key("d", "alive")).unwrap().status,
        TaskStatus::Running
    );
}

#[test]
fn buffered_events_after_reconcile_win() {
    // Subscribe first, list, then replay what arrived during the list: a
    // container that stopped during the list ends stopped, one created
    // during it ends present.
    let mut s = ContainerStore::new();
    s.reconcile(
        Snapshot {
            namespaces: vec!["d".into()],
            containers: vec![listed("d", "a", TaskStatus::Running, Some(10), 100)],
        },
        0,
    );
    for ev in [exit("d", "a", "a", 10, 0), start("d", "b", 20)] {
        s.apply(&ev, 0);
    }
    assert_eq!(s.get(&key("d", "a")).unwrap().status, TaskStatus::Stopped);
    assert_eq!(s.get(&key("d", "b")).unwrap().task_pid, Some(20));
}

#[test]
fn lifecycle_follows_containerd_created_running_stopped_deleted() {
    let mut s = ContainerStore::new();
    s.apply(
        &ContainerEvent::ContainerChanged {
            namespace: "d".into(),
            container_id: "c".into(),
        },
        0,
    );
    assert_eq!(s.get(&key("d", "c")).unwrap().status, TaskStatus::Created);
    s.apply(&start("d", "c", 10), 0);
    assert_eq!(s.get(&key("d", "c")).unwrap().status, TaskStatus::Running);
    s.apply(&exit("d", "c", "c", 10, 0), 0);
    s.apply(
        &ContainerEvent::TaskDelete {
            namespace: "d".into(),
            container_id: "c".into(),
            exit_status: 0,
            exited_at: None,
        },
        0,
    );
    // The task is gone but it ran: stopped, as ctr and CRI show it.
    let c = s.get(&key("d", "c")).unwrap();
    assert_eq!((c.status, c.task_pid), (TaskStatus::Stopped, None));
    s.apply(
        &ContainerEvent::ContainerDelete {
            namespace: "d".into(),
            container_id: "c".into(),
        },
        SEC,
    );
    assert_eq!(s.get(&key("d", "c")).unwrap().status, TaskStatus::Deleted);
    // Created again with the same id: a new container.
    s.apply(
        &ContainerEvent::ContainerChanged {
            namespace: "d".into(),
            container_id: "c".into(),
        },
        2 * SEC,
    );
    s.upsert(Container::placeholder(key("d", "c")));
    let c = s.get(&key("d", "c")).unwrap();
    assert_eq!((c.status, c.deleted_at_ns), (TaskStatus::Created, None));
}

/// What NRI tells of a container: its pod's identity, its cgroup path, no image.
fn from_nri(id: &str, status: TaskStatus, pid: Option<u32>) -> Container {
    let mut c = Container::placeholder(key("k8s.io", id));
    c.status = status;
    c.task_pid = pid;
    c.runtime = "containerd".into();
    c.cgroup_path = Some(format!("/kubepods/besteffort/poduid/{id}"));
    c.pod.pod_name = Some("web-0".into());
    c.pod.pod_namespace = Some("shop".into());
    c.pod.container_name = Some("app".into());
    c
}

fn snapshot(containers: Vec<Container>) -> Snapshot {
    Snapshot {
        namespaces: vec!["k8s.io".into()],
        containers,
    }
}

#[test]
fn nri_alone_makes_a_resolvable_record_before_the_cgroup_exists() {
    let mut s = ContainerStore::new();
    s.upsert_nri(from_nri("c1", TaskStatus::Created, None));
    let c = s.by_cgroup_path("/kubepods/besteffort/poduid/c1").unwrap();
    assert_eq!(c.sources, Sources::NRI);
    assert_eq!(c.pod.pod_name.as_deref(), Some("web-0"));
    // Started: the pid and the cgroup id found then are kept by later updates.
    s.upsert_nri(from_nri("c1", TaskStatus::Running, Some(7)));
    s.set_cgroup_ids(&key("k8s.io", "c1"), Some(CgroupId(70)), None);
    s.upsert_nri(from_nri("c1", TaskStatus::Running, None));
    let c = s.by_cgroup_v2(CgroupId(70)).unwrap();
    assert_eq!((c.status, c.task_pid), (TaskStatus::Running, Some(7)));
    assert_eq!(s.len(), 1);
}

#[test]
fn containerd_wins_where_both_know_a_container_and_nri_fills_in() {
    let mut s = ContainerStore::new();
    s.upsert_nri(from_nri("c1", TaskStatus::Created, None));
    // containerd's record has the image and the task, but (say) no pod labels.
    let mut ctrd = listed("k8s.io", "c1", TaskStatus::Running, Some(9), 90);
    ctrd.cgroup_path = Some("/kubepods/besteffort/poduid/c1".into());
    s.reconcile(snapshot(vec![ctrd]), 0);
    let c = s.get(&key("k8s.io", "c1")).unwrap();
    assert_eq!(c.sources, Sources::CONTAINERD.with(Sources::NRI));
    assert_eq!(c.image, "img/c1");
    assert_eq!((c.status, c.task_pid), (TaskStatus::Running, Some(9)));
    assert_eq!(
        c.pod.pod_name.as_deref(),
        Some("web-0"),
        "NRI's identity kept"
    );
    // NRI's later word does not overwrite containerd's task state.
    s.upsert_nri(from_nri("c1", TaskStatus::Stopped, None));
    let c = s.get(&key("k8s.io", "c1")).unwrap();
    assert_eq!((c.status, c.task_pid), (TaskStatus::Running, Some(9)));
    assert_eq!(s.len(), 1);
}

#[test]
fn each_sources_list_retires_only_its_own_records() {
    let mut s = ContainerStore::new();
    s.upsert_nri(from_nri("nri-only", TaskStatus::Running, Some(5)));
    s.reconcile(
        snapshot(vec![listed(
            "k8s.io",
            "ctrd-only",
            TaskStatus::Running,
            Some(6),
            60,
        )]),
        0,
    );
    // containerd's next list lacks the NRI-only container: it stays.
    let stats = s.reconcile(snapshot(vec![]), SEC);
    assert_eq!(stats.deleted, 1);
    assert!(
        s.get(&key("k8s.io", "nri-only"))
            .unwrap()
            .deleted_at_ns
            .is_none()
    );
    assert!(
        s.get(&key("k8s.io", "ctrd-only"))
            .unwrap()
            .deleted_at_ns
            .is_some()
    );
    // NRI's Synchronize without it retires it.
    let stats = s.reconcile_nri(vec![], 2 * SEC);
    assert_eq!(stats.deleted, 1);
    assert!(
        s.get(&key("k8s.io", "nri-only"))
            .unwrap()
            .deleted_at_ns
            .is_some()
    );
}

#[test]
fn a_container_both_know_is_deleted_when_the_last_source_lets_go() {
    let mut s = ContainerStore::new();
    s.upsert_nri(from_nri("c1", TaskStatus::Running, Some(5)));
    s.reconcile(
        snapshot(vec![listed(
            "k8s.io",
            "c1",
            TaskStatus::Running,
            Some(5),
            50,
        )]),
        0,
    );
    // NRI's RemoveContainer first: containerd still has it.
    assert!(!s.retire(&key("k8s.io", "c1"), Sources::NRI, SEC));
    assert!(s.get(&key("k8s.io", "c1")).unwrap().deleted_at_ns.is_none());
    // Then containerd's delete.
    s.apply(
        &ContainerEvent::ContainerDelete {
            namespace: "k8s.io".into(),
            container_id: "c1".into(),
        },
        2 * SEC,
    );
    let c = s.get(&key("k8s.io", "c1")).unwrap();
    assert_eq!(c.deleted_at_ns, Some(2 * SEC));
    // Re-synchronizing NRI with it gone changes nothing; a deleted record is not counted.
    assert_eq!(s.reconcile_nri(vec![], 3 * SEC).deleted, 0);
    assert_eq!(s.expire(2 * SEC + 10 * SEC, 10 * SEC), 1);
    assert!(s.is_empty());
}

#[test]
fn containerd_letting_go_deletes_what_nri_still_knows() {
    // NRI stays away (the runtime restarted without it): containerd's list, and its delete
    // event, are the word.
    let mut s = ContainerStore::new();
    for id in ["listed", "deleted"] {
        s.upsert_nri(from_nri(id, TaskStatus::Running, Some(5)));
    }
    s.reconcile(
        snapshot(vec![
            listed("k8s.io", "listed", TaskStatus::Running, Some(5), 50),
            listed("k8s.io", "deleted", TaskStatus::Running, Some(6), 60),
        ]),
        0,
    );
    s.apply(
        &ContainerEvent::ContainerDelete {
            namespace: "k8s.io".into(),
            container_id: "deleted".into(),
        },
        SEC,
    );
    assert_eq!(
        s.get(&key("k8s.io", "deleted")).unwrap().deleted_at_ns,
        Some(SEC)
    );
    assert_eq!(s.reconcile(snapshot(vec![]), 2 * SEC).deleted, 1);
    assert!(
        s.get(&key("k8s.io", "listed"))
            .unwrap()
            .deleted_at_ns
            .is_some()
    );
}

#[test]
fn a_repeated_synchronize_adds_nothing_twice() {
    let mut s = ContainerStore::new();
    let all = || {
        vec![
            from_nri("a", TaskStatus::Running, Some(1)),
            from_nri("b", TaskStatus::Created, None),
        ]
    };
    let first = s.reconcile_nri(all(), 0);
    assert_eq!((first.added, first.updated, first.deleted), (2, 0, 0));
    let again = s.reconcile_nri(all(), SEC);
    assert_eq!((again.added, again.updated, again.deleted), (0, 2, 0));
    assert_eq!(s.len(), 2);
}
