use std::time::Duration;

use super::*;
use crate::{
    cgroup::CgroupPaths,
    types::{CgroupId, StartTime},
};

const SEC: u64 = 1_000_000_000;

fn table() -> ProcessTable {
    ProcessTable::new(30 * SEC, NonZeroUsize::new(100).unwrap())
}

fn key(pid: u32, start: u64) -> ProcKey {
    ProcKey::new(pid, StartTime(start))
}

fn ev(kind: EventKind, k: ProcKey, at: u64) -> KernelEvent {
    KernelEvent {
        kind,
        key: k,
        parent: key(1, 1),
        comm: Comm::from_bytes(b"proc"),
        cgroups: CgroupIds {
            v2: Some(CgroupId(10)),
            v1_memory: None,
        },
        exit_code: (kind == EventKind::Exit).then_some(0),
        attach: None,
        timestamp_ns: at,
    }
}

fn scanned(k: ProcKey, comm: &str) -> ScannedProcess {
    ScannedProcess {
        key: k,
        ppid: 1,
        comm: Comm::from_bytes(comm.as_bytes()),
        cgroups: CgroupIds {
            v2: Some(CgroupId(20)),
            v1_memory: None,
        },
        cgroup_paths: CgroupPaths::default(),
        exited: false,
    }
}

fn scan(started: u64, procs: Vec<ScannedProcess>) -> ScanResult {
    ScanResult {
        processes: procs,
        skipped_vanished: 0,
        started_at_monotonic_ns: started,
        elapsed: Duration::ZERO,
    }
}

#[test]
fn fork_then_exec_updates_comm_and_keeps_parent() {
    let mut t = table();
    let k = key(100, 5);
    t.apply_event(&ev(EventKind::Fork, k, 10));
    let mut exec = ev(EventKind::Exec, k, 11);
    exec.comm = Comm::from_bytes(b"true");
    t.apply_event(&exec);
    let p = t.get(100).unwrap();
    assert_eq!(p.comm.as_string(), "true");
    assert_eq!(p.parent, Some(key(1, 1)));
    assert_eq!(p.state, ProcessState::Running);
}

#[test]
fn exec_before_fork_keeps_the_newer_comm() {
    // The child can run exec on another CPU before the parent's fork
    // tracepoint reserves its record.
    let mut t = table();
    let k = key(100, 5);
    let mut exec = ev(EventKind::Exec, k, 20);
    exec.comm = Comm::from_bytes(b"true");
    t.apply_event(&exec);
    t.apply_event(&ev(EventKind::Fork, k, 10));
    assert_eq!(t.get(100).unwrap().comm.as_string(), "true");
}

#[test]
fn pid_reuse_never_returns_the_old_process() {
    let mut t = table();
    let old = key(100, 5);
    let new = key(100, 900);
    t.apply_event(&ev(EventKind::Fork, old, 10));
    t.apply_event(&ev(EventKind::Exit, old, 20));
    t.apply_event(&ev(EventKind::Fork, new, 30));
    assert_eq!(t.get(100).unwrap().key, new);
    assert_eq!(t.get(100).unwrap().state, ProcessState::Running);
    // The old one is still there by exact key, as exited.
    assert!(matches!(
        t.get_key(old).unwrap().state,
        ProcessState::Exited { .. }
    ));
    assert_eq!(t.get_key(key(100, 6)), None);
}

#[test]
fn missed_exit_is_inferred_when_a_newer_process_takes_the_pid() {
    let mut t = table();
    t.apply_event(&ev(EventKind::Fork, key(100, 5), 10));
    t.apply_event(&ev(EventKind::Fork, key(100, 900), 30));
    let old = t.get_key(key(100, 5)).unwrap();
    assert_eq!(
        old.state,
        ProcessState::Exited {
            at_ns: 30,
            exit_code: None
        }
    );
    // Stale news about the older process does not displace the new one.
    t.apply_event(&ev(EventKind::Exec, key(100, 5), 40));
    assert_eq!(t.get(100).unwrap().key, key(100, 900));
}

#[test]
fn exit_then_grace_expiry() {
    let mut t = table();
    let k = key(100, 5);
    t.apply_event(&ev(EventKind::Fork, k, SEC));
    let mut exit = ev(EventKind::Exit, k, 2 * SEC);
    exit.exit_code = Some(3 << 8);
    t.apply_event(&exit);
    assert_eq!(
        t.get(100).unwrap().state,
        ProcessState::Exited {
            at_ns: 2 * SEC,
            exit_code: Some(768)
        }
    );
    assert_eq!(t.expire(31 * SEC), 0, "still inside the grace window");
    assert!(t.get(100).is_some());
    assert_eq!(t.expire(32 * SEC), 1);
    assert_eq!(t.get(100), None);
    assert_eq!(t.exited_len(), 0);
}

#[test]
fn exit_before_fork_is_not_resurrected() {
    let mut t = table();
    let k = key(100, 5);
    t.apply_event(&ev(EventKind::Exit, k, 20));
    t.apply_event(&ev(EventKind::Fork, k, 10));
    assert!(matches!(
        t.get(100).unwrap().state,
        ProcessState::Exited { .. }
    ));
    assert_eq!(t.live_len(), 0);
}

#[test]
fn duplicate_exit_from_racing_threads_keeps_one_entry() {
    let mut t = table();
    let k = key(100, 5);
    t.apply_event(&ev(EventKind::Fork, k, 10));
    t.apply_event(&ev(EventKind::Exit, k, 20));
    t.apply_event(&ev(EventKind::Exit, k, 21));
    assert_eq!(t.exited_len(), 1);
    assert!(matches!(
        t.get(100).unwrap().state,
        ProcessState::Exited { at_ns: 20, .. }
    ));
}

#[test]
fn exited_cache_is_bounded() {
    let mut t = ProcessTable::new(30 * SEC, NonZeroUsize::new(3).unwrap());
    for pid in 1..=10 {
        t.apply_event(&ev(EventKind::Exit, key(pid, 1), u64::from(pid)));
    }
    assert_eq!(t.exited_len(), 3);
    assert_eq!(t.get(1), None, "oldest evicted");
    assert!(t.get(10).is_some());
}

#[test]
fn scan_adds_unknown_processes_and_skips_those_that_exited_meanwhile() {
    let mut t = table();
    // Exited during the scan: the event came first, the scan still saw it.
    t.apply_event(&ev(EventKind::Exit, key(200, 7), 50));
    let s = scan(
        40,
        vec![scanned(key(200, 7), "gone"), scanned(key(300, 8), "bash")],
    );
    let stats = t.apply_scan(&s, 60);
    assert_eq!(stats.added, 1);
    assert_eq!(stats.skipped_exited, 1);
    assert!(matches!(
        t.get(200).unwrap().state,
        ProcessState::Exited { .. }
    ));
    let bash = t.get(300).unwrap();
    assert_eq!(bash.comm.as_string(), "bash");
    assert_eq!(bash.parent.map(|p| p.pid), Some(1));
}

#[test]
fn events_newer_than_the_scan_win_and_are_not_duplicated() {
    let mut t = table();
    let k = key(300, 8);
    let mut exec = ev(EventKind::Exec, k, 50);
    exec.comm = Comm::from_bytes(b"new-name");
    t.apply_event(&exec);
    let stats = t.apply_scan(&scan(40, vec![scanned(k, "old-name")]), 60);
    assert_eq!(stats.added, 0);
    assert_eq!(t.live_len(), 1);
    let p = t.get(300).unwrap();
    assert_eq!(p.comm.as_string(), "new-name");
    // The kernel's parent (with start time) is kept over /proc's bare ppid.
    assert_eq!(p.parent, Some(key(1, 1)));
}

#[test]
fn scan_newer_than_events_refreshes_the_entry() {
    let mut t = table();
    let k = key(300, 8);
    t.apply_event(&ev(EventKind::Fork, k, 10));
    t.apply_scan(&scan(40, vec![scanned(k, "renamed")]), 60);
    let p = t.get(300).unwrap();
    assert_eq!(p.comm.as_string(), "renamed");
    assert_eq!(p.cgroups.v2, Some(CgroupId(20)));
    assert_eq!(p.parent, Some(key(1, 1)));
}

#[test]
fn rescan_marks_missed_exits_but_spares_processes_born_after_it_started() {
    let mut t = table();
    t.apply_event(&ev(EventKind::Fork, key(400, 1), 10)); // exit was lost
    t.apply_event(&ev(EventKind::Fork, key(401, 2), 10)); // still alive
    t.apply_event(&ev(EventKind::Fork, key(402, 3), 100)); // born during the scan
    let stats = t.apply_scan(&scan(50, vec![scanned(key(401, 2), "alive")]), 120);
    assert_eq!(stats.marked_exited, 1);
    assert!(matches!(
        t.get(400).unwrap().state,
        ProcessState::Exited {
            at_ns: 120,
            exit_code: None
        }
    ));
    assert_eq!(t.get(401).unwrap().state, ProcessState::Running);
    assert_eq!(t.get(402).unwrap().state, ProcessState::Running);
}

#[test]
fn scan_replaces_a_stale_entry_whose_pid_was_reused() {
    let mut t = table();
    t.apply_event(&ev(EventKind::Fork, key(500, 1), 10));
    let stats = t.apply_scan(&scan(50, vec![scanned(key(500, 99), "new")]), 60);
    assert_eq!(stats.added, 1);
    assert_eq!(stats.marked_exited, 1);
    assert_eq!(t.get(500).unwrap().key, key(500, 99));
    assert!(t.get_key(key(500, 1)).is_some());
}

#[test]
fn renames_replace_the_comm() {
    let mut t = table();
    let k = key(100, 5);
    t.apply_event(&ev(EventKind::Exec, k, 10));
    let mut rename = ev(EventKind::Rename, k, 20);
    rename.comm = Comm::from_bytes(b"renamed");
    t.apply_event(&rename);
    assert_eq!(t.get(100).unwrap().comm.as_string(), "renamed");
}

#[test]
fn children_are_found_and_reparented_once_their_parent_exits() {
    let mut t = table();
    let mut init = ev(EventKind::Fork, key(1, 1), 1);
    init.parent = key(0, 0);
    t.apply_event(&init);
    let parent = key(50, 4);
    t.apply_event(&ev(EventKind::Fork, parent, 5));
    let mut child = ev(EventKind::Fork, key(100, 5), 10);
    child.parent = parent;
    t.apply_event(&child);
    // A child known only from /proc (parent start time unknown) counts too.
    t.apply_scan(
        &scan(
            1,
            vec![{
                let mut s = scanned(key(101, 6), "kid");
                s.ppid = 50;
                s
            }],
        ),
        12,
    );
    let mut kids = t.children_of(parent);
    kids.sort();
    assert_eq!(kids, [key(100, 5), key(101, 6)]);
    // Another process that reused the parent's pid has no such children.
    assert!(t.children_of(key(50, 99)).is_empty());

    t.apply_event(&ev(EventKind::Exit, parent, 20));
    assert!(t.reparent(key(100, 5), 1, 20));
    assert_eq!(
        t.get(100).unwrap().parent,
        Some(key(1, 1)),
        "the reaper's key"
    );
    // An older event of the child does not bring the dead parent back.
    let mut late = ev(EventKind::Exec, key(100, 5), 15);
    late.parent = parent;
    late.comm = Comm::from_bytes(b"late");
    t.apply_event(&late);
    assert_eq!(t.get(100).unwrap().parent, Some(key(1, 1)));
    // A newer one carries the kernel's truth.
    let mut newer = ev(EventKind::Exec, key(100, 5), 30);
    newer.parent = key(7, 3);
    t.apply_event(&newer);
    assert_eq!(t.get(100).unwrap().parent, Some(key(7, 3)));
    assert_eq!(t.children_of(key(7, 3)), [key(100, 5)]);
    assert!(!t.children_of(key(1, 1)).contains(&key(100, 5)));
    // Not live (or another process now): nothing to do.
    assert!(!t.reparent(key(100, 6), 1, 40));
    assert!(!t.reparent(key(999, 1), 1, 40));
}

#[test]
fn zombies_in_a_scan_are_exited() {
    let mut t = table();
    t.apply_event(&ev(EventKind::Fork, key(600, 1), 10));
    let zombie = |k| ScannedProcess {
        exited: true,
        ..scanned(k, "zombie")
    };
    let stats = t.apply_scan(
        &scan(50, vec![zombie(key(600, 1)), zombie(key(601, 2))]),
        60,
    );
    assert_eq!((stats.added, stats.marked_exited), (0, 2));
    for pid in [600, 601] {
        assert!(matches!(
            t.get(pid).unwrap().state,
            ProcessState::Exited { at_ns: 60, .. }
        ));
    }
    assert_eq!(t.live_len(), 0);
}

/// The cgroup index as a walk of the whole table would find it.
fn groups_by_walking(t: &ProcessTable) -> HashMap<CgroupIds, CgroupGroup> {
    let mut out: HashMap<CgroupIds, CgroupGroup> = HashMap::new();
    for p in t.live() {
        out.entry(p.cgroups).or_default().live.insert(p.key.pid);
    }
    for p in t.exited() {
        out.entry(p.cgroups).or_default().exited += 1;
    }
    out
}

#[test]
fn the_cgroup_index_always_equals_a_walk_of_the_table() {
    // A small LRU, so that evictions happen too.
    let mut t = ProcessTable::new(5 * SEC, NonZeroUsize::new(8).unwrap());
    // A deterministic pseudo-random mix of every kind of change.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut now = SEC;
    for round in 0..4000 {
        now += 1_000_000;
        let pid = 2 + next(40) as u32;
        let start = 1 + next(3);
        let mut e = ev(EventKind::Fork, key(pid, start), now);
        e.cgroups.v2 = Some(CgroupId(10 + next(4)));
        e.cgroups.v1_memory = (next(2) == 0).then_some(CgroupId(100 + next(2)));
        match next(7) {
            0 | 1 => t.apply_event(&e),
            2 => {
                e.kind = EventKind::Exec;
                t.apply_event(&e);
            }
            3 => {
                e.kind = EventKind::CgroupAttach;
                t.apply_event(&e);
            }
            4 => {
                e.kind = EventKind::Exit;
                e.exit_code = Some(0);
                t.apply_event(&e);
            }
            5 => {
                let mut sp = scanned(key(pid, start), "scanned");
                sp.cgroups = e.cgroups;
                sp.exited = next(4) == 0;
                let survivor = t.live().next().map(|p| {
                    let mut s = scanned(p.key, "kept");
                    s.cgroups = p.cgroups;
                    s
                });
                let procs = std::iter::once(sp).chain(survivor).collect();
                t.apply_scan(&scan(now - 500_000, procs), now);
            }
            _ => {
                t.expire(now);
                let child = t.live().next().map(|p| p.key);
                if let Some(child) = child {
                    t.reparent(child, 1, now);
                }
            }
        }
        assert_eq!(
            t.groups()
                .map(|(k, g)| (k, g.clone()))
                .collect::<HashMap<_, _>>(),
            groups_by_walking(&t),
            "after round {round}"
        );
    }
}

#[test]
fn live_pids_come_in_order_from_a_cursor() {
    let mut t = table();
    for pid in [9, 3, 27, 5, 12, 40] {
        t.apply_event(&ev(EventKind::Fork, key(pid, 1), SEC));
    }
    t.apply_event(&ev(EventKind::Exit, key(12, 1), 2 * SEC));
    assert_eq!(t.live_pids_after(0, 2), [3, 5]);
    assert_eq!(t.live_pids_after(5, 2), [9, 27]);
    assert_eq!(t.live_pids_after(27, 2), [40]);
    assert!(t.live_pids_after(40, 2).is_empty());
}

#[test]
fn a_child_known_only_after_its_parents_exit_is_found_orphaned() {
    let mut t = table();
    let parent = key(100, 50);
    t.apply_event(&ev(EventKind::Fork, parent, SEC));
    // The parent's exit is applied first ...
    t.apply_event(&ev(EventKind::Exit, parent, 2 * SEC));
    // ... then a scan that read the child while its parent lived.
    let mut child = scanned(key(101, 60), "child");
    child.ppid = 100;
    let mut init = scanned(key(1, 1), "init");
    init.ppid = 0;
    t.apply_scan(&scan(SEC + 1, vec![init, child]), 3 * SEC);
    assert_eq!(t.parent_gone(key(101, 60)), Some(100));
    assert_eq!(t.orphaned(), [(key(101, 60), 100)]);
    // Re-parented: no longer.
    t.reparent(key(101, 60), 1, 4 * SEC);
    assert!(t.orphaned().iter().all(|(k, _)| k.pid != 101));
}

#[test]
fn a_parent_pid_held_by_a_younger_process_is_gone() {
    let mut t = table();
    // A child whose parent is known by pid only (from /proc), and a process
    // younger than the child now holds that pid.
    let mut child = scanned(key(101, 60), "child");
    child.ppid = 100;
    let younger = scanned(key(100, 90), "younger");
    t.apply_scan(&scan(SEC, vec![child, younger]), SEC);
    assert_eq!(t.parent_gone(key(101, 60)), Some(100));
    // An older holder is the parent.
    let mut t = table();
    let mut child = scanned(key(101, 60), "child");
    child.ppid = 100;
    t.apply_scan(
        &scan(SEC, vec![child, scanned(key(100, 40), "parent")]),
        SEC,
    );
    assert_eq!(t.parent_gone(key(101, 60)), None);
    // Events name the parent exactly: a reused pid is another process.
    let mut t = table();
    let mut e = ev(EventKind::Fork, key(101, 60), SEC);
    e.parent = key(100, 40);
    t.apply_event(&e);
    t.apply_event(&ev(EventKind::Fork, key(100, 95), 2 * SEC));
    assert_eq!(t.parent_gone(key(101, 60)), Some(100));
}

#[test]
fn the_groups_epoch_moves_only_when_the_sets_of_cgroups_change() {
    let mut t = table();
    let start = t.groups_epoch();
    t.apply_event(&ev(EventKind::Exec, key(100, 1), 1));
    let one = t.groups_epoch();
    assert_ne!(one, start, "a new set of cgroups");
    // More processes, execs and exits in the same, still live, cgroups.
    t.apply_event(&ev(EventKind::Fork, key(101, 2), 2));
    t.apply_event(&ev(EventKind::Exec, key(101, 2), 3));
    t.apply_event(&ev(EventKind::Exit, key(101, 2), 4));
    assert_eq!(
        t.groups_epoch(),
        one,
        "nothing a per-cgroup answer depends on"
    );
    // The last live process exits: the cgroups hold only exited ones.
    t.apply_event(&ev(EventKind::Exit, key(100, 1), 5));
    assert_ne!(t.groups_epoch(), one, "no live process left there");
}
