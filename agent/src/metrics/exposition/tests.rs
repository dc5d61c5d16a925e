use std::{num::NonZeroUsize, sync::Arc, time::Duration};

use agent_common::EventKind;

use super::*;
use crate::{
    cgroup::CgroupPathCache,
    ebpf::event::KernelEvent,
    state::{
        ContainerWriter, ContainerdLink, NriLink, ProcessTable, State, TableWriter,
        container::{Container, ContainerKey},
    },
    types::{CgroupIds, Comm, ProcKey, StartTime},
};

/// An agent state and its writers.
struct Agent {
    state: Arc<State>,
    table: TableWriter,
    containers: ContainerWriter,
}

fn state() -> Agent {
    let paths = CgroupPathCache::new(100);
    let table = ProcessTable::new(30_000_000_000, NonZeroUsize::new(100).unwrap());
    let (state, table, containers) = State::new(table, paths, Arc::new(Metrics::default()));
    Agent {
        state,
        table,
        containers,
    }
}

/// The registry a running agent serves.
fn registry_of(a: &Agent) -> Registry {
    let state = Arc::clone(&a.state);
    registry(
        a.state.metrics_handle(),
        Box::new(move || crate::gauges(&state)),
    )
}

fn event(kind: EventKind, pid: u32) -> KernelEvent {
    KernelEvent {
        kind,
        key: ProcKey::new(pid, StartTime(pid.into())),
        parent: ProcKey::new(1, StartTime(1)),
        comm: Comm::from_bytes(b"app"),
        cgroups: CgroupIds::default(),
        exit_code: (kind == EventKind::Exit).then_some(0),
        attach: None,
        timestamp_ns: 1,
    }
}

/// An agent state with known counts everywhere.
fn known_state() -> Agent {
    let a = state();
    {
        let mut table = a.table.table();
        for pid in [10, 11, 12] {
            table.apply_event(&event(EventKind::Exec, pid));
        }
        table.apply_event(&event(EventKind::Exit, 12));
    }
    a.containers
        .store()
        .upsert(Container::placeholder(ContainerKey::new("k8s.io", "web")));
    a.containers.set_link(ContainerdLink::Synced);
    a.containers
        .set_nri_link(NriLink::Registered, Some("containerd 2.1.9".into()));

    let m = a.state.metrics();
    for kind in [
        EventKind::Exec,
        EventKind::Exec,
        EventKind::Exec,
        EventKind::Fork,
    ] {
        m.count_event(kind);
    }
    m.count_malformed();
    m.count_malformed();
    m.set_events_lost(7);
    m.count_rescan();
    m.count_scan(5, 2);
    m.count_containerd_event();
    m.count_containerd_reconnect();
    m.count_containerd_resync();
    m.count_containerd_resync();
    m.count_nri_event();
    m.count_nri_event();
    m.count_nri_event();
    m.count_nri_reconnect();
    m.set_containerd_list(Duration::from_micros(12_500));
    m.count_docker_lookup(DockerLookup::Found);
    m.count_docker_lookup(DockerLookup::Found);
    m.count_docker_lookup(DockerLookup::Unreachable);
    let us = Duration::from_micros;
    m.record_request("Resolve", tonic::Code::Ok, us(20));
    m.record_request("Resolve", tonic::Code::Ok, us(40));
    m.record_request("Resolve", tonic::Code::NotFound, us(3_000));
    m.record_request("List", tonic::Code::Ok, Duration::from_secs(20));
    m.exec_to_resolvable.record(300_000);
    m.record_container_start_to_resolvable(Duration::from_millis(1_500));
    a
}

fn render_state(a: &Agent) -> String {
    render(&registry_of(a)).unwrap()
}

fn assert_lines(text: &str, expected: &[&str]) {
    for line in expected {
        assert!(
            text.lines().any(|l| l == *line),
            "missing line {line:?} in:\n{text}"
        );
    }
}

#[test]
fn counters_have_their_values_kinds_and_help() {
    let text = render_state(&known_state());
    assert_lines(
        &text,
        &[
            "# HELP pidmap_events Kernel process events received from the ring buffer, by kind",
            "# TYPE pidmap_events counter",
            r#"pidmap_events_total{kind="fork"} 1"#,
            r#"pidmap_events_total{kind="exec"} 3"#,
            r#"pidmap_events_total{kind="exit"} 0"#,
            r#"pidmap_events_total{kind="cgroup_attach"} 0"#,
            r#"pidmap_events_total{kind="rename"} 0"#,
            "pidmap_malformed_events_total 2",
            "# TYPE pidmap_ring_drops counter",
            "pidmap_ring_drops_total 7",
            "pidmap_proc_rescans_total 1",
            "pidmap_scan_added_total 5",
            "pidmap_scan_marked_exited_total 2",
            "pidmap_containerd_events_total 1",
            "pidmap_containerd_reconnects_total 1",
            "pidmap_containerd_resyncs_total 2",
            "pidmap_nri_events_total 3",
            "pidmap_nri_reconnects_total 1",
            "# TYPE pidmap_docker_lookups counter",
            r#"pidmap_docker_lookups_total{result="found"} 2"#,
            r#"pidmap_docker_lookups_total{result="not_found"} 0"#,
            r#"pidmap_docker_lookups_total{result="unreachable"} 1"#,
            r#"pidmap_docker_lookups_total{result="failed"} 0"#,
        ],
    );
}

#[test]
fn gauges_are_read_from_the_state_at_scrape_time() {
    let s = known_state();
    let text = render_state(&s);
    assert_lines(
        &text,
        &[
            "# TYPE pidmap_processes gauge",
            r#"pidmap_processes{state="live"} 2"#,
            r#"pidmap_processes{state="exited"} 1"#,
            "# TYPE pidmap_containers gauge",
            "pidmap_containers 1",
            "# TYPE pidmap_containerd_connected gauge",
            "pidmap_containerd_connected 1",
            "pidmap_containerd_synced 1",
            "pidmap_nri_connected 1",
            "pidmap_nri_synced 0",
            "# TYPE pidmap_containerd_list_seconds gauge",
            "pidmap_containerd_list_seconds 0.0125",
        ],
    );
    // The same registry sees later changes.
    let registry = registry_of(&s);
    s.containers.set_link(ContainerdLink::Down);
    s.containers.set_nri_link(NriLink::Synced, None);
    s.table.table().apply_event(&event(EventKind::Exec, 13));
    let text = render(&registry).unwrap();
    assert_lines(
        &text,
        &[
            "pidmap_containerd_connected 0",
            "pidmap_containerd_synced 0",
            "pidmap_nri_connected 1",
            "pidmap_nri_synced 1",
            r#"pidmap_processes{state="live"} 3"#,
        ],
    );
}

#[test]
fn requests_are_counted_and_timed_by_method_and_code() {
    let text = render_state(&known_state());
    assert_lines(
        &text,
        &[
            "# TYPE pidmap_api_requests counter",
            r#"pidmap_api_requests_total{method="List",code="OK"} 1"#,
            r#"pidmap_api_requests_total{method="Resolve",code="NotFound"} 1"#,
            r#"pidmap_api_requests_total{method="Resolve",code="OK"} 2"#,
            "# TYPE pidmap_api_request_duration_seconds histogram",
            "# UNIT pidmap_api_request_duration_seconds seconds",
            r#"pidmap_api_request_duration_seconds_count{method="Resolve",code="OK"} 2"#,
            r#"pidmap_api_request_duration_seconds_sum{method="Resolve",code="OK"} 0.00006"#,
            r#"pidmap_api_request_duration_seconds_bucket{le="0.00001",method="Resolve",code="OK"} 0"#,
            r#"pidmap_api_request_duration_seconds_bucket{le="0.000025",method="Resolve",code="OK"} 1"#,
            r#"pidmap_api_request_duration_seconds_bucket{le="0.00005",method="Resolve",code="OK"} 2"#,
            r#"pidmap_api_request_duration_seconds_bucket{le="+Inf",method="Resolve",code="OK"} 2"#,
            r#"pidmap_api_request_duration_seconds_bucket{le="0.0025",method="Resolve",code="NotFound"} 0"#,
            r#"pidmap_api_request_duration_seconds_bucket{le="0.005",method="Resolve",code="NotFound"} 1"#,
            r#"pidmap_api_request_duration_seconds_bucket{le="10.0",method="List",code="OK"} 0"#,
            r#"pidmap_api_request_duration_seconds_bucket{le="+Inf",method="List",code="OK"} 1"#,
        ],
    );
}

#[test]
fn unread_bytes_are_a_gauge_and_cut_offs_counted_by_reason() {
    let s = known_state();
    let m = s.state.metrics();
    m.set_api_unread_bytes(4096);
    m.count_cut_off(CutOff::WatchLag);
    m.count_cut_off(CutOff::UnreadBytes);
    m.count_cut_off(CutOff::UnreadBytes);
    assert_lines(
        &render_state(&s),
        &[
            "# TYPE pidmap_api_unread_bytes gauge",
            "pidmap_api_unread_bytes 4096",
            "# TYPE pidmap_api_cut_offs counter",
            r#"pidmap_api_cut_offs_total{reason="watch_lag"} 1"#,
            r#"pidmap_api_cut_offs_total{reason="unread_bytes"} 2"#,
        ],
    );
}

#[test]
fn api_connections_are_a_gauge_and_refusals_counted_by_reason() {
    let s = known_state();
    let m = s.state.metrics();
    m.set_api_connections(3);
    m.count_api_connection_refused(true);
    m.count_api_connection_refused(true);
    m.count_api_connection_refused(false);
    assert_lines(
        &render_state(&s),
        &[
            "# TYPE pidmap_api_connections gauge",
            "pidmap_api_connections 3",
            "# TYPE pidmap_api_connections_refused counter",
            r#"pidmap_api_connections_refused_total{reason="per_peer"} 2"#,
            r#"pidmap_api_connections_refused_total{reason="full"} 1"#,
        ],
    );
}

#[test]
fn latencies_are_histograms_in_seconds() {
    let text = render_state(&known_state());
    assert_lines(
        &text,
        &[
            "# TYPE pidmap_exec_to_resolvable_seconds histogram",
            "# UNIT pidmap_exec_to_resolvable_seconds seconds",
            "pidmap_exec_to_resolvable_seconds_count 1",
            "pidmap_exec_to_resolvable_seconds_sum 0.0003",
            r#"pidmap_exec_to_resolvable_seconds_bucket{le="0.00025"} 0"#,
            r#"pidmap_exec_to_resolvable_seconds_bucket{le="0.0005"} 1"#,
            r#"pidmap_exec_to_resolvable_seconds_bucket{le="+Inf"} 1"#,
            "# TYPE pidmap_container_start_to_resolvable_seconds histogram",
            "pidmap_container_start_to_resolvable_seconds_sum 1.5",
            r#"pidmap_container_start_to_resolvable_seconds_bucket{le="1.0"} 0"#,
            r#"pidmap_container_start_to_resolvable_seconds_bucket{le="2.5"} 1"#,
        ],
    );
}

#[test]
fn every_family_has_help_and_type_and_the_text_ends_with_eof() {
    let text = render_state(&state());
    assert!(text.ends_with("# EOF\n"), "{text}");
    let mut families = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families += 1;
            let name = rest.split(' ').next().unwrap();
            assert!(name.starts_with("pidmap_"), "{line}");
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("# HELP {name} "))),
                "no help for {name}"
            );
        } else if !line.starts_with('#') {
            assert!(line.starts_with("pidmap_"), "unprefixed sample: {line}");
        }
    }
    // events, 11 counters (NRI's two included), docker lookups, processes, containers,
    // containerd_connected, containerd_synced, nri_connected, nri_synced,
    // containerd_list_seconds, api connections open and refused, unread bytes, cut-offs,
    // pinned map writes, errors and entries, api requests and durations, three latencies.
    assert_eq!(families, 32, "{text}");
}

#[test]
fn histograms_are_cumulative_and_end_with_their_count() {
    let text = render_state(&known_state());
    let buckets: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with("pidmap_exec_to_resolvable_seconds_bucket"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        buckets.len(),
        super::super::histogram::RESOLVABLE_BOUNDS_NS.len() + 1
    );
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(buckets.last(), Some(&1));
}
