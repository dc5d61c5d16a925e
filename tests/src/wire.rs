//! HTTP/2 frames and HPACK blocks built by hand, as a hostile or broken
//! peer sends them: written here independently of the agent's own frame
//! code (its authority rewriter), so that the tests do not share its
//! mistakes.

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const SETTINGS: u8 = 0x4;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
/// SETTINGS_INITIAL_WINDOW_SIZE.
pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
/// The largest flow-control window HTTP/2 allows (2 GiB - 1).
pub const MAX_WINDOW: u32 = 0x7fff_ffff;
/// The frame size every peer must accept.
pub const MAX_FRAME: usize = 16_384;

/// An HTTP/2 frame: 24-bit length, type, flags, stream id, payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame length");
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// A SETTINGS frame with these (id, value) pairs.
pub fn settings(values: &[(u16, u32)]) -> Vec<u8> {
    let payload: Vec<u8> = values
        .iter()
        .flat_map(|(id, value)| id.to_be_bytes().into_iter().chain(value.to_be_bytes()))
        .collect();
    frame(SETTINGS, 0, 0, &payload)
}

/// A WINDOW_UPDATE frame granting `increment` more bytes on `stream` (0:
/// the connection).
pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1); `high` holds
/// the bits above the prefix.
fn integer(out: &mut Vec<u8>, high: u8, n: u32, value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(high | u8::try_from(value).expect("below the prefix"));
        return;
    }
    out.push(high | u8::try_from(max).expect("a prefix"));
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push(u8::try_from(rest & 0x7f).expect("7 bits") | 0x80);
        rest >>= 7;
    }
    out.push(u8::try_from(rest).expect("7 bits"));
}

/// An HPACK string, raw (not Huffman-coded).
fn string(out: &mut Vec<u8>, s: &[u8]) {
    integer(out, 0, 7, s.len());
    out.extend(s);
}

/// HPACK: literal header fields without indexing, names and values plain.
pub fn hpack(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0);
        string(&mut out, name.as_bytes());
        string(&mut out, value.as_bytes());
    }
    out
}

/// The header block of a gRPC request for `method` (a path such as
/// `/pidmap.v1.Pidmap/Status`).
pub fn grpc_request_headers(method: &str) -> Vec<u8> {
    hpack(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", method),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ])
}

/// A header block of `len` bytes that inserts a field with a `size`-byte
/// value into the HPACK dynamic table, then references it one byte at a
/// time for the rest: 64 KiB of it decode to about 240 MB of header list.
pub fn hpack_bomb(size: usize, len: usize) -> Vec<u8> {
    let mut b = grpc_request_headers("/pidmap.v1.Pidmap/Status");
    // Literal with incremental indexing, new name: dynamic index 62.
    b.push(0x40);
    string(&mut b, b"x-bomb");
    string(&mut b, &vec![b'a'; size]);
    // 0xbe: indexed field 62.
    b.resize(len.max(b.len()), 0xbe);
    b
}

/// `block` as a HEADERS frame and as many CONTINUATION frames as it needs,
/// each at most [`MAX_FRAME`]; `flags` (END_STREAM) go on the HEADERS frame.
pub fn header_frames(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
    let chunks: Vec<&[u8]> = block.chunks(MAX_FRAME).collect();
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let (kind, mut f) = if i == 0 {
            (HEADERS, flags)
        } else {
            (CONTINUATION, 0)
        };
        if i + 1 == chunks.len() {
            f |= END_HEADERS;
        }
        out.extend(frame(kind, f, stream, chunk));
    }
    out
}

/// A gRPC request message: the 5-byte prefix and `message`.
pub fn grpc_message(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend(u32::try_from(message.len()).expect("length").to_be_bytes());
    out.extend(message);
    out
}
