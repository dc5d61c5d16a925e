//! `cargo xtask build` and `cargo xtask run`: build the agent, and run it in the foreground.

use std::{ffi::OsString, os::unix::process::CommandExt as _, process::Command};

use anyhow::{Context as _, Result};

use crate::{
    setup,
    util::{self, Metadata, cargo, is_root, run_shown},
};

#[derive(clap::Args)]
pub(crate) struct BuildArgs {
    /// Build the debug profile instead of release.
    #[arg(long)]
    debug: bool,
}

#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// Build and run the debug profile instead of release.
    #[arg(long)]
    debug: bool,
    /// Arguments for `pidmap agent`.
    #[arg(last = true, value_name = "AGENT_ARGS")]
    agent_args: Vec<OsString>,
}

/// Runs setup (without the test tools), then builds the `pidmap` package.
pub(crate) fn build(args: &BuildArgs) -> Result<()> {
    setup::run(&setup::Options { for_tests: false })?;
    let mut build = cargo();
    build.arg("build");
    if !args.debug {
        build.arg("--release");
    }
    build.args(["-p", "pidmap"]);
    run_shown(&mut build).context("building the agent failed")
}

/// Builds the agent, then replaces this process with `pidmap agent ARGS…`, so that signals
/// from the terminal reach the agent itself. Returns only on failure.
pub(crate) fn run(args: RunArgs) -> Result<()> {
    build(&BuildArgs { debug: args.debug })?;
    let profile = if args.debug { "debug" } else { "release" };
    let binary = Metadata::load()?.target_dir()?.join(profile).join("pidmap");
    if !is_root() {
        eprintln!(
            "xtask: warning: not running as root: loading the eBPF programs needs root \
             (CAP_BPF and CAP_PERFMON), so the agent will probably fail to start"
        );
    }
    let mut agent = Command::new(&binary);
    agent.arg("agent").args(&args.agent_args);
    println!("$ {}", util::display(&agent));
    let err = agent.exec();
    Err(err).with_context(|| format!("cannot run {}", binary.display()))
}
