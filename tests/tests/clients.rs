//! Clients against a real agent: Python grpcio, Node @grpc/grpc-js and Go
//! grpc-go with their default options, the pidmap-client cache (changes,
//! deletions, re-syncs after a restart), the Go package clients/go (its
//! stubs current with the proto, its own tests), the standard-library
//! Python package clients/python (its own tests), and every snippet of
//! docs/clients.md as written. Run as root with `--test-threads=1`, after
//! `cargo xtask setup --for-tests` (grpcio and grpc-js in
//! target/client-tools; Debian's Go, grpc-go and protoc plugins) and `cargo
//! build -p pidmap -p pidmap-client --examples` (`cargo xtask test` does
//! both).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use pidmap::Config;
use pidmap_client::{Cache, CacheSettings, Settings};
use pidmap_tests::{
    Snippet, TestAgent, client_example_bin, containerd::ContainerSpec, containerd::Containerd,
    node_modules, private_socket, python_bin, python_bin_dir, repo_root, snippets,
    spawn_until_ready, wait_until,
};
use serde_json::Value;

/// How long a client run or a cache change may take.
const EVENTUALLY: Duration = Duration::from_secs(15);

/// A temporary directory for a client's files, with `proto` linked to the
/// repository's `proto/` (the snippets name it relatively, as a user's
/// copy would be).
struct Workdir(tempfile::TempDir);

impl Workdir {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("pidmap-clients-")
            .tempdir()
            .expect("temp dir");
        std::os::unix::fs::symlink(repo_root().join("proto"), dir.path().join("proto"))
            .expect("link proto/");
        Self(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, text).expect("write client file");
        path
    }

    /// A command run in this directory, with the virtualenv's `python3`
    /// and the npm packages found first, and `socket` as PIDMAP_SOCKET.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>, socket: &Path) -> Command {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![python_bin_dir()];
        dirs.extend(std::env::split_paths(&path));
        let mut cmd = Command::new(program);
        cmd.current_dir(self.path())
            .env("PATH", std::env::join_paths(dirs).expect("PATH"))
            .env("NODE_PATH", node_modules())
            .env("PIDMAP_SOCKET", socket)
            .stdin(Stdio::null());
        cmd
    }
}

/// How long a Go build may take (the first one compiles grpc-go and
/// protobuf into Go's build cache).
const GO_BUILD: Duration = Duration::from_secs(300);

/// Runs `cmd`, killed after [`EVENTUALLY`]; fails the test with its
/// output unless it succeeds; returns its stdout.
async fn run(cmd: &mut Command) -> String {
    run_within(cmd, EVENTUALLY).await.0
}

/// [`run`], killed after `limit`; returns its stdout and stderr.
async fn run_within(cmd: &mut Command, limit: Duration) -> (String, String) {
    let shown = format!("{cmd:?}");
    let mut cmd = tokio::process::Command::from(std::mem::replace(cmd, Command::new("true")));
    let out: Output = tokio::time::timeout(limit, cmd.kill_on_drop(true).output())
        .await
        .unwrap_or_else(|_| panic!("{shown} did not finish within {limit:?}"))
        .expect("run client");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{shown} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

/// docs/clients.md's snippets.
fn doc_snippets() -> Vec<Snippet> {
    let text =
        std::fs::read_to_string(repo_root().join("docs/clients.md")).expect("docs/clients.md");
    snippets(&text)
}

/// The one snippet in `lang` of the section whose heading starts with
/// `section`.
fn snippet<'a>(all: &'a [Snippet], section: &str, lang: &str) -> &'a str {
    let found: Vec<&Snippet> = all
        .iter()
        .filter(|s| s.section.starts_with(section) && s.lang == lang)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {lang} snippet under {section}: {found:?}"
    );
    &found[0].code
}

/// Generates the Python stubs in `dir` with the docs' own command.
async fn python_stubs(dir: &Workdir, socket: &Path) {
    let generate = snippet(&doc_snippets(), "Python", "sh").to_owned();
    run(dir.command("sh", socket).arg("-e").arg("-c").arg(generate)).await;
    assert!(dir.path().join("pidmap/v1/pidmap_pb2_grpc.py").exists());
}

/// Every call, on one channel (later requests use HPACK's dynamic table),
/// with the channel options given as JSON in argv[2].
const GRPCIO_CALLS: &str = r#"
import json, os, sys
import grpc
from pidmap.v1 import pidmap_pb2 as pb, pidmap_pb2_grpc as rpc

target, options = sys.argv[1], json.loads(sys.argv[2])
with grpc.insecure_channel(target, options=[tuple(o) for o in options]) as channel:
    stub = rpc.PidmapStub(channel)
    for _ in range(3):
        me = stub.Resolve(pb.ResolveRequest(pid=os.getpid()), timeout=5)
        assert me.state == pb.PROCESS_STATE_RUNNING and me.pid == os.getpid(), me
    batch = stub.ResolveBatch(pb.ResolveBatchRequest(
        requests=[pb.ResolveRequest(pid=p) for p in (1, os.getpid(), 4000000)]), timeout=5)
    assert [r.pid for r in batch.records] == [1, os.getpid(), 4000000], batch
    assert batch.records[2].state == pb.PROCESS_STATE_UNKNOWN
    who = stub.WhoAmI(pb.WhoAmIRequest(), timeout=5)
    assert who.pid == os.getpid(), who
    assert stub.Status(pb.StatusRequest(), timeout=5).ready
    try:
        stub.Resolve(pb.ResolveRequest(pid=0), timeout=5)
        raise AssertionError("pid 0 answered")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    seen = 0
    for event in stub.Watch(pb.WatchRequest(), timeout=10):
        if event.WhichOneof("event") == "snapshot_done":
            break
        seen += 1
    assert seen > 0
print("grpcio ok", target, options)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_with_its_default_options_is_served() {
    let agent = TestAgent::start(Config::default()).await;
    let socket = agent.socket().to_path_buf();
    let dir = Workdir::new();
    python_stubs(&dir, &socket).await;
    let script = dir.write("calls.py", GRPCIO_CALLS);
    let absolute = socket.display().to_string();
    let cases = [
        // grpc-core's defaults: the percent-encoded path as authority.
        (format!("unix:{absolute}"), "[]".to_owned()),
        (format!("unix://{absolute}"), "[]".to_owned()),
        // What grpc-java and grpc-swift send: the raw path.
        (
            format!("unix:{absolute}"),
            format!(r#"[["grpc.default_authority", "{absolute}"]]"#),
        ),
        // The workaround older agents needed still works.
        (
            format!("unix:{absolute}"),
            r#"[["grpc.default_authority", "localhost"]]"#.to_owned(),
        ),
    ];
    for (target, options) in cases {
        let out = run(dir
            .command(python_bin(), &socket)
            .arg(&script)
            .arg(&target)
            .arg(&options))
        .await;
        assert!(out.contains("grpcio ok"), "{target} {options}: {out}");
    }
    agent.stop().await;
}

/// Resolve, a batch, WhoAmI, Status and a Watch snapshot with grpc-js.
const GRPC_JS_CALLS: &str = r#"
const assert = require("assert");
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");
const def = loader.loadSync("proto/pidmap/v1/pidmap.proto", { longs: String, enums: String, defaults: true, oneofs: true });
const { pidmap } = grpc.loadPackageDefinition(def);
const c = new pidmap.v1.Pidmap(process.argv[2], grpc.credentials.createInsecure());
const call = (method, req) => new Promise((ok, fail) =>
  c[method](req, { deadline: Date.now() + 5000 }, (e, r) => (e ? fail(e) : ok(r))));
(async () => {
  const me = await call("Resolve", { pid: process.pid });
  assert.strictEqual(me.state, "PROCESS_STATE_RUNNING");
  const batch = await call("ResolveBatch", { requests: [{ pid: 1 }, { pid: process.pid }] });
  assert.deepStrictEqual(batch.records.map((r) => r.pid), [1, process.pid]);
  assert.strictEqual((await call("WhoAmI", {})).pid, process.pid);
  assert.strictEqual((await call("Status", {})).ready, true);
  await assert.rejects(call("Resolve", { pid: 0 }), (e) => e.code === grpc.status.INVALID_ARGUMENT);
  let seen = 0;
  await new Promise((ok, fail) => {
    const stream = c.Watch({});
    stream.on("data", (ev) => {
      if (ev.event === "snapshotDone") { stream.cancel(); ok(); } else { seen += 1; }
    });
    stream.on("error", (e) => (e.code === grpc.status.CANCELLED ? ok() : fail(e)));
  });
  assert.ok(seen > 0);
  c.close();
  console.log("grpc-js ok");
})().catch((e) => { console.error(e); process.exit(1); });
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_js_with_its_default_options_is_served() {
    let agent = TestAgent::start(Config::default()).await;
    let socket = agent.socket().to_path_buf();
    let dir = Workdir::new();
    let script = dir.write("calls.js", GRPC_JS_CALLS);
    let target = format!("unix:{}", socket.display());
    let out = run(dir.command("node", &socket).arg(&script).arg(&target)).await;
    assert!(out.contains("grpc-js ok"), "{out}");
    agent.stop().await;
}

fn cache_settings(socket: &Path) -> CacheSettings {
    CacheSettings {
        max_backoff: Duration::from_millis(200),
        ..CacheSettings::from(Settings::new(socket))
    }
}

/// The cache follows processes as they start and exit, and after the agent
/// restarts it re-syncs by itself from a new snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_follows_processes_and_resyncs_after_an_agent_restart() {
    let socket = private_socket();
    let config = Config {
        socket: socket.clone(),
        ..Config::default()
    };
    let agent = TestAgent::start(config.clone()).await;
    let cache = Cache::spawn(cache_settings(&socket));
    tokio::time::timeout(EVENTUALLY, cache.wait_synced())
        .await
        .expect("the cache synced");
    let me = std::process::id();
    let entry = cache
        .get(me, None)
        .expect("the test process is in the snapshot");
    assert_eq!(entry.process.pid, me);
    assert!(entry.container.is_none());

    let (mut child, _) =
        spawn_until_ready(Command::new("sh").args(["-c", "echo ready; read -r _"]));
    let pid = child.pid();
    let start = pidmap_tests::proc_start_time(pid);
    assert!(
        wait_until(EVENTUALLY, || cache
            .get(pid, start)
            .is_some_and(|e| e.process.comm() == "sh"))
        .await,
        "the new process reached the cache"
    );
    drop(child.0.stdin.take());
    child.wait();
    assert!(
        wait_until(EVENTUALLY, || cache
            .get(pid, start)
            .is_some_and(
                |e| e.process.state == pidmap_client::proto::ProcessState::Exited as i32
            ))
        .await,
        "its exit reached the cache"
    );

    agent.stop().await;
    assert!(
        wait_until(EVENTUALLY, || !cache.is_synced()).await,
        "the cache noticed the agent went away"
    );
    assert!(cache.get(me, None).is_some(), "answers stay meanwhile");
    let agent = TestAgent::start(config).await;
    tokio::time::timeout(EVENTUALLY, cache.wait_synced())
        .await
        .expect("the cache re-synced with the new agent");
    assert_eq!(cache.stats().snapshots, 2);
    assert!(
        cache.get(pid, start).is_some(),
        "an exit seen before the restart stays for its grace window"
    );
    let (other, _) = spawn_until_ready(Command::new("sh").args(["-c", "echo ready; read -r _"]));
    let other_pid = other.pid();
    assert!(
        wait_until(EVENTUALLY, || cache.get(other_pid, None).is_some()).await,
        "changes flow again after the re-sync"
    );
    drop(other);
    drop(cache);
    agent.stop().await;
}

/// Containers reach the cache with their processes, follow their changes,
/// and stay, marked deleted, once containerd deletes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_follows_containers_to_their_deletion() {
    let ctrd = Containerd::start();
    let agent = TestAgent::start_with_containerd(&ctrd).await;
    let cache = Cache::spawn(cache_settings(agent.socket()));
    tokio::time::timeout(EVENTUALLY, cache.wait_synced())
        .await
        .expect("the cache synced");
    let c = ctrd.run(
        ContainerSpec::new("cached")
            .namespace("k8s.io")
            .label("io.kubernetes.pod.name", "web-0")
            .label("io.kubernetes.pod.namespace", "shop"),
    );
    let init = c.init_pid();
    assert!(
        wait_until(EVENTUALLY, || cache.get(init, None).is_some_and(|e| e
            .container
            .as_ref()
            .is_some_and(
                |c| c.id == "cached" && c.pod_name.as_deref() == Some("web-0")
            )))
        .await,
        "the container's process, with its container, reached the cache"
    );
    let exec = c.exec("e1", ["/bin/sleep", "1000"]);
    assert!(
        wait_until(EVENTUALLY, || cache.get(exec, None).is_some()).await,
        "an exec'd process reached the cache"
    );
    c.kill("KILL");
    c.wait_exited(EVENTUALLY);
    c.delete();
    assert!(
        wait_until(EVENTUALLY, || cache
            .container("k8s.io", "cached")
            .is_some_and(|c| c.deleted))
        .await,
        "the deletion reached the cache"
    );
    let entry = cache
        .get(init, None)
        .expect("the exited init, within the grace");
    assert_eq!(
        entry.process.state,
        pidmap_client::proto::ProcessState::Exited as i32
    );
    assert!(entry.container.is_some_and(|c| c.deleted));
    drop(cache);
    agent.stop().await;
}

/// Every snippet of docs/clients.md, as written, against a real agent; the
/// Rust one is the example program, built, so it is compared with its
/// source and the binary run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_snippet_of_the_client_docs_runs_as_written() {
    let agent = TestAgent::start(Config::default()).await;
    let socket = agent.socket().to_path_buf();
    let all = doc_snippets();
    let dir = Workdir::new();
    let mut ran = Vec::new();

    python_stubs(&dir, &socket).await;
    let python = dir.write("client.py", snippet(&all, "Python", "python"));
    let out = run(dir.command(python_bin(), &socket).arg(python)).await;
    assert!(out.starts_with("PROCESS_STATE_RUNNING python"), "{out}");
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("1 SOURCE_HOST")),
        "{out}"
    );
    ran.extend([("Python", "sh"), ("Python", "python")]);

    // The standard-library package, beside the grpcio stubs just made.
    let package = repo_root().join("clients/python");
    let stdlib = dir.write(
        "client_stdlib.py",
        snippet(&all, "Standard-library Python", "python"),
    );
    let out = run(dir
        .command(python_bin(), &socket)
        .env("PYTHONPATH", &package)
        .arg(stdlib))
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines[0].starts_with("running python"), "{out}");
    assert!(lines[1].starts_with("1 host "), "{out}");
    assert_eq!(lines[3], "refused: 400 InvalidArgument", "{out}");
    assert!(
        lines[4].starts_with("cached: ") && lines[4].ends_with(" running python"),
        "{out}"
    );
    // The package and the grpcio stubs (`pidmap.v1`, in `dir`) import side
    // by side.
    let both = run(dir
        .command(python_bin(), &socket)
        .env("PYTHONPATH", &package)
        .args([
            "-c",
            "import pidmap; from pidmap.v1 import pidmap_pb2; \
             print(pidmap.Client.__name__, pidmap_pb2.DESCRIPTOR.package)",
        ]))
    .await;
    assert_eq!(both.trim(), "Client pidmap.v1");
    ran.push(("Standard-library Python", "python"));

    let node = dir.write("client.js", snippet(&all, "Node", "js"));
    let out = run(dir.command("node", &socket).arg(node)).await;
    assert!(out.starts_with("PROCESS_STATE_RUNNING node"), "{out}");
    ran.push(("Node", "js"));

    let curl = snippet(&all, "curl", "sh");
    let out = run(dir.command("sh", &socket).arg("-e").arg("-c").arg(curl)).await;
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(lines.len(), 9, "{out}");
    assert!(lines.iter().all(|v| v.get("error").is_none()), "{out}");
    assert_eq!(lines[0]["ready"], true);
    assert_eq!(lines[1]["pid"], 1);
    assert_eq!(lines[2].as_array().map(Vec::len), Some(2));
    assert!(lines[3]["process.pid"].is_u64(), "{}", lines[3]);
    assert_eq!(lines[4], Value::Array(Vec::new()));
    assert_eq!(lines[5]["comm"], "curl");
    assert!(
        lines[6..]
            .iter()
            .all(|v| v["event"] == "container" || v["event"] == "process"),
        "the watch snapshot: {out}"
    );
    ran.push(("curl", "sh"));

    let rust = snippet(&all, "Rust", "rust");
    let example = std::fs::read_to_string(repo_root().join("client/examples/lookup.rs"))
        .expect("client/examples/lookup.rs");
    assert_eq!(rust, example, "the doc shows the example program as it is");
    let out = run(dir
        .command(client_example_bin("lookup"), &socket)
        .env("RUST_LOG", "off"))
    .await;
    assert!(
        out.starts_with("whoami: pid ") && out.contains("cached: pid "),
        "{out}"
    );
    assert!(!out.contains("not in the cache"), "{out}");
    ran.push(("Rust", "rust"));

    // The Go package: built with the docs' own commands (GOPATH mode, from a
    // checkout's root: `clients` links to the repository's), then run.
    require_go();
    std::os::unix::fs::symlink(repo_root().join("clients"), dir.path().join("clients"))
        .expect("link clients/");
    dir.write("lookup.go", snippet(&all, "Go (clients/go)", "go"));
    let build = snippet(&all, "Go (clients/go)", "sh").to_owned();
    run_within(
        dir.command("sh", &socket).arg("-e").arg("-c").arg(build),
        GO_BUILD,
    )
    .await;
    let out = run(&mut dir.command(dir.path().join("lookup-go"), &socket)).await;
    assert!(out.starts_with("whoami: pid "), "{out}");
    assert!(
        out.contains("cached: true state PROCESS_STATE_RUNNING comm lookup-go"),
        "{out}"
    );
    ran.extend([("Go (clients/go)", "sh"), ("Go (clients/go)", "go")]);

    // Bare grpc-go is shown, not run (it uses grpc-go API newer than
    // Debian's 1.33); nothing else may hide.
    snippet(&all, "Go (grpc-go)", "go");
    ran.push(("Go (grpc-go)", "go"));
    for s in &all {
        assert!(
            ran.iter()
                .any(|(section, lang)| s.section.starts_with(section) && s.lang == *lang),
            "a snippet no test runs: {s:?}"
        );
    }
    agent.stop().await;
}

/// Where Debian's Go packages keep their sources (the GOPATH entry that
/// holds grpc-go and protobuf).
const DEBIAN_GOCODE: &str = "/usr/share/gocode";

/// Fails clearly unless Debian's Go toolchain and grpc-go are installed.
fn require_go() {
    let go = Command::new("go").arg("version").output();
    assert!(
        go.is_ok_and(|o| o.status.success())
            && Path::new(DEBIAN_GOCODE)
                .join("src/google.golang.org/grpc")
                .is_dir(),
        "Go or Debian's grpc-go is missing: run `cargo xtask setup --for-tests` (it installs \
         golang-go, golang-google-grpc-dev, golang-google-protobuf-dev, \
         golang-github-golang-protobuf-1-5-dev, protoc-gen-go and protoc-gen-go-grpc)"
    );
}

/// A `go` command in GOPATH mode over Debian's packages (there is no module
/// proxy) and `DIR/gopath`, whose `src/pidmap/clients/go` is the
/// repository's `clients/go` (its import path, `pidmap/clients/go`).
fn go(dir: &Workdir, socket: &Path) -> Command {
    let gopath = dir.path().join("gopath");
    let package = gopath.join("src/pidmap/clients/go");
    if !package.exists() {
        std::fs::create_dir_all(package.parent().expect("a parent")).expect("create gopath/");
        std::os::unix::fs::symlink(repo_root().join("clients/go"), &package)
            .expect("link clients/go into gopath/");
    }
    let mut cmd = dir.command("go", socket);
    cmd.env("GO111MODULE", "off")
        .env("GOPATH", format!("{DEBIAN_GOCODE}:{}", gopath.display()))
        .env("GOFLAGS", "")
        .env("GOPROXY", "off");
    cmd
}

/// The Go package clients/go: its committed stubs are what generate.sh
/// makes of the proto now, it is gofmt'ed and passes go vet, and its tests
/// pass against a real agent (own process, a child's start and exit through
/// the cache, an unknown pid, Status; and the cache's re-sync against a
/// scripted agent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_go_client_matches_the_proto_and_passes_its_tests() {
    require_go();
    let agent = TestAgent::start(Config::default()).await;
    let socket = agent.socket().to_path_buf();
    let dir = Workdir::new();
    let package = repo_root().join("clients/go");

    let fresh = dir.path().join("generated");
    run(dir
        .command("sh", &socket)
        .arg("-e")
        .arg(package.join("generate.sh"))
        .arg(&fresh))
    .await;
    let names = |d: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(d)
            .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    };
    let generated = names(&fresh.join("pidmapv1"));
    assert_eq!(generated, ["pidmap.pb.go", "pidmap_grpc.pb.go"]);
    assert_eq!(names(&package.join("pidmapv1")), generated);
    for name in &generated {
        let committed =
            std::fs::read_to_string(package.join("pidmapv1").join(name)).expect("a committed stub");
        let now = std::fs::read_to_string(fresh.join("pidmapv1").join(name)).expect("a stub");
        assert!(
            committed == now,
            "clients/go/pidmapv1/{name} differs from what clients/go/generate.sh makes of \
             the proto: run it and commit the result"
        );
    }

    let unformatted = run(dir.command("gofmt", &socket).arg("-l").arg(&package)).await;
    assert!(unformatted.is_empty(), "not gofmt'ed:\n{unformatted}");
    run_within(
        go(&dir, &socket).args(["vet", "pidmap/clients/go", "pidmap/clients/go/pidmapv1"]),
        GO_BUILD,
    )
    .await;
    let (out, _) = run_within(
        go(&dir, &socket).args(["test", "-count=1", "-v", "pidmap/clients/go"]),
        GO_BUILD,
    )
    .await;
    for test in [
        "TestResolveAnswersThisProcess",
        "TestAnUnknownPidIsARecordNotAnError",
        "TestStatus",
        "TestTheCacheFollowsAChildFromStartToExit",
        "TestTheCacheResyncsAfterTheStreamEnds",
    ] {
        assert!(
            out.contains(&format!("--- PASS: {test} ")),
            "{test}:\n{out}"
        );
    }
    assert!(!out.contains("--- SKIP"), "nothing may skip here:\n{out}");
    agent.stop().await;
}

/// The standard-library Python package (clients/python) passes its own
/// unittest suite against a real agent: the client's endpoints and errors,
/// and its cache following a child process from its start to its exit,
/// answering misses with one request and re-syncing after a break. Run with
/// the virtualenv's Python (3.11); the package needs nothing beyond the
/// standard library.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_package_passes_its_tests_against_an_agent() {
    let agent = TestAgent::start(Config::default()).await;
    let socket = agent.socket().to_path_buf();
    let dir = Workdir::new();
    let tests = repo_root().join("clients/python/tests");
    // Each wait in the suite is bounded (15 s); the whole takes ~3 s idle.
    let (_, report) = run_within(
        dir.command(python_bin(), &socket)
            .args(["-m", "unittest", "discover", "-v", "-s"])
            .arg(&tests),
        Duration::from_secs(120),
    )
    .await;
    // Workdir::command sets PIDMAP_SOCKET: nothing may have been skipped.
    assert!(!report.contains("skipped"), "{report}");
    assert!(
        report.lines().any(|l| l
            .starts_with("test_a_child_is_followed_from_its_start_to_its_exit ")
            && l.ends_with(" ... ok")),
        "{report}"
    );
    assert!(report.trim_end().ends_with("OK"), "{report}");
    agent.stop().await;
}
