//! The `pidmap` command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError};

/// Maps every process on this node to its container and pod.
#[derive(Debug, Parser)]
#[command(name = "pidmap", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent (needs root: it loads eBPF programs).
    ///
    /// Every option can also be set in a TOML file given with --config;
    /// options on the command line win over the file. Logging follows
    /// RUST_LOG (default: info).
    Agent(AgentArgs),
}

/// Options of `pidmap agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// TOML configuration file (keys are the long option names with '_').
    #[arg(long, short, env = "PIDMAP_CONFIG")]
    pub config: Option<PathBuf>,
    /// Seconds an exited process stays resolvable as `exited` [default: 30].
    #[arg(long)]
    pub exit_grace_seconds: Option<u64>,
    /// Most exited processes kept at once [default: 65536].
    #[arg(long)]
    pub max_exited: Option<std::num::NonZeroUsize>,
    /// Kernel event ring buffer size in bytes, a power of two [default: 4194304].
    #[arg(long)]
    pub ring_buffer_bytes: Option<u32>,
    /// Wake the event reader once this many events wait; 0 wakes it for
    /// every event that finds it idle [default: 64].
    #[arg(long)]
    pub ring_wakeup_events: Option<u32>,
    /// Milliseconds between ring-buffer polls and drop checks [default: 10].
    #[arg(long)]
    pub ring_poll_ms: Option<u64>,
    /// procfs mount to seed the process table from [default: /proc].
    #[arg(long)]
    pub proc_root: Option<PathBuf>,
    /// Kernel BTF file for structure offsets [default: /sys/kernel/btf/vmlinux].
    #[arg(long)]
    pub btf_path: Option<PathBuf>,
    /// containerd's gRPC socket; the agent works without containerd and
    /// keeps retrying [default: /run/containerd/containerd.sock].
    #[arg(long)]
    pub containerd_socket: Option<PathBuf>,
    /// Seconds between full resyncs with containerd [default: 60].
    #[arg(long)]
    pub containerd_resync_seconds: Option<u64>,
    /// Longest wait between containerd reconnect attempts, ms [default: 5000].
    #[arg(long)]
    pub containerd_max_backoff_ms: Option<u64>,
}

impl AgentArgs {
    /// Defaults, then the file, then the command line.
    pub fn to_config(&self) -> Result<Config, ConfigError> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(v) = &self.$field {
                    c.$field = v.clone();
                }
            )*};
        }
        set!(
            exit_grace_seconds,
            max_exited,
            ring_buffer_bytes,
            ring_wakeup_events,
            ring_poll_ms,
            proc_root,
            btf_path,
            containerd_socket,
            containerd_resync_seconds,
            containerd_max_backoff_ms
        );
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_override_defaults() {
        let cli = Cli::try_parse_from(["pidmap", "agent", "--exit-grace-seconds", "7"]).unwrap();
        let Command::Agent(args) = cli.command;
        let c = args.to_config().unwrap();
        assert_eq!(c.exit_grace_seconds, 7);
        assert_eq!(c.ring_poll_ms, Config::default().ring_poll_ms);
    }

    #[test]
    fn invalid_values_are_usage_errors() {
        let cli = Cli::try_parse_from(["pidmap", "agent", "--ring-buffer-bytes", "1000"]).unwrap();
        let Command::Agent(args) = cli.command;
        assert!(args.to_config().is_err());
        assert!(Cli::try_parse_from(["pidmap", "agent", "--max-exited", "0"]).is_err());
    }
}
