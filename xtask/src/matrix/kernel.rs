//! The kernel matrix: Debian's cloud kernels under QEMU (TCG), each with three cgroup
//! layouts, and the host's own kernel natively.
//!
//! Every guest of an architecture boots the same initramfs: a static busybox, the release
//! `pidmap` with the shared objects it loads, a static `true`, [`init.sh`](init.sh) as
//! `/init` and [`checks.sh`](checks.sh). For amd64 guests those are this host's (the
//! libraries `ldd` names); for arm64 guests (`qemu-system-aarch64 -M virt`, Debian's
//! `cloud-arm64` kernels) the agent is cross-built and busybox and the libraries are Debian's
//! arm64 packages ([`crate::arm64`]). `/init` mounts the layout named on the kernel command line
//! (`pidmap.cgroup=v2|v1|hybrid`), runs the checks and powers off; the checks print
//! `PIDMAP-CHECK name pass|fail|skip message` lines on the serial console, which
//! [`follow`] reads. The host row runs the same checks script with busybox applets first
//! on `PATH`, in the host's own cgroup layout.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use oci_image::pidmap::Library;

use super::{
    Kernel, Layout, cpio,
    report::{Cell, Row, Verdict},
    say,
};
use crate::debian::{self, Arch, Debian};
use crate::util::{self, display, fmt_duration, output};

/// The checks, in the order `checks.sh` runs them (its `CHECKS`).
pub(super) const CHECKS: [&str; 8] = [
    "ready", "cgroup", "exited", "pidns", "storm", "rename", "orphan", "overflow",
];

const CHECKS_SH: &str = include_str!("checks.sh");
const INIT_SH: &str = include_str!("init.sh");
/// The program `storm` and `overflow` exec thousands of times.
const STATIC_TRUE_C: &str = "int main(void)\n{\n\treturn 0;\n}\n";
/// Debian's static busybox (setup --for-tests installs `busybox-static`).
const BUSYBOX: &str = "/bin/busybox";
/// Guest memory: the agent peaks at ~55 MiB, the initramfs holds ~30 MiB.
const GUEST_MEMORY_MIB: u32 = 1024;

impl Kernel {
    /// The Debian suite whose `linux-image-cloud-<arch>` is this kernel.
    fn suite(self) -> Option<&'static str> {
        match self {
            Self::V5_10 => Some("bullseye"),
            Self::V6_1 => Some("bookworm"),
            Self::V6_12 => Some("trixie"),
            Self::V7_2 => Some("sid"),
            Self::Host => None,
        }
    }
}

/// A Debian kernel image, unpacked in the cache.
pub(super) struct DebianKernel {
    pub package: String,
    pub version: String,
    pub suite: &'static str,
    pub vmlinuz: PathBuf,
}

/// Finds the image package `linux-image-cloud-<arch>` of `kernel`'s suite depends on (the
/// newest in that suite, so the exact name and version are looked up, never fixed here),
/// downloads it and unpacks its `vmlinuz` into `cache/kernels/`, unless already there.
/// `debian` holds `arch`'s packages.
pub(super) fn fetch(
    debian: &mut Debian,
    cache: &Path,
    kernel: Kernel,
    arch: Arch,
) -> Result<DebianKernel> {
    let suite = kernel
        .suite()
        .context("the host kernel is not a Debian package")?;
    let (package, version) = debian.with_fresh_retry(|d| {
        let meta = format!("linux-image-cloud-{}", arch.name());
        let meta = meta.as_str();
        let meta_version = d.version_in(meta, suite)?;
        if !meta_version.starts_with(&format!("{}.", kernel.series())) {
            bail!(
                "Debian {suite}'s {meta} is {meta_version}, not Linux {}: the matrix's \
                 kernel list needs updating (xtask/src/matrix/kernel.rs)",
                kernel.series()
            );
        }
        let depends = d.field(meta, &meta_version, "Depends")?;
        let package = image_package(&depends, arch)
            .with_context(|| format!("{meta} {meta_version} depends on no image: {depends}"))?;
        let version = d.version_in(&package, suite)?;
        // Since Linux 7.x Debian's `linux-image-*` holds no kernel: it depends on a
        // `linux-binary-*` package that does.
        let image_depends = d.field(&package, &version, "Depends").unwrap_or_default();
        if let Some(binary) = binary_package(&image_depends, arch) {
            let version = d.version_in(&binary, suite)?;
            return Ok((binary, version));
        }
        Ok((package, version))
    })?;
    let dir = cache.join("kernels").join(format!("{package}_{version}"));
    let vmlinuz = dir.join("vmlinuz");
    if vmlinuz.is_file() {
        say(format!(
            "{package} {version} ({suite}) is in the cache ({})",
            vmlinuz.display()
        ));
    } else {
        say(format!("downloading {package} {version} ({suite})"));
        let deb = debian.with_fresh_retry(|d| d.download(&package, &version))?;
        let unpacked = dir.join("unpacked");
        // linux-image-*: /boot/vmlinuz-VERSION; linux-binary-* (7.x): /usr/lib/modules/VERSION/vmlinuz.
        let (pattern, parent) = if package.starts_with("linux-binary-") {
            ("./usr/lib/modules/*/vmlinuz", "usr/lib/modules")
        } else {
            ("./boot/vmlinuz-*", "boot")
        };
        debian::extract_matching(&deb, pattern, &unpacked)?;
        let image = find_vmlinuz(&unpacked.join(parent))
            .with_context(|| format!("{} has no {pattern}", deb.display()))?;
        fs::rename(&image, &vmlinuz)
            .with_context(|| format!("cannot move {} into place", image.display()))?;
        let _ = fs::remove_dir_all(&unpacked);
        // Only the kernel is kept; the package (modules included) is ~60 MiB.
        let _ = fs::remove_file(&deb);
    }
    Ok(DebianKernel {
        package,
        version,
        suite,
        vmlinuz,
    })
}

/// The kernel image under `dir`: a file named `vmlinuz` or `vmlinuz-*`, at most one level
/// down.
fn find_vmlinuz(dir: &Path) -> Option<PathBuf> {
    let is_vmlinuz = |p: &Path| {
        p.is_file()
            && p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n == "vmlinuz" || n.starts_with("vmlinuz-")
            })
    };
    let entries: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.iter().find(|p| is_vmlinuz(p)).cloned().or_else(|| {
        entries
            .iter()
            .filter(|p| p.is_dir())
            .filter_map(|d| fs::read_dir(d).ok())
            .flat_map(|r| r.flatten().map(|e| e.path()))
            .find(|p| is_vmlinuz(p))
    })
}

/// `linux-binary-…-cloud-<arch>` (the signed one, not `linux-binary-unsigned-…`) from an
/// image package's `Depends:` line, where the kernel is in such a package.
fn binary_package(depends: &str, arch: Arch) -> Option<String> {
    let suffix = format!("-cloud-{}", arch.name());
    depends
        .split([',', '|'])
        .filter_map(|item| item.split_whitespace().next())
        .find(|name| {
            name.starts_with("linux-binary-")
                && !name.starts_with("linux-binary-unsigned-")
                && name.ends_with(&suffix)
        })
        .map(str::to_owned)
}

/// `linux-image-…-cloud-<arch>` from a `Depends:` line such as
/// `linux-image-6.1.0-50-cloud-amd64 (= 6.1.176-1)`.
fn image_package(depends: &str, arch: Arch) -> Option<String> {
    let suffix = format!("-cloud-{}", arch.name());
    depends
        .split([',', '|'])
        .filter_map(|item| item.split_whitespace().next())
        .find(|name| name.starts_with("linux-image-") && name.ends_with(&suffix))
        .map(str::to_owned)
}

/// The compiler of `arch`'s static programs: the host's gcc, or Debian's cross gcc.
fn c_compiler(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "gcc",
        Arch::Arm64 => crate::setup::ARM64_LINKER,
    }
}

/// Compiles [`STATIC_TRUE_C`] for `arch` with `gcc -static` into `work/static-true-<arch>`.
pub(super) fn build_static_true(work: &Path, arch: Arch) -> Result<PathBuf> {
    let source = work.join("static-true.c");
    let binary = work.join(format!("static-true-{}", arch.name()));
    fs::write(&source, STATIC_TRUE_C).context("cannot write static-true.c")?;
    let compiler = c_compiler(arch);
    util::run_shown(
        Command::new(compiler)
            .args(["-static", "-O2", "-s", "-o"])
            .arg(&binary)
            .arg(&source),
    )
    .with_context(|| {
        format!(
            "cannot build a static `true` for {} with {compiler}",
            arch.name()
        )
    })?;
    Ok(binary)
}

/// What the guests of one architecture run: the agent, the shared objects it loads (`path`
/// in the guest, `source` here), a static busybox and a static `true`.
pub(super) struct Userland {
    pub arch: Arch,
    pub pidmap: PathBuf,
    pub libraries: Vec<Library>,
    pub busybox: PathBuf,
    pub static_true: PathBuf,
}

/// Writes the guests' initramfs (an uncompressed `newc` cpio) to
/// `work/initramfs-<arch>.cpio`.
pub(super) fn build_initramfs(work: &Path, userland: &Userland) -> Result<PathBuf> {
    let Userland {
        arch,
        pidmap,
        libraries,
        busybox,
        static_true,
    } = userland;
    let path = work.join(format!("initramfs-{}.cpio", arch.name()));
    let file =
        fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut cpio = cpio::Writer::new(std::io::BufWriter::new(file));
    let read = |p: &Path| fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let mut dirs = vec![
        "bin",
        "dev",
        "etc",
        "etc/pidmap",
        "proc",
        "run",
        "sys",
        "tmp",
    ];
    let library_dirs: Vec<String> = libraries
        .iter()
        .filter_map(|lib| lib.path.parent())
        .flat_map(|dir| {
            dir.ancestors()
                .map(|a| a.to_string_lossy().trim_start_matches('/').to_owned())
        })
        .filter(|d| !d.is_empty())
        .collect();
    dirs.extend(library_dirs.iter().map(String::as_str));
    dirs.sort_unstable();
    dirs.dedup();
    for dir in dirs {
        cpio.dir(dir)?;
    }
    // The kernel opens /dev/console for /init before anything is mounted.
    cpio.char_dev("dev/console", 0o600, 5, 1)?;
    cpio.file("bin/busybox", 0o755, &read(busybox)?)?;
    cpio.symlink("bin/sh", "busybox")?;
    cpio.file("bin/pidmap", 0o755, &read(pidmap)?)?;
    cpio.file("bin/static-true", 0o755, &read(static_true)?)?;
    cpio.file("init", 0o755, INIT_SH.as_bytes())?;
    cpio.file("etc/pidmap/checks.sh", 0o644, CHECKS_SH.as_bytes())?;
    for lib in libraries {
        let inside = lib.path.to_string_lossy();
        cpio.file(inside.trim_start_matches('/'), 0o755, &read(&lib.source)?)?;
    }
    let mut out = cpio.finish()?;
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    say(format!(
        "initramfs {} ({} MiB, {}): busybox, pidmap, static-true, {} shared objects, /init, \
         checks.sh",
        path.display(),
        size >> 20,
        arch.name(),
        libraries.len()
    ));
    Ok(path)
}

/// The host's own userland for amd64 guests: the release agent built here, the shared
/// objects `ldd` names, Debian's static busybox installed here.
pub(super) fn host_userland(pidmap: &Path, static_true: &Path) -> Result<Userland> {
    Ok(Userland {
        arch: Arch::Amd64,
        pidmap: pidmap.to_path_buf(),
        libraries: oci_image::pidmap::shared_libraries(pidmap)?,
        busybox: PathBuf::from(BUSYBOX),
        static_true: static_true.to_path_buf(),
    })
}

/// The QEMU system emulator of `arch` and the package that has it.
pub(super) fn qemu_system(arch: Arch) -> (&'static str, &'static str) {
    match arch {
        Arch::Amd64 => ("qemu-system-x86_64", "qemu-system-x86"),
        Arch::Arm64 => ("qemu-system-aarch64", "qemu-system-arm"),
    }
}

/// A row's name: `6.1 v2` for amd64 (as ever), `6.1 arm64 v2` for arm64.
pub(super) fn row_name(release: Kernel, arch: Arch, layout: Layout) -> String {
    match arch {
        Arch::Amd64 => format!("{} {}", release.series(), layout.name()),
        Arch::Arm64 => format!("{} {} {}", release.series(), arch.name(), layout.name()),
    }
}

/// Boots `kernel` (of `arch`) with `layout` under QEMU and runs the checks; every failure
/// (QEMU not starting, a timeout) ends up in the row's cells.
pub(super) fn run_vm(
    kernel: &DebianKernel,
    (release, arch, layout): (Kernel, Arch, Layout),
    initramfs: &Path,
    timeout: Duration,
    log: &Path,
) -> Row {
    let name = row_name(release, arch, layout);
    let label = format!(
        "{} {} ({}), cgroup {}",
        kernel.package,
        kernel.version,
        kernel.suite,
        layout.name()
    );
    let (console, machine): (&str, &[&str]) = match arch {
        Arch::Amd64 => ("ttyS0", &[]),
        // The virt board's PL011 UART; Debian's arm64 cloud kernels have its driver built in.
        Arch::Arm64 => ("ttyAMA0", &["-M", "virt"]),
    };
    let mut qemu = Command::new(qemu_system(arch).0);
    qemu.args(machine)
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2"])
        .args(["-m", &GUEST_MEMORY_MIB.to_string()])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(format!(
            "console={console} rdinit=/init panic=-1 loglevel=4 pidmap.cgroup={}",
            layout.name()
        ));
    say(format!(
        "booting {label} under QEMU (TCG); console log: {}",
        log.display()
    ));
    println!("$ {}", display(&qemu));
    let start = Instant::now();
    let outcome = spawn_piped(&mut qemu).and_then(|child| {
        follow(child, timeout, log, |child| {
            let _ = child.kill();
        })
    });
    into_row(name, label, outcome, start.elapsed(), timeout)
}

/// Runs the checks natively on this host (its own kernel and cgroup layout).
pub(super) fn run_host(
    pidmap: &Path,
    static_true: &Path,
    work: &Path,
    timeout: Duration,
    log: &Path,
) -> Row {
    let release = output(Command::new("uname").arg("-r")).unwrap_or_else(|_| "?".into());
    let layout = host_layout();
    let layout_name = layout.map_or("unknown", Layout::name);
    let name = "host".to_owned();
    let label = format!("host {release}, cgroup {layout_name} (native: no QEMU)");
    say(format!(
        "running the checks natively on this host ({release}, cgroup {layout_name}); log: {}",
        log.display()
    ));
    let start = Instant::now();
    let outcome = host_command(pidmap, static_true, work).and_then(|mut cmd| {
        println!("$ {}", display(&cmd));
        let child = spawn_piped(&mut cmd)?;
        let pid = child.id();
        let outcome = follow(child, timeout, log, stop_host_script);
        remove_host_leftovers(pid);
        outcome
    });
    into_row(name, label, outcome, start.elapsed(), timeout)
}

/// `busybox sh checks.sh` with every busybox applet first on `PATH` (as in the guests), a
/// fresh scratch directory and a free metrics port.
fn host_command(pidmap: &Path, static_true: &Path, work: &Path) -> Result<Command> {
    let dir = work.join("host");
    let bin = dir.join("bin");
    let scratch = dir.join("work");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&bin).with_context(|| format!("cannot create {}", bin.display()))?;
    fs::create_dir_all(&scratch)?;
    for applet in output(Command::new(BUSYBOX).arg("--list"))?.lines() {
        std::os::unix::fs::symlink(BUSYBOX, bin.join(applet))
            .with_context(|| format!("cannot link {applet} to busybox"))?;
    }
    let script = dir.join("checks.sh");
    fs::write(&script, CHECKS_SH).context("cannot write checks.sh")?;
    // A port nobody listens on at this moment.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("cannot find a free loopback port")?
        .port();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin.clone()];
    paths.extend(std::env::split_paths(&path));
    let mut cmd = Command::new(BUSYBOX);
    cmd.arg("sh")
        .arg(&script)
        .env("PATH", std::env::join_paths(paths)?)
        .env("PIDMAP", pidmap)
        .env("STATIC_TRUE", static_true)
        .env("WORK", &scratch)
        .env("METRICS_PORT", port.to_string());
    Ok(cmd)
}

/// On a timeout: SIGTERM lets the script's trap stop the agent, kill what it started and
/// remove its cgroups; SIGKILL after 15 s.
fn stop_host_script(child: &mut Child) {
    // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
}

/// Removes the cgroups a killed host script could not (`pidmap-matrix-<its pid>` in every
/// hierarchy); nothing to do when it cleaned up itself.
fn remove_host_leftovers(script_pid: u32) {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (_, point, fstype) = (fields.next(), fields.next(), fields.next());
        if let (Some(point), Some("cgroup" | "cgroup2")) = (point, fstype) {
            let dir = Path::new(point).join(format!("pidmap-matrix-{script_pid}"));
            if fs::remove_dir(&dir).is_ok() {
                say(format!("removed {} the checks left behind", dir.display()));
            }
        }
    }
}

/// The host's cgroup layout, from its mount table.
pub(super) fn host_layout() -> Option<Layout> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    let types: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    match (types.contains(&"cgroup"), types.contains(&"cgroup2")) {
        (true, true) => Some(Layout::Hybrid),
        (true, false) => Some(Layout::V1),
        (false, true) => Some(Layout::V2),
        (false, false) => None,
    }
}

fn spawn_piped(cmd: &mut Command) -> Result<Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{}`", display(cmd)))
}

/// What a guest (or the host script) printed.
#[derive(Default)]
struct Outcome {
    checks: Vec<(String, Cell)>,
    /// `PIDMAP-INFO` lines, less the prefix.
    infos: Vec<String>,
    /// Whether the script said `PIDMAP-CHECKS-DONE`.
    done: bool,
    timed_out: bool,
    status: Option<ExitStatus>,
    /// The last console lines, for a run that ended early.
    tail: Vec<String>,
}

/// Reads `child`'s stdout and stderr line by line into `log`, collecting check results,
/// until it exits (or, after `PIDMAP-CHECKS-DONE`, its pipes close) or `timeout` passes;
/// then `stop` ends it. The child is always reaped.
fn follow(
    mut child: Child,
    timeout: Duration,
    log: &Path,
    stop: impl FnOnce(&mut Child),
) -> Result<Outcome> {
    let mut log =
        fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let (tx, rx) = mpsc::channel::<String>();
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|stream| {
        let tx = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_owned();
                if tx.send(line).is_err() {
                    break;
                }
            }
        })
    })
    .collect();
    drop(tx);
    let deadline = Instant::now() + timeout;
    let mut outcome = Outcome::default();
    loop {
        let now = Instant::now();
        if now >= deadline {
            outcome.timed_out = true;
            break;
        }
        match rx.recv_timeout((deadline - now).min(Duration::from_millis(200))) {
            Ok(line) => {
                let _ = writeln!(log, "{line}");
                outcome.take_line(&line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            // Quiet for a while: background processes may hold the pipes after the
            // script ended, so its exit ends the run too.
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
            }
        }
    }
    if outcome.timed_out || !matches!(child.try_wait(), Ok(Some(_))) {
        // After a timeout, or when the pipes closed but the child lingers (QEMU after
        // poweroff exits at once; give it a moment).
        let grace = Instant::now() + Duration::from_secs(if outcome.timed_out { 0 } else { 10 });
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < grace {
            thread::sleep(Duration::from_millis(50));
        }
        if matches!(child.try_wait(), Ok(None)) {
            stop(&mut child);
        }
    }
    outcome.status = child.wait().ok();
    // Lines still buffered.
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
        let _ = writeln!(log, "{line}");
        outcome.take_line(&line);
    }
    for reader in readers {
        if reader.is_finished() {
            let _ = reader.join();
        }
    }
    Ok(outcome)
}

impl Outcome {
    fn take_line(&mut self, line: &str) {
        if let Some(at) = line.find("PIDMAP-CHECK ") {
            let mut words = line[at + "PIDMAP-CHECK ".len()..].splitn(3, ' ');
            let (name, verdict, message) = (words.next(), words.next(), words.next());
            if let (Some(name), Some(verdict)) = (name, verdict.and_then(Verdict::parse)) {
                let message = message.unwrap_or("").trim().to_owned();
                say(format!("  {name:9} {:4}  {message}", verdict.word()));
                self.checks
                    .push((name.to_owned(), Cell::new(verdict, message)));
                return;
            }
        }
        if line.contains("PIDMAP-CHECKS-DONE") {
            self.done = true;
        } else if let Some(at) = line.find("PIDMAP-INFO ") {
            self.infos
                .push(line[at + "PIDMAP-INFO ".len()..].trim().to_owned());
        }
        self.tail.push(line.to_owned());
        if self.tail.len() > 8 {
            self.tail.remove(0);
        }
    }
}

/// The row for one run: every check's cell, a failure for each check that never reported.
fn into_row(
    name: String,
    label: String,
    outcome: Result<Outcome>,
    duration: Duration,
    timeout: Duration,
) -> Row {
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(err) => {
            let mut row = Row::failed(name, label, &CHECKS, &format!("{err:#}"));
            row.duration = duration;
            return row;
        }
    };
    let why_missing = if outcome.timed_out {
        format!("no result: timed out after {}", fmt_duration(timeout))
    } else {
        let status = outcome
            .status
            .map_or_else(|| "an unknown status".to_owned(), |s| s.to_string());
        format!(
            "no result: the run ended early ({status}); last lines: {}",
            outcome.tail.join(" | ")
        )
    };
    let cells = CHECKS
        .iter()
        .map(|check| {
            let cell = outcome
                .checks
                .iter()
                .rev()
                .find(|(name, _)| name == check)
                .map(|(_, cell)| cell.clone())
                .unwrap_or_else(|| Cell::fail(why_missing.clone()));
            ((*check).to_owned(), cell)
        })
        .collect();
    let notes = outcome
        .infos
        .iter()
        .filter_map(|info| {
            let (key, value) = info.split_once(' ')?;
            match key {
                "v1-not-mountable" => Some(format!(
                    "v1 controllers the kernel lists but cannot mount: {value}"
                )),
                "error:" => Some(value.to_owned()),
                _ => None,
            }
        })
        .collect();
    say(format!("{label}: done in {}", fmt_duration(duration)));
    Row {
        name,
        label,
        cells,
        notes,
        duration,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checks_script_runs_the_checks_the_table_shows() {
        let line = CHECKS_SH
            .lines()
            .find_map(|l| l.strip_prefix("CHECKS=\""))
            .and_then(|l| l.strip_suffix('"'))
            .expect("CHECKS=\"…\" in checks.sh");
        assert_eq!(line.split(' ').collect::<Vec<_>>(), CHECKS);
        for check in CHECKS {
            assert!(
                CHECKS_SH.contains(&format!("\ncheck_{check}() {{")),
                "checks.sh has no check_{check}"
            );
        }
    }

    #[test]
    fn the_image_package_comes_from_the_metapackage_depends() {
        assert_eq!(
            image_package(
                "linux-image-6.1.0-50-cloud-amd64 (= 6.1.176-1)",
                Arch::Amd64
            )
            .as_deref(),
            Some("linux-image-6.1.0-50-cloud-amd64")
        );
        assert_eq!(
            binary_package(
                "dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, \
                 linux-base-7.2.13+deb14-cloud-amd64 (= 7.2.13-1), \
                 linux-binary-7.2.13+deb14-cloud-amd64 (= 7.2.13-1), \
                 linux-modules-7.2.13+deb14-cloud-amd64 (= 7.2.13-1)",
                Arch::Amd64
            )
            .as_deref(),
            Some("linux-binary-7.2.13+deb14-cloud-amd64")
        );
        assert_eq!(
            binary_package(
                "linux-image-6.1.0-50-cloud-amd64 (= 6.1.176-1)",
                Arch::Amd64
            ),
            None
        );
        assert_eq!(
            image_package(
                "initramfs-tools, linux-image-6.12.57+deb13-cloud-amd64 (= 6.12.57-1)",
                Arch::Amd64
            )
            .as_deref(),
            Some("linux-image-6.12.57+deb13-cloud-amd64")
        );
        assert_eq!(
            image_package("linux-headers-6.1.0-50-cloud-amd64", Arch::Amd64),
            None
        );
        // arm64: the same metapackage scheme, the arch's own suffix.
        let arm64 = "linux-image-6.12.57+deb13-cloud-arm64 (= 6.12.57-1)";
        assert_eq!(
            image_package(arm64, Arch::Arm64).as_deref(),
            Some("linux-image-6.12.57+deb13-cloud-arm64")
        );
        assert_eq!(image_package(arm64, Arch::Amd64), None);
        assert_eq!(
            row_name(Kernel::V6_12, Arch::Arm64, Layout::Hybrid),
            "6.12 arm64 hybrid"
        );
        assert_eq!(row_name(Kernel::V6_1, Arch::Amd64, Layout::V2), "6.1 v2");
    }

    #[test]
    fn console_lines_become_cells_and_notes() {
        let mut o = Outcome::default();
        for line in [
            "[    3.1] random kernel line",
            "PIDMAP-INFO kernel 6.12.57+deb13-cloud-amd64",
            "PIDMAP-INFO v1-not-mountable memory",
            "PIDMAP-CHECK ready pass ready after 4210 ms",
            "PIDMAP-CHECK cgroup skip no cgroup2 mount",
            "PIDMAP-CHECK rename fail pidmap said comm=sh, /proc says renamed\r",
            "PIDMAP-CHECK bogus maybe x",
        ] {
            o.take_line(line.trim_end_matches('\r'));
        }
        assert!(!o.done);
        o.take_line("PIDMAP-CHECKS-DONE");
        let row = into_row(
            "6.12 v1".into(),
            "label".into(),
            Ok(Outcome { done: true, ..o }),
            Duration::from_secs(50),
            Duration::from_secs(600),
        );
        let cell = |name: &str| {
            row.cells
                .iter()
                .find(|(c, _)| c == name)
                .map(|(_, c)| c.clone())
                .expect("cell")
        };
        assert_eq!(cell("ready").verdict, Verdict::Pass);
        assert_eq!(cell("cgroup").verdict, Verdict::Skip);
        assert_eq!(cell("rename").verdict, Verdict::Fail);
        assert_eq!(
            cell("rename").message,
            "pidmap said comm=sh, /proc says renamed"
        );
        assert_eq!(cell("storm").verdict, Verdict::Fail);
        assert!(
            cell("storm")
                .message
                .starts_with("no result: the run ended early")
        );
        assert_eq!(
            row.notes,
            ["v1 controllers the kernel lists but cannot mount: memory"]
        );
    }
}
