//! The pidmap agent's image: the binary, the shared objects it loads, a few empty dirs.
//!
//! `deploy/Containerfile` builds the same image with Docker or Buildah; keep them equivalent.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::{Error, Image, ImageConfig};

/// Where the agent binary goes.
pub const BINARY: &str = "/usr/local/bin/pidmap";
/// Empty directories (path, mode): the API socket's and the config's, mount points.
pub const DIRS: [(&str, u32); 5] = [
    ("/etc/pidmap", 0o755),
    ("/proc", 0o755),
    ("/run/pidmap", 0o755),
    ("/sys", 0o755),
    ("/tmp", 0o1777),
];
/// The image's repository; the tag is the agent's version.
pub const REPOSITORY: &str = "localhost/pidmap";

/// `localhost/pidmap:<version>`.
pub fn reference(version: &str) -> String {
    format!("{REPOSITORY}:{version}")
}

/// A shared object a binary loads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Library {
    /// The path the loader uses (`/lib/x86_64-linux-gnu/libc.so.6`); the image has it there.
    pub path: PathBuf,
    /// The file it resolves to on this host (symlinks followed); its content goes in.
    pub source: PathBuf,
}

/// The shared objects `binary` loads, from `ldd`: each path that ldd prints (the
/// interpreter included, the vDSO left out), with the file it resolves to. Empty for a
/// static binary.
pub fn shared_libraries(binary: &Path) -> Result<Vec<Library>, Error> {
    let ldd_err = |detail: String| Error::Ldd {
        binary: binary.to_path_buf(),
        detail,
    };
    let out = Command::new("ldd")
        .arg(binary)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ldd_err(format!("cannot run ldd: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stdout.contains("not a dynamic executable")
            || stderr.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        return Err(ldd_err(format!("ldd failed: {}", stderr.trim())));
    }
    parse_ldd(&stdout)
        .map_err(ldd_err)?
        .into_iter()
        .map(|path| {
            let source = path.canonicalize().map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?;
            Ok(Library { path, source })
        })
        .collect()
}

/// The absolute paths in `ldd` output, sorted and without duplicates.
fn parse_ldd(output: &str) -> Result<Vec<PathBuf>, String> {
    let mut paths = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(format!("{} not found", name.trim()));
                }
                rest.split_whitespace().next()
            }
            None => line.split_whitespace().next(),
        };
        if let Some(path) = target.filter(|t| t.starts_with('/')) {
            paths.push(PathBuf::from(path));
        }
    }
    paths.sort();
    paths.dedup();
    Ok(paths)
}

/// The pidmap image for `binary` (release for `cargo xtask image`; any build works),
/// loading `libraries` (from [`shared_libraries`]), tagged `version`, with timestamps
/// `created` (seconds since the epoch).
pub fn image(
    binary: &Path,
    libraries: &[Library],
    version: &str,
    created: u64,
) -> Result<Image, Error> {
    let labels = BTreeMap::from([
        ("org.opencontainers.image.title".into(), "pidmap".into()),
        ("org.opencontainers.image.version".into(), version.into()),
        (
            "org.opencontainers.image.description".into(),
            "node agent mapping every process to its container and pod".into(),
        ),
        (
            "org.opencontainers.image.licenses".into(),
            "MIT OR Apache-2.0".into(),
        ),
    ]);
    let config = ImageConfig {
        entrypoint: vec![BINARY.into()],
        cmd: vec!["agent".into()],
        env: vec!["PATH=/usr/local/bin".into(), "RUST_LOG=info".into()],
        user: "0".into(),
        working_dir: "/".into(),
        labels,
    };
    let mut image = Image::new(reference(version), created, config);
    image.add_file(BINARY, binary, 0o755)?;
    for lib in libraries {
        let path = lib.path.to_str().ok_or_else(|| Error::BadPath {
            path: lib.path.display().to_string(),
        })?;
        image.add_file(path, &lib.source, 0o755)?;
    }
    for (dir, mode) in DIRS {
        image.add_dir(dir, mode)?;
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_every_path_but_the_vdso() {
        let out = "\tlinux-vdso.so.1 (0x00007ffb7c7b8000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007ffb7c787000)
\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007ffb7c6a7000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007ffb7b21e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007ffb7c7ba000)
";
        let paths = parse_ldd(out).expect("parse");
        let paths: Vec<&str> = paths.iter().filter_map(|p| p.to_str()).collect();
        assert_eq!(
            paths,
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libm.so.6",
                "/lib64/ld-linux-x86-64.so.2",
            ]
        );
        let err = parse_ldd("\tlibfoo.so => not found\n").expect_err("missing library");
        assert_eq!(err, "libfoo.so not found");
    }

    #[test]
    fn this_test_binary_needs_libc() {
        let exe = std::env::current_exe().expect("current exe");
        let libs = shared_libraries(&exe).expect("ldd");
        assert!(
            libs.iter()
                .any(|l| l.path.ends_with("libc.so.6") && l.source.is_file()),
            "{libs:?}"
        );
    }
}
