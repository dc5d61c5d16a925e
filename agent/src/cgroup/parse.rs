//! Parsers for `/proc/PID/cgroup` and the cgroup lines of
//! `/proc/self/mountinfo`.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// The cgroup paths of one process, as `/proc/PID/cgroup` shows them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CgroupPaths {
    /// The cgroup2 path (the `0::` line), if the kernel shows one.
    pub v2: Option<String>,
    /// The path in the v1 hierarchy whose controller list has `memory`.
    pub v1_memory: Option<String>,
}

/// Parses `/proc/PID/cgroup`: lines of `hierarchy-ID:controller-list:path`.
///
/// The cgroup2 line is `0::<path>`; the v1 memory line is the one whose
/// comma-separated controller list contains `memory`. Lines that do not have
/// that shape (no numeric id, no absolute path) are skipped; the first
/// matching line of each kind wins. Paths are kept verbatim, including the
/// ` (deleted)` suffix the kernel adds for a removed cgroup2 cgroup.
///
/// # Examples
///
/// ```
/// use pidmap::testing::cgroup::parse_proc_cgroup;
///
/// let paths = parse_proc_cgroup("4:memory:/default/web\n0::/default/web\n");
/// assert_eq!(paths.v2.as_deref(), Some("/default/web"));
/// assert_eq!(paths.v1_memory.as_deref(), Some("/default/web"));
/// ```
pub fn parse_proc_cgroup(text: &str) -> CgroupPaths {
    let mut out = CgroupPaths::default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) || !path.starts_with('/') {
            continue;
        }
        if id == "0" && controllers.is_empty() {
            if out.v2.is_none() {
                out.v2 = Some(path.to_owned());
            }
        } else if out.v1_memory.is_none() && controllers.split(',').any(|c| c == "memory") {
            out.v1_memory = Some(path.to_owned());
        }
    }
    out
}

/// A mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CgroupMount {
    /// Where the hierarchy is mounted, e.g. `/sys/fs/cgroup/unified`.
    pub(crate) mount_point: PathBuf,
    /// Which cgroup the mount point shows (field 4 of mountinfo): `/` for a
    /// whole hierarchy, a deeper path for a bind mount of a sub-tree. The
    /// kernel prints it relative to the reader's cgroup namespace (`/..` and
    /// up for a mount of the host's hierarchy seen from a pod);
    /// [`CgroupFs::discover`](super::CgroupFs::discover) rewrites it as a host
    /// path once it has placed the namespace.
    pub(crate) root: String,
    /// The host path of the reader's cgroup-namespace root in this
    /// hierarchy, once placed; `None` when printed paths are host paths
    /// already (no private namespace, or it could not be placed).
    pub(crate) ns_root: Option<String>,
}

/// The cgroup2 and v1 memory mounts found in a mount table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct CgroupMounts {
    pub(crate) v2: Option<CgroupMount>,
    pub(crate) v1_memory: Option<CgroupMount>,
}

/// Finds the cgroup2 mount and the v1 mount carrying `memory` in the text of
/// `/proc/self/mountinfo`.
///
/// A line reads `ID PARENT MAJ:MIN ROOT MOUNT-POINT OPTIONS [OPTIONAL...] -
/// FSTYPE SOURCE SUPER-OPTIONS`. When a hierarchy is mounted several times,
/// the mount that shows the most of it wins (the one whose root is highest:
/// `/../..` from inside a cgroup namespace beats `/`, which beats
/// `/kubepods`); among equals, the first.
pub(crate) fn cgroup_mounts(mountinfo: &str) -> CgroupMounts {
    let mut out = CgroupMounts::default();
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let mut pre = pre.split(' ');
        let (Some(root), Some(mount_point)) = (pre.nth(3), pre.next()) else {
            continue;
        };
        let mut post = post.split(' ');
        let (Some(fstype), Some(super_options)) = (post.next(), post.nth(1)) else {
            continue;
        };
        let slot = match fstype {
            "cgroup2" => &mut out.v2,
            "cgroup" if super_options.split(',').any(|o| o == "memory") => &mut out.v1_memory,
            _ => continue,
        };
        let mount = CgroupMount {
            mount_point: PathBuf::from(OsString::from_vec(unescape_octal(mount_point))),
            root: String::from_utf8_lossy(&unescape_octal(root)).into_owned(),
            ns_root: None,
        };
        match slot {
            Some(existing) if height(&existing.root) <= height(&mount.root) => {}
            _ => *slot = Some(mount),
        }
    }
    out
}

/// How deep a mount's root lies: one per name, minus one per `..`.
fn height(root: &str) -> isize {
    root.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(|c| if c == ".." { -1 } else { 1 })
        .sum()
}

/// Undoes the kernel's mountinfo escaping: `\NNN` (three octal digits) is
/// the byte NNN; the kernel escapes space, tab, newline and backslash.
fn unescape_octal(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(value) = octal3(&bytes[i + 1..])
        {
            out.push(value);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// The byte value of three leading octal digits, if `rest` starts with them
/// and they fit in a byte.
fn octal3(rest: &[u8]) -> Option<u8> {
    let digits = rest.get(..3)?;
    let mut value: u32 = 0;
    for &d in digits {
        if !(b'0'..=b'7').contains(&d) {
            return None;
        }
        value = value * 8 + u32::from(d - b'0');
    }
    u8::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn proc_cgroup_hybrid() {
        let text = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/7b8aea5a792c87bd514a176680fff0b0\n\
                    3:cpuset:/\n0::/\n";
        let paths = parse_proc_cgroup(text);
        assert_eq!(paths.v2.as_deref(), Some("/"));
        assert_eq!(
            paths.v1_memory.as_deref(),
            Some("/process_api/7b8aea5a792c87bd514a176680fff0b0")
        );
    }

    #[test]
    fn proc_cgroup_pure_v2() {
        let paths = parse_proc_cgroup("0::/kubepods.slice/kubepods-pod1.slice\n");
        assert_eq!(
            paths.v2.as_deref(),
            Some("/kubepods.slice/kubepods-pod1.slice")
        );
        assert_eq!(paths.v1_memory, None);
    }

    #[test]
    fn proc_cgroup_pure_v1_combined_controllers() {
        let text = "11:cpu,cpuacct:/docker/abc\n5:memory,hugetlb:/docker/abc\n1:name=systemd:/docker/abc\n";
        let paths = parse_proc_cgroup(text);
        assert_eq!(paths.v2, None);
        assert_eq!(paths.v1_memory.as_deref(), Some("/docker/abc"));
    }

    #[test]
    fn proc_cgroup_memory_must_be_a_whole_controller_name() {
        let paths = parse_proc_cgroup("3:memory_extra:/a\n4:name=memory:/b\n");
        assert_eq!(paths.v1_memory, None);
    }

    #[test]
    fn proc_cgroup_skips_junk_and_keeps_colons_in_path() {
        let text = "\ngarbage\nx::/bad-id\n:: /no-id\n0::relative\n7:memory\n0::/a:b:c (deleted)\n";
        let paths = parse_proc_cgroup(text);
        assert_eq!(paths.v2.as_deref(), Some("/a:b:c (deleted)"));
        assert_eq!(paths.v1_memory, None);
        assert_eq!(parse_proc_cgroup(""), CgroupPaths::default());
    }

    #[test]
    fn proc_cgroup_first_line_wins() {
        let paths = parse_proc_cgroup("0::/first\n0::/second\n2:memory:/m1\n3:memory:/m2\n");
        assert_eq!(paths.v2.as_deref(), Some("/first"));
        assert_eq!(paths.v1_memory.as_deref(), Some("/m1"));
    }

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn mountinfo_hybrid() {
        let mounts = cgroup_mounts(HYBRID);
        let v2 = mounts.v2.as_ref().map(|m| m.mount_point.as_path());
        let v1 = mounts.v1_memory.as_ref().map(|m| m.mount_point.as_path());
        assert_eq!(v2, Some("/sys/fs/cgroup/unified".as_ref()));
        assert_eq!(v1, Some("/sys/fs/cgroup/memory".as_ref()));
    }

    #[test]
    fn mountinfo_pure_v2_with_optional_fields() {
        let text = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 master:1 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        let mounts = cgroup_mounts(text);
        let v2 = mounts.v2.as_ref().map(|m| m.mount_point.as_path());
        assert_eq!(v2, Some("/sys/fs/cgroup".as_ref()));
        assert_eq!(mounts.v1_memory, None);
    }

    #[test]
    fn mountinfo_pure_v1_combined_memory_mount() {
        let text = "35 31 0:32 / /sys/fs/cgroup/memory,hugetlb rw shared:9 - cgroup cgroup rw,memory,hugetlb\n";
        let mounts = cgroup_mounts(text);
        assert_eq!(mounts.v2, None);
        let v1 = mounts.v1_memory.as_ref().map(|m| m.mount_point.as_path());
        assert_eq!(v1, Some("/sys/fs/cgroup/memory,hugetlb".as_ref()));
    }

    #[test]
    fn mountinfo_unescapes_octal() {
        let text = "41 31 0:38 /a\\040b /mnt/my\\040cg\\134x\\011y rw - cgroup2 cgroup2 rw\n";
        let mounts = cgroup_mounts(text);
        let v2 = mounts
            .v2
            .as_ref()
            .map(|m| (m.mount_point.as_path(), m.root.as_str()));
        assert_eq!(v2, Some(("/mnt/my cg\\x\ty".as_ref(), "/a b")));
    }

    #[test]
    fn mountinfo_prefers_a_whole_tree_mount() {
        let text = "\
50 23 0:38 /kubepods /var/lib/x rw - cgroup2 cgroup2 rw
51 23 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
52 23 0:38 / /elsewhere rw - cgroup2 cgroup2 rw
";
        let mounts = cgroup_mounts(text);
        let v2 = mounts.v2.as_ref().map(|m| m.mount_point.as_path());
        assert_eq!(v2, Some("/sys/fs/cgroup".as_ref()));
    }

    #[test]
    fn mountinfo_prefers_the_host_tree_seen_from_a_cgroup_namespace() {
        // A pod's own cgroup2 mount, then the host's bind-mounted over it.
        let text = "\
60 50 0:38 / /sys/fs/cgroup ro - cgroup2 cgroup rw
61 60 0:38 /../../.. /sys/fs/cgroup ro - cgroup2 cgroup2 rw
62 50 0:38 /.. /other ro - cgroup2 cgroup2 rw
";
        let v2 = cgroup_mounts(text).v2.unwrap();
        assert_eq!(v2.root, "/../../..");
        assert_eq!(v2.mount_point, Path::new("/sys/fs/cgroup"));
    }

    #[test]
    fn mountinfo_skips_junk() {
        let mounts = cgroup_mounts("junk\n1 2 3 - cgroup2\n - cgroup2 x\n\n");
        assert_eq!(mounts, CgroupMounts::default());
    }

    #[test]
    fn unescape_leaves_incomplete_escapes() {
        assert_eq!(unescape_octal("a\\04"), b"a\\04".to_vec());
        assert_eq!(unescape_octal("a\\999"), b"a\\999".to_vec());
        assert_eq!(unescape_octal("\\400"), b"\\400".to_vec());
        assert_eq!(unescape_octal("\\"), b"\\".to_vec());
    }
}
