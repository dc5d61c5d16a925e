//! Ground truth about processes, read from /proc with parsers of this
//! module's own — none of pidmap's code — for checkers that compare
//! pidmap's answers with the kernel's.

use std::fs;

/// What /proc says about one process at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcTruth {
    pub pid: u32,
    /// Field 3 of /proc/PID/stat (`R`, `S`, `Z`, …).
    pub state: char,
    /// Field 4: the parent's pid.
    pub ppid: u32,
    /// Field 22: start time in clock ticks since boot.
    pub start_time: u64,
    /// A kernel thread (`PF_KTHREAD` in field 9).
    pub kernel_thread: bool,
    /// In `do_exit` (`PF_EXITING` in field 9): the kernel has already
    /// reported its exit, /proc shows it alive a moment longer.
    pub exiting: bool,
    /// Threads left in its group (`Threads:` of /proc/PID/status).
    pub threads: u32,
    /// /proc/PID/comm without the newline procfs adds.
    pub comm: String,
    /// The cgroup2 path (the `0::` line), the host's view.
    pub unified: Option<String>,
    /// The cgroup v1 memory hierarchy's path, where it is mounted.
    pub memory: Option<String>,
}

/// `PF_KTHREAD` in `task_struct.flags` (include/linux/sched.h).
const PF_KTHREAD: u64 = 0x0020_0000;
/// `PF_EXITING` in `task_struct.flags`.
const PF_EXITING: u64 = 0x0000_0004;

impl ProcTruth {
    /// Reads process `pid`; `None` if it is gone (or was never there).
    pub fn read(pid: u32) -> Option<Self> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let close = stat.rfind(')')?;
        let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
        // fields[0] is field 3.
        let field = |n: usize| fields.get(n - 3).copied();
        let flags: u64 = field(9)?.parse().ok()?;
        let threads = fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("Threads:")?.trim().parse().ok())
            .unwrap_or(1);
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let comm = comm.strip_suffix('\n').unwrap_or(&comm).to_owned();
        let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let mut unified = None;
        let mut memory = None;
        for line in cgroups.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_id), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if controllers.is_empty() {
                unified = Some(path.to_owned());
            } else if controllers.split(',').any(|c| c == "memory") {
                memory = Some(path.to_owned());
            }
        }
        Some(Self {
            pid,
            state: field(3)?.chars().next()?,
            ppid: field(4)?.parse().ok()?,
            start_time: field(22)?.parse().ok()?,
            kernel_thread: flags & PF_KTHREAD != 0,
            exiting: flags & PF_EXITING != 0,
            threads,
            comm,
            unified,
            memory,
        })
    }

    /// A zombie whose whole group is dead: exited, not yet reaped.
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z' && self.threads <= 1
    }

    /// On its way out: in `do_exit`, or a zombie leader whose other threads
    /// are still running. Its exit may or may not be reported yet.
    pub fn is_exiting(&self) -> bool {
        !self.is_zombie() && (self.exiting || self.state == 'Z')
    }

    /// The cgroup that places this process, as (hierarchy name, path):
    /// cgroup2 unless the process sits at its root, then the v1 memory
    /// hierarchy where there is one.
    pub fn placement(&self) -> Option<(&'static str, &str)> {
        match (&self.unified, &self.memory) {
            (Some(u), _) if u != "/" => Some(("unified", u)),
            (_, Some(m)) if m != "/" => Some(("memory", m)),
            (Some(u), _) => Some(("unified", u)),
            (None, Some(m)) => Some(("memory", m)),
            (None, None) => None,
        }
    }
}

/// Every pid in /proc (thread-group leaders).
pub fn pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_itself_and_pid_1() {
        let me = ProcTruth::read(std::process::id()).expect("this process");
        assert!(!me.kernel_thread && !me.is_zombie());
        assert!(me.start_time > 0);
        assert!(me.placement().is_some());
        let init = ProcTruth::read(1).expect("pid 1");
        assert_eq!(init.ppid, 0);
        assert!(ProcTruth::read(0).is_none());
    }
}
