//! pidmap: an always-current map from every process on a node to its
//! container and pod.
//!
//! [`Agent::start`] loads the eBPF programs, starts every task, and returns
//! once the agent is ready: the process table seeded from /proc and, when
//! containerd answers, its containers listed. [`Agent::wait`] supervises the
//! tasks until shutdown; [`run`] does both. Tests start whole agents
//! in-process this way.

// The library's API: the agent, its configuration and errors, the wire types and the
// command line. Everything else is the crate's own; what the tests, fuzz targets and
// benchmark need of it is re-exported by `testing`.
pub mod api;
pub mod cli;
pub mod config;
pub mod error;
#[cfg(feature = "fault-injection")]
pub mod faults;
pub mod signals;
#[doc(hidden)]
pub mod testing;

mod cgroup;
mod ebpf;
mod metrics;
mod pinned;
mod proc;
mod resolver;
mod runtime;
mod state;
mod tracker;
mod types;
mod util;

use std::{collections::HashMap, future::Future, sync::Arc};

use tokio::{
    sync::oneshot,
    task::{Id, JoinSet},
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use config::Config;
pub use error::Error;
use runtime::containerd::FirstContact;
use state::{ProcessTable, State};

/// cgroup id → path pairs cached per hierarchy.
const CGROUP_PATHS: usize = 65_536;
/// How long tasks get to finish after the shutdown signal before the ones
/// still running are aborted (a hung task must not keep the agent alive).
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Names of the agent's long-lived tasks, for logs and [`Error::TaskDied`].
mod task {
    pub(crate) const TRACKER: &str = "tracker";
    pub(crate) const WATCHER: &str = "containerd watcher";
    pub(crate) const API: &str = "API server";
    pub(crate) const METRICS: &str = "metrics server";
    pub(crate) const EBPF_LOG: &str = "eBPF log";
    pub(crate) const PINNED_MAP: &str = "containers map publisher";
    pub(crate) const NRI: &str = "NRI plugin";
}

/// A running agent.
pub struct Agent {
    state: Arc<State>,
    tasks: JoinSet<()>,
    names: HashMap<Id, &'static str>,
    shutdown: CancellationToken,
    /// Where the metrics endpoint listens, if it is on.
    metrics_addr: Option<std::net::SocketAddr>,
    // Dropped last: detaches the programs.
    _ebpf: aya::Ebpf,
}

impl Agent {
    /// Starts every part of the agent and returns once it is ready: the
    /// process table is seeded from /proc, and containerd's first list is
    /// reconciled — or containerd did not answer, or did not finish within
    /// `containerd_sync_timeout_seconds` (then with a warning; container
    /// processes answer `pending` until it is synced). All tasks stop when
    /// `shutdown` fires.
    pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Self, Error> {
        Self::start_inner(config, shutdown, Spawner::default()).await
    }

    /// [`start`](Self::start), with faults a test can trigger in the
    /// agent's tasks (see [`faults`]).
    #[cfg(feature = "fault-injection")]
    pub async fn start_with_faults(
        config: Config,
        shutdown: CancellationToken,
        faults: faults::Faults,
    ) -> Result<Self, Error> {
        Self::start_inner(config, shutdown, Spawner { faults }).await
    }

    async fn start_inner(
        config: Config,
        shutdown: CancellationToken,
        spawner: Spawner,
    ) -> Result<Self, Error> {
        config.validate()?;
        raise_open_files_limit();
        let server_settings = api_settings(&config)?;
        // procfs is read only once the programs are loaded (the seed): check
        // it can be read first.
        let proc_stat = config.proc_root.join("stat");
        std::fs::metadata(&proc_stat).map_err(|source| Error::ProcRoot {
            path: proc_stat,
            source,
        })?;
        let metrics = Arc::new(metrics::Metrics::default());
        let cgroupfs = Arc::new(cgroup::CgroupFs::discover()?);
        warn_if_unplaceable(&cgroupfs);
        // The socket before the kernel: a second agent on a live socket, or
        // a socket that cannot be made, fails before any program is loaded.
        // It answers UNAVAILABLE until the agent is ready.
        let listener = api::server::bind(&server_settings)?;
        let socket_file = SocketFile(Some(server_settings.socket.clone()));
        // Likewise the metrics address: a port in use fails the start before
        // anything is loaded, and the socket just made is removed again.
        let metrics_server = match config.metrics_addr {
            Some(addr) => Some(metrics::server::MetricsServer::bind(addr).await?),
            None => None,
        };
        // The pin directory too: a wrong one fails the start here.
        let keyed = pinned::Keyed::of_host(&cgroupfs, &config.proc_root);
        let containers_pin = match config.pin_dir() {
            Some(dir) => Some(pinned::prepare(&dir)?),
            None => {
                info!(
                    "the containers map is not pinned (--no-pin, or no BPF filesystem at /sys/fs/bpf)"
                );
                None
            }
        };
        let loaded = ebpf::load(&ebpf::EbpfSettings {
            ring_buffer_bytes: config.ring_buffer_bytes,
            wakeup_events: config.ring_wakeup_events,
            btf_path: config.btf_path.clone(),
            containers_pin: containers_pin.clone(),
            containers_hierarchy_id: keyed.map_or(u32::MAX, pinned::Keyed::hierarchy_id),
        })?;
        let ebpf::Loaded {
            ebpf,
            ring,
            drops,
            containers,
            logger,
        } = loaded;

        let table = ProcessTable::new(util::duration_ns(config.exit_grace()), config.max_exited);
        // Room for every watcher to fall watch_buffer changes behind (the
        // cut-off) before the buffer itself overruns.
        let (state, table_writer, container_writer) = State::with_change_buffer(
            table,
            cgroup::CgroupPathCache::new(CGROUP_PATHS),
            Arc::clone(&metrics),
            state::CHANGE_BUFFER.max(config.watch_buffer.saturating_add(1)),
        );
        let mut agent = Self {
            state: Arc::clone(&state),
            tasks: JoinSet::new(),
            names: HashMap::new(),
            shutdown,
            metrics_addr: None,
            _ebpf: ebpf,
        };

        let (seeded_tx, seeded) = oneshot::channel();
        let settings = tracker::TrackerSettings {
            poll: config.ring_poll_interval(),
            batch: config.ring_batch(),
            proc_root: config.proc_root.clone(),
            cgroupfs: Arc::clone(&cgroupfs),
        };
        let tracker = {
            let (shutdown, spawner) = (agent.shutdown.clone(), spawner.clone());
            on_own_thread(task::TRACKER, move || {
                let ring = ebpf::ring::Ring::new(ring, drops)?;
                let tracker = tracker::Tracker::new(table_writer, ring, settings, seeded_tx)?;
                Ok(spawner.tracker(tracker.run(shutdown)))
            })
            .map_err(Error::RingPoll)?
        };
        agent.spawn(task::TRACKER, tracker);
        if let Some(logger) = logger {
            agent.spawn(
                task::EBPF_LOG,
                ebpf::run_logger(logger, agent.shutdown.clone()),
            );
        }

        let nri_contact = if config.no_nri {
            info!("NRI is off (--no-nri)");
            None
        } else {
            let (tx, rx) = oneshot::channel();
            let plugin = runtime::nri::plugin::Plugin::new(
                runtime::nri::plugin::PluginConfig {
                    socket: config.nri_socket.clone(),
                    max_backoff: config.containerd_max_backoff(),
                    grace: config.exit_grace(),
                },
                container_writer.for_nri(),
                Arc::clone(&cgroupfs),
                tx,
            );
            agent.spawn(task::NRI, plugin.run(agent.shutdown.clone()));
            Some(rx)
        };
        let (contact_tx, first_contact) = oneshot::channel();
        let watcher = runtime::containerd::Watcher::new(
            runtime::containerd::WatcherConfig {
                socket: config.containerd_socket.clone(),
                docker_socket: config.docker_socket.clone(),
                resync_interval: config.containerd_resync(),
                max_backoff: config.containerd_max_backoff(),
                grace: config.exit_grace(),
            },
            container_writer,
            cgroupfs,
            contact_tx,
        );
        let run = watcher.run(agent.shutdown.clone());
        agent.spawn(task::WATCHER, spawner.watcher(run));

        // From here the server owns the socket file (and removes it when
        // it stops).
        socket_file.release();
        let serve = api::server::serve(
            listener,
            Arc::clone(&state),
            server_settings,
            agent.shutdown.clone(),
        );
        agent.spawn(task::API, spawner.api(serve));

        if let Some(server) = metrics_server {
            agent.metrics_addr = Some(server.local_addr());
            let gauge_state = Arc::clone(&state);
            let registry = metrics::exposition::registry(
                Arc::clone(&metrics),
                Box::new(move || gauges(&gauge_state)),
            );
            agent.spawn(
                task::METRICS,
                server.serve(Arc::new(registry), agent.shutdown.clone()),
            );
        }

        agent
            .until_ready(seeded, first_contact, nri_contact, &config)
            .await?;
        // Published once ready: an entry written before containerd's first
        // list would turn a container (from an agent before) into pending.
        if let (Some(pin), Some(keyed)) = (containers_pin, keyed) {
            let publisher = pinned::Publisher::new(Arc::clone(&state), containers, keyed);
            info!(pin = %pin.display(), ?keyed, "containers map pinned");
            agent.spawn(task::PINNED_MAP, publisher.run(agent.shutdown.clone()));
        }
        Ok(agent)
    }

    /// Waits for the seed, then for containerd's and NRI's first contact
    /// (bounded together), then marks the agent ready. A task that dies
    /// meanwhile fails the start.
    async fn until_ready(
        &mut self,
        seeded: oneshot::Receiver<()>,
        first_contact: oneshot::Receiver<FirstContact>,
        nri_contact: Option<oneshot::Receiver<FirstContact>>,
        config: &Config,
    ) -> Result<(), Error> {
        let shutdown = self.shutdown.clone();
        tokio::select! {
            seeded = seeded => seeded.map_err(|_| Error::NotSeeded)?,
            () = shutdown.cancelled() => return Err(Error::NotSeeded),
            died = self.next_death() => return Err(died),
        }
        warn_if_all_at_the_root(&self.state);
        let wait = config.containerd_sync_timeout();
        let deadline = tokio::time::Instant::now() + wait;
        tokio::select! {
            contact = tokio::time::timeout_at(deadline, first_contact) => match contact {
                Ok(Ok(FirstContact::Synced)) => {}
                Ok(Ok(FirstContact::Unreachable)) => info!(
                    socket = %config.containerd_socket.display(),
                    "containerd did not answer at start; ready without it (it is retried in the background)"
                ),
                Ok(Err(_)) => {}
                Err(_) => warn!(
                    socket = %config.containerd_socket.display(),
                    waited_s = wait.as_secs(),
                    "containerd answered but its containers were not listed in time; ready anyway: \
                     container processes answer `pending` until it is synced"
                ),
            },
            () = shutdown.cancelled() => return Err(Error::NotSeeded),
            died = self.next_death() => return Err(died),
        }
        if let Some(nri_contact) = nri_contact {
            tokio::select! {
                contact = tokio::time::timeout_at(deadline, nri_contact) => match contact {
                    Ok(Ok(FirstContact::Synced)) => {}
                    Ok(Ok(FirstContact::Unreachable)) => info!(
                        socket = %config.nri_socket.display(),
                        "no NRI socket at start; ready without it (it is retried in the background)"
                    ),
                    Ok(Err(_)) => {}
                    Err(_) => warn!(
                        socket = %config.nri_socket.display(),
                        waited_s = wait.as_secs(),
                        "the runtime's NRI did not synchronize in time; ready anyway"
                    ),
                },
                () = shutdown.cancelled() => return Err(Error::NotSeeded),
                died = self.next_death() => return Err(died),
            }
        }
        self.state.set_ready();
        info!(
            processes = self.state.table().live_len(),
            containers = self.state.containers().len(),
            containerd_synced = self.state.containerd_synced(),
            nri_synced = self.state.nri_link() == state::NriLink::Synced,
            "agent ready"
        );
        Ok(())
    }

    fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Waits until a task ends on its own (or panics) and says which.
    async fn next_death(&mut self) -> Error {
        loop {
            let joined = self.tasks.join_next_with_id().await;
            let (id, how) = match joined {
                None => {
                    // No task left: nothing can die any more.
                    std::future::pending::<()>().await;
                    continue;
                }
                Some(Ok((id, ()))) => (id, "ended".to_owned()),
                Some(Err(e)) if e.is_panic() => {
                    let id = e.id();
                    let message = panic_message(&*e.into_panic());
                    (id, format!("panicked: {message}"))
                }
                Some(Err(e)) => (e.id(), "was cancelled".to_owned()),
            };
            let task = self.names.get(&id).copied().unwrap_or("unnamed");
            return Error::TaskDied { task, how };
        }
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

    /// Supervises the agent's tasks until the shutdown signal, then waits
    /// for every task to finish. A task that ends on its own or panics
    /// before the shutdown stops the whole agent — a tracker that stopped
    /// would leave a frozen table behind a healthy-looking socket — and is
    /// returned as [`Error::TaskDied`], so the caller exits non-zero and
    /// the service manager restarts it.
    pub async fn wait(mut self) -> Result<(), Error> {
        let shutdown = self.shutdown.clone();
        let outcome = tokio::select! {
            biased;
            () = shutdown.cancelled() => Ok(()),
            died = self.next_death() => Err(died),
        };
        let outcome = match outcome {
            Err(_) if self.shutdown.is_cancelled() => Ok(()),
            Err(died) => {
                error!(error = %util::chain(&died), "stopping the agent");
                Err(died)
            }
            ok => ok,
        };
        self.shutdown.cancel();
        let joined = tokio::time::timeout(STOP_GRACE, async {
            while let Some(joined) = self.tasks.join_next_with_id().await {
                if let Err(error) = joined {
                    let task = self.names.get(&error.id()).copied().unwrap_or("unnamed");
                    warn!(task, %error, "agent task ended abnormally during shutdown");
                }
            }
        })
        .await;
        if joined.is_err() {
            warn!(
                grace = ?STOP_GRACE,
                tasks = self.tasks.len(),
                "agent tasks did not stop in time; aborting them"
            );
            self.tasks.shutdown().await;
        }
        info!("agent stopped");
        outcome
    }
}

/// Removes the API socket if the agent fails to start after binding it.
struct SocketFile(Option<std::path::PathBuf>);

impl SocketFile {
    /// The server took the socket over.
    fn release(mut self) {
        self.0 = None;
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Runs the future `build` makes on a thread of its own, with a
/// current-thread runtime of its own (its timers, its I/O, its blocking
/// pool): the tracker, which no amount of API work on the main runtime may
/// starve — a peer's thousand `Watch` snapshots once kept it from ticking
/// for five seconds, and a stalled tracker makes the agent unhealthy.
/// Returns, once `build` succeeded, a future that ends when the thread's
/// future does, and panics with its panic, so the agent supervises it like
/// any task.
fn on_own_thread<F>(
    name: &'static str,
    build: impl FnOnce() -> std::io::Result<F> + Send + 'static,
) -> std::io::Result<impl Future<Output = ()> + Send + 'static>
where
    F: Future<Output = ()> + 'static,
{
    use futures_util::FutureExt as _;
    let (built_tx, built) = std::sync::mpsc::channel();
    let (done_tx, done) = oneshot::channel::<Result<(), String>>();
    std::thread::Builder::new()
        .name(format!("pidmap-{}", name.replace(' ', "-")))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = built_tx.send(Err(error));
                    return;
                }
            };
            runtime.block_on(async move {
                let run = match build() {
                    Ok(run) => {
                        let _ = built_tx.send(Ok(()));
                        run
                    }
                    Err(error) => {
                        let _ = built_tx.send(Err(error));
                        return;
                    }
                };
                let ended = std::panic::AssertUnwindSafe(run).catch_unwind().await;
                let _ = done_tx.send(ended.map_err(|payload| panic_message(&*payload)));
            });
            // Blocking jobs (a /proc scan) get a moment to finish.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
        })?;
    built
        .recv()
        .map_err(|_| std::io::Error::other(format!("the {name} thread ended at start")))??;
    Ok(async move {
        match done.await {
            Ok(Ok(())) => {}
            Ok(Err(message)) => panic!("{message}"),
            Err(_) => panic!("the {name} thread ended without a word"),
        }
    })
}

/// The message of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// Wraps tasks in the test faults when the feature is on; a no-op
/// otherwise.
#[derive(Default, Clone)]
struct Spawner {
    #[cfg(feature = "fault-injection")]
    faults: faults::Faults,
}

#[cfg(not(feature = "fault-injection"))]
impl Spawner {
    fn tracker<F: Future<Output = ()>>(&self, f: F) -> F {
        f
    }
    fn watcher<F: Future<Output = ()>>(&self, f: F) -> F {
        f
    }
    fn api<F: Future<Output = ()>>(&self, f: F) -> F {
        f
    }
}

#[cfg(feature = "fault-injection")]
impl Spawner {
    fn tracker<F: Future<Output = ()>>(&self, f: F) -> impl Future<Output = ()> + use<F> {
        self.faults.tracker.clone().wrap(task::TRACKER, f)
    }
    fn watcher<F: Future<Output = ()>>(&self, f: F) -> impl Future<Output = ()> + use<F> {
        self.faults.watcher.clone().wrap(task::WATCHER, f)
    }
    fn api<F: Future<Output = ()>>(&self, f: F) -> impl Future<Output = ()> + use<F> {
        self.faults.api.clone().wrap(task::API, f)
    }
}

/// Raises the soft limit of open files to the hard one: every API
/// connection holds two (its socket and its peer's pidfd), and a soft
/// limit of 1,024 (systemd's default) would refuse connections well below
/// `max_connections` when it is raised. Go programs do the same at start.
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(error) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(%error, "cannot raise the open files limit");
        }
    }
}

/// Warns when no mounted hierarchy can tell processes' cgroups apart.
fn warn_if_unplaceable(fs: &cgroup::CgroupFs) {
    if fs.v2_root().is_none() && fs.v1_memory_root().is_none() {
        warn!(
            "neither cgroup2 nor a cgroup v1 memory hierarchy is mounted: pidmap cannot tell \
             which cgroup a process is in, so it cannot match processes to containers (mount \
             cgroup2, or the v1 memory controller, where the agent runs)"
        );
    }
}

/// Warns when, after the seed, every process sits at the cgroup2 root and
/// no v1 memory cgroup places any: cgroup ids then tell nothing apart
/// (e.g. a hybrid or v1 host whose kernel has no v1 memory controller).
fn warn_if_all_at_the_root(state: &State) {
    let table = state.table();
    let placed = table.live().any(|p| {
        p.cgroups.v2.is_some_and(|id| id.0 != 1) || p.cgroups.v1_memory.is_some_and(|id| id.0 != 1)
    });
    if table.live_len() > 1 && !placed {
        warn!(
            processes = table.live_len(),
            "every process is in the cgroup2 root and no cgroup v1 memory hierarchy places any: \
             this host's cgroup layout gives no hierarchy pidmap can tell containers apart by \
             (on a v1 or hybrid host, the kernel may lack the v1 memory controller: \
             CONFIG_MEMCG_V1); container answers will come from cgroup paths only"
        );
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
        max_connections_per_peer: config.max_connections_per_peer,
        max_streams_per_connection: config.max_streams_per_connection,
        max_request_bytes: config.max_request_bytes,
        idle_timeout: std::time::Duration::from_secs(config.idle_timeout_seconds.max(1)),
        request_timeout: std::time::Duration::from_secs(30),
        proc_root: config.proc_root.clone(),
        budgets: api::admission::Budgets {
            per_peer: config.max_unread_bytes_per_peer,
            total: config.max_unread_bytes,
        },
        service: api::service::ServiceSettings {
            batch_limit: config.batch_limit,
            restrict_peers: config.restrict_peers,
            allowed_gid: gid,
            watch_buffer: config.watch_buffer,
        },
    })
}

/// Runs an agent until `shutdown`; an error if it could not start or a
/// task died.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    Agent::start(config, shutdown).await?.wait().await
}

/// The sizes and flags the metrics endpoint shows, read from `state` now
/// (each under its own short read lock).
pub(crate) fn gauges(state: &State) -> metrics::exposition::Gauges {
    let (live_processes, exited_processes) = {
        let table = state.table();
        (table.live_len(), table.exited_len())
    };
    metrics::exposition::Gauges {
        live_processes,
        exited_processes,
        containers: state.containers().len(),
        containerd_connected: state.containerd_connected(),
        containerd_synced: state.containerd_synced(),
        nri_connected: state.nri_link() != state::NriLink::Down,
        nri_synced: state.nri_link() == state::NriLink::Synced,
    }
}
