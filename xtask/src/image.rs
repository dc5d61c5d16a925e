//! `cargo xtask image`: build the release agent and write its OCI image archive.
//!
//! The image's contents are defined once, in `oci_image::pidmap` (shared with the
//! end-to-end test); `deploy/Containerfile` is the Docker/Buildah equivalent.

use std::{env, path::PathBuf, time::Instant};

use anyhow::{Context as _, Result, bail};

use crate::{
    setup,
    util::{cargo, fmt_duration, output, run_shown},
};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Where to write the archive (an OCI image layout tar); default
    /// `<target dir>/pidmap-image.tar`.
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
}

/// Runs setup, builds the release agent, writes the archive and prints its reference and
/// manifest digest. Timestamps are `SOURCE_DATE_EPOCH` if set, else 0.
pub(crate) fn run(args: &Args) -> Result<()> {
    setup::run(&setup::Options { for_tests: false })?;
    run_shown(cargo().args(["build", "--release", "-p", "pidmap"]))
        .context("building the agent failed")?;
    let start = Instant::now();
    let (target_dir, version) = target_dir_and_agent_version()?;
    let binary = target_dir.join("release").join("pidmap");
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| target_dir.join("pidmap-image.tar"));
    let created = source_date_epoch()?;
    let written = write(&binary, &version, created, &out)?;
    println!(
        "image: wrote {} ({} MiB) in {}",
        out.display(),
        written.archive_bytes / (1 << 20),
        fmt_duration(start.elapsed())
    );
    println!("image: reference {}", written.reference);
    println!("image: manifest  {}", written.manifest_digest);
    println!(
        "image: load it with `ctr -n k8s.io images import {}`",
        out.display()
    );
    Ok(())
}

/// Writes the pidmap image of `binary` (with the shared objects it loads on this host).
fn write(
    binary: &std::path::Path,
    version: &str,
    created: u64,
    out: &std::path::Path,
) -> Result<oci_image::Written> {
    let libraries = oci_image::pidmap::shared_libraries(binary)?;
    for lib in &libraries {
        println!(
            "image: {} (from {})",
            lib.path.display(),
            lib.source.display()
        );
    }
    let image = oci_image::pidmap::image(binary, &libraries, version, created)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    Ok(image.write_archive(out)?)
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
    fn inputs(dir: &std::path::Path) -> (PathBuf, Vec<Library>) {
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

    fn build(
        binary: &std::path::Path,
        libs: &[Library],
        out: &std::path::Path,
    ) -> oci_image::Written {
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
