//! `GET /metrics`: the node's Prometheus registry (prometheus-client, OpenMetrics text).
//!
//! Three kinds of figures:
//! - counted where the work happens: the log's (`shoal_raft_*`, see `shoal_raft::metrics`),
//!   the worker's (`shoal_worker_*`, see `shoal_worker::metrics`) and HTTP's (`shoal_http_*`,
//!   counted by [`track`]);
//! - read at each scrape from Raft: term, leadership, indexes, members;
//! - read at each scrape from the replicated state, so every node that applied the same log
//!   says the same: jobs and datums by state (`shoal_jobs`, `shoal_datums`) and the events
//!   the applied entries decided (`shoal_claims_granted_total`, `shoal_steals_total`,
//!   `shoal_lease_expiries_total`, `shoal_stale_reports_total`).

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use shoal_raft::Cluster;
use shoal_raft::job::{DatumState, JobKind, JobState};

use crate::http::AppState;
use crate::pipeline::views::{datum_state_name, job_state_name};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// The route template (`/v1/tasks/{target}`), `unmatched` when no route matched.
    route: String,
    method: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

/// The node's registry and its HTTP instruments.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Every instrument of this node, the cluster's figures read from `cluster` at each scrape.
    pub fn new(cluster: Cluster) -> Metrics {
        let mut registry = Registry::with_prefix("shoal");
        shoal_raft::metrics::register(&mut registry);
        shoal_worker::metrics::register(&mut registry);
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            shoal_raft::metrics::duration_histogram,
        );
        let http = registry.sub_registry_with_prefix("http");
        http.register(
            "requests",
            "HTTP requests answered, by route template, method and status",
            requests.clone(),
        );
        http.register(
            "request_duration_seconds",
            "Time to answer an HTTP request, by route template",
            latency.clone(),
        );
        registry.register_collector(Box::new(ClusterCollector { cluster }));
        Metrics {
            registry,
            requests,
            latency,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    fn record(&self, route: String, method: String, status: u16, started: Instant) {
        self.latency
            .get_or_create(&RouteLabels {
                route: route.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status,
            })
            .inc();
    }
}

/// Middleware counting each request by the route it matched.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    // A client may send any method name: only the standard ones get series of their own.
    let method = match request.method().as_str() {
        known @ ("GET" | "POST" | "PUT" | "DELETE" | "HEAD" | "OPTIONS" | "PATCH") => known,
        _ => "other",
    }
    .to_string();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    state.metrics.record(route, method, status, started);
    response
}

/// `GET /metrics`.
pub async fn serve(State(state): State<AppState>) -> Response {
    match state.metrics.render() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded\n",
        )
            .into_response(),
    }
}

/// Reads Raft's figures and the replicated state at each scrape.
struct ClusterCollector {
    cluster: Cluster,
}

impl std::fmt::Debug for ClusterCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCollector").finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    /// `task` (TES) or `pipeline`.
    kind: &'static str,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: &'static str,
}

/// Writes one gauge without labels.
fn gauge(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: i64) -> Fmt {
    let metric = ConstGauge::new(value);
    let help = format!("{help}.");
    metric.encode(encoder.encode_descriptor(name, &help, None, metric.metric_type())?)
}

/// Writes one counter without labels.
fn counter(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> Fmt {
    let metric = ConstCounter::new(value);
    let help = format!("{help}.");
    metric.encode(encoder.encode_descriptor(name, &help, None, metric.metric_type())?)
}

/// Writes one gauge with a value per label set.
fn gauges<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (L, i64)>,
) -> Fmt {
    let help = format!("{help}.");
    let mut family = encoder.encode_descriptor(
        name,
        &help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (labels, value) in values {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

type Fmt = Result<(), std::fmt::Error>;

fn index(index: Option<u64>) -> i64 {
    index.map_or(0, |i| i64::try_from(i).unwrap_or(i64::MAX))
}

fn kind_name(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Task => "task",
        JobKind::Pipeline => "pipeline",
    }
}

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Fmt {
        let status = self.cluster.status();
        let e = &mut encoder;
        gauge(
            e,
            "raft_term",
            "Raft term this node is in",
            status.term as i64,
        )?;
        let leads = status.leader == Some(status.node_id);
        gauge(
            e,
            "raft_is_leader",
            "1 while this node is the leader",
            i64::from(leads),
        )?;
        gauge(
            e,
            "raft_leader_known",
            "1 while this node knows a leader",
            i64::from(status.leader.is_some()),
        )?;
        gauge(
            e,
            "raft_applied_index",
            "Index of the last log entry this node applied",
            index(status.applied_index),
        )?;
        gauge(
            e,
            "raft_last_log_index",
            "Index of the last entry in this node's log",
            index(status.last_log_index),
        )?;
        gauge(
            e,
            "raft_snapshot_index",
            "Last log entry covered by this node's latest snapshot",
            index(status.snapshot_index),
        )?;
        let voters = status
            .members
            .iter()
            .filter(|m| m.role == shoal_raft::Role::Voter)
            .count() as i64;
        let learners = status.members.len() as i64 - voters;
        gauges(
            e,
            "cluster_members",
            "Members of the Raft group, by role",
            [
                (RoleLabels { role: "voter" }, voters),
                (RoleLabels { role: "learner" }, learners),
            ],
        )?;
        let config = self.cluster.config();
        gauge(
            e,
            "worker_slots",
            "Attempts this node runs at once at most",
            i64::from(config.slots),
        )?;
        gauge(
            e,
            "worker_running",
            "Attempts this node runs now",
            i64::from(self.cluster.running()),
        )?;

        // The replicated state keeps these counts: a short read lock, then encoding.
        let (jobs, datums, tally, nodes) = {
            let state = self.cluster.view().read();
            let jobs = state.job_counts().clone();
            let datums = state.datum_counts().clone();
            let draining = state.nodes.values().filter(|n| n.draining).count() as i64;
            (
                jobs,
                datums,
                state.tally,
                (state.nodes.len() as i64, draining),
            )
        };
        // Every combination, zeros included, so a series reads 0 instead of vanishing.
        let mut job_series = Vec::new();
        for kind in [JobKind::Task, JobKind::Pipeline] {
            for job_state in JobState::ALL {
                let n = jobs.get(&(kind, job_state)).copied().unwrap_or(0);
                let labels = JobLabels {
                    kind: kind_name(kind),
                    state: job_state_name(job_state),
                };
                job_series.push((labels, i64::try_from(n).unwrap_or(i64::MAX)));
            }
        }
        gauges(
            e,
            "jobs",
            "Jobs in the replicated state, by kind (task or pipeline) and state",
            job_series,
        )?;
        gauges(
            e,
            "datums",
            "Datums in the replicated state, by state (a TES task is a job of one datum)",
            DatumState::ALL.into_iter().map(|state| {
                let n = datums.get(&state).copied().unwrap_or(0);
                let labels = StateLabels {
                    state: datum_state_name(state),
                };
                (labels, i64::try_from(n).unwrap_or(i64::MAX))
            }),
        )?;
        gauge(e, "nodes", "Nodes in the registry", nodes.0)?;
        gauge(e, "nodes_draining", "Nodes draining", nodes.1)?;
        counter(
            e,
            "claims_granted",
            "Datums granted by claims in the entries this process applied",
            tally.claims_granted,
        )?;
        counter(
            e,
            "steals",
            "Queued claims taken from another node's queue, in the entries this process applied",
            tally.steals,
        )?;
        counter(
            e,
            "lease_expiries",
            "Claims released because their node's lease expired, in the entries this process applied",
            tally.lease_expiries,
        )?;
        counter(
            e,
            "stale_reports",
            "Reports refused for a stale fence, in the entries this process applied",
            tally.stale_reports,
        )?;
        Ok(())
    }
}
