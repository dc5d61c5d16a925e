//! Connecting to the agent, and its calls, typed.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use tonic::{
    Status, Streaming,
    transport::{Channel, Endpoint},
};

use crate::proto::{self, pidmap_client::PidmapClient};

/// Where the agent serves by default.
pub const DEFAULT_SOCKET: &str = "/run/pidmap/pidmap.sock";

/// The longest Unix socket path: `sun_path` holds 108 bytes with the NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// The environment variable naming the agent's socket, when set.
pub const SOCKET_ENV: &str = "PIDMAP_SOCKET";

/// The HTTP/2 `:authority` this client sends. A Unix socket has no host
/// name; `localhost` is what grpc-go and grpc-js send, and what every HTTP/2
/// server accepts (a socket path is not a valid authority).
pub const AUTHORITY: &str = "localhost";

/// Largest response message accepted: the agent's own limit for what it
/// sends (a full `ResolveBatch` or `ListProcesses` of a busy node is larger
/// than gRPC's 4 MiB default).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// How to reach the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The agent's Unix socket.
    pub socket: PathBuf,
    /// Longest a connection attempt may take.
    pub connect_timeout: Duration,
    /// Longest a call may take until its answer starts (a `Watch` stream
    /// itself may then last as long as it likes).
    pub request_timeout: Duration,
}

impl Settings {
    /// Settings for the agent at `socket`, with the default timeouts (5 s
    /// to connect, 30 s per call).
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }

    /// Settings for the socket `$PIDMAP_SOCKET` names, else
    /// [`DEFAULT_SOCKET`]: the discovery every pidmap tool uses (the CLI's
    /// `--socket` overrides both).
    pub fn from_env() -> Self {
        Self::new(
            std::env::var_os(SOCKET_ENV)
                .filter(|s| !s.is_empty())
                .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from),
        )
    }

    /// A gRPC channel to the agent, for any of the services it serves
    /// (`pidmap.v1.Pidmap`, gRPC health, reflection).
    pub async fn channel(&self) -> Result<Channel, ConnectError> {
        let len = self.socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(ConnectError::PathTooLong {
                socket: self.socket.clone(),
                len,
            });
        }
        let endpoint = Endpoint::from_static("http://localhost")
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout);
        debug_assert_eq!(endpoint.uri().host(), Some(AUTHORITY));
        let path = self.socket.clone();
        let connect = endpoint.connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }));
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(source)) => Err(ConnectError::Connect {
                socket: self.socket.clone(),
                source,
            }),
            Err(_) => Err(ConnectError::Timeout {
                socket: self.socket.clone(),
                timeout: self.connect_timeout,
            }),
        }
    }
}

impl Default for Settings {
    /// [`Settings::from_env`].
    fn default() -> Self {
        Self::from_env()
    }
}

/// Why the agent could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nothing answers on the socket, or this process may not open it.
    #[error("cannot connect to the pidmap agent at {}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    /// The connection did not complete in time.
    #[error("connecting to the pidmap agent at {} took over {timeout:?}", socket.display())]
    Timeout { socket: PathBuf, timeout: Duration },
    /// No Unix socket can have this path.
    #[error("the socket path {} is {len} bytes; a Unix socket path is at most {MAX_SOCKET_PATH} bytes", socket.display())]
    PathTooLong { socket: PathBuf, len: usize },
}

impl ConnectError {
    /// Whether the agent may simply not be running (or not on this
    /// socket, or not open to this process), rather than the request
    /// being impossible.
    pub fn may_be_unreachable(&self) -> bool {
        !matches!(self, Self::PathTooLong { .. })
    }
}

/// A connection to the agent and its calls. Cheap to clone: clones share
/// the connection (HTTP/2 multiplexes their calls).
#[derive(Debug, Clone)]
pub struct Client {
    grpc: PidmapClient<Channel>,
    socket: PathBuf,
}

impl Client {
    /// Connects to the agent `settings` names.
    pub async fn connect(settings: &Settings) -> Result<Self, ConnectError> {
        let channel = settings.channel().await?;
        Ok(Self {
            grpc: PidmapClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES),
            socket: settings.socket.clone(),
        })
    }

    /// The socket this client is connected to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The generated gRPC client, for what the typed calls do not cover.
    pub fn grpc(&mut self) -> &mut PidmapClient<Channel> {
        &mut self.grpc
    }

    /// The generated gRPC client, owned.
    pub fn into_grpc(self) -> PidmapClient<Channel> {
        self.grpc
    }

    /// One process. With `start_time` (field 22 of /proc/PID/stat), only
    /// that exact process answers; an unknown pid is a record in state
    /// `UNKNOWN`, not an error.
    pub async fn resolve(
        &mut self,
        pid: i64,
        start_time: Option<u64>,
    ) -> Result<proto::ProcessRecord, Status> {
        let request = proto::ResolveRequest { pid, start_time };
        Ok(self.grpc.resolve(request).await?.into_inner())
    }

    /// Many processes in one call, answered in request order (at most the
    /// agent's batch limit, 4096 by default).
    pub async fn resolve_batch(
        &mut self,
        pids: impl IntoIterator<Item = (i64, Option<u64>)>,
    ) -> Result<Vec<proto::ProcessRecord>, Status> {
        let requests = pids
            .into_iter()
            .map(|(pid, start_time)| proto::ResolveRequest { pid, start_time })
            .collect();
        let request = proto::ResolveBatchRequest { requests };
        Ok(self.grpc.resolve_batch(request).await?.into_inner().records)
    }

    /// Containers matching `filter` (every field optional).
    pub async fn list_containers(
        &mut self,
        filter: proto::ListContainersRequest,
    ) -> Result<Vec<proto::Container>, Status> {
        Ok(self
            .grpc
            .list_containers(filter)
            .await?
            .into_inner()
            .containers)
    }

    /// The live processes of one container; `namespace` is needed only
    /// when the id exists in several containerd namespaces.
    pub async fn list_processes(
        &mut self,
        container_id: impl Into<String>,
        namespace: Option<String>,
    ) -> Result<Vec<proto::ProcessRecord>, Status> {
        let request = proto::ListProcessesRequest {
            container_id: container_id.into(),
            runtime_namespace: namespace,
        };
        Ok(self
            .grpc
            .list_processes(request)
            .await?
            .into_inner()
            .processes)
    }

    /// A snapshot of every container and live process, then changes as
    /// they happen. [`Cache`](crate::Cache) keeps a map from it.
    pub async fn watch(&mut self) -> Result<Streaming<proto::WatchEvent>, Status> {
        Ok(self.grpc.watch(proto::WatchRequest {}).await?.into_inner())
    }

    /// The calling process's own record (from the socket's peer
    /// credentials).
    pub async fn who_am_i(&mut self) -> Result<proto::ProcessRecord, Status> {
        Ok(self
            .grpc
            .who_am_i(proto::WhoAmIRequest {})
            .await?
            .into_inner())
    }

    /// The agent's readiness and counters.
    pub async fn status(&mut self) -> Result<proto::StatusResponse, Status> {
        Ok(self
            .grpc
            .status(proto::StatusRequest {})
            .await?
            .into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_the_socket() {
        let s = Settings::new("/tmp/x.sock");
        assert_eq!(s.socket, PathBuf::from("/tmp/x.sock"));
        assert!(s.connect_timeout > Duration::ZERO && s.request_timeout > s.connect_timeout);
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_connect_error_naming_it() {
        let s = Settings::new("/nonexistent/pidmap-client-test.sock");
        let err = Client::connect(&s).await.expect_err("no agent there");
        assert!(matches!(err, ConnectError::Connect { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("/nonexistent/pidmap-client-test.sock")
        );
        assert!(err.may_be_unreachable());
    }

    #[tokio::test]
    async fn a_path_no_socket_can_have_is_said_so_before_connecting() {
        let long = format!("/tmp/{}", "x".repeat(120));
        let err = Client::connect(&Settings::new(&long))
            .await
            .expect_err("too long");
        assert!(
            matches!(err, ConnectError::PathTooLong { len: 125, .. }),
            "{err:?}"
        );
        assert!(err.to_string().ends_with("at most 107 bytes"), "{err}");
        assert!(!err.may_be_unreachable());
    }
}
