//! The API socket: created race-free, bounded, and served until shutdown.
//!
//! The socket is bound inside a private directory (mode 0700) next to the
//! final path, given its final mode and group there, and renamed into
//! place, so no client ever sees it with other permissions. A socket left
//! by a dead agent is replaced; a live agent on the path makes this one
//! exit with a clear error.

use std::{
    future::Future as _,
    io,
    os::unix::fs::{chown, DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{UnixListener, UnixStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, UdsConnectInfo};
use tracing::{debug, info, warn};

use super::{
    policy::{Policy, PolicyLayer},
    proto::{pidmap_server::PidmapServer, FILE_DESCRIPTOR_SET},
    service::{PidmapService, ServiceSettings},
};
use crate::state::State;

/// How long connections may take to finish once the agent shuts down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Socket and connection limits.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub socket: PathBuf,
    /// File mode of the socket (default 0660).
    pub mode: u32,
    /// Group owning the socket.
    pub gid: Option<u32>,
    pub max_connections: usize,
    pub max_streams_per_connection: u32,
    /// Largest request message, in bytes.
    pub max_request_bytes: usize,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Longest a unary request may take.
    pub request_timeout: Duration,
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
pub fn bind(settings: &ServerSettings) -> Result<UnixListener, ServerError> {
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
pub async fn serve(
    listener: UnixListener,
    state: Arc<State>,
    settings: ServerSettings,
    shutdown: CancellationToken,
) {
    let policy = Policy::new(
        Arc::clone(&state),
        settings.service.restrict_peers,
        settings.service.allowed_gid,
    );
    let service = PidmapService::new(state, settings.service.clone(), shutdown.clone());
    let pidmap = tower::Layer::layer(
        &PolicyLayer::new(policy),
        PidmapServer::new(service)
            .max_decoding_message_size(settings.max_request_bytes)
            .max_encoding_message_size(64 * 1024 * 1024),
    );
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status(
            super::proto::pidmap_server::SERVICE_NAME,
            tonic_health::ServingStatus::Serving,
        )
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1();
    let incoming = Incoming {
        listener,
        permits: Arc::new(Semaphore::new(settings.max_connections)),
        idle: settings.idle_timeout,
        pause: None,
    };
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(settings.max_streams_per_connection))
        .timeout(settings.request_timeout)
        .http2_keepalive_interval(Some(settings.idle_timeout / 3))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)));
    let router = builder.add_service(pidmap).add_service(health);
    let router = match reflection {
        Ok(reflection) => router.add_service(reflection),
        Err(error) => {
            warn!(%error, "gRPC reflection unavailable");
            router
        }
    };
    info!(socket = %settings.socket.display(), "API listening");
    let stop = shutdown.clone();
    let serving = router.serve_with_incoming_shutdown(incoming, stop.cancelled_owned());
    // At shutdown, connections get a moment to finish what they are doing
    // (Watch streams end at once); then the server is dropped regardless.
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = serving => if let Err(error) = served {
            warn!(%error, "API server stopped with an error");
        },
        () = deadline => warn!(
            grace = ?SHUTDOWN_GRACE,
            "API connections still open after the shutdown grace; closing them"
        ),
    }
    let _ = std::fs::remove_file(&settings.socket);
    debug!("API server stopped");
}

/// Accepted connections, at most `permits` at once; one over the limit is
/// closed at once.
struct Incoming {
    listener: UnixListener,
    permits: Arc<Semaphore>,
    idle: Duration,
    /// After an accept error (EMFILE, …): wait before accepting again.
    pause: Option<Pin<Box<Sleep>>>,
}

impl Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(pause) = this.pause.as_mut() {
                if pause.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.pause = None;
            }
            let (stream, _) = match this.listener.poll_accept(cx) {
                Poll::Ready(Ok(accepted)) => accepted,
                Poll::Ready(Err(e)) => {
                    // EMFILE and friends: report, accept again a bit later.
                    warn!(error = %e, "accept failed; pausing 100 ms");
                    this.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(100))));
                    continue;
                }
                Poll::Pending => return Poll::Pending,
            };
            match Arc::clone(&this.permits).try_acquire_owned() {
                Ok(permit) => {
                    return Poll::Ready(Some(Ok(Conn {
                        inner: stream,
                        _permit: permit,
                        idle: this.idle,
                        deadline: Box::pin(tokio::time::sleep(this.idle)),
                    })))
                }
                Err(_) => {
                    debug!("connection limit reached; closing a new connection");
                    drop(stream);
                }
            }
        }
    }
}

/// A connection holding a permit, closed after `idle` without traffic.
struct Conn {
    inner: UnixStream,
    _permit: OwnedSemaphorePermit,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl Conn {
    fn touch(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }
}

impl Connected for Conn {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
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
