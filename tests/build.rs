//! Compiles the CRI API (`runtime.v1`, the gRPC API kubelet drives containerd through) for
//! `tests/tests/cri.rs`, from the `.proto` that `cargo xtask setup --for-tests` fetches from
//! Debian into `target/cri-api/api.proto` (gogoproto options stripped).
//!
//! Without that file the crate still builds: the CRI client is left out (`cfg(cri_api)` is
//! not set) and the CRI tests fail with a message saying how to fetch it.

use std::path::PathBuf;

use anyhow::Context as _;

/// Where setup writes the `.proto`, under the target directory (xtask/src/setup.rs,
/// `CRI_PROTO`).
const CRI_PROTO: &str = "cri-api/api.proto";

fn main() -> anyhow::Result<()> {
    println!("cargo::rustc-check-cfg=cfg(cri_api)");
    let target = PathBuf::from(
        cargo_metadata::MetadataCommand::new()
            .no_deps()
            .exec()
            .context("cargo metadata")?
            .target_directory,
    );
    let proto = target.join(CRI_PROTO);
    let dir = proto.parent().context("the CRI proto has no directory")?;
    // Watch the (small) directory rather than the file: a missing file would re-run this
    // script, and rebuild the crate, on every build; the directory sees setup's file arrive.
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    println!("cargo::rerun-if-changed={}", dir.display());
    if !proto.is_file() {
        println!(
            "cargo::warning=the CRI tests are left out: {} is missing (cargo xtask setup --for-tests fetches it)",
            proto.display()
        );
        return Ok(());
    }
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&[proto.as_path()], &[dir])
        .with_context(|| {
            format!(
                "compile {} (needs protoc: cargo xtask setup)",
                proto.display()
            )
        })?;
    println!("cargo::rustc-cfg=cri_api");
    Ok(())
}
