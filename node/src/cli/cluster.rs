//! `shoal cluster status|members|drain|undrain|remove|backup`.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::{CliError, Client, OutputFormat, table};
use crate::api::{ClusterView, DrainView, RemovedView};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The cluster id, leader, term, applied index and every member.
    Status,
    /// Every member: id, name, role, slots, cpus, memory, running, last heartbeat, draining.
    Members,
    /// Stop a node (id or name) from claiming new work.
    Drain { node: String },
    /// Let a drained node claim work again.
    Undrain { node: String },
    /// Take a node out of the cluster.
    Remove { node: String },
    /// Save a backup of the replicated state (every job, task and datum) to FILE; restore it
    /// with `shoal node --restore FILE`.
    Backup { file: PathBuf },
}

pub async fn run(
    command: &ClusterCommand,
    client: &Client,
    output: OutputFormat,
) -> Result<(), CliError> {
    match command {
        ClusterCommand::Status => {
            let view = fetch_view(client).await?;
            print_json_or(output, &view, || status_text(&view))
        }
        ClusterCommand::Members => {
            let view = fetch_view(client).await?;
            print_json_or(output, &view.members, || members_table(&view))
        }
        ClusterCommand::Drain { node } | ClusterCommand::Undrain { node } => {
            let action = if matches!(command, ClusterCommand::Drain { .. }) {
                "drain"
            } else {
                "undrain"
            };
            let path = format!("/v1/cluster/nodes/{}:{action}", encode_segment(node));
            let view: DrainView = client.post(&path, &serde_json::json!({})).await?;
            print_json_or(output, &view, || {
                format!("node {} draining: {}", view.node_id, view.draining)
            })
        }
        ClusterCommand::Remove { node } => {
            let path = format!("/v1/cluster/nodes/{}", encode_segment(node));
            let view: RemovedView = client.delete(&path).await?;
            print_json_or(output, &view, || format!("removed node {}", view.removed))
        }
        ClusterCommand::Backup { file } => {
            let view = backup(client, file).await?;
            print_json_or(output, &view, || {
                format!(
                    "saved a backup of cluster {} at log index {} to {}: {} jobs, {} datums, {} bytes",
                    view.cluster_id.as_deref().unwrap_or("(unnamed)"),
                    view.last_log_index
                        .map_or_else(|| "-".to_string(), |i| i.to_string()),
                    view.file,
                    view.jobs,
                    view.datums,
                    view.bytes
                )
            })
        }
    }
}

/// What `shoal cluster backup` saved.
#[derive(Debug, serde::Serialize)]
struct BackupView {
    file: String,
    cluster_id: Option<String>,
    last_log_index: Option<u64>,
    jobs: usize,
    datums: usize,
    bytes: u64,
}

/// Downloads a backup next to `file`, reads it back whole (versions, every row, the
/// checksum), makes it durable and only then renames it to `file`: `file` is never a partial
/// or corrupt backup.
async fn backup(client: &Client, file: &Path) -> Result<BackupView, CliError> {
    let partial = partial_path(file)?;
    let result = download_backup(client, file, &partial).await;
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

fn partial_path(file: &Path) -> Result<PathBuf, CliError> {
    let name = file
        .file_name()
        .ok_or_else(|| CliError::input(format!("{} is not a file name", file.display())))?;
    let mut partial = name.to_os_string();
    partial.push(".partial");
    Ok(file.with_file_name(partial))
}

async fn download_backup(
    client: &Client,
    file: &Path,
    partial: &Path,
) -> Result<BackupView, CliError> {
    let cannot = |what: &str, path: &Path, e: std::io::Error| {
        CliError::failed(format!("cannot {what} {}: {e}", path.display()))
    };
    let out = std::fs::File::create(partial).map_err(|e| cannot("create", partial, e))?;
    let mut out = std::io::BufWriter::new(out);
    let bytes = client.download("/v1/cluster/backup", &mut out).await?;
    let out = out
        .into_inner()
        .map_err(|e| cannot("write", partial, e.into_error()))?;
    out.sync_all().map_err(|e| cannot("write", partial, e))?;
    let input = std::fs::File::open(partial).map_err(|e| cannot("read", partial, e))?;
    let backup = shoal_raft::backup::read_backup(std::io::BufReader::new(input))
        .map_err(|e| CliError::failed(format!("the backup received is unusable: {e}")))?;
    std::fs::rename(partial, file).map_err(|e| cannot("rename the backup to", file, e))?;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(BackupView {
        file: file.display().to_string(),
        cluster_id: backup.header.cluster_id,
        last_log_index: backup.header.last_log.map(|(_, index)| index),
        jobs: backup.state.jobs.len(),
        datums: backup.state.datums.len(),
        bytes,
    })
}

/// The cluster view; when the node cannot confirm it with a leader (an outage), its own last
/// knowledge instead, marked stale — during an outage that is what an operator needs to see.
async fn fetch_view(client: &Client) -> Result<ClusterView, CliError> {
    match client.get("/v1/cluster").await {
        Err(error) if error.code == 1 => {
            eprintln!(
                "warning: {}; showing this node's possibly stale view",
                error.message
            );
            client.get("/v1/cluster?consistency=stale").await
        }
        other => other,
    }
}

/// Percent-encodes what may not stand in a URL path segment.
fn encode_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn print_json_or<T: serde::Serialize>(
    output: OutputFormat,
    value: &T,
    text: impl FnOnce() -> String,
) -> Result<(), CliError> {
    let rendered = match output {
        OutputFormat::Json => serde_json::to_string_pretty(value)
            .map_err(|e| CliError::failed(format!("cannot render JSON: {e}")))?,
        OutputFormat::Table => text(),
    };
    println!("{rendered}");
    Ok(())
}

fn status_text(view: &ClusterView) -> String {
    let leader = view
        .leader_member()
        .map(|m| format!("{} ({})", m.node_id, m.name))
        .unwrap_or_else(|| "none".to_string());
    let mut text = format!(
        "cluster:  {}\nleader:   {leader}\nterm:     {}\napplied:  {}\nformat:   {} (this node reads {} to {})\n",
        view.cluster_id.as_deref().unwrap_or("(not named yet)"),
        view.term,
        view.applied_index
            .map(|i| i.to_string())
            .unwrap_or_else(|| "-".into()),
        view.format_version,
        view.node_formats[0],
        view.node_formats[1],
    );
    if !view.consistent {
        text.push_str("(stale: this node's own view, not confirmed with the leader)\n");
    }
    text.push('\n');
    text.push_str(&members_table(view));
    text
}

fn members_table(view: &ClusterView) -> String {
    let optional = |value: Option<u32>| value.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = view
        .members
        .iter()
        .map(|m| {
            let role = if m.leader {
                "leader".to_string()
            } else {
                format!("{:?}", m.role).to_lowercase()
            };
            vec![
                m.node_id.clone(),
                m.name.clone(),
                role,
                m.http_url.clone(),
                optional(m.slots),
                m.cpus.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                m.memory_bytes
                    .map(|b| format!("{:.1}Gi", b as f64 / (1u64 << 30) as f64))
                    .unwrap_or_else(|| "-".into()),
                optional(m.running),
                m.executor.clone().unwrap_or_else(|| "-".into()),
                m.last_heartbeat.clone().unwrap_or_else(|| "-".into()),
                if m.draining {
                    "yes".into()
                } else {
                    "no".into()
                },
            ]
        })
        .collect();
    let headers = [
        "NODE ID",
        "NAME",
        "ROLE",
        "HTTP",
        "SLOTS",
        "CPUS",
        "MEMORY",
        "RUNNING",
        "EXECUTOR",
        "LAST HEARTBEAT",
        "DRAINING",
    ];
    table::render(&headers, &rows)
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(super::encode_segment("n1"), "n1");
        assert_eq!(super::encode_segment("a b/c"), "a%20b%2Fc");
    }
}
