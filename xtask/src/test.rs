//! `cargo xtask test`: setup --for-tests, lint, unit tests, a short run of every fuzz target,
//! the privileged tests, the ground-truth and fault tests again with load beside them, then
//! the CI subset of `cargo xtask matrix`.

use std::ffi::OsString;

use anyhow::{Result, bail};

use crate::{
    fuzz, image, lint, load, matrix, privileged, run, setup,
    stages::Stages,
    util::{cargo, is_root, run_shown},
};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Run the whole privileged stage with the load beside it (a busy loop on every core
    /// and an exec storm), not only the ground-truth and fault tests.
    #[arg(long)]
    load: bool,
    /// Run only the privileged stage (after setup), this many times in a row, each with its
    /// own summary, then one line per run: how a timing-sensitive test is caught. With
    /// --load, every run has the load beside it.
    #[arg(long, value_name = "N")]
    privileged_runs: Option<u32>,
    /// Arguments for the privileged test binaries (after `--test-threads=1`), e.g. a test
    /// name filter or `--nocapture`.
    #[arg(last = true, value_name = "TEST_ARGS")]
    test_args: Vec<OsString>,
}

const UNIT: &str = "unit tests";
const FUZZ: &str = "fuzz (10 s per target)";
/// Seconds each fuzz target runs in the test: the build is most of the stage.
const FUZZ_SECONDS: u64 = 10;
const PRIVILEGED: &str = "privileged tests";
const LOADED: &str = "ground truth and faults, with load";
const MATRIX: &str = "matrix --ci";
const IMAGE: &str = "image from two checkouts";
const ARM64: &str = "arm64 build";

/// The test files run a second time with the load beside them: the ground truth and the
/// fault tests, whose answers must stay right on a busy node.
pub(crate) const LOADED_FILES: [&str; 4] =
    ["ground_truth", "faults", "faults_containerd", "hostile"];

/// Runs every stage (a failed lint does not stop the tests), then prints a summary.
pub(crate) fn run(args: &Args) -> Result<()> {
    if let Some(runs) = args.privileged_runs {
        return privileged_runs(args, runs);
    }
    let mut stages = Stages::new("test");
    if !is_root() {
        eprintln!(
            "xtask: warning: not running as root: lint and unit tests will run, the privileged \
             tests will fail"
        );
    }
    if !stages.run("setup --for-tests", || {
        setup::run(&setup::Options { for_tests: true })
    }) {
        for name in lint::STAGES
            .into_iter()
            .chain([UNIT, FUZZ, PRIVILEGED, LOADED, MATRIX, IMAGE, ARM64])
        {
            stages.skip(name, "setup failed");
        }
        return stages.finish();
    }
    lint::add_stages(&mut stages);
    stages.run(UNIT, || {
        run_shown(cargo().args([
            "test",
            "--workspace",
            "--exclude",
            "agent-ebpf",
            "--exclude",
            "pidmap-tests",
        ]))
    });
    stages.run(FUZZ, || {
        fuzz::fuzz(&fuzz::TARGETS, fuzz::Budget::Seconds(FUZZ_SECONDS))
    });
    stages.run(PRIVILEGED, || {
        if !is_root() {
            bail!(
                "the privileged tests load eBPF programs and drive containerd and runc: run \
                 `cargo xtask test` as root"
            );
        }
        privileged::build_prerequisites()?;
        let (ran, _) = load::beside(args.load, || {
            privileged::run_suite(PRIVILEGED, &args.test_args)
        });
        ran.map(drop)
    });
    // The ground truth and the fault tests once more, with a busy loop on every core and an
    // exec storm beside them: zero wrong answers on a busy node too.
    if !args.load {
        stages.run(LOADED, || {
            if !is_root() {
                bail!("the privileged tests need root");
            }
            let (ran, _) = load::beside(true, || {
                privileged::run(LOADED, &LOADED_FILES, &args.test_args, &[])
            });
            ran.map(drop)
        });
    }
    // Debian's 5.10, 6.1, 6.12 and 7.2 kernels with pure cgroup v2 under QEMU, and the
    // containerd tests against containerd 2.1 (the system's 1.6 ran them in the privileged
    // stage): what fits CI's time (an arm64 guest did not: 45.9 minutes with one).
    stages.run(MATRIX, || {
        if !is_root() {
            bail!("the matrix boots VMs with eBPF and drives containerd: run `cargo xtask test` as root");
        }
        matrix::run_plan(
            &matrix::Plan::ci(),
            "cargo xtask matrix --ci (from cargo xtask test)",
        )
    });
    // Two clones of HEAD in different directories build byte-identical image archives, each
    // with an amd64 and an arm64 platform (four clean release builds: ~11 minutes here).
    stages.run(IMAGE, image::check_reproducible);
    // The agent cross-built for arm64 nodes, started under user-mode QEMU (2–3 minutes).
    stages.run(ARM64, run::arm64_check);
    stages.finish()
}

/// `--privileged-runs N`: the privileged stage N times in a row.
fn privileged_runs(args: &Args, runs: u32) -> Result<()> {
    if !is_root() {
        bail!("the privileged tests need root");
    }
    setup::run(&setup::Options { for_tests: true })?;
    privileged::build_prerequisites()?;
    let mut lines = Vec::new();
    let mut failed_runs = 0;
    for run in 1..=runs {
        let title = format!("privileged run {run} of {runs}");
        let started = std::time::Instant::now();
        let (ran, load) =
            load::beside(args.load, || privileged::run_suite(&title, &args.test_args));
        let verdict = match &ran {
            Ok(s) => format!("{} tests passed, 0 failed", s.passed()),
            Err(e) => {
                failed_runs += 1;
                format!("FAILED: {e:#}")
            }
        };
        lines.push(format!(
            "run {run}: {verdict} in {}{}",
            crate::util::fmt_duration(started.elapsed()),
            load.map(|l| format!(", beside {l}")).unwrap_or_default()
        ));
    }
    println!("\nprivileged runs:");
    for line in &lines {
        println!("  {line}");
    }
    if failed_runs > 0 {
        bail!("{failed_runs} of {runs} privileged runs failed");
    }
    Ok(())
}
