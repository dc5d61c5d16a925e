//! Who may ask and how much: the socket's mode and life, `--restrict-peers` and
//! supplementary groups, connection limits per peer and in all, idle timeouts,
//! hostile input, and a peer fixed at accept (a reused pid is never answered for).

use super::*;

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
        if let Ok(mut c) = pidmap::cli::client::connect(&socket).await
            && c.status(proto::StatusRequest {}).await.is_ok()
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "places freed by closed connections are reused");
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
        if let Ok(mut c) = pidmap::cli::client::connect(&socket).await
            && c.status(proto::StatusRequest {}).await.is_ok()
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "agent stopped answering after hostile input");
    let grown_mib = rss().saturating_sub(before) as f64 / 1024.0;
    assert!(grown_mib < 64.0, "memory grew by {grown_mib:.1} MiB");
    agent.stop().await;
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
