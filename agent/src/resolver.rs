//! Answers "which container and pod is this process in?" from memory: the
//! process table, the container store and the cgroup path cache. No /proc
//! read and no containerd call happen here, and nothing is cached: every
//! answer is computed from the current state, so no stale negative answer
//! can outlive the metadata that fixes it.

use crate::{
    cgroup::{container_from_path, Hierarchy, PathContainer, PathRuntime},
    runtime::container::Container,
    state::{Process, ProcessState, State},
    types::{CgroupId, StartTime},
};

/// The state of a resolved process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// Running, and its container (if any) is known.
    Running,
    /// Exited within the grace window.
    Exited,
    /// Running in a cgroup that looks like a container containerd manages,
    /// whose metadata has not arrived yet.
    Pending,
    /// Not a process the agent knows (never seen, or gone for longer than
    /// the grace window, or the start time does not match).
    Unknown,
}

impl Resolved {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Exited => "exited",
            Self::Pending => "pending",
            Self::Unknown => "unknown",
        }
    }
}

/// Where the container answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// containerd's metadata, matched by cgroup.
    Containerd,
    /// Recognised in the cgroup path only (a runtime pidmap does not watch,
    /// or containerd is not reachable).
    CgroupPath,
    /// Not in a container.
    Host,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Containerd => "containerd",
            Self::CgroupPath => "cgroup-path",
            Self::Host => "host",
        }
    }
}

/// One answer.
#[derive(Debug, Clone)]
pub struct Resolution {
    pub pid: u32,
    pub state: Resolved,
    /// `None` when the process is unknown.
    pub source: Option<Source>,
    pub process: Option<Process>,
    /// The container's metadata, for [`Source::Containerd`].
    pub container: Option<Container>,
    /// What the cgroup path says, for [`Source::CgroupPath`] and pending.
    pub path_container: Option<PathContainer>,
    /// The process's cgroup path (cgroup2, or the v1 memory hierarchy).
    pub cgroup_path: Option<String>,
    /// The cgroup id matching `cgroup_path`.
    pub cgroup_id: Option<CgroupId>,
}

/// Resolves `pid`; with `start_time`, only the process with exactly that
/// start time (a reused pid resolves `unknown`).
pub fn resolve(state: &State, pid: u32, start_time: Option<StartTime>) -> Resolution {
    let process = match start_time {
        Some(start) => state.process_by_key(crate::types::ProcKey::new(pid, start)),
        None => state.process(pid),
    };
    let Some(process) = process else {
        return Resolution {
            pid,
            state: Resolved::Unknown,
            source: None,
            process: None,
            container: None,
            path_container: None,
            cgroup_path: None,
            cgroup_id: None,
        };
    };
    let running = matches!(process.state, ProcessState::Running);
    let (cgroup_id, cgroup_path) = cgroup_of(state, &process);
    let container = {
        let store = state.containers();
        process
            .cgroups
            .v2
            .filter(|id| id.0 != 1)
            .and_then(|id| store.by_cgroup_v2(id))
            .or_else(|| {
                process
                    .cgroups
                    .v1_memory
                    .filter(|id| id.0 != 1)
                    .and_then(|id| store.by_cgroup_v1_memory(id))
            })
            .or_else(|| cgroup_path.as_deref().and_then(|p| store.by_cgroup_path(p)))
            .cloned()
    };
    // A cgroup made a moment ago may not be in the path cache yet; the
    // container it belongs to knows the path.
    let cgroup_path =
        cgroup_path.or_else(|| container.as_ref().and_then(|c| c.cgroup_path.clone()));
    let base = |state, source, container, path_container| Resolution {
        pid,
        state,
        source: Some(source),
        process: Some(process.clone()),
        container,
        path_container,
        cgroup_path: cgroup_path.clone(),
        cgroup_id,
    };
    let lifecycle = if running {
        Resolved::Running
    } else {
        Resolved::Exited
    };
    if container.is_some() {
        return base(lifecycle, Source::Containerd, container, None);
    }
    let path_container = cgroup_path.as_deref().and_then(container_from_path);
    let looks_containerd = cgroup_path
        .as_deref()
        .is_some_and(|p| looks_like_containerd(state, p, path_container.as_ref()));
    if running && state.containerd_connected() && looks_containerd {
        return base(Resolved::Pending, Source::CgroupPath, None, path_container);
    }
    match path_container {
        Some(pc) => base(lifecycle, Source::CgroupPath, None, Some(pc)),
        None => base(lifecycle, Source::Host, None, None),
    }
}

/// The process's cgroup id and cached path: cgroup2 unless the process is
/// at the cgroup2 root and has a v1 memory cgroup (pure-v1 hosts).
fn cgroup_of(state: &State, p: &Process) -> (Option<CgroupId>, Option<String>) {
    let cache = state.cgroup_paths();
    let v2 = p.cgroups.v2.map(|id| (id, cache.cached(Hierarchy::V2, id)));
    let v1 = p
        .cgroups
        .v1_memory
        .map(|id| (id, cache.cached(Hierarchy::V1Memory, id)));
    let pick = match (v2, v1) {
        (Some((id, path)), _) if id.0 != 1 => (Some(id), path),
        (_, Some((id, path))) if id.0 != 1 => (Some(id), path),
        (Some((id, path)), _) | (None, Some((id, path))) => (Some(id), path),
        (None, None) => (None, None),
    };
    (pick.0, pick.1.map(str::to_owned))
}

/// A cgroup path containerd would own: a CRI/kubepods layout, or
/// `/<namespace>/…` for a namespace containerd has.
fn looks_like_containerd(state: &State, path: &str, parsed: Option<&PathContainer>) -> bool {
    if parsed.is_some_and(|pc| {
        matches!(
            pc.runtime,
            PathRuntime::Containerd | PathRuntime::Kubepods | PathRuntime::Docker
        )
    }) {
        return true;
    }
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    !first.is_empty() && state.containers().namespaces().any(|ns| ns == first)
}

#[cfg(test)]
mod tests {
    use std::{num::NonZeroUsize, sync::Arc};

    use agent_common::EventKind;

    use super::*;
    use crate::{
        cgroup::{CgroupFs, CgroupPathCache},
        ebpf::event::KernelEvent,
        metrics::Metrics,
        runtime::{
            container::{ContainerKey, TaskStatus},
            containerd::events::RuntimeEvent,
        },
        state::ProcessTable,
        types::{CgroupIds, Comm, ProcKey},
    };

    const ID: &str = "3f1a9c2b7e5d4a6f8b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a";

    fn state() -> State {
        let paths = CgroupPathCache::new(
            CgroupFs::from_roots(None, None),
            100,
            std::time::Duration::from_secs(3600),
        );
        State::new(
            ProcessTable::new(30_000_000_000, NonZeroUsize::new(100).unwrap()),
            paths,
            Arc::new(Metrics::default()),
        )
    }

    /// A running process `pid` in cgroup2 `cg` at `path`.
    fn add_process(s: &State, pid: u32, cg: u64, path: &str) {
        s.write().apply_event(&KernelEvent {
            kind: EventKind::Exec,
            key: ProcKey::new(pid, StartTime(pid.into())),
            parent: ProcKey::new(1, StartTime(1)),
            comm: Comm::from_bytes(b"app"),
            cgroups: CgroupIds {
                v2: Some(CgroupId(cg)),
                v1_memory: None,
            },
            exit_code: None,
            attach: None,
            timestamp_ns: 1,
        });
        s.cgroup_paths().insert(Hierarchy::V2, CgroupId(cg), path);
    }

    #[test]
    fn unknown_pid_is_unknown_without_source() {
        let r = resolve(&state(), 4711, None);
        assert_eq!(r.state, Resolved::Unknown);
        assert_eq!(r.source, None);
    }

    #[test]
    fn host_process_has_its_path_and_no_container() {
        let s = state();
        add_process(&s, 10, 5, "/user.slice/user-0.slice/session-1.scope");
        let r = resolve(&s, 10, None);
        assert_eq!((r.state, r.source), (Resolved::Running, Some(Source::Host)));
        assert_eq!(
            r.cgroup_path.as_deref(),
            Some("/user.slice/user-0.slice/session-1.scope")
        );
    }

    #[test]
    fn containerd_container_is_matched_by_cgroup_id() {
        let s = state();
        add_process(&s, 10, 77, "/k8s.io/web");
        let mut c =
            crate::runtime::container::Container::placeholder(ContainerKey::new("k8s.io", "web"));
        c.status = TaskStatus::Running;
        c.cgroup_v2 = Some(CgroupId(77));
        s.containers_mut().upsert(c);
        let r = resolve(&s, 10, None);
        assert_eq!(r.source, Some(Source::Containerd));
        assert_eq!(r.container.map(|c| c.key.id), Some("web".to_owned()));
    }

    #[test]
    fn containerd_looking_cgroup_is_pending_until_metadata_then_resolved() {
        let s = state();
        let path = format!("/kubepods/besteffort/pod0b8f3c3e-2a9a-4c8e-9b3a-5d7f1e2c4a6b/{ID}");
        add_process(&s, 10, 88, &path);
        // Without containerd, the path is the answer.
        let r = resolve(&s, 10, None);
        assert_eq!(
            (r.state, r.source),
            (Resolved::Running, Some(Source::CgroupPath))
        );
        assert_eq!(
            r.path_container.map(|p| p.container_id),
            Some(ID.to_owned())
        );
        // With containerd connected but no metadata yet: pending.
        s.set_containerd_connected(true);
        assert_eq!(resolve(&s, 10, None).state, Resolved::Pending);
        // Metadata arrives: no stale negative answer remains.
        s.containers_mut().apply(
            &RuntimeEvent::TaskStart {
                namespace: "k8s.io".into(),
                container_id: ID.into(),
                pid: 10,
            },
            0,
        );
        let mut c = s
            .containers()
            .get(&ContainerKey::new("k8s.io", ID))
            .cloned()
            .unwrap();
        c.cgroup_path = Some(path.clone());
        s.containers_mut().upsert(c);
        let r = resolve(&s, 10, None);
        assert_eq!(
            (r.state, r.source),
            (Resolved::Running, Some(Source::Containerd))
        );
    }

    #[test]
    fn other_runtimes_resolve_from_the_path_even_with_containerd_up() {
        let s = state();
        s.set_containerd_connected(true);
        add_process(&s, 10, 99, &format!("/kubepods.slice/crio-{ID}.scope"));
        let r = resolve(&s, 10, None);
        assert_eq!(
            (r.state, r.source),
            (Resolved::Running, Some(Source::CgroupPath))
        );
    }

    #[test]
    fn namespace_path_of_a_known_namespace_is_pending() {
        let s = state();
        s.set_containerd_connected(true);
        s.containers_mut().apply(
            &RuntimeEvent::NamespaceCreate {
                name: "default".into(),
            },
            0,
        );
        add_process(&s, 10, 66, "/default/long1");
        assert_eq!(resolve(&s, 10, None).state, Resolved::Pending);
        add_process(&s, 11, 67, "/process_api/7d3463dfea2602ef2806174009a1f474");
        assert_eq!(resolve(&s, 11, None).source, Some(Source::Host));
    }

    #[test]
    fn wrong_start_time_is_unknown() {
        let s = state();
        add_process(&s, 10, 5, "/");
        assert_eq!(
            resolve(&s, 10, Some(StartTime(10))).state,
            Resolved::Running
        );
        assert_eq!(
            resolve(&s, 10, Some(StartTime(11))).state,
            Resolved::Unknown
        );
    }
}
