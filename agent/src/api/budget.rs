//! What the agent holds for clients that have not read it yet, bounded per
//! peer and in total.
//!
//! A response the agent has produced but its client has not taken sits in
//! memory: in hyper (the next chunk of a stream), in h2 (its send buffer),
//! or in HTTP/1's write buffer. A client decides how much: it can advertise
//! a 2 GiB flow-control window and never read its socket, on as many
//! streams as the connection limits allow. So every response body is
//! [`Metered`]: each chunk it hands to hyper is charged to its peer's
//! [`Pool`] and to the agent's, before hyper sees it, and credited back
//! when its bytes are written to the socket (counted where they are
//! written: [`super::authority::AuthorityStream`] follows the frames the
//! server writes) or dropped with their stream (an RST_STREAM either way,
//! or the connection's end).
//!
//! HTTP/2 multiplexes, so the bytes are counted per stream: the authority
//! rewriter tags each request with its stream id (see
//! [`super::authority::STREAM_TAG`]), and each stream's body is charged to
//! its own [`Account`], which the DATA frames of that stream credit and its
//! END_STREAM or RST_STREAM closes. HTTP/1.1 serves one response at a time:
//! the connection's one account is credited by every byte written.
//!
//! A chunk that would take a pool over its limit is not handed over: the
//! stream is cut off with `RESOURCE_EXHAUSTED` (gRPC trailers; an error
//! line on `/v1/watch`; an aborted body elsewhere), and new requests of a
//! peer that is over its budget are refused with it. A pool that holds
//! nothing takes any one chunk, so that a single response larger than the
//! budget is still served. Non-root peers together may fill the total
//! pool only up to all but its last 1/16, kept for root as the connection
//! places are.

use std::{
    collections::{HashMap, VecDeque},
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tonic::Status;
use tracing::debug;

use crate::metrics::{CutOff as CutOffReason, Metrics};

/// The default budget of one peer: unread response bytes of all its
/// connections together.
pub(crate) const DEFAULT_PER_PEER: usize = 16 * 1024 * 1024;
/// The default budget of all peers together.
pub(crate) const DEFAULT_TOTAL: usize = 64 * 1024 * 1024;
/// Streams reset by the client before their request reached the service,
/// remembered per connection (so that their accounts start closed).
const EARLY_RESETS: usize = 256;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A budget of unread bytes: one peer's, or every peer's together.
#[derive(Debug)]
pub(crate) struct Pool {
    held: AtomicUsize,
    limit: usize,
    /// The part of `limit` only root peers may fill.
    reserved_for_root: usize,
    /// Told the pool's size (the total pool's only).
    metrics: Option<Arc<Metrics>>,
    /// What the pool's limit is called, for messages.
    name: &'static str,
}

/// A chunk a pool could not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{held} bytes of responses wait unread {whom}, the most allowed ({name} = {limit}); \
     read them, or close streams you do not read"
)]
pub(crate) struct Exhausted {
    pub held: usize,
    pub limit: usize,
    pub name: &'static str,
    whom: &'static str,
}

impl Pool {
    /// One peer's pool.
    pub(crate) fn per_peer(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            held: AtomicUsize::new(0),
            limit,
            reserved_for_root: 0,
            metrics: None,
            name: "max_unread_bytes_per_peer",
        })
    }

    /// The pool of every peer together; its size goes to `metrics`.
    pub(crate) fn total(limit: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            held: AtomicUsize::new(0),
            limit,
            reserved_for_root: limit / 16,
            metrics: Some(metrics),
            name: "max_unread_bytes",
        })
    }

    /// Bytes held now.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    fn limit_for(&self, root: bool) -> usize {
        if root {
            self.limit
        } else {
            self.limit - self.reserved_for_root
        }
    }

    fn exhausted(&self, held: usize, root: bool) -> Exhausted {
        Exhausted {
            held,
            limit: self.limit_for(root),
            name: self.name,
            whom: if self.reserved_for_root > 0 || self.metrics.is_some() {
                "for all clients together"
            } else {
                "for this client (its uid, or its process if root)"
            },
        }
    }

    /// Whether the pool is full for a peer (`root` or not).
    fn full(&self, root: bool) -> Option<Exhausted> {
        let held = self.held();
        (held >= self.limit_for(root)).then(|| self.exhausted(held, root))
    }

    /// Takes `n` bytes, unless that takes the pool past its limit (a pool
    /// holding nothing takes any one chunk).
    fn take(&self, n: usize, root: bool) -> Result<(), Exhausted> {
        let limit = self.limit_for(root);
        let taken = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held == 0 || held.saturating_add(n) <= limit).then(|| held.saturating_add(n))
            });
        match taken {
            Ok(before) => {
                self.report(before.saturating_add(n));
                Ok(())
            }
            Err(held) => Err(self.exhausted(held, root)),
        }
    }

    fn give(&self, n: usize) {
        let before = self.held.fetch_sub(n, Ordering::AcqRel);
        self.report(before.saturating_sub(n));
    }

    fn report(&self, held: usize) {
        if let Some(metrics) = &self.metrics {
            metrics.set_api_unread_bytes(held);
        }
    }
}

/// The pools a connection's bytes count against.
#[derive(Debug, Clone)]
struct Pools {
    peer: Arc<Pool>,
    total: Arc<Pool>,
    root: bool,
}

impl Pools {
    fn take(&self, n: usize) -> Result<(), Exhausted> {
        self.total.take(n, self.root)?;
        if let Err(e) = self.peer.take(n, true) {
            self.total.give(n);
            return Err(e);
        }
        Ok(())
    }

    fn give(&self, n: usize) {
        self.peer.give(n);
        self.total.give(n);
    }

    fn full(&self) -> Option<Exhausted> {
        self.peer.full(true).or_else(|| self.total.full(self.root))
    }
}

/// What one stream (or one HTTP/1.1 connection) holds unread.
#[derive(Debug)]
pub(crate) struct Account {
    pools: Pools,
    /// Bytes charged and not yet written or dropped; `None` once closed.
    held: Mutex<Option<usize>>,
    /// Closed when its body is dropped, for a stream the wire cannot
    /// follow.
    close_on_drop: bool,
}

impl Account {
    fn new(pools: Pools, close_on_drop: bool) -> Arc<Self> {
        Arc::new(Self {
            pools,
            held: Mutex::new(Some(0)),
            close_on_drop,
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<usize>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Charges `n` bytes about to be handed to hyper. A closed account
    /// takes anything: those bytes go nowhere (their stream is gone).
    pub(crate) fn charge(&self, n: usize) -> Result<(), Exhausted> {
        let mut held = self.held();
        let Some(held) = held.as_mut() else {
            return Ok(());
        };
        self.pools.take(n)?;
        *held += n;
        Ok(())
    }

    /// Credits `n` bytes written to the socket.
    fn credit(&self, n: usize) {
        let mut held = self.held();
        if let Some(held) = held.as_mut() {
            let n = n.min(*held);
            *held -= n;
            self.pools.give(n);
        }
    }

    /// Everything it held is written or dropped: nothing more counts.
    fn close(&self) {
        if let Some(n) = self.held().take() {
            self.pools.give(n);
        }
    }

    /// Bytes held now (0 once closed).
    #[cfg(test)]
    pub(crate) fn unread(&self) -> usize {
        self.held().unwrap_or(0)
    }
}

/// One connection's accounts. See the module docs.
#[derive(Debug)]
pub(crate) struct ConnLedger {
    pools: Pools,
    streams: Mutex<Streams>,
    http1: Arc<Account>,
}

#[derive(Debug, Default)]
struct Streams {
    open: HashMap<u32, Arc<Account>>,
    /// Streams that ended before their account was opened.
    ended_early: VecDeque<u32>,
}

impl ConnLedger {
    /// The ledger of a connection of a peer whose pool is `peer`.
    pub(crate) fn new(peer: Arc<Pool>, total: Arc<Pool>, root: bool) -> Arc<Self> {
        let pools = Pools { peer, total, root };
        Arc::new(Self {
            http1: Account::new(pools.clone(), false),
            pools,
            streams: Mutex::default(),
        })
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, Streams> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Why a new request of this connection's peer is refused, if it is:
    /// its pool, or the total, is full.
    pub(crate) fn full(&self) -> Option<Exhausted> {
        self.pools.full()
    }

    /// The account of HTTP/2 stream `stream`.
    pub(crate) fn open(&self, stream: u32) -> Arc<Account> {
        let account = Account::new(self.pools.clone(), false);
        let mut streams = self.streams();
        if let Some(i) = streams.ended_early.iter().position(|&s| s == stream) {
            streams.ended_early.remove(i);
            account.close();
        } else {
            streams.open.insert(stream, Arc::clone(&account));
        }
        account
    }

    /// An account for a body whose stream the wire cannot follow (an
    /// HTTP/2 request without a stream tag): closed when the body goes.
    pub(crate) fn untracked(&self) -> Arc<Account> {
        Account::new(self.pools.clone(), true)
    }

    /// The account of the connection's HTTP/1.1 responses.
    pub(crate) fn http1(&self) -> Arc<Account> {
        Arc::clone(&self.http1)
    }

    /// `n` bytes of stream `stream`'s DATA were written to the socket.
    pub(crate) fn written(&self, stream: u32, n: usize) {
        let account = self.streams().open.get(&stream).cloned();
        if let Some(account) = account {
            account.credit(n);
        }
    }

    /// `n` bytes of an HTTP/1.1 connection were written to the socket.
    pub(crate) fn written_http1(&self, n: usize) {
        self.http1.credit(n);
    }

    /// Stream `stream` ended: its last frame was written, or it was reset
    /// by either side.
    pub(crate) fn ended(&self, stream: u32) {
        let mut streams = self.streams();
        match streams.open.remove(&stream) {
            Some(account) => {
                drop(streams);
                account.close();
            }
            None => {
                if streams.ended_early.len() == EARLY_RESETS {
                    streams.ended_early.pop_front();
                }
                streams.ended_early.push_back(stream);
            }
        }
    }

    /// Bytes held for this connection now.
    #[cfg(test)]
    pub(crate) fn unread(&self) -> usize {
        let streams: usize = self.streams().open.values().map(|a| a.unread()).sum();
        streams + self.http1.unread()
    }
}

impl Drop for ConnLedger {
    fn drop(&mut self) {
        // The connection is gone, and with it everything it held.
        for account in self.streams().open.values() {
            account.close();
        }
        self.http1.close();
    }
}

/// How a body over its budget ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CutOff {
    /// gRPC: trailers with `RESOURCE_EXHAUSTED`.
    Grpc,
    /// Newline-delimited JSON (`/v1/watch`): an error line.
    NdJson,
    /// Anything else: the body fails (HTTP/2 resets the stream, HTTP/1.1
    /// closes the connection).
    Abort,
}

/// A response body whose chunks are charged to an [`Account`] before hyper
/// is given them. See the module docs.
pub(crate) struct Metered<B> {
    /// `None` once it ended or was cut off.
    inner: Option<B>,
    account: Arc<Account>,
    cut: CutOff,
    metrics: Arc<Metrics>,
}

impl<B> Metered<B> {
    pub(crate) fn new(inner: B, account: Arc<Account>, cut: CutOff, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Some(inner),
            account,
            cut,
            metrics,
        }
    }
}

impl<B> Drop for Metered<B> {
    fn drop(&mut self) {
        if self.account.close_on_drop {
            self.account.close();
        }
    }
}

/// The JSON line that ends a `/v1/watch` stream cut off for `status`.
pub(crate) fn ndjson_error_line(status: &Status) -> Bytes {
    let mut e = super::json::error(status.code(), status.message());
    e["event"] = "error".into();
    let mut line = e.to_string().into_bytes();
    line.push(b'\n');
    line.into()
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = match ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                this.inner = None;
                return Poll::Ready(Some(Err(e.into())));
            }
            None => {
                this.inner = None;
                return Poll::Ready(None);
            }
        };
        let Some(data) = frame.data_ref() else {
            return Poll::Ready(Some(Ok(frame)));
        };
        let Err(exhausted) = this.account.charge(data.len()) else {
            return Poll::Ready(Some(Ok(frame)));
        };
        // Over budget: what the body had left is dropped with it.
        this.inner = None;
        this.metrics.count_cut_off(CutOffReason::UnreadBytes);
        debug!(reason = %exhausted, "cutting a response off");
        let status = Status::resource_exhausted(exhausted.to_string());
        Poll::Ready(Some(match this.cut {
            CutOff::Grpc => {
                let mut trailers = http::HeaderMap::new();
                match status.add_header(&mut trailers) {
                    Ok(()) => Ok(Frame::trailers(trailers)),
                    Err(_) => Err(Box::new(exhausted) as BoxError),
                }
            }
            CutOff::NdJson => Ok(Frame::data(ndjson_error_line(&status))),
            CutOff::Abort => Err(Box::new(exhausted) as BoxError),
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt as _, StreamBody};

    fn pools(peer: usize, total: usize) -> (Arc<Pool>, Arc<Pool>) {
        (
            Pool::per_peer(peer),
            Pool::total(total, Arc::new(Metrics::default())),
        )
    }

    #[test]
    fn stream_bytes_are_held_until_written_or_dropped() {
        let (peer, total) = pools(1000, 10_000);
        let ledger = ConnLedger::new(Arc::clone(&peer), Arc::clone(&total), false);
        let (a, b) = (ledger.open(1), ledger.open(3));
        a.charge(300).unwrap();
        b.charge(200).unwrap();
        assert_eq!(
            (peer.held(), total.held(), ledger.unread()),
            (500, 500, 500)
        );
        ledger.written(1, 100);
        ledger.written(7, 100); // a stream without an account: nothing
        assert_eq!(peer.held(), 400);
        // Its END_STREAM is written: what is left of it is gone too.
        ledger.ended(1);
        assert_eq!((a.unread(), peer.held()), (0, 200));
        // Charges to a closed stream go nowhere.
        a.charge(10_000).unwrap();
        assert_eq!(peer.held(), 200);
        drop(ledger);
        assert_eq!((peer.held(), total.held()), (0, 0), "the connection's end");
    }

    #[test]
    fn a_peer_over_its_budget_is_refused_and_an_empty_pool_takes_one_big_chunk() {
        let (peer, total) = pools(1000, 100_000);
        let ledger = ConnLedger::new(Arc::clone(&peer), total, false);
        let s = ledger.open(1);
        s.charge(5000).expect("an empty pool takes any one chunk");
        let over = s.charge(1).expect_err("then nothing more");
        assert_eq!((over.held, over.limit), (5000, 1000));
        assert!(
            over.to_string().contains("max_unread_bytes_per_peer"),
            "{over}"
        );
        assert!(ledger.full().is_some());
        ledger.written(1, 4500);
        assert!(ledger.full().is_none());
        s.charge(400).unwrap();
        assert_eq!(peer.held(), 900);
    }

    #[test]
    fn the_total_keeps_room_for_root() {
        let (total_peer, total) = pools(1 << 30, 1600);
        let user = ConnLedger::new(Arc::clone(&total_peer), Arc::clone(&total), false);
        let root = ConnLedger::new(Pool::per_peer(1 << 30), Arc::clone(&total), true);
        user.open(1).charge(1400).unwrap();
        let refused = user
            .open(3)
            .charge(200)
            .expect_err("non-root stop at 15/16");
        assert!(refused.to_string().contains("all clients"), "{refused}");
        assert_eq!(refused.limit, 1500);
        root.open(1)
            .charge(200)
            .expect("root may use the last 1/16");
        assert_eq!(total.held(), 1600);
        assert!(user.full().is_some() && root.full().is_some());
    }

    #[test]
    fn a_stream_reset_before_its_request_arrived_starts_closed() {
        let (peer, total) = pools(1000, 10_000);
        let ledger = ConnLedger::new(Arc::clone(&peer), total, false);
        ledger.ended(5);
        let s = ledger.open(5);
        s.charge(100).unwrap();
        assert_eq!(peer.held(), 0);
        let t = ledger.open(7);
        t.charge(100).unwrap();
        assert_eq!(peer.held(), 100);
    }

    #[test]
    fn http1_bytes_are_credited_by_what_the_connection_writes() {
        let (peer, total) = pools(1000, 10_000);
        let ledger = ConnLedger::new(Arc::clone(&peer), total, false);
        let a = ledger.http1();
        a.charge(600).unwrap();
        // Headers and chunk sizes are written too: credit saturates.
        ledger.written_http1(700);
        assert_eq!(peer.held(), 0);
        a.charge(50).unwrap();
        assert_eq!(peer.held(), 50);
    }

    fn chunks(n: usize, size: usize) -> impl Body<Data = Bytes, Error = BoxError> + Unpin {
        let frames =
            (0..n).map(move |_| Ok::<_, BoxError>(Frame::data(Bytes::from(vec![b'x'; size]))));
        StreamBody::new(tokio_stream::iter(frames))
    }

    #[tokio::test]
    async fn a_grpc_body_over_budget_ends_with_resource_exhausted_trailers() {
        let (peer, total) = pools(1000, 10_000);
        let ledger = ConnLedger::new(Arc::clone(&peer), total, false);
        let metrics = Arc::new(Metrics::default());
        let body = Metered::new(
            chunks(10, 400),
            ledger.open(1),
            CutOff::Grpc,
            Arc::clone(&metrics),
        );
        let mut body = std::pin::pin!(body);
        let mut data = 0;
        let trailers = loop {
            let frame = body.frame().await.expect("a frame").expect("no error");
            match frame.into_data() {
                Ok(d) => data += d.len(),
                Err(frame) => break frame.into_trailers().expect("trailers"),
            }
        };
        assert_eq!(data, 800, "two chunks fit in 1000 bytes");
        assert_eq!(trailers["grpc-status"], "8");
        assert!(body.frame().await.is_none());
        assert_eq!(metrics.snapshot().api_cut_offs_unread_bytes, 1);
    }

    #[tokio::test]
    async fn an_ndjson_body_ends_with_an_error_line_and_others_fail() {
        let (peer, total) = pools(100, 10_000);
        let ledger = ConnLedger::new(peer, total, false);
        let metrics = Arc::new(Metrics::default());
        let body = Metered::new(
            chunks(3, 80),
            ledger.open(1),
            CutOff::NdJson,
            Arc::clone(&metrics),
        );
        let collected = body.collect().await.expect("no error").to_bytes();
        let text = String::from_utf8(collected.to_vec()).unwrap();
        assert!(text.starts_with(&"x".repeat(80)));
        assert!(
            text.ends_with("}\n") && text.contains("ResourceExhausted"),
            "{text}"
        );
        let body = Metered::new(chunks(3, 80), ledger.open(3), CutOff::Abort, metrics);
        assert!(body.collect().await.is_err());
    }
}
