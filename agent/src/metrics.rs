//! Counters the agent keeps about itself. Cheap atomics updated on the hot
//! path; exported by the status API and the metrics endpoint.

use std::sync::{
    atomic::{AtomicU64, Ordering::Relaxed},
    Mutex,
};

use agent_common::EventKind;
use hdrhistogram::Histogram;

/// A latency histogram in nanoseconds (1 µs to 60 s, 3 significant digits).
#[derive(Debug)]
pub struct Latency(Mutex<Option<Histogram<u64>>>);

impl Default for Latency {
    fn default() -> Self {
        // The bounds are constants within hdrhistogram's limits, so this
        // is always `Some`.
        Self(Mutex::new(
            Histogram::new_with_bounds(1_000, 60_000_000_000, 3).ok(),
        ))
    }
}

impl Latency {
    /// Records one latency; values outside the bounds are clamped.
    pub fn record(&self, ns: u64) {
        let mut h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = h.as_mut() {
            h.saturating_record(ns.max(1_000));
        }
    }

    /// A copy of the histogram.
    pub fn histogram(&self) -> Option<Histogram<u64>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The agent's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    events: [AtomicU64; 4],
    malformed: AtomicU64,
    lost: AtomicU64,
    rescans: AtomicU64,
    scan_added: AtomicU64,
    scan_marked_exited: AtomicU64,
    containerd_events: AtomicU64,
    containerd_reconnects: AtomicU64,
    containerd_resyncs: AtomicU64,
    /// From a kernel exec event to its process being in the table (and so
    /// resolvable): CLOCK_MONOTONIC now minus the event's timestamp.
    pub exec_to_resolvable: Latency,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub fork_events: u64,
    pub exec_events: u64,
    pub exit_events: u64,
    pub cgroup_attach_events: u64,
    /// Records that did not decode.
    pub malformed_events: u64,
    /// Events the kernel dropped because the ring buffer was full.
    pub lost_events: u64,
    /// /proc rescans run to repair the table after lost events.
    pub rescans: u64,
    /// Processes added by /proc scans (seed and rescans).
    pub scan_added: u64,
    /// Live entries found dead by rescans.
    pub scan_marked_exited: u64,
    /// containerd events applied.
    pub containerd_events: u64,
    /// Times a working containerd connection was lost.
    pub containerd_reconnects: u64,
    /// Periodic full resyncs with containerd.
    pub containerd_resyncs: u64,
}

impl MetricsSnapshot {
    /// All decoded events.
    pub fn events_received(&self) -> u64 {
        self.fork_events + self.exec_events + self.exit_events + self.cgroup_attach_events
    }
}

impl Metrics {
    pub fn count_event(&self, kind: EventKind) {
        self.events[kind as usize - 1].fetch_add(1, Relaxed);
    }

    pub fn count_malformed(&self) {
        self.malformed.fetch_add(1, Relaxed);
    }

    /// Sets the kernel's running total of dropped events.
    pub fn set_events_lost(&self, total: u64) {
        self.lost.store(total, Relaxed);
    }

    pub fn count_rescan(&self) {
        self.rescans.fetch_add(1, Relaxed);
    }

    pub fn count_scan(&self, added: usize, marked_exited: usize) {
        self.scan_added.fetch_add(added as u64, Relaxed);
        self.scan_marked_exited
            .fetch_add(marked_exited as u64, Relaxed);
    }

    pub fn count_containerd_event(&self) {
        self.containerd_events.fetch_add(1, Relaxed);
    }

    pub fn count_containerd_reconnect(&self) {
        self.containerd_reconnects.fetch_add(1, Relaxed);
    }

    pub fn count_containerd_resync(&self) {
        self.containerd_resyncs.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let ev = |k: EventKind| self.events[k as usize - 1].load(Relaxed);
        MetricsSnapshot {
            fork_events: ev(EventKind::Fork),
            exec_events: ev(EventKind::Exec),
            exit_events: ev(EventKind::Exit),
            cgroup_attach_events: ev(EventKind::CgroupAttach),
            malformed_events: self.malformed.load(Relaxed),
            lost_events: self.lost.load(Relaxed),
            rescans: self.rescans.load(Relaxed),
            scan_added: self.scan_added.load(Relaxed),
            scan_marked_exited: self.scan_marked_exited.load(Relaxed),
            containerd_events: self.containerd_events.load(Relaxed),
            containerd_reconnects: self.containerd_reconnects.load(Relaxed),
            containerd_resyncs: self.containerd_resyncs.load(Relaxed),
        }
    }
}
