//! Shared fixtures for pidmap's privileged end-to-end tests.
//!
//! Every fixture is an RAII guard that cleans up what it made — the agent,
//! child processes (by PID, only ours), cgroup directories — even when the
//! test panics. Tests run with `--test-threads=1` because they load eBPF
//! programs and move processes between cgroups.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use pidmap::{
    Agent, Config,
    api::proto::{self, pidmap_client::PidmapClient},
};
use tokio_util::sync::CancellationToken;

pub mod checker;
pub mod consumer;
pub mod containerd;
#[cfg(cri_api)]
pub mod cri;
pub mod docker;
pub mod h2watch;
pub mod load;
pub mod oracle;
pub mod podman;
pub mod wire;

/// Fails the test clearly unless it runs as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "privileged tests load eBPF programs and create cgroups: run them as root (cargo xtask test)"
    );
}

/// Log output for test failures; set RUST_LOG to see more.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}

/// An agent running in this process; stopped on drop.
pub struct TestAgent {
    agent: Option<Agent>,
    shutdown: CancellationToken,
    socket: PathBuf,
}

static NEXT_SOCKET: AtomicU32 = AtomicU32::new(0);

/// A socket path of this test process's own, under /tmp.
pub fn private_socket() -> PathBuf {
    let n = NEXT_SOCKET.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir()
        .join(format!("pidmap-test-{}-{n}", std::process::id()))
        .join("pidmap.sock")
}

/// The profile's directory of the target directory this test binary was
/// built in: target/<profile>/deps/<test> → target/<profile>.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("target dir")
}

/// The `pidmap` binary next to this test binary (`cargo xtask test` builds
/// it before the privileged tests).
pub fn pidmap_bin() -> PathBuf {
    let bin = profile_dir().join("pidmap");
    assert!(
        bin.exists(),
        "{} not built: run `cargo build -p pidmap` first (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// The `pidmap` binary where any user can run it, for tests that run it as
/// another user (`nobody`): the binary itself when every directory above
/// it lets others through, else a copy in a private directory under /tmp
/// that others may enter (a clone in a `0700` directory, such as root's
/// home, would otherwise fail those tests with EACCES). The copy is removed
/// when the guard drops.
pub fn pidmap_bin_for_anyone() -> SharedBin {
    use std::os::unix::fs::PermissionsExt as _;
    let bin = pidmap_bin();
    let reachable = bin
        .ancestors()
        .skip(1)
        .all(|dir| fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
    if reachable {
        return SharedBin {
            path: bin,
            dir: None,
        };
    }
    let dir = std::env::temp_dir().join(format!(
        "pidmap-test-bin-{}-{}",
        std::process::id(),
        NEXT_SOCKET.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir).expect("a directory for the shared binary");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod the directory");
    let path = dir.join("pidmap");
    fs::copy(&bin, &path).expect("copy the pidmap binary");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod the binary");
    SharedBin {
        path,
        dir: Some(dir),
    }
}

/// See [`pidmap_bin_for_anyone`].
pub struct SharedBin {
    pub path: PathBuf,
    dir: Option<PathBuf>,
}

impl Drop for SharedBin {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// The example program `name` of the pidmap-client crate (`cargo xtask
/// test` builds the examples before the privileged tests).
pub fn client_example_bin(name: &str) -> PathBuf {
    let bin = profile_dir().join("examples").join(name);
    assert!(
        bin.exists(),
        "{} not built: run `cargo build -p pidmap-client --examples` first (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the repository")
        .to_path_buf()
}

/// Where `cargo xtask setup --for-tests` installs the stock gRPC clients:
/// `client-tools` in the target directory (`CLIENT_TOOLS` in
/// xtask/src/setup/clients.rs).
fn client_tools() -> PathBuf {
    let tools = profile_dir()
        .parent()
        .map(|target| target.join("client-tools"))
        .expect("target dir");
    assert!(
        tools.exists(),
        "{} missing: run `cargo xtask setup --for-tests` (it installs Python grpcio and Node \
         @grpc/grpc-js there)",
        tools.display()
    );
    tools
}

/// The Python of the virtualenv with grpcio and grpcio-tools.
pub fn python_bin() -> PathBuf {
    client_tools().join("python/bin/python")
}

/// The directory of the virtualenv's programs (`python3`, `pip`), to put
/// first on `PATH`.
pub fn python_bin_dir() -> PathBuf {
    client_tools().join("python/bin")
}

/// The `node_modules` with @grpc/grpc-js and @grpc/proto-loader, for
/// `NODE_PATH`.
pub fn node_modules() -> PathBuf {
    client_tools().join("node/node_modules")
}

/// A fenced code block of a Markdown document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snippet {
    /// The `## ` heading it stands under.
    pub section: String,
    /// Its info string's first word (`python`, `sh`, …).
    pub lang: String,
    /// Its text, with the final newline.
    pub code: String,
}

/// Every fenced code block of `markdown`, in order.
pub fn snippets(markdown: &str) -> Vec<Snippet> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut open: Option<Snippet> = None;
    for line in markdown.lines() {
        match &mut open {
            Some(snippet) if line.trim_start().starts_with("```") => {
                out.push(snippet.clone());
                open = None;
            }
            Some(snippet) => {
                snippet.code.push_str(line);
                snippet.code.push('\n');
            }
            None => {
                if let Some(heading) = line.strip_prefix("## ") {
                    section = heading.trim().to_owned();
                } else if let Some(info) = line.trim_start().strip_prefix("```") {
                    open = Some(Snippet {
                        section: section.clone(),
                        lang: info
                            .split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                        code: String::new(),
                    });
                }
            }
        }
    }
    out
}

impl TestAgent {
    /// Starts an agent with `config` and waits until it is ready. A config
    /// that keeps the default API socket gets a private one instead, so
    /// tests never touch /run/pidmap.
    pub async fn start(config: Config) -> Self {
        Self::start_with_faults(config, pidmap::faults::Faults::default()).await
    }

    /// [`start`](Self::start), with faults the test can trigger in the
    /// agent's tasks.
    pub async fn start_with_faults(mut config: Config, faults: pidmap::faults::Faults) -> Self {
        require_root();
        init_logging();
        if config.socket == Config::default().socket {
            config.socket = private_socket();
        }
        // Never the node's pinned containers map: a test that wants a
        // pinned map gives a private --pin-dir.
        if config.pin_dir.is_none() {
            config.no_pin = true;
        }
        // Never the node's NRI socket: a test that wants NRI gives its
        // containerd's private one.
        if config.nri_socket == Config::default().nri_socket {
            config.no_nri = true;
        }
        let socket = config.socket.clone();
        let shutdown = CancellationToken::new();
        let agent = Agent::start_with_faults(config, shutdown.clone(), faults)
            .await
            .unwrap_or_else(|e| panic!("agent failed to start: {}", pidmap::error::chain(&e)));
        Self {
            agent: Some(agent),
            shutdown,
            socket,
        }
    }

    /// Waits for the agent to stop on its own (a task died, or the test
    /// cancelled it), without cancelling it; returns how it ended.
    pub async fn ended(mut self) -> Result<(), pidmap::Error> {
        match self.agent.take() {
            Some(agent) => agent.wait().await,
            None => Ok(()),
        }
    }

    /// Starts an agent watching `ctrd` (with a short reconnect backoff) and
    /// waits until it has connected and listed.
    pub async fn start_with_containerd(ctrd: &containerd::Containerd) -> Self {
        Self::start_synced(Self::containerd_config(ctrd)).await
    }

    /// The config [`Self::start_with_containerd`] uses: `ctrd`'s socket and a
    /// short reconnect backoff.
    pub fn containerd_config(ctrd: &containerd::Containerd) -> Config {
        Config {
            containerd_socket: ctrd.socket().to_path_buf(),
            containerd_max_backoff_ms: 200,
            ..Config::default()
        }
    }

    /// Starts an agent with `config` and waits until it has connected to
    /// containerd and listed.
    pub async fn start_synced(config: Config) -> Self {
        let agent = Self::start(config).await;
        agent.wait_connected().await;
        agent
    }

    /// Waits until the agent is connected to containerd and has listed
    /// (synced).
    pub async fn wait_connected(&self) {
        let state = self.state();
        assert!(
            wait_until(Duration::from_secs(15), || state.containerd_synced()).await,
            "agent never synced with containerd"
        );
    }

    /// The API socket this agent serves.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A gRPC client of this agent's API, over its socket.
    pub async fn client(&self) -> PidmapClient<tonic::transport::Channel> {
        pidmap::cli::client::connect(&self.socket)
            .await
            .unwrap_or_else(|f| panic!("connect to {}: {}", self.socket.display(), f.message))
    }

    pub fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("agent present until stop")
    }

    pub fn state(&self) -> &pidmap::testing::state::State {
        self.agent().state()
    }

    /// Stops the agent and waits for every task; panics if a task had
    /// died before.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(agent) = self.agent.take()
            && let Err(e) = agent.wait().await
        {
            panic!("the agent failed: {}", pidmap::error::chain(&e));
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        // Tasks end with the cancel; the eBPF programs detach when the agent
        // (and its Ebpf) is dropped right after.
        self.shutdown.cancel();
        let _ = fs::remove_file(&self.socket);
        if let Some(dir) = self.socket.parent()
            && dir.starts_with(std::env::temp_dir())
        {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// A `pidmap agent` run as a child process — the binary, not in-process —
/// on a socket of its own: for faults only a process can suffer (SIGSTOP,
/// SIGKILL) and for the agent's own memory. Killed and reaped on drop, its
/// socket directory removed (unless [`kill`](Self::kill)ed: a crash leaves
/// its socket behind).
pub struct AgentProcess {
    child: Option<ChildGuard>,
    socket: PathBuf,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    ready_after: Duration,
}

/// How long an agent process may take to say it is ready.
const AGENT_READY: Duration = Duration::from_secs(60);

impl AgentProcess {
    /// Starts `pidmap agent --socket SOCKET ARGS…` and waits until it logs
    /// `agent ready`; panics with its log if it exits or takes over a
    /// minute.
    pub fn start(socket: &Path, args: &[&str]) -> Self {
        Self::start_in(socket, args, None)
    }

    /// [`start`](Self::start), the agent placed in `cgroup` before it runs
    /// (all its memory is charged there).
    pub fn start_in(socket: &Path, args: &[&str], cgroup: Option<&MemoryCgroup>) -> Self {
        use std::io::BufRead as _;
        require_root();
        let started = Instant::now();
        let mut cmd = Command::new(pidmap_bin());
        cmd.arg("agent").arg("--socket").arg(socket).args(args);
        // Never the node's pinned containers map (see TestAgent::start).
        if !args.contains(&"--pin-dir") {
            cmd.arg("--no-pin");
        }
        cmd.env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if let Some(cgroup) = cgroup {
            join_cgroup_before_exec(&mut cmd, &cgroup.procs());
        }
        let mut child = ChildGuard::spawn(&mut cmd);
        let stderr = child.0.stderr.take().expect("the agent's stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (ready_tx, ready) = std::sync::mpsc::channel();
        {
            let log = std::sync::Arc::clone(&log);
            // Drains the log to the end, so the agent never blocks on it.
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("agent ready") {
                        let _ = ready_tx.send(());
                    }
                    let mut log = log
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let mut this = Self {
            child: Some(child),
            socket: socket.to_path_buf(),
            log,
            ready_after: Duration::ZERO,
        };
        if ready.recv_timeout(AGENT_READY).is_err() {
            panic!("pidmap agent never became ready; its log:\n{}", this.log());
        }
        this.ready_after = started.elapsed();
        this
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, ChildGuard::pid)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// From the spawn to the `agent ready` line.
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    /// What the agent logged so far.
    pub fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, …) to the agent.
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill has no memory-safety preconditions; the pid is
            // our child, not yet reaped.
            unsafe { libc::kill(child.pid() as i32, signal) };
        }
    }

    /// The agent's resident memory now, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.pid(), "VmRSS")
    }

    /// Kills the agent with SIGKILL, as a crash would, and reaps it; its
    /// socket file stays behind, stale.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.0.kill();
            let _ = child.0.wait();
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            // SIGKILL ends a stopped process too.
            drop(child);
            if let Some(dir) = self.socket.parent()
                && dir.starts_with(std::env::temp_dir())
            {
                let _ = fs::remove_dir_all(dir);
            }
        }
    }
}

/// A process this test started indirectly (an orphan, say), killed by
/// PID on drop if it still is the same process.
pub struct PidGuard {
    pub pid: u32,
    start_time: Option<u64>,
}

impl PidGuard {
    pub fn new(pid: u32) -> Self {
        Self {
            pid,
            start_time: proc_start_time(pid),
        }
    }
}

impl Drop for PidGuard {
    fn drop(&mut self) {
        if self.start_time.is_some() && proc_start_time(self.pid) == self.start_time {
            // SAFETY: kill has no memory-safety preconditions; the pid is
            // still the process we started (same start time).
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        }
    }
}

/// Spawns `cmd` with a piped stdout and waits for its first line (the
/// process says it is set up); returns it with that line, trimmed.
pub fn spawn_until_ready(cmd: &mut Command) -> (ChildGuard, String) {
    use std::io::BufRead as _;
    let mut child = ChildGuard::spawn(
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped()),
    );
    let mut line = String::new();
    std::io::BufReader::new(child.0.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read the child's first line");
    (child, line.trim().to_owned())
}

/// A child process that is killed and reaped on drop.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn spawn(cmd: &mut Command) -> Self {
        Self(cmd.spawn().expect("spawn test child"))
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Waits for the child to exit by itself.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.0.wait().expect("wait for test child")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Makes `cmd`'s process move itself into the cgroup whose `cgroup.procs`
/// is `procs` between fork and exec: everything it runs (its exec first)
/// happens there.
pub fn join_cgroup_before_exec(cmd: &mut Command, procs: &Path) {
    use std::os::unix::process::CommandExt as _;
    let procs =
        std::ffi::CString::new(procs.as_os_str().as_encoded_bytes()).expect("a path without NUL");
    // SAFETY: between fork and exec only async-signal-safe calls on memory
    // allocated before the fork: open, write, close.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // "0": the writing process itself.
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if written != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

static NEXT_CGROUP: AtomicU32 = AtomicU32::new(0);

/// A fresh cgroup2 directory; on drop its processes go back to the root
/// and the directory is removed.
pub struct CgroupGuard {
    path: PathBuf,
    root: PathBuf,
}

impl CgroupGuard {
    /// Creates `<cgroup2 root>/pidmap-test-<pid>-<n>`.
    pub fn new_v2() -> Self {
        let n = NEXT_CGROUP.fetch_add(1, Ordering::Relaxed);
        Self::new_v2_named(&format!("pidmap-test-{}-{n}", std::process::id()))
    }

    /// Creates `<cgroup2 root>/<name>` (a name only this test uses, e.g.
    /// one that looks like another runtime's container cgroup).
    pub fn new_v2_named(name: &str) -> Self {
        let root = cgroup2_root().expect("a cgroup2 hierarchy is mounted");
        let path = root.join(name);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path, root }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup id: the directory's inode number.
    pub fn id(&self) -> u64 {
        fs::metadata(&self.path).expect("stat cgroup").ino()
    }

    /// Moves process `pid` into this cgroup.
    pub fn add(&self, pid: u32) {
        fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", self.path.display()));
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        // A process killed a moment ago may still be exiting and keep the
        // cgroup busy: retry for a while rather than leave the directory.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(procs) = fs::read_to_string(self.path.join("cgroup.procs")) {
                for pid in procs.split_whitespace() {
                    let _ = fs::write(self.root.join("cgroup.procs"), pid);
                }
            }
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() >= deadline => {
                    eprintln!("warning: cannot remove {}: {e}", self.path.display());
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// A memory cgroup with a limit, for a process that must live within it
/// (the DaemonSet's limit): v1's memory hierarchy where it is mounted
/// (hybrid hosts), else cgroup2 with the memory controller. On drop its
/// processes go back to the root and the directory is removed.
pub struct MemoryCgroup {
    path: PathBuf,
    root: PathBuf,
    v2: bool,
}

impl MemoryCgroup {
    /// A new memory cgroup limited to `limit` bytes, or `None` when this
    /// host has no memory controller to use.
    pub fn new(limit: u64) -> Option<Self> {
        let n = NEXT_CGROUP.fetch_add(1, Ordering::Relaxed);
        let name = format!("pidmap-test-mem-{}-{n}", std::process::id());
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let (root, v2, limit_file) = if v1.join("memory.limit_in_bytes").exists() {
            (v1.to_path_buf(), false, "memory.limit_in_bytes")
        } else {
            let root = cgroup2_root()?;
            let controllers = fs::read_to_string(root.join("cgroup.controllers")).ok()?;
            if !controllers.split_whitespace().any(|c| c == "memory") {
                return None;
            }
            fs::write(root.join("cgroup.subtree_control"), "+memory").ok()?;
            (root, true, "memory.max")
        };
        let path = root.join(name);
        fs::create_dir(&path).ok()?;
        let this = Self { path, root, v2 };
        fs::write(this.path.join(limit_file), limit.to_string())
            .unwrap_or_else(|e| panic!("limit {}: {e}", this.path.display()));
        Some(this)
    }

    /// Its `cgroup.procs`.
    pub fn procs(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// The most memory it has held, in bytes.
    pub fn peak_bytes(&self) -> Option<u64> {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        fs::read_to_string(self.path.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Processes the kernel's OOM killer killed in it.
    pub fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        fs::read_to_string(self.path.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(procs) = fs::read_to_string(self.procs()) {
                for pid in procs.split_whitespace() {
                    let _ = fs::write(self.root.join("cgroup.procs"), pid);
                }
            }
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() >= deadline => {
                    eprintln!("warning: cannot remove {}: {e}", self.path.display());
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// A BPF filesystem of the test's own, mounted on a temp directory; on drop
/// it is unmounted (maps pinned only there go with it) and the directory
/// removed.
pub struct PrivateBpfFs {
    dir: tempfile::TempDir,
}

impl PrivateBpfFs {
    pub fn mount() -> Self {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("pidmap-test-bpffs-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let target = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes())
            .expect("a path without NUL");
        // SAFETY: every pointer is a NUL-terminated string that outlives
        // the call; no data argument.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mount bpffs on {}: {}",
            dir.path().display(),
            std::io::Error::last_os_error()
        );
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PrivateBpfFs {
    fn drop(&mut self) {
        if let Ok(target) = std::ffi::CString::new(self.dir.path().as_os_str().as_encoded_bytes()) {
            // SAFETY: a NUL-terminated path that outlives the call.
            if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
                eprintln!(
                    "warning: cannot unmount {}: {}",
                    self.dir.path().display(),
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

/// Where cgroup2 is mounted (hybrid: /sys/fs/cgroup/unified).
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// The value of `field` (e.g. `VmRSS`, `CapEff`) in /proc/PID/status,
/// trimmed (`"1234 kB"`, `"000000c000000085"`).
pub fn proc_status_field(pid: u32, field: &str) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let value = l.strip_prefix(field)?.strip_prefix(':')?;
        Some(value.trim().to_owned())
    })
}

/// A `kB` field of /proc/PID/status (`VmRSS`, `VmHWM`, …) in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    proc_status_field(pid, field)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The cgroup2 path of `pid` as the host prints it (the `0::` line of
/// /proc/PID/cgroup, read from the test's own cgroup namespace, the host's).
pub fn cgroup2_path_of(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// The cgroup2 id of `pid`: the inode of its cgroup's directory.
pub fn cgroup2_id_of(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dir = cgroup2_root()?.join(cgroup2_path_of(pid)?.trim_start_matches('/'));
    Some(fs::metadata(dir).ok()?.ino())
}

/// The pids of every process in /proc (thread-group leaders).
pub fn proc_pids() -> std::io::Result<Vec<u32>> {
    Ok(fs::read_dir("/proc")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect())
}

/// Field `n` (1-based, 3 or more) of /proc/PID/stat, if the process
/// exists.
fn proc_stat_field(pid: u32, n: usize) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after
        .split_whitespace()
        .nth(n.checked_sub(3)?)?
        .parse()
        .ok()
}

/// Field 22 of /proc/PID/stat (start time in ticks), if the process exists.
pub fn proc_start_time(pid: u32) -> Option<u64> {
    proc_stat_field(pid, 22)
}

/// Field 4 of /proc/PID/stat (the parent's pid), if the process exists.
pub fn proc_ppid(pid: u32) -> Option<u32> {
    proc_stat_field(pid, 4).and_then(|p| u32::try_from(p).ok())
}

/// /proc/PID/comm without the one newline procfs adds (a name may hold a
/// newline of its own: `echo name > /proc/PID/comm` keeps it), if the
/// process exists.
pub fn proc_comm(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(text.strip_suffix('\n').unwrap_or(&text).to_owned())
}

/// Runs `probe` every 20 ms until it returns `Ok` or `timeout` passes; then returns its
/// last answer (`Err` says why it never held). For asynchronous conditions with no event
/// to await, such as an answer of the agent's API.
pub async fn eventually<T, E, F, Fut>(timeout: Duration, mut probe: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let answer = probe().await;
        if answer.is_ok() || Instant::now() >= deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asks the agent behind `client` to resolve `pid` until the answer satisfies
/// `wanted` (at most 15 s); returns that answer, or `Err` with the last one.
pub async fn resolved_when(
    client: &PidmapClient<tonic::transport::Channel>,
    pid: u32,
    wanted: impl Fn(&proto::ProcessRecord) -> bool,
) -> Result<proto::ProcessRecord, proto::ProcessRecord> {
    eventually(Duration::from_secs(15), || {
        let mut client = client.clone();
        let wanted = &wanted;
        async move {
            let record = client
                .resolve(proto::ResolveRequest {
                    pid: pid.into(),
                    start_time: None,
                })
                .await
                .expect("Resolve")
                .into_inner();
            if wanted(&record) {
                Ok(record)
            } else {
                Err(record)
            }
        }
    })
    .await
}

/// Waits until `pid` resolves from containerd as container `id` (at most
/// 15 s); returns that answer, or panics with the last one.
pub async fn resolved_as(
    client: &PidmapClient<tonic::transport::Channel>,
    pid: u32,
    id: &str,
) -> proto::ProcessRecord {
    resolved_when(client, pid, |r| {
        r.source == proto::Source::Containerd as i32
            && r.container.as_ref().is_some_and(|c| c.id == id)
    })
    .await
    .unwrap_or_else(|last| panic!("pid {pid} never resolved to container {id}: {last:?}"))
}

/// The containers of `runtime_namespace` (for path-known ones: their runtime's
/// name) that ListContainers shows, deleted ones included.
pub async fn containers_in(
    client: &PidmapClient<tonic::transport::Channel>,
    runtime_namespace: &str,
) -> Vec<proto::Container> {
    client
        .clone()
        .list_containers(proto::ListContainersRequest {
            runtime_namespace: Some(runtime_namespace.to_owned()),
            include_deleted: true,
            ..Default::default()
        })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers
}

/// The children of `pid`, from /proc (none if it is gone).
pub fn children(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Seconds from the environment variable `var` (a test's duration), else
/// `default`.
pub fn env_seconds(var: &str, default: u64) -> Duration {
    let secs = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    Duration::from_secs(secs)
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns
/// whether it held. For conditions with no event to await.
pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_carry_their_section_and_language() {
        let md = "# T\n```sh\nnot in a section\n```\n## Python (grpcio)\ntext\n```python title\nimport grpc\n\nprint(1)\n```\n## Go\n```\nplain\n```\n";
        let found = snippets(md);
        let got: Vec<(&str, &str, &str)> = found
            .iter()
            .map(|s| (s.section.as_str(), s.lang.as_str(), s.code.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("", "sh", "not in a section\n"),
                ("Python (grpcio)", "python", "import grpc\n\nprint(1)\n"),
                ("Go", "", "plain\n"),
            ]
        );
    }
}
