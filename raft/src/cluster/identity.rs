//! The node's libp2p identity, kept in `data_dir/node.key` so a restarted node is the same
//! peer (and so the same Raft node id), and the cluster's pre-shared key file.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use libp2p::identity::Keypair;
use libp2p::pnet::PreSharedKey;

use super::ClusterError;

/// Loads the keypair at `path`, or creates and saves a new Ed25519 one.
pub fn load_or_create_keypair(path: &Path) -> Result<Keypair, ClusterError> {
    let error = |reason: String| ClusterError::Identity {
        path: path.to_path_buf(),
        reason,
    };
    if path.exists() {
        let bytes = fs::read(path).map_err(|e| error(e.to_string()))?;
        return Keypair::from_protobuf_encoding(&bytes).map_err(|e| error(e.to_string()));
    }
    let keypair = Keypair::generate_ed25519();
    let bytes = keypair
        .to_protobuf_encoding()
        .map_err(|e| error(e.to_string()))?;
    let partial = path.with_extension("key.tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&partial).map_err(|e| error(e.to_string()))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| error(e.to_string()))?;
    fs::rename(&partial, path).map_err(|e| error(e.to_string()))?;
    Ok(keypair)
}

/// Reads a cluster key file: either the standard libp2p `swarm.key` format
/// (`/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex digits) or just the 64 hex digits.
pub fn read_cluster_key(path: &Path) -> Result<PreSharedKey, ClusterError> {
    let error = |reason: String| ClusterError::ClusterKey {
        path: path.to_path_buf(),
        reason,
    };
    let text = fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    let trimmed = text.trim();
    let full = if trimmed.starts_with("/key/") {
        trimmed.to_string()
    } else {
        format!("/key/swarm/psk/1.0.0/\n/base16/\n{trimmed}")
    };
    PreSharedKey::from_str(&full).map_err(|e| error(format!("not a 32-byte hex key: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keypair_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.key");
        let first = load_or_create_keypair(&path).expect("create");
        let second = load_or_create_keypair(&path).expect("load");
        assert_eq!(first.public().to_peer_id(), second.public().to_peer_id());
    }

    #[test]
    fn cluster_key_accepts_both_forms_and_rejects_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hex = "ab".repeat(32);
        let bare = dir.path().join("bare");
        fs::write(&bare, format!("{hex}\n")).expect("write");
        let full = dir.path().join("full");
        fs::write(&full, format!("/key/swarm/psk/1.0.0/\n/base16/\n{hex}\n")).expect("write");
        let a = read_cluster_key(&bare).expect("bare");
        let b = read_cluster_key(&full).expect("full");
        assert_eq!(a.fingerprint().to_string(), b.fingerprint().to_string());

        let bad = dir.path().join("bad");
        fs::write(&bad, "not a key").expect("write");
        assert!(read_cluster_key(&bad).is_err());
    }
}
