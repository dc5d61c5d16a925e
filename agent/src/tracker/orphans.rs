//! Re-parenting: when a process exits, the kernel hands its live children
//! to a reaper — the nearest child subreaper above it (a containerd shim,
//! systemd --user, …) or the init of its pid namespace. No tracepoint
//! reports that, and an orphan that sleeps makes no event of its own, so
//! the tracker asks /proc: it reads each orphan's `/proc/PID/stat` (off the
//! request path, on a blocking thread) until the parent there is no longer
//! the one that exited, and records the new parent in the table.
//!
//! The kernel re-parents in the exiting task's `exit_notify`, after the
//! exit event and after the task has closed its files — a moment later
//! usually, but on a loaded node, or for a task whose last `fput` is slow,
//! much later. So an orphan is never given up: it is looked at on every
//! tick ([`FAST_FOR`] after its parent's exit), then with a backoff that
//! doubles up to [`MAX_BACKOFF`], until /proc shows its new parent or it is
//! gone. At most one entry per live process waits (a child orphaned again
//! before its look-up is found keeps one entry), so the queue is bounded by
//! the process table itself.

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use tokio::task::JoinHandle;
use tracing::debug;

use crate::{proc, state::TableWriter, types::ProcKey, util::monotonic_ns};

/// How long after its parent's exit an orphan is looked at on every tick.
pub(super) const FAST_FOR: Duration = Duration::from_secs(5);
/// Longest wait between two look-ups of an orphan whose parent has been
/// exiting for longer than [`FAST_FOR`].
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A child whose parent exited.
#[derive(Debug, Clone, Copy)]
struct Orphan {
    child: ProcKey,
    /// The pid of the parent that exited.
    old_parent: u32,
    /// When the parent's exit was applied.
    since: Instant,
    /// Not looked at again before this.
    next: Instant,
    /// The wait before `next` (zero while on every tick).
    backoff: Duration,
}

impl Orphan {
    /// Schedules the next look-up after one that found the kernel had not
    /// re-parented it yet.
    fn again(mut self, now: Instant) -> Self {
        if now.duration_since(self.since) >= FAST_FOR {
            self.backoff = (self.backoff * 2).clamp(Duration::from_millis(20), MAX_BACKOFF);
        }
        self.next = now + self.backoff;
        self
    }
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
    /// By child: one entry per live process.
    waiting: HashMap<ProcKey, Orphan>,
    job: Option<JoinHandle<Vec<Found>>>,
}

impl Orphans {
    pub(super) fn new(proc_root: PathBuf) -> Self {
        Self {
            proc_root,
            waiting: HashMap::new(),
            job: None,
        }
    }

    /// Orphans waiting (not counting a look-up that runs).
    pub(super) fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Queues `child`, whose parent `old_parent` exited; looked at on the
    /// next start. A child already waiting is looked at afresh for its
    /// newest parent.
    pub(super) fn push(&mut self, child: ProcKey, old_parent: u32) {
        debug!(%child, old_parent, "orphan queued for a look-up");
        let now = Instant::now();
        self.waiting.insert(
            child,
            Orphan {
                child,
                old_parent,
                since: now,
                next: now,
                backoff: Duration::ZERO,
            },
        );
    }

    /// Starts a look-up of every orphan that is due, unless one runs.
    pub(super) fn start(&mut self) {
        if self.job.is_some() || self.waiting.is_empty() {
            return;
        }
        let now = Instant::now();
        let due: Vec<Orphan> = self
            .waiting
            .values()
            .filter(|o| o.next <= now)
            .copied()
            .collect();
        if due.is_empty() {
            return;
        }
        for o in &due {
            self.waiting.remove(&o.child);
        }
        let root = self.proc_root.clone();
        self.job = Some(tokio::task::spawn_blocking(move || {
            due.into_iter().map(|o| look_up(&root, o)).collect()
        }));
    }

    /// Waits for the running look-up, or forever when none runs.
    pub(super) async fn wait(&mut self) -> Result<Vec<Found>, tokio::task::JoinError> {
        let result = super::wait(&mut self.job).await;
        self.job = None;
        result
    }

    /// Records what a look-up found; orphans not re-parented yet are
    /// scheduled again.
    pub(super) fn apply(
        &mut self,
        done: Result<Vec<Found>, tokio::task::JoinError>,
        writer: &TableWriter,
    ) {
        let found = match done {
            Ok(found) => found,
            Err(error) => {
                // The batch is lost with its task: its orphans keep their
                // old parent until their next event. A blocking task fails
                // only when the runtime shuts down.
                debug!(%error, "orphan look-up failed");
                return;
            }
        };
        let now = Instant::now();
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
                    let applied = table.reparent(orphan.0.child, pid, read_ns);
                    debug!(child = %orphan.0.child, parent = pid, applied, "orphan re-parented");
                }
                Found::NotYet(orphan) => {
                    // Pushed again meanwhile (orphaned anew): that entry
                    // is newer.
                    self.waiting
                        .entry(orphan.0.child)
                        .or_insert_with(|| orphan.0.again(now));
                }
                Found::Gone => debug!("orphan gone before its look-up"),
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
///
/// Whether the old parent still exists is read *before* the child: a parent
/// that exists then and is the child's parent after it has not handed the
/// child over yet (look again). A parent gone before a read that still
/// names it as the child's parent is not one the kernel will re-parent away
/// from (its pid is not visible here): the child's parent is what the kernel
/// says. Read the other way round, a parent reaped between the two reads
/// would have passed for one the kernel keeps.
fn look_up(root: &std::path::Path, o: Orphan) -> Found {
    let old_parent_exists = proc::read_stat(root, o.old_parent).is_ok();
    // Taken before the read: the parent read is at least this recent.
    let read_ns = monotonic_ns();
    match proc::read_stat(root, o.child.pid) {
        Ok(stat) if stat.start_time != o.child.start_time => Found::Gone,
        // The old parent is exiting (or a zombie): the kernel has not
        // re-parented the child yet.
        Ok(stat) if stat.ppid == o.old_parent && old_parent_exists => Found::NotYet(OrphanRef(o)),
        Ok(stat) => Found::Parent {
            orphan: OrphanRef(o),
            pid: stat.ppid,
            read_ns,
        },
        Err(_) => Found::Gone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::StartTime;

    fn orphan(since: Instant) -> Orphan {
        Orphan {
            child: ProcKey::new(7, StartTime(1)),
            old_parent: 3,
            since,
            next: since,
            backoff: Duration::ZERO,
        }
    }

    #[test]
    fn an_orphan_is_looked_at_every_tick_then_backs_off_but_never_gives_up() {
        let start = Instant::now();
        let mut o = orphan(start);
        // Within FAST_FOR: due again at once (the next tick).
        o = o.again(start + Duration::from_secs(1));
        assert_eq!(o.backoff, Duration::ZERO);
        assert_eq!(o.next, start + Duration::from_secs(1));
        // Past it: 20 ms, doubling, at most MAX_BACKOFF; never dropped.
        let mut now = start + FAST_FOR;
        let mut waits = Vec::new();
        for _ in 0..10 {
            o = o.again(now);
            waits.push(o.backoff);
            now = o.next;
        }
        assert_eq!(waits[0], Duration::from_millis(20));
        assert_eq!(waits[1], Duration::from_millis(40));
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*waits.last().unwrap(), MAX_BACKOFF);
    }

    /// A procfs with `pid`'s stat saying `ppid` and `start`.
    fn stat(root: &std::path::Path, pid: u32, ppid: u32, start: u64) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let mut fields = vec!["0".to_owned(); 50];
        fields[0] = "S".into();
        fields[1] = ppid.to_string();
        // Field 22 of the line is the 20th after `(comm)`.
        fields[19] = start.to_string();
        std::fs::write(
            dir.join("stat"),
            format!("{pid} (child) {}\n", fields.join(" ")),
        )
        .unwrap();
    }

    #[test]
    fn a_look_up_waits_while_the_old_parent_exists_and_takes_the_kernels_word_after() {
        let root = std::env::temp_dir().join(format!("pidmap-orphans-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let o = Orphan {
            child: ProcKey::new(7, StartTime(100)),
            ..orphan(Instant::now())
        };
        // Not handed over yet: the old parent (3) is still there.
        stat(&root, 7, 3, 100);
        stat(&root, 3, 1, 50);
        assert!(matches!(look_up(&root, o), Found::NotYet(_)));
        // Handed over to the reaper (1).
        stat(&root, 7, 1, 100);
        assert!(matches!(look_up(&root, o), Found::Parent { pid: 1, .. }));
        // Another process on the child's pid: gone.
        stat(&root, 7, 1, 999);
        assert!(matches!(look_up(&root, o), Found::Gone));
        // A parent absent before the read that still names it: the kernel's
        // word, not a wait for ever.
        std::fs::remove_dir_all(root.join("3")).unwrap();
        stat(&root, 7, 3, 100);
        assert!(matches!(look_up(&root, o), Found::Parent { pid: 3, .. }));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_child_orphaned_again_keeps_one_entry_for_its_newest_parent() {
        let mut orphans = Orphans::new(PathBuf::from("/nonexistent"));
        let child = ProcKey::new(7, StartTime(1));
        orphans.push(child, 3);
        orphans.push(child, 5);
        assert_eq!(orphans.len(), 1);
        assert_eq!(orphans.waiting[&child].old_parent, 5);
    }
}
