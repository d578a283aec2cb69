//! Every example cluster config in `cluster-configs/` parses and passes validation.

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
