//! The server-to-client half: what each stream's response writes, which
//! streams end, and RST_STREAM(PROTOCOL_ERROR), from the bytes as written.

use super::*;

/// Follows the frames the server writes: what each stream's DATA frames
/// carry, which streams end, and RST_STREAM(PROTOCOL_ERROR).
#[derive(Debug, Default)]
pub(super) struct WriteScan {
    /// The current frame's header, as far as it was written.
    header: [u8; FRAME_HEADER],
    have: usize,
    /// Payload bytes of the current frame still to come.
    left: usize,
    /// An RST_STREAM's error code, as far as it was written.
    code: Option<(u32, [u8; 4], usize)>,
    /// The connection is not HTTP/2: there are no frames.
    pub(super) off: bool,
}

/// What a write carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Written {
    /// This many payload bytes of a DATA frame of this stream.
    Data(u32, usize),
    /// The stream's last frame (END_STREAM) or an RST_STREAM for it.
    Ended(u32),
    /// An RST_STREAM(PROTOCOL_ERROR) for the stream.
    Refused(u32),
}

impl WriteScan {
    /// Scans written bytes.
    pub(super) fn scan(&mut self, mut bytes: &[u8], found: &mut Vec<Written>) {
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
