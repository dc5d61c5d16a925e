//! The `pidmap.v1.Pidmap` service. Every answer comes from memory (the
//! process table, the container store, the cgroup path cache): no /proc
//! read and no containerd call happen on the request path.

use std::{pin::Pin, sync::Arc, time::Instant};

use tokio::sync::{broadcast, mpsc};
use tokio_stream::{wrappers::ReceiverStream, Stream};
use tonic::{transport::server::UdsConnectInfo, Request, Response, Status};
use tracing::{debug, instrument};

use super::{
    convert,
    proto::{self, pidmap_server::Pidmap},
};
use crate::{
    resolver::resolve,
    runtime::container::Container,
    state::{Change, State},
    types::StartTime,
};

/// How long a slow watcher gets to take its disconnect reason.
const SLOW_WATCHER_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// How long WhoAmI waits for a caller that is not in the table yet.
const WHOAMI_CATCH_UP: std::time::Duration = std::time::Duration::from_millis(500);

/// Largest pid Linux can hand out (`PID_MAX_LIMIT` on 64-bit).
const PID_MAX_LIMIT: i64 = 4_194_304;

/// What the service enforces.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// Most pids in one `ResolveBatch`.
    pub batch_limit: usize,
    /// Peers other than root and `allowed_gid` get only WhoAmI and Status.
    pub restrict_peers: bool,
    /// The socket's group.
    pub allowed_gid: Option<u32>,
    /// Messages buffered per `Watch` stream before the watcher is cut off.
    pub watch_buffer: usize,
}

/// The service over the agent's state.
pub struct PidmapService {
    state: Arc<State>,
    settings: ServiceSettings,
}

impl PidmapService {
    pub fn new(state: Arc<State>, settings: ServiceSettings) -> Self {
        Self { state, settings }
    }

    fn ready(&self) -> Result<(), Status> {
        if self.state.is_ready() {
            Ok(())
        } else {
            Err(Status::unavailable(
                "pidmap is starting: the process table is not seeded yet; retry shortly",
            ))
        }
    }

    /// With `restrict_peers`, only root and the socket's group may query
    /// other processes.
    fn privileged<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if !self.settings.restrict_peers {
            return Ok(());
        }
        let cred = req
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred);
        let allowed =
            cred.is_some_and(|c| c.uid() == 0 || Some(c.gid()) == self.settings.allowed_gid);
        if allowed {
            Ok(())
        } else {
            Err(Status::permission_denied(
                "restrict_peers is on: only root and the socket's group may resolve other processes; WhoAmI and Status are open to all",
            ))
        }
    }

    /// Counts a finished request by method and code.
    fn done<T>(
        &self,
        method: &'static str,
        started: Instant,
        result: Result<T, Status>,
    ) -> Result<T, Status> {
        let code = result
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        self.state
            .metrics()
            .record_request(method, code, started.elapsed());
        result
    }

    /// Resolves every request, after one
    /// [`State::catch_up`](crate::state::State::catch_up): the answers
    /// include every kernel event recorded before the request, so a process
    /// that started or exec'd a moment ago is there with its current comm.
    async fn resolve_all(
        &self,
        requests: &[proto::ResolveRequest],
    ) -> Result<Vec<proto::ProcessRecord>, Status> {
        let wanted = requests
            .iter()
            .map(|r| Ok((valid_pid(r.pid)?, r.start_time.map(StartTime))))
            .collect::<Result<Vec<_>, Status>>()?;
        self.state.catch_up(crate::state::QUERY_CATCH_UP).await;
        Ok(wanted
            .iter()
            .map(|&(pid, start)| convert::record(&resolve(&self.state, pid, start)))
            .collect())
    }
}

/// Checks a pid from a request.
pub fn valid_pid(pid: i64) -> Result<u32, Status> {
    if pid <= 0 {
        return Err(Status::invalid_argument(format!(
            "pid must be a positive process id, got {pid}"
        )));
    }
    if pid > PID_MAX_LIMIT {
        return Err(Status::invalid_argument(format!(
            "pid {pid} is above the largest pid Linux allows ({PID_MAX_LIMIT})"
        )));
    }
    u32::try_from(pid).map_err(|_| Status::invalid_argument(format!("pid {pid} out of range")))
}

fn matches(c: &Container, req: &proto::ListContainersRequest) -> bool {
    let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
    let eq_opt = |want: &Option<String>, have: &Option<String>| {
        want.is_none() || want.as_deref() == have.as_deref()
    };
    eq(&req.runtime_namespace, &c.key.namespace)
        && eq_opt(&req.pod_name, &c.pod.pod_name)
        && eq_opt(&req.pod_namespace, &c.pod.pod_namespace)
        && req.labels.iter().all(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
            c.labels.get(k).is_some_and(|have| have == v)
        })
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Pidmap for PidmapService {
    #[instrument(skip_all, fields(pid = req.get_ref().pid))]
    async fn resolve(
        &self,
        req: Request<proto::ResolveRequest>,
    ) -> Result<Response<proto::ProcessRecord>, Status> {
        let started = Instant::now();
        let result = async move {
            self.privileged(&req)?;
            self.ready()?;
            let mut records = self
                .resolve_all(std::slice::from_ref(req.get_ref()))
                .await?;
            Ok(Response::new(records.pop().unwrap_or_default()))
        }
        .await;
        self.done("Resolve", started, result)
    }

    #[instrument(skip_all, fields(n = req.get_ref().requests.len()))]
    async fn resolve_batch(
        &self,
        req: Request<proto::ResolveBatchRequest>,
    ) -> Result<Response<proto::ResolveBatchResponse>, Status> {
        let started = Instant::now();
        let result = async move {
            self.privileged(&req)?;
            self.ready()?;
            let requests = &req.get_ref().requests;
            if requests.len() > self.settings.batch_limit {
                return Err(Status::invalid_argument(format!(
                    "batch of {} pids is over the limit of {}; split it",
                    requests.len(),
                    self.settings.batch_limit
                )));
            }
            let records = self.resolve_all(requests).await?;
            Ok(Response::new(proto::ResolveBatchResponse { records }))
        }
        .await;
        self.done("ResolveBatch", started, result)
    }

    #[instrument(skip_all)]
    async fn list_containers(
        &self,
        req: Request<proto::ListContainersRequest>,
    ) -> Result<Response<proto::ListContainersResponse>, Status> {
        let started = Instant::now();
        let result = async move {
            self.privileged(&req)?;
            self.ready()?;
            let filter = req.get_ref();
            let mut containers: Vec<proto::Container> = self
                .state
                .containers()
                .iter()
                .filter(|c| matches(c, filter))
                .map(convert::container)
                .collect();
            containers
                .sort_by(|a, b| (&a.runtime_namespace, &a.id).cmp(&(&b.runtime_namespace, &b.id)));
            Ok(Response::new(proto::ListContainersResponse { containers }))
        }
        .await;
        self.done("ListContainers", started, result)
    }

    #[instrument(skip_all, fields(container = %req.get_ref().container_id))]
    async fn list_processes(
        &self,
        req: Request<proto::ListProcessesRequest>,
    ) -> Result<Response<proto::ListProcessesResponse>, Status> {
        let started = Instant::now();
        let result = async move {
            self.privileged(&req)?;
            self.ready()?;
            let r = req.get_ref();
            if r.container_id.is_empty() {
                return Err(Status::invalid_argument("container_id is required"));
            }
            let found: Vec<Container> = self
                .state
                .containers()
                .iter()
                .filter(|c| {
                    c.key.id == r.container_id
                        && r.runtime_namespace
                            .as_deref()
                            .is_none_or(|ns| ns == c.key.namespace)
                })
                .cloned()
                .collect();
            let container = match found.as_slice() {
                [] => {
                    return Err(Status::not_found(format!(
                        "no container {} known{}",
                        r.container_id,
                        r.runtime_namespace
                            .as_deref()
                            .map(|ns| format!(" in namespace {ns}"))
                            .unwrap_or_default()
                    )))
                }
                [one] => one.clone(),
                many => {
                    let namespaces: Vec<&str> =
                        many.iter().map(|c| c.key.namespace.as_str()).collect();
                    return Err(Status::invalid_argument(format!(
                        "container id {} exists in namespaces {}: set runtime_namespace",
                        r.container_id,
                        namespaces.join(", ")
                    )));
                }
            };
            let pids: Vec<u32> = self
                .state
                .table()
                .live()
                .filter(|p| {
                    (p.cgroups.v2.is_some() && p.cgroups.v2 == container.cgroup_v2)
                        || (p.cgroups.v1_memory.is_some()
                            && p.cgroups.v1_memory == container.cgroup_v1_memory)
                })
                .map(|p| p.key.pid)
                .collect();
            let mut processes: Vec<proto::ProcessRecord> = pids
                .into_iter()
                .map(|pid| convert::record(&resolve(&self.state, pid, None)))
                .collect();
            processes.sort_by_key(|p| p.pid);
            Ok(Response::new(proto::ListProcessesResponse { processes }))
        }
        .await;
        self.done("ListProcesses", started, result)
    }

    type WatchStream = WatchStream;

    #[instrument(skip_all)]
    async fn watch(
        &self,
        req: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let started = Instant::now();
        let result = async move {
            self.privileged(&req)?;
            self.ready()?;
            // Subscribe first, then snapshot: nothing between the two is lost
            // (a change may repeat what the snapshot already shows).
            let changes = self.state.subscribe_changes();
            let (tx, rx) = mpsc::channel(self.settings.watch_buffer);
            tokio::spawn(feed_watcher(Arc::clone(&self.state), changes, tx));
            let stream: WatchStream = Box::pin(ReceiverStream::new(rx));
            Ok(Response::new(stream))
        }
        .await;
        self.done("Watch", started, result)
    }

    #[instrument(skip_all)]
    async fn who_am_i(
        &self,
        req: Request<proto::WhoAmIRequest>,
    ) -> Result<Response<proto::ProcessRecord>, Status> {
        let started = Instant::now();
        let result = async move {
            self.ready()?;
            let pid = req
                .extensions()
                .get::<UdsConnectInfo>()
                .and_then(|info| info.peer_cred)
                .and_then(|cred| cred.pid())
                .ok_or_else(|| {
                    Status::failed_precondition(
                        "cannot tell who is calling: the connection carries no peer credentials",
                    )
                })?;
            let pid = valid_pid(i64::from(pid))?;
            // The caller is alive, but it may have started or exec'd a moment
            // ago, with its kernel events still in the ring buffer: apply
            // them first, so that its comm and cgroup are current. Should
            // that not find it, wait a short while for its events rather than
            // answer `unknown`.
            let mut changes = self.state.subscribe_changes();
            self.state.catch_up(crate::state::QUERY_CATCH_UP).await;
            let mut r = resolve(&self.state, pid, None);
            let deadline = tokio::time::Instant::now() + WHOAMI_CATCH_UP;
            while r.process.is_none() {
                match tokio::time::timeout_at(deadline, changes.recv()).await {
                    Ok(Ok(Change::Process(key))) if key.pid != pid => continue,
                    Ok(Ok(Change::Container(_))) => continue,
                    Ok(_) => r = resolve(&self.state, pid, None),
                    Err(_) => break,
                }
            }
            Ok(Response::new(convert::record(&r)))
        }
        .await;
        self.done("WhoAmI", started, result)
    }

    #[instrument(skip_all)]
    async fn status(
        &self,
        _req: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        let started = Instant::now();
        let result = async move {
            let m = self.state.metrics().snapshot();
            let (processes, exited) = {
                let t = self.state.table();
                (t.live_len(), t.exited_len())
            };
            Ok(Response::new(proto::StatusResponse {
                ready: self.state.is_ready(),
                processes: processes as u64,
                exited_processes: exited as u64,
                containers: self.state.containers().len() as u64,
                events_received: m.events_received(),
                events_lost: m.lost_events,
                containerd_connected: self.state.containerd_connected(),
                containerd_reconnects: m.containerd_reconnects,
                rescans: m.rescans,
                version: env!("CARGO_PKG_VERSION").to_owned(),
            }))
        }
        .await;
        self.done("Status", started, result)
    }
}

/// Sends the snapshot, then changes, until the watcher goes away or falls
/// behind.
async fn feed_watcher(
    state: Arc<State>,
    mut changes: broadcast::Receiver<Change>,
    tx: mpsc::Sender<Result<proto::WatchEvent, Status>>,
) {
    use proto::watch_event::Event;
    let containers: Vec<proto::Container> =
        state.containers().iter().map(convert::container).collect();
    let pids: Vec<u32> = state.table().live().map(|p| p.key.pid).collect();
    let snapshot = containers
        .into_iter()
        .map(Event::Container)
        .chain(
            pids.into_iter()
                .map(|pid| Event::Process(convert::record(&resolve(&state, pid, None)))),
        )
        .chain(std::iter::once(Event::SnapshotDone(true)));
    for event in snapshot {
        if tx
            .send(Ok(proto::WatchEvent { event: Some(event) }))
            .await
            .is_err()
        {
            return;
        }
    }
    loop {
        let event = match changes.recv().await {
            Ok(Change::Process(key)) => Event::ProcessChanged(convert::record(&resolve(
                &state,
                key.pid,
                Some(key.start_time),
            ))),
            Ok(Change::Container(key)) => match state.containers().get(&key) {
                Some(c) => Event::ContainerChanged(convert::container(c)),
                None => continue,
            },
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let _ = tx.try_send(Err(Status::resource_exhausted(format!(
                    "watcher too slow: {n} changes dropped; reconnect to get a fresh snapshot"
                ))));
                return;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        match tx.try_send(Ok(proto::WatchEvent { event: Some(event) })) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                debug!("disconnecting a slow watcher");
                // Give the reason a moment to fit in, then end the stream.
                let reason = Status::resource_exhausted(
                    "watcher too slow: its buffer is full; reconnect to get a fresh snapshot",
                );
                let _ = tokio::time::timeout(SLOW_WATCHER_GRACE, tx.send(Err(reason))).await;
                return;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::*;
    use crate::{
        cgroup::{CgroupFs, CgroupPathCache},
        metrics::Metrics,
        state::ProcessTable,
    };

    fn service(restrict_peers: bool) -> PidmapService {
        let state = State::new(
            ProcessTable::new(1, NonZeroUsize::MIN),
            CgroupPathCache::new(
                CgroupFs::from_roots(None, None),
                1,
                std::time::Duration::ZERO,
            ),
            Arc::new(Metrics::default()),
        );
        PidmapService::new(
            Arc::new(state),
            ServiceSettings {
                batch_limit: 2,
                restrict_peers,
                allowed_gid: None,
                watch_buffer: 1,
            },
        )
    }

    #[tokio::test]
    async fn unavailable_until_seeded_but_status_answers() {
        let svc = service(false);
        let err = svc
            .resolve(Request::new(proto::ResolveRequest {
                pid: 1,
                start_time: None,
            }))
            .await
            .expect_err("not ready");
        assert_eq!(err.code(), tonic::Code::Unavailable);
        let status = svc
            .status(Request::new(proto::StatusRequest {}))
            .await
            .expect("status")
            .into_inner();
        assert!(!status.ready);
        let requests = svc.state.metrics().snapshot();
        assert_eq!(requests.events_received(), 0);
    }

    #[tokio::test]
    async fn restricted_peers_without_credentials_are_refused() {
        let svc = service(true);
        let err = svc
            .list_containers(Request::new(proto::ListContainersRequest::default()))
            .await
            .expect_err("no credentials");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn pids_are_checked() {
        assert!(valid_pid(1).is_ok());
        assert!(valid_pid(PID_MAX_LIMIT).is_ok());
        for bad in [0, -7, PID_MAX_LIMIT + 1, i64::MAX] {
            assert_eq!(
                valid_pid(bad).unwrap_err().code(),
                tonic::Code::InvalidArgument
            );
        }
    }
}
