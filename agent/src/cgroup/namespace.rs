//! Placing the reader's cgroup namespace in the host's hierarchy.
//!
//! In a private cgroup namespace (what containerd gives a pod on a cgroup v2
//! node) the kernel prints every cgroup path relative to the namespace's
//! root, which is the cgroup the container started in:
//! `/proc/PID/cgroup` of a process elsewhere reads
//! `0::/../../../kubepods-besteffort.slice/…`, and the host's hierarchy,
//! bind-mounted into the pod, shows root `/../../../..` in mountinfo.
//! containerd and people speak in host paths (`/kubepods.slice/…`).
//!
//! Once the host path of the namespace's root is known, every printed path
//! converts to a host path with [`join_normalized`]. [`place`] finds it:
//! the mount shows the whole hierarchy `k` levels above the namespace root,
//! so the root is one of the directories `k` levels below the mount point,
//! namely the one under which the reader's own cgroup lists the reader's
//! PID in `cgroup.procs`.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::parse::CgroupMount;

/// Why the namespace's root could not be placed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PlaceError {
    /// The mount shows a sub-tree beside the namespace, not above it.
    #[error(
        "the mount at {mount_point} shows {root:?}, which is not an ancestor of this cgroup namespace"
    )]
    NotAnAncestor {
        /// Where the hierarchy is mounted.
        mount_point: PathBuf,
        /// The mount's root, as mountinfo prints it.
        root: String,
    },
    /// The mount shows only part of the hierarchy, so host paths cannot be
    /// named from it.
    #[error("the mount at {} does not show the whole hierarchy (its root is not cgroup 1)", mount_point.display())]
    NotWholeHierarchy {
        /// Where the hierarchy is mounted.
        mount_point: PathBuf,
    },
    /// The agent's own cgroup is outside its namespace, so the namespace's
    /// root lies below a cgroup the agent cannot name.
    #[error("this process's own cgroup {own:?} lies outside its cgroup namespace")]
    OwnCgroupOutside {
        /// The agent's own path, as `/proc/self/cgroup` prints it.
        own: String,
    },
    /// No directory at the expected depth holds this process.
    #[error("no cgroup {depth} levels below {} lists process {pid} at {own:?} under it", mount_point.display())]
    NotFound {
        /// Where the hierarchy is mounted.
        mount_point: PathBuf,
        /// How many levels below the mount point the root should be.
        depth: usize,
        /// The agent's own path relative to the namespace's root.
        own: String,
        /// The agent's PID.
        pid: u32,
    },
    /// The mount point could not be examined.
    #[error("failed to stat {}", path.display())]
    Stat {
        /// The mount point.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
}

/// Joins `rel` (a cgroup path as the kernel prints it in a namespace,
/// starting with `/`) onto `base` (the namespace root's host path) and
/// resolves `.` and `..`.
///
/// `None` when the result would climb above the hierarchy's root.
///
/// # Examples
///
/// `join_normalized("/kubepods/pod1/c1", "/../../pod2/c2")` is
/// `Some("/kubepods/pod2/c2")`.
pub fn join_normalized(base: &str, rel: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for component in base.split('/').chain(rel.split('/')) {
        match component {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            name => parts.push(name),
        }
    }
    let mut out = String::with_capacity(base.len() + rel.len() + 1);
    for part in &parts {
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        out.push('/');
    }
    Some(out)
}

/// Splits a printed path into how many levels it first climbs (`..`) and
/// the names that follow.
fn climb_and_names(path: &str) -> (usize, Vec<&str>) {
    let mut ups = 0;
    let mut names = Vec::new();
    for component in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
        if component == ".." && names.is_empty() {
            ups += 1;
        } else {
            names.push(component);
        }
    }
    (ups, names)
}

/// Whether `root`, as mountinfo prints it, lies outside the reader's cgroup
/// namespace (starts by climbing), so that [`place`] is needed.
pub(crate) fn climbs(root: &str) -> bool {
    climb_and_names(root).0 > 0
}

/// The host path of the reader's cgroup-namespace root in the hierarchy
/// mounted at `mount`, given the reader's own path `own` (from
/// `/proc/self/cgroup`) and PID `pid`.
///
/// Needs a mount that shows the whole hierarchy from above the namespace
/// (mountinfo root `/..`, `/../..`, …), as a host `/sys/fs/cgroup`
/// bind-mounted into a pod does.
pub(crate) fn place(mount: &CgroupMount, own: &str, pid: u32) -> Result<String, PlaceError> {
    let (depth, names) = climb_and_names(&mount.root);
    if !names.is_empty() {
        return Err(PlaceError::NotAnAncestor {
            mount_point: mount.mount_point.clone(),
            root: mount.root.clone(),
        });
    }
    let (own_ups, own_names) = climb_and_names(own);
    if own_ups > 0 || own_names.contains(&"..") {
        return Err(PlaceError::OwnCgroupOutside {
            own: own.to_owned(),
        });
    }
    let meta = std::fs::metadata(&mount.mount_point).map_err(|source| PlaceError::Stat {
        path: mount.mount_point.clone(),
        source,
    })?;
    // kernfs numbers each hierarchy's root directory 1.
    if meta.ino() != 1 {
        return Err(PlaceError::NotWholeHierarchy {
            mount_point: mount.mount_point.clone(),
        });
    }
    let found = find_own(&mount.mount_point, depth, &own_names, pid).ok_or_else(|| {
        PlaceError::NotFound {
            mount_point: mount.mount_point.clone(),
            depth,
            own: own.to_owned(),
            pid,
        }
    })?;
    Ok(format!("/{}", found.join("/")))
}

/// Searches the directories exactly `depth` levels below `top` for the one
/// whose sub-directory `own` lists `pid` in its `cgroup.procs`, and returns
/// the names leading to it. Directories that vanish or cannot be read are
/// skipped.
fn find_own(top: &Path, depth: usize, own: &[&str], pid: u32) -> Option<Vec<String>> {
    let mut stack = vec![(top.to_path_buf(), Vec::<String>::new())];
    while let Some((dir, names)) = stack.pop() {
        if names.len() == depth {
            let mut procs = dir;
            procs.extend(own);
            procs.push("cgroup.procs");
            if lists_pid(&procs, pid) {
                return Some(names);
            }
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let mut child = names.clone();
                child.push(entry.file_name().to_string_lossy().into_owned());
                stack.push((entry.path(), child));
            }
        }
    }
    None
}

/// Whether the `cgroup.procs` file at `path` lists `pid`.
fn lists_pid(path: &Path, pid: u32) -> bool {
    std::fs::read_to_string(path)
        .is_ok_and(|text| text.lines().any(|line| line.trim().parse() == Ok(pid)))
}

#[cfg(test)]
mod tests {
    use super::super::testutil::TempDir;
    use super::*;

    #[test]
    fn join_normalized_resolves_climbs() {
        let cases = [
            ("/", "/", Some("/")),
            ("/", "/a/b", Some("/a/b")),
            ("/k/p1/c1", "/", Some("/k/p1/c1")),
            ("/k/p1/c1", "/sub", Some("/k/p1/c1/sub")),
            ("/k/p1/c1", "/../../p2/c2", Some("/k/p2/c2")),
            ("/k/p1/c1", "/../../..", Some("/")),
            (
                "/k/p1/c1",
                "/../../../system.slice/x.service",
                Some("/system.slice/x.service"),
            ),
            ("/k/p1/c1", "/../../../..", None),
            ("/a", "/./b/../c", Some("/a/c")),
            ("/a", "/x (deleted)", Some("/a/x (deleted)")),
        ];
        for (base, rel, want) in cases {
            assert_eq!(
                join_normalized(base, rel).as_deref(),
                want,
                "{base} + {rel}"
            );
        }
    }

    #[test]
    fn climbs_only_for_paths_outside_the_namespace() {
        assert!(climbs("/../.."));
        assert!(climbs("/../x"));
        assert!(!climbs("/"));
        assert!(!climbs("/kubepods"));
        assert!(!climbs("/a/../b"));
    }

    fn mount(point: &Path, root: &str) -> CgroupMount {
        CgroupMount {
            mount_point: point.to_path_buf(),
            root: root.to_owned(),
            ns_root: None,
        }
    }

    #[test]
    fn rejects_mounts_that_cannot_name_host_paths() {
        let tmp = TempDir::new("ns-reject");
        let err = place(&mount(tmp.path(), "/../../other"), "/", 1).unwrap_err();
        assert!(matches!(err, PlaceError::NotAnAncestor { .. }), "{err}");
        let err = place(&mount(tmp.path(), "/.."), "/../x", 1).unwrap_err();
        assert!(matches!(err, PlaceError::OwnCgroupOutside { .. }), "{err}");
        // A temp directory is not the root of a cgroup hierarchy.
        let err = place(&mount(tmp.path(), "/.."), "/", 1).unwrap_err();
        assert!(matches!(err, PlaceError::NotWholeHierarchy { .. }), "{err}");
    }

    #[test]
    fn finds_the_directory_that_holds_the_process() {
        let tmp = TempDir::new("ns-find");
        tmp.write("k/p1/c1/cgroup.procs", "10\n11\n");
        tmp.write("k/p2/c2/cgroup.procs", "");
        tmp.write("k/p2/c2/sub/cgroup.procs", "12\n");
        tmp.write("k/p3/c3/sub/cgroup.procs", "13\n");
        tmp.write("system.slice/x.service/cgroup.procs", "1\n");
        assert_eq!(
            find_own(tmp.path(), 3, &[], 11),
            Some(vec!["k".into(), "p1".into(), "c1".into()])
        );
        assert_eq!(
            find_own(tmp.path(), 3, &["sub"], 12),
            Some(vec!["k".into(), "p2".into(), "c2".into()])
        );
        // At the wrong depth, or not listed anywhere: not found.
        assert_eq!(find_own(tmp.path(), 2, &[], 11), None);
        assert_eq!(find_own(tmp.path(), 3, &[], 99), None);
        assert_eq!(find_own(tmp.path(), 0, &[], 11), None);
    }
}
