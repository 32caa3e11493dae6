//! `meta.properties`: the formatting of a data directory for cluster mode (Kafka's file name
//! and keys: `version=1`, `cluster.id`, `node.id`, `directory.id`), plus Holdfast's
//! `holdfast.bootstrap=true` on the one node that initializes the metadata quorum.
//!
//! `holdfast format` writes it by atomic replace (temporary file, fsync, rename, directory
//! fsync); `holdfast serve` in cluster mode refuses a directory without it or whose node id
//! differs, and stops when the metadata log's cluster id differs from `cluster.id`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "meta.properties";

#[derive(Debug, thiserror::Error)]
pub enum PropsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is malformed: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Meta(#[from] crate::meta::MetaError),
}

/// The contents of `meta.properties`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaProperties {
    pub cluster_id: String,
    pub node_id: i32,
    /// Random per formatting (Kafka's `directory.id`, 22-char base64url).
    pub directory_id: String,
    /// This node initializes the metadata quorum on its first start.
    pub bootstrap: bool,
}

/// 16 random bytes as Kafka prints a `Uuid`: base64url without padding (22 characters).
/// Like Kafka's `Uuid.randomUuid`, never one that starts with `-` (1 in 64 would), which a
/// command line takes for a flag (`format --cluster-id -oX…` failed in a test run), and never
/// the reserved all-zero one.
pub fn random_kafka_uuid() -> String {
    // Each draw is bad with probability 1/64: 64 draws all bad is ~2^-384.
    for _ in 0..64 {
        let id = base64url(crate::meta::random_uuid().as_bytes());
        if !id.starts_with('-') && id != "AAAAAAAAAAAAAAAAAAAAAA" {
            return id;
        }
    }
    // Unreachable in practice; still a valid id that does not start with '-'.
    let mut b = *crate::meta::random_uuid().as_bytes();
    b[0] &= 0x7f;
    b[0] |= 0x04;
    base64url(&b)
}

/// Kafka's `Uuid.toString`: URL-safe base64 without padding.
pub fn base64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 2);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Kafka's cluster id rule: a base64url `Uuid` (16 bytes, 22 characters).
pub fn valid_cluster_id(id: &str) -> bool {
    id.len() == 22
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

impl MetaProperties {
    pub fn encode(&self) -> String {
        let mut s = format!(
            "#\n# Written by holdfast format; do not edit.\nversion=1\ncluster.id={}\nnode.id={}\ndirectory.id={}\n",
            self.cluster_id, self.node_id, self.directory_id
        );
        if self.bootstrap {
            s.push_str("holdfast.bootstrap=true\n");
        }
        s
    }

    pub fn decode(path: &Path, text: &str) -> Result<MetaProperties, PropsError> {
        let bad = |reason: String| PropsError::Malformed {
            path: path.to_path_buf(),
            reason,
        };
        let mut kv = BTreeMap::new();
        for line in text.lines().take(1000) {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| bad(format!("line {line:?} is not key=value")))?;
            kv.insert(k.trim().to_string(), v.trim().to_string());
        }
        if kv.get("version").map(String::as_str) != Some("1") {
            return Err(bad("version is not 1".into()));
        }
        let cluster_id = kv
            .get("cluster.id")
            .cloned()
            .ok_or_else(|| bad("no cluster.id".into()))?;
        let node_id = kv
            .get("node.id")
            .and_then(|v| v.parse::<i32>().ok())
            .ok_or_else(|| bad("no valid node.id".into()))?;
        Ok(MetaProperties {
            cluster_id,
            node_id,
            directory_id: kv.get("directory.id").cloned().unwrap_or_default(),
            bootstrap: kv.get("holdfast.bootstrap").map(String::as_str) == Some("true"),
        })
    }

    /// Reads `dir/meta.properties`; `Ok(None)` when the directory is not formatted.
    pub fn read(dir: &Path) -> Result<Option<MetaProperties>, PropsError> {
        let path = dir.join(FILE_NAME);
        match std::fs::read_to_string(&path) {
            Ok(text) => MetaProperties::decode(&path, &text).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(PropsError::Io { path, source }),
        }
    }

    /// `holdfast format`: refuses a directory that is already formatted or already holds a
    /// metadata log. A voter whose directory was wiped must not come back under its old node
    /// id (Raft's safety rests on voters never forgetting what they acknowledged;
    /// docs/format-quorum.md "Lost data"), so formatting never reuses a directory and the
    /// operator must give a wiped node a new id.
    pub fn format(dir: &Path, props: &MetaProperties) -> Result<(), PropsError> {
        if !valid_cluster_id(&props.cluster_id) {
            return Err(PropsError::Refused(format!(
                "cluster id {:?} is not a 22-character base64url id (use `holdfast random-uuid`)",
                props.cluster_id
            )));
        }
        if props.node_id < 0 {
            return Err(PropsError::Refused(format!(
                "node id {} must be >= 0",
                props.node_id
            )));
        }
        if let Some(existing) = MetaProperties::read(dir)? {
            return Err(PropsError::Refused(format!(
                "{} is already formatted (cluster {}, node {}); formatting never reuses a \
                 directory",
                dir.display(),
                existing.cluster_id,
                existing.node_id
            )));
        }
        if dir.join(holdfast_quorum::LOG_DIR_NAME).exists() {
            return Err(PropsError::Refused(format!(
                "{} holds a metadata log but no {FILE_NAME}; refusing to format it",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir).map_err(|source| PropsError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        crate::meta::write_atomic(&dir.join(FILE_NAME), props.encode().as_bytes())?;
        Ok(())
    }

    /// `holdfast serve` in cluster mode: the directory must be formatted for this node.
    pub fn check_for_serve(dir: &Path, node_id: i32) -> Result<MetaProperties, PropsError> {
        let props = MetaProperties::read(dir)?.ok_or_else(|| {
            PropsError::Refused(format!(
                "{} is not formatted: run `holdfast format --data-dir {} --node-id {node_id} \
                 --cluster-id <id>` first",
                dir.display(),
                dir.display()
            ))
        })?;
        if props.node_id != node_id {
            return Err(PropsError::Refused(format!(
                "{} was formatted for node {}, not node {node_id}",
                dir.display(),
                props.node_id
            )));
        }
        Ok(props)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_uuid_is_22_base64url_chars() {
        for _ in 0..2_000 {
            let id = random_kafka_uuid();
            assert!(valid_cluster_id(&id), "{id}");
            assert!(
                !id.starts_with('-'),
                "{id} would read as a command-line flag"
            );
        }
        // Kafka's Uuid(0, 1).toString() is "AAAAAAAAAAAAAAAAAAAAAQ".
        let mut b = [0u8; 16];
        b[15] = 1;
        assert_eq!(base64url(&b), "AAAAAAAAAAAAAAAAAAAAAQ");
    }

    #[test]
    fn format_round_trips_and_refuses_reformatting() {
        let dir = std::env::temp_dir().join(format!("hf-props-{}", fastrand::u64(..)));
        let p = MetaProperties {
            cluster_id: random_kafka_uuid(),
            node_id: 3,
            directory_id: random_kafka_uuid(),
            bootstrap: true,
        };
        MetaProperties::format(&dir, &p).expect("format");
        assert_eq!(MetaProperties::read(&dir).expect("read"), Some(p.clone()));
        assert!(MetaProperties::format(&dir, &p).is_err());
        assert!(MetaProperties::check_for_serve(&dir, 3).is_ok());
        assert!(MetaProperties::check_for_serve(&dir, 2).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
