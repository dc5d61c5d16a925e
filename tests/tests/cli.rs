//! The `pidmap` command line against a running agent: every query
//! subcommand, table and JSON output, exit statuses. Run as root with
//! `--test-threads=1` (after `cargo build -p pidmap`; `cargo xtask test`
//! does both).

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Output, Stdio},
};

use pidmap::Config;
use pidmap_tests::{
    ChildGuard, TestAgent,
    containerd::{ContainerSpec, Containerd},
    pidmap_bin,
};
use serde_json::Value;

/// Every key `-o json` promises, always present.
const KEYS: [&str; 17] = [
    "pid",
    "start_time",
    "state",
    "source",
    "container_id",
    "runtime_namespace",
    "image",
    "pod_name",
    "pod_namespace",
    "pod_uid",
    "container_name",
    "cgroup_id",
    "cgroup_path",
    "ppid",
    "comm",
    "exit_status",
    "labels",
];

fn pidmap(agent: &TestAgent, args: &[&str]) -> Output {
    Command::new(pidmap_bin())
        .args(args)
        .env("PIDMAP_SOCKET", agent.socket())
        .env("RUST_LOG", "off")
        .output()
        .expect("run pidmap")
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_prints_tables_and_json_with_the_right_exit_status() {
    let agent = TestAgent::start(Config::default()).await;
    let me = std::process::id().to_string();

    let out = pidmap(&agent, &["resolve", &me, "1"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("PID") && lines[0].contains("STATE"));
    assert_eq!(lines.len(), 3);
    assert!(
        lines.iter().all(|l| l.chars().count() <= 80),
        "fits 80 columns:\n{text}"
    );
    assert!(lines[1].starts_with(&me) && lines[1].contains("running") && lines[1].contains("host"));

    let out = pidmap(&agent, &["resolve", "-o", "json", &me]);
    let records = json_lines(&out);
    assert_eq!(records.len(), 1);
    for key in KEYS {
        assert!(
            records[0].get(key).is_some(),
            "key {key} missing: {}",
            records[0]
        );
    }
    assert_eq!(records[0]["state"], "running");
    assert_eq!(records[0]["source"], "host");
    assert_eq!(records[0]["container_id"], Value::Null);
    assert_eq!(records[0]["pid"].as_u64(), me.parse().ok());

    // Unknown pid: 3. Bad pid: 2. Not a number: 2 (usage). No agent: 1.
    assert_eq!(
        pidmap(&agent, &["resolve", "4000000"]).status.code(),
        Some(3)
    );
    let out = pidmap(&agent, &["resolve", "-o", "json", "4000000"]);
    assert_eq!(json_lines(&out)[0]["state"], "unknown");
    assert_eq!(pidmap(&agent, &["resolve", "0"]).status.code(), Some(2));
    assert_eq!(pidmap(&agent, &["resolve", "abc"]).status.code(), Some(2));
    let out = Command::new(pidmap_bin())
        .args(["resolve", "--socket", "/nonexistent/pidmap.sock", "1"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/pidmap.sock"),
        "names the socket: {err}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_whoami_outputs() {
    let agent = TestAgent::start(Config::default()).await;
    let out = pidmap(&agent, &["status", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let s = &json_lines(&out)[0];
    for key in [
        "ready",
        "processes",
        "containers",
        "events_received",
        "events_lost",
        "containerd_connected",
    ] {
        assert!(s.get(key).is_some(), "status key {key}: {s}");
    }
    assert_eq!(s["ready"], true);
    let out = pidmap(&agent, &["status"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ready:"));

    let out = pidmap(&agent, &["whoami", "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let me = &json_lines(&out)[0];
    // Its exec was in the ring buffer a moment ago: WhoAmI applies it first.
    assert_eq!(me["comm"], "pidmap", "{me}");
    assert_eq!(me["state"], "running");
    assert_eq!(me["source"], "host");
    assert_eq!(me["ppid"].as_u64(), Some(u64::from(std::process::id())));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_ps_and_watch_show_containers() {
    let ctrd = Containerd::start();
    let c = ctrd.run(
        ContainerSpec::new("clitest")
            .namespace("k8s.io")
            .label("io.kubernetes.pod.name", "web-0")
            .label("io.kubernetes.pod.namespace", "shop"),
    );
    let init = c.init_pid();
    let agent = TestAgent::start_with_containerd(&ctrd).await;

    let out = pidmap(&agent, &["ls"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("clitest") && text.contains("shop/web-0"),
        "{text}"
    );
    assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
    let out = pidmap(&agent, &["ls", "-o", "json", "-n", "k8s.io"]);
    let list = json_lines(&out);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["container_id"], "clitest");
    assert_eq!(
        pidmap(&agent, &["ls", "-o", "json", "-n", "nope"])
            .stdout
            .len(),
        0
    );

    let out = pidmap(&agent, &["ps", "-o", "json", "clitest"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let procs = json_lines(&out);
    assert!(
        procs
            .iter()
            .any(|p| p["pid"].as_u64() == Some(u64::from(init))),
        "init {init} in {procs:?}"
    );
    assert!(procs.iter().all(|p| p["container_id"] == "clitest"));
    assert_eq!(pidmap(&agent, &["ps", "nope"]).status.code(), Some(2));

    let out = pidmap(&agent, &["resolve", "-o", "json", &init.to_string()]);
    let r = &json_lines(&out)[0];
    assert_eq!(r["source"], "containerd");
    assert_eq!(r["runtime_namespace"], "k8s.io");
    assert_eq!(r["pod_name"], "web-0");
    assert_eq!(r["labels"]["io.kubernetes.pod.namespace"], "shop");

    // The same facts under OpenTelemetry's names.
    let out = pidmap(&agent, &["resolve", "-o", "otel", &init.to_string()]);
    let attrs = &json_lines(&out)[0];
    assert_eq!(attrs["process.pid"].as_u64(), Some(u64::from(init)));
    assert_eq!(attrs["container.id"], "clitest");
    assert_eq!(attrs["container.runtime"], "containerd");
    assert_eq!(attrs["k8s.pod.name"], "web-0");
    assert_eq!(attrs["k8s.namespace.name"], "shop");
    assert!(attrs.get("pod_name").is_none(), "{attrs}");
    let out = pidmap(&agent, &["ls", "-o", "otel", "-n", "k8s.io"]);
    assert_eq!(json_lines(&out)[0]["container.id"], "clitest");
    let out = pidmap(&agent, &["status", "-o", "otel"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "no OpenTelemetry shape for counters"
    );

    // watch: the snapshot, its end, then a change as it happens.
    let mut watch = ChildGuard::spawn(
        Command::new(pidmap_bin())
            .args(["watch", "-o", "json"])
            .env("PIDMAP_SOCKET", agent.socket())
            .stdout(Stdio::piped()),
    );
    let mut lines = BufReader::new(watch.0.stdout.take().expect("stdout")).lines();
    let mut saw_container = false;
    for line in lines.by_ref() {
        let v: Value = serde_json::from_str(&line.expect("line")).expect("json");
        if v["event"] == "container" && v["container"]["container_id"] == "clitest" {
            saw_container = true;
        }
        if v["event"] == "snapshot_done" {
            break;
        }
    }
    assert!(saw_container, "snapshot lists the container");
    let exec_pid = c.exec("w1", ["/bin/sleep", "1000"]);
    let seen = lines.map_while(Result::ok).any(|line| {
        let v: Value = serde_json::from_str(&line).unwrap_or_default();
        v["event"] == "process_changed"
            && v["record"]["pid"].as_u64() == Some(u64::from(exec_pid))
            && v["record"]["container_id"] == "clitest"
    });
    assert!(seen, "watch never showed exec {exec_pid}");
    drop(watch);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_from_inside_a_real_container_names_that_container() {
    let ctrd = Containerd::start();
    let agent = TestAgent::start_with_containerd(&ctrd).await;
    // The host's pidmap binary with the host's libc, and the agent's socket
    // directory, mounted into a busybox container.
    let socket_dir = agent.socket().parent().expect("socket dir").to_path_buf();
    let c = ctrd.run(
        ContainerSpec::new("asker")
            .label("io.kubernetes.pod.name", "asker-0")
            .bind_ro("/lib", "/lib")
            .bind_ro("/lib64", "/lib64")
            .bind_ro(pidmap_bin(), "/usr/local/bin/pidmap")
            .bind_ro(&socket_dir, "/run/pidmap"),
    );
    // A shell exec'd into the container runs the query, then stays, so
    // its pid can be learned and the query's parent checked.
    let exec_pid = c.exec(
        "whoami",
        [
            "/bin/sh",
            "-c",
            "/usr/local/bin/pidmap whoami -o json --socket /run/pidmap/pidmap.sock; exec /bin/sleep 1000",
        ],
    );
    let mut answer = String::new();
    assert!(
        pidmap_tests::wait_until(std::time::Duration::from_secs(15), || {
            answer = c.exec_log("whoami");
            answer.contains('}')
        })
        .await,
        "no answer from whoami inside the container (exec pid {exec_pid}): {answer:?}"
    );
    let line = answer
        .lines()
        .find(|l| l.starts_with('{'))
        .expect("a JSON line");
    let me: Value = serde_json::from_str(line).expect("JSON");
    assert_eq!(me["ppid"].as_u64(), Some(u64::from(exec_pid)), "{me}");
    assert_eq!(me["comm"], "pidmap", "{me}");
    assert_eq!(me["source"], "containerd", "{me}");
    assert_eq!(me["container_id"], "asker");
    assert_eq!(me["runtime_namespace"], "default");
    assert_eq!(me["pod_name"], "asker-0");
    agent.stop().await;
}
