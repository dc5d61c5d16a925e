//! Small value types shared by every owner: process keys, cgroup ids, comm.

use std::fmt;

/// Clock ticks per second in every tick-based field of procfs (`USER_HZ`).
///
/// `USER_HZ` is part of the Linux user ABI and is 100 on every architecture
/// pidmap supports, whatever `CONFIG_HZ` the kernel was built with.
pub(crate) const USER_HZ: u64 = 100;

const NSEC_PER_TICK: u64 = 1_000_000_000 / USER_HZ;

/// A process's start time in clock ticks since boot, exactly as field 22
/// (`starttime`) of `/proc/PID/stat` shows it.
///
/// The kernel derives that field from `task->start_boottime` (nanoseconds),
/// so events from eBPF and lines from procfs agree on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StartTime(pub u64);

impl StartTime {
    /// Converts `task->start_boottime` (nanoseconds since boot) to ticks the
    /// way `/proc/PID/stat` does (`nsec_to_clock_t`).
    pub const fn from_boottime_ns(ns: u64) -> Self {
        Self(ns / NSEC_PER_TICK)
    }
}

impl fmt::Display for StartTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A process identity that survives PID reuse: the thread-group id plus the
/// group leader's start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProcKey {
    pub pid: u32,
    pub start_time: StartTime,
}

impl ProcKey {
    pub const fn new(pid: u32, start_time: StartTime) -> Self {
        Self { pid, start_time }
    }
}

impl fmt::Display for ProcKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.pid, self.start_time)
    }
}

/// A cgroup id: the inode number of the cgroup's directory in its hierarchy
/// (`stat -c %i`), which is also what `bpf_get_current_cgroup_id()` and
/// `name_to_handle_at` report. The root of a hierarchy is 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CgroupId(pub u64);

impl fmt::Display for CgroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a process sits: its cgroup2 id, and on hybrid or pure-v1 hosts the
/// id of its cgroup in the v1 memory hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CgroupIds {
    /// cgroup2 (unified) id. The kernel reports 1 (the root) on a pure-v1
    /// host; a /proc scan reports `None` where no cgroup2 is mounted.
    pub v2: Option<CgroupId>,
    /// v1 memory-hierarchy id; `None` where no v1 memory hierarchy is mounted.
    pub v1_memory: Option<CgroupId>,
}

/// A task's command name (`comm`), at most 15 bytes, kept inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm([u8; 16]);

impl Comm {
    /// Takes the bytes up to the first NUL (or all 16) as the name.
    pub fn from_bytes(raw: &[u8]) -> Self {
        let mut buf = [0u8; 16];
        let len = raw
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(raw.len())
            .min(15);
        buf[..len].copy_from_slice(&raw[..len]);
        Self(buf)
    }

    /// The name as text; bytes that are not UTF-8 are replaced.
    pub fn as_string(&self) -> String {
        String::from_utf8_lossy(self.as_bytes()).into_owned()
    }

    pub fn as_bytes(&self) -> &[u8] {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(16);
        &self.0[..len]
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_string())
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_matches_proc_rounding() {
        // 12.345678 s after boot is tick 1234 (truncated, like nsec_to_clock_t).
        assert_eq!(StartTime::from_boottime_ns(12_345_678_901), StartTime(1234));
        assert_eq!(StartTime::from_boottime_ns(9_999_999), StartTime(0));
    }

    #[test]
    fn comm_stops_at_nul_and_caps_at_15_bytes() {
        assert_eq!(Comm::from_bytes(b"sleep\0junk").as_string(), "sleep");
        assert_eq!(
            Comm::from_bytes(b"0123456789abcdefXYZ").as_string(),
            "0123456789abcde"
        );
        assert_eq!(Comm::from_bytes(b"").as_string(), "");
    }
}
