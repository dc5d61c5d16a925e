//! A private containerd (plus runc) for end-to-end tests, driven through `ctr`.
//!
//! [`Containerd::start`] runs a daemon whose config, root, state, sockets and
//! busybox rootfs all live in one temp dir (`/tmp/pidmap-ctrd-XXXXXX`).
//! [`Containerd::run`] starts containers from a [`ContainerSpec`] and hands
//! back a [`RunningContainer`] handle. Dropping the [`Containerd`] deletes
//! every task and container in every namespace (restarting the daemon first
//! if a test stopped it), stops the daemon, kills any shim of ours that is
//! left, unmounts what is mounted under the dir, removes the cgroup
//! directories our containers made and removes the dir — also when the test
//! panics. A leak found on drop panics (or is printed, when already panicking).
//!
//! Everything here is synchronous and blocks: from async tests use a
//! multi-threaded runtime. Needs root, `containerd`, `ctr`, `runc` and
//! `/bin/busybox` (Debian: `containerd runc busybox-static`).
//!
//! [`Containerd::start_cri`] starts one with the CRI plugin as well (host-network
//! pods only, no CNI), for driving it as kubelet does with [`Containerd::cri`]; its drop
//! first stops and removes every pod through CRI.
//!
//! Another containerd: set [`BIN_DIR_ENV`] to a directory holding its
//! `containerd`, `ctr` and `containerd-shim-runc-v2` (runc still comes from
//! `PATH`); `cargo xtask matrix` does so for containerd 1.7 and 2.1. The
//! config is written in the format the binary's major version reads.
//!
//! # Examples
//!
//! ```no_run
//! use pidmap_tests::containerd::{ContainerSpec, Containerd};
//!
//! let ctrd = Containerd::start();
//! let c = ctrd.run(
//!     ContainerSpec::new("web")
//!         .namespace("k8s.io")
//!         .label("io.kubernetes.pod.name", "web-0")
//!         .kubepods("besteffort", "0b8f3c3e-2a9a-4c8e-9b3a-5d7f1e2c4a6b"),
//! );
//! let exec_pid = c.exec("probe", ["/bin/sleep", "1000"]);
//! assert!(c.pids().contains(&exec_pid));
//! ```

mod container;
pub(crate) mod host;
pub(crate) mod rootfs;

use std::{
    collections::BTreeSet,
    ffi::{OsStr, OsString},
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Mutex, MutexGuard, PoisonError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub use container::{ContainerSpec, RunningContainer};
pub use host::process_alive;
pub use rootfs::APPLETS;

/// How long the daemon may take to answer `ctr version` after it is launched.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `stop` waits after SIGTERM before it sends SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Where every containerd's shims put their sockets, whatever the config says.
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// The variable naming a directory with the `containerd`, `ctr` and
/// `containerd-shim-runc-v2` to test (unset: those on `PATH`).
pub const BIN_DIR_ENV: &str = "PIDMAP_TEST_CONTAINERD_BIN_DIR";
/// Like [`BIN_DIR_ENV`], for [`Containerd::start_cri_nri`] only (it wins there): how the
/// whole suite gives the NRI tests a containerd with NRI (2.1) while every other test runs
/// the system's (1.6, which has none).
pub const NRI_BIN_DIR_ENV: &str = "PIDMAP_TEST_NRI_CONTAINERD_BIN_DIR";
/// containerd 1.x's config: everything under the dir, no CRI, no exotic snapshotters.
const CONFIG: &str = r#"version = 2
root = "DIR/root"
state = "DIR/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "DIR/containerd.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "DIR/opt"
"#;
/// containerd 2.x's: the same in config version 3, where CRI is three plugins,
/// aufs is gone and NRI (on by default, with a socket under /var/run) is off.
const CONFIG_V3: &str = r#"version = 3
root = "DIR/root"
state = "DIR/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.cri.v1.images",
  "io.containerd.cri.v1.runtime",
  "io.containerd.nri.v1.nri",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "DIR/containerd.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "DIR/opt"
"#;

/// The image CRI runs pod sandboxes from (`sandbox_image`): the busybox rootfs
/// sleeping, imported by [`Containerd::start_cri`].
pub const CRI_SANDBOX_IMAGE: &str = "localhost/pidmap-pause:1";
/// An image for containers made through CRI (the busybox rootfs, `Cmd` `/bin/sh`), imported
/// by [`Containerd::start_cri`].
pub const CRI_IMAGE: &str = "localhost/busybox:pidmap";
/// The containerd namespace the CRI plugin works in.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// What a test that needs the CRI client says when it was not built.
pub const CRI_MISSING: &str = "the CRI client was not built: target/cri-api/api.proto is \
     missing; run `cargo xtask setup --for-tests` (it fetches Debian's \
     golang-github-kubernetes-cri-api-dev), then build again";

/// The CRI plugin's runtime settings, in its plugin `RUNTIME` (1.x: the one CRI plugin,
/// config version 2; 2.x: `io.containerd.cri.v1.runtime`, config version 3): host-network
/// pods only (CNI's directories point into the temp dir, and stay empty), runc state in
/// the temp dir, and `restrict_oom_score_adj` (root here lacks CAP_SYS_RESOURCE, so the
/// sandbox's -998 could not be set). `SANDBOX_KEY` is 1.x's sandbox image setting.
const CRI_CONFIG: &str = r#"
[plugins."RUNTIME"]
  restrict_oom_score_adj = true
  SANDBOX_KEY
  [plugins."RUNTIME".containerd]
    default_runtime_name = "runc"
    [plugins."RUNTIME".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."RUNTIME".containerd.runtimes.runc.options]
        Root = "DIR/runc"
  [plugins."RUNTIME".cni]
    bin_dir = "DIR/cni/bin"
    conf_dir = "DIR/cni/net.d"
"#;
/// containerd 2.x's sandbox image setting, in CRI's images plugin.
const CRI_SANDBOX_V3: &str = r#"
[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "SANDBOX"
"#;
/// NRI on, with its socket and plugin directories in the temp dir (containerd 1.7 and 2.x;
/// 1.6 has no such plugin).
const NRI_CONFIG: &str = r#"
[plugins."io.containerd.nri.v1.nri"]
  disable = false
  socket_path = "DIR/nri.sock"
  plugin_path = "DIR/nri/plugins"
  plugin_config_path = "DIR/nri/conf.d"
"#;
/// The plugins that make up CRI (1.x: the first; 2.x: all three), disabled unless asked for.
const CRI_PLUGINS: [&str; 3] = [
    "io.containerd.grpc.v1.cri",
    "io.containerd.cri.v1.images",
    "io.containerd.cri.v1.runtime",
];

/// The config for this containerd's major version, with or without CRI and NRI; `DIR`
/// stands for the temp dir.
fn config(major: u32, cri: bool, nri: bool) -> String {
    let template = if major >= 2 { CONFIG_V3 } else { CONFIG };
    let mut text = if cri {
        cri_config(major, template)
    } else {
        template.to_owned()
    };
    if nri {
        text = text.replace("  \"io.containerd.nri.v1.nri\",\n", "");
        text.push_str(NRI_CONFIG);
    }
    text
}

/// `template` with the CRI plugin on.
fn cri_config(major: u32, template: &str) -> String {
    let mut text: String = template
        .lines()
        .filter(|line| {
            !CRI_PLUGINS
                .iter()
                .any(|plugin| line.trim() == format!("\"{plugin}\","))
        })
        .map(|line| format!("{line}\n"))
        .collect();
    let (runtime, sandbox_key) = if major >= 2 {
        text.push_str(CRI_SANDBOX_V3);
        (CRI_PLUGINS[2], String::new())
    } else {
        (CRI_PLUGINS[0], r#"sandbox_image = "SANDBOX""#.to_owned())
    };
    text.push_str(
        &CRI_CONFIG
            .replace("RUNTIME", runtime)
            .replace("SANDBOX_KEY", &sandbox_key),
    );
    text.replace("SANDBOX", CRI_SANDBOX_IMAGE)
}

/// A private containerd daemon; see the [module docs](self).
pub struct Containerd {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    ctr: Ctr,
    daemon: Mutex<Option<Child>>,
    /// Cgroup paths (relative to a hierarchy root) of the containers we ran.
    leaves: Mutex<BTreeSet<String>>,
    /// Cgroup directories (absolute) that did not exist before we ran a container.
    created_cgroups: Mutex<BTreeSet<PathBuf>>,
    /// /run/containerd and /run/containerd/s, if they did not exist at start.
    created_run_dirs: Vec<PathBuf>,
    /// Whether the CRI plugin runs ([`Self::start_cri`]); read only where the CRI client
    /// is built.
    #[cfg_attr(not(cri_api), allow(dead_code))]
    cri: bool,
}

impl Containerd {
    /// Writes a config into a fresh temp dir, launches `containerd --config`
    /// and waits (at most 20 s) until `ctr version` answers.
    ///
    /// Panics with the daemon's log if it does not come up.
    pub fn start() -> Self {
        Self::launch_new(false, false)
    }

    /// Like [`Self::start`], with the CRI plugin: imports [`CRI_SANDBOX_IMAGE`] and
    /// [`CRI_IMAGE`] into [`CRI_NAMESPACE`] and waits until CRI knows them. Drive it with
    /// [`Self::cri`].
    ///
    /// Panics with [`CRI_MISSING`] if the CRI client was not built.
    pub fn start_cri() -> Self {
        Self::start_cri_with(false)
    }

    /// Like [`Self::start_cri`], with NRI on: its socket is [`Self::nri_socket`]. Panics on
    /// containerd 1.6, which has no NRI.
    pub fn start_cri_nri() -> Self {
        Self::start_cri_with(true)
    }

    fn start_cri_with(nri: bool) -> Self {
        if cfg!(not(cri_api)) {
            panic!("{CRI_MISSING}");
        }
        let ctrd = Self::launch_new(true, nri);
        if nri {
            ctrd.wait_for_nri_socket();
        }
        ctrd.import_busybox_image_running(
            CRI_NAMESPACE,
            CRI_SANDBOX_IMAGE,
            &["/bin/sleep", "2147483647"],
        );
        ctrd.import_busybox_image(CRI_NAMESPACE, CRI_IMAGE);
        #[cfg(cri_api)]
        for image in [CRI_SANDBOX_IMAGE, CRI_IMAGE] {
            ctrd.cri().wait_for_image(image);
        }
        ctrd
    }

    /// A kubelet-like client of this daemon's CRI plugin ([`Self::start_cri`]).
    #[cfg(cri_api)]
    pub fn cri(&self) -> crate::cri::Cri<'_> {
        assert!(
            self.cri,
            "this containerd runs without CRI: use Containerd::start_cri"
        );
        crate::cri::Cri::new(self)
    }

    fn launch_new(cri: bool, nri: bool) -> Self {
        crate::require_root();
        let bin_dir = nri
            .then(|| env_dir(NRI_BIN_DIR_ENV))
            .flatten()
            .or_else(|| env_dir(BIN_DIR_ENV));
        let dir = tempfile::Builder::new()
            .prefix("pidmap-ctrd-")
            .tempdir_in("/tmp")
            .expect("create the containerd temp dir");
        let path = dir.path().to_path_buf();
        let major = containerd_major(bin_dir.as_deref()).unwrap_or_else(|e| panic!("{e:#}"));
        let config = config(major, cri, nri).replace("DIR", &path.to_string_lossy());
        fs::write(path.join("config.toml"), config).expect("write config.toml");
        fs::create_dir(path.join("exec-logs")).expect("create exec-logs");
        rootfs::build_rootfs(&path.join("rootfs")).unwrap_or_else(|e| {
            panic!("build the busybox rootfs (is busybox-static installed?): {e:#}")
        });
        let created_run_dirs = ["/run/containerd", SHIM_SOCKET_DIR]
            .iter()
            .map(PathBuf::from)
            .filter(|p| !p.exists())
            .collect();
        let ctrd = Self {
            dir: Some(dir),
            ctr: Ctr {
                socket: path.join("containerd.sock"),
                bin_dir: bin_dir.clone(),
            },
            path,
            daemon: Mutex::new(None),
            leaves: Mutex::default(),
            created_cgroups: Mutex::default(),
            created_run_dirs,
            cri,
        };
        // On failure `ctrd` is dropped while unwinding, which cleans up.
        ctrd.launch().unwrap_or_else(|e| panic!("{e:#}"));
        ctrd
    }

    /// The daemon's gRPC socket, `<dir>/containerd.sock`.
    pub fn socket(&self) -> &Path {
        &self.ctr.socket
    }

    /// Waits (at most 20 s) for NRI's socket; panics if it does not come (containerd 1.6
    /// has no NRI).
    fn wait_for_nri_socket(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.nri_socket().exists() {
            if Instant::now() >= deadline {
                panic!(
                    "containerd made no NRI socket at {} in {READY_TIMEOUT:?} (NRI needs \
                     containerd 1.7 or later; `cargo xtask test` and `cargo xtask matrix` \
                     give this file one); log tail:\n{}",
                    self.nri_socket().display(),
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// NRI's socket, `<dir>/nri.sock` (there while the daemon runs, with
    /// [`Self::start_cri_nri`]).
    pub fn nri_socket(&self) -> PathBuf {
        self.path.join("nri.sock")
    }

    /// The temp dir holding everything of this instance.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// The busybox rootfs that containers without an image run from.
    pub fn rootfs(&self) -> PathBuf {
        self.path.join("rootfs")
    }

    /// The daemon's PID, if it runs.
    pub fn pid(&self) -> Option<u32> {
        let mut daemon = lock(&self.daemon);
        match daemon.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => daemon.as_ref().map(Child::id),
            _ => None,
        }
    }

    /// The daemon's log (stdout and stderr of every run), for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.path.join("containerd.log")).unwrap_or_default()
    }

    /// Stops the daemon: SIGTERM, then SIGKILL after 5 s. Tasks and shims
    /// keep running. Does nothing if it is not running.
    pub fn stop(&self) {
        if let Some(mut child) = lock(&self.daemon).take() {
            host::terminate(&mut child, STOP_TIMEOUT);
        }
    }

    /// Kills the daemon with SIGKILL, as a crash would. Tasks and shims keep running.
    pub fn kill(&self) {
        if let Some(mut child) = lock(&self.daemon).take() {
            host::terminate(&mut child, Duration::ZERO);
        }
    }

    /// Starts the daemon again with the same config, root, state and socket
    /// (stopping it first if it runs) and waits until it is ready.
    pub fn restart(&self) {
        self.stop();
        self.launch().unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Runs `ctr -a SOCKET ARGS…` (with connect and total timeouts) and
    /// returns its output, whatever its exit status.
    pub fn ctr<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.ctr.output(args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Runs `ctr -a SOCKET ARGS…` and returns its stdout; panics with its
    /// stderr unless it succeeds.
    pub fn ctr_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.ctr.ok(args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Runs a container detached (`ctr run -d --null-io`) and returns a
    /// handle once its task has started.
    pub fn run(&self, spec: ContainerSpec) -> RunningContainer {
        let cgroup = spec
            .cgroup
            .clone()
            .unwrap_or_else(|| format!("/{}/{}", spec.namespace, spec.id));
        self.note_cgroup(&cgroup);
        let mut args: Vec<OsString> = ["-n", &spec.namespace, "run", "-d"]
            .map(OsString::from)
            .into();
        match &spec.log_file {
            Some(path) => args.extend([
                "--log-uri".into(),
                format!("file://{}", path.display()).into(),
            ]),
            None => args.push("--null-io".into()),
        }
        args.push("--runc-root".into());
        args.push(self.path.join("runc").into());
        for (key, value) in &spec.labels {
            args.extend(["--label".into(), format!("{key}={value}").into()]);
        }
        if let Some(path) = &spec.cgroup {
            args.extend(["--cgroup".into(), path.into()]);
        }
        for (src, dst) in &spec.binds {
            args.extend([
                "--mount".into(),
                format!("type=bind,src={},dst={dst},options=rbind:ro", src.display()).into(),
            ]);
        }
        args.extend(spec.run_args.iter().cloned());
        match &spec.image {
            Some(image) => args.push(image.into()),
            None => args.extend(["--rootfs".into(), self.rootfs().into()]),
        }
        args.push((&spec.id).into());
        args.extend(spec.command.iter().map(OsString::from));
        if let Err(e) = self.ctr.ok(&args) {
            panic!("run container {}/{}: {e:#}", spec.namespace, spec.id);
        }
        RunningContainer {
            ctr: self.ctr.clone(),
            namespace: spec.namespace,
            id: spec.id,
            cgroup,
            log_dir: self.path.join("exec-logs"),
        }
    }

    /// Builds a one-layer OCI image of the busybox rootfs (config `Cmd`
    /// `/bin/sh`, `Env` `PATH=/bin`) and imports it into `namespace` as
    /// `image_ref` (e.g. `localhost/busybox:pidmap`), unpacked for
    /// the default snapshotter; use it with [`ContainerSpec::image`].
    pub fn import_busybox_image(&self, namespace: &str, image_ref: &str) {
        self.import_busybox_image_running(namespace, image_ref, &["/bin/sh"]);
    }

    /// [`Self::import_busybox_image`] with `cmd` as the image's `Cmd`.
    pub fn import_busybox_image_running(&self, namespace: &str, image_ref: &str, cmd: &[&str]) {
        let archive = self.path.join(format!(
            "image-{}.tar",
            rootfs::sha256_hex(image_ref.as_bytes())
        ));
        rootfs::build_oci_archive(&self.rootfs(), image_ref, cmd, &archive)
            .unwrap_or_else(|e| panic!("build OCI archive for {image_ref}: {e:#}"));
        let import: [&OsStr; 5] = [
            "-n".as_ref(),
            namespace.as_ref(),
            "images".as_ref(),
            "import".as_ref(),
            archive.as_ref(),
        ];
        self.ctr_ok(import);
    }

    /// Launches the daemon (appending to its log) and waits until it answers.
    fn launch(&self) -> anyhow::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path.join("containerd.log"))
            .context("open containerd.log")?;
        let child = tool("containerd", self.ctr.bin_dir.as_deref())
            .arg("--config")
            .arg(self.path.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn containerd (apt-get install containerd runc)")?;
        *lock(&self.daemon) = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            // (A guard in an `if let` scrutinee would live through the body.)
            let exited = lock(&self.daemon).as_mut().and_then(|c| c.try_wait().ok()?);
            if let Some(status) = exited {
                lock(&self.daemon).take();
                bail!(
                    "containerd exited with {status} before it was ready; log tail:\n{}",
                    self.log_tail()
                );
            }
            if self.ctr.ok(["version"]).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!(
                    "containerd not ready after {READY_TIMEOUT:?}; log tail:\n{}",
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Remembers `cgroup` and which of its directories do not exist yet, in
    /// every hierarchy, so that drop removes exactly those. Call it before a
    /// container is made in `cgroup` (or under it, for a parent).
    pub(crate) fn note_cgroup(&self, cgroup: &str) {
        lock(&self.leaves).insert(cgroup.to_owned());
        lock(&self.created_cgroups).extend(host::missing_cgroup_dirs(cgroup));
    }

    /// Deletes every task and container in every namespace, through the daemon.
    fn delete_all(&self) -> anyhow::Result<()> {
        if self.pid().is_none() {
            self.launch().context("restart containerd to clean up")?;
        }
        let mut errors = Vec::new();
        for ns in self.ctr.ok(["namespaces", "ls", "-q"])?.lines() {
            for task in self.ctr.ok(["-n", ns, "tasks", "ls", "-q"])?.lines() {
                if let Err(e) = self.ctr.ok(["-n", ns, "tasks", "delete", "-f", task]) {
                    errors.push(format!("{e:#}"));
                }
            }
            for container in self.ctr.ok(["-n", ns, "containers", "ls", "-q"])?.lines() {
                if let Err(e) = self.ctr.ok(["-n", ns, "containers", "delete", container]) {
                    errors.push(format!("{e:#}"));
                }
            }
        }
        if !errors.is_empty() {
            bail!("{}", errors.join("\n"));
        }
        Ok(())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let mut errors = Vec::new();
        // Pods first, through CRI: that also unmounts their /dev/shm and forgets them.
        #[cfg(cri_api)]
        if self.cri && self.pid().is_some() {
            errors.extend(crate::cri::Cri::new(self).remove_everything());
        }
        if let Err(e) = self.delete_all() {
            errors.push(format!("delete tasks and containers: {e:#}"));
        }
        self.stop();
        // Last resorts, once the daemon is down: these find nothing when
        // `delete_all` worked.
        for leaf in lock(&self.leaves).iter() {
            errors.extend(host::kill_cgroup_procs(leaf));
        }
        errors.extend(host::kill_shims(self.socket(), Path::new(SHIM_SOCKET_DIR)));
        errors.extend(host::unmount_under(&self.path));
        errors.extend(host::remove_dirs_deepest_first(
            lock(&self.created_cgroups).iter(),
        ));
        for dir in self.created_run_dirs.iter().rev() {
            let _ = fs::remove_dir(dir); // Only if empty: another instance may use it.
        }
        if !errors.is_empty() {
            errors.push(format!("containerd log tail:\n{}", self.log_tail()));
        }
        host::report_leaks("containerd", self.dir.take(), errors);
    }
}

/// Runs `ctr` against one daemon.
#[derive(Clone, Debug)]
pub(crate) struct Ctr {
    socket: PathBuf,
    /// Where `containerd` and `ctr` come from (`None`: `PATH`).
    bin_dir: Option<PathBuf>,
}

impl Ctr {
    /// `ctr -a SOCKET ARGS…` with a 5 s connect and a 60 s total timeout.
    pub(crate) fn output<I, S>(&self, args: I) -> anyhow::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = tool("ctr", self.bin_dir.as_deref());
        cmd.args(["--connect-timeout", "5s", "--timeout", "60s", "-a"])
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null());
        cmd.output().with_context(|| format!("spawn {cmd:?}"))
    }

    /// Like [`Self::output`], but fails with stderr unless ctr succeeds.
    pub(crate) fn ok<I, S>(&self, args: I) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().into()).collect();
        let out = self.output(&args)?;
        if !out.status.success() {
            bail!(
                "ctr {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The directory an environment variable names, if set and not empty.
fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

/// `program` from `dir` (from [`BIN_DIR_ENV`] or [`NRI_BIN_DIR_ENV`]), with that directory
/// first on `PATH` (containerd looks its shim up there, the shim finds runc after it);
/// plain `program` from `PATH` without one.
fn tool(program: &str, dir: Option<&Path>) -> Command {
    let Some(dir) = dir.map(Path::to_path_buf) else {
        return Command::new(program);
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    let paths = std::iter::once(dir.clone()).chain(std::env::split_paths(&path));
    let mut cmd = Command::new(dir.join(program));
    match std::env::join_paths(paths) {
        Ok(path) => cmd.env("PATH", path),
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    cmd
}

/// The major version `containerd --version` reports
/// (`containerd github.com/containerd/containerd/v2 2.1.9+ds1 …`).
fn containerd_major(bin_dir: Option<&Path>) -> anyhow::Result<u32> {
    let out = tool("containerd", bin_dir)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .context("run `containerd --version` (apt-get install containerd runc)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(2)
        .and_then(|version| version.split('.').next()?.parse().ok())
        .with_context(|| format!("no version in `containerd --version`: {}", text.trim()))
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
