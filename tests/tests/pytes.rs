//! The real TES client py-tes (PyPI, installed into `.venv/` by `scripts/test.sh`) against a
//! three-node cluster: `tests/pytes/check_pytes.py` creates, waits, gets in every view on
//! every node, lists 600 tasks with every filter and pages to the end, and cancels; every
//! answer goes through py-tes's own models, which reject unknown keys and wrong types.

use std::time::Duration;

use anyhow::{Result, ensure};
use shoal_tests::{ClusterOptions, TestCluster, phase};

#[tokio::test]
async fn py_tes_works_against_a_three_node_cluster() -> Result<()> {
    let Some(python) = shoal_tests::test_python()? else {
        return Ok(());
    };
    let options = ClusterOptions {
        slots: 4,
        ..Default::default()
    };
    let cluster = TestCluster::formed(3, options).await?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pytes/check_pytes.py");
    phase("running tests/pytes/check_pytes.py");
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.http_url()).collect();
    let child = tokio::process::Command::new(&python)
        .arg(&script)
        .args(&urls)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), child).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    ensure!(
        out.status.success() && stdout.contains("all checks passed"),
        "py-tes checks failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    Ok(())
}
