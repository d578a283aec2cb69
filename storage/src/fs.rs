//! File system calls through the runtime seam: tokio's blocking pool in production, inline
//! in the deterministic simulation (where a thread would make the order of events depend on
//! the OS). An IO error keeps its kind.

use std::io;

/// Runs `work` (std::fs calls) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    shoal_runtime::blocking(work)
        .await
        .map_err(io::Error::other)?
}
