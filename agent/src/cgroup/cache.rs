//! id → path lookups: a bounded cache, filled from /proc scans, kernel
//! events and containerd, and as a last resort by walking a hierarchy.
//!
//! The cache is pure data; [`walk`] does the I/O, off the async workers
//! and outside any lock, and its result is put in afterwards.

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::PathBuf;

use lru::LruCache;

use super::parse::CgroupMount;
use super::{CgroupFs, Hierarchy, is_gone};
use crate::types::CgroupId;

/// Maps cgroup ids back to cgroup paths (eBPF events carry ids; cgroup
/// attach events carry the path too).
///
/// Each hierarchy has its own least-recently-used table of at most
/// `max_entries` pairs. Entries of removed cgroups stay until
/// [`forget`](Self::forget) or until newer entries push them out; that is
/// safe because kernfs never reuses a 64-bit cgroup id, and it keeps
/// recently exited processes resolvable.
#[derive(Debug)]
pub struct CgroupPathCache {
    v2: LruCache<CgroupId, String>,
    v1_memory: LruCache<CgroupId, String>,
    /// Changes whenever a pair is added, changed or dropped.
    epoch: u64,
}

impl CgroupPathCache {
    /// A cache holding at most `max_entries` pairs per hierarchy (at least
    /// one).
    pub fn new(max_entries: usize) -> Self {
        let cap = NonZeroUsize::new(max_entries).unwrap_or(NonZeroUsize::MIN);
        Self {
            v2: LruCache::new(cap),
            v1_memory: LruCache::new(cap),
            epoch: 0,
        }
    }

    /// The cached path of cgroup `id`, relative to the hierarchy's root
    /// (`/` is the root), as the host's `/proc/PID/cgroup` shows it. No I/O,
    /// and the LRU order is left alone: for the query path.
    pub fn cached(&self, hierarchy: Hierarchy, id: CgroupId) -> Option<&str> {
        self.tree(hierarchy).peek(&id).map(String::as_str)
    }

    /// Whether cgroup `id` is cached (and marks it recently used).
    pub fn touch(&mut self, hierarchy: Hierarchy, id: CgroupId) -> bool {
        self.tree_mut(hierarchy).get(&id).is_some()
    }

    /// Records that cgroup `id` of `hierarchy` is at `path`.
    pub fn insert(&mut self, hierarchy: Hierarchy, id: CgroupId, path: impl Into<String>) {
        let path = path.into();
        let tree = self.tree_mut(hierarchy);
        let full = tree.len() == tree.cap().get();
        let old = tree.put(id, path.clone());
        // An eviction (a new pair in a full cache) drops a pair too.
        if old.as_ref() != Some(&path) || (old.is_none() && full) {
            self.epoch = self.epoch.wrapping_add(1);
        }
    }

    /// Drops what is known about cgroup `id` of `hierarchy`.
    pub fn forget(&mut self, hierarchy: Hierarchy, id: CgroupId) {
        if self.tree_mut(hierarchy).pop(&id).is_some() {
            self.epoch = self.epoch.wrapping_add(1);
        }
    }

    /// Changes whenever a pair is added, changed or dropped.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// How many pairs are cached for `hierarchy`.
    pub fn len(&self, hierarchy: Hierarchy) -> usize {
        self.tree(hierarchy).len()
    }

    /// Whether nothing is cached for `hierarchy`.
    pub fn is_empty(&self, hierarchy: Hierarchy) -> bool {
        self.len(hierarchy) == 0
    }

    /// Most pairs kept per hierarchy.
    pub fn capacity(&self) -> usize {
        self.v2.cap().get()
    }

    fn tree(&self, hierarchy: Hierarchy) -> &LruCache<CgroupId, String> {
        match hierarchy {
            Hierarchy::V2 => &self.v2,
            Hierarchy::V1Memory => &self.v1_memory,
        }
    }

    fn tree_mut(&mut self, hierarchy: Hierarchy) -> &mut LruCache<CgroupId, String> {
        match hierarchy {
            Hierarchy::V2 => &mut self.v2,
            Hierarchy::V1Memory => &mut self.v1_memory,
        }
    }
}

/// Walks `hierarchy` of `fs` (blocking I/O: call it off the async workers)
/// and returns up to `cap` (id, path) pairs found breadth first, plus every
/// id of `wanted` found anywhere in the tree.
pub(crate) fn walk_hierarchy(
    fs: &CgroupFs,
    hierarchy: Hierarchy,
    cap: usize,
    wanted: &[CgroupId],
) -> Vec<(CgroupId, String)> {
    let Some(mount) = fs.mount(hierarchy) else {
        return Vec::new();
    };
    let walked = walk(mount, cap, wanted);
    let mut found = walked.found;
    found.extend(walked.wanted);
    found
}

/// What one walk of a hierarchy found.
#[derive(Debug, Default)]
struct Walk {
    /// The first directories found, breadth first, at most the cap.
    found: Vec<(CgroupId, String)>,
    /// Wanted ids found past the cap.
    wanted: Vec<(CgroupId, String)>,
}

/// Walks the tree under `mount`, breadth first, mapping directory inodes to
/// cgroup paths. Stops once `cap` directories are found and every id of
/// `wanted` has been seen. Directories that vanish or cannot be read are
/// skipped.
///
/// Inode numbers come from `readdir` (`d_ino`), which kernfs fills with the
/// same number `stat` reports, so the walk costs no `stat` per cgroup.
fn walk(mount: &CgroupMount, cap: usize, wanted: &[CgroupId]) -> Walk {
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
    let mut unseen: Vec<CgroupId> = wanted.iter().copied().filter(|&w| w != root_id).collect();
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
            let is_wanted = unseen
                .iter()
                .position(|&w| w == id)
                .map(|i| unseen.swap_remove(i));
            if out.found.len() < cap {
                out.found.push((id, child.clone()));
            } else if is_wanted.is_some() {
                out.wanted.push((id, child.clone()));
            }
            let child_dir: PathBuf = entry.path();
            queue.push_back((child_dir, child));
        }
        if out.found.len() >= cap && unseen.is_empty() {
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

    fn lookup(found: &[(CgroupId, String)], id: CgroupId) -> Option<&str> {
        found
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, p)| p.as_str())
    }

    #[test]
    fn the_epoch_moves_when_a_pair_is_added_changed_dropped_or_evicted() {
        let mut c = CgroupPathCache::new(2);
        let e0 = c.epoch();
        c.insert(Hierarchy::V2, CgroupId(5), "/a");
        let e1 = c.epoch();
        assert_ne!(e1, e0);
        c.insert(Hierarchy::V2, CgroupId(5), "/a");
        assert_eq!(c.epoch(), e1, "the same pair again");
        c.insert(Hierarchy::V2, CgroupId(5), "/b");
        let e2 = c.epoch();
        assert_ne!(e2, e1, "changed");
        c.insert(Hierarchy::V2, CgroupId(6), "/c");
        let e3 = c.epoch();
        c.insert(Hierarchy::V2, CgroupId(7), "/d");
        assert_ne!(c.epoch(), e3, "evicted one");
        let e4 = c.epoch();
        c.forget(Hierarchy::V2, CgroupId(99));
        assert_eq!(c.epoch(), e4, "nothing dropped");
        c.forget(Hierarchy::V2, CgroupId(7));
        assert_ne!(c.epoch(), e4, "dropped");
    }

    #[test]
    fn walking_finds_paths() {
        let tmp = TempDir::new("cache-walk");
        tmp.mkdirs(&[
            "default/long1",
            "default/long2",
            "kubepods/burstable/podx/c1",
        ]);
        let fs = CgroupFs::from_roots(Some(tmp.path().to_owned()), None);
        let found = walk_hierarchy(&fs, Hierarchy::V2, 100, &[]);
        let id = ino(&tmp.path().join("kubepods/burstable/podx/c1"));
        assert_eq!(lookup(&found, id), Some("/kubepods/burstable/podx/c1"));
        assert_eq!(lookup(&found, ino(tmp.path())), Some("/"));
        let long2 = ino(&tmp.path().join("default/long2"));
        assert_eq!(lookup(&found, long2), Some("/default/long2"));
        // root, default, long1, long2, kubepods, burstable, podx, c1
        assert_eq!(found.len(), 8);
        assert!(walk_hierarchy(&fs, Hierarchy::V1Memory, 100, &[]).is_empty());
    }

    #[test]
    fn insert_and_forget() {
        let mut cache = CgroupPathCache::new(10);
        cache.insert(Hierarchy::V1Memory, CgroupId(77), "/gone/long1");
        cache.insert(Hierarchy::V2, CgroupId(77), "/default/long1");
        assert_eq!(
            cache.cached(Hierarchy::V1Memory, CgroupId(77)),
            Some("/gone/long1")
        );
        assert_eq!(
            cache.cached(Hierarchy::V2, CgroupId(77)),
            Some("/default/long1")
        );
        cache.forget(Hierarchy::V2, CgroupId(77));
        assert_eq!(cache.cached(Hierarchy::V2, CgroupId(77)), None);
        assert!(!cache.touch(Hierarchy::V2, CgroupId(77)));
        assert!(cache.touch(Hierarchy::V1Memory, CgroupId(77)));
        assert_eq!(cache.len(Hierarchy::V1Memory), 1);
    }

    #[test]
    fn bounded_but_finds_the_wanted_ids() {
        let tmp = TempDir::new("cache-bound");
        tmp.mkdirs(&["a/b/c/d/e", "f", "g", "h/i"]);
        let fs = CgroupFs::from_roots(Some(tmp.path().to_owned()), None);
        let deep = ino(&tmp.path().join("a/b/c/d/e"));
        let i = ino(&tmp.path().join("h/i"));
        let found = walk_hierarchy(&fs, Hierarchy::V2, 3, &[deep, i]);
        assert_eq!(lookup(&found, deep), Some("/a/b/c/d/e"));
        assert_eq!(lookup(&found, i), Some("/h/i"));
        assert_eq!(found.len(), 5);
        let mut cache = CgroupPathCache::new(3);
        for i in 100..200 {
            cache.insert(Hierarchy::V2, CgroupId(i), format!("/x{i}"));
        }
        assert_eq!(cache.len(Hierarchy::V2), 3);
        // A zero bound still keeps one entry.
        let mut one = CgroupPathCache::new(0);
        one.insert(Hierarchy::V2, CgroupId(1), "/");
        one.insert(Hierarchy::V2, CgroupId(2), "/a");
        assert_eq!(one.len(Hierarchy::V2), 1);
    }

    #[test]
    fn unmounted_or_vanished_roots_give_nothing() {
        assert!(walk_hierarchy(&CgroupFs::default(), Hierarchy::V2, 10, &[CgroupId(1)]).is_empty());
        let tmp = TempDir::new("cache-vanished");
        let gone = tmp.path().join("never-created");
        let fs = CgroupFs::from_roots(Some(gone.clone()), Some(gone));
        assert!(walk_hierarchy(&fs, Hierarchy::V1Memory, 10, &[CgroupId(1)]).is_empty());
    }

    /// On this machine's real cgroup2 tree (when mounted): the root is id 1,
    /// and readdir's inode numbers agree with stat's.
    #[test]
    fn real_cgroup2_tree() {
        let fs = CgroupFs::discover().unwrap();
        let Some(root) = fs.v2_root().map(ToOwned::to_owned) else {
            return;
        };
        let found = walk_hierarchy(&fs, Hierarchy::V2, 10_000, &[CgroupId(1)]);
        assert_eq!(lookup(&found, CgroupId(1)), Some("/"));
        for (id, path) in &found {
            match std::fs::metadata(root.join(path.trim_start_matches('/'))) {
                Ok(meta) => assert_eq!(*id, CgroupId(meta.ino()), "{path}"),
                Err(err) => assert!(is_gone(&err), "{path}: {err}"),
            }
        }
        let (ids, paths) = fs.ids_of_pid(std::process::id()).unwrap();
        if let (Some(id), Some(path)) = (ids.v2, paths.v2) {
            assert_eq!(lookup(&found, id), Some(path.as_str()));
        }
    }
}
