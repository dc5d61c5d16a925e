//! The `pidmap.v1.Pidmap` service. Every answer comes from memory (the
//! process table, the container store, the cgroup path cache): no /proc
//! read and no containerd call happen on the request path. Readiness, peer
//! restrictions and request metrics are the [`super::policy`] layer's.

use std::{pin::Pin, sync::Arc};

use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::{
    convert,
    peer::Peer,
    proto::{self, pidmap_server::Pidmap},
};
use crate::{
    resolver::{ContainerRef, path_containers, processes_of, resolve},
    state::{Change, State, container::Container},
    types::StartTime,
};

/// How long WhoAmI waits for a caller that is not in the table yet.
const WHOAMI_CATCH_UP: std::time::Duration = std::time::Duration::from_millis(500);

/// Largest pid Linux can hand out (`PID_MAX_LIMIT` on 64-bit).
const PID_MAX_LIMIT: i64 = 4_194_304;

/// What the service enforces.
#[derive(Debug, Clone)]
pub(crate) struct ServiceSettings {
    /// Most pids in one `ResolveBatch`.
    pub batch_limit: usize,
    /// Peers other than root and `allowed_gid` get only WhoAmI and Status.
    pub restrict_peers: bool,
    /// The socket's group.
    pub allowed_gid: Option<u32>,
    /// Changes a `Watch` client may fall behind before it is cut off.
    pub watch_buffer: usize,
}

/// The service over the agent's state.
pub(crate) struct PidmapService {
    state: Arc<State>,
    settings: ServiceSettings,
    /// Ends every `Watch` stream when the agent shuts down.
    shutdown: CancellationToken,
}

impl PidmapService {
    pub(crate) fn new(
        state: Arc<State>,
        settings: ServiceSettings,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            state,
            settings,
            shutdown,
        }
    }

    /// Resolves every request, after one
    /// [`State::catch_up`](crate::state::State::catch_up): the answers
    /// include every kernel event recorded before the request, so a process
    /// that started or exec'd a moment ago is there with its current comm.
    /// Should the table not be confirmed current in time (a backlog, or
    /// lost events being repaired), what may have changed answers
    /// `pending`.
    pub(crate) async fn resolve_all(
        &self,
        requests: &[proto::ResolveRequest],
    ) -> Result<Vec<proto::ProcessRecord>, Status> {
        let wanted = requests
            .iter()
            .map(|r| Ok((valid_pid(r.pid)?, r.start_time.map(StartTime))))
            .collect::<Result<Vec<_>, Status>>()?;
        let current = self.state.catch_up(crate::state::QUERY_CATCH_UP).await;
        Ok(wanted
            .iter()
            .map(|&(pid, start)| {
                let r = resolve(&self.state, pid, start);
                convert::record(&if current.is_current() {
                    r
                } else {
                    r.unconfirmed()
                })
            })
            .collect())
    }

    /// Most pids in one batch.
    pub(crate) fn batch_limit(&self) -> usize {
        self.settings.batch_limit
    }

    /// The containers `req` asks for, sorted by namespace and id:
    /// containerd's, then those known only from cgroup paths.
    pub(crate) fn containers(&self, req: &proto::ListContainersRequest) -> Vec<proto::Container> {
        let mut out: Vec<proto::Container> = self
            .state
            .containers()
            .iter()
            .filter(|c| req.include_deleted || c.deleted_at_ns.is_none())
            .filter(|c| matches(c, req))
            .map(convert::container)
            .collect();
        let by_path = path_containers(&self.state);
        out.extend(
            by_path
                .values()
                .map(convert::path_container)
                .filter(|c| path_matches(c, req)),
        );
        out.sort_by(|a, b| (&a.runtime_namespace, &a.id).cmp(&(&b.runtime_namespace, &b.id)));
        out
    }

    /// The live processes of the container `req` names.
    pub(crate) fn processes(
        &self,
        req: &proto::ListProcessesRequest,
    ) -> Result<Vec<proto::ProcessRecord>, Status> {
        if req.container_id.is_empty() {
            return Err(Status::invalid_argument("container_id is required"));
        }
        let target = self.find(&req.container_id, req.runtime_namespace.as_deref())?;
        Ok(processes_of(&self.state, &target)
            .iter()
            .map(convert::record)
            .collect())
    }

    /// The record of the process on the other end of the connection
    /// `peer` describes: exactly the process that connected, as (pid, start
    /// time) fixed when the connection was accepted (see
    /// [`Peer`](super::peer::Peer)) — running, exited, or an error saying
    /// it exited; never another process that reused its pid.
    ///
    /// The caller is alive, but it may have started or exec'd a moment
    /// ago, with its kernel events still in the ring buffer: they are
    /// applied first, so that its comm and cgroup are current. Should that
    /// not find it, this waits a short while for its events, and answers
    /// `pending` rather than `unknown` for a process that still lives.
    pub(crate) async fn who_is(&self, peer: Option<&Peer>) -> Result<proto::ProcessRecord, Status> {
        let Some(peer) = peer.filter(|p| p.pid.is_some()) else {
            return Err(Status::failed_precondition(
                "cannot tell who is calling: the connection carries no peer credentials",
            ));
        };
        let Some(key) = peer.process else {
            let pid = peer.pid.unwrap_or_default();
            return Err(Status::failed_precondition(
                if peer.has_exited() == Some(false) {
                    format!(
                        "cannot tell which process pid {pid} is: its start time could not be read \
                         when it connected"
                    )
                } else {
                    format!(
                        "the process that opened this connection (pid {pid}) exited before the \
                         agent accepted it; its pid may belong to another process now"
                    )
                },
            ));
        };
        valid_pid(i64::from(key.pid))?;
        let mut changes = self.state.subscribe_changes();
        let current = self.state.catch_up(crate::state::QUERY_CATCH_UP).await;
        let mut r = resolve(&self.state, key.pid, Some(key.start_time));
        let deadline = tokio::time::Instant::now() + WHOAMI_CATCH_UP;
        while r.process.is_none() {
            match tokio::time::timeout_at(deadline, changes.recv()).await {
                Ok(Ok(Change::Process(k))) if k != key => continue,
                Ok(Ok(Change::Container(_) | Change::Expired)) => continue,
                Ok(_) => r = resolve(&self.state, key.pid, Some(key.start_time)),
                Err(_) => break,
            }
        }
        if r.process.is_none() {
            if peer.has_exited() == Some(true) {
                return Err(Status::failed_precondition(format!(
                    "the process that opened this connection (pid {}, start time {}) has exited \
                     and is no longer in the table; its pid may belong to another process now",
                    key.pid, key.start_time.0
                )));
            }
            // Alive, but not in the table yet: not known yet.
            r = r.unconfirmed();
        }
        if !current.is_current() {
            r = r.unconfirmed();
        }
        let mut record = convert::record(&r);
        record.start_time = Some(key.start_time.0);
        Ok(record)
    }

    /// Readiness, counts and counters.
    pub(crate) fn status(&self) -> proto::StatusResponse {
        let m = self.state.metrics().snapshot();
        let (processes, exited) = {
            let t = self.state.table();
            (t.live_len(), t.exited_len())
        };
        proto::StatusResponse {
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
            containerd_synced: self.state.containerd_synced(),
            repairing: self.state.repairing(),
            catch_up_timeouts: m.catch_up_timeouts,
            nri_connected: self.state.nri_link() != crate::state::NriLink::Down,
            nri_synced: self.state.nri_link() == crate::state::NriLink::Synced,
            nri_runtime: self.state.nri_runtime(),
        }
    }

    /// A watcher's stream: the snapshot, then changes, pulled by the
    /// client's reads, until the watcher goes away, falls behind
    /// (`RESOURCE_EXHAUSTED`) or the agent shuts down (`UNAVAILABLE`). See
    /// [`super::watch`].
    pub(crate) fn watch(
        &self,
    ) -> impl Stream<Item = Result<proto::WatchEvent, Status>> + Send + 'static + use<> {
        super::watch::stream(
            Arc::clone(&self.state),
            self.settings.watch_buffer,
            self.shutdown.clone(),
        )
    }

    /// The container `id` (in `namespace`, when given) names, whichever
    /// way it is known.
    fn find(&self, id: &str, namespace: Option<&str>) -> Result<ContainerRef, Status> {
        let in_ns = |ns: &str| namespace.is_none_or(|want| want == ns);
        let mut found: Vec<ContainerRef> = self
            .state
            .containers()
            .iter()
            .filter(|c| c.key.id == id && in_ns(&c.key.namespace))
            .map(|c| ContainerRef::Runtime(c.key.clone()))
            .collect();
        if found.is_empty() {
            found = path_containers(&self.state)
                .into_keys()
                .filter(|k| k.id == id && in_ns(&k.namespace))
                .map(ContainerRef::Path)
                .collect();
        }
        match found.as_slice() {
            [] => Err(Status::not_found(format!(
                "no container {id} known{}",
                namespace
                    .map(|ns| format!(" in namespace {ns}"))
                    .unwrap_or_default()
            ))),
            [one] => Ok(one.clone()),
            many => {
                let namespaces: Vec<&str> = many
                    .iter()
                    .map(|r| match r {
                        ContainerRef::Runtime(k) | ContainerRef::Path(k) => k.namespace.as_str(),
                    })
                    .collect();
                Err(Status::invalid_argument(format!(
                    "container id {id} exists in namespaces {}: set runtime_namespace",
                    namespaces.join(", ")
                )))
            }
        }
    }
}

/// Refuses a batch of more than `limit` pids.
pub(crate) fn check_batch(pids: usize, limit: usize) -> Result<(), Status> {
    if pids > limit {
        return Err(Status::invalid_argument(format!(
            "batch of {pids} pids is over the limit of {limit}; split it"
        )));
    }
    Ok(())
}

/// Checks a pid from a request.
pub(crate) fn valid_pid(pid: i64) -> Result<u32, Status> {
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

/// Filters for containers known from their paths: they have no labels
/// and no pod name.
fn path_matches(c: &proto::Container, req: &proto::ListContainersRequest) -> bool {
    req.runtime_namespace
        .as_deref()
        .is_none_or(|ns| ns == c.runtime_namespace)
        && req.pod_name.is_none()
        && req.pod_namespace.is_none()
        && req.labels.is_empty()
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Pidmap for PidmapService {
    #[instrument(skip_all, fields(pid = req.get_ref().pid))]
    async fn resolve(
        &self,
        req: Request<proto::ResolveRequest>,
    ) -> Result<Response<proto::ProcessRecord>, Status> {
        let mut records = self
            .resolve_all(std::slice::from_ref(req.get_ref()))
            .await?;
        Ok(Response::new(records.pop().unwrap_or_default()))
    }

    #[instrument(skip_all, fields(n = req.get_ref().requests.len()))]
    async fn resolve_batch(
        &self,
        req: Request<proto::ResolveBatchRequest>,
    ) -> Result<Response<proto::ResolveBatchResponse>, Status> {
        let requests = &req.get_ref().requests;
        check_batch(requests.len(), self.settings.batch_limit)?;
        let records = self.resolve_all(requests).await?;
        Ok(Response::new(proto::ResolveBatchResponse { records }))
    }

    #[instrument(skip_all)]
    async fn list_containers(
        &self,
        req: Request<proto::ListContainersRequest>,
    ) -> Result<Response<proto::ListContainersResponse>, Status> {
        let containers = self.containers(req.get_ref());
        Ok(Response::new(proto::ListContainersResponse { containers }))
    }

    #[instrument(skip_all, fields(container = %req.get_ref().container_id))]
    async fn list_processes(
        &self,
        req: Request<proto::ListProcessesRequest>,
    ) -> Result<Response<proto::ListProcessesResponse>, Status> {
        let processes = self.processes(req.get_ref())?;
        Ok(Response::new(proto::ListProcessesResponse { processes }))
    }

    type WatchStream = WatchStream;

    #[instrument(skip_all)]
    async fn watch(
        &self,
        _req: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let stream: WatchStream = Box::pin(PidmapService::watch(self));
        Ok(Response::new(stream))
    }

    #[instrument(skip_all)]
    async fn who_am_i(
        &self,
        req: Request<proto::WhoAmIRequest>,
    ) -> Result<Response<proto::ProcessRecord>, Status> {
        let record = self.who_is(req.extensions().get::<Peer>()).await?;
        Ok(Response::new(record))
    }

    #[instrument(skip_all)]
    async fn status(
        &self,
        _req: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        Ok(Response::new(PidmapService::status(self)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
