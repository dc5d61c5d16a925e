//! Faults for tests of the agent's supervision (cargo feature
//! `fault-injection`; never in a release build). A test passes [`Faults`]
//! to [`Agent::start_with_faults`](crate::Agent::start_with_faults) and
//! later triggers one: the task then panics, ends, or hangs (stops working
//! without ending), as a bug would make it — or pauses until resumed, as a
//! process the scheduler does not run (so a test can make the ring buffer
//! overflow by stopping its reader, not by hoping the machine is fast).

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
};

use tokio::sync::Notify;

/// What a triggered fault does to its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    /// The task panics.
    Panic = 1,
    /// The task returns, as if its work were done.
    End = 2,
    /// The task stops working but never ends.
    Hang = 3,
    /// The task is not run until [`TaskFault::resume`].
    Pause = 4,
}

/// A fault switch for one task. Cheap to clone; clones share the switch.
#[derive(Debug, Clone, Default)]
pub struct TaskFault(Arc<(AtomicU8, Notify)>);

impl TaskFault {
    /// Makes the task fail with `fault`.
    pub fn trigger(&self, fault: Fault) {
        self.0.0.store(fault as u8, Ordering::Release);
        self.0.1.notify_waiters();
    }

    /// Runs a paused task again.
    pub fn resume(&self) {
        let _ =
            self.0
                .0
                .compare_exchange(Fault::Pause as u8, 0, Ordering::AcqRel, Ordering::Acquire);
        self.0.1.notify_waiters();
    }

    async fn triggered(&self) -> Fault {
        loop {
            let notified = self.0.1.notified();
            match self.0.0.load(Ordering::Acquire) {
                1 => return Fault::Panic,
                2 => return Fault::End,
                3 => return Fault::Hang,
                4 => return Fault::Pause,
                _ => notified.await,
            }
        }
    }

    async fn resumed(&self) {
        loop {
            let notified = self.0.1.notified();
            if self.0.0.load(Ordering::Acquire) != Fault::Pause as u8 {
                return;
            }
            notified.await;
        }
    }

    /// Runs `task` until the fault is triggered, then fails as told (a
    /// paused task is not polled until it is resumed).
    pub(crate) async fn wrap(self, name: &'static str, task: impl Future<Output = ()>) {
        let mut task = std::pin::pin!(task);
        loop {
            tokio::select! {
                () = &mut task => return,
                fault = self.triggered() => match fault {
                    Fault::Panic => panic!("fault injected into the {name} task"),
                    Fault::End => return,
                    Fault::Hang => std::future::pending::<()>().await,
                    Fault::Pause => self.resumed().await,
                },
            }
        }
    }
}

/// A switch per long-lived task of the agent.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// The tracker (ring buffer → process table).
    pub tracker: TaskFault,
    /// The containerd watcher.
    pub watcher: TaskFault,
    /// The API server.
    pub api: TaskFault,
}
