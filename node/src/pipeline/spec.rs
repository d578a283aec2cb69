//! The pipeline spec (Falconeri's, with Pachyderm's additions) in JSON or YAML, validated
//! into a replicated `JobSpec`. Every error names the field. Fields only Kubernetes can honour
//! are accepted and reported as ignored; any other unknown field is refused.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde::de::IgnoredAny;
use shoal_raft::job::{
    ExecutorSpec, InputSpec, JobKind, JobSpec, PipelineInput, PipelineSpec, Resources, TaskSpec,
};
use shoal_raft::state::DATUM_TRIES_MAX;

/// Largest spec accepted (it is kept in the log with the job).
pub const SPEC_BYTES_MAX: usize = 256 * 1024;
/// Most atoms one input may combine.
pub const ATOMS_MAX: usize = 64;
/// Deepest nesting of cross and union.
pub const INPUT_DEPTH_MAX: usize = 16;
/// Longest name, URI, glob or path.
pub const TEXT_BYTES_MAX: usize = 4096;
/// Most arguments, environment variables, stdin lines and accepted exit codes.
pub const LIST_MAX: usize = 4096;
/// Largest `transform.stdin`, all lines together.
pub const STDIN_BYTES_MAX: usize = 128 * 1024;
/// Longest `datum_timeout` and `job_timeout`.
pub const TIMEOUT_MAX: Duration = Duration::from_secs(365 * 24 * 3600);
/// Largest `resource_requests.memory` and `cpu`.
pub const MEMORY_BYTES_MAX: u64 = 1 << 40;
pub const CPU_MILLIS_MAX: u64 = 1024 * 1000;
/// Datum tries when the spec names none (Pachyderm's default).
pub const DATUM_TRIES_DEFAULT: u32 = 3;
/// Where `transform.stdin` is written in the container, to be the command's standard input.
pub const STDIN_PATH: &str = "/shoal/stdin";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    pipeline: Pipeline,
    #[serde(default)]
    description: Option<String>,
    transform: Transform,
    #[serde(default)]
    parallelism_spec: Option<ParallelismSpec>,
    #[serde(default)]
    resource_requests: Option<ResourceRequests>,
    #[serde(default)]
    datum_tries: Option<u32>,
    #[serde(default)]
    datum_timeout: Option<String>,
    #[serde(default)]
    job_timeout: Option<String>,
    /// shoal's: run every datum, even those an earlier job of the pipeline already did.
    #[serde(default)]
    reprocess: bool,
    /// Kubernetes only.
    #[serde(default)]
    node_selector: Option<IgnoredAny>,
    input: Input,
    egress: Egress,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pipeline {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Transform {
    image: String,
    cmd: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    stdin: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    accept_return_code: Option<Vec<i32>>,
    /// Kubernetes only.
    #[serde(default)]
    secrets: Option<IgnoredAny>,
    #[serde(default)]
    image_pull_policy: Option<IgnoredAny>,
    #[serde(default)]
    service_account: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ParallelismSpec {
    constant: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceRequests {
    #[serde(default)]
    memory: Option<String>,
    #[serde(default)]
    cpu: Option<Cpu>,
}

/// Cores as a number (`1.2`) or a Kubernetes quantity (`"500m"`, `"2"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Cpu {
    Cores(f64),
    Quantity(String),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Input {
    #[serde(alias = "pfs")]
    Atom(Atom),
    Cross(Vec<Input>),
    Union(Vec<Input>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Atom {
    #[serde(rename = "URI", alias = "uri")]
    uri: String,
    #[serde(default)]
    repo: Option<String>,
    /// The directory below `/pfs/` (Pachyderm); defaults to `repo`.
    #[serde(default)]
    name: Option<String>,
    glob: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Egress {
    #[serde(rename = "URI", alias = "uri")]
    uri: String,
}

/// A submitted spec, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub spec: JobSpec,
    /// Fields accepted but not honoured (Kubernetes only), as dotted paths.
    pub ignored: Vec<String>,
}

/// The spec's text format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

impl Format {
    /// From a `Content-Type` (YAML types; anything else is JSON).
    pub fn from_content_type(content_type: Option<&str>) -> Format {
        let essence = content_type
            .and_then(|t| t.split(';').next())
            .map(|t| t.trim().to_ascii_lowercase());
        match essence.as_deref() {
            Some("application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml") => {
                Format::Yaml
            }
            _ => Format::Json,
        }
    }
}

/// Parses and validates a spec into a job with id `id` owned by `owner`.
pub fn parse(body: &[u8], format: Format, id: String, owner: String) -> Result<Parsed, String> {
    if body.len() > SPEC_BYTES_MAX {
        return Err(format!("the spec is larger than {SPEC_BYTES_MAX} bytes"));
    }
    // Both formats go through one JSON value, so errors read the same and the job keeps the
    // spec as JSON for `describe`.
    let value: serde_json::Value = match format {
        Format::Json => serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?,
        Format::Yaml => yaml_serde::from_slice(body).map_err(|e| format!("invalid YAML: {e}"))?,
    };
    // YAML aliases can make a small text a large value: bound what the log would keep.
    let source = value.to_string();
    if source.len() > SPEC_BYTES_MAX {
        return Err(format!(
            "the spec is larger than {SPEC_BYTES_MAX} bytes once its aliases are expanded"
        ));
    }
    let spec: Spec = serde_path_to_error::deserialize(&value).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        }
    })?;
    let ignored = ignored_fields(&spec);
    let job = job_spec(spec, source, id, owner)?;
    Ok(Parsed { spec: job, ignored })
}

fn ignored_fields(spec: &Spec) -> Vec<String> {
    let transform = &spec.transform;
    [
        ("node_selector", spec.node_selector.is_some()),
        ("transform.secrets", transform.secrets.is_some()),
        (
            "transform.image_pull_policy",
            transform.image_pull_policy.is_some(),
        ),
        (
            "transform.service_account",
            transform.service_account.is_some(),
        ),
    ]
    .into_iter()
    .filter(|(_, present)| *present)
    .map(|(name, _)| name.to_string())
    .collect()
}

fn text(field: &str, value: &str) -> Result<(), String> {
    if value.len() > TEXT_BYTES_MAX {
        return Err(format!("{field}: longer than {TEXT_BYTES_MAX} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{field}: contains control characters"));
    }
    Ok(())
}

fn required(field: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("{field}: required"));
    }
    text(field, value)
}

fn list<T>(field: &str, items: &[T]) -> Result<(), String> {
    if items.len() > LIST_MAX {
        return Err(format!("{field}: at most {LIST_MAX} entries"));
    }
    Ok(())
}

fn job_spec(spec: Spec, source: String, id: String, owner: String) -> Result<JobSpec, String> {
    required("pipeline.name", &spec.pipeline.name)?;
    let description = spec.description.unwrap_or_default();
    text("description", &description)?;
    let (executor, stdin) = transform(spec.transform)?;
    let datum_tries = spec.datum_tries.unwrap_or(DATUM_TRIES_DEFAULT);
    if datum_tries == 0 || datum_tries > DATUM_TRIES_MAX {
        return Err(format!("datum_tries: must be 1 to {DATUM_TRIES_MAX}"));
    }
    let datum_timeout_ms = timeout("datum_timeout", spec.datum_timeout.as_deref())?;
    let job_timeout_ms = timeout("job_timeout", spec.job_timeout.as_deref())?;
    let mut names = Vec::new();
    let input = input("input", &spec.input, 0, &mut names)?;
    if names.len() > ATOMS_MAX {
        return Err(format!("input: at most {ATOMS_MAX} atoms"));
    }
    let egress_uri = spec.egress.uri;
    uri("egress.URI", &egress_uri, true)?;
    Ok(JobSpec {
        id,
        kind: JobKind::Pipeline,
        name: spec.pipeline.name,
        description,
        tags: BTreeMap::new(),
        owner,
        task: TaskSpec {
            executors: vec![executor],
            inputs: stdin.into_iter().collect(),
            outputs: Vec::new(),
            volumes: Vec::new(),
            resources: resources(spec.resource_requests)?,
        },
        parallelism: spec.parallelism_spec.map_or(0, |p| p.constant),
        datum_tries,
        datum_timeout_ms,
        source,
        pipeline: Some(PipelineSpec {
            input,
            egress_uri,
            job_timeout_ms,
            reprocess: spec.reprocess,
        }),
        idempotency: None,
    })
}

/// The one executor, and the input that carries `transform.stdin` (if any).
fn transform(t: Transform) -> Result<(ExecutorSpec, Option<InputSpec>), String> {
    required("transform.image", &t.image)?;
    if t.cmd.is_empty() {
        return Err("transform.cmd: needs at least the program".to_string());
    }
    list("transform.cmd", &t.cmd)?;
    for (i, arg) in t.cmd.iter().enumerate() {
        if arg.len() > TEXT_BYTES_MAX {
            return Err(format!(
                "transform.cmd[{i}]: longer than {TEXT_BYTES_MAX} bytes"
            ));
        }
    }
    list("transform.env", &t.env.keys().collect::<Vec<_>>())?;
    for (key, value) in &t.env {
        if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
            return Err(format!("transform.env: {key:?} is not a variable name"));
        }
        if key.len() > TEXT_BYTES_MAX || value.len() > TEXT_BYTES_MAX {
            return Err(format!(
                "transform.env: {key:?} is longer than {TEXT_BYTES_MAX} bytes (name or value)"
            ));
        }
    }
    let workdir = t.working_dir.unwrap_or_default();
    if !workdir.is_empty() && (!workdir.starts_with('/') || workdir.split('/').any(|s| s == "..")) {
        return Err(format!(
            "transform.working_dir: {workdir:?} is not an absolute path without '..'"
        ));
    }
    text("transform.working_dir", &workdir)?;
    let accept = t.accept_return_code.unwrap_or_default();
    list("transform.accept_return_code", &accept)?;
    let stdin = match t.stdin {
        Some(lines) if !lines.is_empty() => {
            list("transform.stdin", &lines)?;
            let content: String = lines.iter().map(|line| format!("{line}\n")).collect();
            if content.len() > STDIN_BYTES_MAX {
                return Err(format!(
                    "transform.stdin: longer than {STDIN_BYTES_MAX} bytes"
                ));
            }
            Some(InputSpec {
                name: "stdin".to_string(),
                path: STDIN_PATH.to_string(),
                content: Some(content),
                ..InputSpec::default()
            })
        }
        _ => None,
    };
    let executor = ExecutorSpec {
        image: t.image,
        command: t.cmd,
        workdir,
        stdin: stdin
            .as_ref()
            .map(|_| STDIN_PATH.to_string())
            .unwrap_or_default(),
        env: t.env,
        accept_exit_codes: accept,
        ..ExecutorSpec::default()
    };
    Ok((executor, stdin))
}

fn timeout(field: &str, value: Option<&str>) -> Result<u64, String> {
    let Some(value) = value else {
        return Ok(0);
    };
    let duration = humantime::parse_duration(value.trim())
        .map_err(|e| format!("{field}: {value:?} is not a duration like \"10m\" or \"2h\": {e}"))?;
    if duration.is_zero() || duration > TIMEOUT_MAX {
        return Err(format!("{field}: must be more than 0 and at most a year"));
    }
    Ok(duration.as_millis() as u64)
}

fn resources(requests: Option<ResourceRequests>) -> Result<Resources, String> {
    let Some(requests) = requests else {
        return Ok(Resources::default());
    };
    let ram_bytes = match &requests.memory {
        Some(memory) => memory_bytes(memory)
            .filter(|bytes| *bytes <= MEMORY_BYTES_MAX)
            .ok_or_else(|| {
                format!(
                    "resource_requests.memory: {memory:?} is not a size like \"500Mi\" or \"2G\" up to 1Ti"
                )
            })?,
        None => 0,
    };
    let cpu_millis = match &requests.cpu {
        Some(cpu) => cpu_millis(cpu)
            .filter(|millis| *millis > 0 && *millis <= CPU_MILLIS_MAX)
            .ok_or_else(|| {
                format!(
                    "resource_requests.cpu: {cpu:?} is not a number of cores above 0 up to 1024"
                )
            })?,
        None => 0,
    };
    Ok(Resources {
        cpu_millis,
        ram_bytes,
        ..Resources::default()
    })
}

/// A Kubernetes memory quantity: bytes, or a number with a decimal (`k`, `M`, `G`, `T`) or
/// binary (`Ki`, `Mi`, `Gi`, `Ti`) suffix.
pub(crate) fn memory_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale: f64 = match suffix {
        "" => 1.0,
        "k" | "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = number * scale;
    (1.0..1e15).contains(&bytes).then_some(bytes as u64)
}

fn cpu_millis(cpu: &Cpu) -> Option<u64> {
    let cores = match cpu {
        Cpu::Cores(cores) => *cores,
        Cpu::Quantity(text) => match text.trim().strip_suffix('m') {
            Some(millis) => millis.parse::<f64>().ok()? / 1000.0,
            None => text.trim().parse().ok()?,
        },
    };
    (cores > 0.0 && cores < 1e7).then(|| (cores * 1000.0).round() as u64)
}

/// Checks a URI's shape and scheme (`writable`: not a read-only scheme).
fn uri(field: &str, value: &str, writable: bool) -> Result<(), String> {
    required(field, value)?;
    url::Url::parse(value).map_err(|e| format!("{field}: {value:?} is not a URL: {e}"))?;
    shoal_storage::check_url(value, writable).map_err(|e| format!("{field}: {e}"))?;
    if value.split('/').any(|segment| segment == "..") {
        return Err(format!("{field}: {value:?} must not contain '..'"));
    }
    Ok(())
}

/// Validates an input tree (atom names are collected to check crosses); `field` is its path.
fn input(
    field: &str,
    input: &Input,
    depth: usize,
    names: &mut Vec<String>,
) -> Result<PipelineInput, String> {
    if depth > INPUT_DEPTH_MAX {
        return Err(format!("{field}: nested deeper than {INPUT_DEPTH_MAX}"));
    }
    match input {
        Input::Atom(atom) => {
            let name = atom_name(field, atom)?;
            uri(&format!("{field}.atom.URI"), &atom.uri, false)?;
            text(&format!("{field}.atom.glob"), &atom.glob)?;
            shoal_storage::check_glob(&atom.glob).map_err(|e| format!("{field}.atom.glob: {e}"))?;
            names.push(name.clone());
            Ok(PipelineInput::Atom {
                name,
                uri: atom.uri.clone(),
                glob: atom.glob.clone(),
            })
        }
        Input::Cross(children) | Input::Union(children) => {
            let kind = if matches!(input, Input::Cross(_)) {
                "cross"
            } else {
                "union"
            };
            if children.is_empty() {
                return Err(format!("{field}.{kind}: needs at least one input"));
            }
            let mut built = Vec::with_capacity(children.len());
            let mut seen: Vec<String> = Vec::new();
            for (i, child) in children.iter().enumerate() {
                let child_field = format!("{field}.{kind}[{i}]");
                let mut child_names = Vec::new();
                built.push(self::input(
                    &child_field,
                    child,
                    depth + 1,
                    &mut child_names,
                )?);
                // Crossed inputs land side by side below /pfs/: their names must differ.
                if kind == "cross"
                    && let Some(clash) = child_names.iter().find(|n| seen.contains(n))
                {
                    return Err(format!(
                        "{child_field}: input name {clash:?} is used by another crossed input"
                    ));
                }
                seen.extend(child_names.iter().cloned());
                names.extend(child_names);
            }
            Ok(match input {
                Input::Cross(_) => PipelineInput::Cross(built),
                _ => PipelineInput::Union(built),
            })
        }
    }
}

/// The atom's directory below `/pfs/`: `name`, else `repo`; one path segment, not `out`.
fn atom_name(field: &str, atom: &Atom) -> Result<String, String> {
    let name = atom
        .name
        .clone()
        .or_else(|| atom.repo.clone())
        .ok_or_else(|| format!("{field}.atom.repo: required (or name)"))?;
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(format!(
            "{field}.atom.name: {name:?} must be letters, digits, '-', '_' or '.'"
        ));
    }
    if name == "out" {
        return Err(format!(
            "{field}.atom.name: \"out\" is /pfs/out, where outputs go"
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Falconeri's own example spec, as its repository ships it.
    pub const FALCONERI_EXAMPLE: &str = r#"{
  "pipeline": { "name": "book_words" },
  "transform": {
    "cmd": ["python3", "/extract_words.py"],
    "image": "somerepo/my_python_nlp",
    "env": { "VARNAME": "value" },
    "secrets": [
      { "name": "ssl", "mount_path": "/ssl" },
      { "name": "s3", "key": "AWS_ACCESS_KEY_ID", "env_var": "AWS_ACCESS_KEY_ID" }
    ],
    "service_account": "example-service"
  },
  "parallelism_spec": { "constant": 10 },
  "resource_requests": { "memory": "500Mi", "cpu": 1.2 },
  "datum_tries": 3,
  "job_timeout": "5m",
  "node_selector": { "node_type": "falconeri_worker" },
  "input": { "atom": { "URI": "gs://example-bucket/books/", "repo": "books", "glob": "/*" } },
  "egress": { "URI": "gs://example-bucket/words/" }
}"#;

    fn parse_json(text: &str) -> Result<Parsed, String> {
        parse(text.as_bytes(), Format::Json, "J1".into(), "alice".into())
    }

    #[test]
    fn falconeris_example_is_accepted_with_its_kubernetes_fields_ignored() {
        let parsed = parse_json(FALCONERI_EXAMPLE).expect("accepted");
        assert_eq!(
            parsed.ignored,
            [
                "node_selector",
                "transform.secrets",
                "transform.service_account"
            ]
        );
        let spec = parsed.spec;
        assert_eq!(
            (spec.name.as_str(), spec.parallelism, spec.datum_tries),
            ("book_words", 10, 3)
        );
        assert_eq!(spec.task.resources.cpu_millis, 1200);
        assert_eq!(spec.task.resources.ram_bytes, 500 * 1024 * 1024);
        assert_eq!(spec.task.executors[0].env["VARNAME"], "value");
        let pipeline = spec.pipeline.expect("a pipeline");
        assert_eq!(pipeline.job_timeout_ms, 300_000);
        assert_eq!(pipeline.egress_uri, "gs://example-bucket/words/");
        assert_eq!(
            pipeline.input,
            PipelineInput::Atom {
                name: "books".into(),
                uri: "gs://example-bucket/books/".into(),
                glob: "/*".into()
            }
        );
    }

    #[test]
    fn yaml_with_pachyderm_additions_and_nested_inputs_is_accepted() {
        let yaml = r#"
pipeline: { name: words }
transform:
  image: busybox
  cmd: [sh]
  stdin: ["wc -w /pfs/books/* > /pfs/out/count"]
  working_dir: /scratch
  accept_return_code: [1, 2]
datum_timeout: 10m
input:
  cross:
    - pfs: { uri: "s3://b/a/", repo: a, glob: "/" }
    - union:
        - atom: { URI: "s3://b/books/", repo: books, name: left, glob: "/*" }
        - atom: { URI: "s3://b/more/", repo: more, name: left, glob: "/*/*" }
egress: { URI: "s3://b/out/" }
"#;
        let parsed = parse(yaml.as_bytes(), Format::Yaml, "J".into(), String::new()).expect("ok");
        let spec = parsed.spec;
        let executor = &spec.task.executors[0];
        assert_eq!(executor.stdin, STDIN_PATH);
        assert_eq!(executor.workdir, "/scratch");
        assert_eq!(executor.accept_exit_codes, [1, 2]);
        assert_eq!(
            spec.task.inputs[0].content.as_deref(),
            Some("wc -w /pfs/books/* > /pfs/out/count\n")
        );
        assert_eq!(spec.datum_timeout_ms, 600_000);
        let atoms: Vec<String> = spec
            .pipeline
            .expect("pipeline")
            .input
            .atoms()
            .iter()
            .map(|a| a.name.to_string())
            .collect();
        assert_eq!(atoms, ["a", "left", "left"], "a union may reuse a name");
    }

    #[test]
    fn bad_specs_are_refused_naming_the_field() {
        let with = |patch: &str| -> String {
            let mut value: serde_json::Value =
                serde_json::from_str(FALCONERI_EXAMPLE).expect("example");
            let patch: serde_json::Value = serde_json::from_str(patch).expect("patch");
            json_merge(&mut value, &patch);
            parse_json(&value.to_string()).expect_err("refused")
        };
        let cases = [
            (r#"{"transform": {"cmd": []}}"#, "transform.cmd"),
            (r#"{"transform": {"image": ""}}"#, "transform.image"),
            (
                r#"{"transform": {"bogus": 1}}"#,
                "transform.bogus: unknown field",
            ),
            (r#"{"colour": "red"}"#, "colour: unknown field"),
            (r#"{"datum_tries": 0}"#, "datum_tries"),
            (r#"{"job_timeout": "soon"}"#, "job_timeout"),
            (
                r#"{"resource_requests": {"memory": "lots"}}"#,
                "resource_requests.memory",
            ),
            (
                r#"{"resource_requests": {"cpu": -1}}"#,
                "resource_requests.cpu",
            ),
            (r#"{"egress": {"URI": "http://x/out/"}}"#, "egress.URI"),
            (r#"{"egress": {"URI": "sftp://x/out/"}}"#, "egress.URI"),
            (r#"{"input": {"atom": {"glob": "*"}}}"#, "input.atom.glob"),
            (r#"{"input": {"atom": {"repo": "out"}}}"#, "input.atom.name"),
            (r#"{"input": {"atom": {"repo": "a/b"}}}"#, "input.atom.name"),
            (
                r#"{"transform": {"working_dir": "rel"}}"#,
                "transform.working_dir",
            ),
        ];
        for (patch, field) in cases {
            let error = with(patch);
            assert!(error.contains(field), "{patch}: {error}");
        }
        let mut crossed: serde_json::Value =
            serde_json::from_str(FALCONERI_EXAMPLE).expect("example");
        crossed["input"] = serde_json::json!({"cross": [
            {"atom": {"URI": "s3://b/x/", "repo": "x", "glob": "/*"}},
            {"atom": {"URI": "s3://b/y/", "repo": "x", "glob": "/*"}}]});
        let error = parse_json(&crossed.to_string()).expect_err("a name clash");
        assert!(error.contains("input.cross[1]"), "{error}");
        assert!(parse(b"pipeline: [", Format::Yaml, "J".into(), String::new()).is_err());
    }

    /// Merges `patch` into `value` (objects key by key; anything else replaced).
    fn json_merge(value: &mut serde_json::Value, patch: &serde_json::Value) {
        match (value, patch) {
            (serde_json::Value::Object(target), serde_json::Value::Object(patch)) => {
                for (key, patch) in patch {
                    json_merge(target.entry(key).or_insert(serde_json::Value::Null), patch);
                }
            }
            (value, patch) => *value = patch.clone(),
        }
    }

    #[test]
    fn memory_and_cpu_quantities_follow_kubernetes() {
        assert_eq!(memory_bytes("500Mi"), Some(500 << 20));
        assert_eq!(memory_bytes("2G"), Some(2_000_000_000));
        assert_eq!(memory_bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(memory_bytes("1024"), Some(1024));
        assert_eq!(memory_bytes("12 bytes"), None);
        assert_eq!(cpu_millis(&Cpu::Quantity("500m".into())), Some(500));
        assert_eq!(cpu_millis(&Cpu::Cores(0.25)), Some(250));
        assert_eq!(cpu_millis(&Cpu::Quantity("x".into())), None);
    }

    #[test]
    fn content_types_pick_the_format() {
        assert_eq!(
            Format::from_content_type(Some("application/yaml")),
            Format::Yaml
        );
        assert_eq!(
            Format::from_content_type(Some("text/yaml; charset=utf-8")),
            Format::Yaml
        );
        assert_eq!(
            Format::from_content_type(Some("application/json")),
            Format::Json
        );
        assert_eq!(Format::from_content_type(None), Format::Json);
    }
}
