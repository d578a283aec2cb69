//! Datums of a pipeline and the pure ways of combining input lists: cross and union.
//!
//! A datum does not list files: each of its inputs names one glob match (an object or a
//! prefix), which the worker downloads when it runs the datum. So a datum stays small however
//! many files its match holds.

use crate::download::EntryKind;
use crate::error::StorageError;
use crate::limits::CROSS_DATUMS_MAX;

/// One input's share of a datum: what to download and where it goes below `/pfs/<name>/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DatumInput {
    /// The input's name (`/pfs/<name>`).
    pub name: String,
    /// The matched object (`File`) or prefix (`Directory`).
    pub url: String,
    /// Path of the match below `/pfs/<name>/`, `/`-separated; empty for the whole input.
    pub path: String,
    pub kind: EntryKind,
}

/// The unit of claimable work of a pipeline: one match of each crossed input.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Datum {
    pub inputs: Vec<DatumInput>,
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

/// The datums of every list, one after another (Pachyderm `union`: no deduplication).
pub fn union(lists: Vec<Vec<Datum>>) -> Vec<Datum> {
    lists.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datum(name: &str, path: &str) -> Datum {
        Datum {
            inputs: vec![DatumInput {
                name: name.into(),
                url: format!("s3://b/{name}/{path}"),
                path: path.into(),
                kind: EntryKind::File,
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
    fn union_concatenates_without_deduplicating() {
        let merged = union(vec![
            vec![datum("a", "1")],
            vec![datum("b", "1"), datum("a", "1")],
        ]);
        assert_eq!(paths(&merged), vec!["a:1", "b:1", "a:1"]);
    }
}
