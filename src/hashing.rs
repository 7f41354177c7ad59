//! The hashing pool: engine steps that may run argon2id (19 MiB and tens of milliseconds each) run here,
//! on a fixed set of threads behind their own bounded queue, so the steps that hash nothing never wait
//! behind them and the memory argon2id takes is bounded by the thread count.
//!
//! - **Bounded**: at most `queue` jobs wait; past that [`HashPool::run`] refuses at once
//!   ([`PoolError::Full`]) and the hop is answered "busy, try again" instead of timing out at the carrier.
//! - **Cancelled with its hop**: a job whose caller stopped waiting (the hop's deadline passed, the
//!   connection went away) is skipped when its turn comes; one already running finishes (argon2 cannot be
//!   interrupted) and its result is dropped.
//! - **Bounded memory**: `threads` threads, each holding one argon2id block at a time, rather than a
//!   blocking pool that grows to hundreds of threads; the allocator returns freed blocks to the system at
//!   once (mimalloc's purge delay set to 0 at start, in `main.rs`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use tokio::sync::oneshot;

use crate::metrics::METRICS;

type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("the hashing queue is full")]
    Full,
    #[error("the hashing pool is gone")]
    Gone,
}

pub struct HashPool {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    /// Jobs queued or running.
    queued: Arc<AtomicUsize>,
    /// Jobs queued or running at most.
    bound: usize,
    threads: usize,
}

/// Decrements the queued count when a job is done or dropped unrun.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl HashPool {
    /// `threads` hashing threads (at least 1) and room for `queue` jobs waiting beyond them.
    pub fn new(threads: usize, queue: usize) -> HashPool {
        let threads = threads.max(1);
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new().name(format!("hashing-{i}")).spawn(move || {
                lower_priority();
                crate::crypto::keep_hash_memory();
                loop {
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return, // the pool was dropped
                    }
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "hashing thread could not start");
            }
        }
        HashPool { tx: Mutex::new(Some(tx)), queued: Arc::new(AtomicUsize::new(0)), bound: threads + queue, threads }
    }

    /// Jobs waiting or running now.
    pub fn depth(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on a hashing thread and returns its result; [`PoolError::Full`] at once when the queue
    /// is at its bound. Dropping the returned future before `f` started means `f` never runs.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, PoolError> {
        let n = self.queued.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(self.queued.clone());
        if n >= self.bound {
            return Err(PoolError::Full);
        }
        let (done_tx, done_rx) = oneshot::channel::<T>();
        METRICS.hashing_waiting.inc();
        let job: Job = Box::new(move || {
            let _slot = slot;
            METRICS.hashing_waiting.dec();
            if done_tx.is_closed() {
                return; // its hop was answered without it
            }
            METRICS.hashing_running.inc();
            let out = f();
            METRICS.hashing_running.dec();
            drop(_slot);
            let _ = done_tx.send(out);
        });
        let sent = match self.tx.lock() {
            Ok(tx) => tx.as_ref().map(|tx| tx.send(job).is_ok()).unwrap_or(false),
            Err(_) => false,
        };
        if !sent {
            // The job (and with it the slot and the waiting count) was dropped unrun.
            return Err(PoolError::Gone);
        }
        done_rx.await.map_err(|_| PoolError::Gone)
    }
}

/// Hashing threads run at a lower scheduling priority (nice +10) than the runtime's: when the cores are
/// busy hashing, a hop that hashes nothing still gets a core at once.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority read and change this thread's scheduling priority only.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}

impl Drop for HashPool {
    fn drop(&mut self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take(); // the threads end once the queue is empty
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    #[tokio::test]
    async fn past_its_bound_the_pool_refuses_at_once_and_a_dropped_job_never_runs() {
        let pool = Arc::new(HashPool::new(1, 1));
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let blocker = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.run(move || {
                    let _ = release_rx.recv_timeout(Duration::from_secs(10));
                })
                .await
            })
        };
        while pool.depth() < 1 {
            tokio::task::yield_now().await;
        }
        let ran = Arc::new(AtomicBool::new(false));
        let queued = {
            let (pool, ran) = (pool.clone(), ran.clone());
            tokio::spawn(async move { pool.run(move || ran.store(true, Ordering::SeqCst)).await })
        };
        while pool.depth() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.run(|| ()).await, Err(PoolError::Full), "the third is refused at once");
        queued.abort(); // its hop timed out
        let _ = queued.await;
        release_tx.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        while pool.depth() > 0 {
            tokio::task::yield_now().await; // the skipped job leaves the queue
        }
        assert_eq!(pool.run(|| 7).await, Ok(7), "room again once the queue drained");
        assert!(!ran.load(Ordering::SeqCst), "a job whose caller left is skipped");
        assert_eq!(pool.depth(), 0);
    }
}
