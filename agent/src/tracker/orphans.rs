//! Re-parenting: when a process exits, the kernel hands its live children
//! to a reaper — the nearest child subreaper above it (a containerd shim,
//! systemd --user, …) or the init of its pid namespace. No tracepoint
//! reports that, and an orphan that sleeps makes no event of its own, so
//! the tracker asks /proc: it reads each orphan's `/proc/PID/stat` (off the
//! request path, on a blocking thread) until the parent there is no longer
//! the one that exited, and records the new parent in the table.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use tokio::task::JoinHandle;
use tracing::debug;

use crate::{proc, state::TableWriter, types::ProcKey, util::monotonic_ns};

/// How long an orphan is looked at before it is given up. The kernel
/// re-parents children in the exiting task's `exit_notify`, a moment after
/// the exit event; this bounds a parent that takes long to get there.
const GIVE_UP: Duration = Duration::from_millis(500);
/// Most orphans waiting for a look-up; more are dropped (and keep their old
/// parent until their next event).
const MAX_WAITING: usize = 4096;

/// A child whose parent exited.
#[derive(Debug, Clone, Copy)]
struct Orphan {
    child: ProcKey,
    /// The pid of the parent that exited.
    old_parent: u32,
    since: Instant,
}

/// What one look-up found.
#[derive(Debug)]
pub(super) enum Found {
    /// The child's parent is `pid` as of CLOCK_MONOTONIC `read_ns`.
    Parent {
        orphan: OrphanRef,
        pid: u32,
        read_ns: u64,
    },
    /// The kernel has not re-parented it yet: look again.
    NotYet(OrphanRef),
    /// The child is gone (or its pid belongs to another process now).
    Gone,
}

/// An orphan, opaque outside this module.
#[derive(Debug)]
pub(super) struct OrphanRef(Orphan);

/// The orphans waiting for a look-up, and the look-up running.
pub(super) struct Orphans {
    proc_root: PathBuf,
    waiting: Vec<Orphan>,
    job: Option<JoinHandle<Vec<Found>>>,
}

impl Orphans {
    pub(super) fn new(proc_root: PathBuf) -> Self {
        Self {
            proc_root,
            waiting: Vec::new(),
            job: None,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Queues `child`, whose parent `old_parent` exited.
    pub(super) fn push(&mut self, child: ProcKey, old_parent: u32) {
        if self.waiting.len() < MAX_WAITING {
            self.waiting.push(Orphan {
                child,
                old_parent,
                since: Instant::now(),
            });
        }
    }

    /// Starts a look-up of every waiting orphan, unless one runs.
    pub(super) fn start(&mut self) {
        if self.job.is_some() || self.waiting.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.waiting);
        let root = self.proc_root.clone();
        self.job = Some(tokio::task::spawn_blocking(move || {
            batch.into_iter().map(|o| look_up(&root, o)).collect()
        }));
    }

    /// Waits for the running look-up, or forever when none runs.
    pub(super) async fn wait(&mut self) -> Result<Vec<Found>, tokio::task::JoinError> {
        let result = super::wait(&mut self.job).await;
        self.job = None;
        result
    }

    /// Records what a look-up found; orphans not re-parented yet wait for
    /// the next tick.
    pub(super) fn apply(
        &mut self,
        done: Result<Vec<Found>, tokio::task::JoinError>,
        writer: &TableWriter,
    ) {
        let found = match done {
            Ok(found) => found,
            Err(error) => {
                debug!(%error, "orphan look-up failed");
                return;
            }
        };
        let mut table = writer.table();
        for f in found {
            match f {
                // As of the read: an event the child made after it (with
                // its then-current parent) wins, one made before does not.
                Found::Parent {
                    orphan,
                    pid,
                    read_ns,
                } => {
                    table.reparent(orphan.0.child, pid, read_ns);
                }
                Found::NotYet(orphan) if orphan.0.since.elapsed() < GIVE_UP => {
                    self.waiting.push(orphan.0);
                }
                Found::NotYet(orphan) => {
                    debug!(child = %orphan.0.child, "orphan not re-parented in time; given up");
                }
                Found::Gone => {}
            }
        }
    }

    /// Stops a running look-up (at shutdown).
    pub(super) fn abort(&mut self) {
        if let Some(job) = self.job.take() {
            job.abort();
        }
    }
}

/// Reads the orphan's parent from /proc.
fn look_up(root: &std::path::Path, o: Orphan) -> Found {
    // Taken before the read: the parent read is at least this recent.
    let read_ns = monotonic_ns();
    match proc::read_stat(root, o.child.pid) {
        Ok(stat) if stat.start_time != o.child.start_time => Found::Gone,
        Ok(stat) if stat.ppid == o.old_parent => Found::NotYet(OrphanRef(o)),
        Ok(stat) => Found::Parent {
            orphan: OrphanRef(o),
            pid: stat.ppid,
            read_ns,
        },
        Err(_) => Found::Gone,
    }
}
