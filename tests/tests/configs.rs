//! Every example config (`cluster-configs/`, `deploy/`) parses and passes validation, and the
//! systemd unit in `deploy/systemd/` passes `systemd-analyze verify`, and the Kubernetes
//! manifests in `deploy/kubernetes/` pass `kubernetes-validate` and hand the node a valid config.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use shoal_node::Config;

fn toml_files(dir: &Path, found: &mut Vec<std::path::PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            toml_files(&path, found)?;
        } else if path.extension().is_some_and(|e| e == "toml") {
            found.push(path);
        }
    }
    Ok(())
}

#[test]
fn every_example_cluster_config_parses_and_validates() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster-configs");
    let mut files = Vec::new();
    toml_files(&root, &mut files)?;
    ensure!(
        files.len() >= 3,
        "expected the local-3 configs, found {files:?}"
    );
    for file in &files {
        let config = Config::from_file(file)?;
        config
            .validate(false)
            .with_context(|| file.display().to_string())?;
    }
    Ok(())
}

#[test]
fn the_systemd_example_config_parses_and_validates() -> Result<()> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/shoal.toml");
    let config = Config::from_file(&file)?;
    config
        .validate(false)
        .context("deploy/systemd/shoal.toml")?;
    ensure!(
        config.data_dir == Path::new("/var/lib/shoal"),
        "the unit's StateDirectory"
    );
    Ok(())
}

/// `systemd-analyze verify` on the unit, its `ExecStart` pointed at the binary under test
/// (verify checks that it exists). Any warning fails the test: verify only warns about an
/// unknown key.
#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() -> Result<()> {
    if std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        ensure!(
            std::env::var_os("CI").is_none(),
            "CI is set but systemd-analyze is missing: run scripts/test.sh"
        );
        eprintln!("skipping: systemd-analyze is not installed (Debian package systemd)");
        return Ok(());
    }
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/shoal.service");
    let binary = std::fs::canonicalize(shoal_tests::shoal_bin())?;
    let text = std::fs::read_to_string(&unit)?;
    ensure!(text.contains("ExecStart=/usr/local/bin/shoal node --config /etc/shoal/shoal.toml"));
    let dir = tempfile::tempdir()?;
    let copy = dir.path().join("shoal.service");
    std::fs::write(
        &copy,
        text.replace("/usr/local/bin/shoal", &binary.display().to_string()),
    )?;
    let verified = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()?;
    let said = String::from_utf8_lossy(&verified.stderr);
    ensure!(
        verified.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {}\n{said}",
        verified.status
    );
    Ok(())
}

/// The unit's settings, `key=value` lines outside comments (the last of a key wins).
fn unit_settings(text: &str) -> std::collections::BTreeMap<&str, &str> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#') && !line.starts_with('['))
        .filter_map(|line| line.split_once('='))
        .collect()
}

/// What the unit promises an operator: a dedicated user, a restart on failure, room for file
/// descriptors, hardening, and a stop timeout longer than the longest stop a node makes.
#[test]
fn the_systemd_unit_runs_a_hardened_dedicated_user_and_outwaits_a_stop() -> Result<()> {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/shoal.service");
    let text = std::fs::read_to_string(&unit)?;
    let settings = unit_settings(&text);
    let get = |key: &str| settings.get(key).copied().unwrap_or("");
    ensure!(
        get("User") == "shoal" && get("Group") == "shoal",
        "a dedicated user"
    );
    ensure!(get("Restart") == "on-failure", "Restart={}", get("Restart"));
    let files: u64 = get("LimitNOFILE").parse().context("LimitNOFILE")?;
    ensure!(files >= 65536, "LimitNOFILE={files}");
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("ProtectKernelModules", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("StateDirectory", "shoal"),
        ("KillSignal", "SIGTERM"),
    ] {
        ensure!(get(key) == value, "{key}={} (expected {value})", get(key));
    }
    let stop: u64 = get("TimeoutStopSec")
        .parse()
        .context("TimeoutStopSec in seconds")?;
    // Beyond the worker's waits: the last reports and the node's own shutdown.
    let needed = shoal_worker::STOP_WAIT_MAX.as_secs() + 10;
    ensure!(
        stop >= needed,
        "TimeoutStopSec={stop}, a stop may take {needed} s"
    );
    Ok(())
}

#[test]
fn the_local_3_configs_are_one_cluster() -> Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster-configs/local-3");
    let configs: Vec<Config> = (1..=3)
        .map(|i| Config::from_file(&dir.join(format!("n{i}.toml"))))
        .collect::<Result<_, _>>()?;
    for config in &configs {
        ensure!(config.p2p.bootstrap_expect == 3, "bootstrap_expect");
        ensure!(config.p2p.seeds == configs[0].p2p.seeds, "identical seeds");
        ensure!(
            config.p2p.seeds.contains(&config.p2p.listen),
            "each node is among the seeds"
        );
    }
    Ok(())
}

fn kubernetes_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// Every document of every manifest in `deploy/kubernetes/`.
fn kubernetes_documents() -> Result<Vec<(String, yaml_serde::Value)>> {
    use serde::Deserialize;
    let mut documents = Vec::new();
    for entry in std::fs::read_dir(kubernetes_dir())? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        for document in yaml_serde::Deserializer::from_str(&text) {
            let value = yaml_serde::Value::deserialize(document)
                .with_context(|| path.display().to_string())?;
            documents.push((path.display().to_string(), value));
        }
    }
    Ok(documents)
}

fn kind<'a>(
    documents: &'a [(String, yaml_serde::Value)],
    kind: &str,
) -> Result<&'a yaml_serde::Value> {
    documents
        .iter()
        .map(|(_, value)| value)
        .find(|value| value["kind"].as_str() == Some(kind))
        .with_context(|| format!("no {kind} in deploy/kubernetes"))
}

/// The manifests against the Kubernetes 1.37 schemas, strictly (no unknown fields), with
/// `kubernetes-validate` from PyPI (scripts/test.sh installs it into .venv).
#[test]
fn the_kubernetes_manifests_pass_kubernetes_validate() -> Result<()> {
    let Some(python) = shoal_tests::test_python()? else {
        return Ok(());
    };
    let files: Vec<_> = std::fs::read_dir(kubernetes_dir())?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    let files: Vec<_> = files
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    ensure!(files.len() >= 5, "expected the manifests, found {files:?}");
    let checked = std::process::Command::new(python)
        .args(["-m", "kubernetes_validate", "--strict", "-k", "1.37.0"])
        .args(&files)
        .output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    ensure!(checked.status.success(), "kubernetes-validate: {said}");
    for kind in [
        "statefulset",
        "service",
        "configmap",
        "secret",
        "poddisruptionbudget",
    ] {
        ensure!(
            said.contains(&format!("passed for resource {kind}/")),
            "no {kind} was validated:\n{said}"
        );
    }
    Ok(())
}

/// What the manifests hand the node: the ConfigMap's config with the example Secret's tokens
/// validates, its seeds name the StatefulSet's pods through the headless Service, and every
/// flag the pods pass exists.
#[test]
fn the_kubernetes_manifests_give_the_node_a_valid_config_and_real_flags() -> Result<()> {
    let documents = kubernetes_documents()?;
    let config_map = kind(&documents, "ConfigMap")?;
    let text = config_map["data"]["shoal.toml"]
        .as_str()
        .context("the ConfigMap's shoal.toml")?;
    let mut config = Config::from_toml(text).map_err(anyhow::Error::msg)?;
    let secret = kind(&documents, "Secret")?;
    let tokens = secret["stringData"]["tokens.toml"]
        .as_str()
        .context("the Secret's tokens.toml")?;
    let dir = tempfile::tempdir()?;
    let tokens_file = dir.path().join("tokens.toml");
    std::fs::write(&tokens_file, tokens)?;
    config.http.tokens_file = tokens_file.display().to_string();
    let config_file = dir.path().join("shoal.toml");
    std::fs::write(&config_file, toml::to_string(&config)?)?;
    let mut config = Config::from_file(&config_file)?;
    let set = kind(&documents, "StatefulSet")?;
    let container = &set["spec"]["template"]["spec"]["containers"][0];
    let args = container["args"].as_sequence().context("args")?;
    // What the first pod passes on its command line.
    config.p2p.advertise = args
        .iter()
        .filter_map(|a| a.as_str()?.strip_prefix("--p2p-advertise="))
        .map(|a| a.replace("$(POD_NAME)", "shoal-0"))
        .collect();
    config
        .validate(false)
        .context("the ConfigMap's config with the Secret's tokens and the pod's flags")?;

    let replicas = set["spec"]["replicas"].as_u64().context("replicas")?;
    let service = set["spec"]["serviceName"].as_str().context("serviceName")?;
    let name = set["metadata"]["name"].as_str().context("name")?;
    let expected: Vec<String> = (0..replicas)
        .map(|i| format!("/dns4/{name}-{i}.{service}/tcp/7000"))
        .collect();
    ensure!(config.p2p.seeds == expected, "seeds {:?}", config.p2p.seeds);
    ensure!(
        config.p2p.bootstrap_expect as u64 == replicas,
        "bootstrap_expect is not the replica count"
    );

    let help = std::process::Command::new(shoal_tests::shoal_bin())
        .args(["node", "--help"])
        .output()?;
    let help = String::from_utf8_lossy(&help.stdout);
    for arg in args.iter().filter_map(|a| a.as_str()) {
        if let Some(flag) = arg.strip_prefix("--") {
            let flag = flag.split('=').next().unwrap_or(flag);
            ensure!(
                help.contains(&format!("--{flag}")),
                "the StatefulSet passes --{flag}, which `shoal node` does not take"
            );
        }
    }
    let probe = container["readinessProbe"]["httpGet"]["path"].as_str();
    ensure!(probe == Some("/readyz"), "readiness probe {probe:?}");
    Ok(())
}

/// The manifests fit together: the StatefulSet's Service is headless and publishes pods
/// before they are ready (peers find each other while forming), the disruption budget keeps a
/// quorum of the replicas, the Secret is mounted where the config looks for the tokens and the
/// cluster key, the config where `--config` points, and a pod gets longer to stop than a node
/// takes.
#[test]
fn the_kubernetes_manifests_fit_together() -> Result<()> {
    let documents = kubernetes_documents()?;
    let set = kind(&documents, "StatefulSet")?;
    let pod = &set["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    let selects_pods = |selector: &yaml_serde::Value| {
        selector
            .as_mapping()
            .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels[k] == *v))
    };

    let service_name = set["spec"]["serviceName"].as_str().context("serviceName")?;
    let service = documents
        .iter()
        .map(|(_, value)| value)
        .find(|v| v["kind"] == "Service" && v["metadata"]["name"] == service_name)
        .with_context(|| format!("no Service {service_name}"))?;
    ensure!(
        service["spec"]["clusterIP"] == "None",
        "{service_name} is not headless"
    );
    ensure!(
        service["spec"]["publishNotReadyAddresses"] == true,
        "{service_name} hides pods that are not ready yet"
    );
    ensure!(
        selects_pods(&service["spec"]["selector"]),
        "the Service's selector"
    );

    let replicas = set["spec"]["replicas"].as_u64().context("replicas")?;
    let budget = kind(&documents, "PodDisruptionBudget")?;
    ensure!(
        selects_pods(&budget["spec"]["selector"]["matchLabels"]),
        "the budget's selector"
    );
    let away = match (
        budget["spec"]["maxUnavailable"].as_u64(),
        budget["spec"]["minAvailable"].as_u64(),
    ) {
        (Some(max), None) => max,
        (None, Some(min)) => replicas.saturating_sub(min),
        other => {
            anyhow::bail!("the budget needs a whole maxUnavailable or minAvailable: {other:?}")
        }
    };
    ensure!(
        away >= 1 && replicas - away > replicas / 2,
        "{away} of {replicas} away at once leaves no quorum"
    );

    let spec = &pod["spec"];
    let container = &spec["containers"][0];
    let mounts = container["volumeMounts"]
        .as_sequence()
        .context("volumeMounts")?;
    let mount_of = |volume: &str| {
        mounts
            .iter()
            .find(|m| m["name"].as_str() == Some(volume))
            .and_then(|m| m["mountPath"].as_str())
            .with_context(|| format!("volume {volume} is not mounted"))
    };
    let volume = |key: &str| {
        spec["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|v| !v[key].is_null())
            .with_context(|| format!("no {key} volume"))
    };
    let secret = kind(&documents, "Secret")?;
    let secret_volume = volume("secret")?;
    ensure!(
        secret_volume["secret"]["secretName"] == secret["metadata"]["name"],
        "the pod mounts another Secret"
    );
    let secret_dir = mount_of(secret_volume["name"].as_str().context("volume name")?)?;
    let config_map = kind(&documents, "ConfigMap")?;
    let config = Config::from_toml(
        config_map["data"]["shoal.toml"]
            .as_str()
            .context("shoal.toml")?,
    )
    .map_err(anyhow::Error::msg)?;
    for (what, path) in [
        ("http.tokens_file", &config.http.tokens_file),
        ("p2p.cluster_key_file", &config.p2p.cluster_key_file),
    ] {
        let key = Path::new(path)
            .strip_prefix(secret_dir)
            .ok()
            .and_then(|key| key.to_str())
            .with_context(|| format!("{what} {path} is not in the Secret's mount {secret_dir}"))?;
        ensure!(
            !secret["stringData"][key].is_null(),
            "{what} reads {key}, which the Secret does not hold"
        );
    }
    let config_volume = volume("configMap")?;
    ensure!(
        config_volume["configMap"]["name"] == config_map["metadata"]["name"],
        "the pod mounts another ConfigMap"
    );
    let config_path = mount_of(config_volume["name"].as_str().context("volume name")?)?;
    let args = container["args"].as_sequence().context("args")?;
    let flag = format!("--config={config_path}");
    ensure!(
        args.iter().any(|a| a.as_str() == Some(flag.as_str())),
        "--config does not name the mounted {config_path}"
    );

    let grace = spec["terminationGracePeriodSeconds"]
        .as_u64()
        .context("terminationGracePeriodSeconds")?;
    let needed = shoal_worker::STOP_WAIT_MAX.as_secs() + 10;
    ensure!(
        grace >= needed,
        "a pod gets {grace} s to stop, a node may take {needed} s"
    );
    Ok(())
}
