//! Every example config (`cluster-configs/`, `deploy/`) parses and passes validation, and the
//! systemd unit in `deploy/systemd/` passes `systemd-analyze verify`.

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
