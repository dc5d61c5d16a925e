//! What to run ([`ContainerSpec`]) and a handle on what runs ([`RunningContainer`]).

use std::{
    ffi::{OsStr, OsString},
    fs,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

#[cfg(doc)]
use super::Containerd;
use super::Ctr;

/// What to run: namespace, id, labels, cgroup path, image and command.
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    pub(super) namespace: String,
    pub(super) id: String,
    pub(super) labels: Vec<(String, String)>,
    pub(super) cgroup: Option<String>,
    pub(super) image: Option<String>,
    pub(super) command: Vec<String>,
    pub(super) binds: Vec<(PathBuf, String)>,
    /// Extra `ctr run` flags, before the image or `--rootfs`.
    pub(super) run_args: Vec<OsString>,
    /// Where init's stdout and stderr go (`--log-uri file://…`); `None`: `--null-io`.
    pub(super) log_file: Option<PathBuf>,
}

impl ContainerSpec {
    /// Container `id` in namespace `default`, running `/bin/sleep 1000` from
    /// the busybox rootfs in cgroup `/<namespace>/<id>`.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            namespace: "default".into(),
            id: id.into(),
            labels: Vec::new(),
            cgroup: None,
            image: None,
            command: vec!["/bin/sleep".into(), "1000".into()],
            binds: Vec::new(),
            run_args: Vec::new(),
            log_file: None,
        }
    }

    /// The containerd namespace (e.g. `k8s.io`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Bind-mounts host path `src` read-only at `dst` in the container
    /// (a file or a directory).
    pub fn bind_ro(mut self, src: impl Into<PathBuf>, dst: impl Into<String>) -> Self {
        self.binds.push((src.into(), dst.into()));
        self
    }

    /// Extra `ctr run` flags, passed before the image or `--rootfs`, e.g.
    /// `["--cap-add", "CAP_BPF", "--with-ns", "pid:/proc/1/ns/pid"]`.
    pub fn run_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.run_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sends init's stdout and stderr to host file `path` instead of /dev/null.
    pub fn log_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.log_file = Some(path.into());
        self
    }

    /// Adds a container label (`ctr run --label k=v`).
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.push((key.into(), value.into()));
        self
    }

    /// The cgroupfs path, absolute (`ctr run --cgroup`).
    pub fn cgroup(mut self, path: impl Into<String>) -> Self {
        self.cgroup = Some(path.into());
        self
    }

    /// The kubelet layout: cgroup `/kubepods/<qos>/pod<pod_uid>/<id>`
    /// (`qos`: `besteffort` or `burstable`).
    pub fn kubepods(self, qos: &str, pod_uid: &str) -> Self {
        let path = format!("/kubepods/{qos}/pod{pod_uid}/{}", self.id);
        self.cgroup(path)
    }

    /// Runs from an imported image instead of the plain rootfs dir (see
    /// [`Containerd::import_busybox_image`]); recorded as the container's image.
    pub fn image(mut self, image_ref: impl Into<String>) -> Self {
        self.image = Some(image_ref.into());
        self
    }

    /// The command and its arguments; use absolute paths (`/bin/sh`).
    pub fn command<I, S>(mut self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.command = argv.into_iter().map(Into::into).collect();
        self
    }
}

/// A handle on a container of a [`Containerd`]; dropping it leaves the
/// container alone (the daemon's drop cleans up).
#[derive(Clone, Debug)]
pub struct RunningContainer {
    pub(super) ctr: Ctr,
    pub(super) namespace: String,
    pub(super) id: String,
    pub(super) cgroup: String,
    /// Where exec output goes, `<dir>/exec-logs`.
    pub(super) log_dir: PathBuf,
}

impl RunningContainer {
    /// The containerd namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The cgroups path runc put it in, e.g. `/default/<id>`.
    pub fn cgroup_path(&self) -> &str {
        &self.cgroup
    }

    /// `ctr containers info` as JSON (`Image`, `Labels`, `Spec`, …).
    /// `Image` is `""` for a container run from the plain rootfs.
    pub fn info(&self) -> serde_json::Value {
        let out = self.ctr_ok(&["containers", "info", &self.id]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("parse containers info: {e}\n{out}"))
    }

    /// The task's PID and status (`RUNNING`, `STOPPED`, …), if it has a task.
    pub fn task(&self) -> Option<(u32, String)> {
        let out = self.ctr_ok(&["tasks", "ls"]);
        out.lines().skip(1).find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.first() == Some(&self.id.as_str()) && f.len() >= 3)
                .then(|| (f[1].parse().expect("task pid"), f[2].to_owned()))
        })
    }

    /// The PID (in our PID namespace) of the container's init process.
    pub fn init_pid(&self) -> u32 {
        let (pid, _) = self
            .task()
            .unwrap_or_else(|| panic!("{} has no task", self.id));
        pid
    }

    /// Every PID in the task (`ctr tasks ps`), init and execs alike.
    pub fn pids(&self) -> Vec<u32> {
        self.ps().into_iter().map(|(pid, _)| pid).collect()
    }

    /// Starts `argv` in the container, detached, as exec `exec_id`, and
    /// returns its PID. Its stdout and stderr go to [`Self::exec_log`].
    /// Use absolute paths: a failed exec (e.g. `sh` not found in `$PATH`)
    /// still holds `exec_id` in the shim, so a retry needs a new id.
    pub fn exec<I, S>(&self, exec_id: &str, argv: I) -> u32
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let log = self.exec_log_path(exec_id);
        let uri = format!("file://{}", log.display());
        let mut args: Vec<OsString> = ["-n", &self.namespace, "tasks", "exec", "-d"]
            .into_iter()
            .chain(["--log-uri", &uri, "--exec-id", exec_id, &self.id])
            .map(Into::into)
            .collect();
        args.extend(argv.into_iter().map(|a| a.as_ref().to_owned()));
        if let Err(e) = self.ctr.ok(&args) {
            panic!("exec {exec_id} in {}: {e:#}", self.id);
        }
        // The shim knows the PID once Start returned; ps reports it by exec id.
        self.ps()
            .into_iter()
            .find_map(|(pid, exec)| (exec.as_deref() == Some(exec_id)).then_some(pid))
            .unwrap_or_else(|| panic!("exec {exec_id} not in `ctr tasks ps {}`", self.id))
    }

    /// What exec `exec_id` wrote to stdout and stderr so far.
    pub fn exec_log(&self, exec_id: &str) -> String {
        fs::read_to_string(self.exec_log_path(exec_id)).unwrap_or_default()
    }

    /// Sends `signal` (e.g. `SIGTERM`) to the init process.
    pub fn kill(&self, signal: &str) {
        self.ctr_ok(&["tasks", "kill", "-s", signal, &self.id]);
    }

    /// Waits (at most `timeout`) until the task has stopped or is gone.
    pub fn wait_exited(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while let Some((pid, status)) = self.task() {
            if status == "STOPPED" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "task {} (pid {pid}) still {status} after {timeout:?}",
                self.id
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Deletes the task (killing it first if it runs) and returns its exit
    /// status, or `None` if it had no task. The container stays.
    pub fn delete_task(&self) -> Option<i32> {
        self.task()?;
        let out = self
            .ctr
            .output(["-n", &self.namespace, "tasks", "delete", "-f", &self.id]);
        let out = out.unwrap_or_else(|e| panic!("{e:#}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "delete task {}: {stderr}", self.id);
        // ctr 1.6 only logs it: `task ID exit with non-zero exit code N`.
        let code = stderr.split("non-zero exit code ").nth(1).map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().expect("exit code")
        });
        Some(code.unwrap_or(0))
    }

    /// Deletes the task (if any) and the container; returns the task's exit status.
    pub fn delete(self) -> Option<i32> {
        let code = self.delete_task();
        self.ctr_ok(&["containers", "delete", &self.id]);
        code
    }

    /// `ctr tasks ps`: each PID with its exec id (`None` for init).
    fn ps(&self) -> Vec<(u32, Option<String>)> {
        let out = self.ctr_ok(&["tasks", "ps", &self.id]);
        out.lines()
            .skip(1)
            .filter_map(|line| {
                let (pid, info) = line
                    .trim()
                    .split_once(char::is_whitespace)
                    .unwrap_or((line, ""));
                // containerd 1.x prints `&ProcessDetails{ExecID:probe,}`,
                // 2.x `exec_id:"probe"`.
                let exec = info
                    .split("ExecID:")
                    .nth(1)
                    .and_then(|s| s.split(',').next())
                    .or_else(|| info.split("exec_id:\"").nth(1)?.split('"').next());
                Some((pid.trim().parse().ok()?, exec.map(str::to_owned)))
            })
            .collect()
    }

    fn exec_log_path(&self, exec_id: &str) -> PathBuf {
        self.log_dir
            .join(format!("{}-{}-{exec_id}.log", self.namespace, self.id))
    }

    /// `ctr -n NAMESPACE ARGS…`, panicking with stderr on failure.
    fn ctr_ok(&self, args: &[&str]) -> String {
        let args = ["-n", &self.namespace]
            .into_iter()
            .chain(args.iter().copied());
        self.ctr.ok(args).unwrap_or_else(|e| panic!("{e:#}"))
    }
}
