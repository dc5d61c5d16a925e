//! NRI's wire: one Unix-socket connection multiplexed into two logical ones, each carrying
//! ttRPC, whose messages are protobuf.
//!
//! - **Multiplexing** (NRI's `pkg/net/multiplex`): the trunk carries frames of an 8-byte
//!   header — connection id and payload length, both `u32` big-endian — and the payload, a
//!   piece of that connection's byte stream. Connection 1 carries the plugin's service (the
//!   runtime calls the plugin), connection 2 the runtime's (the plugin registers itself).
//! - **ttRPC** (containerd's `ttrpc`): on each connection, messages of a 10-byte header —
//!   length (`u32` BE, of the data only), stream id (`u32` BE; odd for the client's calls),
//!   type (1 request, 2 response, 3 data) and flags — and the data: a [`Request`] or a
//!   [`Response`], whose `payload` is the method's message.
//!
//! What a peer can make the agent buffer is bounded here: a mux frame's payload at
//! [`MAX_MUX_PAYLOAD`], a ttRPC message at [`MAX_TTRPC_MESSAGE`] (the limits NRI and ttRPC
//! use themselves), and the bytes waiting for the rest of a message at one message. A frame
//! or message over its bound is an error that ends the connection, never an allocation.
//!
//! The protobuf messages are written here from NRI's and ttRPC's published field numbers,
//! with only the fields pidmap reads or must send; unknown fields are skipped by prost.

use std::collections::HashMap;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};

/// Mux connection id of the plugin's service (the runtime is the client).
pub(crate) const PLUGIN_SERVICE_CONN: u32 = 1;
/// Mux connection id of the runtime's service (the plugin is the client).
pub(crate) const RUNTIME_SERVICE_CONN: u32 = 2;

/// Bytes of a mux frame's header.
pub(crate) const MUX_HEADER: usize = 8;
/// Bytes of a ttRPC message's header.
pub(crate) const TTRPC_HEADER: usize = 10;
/// The largest ttRPC message data ttRPC itself accepts (4 MiB).
pub const MAX_TTRPC_MESSAGE: usize = 4 << 20;
/// The largest mux payload NRI writes: one ttRPC message with its header.
pub const MAX_MUX_PAYLOAD: usize = TTRPC_HEADER + MAX_TTRPC_MESSAGE;

/// ttRPC message types.
pub(crate) const TYPE_REQUEST: u8 = 1;
pub(crate) const TYPE_RESPONSE: u8 = 2;

/// Why bytes from the runtime were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error(
        "NRI mux frame of {len} bytes for connection {conn}: over the {MAX_MUX_PAYLOAD}-byte limit"
    )]
    MuxFrameTooLarge { conn: u32, len: usize },
    #[error(
        "ttRPC message of {len} bytes on connection {conn}: over the {MAX_TTRPC_MESSAGE}-byte limit"
    )]
    MessageTooLarge { conn: u32, len: usize },
    #[error("NRI mux frame for unknown connection {conn}")]
    UnknownConnection { conn: u32 },
}

/// One ttRPC message received on a mux connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub conn: u32,
    pub stream: u32,
    pub kind: u8,
    pub flags: u8,
    pub data: Bytes,
}

/// Splits the trunk's bytes into mux frames, and each connection's bytes into ttRPC
/// messages. Feed it what the socket gives, in any pieces; take messages as they complete.
#[derive(Debug, Default)]
pub struct Decoder {
    trunk: BytesMut,
    conns: HashMap<u32, BytesMut>,
}

impl Decoder {
    /// Adds bytes read from the trunk.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.trunk.extend_from_slice(bytes);
    }

    /// The next complete ttRPC message, `Ok(None)` when more bytes are needed.
    ///
    /// # Errors
    ///
    /// A frame or message over its limit, or a frame for a connection other than the two
    /// NRI uses: the connection must be closed.
    pub fn next_message(&mut self) -> Result<Option<Message>, WireError> {
        loop {
            // A message already complete on a connection comes first.
            for (&conn, buf) in &mut self.conns {
                if let Some(message) = take_message(conn, buf)? {
                    return Ok(Some(message));
                }
            }
            // Else one more mux frame, if the trunk holds a whole one.
            if self.trunk.len() < MUX_HEADER {
                return Ok(None);
            }
            let conn = u32::from_be_bytes(self.trunk[0..4].try_into().unwrap_or_default());
            let len = u32::from_be_bytes(self.trunk[4..8].try_into().unwrap_or_default()) as usize;
            if len > MAX_MUX_PAYLOAD {
                return Err(WireError::MuxFrameTooLarge { conn, len });
            }
            if conn != PLUGIN_SERVICE_CONN && conn != RUNTIME_SERVICE_CONN {
                return Err(WireError::UnknownConnection { conn });
            }
            // Nothing is reserved for what a header announces: buffers grow with what came.
            if self.trunk.len() < MUX_HEADER + len {
                return Ok(None);
            }
            self.trunk.advance(MUX_HEADER);
            let payload = self.trunk.split_to(len);
            let buf = self.conns.entry(conn).or_default();
            buf.extend_from_slice(&payload);
            // Bounded: a connection holds at most one partial message and one frame.
            if buf.len() > TTRPC_HEADER + MAX_TTRPC_MESSAGE + MAX_MUX_PAYLOAD {
                return Err(WireError::MessageTooLarge {
                    conn,
                    len: buf.len(),
                });
            }
        }
    }
}

/// A complete ttRPC message from the front of `buf`, if there is one.
fn take_message(conn: u32, buf: &mut BytesMut) -> Result<Option<Message>, WireError> {
    if buf.len() < TTRPC_HEADER {
        return Ok(None);
    }
    let len = u32::from_be_bytes(buf[0..4].try_into().unwrap_or_default()) as usize;
    if len > MAX_TTRPC_MESSAGE {
        return Err(WireError::MessageTooLarge { conn, len });
    }
    if buf.len() < TTRPC_HEADER + len {
        return Ok(None);
    }
    let stream = u32::from_be_bytes(buf[4..8].try_into().unwrap_or_default());
    let (kind, flags) = (buf[8], buf[9]);
    buf.advance(TTRPC_HEADER);
    let data = buf.split_to(len).freeze();
    Ok(Some(Message {
        conn,
        stream,
        kind,
        flags,
        data,
    }))
}

/// A ttRPC message as mux frames on the trunk (one frame: messages are far below the limit
/// NRI splits at, and a larger one is refused).
///
/// # Errors
///
/// [`WireError::MessageTooLarge`] for data over [`MAX_TTRPC_MESSAGE`].
pub(crate) fn encode(conn: u32, stream: u32, kind: u8, data: &[u8]) -> Result<Bytes, WireError> {
    if data.len() > MAX_TTRPC_MESSAGE {
        return Err(WireError::MessageTooLarge {
            conn,
            len: data.len(),
        });
    }
    let message = TTRPC_HEADER + data.len();
    let mut out = BytesMut::with_capacity(MUX_HEADER + message);
    out.put_u32(conn);
    out.put_u32(message as u32);
    out.put_u32(data.len() as u32);
    out.put_u32(stream);
    out.put_u8(kind);
    out.put_u8(0);
    out.put_slice(data);
    Ok(out.freeze())
}

/// ttRPC's request envelope.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Request {
    #[prost(string, tag = "1")]
    pub service: String,
    #[prost(string, tag = "2")]
    pub method: String,
    #[prost(bytes = "bytes", tag = "3")]
    pub payload: Bytes,
    #[prost(int64, tag = "4")]
    pub timeout_nano: i64,
}

/// ttRPC's response envelope.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {
    #[prost(message, optional, tag = "1")]
    pub status: Option<Status>,
    #[prost(bytes = "bytes", tag = "2")]
    pub payload: Bytes,
}

/// `google.rpc.Status`, as ttRPC carries it (code 0 is OK).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// NRI's service names (package `nri.pkg.api.v1alpha1`).
pub(crate) const PLUGIN_SERVICE: &str = "nri.pkg.api.v1alpha1.Plugin";
pub(crate) const RUNTIME_SERVICE: &str = "nri.pkg.api.v1alpha1.Runtime";

/// NRI's lifecycle events; a plugin subscribes with bit `1 << (event - 1)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Event {
    RunPodSandbox = 1,
    StopPodSandbox = 2,
    RemovePodSandbox = 3,
    CreateContainer = 4,
    PostCreateContainer = 5,
    StartContainer = 6,
    PostStartContainer = 7,
    UpdateContainer = 8,
    PostUpdateContainer = 9,
    StopContainer = 10,
    RemoveContainer = 11,
}

impl Event {
    /// The subscription mask of `events`.
    pub fn mask(events: &[Self]) -> i32 {
        events.iter().fold(0, |m, &e| m | (1 << (e as i32 - 1)))
    }
}

/// `Runtime.RegisterPlugin`'s request.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct RegisterPluginRequest {
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    /// Two digits: the plugin's place in the order the runtime calls plugins.
    #[prost(string, tag = "2")]
    pub plugin_idx: String,
}

/// An empty message (the answer to events and to registration).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Empty {}

/// `Plugin.Configure`'s request.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ConfigureRequest {
    #[prost(string, tag = "2")]
    pub runtime_name: String,
    #[prost(string, tag = "3")]
    pub runtime_version: String,
    /// Milliseconds.
    #[prost(int64, tag = "4")]
    pub registration_timeout: i64,
    /// Milliseconds.
    #[prost(int64, tag = "5")]
    pub request_timeout: i64,
}

/// `Plugin.Configure`'s answer: the events to send.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ConfigureResponse {
    #[prost(int32, tag = "2")]
    pub events: i32,
}

/// `Plugin.Synchronize`'s request: what the runtime has, perhaps in several parts.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SynchronizeRequest {
    #[prost(message, repeated, tag = "1")]
    pub pods: Vec<PodSandbox>,
    #[prost(message, repeated, tag = "2")]
    pub containers: Vec<Container>,
    #[prost(bool, tag = "3")]
    pub more: bool,
}

/// `Plugin.Synchronize`'s answer: no updates; `more` says the plugin takes more parts.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SynchronizeResponse {
    #[prost(bool, tag = "2")]
    pub more: bool,
}

/// The request of `CreateContainer` and `StopContainer`, and (as `StateChangeEvent`, with
/// the event in field 1) of every other event: a pod and perhaps one of its containers.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PodAndContainer {
    #[prost(int32, tag = "1")]
    pub event: i32,
    #[prost(message, optional, tag = "2")]
    pub pod: Option<PodSandbox>,
    #[prost(message, optional, tag = "3")]
    pub container: Option<Container>,
}

/// A pod, as NRI describes it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandbox {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub uid: String,
    #[prost(string, tag = "4")]
    pub namespace: String,
    #[prost(map = "string, string", tag = "5")]
    pub labels: HashMap<String, String>,
    #[prost(map = "string, string", tag = "6")]
    pub annotations: HashMap<String, String>,
    #[prost(message, optional, tag = "8")]
    pub linux: Option<LinuxPodSandbox>,
    #[prost(uint32, tag = "9")]
    pub pid: u32,
}

/// A pod's Linux details.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxPodSandbox {
    #[prost(string, tag = "3")]
    pub cgroup_parent: String,
    #[prost(string, tag = "4")]
    pub cgroups_path: String,
}

/// A container, as NRI describes it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Container {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub pod_sandbox_id: String,
    #[prost(string, tag = "3")]
    pub name: String,
    /// 1 created, 2 paused, 3 running, 4 stopped (0 unknown).
    #[prost(int32, tag = "4")]
    pub state: i32,
    #[prost(map = "string, string", tag = "5")]
    pub labels: HashMap<String, String>,
    #[prost(map = "string, string", tag = "6")]
    pub annotations: HashMap<String, String>,
    #[prost(message, optional, tag = "11")]
    pub linux: Option<LinuxContainer>,
    #[prost(uint32, tag = "12")]
    pub pid: u32,
    /// Nanoseconds since the epoch (NRI 0.10 and later; 0 before).
    #[prost(int64, tag = "14")]
    pub created_at: i64,
    /// NRI 0.12.2 and later.
    #[prost(message, optional, tag = "22")]
    pub image: Option<Image>,
}

/// A container's image (NRI 0.12.2 and later).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Image {
    #[prost(string, tag = "1")]
    pub name: String,
}

/// A container's Linux details.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LinuxContainer {
    #[prost(string, tag = "5")]
    pub cgroups_path: String,
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    fn frames(message: &Bytes) -> Vec<Message> {
        let mut d = Decoder::default();
        d.feed(message);
        std::iter::from_fn(|| d.next_message().expect("valid")).collect()
    }

    #[test]
    fn a_message_survives_encoding_and_any_split() {
        let request = Request {
            service: PLUGIN_SERVICE.into(),
            method: "Configure".into(),
            payload: Bytes::from_static(b"\x12\x0acontainerd"),
            timeout_nano: 2_000_000_000,
        };
        let wire = encode(
            PLUGIN_SERVICE_CONN,
            3,
            TYPE_REQUEST,
            &request.encode_to_vec(),
        )
        .expect("encode");
        let got = frames(&wire);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].conn, got[0].stream, got[0].kind),
            (1, 3, TYPE_REQUEST)
        );
        assert_eq!(
            Request::decode(got[0].data.clone()).expect("decode"),
            request
        );
        // Byte by byte, and in two mux frames (NRI may split one message).
        let mut d = Decoder::default();
        let mut seen = Vec::new();
        for b in wire.iter() {
            d.feed(&[*b]);
            while let Some(m) = d.next_message().expect("valid") {
                seen.push(m);
            }
        }
        assert_eq!(seen, got);
        let message = &wire[MUX_HEADER..];
        let (a, b) = message.split_at(5);
        let mut d = Decoder::default();
        for part in [a, b] {
            d.feed(&PLUGIN_SERVICE_CONN.to_be_bytes());
            d.feed(&(part.len() as u32).to_be_bytes());
            d.feed(part);
        }
        assert_eq!(d.next_message().expect("valid"), Some(got[0].clone()));
        assert_eq!(d.next_message().expect("valid"), None);
    }

    #[test]
    fn oversized_frames_and_messages_are_refused_before_any_allocation() {
        let mut d = Decoder::default();
        d.feed(&1u32.to_be_bytes());
        d.feed(&u32::MAX.to_be_bytes());
        assert!(matches!(
            d.next_message(),
            Err(WireError::MuxFrameTooLarge { .. })
        ));
        let mut d = Decoder::default();
        let mut message = Vec::new();
        message.extend_from_slice(&u32::MAX.to_be_bytes());
        message.extend_from_slice(&[0, 0, 0, 1, 1, 0]);
        d.feed(&2u32.to_be_bytes());
        d.feed(&(message.len() as u32).to_be_bytes());
        d.feed(&message);
        assert!(matches!(
            d.next_message(),
            Err(WireError::MessageTooLarge { conn: 2, .. })
        ));
        let mut d = Decoder::default();
        d.feed(&7u32.to_be_bytes());
        d.feed(&0u32.to_be_bytes());
        assert_eq!(
            d.next_message(),
            Err(WireError::UnknownConnection { conn: 7 })
        );
    }

    #[test]
    fn the_subscription_mask_follows_nri() {
        assert_eq!(Event::mask(&[Event::RunPodSandbox]), 1);
        assert_eq!(
            Event::mask(&[Event::CreateContainer, Event::RemoveContainer]),
            8 | 1024
        );
    }
}
