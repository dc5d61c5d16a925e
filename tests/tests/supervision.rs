//! The agent's supervision (issue 12): a task that dies stops the agent
//! with an error naming it; a tracker that hangs makes the agent unready,
//! so the liveness probe fails; periodic work keeps running while the ring
//! never empties. Faults are injected through the `fault-injection`
//! feature. Run as root with `--test-threads=1`.

use std::{
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use pidmap::{
    Config, Error,
    api::proto,
    faults::{Fault, Faults},
    testing::state::STALL_LIMIT,
};
use pidmap_tests::{TestAgent, containerd::Containerd, pidmap_bin, wait_until};

const EVENTUALLY: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_tracker_stops_the_agent_with_an_error() {
    let faults = Faults::default();
    let agent = TestAgent::start_with_faults(Config::default(), faults.clone()).await;
    let socket = agent.socket().to_path_buf();
    assert!(socket.exists());
    faults.tracker.trigger(Fault::Panic);
    let ended = tokio::time::timeout(EVENTUALLY, agent.ended())
        .await
        .expect("the agent stopped");
    match ended {
        Err(Error::TaskDied { task, how }) => {
            assert_eq!(task, "tracker");
            assert!(how.starts_with("panicked"), "{how}");
        }
        other => panic!("wrong outcome: {other:?}"),
    }
    // The socket is gone with it: the liveness probe fails.
    assert!(!socket.exists(), "socket left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_ends_stops_the_agent() {
    let ctrd = Containerd::start();
    let faults = Faults::default();
    let agent = TestAgent::start_with_faults(
        Config {
            containerd_socket: ctrd.socket().to_path_buf(),
            ..Config::default()
        },
        faults.clone(),
    )
    .await;
    faults.watcher.trigger(Fault::End);
    let ended = tokio::time::timeout(EVENTUALLY, agent.ended())
        .await
        .expect("the agent stopped");
    assert!(
        matches!(&ended, Err(Error::TaskDied { task: "containerd watcher", how }) if how == "ended"),
        "{ended:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_tracker_fails_readiness_and_the_liveness_probe() {
    let faults = Faults::default();
    let agent = TestAgent::start_with_faults(Config::default(), faults.clone()).await;
    let status = || {
        Command::new(pidmap_bin())
            .arg("status")
            .env("PIDMAP_SOCKET", agent.socket())
            .output()
            .expect("pidmap status")
    };
    assert_eq!(status().status.code(), Some(0));
    faults.tracker.trigger(Fault::Hang);
    let state = agent.state();
    assert!(
        wait_until(STALL_LIMIT + EVENTUALLY, || !state.is_ready()).await,
        "a hung tracker left the agent ready"
    );
    let out = status();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ready:                 false"));
    let mut c = pidmap::cli::client::connect(agent.socket())
        .await
        .unwrap_or_else(|f| panic!("{}", f.message));
    let err = c
        .resolve(proto::ResolveRequest {
            pid: 1,
            start_time: None,
        })
        .await
        .expect_err("a frozen table is not served");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(
        err.message().contains("stopped applying kernel events"),
        "{err}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_work_keeps_running_while_the_ring_keeps_overflowing() {
    // The smallest ring and a short grace. The test makes the ring overflow
    // itself, whatever the machine's speed: it stops the tracker (its reader)
    // until the storm has run enough processes to fill the ring many times
    // over, lets it run for a while, and again, for 6 s. Every overflow must
    // start a rescan, and exited processes must keep expiring.
    let faults = Faults::default();
    let agent = TestAgent::start_with_faults(
        Config {
            ring_buffer_bytes: 4096,
            exit_grace_seconds: 1,
            ..Config::default()
        },
        faults.clone(),
    )
    .await;
    let state = agent.state();
    let before = state.metrics().snapshot();
    let storming = AtomicBool::new(true);
    let spawned = std::sync::atomic::AtomicU64::new(0);
    let storm = Duration::from_secs(6);
    let (rescans_during, max_exited_age, pauses) = std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while storming.load(Ordering::Relaxed) {
                    let _ = Command::new("/bin/true").status();
                    spawned.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let started = Instant::now();
        let mut pauses = 0;
        // Every exited process the table holds must have exited within
        // grace + one sweep (+ slack) ago: the sweep is not starved.
        let mut worst = Duration::ZERO;
        while started.elapsed() < storm {
            // Stopped while 20 processes (60 events: a 4 KiB ring holds a
            // dozen) start and end.
            faults.tracker.trigger(Fault::Pause);
            pauses += 1;
            let from = spawned.load(Ordering::Relaxed);
            while spawned.load(Ordering::Relaxed) < from + 20 {
                std::thread::sleep(Duration::from_millis(5));
            }
            faults.tracker.resume();
            std::thread::sleep(Duration::from_millis(200));
            if started.elapsed() < Duration::from_secs(3) {
                continue;
            }
            let now = pidmap::testing::util::monotonic_ns();
            let table = state.table();
            for p in table.exited() {
                if let pidmap::testing::state::ProcessState::Exited { at_ns, .. } = p.state {
                    worst = worst.max(Duration::from_nanos(now.saturating_sub(at_ns)));
                }
            }
        }
        let rescans = state.metrics().snapshot().rescans - before.rescans;
        storming.store(false, Ordering::Relaxed);
        (rescans, worst, pauses)
    });
    let after = state.metrics().snapshot();
    assert!(
        after.lost_events > before.lost_events,
        "the ring never overflowed in {pauses} pauses of its reader"
    );
    assert!(rescans_during > 0, "no rescan ran during the storm");
    assert!(
        max_exited_age < Duration::from_secs(4),
        "exited entries {max_exited_age:?} old were kept with a 1 s grace: the sweep starved"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_or_impossible_socket_fails_before_any_program_is_loaded() {
    let agent = TestAgent::start(Config::default()).await;
    let long = format!("/tmp/{}", "x".repeat(120));
    let taken = agent.socket().to_string_lossy().into_owned();
    for (socket, code, want) in [
        (taken.as_str(), 1, "another pidmap agent is already serving"),
        (long.as_str(), 2, "at most 107 bytes"),
    ] {
        // A BTF path that does not exist: the agent would fail on it, had
        // it got as far as the kernel.
        let out = Command::new(pidmap_bin())
            .args([
                "agent",
                "--socket",
                socket,
                "--btf-path",
                "/nonexistent/vmlinux",
            ])
            .output()
            .expect("run pidmap agent");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{stderr}");
        assert!(stderr.contains(want), "{stderr}");
        assert!(
            !stderr.contains("BTF"),
            "got as far as the kernel: {stderr}"
        );
    }
    assert!(agent.socket().exists(), "the first agent's socket survives");
    agent.stop().await;

    // The client says the same once, without suggesting the agent is down.
    let out = Command::new(pidmap_bin())
        .args(["status", "--socket", &long])
        .output()
        .expect("run pidmap status");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("at most 107 bytes"), "{stderr}");
    assert_eq!(stderr.matches("107").count(), 1, "said once: {stderr}");
    assert!(
        !stderr.contains("running"),
        "no agent can serve it: {stderr}"
    );
}

/// An agent whose log nobody reads any more (the pipe's reader gone: a log collector that
/// died, `pidmap agent 2>&1 | head`) keeps serving and still stops cleanly on SIGTERM.
/// tracing-subscriber used to report its own failed writes with `eprintln!`, which panics
/// on a closed stderr: the panic killed the task that logged — the signal task's "shutting
/// down" among them — and the agent then ignored SIGTERM for good.
#[test]
fn an_agent_whose_log_pipe_closed_still_stops_on_sigterm() {
    use std::io::BufRead as _;

    /// Removes the socket's private directory, also when an assertion fails.
    struct SocketDir(std::path::PathBuf);
    impl Drop for SocketDir {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
    let socket = pidmap_tests::private_socket();
    let _dir = SocketDir(socket.clone());
    // Dropped before `_dir`: SIGKILL, if the test fails with the agent still running.
    let mut agent = pidmap_tests::ChildGuard::spawn(
        Command::new(pidmap_bin())
            .args(["agent", "--no-pin", "--socket"])
            .arg(&socket)
            // Debug: it logs on every API connection, so the next log line comes soon.
            .env("RUST_LOG", "debug")
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped()),
    );
    let stderr = agent.0.stderr.take().expect("the agent's stderr");
    let mut lines = std::io::BufReader::new(stderr).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains("agent ready"))),
        "the agent never became ready"
    );
    // The reader is gone: every write to the agent's stderr fails with EPIPE from now on.
    drop(lines);
    let status = || {
        Command::new(pidmap_bin())
            .args(["status", "--socket"])
            .arg(&socket)
            .output()
            .is_ok_and(|out| out.status.success())
    };
    for _ in 0..3 {
        assert!(
            status(),
            "the agent stopped serving once its log pipe closed"
        );
    }
    // SAFETY: kill has no memory-safety preconditions; the pid is our child, not reaped.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + EVENTUALLY;
    let exit = loop {
        if let Some(exit) = agent.0.try_wait().expect("wait for the agent") {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "the agent ignored SIGTERM with its log pipe closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "the agent ended with {exit}");
}
