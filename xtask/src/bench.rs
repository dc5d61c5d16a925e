//! `cargo xtask bench`: the clean release build time, the `pidmap-bench` binary, then 10 million
//! runs of every fuzz target.

use std::{ffi::OsString, fs, io, path::Path, time::Instant};

use anyhow::{Context as _, Result, bail};

use crate::{
    fuzz, setup,
    util::{Metadata, cargo, fmt_duration, is_root, run_shown},
};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Do not measure the clean release build time.
    #[arg(long)]
    skip_build_time: bool,
    /// Do not run the fuzz targets.
    #[arg(long, conflicts_with = "fuzz_only")]
    skip_fuzz: bool,
    /// Run only the fuzz part (10 million runs of each target).
    #[arg(long)]
    fuzz_only: bool,
    /// Arguments for `pidmap-bench`.
    #[arg(last = true, value_name = "BENCH_ARGS")]
    bench_args: Vec<OsString>,
}

const BENCH_PACKAGE: &str = "pidmap-tests";
const BENCH_BIN: &str = "pidmap-bench";
/// Runs of each fuzz target in the bench.
const FUZZ_RUNS: u64 = 10_000_000;

pub(crate) fn run(args: &Args) -> Result<()> {
    setup::run(&setup::Options { for_tests: false })?;
    if !args.fuzz_only {
        agent_bench(args)?;
    }
    if !args.skip_fuzz {
        setup::cargo_fuzz()?;
        fuzz::fuzz(&fuzz::TARGETS, fuzz::Budget::Runs(FUZZ_RUNS))?;
    }
    Ok(())
}

/// The build time and `pidmap-bench`.
fn agent_bench(args: &Args) -> Result<()> {
    let metadata = Metadata::load()?;
    if !args.skip_build_time {
        let dir = metadata.target_dir()?.join("bench-clean-build");
        clean_build_time(&dir)?;
    }
    if !metadata.has_bin(BENCH_PACKAGE, BENCH_BIN) {
        bail!("the {BENCH_PACKAGE} package has no `{BENCH_BIN}` binary yet");
    }
    if !is_root() {
        eprintln!("xtask: warning: not running as root: the benchmarks load eBPF programs");
    }
    // The NRI figures need a containerd with NRI (the system's 1.6 has none).
    let nri_dir =
        crate::matrix::containerd_with_nri().context("containerd 2.1 for the NRI figures")?;
    run_shown(
        cargo()
            .env(
                crate::privileged::NRI_BIN_DIR_ENV,
                nri_dir.display().to_string(),
            )
            .args([
                "run",
                "--release",
                "-p",
                BENCH_PACKAGE,
                "--bin",
                BENCH_BIN,
                "--",
            ])
            .args(&args.bench_args),
    )
}

/// Builds the agent in release mode into `dir`, removed first so that nothing is reused, and
/// prints how long it took. `dir` is removed again afterwards.
fn clean_build_time(dir: &Path) -> Result<()> {
    remove_dir(dir)?;
    let mut build = cargo();
    build
        .args(["build", "--release", "-p", "pidmap", "--target-dir"])
        .arg(dir);
    let start = Instant::now();
    let built = run_shown(&mut build);
    let elapsed = start.elapsed();
    if let Err(err) = remove_dir(dir) {
        eprintln!("xtask: warning: {err:#}");
    }
    built.context("the clean release build failed")?;
    println!("bench: clean release build: {}", fmt_duration(elapsed));
    Ok(())
}

fn remove_dir(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("cannot remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}
