//! `cargo xtask soak --minutes N`: the ground-truth test (an independent checker comparing
//! every answer with /proc and containerd while containers, renames, orphans and restarts
//! churn) with the load beside it — a busy loop on every core and an exec storm — for as
//! long as asked. Zero wrong answers, or it fails.

use anyhow::{Result, bail};

use crate::{load, privileged, setup, util::is_root};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// How long the checker runs.
    #[arg(long, default_value = "10", value_name = "N")]
    minutes: u64,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    setup::run(&setup::Options { for_tests: true })?;
    if !is_root() {
        bail!("the soak loads eBPF programs and drives containerd: run it as root");
    }
    if args.minutes == 0 {
        bail!("--minutes must be at least 1");
    }
    privileged::build_prerequisites()?;
    let seconds = args.minutes * 60;
    println!(
        "soak: the ground-truth checker for {} min with load beside it",
        args.minutes
    );
    let (ran, done) = load::beside(true, || {
        privileged::run(
            "soak",
            &["ground_truth"],
            &["--nocapture".into()],
            &[("PIDMAP_GROUND_TRUTH_SECS", seconds.to_string())],
        )
    });
    ran?;
    if let Some(done) = done {
        println!("soak: passed, {} min, beside {done}", args.minutes);
    }
    Ok(())
}
