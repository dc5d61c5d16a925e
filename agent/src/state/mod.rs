//! The agent's shared state, and who may change it.
//!
//! [`State`] is shared read-mostly (`Arc<State>`): queries, the metrics
//! endpoint and tests read it through its accessors. Each structure has one
//! writer, and the writers are types: [`State::new`] hands out exactly one
//! [`TableWriter`] (the process table and the cgroup path cache: the
//! tracker task's) and one [`ContainerWriter`] (the container store: the
//! containerd watcher's). Nothing else can write.

pub(crate) mod container;
pub(crate) mod containers;
pub(crate) mod table;

use std::{
    sync::{
        Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Notify, broadcast, mpsc, oneshot};

pub use table::ProcessState;
pub(crate) use table::{Process, ProcessTable};

use container::ContainerKey;
use containers::ContainerStore;

use crate::{
    cgroup::CgroupPathCache,
    ebpf::ring::Positions,
    metrics::Metrics,
    types::ProcKey,
    util::{duration_ns, monotonic_ns},
};

/// Something a watcher of the map may want to re-read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A process started, changed or exited.
    Process(ProcKey),
    /// A container's metadata or task changed, or it was deleted.
    Container(ContainerKey),
    /// Exited processes left the grace window: containers known only from
    /// their processes' cgroup paths may be gone.
    Expired,
}

/// Changes kept for the slowest API watcher (at least; more when
/// `watch_buffer` is larger): a watcher this far behind is cut off, also
/// during its snapshot.
pub(crate) const CHANGE_BUFFER: usize = 8192;

/// Catch-up requests that may wait for the tracker; callers beyond this do
/// not wait (see [`State::catch_up`]).
pub(crate) const CATCH_UP_QUEUE: usize = 1024;

/// How long an API query waits for [`State::catch_up`] before it answers
/// `pending` what may have changed (a backlog that long means the tracker is
/// busy; waiting longer would only slow every caller down).
pub const QUERY_CATCH_UP: Duration = Duration::from_millis(25);

/// How long a query waits for the repair of the table after lost kernel
/// events (a /proc rescan: milliseconds to a few hundred on large nodes)
/// before it answers `pending` what may have changed.
pub(crate) const REPAIR_WAIT: Duration = Duration::from_millis(250);

/// A tracker that has not ticked for this long is taken for hung: queries
/// answer UNAVAILABLE and readiness fails, rather than serve a frozen table.
pub const STALL_LIMIT: Duration = Duration::from_secs(5);

/// How long a heartbeat older than [`STALL_LIMIT`] must have been seen before it counts as a
/// stall. A process that was stopped (SIGSTOP, a paused VM) resumes with every clock ahead,
/// and its API may answer before the tracker's next tick: the first sight of a stale
/// heartbeat is not yet a hung tracker.
pub(crate) const STALL_CONFIRM: Duration = Duration::from_secs(1);

/// What the tracker answers a catch-up with: whether everything recorded
/// before the request is applied (and every event lost before it
/// repaired), or its wait for a record still being written ran out first
/// (see [`State::catch_up`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The table holds everything recorded before the request.
    Reached,
    /// A record written before the request was still not committed when
    /// the tracker stopped waiting for it (a writer preempted on another
    /// CPU): what it and the records behind it say is not in the table.
    NotReached,
}

/// Answered with [`Applied`] once every kernel event recorded before the
/// request was applied to the table, and every event lost before it
/// repaired — or once the tracker could wait no longer (see
/// [`State::catch_up`]).
pub(crate) type CatchUpReply = oneshot::Sender<Applied>;

/// Whether the table is known to hold everything that happened before a
/// query (see [`State::catch_up`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// Every kernel event recorded before the query is applied, and no
    /// lost event waits for its repair.
    Current,
    /// The tracker did not apply the ring's backlog in time.
    Behind,
    /// Kernel events were lost and the /proc rescan that repairs them did
    /// not finish in time.
    Repairing,
}

impl CatchUp {
    pub fn is_current(self) -> bool {
        self == Self::Current
    }
}

/// The agent's link to containerd, as the watcher reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ContainerdLink {
    /// No session: not reachable (yet), or lost.
    Down = 0,
    /// Connected and subscribed; the first list is not reconciled yet.
    Listing = 1,
    /// Listed, reconciled and following events: the container store is
    /// current.
    Synced = 2,
}

impl ContainerdLink {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Listing,
            2 => Self::Synced,
            _ => Self::Down,
        }
    }
}

/// The agent's link to the runtime's NRI socket, as the NRI plugin reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum NriLink {
    /// Not registered: no socket (yet), or the connection was lost.
    Down = 0,
    /// Registered; the runtime's `Synchronize` is not applied yet.
    Registered = 1,
    /// Synchronized and following events.
    Synced = 2,
}

impl NriLink {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Registered,
            2 => Self::Synced,
            _ => Self::Down,
        }
    }
}

/// Shared agent state. See the module docs.
pub struct State {
    table: RwLock<ProcessTable>,
    paths: RwLock<CgroupPathCache>,
    containers: RwLock<ContainerStore>,
    metrics: Arc<Metrics>,
    ready: AtomicBool,
    containerd: AtomicU8,
    containerd_seen: AtomicBool,
    /// [`NriLink`], and the runtime on the other end (`containerd 2.1.9`).
    nri: AtomicU8,
    nri_runtime: std::sync::Mutex<String>,
    /// Moves on with every write to the container store and every change
    /// of the containerd link.
    containers_epoch: AtomicU64,
    /// Told when an epoch moved: the table's sets of cgroups, the cgroup
    /// paths, the container store or the containerd link.
    inputs_changed: Notify,
    /// CLOCK_MONOTONIC ns of the tracker's last tick (0: not started).
    heartbeat_ns: AtomicU64,
    /// When a stale heartbeat was first seen (0: not seen since the last tick).
    stale_since_ns: AtomicU64,
    /// Longest the tracker may go without a tick.
    stall_limit_ns: u64,
    changes: broadcast::Sender<Change>,
    catch_up: OnceLock<mpsc::Sender<CatchUpReply>>,
    /// The ring buffer's positions, once the tracker reads it.
    ring: OnceLock<Positions>,
    /// The ring's consumer position after the tracker last applied what it
    /// consumed.
    applied: AtomicU64,
    /// Kernel events were lost and the rescan that repairs them is not
    /// applied yet.
    repairing: AtomicBool,
}

impl State {
    /// A new state and its only two writers, keeping [`CHANGE_BUFFER`]
    /// changes for watchers.
    pub fn new(
        table: ProcessTable,
        paths: CgroupPathCache,
        metrics: Arc<Metrics>,
    ) -> (Arc<Self>, TableWriter, ContainerWriter) {
        Self::with_change_buffer(table, paths, metrics, CHANGE_BUFFER)
    }

    /// [`new`](Self::new), keeping `changes` changes for watchers.
    pub fn with_change_buffer(
        table: ProcessTable,
        paths: CgroupPathCache,
        metrics: Arc<Metrics>,
        changes: usize,
    ) -> (Arc<Self>, TableWriter, ContainerWriter) {
        let state = Arc::new(Self {
            table: RwLock::new(table),
            paths: RwLock::new(paths),
            containers: RwLock::new(ContainerStore::new()),
            metrics,
            ready: AtomicBool::new(false),
            containerd: AtomicU8::new(ContainerdLink::Down as u8),
            containerd_seen: AtomicBool::new(false),
            nri: AtomicU8::new(NriLink::Down as u8),
            nri_runtime: std::sync::Mutex::new(String::new()),
            containers_epoch: AtomicU64::new(0),
            inputs_changed: Notify::new(),
            heartbeat_ns: AtomicU64::new(0),
            stale_since_ns: AtomicU64::new(0),
            stall_limit_ns: duration_ns(STALL_LIMIT),
            changes: broadcast::channel(changes.max(1)).0,
            catch_up: OnceLock::new(),
            ring: OnceLock::new(),
            applied: AtomicU64::new(0),
            repairing: AtomicBool::new(false),
        });
        (
            Arc::clone(&state),
            TableWriter {
                state: Arc::clone(&state),
            },
            ContainerWriter { state },
        )
    }

    /// Waits until every kernel event recorded before this call is in the
    /// table, and every event the kernel lost before it is repaired. Free
    /// when the tracker has applied everything the kernel has written to
    /// the ring buffer and no loss waits for repair (the common case: a
    /// look at three atomics); otherwise one request to the tracker, which
    /// drains the ring at once rather than at its next wake-up and answers
    /// once it has applied that — and, after a loss, once its /proc rescan
    /// is applied. Concurrent callers share one drain.
    ///
    /// The tracker reads the kernel's drop counter after every drain, before
    /// it publishes what it applied: a loss happens only while the ring is
    /// full, so once the applied position passes what the ring held when
    /// this call began, any loss before it is known here.
    ///
    /// Waits at most `timeout` ([`REPAIR_WAIT`] while a repair runs), and not
    /// at all when [`CATCH_UP_QUEUE`] callers wait already; then says why
    /// the table may not be current, for the caller to answer `pending`
    /// what may have changed. The tracker's answer says whether it reached
    /// the ring position this call began at: a deadline never turns into
    /// `Current`. Without a tracker (tests) the table is all there is:
    /// current.
    pub async fn catch_up(&self, timeout: Duration) -> CatchUp {
        if let Some(ring) = self.ring.get() {
            // `applied` first: the tracker sets `repairing` before it
            // publishes the position whose drain found the loss.
            if ring.producer() <= self.applied.load(Ordering::Acquire) && !self.repairing() {
                return CatchUp::Current;
            }
        }
        let Some(requests) = self.catch_up.get() else {
            return CatchUp::Current;
        };
        let timeout = if self.repairing() {
            timeout.max(REPAIR_WAIT)
        } else {
            timeout
        };
        let (reply, done) = oneshot::channel();
        let caught_up = requests.try_send(reply).is_ok()
            && matches!(
                tokio::time::timeout(timeout, done).await,
                Ok(Ok(Applied::Reached))
            );
        if caught_up {
            return CatchUp::Current;
        }
        self.metrics.count_catch_up_timeout();
        if self.repairing() {
            CatchUp::Repairing
        } else {
            CatchUp::Behind
        }
    }

    /// Whether kernel events were lost and the /proc rescan that repairs
    /// them is not applied yet.
    pub fn repairing(&self) -> bool {
        self.repairing.load(Ordering::Acquire)
    }

    /// Subscribes to changes (subscribe before taking a snapshot).
    pub fn subscribe_changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Tells watchers, if there are any, that something changed.
    fn notify(&self, change: impl FnOnce() -> Change) {
        if self.changes.receiver_count() > 0 {
            let _ = self.changes.send(change());
        }
    }

    /// Whether anyone watches changes (to skip building them).
    pub fn has_watchers(&self) -> bool {
        self.changes.receiver_count() > 0
    }

    /// Moves on with every write to the container store and every change
    /// of the containerd link (read it before the store).
    pub fn containers_epoch(&self) -> u64 {
        self.containers_epoch.load(Ordering::Acquire)
    }

    /// Resolves once the sets of cgroups with processes, the cgroup paths
    /// known, the container store or the containerd link changed since
    /// the last time it resolved (one waiter: the pinned map's publisher).
    pub async fn inputs_changed(&self) {
        self.inputs_changed.notified().await;
    }

    /// Read access to the container store.
    pub fn containers(&self) -> RwLockReadGuard<'_, ContainerStore> {
        self.containers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Read access to the cgroup id → path cache.
    pub fn cgroup_paths(&self) -> RwLockReadGuard<'_, CgroupPathCache> {
        self.paths
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Read access to the table (a poisoned lock is still readable: the
    /// table's invariants hold between writer operations).
    pub fn table(&self) -> RwLockReadGuard<'_, ProcessTable> {
        self.table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The agent's link to containerd.
    pub fn containerd_link(&self) -> ContainerdLink {
        ContainerdLink::from_u8(self.containerd.load(Ordering::Acquire))
    }

    /// Whether a containerd session is up (listing or synced).
    /// The NRI plugin's link to the runtime.
    pub fn nri_link(&self) -> NriLink {
        NriLink::from_u8(self.nri.load(Ordering::Acquire))
    }

    /// The runtime the NRI plugin is (or was last) registered with, as it
    /// named itself (`containerd 2.1.9`); empty before the first.
    pub fn nri_runtime(&self) -> String {
        self.nri_runtime
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn containerd_connected(&self) -> bool {
        self.containerd_link() != ContainerdLink::Down
    }

    /// Whether the container store reflects containerd now: listed,
    /// reconciled and following its events.
    pub fn containerd_synced(&self) -> bool {
        self.containerd_link() == ContainerdLink::Synced
    }

    /// Whether containerd was synced at least once since the agent started
    /// (so containerd runs on this node, even if it is away just now).
    pub fn containerd_seen(&self) -> bool {
        self.containerd_seen.load(Ordering::Acquire)
    }

    /// True once the agent is ready (see `Agent::start`) and while its
    /// tracker keeps ticking: a hung tracker makes the agent unready rather
    /// than serve a frozen table.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.stalled()
    }

    /// Whether the tracker has not ticked for longer than its limit.
    pub fn stalled(&self) -> bool {
        let last = self.heartbeat_ns.load(Ordering::Acquire);
        let now = monotonic_ns();
        if last == 0 || now.saturating_sub(last) <= self.stall_limit_ns {
            return false;
        }
        // Stale: a stall once it has been seen so for STALL_CONFIRM. A sighting older than
        // the last heartbeat belongs to an earlier staleness and starts over.
        let seen = self.stale_since_ns.load(Ordering::Acquire);
        if seen == 0 || seen < last {
            let _ = self.stale_since_ns.compare_exchange(
                seen,
                now,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            return false;
        }
        now.saturating_sub(seen) > duration_ns(STALL_CONFIRM)
    }

    /// Marks the agent ready (once its table is seeded and containerd was
    /// given its chance to sync).
    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A shared handle to the counters.
    pub fn metrics_handle(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// The process holding `pid` now, or the newest exited one.
    pub fn process(&self, pid: u32) -> Option<Process> {
        self.table().get(pid).cloned()
    }

    /// Exactly process `key`, live or exited.
    pub fn process_by_key(&self, key: ProcKey) -> Option<Process> {
        self.table().get_key(key).cloned()
    }
}

/// The only writer of the process table and the cgroup path cache: the
/// tracker's. Not `Clone`; [`State::new`] makes exactly one.
pub struct TableWriter {
    state: Arc<State>,
}

impl TableWriter {
    /// Read access to everything.
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Write access to the table.
    pub fn table(&self) -> Poking<'_, ProcessTable> {
        Poking::new(
            self.state
                .table
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            &self.state.inputs_changed,
        )
    }

    /// Write access to the cgroup path cache.
    pub fn paths(&self) -> Poking<'_, CgroupPathCache> {
        Poking::new(
            self.state
                .paths
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            &self.state.inputs_changed,
        )
    }

    /// Tells watchers that something changed.
    pub fn notify(&self, change: impl FnOnce() -> Change) {
        self.state.notify(change);
    }

    /// Connects [`State::catch_up`] to the caller (the tracker), which
    /// reads `ring`: returns the requests to answer.
    pub fn serve_catch_ups(&self, ring: Positions) -> mpsc::Receiver<CatchUpReply> {
        let (tx, rx) = mpsc::channel(CATCH_UP_QUEUE);
        let _ = self.state.ring.set(ring);
        let _ = self.state.catch_up.set(tx);
        rx
    }

    /// Records whether lost kernel events wait for their repair. Set before
    /// [`set_applied`](Self::set_applied) publishes the drain that found
    /// the loss.
    pub fn set_repairing(&self, repairing: bool) {
        self.state.repairing.store(repairing, Ordering::Release);
    }

    /// Records that everything up to ring position `consumed` is applied.
    pub fn set_applied(&self, consumed: u64) {
        self.state.applied.store(consumed, Ordering::Release);
    }

    /// Records a tick of the tracker (for [`State::stalled`]).
    pub fn heartbeat(&self) {
        self.state
            .heartbeat_ns
            .store(monotonic_ns(), Ordering::Release);
        // A tick ends any staleness seen; the next one is confirmed afresh.
        if self.state.stale_since_ns.load(Ordering::Relaxed) != 0 {
            self.state.stale_since_ns.store(0, Ordering::Release);
        }
    }
}

/// A structure whose epoch tells when what is computed from it (the
/// pinned map's entries) may have changed.
pub trait Epoch {
    fn epoch(&self) -> u64;
}

impl Epoch for ProcessTable {
    fn epoch(&self) -> u64 {
        self.groups_epoch()
    }
}

impl Epoch for CgroupPathCache {
    fn epoch(&self) -> u64 {
        CgroupPathCache::epoch(self)
    }
}

/// Write access to a structure with an [`Epoch`]: when it ends with the
/// epoch moved, [`State::inputs_changed`] is told.
pub struct Poking<'a, T: Epoch> {
    guard: RwLockWriteGuard<'a, T>,
    start: u64,
    changed: &'a Notify,
}

impl<'a, T: Epoch> Poking<'a, T> {
    fn new(guard: RwLockWriteGuard<'a, T>, changed: &'a Notify) -> Self {
        Self {
            start: guard.epoch(),
            guard,
            changed,
        }
    }
}

impl<T: Epoch> std::ops::Deref for Poking<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T: Epoch> std::ops::DerefMut for Poking<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T: Epoch> Drop for Poking<'_, T> {
    fn drop(&mut self) {
        if self.guard.epoch() != self.start {
            self.changed.notify_one();
        }
    }
}

/// Write access to the container store; when it ends, the store's epoch
/// moves on (while the lock is still held, so whoever reads the epoch and
/// then the store sees what this writer did) and
/// [`State::inputs_changed`] is told.
pub struct StoreWriteGuard<'a> {
    guard: RwLockWriteGuard<'a, ContainerStore>,
    epoch: &'a AtomicU64,
    changed: &'a Notify,
}

impl std::ops::Deref for StoreWriteGuard<'_> {
    type Target = ContainerStore;
    fn deref(&self) -> &ContainerStore {
        &self.guard
    }
}

impl std::ops::DerefMut for StoreWriteGuard<'_> {
    fn deref_mut(&mut self) -> &mut ContainerStore {
        &mut self.guard
    }
}

impl Drop for StoreWriteGuard<'_> {
    fn drop(&mut self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
    }
}

/// A writer of the container store: the containerd watcher's, and (through
/// [`ContainerWriter::for_nri`]) the NRI plugin's. Not `Clone`.
pub struct ContainerWriter {
    state: Arc<State>,
}

impl ContainerWriter {
    /// Read access to everything.
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Write access to the container store.
    pub fn store(&self) -> StoreWriteGuard<'_> {
        StoreWriteGuard {
            guard: self
                .state
                .containers
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            epoch: &self.state.containers_epoch,
            changed: &self.state.inputs_changed,
        }
    }

    /// Tells watchers that something changed.
    pub fn notify(&self, change: impl FnOnce() -> Change) {
        self.state.notify(change);
    }

    /// The NRI plugin's writer: each source writes through its own.
    pub(crate) fn for_nri(&self) -> Self {
        Self {
            state: Arc::clone(&self.state),
        }
    }

    /// Records the link to the NRI socket (and the runtime's name, when
    /// given); returns the previous one.
    pub(crate) fn set_nri_link(&self, link: NriLink, runtime: Option<String>) -> NriLink {
        if let Some(runtime) = runtime {
            *self
                .state
                .nri_runtime
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = runtime;
        }
        let old = self.state.nri.swap(link as u8, Ordering::AcqRel);
        self.state.containers_epoch.fetch_add(1, Ordering::AcqRel);
        self.state.inputs_changed.notify_one();
        NriLink::from_u8(old)
    }

    /// Records the link to containerd; returns the previous one.
    pub fn set_link(&self, link: ContainerdLink) -> ContainerdLink {
        if link == ContainerdLink::Synced {
            self.state.containerd_seen.store(true, Ordering::Release);
        }
        let old = self.state.containerd.swap(link as u8, Ordering::AcqRel);
        self.state.containers_epoch.fetch_add(1, Ordering::AcqRel);
        self.state.inputs_changed.notify_one();
        ContainerdLink::from_u8(old)
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::*;

    fn state() -> (Arc<State>, TableWriter, ContainerWriter) {
        State::new(
            ProcessTable::new(1, NonZeroUsize::new(10).unwrap()),
            CgroupPathCache::new(100),
            Arc::new(Metrics::default()),
        )
    }

    #[tokio::test]
    async fn catch_up_waits_for_the_tracker_and_gives_up_on_time() {
        let (state, writer, _) = state();
        // No tracker: the table is all there is, and nothing is counted.
        assert_eq!(
            state.catch_up(Duration::from_secs(1)).await,
            CatchUp::Current
        );
        assert_eq!(state.metrics.snapshot().catch_up_timeouts, 0);

        let (tx, mut rx) = mpsc::channel::<CatchUpReply>(1);
        let _ = writer.state.catch_up.set(tx);
        let answering = tokio::spawn(async move {
            let reply = rx.recv().await.unwrap();
            let _ = reply.send(Applied::Reached);
            // The tracker could not wait long enough for a record another
            // CPU was writing: it answers, but not as current.
            let reply = rx.recv().await.unwrap();
            let _ = reply.send(Applied::NotReached);
            // The next request is never answered.
            let mut unanswered = Vec::new();
            while let Some(reply) = rx.recv().await {
                unanswered.push(reply);
            }
        });
        assert_eq!(
            state.catch_up(Duration::from_secs(5)).await,
            CatchUp::Current
        );
        assert_eq!(
            state.catch_up(Duration::from_secs(5)).await,
            CatchUp::Behind,
            "an answer that did not reach the target is not current"
        );
        assert_eq!(state.metrics.snapshot().catch_up_timeouts, 1);
        assert_eq!(
            state.catch_up(Duration::from_millis(20)).await,
            CatchUp::Behind
        );
        assert_eq!(state.metrics.snapshot().catch_up_timeouts, 2);
        // While a repair runs, a query waits longer for it, then says so.
        writer.set_repairing(true);
        let started = std::time::Instant::now();
        assert_eq!(
            state.catch_up(Duration::from_millis(20)).await,
            CatchUp::Repairing
        );
        assert!(started.elapsed() >= REPAIR_WAIT);
        assert_eq!(state.metrics.snapshot().catch_up_timeouts, 3);
        answering.abort();
    }

    #[test]
    fn readiness_needs_a_live_tracker() {
        let (state, writer, containers) = state();
        assert!(!state.is_ready());
        state.set_ready();
        assert!(state.is_ready(), "no tick yet is not a stall");
        writer.heartbeat();
        assert!(state.is_ready());
        writer.state.heartbeat_ns.store(
            monotonic_ns() - duration_ns(STALL_LIMIT) - 1,
            Ordering::Release,
        );
        assert!(
            !state.stalled() && state.is_ready(),
            "first seen stale: perhaps the whole process was stopped"
        );
        writer.state.stale_since_ns.store(
            monotonic_ns() - duration_ns(STALL_CONFIRM) - 1,
            Ordering::Release,
        );
        assert!(state.stalled() && !state.is_ready());
        writer.heartbeat();
        assert!(!state.stalled() && state.is_ready(), "it ticked again");
        // The next staleness is confirmed afresh, not by the old sighting.
        writer.state.heartbeat_ns.store(
            monotonic_ns() - duration_ns(STALL_LIMIT) - 1,
            Ordering::Release,
        );
        assert!(!state.stalled());

        assert!(!state.containerd_seen());
        assert_eq!(
            containers.set_link(ContainerdLink::Listing),
            ContainerdLink::Down
        );
        assert!(state.containerd_connected() && !state.containerd_synced());
        containers.set_link(ContainerdLink::Synced);
        containers.set_link(ContainerdLink::Down);
        assert!(state.containerd_seen() && !state.containerd_connected());
    }
}
