//! The worker: what a node does with the datums it claims.
//!
//! Will hold the claim loop (woken by applied-state changes and freed slots), attempts
//! (work dir → inputs → executors → outputs → result), the `Executor` trait with its `docker`,
//! `process` and `noop` implementations, heartbeats and cancellation. It talks to the log only
//! through the narrow handle `shoal-raft` exposes and to object storage through `shoal-storage`.
