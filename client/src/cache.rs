//! [`Cache`]: a local copy of the agent's map, kept current by its `Watch`
//! stream, like a Kubernetes informer: list (the snapshot), then watch (the
//! changes), and on any break list again.
//!
//! A lookup reads a hash map under a read lock in the calling thread: no
//! socket, no await. The copy lags the agent by the `Watch` delivery
//! latency (a change is sent as soon as the agent applies it); while the
//! stream is down the copy stays as it was and [`Cache::is_synced`] says
//! so. After a reconnect the new snapshot replaces the copy at once, when
//! it is complete; exited processes seen before are kept for their grace
//! window, since the snapshot holds live processes only.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tracing::{debug, warn};

use crate::{
    client::{Client, Settings},
    proto::{self, watch_event::Event},
};

/// First wait before reconnecting; doubles up to `max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// How often exited processes and deleted containers past their grace
/// window are dropped when no change arrives.
const EXPIRY_TICK: Duration = Duration::from_secs(1);

/// How the cache connects and how much it keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// The agent to follow.
    pub client: Settings,
    /// How long an exited process (and a deleted container) stays in the
    /// cache after the cache learned of it: the agent's own default grace
    /// window, 30 s.
    pub exited_grace: Duration,
    /// Most exited processes (and deleted containers) kept at once; the
    /// oldest go first.
    pub max_exited: usize,
    /// Longest wait between reconnect attempts.
    pub max_backoff: Duration,
}

impl From<Settings> for CacheSettings {
    /// The defaults: a 30 s grace, 65,536 exited processes, reconnects
    /// backing off from 100 ms to 5 s.
    fn from(client: Settings) -> Self {
        Self {
            client,
            exited_grace: Duration::from_secs(30),
            max_exited: 65_536,
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// A cached answer.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The process's record as the agent last sent it, without its
    /// `container` (that is [`Entry::container`], kept current on its own).
    pub process: Arc<proto::ProcessRecord>,
    /// The process's container, as the agent last described it (for a
    /// container known from its cgroup path only, the record's
    /// `path_container_id`, `path_runtime` and `path_pod_uid` say what the
    /// path says).
    pub container: Option<Arc<proto::Container>>,
}

/// Counters of a cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Processes in the cache, exited ones included.
    pub processes: usize,
    /// Containers in the cache, deleted ones included.
    pub containers: usize,
    /// Snapshots applied (the first one, then one per reconnect).
    pub snapshots: u64,
    /// Watch events received.
    pub events: u64,
}

/// A local copy of the agent's map. See the module docs.
///
/// Dropping it stops following the agent.
#[derive(Debug)]
pub struct Cache {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    view: RwLock<View>,
    synced: watch::Sender<bool>,
    snapshots: AtomicU64,
    events: AtomicU64,
}

/// A container's key: (runtime namespace, id).
type ContainerKey = (String, String);

/// One process as cached: its record (container taken out) and its
/// container's key.
#[derive(Debug, Clone)]
struct Cached {
    record: Arc<proto::ProcessRecord>,
    start_time: u64,
    container: Option<ContainerKey>,
}

impl Cached {
    fn is_live(&self) -> bool {
        self.record.state != proto::ProcessState::Exited as i32
    }
}

/// What the cache knows. Per pid, the processes that held it (the live one,
/// and exited ones within the grace window).
#[derive(Debug, Default)]
struct View {
    processes: HashMap<u32, Vec<Cached>>,
    containers: HashMap<ContainerKey, Arc<proto::Container>>,
}

impl View {
    /// See [`Cache::get`].
    fn get(&self, pid: u32, start_time: Option<u64>) -> Option<Entry> {
        let slot = self.processes.get(&pid)?;
        let found = match start_time {
            Some(start) => slot.iter().find(|c| c.start_time == start)?,
            None => slot
                .iter()
                .find(|c| c.is_live())
                .or_else(|| slot.iter().max_by_key(|c| c.start_time))?,
        };
        Some(Entry {
            process: Arc::clone(&found.record),
            container: found
                .container
                .as_ref()
                .and_then(|key| self.containers.get(key))
                .cloned(),
        })
    }
}

/// What the task must forget later: exited processes and deleted
/// containers, oldest first.
#[derive(Debug, Default)]
struct Expiry {
    exited: VecDeque<(Instant, u32, u64)>,
    deleted: VecDeque<(Instant, ContainerKey)>,
}

impl Cache {
    /// Starts following the agent in a task of the current tokio runtime;
    /// lookups answer from the first complete snapshot on (see
    /// [`Cache::wait_synced`]).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn spawn(settings: CacheSettings) -> Self {
        let shared = Arc::new(Shared {
            view: RwLock::new(View::default()),
            synced: watch::Sender::new(false),
            snapshots: AtomicU64::new(0),
            events: AtomicU64::new(0),
        });
        let task = tokio::spawn(follow(Arc::clone(&shared), settings));
        Self { shared, task }
    }

    /// The process `pid` is, or was within the grace window. With
    /// `start_time`, only that exact process; without, the live one, else
    /// the one that exited last. `None` when the cache does not know it.
    pub fn get(&self, pid: u32, start_time: Option<u64>) -> Option<Entry> {
        self.shared.read().get(pid, start_time)
    }

    /// The container `id` in runtime namespace `namespace`, also one
    /// deleted within the grace window.
    pub fn container(&self, namespace: &str, id: &str) -> Option<Arc<proto::Container>> {
        let key = (namespace.to_owned(), id.to_owned());
        self.shared.read().containers.get(&key).cloned()
    }

    /// Whether the cache follows the agent right now: its snapshot is in
    /// and the stream is open.
    pub fn is_synced(&self) -> bool {
        *self.shared.synced.borrow()
    }

    /// Waits until the cache is synced (at once if it is).
    pub async fn wait_synced(&self) {
        let mut synced = self.shared.synced.subscribe();
        // The sender lives as long as `self`: this cannot fail.
        let _ = synced.wait_for(|s| *s).await;
    }

    /// Counters, for monitoring.
    pub fn stats(&self) -> CacheStats {
        let view = self.shared.read();
        CacheStats {
            processes: view.processes.values().map(Vec::len).sum(),
            containers: view.containers.len(),
            snapshots: self.shared.snapshots.load(Ordering::Relaxed),
            events: self.shared.events.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, View> {
        self.view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, View> {
        self.view
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Follows the agent until the cache is dropped: a session per
/// connection, with backoff between them.
async fn follow(shared: Arc<Shared>, settings: CacheSettings) {
    let mut expiry = Expiry::default();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let synced = session(&shared, &settings, &mut expiry).await;
        shared.synced.send_replace(false);
        if synced {
            backoff = FIRST_BACKOFF;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(settings.max_backoff.max(FIRST_BACKOFF));
    }
}

/// One connection: the snapshot, built aside and swapped in whole, then
/// the changes. Returns whether the snapshot was applied.
async fn session(shared: &Shared, settings: &CacheSettings, expiry: &mut Expiry) -> bool {
    let socket = settings.client.socket.display().to_string();
    let mut stream = match Client::connect(&settings.client).await {
        Ok(mut client) => match client.watch().await {
            Ok(stream) => stream,
            Err(status) => {
                debug!(%socket, %status, "pidmap cache: Watch refused; retrying");
                return false;
            }
        },
        Err(error) => {
            debug!(%socket, %error, "pidmap cache: agent not reachable; retrying");
            return false;
        }
    };
    let mut fresh = Some(View::default());
    let mut fresh_expiry = Expiry::default();
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    loop {
        let message = tokio::select! {
            message = stream.message() => message,
            _ = tick.tick() => {
                expire(&mut shared.write(), expiry, settings, Instant::now());
                continue;
            }
        };
        let event = match message {
            Ok(Some(proto::WatchEvent { event: Some(event) })) => event,
            Ok(Some(_)) => continue,
            Ok(None) => {
                warn!(%socket, "pidmap cache: the agent ended the Watch stream; re-syncing");
                return fresh.is_none();
            }
            Err(status) => {
                warn!(%socket, %status, "pidmap cache: Watch stream broken; re-syncing");
                return fresh.is_none();
            }
        };
        shared.events.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        match (&mut fresh, event) {
            (Some(_), Event::SnapshotDone(_)) => {
                let Some(mut view) = fresh.take() else {
                    continue;
                };
                let mut current = shared.write();
                let mut carried = carry_over(&current, &mut view, expiry);
                // What the snapshot itself brought is newer than what was
                // carried over.
                carried.exited.append(&mut fresh_expiry.exited);
                carried.deleted.append(&mut fresh_expiry.deleted);
                *current = view;
                *expiry = carried;
                expire(&mut current, expiry, settings, now);
                drop(current);
                shared.snapshots.fetch_add(1, Ordering::Relaxed);
                shared.synced.send_replace(true);
            }
            (Some(view), event) => apply(view, &mut fresh_expiry, event, now),
            (None, event) => {
                let mut current = shared.write();
                apply(&mut current, expiry, event, now);
                expire(&mut current, expiry, settings, now);
            }
        }
    }
}

/// Applies one Watch event to `view`.
fn apply(view: &mut View, expiry: &mut Expiry, event: Event, now: Instant) {
    match event {
        Event::Process(record) | Event::ProcessChanged(record) => {
            insert_process(view, expiry, record, now);
        }
        Event::Container(c) | Event::ContainerChanged(c) => {
            insert_container(view, c);
        }
        Event::ContainerDeleted(mut c) => {
            c.deleted = true;
            let key = insert_container(view, c);
            expiry.deleted.push_back((now, key));
        }
        Event::SnapshotDone(_) => {}
    }
}

fn insert_container(view: &mut View, c: proto::Container) -> ContainerKey {
    let key = (c.runtime_namespace.clone(), c.id.clone());
    view.containers.insert(key.clone(), Arc::new(c));
    key
}

fn insert_process(
    view: &mut View,
    expiry: &mut Expiry,
    mut record: proto::ProcessRecord,
    now: Instant,
) {
    // A record without a start time is the agent saying it no longer knows
    // the process: what the cache holds expires on its own.
    let Some(start_time) = record.start_time else {
        return;
    };
    if record.state == proto::ProcessState::Unknown as i32 {
        return;
    }
    let container = record.container.take().map(|c| insert_container(view, c));
    let pid = record.pid;
    let cached = Cached {
        record: Arc::new(record),
        start_time,
        container,
    };
    if !cached.is_live() {
        expiry.exited.push_back((now, pid, start_time));
    }
    let slot = view.processes.entry(pid).or_default();
    if cached.is_live() {
        // One pid, one live process: another live one must have exited
        // unseen.
        slot.retain(|c| !c.is_live() || c.start_time == start_time);
    }
    match slot.iter_mut().find(|c| c.start_time == start_time) {
        Some(old) => *old = cached,
        None => slot.push(cached),
    }
}

/// Keeps, in a new snapshot, the exited processes and deleted containers
/// the old view still holds (a snapshot lists live ones only); returns what
/// must expire of them.
fn carry_over(old: &View, new: &mut View, expiry: &Expiry) -> Expiry {
    let mut carried = Expiry::default();
    for &(at, pid, start_time) in &expiry.exited {
        let Some(old_one) = old
            .processes
            .get(&pid)
            .and_then(|slot| slot.iter().find(|c| c.start_time == start_time))
            .filter(|c| !c.is_live())
        else {
            continue;
        };
        let slot = new.processes.entry(pid).or_default();
        if !slot.iter().any(|c| c.start_time == start_time) {
            slot.push(old_one.clone());
            carried.exited.push_back((at, pid, start_time));
        }
    }
    for (at, key) in &expiry.deleted {
        if let (Some(c), false) = (old.containers.get(key), new.containers.contains_key(key)) {
            new.containers.insert(key.clone(), Arc::clone(c));
            carried.deleted.push_back((*at, key.clone()));
        }
    }
    carried
}

/// Drops exited processes and deleted containers past the grace window,
/// and the oldest beyond `max_exited`.
fn expire(view: &mut View, expiry: &mut Expiry, settings: &CacheSettings, now: Instant) {
    let old = |at: Instant| now.duration_since(at) >= settings.exited_grace;
    while let Some(&(at, pid, start_time)) = expiry.exited.front() {
        if !old(at) && expiry.exited.len() <= settings.max_exited {
            break;
        }
        expiry.exited.pop_front();
        if let Some(slot) = view.processes.get_mut(&pid) {
            slot.retain(|c| c.start_time != start_time || c.is_live());
            if slot.is_empty() {
                view.processes.remove(&pid);
            }
        }
    }
    while let Some((at, _)) = expiry.deleted.front() {
        if !old(*at) && expiry.deleted.len() <= settings.max_exited {
            break;
        }
        if let Some((_, key)) = expiry.deleted.pop_front()
            && view.containers.get(&key).is_some_and(|c| c.deleted)
        {
            view.containers.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests;
