//! The agent's top-level error: why it could not start, or why it stopped.

pub use crate::util::chain;

/// Why the agent could not start, or stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("configuration")]
    Config(#[from] crate::config::ConfigError),
    /// The eBPF programs could not be loaded or attached.
    #[error("kernel event source")]
    Ebpf(#[from] crate::ebpf::LoadError),
    /// The cgroup hierarchies could not be found.
    #[error("cgroup hierarchies")]
    Cgroup(#[from] crate::cgroup::CgroupError),
    /// The ring buffer (or the tracker's batch timer) could not be
    /// registered with the runtime.
    #[error("cannot poll the event ring buffer")]
    RingPoll(#[source] std::io::Error),
    /// The API socket could not be set up.
    #[error("API socket")]
    Api(#[from] crate::api::server::ServerError),
    /// `socket_group` names no group of this host.
    #[error(
        "socket group {group} does not exist (give a group name known to the system, as `getent group` shows them, or a numeric gid)"
    )]
    UnknownGroup { group: String },
    /// The metrics endpoint's address could not be bound.
    #[error("cannot serve metrics on {addr}")]
    MetricsBind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The containers map cannot be pinned where asked.
    #[error("containers map pin")]
    Pin(#[from] crate::pinned::PinError),
    /// The agent stopped before its first /proc seed completed.
    #[error("the agent stopped before the process table was seeded")]
    NotSeeded,
    /// `proc_root` is not a procfs the agent can read.
    #[error("cannot read {path} (proc_root must name a mounted procfs, such as /proc)")]
    ProcRoot {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A task the agent cannot work without ended on its own (or
    /// panicked): the agent stops rather than serve a frozen table.
    #[error("the agent's {task} task {how}")]
    TaskDied {
        /// Which task.
        task: &'static str,
        /// `ended` or `panicked: <message>`.
        how: String,
    },
}

impl From<crate::metrics::server::MetricsError> for Error {
    fn from(e: crate::metrics::server::MetricsError) -> Self {
        match e {
            crate::metrics::server::MetricsError::Bind { addr, source } => {
                Self::MetricsBind { addr, source }
            }
        }
    }
}
