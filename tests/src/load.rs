//! Load beside a test: an exec storm the test itself starts and stops.
//! (The suite's own load — busy loops on every core and an exec storm in
//! another process — is `cargo xtask test`'s; see xtask/src/load.rs.)

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

/// `/bin/true` spawned and reaped in a loop by a few threads until stopped
/// (or until `limit` processes).
pub struct Storm {
    stop: Arc<AtomicBool>,
    spawned: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Storm {
    pub fn start(threads: usize, limit: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let claimed = Arc::new(AtomicU64::new(0));
        let spawned = Arc::new(AtomicU64::new(0));
        let threads = (0..threads)
            .map(|_| {
                let (stop, claimed, spawned) = (
                    Arc::clone(&stop),
                    Arc::clone(&claimed),
                    Arc::clone(&spawned),
                );
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed)
                        && claimed.fetch_add(1, Ordering::Relaxed) < limit
                    {
                        let _ = Command::new("/bin/true").status();
                        spawned.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Self {
            stop,
            spawned,
            threads,
        }
    }

    /// Waits for the threads to reach their limit.
    pub fn join(mut self) -> u64 {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.spawned()
    }

    /// Stops the threads and waits for them; returns how many processes ran.
    pub fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    pub fn spawned(&self) -> u64 {
        self.spawned.load(Ordering::Relaxed)
    }
}

impl Drop for Storm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Threads that spin until dropped: every core kept busy.
pub struct BusyLoops {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl BusyLoops {
    /// `n` spinning threads.
    pub fn start(n: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005));
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for BusyLoops {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
