//! The ground-truth checker: compares pidmap's answers, over its socket, with
//! /proc ([`oracle`](crate::oracle), none of pidmap's code) and with the
//! containers a test made in containerd. One implementation for the
//! ground-truth test under churn and for the fault-injection tests.
//!
//! A [`Checker`] round reads every process in /proc, asks pidmap about all of
//! them in one `ResolveBatch` (with their start times), and reads /proc
//! again; a process that changed between the two reads is counted
//! inconclusive, every other answer must equal the truth. `pending` is
//! accepted only while containerd is not synced (before/after the batch, by
//! `Status`), for a container created less than a second before (its
//! metadata in flight), or while the agent says its table was not current
//! (a repair after lost events, or a catch-up that timed out, around the
//! batch, by `Status`) — each counted apart. A ppid may lag a re-parenting
//! by 100 ms.
//! Kernel threads' comm is not compared: procfs makes a kworker's name up
//! from the work it is doing when read. A process in `do_exit`
//! (`PF_EXITING`) may answer running or exited: the kernel reports the exit
//! as `do_exit` begins, /proc shows the process alive until it ends.
//!
//! [`Run`] is what a test's churn and its checkers share: the containers made,
//! the expectations (an event and what must become true of a process), the
//! counts, latencies and wrong answers. [`container_churn`] starts, execs
//! into, kills and deletes containers (kubelet's layout and labels) and kills
//! containerd as it is told.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use pidmap::api::proto::{self, pidmap_client::PidmapClient};
use tonic::transport::Channel;

use crate::{
    containerd::{ContainerSpec, Containerd, RunningContainer},
    oracle::{self, ProcTruth},
};

/// Pause between checker rounds.
pub const ROUND: Duration = Duration::from_millis(50);
/// How long a ppid may lag a re-parenting.
const PPID_LAG: Duration = Duration::from_millis(100);
/// How long after its start a container's processes may be `pending` while
/// containerd is synced (its metadata is being fetched).
const METADATA_IN_FLIGHT: Duration = Duration::from_secs(1);
/// An event whose answer is not right after this is a wrong answer.
const EVENT_DEADLINE: Duration = Duration::from_secs(5);
/// The containerd namespace the churn's containers live in.
pub const CONTAINER_NAMESPACE: &str = "k8s.io";
/// Most wrong answers printed as they are found.
const PRINTED_WRONG: usize = 50;

/// A container the churn made, by cgroup path.
#[derive(Debug, Clone)]
pub struct Made {
    pub id: String,
    pub pod_name: String,
    pub started: Instant,
}

/// What should become true of a process, and since when.
#[derive(Debug, Clone)]
pub enum Want {
    Container(String),
    Comm(String),
    Ppid(u32),
}

#[derive(Debug, Clone)]
struct Expectation {
    kind: &'static str,
    pid: u32,
    start_time: u64,
    want: Want,
    since: Instant,
}

/// What a test's churn and its checkers share.
#[derive(Default)]
pub struct Run {
    /// Containers alive in containerd, by cgroup path.
    made: Mutex<HashMap<String, Made>>,
    expectations: Mutex<Vec<Expectation>>,
    latencies: Mutex<BTreeMap<&'static str, Vec<Duration>>>,
    counts: Mutex<BTreeMap<&'static str, u64>>,
    wrong: Mutex<Vec<String>>,
    stop: AtomicBool,
    /// Set while the agent is away (restarting, stopped): the checkers do
    /// not ask it.
    agent_away: AtomicBool,
    seed: AtomicU64,
}

/// Locks `m`, whether or not another thread panicked holding it (the panic
/// fails the test anyway).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Run {
    /// A run whose random choices follow from `seed`.
    pub fn new(seed: u64) -> Arc<Self> {
        Arc::new(Self {
            seed: AtomicU64::new(seed),
            ..Self::default()
        })
    }

    /// Adds `n` to the count of `what` (printed by [`report`](Self::report)).
    pub fn count(&self, what: &'static str, n: u64) {
        *lock(&self.counts).entry(what).or_default() += n;
    }

    /// The count of `what` so far.
    pub fn counted(&self, what: &str) -> u64 {
        lock(&self.counts).get(what).copied().unwrap_or(0)
    }

    /// Records a wrong answer.
    pub fn wrong(&self, what: String) {
        let mut wrong = lock(&self.wrong);
        if wrong.len() < PRINTED_WRONG {
            eprintln!("WRONG: {what}");
        }
        wrong.push(what);
    }

    /// The wrong answers recorded so far.
    pub fn wrong_answers(&self) -> Vec<String> {
        lock(&self.wrong).clone()
    }

    /// Records one sample of how long `kind` took.
    pub fn latency(&self, kind: &'static str, took: Duration) {
        lock(&self.latencies).entry(kind).or_default().push(took);
    }

    /// Expects `want` of process `pid` (as it is now) from now on.
    pub fn expect(&self, kind: &'static str, pid: u32, want: Want) {
        if let Some(t) = ProcTruth::read(pid) {
            lock(&self.expectations).push(Expectation {
                kind,
                pid,
                start_time: t.start_time,
                want,
                since: Instant::now(),
            });
        }
    }

    /// Records a container made in containerd, by its cgroup path.
    pub fn made(&self, cgroup_path: String, made: Made) {
        lock(&self.made).insert(cgroup_path, made);
    }

    /// Forgets a container deleted from containerd.
    pub fn unmade(&self, cgroup_path: &str) {
        lock(&self.made).remove(cgroup_path);
    }

    /// A small deterministic random number below `below` (xorshift).
    pub fn random(&self, below: u64) -> u64 {
        let mut x = self.seed.load(Ordering::Relaxed) | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed.store(x, Ordering::Relaxed);
        x % below.max(1)
    }

    /// Tells the churn and the checkers to end.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Whether the agent is away (the checkers do not ask it meanwhile).
    pub fn set_agent_away(&self, away: bool) {
        self.agent_away.store(away, Ordering::Release);
    }

    pub fn agent_away(&self) -> bool {
        self.agent_away.load(Ordering::Acquire)
    }

    /// Prints the counts, the wrong answers' number and the latencies.
    pub fn report(&self, title: &str) {
        println!("{title}");
        for (what, n) in lock(&self.counts).iter() {
            println!("  {what}: {n}");
        }
        println!("  wrong answers: {}", lock(&self.wrong).len());
        for (kind, samples) in lock(&self.latencies).iter_mut() {
            samples.sort();
            let q = |q: f64| {
                let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
                samples[i]
            };
            println!(
                "  {kind}: {} samples, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                samples.len(),
                q(0.5).as_secs_f64() * 1e3,
                q(0.99).as_secs_f64() * 1e3,
                q(1.0).as_secs_f64() * 1e3
            );
        }
    }

    /// Fails the test if any answer was wrong.
    pub fn assert_no_wrong_answers(&self) {
        let wrong = lock(&self.wrong);
        assert!(
            wrong.is_empty(),
            "{} wrong answers; the first: {:#?}",
            wrong.len(),
            &wrong[..wrong.len().min(10)]
        );
    }
}

/// A client of the agent at `socket`, if it answers.
pub async fn connect(socket: &Path) -> Option<PidmapClient<Channel>> {
    pidmap::cli::client::connect(socket).await.ok()
}

/// A client of the agent at `socket`; panics if it does not answer.
pub async fn client(socket: &Path) -> PidmapClient<Channel> {
    pidmap::cli::client::connect(socket)
        .await
        .unwrap_or_else(|f| panic!("{}", f.message))
}

/// What the agent's `Status` says about how current its answers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Currency {
    pub containerd_synced: bool,
    pub repairing: bool,
    pub rescans: u64,
    pub catch_up_timeouts: u64,
}

impl Currency {
    /// Asks the agent (`None` if it does not answer).
    pub async fn of(c: &mut PidmapClient<Channel>) -> Option<Self> {
        let s = c.status(proto::StatusRequest {}).await.ok()?.into_inner();
        Some(Self {
            containerd_synced: s.containerd_synced,
            repairing: s.repairing,
            rescans: s.rescans,
            catch_up_timeouts: s.catch_up_timeouts,
        })
    }

    /// Whether, between `before` and `after`, the agent said its table may
    /// not have been current for a query: it was repairing lost events at
    /// either end or started a repair between them, or a query's catch-up
    /// timed out. Its `pending` answers are then what it promised.
    pub fn unconfirmed_between(before: Option<Self>, after: Option<Self>) -> bool {
        match (before, after) {
            (Some(b), Some(a)) => {
                b.repairing
                    || a.repairing
                    || a.rescans != b.rescans
                    || a.catch_up_timeouts != b.catch_up_timeouts
            }
            _ => true,
        }
    }
}

/// What one round found.
#[derive(Debug, Default)]
pub struct Round {
    /// Answers compared with the truth.
    pub checked: u64,
    /// The wrong ones, described.
    pub wrong: Vec<String>,
    /// `pending` answers given while the agent said its table was not
    /// current (right, but not an answer yet).
    pub unconfirmed: u64,
}

/// Compares whole rounds of answers with /proc; remembers, between rounds,
/// since when a ppid has lagged.
pub struct Checker {
    run: Arc<Run>,
    ppid_lag: HashMap<(u32, u64), Instant>,
}

impl Checker {
    pub fn new(run: Arc<Run>) -> Self {
        Self {
            run,
            ppid_lag: HashMap::new(),
        }
    }

    /// One round over every process in /proc. Wrong answers are returned,
    /// not recorded: the caller decides whether they count (a fault test
    /// counts those before the agent has repaired apart).
    pub async fn round(&mut self, c: &mut PidmapClient<Channel>) -> Result<Round, tonic::Status> {
        let before: Vec<ProcTruth> = oracle::pids()
            .into_iter()
            .filter_map(ProcTruth::read)
            .collect();
        let status_before = Currency::of(c).await;
        let answers = c
            .resolve_batch(proto::ResolveBatchRequest {
                requests: before
                    .iter()
                    .map(|t| proto::ResolveRequest {
                        pid: t.pid.into(),
                        start_time: Some(t.start_time),
                    })
                    .collect(),
            })
            .await?
            .into_inner()
            .records;
        let status_after = Currency::of(c).await;
        let synced = |s: Option<Currency>| s.is_some_and(|s| s.containerd_synced);
        let not_synced = !synced(status_before) || !synced(status_after);
        let unconfirmed = Currency::unconfirmed_between(status_before, status_after);
        let made = lock(&self.run.made).clone();
        self.run.count("rounds", 1);
        let mut round = Round::default();
        for (truth, answer) in before.iter().zip(&answers) {
            if ProcTruth::read(truth.pid).as_ref() != Some(truth) {
                self.run.count("inconclusive (changed during the query)", 1);
                continue;
            }
            self.run.count("answers checked", 1);
            round.checked += 1;
            if unconfirmed && answer.state == proto::ProcessState::Pending as i32 {
                self.run
                    .count("pending (the agent's table not confirmed current)", 1);
                round.unconfirmed += 1;
                continue;
            }
            if let Err(what) = self.check(truth, answer, &made, not_synced) {
                round.wrong.push(format!(
                    "pid {} ({}): {what}; pidmap said {answer:?}; /proc said {truth:?}",
                    truth.pid, truth.comm
                ));
            }
        }
        Ok(round)
    }

    /// [`round`](Self::round), with its wrong answers recorded in the run.
    pub async fn record_round(
        &mut self,
        c: &mut PidmapClient<Channel>,
    ) -> Result<(), tonic::Status> {
        for what in self.round(c).await?.wrong {
            self.run.wrong(what);
        }
        Ok(())
    }

    /// Compares one answer with the truth.
    fn check(
        &mut self,
        truth: &ProcTruth,
        a: &proto::ProcessRecord,
        made: &HashMap<String, Made>,
        not_synced: bool,
    ) -> Result<(), String> {
        let run = &self.run;
        let state = proto::ProcessState::try_from(a.state).unwrap_or_default();
        if truth.is_zombie() {
            if state != proto::ProcessState::Exited {
                return Err(format!("an exited (zombie) process answered {state:?}"));
            }
            return Ok(());
        }
        if truth.is_exiting() {
            // In do_exit: the kernel reported the exit at its start; running
            // and exited are both true for a moment.
            run.count("exiting (in do_exit) when checked", 1);
            return match state {
                proto::ProcessState::Running | proto::ProcessState::Exited => Ok(()),
                other => Err(format!("an exiting process answered {other:?}")),
            };
        }
        let container = truth.unified.as_deref().and_then(|path| made.get(path));
        if container.is_none() && truth.unified.as_deref().is_some_and(foreign_container) {
            // Another containerd's or another runtime's container (another
            // test's, on a shared machine): not in the containerd the agent
            // watches, so neither side of the comparison knows it.
            run.count("skipped: containers of another containerd or runtime", 1);
            return Ok(());
        }
        match state {
            proto::ProcessState::Running => {}
            proto::ProcessState::Pending if container.is_some() && not_synced => {
                run.count("pending (containerd not synced)", 1);
                return Ok(());
            }
            proto::ProcessState::Pending
                if container.is_some_and(|m| m.started.elapsed() < METADATA_IN_FLIGHT) =>
            {
                run.count("pending (metadata in flight)", 1);
                return Ok(());
            }
            other => return Err(format!("state {other:?}")),
        }
        let mut wrong = Vec::new();
        if a.start_time != Some(truth.start_time) {
            wrong.push(format!("start time {:?}", a.start_time));
        }
        if !truth.kernel_thread && a.comm.as_deref() != Some(truth.comm.as_str()) {
            wrong.push(format!("comm {:?}", a.comm));
        }
        let key = (truth.pid, truth.start_time);
        if a.ppid == Some(truth.ppid) {
            self.ppid_lag.remove(&key);
        } else {
            let since = *self.ppid_lag.entry(key).or_insert_with(Instant::now);
            if since.elapsed() > PPID_LAG {
                wrong.push(format!("ppid {:?} for over {PPID_LAG:?}", a.ppid));
            } else {
                run.count("ppid not yet re-parented (within 100 ms)", 1);
            }
        }
        match (
            truth.placement(),
            a.cgroup_hierarchy.as_deref(),
            a.cgroup_path.as_deref(),
        ) {
            (Some((h, path)), Some(ah), Some(ap)) if h == ah && path == ap => {}
            (placement, ah, ap) => {
                wrong.push(format!("cgroup {ah:?} {ap:?}, truth {placement:?}"));
            }
        }
        let source = proto::Source::try_from(a.source).unwrap_or_default();
        match container {
            Some(m) => {
                let by_containerd = source == proto::Source::Containerd
                    && a.container.as_ref().is_some_and(|c| {
                        c.id == m.id && c.pod_name.as_deref() == Some(m.pod_name.as_str())
                    });
                let by_path = not_synced
                    && source == proto::Source::CgroupPath
                    && a.path_container_id.as_deref() == Some(m.id.as_str());
                if by_path {
                    run.count("cgroup-path answers (containerd not synced)", 1);
                } else if !by_containerd {
                    wrong.push(format!("not container {} (pod {})", m.id, m.pod_name));
                }
            }
            None if source != proto::Source::Host => {
                wrong.push(format!("source {source:?} for a host process"));
            }
            None => {}
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join("; "))
        }
    }
}

/// A container runtime's cgroup layout: containerd's (kubepods, or
/// `/<namespace>/…` of the namespaces containerd always has), or a cgroup of
/// podman, CRI-O or Docker (`libpod-…`, `crio-…`, `docker-…`, `/docker/…`).
fn foreign_container(path: &str) -> bool {
    let containerd = ["/kubepods/", "/k8s.io/", "/default/", "/moby/", "/docker/"]
        .iter()
        .any(|prefix| path.starts_with(prefix));
    let other = path.split('/').any(|name| {
        ["libpod-", "crio-", "docker-"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
    });
    containerd || other
}

/// After `pause`, the client to ask this time: none while the agent is
/// away, and none on the turn that (re)connects.
async fn next_turn<'a>(
    client: &'a mut Option<PidmapClient<Channel>>,
    socket: &Path,
    run: &Run,
    pause: Duration,
) -> Option<&'a mut PidmapClient<Channel>> {
    tokio::time::sleep(pause).await;
    if run.agent_away() {
        *client = None;
        return None;
    }
    if client.is_none() {
        *client = connect(socket).await;
        return None;
    }
    client.as_mut()
}

/// Checker rounds until the run stops; every wrong answer is recorded.
pub async fn check_rounds(socket: PathBuf, run: Arc<Run>) {
    let mut client: Option<PidmapClient<Channel>> = None;
    let mut checker = Checker::new(Arc::clone(&run));
    while !run.stopped() {
        let Some(c) = next_turn(&mut client, &socket, &run, ROUND).await else {
            continue;
        };
        if checker.record_round(c).await.is_err() {
            // Only while the agent is away may it not answer.
            if !run.agent_away() && !run.stopped() {
                run.count("rounds the agent did not answer", 1);
            }
            client = None;
        }
    }
}

/// Resolves each expectation until it holds, and records how long that took.
pub async fn poll_expectations(socket: PathBuf, run: Arc<Run>) {
    let mut client: Option<PidmapClient<Channel>> = None;
    while !run.stopped() {
        let pause = Duration::from_millis(1);
        let Some(c) = next_turn(&mut client, &socket, &run, pause).await else {
            continue;
        };
        let waiting = std::mem::take(&mut *lock(&run.expectations));
        let mut still = Vec::new();
        for e in waiting {
            let answer = c
                .resolve(proto::ResolveRequest {
                    pid: e.pid.into(),
                    start_time: Some(e.start_time),
                })
                .await;
            let Ok(a) = answer.map(tonic::Response::into_inner) else {
                still.push(e);
                client = None;
                break;
            };
            let gone = ProcTruth::read(e.pid).is_none_or(|t| t.start_time != e.start_time);
            let met = match &e.want {
                Want::Container(id) => a.container.as_ref().is_some_and(|c| &c.id == id),
                Want::Comm(name) => a.comm.as_deref() == Some(name.as_str()),
                Want::Ppid(p) => a.ppid == Some(*p),
            };
            // A later rename of the same process makes this one moot.
            let superseded = matches!(&e.want, Want::Comm(_))
                && lock(&run.expectations)
                    .iter()
                    .any(|x| x.pid == e.pid && x.since > e.since);
            if met {
                run.latency(e.kind, e.since.elapsed());
            } else if gone || superseded {
                run.count("events superseded or gone before checked", 1);
            } else if e.since.elapsed() > EVENT_DEADLINE {
                run.wrong(format!(
                    "{}: pid {} never got {:?} within {EVENT_DEADLINE:?}: {a:?}",
                    e.kind, e.pid, e.want
                ));
            } else {
                still.push(e);
            }
        }
        lock(&run.expectations).extend(still);
    }
}

/// When the churn kills containerd (SIGKILL, then a restart).
#[derive(Debug, Clone, Copy)]
pub enum ContainerdKills {
    /// Once, 40 % into the churn.
    Once,
    /// Every this often.
    Every(Duration),
}

/// Starts, execs into, kills and deletes containers for `total` (or until
/// the run stops), and kills containerd as `kills` says. Returns the
/// containers left.
pub fn container_churn(
    ctrd: &Containerd,
    run: &Run,
    total: Duration,
    kills: ContainerdKills,
) -> Vec<RunningContainer> {
    let started = Instant::now();
    let mut alive: Vec<RunningContainer> = Vec::new();
    let mut next = 0u64;
    let mut execs = 0u64;
    let mut next_kill = match kills {
        ContainerdKills::Once => Some(total * 2 / 5),
        ContainerdKills::Every(period) => Some(period),
    };
    while started.elapsed() < total && !run.stopped() {
        if next_kill.is_some_and(|at| started.elapsed() > at) {
            next_kill = match kills {
                ContainerdKills::Once => None,
                ContainerdKills::Every(period) => Some(started.elapsed() + period),
            };
            ctrd.kill();
            run.count("containerd kills", 1);
            ctrd.restart();
            // Containers made while pidmap is still reconnecting.
            for _ in 0..2 {
                alive.push(start_container(ctrd, run, &mut next));
            }
            continue;
        }
        match run.random(100) {
            0..30 if alive.len() < 8 => alive.push(start_container(ctrd, run, &mut next)),
            30..60 if !alive.is_empty() => {
                let c = &alive[run.random(alive.len() as u64) as usize];
                execs += 1;
                let pid = c.exec(
                    &format!("loop{execs}"),
                    ["/bin/sh", "-c", "while true; do /bin/sleep 1; done"],
                );
                run.count("execs", 1);
                run.expect("exec → container", pid, Want::Container(c.id().to_owned()));
            }
            60..75 if !alive.is_empty() => {
                // An exec whose child is orphaned inside the container (the
                // exec itself is gone at once: no pid to wait for).
                let c = &alive[run.random(alive.len() as u64) as usize];
                execs += 1;
                let exec_id = format!("orphan{execs}");
                ctrd.ctr_ok([
                    "-n",
                    c.namespace(),
                    "tasks",
                    "exec",
                    "-d",
                    "--exec-id",
                    exec_id.as_str(),
                    c.id(),
                    "/bin/sh",
                    "-c",
                    "/bin/sleep 600 </dev/null >/dev/null 2>&1 & exit 0",
                ]);
                run.count("execs", 1);
            }
            75..90 if alive.len() > 3 => {
                let c = alive.swap_remove(run.random(alive.len() as u64) as usize);
                let path = c.cgroup_path().to_owned();
                c.delete();
                run.unmade(&path);
                run.count("container deletes", 1);
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    alive
}

/// Runs container number `next + 1` in kubelet's cgroup layout, with a
/// pod's labels, and expects its init process to resolve to it.
pub fn start_container(ctrd: &Containerd, run: &Run, next: &mut u64) -> RunningContainer {
    *next += 1;
    let n = *next;
    let id = format!("{:016x}{:048x}", u64::from(std::process::id()), n);
    let uid = format!("{:08x}-0000-4000-8000-{n:012x}", std::process::id());
    let pod_name = format!("web-{n}");
    // Known as ours before its first process exists.
    let cgroup = format!("/kubepods/besteffort/pod{uid}/{id}");
    run.made(
        cgroup.clone(),
        Made {
            id: id.clone(),
            pod_name: pod_name.clone(),
            started: Instant::now(),
        },
    );
    let c = ctrd.run(
        ContainerSpec::new(id.clone())
            .namespace(CONTAINER_NAMESPACE)
            .kubepods("besteffort", &uid)
            .label("io.kubernetes.pod.name", pod_name.clone())
            .label("io.kubernetes.pod.namespace", "gt")
            .label("io.kubernetes.pod.uid", uid.clone())
            .label("io.kubernetes.container.name", "app"),
    );
    assert_eq!(c.cgroup_path(), cgroup);
    run.count("container starts", 1);
    run.expect(
        "container start → container",
        c.init_pid(),
        Want::Container(id),
    );
    c
}
