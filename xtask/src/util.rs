//! Running commands, and small facts about the process and the workspace.

use std::{
    env,
    ffi::OsStr,
    io,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

/// Environment variables that pin a toolchain. `cargo run` (and rustup's proxies) set some of
/// them for xtask; a `+nightly` child must not inherit them, or it would run stable tools.
const TOOLCHAIN_ENV: [&str; 5] = [
    "RUSTUP_TOOLCHAIN",
    "RUSTUP_TOOLCHAIN_SOURCE",
    "RUSTC",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTDOC",
];

/// The workspace root (the parent of the xtask crate).
pub(crate) fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The cargo that runs xtask (`$CARGO`), in the workspace root.
pub(crate) fn cargo() -> Command {
    let program = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(repo_root());
    cmd
}

/// `PROGRAM +nightly` through rustup's proxy, in the workspace root, with the variables that
/// would pin the stable toolchain removed.
pub(crate) fn nightly(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.arg("+nightly").current_dir(repo_root());
    for key in TOOLCHAIN_ENV {
        cmd.env_remove(key);
    }
    cmd
}

/// Whether the effective user is root.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A command line as a user would type it: `VAR=value program arg…`.
pub(crate) fn display(cmd: &Command) -> String {
    let mut words = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            words.push(format!(
                "{}={}",
                key.to_string_lossy(),
                quote(&value.to_string_lossy())
            ));
        }
    }
    let program = cmd.get_program();
    if env::var_os("CARGO").as_deref() == Some(program) {
        words.push("cargo".to_owned());
    } else {
        words.push(quote(&program.to_string_lossy()));
    }
    words.extend(cmd.get_args().map(|arg| quote(&arg.to_string_lossy())));
    words.join(" ")
}

fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=+.,/:@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended with {status}"),
    }
}

/// Runs `cmd` with inherited stdio; fails unless it exits successfully.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("failed to start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` {}", describe(status));
    }
    Ok(())
}

/// Prints `$ cmd`, then [`run`]s it.
pub(crate) fn run_shown(cmd: &mut Command) -> Result<()> {
    println!("$ {}", display(cmd));
    run(cmd)
}

/// Runs `cmd` and returns its trimmed stdout; on failure the error carries its stderr.
pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let shown = display(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("failed to start `{shown}`"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "`{shown}` {}: {}",
            describe(out.status),
            stderr.trim().lines().last().unwrap_or("(no output)")
        );
    }
    String::from_utf8(out.stdout)
        .map(|s| s.trim().to_owned())
        .with_context(|| format!("`{shown}` printed something that is not UTF-8"))
}

/// What running a tool's `--version` said about it.
#[derive(Debug)]
pub(crate) enum Probe {
    /// It ran and succeeded; the first line it printed.
    Works(String),
    /// There is no such program.
    NotFound,
    /// It exists but failed to start or failed; why.
    Fails(String),
}

/// Runs `program args…` quietly to learn whether the tool is there and works.
pub(crate) fn probe(program: impl AsRef<OsStr>, args: &[&str]) -> Probe {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output();
    match out {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Probe::NotFound,
        Err(err) => Probe::Fails(err.to_string()),
        Ok(out) if out.status.success() => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let line = first_line(&stdout).or_else(|| first_line(&stderr));
            Probe::Works(line.unwrap_or("(no version output)").to_owned())
        }
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            match first_line(&stderr) {
                Some(line) => Probe::Fails(format!("{}: {line}", describe(out.status))),
                None => Probe::Fails(describe(out.status)),
            }
        }
    }
}

fn first_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).find(|line| !line.is_empty())
}

/// Where `program` resolves on `PATH`, if anywhere.
pub(crate) fn which(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// The home directory, from `HOME`.
pub(crate) fn home() -> Result<PathBuf> {
    match env::var_os("HOME") {
        Some(home) if !home.is_empty() => Ok(PathBuf::from(home)),
        _ => bail!("HOME is not set"),
    }
}

/// The workspace as `cargo metadata --no-deps` describes it.
pub(crate) struct Metadata {
    json: serde_json::Value,
}

impl Metadata {
    pub(crate) fn load() -> Result<Self> {
        let text = output(cargo().args(["metadata", "--format-version", "1", "--no-deps"]))?;
        let json = serde_json::from_str(&text).context("cannot parse `cargo metadata` output")?;
        Ok(Self { json })
    }

    /// The target directory (honours `CARGO_TARGET_DIR` and cargo's configuration).
    pub(crate) fn target_dir(&self) -> Result<PathBuf> {
        self.json["target_directory"]
            .as_str()
            .map(PathBuf::from)
            .context("`cargo metadata` output has no target_directory")
    }

    /// Whether the workspace package `package` has a binary target named `bin`.
    pub(crate) fn has_bin(&self, package: &str, bin: &str) -> bool {
        let packages = self.json["packages"].as_array().into_iter().flatten();
        packages
            .filter(|p| p["name"] == package)
            .filter_map(|p| p["targets"].as_array())
            .flatten()
            .any(|t| {
                t["name"] == bin
                    && t["kind"]
                        .as_array()
                        .is_some_and(|k| k.contains(&"bin".into()))
            })
    }
}

/// `1m26s` from a minute on, `4.2s` below.
pub(crate) fn fmt_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{:.1}s", duration.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_stopwatch() {
        assert_eq!(fmt_duration(Duration::from_millis(4_240)), "4.2s");
        assert_eq!(fmt_duration(Duration::from_secs(86)), "1m26s");
        assert_eq!(fmt_duration(Duration::from_secs(3_605)), "60m05s");
    }

    #[test]
    fn display_quotes_only_what_needs_it() {
        let mut cmd = Command::new("cargo");
        cmd.args(["test", "--", "name with space", "it's"])
            .env("LLVM_PREFIX", "/root/.cache/pidmap/llvm");
        assert_eq!(
            display(&cmd),
            r"LLVM_PREFIX=/root/.cache/pidmap/llvm cargo test -- 'name with space' 'it'\''s'"
        );
    }

    #[test]
    fn probe_tells_missing_from_failing() {
        assert!(matches!(
            probe("pidmap-xtask-no-such-tool", &["--version"]),
            Probe::NotFound
        ));
        assert!(matches!(probe("false", &[]), Probe::Fails(_)));
        assert!(matches!(probe("true", &[]), Probe::Works(_)));
    }
}
