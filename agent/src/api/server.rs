//! The API socket: created race-free, bounded, and served until shutdown,
//! gRPC and HTTP/1.1 on one listener.
//!
//! The socket is bound inside a private directory (mode 0700) next to the
//! final path, given its final mode and group there, and renamed into
//! place, so no client ever sees it with other permissions. A socket left
//! by a dead agent is replaced; a live agent on the path makes this one
//! exit with a clear error.

use std::{
    convert::Infallible,
    future::Future,
    io,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _, chown},
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{UnixListener, UnixStream},
    sync::Semaphore,
    task::JoinSet,
    time::{Instant, Sleep},
};
use tokio_util::sync::CancellationToken;
use tonic::{Status, service::Routes};
use tracing::{debug, info, warn};

use super::{
    admission::{Admission, Admitted, Budgets, Refused},
    authority::{AuthorityStream, MAX_HEADER_LIST, Reports, STREAM_TAG},
    budget::{ConnLedger, CutOff, Metered},
    http::{Body, HttpApi, HttpError},
    peer::Peer,
    policy::{Policy, PolicyLayer},
    proto::{FILE_DESCRIPTOR_SET, pidmap_server::PidmapServer},
    service::{PidmapService, ServiceSettings},
};
use crate::{
    metrics::{CutOff as CutOffReason, Metrics},
    state::State,
};

/// How long connections may take to finish once the agent shuts down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How long an HTTP/1.1 client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Room for an HTTP/1.1 request's headers beside its target.
const HEADER_ROOM: usize = 16 * 1024;
/// How long a refused connection is kept to tell its client why.
const REFUSAL_TIME: Duration = Duration::from_secs(1);
/// Most refused connections being told why at once; further ones are
/// closed without a word.
const MAX_REFUSALS: usize = 16;
/// Refused connections are logged at most this often.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Socket and connection limits.
#[derive(Debug, Clone)]
pub(crate) struct ServerSettings {
    pub socket: PathBuf,
    /// File mode of the socket (default 0660).
    pub mode: u32,
    /// Group owning the socket.
    pub gid: Option<u32>,
    pub max_connections: usize,
    /// Most connections of one peer (see [`Admission`]).
    pub max_connections_per_peer: usize,
    pub max_streams_per_connection: u32,
    /// Largest request message, in bytes.
    pub max_request_bytes: usize,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Longest a unary request may take.
    pub request_timeout: Duration,
    /// procfs, where a peer's start time is read when it connects.
    pub proc_root: PathBuf,
    /// Bytes of responses held for clients that have not read them.
    pub budgets: Budgets,
    pub service: ServiceSettings,
}

/// Why the API socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another agent answers on the socket path.
    #[error("another pidmap agent is already serving on {path}; stop it or pick another --socket")]
    InUse { path: PathBuf },
    /// The socket could not be created.
    #[error("cannot create the API socket {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Creates the listening socket. See the module docs.
pub(crate) fn bind(settings: &ServerSettings) -> Result<UnixListener, ServerError> {
    let path = &settings.socket;
    let err = |source| ServerError::Create {
        path: path.clone(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(err)?;
    if path.exists() {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(ServerError::InUse { path: path.clone() }),
            Err(e) => debug!(error = %e, "replacing a stale socket"),
        }
    }
    let private = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("pidmap.sock"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(err)?;
    let result = (|| {
        let tmp = private.join("sock");
        let listener = std::os::unix::net::UnixListener::bind(&tmp)?;
        // Still private: nobody can reach it before it has its final mode.
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(settings.mode))?;
        if let Some(gid) = settings.gid {
            chown(&tmp, None, Some(gid))?;
        }
        std::fs::rename(&tmp, path)?;
        listener.set_nonblocking(true)?;
        UnixListener::from_std(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    result.map_err(err)
}

/// Serves the API on `listener` until `shutdown`, then removes the socket.
///
/// Each connection is first admitted by the [`Admission`] limits, by its
/// peer's credentials; a refused one is answered `RESOURCE_EXHAUSTED` (HTTP
/// 429) saying which limit, for [`REFUSAL_TIME`], then closed.
///
/// One listener speaks both protocols: hyper-util's `auto` connection reads
/// the first bytes, and the HTTP/2 preface makes a connection HTTP/2, any
/// other start HTTP/1.1. On either, requests with a gRPC content type go to
/// the gRPC routes (pidmap, health, reflection), all others to
/// [`HttpApi`]. Every connection passes through an [`AuthorityStream`]
/// first, so that stock gRPC clients that send a socket path as authority
/// are served.
pub(crate) async fn serve(
    listener: UnixListener,
    state: Arc<State>,
    settings: ServerSettings,
    shutdown: CancellationToken,
) {
    let admission = Admission::new(
        settings.max_connections,
        settings.max_connections_per_peer,
        settings.budgets,
        state.metrics_handle(),
    );
    let metrics = state.metrics_handle();
    let app = App::new(state, &settings, &shutdown).await;
    let builder = connection_builder(&settings);
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let mut refusal_log = RefusalLog::default();
    let reports = Arc::new(Reports::default());
    let mut connections = JoinSet::new();
    info!(socket = %settings.socket.display(), "API listening");
    loop {
        let stream = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(_) = connections.join_next() => continue,
            accepted = crate::util::accept_next(&shutdown, "API", || listener.accept()) => match accepted {
                Some((stream, _)) => stream,
                None => break,
            },
        };
        let peer = match Peer::of(&stream, &settings.proc_root) {
            Ok(peer) => Some(peer),
            Err(error) => {
                debug!(%error, "cannot read a peer's credentials");
                None
            }
        };
        let (admitted, refused, idle) = match admission.admit(peer.as_ref()) {
            Ok(admitted) => (Some(admitted), None, settings.idle_timeout),
            Err(refused) => {
                refusal_log.report(&refused);
                // Tell the client why, unless many are being told already.
                let Ok(permit) = Arc::clone(&refusals).try_acquire_owned() else {
                    continue;
                };
                (None, Some((refused, permit)), REFUSAL_TIME)
            }
        };
        let ledger = admitted.as_ref().map(|a| Arc::clone(a.ledger()));
        let io = AuthorityStream::new(
            Conn::new(stream, admitted, idle),
            Arc::clone(&reports),
            ledger.clone(),
        );
        let service = ConnService {
            app: app.clone(),
            peer,
            refused: refused
                .as_ref()
                .map(|(refused, _)| Arc::from(refused.to_string())),
            ledger,
            metrics: Arc::clone(&metrics),
        };
        let served = serve_connection(builder.clone(), TokioIo::new(io), service, shutdown.clone());
        match refused {
            None => connections.spawn(served),
            Some((_, permit)) => connections.spawn(async move {
                let _ = tokio::time::timeout(REFUSAL_TIME, served).await;
                drop(permit);
            }),
        };
    }
    // No new connections; the ones open finish what they are doing
    // (Watch streams end at once) within the grace, or are closed.
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            grace = ?SHUTDOWN_GRACE,
            open = connections.len(),
            "API connections still open after the shutdown grace; closing them"
        );
        connections.shutdown().await;
    }
    let _ = std::fs::remove_file(&settings.socket);
    debug!("API server stopped");
}

/// The HTTP/1.1 and HTTP/2 settings every connection is served with.
fn connection_builder(settings: &ServerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(HEADER_READ_TIMEOUT)
        // Room for a request target of max_request_bytes (a longer one is
        // answered 413 by the HTTP API) and its headers; hyper's minimum
        // is 8 KiB.
        .max_buf_size((settings.max_request_bytes + HEADER_ROOM).max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        // The authority rewriter bounds what it decodes by the same limit.
        .max_header_list_size(MAX_HEADER_LIST as u32)
        .max_concurrent_streams(settings.max_streams_per_connection)
        .keep_alive_interval(settings.idle_timeout / 3)
        .keep_alive_timeout(Duration::from_secs(10));
    builder
}

/// Serves one connection until it ends; at shutdown, asks it to finish
/// (HTTP/2 GOAWAY, HTTP/1.1 close after the current response).
async fn serve_connection(
    builder: auto::Builder<TokioExecutor>,
    io: TokioIo<AuthorityStream<Conn>>,
    service: ConnService,
    shutdown: CancellationToken,
) {
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = served {
        debug!(error = %crate::util::chain(&*error), "API connection ended with an error");
    }
}

/// What every request is answered by: the gRPC routes and the HTTP API,
/// over one service.
#[derive(Clone)]
struct App {
    grpc: Routes,
    http: Arc<HttpApi>,
    request_timeout: Duration,
}

impl App {
    async fn new(
        state: Arc<State>,
        settings: &ServerSettings,
        shutdown: &CancellationToken,
    ) -> Self {
        let policy = Policy::new(
            Arc::clone(&state),
            settings.service.restrict_peers,
            settings.service.allowed_gid,
        );
        let service = Arc::new(PidmapService::new(
            state,
            settings.service.clone(),
            shutdown.clone(),
        ));
        let pidmap = tower::Layer::layer(
            &PolicyLayer::new(policy.clone()),
            PidmapServer::from_arc(Arc::clone(&service))
                .max_decoding_message_size(settings.max_request_bytes)
                .max_encoding_message_size(pidmap_client::MAX_RESPONSE_BYTES),
        );
        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_service_status(
                super::proto::pidmap_server::SERVICE_NAME,
                tonic_health::ServingStatus::Serving,
            )
            .await;
        let mut grpc = Routes::new(pidmap).add_service(health);
        match tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .build_v1()
        {
            Ok(reflection) => grpc = grpc.add_service(reflection),
            Err(error) => warn!(%error, "gRPC reflection unavailable"),
        }
        Self {
            grpc: grpc.prepare(),
            http: Arc::new(HttpApi::new(service, policy, settings.max_request_bytes)),
            request_timeout: settings.request_timeout,
        }
    }

    /// Answers a request: gRPC by content type, everything else over HTTP;
    /// within the request timeout.
    async fn answer(self, req: http::Request<hyper::body::Incoming>) -> http::Response<Body> {
        if is_grpc(&req) {
            let answer = tower::ServiceExt::oneshot(self.grpc, req.map(Body::new));
            match tokio::time::timeout(self.request_timeout, answer).await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => Status::cancelled("request timed out").into_http(),
            }
        } else {
            match tokio::time::timeout(self.request_timeout, self.http.handle(req)).await {
                Ok(response) => response,
                Err(_) => {
                    HttpError::from(Status::deadline_exceeded("request timed out")).response()
                }
            }
        }
    }
}

/// The service of one connection: every request carries the peer's
/// credentials (for `WhoAmI` and `restrict_peers`), and every response
/// body is [`Metered`] against the peer's budget of unread bytes (a peer
/// over it gets `RESOURCE_EXHAUSTED`, HTTP 429). On a refused connection,
/// every request is answered with why it was refused.
#[derive(Clone)]
struct ConnService {
    app: App,
    peer: Option<Peer>,
    refused: Option<Arc<str>>,
    /// The connection's unread bytes (admitted connections).
    ledger: Option<Arc<ConnLedger>>,
    metrics: Arc<Metrics>,
}

/// Answers `req` with `status`, as gRPC or as HTTP.
fn refusal<B>(req: &http::Request<B>, status: Status) -> http::Response<Body> {
    if is_grpc(req) {
        status.into_http()
    } else {
        HttpError::from(status).response()
    }
}

/// The stream id the authority rewriter tagged a request with (the last
/// tag: a client's own come before it), removing every tag.
fn take_stream_tag<B>(req: &mut http::Request<B>) -> Option<u32> {
    let tag = req
        .headers()
        .get_all(STREAM_TAG)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok()?.parse().ok());
    req.headers_mut().remove(STREAM_TAG);
    tag
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for ConnService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, mut req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let stream = take_stream_tag(&mut req);
        if let Some(refused) = &self.refused {
            let status = Status::resource_exhausted(refused.as_ref());
            return Box::pin(std::future::ready(Ok(refusal(&req, status))));
        }
        let Some(ledger) = &self.ledger else {
            // Admitted connections have a ledger; refused ones return above.
            let status = Status::internal("connection without a ledger");
            return Box::pin(std::future::ready(Ok(refusal(&req, status))));
        };
        if let Some(exhausted) = ledger.full() {
            self.metrics.count_cut_off(CutOffReason::UnreadBytes);
            let status = Status::resource_exhausted(exhausted.to_string());
            return Box::pin(std::future::ready(Ok(refusal(&req, status))));
        }
        let account = match (req.version(), stream) {
            (http::Version::HTTP_2, Some(stream)) => ledger.open(stream),
            (http::Version::HTTP_2, None) => ledger.untracked(),
            _ => ledger.http1(),
        };
        let cut = if is_grpc(&req) {
            CutOff::Grpc
        } else if req.uri().path() == "/v1/watch" {
            CutOff::NdJson
        } else {
            CutOff::Abort
        };
        if let Some(peer) = &self.peer {
            req.extensions_mut().insert(peer.clone());
        }
        let app = self.app.clone();
        let metrics = Arc::clone(&self.metrics);
        Box::pin(async move {
            let response = app.answer(req).await;
            Ok(response.map(|body| Body::new(Metered::new(body, account, cut, metrics))))
        })
    }
}

/// Whether `req` is a gRPC request (by its content type).
fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"))
}

/// Logs refused connections, at most once per [`REFUSAL_LOG_INTERVAL`],
/// with how many were refused since the last line.
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    fn report(&mut self, refused: &Refused) {
        self.unlogged += 1;
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < REFUSAL_LOG_INTERVAL)
        {
            return;
        }
        warn!(
            reason = %refused,
            refused = self.unlogged,
            "API connections refused (counted in pidmap_api_connections_refused_total)"
        );
        self.last = Some(now);
        self.unlogged = 0;
    }
}

/// A connection, counted while it lives if it was admitted, closed after
/// `idle` without traffic.
struct Conn {
    inner: UnixStream,
    _admitted: Option<Admitted>,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl Conn {
    fn new(inner: UnixStream, admitted: Option<Admitted>, idle: Duration) -> Self {
        Self {
            inner,
            _admitted: admitted,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn touch(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "idle connection closed",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
