//! The containerd matrix: the privileged tests that drive a real containerd, run against
//! each containerd version.
//!
//! containerd 1.6 is the system's (bookworm's; `setup --for-tests` installs it), 1.7 comes
//! from trixie and 2.1 from sid. A version the system does not have is downloaded and
//! unpacked privately (`dpkg-deb -x`) into `target/matrix-cache/containerd/<version>/`,
//! never installed. Every version runs with the system's runc (bookworm's: the newer
//! suites' runc needs a newer glibc). The test fixture (`tests/src/containerd.rs`) takes
//! the binaries from [`BIN_DIR_ENV`] and writes the config format the binary wants.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use super::{
    Containerd,
    report::{Cell, Row, Verdict},
    say,
};
use crate::debian::{self, LazyDebian};
use crate::util::{Probe, cargo, display, fmt_duration, probe};

/// The fixture's variable for a directory holding `containerd`, `ctr` and
/// `containerd-shim-runc-v2` (`pidmap_tests::containerd::BIN_DIR_ENV`).
pub(super) const BIN_DIR_ENV: &str = "PIDMAP_TEST_CONTAINERD_BIN_DIR";

/// How long `tests/tests/ground_truth.rs` churns (its `PIDMAP_GROUND_TRUTH_SECS`, default
/// 120 s) in the matrix, unless set already: a shorter churn, run once per version.
const GROUND_TRUTH_SECS: &str = "30";

/// The test files (`tests/tests/<name>.rs`) that start the containerd fixture, by name:
/// found at run time, so a new one joins the matrix by itself.
pub(super) fn fixture_tests() -> Result<Vec<String>> {
    let dir = crate::util::repo_root().join("tests/tests");
    let mut names = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let (Some(stem), Some("rs")) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|e| e.to_str()),
        ) else {
            continue;
        };
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        if text.contains("Containerd::start") {
            names.push(stem.to_owned());
        }
    }
    names.sort();
    if names.is_empty() {
        bail!(
            "no test file in {} starts the containerd fixture",
            dir.display()
        );
    }
    Ok(names)
}

const BINARIES: [&str; 3] = ["containerd", "ctr", "containerd-shim-runc-v2"];

impl Containerd {
    /// The Debian suite this version comes from.
    fn suite(self) -> &'static str {
        match self {
            Self::V1_6 => "bookworm",
            Self::V1_7 => "trixie",
            Self::V2_1 => "sid",
        }
    }
}

/// The containerd binaries one row runs with.
pub(super) struct Runtime {
    /// e.g. `containerd 2.1.9+ds1-5 (sid, unpacked privately), runc 1.1.5`
    pub label: String,
    /// Where the binaries are; `None`: the system's, on `PATH`.
    pub bin_dir: Option<PathBuf>,
}

/// The version of `containerd` (the third word of `containerd --version`).
fn version_of(program: &Path) -> Option<String> {
    match probe(program, &["--version"]) {
        Probe::Works(line) => line.split_whitespace().nth(2).map(str::to_owned),
        _ => None,
    }
}

/// The first line of `runc --version`'s version, e.g. `1.1.5+ds1`.
fn runc_version() -> String {
    match probe("runc", &["--version"]) {
        Probe::Works(line) => line
            .strip_prefix("runc version ")
            .unwrap_or(&line)
            .to_owned(),
        _ => "missing".to_owned(),
    }
}

/// Finds the binaries for `version`: the system's when they are that version, else the
/// Debian package of its suite, unpacked into the cache (once).
pub(super) fn prepare(
    version: Containerd,
    cache: &Path,
    debian: &mut LazyDebian,
) -> Result<Runtime> {
    let runc = runc_version();
    if let Some(system) = version_of(Path::new("containerd"))
        && system.starts_with(&format!("{}.", version.series()))
    {
        say(format!(
            "containerd {}: the system's ({system})",
            version.series()
        ));
        return Ok(Runtime {
            label: format!("containerd {system} (system's), runc {runc}"),
            bin_dir: None,
        });
    }
    let suite = version.suite();
    let debian = debian.get()?;
    let package_version = debian.with_fresh_retry(|d| {
        let found = d.version_in("containerd", suite)?;
        if !found.starts_with(&format!("{}.", version.series())) {
            bail!(
                "Debian {suite} now has containerd {found}, not {}: the matrix's version list \
                 needs updating (xtask/src/matrix/containerd.rs)",
                version.series()
            );
        }
        Ok(found)
    })?;
    let dir = cache.join("containerd").join(&package_version);
    let bin_dir = dir.join("usr/bin");
    if BINARIES.iter().all(|b| bin_dir.join(b).is_file()) {
        say(format!(
            "containerd {package_version} ({suite}) is in the cache ({})",
            bin_dir.display()
        ));
    } else {
        say(format!(
            "downloading containerd {package_version} ({suite})"
        ));
        let deb = debian.with_fresh_retry(|d| d.download("containerd", &package_version))?;
        debian::extract(&deb, &dir)?;
        let _ = fs::remove_file(&deb);
        for binary in BINARIES {
            if !bin_dir.join(binary).is_file() {
                bail!("containerd {package_version} has no usr/bin/{binary}");
            }
        }
    }
    let reported = version_of(&bin_dir.join("containerd")).with_context(|| {
        format!(
            "{} does not run here (`--version` fails)",
            bin_dir.join("containerd").display()
        )
    })?;
    Ok(Runtime {
        label: format!("containerd {reported} ({suite}, unpacked privately), runc {runc}"),
        bin_dir: Some(bin_dir),
    })
}

/// Runs every test file of `tests` against `runtime`; a cell per file.
pub(super) fn run_tests(
    version: Containerd,
    runtime: &Runtime,
    tests: &[String],
    logs: &Path,
) -> Row {
    let start = Instant::now();
    let mut cells = Vec::new();
    say(format!(
        "running the containerd tests with {}",
        runtime.label
    ));
    for test in tests {
        if test == crate::privileged::NRI_FILE && version == Containerd::V1_6 {
            cells.push((
                test.clone(),
                Cell::new(Verdict::Skip, "containerd 1.6 has no NRI (1.7 and later)"),
            ));
            continue;
        }
        let log = logs.join(format!("containerd-{}-{test}.log", version.series()));
        let mut cmd = cargo();
        cmd.args([
            "test",
            "-p",
            "pidmap-tests",
            "--test",
            test,
            "--",
            "--test-threads=1",
        ]);
        if let Some(dir) = &runtime.bin_dir {
            cmd.env(BIN_DIR_ENV, dir);
        }
        if std::env::var_os("PIDMAP_GROUND_TRUTH_SECS").is_none() {
            cmd.env("PIDMAP_GROUND_TRUTH_SECS", GROUND_TRUTH_SECS);
        }
        println!("$ {}", display(&cmd));
        let test_start = Instant::now();
        let cell = run_logged(&mut cmd, &log);
        say(format!(
            "  {test:18} {:4}  {} ({}; log: {})",
            cell.verdict.word(),
            cell.message,
            fmt_duration(test_start.elapsed()),
            log.display()
        ));
        cells.push((test.clone(), cell));
    }
    Row {
        name: format!("containerd {}", version.series()),
        label: runtime.label.clone(),
        cells,
        notes: Vec::new(),
        duration: start.elapsed(),
    }
}

/// Runs `cmd` with stdout and stderr into `log` and sums its outcome up.
fn run_logged(cmd: &mut Command, log: &Path) -> Cell {
    let file = match fs::File::create(log) {
        Ok(file) => file,
        Err(err) => return Cell::fail(format!("cannot create {}: {err}", log.display())),
    };
    let status = file
        .try_clone()
        .map_err(anyhow::Error::from)
        .and_then(|copy| {
            cmd.stdin(Stdio::null())
                .stdout(copy)
                .stderr(file)
                .status()
                .with_context(|| format!("cannot start `{}`", display(cmd)))
        });
    let text = fs::read_to_string(log).unwrap_or_default();
    match status {
        Ok(status) => summarize(&text, status.success()),
        Err(err) => Cell::fail(format!("{err:#}")),
    }
}

/// A cell from `cargo test` output: the counts when it passed; the failed tests with the
/// first line of each panic message otherwise.
fn summarize(text: &str, success: bool) -> Cell {
    let result = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("test result: "))
        .map(|r| r.split(';').take(2).collect::<Vec<_>>().join(";"));
    if success {
        return match result {
            Some(r) if r.contains(" 0 passed") => Cell::fail(format!("no test ran ({r})")),
            Some(r) => Cell::new(Verdict::Pass, r.trim_start_matches("ok. ").to_owned()),
            None => Cell::fail("cargo test succeeded but printed no test result"),
        };
    }
    let failed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("test ")?.strip_suffix(" ... FAILED"))
        .collect();
    if failed.is_empty() {
        let last_error = text
            .lines()
            .rev()
            .find(|l| l.starts_with("error"))
            .unwrap_or("cargo test failed before any test ran");
        return Cell::fail(last_error.to_owned());
    }
    let reasons: Vec<String> = failed
        .iter()
        .map(|name| format!("{name}: {}", panic_message(text, name)))
        .collect();
    Cell::fail(format!(
        "{}: {}",
        result.unwrap_or_default().trim_start_matches("FAILED. "),
        reasons.join("; ")
    ))
}

/// The first line of `test`'s panic message in the `---- test stdout ----` block.
fn panic_message(text: &str, test: &str) -> String {
    let header = format!("---- {test} stdout ----");
    let mut lines = text.lines().skip_while(|l| *l != header).skip(1);
    while let Some(line) = lines.next() {
        if line.starts_with("---- ") {
            break;
        }
        if let Some(rest) = line.split_once("panicked at ").map(|(_, r)| r) {
            // Since Rust 1.73 the message is on the line after `panicked at FILE:LINE:COL:`.
            let message = lines.next().unwrap_or("").trim();
            return format!("{message} (at {})", rest.trim_end_matches(':'));
        }
    }
    "see the log".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passing_run_shows_its_counts() {
        let out = "running 3 tests\ntest a ... ok\n\ntest result: ok. 3 passed; 0 failed; 0 ignored; \
                   0 measured; 0 filtered out; finished in 4.20s\n";
        let cell = summarize(out, true);
        assert_eq!(cell.verdict, Verdict::Pass);
        assert_eq!(cell.message, "3 passed; 0 failed");
    }

    #[test]
    fn a_failing_run_names_the_tests_and_their_panics() {
        let out = "running 2 tests\ntest good ... ok\ntest bad ... FAILED\n\nfailures:\n\n\
                   ---- bad stdout ----\nsome log\n\nthread 'bad' panicked at tests/tests/x.rs:10:5:\n\
                   agent never connected to containerd\nnote: run with RUST_BACKTRACE=1\n\n\
                   failures:\n    bad\n\ntest result: FAILED. 1 passed; 1 failed; 0 ignored\n";
        let cell = summarize(out, false);
        assert_eq!(cell.verdict, Verdict::Fail);
        assert_eq!(
            cell.message,
            "1 passed; 1 failed: bad: agent never connected to containerd \
             (at tests/tests/x.rs:10:5)"
        );
    }

    #[test]
    fn a_build_failure_is_its_last_error() {
        let out =
            "   Compiling x\nerror[E0425]: cannot find value `y`\nerror: could not compile `x`\n";
        let cell = summarize(out, false);
        assert_eq!(cell.message, "error: could not compile `x`");
    }
}
