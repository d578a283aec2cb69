//! Every bound the storage crate puts on its work, in one place.
//!
//! Units come last in each name. Callers may pass smaller values where a function takes one;
//! these are the ceilings the crate enforces itself.

use std::time::Duration;

/// File transfers one attempt runs at once (directory downloads, output uploads).
pub const ATTEMPT_TRANSFERS_MAX: usize = 8;

/// File transfers one node runs at once across all its attempts: the default size of the
/// semaphore the worker shares between attempts.
pub const NODE_TRANSFERS_MAX: usize = 32;

/// Tries of one file transfer (the first included) before a transient error is final.
pub const TRANSFER_ATTEMPTS_MAX: u32 = 4;

/// Wait before the second try of a transfer; doubled per try up to `RETRY_BACKOFF_MAX_MS`.
pub const RETRY_BACKOFF_INITIAL_MS: u64 = 200;

/// Longest wait between two tries of a transfer.
pub const RETRY_BACKOFF_MAX_MS: u64 = 5_000;

/// Retries object_store makes itself for one HTTP request (below our per-transfer retries).
pub const REQUEST_RETRIES_MAX: usize = 3;

/// Time object_store may spend retrying one HTTP request.
pub const REQUEST_RETRY_TIMEOUT: Duration = Duration::from_secs(60);

/// Time to establish a connection to an object store.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest silence while reading a response body; a whole large object may take much longer.
pub const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest inline `content` of a TES input.
pub const CONTENT_BYTES_MAX: usize = 128 * 1024;

/// Objects one directory download or upload may hold.
pub const DIRECTORY_OBJECTS_MAX: usize = 100_000;

/// Files one wildcard output may match.
pub const GLOB_OUTPUT_FILES_MAX: usize = 10_000;

/// Files at or below this size are uploaded with one PUT; larger ones in parts.
pub const SINGLE_PUT_BYTES_MAX: u64 = 8 * 1024 * 1024;

/// Size of one part of a multipart upload (S3 requires at least 5 MiB).
pub const PART_BYTES: usize = 8 * 1024 * 1024;

/// Parts S3 accepts in one multipart upload; larger files get larger parts.
pub const PARTS_MAX: u64 = 10_000;

/// Parts of one file in flight at once (memory per large upload is about this times `PART_BYTES`).
pub const PART_UPLOADS_MAX: usize = 4;

/// Buffer between a download stream and the file it fills.
pub const WRITE_BUFFER_BYTES: usize = 1024 * 1024;

/// Largest chunk of datums one expansion step yields.
pub const DATUM_CHUNK_MAX: usize = 10_000;

/// Datums a cross product may produce.
pub const CROSS_DATUMS_MAX: usize = 1_000_000;

/// Local listing entries buffered between the directory walker thread and its reader.
pub const LOCAL_LIST_CHANNEL_CAPACITY: usize = 1_024;

/// Object stores the resolver keeps built (one per bucket, container or HTTP origin).
pub const STORES_CACHED_MAX: usize = 256;

/// Operations one FTP store (one server and user) runs at once; each holds one connection
/// (a copy two).
pub const FTP_OPERATIONS_MAX: usize = 4;

/// Idle FTP connections kept per store for the next transfer.
pub const FTP_IDLE_CONNECTIONS_MAX: usize = 4;

/// Entries one FTP directory listing may hold (it is read whole).
pub const FTP_DIRECTORY_ENTRIES_MAX: usize = 1_000_000;

/// Length of a URL the resolver accepts.
pub const URL_BYTES_MAX: usize = 4_096;
