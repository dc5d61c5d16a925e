//! What the privileged tests run beside the agent: containerd, runc, Docker, podman,
//! clang and libbpf's headers, a static busybox, and the CRI API's `.proto`.

use super::*;

/// Where the static busybox for test containers must be.
pub(super) const BUSYBOX: &str = "/bin/busybox";

/// The tools the privileged tests run, and the Debian package of each. `dockerd`, not
/// `docker`: a machine may have Docker's client without its engine. `clang` builds the
/// example eBPF consumer of the pinned containers map (tests/pinned.rs).
pub(super) const TEST_TOOLS: [(&str, &str); 6] = [
    ("containerd", "containerd"),
    ("ctr", "containerd"),
    ("runc", "runc"),
    ("dockerd", "docker.io"),
    ("podman", "podman"),
    ("clang", "clang"),
];

/// libbpf's header for BPF programs in C, which the example consumer includes.
pub(super) const BPF_HELPERS: &str = "/usr/include/bpf/bpf_helpers.h";

pub(super) fn test_tools(apt: &mut Apt) -> Result<()> {
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

/// Whether `path` is an ELF executable without a program interpreter (statically linked).
pub(super) fn is_static_elf(path: &Path) -> io::Result<bool> {
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

/// Where the CRI API's `.proto` goes, under the target directory, gogoproto options stripped.
/// `tests/build.rs` compiles it from there (and names the same path).
pub(super) const CRI_PROTO: &str = "cri-api/api.proto";

/// The Debian package that ships the CRI API's `.proto`, the suites to take it from (in
/// order; bookworm has none) and the file in it.
pub(super) const CRI_PACKAGE: &str = "golang-github-kubernetes-cri-api-dev";

pub(super) const CRI_SUITES: [&str; 2] = ["trixie", "sid"];

pub(super) const CRI_PROTO_IN_PACKAGE: &str =
    "./usr/share/gocode/src/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto";

/// The CRI API's `.proto` for `tests/tests/cri.rs`: Debian's `golang-github-kubernetes-cri-api-dev`
/// (from trixie; bookworm has none), downloaded with the matrix's private apt state under
/// `target/matrix-cache/apt/` (never installed), its gogoproto options stripped, written to
/// `target/cri-api/api.proto`.
pub(super) fn cri_api() -> Result<()> {
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
    let mut debian = LazyDebian::new(&target, debian::Arch::Amd64);
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
pub(super) fn strip_gogoproto(text: &str) -> String {
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
pub(super) fn strip_field_options(line: &str) -> String {
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
