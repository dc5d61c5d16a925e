//! Domain types ↔ API messages, and the names every output uses for
//! them (spelled once, in the resolver and the state).

use super::proto;
use crate::{
    resolver::{
        PathContainerEntry, Resolution, Resolved, Source, hierarchy_name, path_runtime_name,
    },
    state::{
        ProcessState,
        container::{Container, ContainerKey, TaskStatus},
    },
};

impl From<Resolved> for proto::ProcessState {
    fn from(r: Resolved) -> Self {
        match r {
            Resolved::Running => Self::Running,
            Resolved::Exited => Self::Exited,
            Resolved::Pending => Self::Pending,
            Resolved::Unknown => Self::Unknown,
        }
    }
}

impl From<Source> for proto::Source {
    fn from(s: Source) -> Self {
        match s {
            Source::Containerd => Self::Containerd,
            Source::Nri => Self::Nri,
            Source::CgroupPath => Self::CgroupPath,
            Source::Host => Self::Host,
        }
    }
}

/// The name of a record's state, as every output spells it.
pub(crate) fn state_name(state: i32) -> Option<&'static str> {
    Some(match proto::ProcessState::try_from(state).ok()? {
        proto::ProcessState::Running => Resolved::Running.as_str(),
        proto::ProcessState::Exited => Resolved::Exited.as_str(),
        proto::ProcessState::Pending => Resolved::Pending.as_str(),
        proto::ProcessState::Unknown => Resolved::Unknown.as_str(),
        proto::ProcessState::Unspecified => return None,
    })
}

/// The name of a record's source, as every output spells it.
pub(crate) fn source_name(source: i32) -> Option<&'static str> {
    Some(match proto::Source::try_from(source).ok()? {
        proto::Source::Containerd => Source::Containerd.as_str(),
        proto::Source::Nri => Source::Nri.as_str(),
        proto::Source::CgroupPath => Source::CgroupPath.as_str(),
        proto::Source::Host => Source::Host.as_str(),
        proto::Source::Unspecified => return None,
    })
}

/// A resolver answer as an API record.
pub(crate) fn record(r: &Resolution) -> proto::ProcessRecord {
    let mut rec = proto::ProcessRecord {
        pid: r.pid,
        state: proto::ProcessState::from(r.state) as i32,
        source: r
            .source
            .map_or(proto::Source::Unspecified, proto::Source::from) as i32,
        cgroup_id: r.cgroup_id.map(|id| id.0),
        cgroup_path: r.cgroup_path.clone(),
        cgroup_hierarchy: r.cgroup_hierarchy.map(|h| hierarchy_name(h).to_owned()),
        container: r.container.as_ref().map(container),
        ..Default::default()
    };
    if let Some(p) = &r.process {
        rec.start_time = Some(p.key.start_time.0);
        rec.ppid = p.parent.map(|k| k.pid);
        rec.comm = Some(p.comm.as_string());
        if let ProcessState::Exited { exit_code, .. } = p.state {
            rec.exit_status = exit_code;
        }
    }
    if let Some(pc) = &r.path_container {
        rec.path_container_id = Some(pc.container_id.clone());
        rec.path_runtime = Some(path_runtime_name(pc.runtime).to_owned());
        rec.path_pod_uid = pc.pod_uid.clone();
    }
    rec
}

/// A container a runtime reported (containerd, NRI), as an API message.
pub(crate) fn container(c: &Container) -> proto::Container {
    let (cgroup_id, hierarchy) = match (c.cgroup_v2, c.cgroup_v1_memory) {
        (Some(id), _) => (Some(id), Some(crate::cgroup::Hierarchy::V2)),
        (None, Some(id)) => (Some(id), Some(crate::cgroup::Hierarchy::V1Memory)),
        (None, None) => (None, None),
    };
    proto::Container {
        id: c.key.id.clone(),
        runtime_namespace: c.key.namespace.clone(),
        image: c.image.clone(),
        labels: c
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        runtime: c.runtime.clone(),
        status: c.status.as_str().to_owned(),
        task_pid: c.task_pid,
        exit_code: c.exit_code,
        pod_name: c.pod.pod_name.clone(),
        pod_namespace: c.pod.pod_namespace.clone(),
        pod_uid: c.pod.pod_uid.clone(),
        container_name: c.pod.container_name.clone(),
        sandbox_id: c.pod.sandbox_id.clone(),
        is_sandbox: c.pod.is_sandbox,
        cgroup_path: c.cgroup_path.clone(),
        cgroup_id: cgroup_id.map(|id| id.0),
        cgroup_hierarchy: hierarchy.map(|h| hierarchy_name(h).to_owned()),
        created_at: c.created_at,
        deleted: c.deleted_at_ns.is_some(),
        source: proto::Source::from(crate::resolver::runtime_source(Some(c))) as i32,
    }
}

/// A container known only from its processes' cgroup paths, as an API
/// message.
pub(crate) fn path_container(e: &PathContainerEntry) -> proto::Container {
    let key = crate::resolver::path_container_key(&e.container);
    proto::Container {
        id: key.id,
        runtime_namespace: key.namespace,
        runtime: path_runtime_name(e.container.runtime).to_owned(),
        status: e.status.as_str().to_owned(),
        task_pid: e.first_pid,
        pod_uid: e.container.pod_uid.clone(),
        cgroup_path: e.cgroup_path.clone(),
        cgroup_id: e.cgroup_id.map(|id| id.0),
        cgroup_hierarchy: e.cgroup_hierarchy.map(|h| hierarchy_name(h).to_owned()),
        source: proto::Source::CgroupPath as i32,
        ..Default::default()
    }
}

/// The last word on a container known from cgroup paths whose processes
/// are all gone.
pub(crate) fn gone_path_container(key: &ContainerKey) -> proto::Container {
    proto::Container {
        id: key.id.clone(),
        runtime_namespace: key.namespace.clone(),
        status: TaskStatus::Deleted.as_str().to_owned(),
        deleted: true,
        source: proto::Source::CgroupPath as i32,
        ..Default::default()
    }
}
