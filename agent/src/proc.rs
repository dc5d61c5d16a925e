//! `/proc` scanning: the snapshot that seeds the process table at start and
//! after lost events.
//!
//! Each process is read through a file descriptor of its `/proc/PID`
//! directory, so `stat` and `cgroup` are guaranteed to come from the same
//! process: once it exits, reads through that descriptor fail even if the
//! PID is reused meanwhile.

use std::ffi::CStr;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cgroup::{CgroupError, CgroupFs, CgroupPaths, Scratch, is_gone, proc_pid_dir, read_all};
use crate::types::{CgroupIds, Comm, ProcKey, StartTime};
use crate::util::monotonic_ns;

/// One process found by a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedProcess {
    /// Its identity: PID plus start time.
    pub key: ProcKey,
    /// Its parent's PID (0 for PID 1 and kthreadd).
    pub ppid: u32,
    /// Its command name.
    pub comm: Comm,
    /// Its cgroup ids.
    pub cgroups: CgroupIds,
    /// Its cgroup paths, as `/proc/PID/cgroup` shows them.
    pub cgroup_paths: CgroupPaths,
    /// A zombie whose whole thread group is dead: exited, not yet reaped.
    /// (A zombie leader with threads still running has not exited yet.)
    pub exited: bool,
}

/// The outcome of one scan of `/proc`.
#[derive(Debug, Clone)]
pub struct ScanResult {
    /// Every thread-group leader that could be read.
    pub processes: Vec<ScannedProcess>,
    /// Processes that exited while the scan read them. Processes skipped
    /// for any other reason are only logged, at debug level.
    pub skipped_vanished: usize,
    /// `CLOCK_MONOTONIC` in nanoseconds (the clock of `bpf_ktime_get_ns`),
    /// read before `/proc` was listed: events stamped later than this may
    /// be newer than the snapshot.
    pub started_at_monotonic_ns: u64,
    /// How long the scan took.
    pub elapsed: Duration,
}

/// The fields pidmap needs from a `/proc/PID/stat` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFields {
    /// Field 1, the PID.
    pub pid: u32,
    /// Field 2, the command name (without the parentheses).
    pub comm: Comm,
    /// Field 3, the state (`R`, `S`, `Z`, …).
    pub state: u8,
    /// Field 4, the parent's PID.
    pub ppid: u32,
    /// Field 22, the start time in clock ticks since boot.
    pub start_time: StartTime,
}

/// A field of a `/proc/PID/stat` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatField {
    /// Field 1, `pid`.
    Pid,
    /// Field 2, `comm`, in parentheses.
    Comm,
    /// Field 3, `state`.
    State,
    /// Field 4, `ppid`.
    Ppid,
    /// Field 22, `starttime`.
    StartTime,
}

impl fmt::Display for StatField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pid => "pid",
            Self::Comm => "comm",
            Self::State => "state",
            Self::Ppid => "ppid",
            Self::StartTime => "starttime",
        })
    }
}

/// Errors from reading processes out of `/proc`.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The process exited while it was being read.
    #[error("process {pid} is gone")]
    ProcessGone {
        /// The process id.
        pid: u32,
    },
    /// The procfs directory could not be listed.
    #[error("failed to list {}", path.display())]
    List {
        /// The directory that was listed.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// A procfs file or directory could not be read for a reason other
    /// than the process having exited.
    #[error("failed to read {}", path.display())]
    Read {
        /// The file or directory that was read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// A `stat` line lacks a field or has a malformed one.
    #[error("malformed stat line: missing or invalid {field}")]
    MalformedStat {
        /// The first field that could not be parsed.
        field: StatField,
    },
    /// The process's cgroups could not be resolved.
    #[error("failed to resolve the cgroups of process {pid}")]
    Cgroup {
        /// The process id.
        pid: u32,
        /// What went wrong.
        #[source]
        source: CgroupError,
    },
}

impl ProcError {
    /// Whether the error only means that the process (or its cgroup) went
    /// away while it was being read: an expected race, skipped quietly.
    pub fn is_vanished(&self) -> bool {
        match self {
            Self::ProcessGone { .. } => true,
            Self::Cgroup { source, .. } => source.is_vanished(),
            _ => false,
        }
    }
}

/// Below this many processes a scan reads /proc on the calling thread only.
const PARALLEL_SCAN_MIN: usize = 4096;
/// At most this many threads read /proc at once (the node's cores permitting).
const MAX_SCAN_THREADS: usize = 4;

/// Reads every thread-group leader under `root` (normally `/proc`), with
/// its cgroups resolved through `fs`; on nodes with [`PARALLEL_SCAN_MIN`]
/// processes or more, on up to [`MAX_SCAN_THREADS`] threads.
///
/// Processes that exit meanwhile are counted in
/// [`ScanResult::skipped_vanished`]; processes that fail otherwise are
/// skipped and logged at debug level. If `root` itself cannot be listed,
/// logs a warning and returns an empty result: callers that must tell an
/// unreadable `/proc` from an empty one use [`try_scan`].
///
/// # Examples
///
/// ```no_run
/// use pidmap::testing::cgroup::CgroupFs;
///
/// let fs = CgroupFs::discover()?;
/// let scan = pidmap::testing::proc::scan(&fs, "/proc".as_ref());
/// println!("{} processes in {:?}", scan.processes.len(), scan.elapsed);
/// # Ok::<(), pidmap::testing::cgroup::CgroupError>(())
/// ```
pub fn scan(fs: &CgroupFs, root: &Path) -> ScanResult {
    let started_at_monotonic_ns = monotonic_ns();
    let started = Instant::now();
    try_scan_since(fs, root, started_at_monotonic_ns, started).unwrap_or_else(|err| {
        tracing::warn!(
            error = &err as &(dyn std::error::Error + 'static),
            "cannot scan processes"
        );
        ScanResult {
            processes: Vec::new(),
            skipped_vanished: 0,
            started_at_monotonic_ns,
            elapsed: started.elapsed(),
        }
    })
}

/// [`scan`], failing when `root` cannot be listed.
///
/// # Errors
///
/// [`ProcError::List`] if `root` cannot be listed; errors of single
/// processes only skip those processes.
pub(crate) fn try_scan(fs: &CgroupFs, root: &Path) -> Result<ScanResult, ProcError> {
    try_scan_since(fs, root, monotonic_ns(), Instant::now())
}

fn try_scan_since(
    fs: &CgroupFs,
    root: &Path,
    started_at_monotonic_ns: u64,
    started: Instant,
) -> Result<ScanResult, ProcError> {
    let entries = std::fs::read_dir(root).map_err(|source| ProcError::List {
        path: root.to_owned(),
        source,
    })?;
    let mut pids = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => {
                tracing::debug!(root = %root.display(), error = %err, "cannot read procfs entry");
                continue;
            }
        };
        if let Some(pid) =
            parse_u64(entry.file_name().as_bytes()).and_then(|n| u32::try_from(n).ok())
        {
            pids.push(pid);
        }
    }
    // Reading /proc is the kernel formatting each process's stat and cgroup files: on a
    // big node the seed is worth the node's cores (a CPU limit only slows the threads).
    let threads = if pids.len() < PARALLEL_SCAN_MIN {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_SCAN_THREADS))
    };
    let parts = read_pids(fs, root, &pids, threads);
    let mut result = ScanResult {
        processes: Vec::with_capacity(pids.len()),
        skipped_vanished: 0,
        started_at_monotonic_ns,
        elapsed: Duration::ZERO,
    };
    for (processes, vanished) in parts {
        result.processes.extend(processes);
        result.skipped_vanished += vanished;
    }
    result.elapsed = started.elapsed();
    Ok(result)
}

/// Reads `pids` under `root` on `threads` threads (contiguous parts, in order): per part,
/// the processes read and how many vanished meanwhile.
fn read_pids(
    fs: &CgroupFs,
    root: &Path,
    pids: &[u32],
    threads: usize,
) -> Vec<(Vec<ScannedProcess>, usize)> {
    let read_all = |pids: &[u32]| {
        let mut scratch = Scratch::default();
        let mut part = (Vec::with_capacity(pids.len()), 0);
        for &pid in pids {
            match read_with(fs, root, pid, &mut scratch) {
                Ok(process) => part.0.push(process),
                Err(err) if err.is_vanished() => part.1 += 1,
                Err(err) => {
                    tracing::debug!(
                        pid,
                        error = &err as &(dyn std::error::Error + 'static),
                        "skipping process"
                    );
                }
            }
        }
        part
    };
    if threads <= 1 || pids.len() < 2 {
        return vec![read_all(pids)];
    }
    let chunk = pids.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = pids
            .chunks(chunk)
            .map(|pids| {
                std::thread::Builder::new()
                    .name("pidmap-scan".into())
                    .spawn_scoped(s, || read_all(pids))
            })
            .collect();
        handles
            .into_iter()
            .zip(pids.chunks(chunk))
            .map(|(handle, pids)| match handle {
                Ok(handle) => handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                // No thread to be had: this part on the calling thread.
                Err(_) => read_all(pids),
            })
            .collect()
    })
}

/// Reads one process from the procfs at `root`. `pid` should be a thread
/// group id: procfs also answers for thread ids, and then reads the thread.
///
/// # Errors
///
/// A process that exits meanwhile gives an error whose
/// [`is_vanished`](ProcError::is_vanished) is true; otherwise
/// [`ProcError::Read`], [`ProcError::MalformedStat`] or
/// [`ProcError::Cgroup`].
#[cfg(test)]
pub(crate) fn read_process(
    fs: &CgroupFs,
    root: &Path,
    pid: u32,
) -> Result<ScannedProcess, ProcError> {
    read_with(fs, root, pid, &mut Scratch::default())
}

fn read_with(
    fs: &CgroupFs,
    root: &Path,
    pid: u32,
    scratch: &mut Scratch,
) -> Result<ScannedProcess, ProcError> {
    proc_pid_dir(&mut scratch.path, root, pid);
    let read_error = |path: &Path, name: &str, source: io::Error| {
        if is_gone(&source) {
            ProcError::ProcessGone { pid }
        } else {
            ProcError::Read {
                path: path.join(name),
                source,
            }
        }
    };
    let dir = ProcDir::open(&scratch.path).map_err(|e| read_error(&scratch.path, "", e))?;
    dir.read(c"stat", &mut scratch.data)
        .map_err(|e| read_error(&scratch.path, "stat", e))?;
    let stat = parse_stat_bytes(&scratch.data)?;
    // A zombie leader: its group is dead once no other thread is left.
    let exited = stat.state == b'Z'
        && std::fs::read_dir(scratch.path.join("task")).map_or(true, |tasks| tasks.count() <= 1);
    let (cgroups, cgroup_paths) =
        match fs.ids_of_pid_with(root, pid, |data| dir.read(c"cgroup", data), scratch) {
            Ok(found) => found,
            // Only zombies are left in a cgroup that could be removed (it
            // lets an rmdir through then): the process exited all the same,
            // and is not skipped as if it had vanished.
            Err(CgroupError::CgroupGone { .. }) if exited => Default::default(),
            Err(source) => return Err(ProcError::Cgroup { pid, source }),
        };
    Ok(ScannedProcess {
        key: ProcKey::new(pid, stat.start_time),
        ppid: stat.ppid,
        comm: stat.comm,
        cgroups,
        cgroup_paths,
        exited,
    })
}

/// Reads and parses `/proc/PID/stat` under `root` (normally `/proc`).
///
/// # Errors
///
/// As for one process of [`scan`]: a process that is gone gives an error whose
/// [`is_vanished`](ProcError::is_vanished) is true.
pub(crate) fn read_stat(root: &Path, pid: u32) -> Result<StatFields, ProcError> {
    let mut path = PathBuf::new();
    proc_pid_dir(&mut path, root, pid);
    path.push("stat");
    let mut data = Vec::with_capacity(512);
    let read = File::open(&path).and_then(|file| read_all(file, &mut data));
    match read {
        Ok(()) => parse_stat_bytes(&data),
        Err(source) if is_gone(&source) => Err(ProcError::ProcessGone { pid }),
        Err(source) => Err(ProcError::Read { path, source }),
    }
}

/// Parses a `/proc/PID/stat` line.
///
/// `comm` is everything between the first `(` and the **last** `)`, since a
/// command name may itself contain spaces and parentheses.
///
/// # Errors
///
/// [`ProcError::MalformedStat`] naming the first field that is missing or
/// not a number.
pub fn parse_stat(line: &str) -> Result<StatFields, ProcError> {
    parse_stat_bytes(line.as_bytes())
}

/// [`parse_stat`] for raw bytes (a command name need not be UTF-8).
///
/// # Errors
///
/// As [`parse_stat`].
pub fn parse_stat_bytes(line: &[u8]) -> Result<StatFields, ProcError> {
    let malformed = |field| ProcError::MalformedStat { field };
    let open = line
        .iter()
        .position(|&b| b == b'(')
        .ok_or(malformed(StatField::Comm))?;
    let close = line
        .iter()
        .rposition(|&b| b == b')')
        .filter(|&close| close > open)
        .ok_or(malformed(StatField::Comm))?;
    let pid = parse_u64(line[..open].trim_ascii())
        .and_then(|n| u32::try_from(n).ok())
        .ok_or(malformed(StatField::Pid))?;
    let comm = Comm::from_bytes(&line[open + 1..close]);
    let mut fields = line[close + 1..]
        .split(|&b| b == b' ' || b == b'\n')
        .filter(|f| !f.is_empty());
    let state = fields
        .next()
        .and_then(|f| f.first().copied())
        .ok_or(malformed(StatField::State))?;
    let ppid = fields
        .next()
        .and_then(parse_u64)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or(malformed(StatField::Ppid))?;
    // Fields 5 to 21 lie between ppid and starttime.
    let start_time = fields
        .nth(17)
        .and_then(parse_u64)
        .ok_or(malformed(StatField::StartTime))?;
    Ok(StatFields {
        pid,
        comm,
        state,
        ppid,
        start_time: StartTime(start_time),
    })
}

/// A decimal number made only of ASCII digits, without overflow.
fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

/// An open `/proc/PID` directory: files opened through it belong to that
/// process or to none.
struct ProcDir(OwnedFd);

impl ProcDir {
    fn open(path: &Path) -> io::Result<Self> {
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(path)?;
        Ok(Self(OwnedFd::from(dir)))
    }

    /// Replaces the contents of `data` with the contents of file `name`.
    fn read(&self, name: &CStr, data: &mut Vec<u8>) -> io::Result<()> {
        let fd = rustix::fs::openat(
            &self.0,
            name,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        read_all(File::from(fd), data)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::cgroup::testutil::TempDir;
    use crate::types::CgroupId;

    const SLEEP: &str = "4501 (sleep) S 4489 4489 3672 0 -1 4194304 98 0 0 0 0 0 0 0 20 0 1 0 183108 3133440 407 18446744073709551615 94714710106112 94714710125993 140733245053120 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 94714710142000 94714710143616 94715035693056 140733245061856 140733245061876 140733245061876 140733245063147 0\n";

    #[test]
    fn parses_a_normal_line() {
        let stat = parse_stat(SLEEP).unwrap();
        assert_eq!(stat.pid, 4501);
        assert_eq!(stat.comm.as_string(), "sleep");
        assert_eq!(stat.ppid, 4489);
        assert_eq!(stat.start_time, StartTime(183108));
    }

    #[test]
    fn comm_may_hold_spaces_and_parens() {
        let line = "77 (a) b) (c ) R 1 77 77 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 999 0 0";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.comm.as_string(), "a) b) (c ");
        assert_eq!(stat.ppid, 1);
        assert_eq!(stat.start_time, StartTime(999));
        let stat = parse_stat(
            "2 (kworker/u8:0-events_unbound) I 2 0 0 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0",
        )
        .unwrap();
        assert_eq!(stat.comm.as_string(), "kworker/u8:0-ev");
        assert_eq!(stat.start_time, StartTime(5));
        let stat = parse_stat("3 () S 0 0 0 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 7").unwrap();
        assert_eq!(stat.comm.as_string(), "");
        assert_eq!(stat.ppid, 0);
    }

    #[test]
    fn comm_need_not_be_utf8() {
        let line = b"9 (\xff\xfe) S 1 0 0 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 42 0";
        let stat = parse_stat_bytes(line).unwrap();
        assert_eq!(stat.comm.as_bytes(), b"\xff\xfe");
        assert_eq!(stat.start_time, StartTime(42));
    }

    /// Asserts that each line fails to parse, naming the given field.
    fn assert_malformed(cases: &[(&str, StatField)]) {
        for &(line, field) in cases {
            let err = parse_stat(line).unwrap_err();
            assert!(
                matches!(err, ProcError::MalformedStat { field: f } if f == field),
                "{line:?}: {err}"
            );
        }
    }

    #[test]
    fn truncated_lines_name_the_missing_field() {
        let cases: [(&str, StatField); 7] = [
            ("", StatField::Comm),
            ("4501 (sleep", StatField::Comm),
            ("4501 )sleep(", StatField::Comm),
            ("4501 (sleep)", StatField::State),
            ("4501 (sleep) S", StatField::Ppid),
            ("4501 (sleep) S 4489 4489 3672 0 -1", StatField::StartTime),
            (
                &SLEEP[..SLEEP.find(" 183108").unwrap()],
                StatField::StartTime,
            ),
        ];
        assert_malformed(&cases);
    }

    #[test]
    fn non_numeric_fields_are_rejected() {
        let cases: [(&str, StatField); 6] = [
            (
                "x1 (a) S 1 0 0 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5",
                StatField::Pid,
            ),
            (
                " (a) S 1 0 0 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5",
                StatField::Pid,
            ),
            (
                "99999999999 (a) S 1 0 0 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5",
                StatField::Pid,
            ),
            (
                "1 (a) S -1 0 0 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5",
                StatField::Ppid,
            ),
            (
                "1 (a) S 1 0 0 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5x",
                StatField::StartTime,
            ),
            (
                "1 (a) S 1 0 0 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99999999999999999999",
                StatField::StartTime,
            ),
        ];
        assert_malformed(&cases);
    }

    /// A fake procfs: one good process, one that vanished, one with a bad
    /// stat line, one whose cgroup is gone, and entries that are not PIDs.
    #[test]
    fn scans_a_fake_procfs() {
        let tmp = TempDir::new("proc-fake");
        tmp.mkdirs(&["cg2/default/long1", "proc/101", "proc/self", "proc/sys"]);
        tmp.write(
            "proc/100/stat",
            "100 (sleep) S 1 100 100 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 4242 0 0\n",
        );
        tmp.write(
            "proc/100/cgroup",
            "4:memory:/default/long1\n0::/default/long1\n",
        );
        tmp.write("proc/102/stat", "102 (bad) S\n");
        tmp.write(
            "proc/103/stat",
            "103 (moved) S 1 0 0 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 7 0\n",
        );
        tmp.write("proc/103/cgroup", "0::/default/removed\n");
        let fs = CgroupFs::from_roots(Some(tmp.path().join("cg2")), None);
        let proc_root = tmp.path().join("proc");

        let result = try_scan(&fs, &proc_root).unwrap();
        assert_eq!(result.processes.len(), 1, "102 is malformed");
        assert_eq!(
            result.skipped_vanished, 2,
            "101 has no files, 103 lost its cgroup"
        );
        let p = &result.processes[0];
        assert_eq!(p.key, ProcKey::new(100, StartTime(4242)));
        assert_eq!(p.ppid, 1);
        assert_eq!(p.comm.as_string(), "sleep");
        let ino = std::fs::metadata(tmp.path().join("cg2/default/long1"))
            .unwrap()
            .ino();
        assert_eq!(p.cgroups.v2, Some(CgroupId(ino)));
        assert_eq!(p.cgroups.v1_memory, None, "no v1 memory mount given");
        assert_eq!(p.cgroup_paths.v1_memory.as_deref(), Some("/default/long1"));

        assert_eq!(&read_process(&fs, &proc_root, 100).unwrap(), p);
        assert!(
            read_process(&fs, &proc_root, 101)
                .unwrap_err()
                .is_vanished()
        );
        assert!(
            read_process(&fs, &proc_root, 9999)
                .unwrap_err()
                .is_vanished()
        );

        // Read in parallel parts, the same processes in the same order.
        let pids = [100, 101, 102, 103, 9999];
        let serial = read_pids(&fs, &proc_root, &pids, 1);
        for threads in [2, 3, 8] {
            let parts = read_pids(&fs, &proc_root, &pids, threads);
            assert_eq!(
                parts.len(),
                pids.len().div_ceil(pids.len().div_ceil(threads))
            );
            let processes: Vec<_> = parts.iter().flat_map(|p| p.0.clone()).collect();
            let vanished: usize = parts.iter().map(|p| p.1).sum();
            assert_eq!(
                (processes, vanished),
                (serial[0].0.clone(), 3),
                "{threads} threads"
            );
        }

        let missing = tmp.path().join("no-proc");
        let err = try_scan(&fs, &missing).unwrap_err();
        assert!(matches!(err, ProcError::List { .. }));
        let empty = scan(&fs, &missing);
        assert!(empty.processes.is_empty());
        assert!(empty.started_at_monotonic_ns > 0);
    }

    /// A zombie whose cgroup was removed (cgroup2 allows it once only
    /// zombies are left) is exited, not vanished: the seed used to skip it,
    /// and pidmap answered `unknown` for an exited process /proc still
    /// showed (a fault test's checker found it on a shared machine).
    #[test]
    fn a_zombie_in_a_removed_cgroup_is_scanned_as_exited() {
        let tmp = TempDir::new("proc-zombie");
        tmp.mkdirs(&["cg2"]);
        for (pid, state) in [(103, 'S'), (104, 'Z')] {
            tmp.write(
                &format!("proc/{pid}/stat"),
                &format!("{pid} (x) {state} 1 0 0 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 7 0\n"),
            );
            tmp.write(
                &format!("proc/{pid}/cgroup"),
                "0::/orphans/plain (deleted)\n",
            );
        }
        let fs = CgroupFs::from_roots(Some(tmp.path().join("cg2")), None);
        let result = try_scan(&fs, &tmp.path().join("proc")).unwrap();
        assert_eq!(result.skipped_vanished, 1, "103 runs: it lost its cgroup");
        let [zombie] = result.processes.as_slice() else {
            panic!("{:?}", result.processes);
        };
        assert_eq!(zombie.key, ProcKey::new(104, StartTime(7)));
        assert!(zombie.exited);
        assert_eq!(zombie.cgroups.v2, None);
    }

    /// The real `/proc` of this machine holds this test process, with the
    /// right parent and cgroup2 id.
    #[test]
    fn scans_the_real_procfs() {
        let fs = CgroupFs::discover().unwrap();
        let before = monotonic_ns();
        let scan = scan(&fs, Path::new("/proc"));
        assert!(scan.started_at_monotonic_ns >= before);
        assert!(monotonic_ns() >= scan.started_at_monotonic_ns);
        let me = scan
            .processes
            .iter()
            .find(|p| p.key.pid == std::process::id())
            .unwrap();
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
        assert!(scan.processes.iter().any(|p| p.key.pid == 1));
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let v2_path = cgroup.lines().find_map(|l| l.strip_prefix("0::"));
        match (fs.v2_root(), v2_path) {
            (Some(root), Some(path)) => {
                let ino = std::fs::metadata(root.join(path.trim_start_matches('/')))
                    .unwrap()
                    .ino();
                assert_eq!(me.cgroups.v2, Some(CgroupId(ino)));
                assert_eq!(me.cgroup_paths.v2.as_deref(), Some(path));
            }
            _ => assert_eq!(me.cgroups.v2, None),
        }
        let again = read_process(&fs, Path::new("/proc"), std::process::id()).unwrap();
        assert_eq!(again.key, me.key);
    }
}
