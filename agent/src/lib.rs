//! pidmap: an always-current map from every process on a node to its
//! container and pod.
//!
//! [`Agent::start`] loads the eBPF programs, starts the ring reader, seeds
//! the process table from /proc and returns once the table is ready;
//! [`run`] does the same and waits for shutdown. Tests start whole agents
//! in-process this way.

pub mod api;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod ebpf;
pub mod error;
pub mod metrics;
pub mod proc;
pub mod resolver;
pub mod runtime;
pub mod signals;
pub mod state;
pub mod types;

use std::sync::Arc;

use tokio::{sync::mpsc, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::Config;
pub use error::Error;
use state::{Owner, ProcessTable, State};

/// Messages that may wait between the ring reader and the table owner.
const EVENT_QUEUE: usize = 256;
/// cgroup id → path pairs cached per hierarchy.
const CGROUP_PATHS: usize = 65_536;
/// Least time between two walks of a cgroup hierarchy for unknown ids.
const CGROUP_WALK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// A running agent.
pub struct Agent {
    state: Arc<State>,
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
    /// Where the metrics endpoint listens, if it is on.
    metrics_addr: Option<std::net::SocketAddr>,
    // Dropped last: detaches the programs.
    _ebpf: aya::Ebpf,
}

impl Agent {
    /// Starts every part of the agent and returns once the process table
    /// has been seeded from /proc. All tasks stop when `shutdown` fires.
    pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Self, Error> {
        config.validate()?;
        let metrics = Arc::new(metrics::Metrics::default());
        let cgroupfs = Arc::new(cgroup::CgroupFs::discover()?);
        let loaded = ebpf::load(&ebpf::EbpfSettings {
            ring_buffer_bytes: config.ring_buffer_bytes,
            wakeup_events: config.ring_wakeup_events,
            btf_path: config.btf_path.clone(),
        })?;
        let ebpf::Loaded {
            ebpf,
            ring,
            drops,
            logger,
        } = loaded;

        let table = ProcessTable::new(
            u64::try_from(config.exit_grace().as_nanos()).unwrap_or(u64::MAX),
            config.max_exited,
        );
        let paths =
            cgroup::CgroupPathCache::new((*cgroupfs).clone(), CGROUP_PATHS, CGROUP_WALK_INTERVAL);
        let state = Arc::new(State::new(table, paths, Arc::clone(&metrics)));
        let mut tasks = JoinSet::new();

        let reader = ebpf::reader::RingReader::new(
            ring,
            drops,
            config.ring_poll_interval(),
            Arc::clone(&metrics),
        )
        .map_err(Error::RingPoll)?;
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let (catch_up_tx, catch_up_rx) = mpsc::channel(state::CATCH_UP_QUEUE);
        state.set_catch_up(catch_up_tx);
        tasks.spawn(reader.run(tx, catch_up_rx, shutdown.clone()));
        if let Some(logger) = logger {
            tasks.spawn(ebpf::reader::run_logger(logger, shutdown.clone()));
        }

        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let owner = Owner {
            state: Arc::clone(&state),
            events: rx,
            cgroupfs: Arc::clone(&cgroupfs),
            proc_root: config.proc_root.clone(),
            ready: Some(ready_tx),
            unknown_paths: Default::default(),
        };
        tasks.spawn(owner.run(shutdown.clone()));
        let watcher = runtime::containerd::Watcher::new(
            runtime::containerd::WatcherConfig {
                socket: config.containerd_socket.clone(),
                resync_interval: config.containerd_resync(),
                max_backoff: config.containerd_max_backoff(),
                grace: config.exit_grace(),
            },
            Arc::clone(&state),
            cgroupfs,
        );
        tasks.spawn(watcher.run(shutdown.clone()));

        // The socket answers UNAVAILABLE until the seed is in.
        let server_settings = api_settings(&config)?;
        let listener = api::server::bind(&server_settings)?;
        tasks.spawn(api::server::serve(
            listener,
            Arc::clone(&state),
            server_settings,
            shutdown.clone(),
        ));

        let metrics_addr = match config.metrics_addr {
            Some(addr) => {
                let server = metrics::server::MetricsServer::bind(addr).await?;
                let bound = server.local_addr();
                tasks.spawn(server.run(Arc::clone(&state), shutdown.clone()));
                Some(bound)
            }
            None => None,
        };

        let agent = Self {
            state,
            tasks,
            shutdown,
            metrics_addr,
            _ebpf: ebpf,
        };
        tokio::select! {
            seeded = ready_rx => seeded.map_err(|_| Error::NotSeeded)?,
            () = agent.shutdown.cancelled() => return Err(Error::NotSeeded),
        }
        info!(processes = agent.state.table().live_len(), "agent ready");
        Ok(agent)
    }

    /// The shared state, for queries.
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// The address the metrics endpoint is bound to (the real port when
    /// `metrics_addr` asked for port 0), or `None` when it is off.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// Waits for the shutdown signal, then for every task to finish.
    pub async fn wait(mut self) {
        self.shutdown.cancelled().await;
        while let Some(joined) = self.tasks.join_next().await {
            if let Err(error) = joined {
                tracing::warn!(%error, "agent task ended abnormally");
            }
        }
        info!("agent stopped");
    }
}

/// The API server's settings from the configuration.
fn api_settings(config: &Config) -> Result<api::server::ServerSettings, Error> {
    let gid = match &config.socket_group {
        Some(group) => Some(config::group_id(group).ok_or_else(|| Error::UnknownGroup {
            group: group.clone(),
        })?),
        None => None,
    };
    Ok(api::server::ServerSettings {
        socket: config.socket.clone(),
        mode: config.socket_mode_bits().unwrap_or(0o660),
        gid,
        max_connections: config.max_connections,
        max_streams_per_connection: config.max_streams_per_connection,
        max_request_bytes: config.max_request_bytes,
        idle_timeout: std::time::Duration::from_secs(config.idle_timeout_seconds.max(1)),
        request_timeout: std::time::Duration::from_secs(30),
        service: api::service::ServiceSettings {
            batch_limit: config.batch_limit,
            restrict_peers: config.restrict_peers,
            allowed_gid: gid,
            watch_buffer: config.watch_buffer,
        },
    })
}

/// Runs an agent until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    Agent::start(config, shutdown).await?.wait().await;
    Ok(())
}
