//! The client-to-server half of [`AuthorityStream`](super::AuthorityStream),
//! without I/O: follows the client's frames, decodes every header block with
//! an HPACK decoder that mirrors the client's table, and re-encodes the
//! blocks h2 would refuse (see the parent module's docs).

use super::*;

/// The client connection preface of HTTP/2 with prior knowledge.
pub(super) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// h2 closes a connection whose header list decodes to more than this many
/// times [`MAX_HEADER_LIST`].
pub(super) const ABUSE_FACTOR: usize = 4;
/// The field that keeps a re-encoded list over [`MAX_HEADER_LIST`] over it.
pub(super) const FILLER: &[u8] = b"x-pidmap-over-size";
/// SETTINGS_HEADER_TABLE_SIZE of the server: the protocol's initial value,
/// which hyper keeps. The client's dynamic table can be no larger.
pub(super) const HEADER_TABLE_SIZE: usize = 4096;
/// Requests remembered per connection, for the report of a refusal.
pub(super) const RECENT: usize = 16;
/// Longest value shown in a report.
pub(super) const SHOWN: usize = 200;

/// Where the reader is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
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
pub(super) struct Block {
    pub(super) stream: u32,
    /// HEADERS' END_STREAM flag.
    pub(super) end_stream: bool,
    /// HEADERS' priority fields, if it had any.
    pub(super) priority: Option<[u8; 5]>,
    /// The HPACK fragments, without padding and priority.
    pub(super) fragment: Vec<u8>,
    /// The frames exactly as they came.
    pub(super) raw: Vec<u8>,
}

/// The client-to-server half, without I/O: bytes in, bytes out.
#[derive(Debug)]
pub struct Rewriter {
    phase: Phase,
    /// Input not yet turned into output (a partial frame header or header
    /// frame payload).
    pub(super) input: BytesMut,
    pub(super) block: Option<Block>,
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
pub(super) struct HpackDecoder(loona_hpack::Decoder<'static>);

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
pub(super) struct Decoded {
    /// The fields, as far as they fit in [`MAX_HEADER_LIST`].
    pub(super) fields: Vec<(Vec<u8>, Vec<u8>)>,
    /// The `:authority` h2 would refuse, if the block had one.
    pub(super) refused: Option<Vec<u8>>,
    /// The decoded size as h2 counts it (saturating).
    pub(super) size: usize,
}

impl Decoded {
    /// h2 refuses the request (431) for this list.
    pub(super) fn over(&self) -> bool {
        self.size >= MAX_HEADER_LIST
    }

    /// h2 closes the connection for this list.
    pub(super) fn way_over(&self) -> bool {
        self.size > MAX_HEADER_LIST * ABUSE_FACTOR
    }
}

/// A header field's size as h2 counts it against [`MAX_HEADER_LIST`].
pub(super) fn field_size(name: usize, value: usize) -> usize {
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
    pub(super) fn stop_following(&mut self, out: &mut BytesMut) {
        if let Some(block) = self.block.take() {
            out.extend_from_slice(&block.raw);
        }
        out.extend_from_slice(&self.input.split());
        self.phase = Phase::Transparent;
    }

    /// A complete HEADERS or CONTINUATION frame.
    pub(super) fn header_frame(
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
    pub(super) fn pass_malformed(&mut self, header: &[u8], payload: &[u8], out: &mut BytesMut) {
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
    pub(super) fn finish_block(
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
    pub(super) fn decode(
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
    pub(super) fn remember(&mut self, stream: u32, decoded: &Decoded) {
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
    pub(super) fn request(&self, stream: u32) -> Option<&str> {
        self.recent
            .iter()
            .rev()
            .find(|(s, _)| *s == stream)
            .map(|(_, r)| r.as_str())
    }
}

/// A value as logs show it: lossy UTF-8, cut at [`SHOWN`] characters.
pub(super) fn shown(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(SHOWN).collect()
}

/// Writes `fragment` as HEADERS and CONTINUATION frames for `block`'s
/// stream, with its END_STREAM flag and priority, without padding.
pub(super) fn write_frames(out: &mut BytesMut, block: &Block, fragment: &[u8]) {
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
