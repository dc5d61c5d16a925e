//! Self-test of the private-containerd fixture: it runs real containers
//! (plain rootfs and an imported image), survives daemon restarts and
//! crashes, and leaves nothing behind — also when the test panics.
//!
//! Run as root with `--test-threads=1`.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use pidmap_tests::{
    cgroup2_path_of, cgroup2_root,
    containerd::{ContainerSpec, Containerd, process_alive},
    proc_pids, require_root,
};

/// What must be gone once the fixture is dropped.
struct Leftovers {
    dir: PathBuf,
    pids: Vec<u32>,
    cgroups: Vec<PathBuf>,
}

impl Leftovers {
    /// Remembers `ctrd`'s dir and the cgroup dirs (under cgroup2) that do
    /// not exist yet among `ancestors` of containers about to run.
    fn new(ctrd: &Containerd, ancestors: &[&str]) -> Self {
        let unified = cgroup2_root().expect("cgroup2 is mounted");
        let cgroups = ancestors
            .iter()
            .map(|p| unified.join(p.trim_start_matches('/')))
            .filter(|p| !p.exists())
            .collect();
        Self {
            dir: ctrd.dir().to_path_buf(),
            pids: Vec::new(),
            cgroups,
        }
    }

    fn assert_gone(&self) {
        assert!(!self.dir.exists(), "{} left behind", self.dir.display());
        for pid in &self.pids {
            assert!(!process_alive(*pid), "container process {pid} still alive");
        }
        for dir in &self.cgroups {
            assert!(!dir.exists(), "cgroup {} left behind", dir.display());
        }
        assert_eq!(
            processes_mentioning(&self.dir),
            Vec::<u32>::new(),
            "shims left behind"
        );
    }
}

/// Live processes whose command line mentions `dir` (shims name our socket).
fn processes_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let mut pids = Vec::new();
    for pid in proc_pids().expect("read /proc") {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.windows(needle.len()).any(|w| w == needle) && process_alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn runs_containers_survives_restarts_and_cleans_up() {
    require_root();
    let pod_uid = format!("f1c7e0de-{:08}", std::process::id());
    let started = Instant::now();
    let ctrd = Containerd::start();
    eprintln!("containerd ready in {:?}", started.elapsed());
    let pod = format!("/kubepods/besteffort/pod{pod_uid}");
    let mut left = Leftovers::new(
        &ctrd,
        &[
            &pod,
            "/kubepods/besteffort",
            "/kubepods",
            "/default",
            "/k8s.io",
        ],
    );

    // A long-running, kubelet-style container.
    let started = Instant::now();
    let web = ctrd.run(
        ContainerSpec::new("fixture-web")
            .namespace("k8s.io")
            .label("io.kubernetes.pod.name", "web-0")
            .label("io.kubernetes.pod.uid", &pod_uid)
            .kubepods("besteffort", &pod_uid),
    );
    eprintln!("container running in {:?}", started.elapsed());
    let init = web.init_pid();
    left.pids.push(init);
    assert!(process_alive(init), "init pid {init} is not alive");
    assert_eq!(web.cgroup_path(), format!("{pod}/fixture-web"));
    assert_eq!(
        cgroup2_path_of(init).expect("init cgroup"),
        web.cgroup_path()
    );
    let info = web.info();
    assert_eq!(info["Labels"]["io.kubernetes.pod.name"], "web-0");
    assert_eq!(info["Image"], "", "ctr run --rootfs records no image");

    // An exec: its PID is one of the task's, and its output is logged.
    let exec = web.exec(
        "probe",
        ["/bin/sh", "-c", "echo ready; exec /bin/sleep 1000"],
    );
    left.pids.push(exec);
    assert_ne!(exec, init);
    let pids = web.pids();
    assert!(pids.contains(&exec) && pids.contains(&init), "{pids:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while web.exec_log("probe").trim() != "ready" {
        assert!(
            Instant::now() < deadline,
            "exec log: {:?}",
            web.exec_log("probe")
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // A short-lived container whose task exits by itself.
    let short = ctrd.run(ContainerSpec::new("fixture-exit").command(["/bin/sh", "-c", "exit 3"]));
    short.wait_exited(Duration::from_secs(10));
    assert_eq!(
        short.task().map(|(_, status)| status).as_deref(),
        Some("STOPPED")
    );
    assert_eq!(short.delete(), Some(3));

    // A container killed by a signal.
    let doomed = ctrd.run(ContainerSpec::new("fixture-doomed"));
    left.pids.push(doomed.init_pid());
    doomed.kill("SIGKILL");
    doomed.wait_exited(Duration::from_secs(10));
    assert_eq!(doomed.delete_task(), Some(137));
    assert_eq!(doomed.task(), None);

    // A container from an imported OCI image records the image name.
    let image = "localhost/busybox:fixture";
    let started = Instant::now();
    ctrd.import_busybox_image("k8s.io", image);
    eprintln!("image imported in {:?}", started.elapsed());
    let started = Instant::now();
    let from_image = ctrd.run(
        ContainerSpec::new("fixture-image")
            .namespace("k8s.io")
            .image(image),
    );
    eprintln!("container from image running in {:?}", started.elapsed());
    left.pids.push(from_image.init_pid());
    assert_eq!(from_image.info()["Image"], image);
    assert_eq!(
        cgroup2_path_of(from_image.init_pid()).expect("cgroup"),
        "/k8s.io/fixture-image"
    );

    // The task outlives a clean stop and a crash of the daemon.
    let daemon = ctrd.pid().expect("daemon runs");
    let started = Instant::now();
    ctrd.stop();
    eprintln!("containerd stopped in {:?}", started.elapsed());
    assert_eq!(ctrd.pid(), None);
    assert!(!process_alive(daemon) && process_alive(init) && process_alive(exec));
    ctrd.restart();
    assert_eq!(web.task(), Some((init, "RUNNING".to_owned())));
    ctrd.kill();
    assert!(process_alive(init));
    ctrd.restart();
    let tasks = ctrd.ctr_ok(["-n", "k8s.io", "tasks", "ls"]);
    assert!(
        tasks.contains("fixture-web") && tasks.contains(&init.to_string()),
        "{tasks}"
    );
    assert!(web.pids().contains(&exec));

    drop(ctrd);
    left.assert_gone();
}

#[test]
fn cleans_up_after_a_panic_with_the_daemon_down() {
    require_root();
    let mut left = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ctrd = Containerd::start();
        let mut l = Leftovers::new(&ctrd, &["/crashing", "/crashing/fixture-crash"]);
        let c = ctrd.run(ContainerSpec::new("fixture-crash").namespace("crashing"));
        l.pids.push(c.init_pid());
        c.exec("extra", ["/bin/sleep", "1000"]);
        l.pids.extend(c.pids());
        left = Some(l);
        ctrd.kill();
        panic!("test failure while containerd is down");
    }));
    assert!(result.is_err());
    left.expect("the test got as far as the panic")
        .assert_gone();
}

#[test]
fn falls_back_to_killing_shims_when_the_daemon_cannot_come_back() {
    require_root();
    let mut left = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ctrd = Containerd::start();
        let mut l = Leftovers::new(&ctrd, &["/orphans", "/orphans/plain", "/orphans/imaged"]);
        ctrd.import_busybox_image("orphans", "localhost/busybox:orphan");
        let plain = ctrd.run(ContainerSpec::new("plain").namespace("orphans"));
        let imaged = ctrd.run(
            ContainerSpec::new("imaged")
                .namespace("orphans")
                .image("localhost/busybox:orphan"),
        );
        l.pids.extend(plain.pids().into_iter().chain(imaged.pids()));
        left = Some(l);
        ctrd.kill();
        // Without its config the daemon cannot restart, so drop has to
        // clean up behind its back, and says so by panicking.
        fs::remove_file(ctrd.dir().join("config.toml")).expect("remove config.toml");
    }));
    let err = result.expect_err("drop reports the leaks it cleaned up");
    let msg = err.downcast_ref::<String>().map_or("", String::as_str);
    assert!(msg.contains("shim") && msg.contains("killed"), "{msg}");
    left.expect("the test got as far as the kill").assert_gone();
}
