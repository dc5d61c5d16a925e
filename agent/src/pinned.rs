//! The pinned containers map: pidmap's answer, per cgroup, handed to the
//! kernel for every other eBPF tool on the node.
//!
//! The map (`agent_common::CONTAINERS_MAP`, a hash of `u64` cgroup id →
//! [`ContainerRecord`]) is created with the agent's programs and pinned at
//! `<pin dir>/containers`; an existing pin there is reused, never emptied,
//! so the entries survive an agent restart. Layout and version rule:
//! `agent_common::containers` and `include/pidmap.h`.
//!
//! Who writes what:
//! - [`Publisher`] (this module, a task of the agent) keeps one entry per
//!   cgroup that holds live processes — its [`membership`], the rule every
//!   answer of the API uses — and one per container the runtime reported
//!   as created, running or paused whose cgroup id it knows, from its
//!   record: as soon as its task starts. It recomputes when what entries
//!   depend on changed (the sets of cgroups with live processes, the
//!   cgroup paths known, the container store, the link to containerd: the
//!   writers of each tell it, at no cost to an exec in a known cgroup), a
//!   few milliseconds apart at most, and once a second; it writes only
//!   entries that differ; an entry whose cgroup emptied is
//!   removed, a container's when it is deleted.
//! - The kernel side (`agent-ebpf`) copies a container's (or pending
//!   cgroup's) entry to a cgroup made inside it at `cgroup_mkdir`, marked
//!   nested, and deletes any entry at `cgroup_rmdir`. The publisher leaves
//!   nested entries to it while their container lives.
//!
//! While containerd is not synced (starting, reconnecting), an entry that
//! says "container" is not turned into "pending": what pidmap knew before
//! stays until the runtime says otherwise.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use agent_common::containers::{
    ContainerRecord, FLAG_NESTED, FLAG_SANDBOX, FLAG_V1_MEMORY, RECORD_SIZE, RUNTIME_CONTAINERD,
    RUNTIME_CRIO, RUNTIME_DOCKER, RUNTIME_PODMAN, RUNTIME_UNKNOWN, STATE_CONTAINER, STATE_HOST,
    STATE_PENDING,
};
use aya::maps::{HashMap as BpfHashMap, MapData, MapError, MapInfo, MapType};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    cgroup::{CgroupFs, PathContainer, PathRuntime},
    resolver::{Membership, View, membership_of},
    state::{
        State,
        container::{Container, TaskStatus, namespaces},
    },
    types::CgroupIds,
};

/// `statfs` magic of a BPF filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The bpffs mount the default pin directory lives on.
const BPF_FS: &str = "/sys/fs/bpf";

/// How long the publisher lets changes gather before it recomputes: a
/// storm of new cgroups costs one recompute per this interval.
const DEBOUNCE: Duration = Duration::from_millis(5);

/// Recompute at least this often, whatever the change feed says.
const REFRESH: Duration = Duration::from_secs(1);

/// Why the containers map cannot be pinned where asked.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "{path} is not on a BPF filesystem (mount one: `mount -t bpf bpf {BPF_FS}`, or pass --no-pin)"
    )]
    NotBpfFs { path: PathBuf },
    #[error("cannot use pin directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} holds a map pidmap cannot reuse ({found}; pidmap's is a hash of 8-byte keys and {RECORD_SIZE}-byte values): remove it, or pass another --pin-dir"
    )]
    Incompatible { path: PathBuf, found: String },
    #[error("cannot open the map pinned at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: MapError,
    },
}

/// Which hierarchy's cgroup ids key the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyed {
    /// cgroup2 ids (cgroup v2 and hybrid hosts).
    V2,
    /// v1 memory-cgroup ids (pure cgroup v1 hosts), and the memory
    /// hierarchy's id.
    V1Memory(u32),
}

impl Keyed {
    /// The hierarchy of this host's containers: cgroup2 where it is
    /// mounted, else the v1 memory hierarchy (its id from
    /// `<proc_root>/cgroups`), else none.
    pub fn of_host(fs: &CgroupFs, proc_root: &Path) -> Option<Self> {
        if fs.v2_root().is_some() {
            return Some(Self::V2);
        }
        fs.v1_memory_root()?;
        let text = std::fs::read_to_string(proc_root.join("cgroups")).ok()?;
        memory_hierarchy_id(&text).map(Self::V1Memory)
    }

    /// The hierarchy id the kernel side compares with.
    pub fn hierarchy_id(self) -> u32 {
        match self {
            Self::V2 => 0,
            Self::V1Memory(id) => id,
        }
    }

    /// The key of processes in `ids`, if they have one (the root cgroup,
    /// id 1, holds everything not placed: it gets none).
    fn key(self, ids: CgroupIds) -> Option<u64> {
        let id = match self {
            Self::V2 => ids.v2,
            Self::V1Memory(_) => ids.v1_memory,
        }?;
        (id.0 != 1).then_some(id.0)
    }

    /// The key of a container's own cgroup.
    fn container_key(self, c: &Container) -> Option<u64> {
        self.key(CgroupIds {
            v2: c.cgroup_v2,
            v1_memory: c.cgroup_v1_memory,
        })
    }
}

/// The memory controller's hierarchy id in `/proc/cgroups`.
fn memory_hierarchy_id(text: &str) -> Option<u32> {
    text.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        (fields.next()? == "memory")
            .then(|| fields.next()?.parse().ok())
            .flatten()
            .filter(|&id| id != 0)
    })
}

/// Checks that `dir` can hold the pin — on a BPF filesystem, and any map
/// already pinned there of pidmap's shape — and creates it (mode 0700).
/// Returns the map's pin path.
pub(crate) fn prepare(dir: &Path) -> Result<PathBuf, PinError> {
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if !on_bpffs(existing) {
        return Err(PinError::NotBpfFs {
            path: dir.to_owned(),
        });
    }
    let dir_error = |source| PinError::Dir {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(dir_error)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(dir_error)?;
    let pin = dir.join(agent_common::CONTAINERS_MAP);
    if pin.exists() {
        let info = MapInfo::from_pin(&pin).map_err(|source| PinError::Open {
            path: pin.clone(),
            source,
        })?;
        let kind = info.map_type().ok();
        if kind != Some(MapType::Hash)
            || info.key_size() != 8
            || info.value_size() as usize != RECORD_SIZE
        {
            return Err(PinError::Incompatible {
                path: pin,
                found: format!(
                    "type {kind:?}, {}-byte keys, {}-byte values",
                    info.key_size(),
                    info.value_size()
                ),
            });
        }
        info!(pin = %pin.display(), "reusing the pinned containers map");
    }
    Ok(pin)
}

/// Where the map is pinned by default: `agent_common`'s directory, when
/// [`BPF_FS`] is a BPF filesystem.
pub(crate) fn default_dir() -> Option<PathBuf> {
    on_bpffs(Path::new(BPF_FS)).then(|| PathBuf::from(agent_common::containers::DEFAULT_PIN_DIR))
}

/// Whether `path` is on a BPF filesystem.
// `f_type`'s width differs between architectures.
#[allow(clippy::unnecessary_cast)]
fn on_bpffs(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type as i64 == BPF_FS_MAGIC)
}

/// Keeps the containers map equal to pidmap's view; see the module docs.
pub(crate) struct Publisher {
    state: Arc<State>,
    map: BpfHashMap<MapData, u64, ContainerRecord>,
    keyed: Keyed,
    /// What the map holds, as far as the publisher knows: what it wrote,
    /// and what it found at start.
    published: HashMap<u64, ContainerRecord>,
    /// The last generation written.
    generation: u64,
    /// A failed write was logged (later ones are only counted).
    warned: bool,
    /// What the last publication was computed from.
    inputs: Option<Inputs>,
}

/// What the entries are computed from, as epochs: the sets of cgroups
/// processes are in, the cgroup paths known, the container store and
/// containerd's link. While they stay, so do the entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Inputs {
    groups: u64,
    paths: u64,
    containers: u64,
}

/// The [`Inputs`] now.
fn inputs(state: &State) -> Inputs {
    let containers = state.containers_epoch();
    Inputs {
        groups: state.table().groups_epoch(),
        paths: state.cgroup_paths().epoch(),
        containers,
    }
}

impl Publisher {
    /// A publisher of `state` into `map`; reads what the map already holds
    /// (an agent's before this one) so it is updated, not refilled.
    pub(crate) fn new(
        state: Arc<State>,
        map: BpfHashMap<MapData, u64, ContainerRecord>,
        keyed: Keyed,
    ) -> Self {
        let published: HashMap<u64, ContainerRecord> = map.iter().filter_map(Result::ok).collect();
        let generation = published.values().map(|r| r.generation).max().unwrap_or(0);
        if !published.is_empty() {
            info!(
                entries = published.len(),
                "the containers map holds entries from before; updating them"
            );
        }
        Self {
            state,
            map,
            keyed,
            published,
            generation,
            warned: false,
            inputs: None,
        }
    }

    /// Publishes until `shutdown`: at once, then after every change (a
    /// few milliseconds' worth gathered) and every second.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let state = Arc::clone(&self.state);
        let mut refresh = tokio::time::interval(REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                () = state.inputs_changed() => {
                    // Gather what else changes meanwhile: a storm costs one
                    // recompute per interval.
                    tokio::time::sleep(DEBOUNCE).await;
                    if Some(inputs(&self.state)) == self.inputs {
                        continue;
                    }
                }
                _ = refresh.tick() => {}
            }
            self.publish();
        }
    }

    /// Brings the map in line with the state; returns (written, removed).
    pub(crate) fn publish(&mut self) -> (usize, usize) {
        let (desired, inputs) = desired_with_inputs(&self.state, self.keyed);
        self.inputs = Some(inputs);
        let synced = self.state.containerd_synced();
        let (mut written, mut removed) = (0, 0);
        for (&key, record) in &desired {
            if let Some(old) = self.published.get(&key) {
                let same = ContainerRecord {
                    generation: old.generation,
                    ..*record
                } == *old;
                let would_forget = !synced
                    && old.state == STATE_CONTAINER
                    && record.state == STATE_PENDING
                    && (record.flags & agent_common::containers::FLAG_CONTAINER_ID == 0
                        || record.container_id == old.container_id);
                if same || would_forget {
                    continue;
                }
            }
            // CLOCK_BOOTTIME: generations keep increasing across agent
            // restarts, whatever the map held.
            self.generation = self
                .generation
                .saturating_add(1)
                .max(crate::util::boottime_ns());
            let record = ContainerRecord {
                generation: self.generation,
                ..*record
            };
            match self.map.insert(key, record, 0) {
                Ok(()) => {
                    self.published.insert(key, record);
                    written += 1;
                }
                Err(error) => {
                    self.state.metrics().count_pinned_map_error();
                    if !std::mem::replace(&mut self.warned, true) {
                        warn!(key, %error, entries = self.published.len(), "cannot write a containers map entry (later failures are only counted: pidmap_pinned_map_errors_total)");
                    }
                }
            }
        }
        let gone: Vec<u64> = self
            .published
            .iter()
            .filter(|(key, old)| !desired.contains_key(key) && !nested_of_live(old, &desired))
            .map(|(&key, _)| key)
            .collect();
        for key in gone {
            self.published.remove(&key);
            match self.map.remove(&key) {
                Ok(()) => removed += 1,
                // The kernel side removed it with its cgroup.
                Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(error) => {
                    self.state.metrics().count_pinned_map_error();
                    debug!(key, %error, "cannot remove a containers map entry");
                }
            }
        }
        self.state.metrics().count_pinned_map_writes(
            written as u64,
            removed as u64,
            self.published.len(),
        );
        (written, removed)
    }
}

/// A nested entry (the kernel side's copy for a cgroup made inside a
/// container) whose container still has an entry of its own: left alone.
fn nested_of_live(old: &ContainerRecord, desired: &HashMap<u64, ContainerRecord>) -> bool {
    old.flags & FLAG_NESTED != 0
        && desired.values().any(|r| {
            r.flags & FLAG_NESTED == 0
                && r.state == old.state
                && r.runtime == old.runtime
                && r.container_id == old.container_id
        })
}

/// What the map should hold: every cgroup with live processes, by the
/// resolver's rule, and every container whose cgroup exists. Where two
/// answers meet on one key (hybrid hosts), the surer one wins: container
/// over pending over host. Generations are 0 here.
pub fn desired(state: &State, keyed: Keyed) -> HashMap<u64, ContainerRecord> {
    desired_with_inputs(state, keyed).0
}

/// [`desired`], and the [`Inputs`] it was computed from (read under the
/// same locks).
fn desired_with_inputs(state: &State, keyed: Keyed) -> (HashMap<u64, ContainerRecord>, Inputs) {
    let containers = state.containers_epoch();
    let table = state.table();
    View::with(state, |view| {
        let inputs = Inputs {
            groups: table.groups_epoch(),
            paths: view.paths.epoch(),
            containers,
        };
        let mut out: HashMap<u64, ContainerRecord> = HashMap::new();
        let mut put = |key: u64, record: ContainerRecord| {
            let keep = out
                .get(&key)
                .is_some_and(|old| rank(old.state) >= rank(record.state));
            if !keep {
                out.insert(key, record);
            }
        };
        for (ids, group) in table.groups() {
            if group.first_live().is_none() {
                continue;
            }
            let Some(key) = keyed.key(ids) else { continue };
            let placement = view.placement_of(ids);
            let record = match membership_of(view, ids, true, placement.as_ref()) {
                Membership::Runtime(k) => match view.store.get(&k) {
                    Some(c) => {
                        let mut r = container_record(c, keyed);
                        if keyed.container_key(c).is_some_and(|own| own != key) {
                            r.flags |= FLAG_NESTED;
                        }
                        r
                    }
                    None => ContainerRecord::new(STATE_PENDING),
                },
                Membership::Path(pc) => path_record(STATE_CONTAINER, &pc),
                Membership::Pending(pc) => match pc {
                    Some(pc) => path_record(STATE_PENDING, &pc),
                    None => ContainerRecord::new(STATE_PENDING),
                },
                Membership::Host => ContainerRecord::new(STATE_HOST),
            };
            put(key, with_hierarchy(record, keyed));
        }
        for c in view.store.iter() {
            // A stopped container's cgroup is empty, and its removal (the
            // task's deletion) takes the entry with it.
            if !matches!(
                c.status,
                TaskStatus::Created | TaskStatus::Running | TaskStatus::Paused
            ) {
                continue;
            }
            if let Some(key) = keyed.container_key(c) {
                put(key, container_record(c, keyed));
            }
        }
        (out, inputs)
    })
}

fn rank(state: u8) -> u8 {
    match state {
        STATE_CONTAINER => 3,
        STATE_PENDING => 2,
        _ => 1,
    }
}

fn with_hierarchy(mut r: ContainerRecord, keyed: Keyed) -> ContainerRecord {
    if let Keyed::V1Memory(_) = keyed {
        r.flags |= FLAG_V1_MEMORY;
    }
    r
}

/// The record of a container the runtime reported.
fn container_record(c: &Container, keyed: Keyed) -> ContainerRecord {
    let mut r = ContainerRecord::new(STATE_CONTAINER);
    r.runtime = if c.key.namespace == namespaces::DOCKER {
        RUNTIME_DOCKER
    } else {
        RUNTIME_CONTAINERD
    };
    r.set_container_id(&c.key.id);
    if let Some(uid) = &c.pod.pod_uid {
        r.set_pod_uid(uid);
    }
    if c.pod.is_sandbox {
        r.flags |= FLAG_SANDBOX;
    }
    with_hierarchy(r, keyed)
}

/// The record of what a cgroup path says.
fn path_record(state: u8, pc: &PathContainer) -> ContainerRecord {
    let mut r = ContainerRecord::new(state);
    r.runtime = match pc.runtime {
        PathRuntime::Containerd => RUNTIME_CONTAINERD,
        PathRuntime::CriO => RUNTIME_CRIO,
        PathRuntime::Docker => RUNTIME_DOCKER,
        PathRuntime::Podman => RUNTIME_PODMAN,
        PathRuntime::Kubepods => RUNTIME_UNKNOWN,
    };
    r.set_container_id(&pc.container_id);
    if let Some(uid) = &pc.pod_uid {
        r.set_pod_uid(uid);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_hierarchy_is_read_from_proc_cgroups() {
        let text = "#subsys_name\thierarchy\tnum_cgroups\tenabled\n\
                    cpuset\t3\t1\t1\nmemory\t4\t120\t1\npids\t8\t90\t1\n";
        assert_eq!(memory_hierarchy_id(text), Some(4));
        // Bound to cgroup2 (hierarchy 0) or absent: no v1 memory hierarchy.
        assert_eq!(memory_hierarchy_id("memory\t0\t120\t1\n"), None);
        assert_eq!(memory_hierarchy_id("cpu\t2\t1\t1\n"), None);
    }

    #[test]
    fn root_cgroups_have_no_key() {
        use crate::types::CgroupId;
        let ids = |v2, v1| CgroupIds {
            v2: Some(CgroupId(v2)),
            v1_memory: Some(CgroupId(v1)),
        };
        assert_eq!(Keyed::V2.key(ids(1, 9)), None);
        assert_eq!(Keyed::V2.key(ids(7, 9)), Some(7));
        assert_eq!(Keyed::V1Memory(4).key(ids(7, 9)), Some(9));
        assert_eq!(Keyed::V1Memory(4).key(ids(7, 1)), None);
    }
}
