//! Protected retention (topic configs `retention.protect.groups`, a comma-separated list of
//! consumer groups, and `retention.protect.max.bytes`, the hard cap per partition, default
//! 1 GiB): retention keeps every segment holding records a protected group has not
//! consumed, while the partition is within the cap. Beyond the cap deletion happens, and the
//! records a group never saw are recorded in the loss ledger like any retention loss.

use std::collections::BTreeMap;

use crate::meta::TopicMeta;

/// `retention.protect.max.bytes` when not set.
pub const DEFAULT_CAP_BYTES: u64 = 1 << 30;

/// Committed offsets by (group, topic, partition), as `GroupService::committed_offsets`.
pub type Committed = BTreeMap<(String, String, i32), i64>;

/// The protected groups of a topic, if any.
pub fn groups(meta: &TopicMeta) -> Vec<String> {
    meta.config
        .get("retention.protect.groups")
        .map(|v| {
            v.split(',')
                .map(|g| g.trim().to_string())
                .filter(|g| !g.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// (protect_from, cap_bytes) for one partition: the lowest committed offset of the
/// protected groups (a protected group without a committed offset has read nothing: the
/// whole log is protected). `None` when the topic protects no group.
pub fn floor(meta: &TopicMeta, partition: i32, committed: &Committed) -> Option<(i64, u64)> {
    let groups = groups(meta);
    if groups.is_empty() {
        return None;
    }
    let cap = meta
        .config
        .get("retention.protect.max.bytes")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(DEFAULT_CAP_BYTES);
    let from = groups
        .iter()
        .map(|g| {
            committed
                .get(&(g.clone(), meta.name.clone(), partition))
                .copied()
                .unwrap_or(i64::MIN)
        })
        .min()
        .unwrap_or(i64::MIN);
    Some((from, cap))
}
