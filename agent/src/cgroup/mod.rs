//! cgroup ids, paths and parsers.
//!
//! The kernel tells pidmap where a process is by cgroup **id** (the inode
//! number of the cgroup's directory); people and containerd speak in cgroup
//! **paths**. This module maps one to the other:
//!
//! - [`parse_proc_cgroup`] reads the paths of a process from
//!   `/proc/PID/cgroup`;
//! - [`CgroupFs`] knows where the hierarchies are mounted and turns a path
//!   into an id (one `stat`);
//! - [`CgroupPathCache`] turns an id back into a path (a bounded cache;
//!   [`walk_hierarchy`] fills it when nothing else told it);
//! - [`container_from_path`] recognises the container id (and pod uid) that
//!   common runtimes encode in cgroup paths, as a fallback for runtimes
//!   pidmap does not watch.
//!
//! Two hierarchies matter: cgroup2 (what `bpf_get_current_cgroup_id()`
//! reports) and, on hybrid or pure-v1 hosts, the v1 `memory` hierarchy.
//!
//! Paths are host paths: relative to the true root of the hierarchy (`/`),
//! as the host's `/proc/PID/cgroup` prints them and as containerd names
//! cgroups. In a private cgroup namespace (a pod on a cgroup v2 node) the
//! kernel prints paths relative to the namespace's root instead
//! (`0::/../../kubepods/…`); when the host's hierarchy is mounted,
//! [`CgroupFs::discover`] finds where that root sits and
//! [`CgroupFs::to_host_paths`] converts (see the `namespace` module).

mod cache;
mod container;
mod fs;
mod namespace;
mod parse;

use std::fmt;
use std::io;
use std::path::PathBuf;

pub(crate) use cache::{CgroupPathCache, walk_hierarchy};
pub use container::{PathContainer, PathRuntime, container_from_path};
pub use fs::CgroupFs;
pub(crate) use fs::{Scratch, proc_pid_dir, read_all};
pub use namespace::join_normalized;
pub use parse::{CgroupPaths, parse_proc_cgroup};

/// One of the cgroup hierarchies pidmap tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hierarchy {
    /// The cgroup2 (unified) hierarchy.
    V2,
    /// The cgroup v1 hierarchy that carries the `memory` controller.
    V1Memory,
}

impl fmt::Display for Hierarchy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V2 => "cgroup2",
            Self::V1Memory => "cgroup v1 memory",
        })
    }
}

/// Errors from mapping cgroup paths and processes to cgroup ids.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The mount table could not be read.
    #[error("failed to read mount table {}", path.display())]
    MountInfo {
        /// The mount table that was read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The hierarchy the caller asked about is not mounted on this host.
    #[error("the {hierarchy} hierarchy is not mounted")]
    NotMounted {
        /// The hierarchy that is missing.
        hierarchy: Hierarchy,
    },
    /// The cgroup path is malformed or lies outside what the mount shows
    /// (for example `/../x` from another cgroup namespace).
    #[error("cgroup path {path:?} is not visible under the {hierarchy} mount")]
    NotVisible {
        /// The hierarchy the path was looked up in.
        hierarchy: Hierarchy,
        /// The path as given.
        path: String,
    },
    /// The cgroup directory does not exist (any more).
    #[error("cgroup {path:?} of the {hierarchy} hierarchy is gone")]
    CgroupGone {
        /// The hierarchy the path was looked up in.
        hierarchy: Hierarchy,
        /// The path as given.
        path: String,
    },
    /// The cgroup directory could not be examined.
    #[error("failed to stat cgroup directory {}", path.display())]
    Stat {
        /// The directory that was examined.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The process exited (or was reaped) while it was being examined.
    #[error("process {pid} is gone")]
    ProcessGone {
        /// The process id.
        pid: u32,
    },
    /// `/proc/PID/cgroup` could not be read for a reason other than the
    /// process having exited.
    #[error("failed to read {}", path.display())]
    ReadProcCgroup {
        /// The file that was read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
}

impl CgroupError {
    /// Whether the error only means that the process or its cgroup went away
    /// in the meantime: an expected race that callers skip quietly.
    pub fn is_vanished(&self) -> bool {
        matches!(self, Self::ProcessGone { .. } | Self::CgroupGone { .. })
    }
}

/// Whether an I/O error means "the process (or file) is gone": `ENOENT`, or
/// `ESRCH` which procfs returns for a task that exited mid-read.
pub(crate) fn is_gone(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(libc::ESRCH)
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Scratch directories for tests (removed on drop).

    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("pidmap-test-{tag}-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }

        /// Creates each relative directory path (with parents).
        pub(crate) fn mkdirs(&self, rel: &[&str]) {
            for r in rel {
                std::fs::create_dir_all(self.0.join(r)).unwrap();
            }
        }

        /// Writes a file at a relative path (creating parents).
        pub(crate) fn write(&self, rel: &str, contents: &str) {
            let path = self.0.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            std::fs::write(path, contents).unwrap();
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
