//! `Watch` (and `/v1/watch`): the snapshot, then changes, pulled by the
//! client's reads.
//!
//! A watcher holds no queue of its own. Its stream subscribes to the
//! state's changes when it is made, and produces the next event only when
//! the connection asks for it — that is, when HTTP/2 (or HTTP/1.1) has room
//! to send it — so what waits for a slow client is the changes it has not
//! taken yet, kept once for every watcher in the state's change buffer, and
//! the one or two chunks hyper holds (charged to the peer's budget, see
//! [`super::budget`]). Even the snapshot is produced a chunk at a time,
//! from cursors into the container store and the process table, not copied
//! in full for every watcher.
//!
//! **Cut off by lag.** After its snapshot, a watcher that has more than
//! `watch_buffer` changes waiting, not taken, is ended with
//! `RESOURCE_EXHAUSTED` the next time it is polled, and so is one the change
//! buffer overran (during the snapshot too). A reader that keeps up is never
//! cut off by a burst: the changes a burst makes count only until the
//! reader takes them. A client that stops reading takes nothing; it learns
//! it was cut off when it reads again (a client that never reads again is
//! closed by the keep-alive). Cut-offs are counted in
//! `pidmap_api_cut_offs_total{reason="watch_lag"}`.

use std::{
    collections::{BTreeSet, VecDeque},
    ops::Bound,
    sync::Arc,
};

use tokio::sync::broadcast;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::debug;

use super::{
    convert,
    proto::{self, watch_event::Event},
};
use crate::{
    metrics::CutOff,
    resolver::{self, path_containers, resolve},
    state::{Change, State, container::ContainerKey},
};

/// How many snapshot entries are taken from the state at once.
const CHUNK: usize = 64;

/// A watcher's stream: see the module docs. `buffer` is `watch_buffer`.
pub(crate) fn stream(
    state: Arc<State>,
    buffer: usize,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<proto::WatchEvent, Status>> + Send + 'static {
    // Subscribe first, then snapshot: nothing between the two is lost (a
    // change may repeat what the snapshot already shows).
    let changes = state.subscribe_changes();
    let feed = Feed {
        state,
        changes,
        buffer,
        shutdown,
        snapshot: Some(Snapshot::Containers(None)),
        pending: VecDeque::new(),
        announced: BTreeSet::new(),
        ended: false,
    };
    futures_util::stream::unfold(feed, |mut feed| async move {
        let item = feed.next().await?;
        Some((item, feed))
    })
}

/// Where the snapshot is: the last key of each part given.
#[derive(Debug)]
enum Snapshot {
    /// containerd's containers (not deleted) after this key.
    Containers(Option<ContainerKey>),
    /// Containers known from cgroup paths after this key.
    PathContainers(Option<ContainerKey>),
    /// Live processes after this pid.
    Processes(u32),
}

struct Feed {
    state: Arc<State>,
    changes: broadcast::Receiver<Change>,
    buffer: usize,
    shutdown: CancellationToken,
    /// `None` once the snapshot is done.
    snapshot: Option<Snapshot>,
    /// Events made and not given yet (a chunk of the snapshot, or the
    /// events of one change).
    pending: VecDeque<Event>,
    /// Path-known containers this watcher was told about (to tell it when
    /// they go).
    announced: BTreeSet<ContainerKey>,
    ended: bool,
}

impl Feed {
    /// The next item, or `None` once the stream is over.
    async fn next(&mut self) -> Option<Result<proto::WatchEvent, Status>> {
        if self.ended {
            return None;
        }
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(proto::WatchEvent { event: Some(event) }));
            }
            if let Some(part) = self.snapshot.take() {
                self.snapshot = self.snapshot_chunk(part);
                continue;
            }
            if self.changes.len() > self.buffer {
                let lag = self.changes.len();
                return Some(Err(self.cut_off(format!(
                    "watcher too slow: {lag} changes wait for it, more than watch_buffer \
                     ({}); reconnect to get a fresh snapshot",
                    self.buffer
                ))));
            }
            let change = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => {
                    self.ended = true;
                    // The stream ends with a reason a client can act on.
                    return Some(Err(Status::unavailable(
                        "pidmap is shutting down; reconnect to its replacement",
                    )));
                }
                change = self.changes.recv() => change,
            };
            match change {
                Ok(change) => self.on_change(change),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    return Some(Err(self.cut_off(format!(
                        "watcher too slow: {n} changes dropped; reconnect to get a fresh snapshot"
                    ))));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Ends the stream: this is the last item.
    fn cut_off(&mut self, reason: String) -> Status {
        self.ended = true;
        self.state.metrics().count_cut_off(CutOff::WatchLag);
        debug!(%reason, "cutting a watcher off");
        Status::resource_exhausted(reason)
    }

    /// Puts the next chunk of the snapshot into `pending`; the part that
    /// comes after it, or `None` once `SnapshotDone` is queued.
    fn snapshot_chunk(&mut self, part: Snapshot) -> Option<Snapshot> {
        let state = Arc::clone(&self.state);
        match part {
            Snapshot::Containers(after) => {
                let store = state.containers();
                let mut keys: Vec<&ContainerKey> = store
                    .iter()
                    .filter(|c| c.deleted_at_ns.is_none())
                    .map(|c| &c.key)
                    .filter(|k| after.as_ref().is_none_or(|a| *k > a))
                    .collect();
                keys.sort_unstable();
                keys.truncate(CHUNK);
                let last = keys.last().map(|k| (*k).clone());
                self.pending.extend(
                    keys.iter()
                        .filter_map(|k| store.get(k))
                        .map(|c| Event::Container(convert::container(c))),
                );
                Some(match last {
                    Some(last) if keys.len() == CHUNK => Snapshot::Containers(Some(last)),
                    _ => Snapshot::PathContainers(None),
                })
            }
            Snapshot::PathContainers(after) => {
                let by_path = path_containers(&state);
                let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
                let chunk: Vec<_> = by_path
                    .range((lower, Bound::Unbounded))
                    .take(CHUNK)
                    .collect();
                let last = chunk.last().map(|(k, _)| (*k).clone());
                for (key, entry) in &chunk {
                    self.announced.insert((*key).clone());
                    self.pending
                        .push_back(Event::Container(convert::path_container(entry)));
                }
                Some(match last {
                    Some(last) if chunk.len() == CHUNK => Snapshot::PathContainers(Some(last)),
                    _ => Snapshot::Processes(0),
                })
            }
            Snapshot::Processes(after) => {
                let pids = state.table().live_pids_after(after, CHUNK);
                self.pending.extend(
                    pids.iter()
                        .map(|&pid| Event::Process(convert::record(&resolve(&state, pid, None)))),
                );
                match pids.last() {
                    Some(&last) if pids.len() == CHUNK => Some(Snapshot::Processes(last)),
                    _ => {
                        self.pending.push_back(Event::SnapshotDone(true));
                        None
                    }
                }
            }
        }
    }

    /// Queues the events a change makes. Containers known only from
    /// cgroup paths are announced before the first of their processes, and
    /// announced deleted once their last process has left the grace
    /// window.
    fn on_change(&mut self, change: Change) {
        let state = Arc::clone(&self.state);
        let state = &state;
        match change {
            Change::Process(key) => {
                let r = resolve(state, key.pid, Some(key.start_time));
                if let Some(pc) = &r.path_container
                    && r.source == Some(resolver::Source::CgroupPath)
                    && r.state != resolver::Resolved::Pending
                {
                    let key = resolver::path_container_key(pc);
                    if !self.announced.contains(&key)
                        && let Some(entry) = path_containers(state).get(&key)
                    {
                        self.pending
                            .push_back(Event::ContainerChanged(convert::path_container(entry)));
                        self.announced.insert(key);
                    }
                }
                self.pending
                    .push_back(Event::ProcessChanged(convert::record(&r)));
            }
            Change::Container(key) => match state.containers().get(&key) {
                Some(c) if c.deleted_at_ns.is_some() => self
                    .pending
                    .push_back(Event::ContainerDeleted(convert::container(c))),
                Some(c) => self
                    .pending
                    .push_back(Event::ContainerChanged(convert::container(c))),
                None => {}
            },
            Change::Expired => {
                let now = path_containers(state);
                let gone: Vec<ContainerKey> = self
                    .announced
                    .iter()
                    .filter(|k| !now.contains_key(*k))
                    .cloned()
                    .collect();
                for k in gone {
                    self.pending
                        .push_back(Event::ContainerDeleted(convert::gone_path_container(&k)));
                    self.announced.remove(&k);
                }
            }
        }
    }
}
