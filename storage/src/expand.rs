//! Expanding a pipeline input (URI + Pachyderm glob) into datums, streamed in chunks.
//!
//! Glob semantics as Pachyderm: `/` is one datum holding the whole input; `/*` one datum per
//! top-level entry (a file, or a "directory" = every object below that prefix); `/*/*` one per
//! second-level entry; `/prefix*`, `?`, `[ab]`, `{a,b}` filter the entries at that depth. The
//! store is listed once; objects below one directory entry arrive contiguously (lexicographic
//! order in object stores, depth-first in a local walk), so remembering the last entry is
//! enough to emit each once. Memory: one chunk.

use futures::StreamExt;
use futures::stream::BoxStream;

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

    /// The entry an object belongs to at this depth, if it is deep enough and matches.
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

/// State of one streaming expansion.
struct Expansion {
    listing: BoxStream<'static, Result<Listed, StorageError>>,
    glob: DatumGlob,
    atom: AtomInput,
    chunk_datums: usize,
    /// The last directory entry emitted or skipped; its later objects are skipped.
    last_directory: Option<String>,
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
    let expansion = Expansion {
        listing: list_below(&location, resolver.local_roots()),
        glob,
        atom: atom.clone(),
        chunk_datums: chunk_datums.clamp(1, DATUM_CHUNK_MAX),
        last_directory: None,
        finished: false,
    };
    Ok(
        futures::stream::unfold(expansion, |mut expansion| async move {
            expansion.next_chunk().await.map(|chunk| (chunk, expansion))
        })
        .boxed(),
    )
}

impl Expansion {
    async fn next_chunk(&mut self) -> Option<Result<Vec<Datum>, StorageError>> {
        if self.finished {
            return None;
        }
        if self.glob.depth == 0 {
            self.finished = true;
            return match self.listing.next().await? {
                Ok(_) => Some(Ok(vec![self.datum(String::new(), EntryKind::Directory)])),
                Err(error) => Some(Err(error)),
            };
        }
        let mut chunk = Vec::new();
        while chunk.len() < self.chunk_datums {
            let listed = match self.listing.next().await {
                None => {
                    self.finished = true;
                    break;
                }
                Some(Err(error)) => {
                    self.finished = true;
                    return Some(Err(error));
                }
                Some(Ok(listed)) => listed,
            };
            if let Some(datum) = self.datum_for(&listed.rel) {
                chunk.push(datum);
            }
        }
        (!chunk.is_empty()).then_some(Ok(chunk))
    }

    fn datum_for(&mut self, rel: &str) -> Option<Datum> {
        let (entry, kind) = self.glob.entry_of(rel)?;
        if kind == EntryKind::Directory {
            if self.last_directory.as_deref() == Some(entry.as_str()) {
                return None;
            }
            self.last_directory = Some(entry.clone());
        }
        self.glob.matches(&entry).then(|| self.datum(entry, kind))
    }

    fn datum(&self, path: String, kind: EntryKind) -> Datum {
        Datum {
            inputs: vec![DatumInput {
                name: self.atom.name.clone(),
                url: join_url(&self.atom.uri, &path),
                path,
                kind,
            }],
        }
    }
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
        let listed: Vec<_> = rels
            .iter()
            .map(|rel| {
                Ok(Listed {
                    rel: (*rel).to_owned(),
                    size_bytes: 1,
                    source: Source::File("/unused".into()),
                })
            })
            .collect();
        let mut expansion = Expansion {
            listing: futures::stream::iter(listed).boxed(),
            glob: DatumGlob::parse(glob).expect("glob parses"),
            atom: AtomInput {
                name: "in".into(),
                uri: "s3://b/in/".into(),
                glob: glob.into(),
            },
            chunk_datums,
            last_directory: None,
            finished: false,
        };
        let mut chunks = Vec::new();
        while let Some(chunk) = expansion.next_chunk().await {
            let chunk = chunk.expect("no listing errors");
            chunks.push(
                chunk
                    .into_iter()
                    .map(|d| (d.inputs[0].path.clone(), d.inputs[0].kind))
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
