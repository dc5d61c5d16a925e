//! The `pidmap` command line.

pub mod client;

use std::path::PathBuf;

use clap::{ArgMatches, Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

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
    Agent(Box<AgentArgs>),
    /// Which container and pod are these processes in?
    ///
    /// `-o otel` prints OpenTelemetry resource attributes (container.id,
    /// k8s.pod.name, process.pid, …). Exit status: 0 when every pid is running, exited or pending; 3 when
    /// any pid is unknown; 2 for a usage error; 1 when the agent cannot be
    /// reached.
    Resolve {
        #[command(flatten)]
        conn: Conn,
        /// Process ids.
        #[arg(required = true, allow_negative_numbers = true)]
        pids: Vec<i64>,
    },
    /// List containers (optionally filtered): those containerd reports, and
    /// those recognised from their processes' cgroup paths (CRI-O, podman,
    /// Docker without containerd, …).
    Ls {
        #[command(flatten)]
        conn: Conn,
        /// Also containers deleted within the grace window.
        #[arg(long, short = 'a')]
        all: bool,
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
    /// The agent's socket (gRPC and HTTP/JSON: `curl --unix-socket SOCKET
    /// http://localhost/v1/status`).
    #[arg(long, env = pidmap_client::SOCKET_ENV, default_value = crate::config::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = client::Output::Table)]
    pub output: client::Output,
}

/// Options of `pidmap agent`: a config file, and every [`Config`] option.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// TOML configuration file (keys are the long option names with '_');
    /// options given on the command line win over it.
    #[arg(long, short, env = "PIDMAP_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub options: Config,
}

impl AgentArgs {
    /// Defaults, then the file, then what the command line gave (`matches`
    /// are the `agent` subcommand's).
    pub fn to_config(&self, matches: &ArgMatches) -> Result<Config, ConfigError> {
        let base = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        self.options.over(base, matches)
    }
}

impl Cli {
    /// Parses the process's arguments, keeping clap's matches (they tell
    /// which options were given, so they can win over the config file).
    /// Exits with clap's message on a usage error, like `Parser::parse`.
    pub fn parse_with_matches() -> (Self, ArgMatches) {
        let matches = Self::command().get_matches();
        match Self::from_arg_matches(&matches) {
            Ok(cli) => (cli, matches),
            Err(error) => error.exit(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pidmap agent ARGS` as the binary would configure itself.
    fn agent_config(args: &[&str]) -> Result<Config, ConfigError> {
        let argv: Vec<&str> = ["pidmap", "agent"].iter().chain(args).copied().collect();
        let matches = Cli::command().try_get_matches_from(argv).unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        let Command::Agent(args) = cli.command else {
            panic!("not agent")
        };
        let sub = matches.subcommand_matches("agent").unwrap();
        args.to_config(sub)
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_override_defaults() {
        let c = agent_config(&["--exit-grace-seconds", "7"]).unwrap();
        assert_eq!(c.exit_grace_seconds, 7);
        assert_eq!(c.ring_poll_ms, Config::default().ring_poll_ms);
    }

    #[test]
    fn flags_override_the_file_and_the_file_the_defaults() {
        let dir = std::env::temp_dir().join(format!("pidmap-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pidmap.toml");
        std::fs::write(&file, "exit_grace_seconds = 9\nbatch_limit = 10\n").unwrap();
        let path = file.to_str().unwrap();
        let c = agent_config(&["--config", path, "--batch-limit", "20"]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(c.exit_grace_seconds, 9);
        assert_eq!(c.batch_limit, 20);
        assert_eq!(c.ring_poll_ms, Config::default().ring_poll_ms);
    }

    #[test]
    fn invalid_values_are_usage_errors() {
        assert!(agent_config(&["--ring-buffer-bytes", "1000"]).is_err());
        assert!(Cli::try_parse_from(["pidmap", "agent", "--max-exited", "0"]).is_err());
        assert!(
            Cli::try_parse_from(["pidmap", "resolve"]).is_err(),
            "a pid is required"
        );
        assert!(Cli::try_parse_from(["pidmap", "resolve", "abc"]).is_err());
    }

    #[test]
    fn metrics_addr_flag_turns_the_endpoint_on() {
        assert_eq!(agent_config(&[]).unwrap().metrics_addr, None);
        let c = agent_config(&["--metrics-addr", "127.0.0.1:9464"]).unwrap();
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(Cli::try_parse_from(["pidmap", "agent", "--metrics-addr", "9464"]).is_err());
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
