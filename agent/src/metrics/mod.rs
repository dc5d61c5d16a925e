//! Counters the agent keeps about itself. Cheap atomics updated on the hot
//! path; exported by the status API and, in the Prometheus text format
//! ([`exposition`]), by the metrics endpoint ([`server`]).
//!
//! The counters stay plain atomics (read by [`Metrics::snapshot`] too);
//! the exposition renders them, and the table sizes its
//! [`GaugeSource`](exposition::GaugeSource) reads, at scrape time.

pub(crate) mod exposition;
pub(crate) mod histogram;
pub(crate) mod server;

use std::{
    collections::HashMap,
    sync::{
        Mutex, RwLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use hdrhistogram::Histogram;

use agent_common::EventKind;

use crate::util::{code_name, duration_ns as nanos};
use histogram::{Buckets, REQUEST_BOUNDS_NS, RESOLVABLE_BOUNDS_NS};

/// Most (method, code) request series kept; later ones are counted under
/// method [`OTHER_METHOD`]. Methods are `&'static str`, so this only
/// guards against a caller that makes them up.
const MAX_REQUEST_SERIES: usize = 256;
/// The method label of requests past the most series kept (256).
pub(crate) const OTHER_METHOD: &str = "other";

/// A latency histogram in nanoseconds: fixed Prometheus buckets (100 µs to
/// 10 s) for the metrics endpoint, on atomics, and an HDR histogram (two
/// significant digits, 1 ns to an hour; longer is counted as an hour) for
/// percentiles, behind a lock taken once per [`record_all`](Self::record_all).
#[derive(Debug)]
pub struct Latency {
    fine: Mutex<Histogram<u64>>,
    buckets: Buckets,
}

/// The longest latency the fine histogram tells apart: an hour.
const FINE_MAX_NS: u64 = 3_600_000_000_000;

impl Default for Latency {
    fn default() -> Self {
        Self {
            fine: Mutex::new(
                Histogram::new_with_bounds(1, FINE_MAX_NS, 2)
                    .unwrap_or_else(|_| unreachable!("constant, valid bounds")),
            ),
            buckets: Buckets::new(RESOLVABLE_BOUNDS_NS),
        }
    }
}

impl Latency {
    /// Records one latency.
    pub fn record(&self, ns: u64) {
        self.record_all([ns]);
    }

    /// Records latencies (a batch's, under one lock).
    pub fn record_all(&self, ns: impl IntoIterator<Item = u64>) {
        let mut fine = self
            .fine
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for ns in ns {
            self.buckets.observe(ns);
            fine.saturating_record(ns);
        }
    }

    /// A copy of the fine histogram now (percentiles of what was recorded
    /// between two copies: `later.subtract(&earlier)`).
    pub fn fine(&self) -> Histogram<u64> {
        self.fine
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The Prometheus buckets.
    pub fn buckets(&self) -> &Buckets {
        &self.buckets
    }
}

/// Handled API requests by (method, gRPC code): counts and latencies.
#[derive(Debug, Default)]
struct Requests(RwLock<HashMap<(&'static str, tonic::Code), Buckets>>);

impl Requests {
    /// Counts one request. The common case (a series seen before) takes a
    /// shared lock and adds to atomics.
    fn record(&self, method: &'static str, code: tonic::Code, ns: u64) {
        {
            let series = self
                .0
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(buckets) = series.get(&(method, code)) {
                buckets.observe(ns);
                return;
            }
        }
        let mut series = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let method = if series.len() < MAX_REQUEST_SERIES || series.contains_key(&(method, code)) {
            method
        } else {
            OTHER_METHOD
        };
        series
            .entry((method, code))
            .or_insert_with(|| Buckets::new(REQUEST_BOUNDS_NS))
            .observe(ns);
    }

    /// Every series, sorted by method and code, as (method, code name,
    /// histogram).
    fn samples(&self) -> Vec<(&'static str, &'static str, histogram::HistogramSample)> {
        let series = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all: Vec<_> = series
            .iter()
            .map(|(&(method, code), b)| (method, code_name(code), b.sample()))
            .collect();
        all.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        all
    }
}

/// How one Docker Engine API lookup (`runtime::docker`) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerLookup {
    /// Docker answered with the container's image and labels.
    Found = 0,
    /// Docker has no such container.
    NotFound = 1,
    /// Nothing listens on Docker's socket (no Docker on this node, or it is down).
    Unreachable = 2,
    /// Docker did not answer in time, or answered something else.
    Failed = 3,
}

impl DockerLookup {
    /// Every outcome, in the order the counters keep them.
    pub const ALL: [Self; 4] = [Self::Found, Self::NotFound, Self::Unreachable, Self::Failed];

    /// The `result` label of `pidmap_docker_lookups_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Found => "found",
            Self::NotFound => "not_found",
            Self::Unreachable => "unreachable",
            Self::Failed => "failed",
        }
    }
}

/// Docker Engine API lookups so far, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DockerLookups {
    pub found: u64,
    pub not_found: u64,
    pub unreachable: u64,
    pub failed: u64,
}

impl DockerLookups {
    /// The count of `outcome`.
    pub fn get(&self, outcome: DockerLookup) -> u64 {
        match outcome {
            DockerLookup::Found => self.found,
            DockerLookup::NotFound => self.not_found,
            DockerLookup::Unreachable => self.unreachable,
            DockerLookup::Failed => self.failed,
        }
    }
}

/// The agent's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    events: [AtomicU64; 5],
    malformed: AtomicU64,
    lost: AtomicU64,
    rescans: AtomicU64,
    scan_added: AtomicU64,
    scan_marked_exited: AtomicU64,
    containerd_events: AtomicU64,
    containerd_reconnects: AtomicU64,
    containerd_resyncs: AtomicU64,
    nri_events: AtomicU64,
    nri_reconnects: AtomicU64,
    /// The last full list and reconcile with containerd, in µs.
    containerd_list_us: AtomicU64,
    catch_up_timeouts: AtomicU64,
    api_connections: AtomicU64,
    /// Refused API connections: per-peer limit, everything full.
    api_connections_refused: [AtomicU64; 2],
    /// Bytes of responses the agent holds that their clients have not
    /// read yet.
    api_unread_bytes: AtomicU64,
    /// API streams and requests cut off, by [`CutOff`].
    api_cut_offs: [AtomicU64; 2],
    /// Docker Engine API lookups, by [`DockerLookup`].
    docker_lookups: [AtomicU64; 4],
    /// Entries of the pinned containers map written, removed; failed
    /// writes; entries held.
    pinned_map: [AtomicU64; 4],
    /// From a kernel exec event to its process being in the table (and so
    /// resolvable): CLOCK_MONOTONIC now minus the event's timestamp.
    pub exec_to_resolvable: Latency,
    /// From containerd's task start to the container being resolvable
    /// (recorded by the containerd watcher).
    pub container_start_to_resolvable: Latency,
    /// How long the NRI plugin took to answer a runtime's request, from its last byte read
    /// to the answer written (the store updated in between).
    pub nri_answer: Latency,
    requests: Requests,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Fork events (new processes).
    pub fork_events: u64,
    /// Exec events.
    pub exec_events: u64,
    /// Exit events (whole thread groups).
    pub exit_events: u64,
    /// cgroup attach events.
    pub cgroup_attach_events: u64,
    /// Rename events (a process's comm changed).
    pub rename_events: u64,
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
    /// NRI updates applied (Synchronize parts and lifecycle events).
    pub nri_events: u64,
    /// Times a working NRI connection was lost.
    pub nri_reconnects: u64,
    /// How long the last full list and reconcile with containerd took, in
    /// µs (0 before the first).
    pub containerd_list_us: u64,
    /// Queries answered without waiting for the ring buffer to be applied.
    pub catch_up_timeouts: u64,
    /// API connections open now.
    pub api_connections: u64,
    /// API connections refused because their peer held its share.
    pub api_connections_refused_per_peer: u64,
    /// API connections refused because the API was full.
    pub api_connections_refused_full: u64,
    /// Bytes of responses held for clients that have not read them yet.
    pub api_unread_bytes: u64,
    /// `Watch` streams cut off because their client fell behind.
    pub api_cut_offs_watch_lag: u64,
    /// Streams cut off, and requests refused, because their peer (or all
    /// peers together) left too many bytes unread.
    pub api_cut_offs_unread_bytes: u64,
    /// Entries of the pinned containers map written (added or changed).
    pub pinned_map_writes: u64,
    /// Entries of the pinned containers map removed.
    pub pinned_map_removals: u64,
    /// Writes to the pinned containers map that failed (map full, …).
    pub pinned_map_errors: u64,
    /// Entries the agent keeps in the pinned containers map (nested ones
    /// the kernel made are not counted).
    pub pinned_map_entries: u64,
}

/// Why the API cut a stream off (or refused a request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutOff {
    /// A `Watch` client fell more changes behind than `watch_buffer`.
    WatchLag = 0,
    /// The peer, or every peer together, holds as many unread bytes as
    /// its budget allows.
    UnreadBytes = 1,
}

impl CutOff {
    pub const ALL: [Self; 2] = [Self::WatchLag, Self::UnreadBytes];

    /// The label value on `pidmap_api_cut_offs_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::WatchLag => "watch_lag",
            Self::UnreadBytes => "unread_bytes",
        }
    }
}

impl MetricsSnapshot {
    /// All decoded events.
    pub fn events_received(&self) -> u64 {
        self.fork_events
            + self.exec_events
            + self.exit_events
            + self.cgroup_attach_events
            + self.rename_events
    }
}

impl Metrics {
    /// Counts one decoded kernel event.
    pub fn count_event(&self, kind: EventKind) {
        self.events[kind as usize - 1].fetch_add(1, Relaxed);
    }

    /// Counts one ring record that did not decode.
    pub fn count_malformed(&self) {
        self.malformed.fetch_add(1, Relaxed);
    }

    /// Sets the kernel's running total of dropped events.
    pub fn set_events_lost(&self, total: u64) {
        self.lost.store(total, Relaxed);
    }

    /// Counts one /proc rescan started after lost events.
    pub fn count_rescan(&self) {
        self.rescans.fetch_add(1, Relaxed);
    }

    /// Adds the outcome of one /proc scan.
    pub fn count_scan(&self, added: usize, marked_exited: usize) {
        self.scan_added.fetch_add(added as u64, Relaxed);
        self.scan_marked_exited
            .fetch_add(marked_exited as u64, Relaxed);
    }

    /// Counts one containerd event applied.
    pub fn count_containerd_event(&self) {
        self.containerd_events.fetch_add(1, Relaxed);
    }

    /// Counts one lost containerd connection.
    pub fn count_containerd_reconnect(&self) {
        self.containerd_reconnects.fetch_add(1, Relaxed);
    }

    /// Counts one NRI update applied.
    pub fn count_nri_event(&self) {
        self.nri_events.fetch_add(1, Relaxed);
    }

    /// Counts one lost NRI connection.
    pub fn count_nri_reconnect(&self) {
        self.nri_reconnects.fetch_add(1, Relaxed);
    }

    /// Counts one periodic containerd resync.
    pub fn count_containerd_resync(&self) {
        self.containerd_resyncs.fetch_add(1, Relaxed);
    }

    /// Records how long a full list and reconcile with containerd took.
    pub fn set_containerd_list(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        self.containerd_list_us.store(us, Relaxed);
    }

    /// Counts one Docker Engine API lookup by how it ended.
    pub fn count_docker_lookup(&self, outcome: DockerLookup) {
        self.docker_lookups[outcome as usize].fetch_add(1, Relaxed);
    }

    /// The Docker Engine API lookups so far.
    pub fn docker_lookups(&self) -> DockerLookups {
        let n = |outcome: DockerLookup| self.docker_lookups[outcome as usize].load(Relaxed);
        DockerLookups {
            found: n(DockerLookup::Found),
            not_found: n(DockerLookup::NotFound),
            unreachable: n(DockerLookup::Unreachable),
            failed: n(DockerLookup::Failed),
        }
    }

    /// Counts one query answered without waiting for the ring buffer to be
    /// drained and applied (see `State::catch_up`).
    pub fn count_catch_up_timeout(&self) {
        self.catch_up_timeouts.fetch_add(1, Relaxed);
    }

    /// Sets the number of API connections open.
    pub fn set_api_connections(&self, open: usize) {
        self.api_connections.store(open as u64, Relaxed);
    }

    /// Counts one API connection refused: over its peer's share
    /// (`per_peer`) or with the API full.
    pub fn count_api_connection_refused(&self, per_peer: bool) {
        self.api_connections_refused[usize::from(!per_peer)].fetch_add(1, Relaxed);
    }

    /// Sets the bytes of responses held for clients that have not read
    /// them yet.
    pub fn set_api_unread_bytes(&self, bytes: usize) {
        self.api_unread_bytes.store(bytes as u64, Relaxed);
    }

    /// Counts one stream cut off (or request refused) for `why`.
    pub fn count_cut_off(&self, why: CutOff) {
        self.api_cut_offs[why as usize].fetch_add(1, Relaxed);
    }

    /// Counts entries of the pinned containers map written and removed,
    /// and sets how many the agent keeps there.
    pub fn count_pinned_map_writes(&self, written: u64, removed: u64, entries: usize) {
        self.pinned_map[0].fetch_add(written, Relaxed);
        self.pinned_map[1].fetch_add(removed, Relaxed);
        self.pinned_map[3].store(entries as u64, Relaxed);
    }

    /// Counts one failed write to the pinned containers map.
    pub fn count_pinned_map_error(&self) {
        self.pinned_map[2].fetch_add(1, Relaxed);
    }

    /// Counts one handled API request: `method` is the RPC's name, `code`
    /// the status it ended with, `elapsed` the time it took. Cheap enough
    /// for every request: a shared lock and a few atomic adds.
    pub fn record_request(&self, method: &'static str, code: tonic::Code, elapsed: Duration) {
        self.requests.record(method, code, nanos(elapsed));
    }

    /// Records how long a started container took to become resolvable.
    pub fn record_container_start_to_resolvable(&self, elapsed: Duration) {
        self.container_start_to_resolvable.record(nanos(elapsed));
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let ev = |k: EventKind| self.events[k as usize - 1].load(Relaxed);
        MetricsSnapshot {
            fork_events: ev(EventKind::Fork),
            exec_events: ev(EventKind::Exec),
            exit_events: ev(EventKind::Exit),
            cgroup_attach_events: ev(EventKind::CgroupAttach),
            rename_events: ev(EventKind::Rename),
            malformed_events: self.malformed.load(Relaxed),
            lost_events: self.lost.load(Relaxed),
            rescans: self.rescans.load(Relaxed),
            scan_added: self.scan_added.load(Relaxed),
            scan_marked_exited: self.scan_marked_exited.load(Relaxed),
            containerd_events: self.containerd_events.load(Relaxed),
            containerd_reconnects: self.containerd_reconnects.load(Relaxed),
            containerd_resyncs: self.containerd_resyncs.load(Relaxed),
            nri_events: self.nri_events.load(Relaxed),
            nri_reconnects: self.nri_reconnects.load(Relaxed),
            containerd_list_us: self.containerd_list_us.load(Relaxed),
            catch_up_timeouts: self.catch_up_timeouts.load(Relaxed),
            api_connections: self.api_connections.load(Relaxed),
            api_connections_refused_per_peer: self.api_connections_refused[0].load(Relaxed),
            api_connections_refused_full: self.api_connections_refused[1].load(Relaxed),
            api_unread_bytes: self.api_unread_bytes.load(Relaxed),
            api_cut_offs_watch_lag: self.api_cut_offs[CutOff::WatchLag as usize].load(Relaxed),
            api_cut_offs_unread_bytes: self.api_cut_offs[CutOff::UnreadBytes as usize]
                .load(Relaxed),
            pinned_map_writes: self.pinned_map[0].load(Relaxed),
            pinned_map_removals: self.pinned_map[1].load(Relaxed),
            pinned_map_errors: self.pinned_map[2].load(Relaxed),
            pinned_map_entries: self.pinned_map[3].load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_counts_what_was_counted() {
        let m = Metrics::default();
        m.count_event(EventKind::Fork);
        m.count_event(EventKind::Exec);
        m.count_event(EventKind::Exec);
        m.set_events_lost(9);
        m.set_events_lost(4);
        m.count_scan(3, 1);
        let s = m.snapshot();
        assert_eq!((s.fork_events, s.exec_events), (1, 2));
        assert_eq!(s.events_received(), 3);
        assert_eq!(s.lost_events, 4, "the kernel total is set, not added");
        assert_eq!((s.scan_added, s.scan_marked_exited), (3, 1));
    }

    #[test]
    fn latency_feeds_both_histograms() {
        let m = Metrics::default();
        m.record_container_start_to_resolvable(Duration::from_millis(2));
        m.exec_to_resolvable.record(10);
        let fine = m.container_start_to_resolvable.fine();
        assert_eq!(fine.len(), 1);
        assert!(fine.value_at_quantile(0.5) >= 2_000_000);
        assert_eq!(m.container_start_to_resolvable.buckets().count(), 1);
        assert_eq!(m.exec_to_resolvable.fine().max(), 10);
        assert_eq!(m.exec_to_resolvable.buckets().sample().sum_seconds, 1e-8);
    }

    #[test]
    fn requests_are_kept_per_method_and_code() {
        let m = Metrics::default();
        m.record_request("Resolve", tonic::Code::Ok, Duration::from_micros(5));
        m.record_request("Resolve", tonic::Code::Ok, Duration::from_micros(5));
        m.record_request("Resolve", tonic::Code::InvalidArgument, Duration::ZERO);
        let samples = m.requests.samples();
        let series: Vec<_> = samples.iter().map(|(m, c, h)| (*m, *c, h.count)).collect();
        assert_eq!(
            series,
            [("Resolve", "InvalidArgument", 1), ("Resolve", "OK", 2)]
        );
    }

    #[test]
    fn request_series_are_bounded() {
        let m = Metrics::default();
        for i in 0..MAX_REQUEST_SERIES + 10 {
            let method: &'static str = Box::leak(format!("M{i}").into_boxed_str());
            m.record_request(method, tonic::Code::Ok, Duration::ZERO);
        }
        // A known series still counts under its own name.
        m.record_request("M0", tonic::Code::Ok, Duration::ZERO);
        let samples = m.requests.samples();
        assert_eq!(samples.len(), MAX_REQUEST_SERIES + 1);
        let count = |name: &str| {
            samples
                .iter()
                .find(|(m, _, _)| *m == name)
                .map(|(_, _, h)| h.count)
        };
        assert_eq!(count(OTHER_METHOD), Some(10));
        assert_eq!(count("M0"), Some(2));
    }

    #[test]
    fn code_names_follow_grpc_conventions() {
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(code_name(tonic::Code::NotFound), "NotFound");
        assert_eq!(code_name(tonic::Code::Cancelled), "Canceled");
    }
}
