//! `cargo xtask image`: build the release agent for amd64 and arm64 and write one OCI
//! image archive holding both platforms (an image index of two manifests).
//!
//! The image's contents are defined once, in `oci_image::pidmap` (shared with the
//! end-to-end test); `deploy/Containerfile` is the Docker/Buildah equivalent. Each platform
//! carries the glibc shared objects its binary loads: this host's for amd64 (what `ldd`
//! names), Debian bookworm's arm64 packages for arm64 ([`crate::arm64`]) — dynamic, not
//! static, so both are the same glibc build Debian ships and patches, found by the
//! same loader a node's own binaries use.
//!
//! The same commit gives the same archive from any checkout directory: the agent is built
//! into `<target dir>/image` with xtask itself as `RUSTC_WRAPPER`, which adds
//! `--remap-path-prefix` for the checkout, the target directory, `CARGO_HOME` and
//! `RUSTUP_HOME` to every rustc run — the eBPF object's too, which `aya-build` builds with
//! flags of its own (a wrapper is the one thing it passes through). Without it the binary
//! embeds paths such as `…/target/release/build/…/out/pidmap.v1.rs` and the eBPF object's
//! line info. `--check-reproducible` proves it with two clones.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    arm64,
    debian::{Arch, LazyDebian},
    setup,
    util::{cargo, fmt_duration, output, repo_root, run_shown},
};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Where to write the archive (an OCI image layout tar); default
    /// `<target dir>/pidmap-image.tar`.
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
    /// A platform to put in the archive (repeatable; default: amd64 and arm64). arm64 is
    /// cross-built (Debian's cross gcc links it) and takes Debian's arm64 glibc.
    #[arg(long = "arch", value_enum, value_name = "ARCH")]
    arches: Vec<Arch>,
    /// Instead: clone the committed HEAD twice, into directories of different names and
    /// depths, build the image in each (its own target directory) and require the two
    /// archives to be byte-identical. Takes two clean release builds.
    #[arg(long, conflicts_with = "out")]
    check_reproducible: bool,
}

/// With this variable set, xtask runs as a `RUSTC_WRAPPER`: `xtask RUSTC ARGS…` runs
/// `RUSTC ARGS… --remap-path-prefix=FROM=TO…`, one per line of the variable.
const REMAP_ENV: &str = "PIDMAP_XTASK_REMAP_PATH_PREFIXES";

/// If xtask was started as the image build's rustc wrapper, runs rustc and returns its exit
/// status; else `None`.
pub(crate) fn rustc_wrapper() -> Option<ExitCode> {
    let remaps = env::var_os(REMAP_ENV)?;
    let mut args = env::args_os().skip(1);
    let Some(rustc) = args.next() else {
        eprintln!("xtask: {REMAP_ENV} is set but no rustc was given");
        return Some(ExitCode::FAILURE);
    };
    let mut cmd = Command::new(rustc);
    cmd.args(args);
    for remap in remaps.to_string_lossy().lines().filter(|l| !l.is_empty()) {
        cmd.arg(format!("--remap-path-prefix={remap}"));
    }
    Some(match cmd.status() {
        Ok(status) => ExitCode::from(status.code().map_or(1, |c| c as u8)),
        Err(err) => {
            eprintln!("xtask: cannot run rustc as the image build's wrapper: {err}");
            ExitCode::FAILURE
        }
    })
}

/// The `FROM=TO` prefixes the image build remaps, general before specific (rustc applies
/// the last one that matches).
fn remaps(workspace: &Path, target_dir: &Path) -> Result<OsString> {
    let home = env::var_os("HOME").map(PathBuf::from);
    let under_home = |var: &str, dir: &str| {
        env::var_os(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(dir)))
    };
    let mut pairs = Vec::new();
    if let Some(cargo_home) = under_home("CARGO_HOME", ".cargo") {
        pairs.push((cargo_home, "/cargo"));
    }
    if let Some(rustup_home) = under_home("RUSTUP_HOME", ".rustup") {
        pairs.push((rustup_home, "/rustup"));
    }
    pairs.push((workspace.to_path_buf(), "/pidmap"));
    pairs.push((target_dir.to_path_buf(), "/pidmap/target"));
    let mut lines = OsString::new();
    for (from, to) in pairs {
        let from = from.canonicalize().unwrap_or(from);
        if from.to_string_lossy().contains(['=', '\n']) {
            bail!(
                "cannot remap {}: its path holds `=` or a newline",
                from.display()
            );
        }
        lines.push(from.as_os_str());
        lines.push(format!("={to}\n"));
    }
    Ok(lines)
}

/// Runs setup, builds the release agent for each platform, writes the archive and prints
/// its reference and digests. Timestamps are `SOURCE_DATE_EPOCH` if set, else 0.
pub(crate) fn run(args: &Args) -> Result<()> {
    if args.check_reproducible {
        return check_reproducible();
    }
    setup::run(&setup::Options { for_tests: false })?;
    let arches = if args.arches.is_empty() {
        vec![Arch::Amd64, Arch::Arm64]
    } else {
        let mut arches = args.arches.clone();
        arches.sort_unstable();
        arches.dedup();
        arches
    };
    let (target_dir, version) = target_dir_and_agent_version()?;
    let image_target = target_dir.join("image");
    let created = source_date_epoch()?;
    let mut images = Vec::new();
    for &arch in &arches {
        let binary = build(arch, &image_target)?;
        let libraries = match arch {
            Arch::Amd64 => oci_image::pidmap::shared_libraries(&binary)?,
            Arch::Arm64 => {
                let mut debian = LazyDebian::new(&target_dir, Arch::Arm64);
                arm64::Root::prepare(&target_dir, &mut debian)?.libraries(&binary)?
            }
        };
        for lib in &libraries {
            println!(
                "image: {} {} (from {})",
                arch.name(),
                lib.path.display(),
                lib.source.display()
            );
        }
        images.push(oci_image::pidmap::image_for(
            arch.name(),
            &binary,
            &libraries,
            &version,
            created,
        )?);
    }
    let start = Instant::now();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| target_dir.join("pidmap-image.tar"));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let written = oci_image::write_index_archive(&images, &out)?;
    println!(
        "image: wrote {} ({} MiB) in {}",
        out.display(),
        written.archive_bytes / (1 << 20),
        fmt_duration(start.elapsed())
    );
    println!("image: reference {}", written.reference);
    println!("image: index     {}", written.manifest_digest);
    for (arch, digest) in &written.platforms {
        println!("image: linux/{arch:5} {digest}");
    }
    if arches.contains(&Arch::Arm64) {
        run_arm64_layer(&out, &written)?;
    }
    println!(
        "image: load it with `ctr -n k8s.io images import {}` (this node's platform)",
        out.display()
    );
    Ok(())
}

/// Reads the linux/arm64 manifest's layer back out of the written archive and runs the agent
/// in it under user-mode QEMU with that layer as `/`: it must print its version, so the
/// layer holds a binary and every shared object it loads, at the paths the arm64 loader
/// uses. (The amd64 platform is run for real by `tests/tests/image.rs`; the arm64 agent's
/// kernel side by the matrix's arm64 guests.)
fn run_arm64_layer(archive: &Path, written: &oci_image::Written) -> Result<()> {
    let manifest = written
        .platforms
        .iter()
        .find(|(arch, _)| arch == "arm64")
        .map(|(_, digest)| digest)
        .context("the archive has no linux/arm64 manifest")?;
    let tmp = tempfile::Builder::new()
        .prefix("pidmap-image-arm64-")
        .tempdir()
        .context("create a temp dir")?;
    let (layout, root) = (tmp.path().join("layout"), tmp.path().join("root"));
    for dir in [&layout, &root] {
        std::fs::create_dir(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    run_shown(
        Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(&layout),
    )?;
    let blob = |digest: &str| layout.join(digest.replacen("sha256:", "blobs/sha256/", 1));
    let text = std::fs::read(blob(manifest)).context("read the arm64 manifest")?;
    let json: serde_json::Value =
        serde_json::from_slice(&text).context("parse the arm64 manifest")?;
    let layer = json["layers"][0]["digest"]
        .as_str()
        .context("the arm64 manifest has no layer")?;
    run_shown(
        Command::new("tar")
            .arg("-xf")
            .arg(blob(layer))
            .arg("-C")
            .arg(&root),
    )?;
    arm64::require_qemu_user()?;
    let mut agent = Command::new(arm64::QEMU_USER);
    agent
        .arg("-L")
        .arg(&root)
        .arg(root.join(oci_image::pidmap::BINARY.trim_start_matches('/')))
        .arg("--version");
    println!("$ {}", crate::util::display(&agent));
    let version = output(&mut agent).context("the arm64 layer's agent does not run")?;
    if !version.starts_with("pidmap ") {
        bail!("the arm64 layer's agent printed {version:?}, not its version");
    }
    println!(
        "image: linux/arm64 layer runs under {}: {}",
        arm64::QEMU_USER,
        version.trim()
    );
    Ok(())
}

/// Builds the release agent for `arch` into `image_target` with xtask as the rustc wrapper
/// that remaps the build paths; returns the binary.
fn build(arch: Arch, image_target: &Path) -> Result<PathBuf> {
    let workspace = repo_root()
        .canonicalize()
        .context("cannot resolve the checkout's path")?;
    let wrapper = env::current_exe().context("cannot find xtask's own binary")?;
    let arm64 = arch == Arch::Arm64;
    if arm64 {
        setup::arm64_cross()?;
    }
    // `cargo xtask build`'s command (the cross target and linker for arm64), here.
    let mut build = crate::run::build_command(false, arm64);
    build
        .arg("--target-dir")
        .arg(image_target)
        .env("RUSTC_WRAPPER", wrapper)
        .env(REMAP_ENV, remaps(&workspace, image_target)?);
    let out = if arm64 {
        image_target.join(setup::ARM64_TARGET)
    } else {
        image_target.to_path_buf()
    };
    run_shown(&mut build)
        .with_context(|| format!("building the agent for {} failed", arch.name()))?;
    Ok(out.join("release").join("pidmap"))
}

/// `--check-reproducible`: two clones of HEAD in different directories, one image each.
pub(crate) fn check_reproducible() -> Result<()> {
    let head = output(
        Command::new("git")
            .arg("-C")
            .arg(repo_root())
            .args(["rev-parse", "HEAD"]),
    )
    .context("the check clones the committed HEAD: is this a git checkout?")?;
    let dirty = output(Command::new("git").arg("-C").arg(repo_root()).args([
        "status",
        "--porcelain",
        "--untracked-files=no",
    ]))?;
    if !dirty.trim().is_empty() {
        eprintln!("xtask: warning: uncommitted changes are not in the clones; checking {head}");
    }
    let tmp = tempfile::Builder::new()
        .prefix("pidmap-reproducible-")
        .tempdir()
        .context("create a temp dir")?;
    let clones = [
        tmp.path().join("a").join("pidmap"),
        tmp.path()
            .join("second-checkout")
            .join("deeper")
            .join("pidmap-elsewhere"),
    ];
    let mut archives = Vec::new();
    for (i, clone) in clones.iter().enumerate() {
        run_shown(
            Command::new("git")
                .args(["clone", "--quiet", "--no-hardlinks"])
                .arg(repo_root())
                .arg(clone),
        )?;
        run_shown(Command::new("git").arg("-C").arg(clone).args([
            "checkout",
            "--quiet",
            head.trim(),
        ]))?;
        let archive = tmp.path().join(format!("image-{i}.tar"));
        let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        run_shown(
            Command::new(cargo)
                .current_dir(clone)
                .args(["xtask", "image", "--out"])
                .arg(&archive)
                // Each clone builds in its own target directory, xtask included.
                .env_remove("CARGO_TARGET_DIR")
                .env_remove(REMAP_ENV),
        )
        .with_context(|| format!("the image build in {} failed", clone.display()))?;
        archives.push(archive);
    }
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("read {}", p.display()));
    let (a, b) = (read(&archives[0])?, read(&archives[1])?);
    let digest = |bytes: &[u8]| oci_image::digest(bytes);
    println!(
        "image: {} ({} bytes) from {}\nimage: {} ({} bytes) from {}",
        digest(&a),
        a.len(),
        clones[0].display(),
        digest(&b),
        b.len(),
        clones[1].display()
    );
    if a != b {
        let keep = tmp.keep();
        bail!(
            "the two archives differ: the build depends on its directory (kept in {} to compare)",
            keep.display()
        );
    }
    println!(
        "image: byte-identical from two checkouts of {}",
        head.trim()
    );
    Ok(())
}

/// The target directory and the `pidmap` package's version, from `cargo metadata`.
fn target_dir_and_agent_version() -> Result<(PathBuf, String)> {
    let text = output(cargo().args(["metadata", "--format-version", "1", "--no-deps"]))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).context("cannot parse `cargo metadata` output")?;
    let target = json["target_directory"]
        .as_str()
        .context("`cargo metadata` output has no target_directory")?;
    let packages = json["packages"].as_array().into_iter().flatten();
    let version = packages
        .filter(|p| p["name"] == "pidmap")
        .find_map(|p| p["version"].as_str())
        .context("`cargo metadata` lists no pidmap package")?;
    Ok((PathBuf::from(target), version.to_owned()))
}

/// `SOURCE_DATE_EPOCH` (seconds) if set and not empty, else 0.
fn source_date_epoch() -> Result<u64> {
    match env::var("SOURCE_DATE_EPOCH") {
        Ok(s) if !s.trim().is_empty() => s
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={s:?} is not a number of seconds")),
        Ok(_) | Err(env::VarError::NotPresent) => Ok(0),
        Err(env::VarError::NotUnicode(_)) => bail!("SOURCE_DATE_EPOCH is not UTF-8"),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use oci_image::pidmap::Library;

    use super::*;

    /// A fake binary and fake shared objects, so the test needs no build and no ldd.
    fn inputs(dir: &Path) -> (PathBuf, Vec<Library>) {
        let binary = dir.join("pidmap");
        fs::write(&binary, b"\x7fELF not really").expect("write fake binary");
        let libc = dir.join("libc.so.6.real");
        fs::write(&libc, b"fake libc").expect("write fake libc");
        let link = dir.join("libc.so.6");
        std::os::unix::fs::symlink(&libc, &link).expect("symlink");
        let libs = vec![Library {
            path: "/lib/x86_64-linux-gnu/libc.so.6".into(),
            source: link,
        }];
        (binary, libs)
    }

    fn build(binary: &Path, libs: &[Library], out: &Path) -> oci_image::Written {
        oci_image::pidmap::image(binary, libs, "0.1.0", 0)
            .expect("image")
            .write_archive(out)
            .expect("write archive")
    }

    #[test]
    fn the_same_inputs_give_the_same_bytes_and_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (binary, libs) = inputs(dir.path());
        let (a, b) = (dir.path().join("a.tar"), dir.path().join("b.tar"));
        let first = build(&binary, &libs, &a);
        // A later mtime on the inputs must not matter.
        let later = fs::File::options()
            .append(true)
            .open(&binary)
            .expect("open");
        later
            .set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(3600))
            .expect("touch");
        let second = build(&binary, &libs, &b);
        assert_eq!(first, second);
        assert_eq!(fs::read(&a).expect("read a"), fs::read(&b).expect("read b"));
        assert_eq!(first.reference, "localhost/pidmap:0.1.0");
        assert!(first.manifest_digest.starts_with("sha256:"), "{first:?}");

        // A different binary is a different image.
        fs::write(&binary, b"\x7fELF another").expect("rewrite");
        let third = build(&binary, &libs, &dir.path().join("c.tar"));
        assert_ne!(first.manifest_digest, third.manifest_digest);
    }

    #[test]
    fn the_archive_is_an_oci_layout_with_the_agent_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (binary, libs) = inputs(dir.path());
        let out = dir.path().join("image.tar");
        let written = build(&binary, &libs, &out);

        let mut files = std::collections::BTreeMap::new();
        let mut archive = tar::Archive::new(fs::File::open(&out).expect("open"));
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let h = entry.header();
            assert_eq!(
                (h.uid().ok(), h.gid().ok(), h.mtime().ok()),
                (Some(0), Some(0), Some(0))
            );
            let path = entry.path().expect("path").display().to_string();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).expect("read entry");
            files.insert(path, data);
        }
        let json = |path: &str| -> serde_json::Value {
            serde_json::from_slice(&files[path]).unwrap_or_else(|e| panic!("{path}: {e}"))
        };
        let blob = |digest: &str| json(&digest.replacen("sha256:", "blobs/sha256/", 1));
        assert!(files.contains_key("oci-layout"));
        let index = json("index.json");
        let desc = &index["manifests"][0];
        assert_eq!(desc["digest"], written.manifest_digest.as_str());
        assert_eq!(
            desc["annotations"]["io.containerd.image.name"],
            "localhost/pidmap:0.1.0"
        );
        assert_eq!(
            desc["annotations"]["org.opencontainers.image.ref.name"],
            "0.1.0"
        );
        let manifest = blob(&written.manifest_digest);
        let config = blob(
            manifest["config"]["digest"]
                .as_str()
                .expect("config digest"),
        );
        assert_eq!(config["created"], "1970-01-01T00:00:00Z");
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!(["/usr/local/bin/pidmap"])
        );
        assert_eq!(config["config"]["Cmd"], serde_json::json!(["agent"]));
        assert_eq!(config["config"]["User"], "0");
        assert!(
            config["config"]["Env"]
                .as_array()
                .expect("env")
                .contains(&"RUST_LOG=info".into())
        );
        assert_eq!(
            config["config"]["Labels"]["org.opencontainers.image.version"],
            "0.1.0"
        );

        let layer_path = manifest["layers"][0]["digest"]
            .as_str()
            .expect("layer digest")
            .replacen("sha256:", "blobs/sha256/", 1);
        let mut layer = tar::Archive::new(files[&layer_path].as_slice());
        let mut paths = Vec::new();
        for entry in layer.entries().expect("layer entries") {
            let mut entry = entry.expect("layer entry");
            let path = entry.path().expect("path").display().to_string();
            if path == "lib/x86_64-linux-gnu/libc.so.6" {
                // The symlink was followed: a regular file with the library's content.
                assert_eq!(entry.header().entry_type(), tar::EntryType::Regular);
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut data).expect("read libc");
                assert_eq!(data, b"fake libc");
            }
            paths.push(path);
        }
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted, "layer entries are sorted");
        for want in [
            "usr/local/bin/pidmap",
            "lib/x86_64-linux-gnu/libc.so.6",
            "run/pidmap",
            "etc/pidmap",
            "tmp",
            "proc",
            "sys",
        ] {
            assert!(
                paths.iter().any(|p| p == want),
                "{want} missing from {paths:?}"
            );
        }
    }
}
