//! `GET /openapi.json`: an OpenAPI 3.0 description of every route a node serves. The TES
//! schemas follow the TES v1.1 document; shoal's own routes are described from `crate::api`.
//! [`OPERATIONS`] lists every (method, path) the router serves; a test checks the document
//! describes each, and the HTTP tests call each one.

use serde_json::{Value, json};

/// Every operation the router serves, as (method, OpenAPI path). TES routes are served under
/// both prefixes.
pub const OPERATIONS: &[(&str, &str)] = &[
    ("get", "/"),
    ("get", "/dashboard.js"),
    ("get", "/dashboard.css"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/v1/cluster"),
    ("get", "/v1/cluster/backup"),
    ("post", "/v1/cluster/nodes/{target}:drain"),
    ("post", "/v1/cluster/nodes/{target}:undrain"),
    ("delete", "/v1/cluster/nodes/{target}"),
    ("get", "/ga4gh/tes/v1/service-info"),
    ("get", "/ga4gh/tes/v1/tasks"),
    ("post", "/ga4gh/tes/v1/tasks"),
    ("get", "/ga4gh/tes/v1/tasks/{id}"),
    ("post", "/ga4gh/tes/v1/tasks/{id}:cancel"),
    ("get", "/v1/service-info"),
    ("get", "/v1/tasks"),
    ("post", "/v1/tasks"),
    ("get", "/v1/tasks/{id}"),
    ("post", "/v1/tasks/{id}:cancel"),
    ("get", "/v1/jobs"),
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs/{id}"),
    ("post", "/v1/jobs/{id}:cancel"),
    ("post", "/v1/jobs/{id}:retry"),
    ("get", "/v1/jobs/{id}/datums"),
    ("get", "/v1/jobs/{id}/events"),
    ("get", "/v1/datums/{id}"),
    ("get", "/v1/datums/{id}/logs"),
];

fn schema(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn answer(description: &str, body: Option<Value>) -> Value {
    let mut response = json!({ "description": description });
    if let Some(body) = body {
        response["content"] = json!({ "application/json": { "schema": body } });
    }
    response
}

fn errors() -> Value {
    let error = || answer("error", Some(schema("Error")));
    json!({
        "400": error(), "401": error(), "403": error(), "404": error(), "409": error(),
        "413": error(), "422": answer("the Idempotency-Key was used for a different request",
            Some(schema("Error"))),
        "503": answer("no leader could be reached: nothing was applied", Some(schema("Error"))),
        "504": answer("no answer from the leader: the write may have been applied; send it \
            again with the same Idempotency-Key", Some(schema("Error")))
    })
}

/// The `Idempotency-Key` header of a submission.
fn idempotency_header() -> Value {
    json!({ "name": "Idempotency-Key", "in": "header", "required": false,
        "description": "a key of the client's choosing (1 to 255 visible ASCII characters): \
            the same request sent again with it answers the job the first made",
        "schema": { "type": "string" } })
}

fn operation(summary: &str, parameters: Value, body: Option<Value>, ok: Value) -> Value {
    let mut responses = errors();
    responses["200"] = ok;
    let mut op = json!({ "summary": summary, "parameters": parameters, "responses": responses });
    if let Some(body) = body {
        op["requestBody"] = json!({
            "required": true,
            "content": { "application/json": { "schema": body } }
        });
    }
    op
}

fn query(name: &str, description: &str, kind: Value) -> Value {
    json!({ "name": name, "in": "query", "description": description, "schema": kind })
}

fn path_param(name: &str, description: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "description": description,
            "schema": { "type": "string" } })
}

fn view_param() -> Value {
    query(
        "view",
        "MINIMAL (id, state), BASIC (all but stdout, stderr, input content, system logs) or FULL",
        json!({ "type": "string", "enum": ["MINIMAL", "BASIC", "FULL"], "default": "MINIMAL" }),
    )
}

fn consistency_param() -> Value {
    query(
        "consistency",
        "stale: answer from this node's state without asking the leader",
        json!({ "type": "string", "enum": ["linearizable", "stale"] }),
    )
}

fn tes_paths(prefix: &str, paths: &mut serde_json::Map<String, Value>) {
    paths.insert(
        format!("{prefix}/service-info"),
        json!({ "get": operation("TES service-info", json!([]), None,
            answer("the service", Some(schema("tesServiceInfo")))) }),
    );
    paths.insert(
        format!("{prefix}/tasks"),
        json!({
            "get": operation(
                "list tasks, newest first",
                json!([
                    query("name_prefix", "tasks whose name starts with this", json!({"type": "string"})),
                    query("state", "tasks in this state", schema("tesState")),
                    query("tag_key", "tags the task must have (zipped with tag_value)",
                        json!({"type": "array", "items": {"type": "string"}})),
                    query("tag_value", "values of the tag_key tags; empty: any value",
                        json!({"type": "array", "items": {"type": "string"}})),
                    query("page_size", "tasks per page: default 256, at most 2047",
                        json!({"type": "integer", "format": "int32"})),
                    query("page_token", "next_page_token of the previous page", json!({"type": "string"})),
                    view_param(),
                ]),
                None,
                answer("a page of tasks", Some(schema("tesListTasksResponse"))),
            ),
            "post": operation("create a task", json!([idempotency_header()]), Some(schema("tesTask")),
                answer("the new task's id", Some(schema("tesCreateTaskResponse")))),
        }),
    );
    paths.insert(
        format!("{prefix}/tasks/{{id}}"),
        json!({ "get": operation("get a task",
            json!([path_param("id", "task id"), view_param()]), None,
            answer("the task", Some(schema("tesTask")))) }),
    );
    paths.insert(
        format!("{prefix}/tasks/{{id}}:cancel"),
        json!({ "post": operation("cancel a task (a finished task stays as it is)",
            json!([path_param("id", "task id")]), None,
            answer("canceled", Some(json!({"type": "object"})))) }),
    );
}

fn shoal_paths(paths: &mut serde_json::Map<String, Value>) {
    let text = |description: &str| json!({ "description": description, "content": { "text/plain": { "schema": { "type": "string" } } } });
    paths.insert(
        "/healthz".into(),
        json!({ "get": { "summary": "the process is up", "responses": { "200": text("ok") } } }),
    );
    paths.insert(
        "/readyz".into(),
        json!({ "get": { "summary": "a member of a cluster with a known leader",
            "responses": { "200": text("ready"), "503": text("not ready") } } }),
    );
    paths.insert(
        "/metrics".into(),
        json!({ "get": { "summary": "Prometheus metrics (text format); asks for \
            http.metrics_token as a bearer token when one is set",
            "responses": { "200": text("every metric, text exposition format 0.0.4"),
                "401": text("the metrics token is missing or wrong") } } }),
    );
    for (path, summary, media) in [
        ("/", "the web dashboard's page", "text/html"),
        (
            "/dashboard.js",
            "the web dashboard's script",
            "text/javascript",
        ),
        ("/dashboard.css", "the web dashboard's styles", "text/css"),
    ] {
        paths.insert(
            path.into(),
            json!({ "get": { "summary": summary, "responses": { "200": { "description": summary,
                "content": { media: { "schema": { "type": "string" } } } } } } }),
        );
    }
    paths.insert(
        "/openapi.json".into(),
        json!({ "get": { "summary": "this document",
            "responses": { "200": answer("OpenAPI 3.0", Some(json!({"type": "object"}))) } } }),
    );
    paths.insert(
        "/v1/cluster".into(),
        json!({ "get": operation("the cluster: leader, term, indexes, members",
            json!([consistency_param()]), None, answer("the cluster", Some(schema("ClusterView")))) }),
    );
    let mut backup = answer("the backup file, streamed", None);
    backup["content"] = json!({ "application/octet-stream": {
        "schema": { "type": "string", "format": "binary" } } });
    paths.insert(
        "/v1/cluster/backup".into(),
        json!({ "get": operation(
            "a backup of the replicated state, holding every write acknowledged before the \
             request (administrators; one at a time per node; 429 while one runs)",
            json!([]), None, backup) }),
    );
    let node = path_param("target", "node id (16 hex digits) or name");
    paths.insert(
        "/v1/cluster/nodes/{target}:drain".into(),
        json!({ "post": operation("stop a node claiming work (administrators)",
            json!([node]), None, answer("drained", Some(schema("DrainView")))) }),
    );
    paths.insert(
        "/v1/cluster/nodes/{target}:undrain".into(),
        json!({ "post": operation("let a drained node claim work again (administrators)",
            json!([node]), None, answer("undrained", Some(schema("DrainView")))) }),
    );
    paths.insert(
        "/v1/cluster/nodes/{target}".into(),
        json!({ "delete": operation("remove a node from the cluster (administrators)",
            json!([node]), None, answer("removed", Some(schema("RemovedView")))) }),
    );
}

fn pipeline_paths(paths: &mut serde_json::Map<String, Value>) {
    let page = || {
        json!([
            query(
                "page_size",
                "per page: default 100, at most 1000",
                json!({"type": "integer"})
            ),
            query(
                "page_token",
                "next_page_token of the previous page",
                json!({"type": "string"})
            ),
        ])
    };
    let with = |mut params: Value, more: Vec<Value>| {
        if let Some(list) = params.as_array_mut() {
            list.extend(more);
        }
        params
    };
    let job = path_param("id", "job id, or a pipeline name (its newest job)");
    let datum = path_param("id", "datum id (16 hex digits)");
    let datum_job = query(
        "job",
        "the job the datum belongs to (default: the newest with it)",
        json!({"type": "string"}),
    );
    let mut create = operation(
        "submit a pipeline spec (JSON, or YAML with Content-Type application/yaml)",
        json!([
            idempotency_header(),
            query(
                "reprocess",
                "true: run every datum; false (default, or the spec's `reprocess`): skip datums an \
            earlier finished job of the pipeline did under the same transform whose outputs \
            are still published",
                json!({"type": "boolean"})
            )
        ]),
        Some(schema("PipelineSpec")),
        answer(
            "the job is in the log; datums follow as its input is listed",
            Some(schema("JobCreatedView")),
        ),
    );
    create["requestBody"]["content"]["application/yaml"] =
        json!({ "schema": schema("PipelineSpec") });
    paths.insert(
        "/v1/jobs".into(),
        json!({
            "get": operation("list pipeline jobs (or tasks, or both), newest first",
                with(page(), vec![
                    query("state", "queued, running, canceling, done, error or canceled",
                        json!({"type": "string"})),
                    query("name", "jobs of this pipeline name", json!({"type": "string"})),
                    query("kind", "pipeline (the default), task (TES tasks) or all",
                        json!({"type": "string", "enum": ["pipeline", "task", "all"]})),
                ]),
                None, answer("a page of jobs", Some(schema("JobListView")))),
            "post": create,
        }),
    );
    paths.insert(
        "/v1/jobs/{id}".into(),
        json!({ "get": operation("a job: spec, state, counts per datum state, times, rate, first errors",
            json!([job.clone()]), None, answer("the job", Some(schema("JobView")))) }),
    );
    paths.insert(
        "/v1/jobs/{id}:cancel".into(),
        json!({ "post": operation("cancel a job: what waits is canceled, what runs is stopped",
            json!([job.clone()]), None, answer("the job", Some(schema("JobView")))) }),
    );
    paths.insert(
        "/v1/jobs/{id}:retry".into(),
        json!({ "post": operation("failed datums get a fresh set of tries (at most 10 rounds)",
            json!([job.clone()]), None, answer("the job", Some(schema("JobView")))) }),
    );
    paths.insert(
        "/v1/jobs/{id}/datums".into(),
        json!({ "get": operation("a job's datums in order",
            with(page(), vec![job.clone(), query("state", "pending, claimed, running, publishing, \
                canceling, done, failed, canceled or skipped", json!({"type": "string"}))]),
            None, answer("a page of datums", Some(schema("DatumListView")))) }),
    );
    paths.insert(
        "/v1/jobs/{id}/events".into(),
        json!({ "get": operation("the job's progress as server-sent events (`event: job`, \
            data: the job without its spec): one at once, then one per change of state, counts \
            or errors (at most 5 a second); the stream ends after the event showing the job \
            ended. 503 when the node serves too many streams",
            json!([job.clone()]), None, json!({ "description": "an event stream",
                "content": { "text/event-stream": { "schema": { "type": "string" } } } })) }),
    );
    paths.insert(
        "/v1/datums/{id}".into(),
        json!({ "get": operation("a datum: inputs, and each attempt with its node, times, exit code, error and output",
            json!([datum.clone(), datum_job.clone()]), None,
            answer("the datum", Some(schema("DatumView")))) }),
    );
    paths.insert(
        "/v1/datums/{id}/logs".into(),
        json!({ "get": operation("what each attempt's executors printed (so far, while running)",
            json!([datum, datum_job]), None, answer("the logs", Some(schema("DatumLogsView")))) }),
    );
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({ "type": "object", "required": required, "properties": properties,
            "additionalProperties": false })
}

fn schemas() -> Value {
    let string = || json!({ "type": "string" });
    let strings = || json!({ "type": "array", "items": { "type": "string" } });
    let string_map = || json!({ "type": "object", "additionalProperties": { "type": "string" } });
    let time = || json!({ "type": "string", "format": "date-time" });
    let boolean = || json!({ "type": "boolean" });
    let int = || json!({ "type": "integer", "format": "int32" });
    let array_of = |name: &str| json!({ "type": "array", "items": schema(name) });
    let optional_int = || json!({ "type": ["integer", "null"] });
    json!({
        "Error": object(&["error"], json!({ "error": string() })),
        "tesState": { "type": "string", "enum": [
            "UNKNOWN", "QUEUED", "INITIALIZING", "RUNNING", "PAUSED", "COMPLETE",
            "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED", "CANCELING"] },
        "tesFileType": { "type": "string", "enum": ["FILE", "DIRECTORY"] },
        "tesInput": object(&["path"], json!({
            "name": string(), "description": string(), "url": string(), "path": string(),
            "type": schema("tesFileType"), "content": string(), "streamable": boolean() })),
        "tesOutput": object(&["path", "url"], json!({
            "name": string(), "description": string(), "url": string(), "path": string(),
            "path_prefix": string(), "type": schema("tesFileType") })),
        "tesResources": object(&[], json!({
            "cpu_cores": int(), "preemptible": boolean(),
            "ram_gb": { "type": "number" }, "disk_gb": { "type": "number" },
            "zones": strings(), "backend_parameters": string_map(),
            "backend_parameters_strict": boolean() })),
        "tesExecutor": object(&["image", "command"], json!({
            "image": string(), "command": strings(), "workdir": string(), "stdin": string(),
            "stdout": string(), "stderr": string(), "env": string_map(),
            "ignore_error": boolean() })),
        "tesExecutorLog": object(&[], json!({
            "start_time": time(), "end_time": time(), "stdout": string(), "stderr": string(),
            "exit_code": int() })),
        "tesOutputFileLog": object(&["url", "path", "size_bytes"], json!({
            "url": string(), "path": string(),
            "size_bytes": { "type": "string", "description": "int64 as a string" } })),
        "tesTaskLog": object(&["logs", "outputs"], json!({
            "logs": array_of("tesExecutorLog"), "metadata": string_map(),
            "start_time": time(), "end_time": time(), "outputs": array_of("tesOutputFileLog"),
            "system_logs": strings() })),
        "tesTask": object(&["executors"], json!({
            "id": string(), "state": schema("tesState"), "name": string(),
            "description": string(), "inputs": array_of("tesInput"),
            "outputs": array_of("tesOutput"), "resources": schema("tesResources"),
            "executors": array_of("tesExecutor"), "volumes": strings(),
            "tags": string_map(), "logs": array_of("tesTaskLog"),
            "creation_time": time() })),
        "tesCreateTaskResponse": object(&["id"], json!({ "id": string() })),
        "tesListTasksResponse": object(&["tasks"], json!({
            "tasks": array_of("tesTask"), "next_page_token": string() })),
        "tesServiceInfo": object(&["id", "name", "type", "organization", "version"], json!({
            "id": string(), "name": string(),
            "type": object(&["group", "artifact", "version"],
                json!({ "group": string(), "artifact": string(), "version": string() })),
            "description": string(),
            "organization": object(&["name", "url"], json!({ "name": string(), "url": string() })),
            "documentationUrl": string(), "environment": string(), "version": string(),
            "storage": strings(), "tesResources_backend_parameters": strings() })),
        "ClusterView": object(&["node_id", "term", "format_version", "node_formats", "consistent", "members"], json!({
            "cluster_id": string(), "node_id": string(), "leader": string(),
            "term": { "type": "integer" }, "applied_index": optional_int(),
            "last_log_index": optional_int(), "snapshot_index": optional_int(),
            "purged_index": optional_int(),
            "format_version": { "type": "integer", "description": "the format the cluster writes" },
            "node_formats": { "type": "array", "items": { "type": "integer" }, "minItems": 2,
                "maxItems": 2, "description": "oldest and newest format the answering node reads" },
            "consistent": boolean(),
            "members": array_of("MemberView") })),
        "MemberView": object(&["node_id", "name", "role", "leader", "draining"], json!({
            "node_id": string(), "name": string(), "peer_id": string(), "addresses": strings(),
            "http_url": string(), "role": { "type": "string", "enum": ["voter", "learner"] },
            "leader": boolean(), "slots": optional_int(), "running": optional_int(),
            "executor": string(), "last_heartbeat": time(), "draining": boolean() })),
        "DrainView": object(&["node_id", "draining"],
            json!({ "node_id": string(), "draining": boolean() })),
        "RemovedView": object(&["removed"], json!({ "removed": string() })),
    })
}

/// Every schema the document refers to.
fn all_schemas() -> Value {
    let mut all = schemas();
    if let (Some(all), Value::Object(more)) = (all.as_object_mut(), pipeline_schemas()) {
        all.extend(more);
    }
    all
}

/// The schemas of the pipeline routes.
fn pipeline_schemas() -> Value {
    let string = || json!({ "type": "string" });
    let strings = || json!({ "type": "array", "items": { "type": "string" } });
    let time = || json!({ "type": "string", "format": "date-time" });
    let boolean = || json!({ "type": "boolean" });
    let int = || json!({ "type": "integer", "format": "int32" });
    let array_of = |name: &str| json!({ "type": "array", "items": schema(name) });
    let optional_int = || json!({ "type": ["integer", "null"] });
    let error = object(
        &["datum", "index", "message"],
        json!({ "datum": string(), "index": int(), "message": string() }),
    );
    let output = object(
        &["path", "url", "size_bytes"],
        json!({ "path": string(), "url": string(), "size_bytes": { "type": "integer" } }),
    );
    let input = object(
        &["name", "url", "path", "kind"],
        json!({ "name": string(), "url": string(), "path": string(), "kind": string() }),
    );
    let attempt_logs = object(
        &["attempt", "node", "executors"],
        json!({ "attempt": int(), "node": string(), "executors": array_of("ExecutorLogView") }),
    );
    json!({
        "PipelineSpec": { "type": "object", "description": "a Falconeri/Pachyderm pipeline \
            spec: pipeline.name, transform (image, cmd, env, stdin, working_dir, \
            accept_return_code), parallelism_spec.constant, resource_requests (cpu, memory), \
            datum_tries, datum_timeout, job_timeout, reprocess, input (atom/pfs, cross, \
            union), egress.URI; see the README" },
        "JobCreatedView": object(&["id", "name", "ignored"],
            json!({ "id": string(), "name": string(), "ignored": strings() })),
        "DatumCountsView": object(&[], json!({
            "pending": int(), "claimed": int(), "running": int(), "publishing": int(),
            "canceling": int(), "done": int(), "failed": int(), "canceled": int(),
            "skipped": int(), "total": int() })),
        "JobView": object(&["id", "name", "state", "counts"], json!({
            "id": string(), "name": string(), "state": string(), "owner": string(),
            "spec": { "type": "object" }, "counts": schema("DatumCountsView"),
            "listing": boolean(), "created": time(), "started": time(), "ended": time(),
            "datums_per_second": { "type": "number" }, "error": string(),
            "first_errors": { "type": "array", "items": error },
            "steward": string() })),
        "JobListView": object(&["jobs"], json!({
            "jobs": array_of("JobView"), "next_page_token": string() })),
        "ExecutorLogView": object(&["stdout", "stderr"], json!({
            "exit_code": optional_int(), "started": time(), "ended": time(),
            "stdout": string(), "stderr": string() })),
        "AttemptView": object(&["attempt", "node", "claimed"], json!({
            "attempt": int(), "node": string(), "claimed": time(), "started": time(),
            "ended": time(), "outcome": string(), "exit_code": optional_int(),
            "error": string(), "system_logs": strings(),
            "executors": array_of("ExecutorLogView"),
            "outputs": { "type": "array", "items": output } })),
        "DatumView": object(&["id", "job", "index", "state"], json!({
            "id": string(), "job": string(), "index": int(), "state": string(),
            "inputs": { "type": "array", "items": input },
            "attempts": array_of("AttemptView"),
            "reused_from": { "type": "object", "description": "a skipped datum: the earlier \
                job's datum whose outputs it reuses",
                "properties": { "job": string(), "index": int() } } })),
        "DatumListView": object(&["datums"], json!({
            "datums": array_of("DatumView"), "next_page_token": string() })),
        "DatumLogsView": object(&["id", "job", "attempts"], json!({
            "id": string(), "job": string(),
            "attempts": { "type": "array", "items": attempt_logs } })),
    })
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for prefix in super::TES_PREFIXES {
        tes_paths(prefix, &mut paths);
    }
    shoal_paths(&mut paths);
    pipeline_paths(&mut paths);
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "shoal",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every node serves all of it. TES v1.1 under /ga4gh/tes/v1 and /v1; \
                shoal's own API under /v1. With http.tokens set, every route but /healthz, \
                /readyz and /openapi.json needs Authorization: Bearer <token>."
        },
        "components": {
            "schemas": all_schemas(),
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } }
        },
        "security": [{ "bearer": [] }],
        "paths": paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_operation_is_described_and_every_schema_reference_resolves() {
        let doc = document();
        for (method, path) in OPERATIONS {
            assert!(
                doc["paths"][path][method].is_object(),
                "{method} {path} is not described"
            );
        }
        let described: usize = doc["paths"]
            .as_object()
            .expect("paths")
            .values()
            .map(|ops| ops.as_object().map_or(0, |o| o.len()))
            .sum();
        assert_eq!(described, OPERATIONS.len(), "described but not served");
        let text = doc.to_string();
        for reference in text.split("#/components/schemas/").skip(1) {
            let name = reference.split('"').next().expect("name");
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "{name} is referenced but not defined"
            );
        }
    }
}
