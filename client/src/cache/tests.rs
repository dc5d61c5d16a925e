use super::*;

fn settings() -> CacheSettings {
    CacheSettings {
        exited_grace: Duration::from_secs(30),
        max_exited: 3,
        ..CacheSettings::from(Settings::new("/nonexistent.sock"))
    }
}

fn record(pid: u32, start_time: u64, state: proto::ProcessState) -> proto::ProcessRecord {
    proto::ProcessRecord {
        pid,
        start_time: Some(start_time),
        state: state as i32,
        ..Default::default()
    }
}

fn in_container(mut r: proto::ProcessRecord, id: &str, image: &str) -> proto::ProcessRecord {
    r.container = Some(proto::Container {
        id: id.into(),
        runtime_namespace: "k8s.io".into(),
        image: image.into(),
        ..Default::default()
    });
    r
}

#[test]
fn lookups_by_pid_and_start_time() {
    let now = Instant::now();
    let (mut view, mut expiry) = (View::default(), Expiry::default());
    use proto::ProcessState::{Exited, Running};
    apply(
        &mut view,
        &mut expiry,
        Event::Process(record(10, 100, Exited)),
        now,
    );
    apply(
        &mut view,
        &mut expiry,
        Event::Process(record(10, 200, Running)),
        now,
    );
    apply(
        &mut view,
        &mut expiry,
        Event::Process(record(11, 50, Exited)),
        now,
    );
    let cache = view;
    assert_eq!(
        cache.get(10, None).map(|e| e.process.start_time),
        Some(Some(200))
    );
    assert_eq!(
        cache.get(10, Some(100)).map(|e| e.process.state),
        Some(Exited as i32)
    );
    assert!(cache.get(10, Some(150)).is_none(), "another start time");
    assert_eq!(
        cache.get(11, None).map(|e| e.process.state),
        Some(Exited as i32),
        "no live one: the newest exited"
    );
    assert!(cache.get(12, None).is_none());
}

#[test]
fn containers_are_kept_apart_and_follow_their_changes() {
    let now = Instant::now();
    let (mut view, mut expiry) = (View::default(), Expiry::default());
    let r = in_container(record(7, 1, proto::ProcessState::Running), "c1", "img:1");
    apply(&mut view, &mut expiry, Event::Process(r), now);
    let mut changed = proto::Container {
        id: "c1".into(),
        runtime_namespace: "k8s.io".into(),
        image: "img:2".into(),
        ..Default::default()
    };
    apply(
        &mut view,
        &mut expiry,
        Event::ContainerChanged(changed.clone()),
        now,
    );
    let entry = view.get(7, Some(1)).expect("cached");
    assert!(entry.process.container.is_none(), "kept apart");
    assert_eq!(
        entry.container.map(|c| c.image.clone()).as_deref(),
        Some("img:2")
    );

    changed.image = "img:3".into();
    apply(
        &mut view,
        &mut expiry,
        Event::ContainerDeleted(changed),
        now,
    );
    let c = &view.containers[&("k8s.io".into(), "c1".into())];
    assert!(c.deleted && c.image == "img:3");
    assert_eq!(expiry.deleted.len(), 1);
}

#[test]
fn a_new_live_process_replaces_an_old_live_one_on_its_pid() {
    let now = Instant::now();
    let (mut view, mut expiry) = (View::default(), Expiry::default());
    use proto::ProcessState::{Pending, Running};
    apply(
        &mut view,
        &mut expiry,
        Event::Process(record(5, 1, Running)),
        now,
    );
    apply(
        &mut view,
        &mut expiry,
        Event::ProcessChanged(record(5, 9, Pending)),
        now,
    );
    apply(
        &mut view,
        &mut expiry,
        Event::ProcessChanged(record(5, 9, Running)),
        now,
    );
    let starts: Vec<u64> = view.processes[&5].iter().map(|c| c.start_time).collect();
    assert_eq!(starts, [9]);
    assert_eq!(view.processes[&5][0].record.state, Running as i32);
}

#[test]
fn unknown_records_change_nothing() {
    let now = Instant::now();
    let (mut view, mut expiry) = (View::default(), Expiry::default());
    apply(
        &mut view,
        &mut expiry,
        Event::Process(record(5, 1, proto::ProcessState::Running)),
        now,
    );
    let unknown = proto::ProcessRecord {
        pid: 5,
        state: proto::ProcessState::Unknown as i32,
        ..Default::default()
    };
    apply(&mut view, &mut expiry, Event::ProcessChanged(unknown), now);
    assert_eq!(view.processes[&5].len(), 1);
}

#[test]
fn exited_processes_leave_after_the_grace_or_beyond_the_bound() {
    let t0 = Instant::now();
    let s = settings();
    let (mut view, mut expiry) = (View::default(), Expiry::default());
    use proto::ProcessState::{Exited, Running};
    apply(
        &mut view,
        &mut expiry,
        Event::Process(record(1, 1, Running)),
        t0,
    );
    for pid in 2..=5 {
        apply(
            &mut view,
            &mut expiry,
            Event::ProcessChanged(record(pid, 1, Exited)),
            t0,
        );
    }
    expire(&mut view, &mut expiry, &s, t0);
    assert!(
        !view.processes.contains_key(&2),
        "the oldest beyond max_exited"
    );
    assert_eq!(view.processes.len(), 4);
    expire(&mut view, &mut expiry, &s, t0 + Duration::from_secs(29));
    assert_eq!(view.processes.len(), 4, "within the grace");
    expire(&mut view, &mut expiry, &s, t0 + Duration::from_secs(30));
    let left: Vec<u32> = view.processes.keys().copied().collect();
    assert_eq!(left, [1], "only the live one stays");
    assert!(expiry.exited.is_empty());
}

#[test]
fn an_exit_expiring_spares_a_live_process_on_the_same_pid() {
    let t0 = Instant::now();
    let (mut view, mut expiry) = (View::default(), Expiry::default());
    use proto::ProcessState::{Exited, Running};
    apply(
        &mut view,
        &mut expiry,
        Event::ProcessChanged(record(3, 1, Exited)),
        t0,
    );
    apply(
        &mut view,
        &mut expiry,
        Event::Process(record(3, 2, Running)),
        t0,
    );
    expire(
        &mut view,
        &mut expiry,
        &settings(),
        t0 + Duration::from_secs(60),
    );
    let starts: Vec<u64> = view.processes[&3].iter().map(|c| c.start_time).collect();
    assert_eq!(starts, [2]);
}

#[test]
fn a_new_snapshot_keeps_exits_seen_before_but_not_vanished_live_processes() {
    let t0 = Instant::now();
    let (mut old, mut expiry) = (View::default(), Expiry::default());
    use proto::ProcessState::{Exited, Running};
    apply(
        &mut old,
        &mut expiry,
        Event::Process(record(1, 1, Running)),
        t0,
    );
    apply(
        &mut old,
        &mut expiry,
        Event::Process(record(2, 1, Running)),
        t0,
    );
    apply(
        &mut old,
        &mut expiry,
        Event::ProcessChanged(record(3, 1, Exited)),
        t0,
    );
    let gone = proto::Container {
        id: "gone".into(),
        runtime_namespace: "default".into(),
        ..Default::default()
    };
    apply(&mut old, &mut expiry, Event::ContainerDeleted(gone), t0);

    // The new snapshot: pid 1 still runs, pid 2 vanished while the stream
    // was down.
    let (mut new, mut fresh) = (View::default(), Expiry::default());
    apply(
        &mut new,
        &mut fresh,
        Event::Process(record(1, 1, Running)),
        t0,
    );
    let carried = carry_over(&old, &mut new, &expiry);
    let mut pids: Vec<u32> = new.processes.keys().copied().collect();
    pids.sort_unstable();
    assert_eq!(pids, [1, 3]);
    assert!(
        new.containers
            .contains_key(&("default".into(), "gone".into()))
    );
    assert_eq!((carried.exited.len(), carried.deleted.len()), (1, 1));
}
