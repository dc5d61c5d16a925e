//! Generates the `pidmap.v1` messages, client and (behind the `server`
//! feature) server from `proto/`, the one source of truth for every client,
//! and the file descriptor set that gRPC reflection serves.

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let proto = "../proto/pidmap/v1/pidmap.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .server_mod_attribute("pidmap.v1", r#"#[cfg(feature = "server")]"#)
        // The agent's HTTP/JSON `Status` is this message as it is: every
        // field, by its proto name, with no list kept by hand.
        .type_attribute(
            "pidmap.v1.StatusResponse",
            r#"#[cfg_attr(feature = "server", derive(serde::Serialize))]"#,
        )
        .file_descriptor_set_path(out.join("pidmap_descriptor.bin"))
        .compile_protos(&[proto], &["../proto"])
        .context("compile proto/pidmap/v1/pidmap.proto (needs protoc: cargo xtask setup)")?;
    Ok(())
}
