//! The Rust side: the nightly toolchain with rust-src (the eBPF programs are built
//! with `-Z build-std`), and bpf-linker built against that toolchain's own LLVM.

use super::*;

/// The bpf-linker release that matches the pinned aya set.
pub(super) const BPF_LINKER_VERSION: &str = "0.13.0";

pub(super) fn rustup() -> Command {
    Command::new("rustup")
}

pub(super) fn nightly_toolchain() -> Result<()> {
    if util::which("rustup").is_none() {
        bail!(
            "rustup is not on PATH; the eBPF build needs it (aya-build runs `rustup run nightly \
             cargo build`)"
        );
    }
    let list = output(rustup().args(["toolchain", "list"]))?;
    if list.lines().any(is_nightly_channel) {
        let version = output(nightly("rustc").arg("--version"))?;
        say(format!("nightly toolchain present ({version})"));
        return Ok(());
    }
    let mut install = rustup();
    install.args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]);
    say(format!(
        "installing the nightly toolchain ({})…",
        util::display(&install)
    ));
    util::run(&mut install)
}

/// Whether a line of `rustup toolchain list` is the `nightly` channel itself (not a dated
/// nightly such as `nightly-2026-05-01-…`, which `+nightly` does not select).
pub(super) fn is_nightly_channel(line: &str) -> bool {
    let name = line.split_whitespace().next().unwrap_or_default();
    match name.strip_prefix("nightly-") {
        Some(rest) => !rest.starts_with(|c: char| c.is_ascii_digit()),
        None => name == "nightly",
    }
}

pub(super) fn rust_src() -> Result<()> {
    let installed =
        output(rustup().args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    let present = installed
        .lines()
        .map(str::trim)
        .any(|c| c == "rust-src" || c.starts_with("rust-src-"));
    if present {
        say("rust-src for nightly present");
        return Ok(());
    }
    let mut add = rustup();
    add.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
    say(format!(
        "installing rust-src for nightly ({})…",
        util::display(&add)
    ));
    util::run(&mut add)
}

pub(super) fn bpf_linker() -> Result<()> {
    match probe("bpf-linker", &["--version"]) {
        Probe::Works(version) if version.starts_with("bpf-linker ") => {
            say(format!("{version} present"));
            return Ok(());
        }
        Probe::Works(version) => {
            say(format!("bpf-linker present ({version})"));
            return Ok(());
        }
        Probe::NotFound => {
            let dir = install_root()?.join("bin");
            if let Probe::Works(version) = probe(dir.join("bpf-linker"), &["--version"]) {
                bail!(
                    "{version} is installed in {0} but {0} is not on PATH: add it",
                    dir.display()
                );
            }
            say("bpf-linker not found; building it");
        }
        Probe::Fails(why) => say(format!(
            "bpf-linker is installed but does not start ({why}); the nightly toolchain's \
             libLLVM probably changed: rebuilding it"
        )),
    }
    install_bpf_linker()
}

/// Builds bpf-linker against the nightly toolchain's own libLLVM (see ENVIRONMENT.md's
/// recipe): an LLVM prefix whose `lib/` links to the sysroot's `libLLVM.so.*`, and the
/// `llvm-NN` feature matching nightly's LLVM major.
pub(super) fn install_bpf_linker() -> Result<()> {
    let sysroot = PathBuf::from(output(nightly("rustc").args(["--print", "sysroot"]))?);
    let llvm_major = llvm_major(&output(nightly("rustc").arg("-vV"))?)?;
    let lib_dir = sysroot.join("lib");
    let lib_name = find_libllvm(&lib_dir)?;
    let prefix = util::home()?.join(".cache/pidmap/llvm");
    link_libllvm(&prefix, &lib_dir.join(&lib_name), &lib_name)?;

    let mut install = cargo();
    install
        .env("LLVM_PREFIX", &prefix)
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{llvm_major}"))
        // Replaces an installed copy that no longer starts.
        .arg("--force");
    say(format!(
        "building bpf-linker {BPF_LINKER_VERSION} against {lib_name}; this takes about a \
         minute or two ({})…",
        util::display(&install)
    ));
    let start = Instant::now();
    util::run(&mut install)?;

    let bin_dir = install_root()?.join("bin");
    let installed = bin_dir.join("bpf-linker");
    match probe(&installed, &["--version"]) {
        Probe::Works(version) => say(format!(
            "{version} installed in {} (took {})",
            bin_dir.display(),
            util::fmt_duration(start.elapsed())
        )),
        Probe::NotFound => bail!("cargo install left no {}", installed.display()),
        Probe::Fails(why) => bail!("the new {} does not start: {why}", installed.display()),
    }
    // aya-build's nightly cargo finds the linker on PATH.
    match (
        util::which("bpf-linker"),
        probe("bpf-linker", &["--version"]),
    ) {
        (Some(found), Probe::Works(_)) if same_file(&found, &installed) => Ok(()),
        (Some(found), _) => bail!(
            "`bpf-linker` on PATH is {}, not the one just built: put {} first on PATH",
            found.display(),
            bin_dir.display()
        ),
        (None, _) => bail!(
            "bpf-linker is installed in {0} but {0} is not on PATH: add it",
            bin_dir.display()
        ),
    }
}

pub(super) fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The major version from the `LLVM version: 22.1.4` line of `rustc -vV`.
pub(super) fn llvm_major(version_verbose: &str) -> Result<u32> {
    let version = version_verbose
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))
        .context("`rustc +nightly -vV` prints no `LLVM version:` line")?
        .trim();
    version
        .split('.')
        .next()
        .and_then(|major| major.parse().ok())
        .with_context(|| format!("cannot read an LLVM major version from `{version}`"))
}

/// The name of the one `libLLVM.so.*` in the nightly sysroot's `lib/` (it changes with nightly).
pub(super) fn find_libllvm(lib_dir: &Path) -> Result<String> {
    let entries =
        fs::read_dir(lib_dir).with_context(|| format!("cannot list {}", lib_dir.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("libLLVM.so.") {
            names.push(name.into_owned());
        }
    }
    match <[String; 1]>::try_from(names) {
        Ok([name]) => Ok(name),
        Err(names) if names.is_empty() => bail!(
            "no libLLVM.so.* in {}: bpf-linker is built against the nightly toolchain's \
             libLLVM, and this toolchain has none",
            lib_dir.display()
        ),
        Err(names) => bail!(
            "several libLLVM.so.* in {} ({}); expected one",
            lib_dir.display(),
            names.join(", ")
        ),
    }
}

/// Makes `PREFIX/lib/libLLVM.so` (for the build) and `PREFIX/lib/NAME` (so bpf-linker starts
/// outside `rustup run nightly`) point at `library`; drops links left by older nightlies.
pub(super) fn link_libllvm(prefix: &Path, library: &Path, name: &str) -> Result<()> {
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("cannot create {}", lib.display()))?;
    for entry in fs::read_dir(&lib).with_context(|| format!("cannot list {}", lib.display()))? {
        let path = entry?.path();
        let stale = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM"));
        if stale && path.symlink_metadata()?.file_type().is_symlink() {
            fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    for link in [lib.join("libLLVM.so"), lib.join(name)] {
        symlink(library, &link)
            .with_context(|| format!("cannot link {} to {}", link.display(), library.display()))?;
    }
    say(format!(
        "LLVM prefix {} links to {}",
        prefix.display(),
        library.display()
    ));
    Ok(())
}

/// Where `cargo install` puts binaries, less the `bin/`: `CARGO_INSTALL_ROOT`, else
/// `CARGO_HOME`, else `~/.cargo`.
pub(super) fn install_root() -> Result<PathBuf> {
    for var in ["CARGO_INSTALL_ROOT", "CARGO_HOME"] {
        if let Some(dir) = std::env::var_os(var).filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(dir));
        }
    }
    Ok(util::home()?.join(".cargo"))
}
