//! The metadata state machine: applies committed `Record`s to a `MetadataImage` and
//! publishes the result.
//!
//! One quorum command is one encoded [`Record`] (`Record::encode`), so every record has its
//! own log index: `RegisterBroker`'s broker epoch is that index, and `MetadataImage::apply`
//! requires strictly growing indexes. An empty command is a barrier (the active controller
//! proposes one when it takes over, so that everything committed in earlier terms is applied
//! before it decides anything) and changes nothing.
//!
//! The image is published on a `watch` (level-triggered): consumers reconcile against the
//! latest image, so there is no delta queue to bound.

use std::sync::Arc;

use holdfast_metadata::{MetadataImage, Record};
use tokio::sync::watch;

pub(crate) struct MetadataSm {
    image: MetadataImage,
    tx: watch::Sender<Arc<MetadataImage>>,
}

impl MetadataSm {
    pub(crate) fn new() -> (MetadataSm, watch::Receiver<Arc<MetadataImage>>) {
        let (tx, rx) = watch::channel(Arc::new(MetadataImage::new()));
        (
            MetadataSm {
                image: MetadataImage::new(),
                tx,
            },
            rx,
        )
    }

    fn publish(&self) {
        self.tx.send_replace(Arc::new(self.image.clone()));
    }
}

impl holdfast_quorum::StateMachine for MetadataSm {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        if command.is_empty() {
            return Vec::new();
        }
        let record = match Record::decode(command) {
            Ok(r) => r,
            Err(e) => {
                // Every node decodes the same bytes the same way: skipping keeps them equal.
                tracing::error!(index, error = %e, "undecodable metadata record skipped");
                return format!("undecodable: {e}").into_bytes();
            }
        };
        let out = match self.image.apply(index, &record) {
            Ok(_) => Vec::new(),
            Err(rejected) => {
                tracing::warn!(index, ?record, %rejected, "metadata record rejected on apply");
                rejected.to_string().into_bytes()
            }
        };
        if let Record::UncleanElection {
            topic, partition, ..
        } = &record
        {
            tracing::warn!(index, ?topic, partition, "unclean election applied");
        }
        self.publish();
        out
    }

    fn snapshot(&self) -> Vec<u8> {
        self.image.encode_snapshot()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let image = MetadataImage::decode_snapshot(snapshot).map_err(|e| e.to_string())?;
        self.image = image;
        self.publish();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_quorum::StateMachine;

    #[test]
    fn applies_records_in_order_and_publishes_each_image() {
        let (mut sm, rx) = MetadataSm::new();
        let boot = Record::Bootstrap {
            cluster_id: "c".repeat(22),
            metadata_version: 1,
        };
        assert!(sm.apply(1, &boot.encode()).is_empty());
        // A barrier changes nothing, not even the applied index.
        assert!(sm.apply(2, &[]).is_empty());
        assert_eq!(rx.borrow().last_applied, 1);
        let reg = Record::RegisterBroker {
            id: 7,
            incarnation: 42,
            listeners: vec![],
            rack: None,
        };
        assert!(sm.apply(3, &reg.encode()).is_empty());
        let img = rx.borrow().clone();
        assert_eq!(img.last_applied, 3);
        assert_eq!(
            img.brokers[&7].epoch, 3,
            "broker epoch = index of RegisterBroker"
        );
        assert!(img.brokers[&7].fenced);
        // Garbage and stale records are reported, never applied, never a panic.
        assert!(!sm.apply(4, b"\x00\x01not json").is_empty());
        assert!(!sm.apply(3, &reg.encode()).is_empty());
        // Snapshot and restore give the same image.
        let snap = sm.snapshot();
        let (mut other, rx2) = MetadataSm::new();
        other.restore(&snap).expect("restore");
        assert_eq!(*rx2.borrow().as_ref(), sm.image);
        assert!(other.restore(b"junk").is_err());
    }
}
