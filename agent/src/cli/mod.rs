//! The `pidmap` command line.

pub mod client;

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
    /// Which container and pod are these processes in?
    ///
    /// Exit status: 0 when every pid is running, exited or pending; 3 when
    /// any pid is unknown; 2 for a usage error; 1 when the agent cannot be
    /// reached.
    Resolve {
        #[command(flatten)]
        conn: Conn,
        /// Process ids.
        #[arg(required = true, allow_negative_numbers = true)]
        pids: Vec<i64>,
    },
    /// List containers (optionally filtered).
    Ls {
        #[command(flatten)]
        conn: Conn,
        /// Only this containerd namespace (k8s.io, moby, default, …).
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        /// Only containers of this pod name.
        #[arg(long)]
        pod: Option<String>,
        /// Only containers with this label, KEY=VALUE (repeatable).
        #[arg(long, short = 'l')]
        label: Vec<String>,
    },
    /// List the live processes of one container.
    Ps {
        #[command(flatten)]
        conn: Conn,
        /// Container id.
        container: String,
        /// Its containerd namespace, when the id exists in several.
        #[arg(long, short = 'n')]
        namespace: Option<String>,
    },
    /// Show every container and process, then changes as they happen.
    Watch {
        #[command(flatten)]
        conn: Conn,
    },
    /// Which container and pod is this command itself in?
    Whoami {
        #[command(flatten)]
        conn: Conn,
    },
    /// The agent's readiness and counters (exit status 1 when not ready).
    Status {
        #[command(flatten)]
        conn: Conn,
    },
}

/// Where the agent is and how to print.
#[derive(Debug, Args)]
pub struct Conn {
    /// The agent's socket.
    #[arg(long, env = "PIDMAP_SOCKET", default_value = crate::api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = client::Output::Table)]
    pub output: client::Output,
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
    /// The API's Unix socket [default: /run/pidmap/pidmap.sock].
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Group (name or gid) owning the socket; it may query everything [default: none].
    #[arg(long)]
    pub socket_group: Option<String>,
    /// Let peers other than root and --socket-group call only WhoAmI and Status
    /// [default: off].
    #[arg(long)]
    pub restrict_peers: bool,
    /// Serve Prometheus metrics on ADDR (e.g. 127.0.0.1:9464) [default: off].
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
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
            containerd_max_backoff_ms,
            socket
        );
        if self.socket_group.is_some() {
            c.socket_group = self.socket_group.clone();
        }
        if self.restrict_peers {
            c.restrict_peers = true;
        }
        if let Some(addr) = self.metrics_addr {
            c.metrics_addr = Some(addr);
        }
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
        let Command::Agent(args) = cli.command else {
            panic!("not agent")
        };
        let c = args.to_config().unwrap();
        assert_eq!(c.exit_grace_seconds, 7);
        assert_eq!(c.ring_poll_ms, Config::default().ring_poll_ms);
    }

    #[test]
    fn invalid_values_are_usage_errors() {
        let cli = Cli::try_parse_from(["pidmap", "agent", "--ring-buffer-bytes", "1000"]).unwrap();
        let Command::Agent(args) = cli.command else {
            panic!("not agent")
        };
        assert!(args.to_config().is_err());
        assert!(Cli::try_parse_from(["pidmap", "agent", "--max-exited", "0"]).is_err());
        assert!(
            Cli::try_parse_from(["pidmap", "resolve"]).is_err(),
            "a pid is required"
        );
        assert!(Cli::try_parse_from(["pidmap", "resolve", "abc"]).is_err());
    }

    #[test]
    fn metrics_addr_flag_turns_the_endpoint_on() {
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from(args)?;
            let Command::Agent(args) = cli.command else {
                panic!("not agent")
            };
            Ok::<_, clap::Error>(args.to_config().unwrap())
        };
        assert_eq!(parse(&["pidmap", "agent"]).unwrap().metrics_addr, None);
        let c = parse(&["pidmap", "agent", "--metrics-addr", "127.0.0.1:9464"]).unwrap();
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(parse(&["pidmap", "agent", "--metrics-addr", "9464"]).is_err());
    }

    #[test]
    fn socket_defaults_and_output_formats() {
        let cli = Cli::try_parse_from(["pidmap", "resolve", "-o", "json", "1", "-5"]).unwrap();
        let Command::Resolve { conn, pids } = cli.command else {
            panic!("not resolve")
        };
        assert_eq!(pids, [1, -5]);
        assert_eq!(conn.output, client::Output::Json);
    }
}
