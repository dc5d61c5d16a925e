//! The tracker: the one task that reads the kernel's event ring buffer and
//! applies what it reads, and so the only writer of the process table and
//! the cgroup path cache (it holds the [`TableWriter`]).
//!
//! - **Events** are applied in ring order, in batches. The kernel wakes the
//!   tracker for the first record that waits (or once `ring_wakeup_events`
//!   wait); the tracker then collects records for `ring_batch_us` before it
//!   reads them all, so a busy node costs one wake-up per batch, not per
//!   event, and the table lags the kernel by about one batch.
//! - **Catch-ups**: a query that must see everything recorded before it
//!   ([`State::catch_up`](crate::state::State::catch_up)) sends one request
//!   here; the tracker drains and applies the ring at once and answers.
//! - **Lost events**: every drain ends with a look at the kernel's drop
//!   counter, before the drain is published. New drops mark the table as
//!   repairing and start a /proc rescan; catch-ups that arrive meanwhile
//!   are answered once the rescan is applied, so a query never takes a
//!   table with a known hole for current.
//! - **Periodic work** — expiry of exited processes, walks for unknown
//!   cgroup paths, re-parenting of orphans, retries of a failed repair —
//!   runs on a tick that is polled *first*, so a ring that never empties
//!   cannot starve it.
//! - **Blocking work** — /proc scans, cgroupfs walks, /proc reads of
//!   orphans' new parents — runs on tokio's blocking threads, one job of a
//!   kind at a time, outside any lock; its result is applied afterwards.

mod batch;
mod orphans;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use agent_common::EventKind;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
    time::MissedTickBehavior,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    cgroup::{CgroupFs, Hierarchy, walk_hierarchy},
    ebpf::{
        event::KernelEvent,
        ring::{Positions, Ring},
    },
    metrics::Metrics,
    proc::{self, ProcError, ScanResult},
    state::{Applied, CatchUpReply, Change, TableWriter},
    types::{CgroupId, CgroupIds},
    util::{chain, monotonic_ns},
};
use batch::BatchTimer;
use orphans::Orphans;

/// Most records applied under one write lock.
const MAX_BATCH: usize = 1024;
/// Longest a catch-up waits for a record another CPU is still writing.
const BUSY_RECORD_WAIT: Duration = Duration::from_millis(1);
/// How often exited entries are checked against the grace window.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How soon a repair whose /proc rescan failed is tried again.
const REPAIR_RETRY: Duration = Duration::from_secs(1);
/// Drops are logged at most this often (with how many since the last line).
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(1);
/// Least time between two walks of cgroupfs for unknown cgroup ids.
const WALK_INTERVAL: Duration = Duration::from_millis(20);
/// Most cgroup ids waiting for their path to be found.
const MAX_UNKNOWN_PATHS: usize = 1024;
/// Walks an unknown cgroup id is looked for before it is given up (its
/// cgroup was removed before any walk saw it).
const PATH_RETRIES: u8 = 5;

/// How the tracker runs.
#[derive(Debug, Clone)]
pub(crate) struct TrackerSettings {
    /// Period of the tick: drop-counter checks and ring polls.
    pub poll: Duration,
    /// How long records are collected after a wake-up before they are read.
    pub batch: Duration,
    /// procfs to scan.
    pub proc_root: PathBuf,
    /// The cgroup hierarchies.
    pub cgroupfs: Arc<CgroupFs>,
}

/// The tracker task. See the module docs.
pub(crate) struct Tracker {
    writer: TableWriter,
    ring: Ring,
    positions: Positions,
    catch_ups: mpsc::Receiver<CatchUpReply>,
    settings: TrackerSettings,
    metrics: Arc<Metrics>,
    /// Told once the first seed is in.
    seeded: Option<oneshot::Sender<()>>,
    /// Drops already reported (the kernel's counter only grows).
    reported_drops: u64,
    /// Drops the last applied /proc scan repairs: those counted before it
    /// started.
    repaired_drops: u64,
    scan: Option<JoinHandle<Result<ScanResult, ProcError>>>,
    /// The drops counted when the running (or last) scan started; drops
    /// past it need another scan.
    scan_covers: u64,
    /// When the running (or last) scan started.
    scan_started: Option<Instant>,
    /// Catch-ups that wait for a repair, with the ring position each must
    /// see applied.
    parked: Vec<(CatchUpReply, u64)>,
    last_drop_log: Option<Instant>,
    unlogged_drops: u64,
    walk: Option<JoinHandle<Vec<(Hierarchy, CgroupId, String)>>>,
    last_walk: Option<Instant>,
    /// cgroups whose path is not known yet, and how many walks missed them.
    unknown_paths: HashMap<(Hierarchy, CgroupId), u8>,
    orphans: Orphans,
    /// Fires when the records collected since the last wake-up are read.
    batch: BatchTimer,
    last_sweep: Instant,
    /// Records taken from the ring, reused between batches.
    buffer: Vec<KernelEvent>,
}

impl Tracker {
    /// A tracker over `ring`, writing through `writer`. `seeded` is told
    /// once the first /proc scan is in the table.
    ///
    /// # Errors
    ///
    /// The batch timer cannot be created.
    pub(crate) fn new(
        writer: TableWriter,
        ring: Ring,
        settings: TrackerSettings,
        seeded: oneshot::Sender<()>,
    ) -> std::io::Result<Self> {
        let batch = BatchTimer::new()?;
        let positions = ring.positions();
        let catch_ups = writer.serve_catch_ups(positions.clone());
        let metrics = writer.state().metrics_handle();
        Ok(Self {
            writer,
            ring,
            positions,
            catch_ups,
            orphans: Orphans::new(settings.proc_root.clone()),
            settings,
            metrics,
            seeded: Some(seeded),
            reported_drops: 0,
            repaired_drops: 0,
            scan: None,
            scan_covers: 0,
            scan_started: None,
            parked: Vec::new(),
            last_drop_log: None,
            unlogged_drops: 0,
            walk: None,
            last_walk: None,
            unknown_paths: HashMap::new(),
            batch,
            last_sweep: Instant::now(),
            buffer: Vec::with_capacity(MAX_BATCH),
        })
    }

    /// Runs until `shutdown`. Starts the /proc seed at once: the ring buffer
    /// is already attached, so nothing that happens during the scan is
    /// lost.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        self.start_scan();
        let mut tick = tokio::time::interval(self.settings.poll);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let collecting = self.batch.armed();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                _ = tick.tick() => self.on_tick(),
                done = wait(&mut self.scan) => {
                    self.scan = None;
                    self.on_scan(done);
                }
                done = wait(&mut self.walk) => {
                    self.walk = None;
                    self.on_walk(done);
                }
                done = self.orphans.wait() => self.orphans.apply(done, &self.writer),
                Some(first) = self.catch_ups.recv() => self.on_catch_up(first),
                fired = self.batch.fired() => {
                    if let Err(error) = fired {
                        warn!(%error, "batch timer failed; reading at once");
                    }
                    self.drain();
                }
                ready = self.ring.readable(), if !collecting => match ready {
                    Ok(()) => self.collect(),
                    Err(error) => {
                        warn!(%error, "ring buffer poll failed; relying on the periodic tick");
                        tick.tick().await;
                    }
                },
            }
        }
        if let Some(scan) = self.scan.take() {
            scan.abort();
        }
        if let Some(walk) = self.walk.take() {
            walk.abort();
        }
        self.orphans.abort();
        debug!("tracker stopped");
    }

    /// Periodic work; see the module docs.
    fn on_tick(&mut self) {
        self.writer.heartbeat();
        // Records that woke nobody (ring_wakeup_events > 0); the drain also
        // looks at the drop counter.
        self.drain();
        if self.scan.is_none()
            && self.repairing()
            && self
                .scan_started
                .is_none_or(|t| t.elapsed() >= REPAIR_RETRY)
        {
            // The last repair's scan failed: try again.
            self.metrics.count_rescan();
            self.start_scan();
        }
        if self.last_sweep.elapsed() >= SWEEP_INTERVAL {
            self.last_sweep = Instant::now();
            let removed = self.writer.table().expire(monotonic_ns());
            if removed > 0 {
                debug!(removed, "exited processes expired");
                self.writer.notify(|| Change::Expired);
            }
        }
        self.start_walk();
        self.orphans.start();
    }

    /// After a wake-up: read at once, or collect records for the batch
    /// interval first.
    fn collect(&mut self) {
        if self.settings.batch.is_zero() {
            return self.drain();
        }
        if let Err(error) = self.batch.arm(self.settings.batch) {
            warn!(%error, "cannot arm the batch timer; reading at once");
            self.drain();
        }
    }

    /// Answers every waiting catch-up once everything the programs had
    /// reserved when it arrived is applied — or, while lost events wait
    /// for their repair, once the repair is applied. The answer says
    /// whether that position was reached: a record still uncommitted after
    /// [`BUSY_RECORD_WAIT`] holds the ones behind it back, and the caller
    /// must not take the table for current then.
    fn on_catch_up(&mut self, first: CatchUpReply) {
        let mut replies = vec![first];
        while let Ok(more) = self.catch_ups.try_recv() {
            replies.push(more);
        }
        if self.batch.armed()
            && let Err(error) = self.batch.disarm()
        {
            debug!(%error, "cannot disarm the batch timer");
        }
        let target = self.positions.producer();
        self.drain();
        // A record still being written on another CPU holds back the ones
        // behind it (committed or not): it takes microseconds.
        let deadline = Instant::now() + BUSY_RECORD_WAIT;
        while self.positions.consumer() < target && Instant::now() < deadline {
            std::thread::yield_now();
            self.drain();
        }
        if self.repairing() {
            // Callers that gave up are forgotten: a repair that keeps
            // failing must not collect them.
            self.parked.retain(|(reply, _)| !reply.is_closed());
            self.parked
                .extend(replies.into_iter().map(|reply| (reply, target)));
            return;
        }
        let applied = self.applied_up_to(target);
        for reply in replies {
            let _ = reply.send(applied);
        }
    }

    /// Whether every record up to ring position `target` is applied.
    fn applied_up_to(&self, target: u64) -> Applied {
        if self.positions.consumer() >= target {
            Applied::Reached
        } else {
            Applied::NotReached
        }
    }

    /// Whether lost events wait for their repair.
    fn repairing(&self) -> bool {
        self.reported_drops > self.repaired_drops
    }

    /// Reads and applies every record written before this call (records
    /// written meanwhile wait for the next drain, so a storm cannot hold
    /// the tracker here).
    fn drain(&mut self) {
        let target = self.positions.producer();
        loop {
            let mut events = std::mem::take(&mut self.buffer);
            let metrics = &self.metrics;
            let taken = self.ring.drain(MAX_BATCH, &mut events, |error| {
                metrics.count_malformed();
                warn!(%error, "malformed event record skipped");
            });
            if !events.is_empty() {
                self.apply(&events);
                // A long drain (a full ring after a pause) is progress, not a hang.
                self.writer.heartbeat();
            }
            events.clear();
            self.buffer = events;
            if taken < MAX_BATCH || self.positions.consumer() >= target {
                break;
            }
        }
        // Before the drain is published: a query that sees it must also see
        // any loss it passed (see `State::catch_up`).
        self.check_drops();
        self.writer.set_applied(self.positions.consumer());
    }

    /// Applies a batch of events in ring order.
    fn apply(&mut self, events: &[KernelEvent]) {
        {
            let mut table = self.writer.table();
            for ev in events {
                table.apply_event(ev);
                if ev.kind == EventKind::Exit {
                    for child in table.children_of(ev.key) {
                        self.orphans.push(child, ev.key.pid);
                    }
                } else if let Some(gone) = table.parent_gone(ev.key) {
                    // Its parent's exit came first (events of two CPUs, or
                    // a parent the table saw exit before this child).
                    self.orphans.push(ev.key, gone);
                }
            }
        }
        self.learn_paths(events);
        if self.writer.state().has_watchers() {
            for ev in events {
                self.writer.notify(|| Change::Process(ev.key));
            }
        }
        let now = monotonic_ns();
        for ev in events {
            self.metrics.count_event(ev.kind);
        }
        self.metrics.exec_to_resolvable.record_all(
            events
                .iter()
                .filter(|ev| ev.kind == EventKind::Exec)
                .map(|ev| now.saturating_sub(ev.timestamp_ns)),
        );
        if self.orphans.len() > 0 {
            self.orphans.start();
        }
    }

    /// Caches the paths attach events carry, and notes cgroup ids whose
    /// path is not known (a walk will look for them), so that queries never
    /// walk cgroupfs.
    fn learn_paths(&mut self, events: &[KernelEvent]) {
        let attached: Vec<_> = events
            .iter()
            .filter_map(|ev| ev.attach.as_ref())
            .filter_map(|a| Some((a.hierarchy, a.cgroup, a.path.clone()?)))
            .collect();
        if !attached.is_empty() {
            let mut paths = self.writer.paths();
            for (h, id, path) in attached {
                self.unknown_paths.remove(&(h, id));
                paths.insert(h, id, path);
            }
        }
        let fs = &self.settings.cgroupfs;
        let paths = self.writer.state().cgroup_paths();
        for ev in events.iter().filter(|ev| ev.kind != EventKind::Exit) {
            for (h, id) in ids(ev.cgroups) {
                if fs.root(h).is_none()
                    || paths.cached(h, id).is_some()
                    || self.unknown_paths.contains_key(&(h, id))
                    || self.unknown_paths.len() >= MAX_UNKNOWN_PATHS
                {
                    continue;
                }
                self.unknown_paths.insert((h, id), 0);
            }
        }
    }

    /// Starts a walk for the unknown cgroup ids, at most one at a time and
    /// one per [`WALK_INTERVAL`].
    fn start_walk(&mut self) {
        if self.unknown_paths.is_empty()
            || self.walk.is_some()
            || self.last_walk.is_some_and(|t| t.elapsed() < WALK_INTERVAL)
        {
            return;
        }
        self.last_walk = Some(Instant::now());
        let mut wanted: HashMap<Hierarchy, Vec<CgroupId>> = HashMap::new();
        for &(h, id) in self.unknown_paths.keys() {
            wanted.entry(h).or_default().push(id);
        }
        let fs = Arc::clone(&self.settings.cgroupfs);
        self.walk = Some(tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            for (h, ids) in wanted {
                // Only the wanted ids (and the root): the walk stops once
                // it has seen them all.
                found.extend(
                    walk_hierarchy(&fs, h, 0, &ids)
                        .into_iter()
                        .map(|(id, path)| (h, id, path)),
                );
            }
            found
        }));
    }

    fn on_walk(
        &mut self,
        done: Result<Vec<(Hierarchy, CgroupId, String)>, tokio::task::JoinError>,
    ) {
        let found = match done {
            Ok(found) => found,
            Err(error) => {
                warn!(%error, "cgroupfs walk failed");
                return;
            }
        };
        {
            let mut paths = self.writer.paths();
            for (h, id, path) in found {
                if self.unknown_paths.remove(&(h, id)).is_some() {
                    paths.insert(h, id, path);
                }
            }
        }
        // Ids still unknown after a few walks belong to cgroups removed
        // before any walk saw them.
        self.unknown_paths.retain(|_, tries| {
            *tries += 1;
            *tries < PATH_RETRIES
        });
    }

    /// Reads the kernel's drop counter; new drops mark the table repairing
    /// and start a /proc rescan.
    fn check_drops(&mut self) {
        let total = match self.ring.dropped_total() {
            Ok(total) => total,
            Err(error) => {
                warn!(%error, "cannot read the eBPF drop counter");
                return;
            }
        };
        if total <= self.reported_drops {
            return;
        }
        self.unlogged_drops += total - self.reported_drops;
        self.reported_drops = total;
        self.writer.set_repairing(true);
        self.metrics.set_events_lost(total);
        if self
            .last_drop_log
            .is_none_or(|t| t.elapsed() >= DROP_LOG_INTERVAL)
        {
            warn!(
                new = self.unlogged_drops,
                total,
                "kernel dropped process events (ring buffer full); the table will be repaired from /proc, queries answer pending what may have changed until then"
            );
            self.last_drop_log = Some(Instant::now());
            self.unlogged_drops = 0;
        }
        // While a scan runs, these drops wait for it to end (`on_scan`).
        if self.scan.is_none() {
            self.metrics.count_rescan();
            self.start_scan();
        }
    }

    /// Starts a /proc scan on a blocking thread; it repairs every drop
    /// counted so far.
    fn start_scan(&mut self) {
        let fs = Arc::clone(&self.settings.cgroupfs);
        let root = self.settings.proc_root.clone();
        self.scan_covers = self.reported_drops;
        self.scan_started = Some(Instant::now());
        self.scan = Some(tokio::task::spawn_blocking(move || {
            proc::try_scan(&fs, &root)
        }));
    }

    fn on_scan(&mut self, done: Result<Result<ScanResult, ProcError>, tokio::task::JoinError>) {
        // What this scan repairs (applying it drains the ring, which may
        // find new drops and start the next scan).
        let covers = self.scan_covers;
        match done {
            Ok(Ok(result)) => self.apply_scan(&result, covers),
            // An unreadable /proc must not look like an empty node: keep
            // the table as it is.
            Ok(Err(error)) => {
                warn!(error = %chain(&error), "/proc scan failed; table left as it was");
            }
            Err(error) => warn!(%error, "/proc scan task failed"),
        }
        // Drops counted while this scan ran need a scan started after them
        // (applying this one may already have started it).
        if self.scan.is_none() && self.reported_drops > self.scan_covers {
            self.metrics.count_rescan();
            self.start_scan();
        }
    }

    /// Applies a /proc scan that started after `covers` drops were counted.
    fn apply_scan(&mut self, result: &ScanResult, covers: u64) {
        // Events recorded before the scan started are older than it: apply
        // them first.
        self.drain();
        {
            let mut paths = self.writer.paths();
            for p in &result.processes {
                if let (Some(id), Some(path)) = (p.cgroups.v2, &p.cgroup_paths.v2) {
                    self.unknown_paths.remove(&(Hierarchy::V2, id));
                    paths.insert(Hierarchy::V2, id, path.clone());
                }
                if let (Some(id), Some(path)) = (p.cgroups.v1_memory, &p.cgroup_paths.v1_memory) {
                    self.unknown_paths.remove(&(Hierarchy::V1Memory, id));
                    paths.insert(Hierarchy::V1Memory, id, path.clone());
                }
            }
        }
        let (stats, orphaned) = {
            let mut table = self.writer.table();
            let stats = table.apply_scan(result, monotonic_ns());
            // Children the scan read while their parent lived, whose
            // parent's exit was applied before them: nothing else would
            // re-parent them.
            (stats, table.orphaned())
        };
        for (child, gone) in orphaned {
            self.orphans.push(child, gone);
        }
        self.orphans.start();
        self.repaired_drops = self.repaired_drops.max(covers);
        if !self.repairing() {
            self.writer.set_repairing(false);
            for (reply, target) in std::mem::take(&mut self.parked) {
                let _ = reply.send(self.applied_up_to(target));
            }
        }
        self.metrics.count_scan(stats.added, stats.marked_exited);
        if self.writer.state().has_watchers() {
            self.writer.notify(|| Change::Expired);
        }
        let first = self.seeded.is_some();
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
        if let Some(tx) = self.seeded.take() {
            let _ = tx.send(());
        }
    }
}

/// The (hierarchy, id) pairs of a process's cgroups.
fn ids(cgroups: CgroupIds) -> impl Iterator<Item = (Hierarchy, CgroupId)> {
    [
        (Hierarchy::V2, cgroups.v2),
        (Hierarchy::V1Memory, cgroups.v1_memory),
    ]
    .into_iter()
    .filter_map(|(h, id)| Some((h, id?)))
}

/// Waits for a background job, or forever when there is none.
async fn wait<T>(job: &mut Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match job {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}
