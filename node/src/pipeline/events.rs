//! `GET /v1/jobs/{id}/events`: a job's progress as server-sent events, for `shoal job wait`,
//! the dashboard and any other client.
//!
//! Each event (`event: job`) carries the job's view without its spec. The first comes at
//! once; another whenever the job's state, counts, listing flag or errors change — at most
//! one per `EVENT_GAP`, coalescing what happened in between — and the stream ends after the
//! event that shows the job ended. Waiting costs the cluster nothing: the handler sleeps on
//! the node's "entries applied" signal and reads the job's counters (kept by the state
//! machine) from the local replica, with no log write and no per-datum read. One
//! linearizable read at the start makes the first event as fresh as `GET /v1/jobs/{id}`.

use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use shoal_raft::StateView;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::{find_job, views};
use crate::api::JobView;
use crate::http::{ApiError, AppState, Caller};

/// Most event streams one node serves at once; more are refused with 503.
pub const EVENT_STREAMS_MAX: usize = 1024;
/// Least time between two events of one stream.
const EVENT_GAP: Duration = Duration::from_millis(200);
/// A comment line this often keeps proxies from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

static STREAMS: Semaphore = Semaphore::const_new(EVENT_STREAMS_MAX);

/// `GET /v1/jobs/{id}/events` (an id or a name).
pub async fn events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(target): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let permit = STREAMS.try_acquire().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("this node already serves {EVENT_STREAMS_MAX} event streams; try another node"),
        )
    })?;
    state.cluster.linearize().await?;
    let job_id = {
        let view = state.cluster.view().read();
        find_job(&view, &target, &caller)?.spec.id.clone()
    };
    let watch = Watch {
        applied: state.cluster.view().applied(),
        view: state.cluster.view().clone(),
        job_id,
        last: None,
        ended: false,
        _permit: permit,
    };
    let stream = futures::stream::unfold(watch, Watch::next);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// One stream's position: what it sent last.
struct Watch {
    view: StateView,
    applied: tokio::sync::watch::Receiver<Option<shoal_raft::types::LogId>>,
    job_id: String,
    /// What the last event showed (see [`progress_key`]).
    last: Option<JobView>,
    /// The last event showed the job ended: the stream is over.
    ended: bool,
    _permit: SemaphorePermit<'static>,
}

impl Watch {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Watch)> {
        if self.ended {
            return None;
        }
        if self.last.is_some() {
            tokio::time::sleep(EVENT_GAP).await;
        }
        loop {
            let job = {
                let state = self.view.read();
                // A job is never removed while the stream could name it; gone means the
                // node is shutting down its state: end the stream.
                let job = state.job(&self.job_id)?;
                views::job(&state, job, false)
            };
            let key = progress_key(&job);
            if self.last.as_ref() != Some(&key) {
                self.last = Some(key);
                self.ended = is_terminal(&job);
                let event = Event::default()
                    .event("job")
                    .json_data(&job)
                    .unwrap_or_else(|_| Event::default().comment("unencodable view"));
                return Some((Ok(event), self));
            }
            self.applied.changed().await.ok()?;
        }
    }
}

/// A job state from which nothing changes any more.
pub fn is_terminal(job: &JobView) -> bool {
    matches!(job.state.as_str(), "done" | "error" | "canceled")
}

/// What a client watching the job cares about: the whole view but the rate, which changes
/// with the clock alone.
fn progress_key(job: &JobView) -> JobView {
    JobView {
        datums_per_second: 0.0,
        ..job.clone()
    }
}
