//! Pipeline jobs over HTTP: `/v1/jobs` and `/v1/datums`.
//!
//! - `spec`: the Falconeri/Pachyderm spec (JSON or YAML), validated into a `JobSpec`.
//! - `views`: jobs and datums as the API shows them.
//! - `events`: a job's progress as server-sent events.
//! - this file: the handlers. A submission is answered as soon as the job is in the log; the
//!   node that received it becomes the job's steward and lists the input into datums (see
//!   the worker's `steward`). Reads are linearizable like every read; a caller sees only its
//!   own jobs unless it is an administrator, others' answer 404 as if absent.

pub mod events;
pub mod spec;
pub mod views;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::{Extension, Json};
use shoal_raft::job::{Datum, DatumState, Job, JobKind, JobSeq, JobState, format_datum_id};
use shoal_raft::{Command, Outcome};

use crate::api::{DatumListView, DatumLogsView, DatumView, JobCreatedView, JobListView, JobView};
use crate::http::{ApiError, AppState, Caller};

/// Jobs or datums in one page unless the client asks otherwise.
pub const PAGE_SIZE_DEFAULT: usize = 100;
/// Most jobs or datums in one page; larger requests are cut to it.
pub const PAGE_SIZE_MAX: usize = 1000;
/// Datums one page looks at before it answers with what it found (so a filter that matches
/// few datums of a huge job holds the state briefly; the client follows the page token).
const DATUM_SCAN_MAX: usize = 100_000;

/// `POST /v1/jobs?reprocess=true|false` (the query overrides the spec's `reprocess`).
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<JobCreatedView>, ApiError> {
    let reprocess = reprocess_param(query.as_deref()).map_err(ApiError::bad_request)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let format = spec::Format::from_content_type(content_type);
    let id = crate::tes::new_task_id(state.cluster.node_id());
    let mut parsed =
        spec::parse(&body, format, id, caller.name.clone()).map_err(ApiError::bad_request)?;
    if let (Some(reprocess), Some(pipeline)) = (reprocess, parsed.spec.pipeline.as_mut()) {
        pipeline.reprocess = reprocess;
    }
    parsed.spec.idempotency = crate::http::idempotency(&headers, &body)?;
    let name = parsed.spec.name.clone();
    let command = Command::SubmitJob {
        spec: Box::new(parsed.spec),
        datums: Vec::new(),
        seal: false,
        steward: Some(state.cluster.node_id()),
    };
    match state.cluster.write(command).await? {
        // With an idempotency key, the job a first submission made.
        Outcome::JobSubmitted { job_id, .. } => Ok(Json(JobCreatedView {
            id: job_id,
            name,
            ignored: parsed.ignored,
        })),
        Outcome::KeyReused { job_id } => Err(crate::http::key_reused(&job_id)),
        Outcome::Refused { reason } => Err(ApiError::bad_request(reason)),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// The `reprocess` query parameter of a submission; any other parameter is an error.
fn reprocess_param(query: Option<&str>) -> Result<Option<bool>, String> {
    let mut reprocess = None;
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match (key.as_ref(), value.as_ref()) {
            ("reprocess", "true" | "1" | "") => reprocess = Some(true),
            ("reprocess", "false" | "0") => reprocess = Some(false),
            ("reprocess", other) => {
                return Err(format!("reprocess: {other:?} is not true or false"));
            }
            (other, _) => return Err(format!("{other}: unknown parameter")),
        }
    }
    Ok(reprocess)
}

fn not_found(what: &str, id: &str) -> ApiError {
    ApiError::not_found(format!("{what} {id:?} not found"))
}

/// The pipeline `target` names — its id, else the newest with that name — if `caller` may
/// see it.
fn find_job<'a>(
    state: &'a shoal_raft::State,
    target: &str,
    caller: &Caller,
) -> Result<&'a Job, ApiError> {
    let visible = |job: &&Job| job.spec.kind == JobKind::Pipeline && caller.sees(&job.spec.owner);
    state
        .job(target)
        .filter(visible)
        .or_else(|| {
            state
                .jobs
                .values()
                .rev()
                .filter(visible)
                .find(|job| job.spec.name == target)
        })
        .ok_or_else(|| not_found("job", target))
}

/// `GET /v1/jobs/{id}` (an id or a name). A TES task is a job of one datum: its id is
/// answered too, which is where a waiting task says why it waits.
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(target): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    state.cluster.linearize().await?;
    let view = state.cluster.view().read();
    let job = find_job(&view, &target, &caller).or_else(|error| {
        view.job(&target)
            .filter(|job| job.spec.kind == JobKind::Task && caller.sees(&job.spec.owner))
            .ok_or(error)
    })?;
    Ok(Json(views::job(&view, job, true)))
}

/// `POST /v1/jobs/{id}:cancel` and `…:retry`.
pub async fn action(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(target): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let (id, action) = target
        .rsplit_once(':')
        .filter(|(_, action)| matches!(*action, "cancel" | "retry"))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no such action in {target:?}; use {{id}}:cancel or {{id}}:retry"
            ))
        })?;
    state.cluster.linearize().await?;
    let job_id = {
        let view = state.cluster.view().read();
        find_job(&view, id, &caller)?.spec.id.clone()
    };
    let command = match action {
        "cancel" => Command::CancelJob {
            job_id: job_id.clone(),
        },
        _ => Command::RetryFailed {
            job_id: job_id.clone(),
        },
    };
    match state.cluster.write(command).await? {
        Outcome::Changed { .. } => {}
        Outcome::UnknownJob { .. } => return Err(not_found("job", id)),
        Outcome::Refused { reason } => return Err(ApiError::new(StatusCode::CONFLICT, reason)),
        other => return Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
    state.cluster.linearize().await?;
    let view = state.cluster.view().read();
    let job = find_job(&view, &job_id, &caller)?;
    Ok(Json(views::job(&view, job, false)))
}

/// A parsed page request: filters, size and where to start.
struct PageQuery {
    state: Option<String>,
    /// `/v1/jobs` only: `pipeline` (the default), `task` or `all`.
    kind: Option<String>,
    name: Option<String>,
    job: Option<String>,
    page_size: usize,
    page_token: Option<u64>,
}

/// Page tokens are opaque to clients: where the next page starts, in hex after a letter.
fn page_token(letter: char, position: u64) -> String {
    format!("{letter}{position:x}")
}

fn parse_query(query: Option<&str>, letter: char) -> Result<PageQuery, String> {
    let mut parsed = PageQuery {
        state: None,
        kind: None,
        name: None,
        job: None,
        page_size: PAGE_SIZE_DEFAULT,
        page_token: None,
    };
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let value = value.into_owned();
        match key.as_ref() {
            "state" => parsed.state = Some(value),
            "kind" if letter == 'j' => parsed.kind = Some(value),
            "name" => parsed.name = Some(value),
            "job" => parsed.job = Some(value),
            "page_size" => {
                let size: usize = value
                    .parse()
                    .map_err(|_| format!("page_size: {value:?} is not a whole number"))?;
                parsed.page_size = if size == 0 {
                    PAGE_SIZE_DEFAULT
                } else {
                    size.min(PAGE_SIZE_MAX)
                };
            }
            "page_token" if value.is_empty() => {}
            "page_token" => {
                let position = value
                    .strip_prefix(letter)
                    .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                    .ok_or_else(|| {
                        format!("page_token: {value:?} is not a token this server gave")
                    })?;
                parsed.page_token = Some(position);
            }
            "consistency" => {}
            other => return Err(format!("{other}: unknown parameter")),
        }
    }
    Ok(parsed)
}

/// `GET /v1/jobs?state=&name=&kind=&page_size=&page_token=`: pipelines (`kind=task`: TES
/// tasks; `kind=all`: both) newest first.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Result<Json<JobListView>, ApiError> {
    let query = parse_query(query.as_deref(), 'j').map_err(ApiError::bad_request)?;
    let kinds: &[JobKind] = match query.kind.as_deref() {
        None | Some("pipeline") => &[JobKind::Pipeline],
        Some("task") => &[JobKind::Task],
        Some("all") => &[JobKind::Pipeline, JobKind::Task],
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "kind: {other:?} is not pipeline, task or all"
            )));
        }
    };
    let wanted: Option<JobState> = match &query.state {
        Some(name) => Some(views::parse_job_state(name).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state: {name:?} is not queued, running, canceling, done, error or canceled"
            ))
        })?),
        None => None,
    };
    state.cluster.linearize().await?;
    let view = state.cluster.view().read();
    let upper = query.page_token.unwrap_or(JobSeq::MAX);
    let candidates: Box<dyn Iterator<Item = JobSeq> + '_> = match wanted {
        Some(job_state) => Box::new(view.jobs_in_states_before(&[job_state], upper)),
        None => Box::new(view.jobs.range(..upper).rev().map(|(seq, _)| *seq)),
    };
    let mut jobs = Vec::new();
    let mut next_page_token = None;
    for seq in candidates {
        let Some(job) = view.jobs.get(&seq) else {
            continue;
        };
        if !kinds.contains(&job.spec.kind)
            || !caller.sees(&job.spec.owner)
            || query
                .name
                .as_ref()
                .is_some_and(|name| *name != job.spec.name)
        {
            continue;
        }
        if jobs.len() == query.page_size {
            // The next page starts with this job.
            next_page_token = Some(page_token('j', seq.saturating_add(1)));
            break;
        }
        jobs.push(views::job(&view, job, false));
    }
    Ok(Json(JobListView {
        jobs,
        next_page_token,
    }))
}

/// `GET /v1/jobs/{id}/datums?state=&page_size=&page_token=`: datums in index order.
pub async fn datums(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(target): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<DatumListView>, ApiError> {
    let query = parse_query(query.as_deref(), 'd').map_err(ApiError::bad_request)?;
    let wanted: Option<DatumState> = match &query.state {
        Some(name) => Some(views::parse_datum_state(name).ok_or_else(|| {
            ApiError::bad_request(format!("state: {name:?} is not a datum state"))
        })?),
        None => None,
    };
    state.cluster.linearize().await?;
    let view = state.cluster.view().read();
    let job = find_job(&view, &target, &caller)?;
    let from = u32::try_from(query.page_token.unwrap_or(0)).unwrap_or(u32::MAX);
    let mut datums = Vec::new();
    let mut next_page_token = None;
    for (scanned, datum) in view.datums_of_from(job.seq, from).enumerate() {
        if datums.len() == query.page_size || scanned == DATUM_SCAN_MAX {
            next_page_token = Some(page_token('d', u64::from(datum.key.index)));
            break;
        }
        if wanted.is_none_or(|s| s == datum.state) {
            datums.push(views::datum(&view, job, datum, None, false));
        }
    }
    Ok(Json(DatumListView {
        datums,
        next_page_token,
    }))
}

/// The datum `id` (16 hex digits) of the job named by `?job=`, else of the newest job with
/// it that the caller sees; its job and key.
fn find_datum<'a>(
    state: &'a shoal_raft::State,
    id: &str,
    job: Option<&str>,
    caller: &Caller,
) -> Result<(&'a Job, &'a Datum), ApiError> {
    let number = u64::from_str_radix(id, 16)
        .ok()
        .filter(|_| id.len() == 16)
        .ok_or_else(|| ApiError::bad_request(format!("datum id {id:?} is not 16 hex digits")))?;
    let wanted_job = job
        .map(|target| find_job(state, target, caller))
        .transpose()?;
    state
        .datums_with_id(number)
        .filter_map(|datum| Some((state.jobs.get(&datum.key.job)?, datum)))
        .filter(|(job, _)| job.spec.kind == JobKind::Pipeline && caller.sees(&job.spec.owner))
        .filter(|(job, _)| wanted_job.is_none_or(|wanted| wanted.seq == job.seq))
        .last()
        .ok_or_else(|| not_found("datum", &format_datum_id(number)))
}

/// The running attempt's output so far, asked of its node (outside the state lock).
async fn live_logs(
    state: &AppState,
    id: &str,
    job: Option<&str>,
    caller: &Caller,
) -> Result<Option<(u64, Vec<shoal_raft::job::ExecutorLog>)>, ApiError> {
    let (datum_state, claim, key) = {
        let view = state.cluster.view().read();
        let (_, datum) = find_datum(&view, id, job, caller)?;
        (datum.state, datum.claim, datum.key)
    };
    let running = matches!(datum_state, DatumState::Running | DatumState::Canceling);
    Ok(match claim {
        Some(claim) if running => state
            .cluster
            .live_logs(claim.node, key, claim.fence)
            .await
            .map(|logs| (claim.fence, logs)),
        _ => None,
    })
}

/// The `job` query parameter of the datum routes.
fn job_param(query: Option<&str>) -> Result<Option<String>, ApiError> {
    Ok(parse_query(query, 'd').map_err(ApiError::bad_request)?.job)
}

/// `GET /v1/datums/{id}?job=`.
pub async fn datum(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<DatumView>, ApiError> {
    let job = job_param(query.as_deref())?;
    state.cluster.linearize().await?;
    let live = live_logs(&state, &id, job.as_deref(), &caller).await?;
    let view = state.cluster.view().read();
    let (job, datum) = find_datum(&view, &id, job.as_deref(), &caller)?;
    let live = live.as_ref().map(|(fence, logs)| views::Live {
        fence: *fence,
        logs,
    });
    Ok(Json(views::datum(&view, job, datum, live.as_ref(), true)))
}

/// `GET /v1/datums/{id}/logs?job=`.
pub async fn datum_logs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<DatumLogsView>, ApiError> {
    let job = job_param(query.as_deref())?;
    state.cluster.linearize().await?;
    let live = live_logs(&state, &id, job.as_deref(), &caller).await?;
    let view = state.cluster.view().read();
    let (job, datum) = find_datum(&view, &id, job.as_deref(), &caller)?;
    let live = live.as_ref().map(|(fence, logs)| views::Live {
        fence: *fence,
        logs,
    });
    Ok(Json(views::datum_logs(&view, job, datum, live.as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_queries_parse_and_name_what_is_wrong() {
        let query = parse_query(Some("state=done&page_size=5000&page_token=d1f&job=J"), 'd')
            .expect("valid");
        assert_eq!(query.page_size, PAGE_SIZE_MAX);
        assert_eq!(query.page_token, Some(0x1f));
        assert_eq!(query.state.as_deref(), Some("done"));
        assert_eq!(query.job.as_deref(), Some("J"));
        for (bad, field) in [
            ("page_size=x", "page_size"),
            ("page_token=j1", "page_token"),
            ("colour=red", "colour"),
        ] {
            let error = parse_query(Some(bad), 'd').err().expect(bad);
            assert!(error.starts_with(field), "{bad}: {error}");
        }
    }
}
