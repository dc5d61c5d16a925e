//! A private Docker Engine (`dockerd`, Debian's `docker.io`) on the fixture's containerd.
//!
//! [`Dockerd::start`] runs `dockerd` with its data root, exec root, API socket, pid file,
//! daemon config and key file in one temp dir (`/tmp/pidmap-dockerd-XXXXXX`), without a
//! bridge, iptables, IP forwarding or masquerading, on a [`Containerd`]'s socket: its
//! containers run in containerd namespace `moby`, with `--network none`. The `docker`
//! client runs with its config in the temp dir too. [`Dockerd::import_busybox_image`]
//! imports the fixture's busybox rootfs with `docker import`.
//!
//! Dropping it removes every container, stops `dockerd` (SIGTERM; SIGKILL after 20 s),
//! unmounts what is still mounted under its dir, removes `/run/docker` if `dockerd` made
//! it (Docker puts its plugin directory there whatever the exec root) and the dir — also
//! when the test panics. A leak found on drop panics (or is printed, when already
//! panicking). It never touches a system `dockerd` or `/var/lib/docker`. Declare it after
//! the [`Containerd`] it runs on, so it is dropped first.
//!
//! # Examples
//!
//! ```no_run
//! use pidmap_tests::{containerd::Containerd, docker::Dockerd};
//!
//! let ctrd = Containerd::start();
//! let docker = Dockerd::start(&ctrd);
//! docker.import_busybox_image("localhost/busybox:docker");
//! let c = docker.run("web", "localhost/busybox:docker", &[("team", "infra")]);
//! assert!(c.pid > 0);
//! ```

use std::{
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::containerd::{Containerd, host};

/// How long `dockerd` may take to answer `docker version`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `dockerd` gets after SIGTERM (it stops its containers first).
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Where `dockerd` puts its plugin sockets, whatever `--exec-root` says.
const RUN_DOCKER: &str = "/run/docker";
/// The cgroup parent of Docker's containers (cgroupfs driver).
pub const CGROUP_PARENT: &str = "/docker";

/// A container `docker run` started.
#[derive(Clone, Debug)]
pub struct DockerContainer {
    /// Docker's id, which is also its containerd id (namespace `moby`).
    pub id: String,
    pub name: String,
    /// Its init process, in our PID namespace.
    pub pid: u32,
}

/// A private `dockerd`; see the [module docs](self).
pub struct Dockerd<'a> {
    ctrd: &'a Containerd,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    daemon: Option<Child>,
    /// Whether /run/docker did not exist before.
    made_run_docker: bool,
}

impl<'a> Dockerd<'a> {
    /// Starts `dockerd` on `ctrd` and waits (at most 30 s) until it answers.
    ///
    /// Panics with its log if it does not come up, or if Debian's `docker.io` is not
    /// installed (`cargo xtask setup --for-tests` installs it).
    pub fn start(ctrd: &'a Containerd) -> Self {
        crate::require_root();
        let dir = tempfile::Builder::new()
            .prefix("pidmap-dockerd-")
            .tempdir_in("/tmp")
            .expect("create the dockerd temp dir");
        let path = dir.path().to_path_buf();
        // The daemon's identity key goes to /etc/docker/key.json unless told otherwise.
        let config = serde_json::json!({
            "deprecated-key-path": path.join("key.json"),
        });
        fs::write(path.join("daemon.json"), config.to_string()).expect("write daemon.json");
        fs::create_dir(path.join("cli")).expect("create the client's config dir");
        let mut docker = Self {
            ctrd,
            dir: Some(dir),
            path,
            daemon: None,
            made_run_docker: !Path::new(RUN_DOCKER).exists(),
        };
        // On failure `docker` is dropped while unwinding, which cleans up.
        docker.launch().unwrap_or_else(|e| panic!("{e:#}"));
        // Docker makes /docker in every hierarchy for its containers' cgroups.
        ctrd.note_cgroup(CGROUP_PARENT);
        docker
    }

    /// The Docker Engine API socket.
    pub fn socket(&self) -> PathBuf {
        self.path.join("docker.sock")
    }

    /// `dockerd`'s log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.path.join("dockerd.log")).unwrap_or_default()
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let log = fs::File::create(self.path.join("dockerd.log")).context("create dockerd.log")?;
        let mut cmd = Command::new("dockerd");
        cmd.arg("--config-file")
            .arg(self.path.join("daemon.json"))
            .arg("--data-root")
            .arg(self.path.join("data"))
            .arg("--exec-root")
            .arg(self.path.join("exec"))
            .arg("--pidfile")
            .arg(self.path.join("docker.pid"))
            .arg("--host")
            .arg(format!("unix://{}", self.socket().display()))
            .arg("--containerd")
            .arg(self.ctrd.socket())
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--userland-proxy=false",
                "--storage-driver=overlay2",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.daemon = Some(cmd.spawn().context(
            "spawn dockerd (Debian's docker.io; `cargo xtask setup --for-tests` installs it)",
        )?);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.daemon.as_mut().and_then(|c| c.try_wait().ok()?) {
                self.daemon = None;
                bail!(
                    "dockerd exited with {status} before it was ready; its log:\n{}",
                    self.log()
                );
            }
            if self.docker(["version"]).status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "dockerd not ready after {READY_TIMEOUT:?}; its log:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `docker ARGS…` against this daemon (its client config in the temp dir).
    fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_HOST", format!("unix://{}", self.socket().display()))
            .env("DOCKER_CONFIG", self.path.join("cli"))
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// `docker ARGS…` against this daemon, whatever its exit status.
    pub fn docker<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(args)
            .output()
            .expect("run docker (Debian's docker.io)")
    }

    /// `docker ARGS…`, its stdout trimmed; panics with its stderr unless it succeeds.
    pub fn docker_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        host::stdout_ok(&mut self.command(args))
    }

    /// Imports the fixture's busybox rootfs as image `reference` (`docker import`).
    pub fn import_busybox_image(&self, reference: &str) {
        let tarball = self.path.join("busybox.tar");
        let file = fs::File::create(&tarball).expect("create busybox.tar");
        let mut archive = tar::Builder::new(file);
        archive.follow_symlinks(false);
        archive
            .append_dir_all(".", self.ctrd.rootfs())
            .and_then(|()| archive.finish())
            .expect("write busybox.tar");
        self.docker_ok(["import".as_ref(), tarball.as_os_str(), reference.as_ref()]);
    }

    /// `docker run -d --network none --name NAME --label K=V… IMAGE /bin/sleep 1000`
    /// (created first, so that its cgroup is known for cleanup before it exists).
    pub fn run(&self, name: &str, image: &str, labels: &[(&str, &str)]) -> DockerContainer {
        let mut args = vec![
            "create".to_owned(),
            "--network".to_owned(),
            "none".to_owned(),
            "--name".to_owned(),
            name.to_owned(),
        ];
        for (k, v) in labels {
            args.extend(["--label".to_owned(), format!("{k}={v}")]);
        }
        args.extend([image.to_owned(), "/bin/sleep".to_owned(), "1000".to_owned()]);
        let id = self.docker_ok(&args);
        self.ctrd.note_cgroup(&format!("{CGROUP_PARENT}/{id}"));
        self.docker_ok(["start", &id]);
        let pid = self
            .docker_ok(["inspect", "--format", "{{.State.Pid}}", &id])
            .parse()
            .expect("a pid from docker inspect");
        DockerContainer {
            id,
            name: name.to_owned(),
            pid,
        }
    }

    /// `docker rm -f` every container; says what failed.
    fn remove_all(&self) -> Vec<String> {
        let out = self.docker(["ps", "-aq", "--no-trunc"]);
        if !out.status.success() {
            return vec![format!(
                "docker ps: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )];
        }
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if ids.is_empty() {
            return Vec::new();
        }
        let out = self.docker(
            ["rm", "-f"]
                .into_iter()
                .chain(ids.iter().map(String::as_str)),
        );
        if out.status.success() {
            Vec::new()
        } else {
            vec![format!(
                "docker rm -f: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )]
        }
    }
}

impl Drop for Dockerd<'_> {
    fn drop(&mut self) {
        let mut errors = Vec::new();
        if self.daemon.is_some() {
            errors.extend(self.remove_all());
        }
        if let Some(mut child) = self.daemon.take() {
            host::terminate(&mut child, STOP_TIMEOUT);
        }
        // dockerd unmounts its data root and container mounts when it stops cleanly.
        errors.extend(host::unmount_under(&self.path));
        if self.made_run_docker {
            let plugins = Path::new(RUN_DOCKER).join("plugins");
            let _ = fs::remove_dir(plugins);
            if let Err(e) = fs::remove_dir(RUN_DOCKER)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                errors.push(format!("remove {RUN_DOCKER}: {e}"));
            }
        }
        if !errors.is_empty() {
            errors.push(format!("dockerd log:\n{}", self.log()));
        }
        host::report_leaks("dockerd", self.dir.take(), errors);
    }
}
