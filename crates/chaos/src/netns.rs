//! Network isolation for cluster runs as root: every node in its own network namespace, joined
//! to a bridge in the root namespace by a veth pair, and network partitions as blackhole routes
//! inside the namespaces.
//!
//! Layout of one run (`K` picked so the names are unused): bridge `hfbrK` with 10.199.K.254/24
//! in the root namespace (the workload and the tools connect from there); node `i` in namespace
//! `hfK-i` with 10.199.K.i/24 on `hfK-i-n`, whose peer `hfK-i-h` is a bridge port. Every node
//! uses the same ports (its own namespace has its own port space).
//!
//! A partition is a set of cut directions `from → to`: a `blackhole` route to `to`'s address in
//! `from`'s namespace (more specific than the /24 link route), so `from` can no longer send to
//! `to` (TCP connections stall and time out, as on a real partition; nothing is reset). A
//! symmetric cut is both directions. The client side is the bridge address: cutting
//! `node → 10.199.K.254` stops the node's answers to clients. Only `ip` (iproute2) is needed:
//! this machine has no nft, iptables or netem, so probabilistic loss and delays are not
//! available here (said in the report).

use std::collections::BTreeSet;

use anyhow::{bail, Context};

use crate::env::sh;

/// Port of every node's Kafka listener inside its namespace.
pub const BROKER_PORT: u16 = 9092;
/// Port of every node's controller (quorum) listener inside its namespace.
pub const CONTROLLER_PORT: u16 = 9093;

/// The namespaces and bridge of one run; removed on drop.
pub struct Net {
    k: u32,
    nodes: usize,
    /// Cut directions in place: (from node index, to address).
    cuts: BTreeSet<(usize, String)>,
}

/// Whether `ip netns` works here (root and iproute2 with netns support).
pub fn available() -> Result<(), String> {
    sh("ip", &["netns", "list"])
        .map(|_| ())
        .map_err(|e| format!("`ip netns` does not work here: {e:#}"))
}

impl Net {
    /// Creates the bridge and `nodes` namespaces. On error, whatever was created is removed.
    pub fn create(nodes: usize) -> anyhow::Result<Net> {
        // A free K: no bridge of that name (another run, or a crashed one, may hold one).
        let start = std::process::id() % 200;
        let k = (0..200)
            .map(|d| 10 + (start + d) % 200)
            .find(|k| sh("ip", &["link", "show", &format!("hfbr{k}")]).is_err())
            .context("no free network name for the run's bridge")?;
        let net = Net {
            k,
            nodes,
            cuts: BTreeSet::new(),
        };
        net.setup()?;
        Ok(net)
    }

    fn setup(&self) -> anyhow::Result<()> {
        let k = self.k;
        let br = format!("hfbr{k}");
        sh("ip", &["link", "add", &br, "type", "bridge"])?;
        sh(
            "ip",
            &["addr", "add", &format!("{}/24", self.host_ip()), "dev", &br],
        )?;
        sh("ip", &["link", "set", &br, "up"])?;
        for i in 0..self.nodes {
            let ns = self.ns(i);
            let host_end = format!("hf{k}-{}-h", i + 1);
            let ns_end = format!("hf{k}-{}-n", i + 1);
            sh("ip", &["netns", "add", &ns])?;
            sh(
                "ip",
                &[
                    "link", "add", &host_end, "type", "veth", "peer", "name", &ns_end,
                ],
            )?;
            sh("ip", &["link", "set", &ns_end, "netns", &ns])?;
            sh("ip", &["link", "set", &host_end, "master", &br, "up"])?;
            sh(
                "ip",
                &[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{}/24", self.node_ip(i)),
                    "dev",
                    &ns_end,
                ],
            )?;
            sh("ip", &["-n", &ns, "link", "set", &ns_end, "up"])?;
            sh("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Namespace of node index `i` (node id `i + 1`).
    pub fn ns(&self, i: usize) -> String {
        format!("hf{}-{}", self.k, i + 1)
    }

    /// Address of node index `i`.
    pub fn node_ip(&self, i: usize) -> String {
        format!("10.199.{}.{}", self.k, i + 1)
    }

    /// The root namespace's address on the bridge (where clients come from).
    pub fn host_ip(&self) -> String {
        format!("10.199.{}.254", self.k)
    }

    /// Stops node `from` sending to address `to`.
    pub fn cut(&mut self, from: usize, to: &str) -> anyhow::Result<()> {
        if from >= self.nodes {
            bail!("no node index {from}");
        }
        if self.cuts.contains(&(from, to.to_string())) {
            return Ok(());
        }
        sh(
            "ip",
            &[
                "-n",
                &self.ns(from),
                "route",
                "add",
                "blackhole",
                &format!("{to}/32"),
            ],
        )?;
        self.cuts.insert((from, to.to_string()));
        Ok(())
    }

    /// Removes every cut. Returns how many there were.
    pub fn heal(&mut self) -> anyhow::Result<usize> {
        let cuts = std::mem::take(&mut self.cuts);
        let n = cuts.len();
        let mut first_err = None;
        for (from, to) in cuts {
            if let Err(e) = sh(
                "ip",
                &[
                    "-n",
                    &self.ns(from),
                    "route",
                    "del",
                    "blackhole",
                    &format!("{to}/32"),
                ],
            ) {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    /// The cut directions in place, for the report.
    pub fn describe_cuts(&self) -> String {
        self.cuts
            .iter()
            .map(|(from, to)| format!("{}->{}", from + 1, self.name_of(to)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn name_of(&self, addr: &str) -> String {
        if addr == self.host_ip() {
            return "clients".into();
        }
        (0..self.nodes)
            .find(|i| self.node_ip(*i) == addr)
            .map_or(addr.to_string(), |i| (i + 1).to_string())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end, and with it the peer on the bridge.
        for i in 0..self.nodes {
            let _ = sh("ip", &["netns", "del", &self.ns(i)]);
        }
        let _ = sh("ip", &["link", "del", &format!("hfbr{}", self.k)]);
    }
}
