//! The metrics endpoint: `GET /metrics` over HTTP/1.1 answers with the
//! [`super::exposition`] module; any other path is 404.
//!
//! Bounded like everything else: at most [`MAX_CONNECTIONS`] connections
//! at once (more wait in the listen backlog), request headers within
//! [`MAX_REQUEST_BYTES`] and [`HEADER_TIMEOUT`], one request per
//! connection, and every connection closed after [`CONNECTION_TIMEOUT`]
//! whatever the client does.
//!
//! `Agent::start` binds it (`MetricsServer::bind`) and runs it as one of its tasks;
//! `tests/tests/metrics.rs` tries it from outside.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Bytes,
    header::{ALLOW, CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::exposition;

/// The metrics endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address could not be bound.
    #[error("cannot serve metrics on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The one path served.
pub(crate) const METRICS_PATH: &str = "/metrics";
/// Most connections served at once.
pub(crate) const MAX_CONNECTIONS: usize = 16;
/// Time a client has to send its request line and headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection may stay open, request and response included.
pub(crate) const CONNECTION_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest request head accepted (hyper's smallest read buffer).
pub(crate) const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Most request headers accepted.
const MAX_HEADERS: usize = 32;

/// The server's bounds; [`Limits::default`] holds the constants above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Most connections served at once.
    pub max_connections: usize,
    /// Time a client has to send its request head.
    pub header_timeout: Duration,
    /// Longest a connection may stay open.
    pub connection_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            header_timeout: HEADER_TIMEOUT,
            connection_timeout: CONNECTION_TIMEOUT,
        }
    }
}

/// A bound metrics listener, ready to [`run`](Self::run).
#[derive(Debug)]
pub(crate) struct MetricsServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    limits: Limits,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks a free port; see [`local_addr`](Self::local_addr)).
    pub(crate) async fn bind(addr: SocketAddr) -> Result<Self, MetricsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| MetricsError::Bind { addr, source })?;
        Ok(Self {
            listener,
            local_addr,
            limits: Limits::default(),
        })
    }

    /// Replaces the default bounds.
    #[cfg(test)]
    pub(crate) fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The address actually bound.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves `registry` until `shutdown`; open connections are closed
    /// then.
    pub(crate) async fn serve(self, registry: Arc<Registry>, shutdown: CancellationToken) {
        info!(addr = %self.local_addr, path = METRICS_PATH, "serving metrics");
        let permits = Arc::new(Semaphore::new(self.limits.max_connections.max(1)));
        let mut connections = JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            // Wait for a free slot before accepting: clients beyond the
            // limit wait in the kernel's backlog, not in our memory.
            let permit = tokio::select! {
                () = shutdown.cancelled() => break,
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_closed) => break,
                },
            };
            let Some((stream, peer)) =
                crate::util::accept_next(&shutdown, "metrics", || self.listener.accept()).await
            else {
                break;
            };
            connections.spawn(serve_connection(
                stream,
                peer,
                Arc::clone(&registry),
                self.limits,
                permit,
            ));
        }
        connections.shutdown().await;
        debug!("metrics server stopped");
    }
}

/// Serves one request on `stream`, then closes it. Holds `_permit` (a
/// connection slot) until done.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    registry: Arc<Registry>,
    limits: Limits,
    _permit: OwnedSemaphorePermit,
) {
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        std::future::ready(Ok::<_, Infallible>(respond(&req, &registry)))
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_REQUEST_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(false);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(limits.connection_timeout, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => debug!(%peer, %error, "metrics connection failed"),
        Err(_elapsed) => debug!(%peer, "metrics connection timed out"),
    }
}

/// The answer to `req`: the metrics, 404 for other paths, 405 for other
/// methods on [`METRICS_PATH`].
fn respond<B>(req: &Request<B>, registry: &Registry) -> Response<Full<Bytes>> {
    if req.uri().path() != METRICS_PATH {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match exposition::render(registry) {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(exposition::CONTENT_TYPE),
            );
            response
        }
        Err(std::fmt::Error) => {
            warn!("cannot render the metrics");
            text(StatusCode::INTERNAL_SERVER_ERROR, "cannot render metrics\n")
        }
    }
}

/// A short plain-text response.
fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests;
