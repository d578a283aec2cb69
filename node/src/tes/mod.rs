//! GA4GH TES v1.1 over shoal's log: a task is a job of one datum. Served under
//! `/ga4gh/tes/v1` and `/v1`.
//!
//! - `model`: the TES JSON types.
//! - `convert`: validation into a `JobSpec`, and views of a job as a TES task.
//! - this file: the handlers (service-info, create, get, list, cancel) and task ids.
//!
//! A caller sees only the tasks submitted under its token's name, unless it is an
//! administrator (or the node has no tokens); others' tasks answer 404 as if absent.

pub mod convert;
pub mod model;

use axum::body::Bytes;
use axum::extract::{Path, Query, RawQuery, State};
use axum::{Extension, Json};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use shoal_raft::job::{Datum, DatumState, JobKind, JobSeq, JobState};
use shoal_raft::{Command, Outcome, format_node_id};

use crate::http::{ApiError, AppState, Caller};
use convert::View;
use model::{
    ServiceOrganization, ServiceType, TesCreateTaskResponse, TesListTasksResponse, TesServiceInfo,
    TesState, TesTask,
};

/// Tasks in one list page unless the client asks otherwise.
pub const PAGE_SIZE_DEFAULT: usize = 256;
/// Most tasks in one list page; larger requests are cut to it.
pub const PAGE_SIZE_MAX: usize = 2047;
/// Most tag filters in one list request.
const TAG_FILTERS_MAX: usize = 64;
/// A list page stops growing at about this many bytes of logs and contents (FULL views of
/// tasks with large tails); the rest follows through `next_page_token`.
const LIST_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Rough size of a task's answer: what grows with the task.
fn approx_bytes(task: &TesTask) -> usize {
    let logs: usize = task
        .logs
        .iter()
        .flatten()
        .flat_map(|log| &log.logs)
        .map(|e| {
            e.stdout.as_ref().map_or(0, String::len) + e.stderr.as_ref().map_or(0, String::len)
        })
        .sum();
    let contents: usize = task
        .inputs
        .iter()
        .flatten()
        .map(|i| i.content.as_ref().map_or(0, String::len))
        .sum();
    logs + contents + 512
}

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A new task id: 26 characters of Crockford base32 like a ULID — 48 bits of milliseconds
/// (so ids sort by creation time) and 80 bits unique to this node, time and call.
pub fn new_task_id(node_id: u64) -> String {
    let now_ms = shoal_raft::runtime::now_ms();
    let seed = format!("{node_id}:{now_ms}:{}", shoal_raft::runtime::random_u64());
    let digest = Sha256::digest(seed.as_bytes());
    let millis = now_ms & 0xFFFF_FFFF_FFFF;
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

/// `GET /service-info`.
pub async fn service_info(State(state): State<AppState>) -> Json<TesServiceInfo> {
    let cluster_id = state
        .cluster
        .view()
        .read()
        .cluster_id
        .clone()
        .unwrap_or_default();
    let url = state.cluster.addr().http_url.clone();
    Json(TesServiceInfo {
        id: format!("shoal.cluster.{}", cluster_id.to_lowercase()),
        name: "shoal".to_string(),
        kind: ServiceType {
            group: "org.ga4gh".to_string(),
            artifact: "tes".to_string(),
            version: "1.1.0".to_string(),
        },
        description: "shoal: a masterless batch-processing cluster".to_string(),
        organization: ServiceOrganization {
            name: format!("shoal cluster {cluster_id}"),
            url: url.clone(),
        },
        documentation_url: format!("{url}/openapi.json"),
        environment: "production".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        storage: shoal_storage::SCHEMES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        backend_parameters: convert::BACKEND_PARAMETERS
            .iter()
            .map(|s| s.to_string())
            .collect(),
    })
}

/// `POST /tasks`.
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Json<TesCreateTaskResponse>, ApiError> {
    let task: TesTask = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid task: {e}")))?;
    let id = new_task_id(state.cluster.node_id());
    let mut spec =
        convert::job_spec(&task, id.clone(), caller.name.clone()).map_err(ApiError::bad_request)?;
    spec.idempotency = crate::http::idempotency(&headers, &body)?;
    let command = Command::SubmitJob {
        spec: Box::new(spec),
        datums: vec![shoal_raft::job::NewDatum::task()],
        seal: true,
        steward: None,
    };
    // With a slot free, this node claims the task in the entry that records it.
    match state.cluster.write_and_claim(command).await? {
        // With an idempotency key, the job a first submission made.
        Outcome::JobSubmitted { job_id, .. } => Ok(Json(TesCreateTaskResponse { id: job_id })),
        Outcome::KeyReused { job_id } => Err(crate::http::key_reused(&job_id)),
        Outcome::Refused { reason } => Err(ApiError::bad_request(reason)),
        other => Err(ApiError::internal(format!("unexpected outcome {other:?}"))),
    }
}

/// A node's name for task logs, or its id once it left the registry.
fn node_name(state: &shoal_raft::state::State, node_id: u64) -> String {
    state
        .nodes
        .get(&node_id)
        .map(|n| n.info.name.clone())
        .unwrap_or_else(|| format_node_id(node_id))
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("task {id:?} not found"))
}

/// The task `id` and its datum, if `caller` may see it.
fn find_task<'a>(
    state: &'a shoal_raft::state::State,
    id: &str,
    caller: &Caller,
) -> Result<(&'a shoal_raft::job::Job, &'a Datum), ApiError> {
    let job = state
        .job(id)
        .filter(|job| job.spec.kind == JobKind::Task && caller.sees(&job.spec.owner))
        .ok_or_else(|| not_found(id))?;
    let datum = state
        .datums_of(job.seq)
        .next()
        .ok_or_else(|| not_found(id))?;
    Ok((job, datum))
}

/// `GET /tasks/{id}`.
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(params): Query<GetParams>,
) -> Result<Json<TesTask>, ApiError> {
    let view = View::parse(params.view.as_deref()).map_err(ApiError::bad_request)?;
    // A task this node already holds final (COMPLETE, CANCELED) changes no more: its own
    // state answers as a linearizable read would, without the leader's round. What a client
    // polls until the end is answered the moment this node applies that end.
    let final_here = {
        let view = state.cluster.view().read();
        find_task(&view, &id, &caller).is_ok_and(|(job, _)| view.is_final(job.seq))
    };
    if !final_here {
        state.cluster.linearize().await?;
    }
    // A running attempt's output so far lives on its node: ask it (outside the state lock).
    let (datum_state, claim, key) = {
        let state_view = state.cluster.view().read();
        let (_, datum) = find_task(&state_view, &id, &caller)?;
        (datum.state, datum.claim, datum.key)
    };
    let running = matches!(datum_state, DatumState::Running | DatumState::Canceling);
    let live = match claim {
        Some(claim) if running && view != View::Minimal => state
            .cluster
            .live_logs(claim.node, key, claim.fence)
            .await
            .map(|logs| (claim.fence, logs)),
        _ => None,
    };
    let state_view = state.cluster.view().read();
    let (job, datum) = find_task(&state_view, &id, &caller)?;
    let node_name = |node_id: u64| node_name(&state_view, node_id);
    let context = convert::Context {
        node_name: &node_name,
        lease_ms: state.cluster.config().lease_ms,
    };
    let live = live.as_ref().map(|(fence, logs)| convert::LiveLogs {
        fence: *fence,
        logs,
    });
    Ok(Json(convert::tes_task(job, datum, view, &context, live)))
}

/// `POST /tasks/{id}:cancel`.
pub async fn action(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
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
        .is_some_and(|job| job.spec.kind == JobKind::Task && caller.sees(&job.spec.owner));
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

/// The parsed query of `GET /tasks`.
#[derive(Debug, Default, PartialEq)]
struct ListQuery {
    name_prefix: String,
    state: Option<TesState>,
    /// (key, value): an empty value asks only for the key.
    tags: Vec<(String, String)>,
    page_size: usize,
    /// List tasks older than this job sequence number.
    before: Option<u64>,
    view: View,
}

/// Page tokens are opaque to clients: the sequence number of the last task listed.
fn page_token(seq: u64) -> String {
    format!("p{seq:x}")
}

fn parse_page_token(token: &str) -> Result<u64, String> {
    token
        .strip_prefix('p')
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .ok_or_else(|| format!("page_token: {token:?} is not a token this server gave"))
}

fn parse_list_query(query: &str) -> Result<ListQuery, String> {
    let mut parsed = ListQuery {
        page_size: PAGE_SIZE_DEFAULT,
        view: View::Minimal,
        ..Default::default()
    };
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let value = value.into_owned();
        match name.as_ref() {
            "name_prefix" => parsed.name_prefix = value,
            "state" => {
                let state: TesState =
                    serde_json::from_value(serde_json::Value::String(value.clone()))
                        .map_err(|_| format!("state: {value:?} is not a TES state"))?;
                parsed.state = Some(state);
            }
            "tag_key" => keys.push(value),
            "tag_value" => values.push(value),
            "page_size" => {
                let size: i64 = value
                    .parse()
                    .map_err(|_| format!("page_size: {value:?} is not a whole number"))?;
                parsed.page_size = match size {
                    ..0 => return Err(format!("page_size: {size} is negative")),
                    0 => PAGE_SIZE_DEFAULT,
                    size => (size as usize).min(PAGE_SIZE_MAX),
                };
            }
            "page_token" if value.is_empty() => {}
            "page_token" => parsed.before = Some(parse_page_token(&value)?),
            "view" => parsed.view = View::parse(Some(&value))?,
            _ => {}
        }
    }
    if values.len() > keys.len() {
        return Err("tag_value: given without a matching tag_key".to_string());
    }
    if keys.len() > TAG_FILTERS_MAX {
        return Err(format!("tag_key: at most {TAG_FILTERS_MAX} filters"));
    }
    values.resize(keys.len(), String::new());
    parsed.tags = keys.into_iter().zip(values).collect();
    Ok(parsed)
}

/// Whether a task's tags pass every filter: the key present, and the value equal unless the
/// filter's value is empty.
fn tags_match(
    tags: &std::collections::BTreeMap<String, String>,
    filters: &[(String, String)],
) -> bool {
    filters.iter().all(|(key, value)| {
        tags.get(key)
            .is_some_and(|have| value.is_empty() || have == value)
    })
}

/// The states a job may be in while its task shows `state`.
fn job_states(state: TesState) -> &'static [JobState] {
    match state {
        TesState::Queued => &[JobState::Queued, JobState::Running],
        TesState::Initializing | TesState::Running => &[JobState::Running],
        TesState::Complete => &[JobState::Done],
        TesState::ExecutorError | TesState::SystemError => &[JobState::Error],
        TesState::Canceling => &[JobState::Canceling],
        TesState::Canceled => &[JobState::Canceled],
        TesState::Unknown | TesState::Paused | TesState::Preempted => &[],
    }
}

/// `GET /tasks`: newest first, filtered, a page at a time. Pages are cut at a task's sequence
/// number, so tasks submitted while a client pages through never shift what it sees next.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Result<Json<TesListTasksResponse>, ApiError> {
    let query = parse_list_query(query.as_deref().unwrap_or("")).map_err(ApiError::bad_request)?;
    state.cluster.linearize().await?;
    let state_view = state.cluster.view().read();
    let node_name = |node_id: u64| node_name(&state_view, node_id);
    let context = convert::Context {
        node_name: &node_name,
        lease_ms: state.cluster.config().lease_ms,
    };
    let upper = query.before.unwrap_or(u64::MAX);
    // Walk the narrowest index the filters allow; every filter is still checked below.
    let candidates: Box<dyn Iterator<Item = JobSeq> + '_> =
        if let Some((key, value)) = query.tags.first() {
            let value = (!value.is_empty()).then_some(value.as_str());
            Box::new(state_view.jobs_tagged_before(key, value, upper))
        } else if let Some(state) = query.state {
            Box::new(state_view.jobs_in_states_before(job_states(state), upper))
        } else {
            Box::new(state_view.jobs.range(..upper).rev().map(|(seq, _)| *seq))
        };
    let mut tasks = Vec::new();
    let mut bytes = 0;
    let mut last_seq = None;
    let mut more = false;
    for seq in candidates {
        let Some(job) = state_view.jobs.get(&seq) else {
            continue;
        };
        let seq = &seq;
        let spec = &job.spec;
        if spec.kind != JobKind::Task
            || !caller.sees(&spec.owner)
            || !spec.name.starts_with(&query.name_prefix)
            || !tags_match(&spec.tags, &query.tags)
        {
            continue;
        }
        let Some(datum) = state_view.datums_of(*seq).next() else {
            continue;
        };
        if query.state.is_some_and(|s| convert::tes_state(datum) != s) {
            continue;
        }
        if tasks.len() == query.page_size || bytes >= LIST_BYTES_MAX {
            more = true;
            break;
        }
        let task = convert::tes_task(job, datum, query.view, &context, None);
        bytes += approx_bytes(&task);
        tasks.push(task);
        last_seq = Some(*seq);
    }
    Ok(Json(TesListTasksResponse {
        tasks,
        next_page_token: last_seq.filter(|_| more).map(page_token),
    }))
}

#[cfg(test)]
mod list_tests {
    use super::*;

    #[test]
    fn list_queries_parse_with_zipped_tags_and_clear_errors() {
        let query = parse_list_query(
            "name_prefix=ab&state=COMPLETE&tag_key=a&tag_value=1&tag_key=b&page_size=5000&view=BASIC&page_token=p1f",
        )
        .expect("valid");
        assert_eq!(query.name_prefix, "ab");
        assert_eq!(query.state, Some(TesState::Complete));
        assert_eq!(
            query.tags,
            [("a".into(), "1".into()), ("b".into(), String::new())]
        );
        assert_eq!(query.page_size, PAGE_SIZE_MAX, "cut to the maximum");
        assert_eq!(query.before, Some(0x1f));
        assert_eq!(query.view, View::Basic);
        assert_eq!(
            parse_list_query("").expect("empty").page_size,
            PAGE_SIZE_DEFAULT
        );
        for (bad, field) in [
            ("state=DONE", "state"),
            ("page_size=-1", "page_size"),
            ("page_size=x", "page_size"),
            ("page_token=zz", "page_token"),
            ("view=ALL", "view"),
            ("tag_value=v", "tag_value"),
        ] {
            let error = parse_list_query(bad).expect_err(bad);
            assert!(error.starts_with(field), "{bad}: {error}");
        }
    }

    #[test]
    fn tag_filters_need_the_key_and_an_equal_value_unless_empty() {
        let tags = std::collections::BTreeMap::from([
            ("foo".to_string(), "bar".to_string()),
            ("empty".to_string(), String::new()),
        ]);
        let filter = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        assert!(tags_match(&tags, &filter(&[("foo", "bar")])));
        assert!(tags_match(&tags, &filter(&[("foo", "")])));
        assert!(tags_match(&tags, &filter(&[("empty", "")])));
        assert!(
            !tags_match(&tags, &filter(&[("foo", "ba")])),
            "no prefix match"
        );
        assert!(!tags_match(
            &tags,
            &filter(&[("foo", "bar"), ("other", "")])
        ));
        assert!(tags_match(&tags, &[]));
    }
}
