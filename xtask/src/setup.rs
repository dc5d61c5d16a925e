//! `cargo xtask setup`: find or install what building and testing pidmap needs.
//!
//! Every step first looks, and only acts when something is missing, so setup is cheap to run
//! before every other subcommand.

use std::{
    collections::BTreeSet,
    fmt::Display,
    fs,
    io::{self, Read as _, Seek as _, SeekFrom},
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::{
    debian::{self, LazyDebian},
    util::{self, cargo, nightly, output, probe, Metadata, Probe},
};

/// The bpf-linker release that matches the pinned aya set.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// The cargo-fuzz release `cargo xtask fuzz` (and the fuzz stage of `cargo xtask test`) uses.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Where the static busybox for test containers must be.
const BUSYBOX: &str = "/bin/busybox";

/// Where the stock gRPC clients the tests run are installed, under the target directory
/// (`tests/src/lib.rs`, `client_tools`, finds them there).
const CLIENT_TOOLS: &str = "client-tools";

/// The Python packages of the client tests, pinned (no lockfile in the repo).
const PYTHON_PACKAGES: [(&str, &str); 2] = [("grpcio", "1.85.1"), ("grpcio-tools", "1.85.1")];

/// The npm packages of the client tests, pinned (no package-lock.json in the repo).
const NODE_PACKAGES: [(&str, &str); 2] =
    [("@grpc/grpc-js", "1.14.7"), ("@grpc/proto-loader", "0.8.1")];

/// Debian's packages for the Go client tests (`clients/go`, built in GOPATH mode from
/// `/usr/share/gocode`: there is no Go module proxy). `golang-github-golang-protobuf-1-5-dev`
/// must come with grpc-go: alone, apt satisfies grpc-go with the 1-3 package, which builds but
/// panics on proto3 `optional` fields. The protoc plugins are for `clients/go/generate.sh`.
const GO_PACKAGES: [&str; 6] = [
    "golang-go",
    "golang-google-grpc-dev",
    "golang-google-protobuf-dev",
    "golang-github-golang-protobuf-1-5-dev",
    "protoc-gen-go",
    "protoc-gen-go-grpc",
];

/// Where the CRI API's `.proto` goes, under the target directory, gogoproto options stripped.
/// `tests/build.rs` compiles it from there (and names the same path).
const CRI_PROTO: &str = "cri-api/api.proto";
/// The Debian package that ships the CRI API's `.proto`, the suites to take it from (in
/// order; bookworm has none) and the file in it.
const CRI_PACKAGE: &str = "golang-github-kubernetes-cri-api-dev";
const CRI_SUITES: [&str; 2] = ["trixie", "sid"];
const CRI_PROTO_IN_PACKAGE: &str =
    "./usr/share/gocode/src/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto";

#[derive(clap::Args)]
pub struct Args {
    /// Also install what the tests need: containerd, ctr, runc, a static busybox, the stock
    /// gRPC clients (Python grpcio, Node @grpc/grpc-js) under target/, Debian's Go and grpc-go
    /// (for clients/go), clang and libbpf's headers, Docker and podman,
    /// cargo-fuzz, and fetch the CRI API's .proto.
    #[arg(long)]
    for_tests: bool,
}

pub struct Options {
    pub for_tests: bool,
}

impl From<Args> for Options {
    fn from(args: Args) -> Self {
        Self {
            for_tests: args.for_tests,
        }
    }
}

/// Runs every step in order; the first failing step stops setup.
pub fn run(options: &Options) -> Result<()> {
    let mut apt = Apt::default();
    step("nightly toolchain", nightly_toolchain)?;
    step("rust-src", rust_src)?;
    step("bpf-linker", bpf_linker)?;
    step("protoc", || protoc(&mut apt))?;
    if options.for_tests {
        step("test tools", || test_tools(&mut apt))?;
        let tools = util::Metadata::load()?.target_dir()?.join(CLIENT_TOOLS);
        step("python gRPC client", || python_client(&mut apt, &tools))?;
        step("node gRPC client", || node_client(&mut apt, &tools))?;
        step("go gRPC client", || go_client(&mut apt))?;
        step("CRI API", cri_api)?;
        cargo_fuzz()?;
    }
    Ok(())
}

/// The `cargo-fuzz` step: present, or installed with `cargo install` into cargo's bin
/// directory (it runs the fuzz targets on the nightly toolchain; it builds on stable).
pub fn cargo_fuzz() -> Result<()> {
    step("cargo-fuzz", || {
        match probe("cargo-fuzz", &["--version"]) {
            Probe::Works(version) => {
                say(format!("{version} present"));
                return Ok(());
            }
            Probe::NotFound => {}
            Probe::Fails(why) => say(format!(
                "cargo-fuzz is installed but does not start ({why}); reinstalling it"
            )),
        }
        let mut install = cargo();
        install.args([
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
            "--force",
        ]);
        say(format!(
            "installing cargo-fuzz {CARGO_FUZZ_VERSION} (under a minute; {})…",
            util::display(&install)
        ));
        util::run(&mut install)?;
        require_tool("cargo-fuzz")
    })
}

fn step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    f().with_context(|| format!("setup step `{name}` failed"))
}

fn say(message: impl Display) {
    println!("setup: {message}");
}

fn rustup() -> Command {
    Command::new("rustup")
}

fn nightly_toolchain() -> Result<()> {
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
fn is_nightly_channel(line: &str) -> bool {
    let name = line.split_whitespace().next().unwrap_or_default();
    match name.strip_prefix("nightly-") {
        Some(rest) => !rest.starts_with(|c: char| c.is_ascii_digit()),
        None => name == "nightly",
    }
}

fn rust_src() -> Result<()> {
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

fn bpf_linker() -> Result<()> {
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
fn install_bpf_linker() -> Result<()> {
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

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The major version from the `LLVM version: 22.1.4` line of `rustc -vV`.
fn llvm_major(version_verbose: &str) -> Result<u32> {
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
fn find_libllvm(lib_dir: &Path) -> Result<String> {
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
fn link_libllvm(prefix: &Path, library: &Path, name: &str) -> Result<()> {
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
fn install_root() -> Result<PathBuf> {
    for var in ["CARGO_INSTALL_ROOT", "CARGO_HOME"] {
        if let Some(dir) = std::env::var_os(var).filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(dir));
        }
    }
    Ok(util::home()?.join(".cargo"))
}

fn protoc(apt: &mut Apt) -> Result<()> {
    match probe("protoc", &["--version"]) {
        Probe::Works(version) => {
            say(format!("protoc present ({version})"));
            return Ok(());
        }
        Probe::Fails(why) => bail!("protoc is installed but `protoc --version` fails: {why}"),
        Probe::NotFound => say("protoc not found"),
    }
    apt.install(&["protobuf-compiler"])?;
    require_tool("protoc")
}

/// The tools the privileged tests run, and the Debian package of each. `dockerd`, not
/// `docker`: a machine may have Docker's client without its engine. `clang` builds the
/// example eBPF consumer of the pinned containers map (tests/pinned.rs).
const TEST_TOOLS: [(&str, &str); 6] = [
    ("containerd", "containerd"),
    ("ctr", "containerd"),
    ("runc", "runc"),
    ("dockerd", "docker.io"),
    ("podman", "podman"),
    ("clang", "clang"),
];

/// libbpf's header for BPF programs in C, which the example consumer includes.
const BPF_HELPERS: &str = "/usr/include/bpf/bpf_helpers.h";

fn test_tools(apt: &mut Apt) -> Result<()> {
    let mut packages = BTreeSet::new();
    for (tool, package) in TEST_TOOLS {
        match probe(tool, &["--version"]) {
            Probe::Works(version) => say(format!("{tool} present ({version})")),
            Probe::NotFound => {
                say(format!("{tool} not found"));
                packages.insert(package);
            }
            Probe::Fails(why) => {
                bail!("{tool} is installed but `{tool} --version` fails: {why}")
            }
        }
    }
    match is_static_elf(Path::new(BUSYBOX)) {
        Ok(true) => say(format!("static busybox present ({BUSYBOX})")),
        Ok(false) => {
            say(format!(
                "{BUSYBOX} is dynamically linked; test containers need the static one"
            ));
            packages.insert("busybox-static");
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            say(format!("static busybox not found ({BUSYBOX})"));
            packages.insert("busybox-static");
        }
        Err(err) => return Err(err).with_context(|| format!("cannot inspect {BUSYBOX}")),
    }
    if Path::new(BPF_HELPERS).exists() {
        say(format!("libbpf headers present ({BPF_HELPERS})"));
    } else {
        say(format!("libbpf headers not found ({BPF_HELPERS})"));
        packages.insert("libbpf-dev");
    }
    if packages.is_empty() {
        return Ok(());
    }
    apt.install(&packages.into_iter().collect::<Vec<_>>())?;
    for (tool, _) in TEST_TOOLS {
        require_tool(tool)?;
    }
    if !Path::new(BPF_HELPERS).exists() {
        bail!("{BPF_HELPERS} is still missing after installing libbpf-dev");
    }
    if !is_static_elf(Path::new(BUSYBOX)).unwrap_or(false) {
        bail!("{BUSYBOX} is still not a static busybox after installing busybox-static");
    }
    Ok(())
}

/// A virtualenv at `TOOLS/python` with [`PYTHON_PACKAGES`], for the grpcio client tests.
fn python_client(apt: &mut Apt, tools: &Path) -> Result<()> {
    let venv = tools.join("python");
    let python = venv.join("bin/python");
    let wanted = PYTHON_PACKAGES.map(|(name, version)| format!("{name}=={version}"));
    let installed = output(Command::new(&python).args(["-m", "pip", "freeze"]));
    if let Ok(frozen) = &installed {
        if wanted.iter().all(|w| frozen.lines().any(|l| l == w)) {
            say(format!(
                "{} present in {}",
                wanted.join(", "),
                venv.display()
            ));
            return Ok(());
        }
    }
    if !python.exists() {
        if !matches!(
            probe("python3", &["-c", "import venv, ensurepip"]),
            Probe::Works(_)
        ) {
            say("python3 with venv not found");
            apt.install(&["python3", "python3-venv"])?;
        }
        let mut create = Command::new("python3");
        create.arg("-m").arg("venv").arg(&venv);
        say(format!(
            "creating a Python virtualenv ({})…",
            util::display(&create)
        ));
        util::run(&mut create)?;
    }
    let mut install = Command::new(&python);
    install
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(&wanted);
    install_packages(&wanted, &mut install)
}

/// Says what `install` installs, then runs it.
fn install_packages(wanted: &[String], install: &mut Command) -> Result<()> {
    say(format!(
        "installing {} ({})…",
        wanted.join(", "),
        util::display(install)
    ));
    util::run(install)
}

/// `TOOLS/node/node_modules` with [`NODE_PACKAGES`], for the grpc-js client tests; no
/// package.json or lockfile is written.
fn node_client(apt: &mut Apt, tools: &Path) -> Result<()> {
    let prefix = tools.join("node");
    let present = NODE_PACKAGES.iter().all(|(name, version)| {
        let manifest = prefix.join("node_modules").join(name).join("package.json");
        fs::read_to_string(manifest)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .is_some_and(|json| json["version"] == *version)
    });
    let wanted = NODE_PACKAGES.map(|(name, version)| format!("{name}@{version}"));
    if present {
        say(format!(
            "{} present in {}",
            wanted.join(", "),
            prefix.display()
        ));
        return Ok(());
    }
    if !matches!(probe("npm", &["--version"]), Probe::Works(_)) {
        say("node and npm not found");
        apt.install(&["nodejs", "npm"])?;
    }
    fs::create_dir_all(&prefix).with_context(|| format!("cannot create {}", prefix.display()))?;
    let mut install = Command::new("npm");
    install
        .arg("install")
        .arg("--prefix")
        .arg(&prefix)
        .args([
            "--no-save",
            "--no-package-lock",
            "--no-audit",
            "--no-fund",
            "--silent",
        ])
        .args(&wanted);
    install_packages(&wanted, &mut install)
}

/// Debian's Go, grpc-go, protobuf and protoc plugins ([`GO_PACKAGES`]), for the Go client tests.
/// Installed packages are told by dpkg (the 1-3 and 1-5 golang/protobuf packages ship the same
/// paths, so files alone cannot tell them apart).
fn go_client(apt: &mut Apt) -> Result<()> {
    let installed = |package: &str| {
        output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
            .is_ok_and(|status| status == "install ok installed")
    };
    let missing: Vec<&str> = GO_PACKAGES.into_iter().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        let version = output(Command::new("go").arg("version"))?;
        say(format!(
            "{version} with Debian's grpc-go and protoc plugins present"
        ));
        return Ok(());
    }
    say(format!(
        "Go client packages missing: {}",
        missing.join(", ")
    ));
    apt.install(&missing)?;
    match probe("go", &["version"]) {
        Probe::Works(version) => say(format!("{version} installed")),
        Probe::NotFound => bail!("go is still not on PATH after installing golang-go"),
        Probe::Fails(why) => bail!("go was installed but `go version` fails: {why}"),
    }
    require_tool("protoc-gen-go")?;
    require_tool("protoc-gen-go-grpc")
}

/// The CRI API's `.proto` for `tests/tests/cri.rs`: Debian's `golang-github-kubernetes-cri-api-dev`
/// (from trixie; bookworm has none), downloaded with the matrix's private apt state under
/// `target/matrix-cache/apt/` (never installed), its gogoproto options stripped, written to
/// `target/cri-api/api.proto`.
fn cri_api() -> Result<()> {
    let target = Metadata::load()?.target_dir()?;
    let proto = target.join(CRI_PROTO);
    if proto.is_file() {
        say(format!("CRI API present ({})", proto.display()));
        return Ok(());
    }
    say(format!(
        "CRI API not found ({}): fetching Debian's {CRI_PACKAGE}",
        proto.display()
    ));
    let mut debian = LazyDebian::new(debian::apt_dir(&target));
    let debian = debian.get()?;
    let (suite, version) = debian.with_fresh_retry(|d| {
        CRI_SUITES
            .iter()
            .find_map(|suite| Some((*suite, d.version_in(CRI_PACKAGE, suite).ok()?)))
            .with_context(|| format!("no Debian suite of {CRI_SUITES:?} has {CRI_PACKAGE}"))
    })?;
    say(format!("downloading {CRI_PACKAGE} {version} ({suite})"));
    let deb = debian.with_fresh_retry(|d| d.download(CRI_PACKAGE, &version))?;
    let unpacked = tempfile::Builder::new()
        .prefix("pidmap-cri-api-")
        .tempdir()
        .context("cannot create a temp dir")?;
    debian::extract_matching(&deb, CRI_PROTO_IN_PACKAGE, unpacked.path())?;
    let _ = fs::remove_file(&deb);
    let original = unpacked.path().join(CRI_PROTO_IN_PACKAGE);
    let text = fs::read_to_string(&original)
        .with_context(|| format!("{CRI_PACKAGE} {version} has no {CRI_PROTO_IN_PACKAGE}"))?;
    let stripped = strip_gogoproto(&text);
    if stripped.contains("gogoproto") {
        bail!("{CRI_PROTO_IN_PACKAGE} still mentions gogoproto after stripping its options");
    }
    let dir = proto
        .parent()
        .context("the CRI proto path has no directory")?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Written aside and renamed, so an interrupted setup never leaves half a file.
    let partial = proto.with_extension("partial");
    fs::write(&partial, stripped).with_context(|| format!("cannot write {}", partial.display()))?;
    fs::rename(&partial, &proto).with_context(|| format!("cannot write {}", proto.display()))?;
    say(format!(
        "CRI API {version} ({suite}) written to {}",
        proto.display()
    ));
    Ok(())
}

/// `text` without the gogoproto import and options (Go code-generation hints that `protoc`
/// cannot resolve without gogo.proto): file-level `option (gogoproto.…) = …;` lines and
/// `(gogoproto.…)` entries of field option lists (`[…]`, dropped when nothing is left).
fn strip_gogoproto(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("option (gogoproto.")
            || (trimmed.starts_with("import ") && trimmed.contains("gogoproto/gogo.proto"))
        {
            continue;
        }
        out.push_str(&strip_field_options(line));
        out.push('\n');
    }
    out
}

/// One line with the `(gogoproto.…)` entries of its `[…]` field options removed.
fn strip_field_options(line: &str) -> String {
    let Some(open) = line.find('[') else {
        return line.to_owned();
    };
    let Some(close) = line[open..].find(']').map(|i| open + i) else {
        return line.to_owned();
    };
    let kept: Vec<&str> = line[open + 1..close]
        .split(',')
        .map(str::trim)
        .filter(|option| !option.starts_with("(gogoproto."))
        .collect();
    let head = line[..open].trim_end();
    let tail = strip_field_options(&line[close + 1..]);
    if kept.is_empty() {
        format!("{head}{tail}")
    } else {
        format!("{head} [{}]{tail}", kept.join(", "))
    }
}

fn require_tool(tool: &str) -> Result<()> {
    match probe(tool, &["--version"]) {
        Probe::Works(_) => Ok(()),
        Probe::NotFound => bail!("{tool} is still not on PATH after installing it"),
        Probe::Fails(why) => bail!("{tool} was installed but `{tool} --version` fails: {why}"),
    }
}

/// Whether `path` is an ELF executable without a program interpreter (statically linked).
fn is_static_elf(path: &Path) -> io::Result<bool> {
    let mut file = fs::File::open(path)?;
    let mut ident = [0u8; 64];
    file.read_exact(&mut ident)?;
    if ident[..4] != *b"\x7fELF" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an ELF file",
        ));
    }
    let big_endian = ident[5] == 2;
    let u16_at = |at: usize| {
        let bytes = [ident[at], ident[at + 1]];
        if big_endian {
            u16::from_be_bytes(bytes)
        } else {
            u16::from_le_bytes(bytes)
        }
    };
    let word = |bytes: &[u8]| -> u64 {
        let fold = |acc: u64, b: &u8| acc << 8 | u64::from(*b);
        if big_endian {
            bytes.iter().fold(0, fold)
        } else {
            bytes.iter().rev().fold(0, fold)
        }
    };
    // ELF64 (class 2) or ELF32: where the program header table is, and its entry layout.
    let (phoff, phentsize, phnum) = if ident[4] == 2 {
        (word(&ident[0x20..0x28]), u16_at(0x36), u16_at(0x38))
    } else {
        (word(&ident[0x1c..0x20]), u16_at(0x2a), u16_at(0x2c))
    };
    const PT_INTERP: u64 = 3;
    let mut p_type = [0u8; 4];
    for index in 0..u64::from(phnum) {
        file.seek(SeekFrom::Start(phoff + index * u64::from(phentsize)))?;
        file.read_exact(&mut p_type)?;
        if word(&p_type) == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Installs Debian `packages` with the system's apt-get (`update` first); for tools that
/// only some subcommands need (`cargo xtask matrix`: QEMU, gcc).
pub fn apt_install(packages: &[&str]) -> Result<()> {
    Apt::default().install(packages)
}

/// apt-get, run at most once with `update`, and only when something must be installed.
#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    fn install(&mut self, packages: &[&str]) -> Result<()> {
        let mut install = apt_get();
        install
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages);
        let list = packages.join(" ");
        if !util::is_root() {
            bail!(
                "installing {list} needs root; as root, run: apt-get update && apt-get \
                 install -y --no-install-recommends {list}"
            );
        }
        say(format!("installing {list} ({})…", util::display(&install)));
        if !self.updated {
            util::run(apt_get().arg("update"))?;
            self.updated = true;
        }
        util::run(&mut install)
    }
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nightly_channel_is_told_from_dated_nightlies() {
        assert!(is_nightly_channel("nightly-x86_64-unknown-linux-gnu"));
        assert!(is_nightly_channel(
            "nightly-x86_64-unknown-linux-gnu (active)"
        ));
        assert!(is_nightly_channel("nightly"));
        assert!(!is_nightly_channel(
            "nightly-2026-05-19-x86_64-unknown-linux-gnu"
        ));
        assert!(!is_nightly_channel(
            "stable-x86_64-unknown-linux-gnu (default)"
        ));
    }

    #[test]
    fn llvm_major_comes_from_the_llvm_line() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\n\
                  release: 1.97.0-nightly\nLLVM version: 22.1.4";
        assert_eq!(llvm_major(vv).ok(), Some(22));
        assert!(llvm_major("rustc 1.97.0-nightly").is_err());
    }

    #[test]
    fn gogoproto_options_are_stripped() {
        let proto = "syntax = \"proto3\";\npackage runtime.v1;\n\
                     import \"github.com/gogo/protobuf/gogoproto/gogo.proto\";\n\
                     option (gogoproto.marshaler_all) = true;\n\
                     option go_package = \"k8s.io/cri-api\";\n\
                     message A {\n    \
                     string a = 1 [(gogoproto.nullable) = false];\n    \
                     repeated B b = 2 [(gogoproto.customname) = \"Bs\", deprecated = true];\n    \
                     int64 c = 3;\n}\n";
        let want = "syntax = \"proto3\";\npackage runtime.v1;\n\
                    option go_package = \"k8s.io/cri-api\";\n\
                    message A {\n    \
                    string a = 1;\n    \
                    repeated B b = 2 [deprecated = true];\n    \
                    int64 c = 3;\n}\n";
        assert_eq!(strip_gogoproto(proto), want);
    }

    #[test]
    fn static_and_dynamic_executables_are_told_apart() -> io::Result<()> {
        // The test binary itself is dynamically linked (it has an interpreter).
        let me = std::env::current_exe()?;
        assert!(!is_static_elf(&me)?);
        let err = is_static_elf(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/Cargo.toml"
        )));
        assert!(err.is_err());
        Ok(())
    }
}
