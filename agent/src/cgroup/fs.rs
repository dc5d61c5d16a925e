//! Where the cgroup hierarchies are mounted, and path → id lookups.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::namespace::{self, join_normalized};
use super::parse::{CgroupMount, CgroupPaths, cgroup_mounts, parse_proc_cgroup};
use super::{CgroupError, Hierarchy, is_gone};
use crate::types::{CgroupId, CgroupIds};

/// The mount table read by [`CgroupFs::discover`].
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// This process's own cgroups, read by [`CgroupFs::discover`].
const SELF_CGROUP: &str = "/proc/self/cgroup";

/// How many times [`CgroupFs::ids_of_pid`] re-reads `/proc/PID/cgroup` when
/// the cgroup it names vanishes before it can be examined (the process moved
/// or is exiting).
const READ_ATTEMPTS: usize = 3;

/// Where the cgroup2 and v1 memory hierarchies are mounted.
///
/// Knows the three layouts: pure cgroup2 (`/sys/fs/cgroup`), hybrid (cgroup2
/// at `/sys/fs/cgroup/unified`, v1 controllers beside it) and pure v1 (no
/// cgroup2 mount). Either hierarchy may be absent.
///
/// Speaks host paths (relative to the hierarchy's true root), also when the
/// agent runs in a private cgroup namespace with the host's hierarchy
/// mounted: [`discover`](Self::discover) then places the namespace, and
/// paths read from `/proc/PID/cgroup` are converted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CgroupFs {
    v2: Option<CgroupMount>,
    v1_memory: Option<CgroupMount>,
}

impl CgroupFs {
    /// Finds the hierarchies in this process's mount table
    /// (`/proc/self/mountinfo`), and, when the mount of a hierarchy lies
    /// outside this process's cgroup namespace, where that namespace sits in
    /// the host's hierarchy (logged; a namespace that cannot be placed is a
    /// warning, and paths outside it stay unresolvable).
    ///
    /// Succeeds even when neither hierarchy is mounted; check
    /// [`v2_root`](Self::v2_root) and [`v1_memory_root`](Self::v1_memory_root).
    ///
    /// # Errors
    ///
    /// [`CgroupError::MountInfo`] if the mount table cannot be read.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use pidmap::testing::cgroup::CgroupFs;
    ///
    /// let fs = CgroupFs::discover()?;
    /// let id = fs.v2_id_of("/")?;
    /// assert_eq!(id.0, 1);
    /// # Ok::<(), pidmap::testing::cgroup::CgroupError>(())
    /// ```
    pub fn discover() -> Result<Self, CgroupError> {
        let text = std::fs::read_to_string(MOUNTINFO).map_err(|source| CgroupError::MountInfo {
            path: PathBuf::from(MOUNTINFO),
            source,
        })?;
        let mut fs = Self::from_mountinfo(&text);
        if fs.hierarchies().any(|(_, m)| namespace::climbs(&m.root)) {
            match std::fs::read_to_string(SELF_CGROUP) {
                Ok(own) => fs.place_namespace(&parse_proc_cgroup(&own), std::process::id()),
                Err(error) => tracing::warn!(
                    file = SELF_CGROUP,
                    %error,
                    "cannot read this process's cgroups: processes outside its cgroup namespace \
                     will not resolve"
                ),
            }
        }
        Ok(fs)
    }

    /// For each hierarchy whose mount lies outside this process's cgroup
    /// namespace, finds the namespace's root in the host hierarchy (from
    /// `own`, this process's paths, and `pid`, its PID) and rewrites the
    /// mount's root as a host path.
    pub(crate) fn place_namespace(&mut self, own: &CgroupPaths, pid: u32) {
        for (hierarchy, mount, own) in [
            (Hierarchy::V2, self.v2.as_mut(), own.v2.as_deref()),
            (
                Hierarchy::V1Memory,
                self.v1_memory.as_mut(),
                own.v1_memory.as_deref(),
            ),
        ] {
            let Some(mount) = mount.filter(|m| namespace::climbs(&m.root)) else {
                continue;
            };
            let placed = own
                .ok_or_else(|| format!("{SELF_CGROUP} names no {hierarchy} cgroup"))
                .and_then(|own| namespace::place(mount, own, pid).map_err(|e| e.to_string()));
            let ns_root = match placed {
                Ok(ns_root) => ns_root,
                Err(error) => {
                    tracing::warn!(
                        %hierarchy,
                        mount = %mount.mount_point.display(),
                        %error,
                        "cannot place this cgroup namespace in the host's hierarchy: processes \
                         outside it will not resolve until their next kernel event"
                    );
                    continue;
                }
            };
            // `place` found the root `climbs` levels below the mount's root,
            // so climbing back stays within the hierarchy.
            let host_root = join_normalized(&ns_root, &mount.root).unwrap_or_else(|| "/".into());
            tracing::info!(
                %hierarchy,
                namespace_root = %ns_root,
                mount = %mount.mount_point.display(),
                "running in a private cgroup namespace: converting its paths to host paths"
            );
            mount.root = host_root;
            mount.ns_root = Some(ns_root);
        }
    }

    /// The host path of this process's cgroup-namespace root in
    /// `hierarchy`, if it runs in a private namespace that was placed.
    pub fn namespace_root(&self, hierarchy: Hierarchy) -> Option<&str> {
        self.mount(hierarchy)?.ns_root.as_deref()
    }

    /// Rewrites paths as printed in this process's cgroup namespace (what
    /// `/proc/PID/cgroup` shows) as host paths. A path that climbs above
    /// the hierarchy's root is left as it is (and will not resolve).
    pub fn to_host_paths(&self, paths: &mut CgroupPaths) {
        for (hierarchy, path) in [
            (Hierarchy::V2, paths.v2.as_mut()),
            (Hierarchy::V1Memory, paths.v1_memory.as_mut()),
        ] {
            let (Some(ns_root), Some(path)) = (self.namespace_root(hierarchy), path) else {
                continue;
            };
            if let Some(host) = join_normalized(ns_root, path) {
                *path = host;
            }
        }
    }

    fn hierarchies(&self) -> impl Iterator<Item = (Hierarchy, &CgroupMount)> {
        [
            (Hierarchy::V2, &self.v2),
            (Hierarchy::V1Memory, &self.v1_memory),
        ]
        .into_iter()
        .filter_map(|(h, m)| Some((h, m.as_ref()?)))
    }

    /// Finds the hierarchies in the text of a `mountinfo` file.
    pub fn from_mountinfo(text: &str) -> Self {
        let mounts = cgroup_mounts(text);
        Self {
            v2: mounts.v2,
            v1_memory: mounts.v1_memory,
        }
    }

    /// Uses the given directories as the roots of whole hierarchies (for
    /// tests, or when the caller knows better than the mount table).
    pub fn from_roots(v2: Option<PathBuf>, v1_memory: Option<PathBuf>) -> Self {
        let whole = |mount_point| CgroupMount {
            mount_point,
            root: "/".to_owned(),
            ns_root: None,
        };
        Self {
            v2: v2.map(whole),
            v1_memory: v1_memory.map(whole),
        }
    }

    /// Where cgroup2 is mounted, if it is.
    pub fn v2_root(&self) -> Option<&Path> {
        self.root(Hierarchy::V2)
    }

    /// Where the v1 memory hierarchy is mounted, if it is.
    pub fn v1_memory_root(&self) -> Option<&Path> {
        self.root(Hierarchy::V1Memory)
    }

    /// Where `hierarchy` is mounted, if it is.
    pub fn root(&self, hierarchy: Hierarchy) -> Option<&Path> {
        self.mount(hierarchy).map(|m| m.mount_point.as_path())
    }

    /// The cgroup2 id of `path` (as `/proc/PID/cgroup` shows it): the inode
    /// number of its directory.
    ///
    /// # Errors
    ///
    /// As [`id_of`](Self::id_of).
    pub fn v2_id_of(&self, path: &str) -> Result<CgroupId, CgroupError> {
        self.id_of(Hierarchy::V2, path)
    }

    /// The v1 memory-hierarchy id of `path`: the inode number of its
    /// directory.
    ///
    /// # Errors
    ///
    /// As [`id_of`](Self::id_of).
    pub fn v1_memory_id_of(&self, path: &str) -> Result<CgroupId, CgroupError> {
        self.id_of(Hierarchy::V1Memory, path)
    }

    /// The id of `path` in `hierarchy`: the inode number of its directory
    /// (the root of a hierarchy is 1).
    ///
    /// # Errors
    ///
    /// [`CgroupError::NotMounted`] if the hierarchy is not mounted,
    /// [`CgroupError::NotVisible`] for a relative path, a `.`/`..` component
    /// or a path outside the mount, [`CgroupError::CgroupGone`] if the
    /// directory does not exist, [`CgroupError::Stat`] otherwise.
    pub fn id_of(&self, hierarchy: Hierarchy, path: &str) -> Result<CgroupId, CgroupError> {
        self.id_of_with(hierarchy, path, &mut PathBuf::new())
    }

    /// The ids of both paths; a hierarchy that is not mounted, or has no
    /// path, gives `None`.
    ///
    /// # Errors
    ///
    /// As [`id_of`](Self::id_of), except that an unmounted hierarchy is not
    /// an error.
    pub fn ids_of_paths(&self, paths: &CgroupPaths) -> Result<CgroupIds, CgroupError> {
        self.ids_of_paths_with(paths, &mut PathBuf::new())
    }

    /// Reads `/proc/PID/cgroup` and resolves both paths to ids. The paths
    /// returned are host paths (see [`to_host_paths`](Self::to_host_paths)).
    ///
    /// A process that exits meanwhile gives [`CgroupError::ProcessGone`] (or,
    /// rarely, [`CgroupError::CgroupGone`]): check
    /// [`CgroupError::is_vanished`] to skip it quietly. On a host without a
    /// cgroup2 mount the v2 id is `None`.
    ///
    /// # Errors
    ///
    /// [`CgroupError::ProcessGone`] if the process is gone,
    /// [`CgroupError::ReadProcCgroup`] if its cgroup file cannot be read,
    /// else as [`ids_of_paths`](Self::ids_of_paths).
    pub fn ids_of_pid(&self, pid: u32) -> Result<(CgroupIds, CgroupPaths), CgroupError> {
        let proc_root = Path::new("/proc");
        let mut file = PathBuf::new();
        proc_pid_dir(&mut file, proc_root, pid);
        file.push("cgroup");
        let read = |data: &mut Vec<u8>| read_into(&file, data);
        self.ids_of_pid_with(proc_root, pid, read, &mut Scratch::default())
    }

    /// [`ids_of_pid`](Self::ids_of_pid) with the caller's way of reading
    /// `/proc/PID/cgroup` (`read` replaces the buffer's contents with the
    /// file's) and the caller's buffers. `proc_root` only names the file in
    /// errors.
    pub(crate) fn ids_of_pid_with(
        &self,
        proc_root: &Path,
        pid: u32,
        mut read: impl FnMut(&mut Vec<u8>) -> io::Result<()>,
        scratch: &mut Scratch,
    ) -> Result<(CgroupIds, CgroupPaths), CgroupError> {
        let mut attempt = 1;
        loop {
            if let Err(source) = read(&mut scratch.data) {
                return Err(if is_gone(&source) {
                    CgroupError::ProcessGone { pid }
                } else {
                    proc_pid_dir(&mut scratch.path, proc_root, pid);
                    CgroupError::ReadProcCgroup {
                        path: scratch.path.join("cgroup"),
                        source,
                    }
                });
            }
            let mut paths = parse_proc_cgroup(&String::from_utf8_lossy(&scratch.data));
            self.to_host_paths(&mut paths);
            match self.ids_of_paths_with(&paths, &mut scratch.path) {
                Ok(ids) => return Ok((ids, paths)),
                Err(CgroupError::CgroupGone { .. }) if attempt < READ_ATTEMPTS => attempt += 1,
                Err(err) => return Err(err),
            }
        }
    }

    fn ids_of_paths_with(
        &self,
        paths: &CgroupPaths,
        buf: &mut PathBuf,
    ) -> Result<CgroupIds, CgroupError> {
        let mut one = |hierarchy, path: &Option<String>| match (self.mount(hierarchy), path) {
            (Some(_), Some(path)) => self.id_of_with(hierarchy, path, buf).map(Some),
            _ => Ok(None),
        };
        Ok(CgroupIds {
            v2: one(Hierarchy::V2, &paths.v2)?,
            v1_memory: one(Hierarchy::V1Memory, &paths.v1_memory)?,
        })
    }

    fn id_of_with(
        &self,
        hierarchy: Hierarchy,
        path: &str,
        buf: &mut PathBuf,
    ) -> Result<CgroupId, CgroupError> {
        self.dir_of(hierarchy, path, buf)?;
        match std::fs::metadata(&*buf) {
            Ok(meta) if meta.is_dir() => Ok(CgroupId(meta.ino())),
            Ok(_) => Err(CgroupError::NotVisible {
                hierarchy,
                path: path.to_owned(),
            }),
            Err(source) if is_gone(&source) => Err(CgroupError::CgroupGone {
                hierarchy,
                path: path.to_owned(),
            }),
            Err(source) => Err(CgroupError::Stat {
                path: buf.clone(),
                source,
            }),
        }
    }

    /// Writes into `buf` the directory of cgroup `path` in `hierarchy`.
    ///
    /// Rejects relative paths, `.`/`..` components and paths outside the
    /// sub-tree the mount shows: the directory is always under the mount
    /// point.
    pub fn dir_of(
        &self,
        hierarchy: Hierarchy,
        path: &str,
        buf: &mut PathBuf,
    ) -> Result<(), CgroupError> {
        let mount = self
            .mount(hierarchy)
            .ok_or(CgroupError::NotMounted { hierarchy })?;
        let not_visible = || CgroupError::NotVisible {
            hierarchy,
            path: path.to_owned(),
        };
        let rel = strip_mount_root(&mount.root, path).ok_or_else(not_visible)?;
        buf.as_mut_os_string().clear();
        buf.push(&mount.mount_point);
        for component in rel.split('/').filter(|c| !c.is_empty()) {
            if component == "." || component == ".." {
                return Err(not_visible());
            }
            buf.push(component);
        }
        Ok(())
    }

    pub(crate) fn mount(&self, hierarchy: Hierarchy) -> Option<&CgroupMount> {
        match hierarchy {
            Hierarchy::V2 => self.v2.as_ref(),
            Hierarchy::V1Memory => self.v1_memory.as_ref(),
        }
    }
}

/// The part of absolute cgroup `path` below the mount's `root`, or `None`
/// when the path is relative or outside that sub-tree.
fn strip_mount_root<'a>(root: &str, path: &'a str) -> Option<&'a str> {
    if !path.starts_with('/') {
        return None;
    }
    let root = root.trim_end_matches('/');
    if root.is_empty() {
        return Some(path);
    }
    match path.strip_prefix(root) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => Some(rest),
        _ => None,
    }
}

/// Buffers reused across many reads of procfs files.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// A path being built.
    pub(crate) path: PathBuf,
    /// The contents of the last file read.
    pub(crate) data: Vec<u8>,
}

/// Writes `<proc_root>/<pid>` into `buf` without allocating once `buf` is
/// large enough.
pub(crate) fn proc_pid_dir(buf: &mut PathBuf, proc_root: &Path, pid: u32) {
    let mut digits = [0u8; 10];
    let mut start = digits.len();
    let mut n = pid;
    loop {
        start -= 1;
        // `n % 10` is below 10, so the narrowing is exact.
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.as_mut_os_string().clear();
    buf.push(proc_root);
    buf.push(OsStr::from_bytes(&digits[start..]));
}

/// Replaces the contents of `data` with the contents of the file at `path`.
fn read_into(path: &Path, data: &mut Vec<u8>) -> io::Result<()> {
    read_all(File::open(path)?, data)
}

/// Replaces the contents of `data` with everything `file` yields.
///
/// Unlike [`Read::read_to_end`] on a [`File`], which asks for the file's
/// size first (`statx` and `lseek`, useless on procfs where sizes are 0),
/// this only reads: one call for a small procfs file, plus one that
/// returns 0.
pub(crate) fn read_all(mut file: impl Read, data: &mut Vec<u8>) -> io::Result<()> {
    /// Grow the buffer by at least this much when it is nearly full.
    const CHUNK: usize = 4096;
    data.clear();
    loop {
        let len = data.len();
        if data.capacity() - len < CHUNK / 4 {
            data.reserve(CHUNK);
        }
        data.resize(data.capacity(), 0);
        match file.read(&mut data[len..]) {
            Ok(0) => {
                data.truncate(len);
                return Ok(());
            }
            Ok(n) => data.truncate(len + n),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => data.truncate(len),
            Err(err) => {
                data.truncate(len);
                return Err(err);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hybrid() -> CgroupFs {
        CgroupFs::from_mountinfo(
            "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
             41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
        )
    }

    #[test]
    fn dir_of_joins_under_the_mount() {
        let fs = hybrid();
        let mut buf = PathBuf::new();
        fs.dir_of(Hierarchy::V2, "/default/long1", &mut buf)
            .unwrap();
        assert_eq!(buf, Path::new("/sys/fs/cgroup/unified/default/long1"));
        fs.dir_of(Hierarchy::V1Memory, "/", &mut buf).unwrap();
        assert_eq!(buf, Path::new("/sys/fs/cgroup/memory"));
    }

    #[test]
    fn dir_of_rejects_escapes_and_relative_paths() {
        let fs = hybrid();
        let mut buf = PathBuf::new();
        for bad in ["/../../x", "/a/./b", "relative", ""] {
            let err = fs.dir_of(Hierarchy::V2, bad, &mut buf).unwrap_err();
            assert!(
                matches!(err, CgroupError::NotVisible { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn dir_of_honours_a_sub_tree_mount() {
        let fs =
            CgroupFs::from_mountinfo("50 23 0:38 /kubepods /host/cg rw - cgroup2 cgroup2 rw\n");
        let mut buf = PathBuf::new();
        fs.dir_of(Hierarchy::V2, "/kubepods/pod1/c", &mut buf)
            .unwrap();
        assert_eq!(buf, Path::new("/host/cg/pod1/c"));
        fs.dir_of(Hierarchy::V2, "/kubepods", &mut buf).unwrap();
        assert_eq!(buf, Path::new("/host/cg"));
        let err = fs
            .dir_of(Hierarchy::V2, "/kubepodsX/a", &mut buf)
            .unwrap_err();
        assert!(matches!(err, CgroupError::NotVisible { .. }));
    }

    #[test]
    fn missing_hierarchy_is_reported() {
        let fs = CgroupFs::from_roots(None, None);
        let err = fs.v2_id_of("/").unwrap_err();
        assert!(matches!(
            err,
            CgroupError::NotMounted {
                hierarchy: Hierarchy::V2
            }
        ));
        let ids = fs
            .ids_of_paths(&CgroupPaths {
                v2: Some("/".into()),
                v1_memory: Some("/".into()),
            })
            .unwrap();
        assert_eq!(ids, CgroupIds::default());
    }

    #[test]
    fn proc_pid_dir_formats_pids() {
        let mut buf = PathBuf::from("/old/stuff");
        proc_pid_dir(&mut buf, Path::new("/proc"), 0);
        assert_eq!(buf, Path::new("/proc/0"));
        proc_pid_dir(&mut buf, Path::new("/proc/"), u32::MAX);
        assert_eq!(buf, Path::new("/proc/4294967295"));
        proc_pid_dir(&mut buf, Path::new("/x"), 1234);
        assert_eq!(buf, Path::new("/x/1234"));
    }

    #[test]
    fn read_all_reads_large_and_small_inputs() {
        let mut data = b"stale".to_vec();
        read_all(&b""[..], &mut data).unwrap();
        assert!(data.is_empty());
        let big: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        read_all(&big[..], &mut data).unwrap();
        assert_eq!(data, big);
        read_all(&b"0::/\n"[..], &mut data).unwrap();
        assert_eq!(data, b"0::/\n");
    }

    #[test]
    fn ids_of_a_vanished_pid_are_distinguishable() {
        let fs = CgroupFs::from_roots(None, None);
        // PIDs never exceed 2^22, so this one cannot exist.
        let err = fs.ids_of_pid(u32::MAX).unwrap_err();
        assert!(matches!(err, CgroupError::ProcessGone { pid: u32::MAX }));
        assert!(err.is_vanished());
    }

    /// Against this machine's real hierarchies, when mounted.
    #[test]
    fn real_ids_match_inodes() {
        let fs = CgroupFs::discover().unwrap();
        let (ids, paths) = fs.ids_of_pid(std::process::id()).unwrap();
        if let (Some(root), Some(path)) = (fs.v2_root(), paths.v2.as_deref()) {
            assert_eq!(fs.v2_id_of("/").unwrap(), CgroupId(1));
            let ino = std::fs::metadata(root.join(path.trim_start_matches('/')))
                .unwrap()
                .ino();
            assert_eq!(ids.v2, Some(CgroupId(ino)));
        } else {
            assert_eq!(ids.v2, None);
        }
        if let (Some(root), Some(path)) = (fs.v1_memory_root(), paths.v1_memory.as_deref()) {
            let ino = std::fs::metadata(root.join(path.trim_start_matches('/')))
                .unwrap()
                .ino();
            assert_eq!(ids.v1_memory, Some(CgroupId(ino)));
        } else {
            assert_eq!(ids.v1_memory, None);
        }
        let err = fs.v2_id_of("/no-such-cgroup-for-pidmap-tests");
        if fs.v2_root().is_some() {
            assert!(matches!(err, Err(CgroupError::CgroupGone { .. })));
        }
    }
}
