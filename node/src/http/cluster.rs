//! `/v1/cluster`: who is in the cluster, the operator's actions on nodes (drain, undrain,
//! remove), and backups. A node is named by its 16-hex-digit id or its name.

use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use serde::Deserialize;
use shoal_raft::cluster::{Op, OpResult};
use shoal_raft::{Command, NodeId, Outcome, format_node_id, parse_node_id};

use super::{ApiError, AppState, Caller};
use crate::api::{ClusterView, DrainView, RemovedView};

#[derive(Debug, Deserialize)]
pub struct ReadParams {
    /// `stale` answers from this node's state without asking the leader.
    consistency: Option<String>,
}

/// Whether the read must reflect every acknowledged write (the default).
pub fn wants_linearizable(consistency: Option<&str>) -> Result<bool, ApiError> {
    match consistency {
        None | Some("linearizable") => Ok(true),
        Some("stale") => Ok(false),
        Some(other) => Err(ApiError::bad_request(format!(
            "consistency: {other:?} is not \"linearizable\" or \"stale\""
        ))),
    }
}

pub async fn status(
    State(state): State<AppState>,
    Query(params): Query<ReadParams>,
) -> Result<Json<ClusterView>, ApiError> {
    let consistent = wants_linearizable(params.consistency.as_deref())?;
    if consistent {
        state.cluster.linearize().await?;
    }
    Ok(Json(ClusterView::from_status(
        state.cluster.status(),
        consistent,
    )))
}

/// Finds a node by id or name among members and registered nodes.
fn resolve_node(state: &AppState, name_or_id: &str) -> Result<NodeId, ApiError> {
    if let Some(node_id) = parse_node_id(name_or_id) {
        return Ok(node_id);
    }
    let status = state.cluster.status();
    let mut found = status
        .members
        .iter()
        .filter(|m| m.addr.name == name_or_id)
        .map(|m| m.node_id);
    match (found.next(), found.next()) {
        (Some(node_id), None) => Ok(node_id),
        (Some(_), Some(_)) => Err(ApiError::bad_request(format!(
            "node name {name_or_id:?} is ambiguous; use the node id"
        ))),
        (None, _) => Err(ApiError::not_found(format!(
            "no node with id or name {name_or_id:?}"
        ))),
    }
}

/// `POST /v1/cluster/nodes/{id}:drain` and `{id}:undrain`.
pub async fn node_action(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(target): Path<String>,
) -> Result<Json<DrainView>, ApiError> {
    caller.require_admin()?;
    let (node, action) = target
        .rsplit_once(':')
        .ok_or_else(|| ApiError::not_found(format!("no action in {target:?}; use {{id}}:drain")))?;
    let draining = match action {
        "drain" => true,
        "undrain" => false,
        other => {
            return Err(ApiError::not_found(format!(
                "unknown node action {other:?}"
            )));
        }
    };
    let node_id = resolve_node(&state, node)?;
    match state
        .cluster
        .write(Command::DrainNode { node_id, draining })
        .await?
    {
        Outcome::Applied => Ok(Json(DrainView {
            node_id: format_node_id(node_id),
            draining,
        })),
        Outcome::UnknownNode { .. } => Err(ApiError::not_found(format!(
            "node {} is not registered",
            format_node_id(node_id)
        ))),
        other => Err(ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected outcome {other:?}"),
        )),
    }
}

/// `DELETE /v1/cluster/nodes/{id}`: takes the node out of the Raft group and the registry.
pub async fn remove(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(target): Path<String>,
) -> Result<Json<RemovedView>, ApiError> {
    caller.require_admin()?;
    let node_id = resolve_node(&state, &target)?;
    let member = state
        .cluster
        .status()
        .members
        .iter()
        .any(|m| m.node_id == node_id);
    if !member && !state.cluster.view().read().nodes.contains_key(&node_id) {
        return Err(ApiError::not_found(format!(
            "node {} is not a member",
            format_node_id(node_id)
        )));
    }
    match state.cluster.execute(Op::Remove { node_id }).await? {
        OpResult::Removed => Ok(Json(RemovedView {
            removed: format_node_id(node_id),
        })),
        other => Err(ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected answer {other:?}"),
        )),
    }
}

/// Bytes of a backup gathered before they are sent as one chunk.
const BACKUP_CHUNK_BYTES: usize = 256 * 1024;
/// Chunks of a backup waiting for the client; the backup's read of redb waits beyond that.
const BACKUP_CHUNKS_QUEUED: usize = 8;

/// Longest a backup waits for its client to take the next chunk: a client that stops
/// reading would otherwise hold the backup's redb read (and its permit) for good.
const BACKUP_STALL_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// Hands what a backup writes to the response body, chunk by chunk; fails once the client
/// has gone or stalls, which ends the backup.
struct BodyWriter {
    chunks: tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    runtime: tokio::runtime::Handle,
}

impl std::io::Write for BodyWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let sent = self.runtime.block_on(tokio::time::timeout(
            BACKUP_STALL_MAX,
            self.chunks.send(Ok(buf.to_vec())),
        ));
        match sent {
            Ok(Ok(())) => Ok(buf.len()),
            Ok(Err(_)) => Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client took nothing for {BACKUP_STALL_MAX:?}"),
            )),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `GET /v1/cluster/backup`: a backup of the replicated state, streamed (administrators
/// only; one at a time per node). The node first confirms with the leader how far the log
/// is committed and waits until it has applied that far, so the backup holds every write
/// acknowledged before the request; it then streams one consistent read of its state. The
/// file ends with a checksummed trailer: a backup cut short is refused when restored.
pub async fn backup(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<axum::response::Response, ApiError> {
    caller.require_admin()?;
    let permit = state.backups.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "a backup is already being made on this node; try again when it is done",
        )
    })?;
    state.cluster.linearize().await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(BACKUP_CHUNKS_QUEUED);
    let cluster = state.cluster.clone();
    let writer = BodyWriter {
        chunks: tx.clone(),
        runtime: tokio::runtime::Handle::current(),
    };
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let out = std::io::BufWriter::with_capacity(BACKUP_CHUNK_BYTES, writer);
        match cluster.write_backup(out) {
            Ok(written) => tracing::info!(
                rows = written.rows,
                bytes = written.bytes,
                last_log = ?written.header.last_log,
                "backup streamed"
            ),
            Err(error) => {
                tracing::warn!(%error, "backup failed");
                let _ = tx.try_send(Err(std::io::Error::other(error.to_string())));
            }
        }
    });
    let chunks = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let name = format!(
        "attachment; filename=\"shoal-{}.backup\"",
        state
            .cluster
            .view()
            .read()
            .cluster_id
            .as_deref()
            .unwrap_or("unnamed")
    );
    axum::response::Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/octet-stream")
        .header(axum::http::header::CONTENT_DISPOSITION, name)
        .body(axum::body::Body::from_stream(chunks))
        .map_err(|e| ApiError::internal(e.to_string()))
}
