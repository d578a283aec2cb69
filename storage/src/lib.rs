//! Object storage for shoal: every input a datum reads and every output it writes.
//!
//! Will hold the URL → object_store resolver (`s3://`, `gs://`, `az://`, `file://`,
//! `http(s)://`, inline content), streaming downloads and uploads with bounded parallelism and
//! retries, the allow-list for local roots, and glob expansion of pipeline inputs into datums.
//! This crate is a leaf: it knows nothing of the log or the worker.
