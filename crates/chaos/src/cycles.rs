//! Dependency cycles between transactions (Adya's G0 and G1c, as Jepsen's Kafka checker
//! looks for them), over the final `read_committed` views of the transactional topic and the
//! copier's topic.
//!
//! Nodes are the visible transactions: the transactional workload's (`T <key>`) and the
//! copier's (`C <key>`). Edges:
//!
//! - **ww** (write order): on each partition, the transaction of a value precedes the
//!   transaction of the next value of another transaction;
//! - **wr** (information flow): a copier transaction read a value a workload transaction
//!   wrote (it copied it);
//! - **po** (process order): each workload runs its transactions one after another in one
//!   thread, and a new producer instance fences and completes its predecessor's open
//!   transaction before it starts one, so transaction `n` ends before `n + 1` begins.
//!
//! A cycle of ww and po edges is G0 (the log ordered two transactions against the order they
//! ran in); one through a wr edge is G1c (circular information flow). Kafka's protocol allows
//! ww cycles between *concurrent* transactions of different producers (no write locks; see
//! Jepsen's Redpanda analysis): here no two producers write the same topic, so every ww edge
//! joins transactions of one process, which never overlap, and any cycle is an anomaly.

use std::collections::{BTreeMap, HashMap};

use crate::checker::Anomaly;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    Ww,
    Wr,
    Po,
}

#[derive(Debug, Default)]
pub struct Graph {
    names: Vec<String>,
    index: HashMap<String, usize>,
    adj: Vec<Vec<(usize, Edge)>>,
}

impl Graph {
    pub fn node(&mut self, name: &str) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = self.names.len();
        self.names.push(name.to_string());
        self.index.insert(name.to_string(), i);
        self.adj.push(Vec::new());
        i
    }

    pub fn edge(&mut self, from: &str, to: &str, kind: Edge) {
        if from == to {
            return;
        }
        let (a, b) = (self.node(from), self.node(to));
        if !self.adj[a].contains(&(b, kind)) {
            self.adj[a].push((b, kind));
        }
    }

    /// Adds ww edges for one partition's values in offset order, each mapped to the
    /// transaction that wrote it (`None`: not a transaction's value).
    pub fn write_order<'a>(&mut self, txns_in_offset_order: impl Iterator<Item = Option<&'a str>>) {
        let mut prev: Option<String> = None;
        for t in txns_in_offset_order.flatten() {
            if let Some(p) = &prev {
                if p != t {
                    self.edge(p, t, Edge::Ww);
                }
            }
            prev = Some(t.to_string());
        }
    }

    /// Adds po edges between consecutive transactions of one process, given as
    /// (sequence number, name).
    pub fn process_order(&mut self, mut txns: Vec<(u64, String)>) {
        txns.sort();
        for w in txns.windows(2) {
            self.edge(&w[0].1, &w[1].1, Edge::Po);
        }
    }

    /// Strongly connected components with more than one node (iterative Kosaraju: the
    /// graphs have thousands of nodes in long chains, too deep for recursion).
    fn components(&self) -> Vec<Vec<usize>> {
        let n = self.names.len();
        let mut order = Vec::with_capacity(n);
        let mut seen = vec![false; n];
        for s in 0..n {
            if seen[s] {
                continue;
            }
            seen[s] = true;
            let mut stack = vec![(s, 0usize)];
            while let Some(&mut (v, ref mut i)) = stack.last_mut() {
                if let Some(&(w, _)) = self.adj[v].get(*i) {
                    *i += 1;
                    if !seen[w] {
                        seen[w] = true;
                        stack.push((w, 0));
                    }
                } else {
                    order.push(v);
                    stack.pop();
                }
            }
        }
        let mut radj = vec![Vec::new(); n];
        for (v, out) in self.adj.iter().enumerate() {
            for &(w, _) in out {
                radj[w].push(v);
            }
        }
        let mut comp = vec![usize::MAX; n];
        let mut out = Vec::new();
        for &s in order.iter().rev() {
            if comp[s] != usize::MAX {
                continue;
            }
            let id = out.len();
            let mut members = vec![s];
            comp[s] = id;
            let mut stack = vec![s];
            while let Some(v) = stack.pop() {
                for &w in &radj[v] {
                    if comp[w] == usize::MAX {
                        comp[w] = id;
                        members.push(w);
                        stack.push(w);
                    }
                }
            }
            out.push(members);
        }
        out.into_iter().filter(|c| c.len() > 1).collect()
    }

    /// One cycle through `start` inside its component (breadth-first, so a shortest one),
    /// as (node, edge to the next node).
    fn cycle_through(&self, start: usize, members: &[usize]) -> Vec<(usize, Edge)> {
        let inside: std::collections::HashSet<usize> = members.iter().copied().collect();
        let mut parent: HashMap<usize, (usize, Edge)> = HashMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        while let Some(v) = queue.pop_front() {
            for &(w, e) in &self.adj[v] {
                if !inside.contains(&w) {
                    continue;
                }
                if w == start {
                    let mut path = vec![(v, e)];
                    let mut cur = v;
                    while cur != start {
                        let (p, pe) = parent[&cur];
                        path.push((p, pe));
                        cur = p;
                    }
                    path.reverse();
                    return path;
                }
                if let std::collections::hash_map::Entry::Vacant(x) = parent.entry(w) {
                    x.insert((v, e));
                    queue.push_back(w);
                }
            }
        }
        Vec::new()
    }

    /// One anomaly per cyclic component: `txn-cycle-g1c` if a wr edge lies inside it,
    /// `txn-cycle-g0` otherwise, with a shortest cycle through its first node.
    pub fn anomalies(&self) -> Vec<Anomaly> {
        let mut out = Vec::new();
        for members in self.components() {
            let inside: std::collections::HashSet<usize> = members.iter().copied().collect();
            let wr = members.iter().any(|&v| {
                self.adj[v]
                    .iter()
                    .any(|&(w, e)| e == Edge::Wr && inside.contains(&w))
            });
            let start = members.iter().copied().min().unwrap_or(0);
            let cycle = self.cycle_through(start, &members);
            let text: Vec<String> = cycle
                .iter()
                .map(|(v, e)| format!("{} -{e:?}->", self.names[*v]))
                .collect();
            out.push(Anomaly {
                class: if wr { "txn-cycle-g1c" } else { "txn-cycle-g0" },
                what: format!(
                    "{} transactions in a dependency cycle, e.g. {} {}",
                    members.len(),
                    text.join(" "),
                    self.names[start]
                ),
                ops: Vec::new(),
                at_us: None,
            });
        }
        out
    }

    pub fn size(&self) -> (usize, usize) {
        (self.names.len(), self.adj.iter().map(Vec::len).sum())
    }
}

/// The sequence number of a transaction key `<instance>-<n>` (`n` counts across instances).
pub fn seq(key: &str) -> Option<u64> {
    key.rsplit_once('-').and_then(|(_, n)| n.parse().ok())
}

/// Builds the graph from the `read_committed` views: `txn_values` of the transactional
/// topic (partition, offset, value) with `txn_key` naming a value's transaction, and
/// `copies` of the copier's topic with `copy_of` giving (copier transaction, input value).
pub fn build(
    txn_values: &[crate::copy::Input],
    txn_key: impl Fn(&str) -> Option<&str>,
    copies: &[crate::copy::Input],
    copy_of: impl Fn(&str) -> Option<(&str, &str)>,
) -> Graph {
    let mut g = Graph::default();
    let mut by_partition: BTreeMap<i32, Vec<(i64, Option<String>)>> = BTreeMap::new();
    let mut t_nodes: HashMap<String, u64> = HashMap::new();
    for (p, o, v) in txn_values {
        let t = txn_key(v).map(|k| format!("T {k}"));
        if let (Some(name), Some(k)) = (&t, txn_key(v)) {
            g.node(name);
            t_nodes.insert(name.clone(), seq(k).unwrap_or(0));
        }
        by_partition.entry(*p).or_default().push((*o, t));
    }
    for (_, mut vals) in std::mem::take(&mut by_partition) {
        vals.sort_by_key(|x| x.0);
        g.write_order(vals.iter().map(|(_, t)| t.as_deref()));
    }
    let mut c_nodes: HashMap<String, u64> = HashMap::new();
    for (p, o, v) in copies {
        let c = copy_of(v).map(|(k, input)| {
            let name = format!("C {k}");
            c_nodes.insert(name.clone(), seq(k).unwrap_or(0));
            if let Some(t) = txn_key(input) {
                g.edge(&format!("T {t}"), &name, Edge::Wr);
            }
            name
        });
        by_partition.entry(*p).or_default().push((*o, c));
    }
    for (_, mut vals) in by_partition {
        vals.sort_by_key(|x| x.0);
        g.write_order(vals.iter().map(|(_, t)| t.as_deref()));
    }
    g.process_order(t_nodes.into_iter().map(|(k, n)| (n, k)).collect());
    g.process_order(c_nodes.into_iter().map(|(k, n)| (n, k)).collect());
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(g: &Graph) -> Vec<&'static str> {
        g.anomalies().iter().map(|a| a.class).collect()
    }

    #[test]
    fn finds_g0_and_g1c_and_nothing_in_a_serial_history() {
        // Serial: T1 then T2 on both partitions, C1 copies T1, C2 copies T2.
        let v = |p: i32, o: i64, s: &str| (p, o, s.to_string());
        fn txn_key(s: &str) -> Option<&str> {
            s.split_once('/').map(|(k, _)| k)
        }
        fn copy_of(s: &str) -> Option<(&str, &str)> {
            s.split_once(' ')
        }
        let txns = vec![
            v(0, 0, "1-1/a"),
            v(1, 0, "1-1/b"),
            v(0, 1, "1-2/c"),
            v(1, 1, "1-2/d"),
        ];
        let copies = vec![v(0, 0, "1-1 1-1/a"), v(0, 1, "1-2 1-2/c")];
        let g = build(&txns, txn_key, &copies, copy_of);
        assert_eq!(g.size().0, 4);
        assert!(classes(&g).is_empty(), "{:?}", g.anomalies());

        // G0: partition 1 orders T2 before T1 (and process order says T1 first).
        let torn = vec![
            v(0, 0, "1-1/a"),
            v(1, 0, "1-2/d"),
            v(0, 1, "1-2/c"),
            v(1, 1, "1-1/b"),
        ];
        let g = build(&torn, txn_key, &[], copy_of);
        assert_eq!(classes(&g), ["txn-cycle-g0"]);
        assert!(g.anomalies()[0].what.contains("T 1-1"));

        // The copier's write order against its process order: copier transaction 1-2
        // wrote before 1-1 on the same partition. G0 (no wr edge inside the cycle).
        let swapped = vec![v(0, 0, "1-2 1-1/a"), v(0, 1, "1-1 1-2/c")];
        let g = build(&txns, txn_key, &swapped, copy_of);
        assert_eq!(classes(&g), ["txn-cycle-g0"]);

        // A cycle through a wr edge (a copier transaction's copy ordered before a write of
        // the transaction it read from): G1c.
        let mut g = Graph::default();
        g.edge("T 1-1", "C 1-1", Edge::Wr);
        g.edge("C 1-1", "T 1-1", Edge::Ww);
        g.node("T 9-9");
        assert_eq!(classes(&g), ["txn-cycle-g1c"]);
        assert!(g.anomalies()[0].what.starts_with("2 transactions"));
    }
}
