//! Password hashing on a small pool of its own threads, with a bounded
//! queue: Argon2id takes tens of milliseconds of a whole core, and `/v1/login`
//! is reachable without an account, so hashing must never take the shards'
//! cores or their blocking threads (which write group commits). Past the
//! queue's bound a request is refused at once (`overloaded`) rather than
//! queued without end.

use std::sync::{Arc, OnceLock};

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use futures_channel::oneshot;

use crate::error::{ApiError, ErrorCode};
use crate::workers::{Refused, WorkerPool};

/// The pool: `threads` hashing threads fed by one queue of `queue_max` jobs.
#[derive(Debug)]
pub struct HashPool {
    workers: WorkerPool,
    queue_max: usize,
    /// A stored hash of a password no one knows, made on first use: a login
    /// of an unknown or disabled user verifies against it, so that it costs
    /// what a wrong password costs.
    dummy: Arc<OnceLock<String>>,
}

impl HashPool {
    /// Starts `threads` threads (at least one) behind a queue of
    /// `queue_max` jobs. They end when the pool is dropped.
    pub fn new(threads: usize, queue_max: usize) -> std::io::Result<Self> {
        let workers = WorkerPool::new("chatgw-hash", threads, queue_max)?;
        Ok(HashPool { workers, queue_max, dummy: Arc::new(OnceLock::new()) })
    }

    /// Queues `job` now; `overloaded` if the queue is full. The receiver
    /// gets its result.
    fn submit<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<oneshot::Receiver<T>, ApiError> {
        self.workers.submit(job).map_err(|refused| match refused {
            Refused::Full => ApiError::new(
                ErrorCode::Overloaded,
                format!("{} password checks are queued already; try again shortly", self.queue_max),
            ),
            Refused::Stopped => ApiError::internal("the hashing pool stopped"),
        })
    }

    /// Runs `job` on the pool; `overloaded` if its queue is full.
    async fn run<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
        self.submit(job)?.await.map_err(|_| ApiError::internal("a hashing thread dropped its job"))
    }

    /// Hashes a new password (Argon2id, a fresh salt) into a PHC string.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        self.run(move || hash_now(&password)).await?.map_err(ApiError::internal)
    }

    /// Checks `password` against a stored PHC string; with `None` (no such
    /// user, or one that may not log in) checks it against a dummy hash and
    /// answers false, at the same cost.
    pub async fn verify(&self, password: String, stored: Option<String>) -> Result<bool, ApiError> {
        let dummy = self.dummy.clone();
        self.run(move || {
            let known = stored.is_some();
            let stored = stored.unwrap_or_else(|| {
                dummy.get_or_init(|| hash_now("not a password anyone has").unwrap_or_default()).clone()
            });
            let matches = PasswordHash::new(&stored)
                .map(|hash| Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
                .unwrap_or(false);
            known && matches
        })
        .await
    }
}

fn hash_now(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|hash| hash.to_string()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_a_full_queue_is_refused() {
        glommio::LocalExecutorBuilder::default().make().unwrap().run(async {
            let pool = HashPool::new(1, 2).unwrap();
            let stored = pool.hash("correct horse".into()).await.unwrap();
            assert!(pool.verify("correct horse".into(), Some(stored.clone())).await.unwrap());
            assert!(!pool.verify("wrong horse".into(), Some(stored)).await.unwrap());
            assert!(!pool.verify("correct horse".into(), None).await.unwrap(), "no user never matches");
            // One job running, two queued: the fourth is refused at once.
            let (started, running) = std::sync::mpsc::channel();
            let (release, hold) = std::sync::mpsc::channel::<()>();
            let first = pool
                .submit(move || {
                    started.send(()).unwrap();
                    hold.recv().unwrap();
                })
                .unwrap();
            running.recv().unwrap();
            let queued: Vec<_> = (0..2).map(|_| pool.submit(|| ()).unwrap()).collect();
            let refused = pool.submit(|| ()).unwrap_err();
            assert_eq!(refused.code, ErrorCode::Overloaded);
            release.send(()).unwrap();
            first.await.unwrap();
            for job in queued {
                job.await.unwrap();
            }
        });
    }
}
