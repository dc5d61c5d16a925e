//! Domain types → API messages.

use super::proto;
use crate::{
    cgroup::PathRuntime,
    resolver::{Resolution, Resolved, Source},
    runtime::container::Container,
    state::ProcessState,
};

/// A resolver answer as an API record.
pub fn record(r: &Resolution) -> proto::ProcessRecord {
    let mut rec = proto::ProcessRecord {
        pid: r.pid,
        state: match r.state {
            Resolved::Running => proto::ProcessState::Running,
            Resolved::Exited => proto::ProcessState::Exited,
            Resolved::Pending => proto::ProcessState::Pending,
            Resolved::Unknown => proto::ProcessState::Unknown,
        } as i32,
        source: match r.source {
            Some(Source::Containerd) => proto::Source::Containerd,
            Some(Source::CgroupPath) => proto::Source::CgroupPath,
            Some(Source::Host) => proto::Source::Host,
            None => proto::Source::Unspecified,
        } as i32,
        cgroup_id: r.cgroup_id.map(|id| id.0),
        cgroup_path: r.cgroup_path.clone(),
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
        rec.path_runtime = Some(path_runtime(pc.runtime).to_owned());
        rec.path_pod_uid = pc.pod_uid.clone();
    }
    rec
}

fn path_runtime(r: PathRuntime) -> &'static str {
    match r {
        PathRuntime::Containerd => "containerd",
        PathRuntime::CriO => "cri-o",
        PathRuntime::Docker => "docker",
        PathRuntime::Podman => "podman",
        PathRuntime::Kubepods => "kubepods",
    }
}

/// A container as an API message.
pub fn container(c: &Container) -> proto::Container {
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
        cgroup_id: c.cgroup_v2.or(c.cgroup_v1_memory).map(|id| id.0),
        created_at: c.created_at,
        deleted: c.deleted_at_ns.is_some(),
    }
}
