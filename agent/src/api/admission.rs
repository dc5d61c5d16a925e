//! Which connections the API takes, so that no peer can lock the others
//! out by holding connections open.
//!
//! - At most `max` connections in all; the last `max / 16` places are kept
//!   for root (health checks, `kubectl exec … pidmap status`), so that
//!   other users filling the socket cannot lock root out.
//! - At most `per_peer` connections per peer. A non-root peer is its uid
//!   (a user's processes share one allowance, so forking does not buy
//!   more); a root peer is its process (root programs on a node are many
//!   and independent — a profiler, a security agent, the kubelet's
//!   checks — and none should lock the others out).
//!
//! A connection is counted while its [`Admitted`] lives, and charges the
//! bytes its clients leave unread to its peer's [`Pool`] (one per peer
//! key, shared by its connections) and to the agent's (see
//! [`super::budget`]).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use super::{
    budget::{ConnLedger, Pool},
    peer::Peer,
};
use crate::{metrics::Metrics, types::ProcKey};

/// One allowance of connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum PeerKey {
    /// A root process, as (pid, start time): a pid reused by another root
    /// process is another peer. A root peer whose start time could not be
    /// read has start time 0.
    RootProcess(ProcKey),
    /// Every process of a non-root user.
    User(u32),
    /// A peer whose credentials could not be read.
    Unknown,
}

impl PeerKey {
    pub(crate) fn of(peer: Option<&Peer>) -> Self {
        match peer {
            Some(p) if p.is_root() => p
                .process
                .or_else(|| {
                    p.pid
                        .map(|pid| ProcKey::new(pid, crate::types::StartTime(0)))
                })
                .map_or(Self::User(0), Self::RootProcess),
            Some(p) => Self::User(p.uid),
            None => Self::Unknown,
        }
    }

    fn is_root(self) -> bool {
        matches!(self, Self::RootProcess(_) | Self::User(0))
    }
}

impl std::fmt::Display for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::RootProcess(key) => write!(f, "root process {}", key.pid),
            Self::User(uid) => write!(f, "uid {uid}"),
            Self::Unknown => f.write_str("peers without credentials"),
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The peer holds all the connections one peer may hold.
    PerPeer { key: PeerKey, held: usize },
    /// The API serves all the connections it may serve to this peer.
    Full { open: usize, reserved: usize },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PerPeer { key, held } => write!(
                f,
                "too many API connections from {key}: it holds {held}, the most one peer may hold (max_connections_per_peer); close some or reuse one"
            ),
            Self::Full { open, reserved: 0 } => write!(
                f,
                "the API serves {open} connections, the most it may (max_connections)"
            ),
            Self::Full { open, reserved } => write!(
                f,
                "the API serves {open} connections, the most it may (max_connections; the last {reserved} places are kept for root)"
            ),
        }
    }
}

impl std::error::Error for Refused {}

impl Refused {
    /// The label of `pidmap_api_connections_refused_total`.
    #[cfg(test)]
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::PerPeer { .. } => "per_peer",
            Self::Full { .. } => "full",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    open: usize,
    /// Each peer's connections, and its pool of unread bytes.
    by_peer: HashMap<PeerKey, (usize, Arc<Pool>)>,
}

/// How many unread bytes the API holds for its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budgets {
    /// For one peer's connections together.
    pub per_peer: usize,
    /// For every peer together.
    pub total: usize,
}

impl Default for Budgets {
    fn default() -> Self {
        Self {
            per_peer: super::budget::DEFAULT_PER_PEER,
            total: super::budget::DEFAULT_TOTAL,
        }
    }
}

/// The connection counts and limits.
#[derive(Debug)]
pub(crate) struct Admission {
    max: usize,
    per_peer: usize,
    reserved_for_root: usize,
    counts: Mutex<Counts>,
    /// Each new peer's budget of unread bytes.
    unread_per_peer: usize,
    /// Every peer's together.
    unread_total: Arc<Pool>,
    /// Where the open count and refusals are reported.
    metrics: Arc<Metrics>,
}

impl Admission {
    /// At most `max` connections, `per_peer` per peer (both at least 1),
    /// holding at most `budgets` of unread bytes.
    pub(crate) fn new(
        max: usize,
        per_peer: usize,
        budgets: Budgets,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let max = max.max(1);
        Arc::new(Self {
            max,
            per_peer: per_peer.max(1),
            reserved_for_root: max / 16,
            counts: Mutex::default(),
            unread_per_peer: budgets.per_peer,
            unread_total: Pool::total(budgets.total, Arc::clone(&metrics)),
            metrics,
        })
    }

    /// Counts a connection from `peer`, or says why it may not be served.
    pub(crate) fn admit(self: &Arc<Self>, peer: Option<&Peer>) -> Result<Admitted, Refused> {
        let admitted = self.try_admit(PeerKey::of(peer));
        if let Err(refused) = &admitted {
            self.metrics
                .count_api_connection_refused(matches!(refused, Refused::PerPeer { .. }));
        }
        admitted
    }

    fn try_admit(self: &Arc<Self>, key: PeerKey) -> Result<Admitted, Refused> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let limit = if key.is_root() {
            self.max
        } else {
            self.max - self.reserved_for_root
        };
        if counts.open >= limit {
            return Err(Refused::Full {
                open: counts.open,
                reserved: self.reserved_for_root,
            });
        }
        let (held, pool) = counts
            .by_peer
            .entry(key)
            .or_insert_with(|| (0, Pool::per_peer(self.unread_per_peer)));
        if *held >= self.per_peer {
            return Err(Refused::PerPeer { key, held: *held });
        }
        *held += 1;
        let ledger = ConnLedger::new(
            Arc::clone(pool),
            Arc::clone(&self.unread_total),
            key.is_root(),
        );
        counts.open += 1;
        self.metrics.set_api_connections(counts.open);
        Ok(Admitted {
            admission: Arc::clone(self),
            key,
            ledger,
        })
    }

    /// Bytes held unread for every peer together.
    #[cfg(test)]
    pub(crate) fn unread(&self) -> usize {
        self.unread_total.held()
    }

    /// Connections open now.
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open
    }
}

/// A connection being served; uncounted when dropped.
#[derive(Debug)]
pub(crate) struct Admitted {
    admission: Arc<Admission>,
    key: PeerKey,
    ledger: Arc<ConnLedger>,
}

impl Admitted {
    /// The connection's ledger of unread bytes.
    pub(crate) fn ledger(&self) -> &Arc<ConnLedger> {
        &self.ledger
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut counts = self
            .admission
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        counts.open -= 1;
        self.admission.metrics.set_api_connections(counts.open);
        if let Some((held, _)) = counts.by_peer.get_mut(&self.key) {
            *held -= 1;
            if *held == 0 {
                counts.by_peer.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max: usize, per_peer: usize) -> Arc<Admission> {
        Admission::new(
            max,
            per_peer,
            Budgets::default(),
            Arc::new(Metrics::default()),
        )
    }

    fn peer(uid: u32, pid: u32) -> Peer {
        Peer::with_credentials(Some(pid), uid, uid, &[])
    }

    #[test]
    fn one_user_cannot_take_more_than_its_share() {
        let a = admission(256, 4);
        // Four processes of one user share one allowance.
        let held: Vec<_> = (0..4)
            .map(|i| a.admit(Some(&peer(1000, 100 + i))).expect("within"))
            .collect();
        let refused = a.admit(Some(&peer(1000, 200))).expect_err("over");
        assert_eq!(
            refused,
            Refused::PerPeer {
                key: PeerKey::User(1000),
                held: 4
            }
        );
        assert!(refused.to_string().contains("uid 1000"), "{refused}");
        // Others are served.
        let _other = a.admit(Some(&peer(1001, 300))).expect("another user");
        let _root = a.admit(Some(&peer(0, 1))).expect("root");
        drop(held);
        assert_eq!(a.open(), 2);
        let _again = a.admit(Some(&peer(1000, 200))).expect("places given back");
    }

    #[test]
    fn root_processes_have_their_own_allowances_and_reserved_room() {
        let a = admission(32, 32);
        // Non-root users fill everything they may: 32 - 32/16 = 30.
        let users: Vec<_> = (0..30)
            .map(|uid| a.admit(Some(&peer(1000 + uid, uid))).expect("user"))
            .collect();
        let full = a.admit(Some(&peer(5000, 1))).expect_err("full for users");
        assert_eq!(full.reason(), "full");
        assert!(full.to_string().contains("kept for root"), "{full}");
        // Root still gets the last two.
        let r1 = a.admit(Some(&peer(0, 10))).expect("root");
        let r2 = a.admit(Some(&peer(0, 11))).expect("root");
        assert!(a.admit(Some(&peer(0, 12))).is_err(), "nothing beyond max");
        drop((users, r1, r2));
        assert_eq!(a.open(), 0);
        let m = a.metrics.snapshot();
        assert_eq!(m.api_connections, 0);
        assert_eq!(
            (
                m.api_connections_refused_full,
                m.api_connections_refused_per_peer
            ),
            (2, 0)
        );
    }

    #[test]
    fn one_root_process_is_limited_like_any_peer() {
        let a = admission(256, 2);
        let _x = a.admit(Some(&peer(0, 10))).expect("1");
        let _y = a.admit(Some(&peer(0, 10))).expect("2");
        assert_eq!(
            a.admit(Some(&peer(0, 10))).expect_err("3").reason(),
            "per_peer"
        );
        let _z = a.admit(Some(&peer(0, 11))).expect("another root process");
    }

    #[test]
    fn a_root_pid_reused_by_another_process_is_another_peer() {
        let a = admission(256, 1);
        let mut first = peer(0, 10);
        first.process = Some(ProcKey::new(10, crate::types::StartTime(100)));
        let mut reused = peer(0, 10);
        reused.process = Some(ProcKey::new(10, crate::types::StartTime(900)));
        let _x = a.admit(Some(&first)).expect("first");
        assert!(a.admit(Some(&first)).is_err(), "the same process");
        let _y = a.admit(Some(&reused)).expect("a new process on the pid");
    }

    #[test]
    fn a_peers_connections_share_one_budget_of_unread_bytes() {
        let a = Admission::new(
            256,
            64,
            Budgets {
                per_peer: 1000,
                total: 1 << 20,
            },
            Arc::new(Metrics::default()),
        );
        let (x, y) = (
            a.admit(Some(&peer(1000, 1))).unwrap(),
            a.admit(Some(&peer(1000, 2))).unwrap(),
        );
        let other = a.admit(Some(&peer(1001, 3))).unwrap();
        x.ledger().open(1).charge(800).unwrap();
        assert!(y.ledger().open(1).charge(300).is_err(), "one user's budget");
        other
            .ledger()
            .open(1)
            .charge(800)
            .expect("another user's own");
        assert_eq!(a.unread(), 1600);
        drop((x, y, other));
        assert_eq!(a.unread(), 0, "closed connections hold nothing");
    }

    #[test]
    fn small_limits_keep_nothing_back() {
        let a = admission(2, 64);
        let _x = a.admit(None).expect("1");
        let _y = a.admit(None).expect("2");
        assert_eq!(a.admit(None).expect_err("3").reason(), "full");
    }
}
