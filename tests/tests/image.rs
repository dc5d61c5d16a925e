//! pidmap itself as a container, configured like the DaemonSet: the image
//! that `cargo xtask image` builds (same code, `oci_image::pidmap`, here from
//! the debug binary), imported into a private containerd and run with the
//! host's PID namespace, a short capability list instead of `privileged`,
//! containerd's default seccomp profile (kubelet's `RuntimeDefault`, which the
//! DaemonSet asks for), read-only /sys/kernel/btf and /sys/fs/cgroup,
//! containerd's socket dir and a host dir for the API socket, and its own
//! cgroup namespace (what containerd gives pods on cgroup v2 nodes, where the
//! agent sees other cgroups as `/../..` paths). From the host, the CLI must
//! then resolve processes of other containers, started before and after the
//! agent, through that socket, with their host cgroup paths.
//!
//! Run as root with `--test-threads=1` (after `cargo build -p pidmap`;
//! `cargo xtask test` does both).

use std::{
    fs,
    path::Path,
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use pidmap_tests::{
    cgroup2_id_of, cgroup2_path_of,
    containerd::{ContainerSpec, Containerd, RunningContainer},
    pidmap_bin, proc_status_field, require_root,
};
use serde_json::Value;

/// The capabilities the DaemonSet grants (everything else is dropped).
const CAPS: [(&str, u32); 5] = [
    ("CAP_CHOWN", 0),
    ("CAP_DAC_READ_SEARCH", 2),
    ("CAP_SYS_PTRACE", 19),
    ("CAP_PERFMON", 38),
    ("CAP_BPF", 39),
];
/// containerd 1.6's default capabilities (`ctr run` and CRI alike), CHOWN
/// aside: dropped, so the agent has exactly [`CAPS`].
const DEFAULT_CAPS_TO_DROP: [&str; 13] = [
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];
const NAMESPACE: &str = "k8s.io";
const AGENT_ID: &str = "pidmap-agent";
const WORKLOAD_ID: &str = "workload";
const EARLY_ID: &str = "early-workload";

/// Capability set `field` (e.g. `CapEff`) of `pid`, from /proc/PID/status.
fn cap_mask(pid: u32, field: &str) -> u64 {
    let mask =
        proc_status_field(pid, field).unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    u64::from_str_radix(&mask, 16).expect("hex capability mask")
}

/// `pidmap ARGS… -o json` against `socket`.
fn pidmap(socket: &Path, args: &[&str]) -> Output {
    Command::new(pidmap_bin())
        .args(args)
        .args(["-o", "json"])
        .env("PIDMAP_SOCKET", socket)
        .env("RUST_LOG", "off")
        .output()
        .expect("run pidmap")
}

fn json(out: &Output) -> Option<Value> {
    serde_json::from_slice(out.stdout.trim_ascii()).ok()
}

/// Polls `probe` every 100 ms for at most `timeout`; panics with `what` and
/// the agent's log if it never returns `Some`, or as soon as the agent's task
/// is gone.
fn poll<T>(
    what: &str,
    timeout: Duration,
    agent: &RunningContainer,
    log: &Path,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        let running = matches!(agent.task(), Some((_, status)) if status == "RUNNING");
        let log_text = || fs::read_to_string(log).unwrap_or_default();
        assert!(
            running,
            "the agent container stopped while waiting for {what}; its log:\n{}",
            log_text()
        );
        assert!(
            Instant::now() < deadline,
            "{what} not after {timeout:?}; agent log:\n{}",
            log_text()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// The seccomp profile in container `id`'s runtime spec.
fn seccomp_profile(ctrd: &Containerd, id: &str) -> Value {
    let info = ctrd.ctr_ok(["-n", NAMESPACE, "containers", "info", id]);
    let info: Value = serde_json::from_str(&info).expect("ctr containers info is JSON");
    info["Spec"]["linux"]["seccomp"].clone()
}

/// Whether `profile` has a rule allowing `syscall` with no argument conditions.
fn allowed_unconditionally(profile: &Value, syscall: &str) -> bool {
    let rules = profile["syscalls"].as_array().into_iter().flatten();
    rules.into_iter().any(|rule| {
        rule["action"] == "SCMP_ACT_ALLOW"
            && rule["args"].as_array().is_none_or(Vec::is_empty)
            && rule["names"]
                .as_array()
                .is_some_and(|names| names.iter().any(|n| n == syscall))
    })
}

#[test]
fn the_agent_image_runs_like_the_daemonset_and_resolves_containers() {
    require_root();
    let started = Instant::now();
    // Declared before the fixture: dropped after it, once every container is gone.
    let work = tempfile::Builder::new()
        .prefix("pidmap-image-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let api_dir = work.path().join("run-pidmap");
    fs::create_dir(&api_dir).expect("mkdir run-pidmap");
    let socket = api_dir.join("pidmap.sock");
    let log = work.path().join("agent.log");

    // The image, from the same recipe and in the same multi-platform form (an image
    // index, from which containerd picks this node's platform) as `cargo xtask image`.
    let binary = pidmap_bin();
    let libraries = oci_image::pidmap::shared_libraries(&binary).expect("ldd pidmap");
    let image = oci_image::pidmap::image_for(oci_image::oci_arch(), &binary, &libraries, "e2e", 0)
        .expect("image");
    let archive = work.path().join("pidmap-image.tar");
    let written = oci_image::write_index_archive(&[image], &archive).expect("write archive");
    let built = started.elapsed();

    let ctrd = Containerd::start();
    let imported = ctrd.ctr_ok([
        "-n".as_ref(),
        NAMESPACE.as_ref(),
        "images".as_ref(),
        "import".as_ref(),
        archive.as_os_str(),
    ]);
    let images = ctrd.ctr_ok(["-n", NAMESPACE, "images", "ls", "-q"]);
    assert!(
        images.lines().any(|l| l == written.reference),
        "{} not imported ({imported}); images: {images}",
        written.reference
    );
    let imported_at = started.elapsed();
    // Running before the agent starts: it must come from the /proc seed.
    let early = ctrd.run(ContainerSpec::new(EARLY_ID).namespace(NAMESPACE));

    // Like the DaemonSet: hostPID (here: join our PID namespace, which is the
    // host's; ctr 1.6 has no --pid-host), exactly CAPS, not privileged.
    // Capabilities outside our bounding set cannot be granted by runc:
    // leave them out (none of CAPS is missing on the machines seen so far).
    let bounding = cap_mask(std::process::id(), "CapBnd");
    let (caps, missing): (Vec<_>, Vec<_>) =
        CAPS.iter().partition(|(_, bit)| bounding & (1 << bit) != 0);
    for (name, _) in &missing {
        eprintln!("note: {name} is not in this host's bounding set: not granted");
    }
    let mut run_args: Vec<String> = vec![
        // containerd's default seccomp profile, as for kubelet's RuntimeDefault: it
        // allows bpf() and perf_event_open() only to holders of CAP_BPF and
        // CAP_PERFMON (or CAP_SYS_ADMIN), and is computed from the final
        // capabilities.
        "--seccomp".into(),
        "--with-ns".into(),
        format!("pid:/proc/{}/ns/pid", std::process::id()),
        // No path: a new cgroup namespace, rooted at the container's cgroup.
        "--with-ns".into(),
        "cgroup:".into(),
    ];
    for (name, _) in &caps {
        run_args.extend(["--cap-add".into(), (*name).into()]);
    }
    for name in DEFAULT_CAPS_TO_DROP {
        run_args.extend(["--cap-drop".into(), name.into()]);
    }
    let mounts = [
        ("/sys/kernel/btf".into(), "/sys/kernel/btf", "rbind:ro"),
        ("/sys/fs/cgroup".into(), "/sys/fs/cgroup", "rbind:ro"),
        // containerd's socket dir (the fixture's socket is containerd.sock,
        // the agent's default name). Not recursive: it also holds rootfs mounts.
        (ctrd.dir().to_path_buf(), "/run/containerd", "bind:rw"),
        (api_dir.clone(), "/run/pidmap", "rbind:rw"),
    ];
    for (src, dst, options) in &mounts {
        run_args.extend([
            "--mount".into(),
            format!(
                "type=bind,src={},dst={dst},options={options}",
                src.display()
            ),
        ]);
    }
    assert_eq!(
        ctrd.socket().file_name().and_then(|n| n.to_str()),
        Some("containerd.sock")
    );
    let agent = ctrd.run(
        ContainerSpec::new(AGENT_ID)
            .namespace(NAMESPACE)
            .image(&written.reference)
            .command(Vec::<String>::new()) // The image's Entrypoint + Cmd: `pidmap agent`.
            .run_args(run_args)
            .log_file(&log),
    );

    let status = poll(
        "agent ready and connected to containerd",
        Duration::from_secs(60),
        &agent,
        &log,
        || {
            let status = json(&pidmap(&socket, &["status"]))?;
            (status["ready"] == true && status["containerd_connected"] == true).then_some(status)
        },
    );
    let ready_at = started.elapsed();

    // The agent runs in the host PID namespace with exactly the granted caps.
    let agent_pid = agent.init_pid();
    assert_eq!(
        fs::read_link(format!("/proc/{agent_pid}/ns/pid")).expect("agent pid ns"),
        fs::read_link("/proc/self/ns/pid").expect("our pid ns"),
        "the agent is not in the host PID namespace"
    );
    assert_ne!(
        fs::read_link(format!("/proc/{agent_pid}/ns/cgroup")).expect("agent cgroup ns"),
        fs::read_link("/proc/self/ns/cgroup").expect("our cgroup ns"),
        "the agent is not in a cgroup namespace of its own"
    );
    let want: u64 = caps.iter().map(|(_, bit)| 1u64 << bit).sum();
    assert_eq!(
        cap_mask(agent_pid, "CapEff"),
        want,
        "the agent's effective capabilities"
    );
    // ... and under containerd's default seccomp profile (a filter, mode 2).
    assert_eq!(
        proc_status_field(agent_pid, "Seccomp").as_deref(),
        Some("2"),
        "the agent runs without a seccomp filter"
    );
    let seccomp = seccomp_profile(&ctrd, AGENT_ID);
    assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ERRNO", "{seccomp}");
    for syscall in ["bpf", "perf_event_open"] {
        assert!(
            allowed_unconditionally(&seccomp, syscall),
            "containerd's profile does not allow {syscall} for the agent's capabilities: {seccomp}"
        );
    }

    // Another container's process resolves, through the agent's socket.
    let workload = ctrd.run(ContainerSpec::new(WORKLOAD_ID).namespace(NAMESPACE));
    let pid = workload.init_pid().to_string();
    let answer = poll(
        "the workload resolved to its container",
        Duration::from_secs(15),
        &agent,
        &log,
        || {
            let out = pidmap(&socket, &["resolve", &pid]);
            let answer = json(&out)?;
            (answer["source"] == "containerd").then_some(answer)
        },
    );
    assert_eq!(answer["container_id"], WORKLOAD_ID, "{answer}");
    assert_eq!(answer["runtime_namespace"], NAMESPACE, "{answer}");
    assert_eq!(answer["state"], "running", "{answer}");
    assert_eq!(
        answer["cgroup_path"],
        cgroup2_path_of(workload.init_pid()).unwrap(),
        "{answer}"
    );
    // The container that was there before the agent, with its host path.
    let early_pid = early.init_pid();
    let answer = json(&pidmap(&socket, &["resolve", &early_pid.to_string()])).expect("early");
    assert_eq!(answer["source"], "containerd", "{answer}");
    assert_eq!(answer["container_id"], EARLY_ID, "{answer}");
    assert_eq!(
        answer["cgroup_path"],
        cgroup2_path_of(early_pid).unwrap(),
        "{answer}"
    );
    assert_eq!(
        answer["cgroup_id"],
        cgroup2_id_of(early_pid).unwrap(),
        "{answer}"
    );
    // And the agent finds itself, with its image.
    let me = json(&pidmap(&socket, &["resolve", &agent_pid.to_string()])).expect("self");
    assert_eq!(me["container_id"], AGENT_ID, "{me}");
    assert_eq!(me["image"], written.reference.as_str(), "{me}");
    assert_eq!(
        me["cgroup_path"],
        cgroup2_path_of(agent_pid).unwrap(),
        "{me}"
    );
    let log_text = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log_text.contains("private cgroup namespace"),
        "the agent did not place its cgroup namespace; log:\n{log_text}"
    );
    let resolved_at = started.elapsed();

    // SIGTERM: the agent stops cleanly; then nothing of it is left.
    workload.delete();
    early.delete();
    agent.kill("SIGTERM");
    agent.wait_exited(Duration::from_secs(10));
    let log_text = fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        agent.delete(),
        Some(0),
        "agent exit status; log:\n{log_text}"
    );
    drop(ctrd);
    eprintln!(
        "image test: {} ({} bytes, {}); archive built {built:?}, imported {imported_at:?}, \
         ready {ready_at:?}, resolved {resolved_at:?}, all {:?}; status {status}",
        written.reference,
        written.archive_bytes,
        written.manifest_digest,
        started.elapsed()
    );
    eprintln!("agent log:\n{log_text}");
}
