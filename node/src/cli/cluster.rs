//! `shoal cluster status|members|drain|undrain|remove`.

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
    }
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
        "cluster:  {}\nleader:   {leader}\nterm:     {}\napplied:  {}\n",
        view.cluster_id.as_deref().unwrap_or("(not named yet)"),
        view.term,
        view.applied_index
            .map(|i| i.to_string())
            .unwrap_or_else(|| "-".into()),
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
