//! Heavy decoding off the async workers: documents are parsed and mapped on tokio's
//! blocking pool, at most `[http] decode_workers` at once; the others wait their turn
//! here, so that a burst of large documents neither stalls the workers that answer other
//! requests (health checks, reads) nor floods the blocking pool.

use std::sync::Arc;

use tokio::sync::Semaphore;

#[derive(Debug, Clone)]
pub struct DecodePool {
    permits: Arc<Semaphore>,
}

/// A decode job that did not finish: it panicked (a bug; the message is not retried).
#[derive(Debug, thiserror::Error)]
#[error("decoding failed: {0}")]
pub struct DecodeFailed(pub String);

impl DecodePool {
    pub fn new(workers: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(workers.clamp(1, Semaphore::MAX_PERMITS))),
        }
    }

    /// Runs `job` on the blocking pool once a place is free. The place is held by the job
    /// itself, so a caller that goes away (a client that hung up) does not free it early.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, DecodeFailed> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| DecodeFailed("the decode pool is closed".into()))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            job()
        })
        .await
        .map_err(|e| {
            if e.is_panic() {
                let payload = e.into_panic();
                let what = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                DecodeFailed(format!("the decoder panicked: {what}"))
            } else {
                DecodeFailed("the decode job was cancelled".into())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_the_configured_jobs_run_at_once() {
        let pool = DecodePool::new(2);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let jobs: Vec<_> = (0..8)
            .map(|i| {
                let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    pool.run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        running.fetch_sub(1, Ordering::SeqCst);
                        i
                    })
                    .await
                })
            })
            .collect();
        let mut done = Vec::new();
        for job in jobs {
            done.push(job.await.unwrap().unwrap());
        }
        assert_eq!(done, (0..8).collect::<Vec<_>>());
        assert!(most.load(Ordering::SeqCst) <= 2, "{most:?}");
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_frees_its_place() {
        let pool = DecodePool::new(1);
        let failed = pool
            .run(|| -> u8 { panic!("bad document") })
            .await
            .unwrap_err();
        assert!(failed.0.contains("bad document"), "{failed}");
        assert_eq!(pool.run(|| 7).await.unwrap(), 7);
    }
}
