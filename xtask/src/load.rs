//! Load beside the tests: a busy loop on every core and an exec storm, run
//! by xtask itself (another process than the tests and the agent), started
//! and stopped around a test command. `cargo xtask test` runs the
//! ground-truth and fault tests once with it; `cargo xtask soak` runs the
//! ground-truth checker with it for as long as asked; `--load` runs the
//! whole privileged suite with it.

use std::{
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Threads that spawn `/bin/true` and reap it, in a loop.
const STORM_THREADS: usize = 2;

/// The load, running until [`Load::stop`] (or drop).
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    spawned: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
    busy: usize,
    started: Instant,
}

/// What a load did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Done {
    pub busy_loops: usize,
    pub spawned: u64,
    pub elapsed: Duration,
}

impl std::fmt::Display for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} busy loops and an exec storm of {} processes ({:.0}/s) for {:.0} s",
            self.busy_loops,
            self.spawned,
            self.spawned as f64 / self.elapsed.as_secs_f64().max(1e-3),
            self.elapsed.as_secs_f64()
        )
    }
}

impl Load {
    /// Starts a busy loop per core and the exec storm; says so.
    pub(crate) fn start() -> Self {
        let busy = std::thread::available_parallelism().map_or(2, usize::from);
        println!(
            "load: starting {busy} busy loops (one per core) and an exec storm ({STORM_THREADS} \
             threads spawning /bin/true) beside the tests"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let spawned = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for _ in 0..busy {
            let stop = Arc::clone(&stop);
            threads.push(std::thread::spawn(move || {
                let mut x = 1u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..10_000 {
                        x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005));
                    }
                }
            }));
        }
        for _ in 0..STORM_THREADS {
            let (stop, spawned) = (Arc::clone(&stop), Arc::clone(&spawned));
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let ran = Command::new("/bin/true")
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                    if ran.is_ok() {
                        spawned.fetch_add(1, Ordering::Relaxed);
                    } else {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }));
        }
        Self {
            stop,
            spawned,
            threads,
            busy,
            started: Instant::now(),
        }
    }

    /// Stops the load, waits for its threads, and says what it did.
    pub(crate) fn stop(mut self) -> Done {
        let done = self.halt();
        println!("load: stopped after {done}");
        done
    }

    fn halt(&mut self) -> Done {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        Done {
            busy_loops: self.busy,
            spawned: self.spawned.load(Ordering::Relaxed),
            elapsed: self.started.elapsed(),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.halt();
        }
    }
}

/// Runs `f` with the load beside it (or without, when `on` is false).
pub(crate) fn beside<T>(on: bool, f: impl FnOnce() -> T) -> (T, Option<Done>) {
    if !on {
        return (f(), None);
    }
    let load = Load::start();
    let out = f();
    (out, Some(load.stop()))
}
