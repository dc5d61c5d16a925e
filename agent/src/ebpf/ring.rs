//! The kernel's event ring buffer as the tracker reads it: records decoded
//! into events, the per-CPU drop counter, and the ring's positions, which
//! let a query tell — without asking anyone — whether every event recorded
//! so far has been applied.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::{MapData, MapError, PerCpuArray, RingBuf};
use tokio::io::unix::AsyncFd;

use super::event::{DecodeError, KernelEvent, decode};

/// Reads the event ring buffer. Built from [`super::Loaded`].
pub(crate) struct Ring {
    ring: AsyncFd<RingBuf<MapData>>,
    drops: PerCpuArray<MapData, u64>,
    positions: Positions,
}

impl Ring {
    /// Registers the ring buffer with the tokio reactor and maps its
    /// position pages read-only.
    pub(crate) fn new(
        ring: RingBuf<MapData>,
        drops: PerCpuArray<MapData, u64>,
    ) -> io::Result<Self> {
        let positions = Positions::map(&ring)?;
        Ok(Self {
            ring: register(ring)?,
            drops,
            positions,
        })
    }

    /// The ring's positions, for [`Positions::producer`] reads elsewhere.
    pub(crate) fn positions(&self) -> Positions {
        self.positions.clone()
    }

    /// Waits until the kernel wakes the reader (records wait), and clears
    /// the readiness so the next call waits for the next wake-up.
    pub(crate) async fn readable(&mut self) -> io::Result<()> {
        let mut guard = self.ring.readable_mut().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Moves up to `max` waiting records, decoded, into `out`; records that
    /// do not decode go to `malformed`. Returns how many records were taken
    /// (decoded or not).
    pub(crate) fn drain(
        &mut self,
        max: usize,
        out: &mut Vec<KernelEvent>,
        mut malformed: impl FnMut(DecodeError),
    ) -> usize {
        let ring = self.ring.get_mut();
        let mut taken = 0;
        while taken < max {
            let Some(item) = ring.next() else { break };
            taken += 1;
            match decode(&item) {
                Ok(ev) => out.push(ev),
                Err(error) => malformed(error),
            }
        }
        taken
    }

    /// Events the programs could not put into the full ring buffer since
    /// they were loaded (all CPUs).
    pub(crate) fn dropped_total(&self) -> Result<u64, MapError> {
        Ok(self.drops.get(&0, 0)?.iter().sum())
    }
}

/// The ring buffer's consumer and producer positions (byte counts that only
/// grow), read from its first two pages, mapped read-only. Cheap to clone.
#[derive(Clone)]
pub struct Positions(std::sync::Arc<Pages>);

struct Pages {
    base: *mut libc::c_void,
    len: usize,
    page: usize,
}

// SAFETY: the mapping is read-only shared memory, only read through atomic
// loads, and unmapped once, when the last clone is dropped.
unsafe impl Send for Pages {}
// SAFETY: as above.
unsafe impl Sync for Pages {}

impl Positions {
    fn map(ring: &RingBuf<MapData>) -> io::Result<Self> {
        let page = rustix::param::page_size();
        let len = 2 * page;
        // SAFETY: a fresh read-only shared mapping of the ring buffer map's
        // fd at offset 0: the consumer page, then the producer page (the BPF
        // ring buffer's mmap layout); checked for MAP_FAILED.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                ring.as_fd().as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(std::sync::Arc::new(Pages { base, len, page })))
    }

    fn load(&self, offset: usize) -> u64 {
        // SAFETY: `offset` is 0 or one page into a live mapping of two pages;
        // both positions are page-aligned u64s the kernel and the consumer
        // update atomically.
        let atomic = unsafe { AtomicU64::from_ptr(self.0.base.cast::<u8>().add(offset).cast()) };
        atomic.load(Ordering::Acquire)
    }

    /// How far the programs have reserved records (committed or not).
    pub fn producer(&self) -> u64 {
        self.load(self.0.page)
    }

    /// How far the reader has consumed records.
    pub fn consumer(&self) -> u64 {
        self.load(0)
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: `base` and `len` are exactly what mmap returned and took.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Registers a map's fd for readability with the tokio reactor.
pub(crate) fn register<T: std::os::fd::AsRawFd>(inner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: the fd belongs to `inner`, which the AsyncFd owns: it stays
    // open and the same for the AsyncFd's whole life (aya maps never swap
    // their fd).
    unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }
        .map_err(|e| io::Error::other(e.to_string()))
}
