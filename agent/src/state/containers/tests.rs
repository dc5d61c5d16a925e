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
