//! Container runtimes the agent correlates processes with. Each adapter
//! translates its runtime's events and lists into the runtime-neutral
//! [`ContainerEvent`](crate::state::containers::ContainerEvent)s and
//! [`Container`](crate::state::container::Container)s of `state`, and
//! writes the container store through its own writer: [`containerd`]'s
//! watcher and [`nri`]'s plugin. [`docker`] is no adapter but a metadata
//! source the containerd watcher consults for Docker's containers.

pub(crate) mod containerd;
pub(crate) mod docker;
pub(crate) mod nri;

use crate::{
    cgroup::CgroupFs,
    state::{ContainerWriter, container::ContainerKey},
};

/// Finds a running container's cgroup ids: from its cgroup directory, or
/// else from its init process in the process table.
pub(crate) fn refresh_cgroup_ids(writer: &ContainerWriter, fs: &CgroupFs, key: &ContainerKey) {
    let state = writer.state();
    let Some(mut c) = state.containers().get(key).cloned() else {
        return;
    };
    if !c.status.is_live() {
        return;
    }
    containerd::snapshot::resolve_cgroup_ids(&mut c, fs);
    if c.cgroup_v2.is_none()
        && c.cgroup_v1_memory.is_none()
        && let Some(p) = c.task_pid.and_then(|pid| state.process(pid))
    {
        c.cgroup_v2 = p.cgroups.v2.filter(|id| id.0 != 1);
        c.cgroup_v1_memory = p.cgroups.v1_memory.filter(|id| id.0 != 1);
    }
    writer
        .store()
        .set_cgroup_ids(key, c.cgroup_v2, c.cgroup_v1_memory);
}
