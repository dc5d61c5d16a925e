//! Host-side inspection and cleanup: processes, shims, mounts, cgroups.

use std::{
    collections::BTreeSet,
    ffi::OsStr,
    fs, io,
    path::{Path, PathBuf},
    process::Child,
    thread,
    time::{Duration, Instant},
};

/// SIGTERM (unless `grace` is zero), SIGKILL after `grace`, then reap.
pub(crate) fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(None) = child.try_wait() {
        if !grace.is_zero() {
            // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + grace;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Waits until `pid` is gone or a zombie (shims are reparented to PID 1).
pub(super) fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while process_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Whether `pid` exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// `(pid, namespace, id)` of every live `containerd-shim-runc-v2` serving `socket`.
pub(super) fn shims_of(socket: &Path) -> Vec<(u32, String, String)> {
    let mut shims = Vec::new();
    for pid in crate::proc_pids().unwrap_or_default() {
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&OsStr> = cmdline.split(|&b| b == 0).map(bytes_to_os).collect();
        let flag = |name: &str| {
            let i = args.iter().position(|a| *a == name)?;
            args.get(i + 1).copied()
        };
        let is_shim = args
            .first()
            .is_some_and(|a| Path::new(a).ends_with("containerd-shim-runc-v2"));
        if is_shim && flag("-address") == Some(socket.as_os_str()) && process_alive(pid) {
            let text = |name| {
                flag(name)
                    .map(|a| a.to_string_lossy().into_owned())
                    .unwrap_or_default()
            };
            shims.push((pid, text("-namespace"), text("-id")));
        }
    }
    shims
}

fn bytes_to_os(bytes: &[u8]) -> &OsStr {
    std::os::unix::ffi::OsStrExt::from_bytes(bytes)
}

/// Mount points and filesystem types, from /proc/self/mountinfo.
pub(super) fn mountinfo() -> Vec<(PathBuf, String)> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let point = line.split(' ').nth(4)?;
            let fstype = line.split(" - ").nth(1)?.split(' ').next()?;
            // mountinfo escapes space, tab, newline and backslash as \ooo.
            let point = point
                .replace("\\040", " ")
                .replace("\\011", "\t")
                .replace("\\012", "\n");
            Some((
                PathBuf::from(point.replace("\\134", "\\")),
                fstype.to_owned(),
            ))
        })
        .collect()
}

/// The root of every cgroup hierarchy (each v1 controller and cgroup2).
pub(crate) fn cgroup_roots() -> Vec<PathBuf> {
    mountinfo()
        .into_iter()
        .filter(|(_, fstype)| fstype == "cgroup" || fstype == "cgroup2")
        .map(|(point, _)| point)
        .collect()
}

/// The directories along cgroup path `cgroup` (relative to the hierarchy roots), in
/// every hierarchy, that do not exist yet: those a runtime will make for it.
pub(crate) fn missing_cgroup_dirs(cgroup: &str) -> Vec<PathBuf> {
    let mut missing = Vec::new();
    for mut dir in cgroup_roots() {
        for part in cgroup.split('/').filter(|p| !p.is_empty()) {
            dir.push(part);
            if !dir.exists() {
                missing.push(dir.clone());
            }
        }
    }
    missing
}

/// The PIDs in cgroup directory `dir` (none if it does not exist).
pub(super) fn cgroup_procs(dir: &Path) -> Vec<u32> {
    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    procs
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Waits (at most `timeout`) until no process is left in cgroup `leaf` (a path relative
/// to the hierarchy roots) in any hierarchy; returns whether it emptied.
pub(crate) fn wait_cgroup_empty(leaf: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let dirs: Vec<PathBuf> = cgroup_roots()
        .into_iter()
        .map(|root| root.join(leaf.trim_start_matches('/')))
        .collect();
    while dirs.iter().any(|dir| !cgroup_procs(dir).is_empty()) {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
    true
}

/// SIGKILLs every process left in cgroup `leaf` (a path relative to the
/// hierarchy roots) in every hierarchy; says what it killed.
pub(crate) fn kill_cgroup_procs(leaf: &str) -> Vec<String> {
    let pids: BTreeSet<u32> = cgroup_roots()
        .into_iter()
        .flat_map(|root| cgroup_procs(&root.join(leaf.trim_start_matches('/'))))
        .collect();
    for &pid in &pids {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    pids.iter()
        .map(|pid| format!("process {pid} left in cgroup {leaf}: killed"))
        .collect()
}

/// SIGKILLs every shim serving `socket` and removes its socket from
/// `socket_dir`, named (as containerd 1.6 does) by sha256 of `<socket>/<ns>/<id>`.
pub(super) fn kill_shims(socket: &Path, socket_dir: &Path) -> Vec<String> {
    let mut killed = Vec::new();
    for (pid, ns, id) in shims_of(socket) {
        killed.push(format!("shim {pid} of {ns}/{id} left: killed"));
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        let key = socket.join(&ns).join(&id);
        let hash = super::rootfs::sha256_hex(key.as_os_str().as_encoded_bytes());
        let _ = fs::remove_file(socket_dir.join(hash));
        if !wait_gone(pid, Duration::from_secs(5)) {
            killed.push(format!("shim {pid} survived SIGKILL"));
        }
    }
    killed
}

/// Unmounts everything mounted under `dir`, deepest first (lazily if it is
/// busy); says what it unmounted.
pub(crate) fn unmount_under(dir: &Path) -> Vec<String> {
    let mut mounts: Vec<PathBuf> = mountinfo()
        .into_iter()
        .map(|(point, _)| point)
        .filter(|point| point.starts_with(dir))
        .collect();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    let mut unmounted = Vec::new();
    for point in mounts {
        let Ok(c) = std::ffi::CString::new(point.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: `c` is a valid NUL-terminated path.
        if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
            // SAFETY: as above.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        unmounted.push(format!("{} was still mounted: unmounted", point.display()));
    }
    unmounted
}

/// Removes (empty) directories, deepest first, retrying for 2 s while a
/// cgroup is still busy; says which it could not remove. One that still has
/// subdirectories is shared with someone else (ours went first): it stays.
pub(crate) fn remove_dirs_deepest_first<'a>(
    dirs: impl IntoIterator<Item = &'a PathBuf>,
) -> Vec<String> {
    let mut dirs: Vec<&PathBuf> = dirs.into_iter().collect();
    dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    let mut failed = Vec::new();
    for dir in dirs {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match fs::remove_dir(dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound || has_subdirs(dir) => break,
                Err(e) if Instant::now() >= deadline => {
                    failed.push(format!("remove {}: {e}", dir.display()));
                    break;
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
                Ok(()) => break,
            }
        }
    }
    failed
}

fn has_subdirs(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|mut entries| {
        entries.any(|e| e.and_then(|e| e.file_type()).is_ok_and(|t| t.is_dir()))
    })
}

/// Ends a fixture's drop: removes its temp dir (`dir`, if not taken yet), then panics
/// with what `fixture`'s cleanup found left behind (`leaks`), or only prints it when the
/// test is already panicking.
pub(crate) fn report_leaks(fixture: &str, dir: Option<tempfile::TempDir>, mut leaks: Vec<String>) {
    if let Some(dir) = dir {
        let path = dir.path().to_path_buf();
        if let Err(e) = dir.close() {
            leaks.push(format!("remove {}: {e}", path.display()));
        }
    }
    if leaks.is_empty() {
        return;
    }
    let msg = format!(
        "{fixture} fixture cleanup found leaks:\n{}",
        leaks.join("\n")
    );
    if thread::panicking() {
        eprintln!("{msg}");
    } else {
        panic!("{msg}");
    }
}

/// Runs `cmd` and returns its stdout, trimmed; panics with its stderr unless it succeeds.
pub(crate) fn stdout_ok(cmd: &mut std::process::Command) -> String {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
