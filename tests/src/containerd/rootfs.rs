//! The busybox rootfs and a one-layer OCI image archive of it.

use std::{fs, os::unix::fs::symlink, path::Path};

use anyhow::Context as _;
use oci_image::{Image, ImageConfig};
use sha2::{Digest as _, Sha256};

/// The busybox applets linked into the rootfs, as `/bin/<name>`.
pub const APPLETS: &[&str] = &["sh", "sleep", "true", "false", "cat", "echo", "ps", "ls"];
/// The empty top-level directories of the rootfs.
const ROOTFS_DIRS: &[&str] = &["bin", "proc", "sys", "dev", "etc", "tmp"];
const BUSYBOX: &str = "/bin/busybox";

/// `/bin/busybox`, a symlink per applet and the empty top-level dirs.
pub(crate) fn build_rootfs(rootfs: &Path) -> anyhow::Result<()> {
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
/// with one layer holding the busybox rootfs and `cmd` as its `Cmd`, with the
/// `oci-image` crate that also builds pidmap's own image.
pub(super) fn build_oci_archive(
    rootfs: &Path,
    image_ref: &str,
    cmd: &[&str],
    out: &Path,
) -> anyhow::Result<()> {
    let mut image = Image::new(
        image_ref,
        0,
        ImageConfig {
            env: vec!["PATH=/bin".into()],
            cmd: cmd.iter().map(|&arg| arg.to_owned()).collect(),
            ..ImageConfig::default()
        },
    );
    for dir in ROOTFS_DIRS {
        image.add_dir(&format!("/{dir}"), 0o755)?;
    }
    image.add_file("/bin/busybox", rootfs.join("bin/busybox"), 0o755)?;
    for applet in APPLETS {
        image.add_symlink(&format!("/bin/{applet}"), "busybox")?;
    }
    image.write_archive(out)?;
    Ok(())
}

/// Lowercase hex sha256 of `data`.
pub(super) fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
