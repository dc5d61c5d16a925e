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

/// The shared objects of `binary`, built for another architecture, from its loader's `--list`
/// output (what `ldd` prints) with every path seen inside `root`, a directory holding that
/// architecture's libraries (Debian's packages of it, unpacked), as under
/// `qemu-aarch64-static -L ROOT ROOT/lib/ld-linux-aarch64.so.1 --list BINARY`. Each path is
/// the one the loader uses in the image; its source is the file in `root` it resolves to,
/// which must stay inside `root`.
pub fn libraries_in_root(binary: &Path, listing: &str, root: &Path) -> Result<Vec<Library>, Error> {
    let listing_err = |detail: String| Error::Ldd {
        binary: binary.to_path_buf(),
        detail,
    };
    let root = root.canonicalize().map_err(|source| Error::Read {
        path: root.to_path_buf(),
        source,
    })?;
    let mut libraries = Vec::new();
    for path in parse_listing(listing, Some(&root)).map_err(listing_err)? {
        let inside = root.join(path.strip_prefix("/").unwrap_or(&path));
        let source = inside.canonicalize().map_err(|source| Error::Read {
            path: inside.clone(),
            source,
        })?;
        if !source.starts_with(&root) {
            return Err(listing_err(format!(
                "{} resolves to {}, outside the root",
                path.display(),
                source.display()
            )));
        }
        libraries.push(Library { path, source });
    }
    Ok(libraries)
}

/// The absolute paths in `ldd` output, sorted and without duplicates.
fn parse_ldd(output: &str) -> Result<Vec<PathBuf>, String> {
    parse_listing(output, None)
}

/// The absolute paths a loader's `--list` output names, sorted and without duplicates.
/// With `root` (the listing was made inside it, under user-mode QEMU's `-L`), a line
/// `/lib/ld-linux-aarch64.so.1 => ROOT/lib/ld-linux-aarch64.so.1` gives its left side and
/// other paths lose the `ROOT` prefix.
fn parse_listing(output: &str, root: Option<&Path>) -> Result<Vec<PathBuf>, String> {
    let mut paths = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let target = match line.split_once("=>") {
            Some((name, _)) if root.is_some() && name.trim().starts_with('/') => Some(name.trim()),
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(format!("{} not found", name.trim()));
                }
                rest.split_whitespace().next()
            }
            None => line.split_whitespace().next(),
        };
        let target = match (target, root) {
            (Some(t), Some(root)) => Some(
                Path::new(t)
                    .strip_prefix(root)
                    .map_or_else(|_| t.to_owned(), |p| format!("/{}", p.display())),
            ),
            (t, _) => t.map(str::to_owned),
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
/// `created` (seconds since the epoch), for this machine's architecture.
pub fn image(
    binary: &Path,
    libraries: &[Library],
    version: &str,
    created: u64,
) -> Result<Image, Error> {
    let mut image = image_files(binary, libraries, version, created)?;
    image.set_architecture(crate::oci_arch());
    Ok(image)
}

/// The pidmap image for OCI architecture `arch` (`amd64`, `arm64`), as [`image`]: the binary
/// and every library must be ELF files of that architecture (read and checked here, so a
/// host library never lands in another platform's image).
pub fn image_for(
    arch: &str,
    binary: &Path,
    libraries: &[Library],
    version: &str,
    created: u64,
) -> Result<Image, Error> {
    let want = elf_machine_of(arch).ok_or_else(|| Error::Platforms {
        detail: format!("no ELF machine known for architecture {arch}"),
    })?;
    for file in std::iter::once(binary).chain(libraries.iter().map(|l| l.source.as_path())) {
        let found = elf_machine(file)?;
        if found != Some(want) {
            return Err(Error::Platforms {
                detail: format!(
                    "{} is not an ELF file for {arch} (e_machine {found:?}, want {want})",
                    file.display()
                ),
            });
        }
    }
    let mut image = image_files(binary, libraries, version, created)?;
    image.set_architecture(arch);
    Ok(image)
}

/// ELF `e_machine` of OCI architecture `arch`.
fn elf_machine_of(arch: &str) -> Option<u16> {
    match arch {
        "amd64" => Some(62),  // EM_X86_64
        "arm64" => Some(183), // EM_AARCH64
        _ => None,
    }
}

/// `e_machine` of the ELF file at `path` (little-endian), `None` if it is no ELF file.
fn elf_machine(path: &Path) -> Result<Option<u16>, Error> {
    let mut head = [0u8; 20];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
    Ok((head[..4] == *b"\x7fELF").then(|| u16::from_le_bytes([head[18], head[19]])))
}

fn image_files(
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
    fn a_listing_inside_a_root_gives_the_loader_paths_and_the_files_in_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("canonical");
        let lib = root.join("lib/aarch64-linux-gnu");
        std::fs::create_dir_all(&lib).expect("mkdir");
        for name in ["ld-linux-aarch64.so.1", "libc.so.6", "libgcc_s.so.1"] {
            std::fs::write(lib.join(name), name).expect("write");
        }
        std::os::unix::fs::symlink(
            "aarch64-linux-gnu/ld-linux-aarch64.so.1",
            root.join("lib/ld-linux-aarch64.so.1"),
        )
        .expect("symlink");
        let listing = format!(
            "\t (0x0000005502850000)
\tlibgcc_s.so.1 => /lib/aarch64-linux-gnu/libgcc_s.so.1 (0x00000055030b0000)
\tlibc.so.6 => /lib/aarch64-linux-gnu/libc.so.6 (0x00000055031a0000)
\t/lib/ld-linux-aarch64.so.1 => {}/lib/ld-linux-aarch64.so.1 (0x0000005500000000)
",
            root.display()
        );
        let libs = libraries_in_root(Path::new("pidmap"), &listing, &root).expect("libraries");
        let pairs: Vec<(&str, PathBuf)> = libs
            .iter()
            .map(|l| (l.path.to_str().expect("utf-8"), l.source.clone()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("/lib/aarch64-linux-gnu/libc.so.6", lib.join("libc.so.6")),
                (
                    "/lib/aarch64-linux-gnu/libgcc_s.so.1",
                    lib.join("libgcc_s.so.1")
                ),
                (
                    "/lib/ld-linux-aarch64.so.1",
                    lib.join("ld-linux-aarch64.so.1")
                ),
            ]
        );

        // A link out of the root is refused, not followed onto the host.
        std::fs::remove_file(lib.join("libc.so.6")).expect("rm");
        std::os::unix::fs::symlink("/etc/hostname", lib.join("libc.so.6")).expect("symlink");
        let err =
            libraries_in_root(Path::new("pidmap"), &listing, &root).expect_err("outside the root");
        assert!(err.to_string().contains("outside the root"), "{err}");
    }

    #[test]
    fn an_image_for_another_architecture_takes_only_its_elf_files() {
        let exe = std::env::current_exe().expect("current exe");
        let host = crate::oci_arch();
        let libs = shared_libraries(&exe).expect("ldd");
        let image = image_for(host, &exe, &libs, "1", 0).expect("this machine's files");
        assert_eq!(image.architecture(), host);
        let other = if host == "amd64" { "arm64" } else { "amd64" };
        let err = image_for(other, &exe, &libs, "1", 0).expect_err("host files for another arch");
        assert!(err.to_string().contains("is not an ELF file for"), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        let text = dir.path().join("script");
        std::fs::write(&text, "#!/bin/sh\nexit 0\n").expect("write");
        assert!(image_for(host, &text, &[], "1", 0).is_err());
        assert!(image_for("riscv64", &exe, &[], "1", 0).is_err());
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
