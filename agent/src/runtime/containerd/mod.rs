//! The containerd watcher: keeps the container store current.
//!
//! Subscribe first, then list: the event stream is opened before the list,
//! events that arrive meanwhile wait in a bounded queue and are applied
//! after the list is reconciled, so a container that starts or stops during
//! start-up is neither lost nor resurrected. When the stream ends (containerd
//! restarted, socket re-created) the watcher reconnects with capped
//! exponential backoff and re-lists, which also reveals exits containerd
//! never delivered. A slow periodic resync is the safety net.

pub(crate) mod events;
pub(crate) mod snapshot;
pub(crate) mod spec;

use std::{path::PathBuf, sync::Arc, time::Duration};

use containerd_client::{
    services::v1::{PublishRequest, SubscribeRequest, events_client::EventsClient},
    tonic::transport::Channel,
    types::Envelope,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    cgroup::CgroupFs,
    runtime::docker::Docker,
    state::{
        Change, ContainerWriter, ContainerdLink, State,
        container::{ContainerKey, namespaces},
        containers::ContainerEvent,
    },
    util::{chain, duration_ns, monotonic_ns},
};

/// Events that may wait while a list runs; beyond that the stream is not
/// read (gRPC flow control holds the rest in containerd).
const EVENT_QUEUE: usize = 4096;
/// First reconnect delay; doubles up to the configured cap.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the subscription may take to prove itself live.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Namespace the subscription marker is published in (events need one;
/// publishing does not create it).
const SYNC_NAMESPACE: &str = "pidmap";

/// Watcher settings.
#[derive(Debug, Clone)]
pub(crate) struct WatcherConfig {
    pub socket: PathBuf,
    /// The Docker Engine API's socket, asked for the image and labels of
    /// Docker's containers (namespace `moby`).
    pub docker_socket: PathBuf,
    pub resync_interval: Duration,
    pub max_backoff: Duration,
    /// How long deleted containers stay resolvable.
    pub grace: Duration,
}

/// Why a session with containerd ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("cannot connect")]
    Connect(#[source] tonic::transport::Error),
    #[error("connect timed out after {CONNECT_TIMEOUT:?}")]
    ConnectTimeout,
    #[error("cannot subscribe to events")]
    Subscribe(#[source] tonic::Status),
    #[error("event subscription not confirmed within {SUBSCRIBE_TIMEOUT:?}")]
    SubscribeTimeout,
    #[error("list failed")]
    List(#[from] snapshot::ListError),
    #[error("event stream ended")]
    StreamEnded,
}

/// How the first attempt to reach containerd went (for the agent's
/// readiness: see `Agent::start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FirstContact {
    /// Listed and reconciled: the container store is current.
    Synced,
    /// Nobody answers on the socket: there is no containerd (yet).
    Unreachable,
}

/// The watcher task. See the module docs.
pub(crate) struct Watcher {
    config: WatcherConfig,
    writer: ContainerWriter,
    fs: Arc<CgroupFs>,
    docker: Docker,
    first_contact: Option<oneshot::Sender<FirstContact>>,
}

impl Watcher {
    /// A watcher writing through `writer`; `first_contact` hears how the
    /// first attempt went.
    pub(crate) fn new(
        config: WatcherConfig,
        writer: ContainerWriter,
        fs: Arc<CgroupFs>,
        first_contact: oneshot::Sender<FirstContact>,
    ) -> Self {
        let docker = Docker::new(&config.docker_socket, writer.state().metrics_handle());
        Self {
            config,
            writer,
            fs,
            docker,
            first_contact: Some(first_contact),
        }
    }

    fn state(&self) -> &Arc<State> {
        self.writer.state()
    }

    fn tell_first(&mut self, contact: FirstContact) {
        if let Some(tx) = self.first_contact.take() {
            let _ = tx.send(contact);
        }
    }

    /// Runs until `shutdown`, reconnecting whenever the session ends.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = BACKOFF_START;
        let mut said_absent = false;
        loop {
            let ended = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                ended = self.session(&shutdown, &mut backoff) => ended,
            };
            let was_synced = self.writer.set_link(ContainerdLink::Down) == ContainerdLink::Synced;
            if shutdown.is_cancelled() {
                break;
            }
            if matches!(ended, SessionEnd::Connect(_) | SessionEnd::ConnectTimeout) {
                self.tell_first(FirstContact::Unreachable);
            }
            match &ended {
                SessionEnd::Connect(_) | SessionEnd::ConnectTimeout if !said_absent => {
                    info!(
                        socket = %self.config.socket.display(),
                        error = %chain(&ended),
                        "containerd not reachable; resolving host processes and cgroup paths only, will keep retrying"
                    );
                    said_absent = true;
                }
                SessionEnd::Connect(_) | SessionEnd::ConnectTimeout => {
                    debug!(error = %chain(&ended), "containerd still not reachable");
                }
                _ => {
                    warn!(error = %chain(&ended), "containerd session ended; reconnecting");
                    said_absent = false;
                }
            }
            if was_synced {
                self.state().metrics().count_containerd_reconnect();
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
        self.writer.set_link(ContainerdLink::Down);
        debug!("containerd watcher stopped");
    }

    /// One connection: subscribe, list, reconcile, follow events.
    async fn session(
        &mut self,
        shutdown: &CancellationToken,
        backoff: &mut Duration,
    ) -> SessionEnd {
        let channel = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            containerd_client::connect(&self.config.socket),
        )
        .await
        {
            Ok(Ok(channel)) => channel,
            Ok(Err(e)) => return SessionEnd::Connect(e),
            Err(_) => return SessionEnd::ConnectTimeout,
        };
        // containerd sends the stream's headers only with its first event,
        // so the subscription runs in its own task; a marker event we
        // publish ourselves proves it is live before the list starts.
        let (tx, mut rx) = mpsc::channel::<Envelope>(EVENT_QUEUE);
        let forward = CancellationToken::new();
        let _stop_forwarder = forward.clone().drop_guard();
        // The stream task ends when `forward` fires (the session ends) or
        // the stream does; it is not joined, but it cannot outlive us.
        tokio::spawn(forward_stream(channel.clone(), tx, forward));
        self.writer.set_link(ContainerdLink::Listing);
        let early = match self.confirm_subscription(&channel, &mut rx).await {
            Ok(early) => early,
            Err(e) => return e,
        };

        if let Err(e) = self.resync(&channel, &mut rx, early).await {
            return e;
        }
        *backoff = BACKOFF_START;
        self.writer.set_link(ContainerdLink::Synced);
        self.tell_first(FirstContact::Synced);
        info!(
            socket = %self.config.socket.display(),
            containers = self.state().containers().len(),
            "connected to containerd"
        );

        let mut resync = tokio::time::interval(self.config.resync_interval);
        resync.reset();
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        loop {
            // Periodic work first: a busy event stream must not starve it.
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return SessionEnd::StreamEnded,
                _ = sweep.tick() => self.expire(),
                _ = resync.tick() => {
                    self.state().metrics().count_containerd_resync();
                    if let Err(e) = self.resync(&channel, &mut rx, Vec::new()).await {
                        return e;
                    }
                }
                env = rx.recv() => match env {
                    Some(env) => self.handle(&channel, &env).await,
                    None => return SessionEnd::StreamEnded,
                },
            }
        }
    }

    /// Forgets deleted containers whose grace window has passed.
    fn expire(&self) {
        let grace = duration_ns(self.config.grace);
        let removed = self.writer.store().expire(monotonic_ns(), grace);
        if removed > 0 {
            debug!(removed, "deleted containers expired");
        }
    }

    /// Publishes a marker event until it comes back on our subscription.
    /// Returns the real events that came before it, to replay after the list.
    async fn confirm_subscription(
        &self,
        channel: &Channel,
        rx: &mut mpsc::Receiver<Envelope>,
    ) -> Result<Vec<Envelope>, SessionEnd> {
        let nonce = format!("{}-{}", std::process::id(), monotonic_ns());
        let mut held = Vec::new();
        let deadline = tokio::time::Instant::now() + SUBSCRIBE_TIMEOUT;
        let mut retry = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = retry.tick() => {
                    let mut req = tonic::Request::new(PublishRequest {
                        topic: events::topics::SYNC.to_owned(),
                        event: Some(prost_types::Any {
                            type_url: "pidmap.v1.Sync".to_owned(),
                            value: nonce.clone().into_bytes(),
                        }),
                    });
                    if let Ok(ns) = SYNC_NAMESPACE.parse() {
                        req.metadata_mut().insert("containerd-namespace", ns);
                    }
                    if let Err(status) = EventsClient::new(channel.clone()).publish(req).await {
                        return Err(SessionEnd::Subscribe(status));
                    }
                }
                env = rx.recv() => match env {
                    Some(env) if env.topic == events::topics::SYNC => {
                        if env.event.as_ref().is_some_and(|e| e.value == nonce.as_bytes()) {
                            break;
                        }
                    }
                    Some(env) => held.push(env),
                    None => return Err(SessionEnd::StreamEnded),
                },
                () = tokio::time::sleep_until(deadline) => return Err(SessionEnd::SubscribeTimeout),
            }
        }
        Ok(held)
    }

    /// Lists everything, reconciles, then applies the events that arrived
    /// during the list.
    /// `early`: events received before the list that must be replayed first.
    async fn resync(
        &self,
        channel: &Channel,
        rx: &mut mpsc::Receiver<Envelope>,
        early: Vec<Envelope>,
    ) -> Result<(), SessionEnd> {
        let started = std::time::Instant::now();
        let snap = snapshot::list_all(channel, &self.fs, &self.docker).await?;
        let changed: Vec<ContainerKey> = snap.containers.iter().map(|c| c.key.clone()).collect();
        let stats = self.writer.store().reconcile(snap, monotonic_ns());
        self.learn_ids_from_processes();
        if self.state().has_watchers() {
            // Listed ones may have changed; deleted ones are announced too.
            let deleted: Vec<ContainerKey> = self
                .state()
                .containers()
                .iter()
                .filter(|c| c.deleted_at_ns.is_some())
                .map(|c| c.key.clone())
                .collect();
            for key in changed.into_iter().chain(deleted) {
                self.writer.notify(|| Change::Container(key));
            }
        }
        let mut replayed = 0;
        for env in early {
            self.handle(channel, &env).await;
            replayed += 1;
        }
        while let Ok(env) = rx.try_recv() {
            self.handle(channel, &env).await;
            replayed += 1;
        }
        if rx.is_closed() && rx.is_empty() {
            return Err(SessionEnd::StreamEnded);
        }
        let took = started.elapsed();
        self.state().metrics().set_containerd_list(took);
        info!(
            added = stats.added,
            updated = stats.updated,
            deleted = stats.deleted,
            stopped_while_away = stats.stopped,
            replayed,
            elapsed_ms = took.as_millis() as u64,
            "containerd state reconciled"
        );
        Ok(())
    }

    async fn handle(&self, channel: &Channel, env: &Envelope) {
        let event = match events::decode(env) {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(error) => {
                warn!(error = %chain(&error), "containerd event skipped");
                return;
            }
        };
        self.state().metrics().count_containerd_event();
        debug!(?event, "containerd event");
        let fetch = self.writer.store().apply(&event, monotonic_ns());
        if let Some(key) = fetch {
            self.fetch(channel, &key).await;
        }
        if let ContainerEvent::TaskStart {
            namespace,
            container_id,
            ..
        } = &event
        {
            self.refresh_ids(&ContainerKey::new(namespace.clone(), container_id.clone()));
            // From containerd's own timestamp of the start to now, when the
            // container is indexed and its processes resolve to it.
            if let Some(ts) = &env.timestamp {
                let started = std::time::UNIX_EPOCH
                    + Duration::new(
                        u64::try_from(ts.seconds).unwrap_or(0),
                        u32::try_from(ts.nanos).unwrap_or(0),
                    );
                if let Ok(elapsed) = std::time::SystemTime::now().duration_since(started) {
                    self.state()
                        .metrics()
                        .record_container_start_to_resolvable(elapsed);
                }
            }
        }
        if let ContainerEvent::ContainerDelete {
            namespace,
            container_id,
        } = &event
            && namespace == namespaces::DOCKER
        {
            self.docker.forget(container_id);
        }
        if let Some(key) = event.container_key() {
            self.writer.notify(|| Change::Container(key));
        }
    }

    /// Fetches full metadata (labels, spec) for a container.
    async fn fetch(&self, channel: &Channel, key: &ContainerKey) {
        match snapshot::get_container(channel, &self.docker, key).await {
            Ok(Some(c)) => {
                self.writer.store().upsert(c);
                self.refresh_ids(key);
            }
            Ok(None) => debug!(container = %key, "container gone before its metadata was fetched"),
            Err(error) => {
                warn!(container = %key, error = %chain(&error), "cannot fetch container metadata");
            }
        }
    }

    fn refresh_ids(&self, key: &ContainerKey) {
        crate::runtime::refresh_cgroup_ids(&self.writer, &self.fs, key);
    }

    /// For running containers whose cgroup directory could not be found,
    /// take the ids from their init processes.
    fn learn_ids_from_processes(&self) {
        let missing: Vec<ContainerKey> = self
            .state()
            .containers()
            .iter()
            .filter(|c| {
                c.task_pid.is_some() && c.cgroup_v2.is_none() && c.cgroup_v1_memory.is_none()
            })
            .map(|c| c.key.clone())
            .collect();
        for key in missing {
            self.refresh_ids(&key);
        }
    }
}

/// Subscribes, then moves envelopes from the gRPC stream into the queue
/// until the stream ends, the queue's reader goes away or `stop` fires.
/// Dropping `tx` tells the session the stream is over.
async fn forward_stream(channel: Channel, tx: mpsc::Sender<Envelope>, stop: CancellationToken) {
    let mut client = EventsClient::new(channel);
    let subscribe = client.subscribe(SubscribeRequest {
        filters: events::topics::filters(),
    });
    let mut stream = tokio::select! {
        biased;
        () = stop.cancelled() => return,
        resp = subscribe => match resp {
            Ok(resp) => resp.into_inner(),
            Err(status) => {
                debug!(%status, "containerd event subscription failed");
                return;
            }
        },
    };
    loop {
        let next = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            next = stream.message() => next,
        };
        match next {
            Ok(Some(env)) => {
                if tx.send(env).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(status) => {
                debug!(%status, "containerd event stream error");
                return;
            }
        }
    }
}
