//! Datums of a pipeline and the pure ways of combining input lists: cross and union.
//!
//! A datum does not list files: each of its inputs names one glob match (an object or a
//! prefix), which the worker downloads when it runs the datum. So a datum stays small however
//! many files its match holds. Its [`Datum::id`] is a hash of what it reads — each input's
//! URL and version — so the same inputs give the same id in every job, and a changed object
//! gives a new one.

use sha2::{Digest, Sha256};

use crate::download::EntryKind;
use crate::error::StorageError;
use crate::limits::CROSS_DATUMS_MAX;

/// One input's share of a datum: what to download and where it goes below `/pfs/<name>/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DatumInput {
    /// The atom's place in its input tree, depth first.
    pub atom: usize,
    /// The input's name (`/pfs/<name>`).
    pub name: String,
    /// The matched object (`File`) or prefix (`Directory`).
    pub url: String,
    /// Path of the match below `/pfs/<name>/`, `/`-separated; empty for the whole input.
    pub path: String,
    pub kind: EntryKind,
    /// The object's etag or version (a file), or a digest of the versions of everything
    /// below the prefix (a directory).
    pub version: String,
}

/// The unit of claimable work of a pipeline: one match of each crossed input.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Datum {
    pub inputs: Vec<DatumInput>,
}

impl Datum {
    /// The datum's id: the first 8 bytes of a SHA-256 over each input's name, URL and
    /// version. Never 0 (tasks' datums use 0).
    pub fn id(&self) -> u64 {
        let mut digest = Sha256::new();
        for input in &self.inputs {
            for part in [&input.name, &input.url, &input.version] {
                digest.update(part.as_bytes());
                digest.update([0]);
            }
        }
        let bytes: [u8; 8] = digest.finalize()[..8]
            .try_into()
            .expect("a sha-256 digest has 8 bytes");
        u64::from_be_bytes(bytes).max(1)
    }
}

/// Every combination of one datum from each list, the first list varying slowest (Pachyderm
/// `cross`). An empty list, or no lists, gives no datums.
pub fn cross(lists: &[Vec<Datum>]) -> Result<Vec<Datum>, StorageError> {
    if lists.is_empty() {
        return Ok(Vec::new());
    }
    let sizes: Vec<usize> = lists.iter().map(Vec::len).collect();
    let total = sizes
        .iter()
        .try_fold(1usize, |total, size| total.checked_mul(*size))
        .filter(|total| *total <= CROSS_DATUMS_MAX)
        .ok_or_else(|| StorageError::TooManyDatums {
            sizes: sizes.clone(),
            limit: CROSS_DATUMS_MAX,
        })?;
    let mut out: Vec<Datum> = vec![Datum { inputs: Vec::new() }];
    for list in lists {
        let mut next = Vec::with_capacity(out.len() * list.len());
        for left in &out {
            for right in list {
                let mut inputs = left.inputs.clone();
                inputs.extend(right.inputs.iter().cloned());
                next.push(Datum { inputs });
            }
        }
        out = next;
    }
    debug_assert_eq!(out.len(), total);
    Ok(out)
}

/// The datums of every list, one after another (Pachyderm `union`); a datum reading exactly
/// what an earlier one reads (same id) is kept once.
pub fn union(lists: Vec<Vec<Datum>>) -> Vec<Datum> {
    let mut seen = std::collections::HashSet::new();
    lists
        .into_iter()
        .flatten()
        .filter(|datum| seen.insert(datum.id()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datum(name: &str, path: &str) -> Datum {
        Datum {
            inputs: vec![DatumInput {
                atom: 0,
                name: name.into(),
                url: format!("s3://b/{name}/{path}"),
                path: path.into(),
                kind: EntryKind::File,
                version: "v1".into(),
            }],
        }
    }

    fn paths(datums: &[Datum]) -> Vec<String> {
        datums
            .iter()
            .map(|d| {
                let parts: Vec<_> = d
                    .inputs
                    .iter()
                    .map(|i| format!("{}:{}", i.name, i.path))
                    .collect();
                parts.join("+")
            })
            .collect()
    }

    #[test]
    fn cross_combines_every_pair_first_input_slowest() -> Result<(), StorageError> {
        let left = vec![datum("a", "1"), datum("a", "2")];
        let right = vec![datum("b", "x"), datum("b", "y"), datum("b", "z")];
        let crossed = cross(&[left, right])?;
        assert_eq!(
            paths(&crossed),
            vec![
                "a:1+b:x", "a:1+b:y", "a:1+b:z", "a:2+b:x", "a:2+b:y", "a:2+b:z"
            ]
        );
        Ok(())
    }

    #[test]
    fn cross_with_an_empty_input_is_empty() -> Result<(), StorageError> {
        assert!(cross(&[vec![datum("a", "1")], vec![]])?.is_empty());
        assert!(cross(&[])?.is_empty());
        Ok(())
    }

    #[test]
    fn cross_refuses_products_over_the_limit() {
        let big: Vec<Datum> = (0..2_000).map(|i| datum("a", &i.to_string())).collect();
        let result = cross(&[big.clone(), big]);
        assert!(matches!(result, Err(StorageError::TooManyDatums { .. })));
    }

    #[test]
    fn union_concatenates_and_keeps_a_repeated_datum_once() {
        let merged = union(vec![
            vec![datum("a", "1")],
            vec![datum("b", "1"), datum("a", "1")],
        ]);
        assert_eq!(paths(&merged), vec!["a:1", "b:1"]);
    }

    #[test]
    fn ids_change_with_any_input_url_or_version_and_only_then() {
        let base = datum("a", "1");
        assert_eq!(base.id(), datum("a", "1").id(), "stable");
        let mut changed = base.clone();
        changed.inputs[0].version = "v2".into();
        assert_ne!(base.id(), changed.id(), "a new version is a new datum");
        assert_ne!(base.id(), datum("a", "2").id());
        assert_ne!(base.id(), datum("b", "1").id());
        assert_ne!(base.id(), 0);
    }
}
