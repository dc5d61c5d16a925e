//! id → path lookups: a bounded cache over a rate-limited walk of each
//! hierarchy.

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lru::LruCache;

use super::parse::CgroupMount;
use super::{is_gone, CgroupFs, Hierarchy};
use crate::types::CgroupId;

/// Maps cgroup ids back to cgroup paths (eBPF events carry only ids).
///
/// Each hierarchy has its own least-recently-used table of at most
/// `max_entries` pairs. A miss walks that hierarchy's directory tree, but at
/// most once per `min_rescan_interval`, so a flood of unknown ids cannot keep
/// the cache walking. Pairs learnt elsewhere (from `/proc` scans, from
/// containerd) go in cheaply with [`insert`](Self::insert).
///
/// Entries of removed cgroups stay until [`forget`](Self::forget) or until
/// newer entries push them out; that is safe because kernfs never reuses a
/// 64-bit cgroup id, and it keeps recently exited processes resolvable.
#[derive(Debug)]
pub struct CgroupPathCache {
    fs: CgroupFs,
    min_rescan_interval: Duration,
    v2: Tree,
    v1_memory: Tree,
}

/// The cache of one hierarchy.
#[derive(Debug)]
struct Tree {
    paths: LruCache<CgroupId, String>,
    last_rescan: Option<Instant>,
}

impl CgroupPathCache {
    /// A cache over the hierarchies of `fs`, holding at most `max_entries`
    /// pairs per hierarchy (at least one), walking each hierarchy at most
    /// once per `min_rescan_interval`.
    pub fn new(fs: CgroupFs, max_entries: usize, min_rescan_interval: Duration) -> Self {
        let cap = NonZeroUsize::new(max_entries).unwrap_or(NonZeroUsize::MIN);
        let tree = || Tree {
            paths: LruCache::new(cap),
            last_rescan: None,
        };
        Self {
            fs,
            min_rescan_interval,
            v2: tree(),
            v1_memory: tree(),
        }
    }

    /// The path of cgroup `id` in `hierarchy`, relative to the hierarchy's
    /// root (`/` is the root), as `/proc/PID/cgroup` would show it.
    ///
    /// On a miss, walks the hierarchy if the last walk is at least
    /// `min_rescan_interval` old; otherwise, or if the walk does not find
    /// the id either, returns `None`.
    pub fn path_of(&mut self, hierarchy: Hierarchy, id: CgroupId) -> Option<String> {
        let interval = self.min_rescan_interval;
        let tree = self.tree_mut(hierarchy);
        if let Some(path) = tree.paths.get(&id) {
            return Some(path.clone());
        }
        if tree
            .last_rescan
            .is_some_and(|last| last.elapsed() < interval)
        {
            return None;
        }
        self.rescan(hierarchy, Some(id));
        self.tree_mut(hierarchy).paths.get(&id).cloned()
    }

    /// The cached path of cgroup `id`, without walking on a miss and
    /// without touching the LRU order: for the query path, which must not
    /// do I/O.
    pub fn cached(&self, hierarchy: Hierarchy, id: CgroupId) -> Option<&str> {
        self.tree(hierarchy).paths.peek(&id).map(String::as_str)
    }

    /// Records that cgroup `id` of `hierarchy` is at `path`.
    pub fn insert(&mut self, hierarchy: Hierarchy, id: CgroupId, path: impl Into<String>) {
        self.tree_mut(hierarchy).paths.put(id, path.into());
    }

    /// Drops what is known about cgroup `id` of `hierarchy`.
    pub fn forget(&mut self, hierarchy: Hierarchy, id: CgroupId) {
        self.tree_mut(hierarchy).paths.pop(&id);
    }

    /// How many pairs are cached for `hierarchy`.
    pub fn len(&self, hierarchy: Hierarchy) -> usize {
        self.tree(hierarchy).paths.len()
    }

    /// Whether nothing is cached for `hierarchy`.
    pub fn is_empty(&self, hierarchy: Hierarchy) -> bool {
        self.len(hierarchy) == 0
    }

    /// Walks `hierarchy` now and caches the first `max_entries` directories
    /// found (breadth first), plus `wanted` wherever it is.
    fn rescan(&mut self, hierarchy: Hierarchy, wanted: Option<CgroupId>) {
        let tree = match hierarchy {
            Hierarchy::V2 => &mut self.v2,
            Hierarchy::V1Memory => &mut self.v1_memory,
        };
        tree.last_rescan = Some(Instant::now());
        let Some(mount) = self.fs.mount(hierarchy) else {
            return;
        };
        let cap = tree.paths.cap().get();
        let walk = walk(mount, cap, wanted);
        for (id, path) in walk.found {
            tree.paths.put(id, path);
        }
        if let Some((id, path)) = walk.wanted {
            tree.paths.put(id, path);
        }
    }

    fn tree(&self, hierarchy: Hierarchy) -> &Tree {
        match hierarchy {
            Hierarchy::V2 => &self.v2,
            Hierarchy::V1Memory => &self.v1_memory,
        }
    }

    fn tree_mut(&mut self, hierarchy: Hierarchy) -> &mut Tree {
        match hierarchy {
            Hierarchy::V2 => &mut self.v2,
            Hierarchy::V1Memory => &mut self.v1_memory,
        }
    }
}

/// What one walk of a hierarchy found.
#[derive(Debug, Default)]
struct Walk {
    /// The first directories found, breadth first, at most the cap.
    found: Vec<(CgroupId, String)>,
    /// The wanted id, if it was found past the cap.
    wanted: Option<(CgroupId, String)>,
}

/// Walks the tree under `mount`, breadth first, mapping directory inodes to
/// cgroup paths. Stops once `cap` directories are found and `wanted` (if
/// any) has been seen. Directories that vanish or cannot be read are
/// skipped.
///
/// Inode numbers come from `readdir` (`d_ino`), which kernfs fills with the
/// same number `stat` reports, so the walk costs no `stat` per cgroup.
fn walk(mount: &CgroupMount, cap: usize, wanted: Option<CgroupId>) -> Walk {
    let mut out = Walk::default();
    let root_id = match std::fs::metadata(&mount.mount_point) {
        Ok(meta) => CgroupId(meta.ino()),
        Err(err) => {
            tracing::debug!(mount = %mount.mount_point.display(), error = %err, "cannot stat cgroup mount");
            return out;
        }
    };
    let root_path = match mount.root.trim_end_matches('/') {
        "" => "/".to_owned(),
        root => root.to_owned(),
    };
    let mut queue = VecDeque::from([(mount.mount_point.clone(), root_path.clone())]);
    out.found.push((root_id, root_path));
    let mut seen_wanted = wanted.is_none_or(|w| w == root_id);
    while let Some((dir, path)) = queue.pop_front() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) => {
                if !is_gone(&err) {
                    tracing::debug!(dir = %dir.display(), error = %err, "cannot list cgroup directory");
                }
                continue;
            }
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let id = CgroupId(entry.ino());
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let child = if path == "/" {
                format!("/{name}")
            } else {
                format!("{path}/{name}")
            };
            if out.found.len() < cap {
                out.found.push((id, child.clone()));
            } else if wanted == Some(id) {
                out.wanted = Some((id, child.clone()));
            }
            seen_wanted |= wanted == Some(id);
            let child_dir: PathBuf = entry.path();
            queue.push_back((child_dir, child));
        }
        if out.found.len() >= cap && seen_wanted {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::testutil::TempDir;
    use super::*;

    fn ino(path: &std::path::Path) -> CgroupId {
        CgroupId(std::fs::metadata(path).unwrap().ino())
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn finds_paths_by_walking() {
        let tmp = TempDir::new("cache-walk");
        tmp.mkdirs(&[
            "default/long1",
            "default/long2",
            "kubepods/burstable/podx/c1",
        ]);
        let fs = CgroupFs::from_roots(Some(tmp.path().to_owned()), None);
        let mut cache = CgroupPathCache::new(fs, 100, HOUR);
        let id = ino(&tmp.path().join("kubepods/burstable/podx/c1"));
        assert_eq!(
            cache.path_of(Hierarchy::V2, id).as_deref(),
            Some("/kubepods/burstable/podx/c1")
        );
        let root = ino(tmp.path());
        assert_eq!(cache.path_of(Hierarchy::V2, root).as_deref(), Some("/"));
        let long2 = ino(&tmp.path().join("default/long2"));
        assert_eq!(
            cache.path_of(Hierarchy::V2, long2).as_deref(),
            Some("/default/long2")
        );
        // root, default, long1, long2, kubepods, burstable, podx, c1
        assert_eq!(cache.len(Hierarchy::V2), 8);
        assert!(cache.is_empty(Hierarchy::V1Memory));
    }

    #[test]
    fn rescans_are_rate_limited() {
        let tmp = TempDir::new("cache-rate");
        tmp.mkdirs(&["a"]);
        let fs = CgroupFs::from_roots(Some(tmp.path().to_owned()), None);
        let mut slow = CgroupPathCache::new(fs.clone(), 100, HOUR);
        let mut eager = CgroupPathCache::new(fs, 100, Duration::ZERO);
        assert_eq!(slow.path_of(Hierarchy::V2, CgroupId(u64::MAX)), None);
        assert_eq!(eager.path_of(Hierarchy::V2, CgroupId(u64::MAX)), None);
        tmp.mkdirs(&["b"]);
        let b = ino(&tmp.path().join("b"));
        // The miss above used up the slow cache's walk for the next hour.
        assert_eq!(slow.path_of(Hierarchy::V2, b), None);
        assert_eq!(eager.path_of(Hierarchy::V2, b).as_deref(), Some("/b"));
    }

    #[test]
    fn insert_and_forget() {
        let tmp = TempDir::new("cache-insert");
        let fs = CgroupFs::from_roots(Some(tmp.path().to_owned()), None);
        let mut cache = CgroupPathCache::new(fs, 10, HOUR);
        cache.insert(Hierarchy::V1Memory, CgroupId(77), "/gone/long1");
        cache.insert(Hierarchy::V2, CgroupId(77), "/default/long1");
        assert_eq!(
            cache.path_of(Hierarchy::V1Memory, CgroupId(77)).as_deref(),
            Some("/gone/long1")
        );
        assert_eq!(
            cache.path_of(Hierarchy::V2, CgroupId(77)).as_deref(),
            Some("/default/long1")
        );
        cache.forget(Hierarchy::V2, CgroupId(77));
        assert_eq!(cache.path_of(Hierarchy::V2, CgroupId(77)), None);
        assert_eq!(cache.len(Hierarchy::V1Memory), 1);
    }

    #[test]
    fn bounded_but_finds_the_wanted_id() {
        let tmp = TempDir::new("cache-bound");
        tmp.mkdirs(&["a/b/c/d/e", "f", "g", "h"]);
        let fs = CgroupFs::from_roots(Some(tmp.path().to_owned()), None);
        let mut cache = CgroupPathCache::new(fs, 3, HOUR);
        let deep = ino(&tmp.path().join("a/b/c/d/e"));
        assert_eq!(
            cache.path_of(Hierarchy::V2, deep).as_deref(),
            Some("/a/b/c/d/e")
        );
        assert_eq!(cache.len(Hierarchy::V2), 3);
        for i in 100..200 {
            cache.insert(Hierarchy::V2, CgroupId(i), format!("/x{i}"));
        }
        assert_eq!(cache.len(Hierarchy::V2), 3);
        // A zero bound still keeps one entry.
        let mut one = CgroupPathCache::new(CgroupFs::default(), 0, HOUR);
        one.insert(Hierarchy::V2, CgroupId(1), "/");
        one.insert(Hierarchy::V2, CgroupId(2), "/a");
        assert_eq!(one.len(Hierarchy::V2), 1);
    }

    #[test]
    fn unmounted_or_vanished_roots_give_none() {
        let mut none = CgroupPathCache::new(CgroupFs::default(), 10, Duration::ZERO);
        assert_eq!(none.path_of(Hierarchy::V2, CgroupId(1)), None);
        let tmp = TempDir::new("cache-vanished");
        let gone = tmp.path().join("never-created");
        let fs = CgroupFs::from_roots(Some(gone.clone()), Some(gone));
        let mut cache = CgroupPathCache::new(fs, 10, Duration::ZERO);
        assert_eq!(cache.path_of(Hierarchy::V1Memory, CgroupId(1)), None);
    }

    /// On this machine's real cgroup2 tree (when mounted): the root is id 1,
    /// and readdir's inode numbers agree with stat's.
    #[test]
    fn real_cgroup2_tree() {
        let fs = CgroupFs::discover().unwrap();
        let Some(root) = fs.v2_root().map(ToOwned::to_owned) else {
            return;
        };
        let mut cache = CgroupPathCache::new(fs.clone(), 10_000, HOUR);
        assert_eq!(
            cache.path_of(Hierarchy::V2, CgroupId(1)).as_deref(),
            Some("/")
        );
        let Some(mount) = fs.mount(Hierarchy::V2) else {
            return;
        };
        let walked = walk(mount, 10_000, None);
        for (id, path) in &walked.found {
            match std::fs::metadata(root.join(path.trim_start_matches('/'))) {
                Ok(meta) => assert_eq!(*id, CgroupId(meta.ino()), "{path}"),
                Err(err) => assert!(is_gone(&err), "{path}: {err}"),
            }
        }
        let (ids, paths) = fs.ids_of_pid(std::process::id()).unwrap();
        if let (Some(id), Some(path)) = (ids.v2, paths.v2) {
            assert_eq!(cache.path_of(Hierarchy::V2, id), Some(path));
        }
    }
}
