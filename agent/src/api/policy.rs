//! What every API method requires, in one place — readiness, who may call
//! it — and the one wrapper that enforces it and counts every request
//! (method, status code, time): [`PolicyLayer`] around the gRPC service;
//! the HTTP routes ([`super::http`]) are the same methods and ask the same
//! [`Policy`]. The handlers in [`super::service`] only answer.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use tonic::codegen::http;
use tonic::{Status, server::NamedService};
use tower::Service;

use super::peer::Peer;
use crate::state::State;

/// The methods of `pidmap.v1.Pidmap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Resolve,
    ResolveBatch,
    ListContainers,
    ListProcesses,
    Watch,
    WhoAmI,
    Status,
}

impl Method {
    /// Every method.
    pub const ALL: [Self; 7] = [
        Self::Resolve,
        Self::ResolveBatch,
        Self::ListContainers,
        Self::ListProcesses,
        Self::Watch,
        Self::WhoAmI,
        Self::Status,
    ];

    /// The method's name, as in the `.proto` and the metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Resolve => "Resolve",
            Self::ResolveBatch => "ResolveBatch",
            Self::ListContainers => "ListContainers",
            Self::ListProcesses => "ListProcesses",
            Self::Watch => "Watch",
            Self::WhoAmI => "WhoAmI",
            Self::Status => "Status",
        }
    }

    /// The method a gRPC request path (`/pidmap.v1.Pidmap/Resolve`) calls.
    pub fn from_grpc_path(path: &str) -> Option<Self> {
        let name = path
            .strip_prefix('/')?
            .strip_prefix(super::proto::pidmap_server::SERVICE_NAME)?
            .strip_prefix('/')?;
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Whether the method answers only once the agent is ready (Status
    /// always answers: it says whether the agent is ready).
    pub fn needs_ready(self) -> bool {
        self != Self::Status
    }

    /// Whether any peer may call it, also with `restrict_peers` (WhoAmI
    /// tells callers only about themselves; Status only counts).
    pub fn open_to_all(self) -> bool {
        matches!(self, Self::WhoAmI | Self::Status)
    }
}

/// Who may call what, and when.
#[derive(Clone)]
pub(crate) struct Policy {
    state: Arc<State>,
    /// Peers other than root and `allowed_gid` get only the methods open
    /// to all.
    restrict_peers: bool,
    allowed_gid: Option<u32>,
}

impl Policy {
    pub(crate) fn new(state: Arc<State>, restrict_peers: bool, allowed_gid: Option<u32>) -> Self {
        Self {
            state,
            restrict_peers,
            allowed_gid,
        }
    }

    /// Whether a peer with credentials `peer` may call `method` now.
    /// `allowed_gid` admits its members as the kernel counts them: the
    /// primary group and every supplementary group.
    pub(crate) fn check(&self, method: Method, peer: Option<&Peer>) -> Result<(), Status> {
        if self.restrict_peers && !method.open_to_all() {
            let allowed = peer.is_some_and(|p| {
                p.is_root() || self.allowed_gid.is_some_and(|gid| p.in_group(gid))
            });
            if !allowed {
                return Err(Status::permission_denied(
                    "restrict_peers is on: only root and the socket's group may resolve other processes; WhoAmI and Status are open to all",
                ));
            }
        }
        if method.needs_ready() && !self.state.is_ready() {
            return Err(Status::unavailable(if self.state.stalled() {
                "pidmap's process tracker has stopped applying kernel events; the agent is unhealthy and should be restarted"
            } else {
                "pidmap is starting: the process table is not seeded yet; retry shortly"
            }));
        }
        Ok(())
    }

    /// Counts a request to `method` that ended with `code`.
    pub(crate) fn record(&self, method: Method, code: tonic::Code, started: Instant) {
        self.state
            .metrics()
            .record_request(method.name(), code, started.elapsed());
    }
}

/// Wraps the gRPC service in [`PolicyService`].
#[derive(Clone)]
pub(crate) struct PolicyLayer {
    policy: Policy,
}

impl PolicyLayer {
    pub(crate) fn new(policy: Policy) -> Self {
        Self { policy }
    }
}

impl<S> tower::Layer<S> for PolicyLayer {
    type Service = PolicyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PolicyService {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The gRPC service behind the [`Policy`]: refused requests never reach
/// it, and every request is counted by method and status code.
#[derive(Clone)]
pub(crate) struct PolicyService<S> {
    inner: S,
    policy: Policy,
}

impl<S: NamedService> NamedService for PolicyService<S> {
    const NAME: &'static str = S::NAME;
}

type Response = http::Response<tonic::body::Body>;

impl<S, B> Service<http::Request<B>> for PolicyService<S>
where
    S: Service<http::Request<B>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let Some(method) = Method::from_grpc_path(req.uri().path()) else {
            // Not one of ours (the router answers UNIMPLEMENTED).
            return Box::pin(self.inner.call(req));
        };
        let policy = self.policy.clone();
        if let Err(status) = policy.check(method, req.extensions().get::<Peer>()) {
            policy.record(method, status.code(), started);
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        let answer = self.inner.call(req);
        Box::pin(async move {
            let response = answer.await?;
            policy.record(method, code_of(&response), started);
            Ok(response)
        })
    }
}

/// The status a response carries at its start: errors come back
/// trailers-only, with the status in the headers (and, from tonic, in the
/// extensions); an answer's own status follows its body, and is OK unless
/// a stream fails later.
fn code_of(response: &Response) -> tonic::Code {
    if let Some(status) = response.extensions().get::<Status>() {
        return status.code();
    }
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32)
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::*;
    use crate::{cgroup::CgroupPathCache, metrics::Metrics, state::ProcessTable};

    fn policy(restrict: bool) -> (Policy, Arc<State>) {
        let (state, _, _) = State::new(
            ProcessTable::new(1, NonZeroUsize::MIN),
            CgroupPathCache::new(1),
            Arc::new(Metrics::default()),
        );
        (Policy::new(Arc::clone(&state), restrict, Some(1234)), state)
    }

    #[test]
    fn methods_are_found_by_their_grpc_path() {
        for m in Method::ALL {
            let path = format!("/pidmap.v1.Pidmap/{}", m.name());
            assert_eq!(Method::from_grpc_path(&path), Some(m));
        }
        assert_eq!(Method::from_grpc_path("/grpc.health.v1.Health/Check"), None);
        assert_eq!(Method::from_grpc_path("/pidmap.v1.Pidmap/Nope"), None);
    }

    #[test]
    fn unavailable_until_ready_except_status() {
        let (p, state) = policy(false);
        for m in Method::ALL {
            let r = p.check(m, None);
            if m == Method::Status {
                assert!(r.is_ok());
            } else {
                assert_eq!(r.unwrap_err().code(), tonic::Code::Unavailable, "{m:?}");
            }
        }
        state.set_ready();
        assert!(Method::ALL.iter().all(|&m| p.check(m, None).is_ok()));
    }

    #[test]
    fn restricted_peers_are_let_in_by_any_of_their_groups() {
        let (p, state) = policy(true);
        state.set_ready();
        let peer = |uid, gid, groups: &[u32]| Peer::with_credentials(Some(9), uid, gid, groups);
        let code = |peer: &Peer| p.check(Method::Resolve, Some(peer)).err().map(|s| s.code());
        assert_eq!(code(&peer(1000, 1234, &[])), None, "primary group");
        assert_eq!(
            code(&peer(1000, 100, &[27, 1234])),
            None,
            "supplementary group"
        );
        assert_eq!(code(&peer(0, 0, &[])), None, "root");
        assert_eq!(
            code(&peer(1000, 100, &[27])),
            Some(tonic::Code::PermissionDenied),
            "not a member"
        );
    }

    #[test]
    fn restricted_peers_without_credentials_get_only_the_open_methods() {
        let (p, state) = policy(true);
        state.set_ready();
        for m in Method::ALL {
            let r = p.check(m, None);
            if m.open_to_all() {
                assert!(r.is_ok(), "{m:?}");
            } else {
                assert_eq!(r.unwrap_err().code(), tonic::Code::PermissionDenied);
            }
        }
    }
}
