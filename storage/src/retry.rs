//! Retries with exponential backoff, for transient errors only.
//!
//! object_store already retries single HTTP requests; this layer re-runs a whole file transfer,
//! which also covers a stream cut halfway through a large object.

use std::future::Future;
use std::time::Duration;

use crate::error::StorageError;
use crate::limits::{RETRY_BACKOFF_INITIAL_MS, RETRY_BACKOFF_MAX_MS, TRANSFER_ATTEMPTS_MAX};

/// Wait before try number `next_try` (2 for the first retry): doubling, capped.
pub(crate) fn backoff_ms(next_try: u32) -> u64 {
    let doublings = next_try.saturating_sub(2).min(16);
    RETRY_BACKOFF_INITIAL_MS
        .saturating_mul(1 << doublings)
        .min(RETRY_BACKOFF_MAX_MS)
}

/// Runs `operation` until it succeeds, fails permanently, or has been tried
/// `TRANSFER_ATTEMPTS_MAX` times. `what` names the transfer in logs.
pub(crate) async fn with_retries<T, F, Fut>(what: &str, mut operation: F) -> Result<T, StorageError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StorageError>>,
{
    let mut try_number = 1;
    loop {
        match operation().await {
            Ok(value) => return Ok(value),
            Err(error) if error.is_transient() && try_number < TRANSFER_ATTEMPTS_MAX => {
                try_number += 1;
                let wait_ms = backoff_ms(try_number);
                tracing::warn!(transfer = what, try_number, wait_ms, %error, "transient storage error, retrying");
                tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff_ms(2), RETRY_BACKOFF_INITIAL_MS);
        assert_eq!(backoff_ms(3), 2 * RETRY_BACKOFF_INITIAL_MS);
        assert_eq!(backoff_ms(40), RETRY_BACKOFF_MAX_MS);
    }

    fn transient() -> StorageError {
        StorageError::io("/x", std::io::Error::from(std::io::ErrorKind::TimedOut))
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_the_limit() {
        let tries = AtomicU32::new(0);
        let result: Result<(), _> = with_retries("t", || async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err(transient())
        })
        .await;
        assert!(result.is_err());
        assert_eq!(tries.load(Ordering::SeqCst), TRANSFER_ATTEMPTS_MAX);
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let tries = AtomicU32::new(0);
        let result: Result<(), _> = with_retries("t", || async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err(StorageError::NotFound { url: "u".into() })
        })
        .await;
        assert!(matches!(result, Err(StorageError::NotFound { .. })));
        assert_eq!(tries.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_later_success_is_returned() {
        let tries = AtomicU32::new(0);
        let result = with_retries("t", || async {
            if tries.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(transient())
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(result.ok(), Some(7));
    }
}
