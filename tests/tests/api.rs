//! The query API over a real Unix socket against a running agent: every
//! method, every error code, limits, access control, the socket's life,
//! hostile input. Run as root with `--test-threads=1`.

use std::{
    io::{Read as _, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream, process::CommandExt as _},
    process::Command,
    time::Duration,
};

use pidmap::{
    api::proto::{self, pidmap_client::PidmapClient},
    Config,
};
use pidmap_tests::{h2watch::ShutWatch, pidmap_bin, private_socket, ChildGuard, TestAgent};
use tonic::{transport::Channel, Code};

async fn client(agent: &TestAgent) -> PidmapClient<Channel> {
    match pidmap::cli::client::connect(agent.socket()).await {
        Ok(c) => c,
        Err(f) => panic!("connect: {}", f.message),
    }
}

fn req(pid: i64) -> proto::ResolveRequest {
    proto::ResolveRequest {
        pid,
        start_time: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_answers_known_unknown_and_rejects_bad_pids() {
    let agent = TestAgent::start(Config::default()).await;
    let mut c = client(&agent).await;
    let me = std::process::id();
    let r = c
        .resolve(req(me.into()))
        .await
        .expect("resolve self")
        .into_inner();
    assert_eq!(r.pid, me);
    assert_eq!(r.state, proto::ProcessState::Running as i32);
    assert_eq!(r.source, proto::Source::Host as i32);
    assert!(r.cgroup_path.is_some() && r.comm.is_some() && r.start_time.is_some());

    // A start time that is not the process's: unknown, not another process.
    let wrong = proto::ResolveRequest {
        pid: me.into(),
        start_time: Some(r.start_time.unwrap_or(0) + 1),
    };
    let r = c.resolve(wrong).await.expect("resolve").into_inner();
    assert_eq!(r.state, proto::ProcessState::Unknown as i32);

    // A valid pid nobody holds is an answer, never NOT_FOUND.
    let r = c
        .resolve(req(4_000_000))
        .await
        .expect("unknown pid")
        .into_inner();
    assert_eq!(r.state, proto::ProcessState::Unknown as i32);

    for bad in [0, -1, 5_000_000] {
        let err = c.resolve(req(bad)).await.expect_err("bad pid");
        assert_eq!(err.code(), Code::InvalidArgument, "pid {bad}: {err}");
        assert!(err.message().contains("pid"), "{}", err.message());
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_keeps_order_and_enforces_its_limit() {
    let config = Config {
        batch_limit: 100,
        ..Config::default()
    };
    let agent = TestAgent::start(config).await;
    let mut c = client(&agent).await;
    let me = i64::from(std::process::id());
    let requests = vec![req(me), req(1), req(4_000_000)];
    let records = c
        .resolve_batch(proto::ResolveBatchRequest { requests })
        .await
        .expect("batch")
        .into_inner()
        .records;
    let pids: Vec<u32> = records.iter().map(|r| r.pid).collect();
    assert_eq!(pids, [me as u32, 1, 4_000_000]);
    assert_eq!(records[2].state, proto::ProcessState::Unknown as i32);

    let too_many = (0..101).map(|_| req(me)).collect();
    let err = c
        .resolve_batch(proto::ResolveBatchRequest { requests: too_many })
        .await
        .expect_err("over the limit");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("limit of 100"), "{}", err.message());
    agent.stop().await;
}

/// Spawns a shell that prints `ready` and waits on its stdin, and returns it
/// with its start time once it has printed: its exec into `sh` is then
/// certainly recorded by the kernel. (Its fork is as soon as the spawn
/// returns; its exec not quite: a vfork parent resumes just before the
/// kernel reports the child's exec.)
fn spawn_shell() -> (ChildGuard, u64) {
    use std::io::BufRead as _;
    let mut child = ChildGuard::spawn(
        Command::new("sh")
            .args(["-c", "echo ready; read -r _"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped()),
    );
    let start_time = pidmap_tests::proc_start_time(child.pid()).expect("child's start time");
    let mut line = String::new();
    std::io::BufReader::new(child.0.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read the child's line");
    assert_eq!(line, "ready\n");
    (child, start_time)
}

/// With ring polls 1 s apart, a process's events wait in the ring buffer:
/// Resolve and ResolveBatch apply them first, so a process is resolvable,
/// with its exec'd comm, as soon as it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_see_processes_whose_events_are_still_in_the_ring() {
    let agent = TestAgent::start(Config {
        ring_poll_ms: 1000,
        ring_wakeup_events: 4096,
        ..Config::default()
    })
    .await;
    let mut c = client(&agent).await;
    for round in 0..10 {
        let (child, start_time) = spawn_shell();
        let r = c
            .resolve(proto::ResolveRequest {
                pid: child.pid().into(),
                start_time: Some(start_time),
            })
            .await
            .expect("resolve")
            .into_inner();
        assert_eq!(
            r.state,
            proto::ProcessState::Running as i32,
            "round {round}: {r:?}"
        );
        assert_eq!(r.start_time, Some(start_time), "round {round}: {r:?}");
        assert_eq!(r.comm.as_deref(), Some("sh"), "round {round}: {r:?}");

        // A batch with one such process among known ones.
        let (other, _) = spawn_shell();
        let batch = c
            .resolve_batch(proto::ResolveBatchRequest {
                requests: vec![req(std::process::id().into()), req(other.pid().into())],
            })
            .await
            .expect("batch")
            .into_inner();
        assert_eq!(batch.records[1].pid, other.pid());
        assert_eq!(batch.records[1].comm.as_deref(), Some("sh"), "{batch:?}");
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_whoami_lists_and_not_found() {
    let agent = TestAgent::start(Config::default()).await;
    let mut c = client(&agent).await;
    let s = c
        .status(proto::StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert!(s.ready);
    assert!(s.processes > 0, "{s:?}");
    let _ = Command::new("/bin/true").status();
    let mut received = 0;
    for _ in 0..100 {
        received = c
            .status(proto::StatusRequest {})
            .await
            .expect("status")
            .into_inner()
            .events_received;
        if received > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(received > 0, "events counted");
    assert!(
        !s.containerd_connected,
        "no containerd at the default socket here"
    );

    let me = c
        .who_am_i(proto::WhoAmIRequest {})
        .await
        .expect("whoami")
        .into_inner();
    assert_eq!(
        me.pid,
        std::process::id(),
        "the test process itself is the peer"
    );

    let list = c
        .list_containers(proto::ListContainersRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(list.containers.is_empty());
    let err = c
        .list_processes(proto::ListProcessesRequest {
            container_id: "nope".into(),
            runtime_namespace: None,
        })
        .await
        .expect_err("unknown container");
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .list_processes(proto::ListProcessesRequest::default())
        .await
        .expect_err("no id");
    assert_eq!(err.code(), Code::InvalidArgument);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_all_get_answers() {
    let agent = TestAgent::start(Config::default()).await;
    let me = i64::from(std::process::id());
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut c = client(&agent).await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..200 {
                let r = c.resolve(req(me)).await.expect("resolve").into_inner();
                assert_eq!(r.state, proto::ProcessState::Running as i32);
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    agent.stop().await;
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
            if let Some(proto::watch_event::Event::ProcessChanged(r)) = msg.event {
                if r.pid == pid {
                    return;
                }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_has_its_mode_replaces_stale_and_refuses_a_second_agent() {
    let socket = private_socket();
    std::fs::create_dir_all(socket.parent().expect("dir")).expect("mkdir");
    // A stale socket: bound, then its owner died.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale socket"));
    assert!(socket.exists());
    let config = Config {
        socket: socket.clone(),
        socket_mode: "0640".into(),
        ..Config::default()
    };
    let agent = TestAgent::start(config.clone()).await;
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o640);
    client(&agent)
        .await
        .status(proto::StatusRequest {})
        .await
        .expect("served");

    let shutdown = tokio_util::sync::CancellationToken::new();
    let second = pidmap::Agent::start(config, shutdown.clone()).await;
    let err = second.err().expect("a second agent must refuse");
    let text = pidmap::error::chain(&err);
    assert!(text.contains("already serving"), "{text}");
    shutdown.cancel();
    // The first one still serves.
    client(&agent)
        .await
        .status(proto::StatusRequest {})
        .await
        .expect("still served");
    agent.stop().await;
    assert!(!socket.exists(), "socket removed on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restrict_peers_limits_others_to_whoami_and_status() {
    let config = Config {
        restrict_peers: true,
        socket_mode: "0666".into(),
        ..Config::default()
    };
    let agent = TestAgent::start(config).await;
    open_to_all(&agent);
    let bin = pidmap_tests::pidmap_bin_for_anyone();
    let run_as_nobody = |args: &[&str]| {
        let mut cmd = Command::new(&bin.path);
        cmd.args(args).arg("--socket").arg(agent.socket());
        cmd.uid(65534).gid(65534);
        cmd.output().expect("run pidmap as nobody")
    };
    let out = run_as_nobody(&["whoami"]);
    assert!(
        out.status.success(),
        "whoami: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_as_nobody(&["status"]);
    assert!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_as_nobody(&["resolve", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("restrict_peers"), "{err}");
    // Root still gets everything.
    client(&agent)
        .await
        .resolve(req(1))
        .await
        .expect("root resolves");
    agent.stop().await;
}

/// `cmd` run as `uid`, primary group `gid` and supplementary `groups`.
/// (std's `uid()` drops supplementary groups before a `pre_exec` could
/// set them, so all three are set here.)
fn as_user<'c>(cmd: &'c mut Command, uid: u32, gid: u32, groups: &[u32]) -> &'c mut Command {
    let groups = groups.to_vec();
    // SAFETY: the closure only makes async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Lets every user reach the agent's socket (mode 0666 in a 0755 dir).
fn open_to_all(agent: &TestAgent) {
    let dir = agent.socket().parent().expect("dir").to_path_buf();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restrict_peers_counts_supplementary_groups() {
    // gid 4242 need not exist: the kernel keeps numeric gids.
    let config = Config {
        restrict_peers: true,
        socket_mode: "0666".into(),
        socket_group: Some("4242".into()),
        ..Config::default()
    };
    let agent = TestAgent::start(config).await;
    open_to_all(&agent);
    let bin = pidmap_tests::pidmap_bin_for_anyone();
    let resolve_as = |gid: u32, groups: &[u32]| {
        let mut cmd = Command::new(&bin.path);
        cmd.args(["resolve", "1", "--socket"]).arg(agent.socket());
        as_user(&mut cmd, 65534, gid, groups)
            .output()
            .expect("run pidmap")
    };
    let out = resolve_as(65534, &[100, 4242]);
    assert!(
        out.status.success(),
        "a member through a supplementary group: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = resolve_as(4242, &[]);
    assert!(
        out.status.success(),
        "a member through the primary group: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = resolve_as(65534, &[100]);
    assert!(!out.status.success(), "not a member");
    assert!(String::from_utf8_lossy(&out.stderr).contains("restrict_peers"));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_holding_connections_locks_nobody_else_out() {
    // The defaults: 256 connections, 64 per peer, the last 16 for root.
    let config = Config {
        socket_mode: "0666".into(),
        ..Config::default()
    };
    let agent = TestAgent::start(config).await;
    open_to_all(&agent);
    // `nobody` opens 300 connections and holds them; after 2.5 s (refused
    // connections are told why for 1 s, then closed) it counts the ones
    // still open, and holds those until its stdin closes.
    let script = r#"
import socket, sys, time
socks = []
for _ in range(300):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    socks.append(s)
time.sleep(2.5)
held = 0
for s in socks:
    s.setblocking(False)
    try:
        if s.recv(1):
            held += 1
    except BlockingIOError:
        held += 1
    except OSError:
        pass
print(held, flush=True)
sys.stdin.read()
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script])
        .arg(agent.socket())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut hog = ChildGuard::spawn(as_user(&mut cmd, 65534, 65534, &[]));
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(hog.0.stdout.as_mut().expect("stdout")),
        &mut line,
    )
    .expect("the hog's count");
    assert_eq!(line.trim(), "64", "one user holds at most its share");

    // Root, another user, and nobody itself over a new connection.
    let bin = pidmap_tests::pidmap_bin_for_anyone();
    let status_as = |uid: Option<u32>| {
        let mut cmd = Command::new(&bin.path);
        cmd.arg("status").arg("--socket").arg(agent.socket());
        if let Some(uid) = uid {
            as_user(&mut cmd, uid, uid, &[]);
        }
        cmd.output().expect("run pidmap status")
    };
    let out = status_as(None);
    assert!(
        out.status.success(),
        "root: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = status_as(Some(4243));
    assert!(
        out.status.success(),
        "another user: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = status_as(Some(65534));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the hog's 65th connection is refused"
    );
    assert!(
        err.contains("max_connections_per_peer") && err.contains("uid 65534"),
        "refused with the reason: {err}"
    );
    // Over HTTP: 429 with the same reason.
    let out = as_user(
        Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "--unix-socket"])
            .arg(agent.socket())
            .arg("http://localhost/v1/status"),
        65534,
        65534,
        &[],
    )
    .output()
    .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n429"), "{text}");
    assert!(text.contains("max_connections_per_peer"), "{text}");
    drop(hog);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_leaves_the_agent_serving() {
    let config = Config {
        max_connections: 64,
        idle_timeout_seconds: 2,
        max_request_bytes: 64 * 1024,
        ..Config::default()
    };
    let agent = TestAgent::start(config).await;
    let socket = agent.socket().to_path_buf();
    let rss = || {
        pidmap_tests::proc_status_field(std::process::id(), "VmRSS")
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = rss();
    // Random bytes and a truncated HTTP/2 preface.
    for payload in [
        &b"\x00\xffgarbage\r\n\r\n\x13\x37"[..],
        &b"PRI * HTTP/2.0\r\n\r\nSM"[..],
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
    ] {
        let mut s = UnixStream::connect(&socket).expect("connect");
        s.write_all(payload).expect("write");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf);
    }
    // A huge request is refused, not buffered.
    let mut c = client(&agent).await;
    let huge = (0..50_000).map(|_| req(1)).collect();
    let err = c
        .resolve_batch(proto::ResolveBatchRequest { requests: huge })
        .await
        .expect_err("oversized request");
    assert!(
        matches!(
            err.code(),
            Code::ResourceExhausted | Code::InvalidArgument | Code::OutOfRange
        ),
        "{err}"
    );
    // 1,000 connections opened and abandoned.
    let mut abandoned = Vec::new();
    for _ in 0..1_000 {
        if let Ok(s) = UnixStream::connect(&socket) {
            abandoned.push(s);
        }
    }
    // Others are served once the idle ones are dropped.
    drop(abandoned);
    let mut served = false;
    for _ in 0..150 {
        if let Ok(mut c) = pidmap::cli::client::connect(&socket).await {
            if c.status(proto::StatusRequest {}).await.is_ok() {
                served = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "agent stopped answering after hostile input");
    let grown_mib = rss().saturating_sub(before) as f64 / 1024.0;
    assert!(grown_mib < 64.0, "memory grew by {grown_mib:.1} MiB");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let agent = TestAgent::start(Config::default()).await;
    let channel = match pidmap::cli::client::channel(agent.socket()).await {
        Ok(c) => c,
        Err(f) => panic!("connect: {}", f.message),
    };
    let health = HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "pidmap.v1.Pidmap".into(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("answer")
        .expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.iter().any(|n| n == "pidmap.v1.Pidmap"), "{names:?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_and_idle_timeout_are_enforced() {
    let config = Config {
        max_connections: 2,
        idle_timeout_seconds: 1,
        ..Config::default()
    };
    let agent = TestAgent::start(config).await;
    let socket = agent.socket().to_path_buf();
    let closed = |s: &mut UnixStream, within: Duration| {
        s.set_read_timeout(Some(within)).expect("timeout");
        let mut buf = [0u8; 64];
        // EOF or a reset means the agent closed it; a timeout means open.
        !matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    };
    let mut a = UnixStream::connect(&socket).expect("first");
    let mut b = UnixStream::connect(&socket).expect("second");
    let mut over = UnixStream::connect(&socket).expect("third connects at the socket level");
    assert!(
        closed(&mut over, Duration::from_secs(2)),
        "a third connection is closed at once"
    );
    // The two silent ones are closed after the 1 s idle timeout…
    assert!(
        closed(&mut a, Duration::from_secs(5)),
        "idle connection closed"
    );
    assert!(
        closed(&mut b, Duration::from_secs(5)),
        "idle connection closed"
    );
    // …which frees their places for a real client.
    drop((a, b, over));
    let mut served = false;
    for _ in 0..50 {
        if let Ok(mut c) = pidmap::cli::client::connect(&socket).await {
            if c.status(proto::StatusRequest {}).await.is_ok() {
                served = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "places freed by closed connections are reused");
    agent.stop().await;
}

/// The next line of a watch, within 10 s (`None`: the stream ended).
async fn next(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) -> Option<serde_json::Value> {
    tokio::time::timeout(Duration::from_secs(10), lines.recv())
        .await
        .expect("a line in time")
}

/// `curl --unix-socket SOCKET ARGS http://localhost{path}`: the HTTP status
/// and the body, parsed as JSON.
fn http(socket: &std::path::Path, args: &[&str], path: &str) -> (u16, serde_json::Value) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(socket)
        .args(args)
        .arg(format!("http://localhost{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, status) = text.rsplit_once('\n').expect("a status line");
    let body =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"));
    (status.parse().expect("an HTTP status"), body)
}

/// The error code of an error answer.
fn error_code(body: &serde_json::Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_json_answers_every_endpoint_on_the_same_socket() {
    let agent = TestAgent::start(Config {
        batch_limit: 3,
        max_request_bytes: 1024,
        metrics_addr: Some("127.0.0.1:0".parse().expect("address")),
        ..Config::default()
    })
    .await;
    let socket = agent.socket();
    let me = std::process::id();
    let (status, r) = http(socket, &[], &format!("/v1/processes/{me}"));
    assert_eq!(status, 200);
    assert_eq!(
        (r["pid"].as_u64(), &r["state"], &r["source"]),
        (Some(me.into()), &"running".into(), &"host".into())
    );
    let start = r["start_time"].as_u64().expect("start time");
    // The record has exactly the CLI's JSON keys (one shape for both).
    let cli = Command::new(pidmap_bin())
        .args(["resolve", "-o", "json", &me.to_string()])
        .env("PIDMAP_SOCKET", socket)
        .env("RUST_LOG", "off")
        .output()
        .expect("pidmap resolve");
    let cli: serde_json::Value = serde_json::from_slice(&cli.stdout).expect("CLI JSON");
    let keys = |v: &serde_json::Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
    assert_eq!(keys(&r), keys(&cli));

    let (_, r) = http(
        socket,
        &[],
        &format!("/v1/processes/{me}?start_time={}", start + 1),
    );
    assert_eq!(r["state"], "unknown", "another start time");
    let (_, r) = http(
        socket,
        &[],
        &format!("/v1/processes?pid=1&pid={me}:{start}&pid=4000000"),
    );
    let states: Vec<&str> = r
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["state"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(states, ["running", "running", "unknown"]);
    let (_, r) = http(socket, &[], &format!("/v1/processes/{me}?format=otel"));
    assert_eq!(r["process.pid"].as_u64(), Some(me.into()));
    assert!(r.get("container.id").is_none(), "{r}");
    let (status, r) = http(
        socket,
        &[],
        "/v1/containers?all=true&namespace=no-such-namespace",
    );
    assert_eq!((status, r), (200, serde_json::json!([])));
    let (_, r) = http(socket, &[], "/v1/whoami");
    assert_eq!(r["comm"], "curl", "the caller, from the peer credentials");
    let (_, r) = http(socket, &[], "/v1/status");
    assert_eq!(r["ready"], true);

    // Errors: JSON, with the status matching the gRPC code.
    for (path, want, code) in [
        ("/v1/processes/0", 400, "InvalidArgument"),
        ("/v1/processes/5000000", 400, "InvalidArgument"),
        ("/v1/processes/abc", 400, "InvalidArgument"),
        ("/v1/processes/1?startime=5", 400, "InvalidArgument"),
        ("/v1/processes", 400, "InvalidArgument"),
        (
            "/v1/processes?pid=1&pid=2&pid=3&pid=4",
            413,
            "InvalidArgument",
        ),
        ("/v1/containers/nope/processes", 404, "NotFound"),
        ("/v1/nope", 404, "NotFound"),
        ("/", 404, "NotFound"),
    ] {
        let (status, body) = http(socket, &[], path);
        assert_eq!((status, error_code(&body)), (want, code), "{path}: {body}");
    }
    let long = format!("/v1/processes/1?{}", "x".repeat(2000));
    let (status, body) = http(socket, &[], &long);
    assert_eq!(status, 413, "{body}");
    let (status, body) = http(socket, &["-X", "POST"], "/v1/status");
    assert_eq!((status, error_code(&body)), (405, "Unimplemented"));

    // Keep-alive: two requests, one connection.
    let out = Command::new("curl")
        .args(["-sv", "-o", "/dev/null", "-o", "/dev/null", "--unix-socket"])
        .arg(socket)
        .args([
            "http://localhost/v1/status",
            "http://localhost/v1/processes/1",
        ])
        .output()
        .expect("curl");
    let verbose = String::from_utf8_lossy(&out.stderr);
    assert!(
        verbose.contains("Re-using existing connection"),
        "{verbose}"
    );

    // Requests over HTTP count in the same metrics as gRPC's.
    let addr = agent.agent().metrics_addr().expect("metrics on");
    let scrape = Command::new("curl")
        .args(["-s", &format!("http://{addr}/metrics")])
        .output()
        .expect("curl metrics");
    let scrape = String::from_utf8_lossy(&scrape.stdout);
    let count = |method: &str, code: &str| {
        let series = format!("pidmap_api_requests_total{{method=\"{method}\",code=\"{code}\"}} ");
        scrape
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(count("Resolve", "OK") >= 4, "{scrape}");
    assert!(count("ResolveBatch", "InvalidArgument") >= 2, "{scrape}");
    assert!(count("WhoAmI", "OK") >= 1, "{scrape}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_json_keeps_the_same_peer_restrictions_and_readiness() {
    use pidmap::faults::{Fault, Faults};
    let faults = Faults::default();
    let config = Config {
        restrict_peers: true,
        socket_mode: "0666".into(),
        ..Config::default()
    };
    let agent = TestAgent::start_with_faults(config, faults.clone()).await;
    open_to_all(&agent);
    let as_nobody = |path: &str| {
        let out = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "--unix-socket"])
            .arg(agent.socket())
            .arg(format!("http://localhost{path}"))
            .uid(65534)
            .gid(65534)
            .output()
            .expect("curl as nobody");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text
            .rsplit_once('\n')
            .map(|(b, s)| (b.to_owned(), s.to_owned()))
            .expect("status");
        let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        (status.parse::<u16>().expect("status"), body)
    };
    let (status, body) = as_nobody("/v1/processes/1");
    assert_eq!(
        (status, error_code(&body)),
        (403, "PermissionDenied"),
        "{body}"
    );
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("restrict_peers")));
    let (status, body) = as_nobody("/v1/whoami");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["comm"], "curl");
    assert_eq!(as_nobody("/v1/status").0, 200);
    assert_eq!(
        http(agent.socket(), &[], "/v1/processes/1").0,
        200,
        "root may"
    );

    // A hung tracker: not ready, 503, and Status still answers.
    faults.tracker.trigger(Fault::Hang);
    let state = agent.state();
    assert!(
        pidmap_tests::wait_until(pidmap::state::STALL_LIMIT + Duration::from_secs(5), || {
            !state.is_ready()
        })
        .await
    );
    let (status, body) = http(agent.socket(), &[], "/v1/processes/1");
    assert_eq!((status, error_code(&body)), (503, "Unavailable"), "{body}");
    let (status, body) = http(agent.socket(), &[], "/v1/status");
    assert_eq!(
        (status, &body["ready"]),
        (200, &serde_json::Value::Bool(false))
    );
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

/// Opens a connection to the agent (argv[1]), asks `/v1/whoami` on it,
/// then forks a keeper that holds the connection and exits, printing
/// "OPENER_PID OPENER_START_TIME KEEPER_PID". The keeper waits for a line
/// on stdin, asks `/v1/whoami` again on the kept connection and prints the
/// answer's status line and body.
const KEPT_CONNECTION: &str = r#"
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
def ask(target):
    s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(int(l.split(b":")[1]) for l in lines if l.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += s.recv(65536)
    return lines[0].decode(), body.decode()
status, body = ask(b"/v1/whoami")
start = json.loads(body)["start_time"]
keeper = os.fork()
if keeper == 0:
    sys.stdin.readline()
    status, body = ask(b"/v1/whoami")
    print(status)
    print(body, flush=True)
    os._exit(0)
print(os.getpid(), start, keeper, flush=True)
os._exit(0)
"#;

/// Starts `sleep` on `pid` (free: its process was reaped), by telling the
/// kernel the pid before it (`ns_last_pid`); other processes may take it
/// first, so this tries a few times.
fn spawn_on_pid(pid: u32) -> Option<ChildGuard> {
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).ok()?;
        let child = ChildGuard::spawn(Command::new("/bin/sleep").arg("60"));
        if child.pid() == pid {
            return Some(child);
        }
    }
    None
}

/// Issue 16, row 4: a connection outlives the process that opened it (its
/// child keeps the socket), and the pid is reused by a process in another
/// cgroup. `WhoAmI` on the kept connection answers for the process that
/// connected — exited — never for the new holder of its pid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_on_a_kept_connection_never_answers_for_a_reused_pid() {
    let agent = TestAgent::start(Config::default()).await;
    let (mut opener, line) = pidmap_tests::spawn_until_ready(
        Command::new("python3")
            .arg("-c")
            .arg(KEPT_CONNECTION)
            .arg(agent.socket()),
    );
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse().expect("a number"))
        .collect();
    let [opener_pid, opener_start, keeper_pid] = fields[..] else {
        panic!("the opener said {line:?}");
    };
    let (opener_pid, keeper_pid) = (opener_pid as u32, keeper_pid as u32);
    let _keeper = pidmap_tests::PidGuard::new(keeper_pid);
    // The keeper's stdin (waiting on the opener would close it).
    let mut stdin = opener.0.stdin.take().expect("stdin");
    opener.wait();
    let cgroup = pidmap_tests::CgroupGuard::new_v2();
    let reused = spawn_on_pid(opener_pid).expect("the opener's pid for a new process");
    cgroup.add(reused.pid());
    let c = client(&agent).await;
    let new_holder = pidmap_tests::resolved_when(&c, opener_pid, |r| {
        r.state == proto::ProcessState::Running as i32
            && r.start_time != Some(opener_start)
            && r.cgroup_id == Some(cgroup.id())
    })
    .await
    .expect("the agent sees the new holder of the pid in its cgroup");

    // The keeper asks on the kept connection.
    stdin.write_all(b"go\n").expect("tell the keeper");
    let mut answer = String::new();
    opener
        .0
        .stdout
        .as_mut()
        .expect("stdout")
        .read_to_string(&mut answer)
        .expect("the keeper's answer");
    let (status, body) = answer.split_once('\n').expect("status line and body");
    assert!(
        !body.contains(&format!(
            "\"start_time\":{}",
            new_holder.start_time.unwrap_or(0)
        )),
        "WhoAmI answered for the new holder of pid {opener_pid}: {answer}"
    );
    if status.contains(" 200 ") {
        assert!(
            body.contains("\"state\":\"exited\"")
                && body.contains(&format!("\"start_time\":{opener_start}")),
            "{answer}"
        );
    } else {
        assert!(
            status.contains(" 400 ") && body.contains("exited"),
            "{answer}"
        );
    }
    drop(reused);
    agent.stop().await;
}
