//! Fields that must equal the truth at every moment (issue 9): comm after
//! renames, ppid after re-parenting, containers known only from cgroup
//! paths, container lifecycle, readiness with containerd, and a CLI that
//! behaves on a closed pipe. Through the API, as a client sees it. Run as
//! root with `--test-threads=1`.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use pidmap::{
    Config,
    api::proto::{self, pidmap_client::PidmapClient, watch_event::Event},
    testing::resolver::{Source, resolve},
};
use pidmap_tests::{
    CgroupGuard, ChildGuard, PidGuard, TestAgent, cgroup2_path_of,
    containerd::{ContainerSpec, Containerd},
    pidmap_bin, proc_comm, proc_ppid, proc_start_time, spawn_until_ready, wait_until,
};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

/// Generous bound for things that must happen; never a timing check.
const EVENTUALLY: Duration = Duration::from_secs(10);

async fn client(agent: &TestAgent) -> PidmapClient<Channel> {
    pidmap::cli::client::connect(agent.socket())
        .await
        .unwrap_or_else(|f| panic!("{}", f.message))
}

/// Pidmap's answer for exactly the process `pid` is now.
async fn record(c: &mut PidmapClient<Channel>, pid: u32) -> proto::ProcessRecord {
    c.resolve(proto::ResolveRequest {
        pid: pid.into(),
        start_time: proc_start_time(pid),
    })
    .await
    .expect("resolve")
    .into_inner()
}

/// Polls until pidmap's record of `pid` satisfies `ok`; returns it.
async fn until(
    c: &mut PidmapClient<Channel>,
    pid: u32,
    what: &str,
    ok: impl Fn(&proto::ProcessRecord) -> bool,
) -> proto::ProcessRecord {
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        let r = record(c, pid).await;
        if ok(&r) {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: pid {pid} never got there: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn python(script: &str) -> Command {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comm_follows_renames_of_the_thread_group_leader() {
    let agent = TestAgent::start(Config::default()).await;
    let mut c = client(&agent).await;

    // A write to /proc/PID/comm (what busybox-style tools and shells do).
    let (shell, _) = spawn_until_ready(Command::new("sh").args([
        "-c",
        "printf renamed > /proc/$$/comm; echo ready; read -r _",
    ]));
    let r = record(&mut c, shell.pid()).await;
    assert_eq!(proc_comm(shell.pid()).as_deref(), Some("renamed"));
    assert_eq!(r.comm.as_deref(), Some("renamed"), "{r:?}");

    // prctl(PR_SET_NAME) by the leader, then by another thread of the same
    // process: /proc/PID/comm shows the leader's, and so must pidmap.
    let (py, _) = spawn_until_ready(&mut python(
        "import ctypes, sys, threading\n\
         libc = ctypes.CDLL(None)\n\
         libc.prctl(15, b'by-prctl', 0, 0, 0)\n\
         t = threading.Thread(target=lambda: libc.prctl(15, b'a-thread', 0, 0, 0))\n\
         t.start(); t.join()\n\
         print('ready', flush=True)\n\
         sys.stdin.readline()\n",
    ));
    let r = record(&mut c, py.pid()).await;
    assert_eq!(proc_comm(py.pid()).as_deref(), Some("by-prctl"));
    assert_eq!(r.comm, proc_comm(py.pid()), "{r:?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_get_their_reaper_as_parent() {
    let agent = TestAgent::start(Config::default()).await;
    let mut c = client(&agent).await;

    // Orphaned to whatever reaps for this test (init, or a subreaper above
    // us): the truth is /proc's.
    let (mut sh, line) = spawn_until_ready(
        Command::new("sh").args(["-c", "sleep 1000 </dev/null >/dev/null 2>&1 & echo $!"]),
    );
    let orphan = PidGuard::new(line.parse().expect("the sleep's pid"));
    let sh_pid = sh.pid();
    sh.wait();
    assert!(
        wait_until(EVENTUALLY, || proc_ppid(orphan.pid)
            .is_some_and(|p| p != sh_pid))
        .await
    );
    let truth = proc_ppid(orphan.pid);
    until(&mut c, orphan.pid, "orphan of init", |r| r.ppid == truth).await;

    // Under a child subreaper (as containerd shims are).
    let (reaper, line) = spawn_until_ready(&mut python(
        "import ctypes, subprocess, sys\n\
         ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)\n\
         out = subprocess.run(['sh', '-c', 'sleep 1000 </dev/null >/dev/null 2>&1 & echo $!'],\n\
                              capture_output=True, text=True).stdout\n\
         print(out.strip(), flush=True)\n\
         sys.stdin.readline()\n",
    ));
    let orphan = PidGuard::new(line.parse().expect("the sleep's pid"));
    assert_eq!(proc_ppid(orphan.pid), Some(reaper.pid()));
    until(&mut c, orphan.pid, "orphan of a subreaper", |r| {
        r.ppid == Some(reaper.pid())
    })
    .await;
    agent.stop().await;
}

/// Issue 16, row 3: 400 orphans of a subreaper made beside four busy loops
/// and an exec storm. Each one's ppid must reach the subreaper, however long
/// the loaded node makes the re-parenting or its look-up wait: the tracker
/// never gives an orphan up. Prints how long the answers lagged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_of_a_subreaper_under_load_all_get_their_reaper() {
    const ORPHANS: usize = 400;
    let agent = TestAgent::start(Config::default()).await;
    let mut c = client(&agent).await;
    let busy = pidmap_tests::load::BusyLoops::start(4);
    let storm = pidmap_tests::load::Storm::start(2, u64::MAX);
    // The subreaper forks ORPHANS children that each start a sleep and
    // exit at once; it prints each sleep's pid once its parent is gone.
    let (reaper, first) = spawn_until_ready(&mut python(&format!(
        "import ctypes, os, sys, time\n\
         ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)\n\
         print('ready', flush=True)\n\
         for _ in range({ORPHANS}):\n\
         \x20   r, w = os.pipe()\n\
         \x20   mid = os.fork()\n\
         \x20   if mid == 0:\n\
         \x20       pid = os.fork()\n\
         \x20       if pid == 0:\n\
         \x20           os.execv('/bin/sleep', ['sleep', '1000'])\n\
         \x20       os.write(w, str(pid).encode())\n\
         \x20       os._exit(0)\n\
         \x20   os.close(w)\n\
         \x20   pid = int(os.read(r, 32))\n\
         \x20   os.close(r)\n\
         \x20   os.waitpid(mid, 0)\n\
         \x20   print(pid, flush=True)\n\
         sys.stdin.readline()\n"
    )));
    assert_eq!(first, "ready");
    let reaper_pid = reaper.pid();
    let mut reader = std::io::BufReader::new(
        // spawn_until_ready read the first line only.
        reaper_stdout(&reaper),
    );
    let mut orphans: Vec<(PidGuard, std::time::Instant)> = Vec::new();
    let mut lags = Vec::new();
    let mut pending: Vec<usize> = Vec::new();
    let started = std::time::Instant::now();
    let deadline = started + Duration::from_secs(120);
    while (orphans.len() < ORPHANS || !pending.is_empty()) && std::time::Instant::now() < deadline {
        // Take the orphans made so far.
        while orphans.len() < ORPHANS && reader_has_line(&reader) {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut reader, &mut line).expect("an orphan's pid");
            let pid: u32 = line.trim().parse().expect("a pid");
            pending.push(orphans.len());
            orphans.push((PidGuard::new(pid), std::time::Instant::now()));
        }
        if pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let records = c
            .resolve_batch(proto::ResolveBatchRequest {
                requests: pending
                    .iter()
                    .map(|&i| proto::ResolveRequest {
                        pid: orphans[i].0.pid.into(),
                        start_time: None,
                    })
                    .collect(),
            })
            .await
            .expect("resolve the orphans")
            .into_inner()
            .records;
        let now = std::time::Instant::now();
        let mut still = Vec::new();
        for (&i, r) in pending.iter().zip(&records) {
            if r.ppid == Some(reaper_pid) {
                lags.push(now.duration_since(orphans[i].1));
            } else {
                still.push(i);
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let spawned = storm.finish();
    drop(busy);
    lags.sort();
    let at =
        |q: f64| lags.get(((lags.len() as f64 * q) as usize).min(lags.len().saturating_sub(1)));
    println!(
        "{} orphans of a subreaper beside 4 busy loops and an exec storm ({spawned} processes): \
         ppid right after p50 {:?}, p99 {:?}, max {:?} (from when the test saw the orphan, \
         polling every 5 ms); {} never right",
        lags.len(),
        at(0.5),
        at(0.99),
        lags.last(),
        pending.len()
    );
    assert!(
        pending.is_empty() && orphans.len() == ORPHANS,
        "{} of {} orphans kept their dead parent",
        pending.len(),
        orphans.len()
    );
    drop(reaper);
    agent.stop().await;
}

/// The stdout of a child made by `spawn_until_ready` (its first line read).
fn reaper_stdout(child: &ChildGuard) -> std::fs::File {
    use std::os::fd::{AsFd as _, FromRawFd as _, IntoRawFd as _};
    let fd = child
        .0
        .stdout
        .as_ref()
        .expect("stdout")
        .as_fd()
        .try_clone_to_owned()
        .expect("dup stdout");
    // SAFETY: a fresh descriptor we own.
    unsafe { std::fs::File::from_raw_fd(fd.into_raw_fd()) }
}

/// Whether a line can be read without blocking.
fn reader_has_line(reader: &std::io::BufReader<std::fs::File>) -> bool {
    if reader.buffer().contains(&b'\n') {
        return true;
    }
    use std::os::fd::AsRawFd as _;
    let mut fds = [libc::pollfd {
        fd: reader.get_ref().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: one valid pollfd; no wait.
    unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) > 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_known_from_cgroup_paths_are_listed_followed_and_forgotten() {
    let agent = TestAgent::start(Config {
        exit_grace_seconds: 1,
        ..Config::default()
    })
    .await;
    let mut c = client(&agent).await;
    let mut watch = c
        .watch(proto::WatchRequest {})
        .await
        .expect("watch")
        .into_inner();
    // A podman-style cgroup (systemd driver): libpod-<64 hex>.scope.
    let id = format!("{:064x}", u128::from(std::process::id()) << 64 | 0xfeed);
    let cgroup = CgroupGuard::new_v2_named(&format!("libpod-{id}.scope"));
    let mut sleeper = ChildGuard::spawn(Command::new("/bin/sleep").arg("1000"));
    cgroup.add(sleeper.pid());

    let r = until(&mut c, sleeper.pid(), "path container", |r| {
        r.path_container_id.as_deref() == Some(id.as_str())
    })
    .await;
    assert_eq!(r.source, proto::Source::CgroupPath as i32);
    assert_eq!(r.path_runtime.as_deref(), Some("podman"));

    let listed = c
        .list_containers(proto::ListContainersRequest::default())
        .await
        .expect("ls")
        .into_inner()
        .containers;
    let entry = listed
        .iter()
        .find(|l| l.id == id)
        .unwrap_or_else(|| panic!("{id} not listed: {listed:?}"));
    assert_eq!(entry.source, proto::Source::CgroupPath as i32);
    assert_eq!(
        (entry.runtime.as_str(), entry.status.as_str()),
        ("podman", "running")
    );
    assert_eq!(entry.runtime_namespace, "podman");
    assert_eq!(entry.task_pid, Some(sleeper.pid()));
    assert_eq!(entry.cgroup_path, cgroup2_path_of(sleeper.pid()));

    let ps = c
        .list_processes(proto::ListProcessesRequest {
            container_id: id.clone(),
            runtime_namespace: None,
        })
        .await
        .expect("ps")
        .into_inner()
        .processes;
    assert_eq!(
        ps.iter().map(|p| p.pid).collect::<Vec<_>>(),
        [sleeper.pid()]
    );

    // Watch announced it, and announces it gone once its last process
    // has left the grace window.
    let announced = tokio::time::timeout(EVENTUALLY, async {
        while let Some(Ok(ev)) = watch.next().await {
            if let Some(Event::Container(x) | Event::ContainerChanged(x)) = ev.event
                && x.id == id
            {
                return;
            }
        }
    })
    .await;
    assert!(announced.is_ok(), "watch never announced {id}");
    sleeper.0.kill().expect("kill");
    sleeper.wait();
    let gone = tokio::time::timeout(EVENTUALLY, async {
        while let Some(Ok(ev)) = watch.next().await {
            if let Some(Event::ContainerDeleted(x)) = ev.event
                && x.id == id
            {
                return x;
            }
        }
        panic!("watch ended");
    })
    .await
    .expect("watch announced the container gone");
    assert!(gone.deleted && gone.status == "deleted", "{gone:?}");
    let listed = c
        .list_containers(proto::ListContainersRequest::default())
        .await
        .expect("ls")
        .into_inner()
        .containers;
    assert!(listed.iter().all(|l| l.id != id), "{listed:?}");
    drop(cgroup);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_lifecycle_matches_containerd_and_deleted_ones_leave_ls() {
    let ctrd = Containerd::start();
    let agent = TestAgent::start_with_containerd(&ctrd).await;
    let mut c = client(&agent).await;
    let mut watch = c
        .watch(proto::WatchRequest {})
        .await
        .expect("watch")
        .into_inner();
    let run = ctrd.run(ContainerSpec::new("life"));
    let status_of = |c: &mut PidmapClient<Channel>, all: bool| {
        let mut c = c.clone();
        async move {
            c.list_containers(proto::ListContainersRequest {
                include_deleted: all,
                ..Default::default()
            })
            .await
            .expect("ls")
            .into_inner()
            .containers
            .into_iter()
            .find(|x| x.id == "life")
            .map(|x| x.status)
        }
    };
    let wait_status = |want: &'static str, all: bool| {
        let c = c.clone();
        async move {
            let deadline = tokio::time::Instant::now() + EVENTUALLY;
            loop {
                let mut c = c.clone();
                let got = status_of(&mut c, all).await;
                if got.as_deref() == Some(want) {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "status {got:?}, wanted {want}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_status("running", false).await;
    run.kill("SIGKILL");
    run.wait_exited(EVENTUALLY);
    wait_status("stopped", false).await;
    run.delete_task();
    wait_status("stopped", false).await;
    run.delete();
    wait_status("deleted", true).await;
    assert_eq!(
        status_of(&mut c, false).await,
        None,
        "ls hides deleted ones"
    );

    let deleted = tokio::time::timeout(EVENTUALLY, async {
        while let Some(Ok(ev)) = watch.next().await {
            if let Some(Event::ContainerDeleted(x)) = ev.event
                && x.id == "life"
            {
                return x;
            }
        }
        panic!("watch ended");
    })
    .await
    .expect("watch reported the deletion");
    assert_eq!(deleted.status, "deleted");

    // The CLI the same way.
    let ls = |extra: &[&str]| {
        let out = Command::new(pidmap_bin())
            .arg("ls")
            .args(extra)
            .env("PIDMAP_SOCKET", agent.socket())
            .output()
            .expect("pidmap ls");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(!ls(&[]).contains("life"));
    assert!(
        ls(&["--all"])
            .lines()
            .any(|l| l.contains("life") && l.contains("deleted"))
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_ready_running_containers_already_resolve_through_containerd() {
    let ctrd = Containerd::start();
    let containers: Vec<_> = (0..3)
        .map(|i| ctrd.run(ContainerSpec::new(format!("ready{i}"))))
        .collect();
    for round in 0..3 {
        let agent = TestAgent::start(Config {
            containerd_socket: ctrd.socket().to_path_buf(),
            ..Config::default()
        })
        .await;
        // The moment the agent says ready, with no waiting.
        assert!(agent.state().containerd_synced(), "round {round}");
        for c in &containers {
            let r = resolve(agent.state(), c.init_pid(), None);
            assert_eq!(r.source, Some(Source::Containerd), "round {round}: {r:?}");
            assert_eq!(r.container.map(|x| x.key.id), Some(c.id().to_owned()));
        }
        let mut api = client(&agent).await;
        let s = api
            .status(proto::StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        assert!(s.ready && s.containerd_synced, "{s:?}");
        agent.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_is_quiet_when_its_reader_goes_away() {
    let agent = TestAgent::start(Config::default()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let pids: Vec<String> = (1..=2000).map(|p| p.to_string()).collect();
    for (name, args) in [
        ("watch", vec!["watch".to_owned()]),
        (
            "watch -o json",
            vec!["watch".into(), "-o".into(), "json".into()],
        ),
        (
            "resolve",
            [
                vec!["resolve".to_owned(), "-o".into(), "json".into()],
                pids.clone(),
            ]
            .concat(),
        ),
    ] {
        let err = dir.path().join("stderr");
        let script = format!("\"$0\" \"$@\" 2>{} | head -3 >/dev/null", err.display());
        let status = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(pidmap_bin())
            .args(&args)
            .env("PIDMAP_SOCKET", agent.socket())
            .stdin(Stdio::null())
            .status()
            .expect("run the pipeline");
        assert!(status.success(), "{name}: {status}");
        let stderr = std::fs::read_to_string(&err).unwrap_or_default();
        assert!(
            stderr.is_empty(),
            "{name} printed on a closed pipe:\n{stderr}"
        );
    }
    agent.stop().await;
}
