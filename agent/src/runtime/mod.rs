//! Container runtimes the agent correlates processes with: runtime-neutral
//! container metadata, and the containerd watcher that keeps it current.

pub mod container;
pub mod containerd;
