//! What pidmap on an arm64 node needs besides the cross-built binary, taken from Debian's
//! arm64 packages: glibc (`libc6`) and `libgcc-s1`, which the binary loads (in the image's
//! arm64 manifest and the matrix's arm64 guests), and a static busybox (the guests' shell).
//!
//! The packages come from bookworm, whose glibc (2.36) is the one the cross toolchain
//! (`libc6-dev-arm64-cross`) links against, through the private apt state of
//! [`debian`](crate::debian) for arm64; they are unpacked once into
//! `target/matrix-cache/arm64-root/<versions>/` and never installed. Which shared objects the
//! binary loads is asked of the arm64 loader itself, run under user-mode QEMU inside that
//! root: what `ldd` does on an arm64 machine.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use oci_image::pidmap::Library;

use crate::{
    debian::{self, LazyDebian},
    setup,
    util::{self, output, run_shown},
};

/// The packages unpacked into the root.
const PACKAGES: [&str; 3] = ["libc6", "libgcc-s1", "busybox-static"];
/// Their suite: glibc 2.36, as the cross toolchain's.
const SUITE: &str = "bookworm";
/// The arm64 glibc loader, every dynamic arm64 binary's interpreter.
const LOADER: &str = "lib/ld-linux-aarch64.so.1";
/// User-mode QEMU (Debian's `qemu-user-static`).
pub(crate) const QEMU_USER: &str = "qemu-aarch64-static";

/// Debian's arm64 `libc6`, `libgcc-s1` and `busybox-static`, unpacked into one directory.
pub(crate) struct Root {
    dir: PathBuf,
    /// `libc6 2.36-9+deb12u14, libgcc-s1 …` for what the callers print.
    pub(crate) label: String,
}

impl Root {
    /// Looks the packages' versions up in bookworm (`debian` holds arm64's packages) and
    /// unpacks them into the matrix cache under `target` unless that version set is there.
    pub(crate) fn prepare(target: &Path, debian: &mut LazyDebian) -> Result<Self> {
        let debian = debian.get()?;
        let versions = debian.with_fresh_retry(|d| {
            PACKAGES
                .iter()
                .map(|package| Ok((*package, d.version_in(package, SUITE)?)))
                .collect::<Result<Vec<_>>>()
        })?;
        let label = versions
            .iter()
            .map(|(p, v)| format!("{p} {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let name = versions
            .iter()
            .map(|(p, v)| format!("{p}_{}", v.replace(':', "%3a")))
            .collect::<Vec<_>>()
            .join("+");
        let parent = target.join(debian::CACHE).join("arm64-root");
        let dir = parent.join(&name);
        let root = Self { dir, label };
        if root.busybox().is_file() && root.dir.join(LOADER).exists() {
            say(format!(
                "Debian's arm64 {} in the cache ({})",
                root.label,
                root.dir.display()
            ));
            return Ok(root);
        }
        say(format!(
            "downloading Debian's arm64 {} ({SUITE})",
            root.label
        ));
        let partial = parent.join(format!("{name}.partial"));
        let _ = fs::remove_dir_all(&partial);
        fs::create_dir_all(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        for (package, version) in &versions {
            let deb = debian.with_fresh_retry(|d| d.download(package, version))?;
            run_shown(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
            let _ = fs::remove_file(&deb);
        }
        let _ = fs::remove_dir_all(&root.dir);
        fs::rename(&partial, &root.dir).with_context(|| {
            format!(
                "cannot rename {} to {}",
                partial.display(),
                root.dir.display()
            )
        })?;
        if !root.busybox().is_file() || !root.dir.join(LOADER).exists() {
            bail!(
                "{} holds no bin/busybox or {LOADER} after unpacking {}",
                root.dir.display(),
                root.label
            );
        }
        Ok(root)
    }

    /// The static arm64 busybox.
    pub(crate) fn busybox(&self) -> PathBuf {
        self.dir.join("bin/busybox")
    }

    /// The shared objects the arm64 `binary` loads, with the root's files as their sources:
    /// the arm64 loader's `--list` under user-mode QEMU with the root as its `/`.
    pub(crate) fn libraries(&self, binary: &Path) -> Result<Vec<Library>> {
        require_qemu_user()?;
        let mut list = Command::new(QEMU_USER);
        list.arg("-L")
            .arg(&self.dir)
            .arg(self.dir.join(LOADER))
            .arg("--list")
            .arg(binary);
        println!("$ {}", util::display(&list));
        let listing = output(&mut list)
            .with_context(|| format!("the arm64 loader cannot list {}", binary.display()))?;
        let libraries = oci_image::pidmap::libraries_in_root(binary, &listing, &self.dir)?;
        if !libraries
            .iter()
            .any(|l| l.path == Path::new("/").join(LOADER))
        {
            bail!(
                "{} does not load /{LOADER}: not a dynamic arm64 binary?",
                binary.display()
            );
        }
        Ok(libraries)
    }
}

/// Installs `qemu-user-static` unless [`QEMU_USER`] runs.
pub(crate) fn require_qemu_user() -> Result<()> {
    if Command::new(QEMU_USER).arg("--version").output().is_err() {
        say(format!(
            "{QEMU_USER} not found: installing qemu-user-static"
        ));
        setup::apt_install(&["qemu-user-static"])?;
    }
    Ok(())
}

/// The release (or debug) agent cross-built for arm64: installs the Rust target and the
/// cross linker if missing, builds, and returns the binary's path.
pub(crate) fn build_agent(debug: bool) -> Result<PathBuf> {
    setup::arm64_cross()?;
    run_shown(&mut crate::run::build_command(debug, true))
        .context("cross-building the agent for arm64 failed")?;
    let profile = if debug { "debug" } else { "release" };
    Ok(util::Metadata::load()?
        .target_dir()?
        .join(setup::ARM64_TARGET)
        .join(profile)
        .join("pidmap"))
}

fn say(message: impl std::fmt::Display) {
    println!("arm64: {message}");
}
