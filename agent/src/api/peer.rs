//! Who is on the other end of an API connection, as the kernel recorded
//! it when the peer connected: `SO_PEERCRED` (pid, uid, gid) and
//! `SO_PEERGROUPS` (its supplementary groups). Every request of the
//! connection carries it; access control ([`super::policy`]) and the
//! per-peer connection limits ([`super::admission`]) ask it, `WhoAmI`
//! answers about its pid.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
    sync::Arc,
};

use tokio::net::UnixStream;

/// Credentials of a connected peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub pid: Option<u32>,
    pub uid: u32,
    /// Primary group.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Arc<[u32]>,
}

impl Peer {
    /// The credentials of the process that connected `stream`.
    pub fn of(stream: &UnixStream) -> io::Result<Self> {
        let cred = stream.peer_cred()?;
        let groups = peer_groups(stream_fd(stream))?;
        Ok(Self {
            pid: cred.pid().and_then(|p| u32::try_from(p).ok()),
            uid: cred.uid(),
            gid: cred.gid(),
            groups: groups.into(),
        })
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Whether the peer is in `gid`, as its primary group or a
    /// supplementary one: membership as the kernel checks it for files.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

fn stream_fd(stream: &UnixStream) -> BorrowedFd<'_> {
    // SAFETY: the fd is open for as long as `stream` is borrowed.
    unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }
}

/// The supplementary groups of the peer of the connected Unix socket `fd`
/// (`SO_PEERGROUPS`, Linux 4.13+).
fn peer_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    const GID: usize = std::mem::size_of::<libc::gid_t>();
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * GID)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `groups` is writable for `len` bytes and outlives the
        // call; `len` is ours.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
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
    async fn a_socket_pair_peer_is_this_process_with_its_groups() {
        let (a, _b) = UnixStream::pair().expect("socketpair");
        let peer = Peer::of(&a).expect("credentials");
        assert_eq!(peer.pid, Some(std::process::id()));
        // SAFETY: plain syscalls without arguments.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        assert_eq!((peer.uid, peer.gid), (uid, gid));
        // SAFETY: a size query writes nothing.
        let count = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
        assert_eq!(peer.groups.len(), usize::try_from(count).expect("count"));
    }

    #[test]
    fn membership_counts_primary_and_supplementary_groups() {
        let peer = Peer {
            pid: Some(7),
            uid: 1000,
            gid: 100,
            groups: vec![27, 998].into(),
        };
        assert!(peer.in_group(100) && peer.in_group(998) && peer.in_group(27));
        assert!(!peer.in_group(0) && !peer.is_root());
    }
}
