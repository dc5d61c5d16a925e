//! Docker's own metadata for its containers, from the Docker Engine API.
//!
//! Docker runs its containers through containerd, in namespace `moby`, but records
//! neither the image name nor the container's labels there: containerd shows an empty
//! image and one label of Docker's own. The containerd watcher, when it fetches a `moby`
//! container's metadata (events and lists alike), asks Docker for them here
//! (`GET /containers/{id}/json` over Docker's Unix socket, HTTP/1.1) and folds them into
//! the container it writes; it stays the container store's only writer.
//!
//! Off the request path, bounded and optional: each lookup has a short timeout and a
//! bounded answer, and a container's answer is cached (a Docker container's image and
//! labels never change) in a bounded LRU, so a resync asks again only for containers it
//! has no answer for yet. When the socket is absent (no Docker on this node) or Docker
//! fails, the container is written without them, the lookup is counted by outcome
//! (`pidmap_docker_lookups_total`) and further lookups wait a few seconds, so a hung
//! Docker cannot stall the watcher for long; the next resync tries again.

use std::{
    collections::BTreeMap,
    num::NonZeroUsize,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::{Request, StatusCode, body::Bytes, client::conn::http1};
use hyper_util::rt::TokioIo;
use lru::LruCache;
use serde::Deserialize;
use tokio::net::UnixStream;
use tracing::{debug, info};

use crate::{
    metrics::{DockerLookup, Metrics},
    util::chain,
};

/// How long one lookup (connect, request, answer) may take.
pub(crate) const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest answer read (an inspect answer is a few KiB).
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// Containers whose answer is kept.
const CACHED: usize = 4096;
/// After a lookup that could not reach Docker or failed, how long further lookups are
/// skipped.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(10);

/// What Docker knows about one of its containers that containerd does not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DockerInfo {
    /// The image as the container was created from it (`Config.Image`, e.g.
    /// `nginx:1.27`), else the image id.
    pub image: String,
    /// The container's labels (`Config.Labels`).
    pub labels: BTreeMap<String, String>,
}

/// A lookup that gave no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LookupError {
    /// Nothing listens on the socket (no Docker on this node, or it is down).
    #[error("cannot connect to Docker at {socket}")]
    Unreachable {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Docker did not answer within [`LOOKUP_TIMEOUT`].
    #[error("Docker did not answer within {LOOKUP_TIMEOUT:?}")]
    Timeout,
    /// The HTTP exchange failed.
    #[error("HTTP exchange with Docker failed")]
    Http(#[source] hyper::Error),
    /// The answer could not be read whole (or was over 1 MiB).
    #[error("cannot read Docker's answer")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Docker answered with an error status.
    #[error("Docker answered {status}")]
    Status { status: StatusCode },
    /// The answer is not a container inspect answer.
    #[error("Docker's answer does not parse")]
    Parse(#[source] serde_json::Error),
    /// The request could not be built (an id with characters a path cannot hold).
    #[error("cannot ask Docker about container {id:?}")]
    BadId { id: String },
}

/// The parts of `GET /containers/{id}/json` that pidmap reads.
#[derive(Debug, Deserialize)]
struct Inspect {
    #[serde(rename = "Image", default)]
    image: Option<String>,
    #[serde(rename = "Config", default)]
    config: Option<InspectConfig>,
}

#[derive(Debug, Deserialize)]
struct InspectConfig {
    #[serde(rename = "Image", default)]
    image: Option<String>,
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
}

/// Parses an inspect answer.
pub(crate) fn parse_inspect(body: &[u8]) -> Result<DockerInfo, serde_json::Error> {
    let inspect: Inspect = serde_json::from_slice(body)?;
    let config = inspect.config;
    let configured = config.as_ref().and_then(|c| c.image.clone());
    let image = configured
        .filter(|i| !i.is_empty())
        .or(inspect.image)
        .unwrap_or_default();
    let labels = config.and_then(|c| c.labels).unwrap_or_default();
    Ok(DockerInfo { image, labels })
}

/// Whether `id` can go into a request path as it is (containerd ids are
/// `[A-Za-z0-9._-]`; Docker's are 64 hex digits).
fn path_safe(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The Docker Engine API client of the containerd watcher; see the [module docs](self).
pub(crate) struct Docker {
    socket: PathBuf,
    metrics: Arc<Metrics>,
    cache: Mutex<LruCache<String, Arc<DockerInfo>>>,
    /// Lookups wait until then after a failure.
    paused_until: Mutex<Option<Instant>>,
    /// Whether "not reachable" was logged at info since Docker last answered.
    said_unreachable: Mutex<bool>,
}

impl Docker {
    /// A client of the Docker Engine API at `socket` (it need not exist).
    pub(crate) fn new(socket: &Path, metrics: Arc<Metrics>) -> Self {
        Self {
            socket: socket.to_owned(),
            metrics,
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(CACHED).unwrap_or(NonZeroUsize::MIN),
            )),
            paused_until: Mutex::new(None),
            said_unreachable: Mutex::new(false),
        }
    }

    /// Docker's image and labels for container `id`: cached, or asked for; `None` when
    /// Docker does not know it, cannot be reached or failed (counted and logged).
    pub(crate) async fn info(&self, id: &str) -> Option<Arc<DockerInfo>> {
        if let Some(info) = lock(&self.cache).get(id) {
            return Some(Arc::clone(info));
        }
        if lock(&self.paused_until).is_some_and(|until| Instant::now() < until) {
            return None;
        }
        let answer = match tokio::time::timeout(LOOKUP_TIMEOUT, self.inspect(id)).await {
            Ok(answer) => answer,
            Err(_) => Err(LookupError::Timeout),
        };
        let outcome = match &answer {
            Ok(Some(_)) => DockerLookup::Found,
            Ok(None) => DockerLookup::NotFound,
            Err(LookupError::Unreachable { .. }) => DockerLookup::Unreachable,
            Err(_) => DockerLookup::Failed,
        };
        self.metrics.count_docker_lookup(outcome);
        match answer {
            Ok(found) => {
                if std::mem::take(&mut *lock(&self.said_unreachable)) {
                    info!(socket = %self.socket.display(), "Docker answers again");
                }
                let found = found.map(Arc::new);
                if let Some(info) = &found {
                    lock(&self.cache).put(id.to_owned(), Arc::clone(info));
                }
                found
            }
            Err(error) => {
                *lock(&self.paused_until) = Some(Instant::now() + PAUSE_AFTER_FAILURE);
                let first = !std::mem::replace(&mut *lock(&self.said_unreachable), true);
                if first {
                    info!(
                        socket = %self.socket.display(),
                        error = %chain(&error),
                        "Docker's image names and labels are not available; Docker containers (namespace moby) are listed without them"
                    );
                } else {
                    debug!(container = id, error = %chain(&error), "Docker lookup failed");
                }
                None
            }
        }
    }

    /// Forgets a deleted container's answer.
    pub(crate) fn forget(&self, id: &str) {
        lock(&self.cache).pop(id);
    }

    /// One `GET /containers/{id}/json`; `Ok(None)` when Docker has no such container.
    async fn inspect(&self, id: &str) -> Result<Option<DockerInfo>, LookupError> {
        if !path_safe(id) {
            return Err(LookupError::BadId { id: id.to_owned() });
        }
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| LookupError::Unreachable {
                    socket: self.socket.clone(),
                    source,
                })?;
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(LookupError::Http)?;
        let request = Request::get(format!("/containers/{id}/json"))
            .header(hyper::header::HOST, "docker")
            .body(Empty::<Bytes>::new())
            .map_err(|_| LookupError::BadId { id: id.to_owned() })?;
        let exchange = async move {
            let response = sender
                .send_request(request)
                .await
                .map_err(LookupError::Http)?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(LookupError::Body)?
                .to_bytes();
            Ok::<_, LookupError>((status, body))
        };
        tokio::pin!(exchange, connection);
        // The connection must be driven while the exchange runs; if it ends first (Docker
        // closed it), the exchange finishes with what arrived or with its error.
        let (status, body) = tokio::select! {
            biased;
            done = &mut exchange => done?,
            ended = &mut connection => {
                ended.map_err(LookupError::Http)?;
                exchange.await?
            }
        };
        match status {
            StatusCode::OK => parse_inspect(&body).map(Some).map_err(LookupError::Parse),
            StatusCode::NOT_FOUND => Ok(None),
            status => Err(LookupError::Status { status }),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from Docker 20.10's answer for `docker run --label team=infra
    /// localhost/busybox:dk /bin/sleep 1000`.
    const INSPECT: &str = r#"{"Id":"3971c08dfacd79c68917315485fbce5e80c995babc3e5834f4195c1dac6bab4b",
        "Created":"2026-12-01T19:00:44.374549616Z","Path":"/bin/sleep","Args":["1000"],
        "State":{"Status":"running","Running":true,"Pid":30083},
        "Image":"sha256:cbba7bfa0edc174fc770d34dc5a0e7758d6c78da443da13aed6fb6638eea359a",
        "Name":"/web1","HostConfig":{"NetworkMode":"none","CgroupParent":""},
        "Config":{"Hostname":"3971c08dfacd","Env":null,"Cmd":["/bin/sleep","1000"],
        "Image":"localhost/busybox:dk","Volumes":null,"Entrypoint":null,
        "Labels":{"team":"infra","com.example.tier":"web"}}}"#;

    #[test]
    fn inspect_answers_give_the_image_name_and_labels() {
        let info = parse_inspect(INSPECT.as_bytes()).unwrap();
        assert_eq!(info.image, "localhost/busybox:dk");
        assert_eq!(info.labels.len(), 2);
        assert_eq!(info.labels.get("team").map(String::as_str), Some("infra"));
    }

    #[test]
    fn missing_parts_fall_back_or_stay_empty() {
        // Created from an image id: Config.Image is empty, the id is what there is.
        let info = parse_inspect(br#"{"Image":"sha256:abc","Config":{"Image":"","Labels":null}}"#)
            .unwrap();
        assert_eq!(info.image, "sha256:abc");
        assert!(info.labels.is_empty());
        assert_eq!(parse_inspect(b"{}").unwrap(), DockerInfo::default());
        assert!(parse_inspect(b"not json").is_err());
        assert!(parse_inspect(br#"{"Config":{"Labels":{"a":1}}}"#).is_err());
    }

    #[test]
    fn only_plain_ids_go_into_a_path() {
        assert!(path_safe(
            "3971c08dfacd79c68917315485fbce5e80c995babc3e5834f4195c1dac6bab4b"
        ));
        assert!(path_safe("my-box_1.2"));
        for bad in ["", "../images/json", "a/b", "a?b", "a b", "a%2f"] {
            assert!(!path_safe(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn an_absent_socket_is_counted_and_pauses_lookups() {
        let metrics = Arc::new(Metrics::default());
        let docker = Docker::new(
            Path::new("/nonexistent/pidmap-test/docker.sock"),
            Arc::clone(&metrics),
        );
        assert_eq!(docker.info("abc").await, None);
        assert_eq!(docker.info("def").await, None, "paused: not asked");
        let counts = metrics.docker_lookups();
        assert_eq!(counts.unreachable, 1);
        assert_eq!(counts.found + counts.not_found + counts.failed, 0);
    }
}
