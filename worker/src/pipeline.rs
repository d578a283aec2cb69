//! How a pipeline datum maps onto an attempt and onto object storage: where its inputs go in
//! the container, where an attempt stages its outputs, and their final names.
//!
//! In the container: each input at `/pfs/<atom name>/<path of the match>`, an empty
//! `/pfs/out/` for outputs and an empty `/scratch/`.
//!
//! Below the job's egress URI, an attempt stages what it wrote to `/pfs/out/` at
//! `.shoal-staging/<job id>/<datum id>/<fence>/<path below /pfs/out>` — one prefix per attempt
//! (its claim's fence), so attempts never write into each other's files, a stale attempt's
//! files are removed by name, and a datum's or a job's leftovers by prefix. Once the
//! attempt's completion has committed, its files are copied to `<egress>/<path>`.

use shoal_raft::command::Grant;
use shoal_raft::job::{Datum, FileKind, InputSpec, Job, NewDatum, PipelineInput, format_datum_id};
use shoal_storage::{AtomInput, EntryKind, InputTree, join_url};

/// The directory below an egress URI where attempts stage their outputs.
pub const STAGING_DIR: &str = ".shoal-staging";
/// Where a datum writes its outputs in the container.
pub const OUT_DIR: &str = "/pfs/out";
/// An empty directory each datum may use.
pub const SCRATCH_DIR: &str = "/scratch";

/// Everything attempts of job `job_id` staged below `egress`.
pub fn job_staging(egress: &str, job_id: &str) -> String {
    join_url(egress, &format!("{STAGING_DIR}/{job_id}/"))
}

/// Everything attempts of one datum staged.
pub fn datum_staging(egress: &str, job_id: &str, datum_id: u64) -> String {
    join_url(
        egress,
        &format!("{STAGING_DIR}/{job_id}/{}/", format_datum_id(datum_id)),
    )
}

/// What the attempt holding `fence` staged.
pub fn attempt_staging(egress: &str, job_id: &str, datum_id: u64, fence: u64) -> String {
    join_url(
        &datum_staging(egress, job_id, datum_id),
        &format!("{fence}/"),
    )
}

/// The final name of output `path` (relative to `/pfs/out`).
pub fn final_url(egress: &str, path: &str) -> String {
    join_url(egress, path)
}

/// The value of `SHOAL_DATUM_ID`: a pipeline datum's id, or `<task id>.<index>` for a task.
pub fn datum_env_id(job: &Job, datum: &Datum, grant: &Grant) -> String {
    if job.spec.pipeline.is_some() {
        format_datum_id(datum.id)
    } else {
        format!("{}.{}", job.spec.id, grant.datum.index)
    }
}

/// The datum's inputs as files to fetch: each match of an atom at `/pfs/<name>/<path>`.
pub fn datum_inputs(job: &Job, datum: &Datum) -> Vec<InputSpec> {
    let Some(pipeline) = &job.spec.pipeline else {
        return Vec::new();
    };
    let atoms = pipeline.input.atoms();
    datum
        .inputs
        .iter()
        .filter_map(|input| {
            let atom = atoms.get(usize::from(input.atom))?;
            let path = if input.path.is_empty() {
                format!("/pfs/{}", atom.name)
            } else {
                format!("/pfs/{}/{}", atom.name, input.path)
            };
            Some(InputSpec {
                name: atom.name.to_string(),
                url: join_url(atom.uri, &input.path),
                path,
                kind: input.kind,
                ..InputSpec::default()
            })
        })
        .collect()
}

/// The storage crate's view of a pipeline's input, atoms numbered depth first as
/// [`PipelineInput::atoms`] numbers them.
pub fn input_tree(input: &PipelineInput) -> InputTree {
    fn build(input: &PipelineInput, next: &mut usize) -> InputTree {
        match input {
            PipelineInput::Atom { name, uri, glob } => {
                let atom = AtomInput {
                    index: *next,
                    name: name.clone(),
                    uri: uri.clone(),
                    glob: glob.clone(),
                };
                *next += 1;
                InputTree::Atom(atom)
            }
            PipelineInput::Cross(children) => {
                InputTree::Cross(children.iter().map(|c| build(c, next)).collect())
            }
            PipelineInput::Union(children) => {
                InputTree::Union(children.iter().map(|c| build(c, next)).collect())
            }
        }
    }
    build(input, &mut 0)
}

/// A listed datum as the log stores it.
pub fn new_datum(datum: &shoal_storage::Datum) -> NewDatum {
    NewDatum {
        id: datum.id(),
        inputs: datum
            .inputs
            .iter()
            .map(|input| shoal_raft::job::DatumInput {
                atom: u16::try_from(input.atom).unwrap_or(u16::MAX),
                path: input.path.clone(),
                kind: match input.kind {
                    EntryKind::File => FileKind::File,
                    EntryKind::Directory => FileKind::Directory,
                },
            })
            .collect(),
        reuse: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names_nest_job_datum_and_fence_below_the_egress() {
        let egress = "s3://bucket/words/";
        assert_eq!(
            attempt_staging(egress, "J1", 0xab, 42),
            "s3://bucket/words/.shoal-staging/J1/00000000000000ab/42/"
        );
        assert!(
            attempt_staging(egress, "J1", 0xab, 42).starts_with(&datum_staging(egress, "J1", 0xab))
        );
        assert!(datum_staging(egress, "J1", 0xab).starts_with(&job_staging(egress, "J1")));
        assert_eq!(final_url(egress, "a/b.txt"), "s3://bucket/words/a/b.txt");
    }

    #[test]
    fn atoms_are_numbered_depth_first_like_the_replicated_input() {
        let atom = |name: &str| PipelineInput::Atom {
            name: name.into(),
            uri: format!("s3://b/{name}/"),
            glob: "/*".into(),
        };
        let input = PipelineInput::Cross(vec![
            atom("a"),
            PipelineInput::Union(vec![atom("b"), atom("c")]),
        ]);
        let InputTree::Cross(children) = input_tree(&input) else {
            panic!("a cross stays a cross");
        };
        let InputTree::Union(inner) = &children[1] else {
            panic!("a union stays a union");
        };
        let InputTree::Atom(c) = &inner[1] else {
            panic!("an atom");
        };
        assert_eq!((c.index, c.name.as_str()), (2, "c"));
        assert_eq!(input.atoms()[2].name, "c");
    }
}
