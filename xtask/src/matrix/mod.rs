//! `cargo xtask matrix`: prove pidmap on the kernels, cgroup layouts and containerd
//! versions people run, and print one table.
//!
//! Two matrices: [`kernel`] boots Debian's cloud kernels under QEMU with each cgroup
//! layout — amd64, and arm64 for 6.1 and 6.12 with the agent cross-built — (plus the host's
//! own kernel, natively) and runs the kernel-path checks of
//! `checks.sh`; [`containerd`] runs the privileged containerd tests against each
//! containerd version. Downloads are cached in `target/matrix-cache/` (kept between runs),
//! console and test logs go to `target/matrix-logs/`, the table also to
//! `target/matrix-last.md`. Temporary files live in a temp dir removed at the end.

mod containerd;
mod cpio;
mod kernel;
mod report;

use std::{
    fmt::Display,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use self::report::{Report, Row, Section};
use crate::{
    arm64,
    debian::{self, Arch, LazyDebian},
    setup,
    util::{Metadata, Probe, cargo, fmt_duration, is_root, output, probe, run_shown},
};

/// A kernel row of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub(crate) enum Kernel {
    /// Linux 5.10, Debian bullseye's `linux-image-cloud-amd64`.
    #[value(name = "5.10")]
    V5_10,
    /// Linux 6.1, Debian bookworm's.
    #[value(name = "6.1")]
    V6_1,
    /// Linux 6.12, Debian trixie's.
    #[value(name = "6.12")]
    V6_12,
    /// Linux 7.2, Debian sid's: the newest.
    #[value(name = "7.2")]
    V7_2,
    /// This host's own kernel, natively (no QEMU), in its own cgroup layout.
    #[value(name = "host")]
    Host,
}

impl Kernel {
    const DEBIAN: [Self; 4] = [Self::V5_10, Self::V6_1, Self::V6_12, Self::V7_2];

    /// The architectures this kernel has rows for: amd64 for every Debian kernel, arm64
    /// (Debian's `cloud-arm64`, 4 KiB pages) for 6.1 and 6.12.
    fn arches(self) -> &'static [Arch] {
        match self {
            Self::V6_1 | Self::V6_12 => &[Arch::Amd64, Arch::Arm64],
            Self::V5_10 | Self::V7_2 => &[Arch::Amd64],
            Self::Host => &[],
        }
    }

    fn series(self) -> &'static str {
        match self {
            Self::V5_10 => "5.10",
            Self::V6_1 => "6.1",
            Self::V6_12 => "6.12",
            Self::V7_2 => "7.2",
            Self::Host => "host",
        }
    }
}

/// A cgroup layout the guests mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub(crate) enum Layout {
    /// Pure cgroup v2: cgroup2 at /sys/fs/cgroup.
    V2,
    /// Hybrid: every v1 controller at /sys/fs/cgroup/<name>, cgroup2 at /sys/fs/cgroup/unified.
    Hybrid,
    /// Pure v1: every v1 controller at /sys/fs/cgroup/<name>, no cgroup2.
    V1,
}

impl Layout {
    const ALL: [Self; 3] = [Self::V2, Self::Hybrid, Self::V1];

    fn name(self) -> &'static str {
        match self {
            Self::V2 => "v2",
            Self::Hybrid => "hybrid",
            Self::V1 => "v1",
        }
    }
}

/// A containerd version of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub(crate) enum Containerd {
    /// containerd 1.6 (Debian bookworm; the system's when it has that version).
    #[value(name = "1.6")]
    V1_6,
    /// containerd 1.7 (Debian trixie), unpacked privately.
    #[value(name = "1.7")]
    V1_7,
    /// containerd 2.1 (Debian sid), unpacked privately.
    #[value(name = "2.1")]
    V2_1,
}

impl Containerd {
    const ALL: [Self; 3] = [Self::V1_6, Self::V1_7, Self::V2_1];

    fn series(self) -> &'static str {
        match self {
            Self::V1_6 => "1.6",
            Self::V1_7 => "1.7",
            Self::V2_1 => "2.1",
        }
    }
}

#[derive(clap::Args)]
pub(crate) struct Args {
    /// A kernel to check (repeatable; default: all). Debian kernels boot under QEMU;
    /// `host` runs the checks natively on this machine's kernel and cgroup layout.
    #[arg(long = "kernel", value_enum, value_name = "VERSION")]
    kernels: Vec<Kernel>,
    /// A cgroup layout to boot the Debian kernels with (repeatable; default: all). Without
    /// --kernel, the host row runs only if its own layout is selected.
    #[arg(long = "cgroup", value_enum, value_name = "LAYOUT")]
    layouts: Vec<Layout>,
    /// An architecture of the Debian guests (repeatable; default: all). arm64 guests (6.1
    /// and 6.12) run the agent cross-built for arm64 under `qemu-system-aarch64` (TCG);
    /// the host row is amd64.
    #[arg(long = "arch", value_enum, value_name = "ARCH")]
    arches: Vec<Arch>,
    /// A containerd version to run the containerd tests against (repeatable; default: all).
    #[arg(long = "containerd", value_enum, value_name = "VERSION")]
    containerds: Vec<Containerd>,
    /// Skip the kernel matrix.
    #[arg(long, conflicts_with_all = ["kernels", "layouts", "arches"])]
    no_kernel: bool,
    /// Skip the containerd matrix.
    #[arg(long, conflicts_with = "containerds")]
    no_containerd: bool,
    /// The subset CI runs: the four Debian amd64 kernels with pure cgroup v2, and containerd
    /// 2.1 (`cargo xtask test` runs the same tests against the system's containerd, 1.6, in
    /// its privileged stage). No arm64 guest: with one, CI took 45.9 minutes, over its 45.
    #[arg(long, conflicts_with_all = ["kernels", "layouts", "arches", "containerds", "no_kernel", "no_containerd"])]
    ci: bool,
    /// How long one VM (or the host run) may take before it is stopped and its missing
    /// checks fail.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    vm_timeout: u64,
}

/// What one run does.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Debian kernels, the architecture and the layout each boots with.
    vms: Vec<(Kernel, Arch, Layout)>,
    host: bool,
    containerds: Vec<Containerd>,
    vm_timeout: Duration,
}

impl Plan {
    /// The subset `cargo xtask test` runs (and `--ci` selects).
    pub(crate) fn ci() -> Self {
        Self {
            vms: Kernel::DEBIAN
                .iter()
                .map(|&k| (k, Arch::Amd64, Layout::V2))
                .collect(),
            host: false,
            containerds: vec![Containerd::V2_1],
            vm_timeout: Duration::from_secs(600),
        }
    }

    fn from_args(args: &Args, host_layout: Option<Layout>) -> Self {
        if args.ci {
            return Self {
                vm_timeout: Duration::from_secs(args.vm_timeout),
                ..Self::ci()
            };
        }
        let layouts = if args.layouts.is_empty() {
            Layout::ALL.to_vec()
        } else {
            sorted(&args.layouts)
        };
        let (vms, host) = if args.no_kernel {
            (Vec::new(), false)
        } else {
            let kernels = if args.kernels.is_empty() {
                Kernel::DEBIAN.to_vec()
            } else {
                sorted(&args.kernels)
            };
            let arches = if args.arches.is_empty() {
                vec![Arch::Amd64, Arch::Arm64]
            } else {
                sorted(&args.arches)
            };
            // Amd64 rows first, then arm64 (one agent build and initramfs each).
            let mut vms = Vec::new();
            for &a in &arches {
                for &k in kernels.iter().filter(|k| k.arches().contains(&a)) {
                    vms.extend(layouts.iter().map(|&l| (k, a, l)));
                }
            }
            // The host row is amd64: an `--arch arm64` run leaves it out unless named.
            let host = args.kernels.contains(&Kernel::Host)
                || (args.kernels.is_empty()
                    && arches.contains(&Arch::Amd64)
                    && host_layout
                        .is_some_and(|l| args.layouts.is_empty() || args.layouts.contains(&l)));
            (vms, host)
        };
        let containerds = if args.no_containerd {
            Vec::new()
        } else if args.containerds.is_empty() {
            Containerd::ALL.to_vec()
        } else {
            sorted(&args.containerds)
        };
        Self {
            vms,
            host,
            containerds,
            vm_timeout: Duration::from_secs(args.vm_timeout),
        }
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.vms.is_empty() {
            let vms: Vec<String> = self
                .vms
                .iter()
                .map(|&(k, a, l)| kernel::row_name(k, a, l))
                .collect();
            parts.push(format!("QEMU guests: {}", vms.join(", ")));
        }
        if self.host {
            parts.push("the host kernel, natively".to_owned());
        }
        if !self.containerds.is_empty() {
            let versions: Vec<&str> = self.containerds.iter().map(|c| c.series()).collect();
            parts.push(format!("containerd {}", versions.join(", ")));
        }
        parts.join("; ")
    }
}

fn sorted<T: Ord + Copy>(items: &[T]) -> Vec<T> {
    let mut items = items.to_vec();
    items.sort_unstable();
    items.dedup();
    items
}

fn say(message: impl Display) {
    println!("matrix: {message}");
}

/// `cargo xtask matrix`: see the [module docs](self) and `--help`.
pub(crate) fn run(args: &Args) -> Result<()> {
    let words: Vec<String> = std::env::args().skip(1).collect();
    let command = format!("cargo xtask {}", words.join(" "));
    run_plan(&Plan::from_args(args, kernel::host_layout()), &command)
}

/// This machine in a few words, e.g. `Debian GNU/Linux 12 (bookworm), kernel 6.18.44, 2 cores`.
fn machine() -> String {
    let os = fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|name| name.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "unknown OS".to_owned());
    let kernel = output(Command::new("uname").arg("-r")).unwrap_or_else(|_| "?".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    format!("{os}, kernel {kernel}, {cores} cores")
}

/// The matrix's download cache, `target/matrix-cache/` (kept between runs).
fn cache_dir(target: &Path) -> PathBuf {
    target.join(debian::CACHE)
}

/// The directory of a containerd with NRI (2.1, Debian sid's, unpacked into the matrix
/// cache once) for the test file that needs one whatever the system's containerd is.
pub(crate) fn containerd_with_nri() -> Result<PathBuf> {
    let target = Metadata::load()?.target_dir()?;
    let mut debian = LazyDebian::new(&target, Arch::Amd64);
    let runtime = containerd::prepare(Containerd::V2_1, &cache_dir(&target), &mut debian)?;
    match runtime.bin_dir {
        Some(dir) => Ok(dir),
        // The system's containerd is 2.1 itself.
        None => {
            let path = output(Command::new("sh").args(["-c", "command -v containerd"]))?;
            Ok(PathBuf::from(path.trim())
                .parent()
                .context("containerd's directory")?
                .to_path_buf())
        }
    }
}

/// Runs `plan` (started by `command`, which the report names), prints the table and writes
/// `target/matrix-last.md`; fails if a cell failed.
pub(crate) fn run_plan(plan: &Plan, command: &str) -> Result<()> {
    if plan.vms.is_empty() && !plan.host && plan.containerds.is_empty() {
        bail!("nothing selected: --no-kernel and --no-containerd together leave no matrix");
    }
    if !is_root() {
        bail!(
            "the matrix loads eBPF programs, creates cgroups and drives containerd: run \
             `cargo xtask matrix` as root"
        );
    }
    let start = Instant::now();
    say(format!("plan: {}", plan.describe()));
    setup::run(&setup::Options { for_tests: true })?;
    let target = Metadata::load()?.target_dir()?;
    let cache = cache_dir(&target);
    let logs = target.join("matrix-logs");
    let _ = fs::remove_dir_all(&logs);
    fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let work = tempfile::Builder::new()
        .prefix("pidmap-matrix-")
        .tempdir()
        .context("cannot create a temp dir")?;
    let mut debian = LazyDebian::new(&target, Arch::Amd64);

    let mut report = Report::default();
    if !plan.vms.is_empty() || plan.host {
        report.sections.push(kernel_section(
            plan,
            &target,
            &cache,
            &logs,
            work.path(),
            &mut debian,
        )?);
    }
    if !plan.containerds.is_empty() {
        report
            .sections
            .push(containerd_section(plan, &cache, &logs, &mut debian)?);
    }
    work.close()
        .context("cannot remove the matrix's temp dir")?;

    let elapsed = start.elapsed();
    let date = output(Command::new("date").args(["-u", "+%Y-%m-%d"]))?;
    println!(
        "\nmatrix results ({date}, {} in all):\n",
        fmt_duration(elapsed)
    );
    print!("{}", report.text());
    let last = target.join("matrix-last.md");
    let markdown = format!(
        "`{command}` on {date}, {} in all, on {}: {}.\n\n{}",
        fmt_duration(elapsed),
        machine(),
        plan.describe(),
        report.markdown()
    );
    fs::write(&last, markdown).with_context(|| format!("cannot write {}", last.display()))?;
    println!(
        "\nmatrix: the table is also in {}; logs in {}",
        last.display(),
        logs.display()
    );
    let (failed, total) = report.counts();
    if failed > 0 {
        bail!("{failed} of {total} matrix cells failed");
    }
    Ok(())
}

fn kernel_section(
    plan: &Plan,
    target: &Path,
    cache: &Path,
    logs: &Path,
    work: &Path,
    debian: &mut LazyDebian,
) -> Result<Section> {
    say("building the release agent for the kernel checks");
    run_shown(cargo().args(["build", "--release", "-p", "pidmap"]))?;
    let pidmap = target.join("release/pidmap");
    require_tool("gcc", &["gcc", "libc6-dev"])?;
    let static_true = kernel::build_static_true(work, Arch::Amd64)?;
    let mut rows = Vec::new();
    let mut arches: Vec<Arch> = plan.vms.iter().map(|&(_, a, _)| a).collect();
    arches.dedup();
    let mut debian_arm64 = LazyDebian::new(target, Arch::Arm64);
    for arch in arches {
        let vms: Vec<(Kernel, Arch, Layout)> =
            plan.vms.iter().filter(|v| v.1 == arch).copied().collect();
        let (qemu, qemu_package) = kernel::qemu_system(arch);
        // A guest userland that cannot be built fails its rows, not the whole matrix.
        let initramfs = require_tool(qemu, &[qemu_package])
            .and_then(|()| match arch {
                Arch::Amd64 => kernel::host_userland(&pidmap, &static_true),
                Arch::Arm64 => arm64_userland(target, work, &mut debian_arm64),
            })
            .and_then(|userland| kernel::build_initramfs(work, &userland))
            .map_err(|err| format!("cannot prepare the {} guests: {err:#}", arch.name()));
        let debian = match arch {
            Arch::Amd64 => &mut *debian,
            Arch::Arm64 => &mut debian_arm64,
        };
        let mut kernels: Vec<Kernel> = vms.iter().map(|v| v.0).collect();
        kernels.dedup();
        for release in kernels {
            let image = match &initramfs {
                Ok(_) => debian
                    .get()
                    .and_then(|d| kernel::fetch(d, cache, release, arch))
                    .map_err(|err| format!("cannot get the kernel: {err:#}")),
                Err(err) => Err(err.clone()),
            };
            for &vm in vms.iter().filter(|v| v.0 == release) {
                let (_, _, layout) = vm;
                let name = kernel::row_name(release, arch, layout);
                let row = match (&initramfs, &image) {
                    (Ok(initramfs), Ok(image)) => kernel::run_vm(
                        image,
                        vm,
                        initramfs,
                        plan.vm_timeout,
                        &logs.join(format!("kernel-{}.log", name.replace(' ', "-"))),
                    ),
                    (Err(err), _) | (_, Err(err)) => Row::failed(
                        name,
                        format!(
                            "Linux {} (Debian, {}), cgroup {}",
                            release.series(),
                            arch.name(),
                            layout.name()
                        ),
                        &kernel::CHECKS,
                        err,
                    ),
                };
                rows.push(row);
            }
        }
    }
    if plan.host {
        rows.push(kernel::run_host(
            &pidmap,
            &static_true,
            work,
            plan.vm_timeout,
            &logs.join("kernel-host.log"),
        ));
    }
    Ok(Section {
        title: "kernel × cgroup layout",
        columns: kernel::CHECKS.map(str::to_owned).to_vec(),
        rows,
    })
}

/// The arm64 guests' userland: the release agent cross-built for arm64, a static `true` from
/// the cross gcc, and Debian's arm64 busybox and the shared objects the agent loads.
fn arm64_userland(target: &Path, work: &Path, debian: &mut LazyDebian) -> Result<kernel::Userland> {
    say("cross-building the release agent for the arm64 guests");
    let pidmap = arm64::build_agent(false)?;
    let static_true = kernel::build_static_true(work, Arch::Arm64)?;
    let root = arm64::Root::prepare(target, debian)?;
    let libraries = root.libraries(&pidmap)?;
    Ok(kernel::Userland {
        arch: Arch::Arm64,
        pidmap,
        libraries,
        busybox: root.busybox(),
        static_true,
    })
}

fn containerd_section(
    plan: &Plan,
    cache: &Path,
    logs: &Path,
    debian: &mut LazyDebian,
) -> Result<Section> {
    say("building the agent and the privileged tests for the containerd matrix");
    // The CLI and image tests run the debug `pidmap` binary, the client tests the
    // pidmap-client examples: the matrix builds them itself, so it works on its own.
    crate::privileged::build_prerequisites()?;
    run_shown(cargo().args(["test", "-p", "pidmap-tests", "--no-run"]))?;
    let tests = containerd::fixture_tests()?;
    say(format!(
        "the test files that start the containerd fixture: {}",
        tests.join(", ")
    ));
    let mut rows = Vec::new();
    for &version in &plan.containerds {
        let row = match containerd::prepare(version, cache, debian) {
            Ok(runtime) => containerd::run_tests(version, &runtime, &tests, logs),
            Err(err) => Row::failed(
                format!("containerd {}", version.series()),
                format!("containerd {}", version.series()),
                &tests,
                &format!("cannot get containerd: {err:#}"),
            ),
        };
        rows.push(row);
    }
    Ok(Section {
        title: "containerd (+ runc)",
        columns: tests,
        rows,
    })
}

/// Installs `packages` (with the system's apt) unless `tool --version` works.
fn require_tool(tool: &str, packages: &[&str]) -> Result<()> {
    match probe(tool, &["--version"]) {
        Probe::Works(version) => {
            say(format!("{tool} present ({version})"));
            Ok(())
        }
        Probe::Fails(why) => bail!("{tool} is installed but `{tool} --version` fails: {why}"),
        Probe::NotFound => {
            say(format!(
                "{tool} not found: installing {}",
                packages.join(" ")
            ));
            setup::apt_install(packages)?;
            match probe(tool, &["--version"]) {
                Probe::Works(_) => Ok(()),
                _ => bail!(
                    "{tool} still does not run after installing {}",
                    packages.join(" ")
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn plan(argv: &[&str], host: Option<Layout>) -> Plan {
        let cli = Cli::try_parse_from([&["matrix"], argv].concat()).expect("valid arguments");
        Plan::from_args(&cli.args, host)
    }

    #[test]
    fn no_options_is_everything_and_the_host_in_its_layout() {
        let p = plan(&[], Some(Layout::Hybrid));
        // Four amd64 kernels and two arm64 ones, three layouts each.
        assert_eq!(p.vms.len(), 18);
        assert_eq!(p.vms[12], (Kernel::V6_1, Arch::Arm64, Layout::V2));
        assert!(p.host);
        assert_eq!(p.containerds, Containerd::ALL);
    }

    #[test]
    fn ci_is_four_kernels_on_v2_and_containerd_2_1() {
        let p = plan(&["--ci"], Some(Layout::Hybrid));
        assert_eq!(
            p.vms,
            [
                (Kernel::V5_10, Arch::Amd64, Layout::V2),
                (Kernel::V6_1, Arch::Amd64, Layout::V2),
                (Kernel::V6_12, Arch::Amd64, Layout::V2),
                (Kernel::V7_2, Arch::Amd64, Layout::V2)
            ]
        );
        assert!(!p.host);
        assert_eq!(p.containerds, [Containerd::V2_1]);
        assert!(Cli::try_parse_from(["matrix", "--ci", "--kernel", "6.1"]).is_err());
    }

    #[test]
    fn subsets_combine() {
        let p = plan(
            &["--kernel", "6.1", "--cgroup", "v2", "--no-containerd"],
            Some(Layout::Hybrid),
        );
        assert_eq!(
            p.vms,
            [
                (Kernel::V6_1, Arch::Amd64, Layout::V2),
                (Kernel::V6_1, Arch::Arm64, Layout::V2)
            ]
        );
        let arm = plan(
            &["--arch", "arm64", "--cgroup", "hybrid", "--no-containerd"],
            None,
        );
        assert_eq!(
            arm.vms,
            [
                (Kernel::V6_1, Arch::Arm64, Layout::Hybrid),
                (Kernel::V6_12, Arch::Arm64, Layout::Hybrid)
            ]
        );
        assert!(!plan(&["--arch", "arm64"], Some(Layout::Hybrid)).host);
        // 5.10 has no arm64 row.
        assert!(
            plan(&["--kernel", "5.10", "--arch", "arm64"], None)
                .vms
                .is_empty()
        );
        assert!(!p.host);
        assert!(p.containerds.is_empty());

        // The host row follows the layout filter unless named.
        assert!(!plan(&["--cgroup", "v2"], Some(Layout::Hybrid)).host);
        assert!(plan(&["--cgroup", "hybrid"], Some(Layout::Hybrid)).host);
        let host_only = plan(
            &["--kernel", "host", "--cgroup", "v2"],
            Some(Layout::Hybrid),
        );
        assert!(host_only.host && host_only.vms.is_empty());

        let c = plan(
            &["--no-kernel", "--containerd", "2.1", "--containerd", "1.7"],
            None,
        );
        assert!(c.vms.is_empty() && !c.host);
        assert_eq!(c.containerds, [Containerd::V1_7, Containerd::V2_1]);
    }
}
