//! `cargo xtask setup`: find or install what building and testing pidmap needs.
//!
//! Every step first looks, and only acts when something is missing, so setup is cheap to run
//! before every other subcommand.

use std::{
    collections::BTreeSet,
    fmt::Display,
    fs,
    io::{self, Read as _, Seek as _, SeekFrom},
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    debian::{self, LazyDebian},
    util::{self, Metadata, Probe, cargo, nightly, output, probe},
};

mod clients;
mod test_tools;
mod toolchain;

use clients::*;
use test_tools::*;
use toolchain::*;

/// The cargo-fuzz release `cargo xtask fuzz` (and the fuzz stage of `cargo xtask test`) uses.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Also install what the tests need: containerd, ctr, runc, a static busybox, the stock
    /// gRPC clients (Python grpcio, Node @grpc/grpc-js) under target/, Debian's Go and grpc-go
    /// (for clients/go), clang and libbpf's headers, Docker and podman,
    /// cargo-fuzz, and fetch the CRI API's .proto.
    #[arg(long)]
    for_tests: bool,
}

pub(crate) struct Options {
    pub for_tests: bool,
}

impl From<Args> for Options {
    fn from(args: Args) -> Self {
        Self {
            for_tests: args.for_tests,
        }
    }
}

/// Runs every step in order; the first failing step stops setup.
pub(crate) fn run(options: &Options) -> Result<()> {
    let mut apt = Apt::default();
    step("nightly toolchain", nightly_toolchain)?;
    step("rust-src", rust_src)?;
    step("bpf-linker", bpf_linker)?;
    step("protoc", || protoc(&mut apt))?;
    if options.for_tests {
        step("test tools", || test_tools(&mut apt))?;
        let tools = Metadata::load()?.target_dir()?.join(CLIENT_TOOLS);
        step("python gRPC client", || python_client(&mut apt, &tools))?;
        step("node gRPC client", || node_client(&mut apt, &tools))?;
        step("go gRPC client", || go_client(&mut apt))?;
        step("CRI API", cri_api)?;
        cargo_fuzz()?;
    }
    Ok(())
}

/// The `cargo-fuzz` step: present, or installed with `cargo install` into cargo's bin
/// directory (it runs the fuzz targets on the nightly toolchain; it builds on stable).
pub(crate) fn cargo_fuzz() -> Result<()> {
    step("cargo-fuzz", || {
        match probe("cargo-fuzz", &["--version"]) {
            Probe::Works(version) => {
                say(format!("{version} present"));
                return Ok(());
            }
            Probe::NotFound => {}
            Probe::Fails(why) => say(format!(
                "cargo-fuzz is installed but does not start ({why}); reinstalling it"
            )),
        }
        let mut install = cargo();
        install.args([
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
            "--force",
        ]);
        say(format!(
            "installing cargo-fuzz {CARGO_FUZZ_VERSION} (under a minute; {})…",
            util::display(&install)
        ));
        util::run(&mut install)?;
        require_tool("cargo-fuzz")
    })
}

fn step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    f().with_context(|| format!("setup step `{name}` failed"))
}

fn say(message: impl Display) {
    println!("setup: {message}");
}

fn protoc(apt: &mut Apt) -> Result<()> {
    match probe("protoc", &["--version"]) {
        Probe::Works(version) => {
            say(format!("protoc present ({version})"));
            return Ok(());
        }
        Probe::Fails(why) => bail!("protoc is installed but `protoc --version` fails: {why}"),
        Probe::NotFound => say("protoc not found"),
    }
    apt.install(&["protobuf-compiler"])?;
    require_tool("protoc")
}

fn require_tool(tool: &str) -> Result<()> {
    match probe(tool, &["--version"]) {
        Probe::Works(_) => Ok(()),
        Probe::NotFound => bail!("{tool} is still not on PATH after installing it"),
        Probe::Fails(why) => bail!("{tool} was installed but `{tool} --version` fails: {why}"),
    }
}

/// The Rust target of arm64 nodes.
pub(crate) const ARM64_TARGET: &str = "aarch64-unknown-linux-gnu";
/// The linker of [`ARM64_TARGET`] builds (Debian's `gcc-aarch64-linux-gnu`).
pub(crate) const ARM64_LINKER: &str = "aarch64-linux-gnu-gcc";

/// What a cross-build for arm64 nodes needs, beyond [`run`]: the Rust target
/// `aarch64-unknown-linux-gnu` (rustup) and Debian's cross gcc with arm64 glibc headers
/// and libraries (`gcc-aarch64-linux-gnu`, `libc6-dev-arm64-cross`) as its linker.
pub(crate) fn arm64_cross() -> Result<()> {
    step("arm64 Rust target", || {
        let installed = output(rustup().args(["target", "list", "--installed"]))?;
        if installed.lines().any(|l| l.trim() == ARM64_TARGET) {
            say(format!("{ARM64_TARGET} present"));
            return Ok(());
        }
        let mut add = rustup();
        add.args(["target", "add", ARM64_TARGET]);
        say(format!(
            "installing {ARM64_TARGET} ({})…",
            util::display(&add)
        ));
        util::run(&mut add)
    })?;
    step("arm64 linker", || {
        // The cross glibc's start files: without them the link fails late and obscurely.
        let crt = Path::new("/usr/aarch64-linux-gnu/lib/crt1.o");
        if let (Probe::Works(version), true) = (probe(ARM64_LINKER, &["--version"]), crt.exists()) {
            say(format!("{version} and the arm64 glibc present"));
            return Ok(());
        }
        Apt::default().install(&["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"])?;
        require_tool(ARM64_LINKER)
    })
}

/// Installs Debian `packages` with the system's apt-get (`update` first); for tools that
/// only some subcommands need (`cargo xtask matrix`: QEMU, gcc).
pub(crate) fn apt_install(packages: &[&str]) -> Result<()> {
    Apt::default().install(packages)
}

/// apt-get, run at most once with `update`, and only when something must be installed.
#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    fn install(&mut self, packages: &[&str]) -> Result<()> {
        let mut install = apt_get();
        install
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages);
        let list = packages.join(" ");
        if !util::is_root() {
            bail!(
                "installing {list} needs root; as root, run: apt-get update && apt-get \
                 install -y --no-install-recommends {list}"
            );
        }
        say(format!("installing {list} ({})…", util::display(&install)));
        if !self.updated {
            util::run(apt_get().arg("update"))?;
            self.updated = true;
        }
        util::run(&mut install)
    }
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nightly_channel_is_told_from_dated_nightlies() {
        assert!(is_nightly_channel("nightly-x86_64-unknown-linux-gnu"));
        assert!(is_nightly_channel(
            "nightly-x86_64-unknown-linux-gnu (active)"
        ));
        assert!(is_nightly_channel("nightly"));
        assert!(!is_nightly_channel(
            "nightly-2026-05-19-x86_64-unknown-linux-gnu"
        ));
        assert!(!is_nightly_channel(
            "stable-x86_64-unknown-linux-gnu (default)"
        ));
    }

    #[test]
    fn llvm_major_comes_from_the_llvm_line() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\n\
                  release: 1.97.0-nightly\nLLVM version: 22.1.4";
        assert_eq!(llvm_major(vv).ok(), Some(22));
        assert!(llvm_major("rustc 1.97.0-nightly").is_err());
    }

    #[test]
    fn gogoproto_options_are_stripped() {
        let proto = "syntax = \"proto3\";\npackage runtime.v1;\n\
                     import \"github.com/gogo/protobuf/gogoproto/gogo.proto\";\n\
                     option (gogoproto.marshaler_all) = true;\n\
                     option go_package = \"k8s.io/cri-api\";\n\
                     message A {\n    \
                     string a = 1 [(gogoproto.nullable) = false];\n    \
                     repeated B b = 2 [(gogoproto.customname) = \"Bs\", deprecated = true];\n    \
                     int64 c = 3;\n}\n";
        let want = "syntax = \"proto3\";\npackage runtime.v1;\n\
                    option go_package = \"k8s.io/cri-api\";\n\
                    message A {\n    \
                    string a = 1;\n    \
                    repeated B b = 2 [deprecated = true];\n    \
                    int64 c = 3;\n}\n";
        assert_eq!(strip_gogoproto(proto), want);
    }

    #[test]
    fn static_and_dynamic_executables_are_told_apart() -> io::Result<()> {
        // The test binary itself is dynamically linked (it has an interpreter).
        let me = std::env::current_exe()?;
        assert!(!is_static_elf(&me)?);
        let err = is_static_elf(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/Cargo.toml"
        )));
        assert!(err.is_err());
        Ok(())
    }
}
