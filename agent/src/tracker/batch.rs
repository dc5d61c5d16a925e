//! The batch timer: after a wake-up the tracker collects records for
//! `ring_batch_us` before reading them. tokio's timers have a 1 ms grain
//! (a 300 µs sleep ends after 1–2 ms), so the tracker uses a `timerfd` of
//! its own, which fires on time.

use std::{io, os::fd::OwnedFd, time::Duration};

use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};
use tokio::io::unix::AsyncFd;

/// A one-shot CLOCK_MONOTONIC timer the tokio reactor watches.
pub(super) struct BatchTimer {
    fd: AsyncFd<OwnedFd>,
    armed: bool,
}

impl BatchTimer {
    pub(super) fn new() -> io::Result<Self> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        Ok(Self {
            fd: crate::ebpf::ring::register(fd)?,
            armed: false,
        })
    }

    /// Whether the timer is set.
    pub(super) fn armed(&self) -> bool {
        self.armed
    }

    /// Fires once, `after` from now.
    pub(super) fn arm(&mut self, after: Duration) -> io::Result<()> {
        self.set(after)?;
        self.armed = true;
        Ok(())
    }

    /// Cancels a pending firing.
    pub(super) fn disarm(&mut self) -> io::Result<()> {
        self.armed = false;
        self.set(Duration::ZERO)
    }

    fn set(&self, after: Duration) -> io::Result<()> {
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let value = Timespec {
            tv_sec: i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(after.subsec_nanos()),
        };
        timerfd_settime(
            self.fd.get_ref(),
            TimerfdTimerFlags::empty(),
            &Itimerspec {
                it_interval: zero,
                it_value: value,
            },
        )?;
        Ok(())
    }

    /// Waits until the armed timer fires (forever while it is not armed).
    pub(super) async fn fired(&mut self) -> io::Result<()> {
        if !self.armed {
            return std::future::pending().await;
        }
        loop {
            let mut guard = self.fd.readable_mut().await?;
            let mut expirations = [0u8; 8];
            match rustix::io::read(guard.get_inner(), &mut expirations) {
                Ok(_) => {
                    self.armed = false;
                    return Ok(());
                }
                Err(rustix::io::Errno::AGAIN) => guard.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }
}
