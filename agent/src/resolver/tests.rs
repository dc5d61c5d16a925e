use std::{num::NonZeroUsize, sync::Arc};

use agent_common::EventKind;

use super::*;
use crate::{
    ebpf::event::KernelEvent,
    metrics::Metrics,
    state::{
        ContainerWriter, ContainerdLink, ProcessTable, TableWriter, containers::ContainerEvent,
    },
    types::{CgroupIds, Comm},
};

const ID: &str = "3f1a9c2b7e5d4a6f8b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a";
const UID: &str = "0b8f3c3e-2a9a-4c8e-9b3a-5d7f1e2c4a6b";
const SEC: u64 = 1_000_000_000;

struct Fixture {
    state: Arc<State>,
    table: TableWriter,
    containers: ContainerWriter,
}

fn fixture() -> Fixture {
    let (state, table, containers) = State::new(
        ProcessTable::new(30 * SEC, NonZeroUsize::new(100).unwrap()),
        CgroupPathCache::new(100),
        Arc::new(Metrics::default()),
    );
    Fixture {
        state,
        table,
        containers,
    }
}

impl Fixture {
    /// A running process `pid` in cgroup2 `cg`, at `path` when given.
    fn add(&self, pid: u32, cg: u64, path: Option<&str>) {
        self.table
            .table()
            .apply_event(&event(EventKind::Exec, pid, cg, 1));
        if let Some(path) = path {
            self.table.paths().insert(Hierarchy::V2, CgroupId(cg), path);
        }
    }

    fn exit(&self, pid: u32, cg: u64) {
        self.table
            .table()
            .apply_event(&event(EventKind::Exit, pid, cg, 2));
    }

    fn resolve(&self, pid: u32) -> Resolution {
        resolve(&self.state, pid, None)
    }

    fn answer(&self, pid: u32) -> (Resolved, Option<Source>) {
        let r = self.resolve(pid);
        (r.state, r.source)
    }
}

fn event(kind: EventKind, pid: u32, cg: u64, at: u64) -> KernelEvent {
    KernelEvent {
        kind,
        key: ProcKey::new(pid, StartTime(pid.into())),
        parent: ProcKey::new(1, StartTime(1)),
        comm: Comm::from_bytes(b"app"),
        cgroups: CgroupIds {
            v2: Some(CgroupId(cg)),
            v1_memory: None,
        },
        exit_code: (kind == EventKind::Exit).then_some(0),
        attach: None,
        timestamp_ns: at,
    }
}

fn kubepods() -> String {
    format!("/kubepods/besteffort/pod{UID}/{ID}")
}

#[test]
fn unknown_pid_is_unknown_without_source() {
    let f = fixture();
    assert_eq!(f.answer(4711), (Resolved::Unknown, None));
}

#[test]
fn host_process_has_its_path_hierarchy_and_no_container() {
    let f = fixture();
    f.add(10, 5, Some("/user.slice/user-0.slice/session-1.scope"));
    let r = f.resolve(10);
    assert_eq!((r.state, r.source), (Resolved::Running, Some(Source::Host)));
    assert_eq!(
        r.cgroup_path.as_deref(),
        Some("/user.slice/user-0.slice/session-1.scope")
    );
    assert_eq!(r.cgroup_id, Some(CgroupId(5)));
    assert_eq!(r.cgroup_hierarchy, Some(Hierarchy::V2));
}

#[test]
fn containerd_container_is_matched_by_cgroup_id() {
    let f = fixture();
    f.add(10, 77, Some("/k8s.io/web"));
    let mut c = Container::placeholder(ContainerKey::new("k8s.io", "web"));
    c.status = TaskStatus::Running;
    c.cgroup_v2 = Some(CgroupId(77));
    f.containers.store().upsert(c);
    let r = f.resolve(10);
    assert_eq!(r.source, Some(Source::Containerd));
    assert_eq!(r.container.map(|c| c.key.id), Some("web".to_owned()));
}

#[test]
fn containerd_looking_cgroup_is_pending_until_metadata_then_resolved() {
    let f = fixture();
    let path = kubepods();
    f.add(10, 88, Some(&path));
    // No containerd on this node (ever): the path is the answer.
    let r = f.resolve(10);
    assert_eq!(
        (r.state, r.source),
        (Resolved::Running, Some(Source::CgroupPath))
    );
    assert_eq!(
        r.path_container.map(|p| p.container_id),
        Some(ID.to_owned())
    );
    // containerd synced but no metadata yet: pending.
    f.containers.set_link(ContainerdLink::Synced);
    assert_eq!(f.resolve(10).state, Resolved::Pending);
    // Metadata arrives: no stale negative answer remains.
    f.containers.store().apply(
        &ContainerEvent::TaskStart {
            namespace: "k8s.io".into(),
            container_id: ID.into(),
            pid: 10,
        },
        0,
    );
    let mut c = f
        .state
        .containers()
        .get(&ContainerKey::new("k8s.io", ID))
        .cloned()
        .unwrap();
    c.cgroup_path = Some(path.clone());
    f.containers.store().upsert(c);
    assert_eq!(f.answer(10), (Resolved::Running, Some(Source::Containerd)));
}

#[test]
fn while_containerd_is_away_container_cgroups_never_answer_host() {
    let f = fixture();
    f.containers.set_link(ContainerdLink::Synced);
    f.containers.store().apply(
        &ContainerEvent::NamespaceCreate {
            name: "tenant".into(),
        },
        0,
    );
    f.containers.set_link(ContainerdLink::Down);
    // A kubepods path names its container: cgroup-path, with the id.
    f.add(10, 88, Some(&kubepods()));
    let r = f.resolve(10);
    assert_eq!(
        (r.state, r.source),
        (Resolved::Running, Some(Source::CgroupPath))
    );
    assert_eq!(r.path_container.unwrap().container_id, ID);
    // A `/<namespace>/<id>` path without a 64-hex id: pending.
    f.add(11, 89, Some("/tenant/long1"));
    assert_eq!(f.resolve(11).state, Resolved::Pending);
    f.add(12, 90, Some("/default/long2"));
    assert_eq!(f.resolve(12).state, Resolved::Pending);
    // Reconnecting (listing): the same.
    f.containers.set_link(ContainerdLink::Listing);
    assert_eq!(f.resolve(11).state, Resolved::Pending);
    // A host cgroup stays host.
    f.add(
        13,
        91,
        Some("/process_api/7d3463dfea2602ef2806174009a1f474"),
    );
    assert_eq!(f.answer(13), (Resolved::Running, Some(Source::Host)));
}

#[test]
fn other_runtimes_resolve_from_the_path_even_with_containerd_up() {
    let f = fixture();
    f.containers.set_link(ContainerdLink::Synced);
    f.add(10, 99, Some(&format!("/kubepods.slice/crio-{ID}.scope")));
    assert_eq!(f.answer(10), (Resolved::Running, Some(Source::CgroupPath)));
}

#[test]
fn namespace_path_of_a_known_namespace_is_pending() {
    let f = fixture();
    f.containers.set_link(ContainerdLink::Synced);
    f.containers.store().apply(
        &ContainerEvent::NamespaceCreate {
            name: "tenant".into(),
        },
        0,
    );
    f.add(10, 66, Some("/tenant/long1"));
    assert_eq!(f.resolve(10).state, Resolved::Pending);
    f.add(
        11,
        67,
        Some("/process_api/7d3463dfea2602ef2806174009a1f474"),
    );
    assert_eq!(f.resolve(11).source, Some(Source::Host));
}

#[test]
fn a_cgroup_whose_path_is_not_known_yet_is_pending_not_host() {
    let f = fixture();
    f.add(10, 4242, None);
    assert_eq!(f.answer(10), (Resolved::Pending, Some(Source::CgroupPath)));
    // At the root, nothing can be a container's.
    f.add(11, 1, None);
    assert_eq!(f.answer(11), (Resolved::Running, Some(Source::Host)));
    // Once the path is learnt, the answer is final.
    f.table
        .paths()
        .insert(Hierarchy::V2, CgroupId(4242), "/system.slice/cron.service");
    assert_eq!(f.answer(10), (Resolved::Running, Some(Source::Host)));
}

#[test]
fn wrong_start_time_is_unknown() {
    let f = fixture();
    f.add(10, 5, Some("/"));
    assert_eq!(
        resolve(&f.state, 10, Some(StartTime(10))).state,
        Resolved::Running
    );
    assert_eq!(
        resolve(&f.state, 10, Some(StartTime(11))).state,
        Resolved::Unknown
    );
}

#[test]
fn path_known_containers_are_listed_until_their_last_process_expires() {
    let f = fixture();
    let podman = format!("/machine.slice/libpod-{ID}.scope");
    f.add(10, 99, Some(&podman));
    f.add(11, 99, Some(&podman));
    f.add(12, 5, Some("/user.slice"));
    let listed = path_containers(&f.state);
    let key = ContainerKey::new("podman", ID);
    assert_eq!(listed.keys().collect::<Vec<_>>(), [&key]);
    let entry = &listed[&key];
    assert_eq!(entry.status, TaskStatus::Running);
    assert_eq!(entry.first_pid, Some(10));
    assert_eq!(entry.cgroup_path.as_deref(), Some(podman.as_str()));
    let pids: Vec<u32> = processes_of(&f.state, &ContainerRef::Path(key.clone()))
        .iter()
        .map(|r| r.pid)
        .collect();
    assert_eq!(pids, [10, 11]);

    f.exit(10, 99);
    f.exit(11, 99);
    assert_eq!(path_containers(&f.state)[&key].status, TaskStatus::Stopped);
    assert!(processes_of(&f.state, &ContainerRef::Path(key.clone())).is_empty());
    f.table.table().expire(40 * SEC);
    assert!(path_containers(&f.state).is_empty());
}

#[test]
fn membership_is_the_same_for_resolve_and_ps() {
    let f = fixture();
    f.containers.set_link(ContainerdLink::Synced);
    // Matched by path only: the container's cgroup id is not known yet.
    let mut c = Container::placeholder(ContainerKey::new("default", "web"));
    c.status = TaskStatus::Running;
    c.cgroup_path = Some("/default/web".into());
    f.containers.store().upsert(c);
    f.add(10, 70, Some("/default/web"));
    assert_eq!(f.resolve(10).source, Some(Source::Containerd));
    let ps = processes_of(
        &f.state,
        &ContainerRef::Runtime(ContainerKey::new("default", "web")),
    );
    assert_eq!(ps.iter().map(|r| r.pid).collect::<Vec<_>>(), [10]);
}

#[test]
fn a_cgroup_made_inside_a_container_resolves_to_it() {
    let f = fixture();
    f.containers.set_link(ContainerdLink::Synced);
    let path = kubepods();
    let mut c = Container::placeholder(ContainerKey::new("k8s.io", ID));
    c.status = TaskStatus::Running;
    c.cgroup_path = Some(path.clone());
    c.cgroup_v2 = Some(CgroupId(77));
    f.containers.store().upsert(c);
    // systemd (or the application) made cgroups of its own inside it.
    f.add(10, 78, Some(&format!("{path}/init.scope")));
    f.add(11, 79, Some(&format!("{path}/system.slice/a.service")));
    for pid in [10, 11] {
        let r = f.resolve(pid);
        assert_eq!(r.source, Some(Source::Containerd), "{pid}");
        assert_eq!(r.container.map(|c| c.key.id).as_deref(), Some(ID));
    }
    // A sibling of the container's cgroup in its pod is not inside it.
    f.add(
        12,
        80,
        Some(&format!("/kubepods/besteffort/pod{UID}/other")),
    );
    assert_ne!(f.resolve(12).source, Some(Source::Containerd));
}
