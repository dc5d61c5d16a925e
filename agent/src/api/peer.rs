//! Who is on the other end of an API connection, fixed when it connected:
//! `SO_PEERCRED` (pid, uid, gid) and `SO_PEERGROUPS` (its supplementary
//! groups), as the kernel recorded them at `connect()`, and the process
//! itself as (pid, start time) with a pidfd.
//!
//! A bare pid would be someone else a moment later: a connection can
//! outlive the process that opened it (a child keeps the socket), and the
//! pid is then free for any new process. So at accept the peer's pid is
//! pinned by a pidfd — `SO_PEERPIDFD` (Linux 6.5+), which refers to the
//! very process that connected, else `pidfd_open` of its pid — and its
//! start time is read from `/proc/PID/stat` while that pidfd shows it
//! alive. From then on [`Peer::process`] names exactly that process, and
//! [`Peer::has_exited`] says whether it still lives; `WhoAmI` and the
//! per-peer connection limits use them, never the bare pid. Access control
//! ([`super::policy`]) uses the connect-time uid and groups, which the
//! kernel fixed for the socket's life.
//!
//! This is one `/proc` read per accepted connection, never per request.
//! Before Linux 6.5 a process that connected and died, and whose pid was
//! reused, all before the accept, could be taken for the new holder of the
//! pid: the window is the accept backlog's, microseconds on a live agent.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
    sync::Arc,
};

use rustix::event::{PollFd, PollFlags, poll};
use tokio::net::UnixStream;

use crate::{proc, types::ProcKey};

/// Credentials of a connected peer.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub pid: Option<u32>,
    /// The process that connected, when its start time could be read while
    /// it was alive.
    pub process: Option<ProcKey>,
    pub uid: u32,
    /// Primary group.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Arc<[u32]>,
    /// The process that connected; readable once it has exited.
    pidfd: Option<Arc<OwnedFd>>,
}

impl PartialEq for Peer {
    fn eq(&self, other: &Self) -> bool {
        (self.pid, self.process, self.uid, self.gid, &self.groups)
            == (
                other.pid,
                other.process,
                other.uid,
                other.gid,
                &other.groups,
            )
    }
}

impl Eq for Peer {}

impl Peer {
    /// A peer with these credentials and no process identity (tests, and
    /// peers whose process could not be pinned).
    pub(crate) fn with_credentials(pid: Option<u32>, uid: u32, gid: u32, groups: &[u32]) -> Self {
        Self {
            pid,
            process: None,
            uid,
            gid,
            groups: groups.into(),
            pidfd: None,
        }
    }

    /// The credentials of the process that connected `stream`, and that
    /// process pinned (see the module docs); `proc_root` is procfs.
    pub(crate) fn of(stream: &UnixStream, proc_root: &Path) -> io::Result<Self> {
        let cred = stream.peer_cred()?;
        let fd = stream_fd(stream);
        let groups = peer_groups(fd)?;
        let pid = cred.pid().and_then(|p| u32::try_from(p).ok());
        let mut peer = Self::with_credentials(pid, cred.uid(), cred.gid(), &groups);
        if let Some(pid) = pid {
            peer.pin(fd, pid, proc_root);
        }
        Ok(peer)
    }

    /// Takes a pidfd of the peer and its start time (see the module docs).
    /// Leaves `process` empty when the process is already gone or its
    /// start time cannot be read.
    fn pin(&mut self, socket: BorrowedFd<'_>, pid: u32, proc_root: &Path) {
        let pidfd = peer_pidfd(socket).or_else(|_| open_pidfd(pid));
        let Ok(pidfd) = pidfd else {
            // The process is gone already (pidfd_open fails with ESRCH).
            return;
        };
        let read = proc::read_stat(proc_root, pid);
        let pidfd = Arc::new(pidfd);
        // Read while the pidfd shows it alive: the pid was still its.
        if let (Ok(stat), Some(false)) = (read, exited(&pidfd)) {
            self.process = Some(ProcKey::new(pid, stat.start_time));
        }
        self.pidfd = Some(pidfd);
    }

    /// Whether the process that connected has exited: `None` when that is
    /// not known (no pidfd could be taken).
    pub(crate) fn has_exited(&self) -> Option<bool> {
        self.pidfd.as_deref().and_then(exited)
    }

    pub(crate) fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether the peer is in `gid`, as its primary group or a
    /// supplementary one: membership as the kernel checks it for files.
    pub(crate) fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

fn stream_fd(stream: &UnixStream) -> BorrowedFd<'_> {
    stream.as_fd()
}

/// Whether the process of `pidfd` has exited (a pidfd polls readable
/// then); `None` if the poll fails.
fn exited(pidfd: &OwnedFd) -> Option<bool> {
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    // A zero timeout: look, do not wait.
    poll(&mut fds, Some(&rustix::event::Timespec::default()))
        .ok()
        .map(|ready| ready > 0)
}

/// `pidfd_open(pid)` (Linux 5.3+).
fn open_pidfd(pid: u32) -> io::Result<OwnedFd> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// A pidfd of the process that connected the Unix socket `fd`, as the
/// kernel recorded it at connect (`SO_PEERPIDFD`, Linux 6.5+).
fn peer_pidfd(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut pidfd: libc::c_int = -1;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `pidfd` is writable for `len` bytes and outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERPIDFD,
            (&raw mut pidfd).cast(),
            &raw mut len,
        )
    };
    if rc != 0 || pidfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel gave us this new descriptor; it is ours to own.
    Ok(unsafe { OwnedFd::from_raw_fd(pidfd) })
}

/// The supplementary groups of the peer of the connected Unix socket `fd`
/// (`SO_PEERGROUPS`, Linux 4.13+).
fn peer_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    const GID: usize = size_of::<libc::gid_t>();
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * GID)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `groups` is writable for `len` bytes and outlives the
        // call; `len` is ours.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &raw mut len,
            )
        };
        let needed = len as usize / GID;
        if rc == 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        let error = io::Error::last_os_error();
        // Too small a buffer: the kernel says how much it needs (at most
        // NGROUPS_MAX, 65,536 groups).
        if error.raw_os_error() == Some(libc::ERANGE) && needed > groups.len() {
            groups.resize(needed, 0);
            continue;
        }
        return Err(error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_socket_pair_peer_is_this_process_pinned_with_its_groups() {
        let (a, _b) = UnixStream::pair().expect("socketpair");
        let peer = Peer::of(&a, Path::new("/proc")).expect("credentials");
        assert_eq!(peer.pid, Some(std::process::id()));
        let own = proc::read_stat(Path::new("/proc"), std::process::id()).expect("own stat");
        assert_eq!(
            peer.process,
            Some(ProcKey::new(std::process::id(), own.start_time))
        );
        assert_eq!(peer.has_exited(), Some(false));
        let (uid, gid) = (rustix::process::getuid(), rustix::process::getgid());
        assert_eq!((peer.uid, peer.gid), (uid.as_raw(), gid.as_raw()));
        let groups = rustix::process::getgroups().expect("getgroups");
        assert_eq!(peer.groups.len(), groups.len());
    }

    #[test]
    fn a_pidfd_says_when_its_process_has_exited() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pidfd = open_pidfd(child.id()).expect("pidfd_open");
        assert_eq!(exited(&pidfd), Some(false));
        child.kill().expect("kill");
        child.wait().expect("reap");
        assert_eq!(exited(&pidfd), Some(true));
    }

    #[test]
    fn membership_counts_primary_and_supplementary_groups() {
        let peer = Peer::with_credentials(Some(7), 1000, 100, &[27, 998]);
        assert!(peer.in_group(100) && peer.in_group(998) && peer.in_group(27));
        assert!(!peer.in_group(0) && !peer.is_root());
    }
}
