//! The ring-buffer reader: drains kernel events on wake-ups and on a
//! periodic tick (the programs batch wake-ups), decodes them and feeds the
//! process-table owner through a bounded channel; watches the drop counter.

use std::{sync::Arc, time::Duration};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, oneshot},
    time::MissedTickBehavior,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::event::{decode, KernelEvent};
use crate::metrics::Metrics;

/// Most events sent to the owner in one message.
pub const MAX_BATCH: usize = 1024;

/// Answered once every event that was in the ring buffer when the request
/// reached the reader has been applied to the table (see
/// [`State::catch_up`](crate::state::State::catch_up)).
pub type CatchUpReply = oneshot::Sender<()>;

/// What the reader tells the table owner.
#[derive(Debug)]
pub enum ReaderMsg {
    /// Events in kernel order.
    Events(Vec<KernelEvent>),
    /// The kernel dropped events since the last check: the table may miss
    /// processes or hold dead ones until a /proc rescan repairs it.
    Lost {
        /// Events dropped since the previous report.
        new: u64,
        /// Events dropped since the programs were loaded.
        total: u64,
    },
    /// Everything sent before this was drained after these catch-up
    /// requests arrived: answer them once it is applied.
    CaughtUp(Vec<CatchUpReply>),
}

/// Reads the event ring buffer. Built from [`super::Loaded`].
pub struct RingReader {
    ring: AsyncFd<RingBuf<MapData>>,
    drops: PerCpuArray<MapData, u64>,
    poll_interval: Duration,
    metrics: Arc<Metrics>,
    reported_drops: u64,
}

impl RingReader {
    /// Registers the ring buffer with the tokio reactor.
    pub fn new(
        ring: RingBuf<MapData>,
        drops: PerCpuArray<MapData, u64>,
        poll_interval: Duration,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            ring: register(ring)?,
            drops,
            poll_interval,
            metrics,
            reported_drops: 0,
        })
    }

    /// Runs until `shutdown` fires or the receiver goes away. Besides
    /// wake-ups and ticks, drains the ring at once for each batch of
    /// catch-up requests from `catch_up`, and passes them on behind what it
    /// drained.
    pub async fn run(
        mut self,
        tx: mpsc::Sender<ReaderMsg>,
        mut catch_up: mpsc::Receiver<CatchUpReply>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.poll_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let mut check_drops = false;
            let mut replies = Vec::new();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                ready = self.ring.readable_mut() => match ready {
                    Ok(mut guard) => guard.clear_ready(),
                    Err(error) => {
                        warn!(%error, "ring buffer poll failed; relying on the periodic tick");
                        tick.tick().await;
                    }
                },
                Some(first) = catch_up.recv() => replies.push(first),
                _ = tick.tick() => check_drops = true,
            }
            // Whatever woke the reader, requests that are waiting now are
            // answered by this drain (a busy ring must not starve them).
            while let Ok(more) = catch_up.try_recv() {
                replies.push(more);
            }
            if !self.drain(&tx, &shutdown).await {
                break;
            }
            if !replies.is_empty() && !send(&tx, ReaderMsg::CaughtUp(replies), &shutdown).await {
                break;
            }
            if check_drops {
                if let Some(msg) = self.check_drops() {
                    if !send(&tx, msg, &shutdown).await {
                        break;
                    }
                }
            }
        }
        debug!("ring reader stopped");
    }

    /// Sends every waiting record to the owner; false when it is gone.
    async fn drain(&mut self, tx: &mpsc::Sender<ReaderMsg>, shutdown: &CancellationToken) -> bool {
        loop {
            let mut batch = Vec::new();
            {
                let ring = self.ring.get_mut();
                while batch.len() < MAX_BATCH {
                    let Some(item) = ring.next() else { break };
                    match decode(&item) {
                        Ok(ev) => {
                            self.metrics.count_event(ev.kind);
                            batch.push(ev);
                        }
                        Err(error) => {
                            self.metrics.count_malformed();
                            warn!(%error, "malformed event record skipped");
                        }
                    }
                }
            }
            if batch.is_empty() {
                return true;
            }
            let full = batch.len() == MAX_BATCH;
            if !send(tx, ReaderMsg::Events(batch), shutdown).await {
                return false;
            }
            if !full {
                return true;
            }
        }
    }

    fn check_drops(&mut self) -> Option<ReaderMsg> {
        let total = match self.drops.get(&0, 0) {
            Ok(values) => values.iter().sum::<u64>(),
            Err(error) => {
                warn!(%error, "cannot read the eBPF drop counter");
                return None;
            }
        };
        if total <= self.reported_drops {
            return None;
        }
        let new = total - self.reported_drops;
        self.reported_drops = total;
        self.metrics.set_events_lost(total);
        warn!(
            new,
            total, "kernel dropped process events (ring buffer full); the table will be repaired from /proc"
        );
        Some(ReaderMsg::Lost { new, total })
    }
}

/// Registers a map's fd for readability with the tokio reactor.
fn register<T: std::os::fd::AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: the fd belongs to `inner`, which the AsyncFd owns: it stays
    // open and the same for the AsyncFd's whole life (aya maps never swap
    // their fd).
    unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }
        .map_err(|e| std::io::Error::other(e.to_string()))
}

async fn send(tx: &mpsc::Sender<ReaderMsg>, msg: ReaderMsg, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => false,
        sent = tx.send(msg) => sent.is_ok(),
    }
}

/// Forwards `aya-log` records from the programs to the `log` facade (and so
/// to tracing) until `shutdown`.
pub async fn run_logger(
    logger: aya_log::EbpfLogger<&'static dyn log::Log>,
    shutdown: CancellationToken,
) {
    let mut fd = match register(logger) {
        Ok(fd) => fd,
        Err(error) => {
            warn!(%error, "cannot poll the eBPF log buffer; eBPF-side logs are lost");
            return;
        }
    };
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            ready = fd.readable_mut() => match ready {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(error) => {
                    warn!(%error, "eBPF log buffer poll failed; eBPF-side logs are lost");
                    break;
                }
            },
        }
    }
}
