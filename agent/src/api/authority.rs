//! Lets stock gRPC clients in with their default options.
//!
//! A Unix socket has no host name, so gRPC clients make up an HTTP/2
//! `:authority`: grpc-go and grpc-js send `localhost`, but grpc-core
//! (Python, C++, Ruby, PHP) sends the socket path percent-encoded
//! (`tmp%2Fx.sock`) and grpc-java and grpc-swift the raw path
//! (`/tmp/x.sock`). Neither is a valid authority, and the HTTP/2 stack under
//! the server (h2, through hyper) answers every such request with
//! RST_STREAM(PROTOCOL_ERROR) before any service sees it; no setting of h2,
//! hyper or tonic changes that (grpc/grpc#38142, tonic#742).
//!
//! [`AuthorityStream`] sits between an accepted connection and HTTP/2 and
//! fixes the bytes instead. It follows the client's frames, decodes every
//! header block with an HPACK decoder that mirrors the client's dynamic
//! table, and when an `:authority` would be refused (the very check h2
//! makes: [`http::uri::Authority`]) it re-encodes the block with
//! `:authority: localhost`. Once one block is rewritten, h2's HPACK table no
//! longer mirrors the client's, so from then on every header block of that
//! connection is re-encoded, as literals that never touch the dynamic table.
//! Until then, blocks pass byte for byte: clients that send a valid
//! authority (tonic, grpc-go, grpc-js, curl) see no change at all. Anything
//! that is not HTTP/2 with prior knowledge (HTTP/1.1) passes untouched.
//!
//! What the server writes back passes untouched too; it is only scanned for
//! RST_STREAM(PROTOCOL_ERROR), so that a request h2 still refuses is
//! reported once, at warn, with what the client sent and the client-side
//! fix (h2 itself logs the reason at debug only).
//!
//! Bounds: a header frame larger than [`MAX_FRAME_PAYLOAD`] or a header block
//! larger than [`MAX_BLOCK`] is not interpreted (h2 refuses such frames
//! anyway); other frames stream through without being buffered. A block is
//! decoded in full (the HPACK table must stay in step), but its fields are
//! collected only up to [`MAX_HEADER_LIST`] decoded bytes — the limit h2
//! itself enforces, counted as h2 counts it (name, value and 32 bytes per
//! field): 64 KiB of HPACK that references a 4 KB table entry 60,000 times
//! decodes to 240 MB, and none of it is copied. A list over the limit
//! reaches h2 still over it (as it came, or re-encoded with a filler
//! field), so h2 refuses it as it would have; one over four times the limit
//! is one h2 closes the connection for.
//!
//! Stream tags: with [`Rewriter::tagging`] (the server's), every request's
//! header block gets one more field, `x-pidmap-stream: <its stream id>`
//! ([`STREAM_TAG`]), appended as a literal that leaves the HPACK table as it
//! is, so the budget of unread bytes ([`super::budget`]) can follow each
//! stream's response on the wire: [`AuthorityStream`] reports the DATA
//! bytes the server writes per stream, and the streams that end
//! (END_STREAM written, RST_STREAM either way), to the connection's
//! [`ConnLedger`].

use std::{
    collections::VecDeque,
    fmt::Write as _,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
};

use bytes::{Buf as _, BufMut as _, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::{debug, info, warn};

use super::budget::ConnLedger;

/// The client connection preface of HTTP/2 with prior knowledge.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of an HTTP/2 frame header.
const FRAME_HEADER: usize = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// RST_STREAM's error code for a malformed request.
const PROTOCOL_ERROR: u32 = 0x1;
/// The largest frame payload the server accepts (hyper's
/// SETTINGS_MAX_FRAME_SIZE, 16 KiB, the protocol's initial value, which the
/// server does not change) and the size of the frames written to it.
pub const MAX_FRAME_PAYLOAD: usize = 16_384;
/// The largest header block (HEADERS and CONTINUATION payloads) followed.
/// hyper refuses a decoded header list over 16 KiB; HPACK at its worst
/// (Huffman codes of 30 bits) needs under 4 times that.
pub const MAX_BLOCK: usize = 64 * 1024;
/// The largest decoded header list the server takes
/// (SETTINGS_MAX_HEADER_LIST_SIZE: hyper's default, which the server sets
/// explicitly to this), counted as h2 counts it: name, value and 32 bytes
/// per field.
pub const MAX_HEADER_LIST: usize = 16 * 1024;
/// h2 closes a connection whose header list decodes to more than this many
/// times [`MAX_HEADER_LIST`].
const ABUSE_FACTOR: usize = 4;
/// The field a request's stream id is given in (see the module docs).
pub const STREAM_TAG: &str = "x-pidmap-stream";
/// The field that keeps a re-encoded list over [`MAX_HEADER_LIST`] over it.
const FILLER: &[u8] = b"x-pidmap-over-size";
/// SETTINGS_HEADER_TABLE_SIZE of the server: the protocol's initial value,
/// which hyper keeps. The client's dynamic table can be no larger.
const HEADER_TABLE_SIZE: usize = 4096;
/// What replaces an `:authority` h2 would refuse.
pub const REPLACEMENT: &[u8] = b"localhost";
/// Requests remembered per connection, for the report of a refusal.
const RECENT: usize = 16;
/// Longest value shown in a report.
const SHOWN: usize = 200;

/// What was reported already, once per agent: shared by its connections.
#[derive(Debug, Default)]
pub struct Reports {
    rewritten: AtomicBool,
    refused: AtomicBool,
}

/// Why a connection must be closed.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    /// A header block could not be decoded after the connection's blocks
    /// were re-encoded: what follows cannot be forwarded in a form the
    /// server could decode (h2 would close the connection on it as well).
    #[error("undecodable HPACK header block on a connection whose headers are re-encoded: {0:?}")]
    Hpack(loona_hpack::decoder::DecoderError),
    /// A header list decoded to over four times the server's limit after
    /// the connection's blocks were re-encoded (h2 closes a connection for
    /// such a list).
    #[error(
        "a header list of over {0} decoded bytes on a connection whose headers are re-encoded"
    )]
    TooLarge(usize),
}

impl From<RewriteError> for io::Error {
    fn from(e: RewriteError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Where the reader is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the end of the connection preface.
    Preface,
    /// At a frame header.
    FrameHeader,
    /// This many payload bytes of a frame that is not a header frame
    /// still pass through.
    Payload(usize),
    /// The payload of a header frame, whose header is this, is awaited.
    HeaderPayload([u8; FRAME_HEADER]),
    /// Not HTTP/2 with prior knowledge, or no longer followed: bytes pass
    /// as they come.
    Transparent,
}

/// A header block being assembled from a HEADERS frame and its
/// CONTINUATION frames.
#[derive(Debug)]
struct Block {
    stream: u32,
    /// HEADERS' END_STREAM flag.
    end_stream: bool,
    /// HEADERS' priority fields, if it had any.
    priority: Option<[u8; 5]>,
    /// The HPACK fragments, without padding and priority.
    fragment: Vec<u8>,
    /// The frames exactly as they came.
    raw: Vec<u8>,
}

/// The client-to-server half, without I/O: bytes in, bytes out.
#[derive(Debug)]
pub struct Rewriter {
    phase: Phase,
    /// Input not yet turned into output (a partial frame header or header
    /// frame payload).
    input: BytesMut,
    block: Option<Block>,
    decoder: HpackDecoder,
    /// Since the first rewrite: every header block is re-encoded.
    reencoding: bool,
    /// The client sent the HTTP/2 preface.
    http2: bool,
    /// (stream, the request's pseudo-header fields), newest last.
    recent: VecDeque<(u32, String)>,
    /// Requests are tagged with their stream id.
    tagging: bool,
    /// The highest stream a request opened (a HEADERS block on a lower or
    /// equal one is trailers).
    last_stream: u32,
    /// Streams the client reset (RST_STREAM) since they were last taken.
    resets: Vec<u32>,
}

/// loona-hpack's decoder, which does not implement `Debug`.
struct HpackDecoder(loona_hpack::Decoder<'static>);

impl std::fmt::Debug for HpackDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HpackDecoder")
    }
}

impl Default for Rewriter {
    fn default() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Self {
            phase: Phase::Preface,
            input: BytesMut::new(),
            block: None,
            decoder: HpackDecoder(decoder),
            reencoding: false,
            http2: false,
            recent: VecDeque::new(),
            tagging: false,
            last_stream: 0,
            resets: Vec::new(),
        }
    }
}

/// What one header block held that matters here.
struct Decoded {
    /// The fields, as far as they fit in [`MAX_HEADER_LIST`].
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    /// The `:authority` h2 would refuse, if the block had one.
    refused: Option<Vec<u8>>,
    /// The decoded size as h2 counts it (saturating).
    size: usize,
}

impl Decoded {
    /// h2 refuses the request (431) for this list.
    fn over(&self) -> bool {
        self.size >= MAX_HEADER_LIST
    }

    /// h2 closes the connection for this list.
    fn way_over(&self) -> bool {
        self.size > MAX_HEADER_LIST * ABUSE_FACTOR
    }
}

/// A header field's size as h2 counts it against [`MAX_HEADER_LIST`].
fn field_size(name: usize, value: usize) -> usize {
    name.saturating_add(value).saturating_add(32)
}

impl Rewriter {
    /// A rewriter that also tags every request with its stream id (see the
    /// module docs).
    pub fn tagging() -> Self {
        Self {
            tagging: true,
            ..Self::default()
        }
    }

    /// Bytes of client input held back now: a partial frame, and the
    /// header block being assembled. At most [`MAX_BLOCK`] plus two frames.
    pub fn held(&self) -> usize {
        self.input.len()
            + self
                .block
                .as_ref()
                .map_or(0, |b| b.raw.len() + b.fragment.len())
    }

    /// The streams the client reset since the last call.
    pub fn take_resets(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.resets)
    }

    /// Whether the client is known not to speak HTTP/2: it did not start
    /// with the preface.
    pub fn is_not_http2(&self) -> bool {
        self.phase == Phase::Transparent && !self.http2
    }

    /// Whether bytes now pass untouched for good.
    pub fn is_transparent(&self) -> bool {
        self.phase == Phase::Transparent
    }

    /// Turns client bytes into what the server is given, appended to
    /// `out`; may keep a partial frame for the next call.
    pub fn feed(
        &mut self,
        bytes: &[u8],
        out: &mut BytesMut,
        reports: &Reports,
    ) -> Result<(), RewriteError> {
        if self.phase == Phase::Transparent {
            out.extend_from_slice(bytes);
            return Ok(());
        }
        self.input.extend_from_slice(bytes);
        loop {
            match self.phase {
                Phase::Transparent => {
                    out.extend_from_slice(&self.input.split());
                    return Ok(());
                }
                Phase::Preface => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input[..n] != PREFACE[..n] {
                        self.stop_following(out);
                        continue;
                    }
                    if n < PREFACE.len() {
                        return Ok(());
                    }
                    out.extend_from_slice(&self.input.split_to(n));
                    self.phase = Phase::FrameHeader;
                    self.http2 = true;
                }
                Phase::FrameHeader => {
                    let Some(head) = self.input.get(..FRAME_HEADER) else {
                        return Ok(());
                    };
                    let mut header = [0; FRAME_HEADER];
                    header.copy_from_slice(head);
                    let (len, kind) = (frame_len(&header), header[3]);
                    let header_frame = kind == HEADERS || kind == CONTINUATION;
                    if self.block.is_some() != (kind == CONTINUATION)
                        || (header_frame && len > MAX_FRAME_PAYLOAD)
                    {
                        // Another frame inside a header block, a
                        // CONTINUATION outside one, or a header frame larger
                        // than the server accepts: a connection error for
                        // h2, which it will find in these very bytes.
                        self.stop_following(out);
                        continue;
                    }
                    if kind == RST_STREAM {
                        self.resets.push(stream_id(&header));
                    }
                    if header_frame {
                        self.input.advance(FRAME_HEADER);
                        self.phase = Phase::HeaderPayload(header);
                    } else {
                        out.extend_from_slice(&self.input.split_to(FRAME_HEADER));
                        self.phase = Phase::Payload(len);
                    }
                }
                Phase::Payload(left) => {
                    let n = left.min(self.input.len());
                    out.extend_from_slice(&self.input.split_to(n));
                    if n < left {
                        self.phase = Phase::Payload(left - n);
                        return Ok(());
                    }
                    self.phase = Phase::FrameHeader;
                }
                Phase::HeaderPayload(header) => {
                    let len = frame_len(&header);
                    if self.input.len() < len {
                        return Ok(());
                    }
                    let payload = self.input.split_to(len);
                    self.phase = Phase::FrameHeader;
                    self.header_frame(header, &payload, out, reports)?;
                }
            }
        }
    }

    /// Stops following the stream: whatever is held back goes out as it
    /// came, and so does everything after it.
    fn stop_following(&mut self, out: &mut BytesMut) {
        if let Some(block) = self.block.take() {
            out.extend_from_slice(&block.raw);
        }
        out.extend_from_slice(&self.input.split());
        self.phase = Phase::Transparent;
    }

    /// A complete HEADERS or CONTINUATION frame.
    fn header_frame(
        &mut self,
        header: [u8; FRAME_HEADER],
        payload: &[u8],
        out: &mut BytesMut,
        reports: &Reports,
    ) -> Result<(), RewriteError> {
        let (kind, flags, stream) = (header[3], header[4], stream_id(&header));
        match (&mut self.block, kind) {
            (None, HEADERS) => match headers_payload(flags, payload) {
                Some((priority, fragment)) => {
                    let mut raw = Vec::with_capacity(FRAME_HEADER + payload.len());
                    raw.extend_from_slice(&header);
                    raw.extend_from_slice(payload);
                    self.block = Some(Block {
                        stream,
                        end_stream: flags & END_STREAM != 0,
                        priority,
                        fragment: fragment.to_vec(),
                        raw,
                    });
                }
                None => {
                    self.pass_malformed(&header, payload, out);
                    return Ok(());
                }
            },
            (Some(block), CONTINUATION)
                if block.stream == stream && block.raw.len() + payload.len() <= MAX_BLOCK =>
            {
                block.fragment.extend_from_slice(payload);
                block.raw.extend_from_slice(&header);
                block.raw.extend_from_slice(payload);
            }
            _ => {
                self.pass_malformed(&header, payload, out);
                return Ok(());
            }
        }
        if flags & END_HEADERS == 0 {
            return Ok(());
        }
        match self.block.take() {
            Some(block) => self.finish_block(block, out, reports),
            None => Ok(()),
        }
    }

    /// A frame h2 will refuse (bad padding, a CONTINUATION on another
    /// stream, an oversized block): it goes out as it came, and the rest
    /// is not followed.
    fn pass_malformed(&mut self, header: &[u8], payload: &[u8], out: &mut BytesMut) {
        // The block held back came before this frame; the unread input
        // comes after it.
        if let Some(block) = self.block.take() {
            out.extend_from_slice(&block.raw);
        }
        out.extend_from_slice(header);
        out.extend_from_slice(payload);
        self.stop_following(out);
    }

    /// A complete header block: passed as it came (tagged, when it opens a
    /// stream and the rewriter tags), or re-encoded.
    fn finish_block(
        &mut self,
        block: Block,
        out: &mut BytesMut,
        reports: &Reports,
    ) -> Result<(), RewriteError> {
        let opens = block.stream > self.last_stream;
        if opens {
            self.last_stream = block.stream;
        }
        let tag = (self.tagging && opens).then(|| block.stream.to_string());
        let decoded = match self.decode(&block.fragment, tag.as_deref()) {
            Ok(decoded) => decoded,
            Err(error) if !self.reencoding => {
                // h2's table still mirrors the client's: let h2 judge
                // these bytes itself (it will close the connection).
                debug!(
                    ?error,
                    "undecodable HPACK block; no longer following this connection"
                );
                out.extend_from_slice(&block.raw);
                self.stop_following(out);
                return Ok(());
            }
            Err(error) => return Err(RewriteError::Hpack(error)),
        };
        if decoded.way_over() {
            // h2 closes the connection for this block.
            if self.reencoding {
                return Err(RewriteError::TooLarge(MAX_HEADER_LIST * ABUSE_FACTOR));
            }
            debug!(
                stream = block.stream,
                "a header list far over the limit; no longer following this connection"
            );
            out.extend_from_slice(&block.raw);
            self.stop_following(out);
            return Ok(());
        }
        // A list over the limit is refused whole by h2: nothing in it is
        // rewritten or remembered.
        let refused = decoded.refused.as_ref().filter(|_| !decoded.over());
        if !decoded.over() {
            self.remember(block.stream, &decoded);
        }
        if let Some(original) = refused {
            let original = shown(original);
            if !reports.rewritten.swap(true, Ordering::Relaxed) {
                info!(
                    authority = %original,
                    "a gRPC client sent its socket path as :authority, which HTTP/2 refuses; \
                     serving it as `localhost` (reported once)"
                );
            } else {
                debug!(authority = %original, stream = block.stream, "rewrote :authority");
            }
        } else if !self.reencoding {
            match &tag {
                None => out.extend_from_slice(&block.raw),
                Some(tag) => {
                    let mut fragment = Vec::with_capacity(block.fragment.len() + 32);
                    fragment.extend_from_slice(&block.fragment);
                    encode_literal(&mut fragment, STREAM_TAG.as_bytes(), tag.as_bytes());
                    write_frames(out, &block, &fragment);
                }
            }
            return Ok(());
        }
        self.reencoding = true;
        let mut fragment = Vec::with_capacity(block.fragment.len() * 2);
        for (name, value) in &decoded.fields {
            encode_literal(&mut fragment, name, value);
        }
        if decoded.over() {
            // Still over the limit for h2, which refuses it (431).
            encode_literal(&mut fragment, FILLER, &[b'x'; MAX_HEADER_LIST]);
        }
        if let Some(tag) = &tag {
            encode_literal(&mut fragment, STREAM_TAG.as_bytes(), tag.as_bytes());
        }
        write_frames(out, &block, &fragment);
        Ok(())
    }

    /// Decodes a block, keeping its fields only while they fit in
    /// [`MAX_HEADER_LIST`] (counting the stream tag `tag` that will be
    /// added), so that what a peer sends cannot make it hold more.
    fn decode(
        &mut self,
        fragment: &[u8],
        tag: Option<&str>,
    ) -> Result<Decoded, loona_hpack::decoder::DecoderError> {
        let mut decoded = Decoded {
            fields: Vec::new(),
            refused: None,
            size: tag.map_or(0, |t| field_size(STREAM_TAG.len(), t.len())),
        };
        self.decoder.0.decode_with_cb(fragment, |name, value| {
            decoded.size = decoded
                .size
                .saturating_add(field_size(name.len(), value.len()));
            if decoded.over() {
                return;
            }
            if &*name == b":authority" && http::uri::Authority::try_from(&*value).is_err() {
                decoded.refused = Some(value.into_owned());
                decoded
                    .fields
                    .push((name.into_owned(), REPLACEMENT.to_vec()));
            } else {
                decoded.fields.push((name.into_owned(), value.into_owned()));
            }
        })?;
        Ok(decoded)
    }

    /// Keeps a request's pseudo-header fields (its original authority) for
    /// the report of a refusal.
    fn remember(&mut self, stream: u32, decoded: &Decoded) {
        let mut summary = String::new();
        for (name, value) in decoded.fields.iter().filter(|(n, _)| n.starts_with(b":")) {
            let value = match (name.as_slice(), &decoded.refused) {
                (b":authority", Some(original)) => original,
                _ => value,
            };
            let _ = write!(summary, "{}={:?} ", shown(name), shown(value));
        }
        if summary.is_empty() {
            return;
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        summary.pop();
        self.recent.push_back((stream, summary));
    }

    /// The request the client sent on `stream`, if it is remembered.
    fn request(&self, stream: u32) -> Option<&str> {
        self.recent
            .iter()
            .rev()
            .find(|(s, _)| *s == stream)
            .map(|(_, r)| r.as_str())
    }
}

/// A value as logs show it: lossy UTF-8, cut at [`SHOWN`] characters.
fn shown(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(SHOWN).collect()
}

fn frame_len(header: &[u8; FRAME_HEADER]) -> usize {
    (usize::from(header[0]) << 16) | (usize::from(header[1]) << 8) | usize::from(header[2])
}

fn stream_id(header: &[u8; FRAME_HEADER]) -> u32 {
    u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff
}

/// A HEADERS payload's priority fields and HPACK fragment; `None` when its
/// padding or priority fields do not fit (h2 closes the connection then).
fn headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let (pad, rest) = if flags & PADDED != 0 {
        let (&pad, rest) = payload.split_first()?;
        (usize::from(pad), rest)
    } else {
        (0, payload)
    };
    let (priority, rest) = if flags & PRIORITY != 0 {
        let fields = rest.get(..5)?;
        let mut priority = [0; 5];
        priority.copy_from_slice(fields);
        (Some(priority), rest.get(5..)?)
    } else {
        (None, rest)
    };
    let fragment = rest.get(..rest.len().checked_sub(pad)?)?;
    Some((priority, fragment))
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1); `high` holds
/// the bits above the prefix.
fn encode_integer(dst: &mut Vec<u8>, high: u8, n: u32, value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        dst.push(high | value as u8);
        return;
    }
    dst.push(high | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        dst.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    dst.push(rest as u8);
}

/// A "literal header field without indexing — new name" (RFC 7541
/// §6.2.2), both strings raw (not Huffman-coded): a field that leaves the
/// receiver's dynamic table as it is.
fn encode_literal(dst: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    dst.push(0x00);
    for s in [name, value] {
        encode_integer(dst, 0x00, 7, s.len());
        dst.extend_from_slice(s);
    }
}

/// Writes `fragment` as HEADERS and CONTINUATION frames for `block`'s
/// stream, with its END_STREAM flag and priority, without padding.
fn write_frames(out: &mut BytesMut, block: &Block, fragment: &[u8]) {
    let mut rest = fragment;
    let mut first = true;
    loop {
        let priority = block.priority.filter(|_| first);
        let room = MAX_FRAME_PAYLOAD - priority.map_or(0, |p| p.len());
        let (chunk, tail) = rest.split_at(rest.len().min(room));
        rest = tail;
        let (kind, mut flags) = match (first, priority) {
            (true, Some(_)) => (HEADERS, PRIORITY),
            (true, None) => (HEADERS, 0),
            (false, _) => (CONTINUATION, 0),
        };
        if first && block.end_stream {
            flags |= END_STREAM;
        }
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        let len = chunk.len() + priority.map_or(0, |p| p.len());
        out.put_uint(len as u64, 3);
        out.put_u8(kind);
        out.put_u8(flags);
        out.put_u32(block.stream);
        if let Some(p) = priority {
            out.put_slice(&p);
        }
        out.put_slice(chunk);
        first = false;
        if rest.is_empty() {
            return;
        }
    }
}

/// Follows the frames the server writes: what each stream's DATA frames
/// carry, which streams end, and RST_STREAM(PROTOCOL_ERROR).
#[derive(Debug, Default)]
struct WriteScan {
    /// The current frame's header, as far as it was written.
    header: [u8; FRAME_HEADER],
    have: usize,
    /// Payload bytes of the current frame still to come.
    left: usize,
    /// An RST_STREAM's error code, as far as it was written.
    code: Option<(u32, [u8; 4], usize)>,
    /// The connection is not HTTP/2: there are no frames.
    off: bool,
}

/// What a write carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    /// This many payload bytes of a DATA frame of this stream.
    Data(u32, usize),
    /// The stream's last frame (END_STREAM) or an RST_STREAM for it.
    Ended(u32),
    /// An RST_STREAM(PROTOCOL_ERROR) for the stream.
    Refused(u32),
}

impl WriteScan {
    /// Scans written bytes.
    fn scan(&mut self, mut bytes: &[u8], found: &mut Vec<Written>) {
        while !bytes.is_empty() && !self.off {
            if let Some((stream, mut code, have)) = self.code {
                let n = (4 - have).min(bytes.len());
                code[have..have + n].copy_from_slice(&bytes[..n]);
                bytes = &bytes[n..];
                self.left -= n;
                self.code = Some((stream, code, have + n));
                if have + n == 4 {
                    self.code = None;
                    if u32::from_be_bytes(code) == PROTOCOL_ERROR {
                        found.push(Written::Refused(stream));
                    }
                }
            } else if self.left > 0 {
                let n = self.left.min(bytes.len());
                self.left -= n;
                bytes = &bytes[n..];
                let (kind, flags, stream) =
                    (self.header[3], self.header[4], stream_id(&self.header));
                if kind == DATA {
                    found.push(Written::Data(stream, n));
                    if self.left == 0 && flags & END_STREAM != 0 {
                        found.push(Written::Ended(stream));
                    }
                }
            } else {
                let n = (FRAME_HEADER - self.have).min(bytes.len());
                self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have == FRAME_HEADER {
                    self.have = 0;
                    self.left = frame_len(&self.header);
                    let (kind, flags, stream) =
                        (self.header[3], self.header[4], stream_id(&self.header));
                    let end_stream = flags & END_STREAM != 0;
                    match kind {
                        RST_STREAM => {
                            found.push(Written::Ended(stream));
                            if self.left == 4 {
                                self.code = Some((stream, [0; 4], 0));
                            }
                        }
                        HEADERS if end_stream => found.push(Written::Ended(stream)),
                        DATA if end_stream && self.left == 0 => {
                            found.push(Written::Ended(stream));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// A connection whose client bytes go through a [`Rewriter`]. See the
/// module docs.
#[derive(Debug)]
pub struct AuthorityStream<IO> {
    io: IO,
    rewriter: Rewriter,
    /// What the server is given next.
    out: BytesMut,
    eof: bool,
    written: WriteScan,
    reports: Arc<Reports>,
    /// Told what each stream's response has written, when the connection
    /// is budgeted.
    ledger: Option<Arc<ConnLedger>>,
}

/// How much is read from the client at once (on the stack: an idle
/// connection holds no read buffer).
const READ_CHUNK: usize = 8 * 1024;

impl<IO> AuthorityStream<IO> {
    /// Wraps an accepted connection; `reports` is shared by the server's
    /// connections. With a `ledger`, requests are tagged with their stream
    /// and the ledger is told what the server writes for each.
    pub fn new(io: IO, reports: Arc<Reports>, ledger: Option<Arc<ConnLedger>>) -> Self {
        Self {
            io,
            rewriter: if ledger.is_some() {
                Rewriter::tagging()
            } else {
                Rewriter::default()
            },
            out: BytesMut::new(),
            eof: false,
            written: WriteScan::default(),
            reports,
            ledger,
        }
    }

    /// Looks at bytes the server wrote.
    fn scan_written(&mut self, bytes: &[u8]) {
        // An HTTP/2 server's first bytes are frames (its SETTINGS), also
        // when it writes them before the client's preface arrives; an
        // HTTP/1.1 server writes only once the request is in.
        if self.rewriter.is_not_http2() {
            self.written.off = true;
        }
        if self.written.off {
            if let Some(ledger) = &self.ledger {
                ledger.written_http1(bytes.len());
            }
            return;
        }
        let mut found = Vec::new();
        self.written.scan(bytes, &mut found);
        for written in found {
            let stream = match written {
                Written::Data(stream, n) => {
                    if let Some(ledger) = &self.ledger {
                        ledger.written(stream, n);
                    }
                    continue;
                }
                Written::Ended(stream) => {
                    if let Some(ledger) = &self.ledger {
                        ledger.ended(stream);
                    }
                    continue;
                }
                Written::Refused(stream) => stream,
            };
            let Some(request) = self.rewriter.request(stream) else {
                continue;
            };
            if !self.reports.refused.swap(true, Ordering::Relaxed) {
                warn!(
                    stream,
                    %request,
                    "refused a malformed HTTP/2 request with RST_STREAM(PROTOCOL_ERROR); the \
                     client sees INTERNAL \"Stream removed\". If its :authority is a socket path \
                     that was not rewritten, give the client the option \
                     (\"grpc.default_authority\", \"localhost\") (reported once; details at \
                     debug, target h2::server)"
                );
            } else {
                debug!(stream, %request, "refused a malformed HTTP/2 request");
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for AuthorityStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if this.rewriter.is_transparent() {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            let mut chunk = [0; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // A partial frame is of no use to the server: it sees EOF.
                this.eof = true;
                continue;
            }
            this.rewriter
                .feed(read.filled(), &mut this.out, &this.reports)?;
            let resets = this.rewriter.take_resets();
            if let Some(ledger) = &this.ledger {
                resets.into_iter().for_each(|stream| ledger.ended(stream));
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AuthorityStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        this.scan_written(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        let mut left = n;
        for b in bufs {
            let k = left.min(b.len());
            this.scan_written(&b[..k]);
            left -= k;
            if left == 0 {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
