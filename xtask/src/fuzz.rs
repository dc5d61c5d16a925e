//! `cargo xtask fuzz`: the libFuzzer targets in `fuzz/` (cargo-fuzz on the nightly toolchain),
//! one after another, each for a number of runs or seconds; prints runs, runs/s and crashes.
//!
//! The committed seed corpus (`fuzz/corpus/TARGET`) is read, never written: libFuzzer keeps
//! the inputs it finds in `target/fuzz-corpus/TARGET`, crash inputs go to
//! `target/fuzz-artifacts/TARGET/`, and each run's whole log to `target/fuzz-logs/TARGET.log`.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    setup,
    util::{self, Metadata, fmt_duration, nightly, repo_root, run_shown},
};

/// Every fuzz target (a `[[bin]]` of `fuzz/Cargo.toml`), in the order they run.
pub(crate) const TARGETS: [&str; 11] = [
    "cgroup_path",
    "proc_stat",
    "proc_cgroup",
    "ring_event",
    "oci_spec",
    "config",
    "http_request",
    "authority",
    "mountinfo",
    "cgroup_join",
    "nri_wire",
];

/// Targets run with a malloc limit (MiB): one allocation over it is a crash. The authority
/// rewriter must hold what a peer sends within a few MiB, whatever it decodes to.
const MALLOC_LIMIT_MB: [(&str, u32); 2] = [("authority", 64), ("nri_wire", 64)];

/// Seconds per target when neither `--runs` nor `--seconds` is given.
const DEFAULT_SECONDS: u64 = 60;

/// Largest RSS a target may reach before libFuzzer reports it as a crash (out of memory).
const RSS_LIMIT_MB: u32 = 2048;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Fuzz only this target [default: all of them, one after another].
    #[arg(long, value_name = "NAME", value_parser = TARGETS)]
    target: Option<String>,
    /// Runs (inputs tried) per target.
    #[arg(long, value_name = "N", conflicts_with = "seconds")]
    runs: Option<u64>,
    /// Seconds per target [default: 60].
    #[arg(long, value_name = "S")]
    seconds: Option<u64>,
}

/// How long each target runs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Budget {
    Runs(u64),
    Seconds(u64),
}

impl Budget {
    fn libfuzzer_arg(self) -> String {
        match self {
            Self::Runs(n) => format!("-runs={n}"),
            Self::Seconds(s) => format!("-max_total_time={s}"),
        }
    }
}

/// What one target's run gave.
struct Outcome {
    target: &'static str,
    runs: u64,
    elapsed: Duration,
    /// The input that crashed it, when it crashed.
    crash: Option<String>,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    setup::run(&setup::Options { for_tests: false })?;
    setup::cargo_fuzz()?;
    let budget = match (args.runs, args.seconds) {
        (Some(n), _) => Budget::Runs(n),
        (None, s) => Budget::Seconds(s.unwrap_or(DEFAULT_SECONDS)),
    };
    let targets: Vec<&'static str> = match &args.target {
        Some(name) => TARGETS.into_iter().filter(|t| t == name).collect(),
        None => TARGETS.to_vec(),
    };
    fuzz(&targets, budget)
}

/// Builds the targets, runs each of `targets` for `budget`, prints a table; fails if any
/// crashed (or could not run).
pub(crate) fn fuzz(targets: &[&'static str], budget: Budget) -> Result<()> {
    let dirs = Dirs::new()?;
    run_shown(&mut dirs.cargo_fuzz("build"))?;
    let mut outcomes = Vec::new();
    for &target in targets {
        outcomes.push(run_target(&dirs, target, budget)?);
    }
    println!(
        "\nfuzz: {budget:?} per target (cargo-fuzz, libFuzzer, AddressSanitizer, debug assertions)"
    );
    println!(
        "  {:<12} {:>12} {:>9} {:>10}  crashes",
        "target", "runs", "time", "runs/s"
    );
    for o in &outcomes {
        let rate = o.runs as f64 / o.elapsed.as_secs_f64().max(1e-3);
        println!(
            "  {:<12} {:>12} {:>9} {:>10.0}  {}",
            o.target,
            thousands(o.runs),
            fmt_duration(o.elapsed),
            rate,
            o.crash
                .as_ref()
                .map_or("0".to_owned(), |c| format!("1: {c}")),
        );
    }
    let crashed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.crash.is_some())
        .map(|o| o.target)
        .collect();
    if !crashed.is_empty() {
        bail!(
            "fuzz targets crashed: {} (inputs and logs under {})",
            crashed.join(", "),
            dirs.target.display()
        );
    }
    Ok(())
}

/// Where the fuzz build and its runs keep things.
struct Dirs {
    /// The workspace's target directory.
    target: PathBuf,
}

impl Dirs {
    fn new() -> Result<Self> {
        Ok(Self {
            target: Metadata::load()?.target_dir()?,
        })
    }

    /// `cargo +nightly fuzz SUBCOMMAND --target-dir target/fuzz`, in the repository root.
    /// The parsers need no eBPF object, so the agent's build script skips building it (a
    /// nested eBPF build would inherit the sanitizer flags).
    fn cargo_fuzz(&self, subcommand: &str) -> Command {
        let mut cmd = nightly("cargo");
        cmd.args(["fuzz", subcommand, "--target-dir"])
            .arg(self.target.join("fuzz"))
            .env("AYA_BUILD_SKIP", "1");
        cmd
    }

    fn under(&self, what: &str, target: &str) -> Result<PathBuf> {
        let dir = self.target.join(what).join(target);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    }
}

fn run_target(dirs: &Dirs, target: &'static str, budget: Budget) -> Result<Outcome> {
    let scratch = dirs.under("fuzz-corpus", target)?;
    let artifacts = dirs.under("fuzz-artifacts", target)?;
    let seeds = repo_root().join("fuzz/corpus").join(target);
    let log_dir = dirs.under("fuzz-logs", "")?;
    let log_path = log_dir.join(format!("{target}.log"));
    let mut cmd = dirs.cargo_fuzz("run");
    // The first corpus directory receives new inputs: the scratch one, not the seeds.
    cmd.arg(target)
        .arg(&scratch)
        .arg(&seeds)
        .arg("--")
        .arg(budget.libfuzzer_arg())
        .arg("-print_final_stats=1")
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .args(
            MALLOC_LIMIT_MB
                .iter()
                .filter(|(t, _)| *t == target)
                .map(|(_, mb)| format!("-malloc_limit_mb={mb}")),
        )
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!("$ {}  (log: {})", util::display(&cmd), log_path.display());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start cargo fuzz run {target}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let stderr = child.stderr.take().context("no stderr")?;
    // libFuzzer reports on stderr; stdout carries little. Both go to the log.
    let out_thread = std::thread::spawn(move || read_lines(stdout));
    // The time counts from cargo's `Running` line: a rebuild (sources changed
    // since the build above) is not fuzzing.
    let mut started = Instant::now();
    let mut lines = Vec::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if line.trim_start().starts_with("Running `") {
            started = Instant::now();
        }
        lines.push(line);
    }
    let mut lines_out = out_thread.join().unwrap_or_default();
    let status = child.wait().context("cannot wait for cargo fuzz")?;
    let elapsed = started.elapsed();
    lines_out.extend(lines);
    fs::write(&log_path, lines_out.join("\n"))
        .with_context(|| format!("cannot write {}", log_path.display()))?;
    let runs = executed_units(&lines_out);
    let crash = crash_input(&lines_out);
    match (status.success(), runs, crash) {
        (true, Some(runs), None) => Ok(Outcome {
            target,
            runs,
            elapsed,
            crash: None,
        }),
        (false, runs, Some(crash)) => {
            eprintln!("fuzz: {target} crashed; the end of its log:");
            for line in tail(&lines_out, 40) {
                eprintln!("  {line}");
            }
            Ok(Outcome {
                target,
                runs: runs.unwrap_or(0),
                elapsed,
                crash: Some(crash),
            })
        }
        _ => {
            for line in tail(&lines_out, 40) {
                eprintln!("  {line}");
            }
            bail!(
                "cargo fuzz run {target} {}; log: {}",
                if status.success() {
                    "printed no run count"
                } else {
                    "failed without a crash input"
                },
                log_path.display()
            )
        }
    }
}

fn read_lines(from: impl std::io::Read) -> Vec<String> {
    BufReader::new(from).lines().map_while(Result::ok).collect()
}

fn tail(lines: &[String], n: usize) -> &[String] {
    &lines[lines.len().saturating_sub(n)..]
}

/// `stat::number_of_executed_units: N` of libFuzzer's final stats.
fn executed_units(lines: &[String]) -> Option<u64> {
    lines.iter().rev().find_map(|l| {
        l.strip_prefix("stat::number_of_executed_units:")?
            .trim()
            .parse()
            .ok()
    })
}

/// The file libFuzzer wrote the crashing input to (`… Test unit written to PATH`).
fn crash_input(lines: &[String]) -> Option<String> {
    lines.iter().find_map(|l| {
        let (_, path) = l.split_once("Test unit written to ")?;
        Some(path.trim().to_owned())
    })
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The committed seeds of `target`, for tests.
#[cfg(test)]
fn seeds(target: &str) -> PathBuf {
    repo_root().join("fuzz/corpus").join(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_has_seeds_and_a_bin() {
        let manifest = fs::read_to_string(repo_root().join("fuzz/Cargo.toml")).unwrap();
        for target in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{target}\"")),
                "{target} is no [[bin]] of fuzz/Cargo.toml"
            );
            let n = fs::read_dir(seeds(target))
                .map(Iterator::count)
                .unwrap_or(0);
            assert!(n > 0, "no seeds for {target}");
        }
    }

    #[test]
    fn libfuzzer_output_is_read() {
        let lines: Vec<String> = [
            "#1048576\tpulse  cov: 812 ft: 2301 corp: 190/9Kb exec/s: 349525 rss: 61Mb",
            "==123== ERROR: libFuzzer: deadly signal",
            "artifact_prefix='target/fuzz-artifacts/x/'; Test unit written to target/fuzz-artifacts/x/crash-da39",
            "stat::number_of_executed_units: 10000000",
            "stat::average_exec_per_sec:     333333",
        ]
        .map(str::to_owned)
        .to_vec();
        assert_eq!(executed_units(&lines), Some(10_000_000));
        assert_eq!(
            crash_input(&lines).as_deref(),
            Some("target/fuzz-artifacts/x/crash-da39")
        );
        assert_eq!(thousands(10_000_000), "10,000,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(
            Budget::Seconds(10).libfuzzer_arg(),
            "-max_total_time=10".to_owned()
        );
    }
}
