//! `cargo xtask`: pidmap's development tasks.
//!
//! Every subcommand is a thin sequence of ordinary commands (`rustup`, `cargo`, `apt-get`),
//! printed before they run and run with their output visible. See `docs/development.md`.

mod arm64;
mod bench;
mod debian;
mod fuzz;
mod image;
mod lint;
mod load;
mod matrix;
mod privileged;
mod run;
mod setup;
mod soak;
mod stages;
mod test;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// pidmap's development tasks.
///
/// Most subcommands first run `setup`, which only checks when everything is installed.
/// Run them as root: the eBPF programs and the privileged tests need it.
/// See docs/development.md.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check for and install the build and test prerequisites (idempotent).
    ///
    /// Steps: the nightly toolchain, rust-src for nightly, bpf-linker (built against the
    /// nightly toolchain's own libLLVM), protoc; with --for-tests also containerd, ctr, runc,
    /// a static busybox, Docker (docker.io) and podman, and the CRI API's .proto (Debian's,
    /// downloaded into target/cri-api/). Prints one line per step saying what it found or
    /// what it does.
    Setup(setup::Args),
    /// Run setup, then build the agent (`cargo build --release -p pidmap`).
    Build(run::BuildArgs),
    /// Run setup, build the agent, then replace this process with `pidmap agent ARGS…`.
    ///
    /// The agent runs in the foreground, so Ctrl-C and SIGTERM reach it directly.
    /// Example: `cargo xtask run -- --help`.
    Run(run::RunArgs),
    /// Run setup, then rustfmt and clippy on the workspace and on the eBPF crate.
    Lint,
    /// Run the whole test suite: setup --for-tests, lint, unit tests, fuzz, privileged tests,
    /// the ground-truth and fault tests again with load beside them, matrix --ci.
    ///
    /// The fuzz stage runs every fuzz target for 10 seconds (`cargo xtask fuzz --seconds 10`).
    /// The privileged end-to-end tests (real eBPF, containerd and runc) need root and run with
    /// --test-threads=1 and --no-fail-fast: a failing file does not hide the others, and a
    /// summary per file ends the stage. Then the ground-truth and fault tests run once more
    /// with a busy loop on every core and an exec storm beside them (started and stopped by
    /// xtask); --load runs the whole privileged stage that way instead. Arguments after `--`
    /// go to the privileged test binaries, e.g. a test name filter: `cargo xtask test --
    /// forked_and_execed_child`. Then `cargo xtask matrix --ci` (Debian's four amd64 kernels
    /// under QEMU with cgroup v2, and the containerd tests on containerd 2.1),
    /// the image built from two checkouts, and the arm64 agent started under user-mode QEMU.
    /// Prints a summary of every stage.
    Test(test::Args),
    /// Run the ground-truth checker with load beside it for as long as asked.
    ///
    /// The ground-truth test (containers, renames, orphans, a containerd kill and an agent
    /// restart churn while an independent checker compares every answer with /proc and
    /// containerd) for --minutes, with a busy loop on every core and an exec storm beside it.
    /// Fails on any wrong answer. Needs root.
    Soak(soak::Args),
    /// Run setup, build the release agent for amd64 and arm64, write one OCI image archive.
    ///
    /// The archive (an OCI image layout tar, reference `localhost/pidmap:<version>`) is an
    /// image index with a linux/amd64 and a linux/arm64 manifest, each holding that
    /// platform's binary, the glibc shared objects it loads (this host's for amd64, Debian
    /// bookworm's arm64 packages for arm64) and a few empty dirs; the same commit gives the
    /// same bytes from any checkout (timestamps: SOURCE_DATE_EPOCH, else 0). Load it with
    /// `ctr -n k8s.io images import` (each node takes its platform). deploy/Containerfile is
    /// the Docker/Buildah equivalent.
    Image(image::Args),
    /// Prove pidmap on other kernels, cgroup layouts and containerd versions; print a table.
    ///
    /// The kernel matrix boots Debian's cloud kernels 5.10 (bullseye), 6.1 (bookworm), 6.12
    /// (trixie) and 7.2 (sid) for amd64, and 6.1 and 6.12 for arm64 (the agent cross-built,
    /// under qemu-system-aarch64), under QEMU (TCG) with pure cgroup v2, hybrid and pure v1 layouts, and
    /// runs the kernel-path checks (ready, cgroup, exited, pidns, storm, rename, orphan,
    /// overflow) in each guest; the `host` row runs them natively on this machine. The
    /// containerd matrix runs the privileged containerd tests against containerd 1.6
    /// (bookworm), 1.7 (trixie) and 2.1 (sid), all with the system's runc. Exact package
    /// versions are looked up at run time from the mirror the system's apt uses; packages are
    /// downloaded with a private apt state into target/matrix-cache/ (never installed, except
    /// qemu-system-x86, qemu-system-arm, gcc and the arm64 cross toolchain with the system's
    /// apt when missing). Logs go to
    /// target/matrix-logs/, the table also to target/matrix-last.md. Exits non-zero if any
    /// cell fails. Needs root. A full run takes about 32 minutes on 2 cores, --ci about 9.
    Matrix(matrix::Args),
    /// Run setup, time a clean release build of the agent, run `pidmap-bench`, then fuzz.
    ///
    /// Arguments after `--` go to the `pidmap-bench` binary of the pidmap-tests package. The
    /// fuzz part runs every fuzz target for 10 million inputs and prints runs/s and crashes.
    Bench(bench::Args),
    /// Fuzz pidmap's parsers of untrusted input with libFuzzer (cargo-fuzz, nightly).
    ///
    /// Targets (fuzz/fuzz_targets/): cgroup_path, proc_stat, proc_cgroup, ring_event, oci_spec,
    /// config, http_request, authority (with a 64 MiB malloc limit), mountinfo, cgroup_join.
    /// Each runs for --runs inputs or --seconds (default 60 s), from the committed seeds
    /// in fuzz/corpus/TARGET (never written) plus what earlier runs found
    /// (target/fuzz-corpus/TARGET). Prints runs, runs/s and crashes; a crash input is kept in
    /// target/fuzz-artifacts/TARGET/ and the command fails.
    Fuzz(fuzz::Args),
}

fn main() -> ExitCode {
    // `cargo xtask image` builds with xtask as rustc's wrapper.
    if let Some(code) = image::rustc_wrapper() {
        return code;
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup(args) => setup::run(&args.into()),
        Command::Build(args) => run::build(&args),
        Command::Run(args) => run::run(args),
        Command::Lint => lint::run(),
        Command::Test(args) => test::run(&args),
        Command::Soak(args) => soak::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Image(args) => image::run(&args),
        Command::Matrix(args) => matrix::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
