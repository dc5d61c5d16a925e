//! The process table: every process on the node keyed by (pid, start time),
//! plus recently exited ones for a grace window. Pure logic, no I/O: the
//! owner task feeds it kernel events and /proc scans with the current
//! CLOCK_MONOTONIC time.

use std::{
    collections::{BTreeSet, HashMap},
    num::NonZeroUsize,
};

use agent_common::EventKind;
use lru::LruCache;

use crate::{
    ebpf::event::KernelEvent,
    proc::{ScanResult, ScannedProcess},
    types::{CgroupIds, Comm, ProcKey},
};

/// Whether a process still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    /// Alive as far as the agent knows.
    Running,
    /// Gone; kept for the grace window.
    Exited {
        /// CLOCK_MONOTONIC ns of the exit (or of its discovery by a rescan).
        at_ns: u64,
        /// Wait status, when the kernel reported the exit.
        exit_code: Option<i32>,
    },
}

/// One process as the table knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub key: ProcKey,
    /// The parent (`real_parent`'s thread group) when known.
    pub parent: Option<ProcKey>,
    pub comm: Comm,
    pub cgroups: CgroupIds,
    pub state: ProcessState,
    /// CLOCK_MONOTONIC ns of the newest information about this process.
    pub updated_ns: u64,
    /// CLOCK_MONOTONIC ns of the newest information about its parent: a
    /// re-parenting (the parent exited) is newer than any event the process
    /// made before it.
    pub parent_ns: u64,
}

/// What reconciling the table with a /proc scan changed (the container
/// store's reconcile with containerd has its own `containers::ReconcileStats`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanStats {
    /// Processes the table did not know.
    pub added: usize,
    /// Live entries whose process was gone (their exit was missed).
    pub marked_exited: usize,
    /// Scanned processes ignored because an event already said they exited.
    pub skipped_exited: usize,
}

/// The processes, live and exited, that share one set of cgroups (see
/// [`ProcessTable::groups`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CgroupGroup {
    /// The live processes' pids, lowest first.
    live: BTreeSet<u32>,
    /// How many exited processes (inside the grace window) were in them.
    exited: usize,
}

impl CgroupGroup {
    /// The lowest live pid, if any process runs in these cgroups.
    pub fn first_live(&self) -> Option<u32> {
        self.live.first().copied()
    }

    /// The live processes' pids, lowest first.
    pub fn live(&self) -> impl Iterator<Item = u32> + '_ {
        self.live.iter().copied()
    }

    /// How many exited processes (inside the grace window) were in them.
    pub fn exited(&self) -> usize {
        self.exited
    }

    fn is_empty(&self) -> bool {
        self.live.is_empty() && self.exited == 0
    }
}

/// The table. See the module docs.
pub struct ProcessTable {
    live: HashMap<u32, Process>,
    /// Live processes by their parent's pid, for re-parenting.
    children: HashMap<u32, Vec<u32>>,
    /// Live and exited processes by their cgroups: the answer to "which
    /// containers do processes sit in" costs the number of distinct
    /// cgroups, not the number of processes.
    groups: HashMap<CgroupIds, CgroupGroup>,
    exited: LruCache<ProcKey, Process>,
    /// Start time of the newest exited entry per pid, for bare-pid look-ups.
    latest_exit: HashMap<u32, ProcKey>,
    grace_ns: u64,
    /// Changes whenever a set of cgroups gains its first live process or
    /// loses its last, or enters or leaves the index.
    groups_epoch: u64,
}

impl ProcessTable {
    /// `grace_ns`: how long exited processes stay; `max_exited`: at most
    /// that many exited entries are kept (oldest evicted first).
    pub fn new(grace_ns: u64, max_exited: NonZeroUsize) -> Self {
        Self {
            live: HashMap::new(),
            children: HashMap::new(),
            groups: HashMap::new(),
            exited: LruCache::new(max_exited),
            latest_exit: HashMap::new(),
            grace_ns,
            groups_epoch: 0,
        }
    }

    /// Live processes.
    pub fn live_len(&self) -> usize {
        self.live.len()
    }

    /// Exited processes still inside the grace window.
    pub fn exited_len(&self) -> usize {
        self.exited.len()
    }

    /// The process now holding `pid`, or else the newest exited one that
    /// held it within the grace window.
    pub fn get(&self, pid: u32) -> Option<&Process> {
        self.live.get(&pid).or_else(|| {
            self.latest_exit
                .get(&pid)
                .and_then(|key| self.exited.peek(key))
        })
    }

    /// Exactly the process `key`, live or exited; never another process
    /// that reused its pid.
    pub fn get_key(&self, key: ProcKey) -> Option<&Process> {
        match self.live.get(&key.pid) {
            Some(p) if p.key == key => Some(p),
            _ => self.exited.peek(&key),
        }
    }

    /// Every live process.
    pub fn live(&self) -> impl Iterator<Item = &Process> {
        self.live.values()
    }

    /// The `n` lowest live pids above `after`, lowest first: a cursor
    /// over the live processes that holds nothing between calls.
    pub fn live_pids_after(&self, after: u32, n: usize) -> Vec<u32> {
        let mut lowest = std::collections::BinaryHeap::with_capacity(n + 1);
        for &pid in self.live.keys().filter(|&&pid| pid > after) {
            lowest.push(pid);
            if lowest.len() > n {
                lowest.pop();
            }
        }
        lowest.into_sorted_vec()
    }

    /// Every exited process still inside the grace window.
    pub fn exited(&self) -> impl Iterator<Item = &Process> {
        self.exited.iter().map(|(_, p)| p)
    }

    /// Every set of cgroups some live or exited process is in, with those
    /// processes: as many entries as distinct cgroups, however many
    /// processes there are.
    pub fn groups(&self) -> impl Iterator<Item = (CgroupIds, &CgroupGroup)> {
        self.groups.iter().map(|(ids, g)| (*ids, g))
    }

    /// Updates the cgroup index for one process: `f` on the group of
    /// `cgroups`, which goes when it is empty.
    fn regroup(&mut self, cgroups: CgroupIds, f: impl FnOnce(&mut CgroupGroup)) {
        let (existed, had_live) = self
            .groups
            .get(&cgroups)
            .map_or((false, false), |g| (true, !g.live.is_empty()));
        let group = self.groups.entry(cgroups).or_default();
        f(group);
        let has_live = !group.live.is_empty();
        let empty = group.is_empty();
        if empty {
            self.groups.remove(&cgroups);
        }
        if !existed || empty || had_live != has_live {
            self.groups_epoch = self.groups_epoch.wrapping_add(1);
        }
    }

    /// Changes whenever the set of cgroups processes are in changes (a set
    /// of cgroups gains its first live process, loses its last, enters or
    /// leaves the index): what is computed per set of cgroups is still
    /// right while it is the same.
    pub fn groups_epoch(&self) -> u64 {
        self.groups_epoch
    }

    /// The live processes whose parent is `parent` (by pid, and by start
    /// time where the child's record has one).
    pub fn children_of(&self, parent: ProcKey) -> Vec<ProcKey> {
        let Some(pids) = self.children.get(&parent.pid) else {
            return Vec::new();
        };
        pids.iter()
            .filter_map(|pid| self.live.get(pid))
            .filter(|c| {
                c.parent
                    .is_some_and(|p| p.start_time == parent.start_time || p.start_time.0 == 0)
            })
            .map(|c| c.key)
            .collect()
    }

    /// The pid of the parent live process `child` is recorded with, when
    /// that parent is no longer alive as far as the table knows: it exited,
    /// or another process holds its pid now. Such a child has been (or is
    /// about to be) re-parented by the kernel, and nothing else will tell
    /// the table — its parent's exit was applied before the child was known
    /// (a /proc scan that read the child while its parent lived, applied
    /// after that parent's exit event), or it was lost.
    pub fn parent_gone(&self, child: ProcKey) -> Option<u32> {
        let p = self.live.get(&child.pid).filter(|p| p.key == child)?;
        let parent = p.parent?;
        if parent.pid == 0 {
            // init and kthreadd: no parent in this pid namespace.
            return None;
        }
        match self.live.get(&parent.pid) {
            // Known only by pid (from /proc): the holder must be older
            // than the child to be its parent.
            Some(holder) if parent.start_time.0 == 0 => {
                (holder.key.start_time > child.start_time).then_some(parent.pid)
            }
            Some(holder) => (holder.key != parent).then_some(parent.pid),
            None => Some(parent.pid),
        }
    }

    /// Every live process whose recorded parent is gone (see
    /// [`parent_gone`](Self::parent_gone)), with that parent's pid.
    pub fn orphaned(&self) -> Vec<(ProcKey, u32)> {
        self.live
            .values()
            .filter_map(|p| Some((p.key, self.parent_gone(p.key)?)))
            .collect()
    }

    /// Records that live process `child` now has `parent` (its parent
    /// exited and the kernel handed it to a reaper at CLOCK_MONOTONIC
    /// `at_ns`). Returns false when `child` is not live.
    pub fn reparent(&mut self, child: ProcKey, parent: u32, at_ns: u64) -> bool {
        let parent = self.parent_key(parent);
        let Some(mut p) = self.take_live(child.pid) else {
            return false;
        };
        if p.key != child {
            self.put_live(p);
            return false;
        }
        if at_ns >= p.parent_ns {
            p.parent = Some(parent);
            p.parent_ns = at_ns;
        }
        self.put_live(p);
        true
    }

    /// The key of the live process holding `pid`, or `pid` with start time
    /// 0 (unknown) when the table has none.
    fn parent_key(&self, pid: u32) -> ProcKey {
        self.live
            .get(&pid)
            .map_or(ProcKey::new(pid, crate::types::StartTime(0)), |p| p.key)
    }

    /// Inserts a live process, indexing it under its parent and its
    /// cgroups.
    fn put_live(&mut self, p: Process) {
        if let Some(parent) = p.parent {
            let siblings = self.children.entry(parent.pid).or_default();
            if !siblings.contains(&p.key.pid) {
                siblings.push(p.key.pid);
            }
        }
        let pid = p.key.pid;
        self.regroup(p.cgroups, |g| {
            g.live.insert(pid);
        });
        if let Some(old) = self.live.insert(pid, p) {
            // Callers take the old holder out first; never leave its index
            // entry behind should one not.
            if old.cgroups != self.live[&pid].cgroups {
                self.regroup(old.cgroups, |g| {
                    g.live.remove(&pid);
                });
            }
        }
    }

    /// Removes the live process holding `pid`, and its index entries.
    fn take_live(&mut self, pid: u32) -> Option<Process> {
        let p = self.live.remove(&pid)?;
        self.regroup(p.cgroups, |g| {
            g.live.remove(&pid);
        });
        if let Some(parent) = p.parent
            && let Some(siblings) = self.children.get_mut(&parent.pid)
        {
            siblings.retain(|&c| c != pid);
            if siblings.is_empty() {
                self.children.remove(&parent.pid);
            }
        }
        Some(p)
    }

    /// Applies `f` to the live process holding `pid`, keeping the parent
    /// index right.
    fn update_live(&mut self, pid: u32, f: impl FnOnce(&mut Process)) {
        if let Some(mut p) = self.take_live(pid) {
            f(&mut p);
            self.put_live(p);
        }
    }

    /// Applies one kernel event.
    pub fn apply_event(&mut self, ev: &KernelEvent) {
        let incoming = Process {
            key: ev.key,
            parent: Some(ev.parent),
            comm: ev.comm,
            cgroups: ev.cgroups,
            state: ProcessState::Running,
            updated_ns: ev.timestamp_ns,
            parent_ns: ev.timestamp_ns,
        };
        match ev.kind {
            EventKind::Fork | EventKind::Exec | EventKind::CgroupAttach | EventKind::Rename => {
                self.upsert(incoming, ev.timestamp_ns);
            }
            EventKind::Exit => self.exit(incoming, ev.timestamp_ns, ev.exit_code),
        }
    }

    /// Inserts or refreshes a running process, unless it already exited
    /// (events of one process can arrive out of order across CPUs).
    fn upsert(&mut self, incoming: Process, now_ns: u64) {
        let key = incoming.key;
        if self.exited.contains(&key) {
            return;
        }
        match self.live.get(&key.pid) {
            Some(p) if p.key == key => self.update_live(key.pid, |p| merge(p, incoming)),
            Some(p) if p.key.start_time > key.start_time => {} // stale news of an older process
            Some(_) => {
                // A newer process holds the pid: the old one's exit was missed.
                if let Some(old) = self.take_live(key.pid) {
                    self.retire(old, now_ns, None);
                }
                self.put_live(incoming);
            }
            None => self.put_live(incoming),
        }
    }

    fn exit(&mut self, incoming: Process, at_ns: u64, exit_code: Option<i32>) {
        let key = incoming.key;
        if let Some(p) = self.exited.peek_mut(&key) {
            // A second report from another thread of the same group.
            if let ProcessState::Exited {
                exit_code: code, ..
            } = &mut p.state
                && code.is_none()
            {
                *code = exit_code;
            }
            return;
        }
        let merged = match self.live.get(&key.pid) {
            Some(p) if p.key == key => {
                let mut p = self.take_live(key.pid).unwrap_or(incoming);
                p.updated_ns = p.updated_ns.max(at_ns);
                p
            }
            _ => incoming,
        };
        self.retire(merged, at_ns, exit_code);
    }

    /// Moves a process into the exited cache.
    fn retire(&mut self, mut p: Process, at_ns: u64, exit_code: Option<i32>) {
        p.state = ProcessState::Exited { at_ns, exit_code };
        let key = p.key;
        let newer_known = self
            .latest_exit
            .get(&key.pid)
            .is_some_and(|k| k.start_time > key.start_time);
        if !newer_known {
            self.latest_exit.insert(key.pid, key);
        }
        self.regroup(p.cgroups, |g| g.exited += 1);
        // The entry it replaced, or the oldest one it evicted.
        if let Some((evicted, old)) = self.exited.push(key, p) {
            self.regroup(old.cgroups, |g| g.exited = g.exited.saturating_sub(1));
            if evicted != key {
                self.forget_latest(evicted);
            }
        }
    }

    fn forget_latest(&mut self, key: ProcKey) {
        if self.latest_exit.get(&key.pid) == Some(&key) {
            self.latest_exit.remove(&key.pid);
        }
    }

    /// Reconciles a /proc scan that started at `scan.started_at_monotonic_ns`
    /// with what events already said: events newer than the scan win, an
    /// event-reported exit is never undone, and a live entry last heard of
    /// before the scan started and absent from it has exited.
    pub fn apply_scan(&mut self, scan: &ScanResult, now_ns: u64) -> ScanStats {
        let started = scan.started_at_monotonic_ns;
        let mut stats = ScanStats::default();
        let mut seen = std::collections::HashSet::with_capacity(scan.processes.len());
        for sp in &scan.processes {
            seen.insert(sp.key.pid);
            if self.exited.contains(&sp.key) {
                stats.skipped_exited += 1;
                continue;
            }
            if sp.exited {
                // A zombie: it exited before the agent could see it.
                let p = match self.live.get(&sp.key.pid) {
                    Some(p) if p.key == sp.key => self.take_live(sp.key.pid),
                    _ => Some(from_scan(sp, started)),
                };
                if let Some(p) = p {
                    self.retire(p, now_ns, None);
                    stats.marked_exited += 1;
                }
                continue;
            }
            let mut incoming = from_scan(sp, started);
            // The parent's start time, when the table knows the process
            // holding that pid and it is older than the child.
            incoming.parent = Some(self.parent_key(sp.ppid))
                .filter(|k| k.start_time <= sp.key.start_time)
                .or(incoming.parent);
            match self.live.get(&sp.key.pid) {
                Some(p) if p.key == sp.key => self.update_live(sp.key.pid, |p| merge(p, incoming)),
                Some(p) if p.key.start_time > sp.key.start_time => {}
                Some(_) => {
                    if let Some(old) = self.take_live(sp.key.pid) {
                        self.retire(old, now_ns, None);
                        stats.marked_exited += 1;
                    }
                    self.put_live(incoming);
                    stats.added += 1;
                }
                None => {
                    self.put_live(incoming);
                    stats.added += 1;
                }
            }
        }
        let gone: Vec<u32> = self
            .live
            .values()
            .filter(|p| p.updated_ns < started && !seen.contains(&p.key.pid))
            .map(|p| p.key.pid)
            .collect();
        for pid in gone {
            if let Some(p) = self.take_live(pid) {
                self.retire(p, now_ns, None);
                stats.marked_exited += 1;
            }
        }
        stats
    }

    /// Drops exited entries older than the grace window; returns how many.
    pub fn expire(&mut self, now_ns: u64) -> usize {
        let mut removed = 0;
        while let Some((_, p)) = self.exited.peek_lru() {
            let ProcessState::Exited { at_ns, .. } = p.state else {
                break;
            };
            if now_ns.saturating_sub(at_ns) < self.grace_ns {
                break;
            }
            if let Some((key, p)) = self.exited.pop_lru() {
                self.regroup(p.cgroups, |g| g.exited = g.exited.saturating_sub(1));
                self.forget_latest(key);
                removed += 1;
            }
        }
        removed
    }
}

fn from_scan(sp: &ScannedProcess, at_ns: u64) -> Process {
    Process {
        key: sp.key,
        parent: None,
        comm: sp.comm,
        cgroups: sp.cgroups,
        state: ProcessState::Running,
        updated_ns: at_ns,
        parent_ns: at_ns,
    }
    .with_ppid(sp.ppid)
}

impl Process {
    /// Records a parent known only by pid (from /proc): its start time is
    /// unknown, so it is kept as start time 0.
    fn with_ppid(mut self, ppid: u32) -> Self {
        self.parent = Some(ProcKey::new(ppid, crate::types::StartTime(0)));
        self
    }
}

/// Merges news about the same process: the newer source wins field by
/// field, the older one only fills gaps. The parent has its own time: a
/// re-parenting is newer than events the process made before it.
fn merge(p: &mut Process, incoming: Process) {
    let (old_parent, old_parent_ns) = (p.parent, p.parent_ns);
    let parent_newer = incoming.parent_ns >= old_parent_ns;
    if incoming.updated_ns >= p.updated_ns {
        let old_cgroups = p.cgroups;
        *p = incoming;
        p.cgroups.v2 = p.cgroups.v2.or(old_cgroups.v2);
        p.cgroups.v1_memory = p.cgroups.v1_memory.or(old_cgroups.v1_memory);
    } else {
        p.cgroups.v2 = p.cgroups.v2.or(incoming.cgroups.v2);
        p.cgroups.v1_memory = p.cgroups.v1_memory.or(incoming.cgroups.v1_memory);
        if parent_newer {
            p.parent = incoming.parent;
        }
    }
    if parent_newer {
        p.parent = pick_parent(p.parent, old_parent);
        p.parent_ns = p.parent_ns.max(old_parent_ns);
    } else {
        p.parent = pick_parent(old_parent, p.parent);
        p.parent_ns = old_parent_ns;
    }
}

/// Prefers a parent with a known start time (from the kernel) over one
/// known only by pid (from /proc) when both name the same pid.
fn pick_parent(primary: Option<ProcKey>, other: Option<ProcKey>) -> Option<ProcKey> {
    match (primary, other) {
        (Some(a), Some(b)) if a.pid == b.pid && a.start_time.0 == 0 => Some(b),
        (Some(a), _) => Some(a),
        (None, b) => b,
    }
}

#[cfg(test)]
mod tests;
