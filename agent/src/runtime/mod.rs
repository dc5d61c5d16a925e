//! Container runtimes the agent correlates processes with. Each adapter
//! translates its runtime's events and lists into the runtime-neutral
//! [`ContainerEvent`](crate::state::containers::ContainerEvent)s and
//! [`Container`](crate::state::container::Container)s of `state`, and is
//! the only writer of the container store. [`docker`] is no adapter but a
//! metadata source the containerd watcher consults for Docker's containers.

pub(crate) mod containerd;
pub(crate) mod docker;
pub(crate) mod nri;
