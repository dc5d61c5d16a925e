//! The agent's state and its single owner.
//!
//! [`State`] is shared read-mostly (`Arc<State>`); only the owner task
//! ([`Owner::run`]) writes the process table. It applies kernel events in
//! ring order, seeds the table from /proc once the reader runs, repairs it
//! with a rescan whenever the kernel reports lost events, and expires
//! exited processes after the grace window.

pub mod containers;
pub mod table;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard,
    },
    time::Duration,
};

use tokio::{
    sync::{broadcast, mpsc},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use table::{Process, ProcessState, ProcessTable, ReconcileStats};

use containers::ContainerStore;

use crate::{
    cgroup::{CgroupFs, CgroupPathCache, Hierarchy},
    ebpf::reader::{CatchUpReply, ReaderMsg},
    metrics::Metrics,
    proc::{self, ProcError, ScanResult},
    types::{CgroupId, CgroupIds, ProcKey},
};

/// Most cgroup ids waiting for their path to be found.
const MAX_UNKNOWN_PATHS: usize = 1024;
/// Sweeps an unknown cgroup id is retried before it is given up.
const PATH_RETRIES: u8 = 5;

/// How often exited entries are checked against the grace window.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Shared agent state. Readers use the accessors. Each piece has one
/// writer: the process table and the cgroup path cache the [`Owner`], the
/// container store the containerd watcher.
pub struct State {
    table: RwLock<ProcessTable>,
    containers: RwLock<ContainerStore>,
    cgroup_paths: Mutex<CgroupPathCache>,
    metrics: Arc<Metrics>,
    ready: AtomicBool,
    containerd_connected: AtomicBool,
    changes: broadcast::Sender<Change>,
    catch_up: OnceLock<mpsc::Sender<CatchUpReply>>,
}

/// Something a watcher of the map may want to re-read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A process started, changed or exited.
    Process(ProcKey),
    /// A container's metadata or task changed.
    Container(crate::runtime::container::ContainerKey),
}

/// Changes that may wait for the slowest API watcher before it is
/// disconnected.
pub const CHANGE_BUFFER: usize = 8192;

/// Catch-up requests that may wait for the ring reader; callers beyond
/// this do not wait (see [`State::catch_up`]).
pub const CATCH_UP_QUEUE: usize = 1024;

/// How long an API query waits for [`State::catch_up`] before it answers
/// from the table as it is (a backlog that long means the owner is busy;
/// waiting longer would only slow every caller down).
pub const QUERY_CATCH_UP: Duration = Duration::from_millis(25);

impl State {
    pub fn new(table: ProcessTable, cgroup_paths: CgroupPathCache, metrics: Arc<Metrics>) -> Self {
        Self {
            table: RwLock::new(table),
            containers: RwLock::new(ContainerStore::new()),
            cgroup_paths: Mutex::new(cgroup_paths),
            metrics,
            ready: AtomicBool::new(false),
            containerd_connected: AtomicBool::new(false),
            changes: broadcast::channel(CHANGE_BUFFER).0,
            catch_up: OnceLock::new(),
        }
    }

    /// Connects [`catch_up`](Self::catch_up) to the ring reader (once, at
    /// start-up; later calls are ignored).
    pub fn set_catch_up(&self, requests: mpsc::Sender<CatchUpReply>) {
        let _ = self.catch_up.set(requests);
    }

    /// Waits until every kernel event recorded before this call is in the
    /// table: the ring reader drains the ring at once, rather than at its
    /// next poll, and the owner answers once it has applied what was
    /// drained. Concurrent callers share one drain.
    ///
    /// Returns false without waiting longer when that takes over `timeout`,
    /// when [`CATCH_UP_QUEUE`] callers wait already, or when no reader is
    /// connected: the table is then at most one ring poll behind.
    pub async fn catch_up(&self, timeout: Duration) -> bool {
        let Some(requests) = self.catch_up.get() else {
            return false;
        };
        let (reply, done) = tokio::sync::oneshot::channel();
        let caught_up = requests.try_send(reply).is_ok()
            && matches!(tokio::time::timeout(timeout, done).await, Ok(Ok(())));
        if !caught_up {
            self.metrics.count_catch_up_timeout();
        }
        caught_up
    }

    /// Subscribes to changes (subscribe before taking a snapshot).
    pub fn subscribe_changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Tells watchers, if there are any, that something changed.
    pub fn notify(&self, change: impl FnOnce() -> Change) {
        if self.changes.receiver_count() > 0 {
            let _ = self.changes.send(change());
        }
    }

    /// Whether anyone watches changes (to skip building them).
    pub fn has_watchers(&self) -> bool {
        self.changes.receiver_count() > 0
    }

    /// Read access to the container store.
    pub fn containers(&self) -> RwLockReadGuard<'_, ContainerStore> {
        self.containers.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Write access to the container store (the containerd watcher's).
    pub fn containers_mut(&self) -> RwLockWriteGuard<'_, ContainerStore> {
        self.containers.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The cgroup id → path cache.
    pub fn cgroup_paths(&self) -> MutexGuard<'_, CgroupPathCache> {
        self.cgroup_paths.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a containerd session is up (listed and following events).
    pub fn containerd_connected(&self) -> bool {
        self.containerd_connected.load(Ordering::Acquire)
    }

    /// Sets the connection flag; returns the previous value.
    pub fn set_containerd_connected(&self, connected: bool) -> bool {
        self.containerd_connected.swap(connected, Ordering::AcqRel)
    }

    /// True once the first /proc seed has been reconciled.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Read access to the table (a poisoned lock is still readable: the
    /// table's invariants hold between owner operations).
    pub fn table(&self) -> RwLockReadGuard<'_, ProcessTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The process holding `pid` now, or the newest exited one.
    pub fn process(&self, pid: u32) -> Option<Process> {
        self.table().get(pid).cloned()
    }

    /// Exactly process `key`, live or exited.
    pub fn process_by_key(&self, key: ProcKey) -> Option<Process> {
        self.table().get_key(key).cloned()
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, ProcessTable> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// The only writer of the process table.
pub struct Owner {
    pub state: Arc<State>,
    pub events: mpsc::Receiver<ReaderMsg>,
    pub cgroupfs: Arc<CgroupFs>,
    pub proc_root: PathBuf,
    /// Told once the first seed is in.
    pub ready: Option<tokio::sync::oneshot::Sender<()>>,
    /// cgroups whose path a walk did not find yet, retried once a second.
    pub unknown_paths: HashMap<(Hierarchy, CgroupId), u8>,
}

impl Owner {
    /// Runs until `shutdown`. Starts the /proc seed at once: the ring
    /// buffer is already attached, so nothing that happens during the scan
    /// is lost.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut scan = Some(self.start_scan());
        let mut rescan_wanted = false;
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                msg = self.events.recv() => match msg {
                    Some(ReaderMsg::Events(events)) => {
                        {
                            let mut table = self.state.write();
                            for ev in &events {
                                table.apply_event(ev);
                            }
                        }
                        if self.state.has_watchers() {
                            for ev in &events {
                                self.state.notify(|| Change::Process(ev.key));
                            }
                        }
                        let now = monotonic_ns();
                        for ev in events.iter().filter(|ev| ev.kind == agent_common::EventKind::Exec) {
                            self.state.metrics.exec_to_resolvable.record(now.saturating_sub(ev.timestamp_ns));
                        }
                        self.learn_paths(events.iter().map(|ev| ev.cgroups));
                    }
                    Some(ReaderMsg::CaughtUp(replies)) => {
                        for reply in replies {
                            let _ = reply.send(());
                        }
                    }
                    Some(ReaderMsg::Lost { .. }) => {
                        if scan.is_some() {
                            rescan_wanted = true;
                        } else {
                            self.state.metrics.count_rescan();
                            scan = Some(self.start_scan());
                        }
                    }
                    None => break,
                },
                done = wait_scan(&mut scan) => {
                    scan = None;
                    match done {
                        Ok(Ok(result)) => self.apply_scan(&result),
                        // An unreadable /proc must not look like an empty
                        // node: keep the table as it is.
                        Ok(Err(error)) => warn!(error = %crate::error::chain(&error), "/proc scan failed; table left as it was"),
                        Err(error) => warn!(%error, "/proc scan task failed"),
                    }
                    if rescan_wanted {
                        rescan_wanted = false;
                        self.state.metrics.count_rescan();
                        scan = Some(self.start_scan());
                    }
                }
                _ = sweep.tick() => {
                    self.retry_unknown_paths();
                    let removed = self.state.write().expire(monotonic_ns());
                    if removed > 0 {
                        debug!(removed, "exited processes expired");
                    }
                }
            }
        }
        if let Some(handle) = scan {
            handle.abort();
        }
        debug!("process table owner stopped");
    }

    fn start_scan(&self) -> JoinHandle<Result<ScanResult, ProcError>> {
        let fs = Arc::clone(&self.cgroupfs);
        let root = self.proc_root.clone();
        tokio::task::spawn_blocking(move || proc::try_scan(&fs, &root))
    }

    /// Makes sure the path of every cgroup a process is in is cached, so
    /// queries never walk cgroupfs. Ids whose directory is not found yet
    /// (the walk is rate-limited) are retried on the sweep tick.
    fn learn_paths(&mut self, ids: impl Iterator<Item = CgroupIds>) {
        let mut cache = self.state.cgroup_paths();
        for ids in ids {
            let pairs = [
                (Hierarchy::V2, ids.v2),
                (Hierarchy::V1Memory, ids.v1_memory),
            ];
            for (h, id) in pairs {
                let Some(id) = id else { continue };
                if cache.cached(h, id).is_some() || self.unknown_paths.contains_key(&(h, id)) {
                    continue;
                }
                if cache.path_of(h, id).is_none() && self.unknown_paths.len() < MAX_UNKNOWN_PATHS {
                    self.unknown_paths.insert((h, id), 0);
                }
            }
        }
    }

    fn retry_unknown_paths(&mut self) {
        if self.unknown_paths.is_empty() {
            return;
        }
        let mut cache = self.state.cgroup_paths();
        // One walk per hierarchy answers all of them; ids still unknown
        // after a few tries belong to cgroups already removed.
        self.unknown_paths.retain(|(h, id), tries| {
            *tries += 1;
            cache.path_of(*h, *id).is_none() && *tries < PATH_RETRIES
        });
    }

    fn apply_scan(&mut self, result: &ScanResult) {
        {
            let mut cache = self.state.cgroup_paths();
            for p in &result.processes {
                if let (Some(id), Some(path)) = (p.cgroups.v2, &p.cgroup_paths.v2) {
                    cache.insert(Hierarchy::V2, id, path.clone());
                }
                if let (Some(id), Some(path)) = (p.cgroups.v1_memory, &p.cgroup_paths.v1_memory) {
                    cache.insert(Hierarchy::V1Memory, id, path.clone());
                }
            }
        }
        let stats = self.state.write().apply_scan(result, monotonic_ns());
        self.state
            .metrics
            .count_scan(stats.added, stats.marked_exited);
        let first = self.ready.is_some();
        info!(
            scanned = result.processes.len(),
            vanished = result.skipped_vanished,
            added = stats.added,
            marked_exited = stats.marked_exited,
            elapsed_ms = result.elapsed.as_millis() as u64,
            "{}",
            if first {
                "process table seeded from /proc"
            } else {
                "process table repaired from /proc"
            }
        );
        if let Some(tx) = self.ready.take() {
            self.state.ready.store(true, Ordering::Release);
            let _ = tx.send(());
        }
    }
}

async fn wait_scan(
    scan: &mut Option<JoinHandle<Result<ScanResult, ProcError>>>,
) -> Result<Result<ScanResult, ProcError>, tokio::task::JoinError> {
    match scan {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::*;

    fn state() -> State {
        let paths = CgroupPathCache::new(
            CgroupFs::from_roots(None, None),
            100,
            Duration::from_secs(3600),
        );
        let table = ProcessTable::new(1, NonZeroUsize::new(10).unwrap());
        State::new(table, paths, Arc::new(Metrics::default()))
    }

    #[tokio::test]
    async fn catch_up_waits_for_the_reader_and_gives_up_on_time() {
        let state = state();
        // No reader yet: nothing to wait for, and nothing counted.
        assert!(!state.catch_up(Duration::from_secs(1)).await);
        assert_eq!(state.metrics.snapshot().catch_up_timeouts, 0);

        let (tx, mut rx) = mpsc::channel::<CatchUpReply>(1);
        state.set_catch_up(tx);
        let answering = tokio::spawn(async move {
            let reply = rx.recv().await.unwrap();
            let _ = reply.send(());
            // The next request is never answered.
            let unanswered = rx.recv().await.unwrap();
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(unanswered);
        });
        assert!(state.catch_up(Duration::from_secs(5)).await);
        assert!(!state.catch_up(Duration::from_millis(20)).await);
        assert_eq!(state.metrics.snapshot().catch_up_timeouts, 1);
        answering.abort();
    }
}
