//! The Prometheus exposition: every counter, gauge and histogram the agent
//! keeps, in the OpenMetrics text format, rendered by `prometheus-client`.
//!
//! Nothing is copied into the registry ahead of time: a [`Collector`] reads
//! the [`Metrics`] atomics, and the table sizes from a [`GaugeSource`], at
//! each scrape. The names, types and labels are listed in `docs/metrics.md`.

use std::{fmt, sync::Arc};

use agent_common::EventKind;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet, text},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use super::{CutOff, DockerLookup, Metrics, histogram::HistogramSample};

/// The `Content-Type` of [`render`]'s output.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The prefix of every metric name.
pub(crate) const PREFIX: &str = "pidmap";

/// What the exposition reads from the agent's state at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Gauges {
    /// Live processes in the table.
    pub live_processes: usize,
    /// Exited processes kept for the grace window.
    pub exited_processes: usize,
    /// Containers in the store, deleted ones inside the grace window included.
    pub containers: usize,
    /// Whether a containerd session is up.
    pub containerd_connected: bool,
    /// Whether the container store is synced with containerd.
    pub containerd_synced: bool,
    /// Whether the NRI plugin is registered with the runtime.
    pub nri_connected: bool,
    /// Whether the NRI plugin is synchronized and following events.
    pub nri_synced: bool,
}

/// Reads the [`Gauges`] at scrape time.
pub(crate) type GaugeSource = Box<dyn Fn() -> Gauges + Send + Sync>;

/// Renders a running agent's metrics at each scrape.
struct AgentCollector {
    metrics: Arc<Metrics>,
    gauges: GaugeSource,
}

impl fmt::Debug for AgentCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentCollector").finish_non_exhaustive()
    }
}

impl Collector for AgentCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        encode(encoder, &self.metrics, (self.gauges)())
    }
}

/// A registry holding every metric of an agent — its counters and the
/// sizes `gauges` reads — with the [`PREFIX`].
pub(crate) fn registry(metrics: Arc<Metrics>, gauges: GaugeSource) -> Registry {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(AgentCollector { metrics, gauges }));
    registry
}

/// The OpenMetrics text of `registry`, `# EOF` included.
pub(crate) fn render(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::with_capacity(16 * 1024);
    text::encode(&mut out, registry)?;
    Ok(out)
}

/// Writes every metric. Counter names are given without `_total`, which
/// the encoder appends; histogram names without their unit.
fn encode(mut e: DescriptorEncoder, m: &Metrics, g: Gauges) -> fmt::Result {
    let s = m.snapshot();

    let mut events = e.encode_descriptor(
        "events",
        "Kernel process events received from the ring buffer, by kind",
        None,
        MetricType::Counter,
    )?;
    for (kind, value) in [
        (EventKind::Fork, s.fork_events),
        (EventKind::Exec, s.exec_events),
        (EventKind::Exit, s.exit_events),
        (EventKind::CgroupAttach, s.cgroup_attach_events),
        (EventKind::Rename, s.rename_events),
    ] {
        let labels = [("kind", kind_label(kind))];
        ConstCounter::new(value).encode(events.encode_family(&labels)?)?;
    }

    let counters = [
        (
            "malformed_events",
            "Ring buffer records that did not decode and were skipped",
            s.malformed_events,
        ),
        (
            "ring_drops",
            "Events the kernel dropped because the ring buffer was full (kernel total)",
            s.lost_events,
        ),
        (
            "proc_rescans",
            "Rescans of /proc run to repair the table after dropped events",
            s.rescans,
        ),
        (
            "catch_up_timeouts",
            "Queries whose table could not be confirmed current (the ring buffer was not drained and applied up to the query in time, or lost events were still being repaired): their running and unknown answers were pending",
            s.catch_up_timeouts,
        ),
        (
            "scan_added",
            "Processes added to the table by /proc scans (seed and rescans)",
            s.scan_added,
        ),
        (
            "scan_marked_exited",
            "Live table entries that a /proc rescan found gone (their exit was missed)",
            s.scan_marked_exited,
        ),
        (
            "containerd_events",
            "containerd events applied to the container store",
            s.containerd_events,
        ),
        (
            "containerd_reconnects",
            "Times a working containerd connection was lost",
            s.containerd_reconnects,
        ),
        (
            "containerd_resyncs",
            "Periodic full re-lists of containerd",
            s.containerd_resyncs,
        ),
        (
            "nri_events",
            "NRI updates from the runtime applied to the container store (Synchronize parts and lifecycle events)",
            s.nri_events,
        ),
        (
            "nri_reconnects",
            "Times a registered NRI connection was lost",
            s.nri_reconnects,
        ),
    ];
    for (name, help, value) in counters {
        let c = ConstCounter::new(value);
        c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)?;
    }

    let docker = m.docker_lookups();
    let mut lookups = e.encode_descriptor(
        "docker_lookups",
        "Docker Engine API lookups of the image and labels of Docker's containers, by result",
        None,
        MetricType::Counter,
    )?;
    for outcome in DockerLookup::ALL {
        let labels = [("result", outcome.as_str())];
        ConstCounter::new(docker.get(outcome)).encode(lookups.encode_family(&labels)?)?;
    }

    let mut processes = e.encode_descriptor(
        "processes",
        "Processes in the table, by state (exited ones stay for the grace window)",
        None,
        MetricType::Gauge,
    )?;
    for (state, value) in [("live", g.live_processes), ("exited", g.exited_processes)] {
        let labels = [("state", state)];
        gauge(value).encode(processes.encode_family(&labels)?)?;
    }
    let gauges = [
        (
            "containers",
            "Containers known, deleted ones inside the grace window included",
            gauge(g.containers),
        ),
        (
            "containerd_connected",
            "1 while a containerd session is up, else 0",
            ConstGauge::new(i64::from(g.containerd_connected)),
        ),
        (
            "containerd_synced",
            "1 while the container store reflects containerd (listed, reconciled, following events), else 0",
            ConstGauge::new(i64::from(g.containerd_synced)),
        ),
        (
            "nri_connected",
            "1 while the NRI plugin is registered with the runtime, else 0",
            ConstGauge::new(i64::from(g.nri_connected)),
        ),
        (
            "nri_synced",
            "1 while the container store reflects the runtime's NRI account (synchronized, following events), else 0",
            ConstGauge::new(i64::from(g.nri_synced)),
        ),
    ];
    for (name, help, value) in gauges {
        value.encode(e.encode_descriptor(name, help, None, value.metric_type())?)?;
    }
    let list = ConstGauge::new(s.containerd_list_us as f64 / 1e6);
    list.encode(e.encode_descriptor(
        "containerd_list_seconds",
        "How long the last full list and reconcile with containerd took (at connect, reconnect or a periodic resync; 0 before the first)",
        None,
        list.metric_type(),
    )?)?;

    let open = gauge(usize::try_from(s.api_connections).unwrap_or(usize::MAX));
    open.encode(e.encode_descriptor(
        "api_connections",
        "Query API connections open",
        None,
        open.metric_type(),
    )?)?;
    let mut refused = e.encode_descriptor(
        "api_connections_refused",
        "Query API connections refused, by reason: per_peer (the peer held its share, max_connections_per_peer) or full (max_connections)",
        None,
        MetricType::Counter,
    )?;
    for (reason, value) in [
        ("per_peer", s.api_connections_refused_per_peer),
        ("full", s.api_connections_refused_full),
    ] {
        let labels = [("reason", reason)];
        ConstCounter::new(value).encode(refused.encode_family(&labels)?)?;
    }

    let unread = gauge(usize::try_from(s.api_unread_bytes).unwrap_or(usize::MAX));
    unread.encode(e.encode_descriptor(
        "api_unread_bytes",
        "Bytes of query API responses the agent holds that their clients have not read yet (bounded by max_unread_bytes)",
        None,
        unread.metric_type(),
    )?)?;
    let mut cut = e.encode_descriptor(
        "api_cut_offs",
        "Query API streams cut off with RESOURCE_EXHAUSTED, by reason: watch_lag (a Watch client fell more than watch_buffer changes behind) or unread_bytes (its peer, or all peers together, left as many response bytes unread as max_unread_bytes_per_peer / max_unread_bytes allow; requests refused for it count too)",
        None,
        MetricType::Counter,
    )?;
    for (reason, value) in [
        (CutOff::WatchLag, s.api_cut_offs_watch_lag),
        (CutOff::UnreadBytes, s.api_cut_offs_unread_bytes),
    ] {
        let labels = [("reason", reason.label())];
        ConstCounter::new(value).encode(cut.encode_family(&labels)?)?;
    }

    let mut pinned = e.encode_descriptor(
        "pinned_map_writes",
        "Entries of the pinned containers map (cgroup id to container, for other eBPF tools) the agent wrote, by op: update (added or changed) or remove",
        None,
        MetricType::Counter,
    )?;
    for (op, value) in [
        ("update", s.pinned_map_writes),
        ("remove", s.pinned_map_removals),
    ] {
        let labels = [("op", op)];
        ConstCounter::new(value).encode(pinned.encode_family(&labels)?)?;
    }
    let errors = ConstCounter::new(s.pinned_map_errors);
    errors.encode(e.encode_descriptor(
        "pinned_map_errors",
        "Writes to the pinned containers map that failed (the map full, ...)",
        None,
        errors.metric_type(),
    )?)?;
    let entries = gauge(usize::try_from(s.pinned_map_entries).unwrap_or(usize::MAX));
    entries.encode(e.encode_descriptor(
        "pinned_map_entries",
        "Entries the agent keeps in the pinned containers map (nested cgroups' copies the kernel made are not counted)",
        None,
        entries.metric_type(),
    )?)?;

    let requests = m.requests.samples();
    let mut counts = e.encode_descriptor(
        "api_requests",
        "Query API requests handled, by method and gRPC status code",
        None,
        MetricType::Counter,
    )?;
    for (method, code, h) in &requests {
        let labels = [("method", *method), ("code", *code)];
        ConstCounter::new(h.count).encode(counts.encode_family(&labels)?)?;
    }
    let mut durations = e.encode_descriptor(
        "api_request_duration",
        "Time to handle a query API request, by method and gRPC status code",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    for (method, code, h) in &requests {
        let labels = [("method", *method), ("code", *code)];
        histogram(durations.encode_family(&labels)?, h)?;
    }

    let latencies = [
        (
            "exec_to_resolvable",
            "From a kernel exec event to its process being in the table",
            &m.exec_to_resolvable,
        ),
        (
            "container_start_to_resolvable",
            "From a containerd task start to the container being resolvable",
            &m.container_start_to_resolvable,
        ),
        (
            "nri_answer",
            "How long the NRI plugin took to answer a request of the runtime, the container store updated first (the runtime waits for it)",
            &m.nri_answer,
        ),
    ];
    for (name, help, latency) in latencies {
        let enc = e.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
        histogram(enc, &latency.buckets().sample())?;
    }
    Ok(())
}

/// The `kind` label of an event kind.
fn kind_label(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Fork => "fork",
        EventKind::Exec => "exec",
        EventKind::Exit => "exit",
        EventKind::CgroupAttach => "cgroup_attach",
        EventKind::Rename => "rename",
    }
}

/// A size as a gauge value (sizes never reach `i64::MAX`).
fn gauge(n: usize) -> ConstGauge {
    ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX))
}

fn histogram(
    mut enc: prometheus_client::encoding::MetricEncoder<'_>,
    h: &HistogramSample,
) -> fmt::Result {
    enc.encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets, None)
}

#[cfg(test)]
mod tests;
