//! podman (Debian bookworm's 4.3) with private storage, for end-to-end tests of runtimes
//! pidmap knows only from cgroup paths.
//!
//! [`Podman::new`] keeps podman's root, run root, temp dir, network config dir and a busybox
//! rootfs in one temp dir (`/tmp/pidmap-podman-XXXXXX`); every `podman` runs with those, the cgroupfs
//! cgroup manager (no systemd here) and no events log. Containers run from the rootfs
//! dir (`--rootfs`), not from an image: importing an image would also write podman's
//! blob-info cache under the system's `/var/lib/containers`. They run with
//! `--network none` and the fixed rlimits runc can set here (root lacks
//! CAP_SYS_RESOURCE, so podman's default of raising them fails).
//!
//! Dropping it removes every container (`podman rm -f`), kills any process left in their
//! cgroups, unmounts what is still mounted under its dir, removes the cgroup directories
//! podman made (`/libpod_parent/…` in every hierarchy), `/run/runc` if runc made it (its
//! state of podman's containers lives there), and the dir — also when the test panics. A
//! leak found on drop panics (or is printed, when already panicking). The system's podman
//! storage is never touched.
//!
//! # Examples
//!
//! ```no_run
//! use pidmap_tests::podman::Podman;
//!
//! let podman = Podman::new();
//! let c = podman.run("box");
//! assert_eq!(c.cgroup, format!("/libpod_parent/libpod-{}", c.id));
//! ```

use std::{
    collections::BTreeSet,
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::Mutex,
    time::Duration,
};

use crate::containerd::{host, lock, rootfs};

/// The cgroup parent of podman's containers with the cgroupfs manager.
pub const CGROUP_PARENT: &str = "/libpod_parent";
/// How long drop waits for conmon and the containers' processes to exit after
/// `podman rm`.
const CONMON_EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Where runc keeps its state of podman's containers.
const RUNC_STATE: &str = "/run/runc";

/// A container [`Podman::run`] started: `/bin/sh -c "/bin/sleep 1000 & exec /bin/sleep
/// 1001"`, so it has an init and a child.
#[derive(Clone, Debug)]
pub struct PodmanContainer {
    pub id: String,
    /// Its init process, in our PID namespace.
    pub pid: u32,
    /// Its cgroup, relative to the hierarchy roots.
    pub cgroup: String,
}

/// See the [module docs](self).
pub struct Podman {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    /// Cgroups of our containers (for killing what is left in them).
    leaves: Mutex<BTreeSet<String>>,
    /// Cgroup directories that did not exist before podman made them.
    made_cgroups: Mutex<BTreeSet<PathBuf>>,
    made_runc_state: bool,
}

impl Podman {
    /// Prepares the temp dir and its rootfs, and checks that podman runs.
    ///
    /// Panics if podman is not installed (`cargo xtask setup --for-tests` installs
    /// Debian's `podman`).
    pub fn new() -> Self {
        crate::require_root();
        let dir = tempfile::Builder::new()
            .prefix("pidmap-podman-")
            .tempdir_in("/tmp")
            .expect("create the podman temp dir");
        let path = dir.path().to_path_buf();
        let podman = Self {
            dir: Some(dir),
            path,
            leaves: Mutex::default(),
            made_cgroups: Mutex::default(),
            made_runc_state: !Path::new(RUNC_STATE).exists(),
        };
        rootfs::build_rootfs(&podman.path.join("rootfs"))
            .unwrap_or_else(|e| panic!("build the busybox rootfs: {e:#}"));
        podman.podman_ok(["version"]);
        podman
    }

    /// The temp dir holding everything of this instance.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// `podman ARGS…` with this instance's storage and settings.
    fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(self.path.join("root"))
            .arg("--runroot")
            .arg(self.path.join("run"))
            .arg("--tmpdir")
            .arg(self.path.join("tmp"))
            // Else podman takes a lock file in the system's /etc/cni/net.d.
            .arg("--network-config-dir")
            .arg(self.path.join("cni"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "none"])
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// `podman ARGS…`, whatever its exit status.
    pub fn podman<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(args).output().unwrap_or_else(|e| {
            panic!("run podman ({e}): Debian's podman; cargo xtask setup --for-tests installs it")
        })
    }

    /// `podman ARGS…`, its stdout trimmed; panics with its stderr unless it succeeds.
    pub fn podman_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        host::stdout_ok(&mut self.command(args))
    }

    /// Remembers cgroup `cgroup` and the directories of it podman has yet to make.
    fn note_cgroup(&self, cgroup: &str) {
        lock(&self.leaves).insert(cgroup.to_owned());
        lock(&self.made_cgroups).extend(host::missing_cgroup_dirs(cgroup));
    }

    /// Creates and starts container `name` from the rootfs (created first, so that its
    /// cgroup is known for cleanup before it exists).
    pub fn run(&self, name: &str) -> PodmanContainer {
        self.note_cgroup(&format!("{CGROUP_PARENT}/conmon"));
        let rootfs = self.path.join("rootfs");
        let id = self.podman_ok([
            "create".as_ref(),
            "--network".as_ref(),
            "none".as_ref(),
            "--ulimit".as_ref(),
            "nofile=1024:1024".as_ref(),
            "--ulimit".as_ref(),
            "nproc=4096:4096".as_ref(),
            "--name".as_ref(),
            name.as_ref(),
            "--rootfs".as_ref(),
            rootfs.as_os_str(),
            "/bin/sh".as_ref(),
            "-c".as_ref(),
            "/bin/sleep 1000 & exec /bin/sleep 1001".as_ref(),
        ]);
        let cgroup = format!("{CGROUP_PARENT}/libpod-{id}");
        self.note_cgroup(&cgroup);
        self.podman_ok(["start", &id]);
        let pid = self
            .podman_ok(["inspect", "--format", "{{.State.Pid}}", &id])
            .parse()
            .expect("a pid from podman inspect");
        PodmanContainer { id, pid, cgroup }
    }

    /// `podman rm -f -t 0` (SIGKILL at once).
    pub fn remove(&self, id: &str) {
        self.podman_ok(["rm", "-f", "-t", "0", id]);
    }
}

impl Default for Podman {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let mut errors = Vec::new();
        let out = self.podman(["rm", "--all", "--force", "--time", "0"]);
        if !out.status.success() {
            errors.push(format!(
                "podman rm --all: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        for leaf in lock(&self.leaves).iter() {
            // conmon outlives its container by the moment it takes to run podman's
            // cleanup command.
            if !host::wait_cgroup_empty(leaf, CONMON_EXIT_TIMEOUT) {
                errors.extend(host::kill_cgroup_procs(leaf));
            }
        }
        // podman's overlay storage bind-mounts its home onto itself and leaves it mounted
        // when its last command ends in a hurry: expected, not a leak.
        let _ = host::unmount_under(&self.path.join("root/overlay"));
        errors.extend(host::unmount_under(&self.path));
        errors.extend(host::remove_dirs_deepest_first(
            lock(&self.made_cgroups).iter(),
        ));
        if self.made_runc_state
            && let Err(e) = fs::remove_dir(RUNC_STATE)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            errors.push(format!("remove {RUNC_STATE}: {e}"));
        }
        host::report_leaks("podman", self.dir.take(), errors);
    }
}
