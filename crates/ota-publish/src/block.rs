//! Runs tough's async key operations from this synchronous library.
//!
//! The future runs on a fresh current-thread tokio runtime in a scoped thread, so callers may be plain
//! threads or tasks of any tokio runtime (a nested `block_on` on a runtime thread would panic).

use std::future::Future;

use crate::error::{Error, Result};

/// Runs `fut` to completion and returns its output.
pub(crate) fn block_on<F>(fut: F) -> Result<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::Tough(format!("starting a runtime for key operations: {e}")))?;
            Ok(rt.block_on(fut))
        })
        .join()
        .map_err(|_| Error::Tough("a key operation panicked".into()))?
    })
}
