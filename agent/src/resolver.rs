//! Answers "which container and pod is this process in?" from memory: the
//! process table, the container store and the cgroup path cache. No /proc
//! read and no containerd call happen here, and nothing is cached: every
//! answer is computed from the current state, so no stale negative answer
//! can outlive the metadata that fixes it.
//!
//! One rule — [`membership`] — decides which container a process belongs
//! to, for `Resolve`, `ListProcesses`, `ListContainers` and `Watch` alike.
//! It never answers "host" for a process that may be in a container:
//!
//! | The process's cgroup | containerd synced | not synced (starting, reconnecting) | containerd never seen |
//! |---|---|---|---|
//! | a container containerd reported (by cgroup id or path) | `containerd` | `containerd` | — |
//! | a containerd layout (CRI, kubepods, `/<known namespace>/…`) without metadata | `pending` | `cgroup-path` when the path names an id, else `pending` | `cgroup-path` or `host` |
//! | another runtime's layout (CRI-O, podman, Docker) | `cgroup-path` | `cgroup-path` | `cgroup-path` |
//! | a cgroup whose path is not known yet | `pending` | `pending` | `pending` |
//! | anything else | `host` | `host` | `host` |
//!
//! Exited processes answer as they were last known, with state `exited`;
//! their container is found the same way (deleted containers stay for the
//! grace window too).

use std::collections::BTreeMap;

use crate::{
    cgroup::{CgroupPathCache, Hierarchy, PathContainer, PathRuntime, container_from_path},
    state::{
        Process, ProcessState, State,
        container::{Container, ContainerKey, Sources, TaskStatus, namespaces},
        containers::ContainerStore,
    },
    types::{CgroupId, CgroupIds, ProcKey, StartTime},
};

/// The state of a resolved process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// Running, and its container (if any) is known.
    Running,
    /// Exited within the grace window.
    Exited,
    /// Running in a cgroup that may be a container's, whose metadata (or
    /// the cgroup's path) is not known yet.
    Pending,
    /// Not a process the agent knows (never seen, or gone for longer than
    /// the grace window, or the start time does not match).
    Unknown,
}

impl Resolved {
    /// The name every output uses.
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
    /// The runtime's NRI account only (no containerd record), matched by cgroup.
    Nri,
    /// Recognised in the cgroup path only (a runtime pidmap does not watch,
    /// or containerd is not reachable).
    CgroupPath,
    /// Not in a container.
    Host,
}

impl Source {
    /// The name every output uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Containerd => "containerd",
            Self::Nri => "nri",
            Self::CgroupPath => "cgroup-path",
            Self::Host => "host",
        }
    }
}

/// The source of a store record's answer: containerd's when containerd knows it (NRI may have
/// added to it), NRI's when only NRI does.
pub(crate) fn runtime_source(c: Option<&Container>) -> Source {
    match c {
        Some(c) if c.sources.contains(Sources::NRI) && !c.sources.contains(Sources::CONTAINERD) => {
            Source::Nri
        }
        _ => Source::Containerd,
    }
}

/// The name every output uses for a runtime recognised in a cgroup path.
pub(crate) fn path_runtime_name(r: PathRuntime) -> &'static str {
    match r {
        PathRuntime::Containerd => "containerd",
        PathRuntime::CriO => "cri-o",
        PathRuntime::Docker => "docker",
        PathRuntime::Podman => "podman",
        PathRuntime::Kubepods => "kubepods",
    }
}

/// The name every output uses for a cgroup hierarchy.
pub(crate) fn hierarchy_name(h: Hierarchy) -> &'static str {
    match h {
        Hierarchy::V2 => "unified",
        Hierarchy::V1Memory => "memory",
    }
}

/// Which container a process belongs to. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Membership {
    /// A container containerd reported.
    Runtime(ContainerKey),
    /// A container recognised from its cgroup path only.
    Path(PathContainer),
    /// A cgroup that may be a container's, not confirmed yet; what the path
    /// says, if anything.
    Pending(Option<PathContainer>),
    /// Not in a container.
    Host,
}

/// The cgroup a process is placed by: its hierarchy, id and (cached) path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placement {
    pub hierarchy: Hierarchy,
    pub id: CgroupId,
    pub path: Option<String>,
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
    /// The hierarchy `cgroup_id` belongs to.
    pub cgroup_hierarchy: Option<Hierarchy>,
}

/// containerd namespaces found wherever containerd runs: `k8s.io`
/// (kubelet's CRI), `moby` (Docker) and `default` (`ctr`). While containerd
/// is not synced, their `/<namespace>/…` cgroups are taken for
/// containerd's even if no list named them yet; once it is synced, only the
/// namespaces it has count.
const WELL_KNOWN_NAMESPACES: [&str; 3] = [
    namespaces::KUBERNETES,
    namespaces::DOCKER,
    namespaces::DEFAULT,
];

/// What [`membership`] needs to see, borrowed once.
pub(crate) struct View<'a> {
    pub store: &'a ContainerStore,
    pub paths: &'a CgroupPathCache,
    /// containerd is listed, reconciled and followed.
    pub synced: bool,
    /// containerd runs on this node: it answered since the agent started.
    pub seen: bool,
}

impl View<'_> {
    /// Runs `f` with a view of `state` (each structure read-locked for the
    /// call).
    pub(crate) fn with<R>(state: &State, f: impl FnOnce(&View<'_>) -> R) -> R {
        let store = state.containers();
        let paths = state.cgroup_paths();
        f(&View {
            store: &store,
            paths: &paths,
            synced: state.containerd_synced(),
            seen: state.containerd_seen() || state.containerd_connected(),
        })
    }

    /// The cgroup that places `p`: cgroup2 unless the process is at the
    /// cgroup2 root and has a v1 memory cgroup (pure-v1 and hybrid hosts
    /// where only v1 places processes).
    pub(crate) fn placement(&self, p: &Process) -> Option<Placement> {
        self.placement_of(p.cgroups)
    }

    /// [`placement`](Self::placement) for a process in `cgroups`.
    pub(crate) fn placement_of(&self, cgroups: CgroupIds) -> Option<Placement> {
        let v2 = cgroups.v2.map(|id| (Hierarchy::V2, id));
        let v1 = cgroups.v1_memory.map(|id| (Hierarchy::V1Memory, id));
        let (hierarchy, id) = match (v2, v1) {
            (Some(v2), _) if v2.1.0 != 1 => v2,
            (_, Some(v1)) if v1.1.0 != 1 => v1,
            (Some(one), _) | (None, Some(one)) => one,
            (None, None) => return None,
        };
        Some(Placement {
            hierarchy,
            id,
            path: self.paths.cached(hierarchy, id).map(str::to_owned),
        })
    }

    /// The container containerd reported for a process in `cgroups`.
    pub(crate) fn runtime_container_of(
        &self,
        cgroups: CgroupIds,
        path: Option<&str>,
    ) -> Option<&Container> {
        cgroups
            .v2
            .filter(|id| id.0 != 1)
            .and_then(|id| self.store.by_cgroup_v2(id))
            .or_else(|| {
                cgroups
                    .v1_memory
                    .filter(|id| id.0 != 1)
                    .and_then(|id| self.store.by_cgroup_v1_memory(id))
            })
            .or_else(|| path.and_then(|p| self.container_at_or_above(p)))
    }

    /// The container whose cgroup is `path` or, for a cgroup made inside a
    /// container's (systemd in a pod, a container's own sub-cgroups), the
    /// nearest ancestor of it.
    fn container_at_or_above(&self, path: &str) -> Option<&Container> {
        let mut at = path;
        loop {
            if let Some(c) = self.store.by_cgroup_path(at) {
                return Some(c);
            }
            at = match at.rfind('/') {
                Some(0) | None => return None,
                Some(i) => &at[..i],
            };
        }
    }

    /// A cgroup path containerd would own: a CRI, kubepods or Docker
    /// layout, or `/<namespace>/…` for a namespace containerd has.
    fn looks_containerd(&self, path: &str, parsed: Option<&PathContainer>) -> bool {
        if parsed.is_some_and(|pc| {
            matches!(
                pc.runtime,
                PathRuntime::Containerd | PathRuntime::Kubepods | PathRuntime::Docker
            )
        }) {
            return true;
        }
        let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
        path.trim_start_matches('/').contains('/')
            && ((!self.synced && WELL_KNOWN_NAMESPACES.contains(&first))
                || self.store.namespaces().any(|ns| ns == first))
    }
}

/// Which container `p` belongs to; see the module docs.
pub(crate) fn membership(
    view: &View<'_>,
    p: &Process,
    placement: Option<&Placement>,
) -> Membership {
    membership_of(
        view,
        p.cgroups,
        matches!(p.state, ProcessState::Running),
        placement,
    )
}

/// [`membership`] of a process in `cgroups` that runs (or exited): what it
/// depends on, so that processes sharing cgroups are judged once.
pub(crate) fn membership_of(
    view: &View<'_>,
    cgroups: CgroupIds,
    running: bool,
    placement: Option<&Placement>,
) -> Membership {
    let path = placement.and_then(|pl| pl.path.as_deref());
    if let Some(c) = view.runtime_container_of(cgroups, path) {
        return Membership::Runtime(c.key.clone());
    }
    let Some(path) = path else {
        // A cgroup (not a root) whose path the tracker has not learned
        // yet: it may well be a container's.
        let unplaced = placement.is_none_or(|pl| pl.id.0 == 1);
        return if running && !unplaced {
            Membership::Pending(None)
        } else {
            Membership::Host
        };
    };
    let parsed = container_from_path(path);
    if running && view.seen && view.looks_containerd(path, parsed.as_ref()) {
        return match parsed {
            // Not synced: the path's own answer is sure enough.
            Some(pc) if !view.synced => Membership::Path(pc),
            other => Membership::Pending(other),
        };
    }
    match parsed {
        Some(pc) => Membership::Path(pc),
        None => Membership::Host,
    }
}

/// Resolves `pid`; with `start_time`, only the process with exactly that
/// start time (a reused pid resolves `unknown`).
pub fn resolve(state: &State, pid: u32, start_time: Option<StartTime>) -> Resolution {
    let process = match start_time {
        Some(start) => state.process_by_key(ProcKey::new(pid, start)),
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
            cgroup_hierarchy: None,
        };
    };
    View::with(state, |view| resolve_in(view, process))
}

impl Resolution {
    /// This answer for a query the table may not be current for (see
    /// [`State::catch_up`]): what may have changed meanwhile — a running
    /// process (it may have exec'd, moved or exited), a pid the table does
    /// not hold (it may have started) — is `pending`; an exit is final.
    #[must_use]
    pub fn unconfirmed(mut self) -> Self {
        if matches!(self.state, Resolved::Running | Resolved::Unknown) {
            self.state = Resolved::Pending;
        }
        self
    }
}

/// Resolves a process the table holds, within `view`.
pub(crate) fn resolve_in(view: &View<'_>, process: Process) -> Resolution {
    let placement = view.placement(&process);
    let member = membership(view, &process, placement.as_ref());
    let lifecycle = match process.state {
        ProcessState::Running => Resolved::Running,
        ProcessState::Exited { .. } => Resolved::Exited,
    };
    let (state, source, container, path_container) = match member {
        Membership::Runtime(key) => {
            let c = view.store.get(&key).cloned();
            (lifecycle, runtime_source(c.as_ref()), c, None)
        }
        Membership::Path(pc) => (lifecycle, Source::CgroupPath, None, Some(pc)),
        Membership::Pending(pc) => (Resolved::Pending, Source::CgroupPath, None, pc),
        Membership::Host => (lifecycle, Source::Host, None, None),
    };
    // A cgroup made a moment ago may not be in the path cache yet; the
    // container it belongs to knows the path.
    let cgroup_path = placement
        .as_ref()
        .and_then(|pl| pl.path.clone())
        .or_else(|| container.as_ref().and_then(|c| c.cgroup_path.clone()));
    Resolution {
        pid: process.key.pid,
        state,
        source: Some(source),
        process: Some(process),
        container,
        path_container,
        cgroup_path,
        cgroup_id: placement.as_ref().map(|pl| pl.id),
        cgroup_hierarchy: placement.map(|pl| pl.hierarchy),
    }
}

/// A container recognised only from its processes' cgroup paths, as
/// listed: running while any of its processes runs, stopped while only
/// exited ones (inside the grace window) remain, gone after that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathContainerEntry {
    pub container: PathContainer,
    pub status: TaskStatus,
    /// The cgroup of its first process found, and its hierarchy.
    pub cgroup_path: Option<String>,
    pub cgroup_id: Option<CgroupId>,
    pub cgroup_hierarchy: Option<Hierarchy>,
    /// The lowest live pid in it (its init, usually).
    pub first_pid: Option<u32>,
}

/// The key a path-known container is listed under: its namespace when the
/// path names one (containerd's `/<ns>/<id>` layout), else the runtime.
pub(crate) fn path_container_key(pc: &PathContainer) -> ContainerKey {
    let ns = pc
        .namespace
        .clone()
        .unwrap_or_else(|| path_runtime_name(pc.runtime).to_owned());
    ContainerKey::new(ns, pc.container_id.clone())
}

/// Every container known only from cgroup paths, by its
/// [`path_container_key`]. Costs the number of distinct cgroups processes
/// sit in (the table's cgroup index), not the number of processes, live or
/// exited: watchers call it on changes.
pub(crate) fn path_containers(state: &State) -> BTreeMap<ContainerKey, PathContainerEntry> {
    let table = state.table();
    View::with(state, |view| {
        let mut out: BTreeMap<ContainerKey, PathContainerEntry> = BTreeMap::new();
        // Running members first: the entry's cgroup is a running one's
        // where there is one.
        let groups = table
            .groups()
            .filter_map(|(ids, g)| g.first_live().map(|pid| (ids, true, Some(pid))))
            .chain(
                table
                    .groups()
                    .filter(|(_, g)| g.exited() > 0)
                    .map(|(ids, _)| (ids, false, None)),
            );
        for (cgroups, running, first_live) in groups {
            let placement = view.placement_of(cgroups);
            let pc = match membership_of(view, cgroups, running, placement.as_ref()) {
                Membership::Path(pc) => pc,
                _ => continue,
            };
            let entry = out
                .entry(path_container_key(&pc))
                .or_insert_with(|| PathContainerEntry {
                    container: pc,
                    status: TaskStatus::Stopped,
                    cgroup_path: placement.as_ref().and_then(|pl| pl.path.clone()),
                    cgroup_id: placement.as_ref().map(|pl| pl.id),
                    cgroup_hierarchy: placement.as_ref().map(|pl| pl.hierarchy),
                    first_pid: None,
                });
            if let Some(pid) = first_live {
                entry.status = TaskStatus::Running;
                entry.first_pid = Some(entry.first_pid.map_or(pid, |f| f.min(pid)));
            }
        }
        out
    })
}

/// Which container [`processes_of`] lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ContainerRef {
    /// One containerd reported.
    Runtime(ContainerKey),
    /// One known from cgroup paths.
    Path(ContainerKey),
}

/// The live processes of a container, by the same rule as [`membership`],
/// resolved. Judges each set of cgroups once (the table's cgroup index),
/// then resolves only the processes in the container's.
pub(crate) fn processes_of(state: &State, target: &ContainerRef) -> Vec<Resolution> {
    let table = state.table();
    View::with(state, |view| {
        let mut out: Vec<Resolution> = table
            .groups()
            .filter(|(_, g)| g.first_live().is_some())
            .filter(|(cgroups, _)| {
                let placement = view.placement_of(*cgroups);
                match (
                    membership_of(view, *cgroups, true, placement.as_ref()),
                    target,
                ) {
                    (Membership::Runtime(k), ContainerRef::Runtime(want)) => &k == want,
                    (Membership::Path(pc), ContainerRef::Path(want)) => {
                        &path_container_key(&pc) == want
                    }
                    _ => false,
                }
            })
            .flat_map(|(_, g)| g.live())
            .filter_map(|pid| table.get(pid).cloned())
            .map(|p| resolve_in(view, p))
            .collect();
        out.sort_by_key(|r| r.pid);
        out
    })
}

#[cfg(test)]
mod tests;
