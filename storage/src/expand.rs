//! Expanding a pipeline input (URI + Pachyderm glob) into datums, streamed in chunks.
//!
//! Glob semantics as Pachyderm: `/` is one datum holding the whole input; `/*` one datum per
//! top-level entry (a file, or a "directory" = every object below that prefix); `/*/*` one per
//! second-level entry; `/prefix*`, `?`, `[ab]`, `{a,b}` filter the entries at that depth. The
//! store is listed once; objects below one directory entry arrive contiguously (lexicographic
//! order in object stores, depth-first in a local walk), so a directory entry is complete —
//! and its version, a digest of every object's path and version below it, known — as soon as
//! the listing moves past it. Memory: one chunk.

use std::collections::VecDeque;

use futures::StreamExt;
use futures::stream::BoxStream;
use sha2::{Digest, Sha256};

use crate::datum::{Datum, DatumInput, cross, union};
use crate::download::EntryKind;
use crate::error::StorageError;
use crate::limits::{CROSS_DATUMS_MAX, DATUM_CHUNK_MAX};
use crate::list::{Listed, list_below};
use crate::local::has_parent_segment;
use crate::resolve::{Access, Resolver};
use crate::transfers::join_url;

/// One named input of a pipeline (Falconeri/Pachyderm `atom`/`pfs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AtomInput {
    /// The atom's place in its input tree, depth first (copied into each datum input).
    pub index: usize,
    pub name: String,
    pub uri: String,
    pub glob: String,
}

/// A pipeline's input: atoms combined by cross and union, nestable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputTree {
    Atom(AtomInput),
    Cross(Vec<InputTree>),
    Union(Vec<InputTree>),
}

/// A Pachyderm glob compiled for matching entries at one depth.
#[derive(Debug, Clone)]
pub(crate) struct DatumGlob {
    /// Path segments per entry; 0 means the whole input is one datum.
    depth: usize,
    matcher: Option<globset::GlobMatcher>,
}

impl DatumGlob {
    pub(crate) fn parse(glob: &str) -> Result<Self, StorageError> {
        let invalid = |reason: &str| StorageError::InvalidGlob {
            glob: glob.to_owned(),
            reason: reason.to_owned(),
        };
        if !glob.starts_with('/') {
            return Err(invalid("must start with `/`"));
        }
        if has_parent_segment(glob) || glob.contains("**") {
            return Err(invalid("`..` and `**` are not supported"));
        }
        let pattern = glob.trim_matches('/');
        if pattern.is_empty() {
            return Ok(Self {
                depth: 0,
                matcher: None,
            });
        }
        if pattern
            .split('/')
            .any(|segment| segment.is_empty() || segment == ".")
        {
            return Err(invalid("empty or `.` segment"));
        }
        let matcher = globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|error| invalid(&error.to_string()))?
            .compile_matcher();
        Ok(Self {
            depth: pattern.split('/').count(),
            matcher: Some(matcher),
        })
    }

    /// The entry an object belongs to at this depth, if it is deep enough. At depth 0 every
    /// object belongs to the one entry `""`, a directory.
    fn entry_of(&self, rel: &str) -> Option<(String, EntryKind)> {
        let segments: Vec<&str> = rel.split('/').collect();
        if segments.len() < self.depth {
            return None;
        }
        let entry = segments[..self.depth].join("/");
        let kind = if segments.len() == self.depth {
            EntryKind::File
        } else {
            EntryKind::Directory
        };
        Some((entry, kind))
    }

    fn matches(&self, entry: &str) -> bool {
        self.matcher
            .as_ref()
            .is_none_or(|matcher| matcher.is_match(entry))
    }
}

/// A directory entry whose objects are still being listed.
struct OpenDirectory {
    path: String,
    matched: bool,
    digest: Sha256,
}

/// State of one streaming expansion.
struct Expansion {
    listing: BoxStream<'static, Result<Listed, StorageError>>,
    glob: DatumGlob,
    atom: AtomInput,
    chunk_datums: usize,
    /// The directory entry the listing is inside.
    open: Option<OpenDirectory>,
    /// Datums found and not yet handed out.
    ready: VecDeque<Datum>,
    finished: bool,
}

/// Lists `atom.uri` once and yields its datums in chunks of at most `chunk_datums` (clamped to
/// `1..=DATUM_CHUNK_MAX`). An empty input yields no datums. Each datum has one input.
pub async fn expand_atom(
    resolver: &Resolver,
    atom: &AtomInput,
    chunk_datums: usize,
) -> Result<BoxStream<'static, Result<Vec<Datum>, StorageError>>, StorageError> {
    let glob = DatumGlob::parse(&atom.glob)?;
    let location = resolver.resolve(&atom.uri, Access::Read).await?;
    let expansion = Expansion::new(
        list_below(&location, resolver.local_roots()),
        glob,
        atom.clone(),
        chunk_datums,
    );
    Ok(
        futures::stream::unfold(expansion, |mut expansion| async move {
            expansion.next_chunk().await.map(|chunk| (chunk, expansion))
        })
        .boxed(),
    )
}

/// Checks a glob without listing anything (for validating a submission).
pub fn check_glob(glob: &str) -> Result<(), StorageError> {
    DatumGlob::parse(glob).map(|_| ())
}

impl Expansion {
    fn new(
        listing: BoxStream<'static, Result<Listed, StorageError>>,
        glob: DatumGlob,
        atom: AtomInput,
        chunk_datums: usize,
    ) -> Self {
        Self {
            listing,
            glob,
            atom,
            chunk_datums: chunk_datums.clamp(1, DATUM_CHUNK_MAX),
            open: None,
            ready: VecDeque::new(),
            finished: false,
        }
    }

    async fn next_chunk(&mut self) -> Option<Result<Vec<Datum>, StorageError>> {
        while self.ready.len() < self.chunk_datums && !self.finished {
            match self.listing.next().await {
                None => {
                    self.finished = true;
                    self.close_directory();
                }
                Some(Err(error)) => {
                    self.finished = true;
                    self.ready.clear();
                    return Some(Err(error));
                }
                Some(Ok(listed)) => self.take(&listed),
            }
        }
        let count = self.ready.len().min(self.chunk_datums);
        (count > 0).then(|| Ok(self.ready.drain(..count).collect()))
    }

    /// Files one listed object under its entry: a file entry is a datum at once; a
    /// directory entry collects the object's path and version until the listing leaves it.
    fn take(&mut self, listed: &Listed) {
        let Some((entry, kind)) = self.glob.entry_of(&listed.rel) else {
            return;
        };
        if self.open.as_ref().is_some_and(|open| open.path != entry) || kind == EntryKind::File {
            self.close_directory();
        }
        if kind == EntryKind::File {
            if self.glob.matches(&entry) {
                let datum = self.datum(entry, kind, listed.version.clone());
                self.ready.push_back(datum);
            }
            return;
        }
        let glob = &self.glob;
        let open = self.open.get_or_insert_with(|| OpenDirectory {
            matched: glob.matches(&entry),
            path: entry,
            digest: Sha256::new(),
        });
        for part in [&listed.rel, &listed.version] {
            open.digest.update(part.as_bytes());
            open.digest.update([0]);
        }
    }

    /// Emits the open directory entry, if its name matched the glob.
    fn close_directory(&mut self) {
        let Some(open) = self.open.take() else {
            return;
        };
        if open.matched {
            let version: String = open.digest.finalize()[..16]
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect();
            let datum = self.datum(open.path, EntryKind::Directory, version);
            self.ready.push_back(datum);
        }
    }

    fn datum(&self, path: String, kind: EntryKind, version: String) -> Datum {
        Datum {
            inputs: vec![DatumInput {
                atom: self.atom.index,
                name: self.atom.name.clone(),
                url: join_url(&self.atom.uri, &path),
                path,
                kind,
                version,
            }],
        }
    }
}

/// Lists a pipeline's whole input and yields its datums in chunks of at most `chunk_datums`:
/// a plain atom streamed, cross and union (which need every list) built in memory first.
pub async fn expand_input(
    resolver: &Resolver,
    tree: &InputTree,
    chunk_datums: usize,
) -> Result<BoxStream<'static, Result<Vec<Datum>, StorageError>>, StorageError> {
    if let InputTree::Atom(atom) = tree {
        return expand_atom(resolver, atom, chunk_datums).await;
    }
    let datums = expand_tree(resolver, tree).await?;
    let size = chunk_datums.clamp(1, DATUM_CHUNK_MAX);
    let chunks: Vec<Result<Vec<Datum>, StorageError>> = datums
        .chunks(size)
        .map(|chunk| Ok(chunk.to_vec()))
        .collect();
    Ok(futures::stream::iter(chunks).boxed())
}

/// Expands a whole input tree into memory, for cross and union (which need every list). At
/// most `CROSS_DATUMS_MAX` datums; a plain atom is better streamed with [`expand_atom`].
pub async fn expand_tree(
    resolver: &Resolver,
    tree: &InputTree,
) -> Result<Vec<Datum>, StorageError> {
    match tree {
        InputTree::Atom(atom) => {
            let mut datums = Vec::new();
            let mut chunks = expand_atom(resolver, atom, DATUM_CHUNK_MAX).await?;
            while let Some(chunk) = chunks.next().await {
                datums.extend(chunk?);
                if datums.len() > CROSS_DATUMS_MAX {
                    return Err(StorageError::TooManyDatums {
                        sizes: vec![datums.len()],
                        limit: CROSS_DATUMS_MAX,
                    });
                }
            }
            Ok(datums)
        }
        InputTree::Cross(children) => cross(&expand_children(resolver, children).await?),
        InputTree::Union(children) => Ok(union(expand_children(resolver, children).await?)),
    }
}

async fn expand_children(
    resolver: &Resolver,
    children: &[InputTree],
) -> Result<Vec<Vec<Datum>>, StorageError> {
    let mut lists = Vec::with_capacity(children.len());
    for child in children {
        lists.push(Box::pin(expand_tree(resolver, child)).await?);
    }
    Ok(lists)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::list::Source;

    /// Runs the real expansion over an in-memory listing; returns (path, kind) per chunk.
    async fn expand(
        glob: &str,
        rels: &[&str],
        chunk_datums: usize,
    ) -> Vec<Vec<(String, EntryKind)>> {
        expand_versions(glob, rels, chunk_datums)
            .await
            .into_iter()
            .map(|chunk| {
                chunk
                    .into_iter()
                    .map(|(path, kind, _)| (path, kind))
                    .collect()
            })
            .collect()
    }

    /// As `expand`, with each datum's version; every object's version is `v1` unless listed
    /// as `rel@version`.
    async fn expand_versions(
        glob: &str,
        rels: &[&str],
        chunk_datums: usize,
    ) -> Vec<Vec<(String, EntryKind, String)>> {
        let listed: Vec<_> = rels
            .iter()
            .map(|rel| {
                let (rel, version) = rel.split_once('@').unwrap_or((rel, "v1"));
                Ok(Listed {
                    rel: rel.to_owned(),
                    size_bytes: 1,
                    version: version.to_owned(),
                    source: Source::File("/unused".into()),
                })
            })
            .collect();
        let atom = AtomInput {
            index: 0,
            name: "in".into(),
            uri: "s3://b/in/".into(),
            glob: glob.into(),
        };
        let mut expansion = Expansion::new(
            futures::stream::iter(listed).boxed(),
            DatumGlob::parse(glob).expect("glob parses"),
            atom,
            chunk_datums,
        );
        let mut chunks = Vec::new();
        while let Some(chunk) = expansion.next_chunk().await {
            let chunk = chunk.expect("no listing errors");
            chunks.push(
                chunk
                    .into_iter()
                    .map(|d| {
                        let input = &d.inputs[0];
                        (input.path.clone(), input.kind, input.version.clone())
                    })
                    .collect(),
            );
        }
        chunks
    }

    fn names(chunks: &[Vec<(String, EntryKind)>]) -> Vec<&str> {
        chunks
            .iter()
            .flatten()
            .map(|(path, _)| path.as_str())
            .collect()
    }

    const RELS: &[&str] = &["a.txt", "d1/x", "d1/y/z", "d2/x", "d20/q", "top"];

    #[tokio::test]
    async fn root_glob_is_one_datum_with_everything() {
        let chunks = expand("/", RELS, 10).await;
        assert_eq!(chunks, vec![vec![(String::new(), EntryKind::Directory)]]);
        assert!(expand("/", &[], 10).await.is_empty());
    }

    #[tokio::test]
    async fn star_gives_one_datum_per_top_level_entry_in_chunks() {
        let chunks = expand("/*", RELS, 2).await;
        assert_eq!(names(&chunks), vec!["a.txt", "d1", "d2", "d20", "top"]);
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![2, 2, 1]
        );
        assert_eq!(chunks[0][0].1, EntryKind::File);
        assert_eq!(chunks[0][1].1, EntryKind::Directory);
    }

    #[tokio::test]
    async fn star_star_gives_second_level_entries() {
        let chunks = expand("/*/*", RELS, 10).await;
        assert_eq!(names(&chunks), vec!["d1/x", "d1/y", "d2/x", "d20/q"]);
    }

    #[tokio::test]
    async fn a_directory_entrys_version_changes_with_any_object_below_it() {
        let version_of = async |rels: &[&str]| {
            let chunks = expand_versions("/*", rels, 10).await;
            chunks[0]
                .iter()
                .find(|(path, _, _)| path == "d1")
                .map(|(_, _, version)| version.clone())
                .expect("d1 is a datum")
        };
        let base = version_of(&["d1/x", "d1/y/z", "d2/x"]).await;
        assert_eq!(base, version_of(&["d1/x", "d1/y/z", "d2/x@v9"]).await);
        assert_ne!(base, version_of(&["d1/x", "d1/y/z@v2", "d2/x"]).await);
        assert_ne!(
            base,
            version_of(&["d1/x", "d1/y/z", "d1/new", "d2/x"]).await
        );
        let files = expand_versions("/*", &["a@e1", "d1/x"], 10).await;
        assert_eq!(files[0][0], ("a".into(), EntryKind::File, "e1".into()));
    }

    #[tokio::test]
    async fn prefix_globs_filter_entries() {
        let chunks = expand("/d2*", RELS, 10).await;
        assert_eq!(names(&chunks), vec!["d2", "d20"]);
    }

    #[test]
    fn bad_globs_are_refused() {
        assert!(DatumGlob::parse("*").is_err());
        assert!(DatumGlob::parse("/../*").is_err());
        assert!(DatumGlob::parse("/**").is_err());
        assert!(DatumGlob::parse("/[").is_err());
        assert_eq!(DatumGlob::parse("/").map(|g| g.depth).ok(), Some(0));
    }
}
