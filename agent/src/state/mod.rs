//! The agent's state and its single owner.
//!
//! [`State`] is shared read-mostly (`Arc<State>`); only the owner task
//! ([`Owner::run`]) writes the process table. It applies kernel events in
//! ring order, seeds the table from /proc once the reader runs, repairs it
//! with a rescan whenever the kernel reports lost events, and expires
//! exited processes after the grace window.

pub mod table;

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, RwLock, RwLockReadGuard,
    },
    time::Duration,
};

use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use table::{Process, ProcessState, ProcessTable, ReconcileStats};

use crate::{
    cgroup::CgroupFs,
    ebpf::reader::ReaderMsg,
    metrics::Metrics,
    proc::{self, ScanResult},
    types::ProcKey,
};

/// How often exited entries are checked against the grace window.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Shared agent state. Readers use the accessors; the owner writes.
pub struct State {
    table: RwLock<ProcessTable>,
    metrics: Arc<Metrics>,
    ready: AtomicBool,
}

impl State {
    pub fn new(table: ProcessTable, metrics: Arc<Metrics>) -> Self {
        Self {
            table: RwLock::new(table),
            metrics,
            ready: AtomicBool::new(false),
        }
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

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ProcessTable> {
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
                        let mut table = self.state.write();
                        for ev in &events {
                            table.apply_event(ev);
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
                        Ok(result) => self.apply_scan(&result),
                        Err(error) => warn!(%error, "/proc scan task failed"),
                    }
                    if rescan_wanted {
                        rescan_wanted = false;
                        self.state.metrics.count_rescan();
                        scan = Some(self.start_scan());
                    }
                }
                _ = sweep.tick() => {
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

    fn start_scan(&self) -> JoinHandle<ScanResult> {
        let fs = Arc::clone(&self.cgroupfs);
        let root = self.proc_root.clone();
        tokio::task::spawn_blocking(move || proc::scan(&fs, &root))
    }

    fn apply_scan(&mut self, result: &ScanResult) {
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
    scan: &mut Option<JoinHandle<ScanResult>>,
) -> Result<ScanResult, tokio::task::JoinError> {
    match scan {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}
