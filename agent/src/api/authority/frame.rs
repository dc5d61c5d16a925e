//! HTTP/2 frames as the rewriter reads and writes them: frame types and
//! flags (RFC 9113 §6), frame headers, a HEADERS payload's parts, and the
//! HPACK encodings the rewriter writes (RFC 7541 §5.1, §6.2.2).

/// Length of an HTTP/2 frame header.
pub(super) const FRAME_HEADER: usize = 9;
pub(super) const DATA: u8 = 0x0;
pub(super) const HEADERS: u8 = 0x1;
pub(super) const RST_STREAM: u8 = 0x3;
pub(super) const CONTINUATION: u8 = 0x9;
pub(super) const END_STREAM: u8 = 0x1;
pub(super) const END_HEADERS: u8 = 0x4;
pub(super) const PADDED: u8 = 0x8;
pub(super) const PRIORITY: u8 = 0x20;
/// RST_STREAM's error code for a malformed request.
pub(super) const PROTOCOL_ERROR: u32 = 0x1;

pub(super) fn frame_len(header: &[u8; FRAME_HEADER]) -> usize {
    (usize::from(header[0]) << 16) | (usize::from(header[1]) << 8) | usize::from(header[2])
}

pub(super) fn stream_id(header: &[u8; FRAME_HEADER]) -> u32 {
    u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff
}

/// A HEADERS payload's priority fields and HPACK fragment; `None` when its
/// padding or priority fields do not fit (h2 closes the connection then).
pub(super) fn headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
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
pub(super) fn encode_integer(dst: &mut Vec<u8>, high: u8, n: u32, value: usize) {
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
pub(super) fn encode_literal(dst: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    dst.push(0x00);
    for s in [name, value] {
        encode_integer(dst, 0x00, 7, s.len());
        dst.extend_from_slice(s);
    }
}
