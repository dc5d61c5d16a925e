//! `Watch`: the snapshot then changes, cut off by lag (a reader that takes nothing)
//! and never by a burst, and both protocols' streams ending at shutdown.

use super::*;

/// The next line of a watch, within 10 s (`None`: the stream ended).
async fn next(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) -> Option<serde_json::Value> {
    tokio::time::timeout(Duration::from_secs(10), lines.recv())
        .await
        .expect("a line in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_gives_snapshot_then_changes_and_cuts_off_slow_watchers() {
    // A reader that keeps up: room for whatever else runs on the node (the
    // suite also runs with an exec storm beside it).
    let config = Config {
        watch_buffer: 65_536,
        ..Config::default()
    };
    let agent = TestAgent::start(config).await;
    let mut c = client(&agent).await;
    let mut stream = c
        .watch(proto::WatchRequest {})
        .await
        .expect("watch")
        .into_inner();
    // Snapshot until snapshot_done.
    let mut snapshot = 0;
    loop {
        let msg = stream.message().await.expect("stream").expect("open");
        match msg.event {
            Some(proto::watch_event::Event::SnapshotDone(_)) => break,
            Some(_) => snapshot += 1,
            None => {}
        }
    }
    assert!(snapshot > 0, "snapshot has the node's processes");
    let mut child = ChildGuard::spawn(Command::new("/bin/sh").arg("-c").arg("exit 0"));
    let pid = child.pid();
    child.wait();
    let saw = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let msg = stream.message().await.expect("stream").expect("open");
            if let Some(proto::watch_event::Event::ProcessChanged(r)) = msg.event
                && r.pid == pid
            {
                return;
            }
        }
    })
    .await;
    assert!(saw.is_ok(), "change for pid {pid} never arrived");
    agent.stop().await;

    // A watcher that takes nothing (its HTTP/2 window held at 0: it cannot
    // be sent a byte) falls behind by every change made meanwhile: over
    // watch_buffer, it is cut off with RESOURCE_EXHAUSTED as soon as it
    // reads again — whatever the machine's speed — and the agent keeps
    // answering others.
    let agent = TestAgent::start(Config {
        watch_buffer: 16,
        ..Config::default()
    })
    .await;
    let slow = ShutWatch::start(agent.socket()).await;
    for _ in 0..20 {
        let _ = Command::new("/bin/true").status();
    }
    let mut other = client(&agent).await;
    other
        .status(proto::StatusRequest {})
        .await
        .expect("others still served");
    let got = slow.open_and_read().await;
    assert_eq!(
        got.grpc_status.as_deref(),
        Some("8"),
        "RESOURCE_EXHAUSTED expected: {got:?}"
    );
    assert!(
        got.grpc_message
            .as_deref()
            .is_some_and(|m| m.contains("watcher")),
        "{got:?}"
    );
    assert!(agent.state().metrics().snapshot().api_cut_offs_watch_lag >= 1);
    agent.stop().await;
}

/// A reader that keeps up is never cut off by a burst: the changes count
/// against it only until it takes them. This one takes nothing while 300
/// processes run (about 900 changes), then reads: it gets them all, and its
/// stream stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_pauses_through_a_burst_is_not_cut_off() {
    // Room for the burst and whatever else runs on the node meanwhile.
    let config = Config {
        watch_buffer: 65_536,
        ..Config::default()
    };
    let agent = TestAgent::start(config).await;
    let mut c = client(&agent).await;
    let mut stream = c
        .watch(proto::WatchRequest {})
        .await
        .expect("watch")
        .into_inner();
    let mut pids = std::collections::HashSet::new();
    for _ in 0..300 {
        let mut child = ChildGuard::spawn(&mut Command::new("/bin/true"));
        pids.insert(child.pid());
        child.wait();
    }
    let seen = tokio::time::timeout(Duration::from_secs(60), async {
        while !pids.is_empty() {
            match stream.message().await {
                Ok(Some(msg)) => {
                    if let Some(proto::watch_event::Event::ProcessChanged(r)) = msg.event {
                        pids.remove(&r.pid);
                    }
                }
                other => return Err(format!("{other:?}")),
            }
        }
        Ok(())
    })
    .await;
    assert_eq!(
        seen,
        Ok(Ok(())),
        "the paused watcher was cut off or missed changes"
    );
    assert_eq!(agent.state().metrics().snapshot().api_cut_offs_watch_lag, 0);
    agent.stop().await;
}

/// Watch over HTTP gives the snapshot, then changes, as JSON lines; at
/// shutdown it ends with an error line, and a gRPC Watch with UNAVAILABLE,
/// and the agent stops within the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_over_both_protocols_end_with_unavailable_at_shutdown() {
    use std::io::BufRead as _;
    let agent = TestAgent::start(Config::default()).await;
    let mut curl = ChildGuard::spawn(
        Command::new("curl")
            .args(["-sN", "--unix-socket"])
            .arg(agent.socket())
            .arg("http://localhost/v1/watch")
            .stdout(std::process::Stdio::piped()),
    );
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = curl.0.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let value: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
            if lines_tx.send(value).is_err() {
                return;
            }
        }
    });
    let mut snapshot = 0;
    loop {
        let line = next(&mut lines).await.expect("the stream is open");
        if line["event"] == "snapshot_done" {
            break;
        }
        snapshot += 1;
    }
    assert!(snapshot > 0);
    let (child, _) = spawn_shell();
    let pid = u64::from(child.pid());
    loop {
        let line = next(&mut lines).await.expect("the stream is open");
        if line["event"] == "process_changed" && line["record"]["pid"].as_u64() == Some(pid) {
            break;
        }
    }

    let mut grpc = client(&agent)
        .await
        .watch(proto::WatchRequest {})
        .await
        .expect("watch")
        .into_inner();
    let grpc_end = tokio::spawn(async move {
        loop {
            match grpc.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    });
    let stopping = std::time::Instant::now();
    agent.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(4),
        "stopped within the grace"
    );
    assert_eq!(
        grpc_end.await.expect("gRPC watcher"),
        Some(Code::Unavailable)
    );
    let last = loop {
        match next(&mut lines).await {
            Some(line) if line["event"] == "error" => break line,
            Some(_) => continue,
            None => panic!("the HTTP watch ended without an error line"),
        }
    };
    assert_eq!(error_code(&last), "Unavailable", "{last}");
    assert!(
        next(&mut lines).await.is_none(),
        "nothing after the error line"
    );
    drop(child);
}
