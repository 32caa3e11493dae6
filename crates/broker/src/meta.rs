//! Broker metadata persisted in `<data-dir>/.holdfast-meta/`: one small text file per topic
//! (id, partition count, config overrides), the cluster id and the producer-id block.
//! Every file is replaced atomically: write a temporary file, fsync, rename, fsync the dir.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use uuid::Uuid;

pub const META_DIR: &str = ".holdfast-meta";
const TOPIC_SUFFIX: &str = ".topic";

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("metadata file {path} is malformed: {reason}")]
    Malformed { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> MetaError + '_ {
    move |source| MetaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn from_log(e: holdfast_log::LogError) -> MetaError {
    match e {
        holdfast_log::LogError::Io { path, source } => MetaError::Io { path, source },
        other => MetaError::Malformed {
            path: PathBuf::new(),
            reason: other.to_string(),
        },
    }
}

/// Replaces `path` with `contents` atomically and durably (the log crate's atomic replace).
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), MetaError> {
    holdfast_log::fsutil::write_atomic(path, contents).map_err(from_log)
}

pub fn sync_dir(dir: &Path) -> Result<(), MetaError> {
    holdfast_log::fsutil::sync_dir(dir).map_err(from_log)
}

/// What the broker knows of a topic beyond its partition logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMeta {
    pub name: String,
    pub id: Uuid,
    pub partitions: i32,
    pub config: BTreeMap<String, String>,
}

impl TopicMeta {
    fn encode(&self) -> String {
        let mut s = format!(
            "version=1\nname={}\nid={}\npartitions={}\n",
            self.name,
            self.id.simple(),
            self.partitions
        );
        for (k, v) in &self.config {
            s.push_str(&format!("config.{k}={}\n", v.replace('\n', " ")));
        }
        s.push_str("end\n");
        s
    }

    fn decode(path: &Path, text: &str) -> Result<TopicMeta, MetaError> {
        let bad = |reason: &str| MetaError::Malformed {
            path: path.to_path_buf(),
            reason: reason.into(),
        };
        if !text.ends_with("end\n") {
            return Err(bad("missing end marker"));
        }
        let (mut name, mut id, mut partitions) = (None, None, None);
        let mut config = BTreeMap::new();
        for line in text.lines() {
            if line == "end" {
                break;
            }
            let (k, v) = line.split_once('=').ok_or_else(|| bad("line without ="))?;
            match k {
                "version" if v == "1" => {}
                "version" => return Err(bad("unknown version")),
                "name" => name = Some(v.to_string()),
                "id" => id = Some(Uuid::parse_str(v).map_err(|_| bad("bad topic id"))?),
                "partitions" => {
                    partitions = Some(v.parse::<i32>().map_err(|_| bad("bad partition count"))?)
                }
                _ => {
                    let key = k
                        .strip_prefix("config.")
                        .ok_or_else(|| bad("unknown key"))?;
                    config.insert(key.to_string(), v.to_string());
                }
            }
        }
        Ok(TopicMeta {
            name: name.ok_or_else(|| bad("no name"))?,
            id: id.ok_or_else(|| bad("no id"))?,
            partitions: partitions
                .filter(|p| *p > 0)
                .ok_or_else(|| bad("no partition count"))?,
            config,
        })
    }
}

/// The metadata directory of a data dir.
#[derive(Debug, Clone)]
pub struct MetaStore {
    dir: PathBuf,
}

impl MetaStore {
    pub fn open(data_dir: &Path) -> Result<MetaStore, MetaError> {
        let dir = data_dir.join(META_DIR);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        sync_dir(data_dir)?;
        Ok(MetaStore { dir })
    }

    fn topic_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{TOPIC_SUFFIX}"))
    }

    pub fn load_topics(&self) -> Result<Vec<TopicMeta>, MetaError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("topic") {
                continue;
            }
            let text = fs::read_to_string(&path).map_err(io_err(&path))?;
            out.push(TopicMeta::decode(&path, &text)?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn save_topic(&self, t: &TopicMeta) -> Result<(), MetaError> {
        write_atomic(&self.topic_path(&t.name), t.encode().as_bytes())
    }

    pub fn remove_topic(&self, name: &str) -> Result<(), MetaError> {
        let p = self.topic_path(name);
        match fs::remove_file(&p) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(MetaError::Io { path: p, source: e }),
        }
    }

    /// The cluster id, created on first start.
    pub fn cluster_id(&self) -> Result<String, MetaError> {
        let p = self.dir.join("cluster-id");
        match fs::read_to_string(&p) {
            Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            Ok(_) => Err(MetaError::Malformed {
                path: p,
                reason: "empty".into(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let id = random_uuid().simple().to_string()[..22].to_string();
                write_atomic(&p, format!("{id}\n").as_bytes())?;
                Ok(id)
            }
            Err(e) => Err(MetaError::Io { path: p, source: e }),
        }
    }

    /// Reserves producer ids `[start, start + count)`: persisted before any is handed out,
    /// so ids are never reused after a restart.
    pub fn reserve_producer_ids(&self, count: i64) -> Result<i64, MetaError> {
        let p = self.dir.join("next-producer-id");
        let start = match fs::read_to_string(&p) {
            Ok(s) => s.trim().parse::<i64>().map_err(|_| MetaError::Malformed {
                path: p.clone(),
                reason: "not a number".into(),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 1000,
            Err(e) => return Err(MetaError::Io { path: p, source: e }),
        };
        write_atomic(&p, format!("{}\n", start + count).as_bytes())?;
        Ok(start)
    }
}

/// A random (v4-shaped) UUID that is neither nil nor Kafka's reserved metadata topic id.
pub fn random_uuid() -> Uuid {
    loop {
        let mut b = [0u8; 16];
        for x in b.iter_mut() {
            *x = fastrand::u8(..);
        }
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let u = Uuid::from_bytes(b);
        if u.as_u128() > 1 {
            return u;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_meta_round_trips() {
        let dir = std::env::temp_dir().join(format!("hf-meta-{}", fastrand::u64(..)));
        let store = MetaStore::open(&dir).expect("open");
        let mut config = BTreeMap::new();
        config.insert("retention.ms".to_string(), "5".to_string());
        let t = TopicMeta {
            name: "a.b-c_d".into(),
            id: random_uuid(),
            partitions: 3,
            config,
        };
        store.save_topic(&t).expect("save");
        assert_eq!(store.load_topics().expect("load"), vec![t.clone()]);
        let a = store.reserve_producer_ids(10).expect("reserve");
        let b = store.reserve_producer_ids(10).expect("reserve");
        assert_eq!(b, a + 10);
        store.remove_topic(&t.name).expect("remove");
        assert!(store.load_topics().expect("load").is_empty());
        let _ = fs::remove_dir_all(&dir);
    }
}
