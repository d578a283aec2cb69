//! Streaming listing of every object below a location, for directory downloads and datum
//! expansion. Never collects the whole listing: remote stores page through object_store's
//! stream; local directories are walked on a blocking thread feeding a bounded channel.

use std::ops::ControlFlow;
use std::path::PathBuf;

use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path as ObjectPath;

use crate::error::StorageError;
use crate::limits::LOCAL_LIST_CHANNEL_CAPACITY;
use crate::local::LocalRoots;
use crate::resolve::{Backend, Location};
use crate::walk::walk_files;

/// Where a listed object's bytes are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    Object(ObjectPath),
    File(PathBuf),
}

/// One object below a listed prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    /// The object's path below the prefix, `/`-separated, never empty.
    pub rel: String,
    pub size_bytes: u64,
    /// Changes whenever the object does: its etag or version when the store has one, else
    /// its modification time and size.
    pub version: String,
    pub source: Source,
}

/// Lists every object below `location` (path segments match whole: `in` never lists `in2/x`).
pub(crate) fn list_below(
    location: &Location,
    roots: &LocalRoots,
) -> BoxStream<'static, Result<Listed, StorageError>> {
    match &location.backend {
        Backend::Local { path } => list_local(path.clone(), roots.clone()),
        Backend::Remote { .. } => list_remote(location),
    }
}

fn list_remote(location: &Location) -> BoxStream<'static, Result<Listed, StorageError>> {
    let prefix = location.path.clone();
    let url = location.url.clone();
    let listing = if prefix.is_root() {
        location.store.list(None)
    } else {
        location.store.list(Some(&prefix))
    };
    listing
        .filter_map(move |item| {
            let result = match item {
                Err(source) => Some(Err(StorageError::from_store(&url, source))),
                Ok(meta) => {
                    let rel = meta
                        .location
                        .prefix_match(&prefix)
                        .map(|parts| parts.map(|p| p.as_ref().to_owned()).collect::<Vec<_>>())
                        .unwrap_or_default()
                        .join("/");
                    let version = meta.e_tag.or(meta.version).unwrap_or_else(|| {
                        format!(
                            "{}-{}",
                            meta.last_modified.timestamp_nanos_opt().unwrap_or_default(),
                            meta.size
                        )
                    });
                    (!rel.is_empty()).then_some(Ok(Listed {
                        rel,
                        size_bytes: meta.size,
                        version,
                        source: Source::Object(meta.location),
                    }))
                }
            };
            futures::future::ready(result)
        })
        .boxed()
}

fn list_local(dir: PathBuf, roots: LocalRoots) -> BoxStream<'static, Result<Listed, StorageError>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(LOCAL_LIST_CHANNEL_CAPACITY);
    // A thread of its own, streaming into a bounded channel: a walk of a million files
    // must not wait to be whole. (Inline, in the simulation, it would fill the channel with
    // nobody reading; the simulation lists object stores only.)
    #[allow(clippy::disallowed_methods)]
    tokio::task::spawn_blocking(move || {
        walk_files(&dir, &roots, |file| {
            let listed = file.map(|file| Listed {
                rel: file.rel,
                size_bytes: file.size_bytes,
                version: file.version,
                source: Source::File(file.source),
            });
            // A closed channel means the reader stopped: stop walking.
            match sender.blocking_send(listed) {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            }
        });
    });
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
    .boxed()
}
