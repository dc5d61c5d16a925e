//! The privileged end-to-end tests (`tests/`, package `pidmap-tests`): what
//! they need built, and a run of them that goes on past a failing file and
//! ends with one summary per file.

use std::{
    ffi::OsString,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{cargo, display, run_shown};

/// Builds what the privileged tests run besides themselves: the debug
/// `pidmap` binary (CLI, image and process tests) and the pidmap-client
/// examples (the client tests run what docs/clients.md shows).
pub(crate) fn build_prerequisites() -> Result<()> {
    run_shown(cargo().args(["build", "-p", "pidmap"]))?;
    run_shown(cargo().args(["build", "-p", "pidmap-client", "--examples"]))
}

/// The test file that needs a containerd with NRI (1.7 or later), which the matrix marks
/// `skip` on containerd 1.6.
pub(crate) const NRI_FILE: &str = "nri";
/// The fixture's variable for the containerd its NRI tests run (`pidmap_tests::containerd::
/// NRI_BIN_DIR_ENV`).
pub(crate) const NRI_BIN_DIR_ENV: &str = "PIDMAP_TEST_NRI_CONTAINERD_BIN_DIR";

/// Every privileged test file, the NRI tests given containerd 2.1 (Debian sid's, unpacked
/// privately) whatever the system's containerd is. Fails if any test failed.
pub(crate) fn run_suite(title: &str, args: &[OsString]) -> Result<Summary> {
    let dir = crate::matrix::containerd_with_nri()
        .context("containerd 2.1 for the NRI tests (tests/tests/nri.rs)")?;
    run(
        title,
        &[],
        args,
        &[(NRI_BIN_DIR_ENV, dir.display().to_string())],
    )
}

/// How one test file (one test binary) went.
#[derive(Debug, Default, Clone)]
pub(crate) struct FileOutcome {
    pub file: String,
    pub passed: u32,
    pub failed: Vec<String>,
    pub ignored: u32,
    /// Its binary ended without a result line (crashed, killed).
    pub crashed: bool,
    /// In the list of failures cargo prints at the end of a binary.
    in_failures: bool,
}

impl FileOutcome {
    fn add_failed(&mut self, name: &str) {
        if !self.failed.iter().any(|f| f == name) {
            self.failed.push(name.to_owned());
        }
    }

    fn ok(&self) -> bool {
        self.failed.is_empty() && !self.crashed
    }
}

/// The outcome of a run.
#[derive(Debug, Default, Clone)]
pub(crate) struct Summary {
    pub files: Vec<FileOutcome>,
}

impl Summary {
    pub(crate) fn passed(&self) -> u32 {
        self.files.iter().map(|f| f.passed).sum()
    }

    pub(crate) fn failed(&self) -> usize {
        self.files.iter().map(|f| f.failed.len()).sum()
    }

    /// Prints one line per file, failures named.
    pub(crate) fn print(&self, title: &str) {
        let crashed = self.files.iter().filter(|f| f.crashed).count();
        println!(
            "\n{title}: {} files, {} tests passed, {} failed{}",
            self.files.len(),
            self.passed(),
            self.failed(),
            if crashed > 0 {
                format!(", {crashed} files crashed")
            } else {
                String::new()
            }
        );
        for f in &self.files {
            let verdict = if f.crashed {
                "CRASHED".to_owned()
            } else if f.failed.is_empty() {
                "ok".to_owned()
            } else {
                format!("FAILED: {}", f.failed.join(", "))
            };
            println!(
                "  {:<24} {:>3} passed {:>2} ignored  {verdict}",
                f.file, f.passed, f.ignored
            );
        }
    }
}

/// Runs the privileged tests — every file, or only `files` — with
/// `--no-fail-fast` and `--test-threads=1` (and `args` after it), echoing
/// their output; then prints the summary under `title`. Fails if any test
/// failed.
pub(crate) fn run(
    title: &str,
    files: &[&str],
    args: &[OsString],
    env: &[(&str, String)],
) -> Result<Summary> {
    let mut cmd = cargo();
    cmd.args(["test", "-p", "pidmap-tests", "--no-fail-fast"]);
    for file in files {
        cmd.args(["--test", file]);
    }
    cmd.args(["--", "--test-threads=1"]).args(args);
    for (key, value) in env {
        cmd.env(key, value);
    }
    let summary = run_summarized(&mut cmd)?;
    summary.print(title);
    let bad: Vec<&str> = summary
        .files
        .iter()
        .filter(|f| !f.ok())
        .map(|f| f.file.as_str())
        .collect();
    if !bad.is_empty() {
        bail!("{title}: failures in {}", bad.join(", "));
    }
    Ok(summary)
}

/// Runs a `cargo test` command with its stdout and stderr merged (so the
/// order of `Running …` lines and test results holds), echoes it, and
/// collects the outcome of each test binary.
fn run_summarized(cmd: &mut Command) -> Result<Summary> {
    println!("$ {}", display(cmd));
    let (reader, writer) = std::io::pipe().context("a pipe for the test output")?;
    let mut child = cmd
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .spawn()
        .with_context(|| format!("cannot start `{}`", display(cmd)))?;
    // The writers now live only in the child (the command held them).
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut summary = Summary::default();
    let mut current: Option<FileOutcome> = None;
    for line in BufReader::new(reader).lines() {
        let line = line.context("reading the test output")?;
        println!("{line}");
        parse_line(&line, &mut current, &mut summary);
    }
    if let Some(mut unfinished) = current.take() {
        unfinished.crashed = true;
        summary.files.push(unfinished);
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() && summary.files.iter().all(FileOutcome::ok) {
        bail!(
            "`cargo test` failed ({status}) before or between the test files: see its output above"
        );
    }
    Ok(summary)
}

/// Follows one line of `cargo test` output.
fn parse_line(line: &str, current: &mut Option<FileOutcome>, summary: &mut Summary) {
    let trimmed = line.trim();
    if let Some(rest) = trimmed.strip_prefix("Running ") {
        // `Running tests/api.rs (target/debug/deps/api-…)`; unit tests of
        // the package's library and binaries count as files too.
        let mut words = rest.split_whitespace();
        let first = words.next().unwrap_or(rest);
        // `Running unittests src/lib.rs (…)`: the source file names it.
        let file = if first == "unittests" {
            words.next().unwrap_or(first)
        } else {
            first
        }
        .trim_start_matches("tests/")
        .to_owned();
        if let Some(mut unfinished) = current.replace(FileOutcome {
            file,
            ..FileOutcome::default()
        }) {
            unfinished.crashed = true;
            summary.files.push(unfinished);
        }
    } else if let Some(name) = trimmed
        .strip_prefix("test ")
        .and_then(|t| t.strip_suffix(" ... FAILED"))
    {
        if let Some(file) = current.as_mut() {
            file.add_failed(name);
        }
    } else if trimmed == "failures:" {
        // The list of failed tests follows (with --nocapture the only
        // place their names are whole).
        if let Some(file) = current.as_mut() {
            file.in_failures = true;
        }
    } else if let Some(counts) = trimmed.strip_prefix("test result: ") {
        if let Some(mut file) = current.take() {
            let number = |word: &str| -> u32 {
                counts
                    .split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(word)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            file.passed = number(" passed");
            file.ignored = number(" ignored");
            let failed = number(" failed") as usize;
            while file.failed.len() < failed {
                file.failed.push("(unnamed)".to_owned());
            }
            summary.files.push(file);
        }
    } else if let Some(file) = current.as_mut()
        && file.in_failures
        && line.starts_with("    ")
        && !trimmed.is_empty()
        && !trimmed.contains(' ')
    {
        file.add_failed(trimmed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_test_output_is_summed_up_per_file() {
        let out = "\
     Running unittests src/lib.rs (target/debug/deps/pidmap_tests-0)
test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0s
     Running tests/api.rs (target/debug/deps/api-1)
running 2 tests
test a ... ok
test b ... FAILED
test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s
     Running tests/cli.rs (target/debug/deps/cli-2)
running 3 tests
test result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1s
     Running tests/hostile.rs (target/debug/deps/hostile-4)
running 1 test
test flood ... what the test printed
more of it
FAILED

failures:

failures:
    flood

test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s
     Running tests/faults.rs (target/debug/deps/faults-3)
running 1 test
error: test failed, to rerun pass `-p pidmap-tests --test faults`";
        let (mut current, mut summary) = (None, Summary::default());
        for line in out.lines() {
            parse_line(line, &mut current, &mut summary);
        }
        if let Some(mut f) = current.take() {
            f.crashed = true;
            summary.files.push(f);
        }
        let files: Vec<_> = summary
            .files
            .iter()
            .map(|f| {
                (
                    f.file.as_str(),
                    f.passed,
                    f.failed.clone(),
                    f.ignored,
                    f.crashed,
                )
            })
            .collect();
        assert_eq!(
            files,
            [
                ("src/lib.rs", 2, vec![], 0, false),
                ("api.rs", 1, vec!["b".to_owned()], 0, false),
                ("cli.rs", 2, vec![], 1, false),
                ("hostile.rs", 0, vec!["flood".to_owned()], 0, false),
                ("faults.rs", 0, vec![], 0, true),
            ]
        );
        assert_eq!((summary.passed(), summary.failed()), (5, 2));
    }
}
