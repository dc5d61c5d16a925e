//! Agent configuration: every option is declared once, here — its name,
//! type, default and help — and serves three sources: the built-in
//! defaults, a TOML file (keys are the option names with `_`) and the
//! command line (`--option-name`), where the command line wins over the
//! file and the file over the defaults.

use std::{
    num::NonZeroUsize,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{ArgMatches, Args, Parser, parser::ValueSource};
use serde::{Deserialize, Serialize};

/// Default path of the API's Unix socket, and the longest a Unix socket
/// path may be (defined once, in the client crate, whose socket discovery
/// every tool shares).
pub use pidmap_client::{DEFAULT_SOCKET, MAX_SOCKET_PATH};
/// Default containerd socket.
pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// Default NRI socket (containerd's and CRI-O's).
pub const DEFAULT_NRI_SOCKET: &str = "/var/run/nri/nri.sock";
/// Default Docker Engine API socket.
pub const DEFAULT_DOCKER_SOCKET: &str = "/run/docker.sock";
/// Where the running kernel exposes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The largest ring buffer the agent accepts: 256 MiB of locked kernel
/// memory already holds about 2.8 million events.
pub const MAX_RING_BUFFER_BYTES: u32 = 256 * 1024 * 1024;

/// The most exited processes the agent keeps: the table reserves room for
/// all of them at start (17 bytes a slot, rounded up by the hash table: at
/// most 34 MiB here); a far larger value asked for more memory than exists,
/// or overflowed.
pub const MAX_MAX_EXITED: usize = 1 << 20;

/// The largest `Watch` buffer: what a client that stops reading may make the
/// agent hold, per stream (a value near `usize::MAX` would overflow tokio's
/// channel bound and fail every `Watch`).
pub const MAX_WATCH_BUFFER: usize = 1 << 20;

/// The largest API request accepted: what one peer may make the agent
/// buffer per stream (a value near `usize::MAX` would let any peer ask for
/// all of the node's memory).
pub const MAX_MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// The most pids in one batch: about 20 MiB of answer at the ceiling.
pub const MAX_BATCH_LIMIT: usize = 65_536;

/// The least budget of unread response bytes, per peer or in total.
pub const MIN_UNREAD_BYTES: usize = 64 * 1024;
/// The largest budget of unread response bytes one peer may have.
pub const MAX_UNREAD_BYTES_PER_PEER: usize = 1 << 30;
/// The largest budget of unread response bytes of all peers together.
pub const MAX_UNREAD_BYTES: usize = 4 << 30;

/// Every option of `pidmap agent`. Each field is a command-line option and
/// a TOML key; its doc comment is its `--help`, its `default_value` the
/// built-in default (see [`Config::default`]).
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Seconds an exited process (and a deleted container) stays
    /// resolvable, with state `exited`.
    #[arg(long, default_value = "30", value_name = "SECONDS")]
    pub exit_grace_seconds: u64,
    /// Most exited processes kept at once; the oldest go first. 1 to
    /// 1048576.
    #[arg(long, default_value = "65536", value_name = "N")]
    pub max_exited: NonZeroUsize,
    /// Size of the kernel event ring buffer in bytes: a power of two from
    /// the page size (4096; 16384 or 65536 on some arm64 kernels) to
    /// 268435456 (256 MiB).
    #[arg(long, default_value = "4194304", value_name = "BYTES")]
    pub ring_buffer_bytes: u32,
    /// When the kernel wakes the event reader: 0 wakes it for the first
    /// event waiting (it then collects events for --ring-batch-us before it
    /// reads them); N wakes it only once N events wait, and the
    /// --ring-poll-ms tick finds fewer.
    #[arg(long, default_value = "0", value_name = "N")]
    pub ring_wakeup_events: u32,
    /// Microseconds the event reader collects events after a wake-up before
    /// it reads them (fewer wake-ups under load; bounds how far the table
    /// lags the kernel). 0 reads at once.
    #[arg(long, default_value = "1000", value_name = "MICROSECONDS")]
    pub ring_batch_us: u64,
    /// Milliseconds between checks of the kernel's drop counter (and polls
    /// of the ring buffer for events that woke nobody). 1 to 1000.
    #[arg(long, default_value = "10", value_name = "MS")]
    pub ring_poll_ms: u64,
    /// procfs to seed the process table from (the host's: run the agent in
    /// the host PID namespace).
    #[arg(long, default_value = "/proc", value_name = "DIR")]
    pub proc_root: PathBuf,
    /// Kernel BTF for structure offsets (needs CONFIG_DEBUG_INFO_BTF=y).
    #[arg(long, default_value = VMLINUX_BTF, value_name = "FILE")]
    pub btf_path: PathBuf,
    /// containerd's gRPC socket. The agent works without containerd (host
    /// processes and cgroup-path answers) and keeps retrying quietly.
    #[arg(long, default_value = DEFAULT_CONTAINERD_SOCKET, value_name = "PATH")]
    pub containerd_socket: PathBuf,
    /// Seconds between full re-lists of containerd, the safety net for
    /// missed events. At least 1.
    #[arg(long, default_value = "60", value_name = "SECONDS")]
    pub containerd_resync_seconds: u64,
    /// Longest wait between containerd reconnect attempts, in
    /// milliseconds. At least 100.
    #[arg(long, default_value = "5000", value_name = "MS")]
    pub containerd_max_backoff_ms: u64,
    /// The Docker Engine API's socket. Docker's containers run in containerd
    /// namespace `moby` without their image name and labels; the agent reads
    /// those from Docker when this socket answers (off the request path), and
    /// lists Docker's containers without them when it does not.
    #[arg(long, default_value = DEFAULT_DOCKER_SOCKET, value_name = "PATH")]
    pub docker_socket: PathBuf,
    /// The runtime's NRI socket (containerd 2.x has NRI on by default, 1.7
    /// with `[plugins."io.containerd.nri.v1.nri"] disable = false`, CRI-O
    /// with `enable_nri`). The agent registers there as plugin `99-pidmap`
    /// and reads every pod and container — with its Kubernetes identity,
    /// before runc starts it — without ever adjusting or delaying one.
    /// Where the socket does not exist the agent keeps retrying quietly.
    #[arg(long, default_value = DEFAULT_NRI_SOCKET, value_name = "PATH", conflicts_with = "no_nri")]
    pub nri_socket: PathBuf,
    /// Do not register with the runtime's NRI socket.
    #[arg(long)]
    pub no_nri: bool,
    /// At start, how long readiness waits for containerd's first list to be
    /// reconciled and NRI's first `Synchronize` to be applied (for each
    /// that answers at all); after that the agent goes ready anyway, with a
    /// warning, and container processes answer `pending` until containerd
    /// is synced.
    #[arg(long, default_value = "5", value_name = "SECONDS")]
    pub containerd_sync_timeout_seconds: u64,
    /// The API's Unix socket, speaking gRPC and HTTP/1.1 + JSON (`curl
    /// --unix-socket PATH http://localhost/v1/status`); its directory is
    /// created if missing.
    #[arg(long, default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,
    /// The socket's mode, in octal.
    #[arg(long, default_value = "0660", value_name = "MODE")]
    pub socket_mode: String,
    /// Group (name or gid) that owns the socket and may query everything
    /// [default: none, the socket stays in root's group].
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Peers other than root and members of --socket-group (primary or
    /// supplementary) may call only WhoAmI and Status (over HTTP:
    /// /v1/whoami and /v1/status).
    #[arg(long)]
    pub restrict_peers: bool,
    /// Most pids in one ResolveBatch request (at most 65536).
    #[arg(long, default_value = "4096", value_name = "N")]
    pub batch_limit: usize,
    /// Most API connections at once; the last 1/16 of them are kept for
    /// root. A connection over a limit gets RESOURCE_EXHAUSTED (HTTP 429)
    /// and is closed.
    #[arg(long, default_value = "256", value_name = "N")]
    pub max_connections: usize,
    /// Most API connections one peer may hold: one user's processes
    /// together, or one root process.
    #[arg(long, default_value = "64", value_name = "N")]
    pub max_connections_per_peer: usize,
    /// Most concurrent requests (HTTP/2 streams) per connection.
    #[arg(long, default_value = "64", value_name = "N")]
    pub max_streams_per_connection: u32,
    /// Largest API request, in bytes: a gRPC message, or an HTTP request's
    /// path and query (a longer one is answered 413); from 1024 to 67108864
    /// (64 MiB).
    #[arg(long, default_value = "262144", value_name = "BYTES")]
    pub max_request_bytes: usize,
    /// Seconds a connection may stay silent before it is closed.
    #[arg(long, default_value = "300", value_name = "SECONDS")]
    pub idle_timeout_seconds: u64,
    /// Changes a Watch client may fall behind — changes made that its
    /// stream has not taken yet — before it is cut off with
    /// RESOURCE_EXHAUSTED. 1 to 1048576 (the change feed keeps this many
    /// for all watchers together, about 80 bytes each, allocated at start).
    #[arg(long, default_value = "8192", value_name = "N")]
    pub watch_buffer: usize,
    /// Bytes of responses held for one peer (a user's processes, or one
    /// root process) that its clients have not read yet; a stream that
    /// would take more is cut off, and new requests refused, with
    /// RESOURCE_EXHAUSTED (HTTP 429). 65536 to 1073741824 (1 GiB).
    #[arg(long, default_value = "16777216", value_name = "BYTES")]
    pub max_unread_bytes_per_peer: usize,
    /// Bytes of unread responses held for all peers together (non-root
    /// peers may fill all but the last 1/16). 65536 to 4294967296 (4 GiB).
    #[arg(long, default_value = "67108864", value_name = "BYTES")]
    pub max_unread_bytes: usize,
    /// Serve Prometheus metrics at http://ADDR/metrics, ADDR an IP:port such
    /// as 127.0.0.1:9464 [default: off].
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Directory (on a BPF filesystem) to pin the containers map in, as
    /// DIR/containers: cgroup id → container, pod uid and state, for any
    /// eBPF program on the node (layout: include/pidmap.h). An existing
    /// pin is reused, so its entries survive restarts [default:
    /// /sys/fs/bpf/pidmap when /sys/fs/bpf is a BPF filesystem, else not
    /// pinned].
    #[arg(long, value_name = "DIR", conflicts_with = "no_pin")]
    pub pin_dir: Option<PathBuf>,
    /// Do not pin the containers map.
    #[arg(long)]
    pub no_pin: bool,
}

/// Parses nothing but the defaults of [`Config`].
#[derive(Parser)]
struct Defaults {
    #[command(flatten)]
    config: Config,
}

impl Config {
    /// Where to pin the containers map: `--pin-dir`, else the default
    /// directory where a BPF filesystem is mounted for it; `None` with
    /// `--no-pin`.
    pub fn pin_dir(&self) -> Option<PathBuf> {
        if self.no_pin {
            return None;
        }
        self.pin_dir.clone().or_else(crate::pinned::default_dir)
    }
}

impl Default for Config {
    /// The `default_value`s above. They are constants that always parse
    /// (a unit test checks it), so this cannot fail at run time.
    fn default() -> Self {
        Defaults::parse_from(["pidmap"]).config
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// Command-line values could not be laid over the file's.
    #[error("cannot combine the command line with the config file")]
    Merge(#[source] serde_json::Error),
    /// A value is out of range.
    #[error("invalid setting {key}: {reason}")]
    Invalid {
        key: &'static str,
        reason: &'static str,
    },
}

impl Config {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses the text of a TOML config file over the defaults and
    /// validates it; `path` names the file in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// This configuration (parsed from a command line whose matches are
    /// `matches`) laid over `base`: only the options the command line (or
    /// the environment) actually gave replace `base`'s values.
    pub fn over(&self, base: Self, matches: &ArgMatches) -> Result<Self, ConfigError> {
        let given = serde_json::to_value(self).map_err(ConfigError::Merge)?;
        let mut merged = serde_json::to_value(base).map_err(ConfigError::Merge)?;
        if let (Some(given), Some(merged)) = (given.as_object(), merged.as_object_mut()) {
            for key in given_options(matches) {
                if let Some(value) = given.get(key) {
                    merged.insert(key.to_owned(), value.clone());
                }
            }
        }
        let config: Self = serde_json::from_value(merged).map_err(ConfigError::Merge)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges the types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason| Err(ConfigError::Invalid { key, reason });
        // The kernel wants a power of two and a whole number of pages: arm64 kernels may
        // use 16 or 64 KiB pages, where a 4 KiB ring would fail only when the map is made.
        let page = u32::try_from(rustix::param::page_size()).unwrap_or(u32::MAX);
        if !self.ring_buffer_bytes.is_power_of_two()
            || self.ring_buffer_bytes < page.max(4096)
            || self.ring_buffer_bytes > MAX_RING_BUFFER_BYTES
        {
            return invalid(
                "ring_buffer_bytes",
                "must be a power of two from the page size (4096, 16384 or 65536) to 268435456 (256 MiB)",
            );
        }
        if self.ring_batch_us > 100_000 {
            return invalid("ring_batch_us", "must be at most 100000 (100 ms)");
        }
        if self.containerd_resync_seconds == 0 {
            return invalid("containerd_resync_seconds", "must be at least 1");
        }
        if self.containerd_max_backoff_ms < 100 {
            return invalid("containerd_max_backoff_ms", "must be at least 100");
        }
        if self.socket_mode_bits().is_none() {
            return invalid("socket_mode", "must be an octal mode such as 0660");
        }
        for (name, value) in [
            ("batch_limit", self.batch_limit),
            ("max_connections", self.max_connections),
            ("max_connections_per_peer", self.max_connections_per_peer),
            ("watch_buffer", self.watch_buffer),
        ] {
            if value == 0 {
                return invalid(name, "must be at least 1");
            }
        }
        if self.max_exited.get() > MAX_MAX_EXITED {
            return invalid("max_exited", "must be at most 1048576");
        }
        if self.watch_buffer > MAX_WATCH_BUFFER {
            return invalid("watch_buffer", "must be at most 1048576");
        }
        if !(MIN_UNREAD_BYTES..=MAX_UNREAD_BYTES_PER_PEER).contains(&self.max_unread_bytes_per_peer)
        {
            return invalid(
                "max_unread_bytes_per_peer",
                "must be from 65536 to 1073741824 (1 GiB)",
            );
        }
        if !(MIN_UNREAD_BYTES..=MAX_UNREAD_BYTES).contains(&self.max_unread_bytes) {
            return invalid(
                "max_unread_bytes",
                "must be from 65536 to 4294967296 (4 GiB)",
            );
        }
        if self.batch_limit > MAX_BATCH_LIMIT {
            return invalid("batch_limit", "must be at most 65536");
        }
        if !(1024..=MAX_MAX_REQUEST_BYTES).contains(&self.max_request_bytes) {
            return invalid(
                "max_request_bytes",
                "must be from 1024 to 67108864 (64 MiB)",
            );
        }
        if self.ring_poll_ms == 0 || self.ring_poll_ms > 1000 {
            return invalid("ring_poll_ms", "must be between 1 and 1000");
        }
        if self.socket.as_os_str().len() > MAX_SOCKET_PATH {
            return invalid(
                "socket",
                "a Unix socket path must be at most 107 bytes (the kernel's sun_path limit)",
            );
        }
        Ok(())
    }

    pub fn exit_grace(&self) -> Duration {
        Duration::from_secs(self.exit_grace_seconds)
    }

    /// `socket_mode` as permission bits.
    pub fn socket_mode_bits(&self) -> Option<u32> {
        u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
    }

    pub fn containerd_resync(&self) -> Duration {
        Duration::from_secs(self.containerd_resync_seconds)
    }

    pub fn containerd_max_backoff(&self) -> Duration {
        Duration::from_millis(self.containerd_max_backoff_ms)
    }

    pub fn containerd_sync_timeout(&self) -> Duration {
        Duration::from_secs(self.containerd_sync_timeout_seconds)
    }

    pub fn ring_poll_interval(&self) -> Duration {
        Duration::from_millis(self.ring_poll_ms)
    }

    pub fn ring_batch(&self) -> Duration {
        Duration::from_micros(self.ring_batch_us)
    }
}

/// The options (by name, e.g. `socket`) that the command line or the
/// environment gave in `matches`, rather than their defaults.
pub fn given_options(matches: &ArgMatches) -> Vec<&str> {
    matches
        .ids()
        .map(clap::Id::as_str)
        .filter(|id| {
            matches!(
                matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        })
        .collect()
}

/// A group's id from a numeric gid or a group name (looked up through the
/// system's name service, as `getent group` does).
pub fn group_id(group: &str) -> Option<u32> {
    if let Ok(gid) = group.parse() {
        return Some(gid);
    }
    nix::unistd::Group::from_name(group)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory as _, FromArgMatches as _};

    #[derive(Parser, Debug)]
    struct Cmd {
        #[command(flatten)]
        config: Config,
    }

    /// Parses `args` the way `pidmap agent` does and lays it over `base`.
    fn over(base: Config, args: &[&str]) -> Result<Config, ConfigError> {
        let argv: Vec<&str> = std::iter::once("pidmap")
            .chain(args.iter().copied())
            .collect();
        let matches = Cmd::command().try_get_matches_from(argv).unwrap();
        let cmd = Cmd::from_arg_matches(&matches).unwrap();
        cmd.config.over(base, &matches)
    }

    #[test]
    fn defaults_parse_and_are_valid() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.exit_grace(), Duration::from_secs(30));
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.socket_group, None);
        assert!(!c.restrict_peers);
        assert_eq!(c.metrics_addr, None);
        Cmd::command().debug_assert();
    }

    #[test]
    fn groups_by_number_or_name() {
        assert_eq!(group_id("1234"), Some(1234));
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(group_id("no-such-group-pidmap"), None);
    }

    #[test]
    fn socket_mode_is_octal() {
        let c = Config {
            socket_mode: "0640".into(),
            ..Config::default()
        };
        assert_eq!(c.socket_mode_bits(), Some(0o640));
        let c = Config {
            socket_mode: "rw".into(),
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn partial_file_overrides_only_its_keys() {
        let c: Config = toml::from_str("exit_grace_seconds = 5\nring_poll_ms = 20").unwrap();
        assert_eq!(c.exit_grace_seconds, 5);
        assert_eq!(c.ring_poll_ms, 20);
        assert_eq!(c.ring_buffer_bytes, Config::default().ring_buffer_bytes);
    }

    #[test]
    fn command_line_wins_over_file_only_where_given() {
        let file: Config =
            toml::from_str("exit_grace_seconds = 5\nring_poll_ms = 20\nrestrict_peers = true")
                .unwrap();
        let c = over(
            file.clone(),
            &["--ring-poll-ms", "7", "--socket-group", "12"],
        )
        .unwrap();
        assert_eq!(c.ring_poll_ms, 7, "given on the command line");
        assert_eq!(c.exit_grace_seconds, 5, "from the file");
        assert!(c.restrict_peers, "from the file; the flag was not given");
        assert_eq!(c.socket_group.as_deref(), Some("12"));
        assert_eq!(over(file.clone(), &[]).unwrap(), file);
        assert!(over(file, &["--ring-buffer-bytes", "1000"]).is_err());
    }

    #[test]
    fn the_ring_is_at_least_one_page() {
        // This node's page size (4 KiB here; 16 or 64 KiB on some arm64 kernels): a ring of
        // one page is taken, half a page refused at start rather than at map creation.
        let page = u32::try_from(rustix::param::page_size()).unwrap();
        let ring = |bytes: u32| Config {
            ring_buffer_bytes: bytes,
            ..Config::default()
        };
        assert!(ring(page.max(4096)).validate().is_ok());
        let err = ring(page.max(4096) / 2).validate().unwrap_err();
        assert!(err.to_string().contains("ring_buffer_bytes"), "{err}");
    }

    #[test]
    fn metrics_addr_is_off_unless_given() {
        let c: Config = toml::from_str(r#"metrics_addr = "127.0.0.1:9464""#).unwrap();
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(toml::from_str::<Config>(r#"metrics_addr = "localhost""#).is_err());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<Config>("exit_grace = 5").is_err());
        let long = Config {
            socket: PathBuf::from(format!("/tmp/{}", "x".repeat(120))),
            ..Config::default()
        };
        assert!(matches!(
            long.validate(),
            Err(ConfigError::Invalid { key: "socket", .. })
        ));
        for bytes in [5000, 2048, 1 << 31] {
            let c = Config {
                ring_buffer_bytes: bytes,
                ..Config::default()
            };
            assert!(
                matches!(
                    c.validate(),
                    Err(ConfigError::Invalid {
                        key: "ring_buffer_bytes",
                        ..
                    })
                ),
                "{bytes}"
            );
        }
    }

    #[test]
    fn sizes_the_agent_allocates_or_buffers_have_a_ceiling() {
        // The exited table reserves its capacity at start (near usize::MAX
        // it overflowed); a Watch buffer near usize::MAX overflowed tokio's
        // channel bound on every Watch.
        for (args, key) in [
            (["--max-exited", "4611686018427387904"], "max_exited"),
            (["--max-exited", "1048577"], "max_exited"),
            (["--watch-buffer", "18446744073709551615"], "watch_buffer"),
            (["--watch-buffer", "1048577"], "watch_buffer"),
            (
                ["--max-request-bytes", "18446744073709551615"],
                "max_request_bytes",
            ),
            (["--max-request-bytes", "67108865"], "max_request_bytes"),
            (["--max-request-bytes", "1023"], "max_request_bytes"),
            (["--batch-limit", "65537"], "batch_limit"),
        ] {
            let err = over(Config::default(), &args).unwrap_err();
            assert!(
                matches!(err, ConfigError::Invalid { key: k, .. } if k == key),
                "{args:?}: {err}"
            );
        }
        let c = over(
            Config::default(),
            &[
                "--max-exited",
                "1048576",
                "--watch-buffer",
                "1048576",
                "--max-request-bytes",
                "67108864",
                "--batch-limit",
                "65536",
            ],
        )
        .unwrap();
        assert_eq!(c.max_exited.get(), MAX_MAX_EXITED);
        assert_eq!(c.watch_buffer, MAX_WATCH_BUFFER);
        assert_eq!(c.max_request_bytes, MAX_MAX_REQUEST_BYTES);
        assert_eq!(c.batch_limit, MAX_BATCH_LIMIT);
    }
}
