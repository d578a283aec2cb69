//! The `docker` executor: each step runs in a container of its executor's image, through the
//! local engine's API (bollard; Docker, or Podman's compatible socket).
//!
//! A step's container is named after the node, datum, attempt and step, and labelled with the
//! node id so a restarted node finds and removes what its previous life left. It gets the
//! attempt's paths as bind mounts (inputs read-only), the task's `workdir` and `env`, stdin
//! from the task's file, stdout/stderr captured into tails and files, the task's cpu and
//! memory limits, a read-only root filesystem with a writable `/tmp`, no privileges and no new
//! ones. The image is pulled when the engine does not have it. Cancel kills the container;
//! it is removed whatever happened.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    EventsOptions, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::{ExecutorError, KILLED_EXIT_CODE, StepOutcome, StepRun};
use crate::tail::Tail;

/// Label naming the node that created a container.
pub const NODE_LABEL: &str = "shoal.node";
/// How long connecting to the engine may take before it counts as absent.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Processes one container may run (a fork bomb stays inside its step).
const PIDS_MAX: i64 = 4096;
/// How long the output stream may keep going after the container exited.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// Splits an image reference into (name, tag) for a pull; a reference without a tag or
/// digest means `latest` (the engine would otherwise pull every tag).
fn pull_reference(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    let last_segment = image.rsplit('/').next().unwrap_or(image);
    match last_segment.rsplit_once(':') {
        Some((_, tag)) => (&image[..image.len() - tag.len() - 1], tag),
        None => (image, "latest"),
    }
}

/// A connection to the local container engine.
#[derive(Clone)]
pub struct DockerExecutor {
    client: Docker,
    /// The network containers join; `None`: the engine's default.
    network: Option<String>,
    /// The engine's API version after negotiation, for the logs.
    api_version: String,
}

impl std::fmt::Debug for DockerExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerExecutor")
            .field("api_version", &self.api_version)
            .finish()
    }
}

fn engine_error(error: &DockerError) -> String {
    match error {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => format!("the engine answered {status_code}: {message}"),
        other => other.to_string(),
    }
}

impl DockerExecutor {
    /// Connects to the engine (`DOCKER_HOST`, else the local socket, else Podman's), agrees
    /// on an API version and checks it answers.
    pub async fn connect(network: Option<String>) -> Result<DockerExecutor, String> {
        let mut reasons = Vec::new();
        let candidates: [fn() -> Result<Docker, DockerError>; 2] = [
            Docker::connect_with_local_defaults,
            Docker::connect_with_podman_defaults,
        ];
        for connect in candidates {
            let attempt = async {
                let client = connect().map_err(|e| engine_error(&e))?;
                let client = client
                    .negotiate_version()
                    .await
                    .map_err(|e| engine_error(&e))?;
                client.ping().await.map_err(|e| engine_error(&e))?;
                Ok::<_, String>(client)
            };
            match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
                Ok(Ok(client)) => {
                    let api_version = client.client_version().to_string();
                    return Ok(DockerExecutor {
                        client,
                        network,
                        api_version,
                    });
                }
                Ok(Err(reason)) => reasons.push(reason),
                Err(_) => reasons.push(format!("no answer within {CONNECT_TIMEOUT:?}")),
            }
            if std::env::var_os("DOCKER_HOST").is_some() {
                break;
            }
        }
        Err(format!(
            "no container engine answered: {}",
            reasons.join("; ")
        ))
    }

    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    /// Removes every container labelled with `node` (left by a previous life of this node);
    /// returns how many there were.
    pub async fn remove_leftovers(&self, node: &str) -> Result<usize, String> {
        let filters = HashMap::from([("label", vec![format!("{NODE_LABEL}={node}")])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self
            .client
            .list_containers(Some(options))
            .await
            .map_err(|e| engine_error(&e))?;
        let mut removed = 0;
        for container in containers {
            let Some(id) = container.id else { continue };
            self.remove(&id).await.map_err(|e| engine_error(&e))?;
            removed += 1;
        }
        Ok(removed)
    }

    async fn remove(&self, id: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.client.remove_container(id, Some(options)).await {
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            other => other,
        }
    }

    /// Pulls `image` unless the engine has it.
    async fn ensure_image(&self, image: &str) -> Result<(), ExecutorError> {
        let image_error = |reason: String| ExecutorError::Image {
            image: image.to_string(),
            reason,
        };
        match self.client.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(error) => return Err(image_error(engine_error(&error))),
        }
        let (name, tag) = pull_reference(image);
        let mut options = CreateImageOptionsBuilder::default().from_image(name);
        if !tag.is_empty() {
            options = options.tag(tag);
        }
        let options = options.build();
        let started = std::time::Instant::now();
        let mut pull = self.client.create_image(Some(options), None, None);
        while let Some(progress) = pull.next().await {
            let progress = progress.map_err(|e| image_error(engine_error(&e)))?;
            if let Some(error) = progress.error_detail.and_then(|d| d.message) {
                return Err(image_error(error));
            }
        }
        let pulls = &crate::metrics::worker().image_pull_seconds;
        shoal_raft::metrics::observe(pulls, started.elapsed());
        Ok(())
    }

    /// Runs one step in a fresh container until it exits or `cancel` fires.
    pub async fn run(
        &self,
        step: &StepRun<'_>,
        cancel: &CancellationToken,
    ) -> Result<StepOutcome, ExecutorError> {
        if step.spec.command.is_empty() {
            return Err(ExecutorError::NoCommand);
        }
        if step.spec.image.is_empty() {
            return Err(ExecutorError::Image {
                image: String::new(),
                reason: "the executor names no image".to_string(),
            });
        }
        let cancelled = || ExecutorError::Engine("canceled before the container started".into());
        tokio::select! {
            pulled = self.ensure_image(&step.spec.image) => pulled?,
            () = cancel.cancelled() => return Err(cancelled()),
        }
        let binds = step.binds.iter().map(|b| b.host.clone()).collect();
        let stdio = [step.stdin.clone(), step.stdout.clone(), step.stderr.clone()];
        let root = step.attempt_dir.to_path_buf();
        let files =
            shoal_raft::runtime::blocking(move || super::process::prepare(root, binds, stdio))
                .await
                .map_err(std::io::Error::other)??;
        if cancel.is_cancelled() {
            return Err(cancelled());
        }
        let name = &step.container_name;
        // A container of the same name can only be this step's, from a run that was cut off.
        self.remove(name).await.map_err(docker_failed)?;
        let body = self.container_body(step, files.stdin.is_some())?;
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        self.client
            .create_container(Some(options), body)
            .await
            .map_err(docker_failed)?;
        let result = self.run_created(step, files, cancel).await;
        if let Err(error) = self.remove(name).await {
            tracing::warn!(container = %name, error = %engine_error(&error), "removing a container failed");
        }
        result
    }

    fn container_body(
        &self,
        step: &StepRun<'_>,
        stdin: bool,
    ) -> Result<ContainerCreateBody, ExecutorError> {
        let mut mounts = Vec::new();
        for bind in step.binds {
            let source = std::path::absolute(&bind.host)?;
            mounts.push(Mount {
                target: Some(bind.container.to_string_lossy().into_owned()),
                source: Some(source.to_string_lossy().into_owned()),
                typ: Some(MountType::BIND),
                read_only: Some(bind.read_only),
                ..Default::default()
            });
        }
        mounts.sort_by_key(|m| m.target.as_ref().map(|t| t.matches('/').count()));
        let resources = step.resources;
        let memory = (resources.ram_bytes > 0).then_some(resources.ram_bytes as i64);
        let nano_cpus = if resources.cpu_millis > 0 {
            Some(resources.cpu_millis as i64 * 1_000_000)
        } else if resources.cpu_cores > 0 {
            Some(i64::from(resources.cpu_cores) * 1_000_000_000)
        } else {
            None
        };
        let host_config = HostConfig {
            mounts: Some(mounts),
            memory,
            // No swap beyond the memory limit: a step over its limit is killed, not slowed.
            memory_swap: memory,
            nano_cpus,
            pids_limit: Some(PIDS_MAX),
            privileged: Some(false),
            readonly_rootfs: Some(true),
            tmpfs: Some(HashMap::from([("/tmp".to_string(), String::new())])),
            security_opt: Some(vec!["no-new-privileges".to_string()]),
            network_mode: self.network.clone(),
            ..Default::default()
        };
        let env = step
            .spec
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(step.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        Ok(ContainerCreateBody {
            image: Some(step.spec.image.clone()),
            cmd: Some(step.spec.command.clone()),
            env: Some(env),
            working_dir: (!step.spec.workdir.is_empty()).then(|| step.spec.workdir.clone()),
            labels: Some(HashMap::from([(
                NODE_LABEL.to_string(),
                step.node_label.to_string(),
            )])),
            attach_stdin: Some(stdin),
            open_stdin: Some(stdin),
            stdin_once: Some(stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            host_config: Some(host_config),
            ..Default::default()
        })
    }

    async fn run_created(
        &self,
        step: &StepRun<'_>,
        files: super::process::Stdio3,
        cancel: &CancellationToken,
    ) -> Result<StepOutcome, ExecutorError> {
        let name = step.container_name.as_str();
        let options = AttachContainerOptionsBuilder::default()
            .stream(true)
            .stdin(files.stdin.is_some())
            .stdout(true)
            .stderr(true)
            .build();
        let attached = self
            .client
            .attach_container(name, Some(options))
            .await
            .map_err(docker_failed)?;
        if cancel.is_cancelled() {
            return Ok(StepOutcome {
                exit_code: KILLED_EXIT_CODE,
                note: Some("step canceled before its container started".to_string()),
                ..Default::default()
            });
        }
        let started = shoal_raft::runtime::now_ms();
        if let Err(error) = self.client.start_container(name, None).await {
            // As `docker run`: a command that cannot be started is a step that failed with
            // 127 (not found) or 126 (not runnable), not a failure of the node.
            let reason = engine_error(&error);
            return match super::container_start_failure_exit_code(&reason) {
                Some(code) => Ok(super::not_started(code, reason, step)),
                None => Err(docker_failed(error)),
            };
        }
        let exited = CancellationToken::new();

        let mut input = attached.input;
        let feed = async {
            if let Some(file) = files.stdin {
                let mut file = tokio::fs::File::from_std(file);
                let mut buf = vec![0_u8; 64 * 1024];
                loop {
                    let read = file.read(&mut buf).await?;
                    if read == 0 {
                        break;
                    }
                    // The step may exit without reading all of its input: not an error.
                    if input.write_all(&buf[..read]).await.is_err() {
                        break;
                    }
                }
            }
            let _ = input.shutdown().await;
            Ok::<_, std::io::Error>(())
        };
        let max = step.tail_bytes_max;
        let mut output = attached.output;
        let capture = async {
            let mut tails = (Tail::new(max), Tail::new(max));
            let mut out = files.stdout.map(tokio::fs::File::from_std);
            let mut err = files.stderr.map(tokio::fs::File::from_std);
            // The stream ends when the container does; should it not, stop shortly after
            // the container exited (or at once on cancel).
            let drained = async {
                exited.cancelled().await;
                tokio::time::sleep(OUTPUT_DRAIN).await;
            };
            tokio::pin!(drained);
            loop {
                let chunk = tokio::select! {
                    chunk = output.next() => chunk,
                    () = &mut drained => None,
                    () = cancel.cancelled() => None,
                };
                let Some(chunk) = chunk else { break };
                let (tail, file, bytes) = match chunk.map_err(docker_failed)? {
                    bollard::container::LogOutput::StdOut { message } => {
                        if let Some(live) = step.live {
                            live.push_stdout(&message);
                        }
                        (&mut tails.0, out.as_mut(), message)
                    }
                    bollard::container::LogOutput::StdErr { message } => {
                        if let Some(live) = step.live {
                            live.push_stderr(&message);
                        }
                        (&mut tails.1, err.as_mut(), message)
                    }
                    _ => continue,
                };
                tail.push(&bytes);
                if let Some(file) = file {
                    file.write_all(&bytes).await?;
                }
            }
            Ok::<_, ExecutorError>((tails.0.into_string(), tails.1.into_string()))
        };
        let waited = async {
            let mut wait = self.client.wait_container(name, None);
            let result = tokio::select! {
                status = wait.next() => exit_code(status).map(|code| (code, false)),
                () = cancel.cancelled() => {
                    let kill = KillContainerOptionsBuilder::default().signal("SIGKILL").build();
                    if let Err(error) = self.client.kill_container(name, Some(kill)).await {
                        tracing::debug!(error = %engine_error(&error), "kill after cancel");
                    }
                    Ok((KILLED_EXIT_CODE, true))
                }
            };
            exited.cancel();
            result
        };
        // Input the step never read must not hold the step open once its container is gone.
        let feed = async {
            tokio::select! {
                fed = feed => fed.map_err(ExecutorError::Io),
                () = exited.cancelled() => Ok(()),
                () = cancel.cancelled() => Ok(()),
            }
        };
        let ((), (stdout_tail, stderr_tail), (code, killed)) =
            tokio::try_join!(feed, capture, waited)?;
        let mut note = killed.then(|| "step killed: the attempt was canceled".to_string());
        let sigkilled = code == KILLED_EXIT_CODE;
        if !killed && code != 0 && self.oom_killed(name, sigkilled, started).await {
            note = Some(format!(
                "step killed for memory: it exceeded its limit of {} bytes",
                step.resources.ram_bytes
            ));
        }
        Ok(StepOutcome {
            exit_code: code,
            stdout_tail,
            stderr_tail,
            note,
        })
    }

    /// Whether the engine says the kernel killed something in the container (started at
    /// `started`) for memory. The engine learns of an OOM kill from an event that may come
    /// after the exit the wait returned, so a container whose main process was SIGKILLed
    /// (`sigkilled`) is asked again for a short while before the answer is "no"; any other
    /// exit is asked once.
    ///
    /// The container's `OOMKilled` flag is not enough: Docker 20.10 (Debian 12's) sets it only
    /// when the kernel's OOM event reaches it before the exit, and a loaded machine sometimes
    /// delivers them the other way round. The engine logs an `oom` event for the container
    /// either way, so that is looked for too.
    async fn oom_killed(&self, name: &str, sigkilled: bool, started: u64) -> bool {
        let asks = if sigkilled { OOM_ASKS } else { 1 };
        for ask in 0..asks {
            if ask > 0 {
                tokio::time::sleep(OOM_ASK_INTERVAL).await;
            }
            let inspect = self.client.inspect_container(name, None).await;
            match inspect
                .ok()
                .and_then(|i| i.state)
                .and_then(|s| s.oom_killed)
            {
                Some(true) => return true,
                Some(false) => {}
                None => return false,
            }
            if self.oom_event(name, started).await {
                return true;
            }
        }
        false
    }

    /// Whether the engine logged an `oom` event for container `name` since `since` (ms since
    /// the epoch): the events so far, not a wait for more.
    async fn oom_event(&self, name: &str, since: u64) -> bool {
        // As the engine reads a time: seconds since the epoch, with a fraction.
        let stamp = |ms: u64| format!("{}.{:03}", ms / 1000, ms % 1000);
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("container".to_string(), vec![name.to_string()]),
            ("event".to_string(), vec!["oom".to_string()]),
        ]);
        let options = EventsOptions {
            // A second of slack, for the engine's clock against ours.
            since: Some(stamp(since.saturating_sub(1000))),
            until: Some(stamp(shoal_raft::runtime::now_ms())),
            filters: Some(filters),
        };
        let mut events = self.client.events(Some(options));
        matches!(
            tokio::time::timeout(OOM_ASK_TIMEOUT, events.next()).await,
            Ok(Some(Ok(_)))
        )
    }
}

/// How often, and how far apart, a SIGKILLed container's OOM flag is read: 3 s in all (1 s
/// was once too short for the engine's event on a loaded two-core machine).
const OOM_ASKS: u32 = 30;
const OOM_ASK_INTERVAL: Duration = Duration::from_millis(100);
/// Longest one question about the OOM kill may take the engine.
const OOM_ASK_TIMEOUT: Duration = Duration::from_secs(1);

fn docker_failed(error: DockerError) -> ExecutorError {
    ExecutorError::Engine(engine_error(&error))
}

/// The exit code from `wait_container`'s first answer. bollard reports a non-zero exit as
/// an error carrying the code: that is the step's result, not a failure.
fn exit_code(
    status: Option<Result<bollard::models::ContainerWaitResponse, DockerError>>,
) -> Result<i32, ExecutorError> {
    match status {
        Some(Ok(response)) => match response.error.and_then(|e| e.message) {
            Some(message) if !message.is_empty() => Err(ExecutorError::Engine(format!(
                "waiting for the container failed: {message}"
            ))),
            _ => Ok(response.status_code as i32),
        },
        Some(Err(DockerError::DockerContainerWaitError { code, .. })) => Ok(code as i32),
        Some(Err(error)) => Err(docker_failed(error)),
        None => Err(ExecutorError::Engine(
            "the engine ended the wait without a status".to_string(),
        )),
    }
}

/// A container name for a step: what Docker allows (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`).
pub fn container_name(parts: &[&str]) -> String {
    let joined = parts.join("-");
    let cleaned: String = joined
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("shoal-{cleaned}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the real engine, in the test image `scripts/test.sh` builds
    /// (`SHOAL_TEST_IMAGE`); without it the test says so and passes, as the docker tests do.
    #[tokio::test]
    async fn the_engine_logs_an_oom_event_for_a_container_killed_for_memory_only() {
        let Ok(image) = std::env::var("SHOAL_TEST_IMAGE") else {
            eprintln!("SHOAL_TEST_IMAGE is not set (no Docker engine): skipping");
            return;
        };
        let docker = DockerExecutor::connect(None).await.expect("an engine");
        let hog = "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived";
        for (what, script, oom) in [("hog", hog, true), ("quiet", "true", false)] {
            let name = format!("shoal-oom-event-test-{what}-{}", std::process::id());
            let remove = || {
                let options = RemoveContainerOptionsBuilder::default().force(true).build();
                docker.client.remove_container(&name, Some(options))
            };
            let _ = remove().await;
            let started = shoal_raft::runtime::now_ms();
            let body = ContainerCreateBody {
                image: Some(image.clone()),
                cmd: Some(vec!["sh".to_string(), "-c".to_string(), script.to_string()]),
                host_config: Some(HostConfig {
                    memory: Some(32 << 20),
                    memory_swap: Some(32 << 20),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let options = CreateContainerOptionsBuilder::default().name(&name).build();
            docker
                .client
                .create_container(Some(options), body)
                .await
                .expect("created");
            docker
                .client
                .start_container(&name, None)
                .await
                .expect("started");
            // A non-zero exit comes as an error: either way the container has ended.
            let _ = docker.client.wait_container(&name, None).next().await;
            let found = docker.oom_event(&name, started).await;
            let _ = remove().await;
            assert_eq!(found, oom, "{what}: an oom event found?");
        }
    }

    #[test]
    fn an_image_without_a_tag_is_pulled_as_latest() {
        assert_eq!(pull_reference("busybox"), ("busybox", "latest"));
        assert_eq!(pull_reference("busybox:1.36"), ("busybox", "1.36"));
        assert_eq!(
            pull_reference("127.0.0.1:5000/team/tool"),
            ("127.0.0.1:5000/team/tool", "latest")
        );
        assert_eq!(
            pull_reference("127.0.0.1:5000/team/tool:2"),
            ("127.0.0.1:5000/team/tool", "2")
        );
        assert_eq!(pull_reference("tool@sha256:abc"), ("tool@sha256:abc", ""));
    }
}
