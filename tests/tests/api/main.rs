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
    Config,
    api::proto::{self, pidmap_client::PidmapClient},
};
use pidmap_tests::{ChildGuard, TestAgent, h2watch::ShutWatch, pidmap_bin, private_socket};
use tonic::{Code, transport::Channel};

mod access;
mod http;
mod queries;
mod watch;

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

/// Lets every user reach the agent's socket (mode 0666 in a 0755 dir).
fn open_to_all(agent: &TestAgent) {
    let dir = agent.socket().parent().expect("dir").to_path_buf();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
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
