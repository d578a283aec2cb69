//! Object storage for shoal: every input a datum reads and every output it writes.
//!
//! This crate is a leaf: it knows nothing of the log or the worker, and it is the only crate
//! that knows object_store.
//!
//! # Layout
//!
//! - [`config`] — [`StorageConfig`], the node config's `[storage]` section.
//! - [`resolve`] — [`Resolver`]: URL → [`Location`] (store + path), clients cached per bucket,
//!   container or origin; `file://` confined to the allowed roots.
//! - [`local`] — path safety: [`LocalRoots`], `..` refusal, symlink-aware containment, and the
//!   pure [`container_path_below_mount`] / [`host_path_for`] helpers for task paths.
//! - [`transfers`] — [`Transfers`], one attempt's handle with its permits (per attempt and a
//!   node-wide semaphore the caller shares).
//! - [`download`] — files, directory trees and inline content in ([`EntryKind`],
//!   [`DownloadSummary`]).
//! - [`upload`] — files, trees and TES wildcard outputs out ([`UploadedFile`]).
//! - [`expand`] / [`datum`] — pipeline inputs: URI + Pachyderm glob → streamed chunks of
//!   [`Datum`]s with stable ids ([`Datum::id`]: inputs and their versions); [`cross`] and
//!   [`union`] as pure functions; [`expand_input`] for a whole input tree.
//! - `ftp` (private) — `ftp://` as an object store, through suppaftp: passive, binary,
//!   pooled connections, writes renamed into place.
//! - [`publish`] — what publishing a pipeline's staged outputs needs: server-side copies
//!   and deleting everything below a prefix.
//! - [`limits`] — every bound, named with its unit.
//! - [`error`] — [`StorageError`]; [`StorageError::is_transient`] drives retries.
//! - private: `list` (streaming listings), `walk` (local directory walks), `retry` (backoff).
//!
//! Architecture invariant: no function here reads or writes a local path before checking it
//! against the allowed roots (inputs) or the work dir (transfer ends), and no transfer holds a
//! whole object in memory (single PUTs are capped at `SINGLE_PUT_BYTES_MAX`).

pub mod config;
pub mod datum;
pub mod download;
pub mod error;
pub mod expand;
mod fs;
mod ftp;
pub mod limits;
mod list;
pub mod local;
pub mod publish;
pub mod resolve;
mod retry;
pub mod transfers;
pub mod upload;
mod walk;

pub use config::StorageConfig;
pub use datum::{Datum, DatumInput, cross, union};
pub use download::{DownloadSummary, EntryKind};
pub use error::StorageError;
pub use expand::{AtomInput, InputTree, check_glob, expand_atom, expand_input, expand_tree};
pub use local::{LocalRoots, container_path_below_mount, host_path_for};
pub use resolve::{Access, Backend, Location, Resolver, SCHEMES, check_url};
pub use transfers::{Transfers, join_url};
pub use upload::UploadedFile;
