//! The busybox rootfs and a one-layer OCI image archive of it.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::symlink,
    path::Path,
};

use anyhow::Context as _;
use serde_json::json;
use sha2::{Digest as _, Sha256};

/// The busybox applets linked into the rootfs, as `/bin/<name>`.
pub const APPLETS: &[&str] = &["sh", "sleep", "true", "false", "cat", "echo", "ps", "ls"];
/// The empty top-level directories of the rootfs.
const ROOTFS_DIRS: &[&str] = &["bin", "proc", "sys", "dev", "etc", "tmp"];
const BUSYBOX: &str = "/bin/busybox";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// `/bin/busybox`, a symlink per applet and the empty top-level dirs.
pub(super) fn build_rootfs(rootfs: &Path) -> anyhow::Result<()> {
    for dir in ROOTFS_DIRS {
        fs::create_dir_all(rootfs.join(dir))?;
    }
    fs::copy(BUSYBOX, rootfs.join("bin/busybox")).with_context(|| format!("copy {BUSYBOX}"))?;
    for applet in APPLETS {
        symlink("busybox", rootfs.join("bin").join(applet))?;
    }
    Ok(())
}

/// Writes an OCI image layout archive (`oci-layout`, `index.json`, blobs)
/// with one uncompressed layer holding the busybox rootfs.
pub(super) fn build_oci_archive(rootfs: &Path, image_ref: &str, out: &Path) -> anyhow::Result<()> {
    let mut layer = tar::Builder::new(Vec::new());
    for dir in ROOTFS_DIRS {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        layer.append_data(&mut h, dir, io::empty())?;
    }
    let busybox = fs::read(rootfs.join("bin/busybox"))?;
    let mut h = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    layer.append_data(&mut h, "bin/busybox", busybox.as_slice())?;
    for applet in APPLETS {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        layer.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    let layer = layer.into_inner()?;
    let layer_digest = digest(&layer); // Uncompressed: the diff id is the digest.
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": { "Env": ["PATH=/bin"], "Cmd": ["/bin/sh"] },
        "rootfs": { "type": "layers", "diff_ids": [&layer_digest] },
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": descriptor(CONFIG_TYPE, &digest(&config), config.len()),
        "layers": [descriptor(LAYER_TYPE, &layer_digest, layer.len())],
    }))?;
    let manifest_digest = digest(&manifest);
    let mut manifest_desc = descriptor(MANIFEST_TYPE, &manifest_digest, manifest.len());
    let tag = image_ref.rsplit_once(':').map_or("latest", |(_, tag)| tag);
    manifest_desc["annotations"] = json!({
        "io.containerd.image.name": image_ref,
        "org.opencontainers.image.ref.name": tag,
    });
    let index = serde_json::to_vec(&json!({ "schemaVersion": 2, "manifests": [manifest_desc] }))?;
    let mut archive = tar::Builder::new(io::BufWriter::new(fs::File::create(out)?));
    let mut add = |path: String, data: &[u8]| {
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        archive.append_data(&mut h, path, data)
    };
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    for (digest, blob) in [
        (layer_digest, &layer),
        (digest(&config), &config),
        (manifest_digest, &manifest),
    ] {
        add(digest.replacen("sha256:", "blobs/sha256/", 1), blob)?;
    }
    add("index.json".into(), &index)?;
    archive.into_inner()?.flush()?;
    Ok(())
}

/// A root-owned tar header with mtime 0.
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// An OCI content descriptor.
fn descriptor(media_type: &str, digest: &str, size: usize) -> serde_json::Value {
    json!({ "mediaType": media_type, "digest": digest, "size": size })
}

/// `sha256:<hex>` of `blob`.
fn digest(blob: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(blob))
}

/// Lowercase hex sha256 of `data`.
pub(super) fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
