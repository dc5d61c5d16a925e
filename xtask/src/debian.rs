//! Debian packages from other suites, without touching the system's apt state.
//!
//! apt-get and apt-cache run with a private sources list, list directory and cache under
//! `target/matrix-cache/apt/`; the mirror is the one the system's own
//! `/etc/apt/sources.list.d/debian.sources` names (read at run time, never written down
//! here). Exact package versions are looked up at run time too, so the matrix follows the
//! suites as Debian updates them.
//!
//! Shared by the matrix (kernels, containerd versions) and setup (the CRI API's `.proto`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{self, output};

/// The matrix's cache under the target directory (kernels, containerd builds, and the
/// private apt state).
pub(crate) const CACHE: &str = "matrix-cache";

/// The private apt state (sources list, package lists, `.deb` cache) of `arch`'s packages,
/// under [`CACHE`]: `apt/` for amd64, `apt-arm64/` for arm64 (apt keeps one set of lists per
/// architecture setting, so each has its own).
fn apt_dir(target: &Path, arch: Arch) -> PathBuf {
    match arch {
        Arch::Amd64 => target.join(CACHE).join("apt"),
        Arch::Arm64 => target.join(CACHE).join("apt-arm64"),
    }
}

/// A Debian architecture whose packages the private apt state holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub(crate) enum Arch {
    /// x86_64.
    Amd64,
    /// aarch64.
    Arm64,
}

impl Arch {
    /// Debian's (and OCI's) name: `amd64`, `arm64`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Amd64 => "amd64",
            Self::Arm64 => "arm64",
        }
    }

    /// The suites taken from: every matrix suite for amd64; for arm64 the ones its guests
    /// and image need (bookworm's glibc matches the cross toolchain's; trixie's 6.12).
    fn suites(self) -> &'static [&'static str] {
        match self {
            Self::Amd64 => &SUITES,
            Self::Arm64 => &["bookworm", "trixie"],
        }
    }
}

/// Where the system's Debian sources are (deb822 format).
const SYSTEM_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";
/// The suites the matrix takes packages from.
const SUITES: [&str; 4] = ["bullseye", "bookworm", "trixie", "sid"];
/// Package lists older than this are fetched again.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// The file an `update` touches when it succeeds, in the apt state directory.
const UPDATED_STAMP: &str = "lists-updated";

/// A private view of Debian's suites (see the [module docs](self)).
pub(crate) struct Debian {
    dir: PathBuf,
    arch: Arch,
    mirror: String,
    updated_now: bool,
}

impl Debian {
    /// Prepares `dir` (the sources list names the system's mirror) for `arch`'s packages and
    /// fetches the package lists unless they are less than a day old.
    pub(crate) fn open(dir: &Path, arch: Arch) -> Result<Self> {
        let sources = fs::read_to_string(SYSTEM_SOURCES)
            .with_context(|| format!("cannot read {SYSTEM_SOURCES} to find the Debian mirror"))?;
        let mirror = mirror_from_deb822(&sources).with_context(|| {
            format!(
                "{SYSTEM_SOURCES} names no Debian mirror (a `URIs:` line of a non-security suite)"
            )
        })?;
        for sub in ["lists/partial", "cache/archives/partial", "debs"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
        }
        let list: String = arch
            .suites()
            .iter()
            .map(|suite| format!("deb [arch={}] {mirror} {suite} main\n", arch.name()))
            .collect();
        fs::write(dir.join("sources.list"), list)
            .context("cannot write the private sources.list")?;
        let mut debian = Self {
            dir: dir.to_path_buf(),
            arch,
            mirror,
            updated_now: false,
        };
        if debian.lists_are_stale() {
            debian.update()?;
        } else {
            say(format!(
                "package lists of {} ({}) in {} are less than a day old",
                arch.suites().join(", "),
                arch.name(),
                debian.dir.join("lists").display()
            ));
        }
        Ok(debian)
    }

    /// `apt-get update` on the private lists.
    pub(crate) fn update(&mut self) -> Result<()> {
        say(format!(
            "fetching the package lists of {} ({}) from {}",
            self.arch.suites().join(", "),
            self.arch.name(),
            self.mirror
        ));
        let mut update = self.apt("apt-get");
        update.args(["-q", "update"]);
        util::run_shown(&mut update)?;
        self.updated_now = true;
        let stamp = self.dir.join(UPDATED_STAMP);
        fs::write(&stamp, b"").with_context(|| format!("cannot write {}", stamp.display()))
    }

    /// Whether the last `update` here is more than [`LISTS_MAX_AGE`] ago (or never was).
    /// Its own stamp, not the lists' times: apt dates a list by the mirror's `Last-Modified`,
    /// which for a quiet suite (bookworm's arm64) is weeks back however fresh the fetch.
    fn lists_are_stale(&self) -> bool {
        let updated = fs::metadata(self.dir.join(UPDATED_STAMP)).and_then(|m| m.modified());
        match updated {
            Ok(time) => SystemTime::now()
                .duration_since(time)
                .is_ok_and(|age| age > LISTS_MAX_AGE),
            Err(_) => true,
        }
    }

    /// apt-get or apt-cache with the private sources, lists and cache.
    fn apt(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let opt = |key: &str, value: &Path| format!("{key}={}", value.display());
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .arg("-o")
            .arg(opt("Dir::Etc::SourceList", &self.dir.join("sources.list")))
            .args(["-o", "Dir::Etc::SourceParts=/dev/null"])
            .arg("-o")
            .arg(opt("Dir::State::Lists", &self.dir.join("lists")))
            .arg("-o")
            .arg(opt("Dir::Cache", &self.dir.join("cache")))
            // The cache is root's own directory: no sandbox user needs to reach it.
            .args(["-o", "APT::Sandbox::User=root"])
            // Only this architecture's packages, whatever the host's.
            .arg("-o")
            .arg(format!("APT::Architecture={}", self.arch.name()))
            .arg("-o")
            .arg(format!("APT::Architectures={}", self.arch.name()));
        // AppStream metadata (DEP-11) is for software centres; skip it.
        for target in [
            "DEP-11",
            "DEP-11-icons-small",
            "DEP-11-icons",
            "DEP-11-icons-hidpi",
        ] {
            cmd.args([
                "-o",
                &format!("Acquire::IndexTargets::deb::{target}::DefaultEnabled=false"),
            ]);
        }
        cmd
    }

    /// The version of `package` in `suite` (from `apt-cache madison`).
    pub(crate) fn version_in(&self, package: &str, suite: &str) -> Result<String> {
        let text = output(self.apt("apt-cache").args(["madison", package]))?;
        version_in_madison(&text, suite)
            .with_context(|| format!("Debian {suite} has no package {package} (apt-cache madison)"))
    }

    /// Field `field` (e.g. `Depends`) of `package` at `version` (from `apt-cache show`).
    pub(crate) fn field(&self, package: &str, version: &str, field: &str) -> Result<String> {
        let text = output(
            self.apt("apt-cache")
                .args(["show", "--no-all-versions"])
                .arg(format!("{package}={version}")),
        )?;
        let prefix = format!("{field}:");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map(|value| value.trim().to_owned())
            .with_context(|| format!("{package} {version} has no {field} field"))
    }

    /// Downloads `package` at `version` into the cache and returns the `.deb`'s path.
    pub(crate) fn download(&self, package: &str, version: &str) -> Result<PathBuf> {
        let debs = self.dir.join("debs");
        let mut download = self.apt("apt-get");
        download
            .current_dir(&debs)
            .args(["-q", "download"])
            .arg(format!("{package}={version}"));
        util::run_shown(&mut download)?;
        let prefix = format!("{package}_{}_", version.replace(':', "%3a"));
        fs::read_dir(&debs)
            .with_context(|| format!("cannot list {}", debs.display()))?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            })
            .with_context(|| {
                format!(
                    "apt-get download left no {prefix}*.deb in {}",
                    debs.display()
                )
            })
    }

    /// Runs `fetch` (look a version up, download it); if it fails and the lists were not
    /// fetched in this run, they may be stale (the mirror dropped that version): fetches
    /// them and runs `fetch` once more.
    pub(crate) fn with_fresh_retry<T>(
        &mut self,
        mut fetch: impl FnMut(&Self) -> Result<T>,
    ) -> Result<T> {
        match fetch(self) {
            Ok(value) => Ok(value),
            Err(err) if !self.updated_now => {
                say(format!(
                    "{err:#}\ndebian: the package lists may be stale: fetching them again and retrying"
                ));
                self.update()?;
                fetch(self)
            }
            Err(err) => Err(err),
        }
    }
}

/// A [`Debian`] opened (its lists fetched when stale) on first use, so a matrix that needs
/// no package never touches the mirror.
pub(crate) struct LazyDebian {
    dir: PathBuf,
    arch: Arch,
    opened: Option<Debian>,
}

impl LazyDebian {
    /// `arch`'s packages, with the private apt state in [`apt_dir`] of `target`.
    pub(crate) fn new(target: &Path, arch: Arch) -> Self {
        Self {
            dir: apt_dir(target, arch),
            arch,
            opened: None,
        }
    }

    pub(crate) fn get(&mut self) -> Result<&mut Debian> {
        let debian = match self.opened.take() {
            Some(debian) => debian,
            None => Debian::open(&self.dir, self.arch)?,
        };
        Ok(self.opened.insert(debian))
    }
}

/// Extracts a `.deb`'s files into `dir` (`dpkg-deb -x`), through a sibling temp directory
/// renamed into place, so an interrupted extraction never looks complete.
pub(crate) fn extract(deb: &Path, dir: &Path) -> Result<()> {
    let partial = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    util::run_shown(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&partial))?;
    let _ = fs::remove_dir_all(dir);
    fs::rename(&partial, dir)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), dir.display()))
}

/// Extracts the members of a `.deb` whose paths match `pattern` (a tar wildcard such as
/// `./boot/vmlinuz-*`) into `dir`.
pub(crate) fn extract_matching(deb: &Path, pattern: &str, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    println!(
        "$ dpkg-deb --fsys-tarfile {} | tar -x -C {} --wildcards '{pattern}'",
        deb.display(),
        dir.display()
    );
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start dpkg-deb")?;
    let tar_input = dpkg.stdout.take().context("dpkg-deb has no stdout")?;
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(dir)
        .args(["--wildcards", pattern])
        .stdin(tar_input)
        .status();
    let dpkg = dpkg.wait().context("cannot wait for dpkg-deb")?;
    let tar = tar.context("cannot start tar")?;
    if !dpkg.success() || !tar.success() {
        bail!(
            "extracting {pattern} from {} failed (dpkg-deb {dpkg}, tar {tar})",
            deb.display()
        );
    }
    Ok(())
}

/// Says what the private Debian lists and downloads are doing; `setup` (the CRI API) and the
/// matrix (kernels, containerd) both use them, so the lines are `debian:`, not either's.
fn say(message: impl std::fmt::Display) {
    println!("debian: {message}");
}

/// The first `URIs:` of a deb822 sources file's stanzas that carry a plain suite (not
/// `-security`, which lives elsewhere on most mirrors).
fn mirror_from_deb822(text: &str) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let suites = field("Suites")?;
        if suites.split_whitespace().all(|s| s.ends_with("-security")) {
            return None;
        }
        field("URIs")?.split_whitespace().next().map(str::to_owned)
    })
}

/// The version on the `madison` line whose suite is `suite` (`pkg | ver | URI suite/main …`).
fn version_in_madison(text: &str, suite: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let mut parts = line.split('|').map(str::trim);
        let (_package, version, source) = (parts.next()?, parts.next()?, parts.next()?);
        let dist = source.split_whitespace().nth(1)?;
        (dist.split('/').next() == Some(suite)).then(|| version.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mirror_is_the_first_non_security_uri() {
        let sources = "Types: deb\n# a comment\nURIs: http://mirror.invalid/debian\n\
                       Suites: bookworm bookworm-updates\nComponents: main\n\n\
                       Types: deb\nURIs: http://mirror.invalid/debian-security\n\
                       Suites: bookworm-security\nComponents: main\n";
        assert_eq!(
            mirror_from_deb822(sources).as_deref(),
            Some("http://mirror.invalid/debian")
        );
        let security_first = "Types: deb\nURIs: http://s.invalid/ds\nSuites: bookworm-security\n\n\
                              Types: deb\nURIs: http://m.invalid/d\nSuites: bookworm\n";
        assert_eq!(
            mirror_from_deb822(security_first).as_deref(),
            Some("http://m.invalid/d")
        );
        assert_eq!(mirror_from_deb822("Types: deb\n"), None);
    }

    #[test]
    fn madison_lines_are_picked_by_suite() {
        let text = "containerd | 2.1.9+ds1-5 | http://m.invalid/debian sid/main amd64 Packages\n\
                    containerd | 1.7.24~ds1-6+deb13u1 | http://m.invalid/debian trixie/main amd64 Packages\n\
                    containerd | 1.6.20~ds1-1+deb12u3 | http://m.invalid/debian bookworm/main amd64 Packages";
        assert_eq!(
            version_in_madison(text, "trixie").as_deref(),
            Some("1.7.24~ds1-6+deb13u1")
        );
        assert_eq!(
            version_in_madison(text, "sid").as_deref(),
            Some("2.1.9+ds1-5")
        );
        assert_eq!(version_in_madison(text, "bullseye"), None);
    }
}
