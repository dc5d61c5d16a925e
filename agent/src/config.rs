//! Agent configuration: defaults, TOML file, command-line overrides.

use std::{
    num::NonZeroUsize,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

/// Default containerd socket.
pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

/// Everything the agent can be told. Every field has a default; a TOML file
/// may set any subset (unknown keys are an error).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Seconds an exited process stays resolvable (state `exited`).
    pub exit_grace_seconds: u64,
    /// Most exited processes kept at once; the oldest go first.
    pub max_exited: NonZeroUsize,
    /// Size of the kernel event ring buffer in bytes (power of two).
    pub ring_buffer_bytes: u32,
    /// Wake the reader once this many events wait in the ring buffer
    /// (0: on every event that finds the reader idle).
    pub ring_wakeup_events: u32,
    /// Milliseconds between ring-buffer polls (picks up batched events and
    /// checks the drop counter).
    pub ring_poll_ms: u64,
    /// procfs mount to seed from.
    pub proc_root: PathBuf,
    /// Kernel BTF for structure offsets.
    pub btf_path: PathBuf,
    /// containerd's gRPC socket.
    pub containerd_socket: PathBuf,
    /// Seconds between full resyncs with containerd (the safety net for
    /// missed events).
    pub containerd_resync_seconds: u64,
    /// Longest wait between reconnect attempts, in milliseconds.
    pub containerd_max_backoff_ms: u64,
    /// The API's Unix socket.
    pub socket: PathBuf,
    /// Mode of the API socket (octal in TOML as a string, e.g. "0660").
    pub socket_mode: String,
    /// Group that owns the socket and may query everything (name or gid).
    pub socket_group: Option<String>,
    /// Peers other than root and `socket_group` get only WhoAmI and Status.
    pub restrict_peers: bool,
    /// Most pids in one ResolveBatch.
    pub batch_limit: usize,
    /// Most API connections at once.
    pub max_connections: usize,
    /// Most concurrent requests (HTTP/2 streams) per connection.
    pub max_streams_per_connection: u32,
    /// Largest API request message in bytes.
    pub max_request_bytes: usize,
    /// Seconds a connection may stay silent before it is closed.
    pub idle_timeout_seconds: u64,
    /// Changes buffered per Watch stream before a slow watcher is cut off.
    pub watch_buffer: usize,
    /// Serve Prometheus metrics over HTTP on this address (`GET /metrics`);
    /// `None` (the default) serves none.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            exit_grace_seconds: 30,
            max_exited: NonZeroUsize::new(65_536).unwrap_or(NonZeroUsize::MIN),
            ring_buffer_bytes: agent_common::DEFAULT_RING_BYTES,
            ring_wakeup_events: 64,
            ring_poll_ms: 10,
            proc_root: PathBuf::from("/proc"),
            btf_path: PathBuf::from(crate::ebpf::VMLINUX_BTF),
            containerd_socket: PathBuf::from(DEFAULT_CONTAINERD_SOCKET),
            containerd_resync_seconds: 60,
            containerd_max_backoff_ms: 5_000,
            socket: PathBuf::from(crate::api::DEFAULT_SOCKET),
            socket_mode: "0660".to_owned(),
            socket_group: None,
            restrict_peers: false,
            batch_limit: 4096,
            max_connections: 256,
            max_streams_per_connection: 64,
            max_request_bytes: 256 * 1024,
            idle_timeout_seconds: 300,
            watch_buffer: 1024,
            metrics_addr: None,
        }
    }
}

/// A configuration file that cannot be used.
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
        let config: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges the types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let page = 4096;
        if !self.ring_buffer_bytes.is_power_of_two() || self.ring_buffer_bytes < page {
            return Err(ConfigError::Invalid {
                key: "ring_buffer_bytes",
                reason: "must be a power of two of at least 4096",
            });
        }
        if self.containerd_resync_seconds == 0 {
            return Err(ConfigError::Invalid {
                key: "containerd_resync_seconds",
                reason: "must be at least 1",
            });
        }
        if self.containerd_max_backoff_ms < 100 {
            return Err(ConfigError::Invalid {
                key: "containerd_max_backoff_ms",
                reason: "must be at least 100",
            });
        }
        if self.socket_mode_bits().is_none() {
            return Err(ConfigError::Invalid {
                key: "socket_mode",
                reason: "must be an octal mode such as 0660",
            });
        }
        if self.batch_limit == 0 || self.max_connections == 0 || self.watch_buffer == 0 {
            return Err(ConfigError::Invalid {
                key: "batch_limit/max_connections/watch_buffer",
                reason: "must be at least 1",
            });
        }
        if self.ring_poll_ms == 0 || self.ring_poll_ms > 1000 {
            return Err(ConfigError::Invalid {
                key: "ring_poll_ms",
                reason: "must be between 1 and 1000",
            });
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

    pub fn ring_poll_interval(&self) -> Duration {
        Duration::from_millis(self.ring_poll_ms)
    }
}

/// A group's id from a numeric gid or a name in /etc/group.
pub fn group_id(group: &str) -> Option<u32> {
    if let Ok(gid) = group.parse() {
        return Some(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut f = line.split(':');
        (f.next()? == group).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(c.exit_grace(), Duration::from_secs(30));
    }

    #[test]
    fn partial_file_overrides_only_its_keys() {
        let c: Config = toml::from_str("exit_grace_seconds = 5\nring_poll_ms = 20").unwrap();
        assert_eq!(c.exit_grace_seconds, 5);
        assert_eq!(c.ring_poll_ms, 20);
        assert_eq!(c.ring_buffer_bytes, Config::default().ring_buffer_bytes);
    }

    #[test]
    fn metrics_addr_is_off_unless_given() {
        assert_eq!(Config::default().metrics_addr, None);
        let c: Config = toml::from_str(r#"metrics_addr = "127.0.0.1:9464""#).unwrap();
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(toml::from_str::<Config>(r#"metrics_addr = "localhost""#).is_err());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<Config>("exit_grace = 5").is_err());
        let c = Config {
            ring_buffer_bytes: 5000,
            ..Config::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                key: "ring_buffer_bytes",
                ..
            })
        ));
    }
}
