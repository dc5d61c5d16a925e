//! `cargo xtask build` and `cargo xtask run`: build the agent, and run it in the foreground.

use std::{ffi::OsString, os::unix::process::CommandExt as _, process::Command};

use anyhow::{Context as _, Result};

use crate::{
    arm64, setup,
    util::{self, Metadata, cargo, is_root, run_shown},
};

#[derive(clap::Args)]
pub(crate) struct BuildArgs {
    /// Build the debug profile instead of release.
    #[arg(long)]
    debug: bool,
    /// Cross-build for arm64 nodes (`aarch64`, or `arm64`): installs the Rust target and
    /// Debian's cross linker if missing; the binary is
    /// `target/aarch64-unknown-linux-gnu/<profile>/pidmap`. The eBPF object is built the same
    /// way for both (BPF bytecode has one byte order here, little-endian).
    #[arg(long, value_name = "ARCH", value_parser = ["aarch64", "arm64", "x86_64", "amd64"])]
    target: Option<String>,
    /// With `--target aarch64`: then start the binary under user-mode QEMU
    /// (`qemu-user-static`, installed if missing), as `cargo xtask test` does.
    #[arg(long, requires = "target")]
    check: bool,
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
    if matches!(args.target.as_deref(), Some("aarch64" | "arm64")) {
        let binary = arm64::build_agent(args.debug)?;
        println!("build: {}", binary.display());
        if args.check {
            start_under_qemu(&binary)?;
        }
        return Ok(());
    }
    run_shown(&mut build_command(args.debug, false)).context("building the agent failed")
}

/// Cross-builds the release agent for arm64 and runs it under `qemu-aarch64-static` (Debian's
/// `qemu-user-static`, installed if missing) with the arm64 glibc of the cross toolchain: it
/// must start, print its version and refuse a missing config file with its own message. Its
/// kernel side is proven by arm64 guests, not here (user-mode QEMU has no `bpf()`).
pub(crate) fn arm64_check() -> Result<()> {
    build(&BuildArgs {
        debug: false,
        target: Some("aarch64".into()),
        check: true,
    })
}

fn start_under_qemu(binary: &std::path::Path) -> Result<()> {
    const QEMU: &str = arm64::QEMU_USER;
    arm64::require_qemu_user()?;
    let run = |args: &[&str]| {
        let mut cmd = Command::new(QEMU);
        cmd.args(["-L", "/usr/aarch64-linux-gnu"])
            .arg(binary)
            .args(args);
        println!("$ {}", util::display(&cmd));
        cmd.output().with_context(|| format!("cannot run {QEMU}"))
    };
    let version = run(&["--version"])?;
    let text = String::from_utf8_lossy(&version.stdout);
    if !version.status.success() || !text.starts_with("pidmap ") {
        anyhow::bail!(
            "the arm64 binary did not print its version ({}): {text}{}",
            version.status,
            String::from_utf8_lossy(&version.stderr)
        );
    }
    print!("{text}");
    let refused = run(&["agent", "--config", "/nonexistent/pidmap.toml"])?;
    let err = String::from_utf8_lossy(&refused.stderr);
    if refused.status.success() || !err.contains("cannot read config file /nonexistent/pidmap.toml")
    {
        anyhow::bail!(
            "the arm64 agent did not refuse a missing config file as expected ({}): {err}",
            refused.status
        );
    }
    print!("{err}");
    println!("arm64: {} starts under user-mode QEMU", binary.display());
    Ok(())
}

/// `cargo build [--release] -p pidmap`, for arm64 with `--target` and Debian's cross linker.
pub(crate) fn build_command(debug: bool, arm64: bool) -> Command {
    let mut build = cargo();
    build.arg("build");
    if !debug {
        build.arg("--release");
    }
    build.args(["-p", "pidmap"]);
    if arm64 {
        build.args(["--target", setup::ARM64_TARGET]).env(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
            setup::ARM64_LINKER,
        );
    }
    build
}

/// Builds the agent, then replaces this process with `pidmap agent ARGS…`, so that signals
/// from the terminal reach the agent itself. Returns only on failure.
pub(crate) fn run(args: RunArgs) -> Result<()> {
    build(&BuildArgs {
        debug: args.debug,
        target: None,
        check: false,
    })?;
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
