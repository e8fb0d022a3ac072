//! Blocking work (a signature, a store transaction) run off the async
//! workers, a bounded number at a time. The server owns one [`Blocking`]
//! and hands clones to the APIs, so two servers in one process (as in
//! tests) do not share their permits.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// How many requests run blocking store work at once. Others wait their
/// turn in order: a boot storm of 10,000 enrollments would otherwise start
/// up to 512 blocking threads, each with its own stack and allocator cache,
/// and the server grew past a gigabyte.
pub const MAX_BLOCKING_WORK: usize = 16;

/// The permits for blocking work of one server.
#[derive(Debug, Clone)]
pub struct Blocking {
    permits: Arc<Semaphore>,
}

/// Why blocking work did not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum BlockingFailed {
    #[error("Failed to wait for a turn at blocking work: the server is stopping")]
    Closed,
    #[error("Blocking work failed: {0}")]
    Panicked(#[source] tokio::task::JoinError),
}

impl Default for Blocking {
    fn default() -> Blocking {
        Blocking::new(MAX_BLOCKING_WORK)
    }
}

impl Blocking {
    pub fn new(at_once: usize) -> Blocking {
        Blocking {
            permits: Arc::new(Semaphore::new(at_once)),
        }
    }

    /// Runs `work` on tokio's blocking threads once a permit is free; the
    /// rest queue in order of arrival.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, BlockingFailed> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| BlockingFailed::Closed)?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(BlockingFailed::Panicked)
    }
}
