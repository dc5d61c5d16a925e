//! pidmap: an always-current map from every process on a node to its
//! container and pod.

pub mod cgroup;
pub mod proc;
pub mod types;
