//! pidmap as an NRI plugin: the runtime's own account of every pod and container, from
//! containerd 2.x (on by default), containerd 1.7 (on request) and CRI-O, before runc
//! creates the container.
//!
//! [`wire`] is the protocol; [`session`] one connection: register, answer `Configure` with
//! the lifecycle events pidmap reads, take `Synchronize` and then every event, and answer
//! each at once without adjusting anything — a slow or failed plugin must never delay or
//! fail a pod. [`plugin`] is the agent's task: it keeps a session up and writes what the
//! runtime tells into the container store.

pub(crate) mod plugin;
pub(crate) mod wire;

use std::path::Path;

use prost::Message as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::UnixStream,
};
use tracing::debug;

use wire::{
    ConfigureRequest, ConfigureResponse, Decoder, Empty, Event, PLUGIN_SERVICE,
    PLUGIN_SERVICE_CONN, PodAndContainer, RUNTIME_SERVICE, RUNTIME_SERVICE_CONN,
    RegisterPluginRequest, Request, Response, Status, SynchronizeRequest, SynchronizeResponse,
    TYPE_REQUEST, TYPE_RESPONSE, WireError,
};

/// The name pidmap registers under.
pub(crate) const PLUGIN_NAME: &str = "pidmap";
/// Its index: where it is called among plugins. Late: it only reads.
pub(crate) const PLUGIN_INDEX: &str = "99";
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;
/// The stream id of pidmap's one call (RegisterPlugin); a ttRPC client's ids are odd.
const REGISTER_STREAM: u32 = 1;
/// gRPC's UNIMPLEMENTED, for calls to another service than the plugin's.
const UNIMPLEMENTED: i32 = 12;

/// The events pidmap subscribes to: pods and containers coming and going, and the init
/// pid once a container started.
pub(crate) const EVENTS: [Event; 8] = [
    Event::RunPodSandbox,
    Event::StopPodSandbox,
    Event::RemovePodSandbox,
    Event::CreateContainer,
    Event::PostCreateContainer,
    Event::PostStartContainer,
    Event::StopContainer,
    Event::RemoveContainer,
];

/// What the runtime told the plugin.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// `Configure`: who the runtime is.
    Configured { runtime: String, version: String },
    /// One part of `Synchronize` (`more` when parts follow).
    Synchronize(SynchronizeRequest),
    /// A lifecycle event (`CreateContainer` and `StopContainer` included).
    Event {
        event: Event,
        pod: Option<Box<wire::PodSandbox>>,
        container: Option<Box<wire::Container>>,
    },
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionEnd {
    #[error("cannot connect to the NRI socket {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the NRI connection failed")]
    Io(#[from] std::io::Error),
    #[error("the runtime sent what NRI does not allow")]
    Wire(#[from] WireError),
    #[error("the runtime refused the registration: {message} (code {code})")]
    Refused { code: i32, message: String },
    #[error("the runtime closed the NRI connection")]
    Closed,
    #[error("the runtime is shutting down")]
    Shutdown,
}

/// Runs one NRI session on `socket`: registers, then hands every update to `sink` and
/// answers the runtime at once, telling `answered` how long each answer took (from the
/// request decoded to the answer written). Returns when the connection ends; the caller
/// reconnects. `sink` must not block: the runtime waits for the answer, which comes after it.
pub(crate) async fn session(
    socket: &Path,
    mut sink: impl FnMut(Update),
    mut answered: impl FnMut(std::time::Duration),
) -> Result<(), SessionEnd> {
    let mut stream = UnixStream::connect(socket)
        .await
        .map_err(|source| SessionEnd::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    let register = Request {
        service: RUNTIME_SERVICE.into(),
        method: "RegisterPlugin".into(),
        payload: RegisterPluginRequest {
            plugin_name: PLUGIN_NAME.into(),
            plugin_idx: PLUGIN_INDEX.into(),
        }
        .encode_to_vec()
        .into(),
        timeout_nano: 0,
    };
    stream
        .write_all(&wire::encode(
            RUNTIME_SERVICE_CONN,
            REGISTER_STREAM,
            TYPE_REQUEST,
            &register.encode_to_vec(),
        )?)
        .await?;
    let mut decoder = Decoder::default();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(SessionEnd::Closed);
        }
        decoder.feed(&buf[..n]);
        while let Some(message) = decoder.next_message()? {
            match (message.conn, message.kind) {
                (RUNTIME_SERVICE_CONN, TYPE_RESPONSE) if message.stream == REGISTER_STREAM => {
                    let response = Response::decode(message.data).unwrap_or_default();
                    if let Some(status) = response.status.filter(|s| s.code != 0) {
                        return Err(SessionEnd::Refused {
                            code: status.code,
                            message: status.message,
                        });
                    }
                }
                (PLUGIN_SERVICE_CONN, TYPE_REQUEST) => {
                    let started = std::time::Instant::now();
                    let (reply, end) = answer(&message.data, &mut sink);
                    stream
                        .write_all(&wire::encode(
                            PLUGIN_SERVICE_CONN,
                            message.stream,
                            TYPE_RESPONSE,
                            &reply.encode_to_vec(),
                        )?)
                        .await?;
                    answered(started.elapsed());
                    if end {
                        return Err(SessionEnd::Shutdown);
                    }
                }
                // Anything else (data frames, responses to nothing) is not for pidmap.
                _ => {}
            }
        }
    }
}

/// The answer to one request of the runtime, and whether the session ends after it.
///
/// NRI fails a container's creation when a plugin answers `CreateContainer` with an error
/// status (a timeout or a closed connection only drops the plugin), so no request that may
/// be part of a container's life is ever answered with an error: what pidmap cannot decode,
/// or does not serve, gets an empty answer — "no adjustment" — and is logged. Only a
/// malformed `Synchronize` is refused (the runtime then drops the plugin, which reconnects),
/// and a call to another service than the plugin's.
pub fn answer(data: &[u8], sink: &mut impl FnMut(Update)) -> (Response, bool) {
    let ok = |payload: Vec<u8>| Response {
        status: None,
        payload: payload.into(),
    };
    let Ok(request) = Request::decode(data) else {
        debug!("malformed ttRPC request from the runtime; answered empty");
        return (ok(Vec::new()), false);
    };
    if request.service != PLUGIN_SERVICE {
        return (error(UNIMPLEMENTED, "unknown service"), false);
    }
    let payload = request.payload;
    match request.method.as_str() {
        "Configure" => {
            let c = ConfigureRequest::decode(payload).unwrap_or_default();
            sink(Update::Configured {
                runtime: c.runtime_name,
                version: c.runtime_version,
            });
            let events = Event::mask(&EVENTS);
            (ok(ConfigureResponse { events }.encode_to_vec()), false)
        }
        "Synchronize" => match SynchronizeRequest::decode(payload) {
            Ok(sync) => {
                let more = sync.more;
                sink(Update::Synchronize(sync));
                (ok(SynchronizeResponse { more }.encode_to_vec()), false)
            }
            Err(_) => (error(3, "malformed SynchronizeRequest"), false),
        },
        // No adjustment, no update, no eviction: every field of the answers is empty.
        "CreateContainer" => (event(Event::CreateContainer, &payload, sink), false),
        "StopContainer" => (event(Event::StopContainer, &payload, sink), false),
        "UpdateContainer" => (ok(Vec::new()), false),
        "StateChange" => match PodAndContainer::decode(payload) {
            Ok(change) => {
                if let Some(event) = event_of(change.event) {
                    sink(Update::Event {
                        event,
                        pod: change.pod.map(Box::new),
                        container: change.container.map(Box::new),
                    });
                }
                (ok(Empty {}.encode_to_vec()), false)
            }
            Err(_) => {
                debug!("malformed NRI StateChange; answered empty");
                (ok(Empty {}.encode_to_vec()), false)
            }
        },
        "Shutdown" => (ok(Empty {}.encode_to_vec()), true),
        method => {
            debug!(method, "NRI method pidmap does not serve; answered empty");
            (ok(Vec::new()), false)
        }
    }
}

/// Hands a `CreateContainer`/`StopContainer` request on and answers it empty.
fn event(event: Event, payload: &[u8], sink: &mut impl FnMut(Update)) -> Response {
    // Their requests carry the pod and container in fields 1 and 2.
    #[derive(Clone, PartialEq, prost::Message)]
    struct PodContainer {
        #[prost(message, optional, tag = "1")]
        pod: Option<wire::PodSandbox>,
        #[prost(message, optional, tag = "2")]
        container: Option<wire::Container>,
    }
    match PodContainer::decode(payload) {
        Ok(r) => {
            sink(Update::Event {
                event,
                pod: r.pod.map(Box::new),
                container: r.container.map(Box::new),
            });
            Response {
                status: None,
                payload: Default::default(),
            }
        }
        Err(_) => {
            debug!(?event, "malformed NRI request; answered empty");
            Response {
                status: None,
                payload: Default::default(),
            }
        }
    }
}

fn event_of(value: i32) -> Option<Event> {
    EVENTS
        .into_iter()
        .chain([
            Event::StartContainer,
            Event::UpdateContainer,
            Event::PostUpdateContainer,
        ])
        .find(|e| *e as i32 == value)
}

fn error(code: i32, message: &str) -> Response {
    Response {
        status: Some(Status {
            code,
            message: message.into(),
        }),
        payload: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, payload: Vec<u8>) -> Vec<u8> {
        Request {
            service: PLUGIN_SERVICE.into(),
            method: method.into(),
            payload: payload.into(),
            timeout_nano: 0,
        }
        .encode_to_vec()
    }

    #[test]
    fn configure_subscribes_to_the_lifecycle_events() {
        let mut seen = Vec::new();
        let configure = ConfigureRequest {
            runtime_name: "containerd".into(),
            runtime_version: "2.1.9".into(),
            registration_timeout: 5000,
            request_timeout: 2000,
        };
        let (reply, end) = answer(&request("Configure", configure.encode_to_vec()), &mut |u| {
            seen.push(u);
        });
        assert!(!end && reply.status.is_none());
        let events = ConfigureResponse::decode(reply.payload)
            .expect("response")
            .events;
        // Bits 1 << (event - 1): events 1-5, 7, 10 and 11.
        assert_eq!(events, 0b110_0101_1111, "{events:b}");
        assert_eq!(
            seen,
            [Update::Configured {
                runtime: "containerd".into(),
                version: "2.1.9".into()
            }]
        );
    }

    #[test]
    fn create_container_is_answered_empty_and_handed_on() {
        let pod = wire::PodSandbox {
            id: "sandbox".into(),
            name: "web-0".into(),
            uid: "uid-1".into(),
            namespace: "shop".into(),
            ..Default::default()
        };
        let container = wire::Container {
            id: "c1".into(),
            pod_sandbox_id: "sandbox".into(),
            name: "app".into(),
            linux: Some(wire::LinuxContainer {
                cgroups_path: "kubepods-besteffort-poduid_1.slice:cri-containerd:c1".into(),
            }),
            ..Default::default()
        };
        let mut payload = Vec::new();
        prost::encoding::message::encode(1, &pod, &mut payload);
        prost::encoding::message::encode(2, &container, &mut payload);
        let mut seen = Vec::new();
        let (reply, end) = answer(&request("CreateContainer", payload), &mut |u| {
            seen.push(u);
        });
        assert!(!end && reply.status.is_none() && reply.payload.is_empty());
        assert_eq!(
            seen,
            [Update::Event {
                event: Event::CreateContainer,
                pod: Some(Box::new(pod)),
                container: Some(Box::new(container))
            }]
        );
    }

    /// The runtime's side of a session, scripted over a real Unix socket: registration,
    /// Configure, one CreateContainer, Shutdown.
    #[tokio::test]
    async fn a_session_registers_configures_answers_and_ends_on_shutdown() {
        let dir = crate::cgroup::testutil::TempDir::new("nri");
        let path = dir.path().join("nri.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let runtime = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut decoder = Decoder::default();
            let mut buf = vec![0u8; 4096];
            let mut next = async |conn: &mut UnixStream, decoder: &mut Decoder| loop {
                if let Some(m) = decoder.next_message().expect("valid frames") {
                    return m;
                }
                let n = conn.read(&mut buf).await.expect("read");
                assert!(n > 0, "the plugin hung up");
                decoder.feed(&buf[..n]);
            };
            let register = next(&mut conn, &mut decoder).await;
            assert_eq!(
                (register.conn, register.kind),
                (RUNTIME_SERVICE_CONN, TYPE_REQUEST)
            );
            let registration = Request::decode(register.data).expect("request");
            assert_eq!(
                (registration.service.as_str(), registration.method.as_str()),
                (RUNTIME_SERVICE, "RegisterPlugin")
            );
            let who = RegisterPluginRequest::decode(registration.payload).expect("register");
            assert_eq!(
                (who.plugin_name.as_str(), who.plugin_idx.as_str()),
                (PLUGIN_NAME, PLUGIN_INDEX)
            );
            let ok = Response {
                status: None,
                payload: Default::default(),
            }
            .encode_to_vec();
            let frame = wire::encode(RUNTIME_SERVICE_CONN, register.stream, TYPE_RESPONSE, &ok);
            conn.write_all(&frame.expect("encode"))
                .await
                .expect("write");
            let mut replies = Vec::new();
            for (stream, method, payload) in [
                (1, "Configure", ConfigureRequest::default().encode_to_vec()),
                (3, "CreateContainer", Vec::new()),
                (5, "Shutdown", Vec::new()),
            ] {
                let call = request(method, payload);
                let frame = wire::encode(PLUGIN_SERVICE_CONN, stream, TYPE_REQUEST, &call);
                conn.write_all(&frame.expect("encode"))
                    .await
                    .expect("write");
                let reply = next(&mut conn, &mut decoder).await;
                assert_eq!(
                    (reply.conn, reply.stream, reply.kind),
                    (PLUGIN_SERVICE_CONN, stream, TYPE_RESPONSE)
                );
                replies.push(Response::decode(reply.data).expect("response"));
            }
            replies
        });
        let mut seen = Vec::new();
        let mut answers = 0;
        let end = session(
            &path,
            |u| {
                seen.push(u);
            },
            |_| answers += 1,
        )
        .await;
        assert_eq!(answers, 3, "Configure, CreateContainer, Shutdown");
        assert!(matches!(end, Err(SessionEnd::Shutdown)), "{end:?}");
        let replies = runtime.await.expect("runtime");
        assert!(replies.iter().all(|r| r.status.is_none()));
        assert_eq!(
            ConfigureResponse::decode(replies[0].payload.clone())
                .expect("configure")
                .events,
            Event::mask(&EVENTS)
        );
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(matches!(
            seen[1],
            Update::Event {
                event: Event::CreateContainer,
                ..
            }
        ));
    }

    /// NRI fails a container's creation on an error status: nothing that may be part of a
    /// container's life gets one, whatever the runtime sends.
    #[test]
    fn unknown_methods_and_garbage_are_answered_empty_never_with_an_error() {
        let mut seen = Vec::new();
        let mut sink = |u| seen.push(u);
        for data in [
            request("ValidateContainerAdjustment", Vec::new()),
            request("CreateContainer", b"\x0a\xff\xff".to_vec()),
            request("StopContainer", b"\x12\x05ab".to_vec()),
            request("StateChange", b"\xff".to_vec()),
            b"\xff\xff\xff".to_vec(),
        ] {
            let (reply, end) = answer(&data, &mut sink);
            assert!(reply.status.is_none(), "{data:?}: {reply:?}");
            assert!(!end);
        }
        assert!(seen.is_empty(), "nothing malformed is handed on: {seen:?}");
        // A malformed Synchronize is refused (the runtime drops the plugin, which
        // reconnects), and so is another service.
        let mut sink = |_| {};
        assert!(
            answer(&request("Synchronize", b"\xff".to_vec()), &mut sink)
                .0
                .status
                .is_some()
        );
        let other = Request {
            service: "other.Service".into(),
            method: "CreateContainer".into(),
            payload: Default::default(),
            timeout_nano: 0,
        };
        assert_eq!(
            answer(&other.encode_to_vec(), &mut sink)
                .0
                .status
                .map(|s| s.code),
            Some(UNIMPLEMENTED)
        );
        assert!(answer(&request("Shutdown", Vec::new()), &mut sink).1);
    }
}
