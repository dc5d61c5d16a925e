//! The NRI plugin task: keeps a session with the runtime's NRI socket and writes what the
//! runtime tells into the container store.
//!
//! Every update is applied before its answer goes back (the store write is a lock and a few
//! map operations; a cgroup id lookup is one syscall), so the runtime waits microseconds,
//! and a container is resolvable from the moment the runtime asked `CreateContainer` —
//! before runc made its cgroup. When the socket is missing or the session ends (the runtime
//! restarted), the task reconnects with capped exponential backoff; the runtime's next
//! `Synchronize` is reconciled against what NRI had told, so nothing is lost or duplicated.

use std::{collections::HashMap, path::PathBuf, sync::Mutex, time::Duration};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{SessionEnd, Update, session, wire};
use crate::{
    cgroup::CgroupFs,
    runtime::containerd::{FirstContact, spec::cgroup_dir},
    state::{
        Change, ContainerWriter, NriLink,
        container::{Container, ContainerKey, PodIdentity, Sources, TaskStatus, namespaces},
        containers::ReconcileStats,
    },
    util::{chain, duration_ns, monotonic_ns},
};

/// First reconnect delay; doubles up to the configured cap.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Pods NRI's `Synchronize` and events may make the plugin remember (a node runs at most a
/// few hundred); beyond it further pods are not remembered, and a container whose pod is
/// not takes its identity from its own labels and annotations.
const MAX_PODS: usize = 16_384;
/// Pods and containers one `Synchronize` may hand over (its parts together); beyond it the
/// rest is not kept (and logged): a runtime cannot make the agent hold more.
const MAX_SYNC: usize = 1 << 17;
/// Annotations naming a container's image: containerd's CRI, CRI-O.
const IMAGE_ANNOTATIONS: [&str; 2] = [
    "io.kubernetes.cri.image-name",
    "io.kubernetes.cri-o.ImageName",
];

/// Plugin settings.
#[derive(Debug, Clone)]
pub(crate) struct PluginConfig {
    pub socket: PathBuf,
    pub max_backoff: Duration,
    /// How long deleted containers stay resolvable.
    pub grace: Duration,
}

/// The plugin task. See the module docs.
pub(crate) struct Plugin {
    config: PluginConfig,
    applier: Mutex<Applier>,
}

/// What a session's updates are applied with.
struct Applier {
    writer: ContainerWriter,
    fs: std::sync::Arc<CgroupFs>,
    first_contact: Option<oneshot::Sender<FirstContact>>,
    /// The runtime's name, as `Configure` gave it (`containerd`, `cri-o`).
    runtime: String,
    /// Pods by id, for the identity of containers whose events come without their pod.
    pods: HashMap<String, wire::PodSandbox>,
    /// `Synchronize` parts received so far.
    sync: Vec<Container>,
    /// Parts were dropped (over [`MAX_SYNC`]): the list is not whole, so it retires nothing.
    sync_truncated: bool,
    /// Registered in this session (`Configure` came).
    registered: bool,
}

impl Plugin {
    pub(crate) fn new(
        config: PluginConfig,
        writer: ContainerWriter,
        fs: std::sync::Arc<CgroupFs>,
        first_contact: oneshot::Sender<FirstContact>,
    ) -> Self {
        Self {
            config,
            applier: Mutex::new(Applier {
                writer,
                fs,
                first_contact: Some(first_contact),
                runtime: String::new(),
                pods: HashMap::new(),
                sync: Vec::new(),
                sync_truncated: false,
                registered: false,
            }),
        }
    }

    fn applier(&self) -> std::sync::MutexGuard<'_, Applier> {
        self.applier
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs until `shutdown`, reconnecting whenever the session ends.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut backoff = BACKOFF_START;
        let mut said_absent = false;
        loop {
            let ended = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                ended = self.session() => ended,
            };
            let (was, registered) = {
                let mut a = self.applier();
                let registered = std::mem::take(&mut a.registered);
                // The next session's Synchronize tells everything again.
                a.sync.clear();
                a.sync_truncated = false;
                a.pods.clear();
                (a.writer.set_nri_link(NriLink::Down, None), registered)
            };
            if registered {
                backoff = BACKOFF_START;
            }
            if was == NriLink::Synced {
                self.applier()
                    .writer
                    .state()
                    .metrics()
                    .count_nri_reconnect();
            }
            match &ended {
                SessionEnd::Connect { .. } => {
                    self.applier().tell_first(FirstContact::Unreachable);
                    if !said_absent {
                        info!(
                            socket = %self.config.socket.display(),
                            error = %chain(&ended),
                            "no NRI socket to register with; will keep retrying"
                        );
                        said_absent = true;
                    } else {
                        debug!(error = %chain(&ended), "NRI socket still not reachable");
                    }
                }
                _ => {
                    warn!(error = %chain(&ended), "NRI session ended; reconnecting");
                    said_absent = false;
                }
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
        self.applier().writer.set_nri_link(NriLink::Down, None);
        debug!("NRI plugin stopped");
    }

    /// One session, with deleted containers expired every second meanwhile.
    async fn session(&self) -> SessionEnd {
        let metrics = self.applier().writer.state().metrics_handle();
        let run = session(
            &self.config.socket,
            |update| self.applier().apply(update),
            |took| metrics.nri_answer.record(duration_ns(took)),
        );
        tokio::pin!(run);
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        let grace = duration_ns(self.config.grace);
        loop {
            tokio::select! {
                biased;
                ended = &mut run => return ended.err().unwrap_or(SessionEnd::Closed),
                _ = sweep.tick() => {
                    let removed = self.applier().writer.store().expire(monotonic_ns(), grace);
                    if removed > 0 {
                        debug!(removed, "deleted containers expired");
                    }
                }
            }
        }
    }
}

impl Applier {
    fn tell_first(&mut self, contact: FirstContact) {
        if let Some(tx) = self.first_contact.take() {
            let _ = tx.send(contact);
        }
    }

    fn apply(&mut self, update: Update) {
        self.writer.state().metrics().count_nri_event();
        match update {
            Update::Configured { runtime, version } => {
                info!(%runtime, %version, "registered with the runtime's NRI");
                self.registered = true;
                let name = format!("{runtime} {version}").trim().to_owned();
                self.runtime = runtime;
                self.writer.set_nri_link(NriLink::Registered, Some(name));
            }
            Update::Synchronize(part) => {
                if self.sync.len() + part.pods.len() + part.containers.len() > MAX_SYNC {
                    if !std::mem::replace(&mut self.sync_truncated, true) {
                        warn!(
                            held = self.sync.len(),
                            limit = MAX_SYNC,
                            "NRI Synchronize larger than the agent keeps; the rest of it is dropped"
                        );
                    }
                } else {
                    for pod in &part.pods {
                        self.sync.push(pod_record(&self.runtime, pod, None));
                        self.remember(pod);
                    }
                    for c in &part.containers {
                        let pod = self.pods.get(&c.pod_sandbox_id);
                        self.sync
                            .push(container_record(&self.runtime, c, pod, None));
                    }
                }
                if part.more {
                    return;
                }
                let listed = std::mem::take(&mut self.sync);
                let keys: Vec<ContainerKey> = listed.iter().map(|c| c.key.clone()).collect();
                let stats = if std::mem::take(&mut self.sync_truncated) {
                    let mut store = self.writer.store();
                    for c in listed {
                        store.upsert_nri(c);
                    }
                    ReconcileStats::default()
                } else {
                    self.writer.store().reconcile_nri(listed, monotonic_ns())
                };
                for key in &keys {
                    crate::runtime::refresh_cgroup_ids(&self.writer, &self.fs, key);
                    self.writer.notify(|| Change::Container(key.clone()));
                }
                info!(
                    added = stats.added,
                    updated = stats.updated,
                    deleted = stats.deleted,
                    "NRI synchronized"
                );
                self.writer.set_nri_link(NriLink::Synced, None);
                self.tell_first(FirstContact::Synced);
            }
            Update::Event {
                event,
                pod,
                container,
            } => self.event(event, pod.as_deref(), container.as_deref()),
        }
    }

    fn remember(&mut self, pod: &wire::PodSandbox) {
        if self.pods.len() >= MAX_PODS && !self.pods.contains_key(&pod.id) {
            return;
        }
        self.pods.insert(pod.id.clone(), pod.clone());
    }

    fn event(
        &mut self,
        event: wire::Event,
        pod: Option<&wire::PodSandbox>,
        container: Option<&wire::Container>,
    ) {
        use wire::Event as E;
        debug!(
            ?event,
            pod = pod.map(|p| p.id.as_str()),
            container = container.map(|c| c.id.as_str()),
            "NRI event"
        );
        let now = monotonic_ns();
        let key = match (event, container, pod) {
            (E::RemoveContainer, Some(c), _) => {
                let key = key_of(&c.id);
                self.writer.store().retire(&key, Sources::NRI, now);
                key
            }
            (E::RemovePodSandbox, None, Some(p)) => {
                self.pods.remove(&p.id);
                let key = key_of(&p.id);
                self.writer.store().retire(&key, Sources::NRI, now);
                key
            }
            (_, Some(c), pod) => {
                let status = match event {
                    E::CreateContainer | E::PostCreateContainer => Some(TaskStatus::Created),
                    E::StartContainer | E::PostStartContainer => Some(TaskStatus::Running),
                    E::StopContainer => Some(TaskStatus::Stopped),
                    _ => None,
                };
                if let Some(p) = pod {
                    self.remember(p);
                }
                let pod = pod.or_else(|| self.pods.get(&c.pod_sandbox_id));
                let record = container_record(&self.runtime, c, pod, status);
                let key = record.key.clone();
                self.writer.store().upsert_nri(record);
                key
            }
            (_, None, Some(p)) => {
                let status = match event {
                    E::RunPodSandbox => Some(TaskStatus::Running),
                    E::StopPodSandbox => Some(TaskStatus::Stopped),
                    _ => None,
                };
                self.remember(p);
                let record = pod_record(&self.runtime, p, status);
                let key = record.key.clone();
                self.writer.store().upsert_nri(record);
                key
            }
            (_, None, None) => return,
        };
        crate::runtime::refresh_cgroup_ids(&self.writer, &self.fs, &key);
        self.writer.notify(|| Change::Container(key));
    }
}

/// NRI's containers are the runtime's CRI containers: containerd keeps them in namespace
/// `k8s.io`, so records from both sources meet under one key; CRI-O has no namespaces and
/// its containers take the same one.
fn key_of(id: &str) -> ContainerKey {
    ContainerKey::new(namespaces::KUBERNETES, id)
}

/// A container state as NRI numbers it.
fn status_of(state: i32) -> TaskStatus {
    match state {
        1 => TaskStatus::Created,
        2 => TaskStatus::Paused,
        3 => TaskStatus::Running,
        4 => TaskStatus::Stopped,
        _ => TaskStatus::Unknown,
    }
}

/// The record of a pod's sandbox: its pause process resolves to it, as with containerd.
pub(crate) fn pod_record(
    runtime: &str,
    pod: &wire::PodSandbox,
    status: Option<TaskStatus>,
) -> Container {
    let mut c = Container::placeholder(key_of(&pod.id));
    c.labels = pod
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    runtime.clone_into(&mut c.runtime);
    c.status = status.unwrap_or(if pod.pid != 0 {
        TaskStatus::Running
    } else {
        TaskStatus::Unknown
    });
    c.task_pid = (pod.pid != 0 && c.status.is_live()).then_some(pod.pid);
    c.cgroup_path = pod.linux.as_ref().and_then(|l| cgroup_dir(&l.cgroups_path));
    c.pod = PodIdentity {
        pod_name: non_empty(&pod.name),
        pod_namespace: non_empty(&pod.namespace),
        pod_uid: non_empty(&pod.uid),
        container_name: None,
        sandbox_id: non_empty(&pod.id),
        is_sandbox: true,
    };
    c
}

/// The record of a container, with its pod's identity (from `pod` when known, else from the
/// container's CRI labels and annotations).
pub(crate) fn container_record(
    runtime: &str,
    nri: &wire::Container,
    pod: Option<&wire::PodSandbox>,
    status: Option<TaskStatus>,
) -> Container {
    let key = key_of(&nri.id);
    let mut c = Container::placeholder(key.clone());
    c.labels = nri
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let annotations = nri
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    runtime.clone_into(&mut c.runtime);
    c.image = nri
        .image
        .as_ref()
        .map(|i| i.name.clone())
        .filter(|n| !n.is_empty())
        .or_else(|| {
            IMAGE_ANNOTATIONS
                .iter()
                .find_map(|k| nri.annotations.get(*k).filter(|v| !v.is_empty()).cloned())
        })
        .unwrap_or_default();
    c.created_at = (nri.created_at > 0).then_some(nri.created_at / 1_000_000_000);
    c.status = status.unwrap_or_else(|| status_of(nri.state));
    c.task_pid = (nri.pid != 0 && c.status.is_live()).then_some(nri.pid);
    c.cgroup_path = nri.linux.as_ref().and_then(|l| cgroup_dir(&l.cgroups_path));
    let mut identity = PodIdentity {
        pod_name: pod.and_then(|p| non_empty(&p.name)),
        pod_namespace: pod.and_then(|p| non_empty(&p.namespace)),
        pod_uid: pod.and_then(|p| non_empty(&p.uid)),
        container_name: non_empty(&nri.name),
        sandbox_id: non_empty(&nri.pod_sandbox_id),
        is_sandbox: false,
    };
    identity.fill_from(&crate::state::container::pod_identity(
        &key,
        &c.labels,
        &annotations,
    ));
    c.pod = identity;
    c
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> wire::PodSandbox {
        wire::PodSandbox {
            id: "sb1".into(),
            name: "web-0".into(),
            uid: "0b8f3c3e-2a9a-4c8e-9b3a-5d7f1e2c4a6b".into(),
            namespace: "shop".into(),
            linux: Some(wire::LinuxPodSandbox {
                cgroup_parent: "kubepods-besteffort-pod0b8f3c3e_2a9a_4c8e_9b3a_5d7f1e2c4a6b.slice".into(),
                cgroups_path: "kubepods-besteffort-pod0b8f3c3e_2a9a_4c8e_9b3a_5d7f1e2c4a6b.slice:cri-containerd:sb1".into(),
            }),
            pid: 40,
            ..Default::default()
        }
    }

    fn container() -> wire::Container {
        wire::Container {
            id: "c1".into(),
            pod_sandbox_id: "sb1".into(),
            name: "app".into(),
            state: 1,
            annotations: [(
                "io.kubernetes.cri.image-name".to_owned(),
                "busybox:1".to_owned(),
            )]
            .into(),
            linux: Some(wire::LinuxContainer {
                cgroups_path: "/kubepods/besteffort/pod0b8f/c1".into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_container_carries_its_pods_identity_and_cgroup() {
        let c = container_record(
            "containerd",
            &container(),
            Some(&pod()),
            Some(TaskStatus::Created),
        );
        assert_eq!(c.key, ContainerKey::new("k8s.io", "c1"));
        assert_eq!(c.pod.pod_name.as_deref(), Some("web-0"));
        assert_eq!(c.pod.pod_namespace.as_deref(), Some("shop"));
        assert_eq!(c.pod.container_name.as_deref(), Some("app"));
        assert_eq!(c.pod.sandbox_id.as_deref(), Some("sb1"));
        assert!(!c.pod.is_sandbox);
        assert_eq!(c.image, "busybox:1");
        assert_eq!(
            c.cgroup_path.as_deref(),
            Some("/kubepods/besteffort/pod0b8f/c1")
        );
        assert_eq!((c.status, c.task_pid), (TaskStatus::Created, None));
        assert_eq!(c.runtime, "containerd");
    }

    #[test]
    fn without_its_pod_a_container_reads_its_labels() {
        let mut nri = container();
        nri.labels = [
            ("io.kubernetes.pod.name".to_owned(), "web-1".to_owned()),
            ("io.kubernetes.pod.namespace".to_owned(), "shop".to_owned()),
        ]
        .into();
        nri.pid = 77;
        nri.state = 3;
        let c = container_record("cri-o", &nri, None, None);
        assert_eq!(c.pod.pod_name.as_deref(), Some("web-1"));
        assert_eq!(c.pod.pod_namespace.as_deref(), Some("shop"));
        assert_eq!((c.status, c.task_pid), (TaskStatus::Running, Some(77)));
    }

    /// An applier writing into a fresh state, with no cgroup hierarchy.
    fn applier() -> (std::sync::Arc<crate::state::State>, Applier) {
        let (state, _table, writer) = crate::state::State::new(
            crate::state::ProcessTable::new(1, std::num::NonZeroUsize::new(10).unwrap()),
            crate::cgroup::CgroupPathCache::new(100),
            std::sync::Arc::new(crate::metrics::Metrics::default()),
        );
        let applier = Applier {
            writer,
            fs: std::sync::Arc::new(CgroupFs::from_roots(None, None)),
            first_contact: None,
            runtime: String::new(),
            pods: HashMap::new(),
            sync: Vec::new(),
            sync_truncated: false,
            registered: false,
        };
        (state, applier)
    }

    fn live(state: &crate::state::State) -> Vec<String> {
        let mut ids: Vec<String> = state
            .containers()
            .iter()
            .filter(|c| c.deleted_at_ns.is_none())
            .map(|c| c.key.id.clone())
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn synchronize_in_parts_then_events_then_synchronize_again() {
        let (state, mut a) = applier();
        a.apply(Update::Configured {
            runtime: "containerd".into(),
            version: "2.1.9".into(),
        });
        assert_eq!(state.nri_link(), NriLink::Registered);
        assert_eq!(state.nri_runtime(), "containerd 2.1.9");
        // Two parts: the pod first, its container in the last.
        a.apply(Update::Synchronize(wire::SynchronizeRequest {
            pods: vec![pod()],
            containers: vec![],
            more: true,
        }));
        assert!(
            live(&state).is_empty(),
            "nothing applied before the last part"
        );
        a.apply(Update::Synchronize(wire::SynchronizeRequest {
            pods: vec![],
            containers: vec![container()],
            more: false,
        }));
        assert_eq!(state.nri_link(), NriLink::Synced);
        assert_eq!(live(&state), ["c1", "sb1"]);
        let c1 = state
            .containers()
            .get(&ContainerKey::new("k8s.io", "c1"))
            .cloned()
            .unwrap();
        assert_eq!(
            c1.pod.pod_name.as_deref(),
            Some("web-0"),
            "the pod of an earlier part"
        );
        // A second container made, then the first removed.
        let mut c2 = container();
        c2.id = "c2".into();
        a.apply(Update::Event {
            event: wire::Event::CreateContainer,
            pod: Some(Box::new(pod())),
            container: Some(Box::new(c2.clone())),
        });
        a.apply(Update::Event {
            event: wire::Event::RemoveContainer,
            pod: None,
            container: Some(Box::new(container())),
        });
        assert_eq!(live(&state), ["c2", "sb1"]);
        // A new session's Synchronize without the pod retires it and its container.
        a.apply(Update::Synchronize(wire::SynchronizeRequest {
            pods: vec![],
            containers: vec![],
            more: false,
        }));
        assert!(live(&state).is_empty());
        assert_eq!(state.metrics().snapshot().nri_events, 6);
    }

    #[test]
    fn an_oversized_synchronize_is_cut_and_retires_nothing() {
        let (state, mut a) = applier();
        a.apply(Update::Synchronize(wire::SynchronizeRequest {
            pods: vec![pod()],
            containers: vec![],
            more: false,
        }));
        assert_eq!(live(&state), ["sb1"]);
        let many = vec![container(); MAX_SYNC + 1];
        a.apply(Update::Synchronize(wire::SynchronizeRequest {
            pods: vec![],
            containers: many,
            more: false,
        }));
        assert_eq!(live(&state), ["sb1"], "a cut list retires nothing");
        assert!(a.sync.is_empty() && !a.sync_truncated);
    }

    #[test]
    fn a_pod_is_its_sandbox_with_a_systemd_cgroup() {
        let c = pod_record("containerd", &pod(), None);
        assert!(c.pod.is_sandbox);
        assert_eq!(c.pod.sandbox_id.as_deref(), Some("sb1"));
        assert_eq!((c.status, c.task_pid), (TaskStatus::Running, Some(40)));
        assert_eq!(
            c.cgroup_path.as_deref(),
            Some(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b8f3c3e_2a9a_4c8e_9b3a_5d7f1e2c4a6b.slice/cri-containerd-sb1.scope"
            )
        );
    }
}
