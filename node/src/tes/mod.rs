//! GA4GH TES v1.1 over shoal's log: a task is a job of one datum. Served under
//! `/ga4gh/tes/v1` and `/v1`.
//!
//! - `model`: the TES JSON types.
//! - `convert`: validation into a `JobSpec`, and views of a job as a TES task.
//! - this file: the handlers (create, get, cancel) and task ids.

pub mod convert;
pub mod model;

use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use shoal_raft::job::JobKind;
use shoal_raft::{Command, Outcome, format_node_id};

use crate::http::{ApiError, AppState};
use convert::View;
use model::{TesCreateTaskResponse, TesTask};

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A new task id: 26 characters of Crockford base32 like a ULID — 48 bits of milliseconds
/// (so ids sort by creation time) and 80 bits unique to this node, time and call.
pub fn new_task_id(node_id: u64) -> String {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seed = format!(
        "{node_id}:{}:{}",
        now.as_nanos(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    );
    let digest = Sha256::digest(seed.as_bytes());
    let millis = now.as_millis() as u64 & 0xFFFF_FFFF_FFFF;
    let random = digest[..10]
        .iter()
        .fold(0_u128, |acc, byte| (acc << 8) | u128::from(*byte));
    let value = (u128::from(millis) << 80) | random;
    (0..26)
        .rev()
        .map(|i| CROCKFORD[((value >> (i * 5)) & 31) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn task_ids_are_26_crockford_characters_and_sort_by_time() {
        let first = super::new_task_id(1);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = super::new_task_id(1);
        assert_eq!(first.len(), 26);
        assert!(first.chars().all(|c| super::CROCKFORD.contains(&(c as u8))));
        assert!(first < second, "{first} then {second}");
        assert_ne!(super::new_task_id(1), super::new_task_id(1));
    }
}

#[derive(Debug, Deserialize)]
pub struct GetParams {
    view: Option<String>,
}

/// `POST /tasks`.
pub async fn create(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<TesCreateTaskResponse>, ApiError> {
    let task: TesTask = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid task: {e}")))?;
    let id = new_task_id(state.cluster.node_id());
    let spec =
        convert::job_spec(&task, id.clone(), String::new()).map_err(ApiError::bad_request)?;
    let command = Command::SubmitJob {
        spec: Box::new(spec),
        datums: vec![Vec::new()],
        seal: true,
    };
    match state.cluster.write(command).await? {
        Outcome::JobSubmitted { .. } => Ok(Json(TesCreateTaskResponse { id })),
        Outcome::Refused { reason } => Err(ApiError::bad_request(reason)),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("task {id:?} not found"))
}

/// `GET /tasks/{id}`.
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<GetParams>,
) -> Result<Json<TesTask>, ApiError> {
    let view = View::parse(params.view.as_deref()).map_err(ApiError::bad_request)?;
    state.cluster.linearize().await?;
    let state_view = state.cluster.view().read();
    let job = state_view
        .job(&id)
        .filter(|job| job.spec.kind == JobKind::Task)
        .ok_or_else(|| not_found(&id))?;
    let datum = state_view
        .datums_of(job.seq)
        .next()
        .ok_or_else(|| not_found(&id))?;
    let node_name = |node_id: u64| {
        state_view
            .nodes
            .get(&node_id)
            .map(|n| n.info.name.clone())
            .unwrap_or_else(|| format_node_id(node_id))
    };
    Ok(Json(convert::tes_task(job, datum, view, &node_name)))
}

/// `POST /tasks/{id}:cancel`.
pub async fn action(
    State(state): State<AppState>,
    Path(target): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = target.strip_suffix(":cancel").ok_or_else(|| {
        ApiError::not_found(format!("no such action in {target:?}; use {{id}}:cancel"))
    })?;
    state.cluster.linearize().await?;
    let is_task = state
        .cluster
        .view()
        .read()
        .job(id)
        .is_some_and(|job| job.spec.kind == JobKind::Task);
    if !is_task {
        return Err(not_found(id));
    }
    match state
        .cluster
        .write(Command::CancelJob {
            job_id: id.to_string(),
        })
        .await?
    {
        Outcome::Changed { .. } => Ok(Json(serde_json::json!({}))),
        Outcome::UnknownJob { .. } => Err(not_found(id)),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}
