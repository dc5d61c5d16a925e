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
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
};

use bytes::{Buf as _, BufMut as _, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::{debug, info, warn};

use super::budget::ConnLedger;

mod frame;
mod rewrite;
mod scan;

use frame::*;
pub use rewrite::Rewriter;
use scan::*;

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
pub(crate) const MAX_HEADER_LIST: usize = 16 * 1024;
/// The field a request's stream id is given in (see the module docs).
pub(crate) const STREAM_TAG: &str = "x-pidmap-stream";
/// What replaces an `:authority` h2 would refuse.
pub(crate) const REPLACEMENT: &[u8] = b"localhost";

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
    #[error("a header list of over {0} decoded bytes on a connection whose headers are re-encoded")]
    TooLarge(usize),
}

impl From<RewriteError> for io::Error {
    fn from(e: RewriteError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// A connection whose client bytes go through a [`Rewriter`]. See the
/// module docs.
#[derive(Debug)]
pub(crate) struct AuthorityStream<IO> {
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
    pub(crate) fn new(io: IO, reports: Arc<Reports>, ledger: Option<Arc<ConnLedger>>) -> Self {
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
