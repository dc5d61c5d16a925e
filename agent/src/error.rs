//! The agent's top-level error.

/// Why the agent could not start.
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
    /// The ring buffer could not be registered with the runtime.
    #[error("cannot poll the event ring buffer")]
    RingPoll(#[source] std::io::Error),
    /// The API socket could not be set up.
    #[error("API socket")]
    Api(#[from] crate::api::server::ServerError),
    /// `socket_group` names no group of this host.
    #[error(
        "socket group {group} does not exist (give a group name from /etc/group or a numeric gid)"
    )]
    UnknownGroup { group: String },
    /// The metrics endpoint's address could not be bound.
    #[error("cannot serve metrics on {addr}")]
    MetricsBind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The agent stopped before its first /proc seed completed.
    #[error("the agent stopped before the process table was seeded")]
    NotSeeded,
}

/// An error and its causes on one line, `outer: inner: innermost`, the way
/// logs and the command line print them.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut s = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
