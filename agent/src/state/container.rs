//! Runtime-neutral container metadata, as the resolver reports it.

use std::collections::BTreeMap;

use crate::types::CgroupId;

/// A container's identity: its runtime namespace and id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerKey {
    /// The containerd namespace (`k8s.io`, `moby`, `default`, …).
    pub namespace: String,
    pub id: String,
}

impl ContainerKey {
    pub fn new(namespace: impl Into<String>, id: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            id: id.into(),
        }
    }
}

impl std::fmt::Display for ContainerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.id)
    }
}

/// Where a container is in its life, as its runtime says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    /// Created; its task has not started yet.
    Created,
    Running,
    Paused,
    /// Its init process exited (its task may be deleted already).
    Stopped,
    /// The runtime deleted the container; it is kept for the grace window.
    Deleted,
    Unknown,
}

impl TaskStatus {
    /// The name every output uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
            Self::Deleted => "deleted",
            Self::Unknown => "unknown",
        }
    }

    /// Whether a task is running (or paused): its processes are alive.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Running | Self::Paused)
    }
}

/// The runtime sources that know a container: each one's list retires only the records it
/// knows (see docs/architecture.md, "One container, several sources").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sources(u8);

impl Sources {
    /// containerd's events and lists (Docker's containers included: they are containerd's).
    pub const CONTAINERD: Self = Self(1);
    /// The runtime's NRI plugin connection (containerd's or CRI-O's).
    pub const NRI: Self = Self(2);

    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    pub fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    pub fn without(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// Kubernetes identity of a container, from CRI labels or annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodIdentity {
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub pod_uid: Option<String>,
    pub container_name: Option<String>,
    /// Id of the pod's sandbox (pause) container.
    pub sandbox_id: Option<String>,
    /// True for the sandbox (pause) container itself.
    pub is_sandbox: bool,
}

impl PodIdentity {
    /// True when nothing Kubernetes-specific is known.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Fills what this identity lacks from `other` (this one wins where both know).
    pub(crate) fn fill_from(&mut self, other: &Self) {
        let fill = |mine: &mut Option<String>, theirs: &Option<String>| {
            if mine.is_none() {
                mine.clone_from(theirs);
            }
        };
        fill(&mut self.pod_name, &other.pod_name);
        fill(&mut self.pod_namespace, &other.pod_namespace);
        fill(&mut self.pod_uid, &other.pod_uid);
        fill(&mut self.container_name, &other.container_name);
        fill(&mut self.sandbox_id, &other.sandbox_id);
        self.is_sandbox |= other.is_sandbox;
    }
}

/// Everything known about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub key: ContainerKey,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// Runtime name (`io.containerd.runc.v2`, …).
    pub runtime: String,
    /// Seconds since the epoch when the runtime created it.
    pub created_at: Option<i64>,
    pub status: TaskStatus,
    /// Pid of the task's init process, while there is a task.
    pub task_pid: Option<u32>,
    /// Exit status of the init process, once stopped.
    pub exit_code: Option<u32>,
    /// Seconds since the epoch of the init process's exit.
    pub exited_at: Option<i64>,
    /// The cgroup path the container's processes live in, relative to the
    /// hierarchy root, from the OCI spec's `linux.cgroupsPath`.
    pub cgroup_path: Option<String>,
    /// cgroup2 id of that path, once it exists.
    pub cgroup_v2: Option<CgroupId>,
    /// v1 memory-hierarchy id of that path, once it exists.
    pub cgroup_v1_memory: Option<CgroupId>,
    pub pod: PodIdentity,
    /// CLOCK_MONOTONIC ns when containerd deleted it; kept for the grace
    /// window after that.
    pub deleted_at_ns: Option<u64>,
    /// Which runtime sources know it (the store sets this).
    pub sources: Sources,
}

impl Container {
    /// A container known only by key (an event arrived before its metadata).
    pub fn placeholder(key: ContainerKey) -> Self {
        Self {
            key,
            image: String::new(),
            labels: BTreeMap::new(),
            runtime: String::new(),
            created_at: None,
            status: TaskStatus::Created,
            task_pid: None,
            exit_code: None,
            exited_at: None,
            cgroup_path: None,
            cgroup_v2: None,
            cgroup_v1_memory: None,
            pod: PodIdentity::default(),
            deleted_at_ns: None,
            sources: Sources::default(),
        }
    }
}

/// containerd namespaces with a known owner.
pub(crate) mod namespaces {
    /// The CRI plugin's (kubelet's pods).
    pub(crate) const KUBERNETES: &str = "k8s.io";
    /// Docker's.
    pub(crate) const DOCKER: &str = "moby";
    /// `ctr`'s and nerdctl's default.
    pub(crate) const DEFAULT: &str = "default";
}

/// CRI label keys (copied by the CRI plugin from kubelet's).
pub(crate) mod labels {
    pub(crate) const POD_NAME: &str = "io.kubernetes.pod.name";
    pub(crate) const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
    pub(crate) const POD_UID: &str = "io.kubernetes.pod.uid";
    pub(crate) const CONTAINER_NAME: &str = "io.kubernetes.container.name";
    /// `sandbox` or `container`.
    pub(crate) const CRI_KIND: &str = "io.cri-containerd.kind";
}

/// OCI spec annotation keys set by the CRI plugin.
pub(crate) mod annotations {
    pub(crate) const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
    pub(crate) const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
    pub(crate) const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
    pub(crate) const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
    pub(crate) const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    /// `sandbox` or `container`.
    pub(crate) const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
}

/// Kubernetes identity from labels, falling back to spec annotations.
pub(crate) fn pod_identity(
    key: &ContainerKey,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> PodIdentity {
    let pick = |label: &str, annotation: &str| {
        labels
            .get(label)
            .or_else(|| annotations.get(annotation))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let is_sandbox = labels.get(labels::CRI_KIND).map(String::as_str) == Some("sandbox")
        || annotations
            .get(annotations::CONTAINER_TYPE)
            .map(String::as_str)
            == Some("sandbox");
    let sandbox_id = if is_sandbox {
        Some(key.id.clone())
    } else {
        annotations
            .get(annotations::SANDBOX_ID)
            .filter(|v| !v.is_empty())
            .cloned()
    };
    PodIdentity {
        pod_name: pick(labels::POD_NAME, annotations::SANDBOX_NAME),
        pod_namespace: pick(labels::POD_NAMESPACE, annotations::SANDBOX_NAMESPACE),
        pod_uid: pick(labels::POD_UID, annotations::SANDBOX_UID),
        container_name: pick(labels::CONTAINER_NAME, annotations::CONTAINER_NAME),
        sandbox_id,
        is_sandbox,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn labels_win_over_annotations() {
        let key = ContainerKey::new("k8s.io", "c1");
        let id = pod_identity(
            &key,
            &map(&[(labels::POD_NAME, "web-0"), (labels::POD_UID, "u-1")]),
            &map(&[
                (annotations::SANDBOX_NAME, "other"),
                (annotations::SANDBOX_NAMESPACE, "prod"),
                (annotations::SANDBOX_ID, "sb1"),
            ]),
        );
        assert_eq!(id.pod_name.as_deref(), Some("web-0"));
        assert_eq!(id.pod_namespace.as_deref(), Some("prod"));
        assert_eq!(id.pod_uid.as_deref(), Some("u-1"));
        assert_eq!(id.sandbox_id.as_deref(), Some("sb1"));
        assert!(!id.is_sandbox);
    }

    #[test]
    fn sandbox_is_marked_and_is_its_own_sandbox() {
        let key = ContainerKey::new("k8s.io", "pause1");
        let id = pod_identity(&key, &map(&[(labels::CRI_KIND, "sandbox")]), &map(&[]));
        assert!(id.is_sandbox);
        assert_eq!(id.sandbox_id.as_deref(), Some("pause1"));
        let id = pod_identity(
            &key,
            &map(&[]),
            &map(&[(annotations::CONTAINER_TYPE, "sandbox")]),
        );
        assert!(id.is_sandbox);
    }

    #[test]
    fn plain_containers_have_no_pod() {
        let key = ContainerKey::new("default", "x");
        assert!(pod_identity(&key, &map(&[("a", "b")]), &map(&[])).is_empty());
    }
}
