//! The kernel side end to end: real eBPF programs in the real kernel, real
//! processes, checked through the agent's process table.

use std::{process::Command, time::Duration};

use pidmap::{
    Config,
    testing::state::ProcessState,
    testing::types::{CgroupId, ProcKey, StartTime},
};
use pidmap_tests::{CgroupGuard, ChildGuard, TestAgent, proc_start_time, wait_until};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forked_and_execed_child_has_parent_and_comm() {
    let agent = TestAgent::start(Config::default()).await;
    let child = ChildGuard::spawn(Command::new("/bin/sleep").arg("30"));
    let pid = child.pid();
    let state = agent.state();
    assert!(
        wait_until(WAIT, || state
            .process(pid)
            .is_some_and(|p| p.comm.as_string() == "sleep"))
        .await,
        "child {pid} never appeared with comm sleep: {:?}",
        state.process(pid)
    );
    let p = state.process(pid).expect("present");
    assert_eq!(p.state, ProcessState::Running);
    let parent = p.parent.expect("parent known");
    assert_eq!(parent.pid, std::process::id(), "parent is the test process");
    assert_eq!(
        parent.start_time,
        StartTime(proc_start_time(std::process::id()).expect("own stat")),
        "parent start time is the test process's"
    );
    let start = proc_start_time(pid).expect("child stat");
    assert_eq!(
        p.key,
        ProcKey::new(pid, StartTime(start)),
        "key matches /proc"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_moved_into_a_fresh_cgroup_reports_its_inode() {
    let agent = TestAgent::start(Config::default()).await;
    let cgroup = CgroupGuard::new_v2();
    let child = ChildGuard::spawn(Command::new("/bin/sleep").arg("30"));
    let pid = child.pid();
    cgroup.add(pid);
    let want = CgroupId(cgroup.id());
    let state = agent.state();
    assert!(
        wait_until(WAIT, || state
            .process(pid)
            .is_some_and(|p| p.cgroups.v2 == Some(want)))
        .await,
        "pid {pid} never showed cgroup {want} ({}): {:?}",
        cgroup.path().display(),
        state.process(pid)
    );
    drop(child);
    drop(cgroup);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_forked_into_a_cgroup_inherits_its_id() {
    // A shell moved into the cgroup forks a child there: the child's cgroup
    // is read at fork time, with no attach event of its own.
    let agent = TestAgent::start(Config::default()).await;
    let cgroup = CgroupGuard::new_v2();
    let mut shell = ChildGuard::spawn(
        Command::new("/bin/sh")
            .arg("-c")
            .arg("read _; /bin/sleep 30 & echo $!; wait")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped()),
    );
    cgroup.add(shell.pid());
    use std::io::{BufRead as _, Write as _};
    let mut stdin = shell.0.stdin.take().expect("stdin");
    writeln!(stdin).expect("release the shell");
    let mut line = String::new();
    std::io::BufReader::new(shell.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("grandchild pid");
    let grandchild: u32 = line.trim().parse().expect("numeric pid");
    let want = CgroupId(cgroup.id());
    let state = agent.state();
    assert!(
        wait_until(WAIT, || state.process(grandchild).is_some_and(|p| p
            .cgroups
            .v2
            == Some(want)
            && p.parent.map(|k| k.pid) == Some(shell.pid())))
        .await,
        "grandchild {grandchild}: {:?}",
        state.process(grandchild)
    );
    // The grandchild is ours too: end it by pid.
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(grandchild as i32, libc::SIGKILL) };
    drop(shell);
    drop(cgroup);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_started_before_the_agent_is_seeded() {
    let child = ChildGuard::spawn(Command::new("/bin/sleep").arg("30"));
    let pid = child.pid();
    let start = proc_start_time(pid).expect("child stat");
    let agent = TestAgent::start(Config::default()).await;
    // Ready means seeded: no waiting.
    let p = agent
        .state()
        .process(pid)
        .expect("pre-existing process in the seeded table");
    assert_eq!(p.key, ProcKey::new(pid, StartTime(start)));
    assert_eq!(p.comm.as_string(), "sleep");
    assert_eq!(p.state, ProcessState::Running);
    assert_eq!(p.parent.map(|k| k.pid), Some(std::process::id()));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exited_process_reads_exited_within_grace_then_disappears() {
    let config = Config {
        exit_grace_seconds: 2,
        ..Config::default()
    };
    let agent = TestAgent::start(config).await;
    let mut child = ChildGuard::spawn(Command::new("/bin/sh").arg("-c").arg("exit 3"));
    let pid = child.pid();
    assert_eq!(child.wait().code(), Some(3));
    let state = agent.state();
    assert!(
        wait_until(WAIT, || state
            .process(pid)
            .is_some_and(|p| matches!(p.state, ProcessState::Exited { .. })))
        .await,
        "pid {pid} never read exited: {:?}",
        state.process(pid)
    );
    let p = state.process(pid).expect("inside the grace window");
    assert!(
        matches!(p.state, ProcessState::Exited { exit_code: Some(code), .. } if code == 3 << 8),
        "exit status 3 recorded: {p:?}"
    );
    assert!(
        wait_until(WAIT, || state.process(pid).is_none()).await,
        "pid {pid} still present after the 2 s grace window: {:?}",
        state.process(pid)
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_short_processes_are_all_seen() {
    const N: usize = 10_000;
    let config = Config {
        exit_grace_seconds: 600,
        ..Config::default()
    };
    let agent = TestAgent::start(config).await;
    let state = agent.state();
    let before = state.metrics().snapshot();
    let started = std::time::Instant::now();
    let pids: Vec<u32> = (0..N)
        .map(|_| {
            let mut c = ChildGuard::spawn(&mut Command::new("/bin/true"));
            c.wait();
            c.pid()
        })
        .collect();
    let spawn_time = started.elapsed();
    // Our children, as exited `true`s whose parent is this process. Looked
    // for among all exited entries, not by bare pid: on a busy machine
    // other processes may take a pid of ours after it exited (pid_max is
    // 32768 here, and builds beside the test fork tens of thousands).
    let me = std::process::id();
    let missing = || {
        let seen: std::collections::HashSet<u32> = state
            .table()
            .exited()
            .filter(|p| p.parent.is_some_and(|k| k.pid == me) && p.comm.as_string() == "true")
            .map(|p| p.key.pid)
            .collect();
        pids.iter().filter(|p| !seen.contains(p)).count()
    };
    let all_seen = wait_until(WAIT, || missing() == 0).await;
    let after = state.metrics().snapshot();
    let lost = after.lost_events - before.lost_events;
    let missing = missing();
    println!(
        "{N} processes in {:.2?} ({:.0}/s): {} exec and {} exit events, {lost} lost, {missing} not seen, {} rescans",
        spawn_time,
        N as f64 / spawn_time.as_secs_f64(),
        after.exec_events - before.exec_events,
        after.exit_events - before.exit_events,
        after.rescans - before.rescans,
    );
    if lost == 0 {
        assert!(
            all_seen,
            "{missing} of {N} processes never seen, with no drops"
        );
    } else {
        // Lost events cannot be replayed for processes already gone; the
        // agent must notice and repair what /proc still shows.
        println!("drops happened: checking that a /proc rescan repaired the table");
        assert!(
            wait_until(WAIT, || state.metrics().snapshot().rescans > before.rescans).await,
            "{lost} events lost but no rescan ran"
        );
        assert!(
            state.process(me).is_some(),
            "the test process survives the rescan"
        );
    }
    agent.stop().await;
}
