//! `cargo xtask lint`: rustfmt and clippy, for the workspace and for the eBPF crate; rustfmt
//! for the fuzz targets.

use anyhow::Result;

use crate::{
    setup,
    stages::Stages,
    util::{cargo, nightly, run_shown},
};

/// Runs setup, then every lint stage, then prints a summary.
pub(crate) fn run() -> Result<()> {
    let mut stages = Stages::new("lint");
    // clippy runs agent/build.rs, which builds the eBPF programs (nightly, bpf-linker) and
    // the containerd client (protoc).
    if stages.run("setup", || setup::run(&setup::Options { for_tests: false })) {
        add_stages(&mut stages);
    } else {
        for name in STAGES {
            stages.skip(name, "setup failed");
        }
    }
    stages.finish()
}

/// The names of the stages [`add_stages`] runs.
pub(crate) const STAGES: [&str; 3] = ["fmt", "clippy", "clippy (eBPF)"];

/// Adds the lint stages to a run; each runs whatever the others did.
pub(crate) fn add_stages(stages: &mut Stages) {
    stages.run(STAGES[0], || {
        run_shown(cargo().args(["fmt", "--all", "--", "--check"]))?;
        // The fuzz targets are a workspace of their own (nightly, cargo-fuzz); rustfmt
        // needs no build, so they are checked here too.
        let fuzz = crate::util::repo_root().join("fuzz/Cargo.toml");
        run_shown(
            cargo()
                .args(["fmt", "--all", "--manifest-path"])
                .arg(&fuzz)
                .args(["--", "--check"]),
        )
    });
    stages.run(STAGES[1], || {
        run_shown(cargo().args([
            "clippy",
            "--workspace",
            "--exclude",
            "agent-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    });
    // The eBPF crate only builds for the BPF target, with the nightly toolchain's build-std.
    stages.run(STAGES[2], || {
        run_shown(nightly("cargo").args([
            "clippy",
            "-p",
            "agent-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]))
    });
}
