//! Ground truth (issue 9): for minutes, churn the node — containers started,
//! exec'd into, killed and deleted in a real containerd (kubelet's cgroup
//! layout and labels), processes that rename themselves, orphans under a
//! subreaper, a containerd SIGKILL and restart, one agent restart — while a
//! checker that uses none of pidmap's code compares every answer pidmap
//! gives over its socket with /proc (start time, comm, ppid, cgroup) and
//! with the containers the churn made in containerd.
//!
//! The checker and the container churn are `pidmap_tests::checker` (shared
//! with the fault-injection tests, `tests/tests/faults.rs`), where what
//! counts as a right answer is spelled out.
//!
//! It fails on any wrong answer, prints the counts and the time from each
//! kind of event to a correct answer, and takes `PIDMAP_GROUND_TRUTH_SECS`
//! (default 120) seconds. Run as root with `--test-threads=1`.

use std::{
    io::BufRead as _,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use pidmap::Config;
use pidmap_tests::{
    ChildGuard, PidGuard, TestAgent,
    checker::{self, ContainerdKills, Run, Want},
    containerd::Containerd,
    env_seconds, private_socket,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_equals_the_ground_truth_under_churn() {
    let total = env_seconds("PIDMAP_GROUND_TRUTH_SECS", 120);
    let ctrd = Arc::new(Containerd::start());
    let socket = private_socket();
    let config = Config {
        containerd_socket: ctrd.socket().to_path_buf(),
        containerd_max_backoff_ms: 200,
        socket: socket.clone(),
        ..Config::default()
    };
    let mut agent = Some(TestAgent::start(config.clone()).await);
    let run = Run::new(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    let started = Instant::now();

    // Host-side churn: a process renaming itself, and orphans made under a
    // child subreaper (which reaps them once they exit).
    let renamer = spawn_lines(
        "import ctypes, sys, time\n\
         libc = ctypes.CDLL(None)\n\
         i = 0\n\
         while True:\n\
         \x20   i += 1\n\
         \x20   name = 'rn-%d' % i\n\
         \x20   libc.prctl(15, name.encode(), 0, 0, 0)\n\
         \x20   print(name, flush=True)\n\
         \x20   time.sleep(0.2)\n",
    );
    let reaper = spawn_lines(
        "import ctypes, signal, subprocess, time\n\
         ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)\n\
         signal.signal(signal.SIGCHLD, signal.SIG_IGN)\n\
         while True:\n\
         \x20   out = subprocess.run(['sh', '-c', 'sleep 20 </dev/null >/dev/null 2>&1 & echo $!'],\n\
         \x20                        capture_output=True, text=True).stdout.strip()\n\
         \x20   print(out, flush=True)\n\
         \x20   time.sleep(0.4)\n",
    );
    let (renamer_pid, reaper_pid) = (renamer.pid(), reaper.pid());
    let orphans = Arc::new(Mutex::new(Vec::<PidGuard>::new()));
    let host_churn = {
        let run = Arc::clone(&run);
        let orphans = Arc::clone(&orphans);
        std::thread::spawn(move || host_lines(renamer, reaper, &run, &orphans))
    };

    // Container churn, on a thread of its own (the fixture blocks).
    let churn = {
        let ctrd = Arc::clone(&ctrd);
        let run = Arc::clone(&run);
        tokio::task::spawn_blocking(move || {
            checker::container_churn(&ctrd, &run, total, ContainerdKills::Once)
        })
    };
    let checker = tokio::spawn(checker::check_rounds(socket.clone(), Arc::clone(&run)));
    let poller = tokio::spawn(checker::poll_expectations(socket.clone(), Arc::clone(&run)));

    // One agent restart, two thirds in.
    tokio::time::sleep(total * 2 / 3).await;
    run.set_agent_away(true);
    let stopping = Instant::now();
    if let Some(a) = agent.take() {
        a.stop().await;
    }
    agent = Some(TestAgent::start(config.clone()).await);
    run.latency("agent restart → ready", stopping.elapsed());
    run.set_agent_away(false);

    tokio::time::sleep(total.saturating_sub(started.elapsed())).await;
    run.stop();
    let containers = churn.await.expect("container churn");
    checker.await.expect("checker");
    poller.await.expect("poller");
    let _ = host_churn.join();
    drop(orphans);
    drop(containers);
    if let Some(a) = agent.take() {
        a.stop().await;
    }

    run.report(&format!(
        "ground truth: {:.0} s of churn (renamer pid {renamer_pid}, subreaper pid {reaper_pid})",
        started.elapsed().as_secs_f64()
    ));
    run.assert_no_wrong_answers();
}

/// A python script whose stdout lines the test reads.
fn spawn_lines(script: &str) -> ChildGuard {
    ChildGuard::spawn(
        Command::new("python3")
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
    )
}

/// Turns the renamer's and the reaper's lines into expectations.
fn host_lines(
    mut renamer: ChildGuard,
    mut reaper: ChildGuard,
    run: &Run,
    orphans: &Mutex<Vec<PidGuard>>,
) {
    let renamer_pid = renamer.pid();
    let reaper_pid = reaper.pid();
    let names = std::io::BufReader::new(renamer.0.stdout.take().expect("stdout"));
    let orphan_lines = std::io::BufReader::new(reaper.0.stdout.take().expect("stdout"));
    std::thread::scope(|s| {
        s.spawn(|| {
            for line in names.lines() {
                let Ok(name) = line else { break };
                if run.stopped() {
                    break;
                }
                run.count("renames", 1);
                run.expect("rename → comm", renamer_pid, Want::Comm(name));
            }
        });
        s.spawn(|| {
            for line in orphan_lines.lines() {
                let Ok(pid) = line.map(|l| l.trim().parse::<u32>()) else {
                    break;
                };
                let Ok(pid) = pid else { continue };
                if run.stopped() {
                    break;
                }
                run.count("orphans", 1);
                orphans.lock().unwrap().push(PidGuard::new(pid));
                run.expect("parent exit → ppid", pid, Want::Ppid(reaper_pid));
            }
        });
        while !run.stopped() {
            std::thread::sleep(Duration::from_millis(100));
        }
        // Ends both readers: their pipes close.
        drop(renamer);
        drop(reaper);
    });
}
