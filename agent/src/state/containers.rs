//! The container store: every container the runtimes reported, indexed by
//! the cgroups its processes live in. Pure, runtime-neutral logic; its
//! writers are the containerd watcher and the NRI plugin (each through its
//! own [`ContainerWriter`](super::ContainerWriter)).
//!
//! One record per container, whichever sources know it ([`Sources`]): each
//! source's full list retires only the records that source knows, and a
//! record is deleted when no source knows it any more — or when containerd
//! lets go of one it knows. Where containerd and NRI both know a container,
//! containerd's word wins and NRI fills what its record lacks
//! (docs/architecture.md, "One container, several sources").

use std::collections::{BTreeSet, HashMap, VecDeque};

use super::container::{Container, ContainerKey, Sources, TaskStatus};
use crate::types::CgroupId;

/// What a container runtime reports about its containers, in the runtime's
/// own order; the runtime adapters (`runtime::containerd`) translate their
/// events into these. Container ids are within `namespace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerEvent {
    TaskStart {
        namespace: String,
        container_id: String,
        pid: u32,
    },
    ExecStarted {
        namespace: String,
        container_id: String,
        exec_id: String,
        pid: u32,
    },
    /// A process of the task exited: the init process when `exec_id` is
    /// the container id or empty, an exec otherwise.
    TaskExit {
        namespace: String,
        container_id: String,
        exec_id: String,
        pid: u32,
        exit_status: u32,
        exited_at: Option<i64>,
    },
    TaskDelete {
        namespace: String,
        container_id: String,
        exit_status: u32,
        exited_at: Option<i64>,
    },
    TaskOom {
        namespace: String,
        container_id: String,
    },
    TaskPaused {
        namespace: String,
        container_id: String,
        paused: bool,
    },
    /// Created or updated: metadata must be (re)fetched.
    ContainerChanged {
        namespace: String,
        container_id: String,
    },
    ContainerDelete {
        namespace: String,
        container_id: String,
    },
    NamespaceCreate {
        name: String,
    },
    NamespaceDelete {
        name: String,
    },
}

impl ContainerEvent {
    /// The container the event is about, if any.
    pub fn container_key(&self) -> Option<ContainerKey> {
        let (ns, id) = match self {
            Self::TaskStart {
                namespace,
                container_id,
                ..
            }
            | Self::ExecStarted {
                namespace,
                container_id,
                ..
            }
            | Self::TaskExit {
                namespace,
                container_id,
                ..
            }
            | Self::TaskDelete {
                namespace,
                container_id,
                ..
            }
            | Self::TaskOom {
                namespace,
                container_id,
            }
            | Self::TaskPaused {
                namespace,
                container_id,
                ..
            }
            | Self::ContainerChanged {
                namespace,
                container_id,
            }
            | Self::ContainerDelete {
                namespace,
                container_id,
            } => (namespace, container_id),
            Self::NamespaceCreate { .. } | Self::NamespaceDelete { .. } => return None,
        };
        Some(ContainerKey::new(ns.clone(), id.clone()))
    }
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct ContainerStore {
    containers: HashMap<ContainerKey, Container>,
    by_v2: HashMap<CgroupId, ContainerKey>,
    by_v1_memory: HashMap<CgroupId, ContainerKey>,
    by_path: HashMap<String, ContainerKey>,
    /// Deleted containers in deletion order, for expiry.
    deleted: VecDeque<(ContainerKey, u64)>,
    namespaces: BTreeSet<String>,
}

/// A container snapshot from a full list, for [`ContainerStore::reconcile`].
#[derive(Debug, Default)]
pub struct Snapshot {
    pub namespaces: Vec<String>,
    pub containers: Vec<Container>,
}

/// What a reconcile changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileStats {
    pub added: usize,
    pub updated: usize,
    /// Known containers the runtime no longer has.
    pub deleted: usize,
    /// Running tasks the list shows stopped (an exit event never came).
    pub stopped: usize,
}

impl ContainerStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Containers held, deleted ones inside the grace window included.
    pub fn len(&self) -> usize {
        self.containers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.containers.is_empty()
    }

    pub fn get(&self, key: &ContainerKey) -> Option<&Container> {
        self.containers.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Container> {
        self.containers.values()
    }

    pub fn namespaces(&self) -> impl Iterator<Item = &str> {
        self.namespaces.iter().map(String::as_str)
    }

    /// The container whose cgroup2 directory has id `id`.
    pub fn by_cgroup_v2(&self, id: CgroupId) -> Option<&Container> {
        self.by_v2.get(&id).and_then(|k| self.containers.get(k))
    }

    /// The container whose v1 memory cgroup has id `id`.
    pub fn by_cgroup_v1_memory(&self, id: CgroupId) -> Option<&Container> {
        self.by_v1_memory
            .get(&id)
            .and_then(|k| self.containers.get(k))
    }

    /// The container whose cgroup directory is `path`.
    pub fn by_cgroup_path(&self, path: &str) -> Option<&Container> {
        self.by_path.get(path).and_then(|k| self.containers.get(k))
    }

    /// Inserts or replaces a container's metadata from containerd, keeping
    /// task state the metadata does not carry (and what only NRI told), and
    /// re-indexes it.
    pub fn upsert(&mut self, mut c: Container) {
        self.namespaces.insert(c.key.namespace.clone());
        c.sources = Sources::CONTAINERD;
        if let Some(old) = self.containers.get(&c.key) {
            if old.deleted_at_ns.is_none() {
                c.sources = old.sources.with(Sources::CONTAINERD);
                c.pod.fill_from(&old.pod);
            }
            // A container deleted and created again starts afresh.
            if c.task_pid.is_none()
                && c.status == TaskStatus::Created
                && old.deleted_at_ns.is_none()
            {
                c.status = old.status;
                c.task_pid = old.task_pid;
                c.exit_code = old.exit_code;
                c.exited_at = old.exited_at;
            }
            c.cgroup_v2 = c.cgroup_v2.or(old.cgroup_v2);
            c.cgroup_v1_memory = c.cgroup_v1_memory.or(old.cgroup_v1_memory);
            c.cgroup_path = c.cgroup_path.or_else(|| old.cgroup_path.clone());
            c.deleted_at_ns = None;
        }
        self.unindex(&c.key);
        self.index(&c);
        self.containers.insert(c.key.clone(), c);
    }

    /// Records the cgroup ids found for a container's cgroup directory.
    pub fn set_cgroup_ids(
        &mut self,
        key: &ContainerKey,
        v2: Option<CgroupId>,
        v1_memory: Option<CgroupId>,
    ) {
        let Some(c) = self.containers.get_mut(key) else {
            return;
        };
        c.cgroup_v2 = v2.or(c.cgroup_v2);
        c.cgroup_v1_memory = v1_memory.or(c.cgroup_v1_memory);
        let c = c.clone();
        self.unindex(key);
        self.index(&c);
    }

    fn index(&mut self, c: &Container) {
        if let Some(id) = c.cgroup_v2 {
            self.by_v2.insert(id, c.key.clone());
        }
        if let Some(id) = c.cgroup_v1_memory {
            self.by_v1_memory.insert(id, c.key.clone());
        }
        if let Some(path) = &c.cgroup_path {
            self.by_path.insert(path.clone(), c.key.clone());
        }
    }

    fn unindex(&mut self, key: &ContainerKey) {
        let Some(c) = self.containers.get(key) else {
            return;
        };
        let (v2, v1, path) = (c.cgroup_v2, c.cgroup_v1_memory, c.cgroup_path.clone());
        if let Some(id) = v2
            && self.by_v2.get(&id) == Some(key)
        {
            self.by_v2.remove(&id);
        }
        if let Some(id) = v1
            && self.by_v1_memory.get(&id) == Some(key)
        {
            self.by_v1_memory.remove(&id);
        }
        if let Some(path) = path
            && self.by_path.get(&path) == Some(key)
        {
            self.by_path.remove(&path);
        }
    }

    /// Applies one runtime event at CLOCK_MONOTONIC `now_ns`. Returns the
    /// key of a container whose metadata must be fetched (an event about a
    /// container not known yet, or a create/update).
    pub fn apply(&mut self, ev: &ContainerEvent, now_ns: u64) -> Option<ContainerKey> {
        match ev {
            ContainerEvent::TaskStart {
                namespace,
                container_id,
                pid,
            } => {
                let (c, fetch) = self.entry(namespace, container_id);
                c.status = TaskStatus::Running;
                c.task_pid = Some(*pid);
                c.exit_code = None;
                c.exited_at = None;
                fetch
            }
            // An exec's processes are in the container's cgroup, which is
            // what resolves them; the event only makes the container known.
            ContainerEvent::ExecStarted {
                namespace,
                container_id,
                ..
            } => self.entry(namespace, container_id).1,
            ContainerEvent::TaskExit {
                namespace,
                container_id,
                exec_id,
                pid,
                exit_status,
                exited_at,
            } => {
                let (c, fetch) = self.entry(namespace, container_id);
                // An exec's exit leaves the task as it was.
                if exec_id == container_id || exec_id.is_empty() || c.task_pid == Some(*pid) {
                    c.status = TaskStatus::Stopped;
                    c.exit_code = Some(*exit_status);
                    c.exited_at = *exited_at;
                }
                fetch
            }
            ContainerEvent::TaskDelete {
                namespace,
                container_id,
                exit_status,
                exited_at,
            } => {
                let (c, fetch) = self.entry(namespace, container_id);
                if c.status != TaskStatus::Stopped {
                    c.exit_code = Some(*exit_status);
                    c.exited_at = *exited_at;
                }
                // A task that never started leaves the container created; one
                // that ran leaves it stopped (as `ctr` and CRI show it).
                if c.status != TaskStatus::Deleted
                    && (c.task_pid.is_some() || c.status != TaskStatus::Created)
                {
                    c.status = TaskStatus::Stopped;
                }
                c.task_pid = None;
                fetch
            }
            ContainerEvent::TaskOom { .. } => None,
            ContainerEvent::TaskPaused {
                namespace,
                container_id,
                paused,
            } => {
                let (c, fetch) = self.entry(namespace, container_id);
                c.status = if *paused {
                    TaskStatus::Paused
                } else {
                    TaskStatus::Running
                };
                fetch
            }
            ContainerEvent::ContainerChanged {
                namespace,
                container_id,
            } => {
                self.entry(namespace, container_id);
                Some(ContainerKey::new(namespace.clone(), container_id.clone()))
            }
            ContainerEvent::ContainerDelete {
                namespace,
                container_id,
            } => {
                self.retire(
                    &ContainerKey::new(namespace.clone(), container_id.clone()),
                    Sources::CONTAINERD,
                    now_ns,
                );
                None
            }
            ContainerEvent::NamespaceCreate { name } => {
                self.namespaces.insert(name.clone());
                None
            }
            ContainerEvent::NamespaceDelete { name } => {
                self.namespaces.remove(name);
                None
            }
        }
    }

    /// The container, created as a placeholder if unknown; the second value
    /// asks for its metadata when it was unknown.
    fn entry(&mut self, namespace: &str, id: &str) -> (&mut Container, Option<ContainerKey>) {
        let key = ContainerKey::new(namespace, id);
        self.namespaces.insert(namespace.to_owned());
        let fetch = (!self.containers.contains_key(&key)).then(|| key.clone());
        let c = self
            .containers
            .entry(key.clone())
            .or_insert_with(|| Container::placeholder(key));
        c.sources = c.sources.with(Sources::CONTAINERD);
        (c, fetch)
    }

    /// `source` no longer knows the container; it is deleted when no source
    /// does, or at once when containerd let go of it (containerd's word wins:
    /// an NRI that stays away, say a runtime restarted without it, must not
    /// keep a container containerd deleted). Returns whether it was deleted now.
    pub fn retire(&mut self, key: &ContainerKey, source: Sources, now_ns: u64) -> bool {
        let Some(c) = self.containers.get_mut(key) else {
            return false;
        };
        if c.deleted_at_ns.is_some() {
            return false;
        }
        let containerd_lets_go =
            source == Sources::CONTAINERD && c.sources.contains(Sources::CONTAINERD);
        c.sources = c.sources.without(source);
        if !c.sources.is_empty() && !containerd_lets_go {
            return false;
        }
        self.mark_deleted(key, now_ns);
        true
    }

    fn mark_deleted(&mut self, key: &ContainerKey, now_ns: u64) {
        if let Some(c) = self.containers.get_mut(key)
            && c.deleted_at_ns.is_none()
        {
            c.deleted_at_ns = Some(now_ns);
            c.status = TaskStatus::Deleted;
            c.task_pid = None;
            self.deleted.push_back((key.clone(), now_ns));
        }
    }

    /// Replaces containerd's view with a full list taken after the event
    /// stream was opened. Containers containerd knew and does not list were
    /// deleted (unless NRI still knows them); running tasks it shows stopped
    /// exited (perhaps while the runtime was down and its exit event was
    /// lost). Events buffered during the list are applied after.
    pub fn reconcile(&mut self, snap: Snapshot, now_ns: u64) -> ReconcileStats {
        let mut stats = ReconcileStats::default();
        self.namespaces = snap.namespaces.into_iter().collect();
        let listed: BTreeSet<ContainerKey> =
            snap.containers.iter().map(|c| c.key.clone()).collect();
        stats.deleted = self.retire_unlisted(&listed, Sources::CONTAINERD, now_ns);
        for c in snap.containers {
            match self.containers.get(&c.key) {
                None => stats.added += 1,
                Some(old) => {
                    stats.updated += 1;
                    if old.status.is_live() && !c.status.is_live() {
                        stats.stopped += 1;
                    }
                }
            }
            self.namespaces.insert(c.key.namespace.clone());
            self.upsert_listed(c);
        }
        stats
    }

    /// Retires `source` from every live record it knows that `listed` lacks;
    /// returns how many were deleted.
    fn retire_unlisted(
        &mut self,
        listed: &BTreeSet<ContainerKey>,
        source: Sources,
        now_ns: u64,
    ) -> usize {
        let gone: Vec<ContainerKey> = self
            .containers
            .values()
            .filter(|c| {
                c.deleted_at_ns.is_none() && c.sources.contains(source) && !listed.contains(&c.key)
            })
            .map(|c| c.key.clone())
            .collect();
        gone.iter()
            .filter(|key| self.retire(key, source, now_ns))
            .count()
    }

    /// NRI's account of a container (or pod sandbox). Where containerd knows
    /// it too, containerd's record wins and this fills only what it lacks;
    /// otherwise NRI's record replaces the last one, keeping the cgroup ids
    /// already found.
    pub fn upsert_nri(&mut self, mut c: Container) {
        c.sources = Sources::NRI;
        if let Some(old) = self
            .containers
            .get(&c.key)
            .filter(|old| old.deleted_at_ns.is_none())
        {
            if old.sources.contains(Sources::CONTAINERD) {
                let mut merged = old.clone();
                merged.pod.fill_from(&c.pod);
                if merged.cgroup_path.is_none() {
                    merged.cgroup_path = c.cgroup_path.take();
                }
                if merged.image.is_empty() {
                    merged.image = std::mem::take(&mut c.image);
                }
                if merged.labels.is_empty() {
                    merged.labels = std::mem::take(&mut c.labels);
                }
                merged.created_at = merged.created_at.or(c.created_at);
                c = merged;
            } else {
                c.cgroup_v2 = c.cgroup_v2.or(old.cgroup_v2);
                c.cgroup_v1_memory = c.cgroup_v1_memory.or(old.cgroup_v1_memory);
                if c.cgroup_path.is_none() {
                    c.cgroup_path.clone_from(&old.cgroup_path);
                }
                c.pod.fill_from(&old.pod);
                if c.image.is_empty() {
                    c.image.clone_from(&old.image);
                }
                c.created_at = c.created_at.or(old.created_at);
                if c.status.is_live() {
                    c.task_pid = c.task_pid.or(old.task_pid);
                }
            }
            c.sources = old.sources.with(Sources::NRI);
        }
        c.deleted_at_ns = None;
        self.unindex(&c.key);
        self.index(&c);
        self.containers.insert(c.key.clone(), c);
    }

    /// Replaces NRI's view with its full list (`Synchronize`): what NRI knew
    /// and does not list any more is retired; the listed are upserted.
    pub fn reconcile_nri(&mut self, listed: Vec<Container>, now_ns: u64) -> ReconcileStats {
        let keys: BTreeSet<ContainerKey> = listed.iter().map(|c| c.key.clone()).collect();
        let mut stats = ReconcileStats {
            deleted: self.retire_unlisted(&keys, Sources::NRI, now_ns),
            ..ReconcileStats::default()
        };
        for c in listed {
            match self.containers.get(&c.key) {
                Some(old) if old.deleted_at_ns.is_none() => {
                    stats.updated += 1;
                    if old.status.is_live() && !c.status.is_live() {
                        stats.stopped += 1;
                    }
                }
                _ => stats.added += 1,
            }
            self.upsert_nri(c);
        }
        stats
    }

    /// Like [`upsert`](Self::upsert) but the list's task state wins. A
    /// listed container without a task that had one stays stopped.
    fn upsert_listed(&mut self, mut c: Container) {
        c.sources = Sources::CONTAINERD;
        if let Some(old) = self.containers.get(&c.key) {
            if old.deleted_at_ns.is_none() {
                c.sources = old.sources.with(Sources::CONTAINERD);
                c.pod.fill_from(&old.pod);
            }
            if c.status == TaskStatus::Created
                && c.task_pid.is_none()
                && matches!(
                    old.status,
                    TaskStatus::Running | TaskStatus::Paused | TaskStatus::Stopped
                )
            {
                c.status = TaskStatus::Stopped;
            }
            c.cgroup_v2 = c.cgroup_v2.or(old.cgroup_v2);
            c.cgroup_v1_memory = c.cgroup_v1_memory.or(old.cgroup_v1_memory);
            if c.status != TaskStatus::Running && c.exit_code.is_none() {
                c.exit_code = old.exit_code;
                c.exited_at = old.exited_at;
            }
        }
        self.unindex(&c.key);
        self.index(&c);
        self.containers.insert(c.key.clone(), c);
    }

    /// Forgets containers deleted more than `grace_ns` before `now_ns`.
    pub fn expire(&mut self, now_ns: u64, grace_ns: u64) -> usize {
        let mut removed = 0;
        while let Some((key, at)) = self.deleted.front() {
            if now_ns.saturating_sub(*at) < grace_ns {
                break;
            }
            let (key, at) = (key.clone(), *at);
            self.deleted.pop_front();
            // Recreated (or deleted again) since? Then this entry is stale.
            if self
                .containers
                .get(&key)
                .is_some_and(|c| c.deleted_at_ns == Some(at))
            {
                self.unindex(&key);
                self.containers.remove(&key);
                removed += 1;
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests;
