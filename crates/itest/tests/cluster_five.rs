//! Five-node cluster under faults (issue #6, docs/cluster.md): five real `holdfast serve`
//! processes on loopback (every node a voter and a broker), RF 3 topics, an idempotent
//! `acks=all` rdkafka producer and a consumer tailing the topic while it is written. One
//! cluster for the whole file, scenarios in sequence, each on its own topic:
//!
//! 1. Leader chase: SIGKILL the leader of the busiest partition, five times (restarting each
//!    victim once a new leader is elected).
//! 2. The 2013 Jepsen scenario: both followers of a partition SIGSTOPped (the metadata quorum
//!    keeps 3 of 5 voters, the active controller among them), the ISR shrinks to the leader
//!    alone, acks=all is refused with NOT_ENOUGH_REPLICAS and nothing is acknowledged on that
//!    partition; the leader is SIGKILLed, the followers resume and one of them is elected
//!    from the ELR (KIP-966); no acknowledged record is lost and no refused one appears.
//! 3. Kill-all: every node SIGKILLed at once under load, then restarted.
//! 4. Controller failover under load: SIGKILL of the active controller; a new one is elected
//!    and CreateTopics works.
//! 5. Rolling restart: SIGTERM, exit, restart, back in every ISR, node after node.
//!
//! Every scenario: every acknowledged record is read back once, in order per partition; the
//! tailing consumer got every acknowledged record, no offset twice, and nothing that is not
//! in the log afterwards; the producer got no delivery error (librdkafka retried only
//! retriable ones). Figures are printed (`--nocapture`).
//!
//! Build first: `cargo build -p holdfast && cargo test -p holdfast-itest --test cluster_five`.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};

const NODES: i32 = 5;

/// A Metadata view from the first serving node (other than `not`) that answers.
async fn view_any(cluster: &Cluster, not: &[i32], topics: Option<&[&str]>) -> Option<View> {
    for n in &cluster.nodes {
        if n.child.is_none() || n.stopped || not.contains(&n.id) {
            continue;
        }
        if let Some(v) = view(&n.addr, topics).await {
            return Some(v);
        }
    }
    None
}

/// Waits until a node other than `not` shows all five brokers unfenced and every partition
/// of `topics` (None: of every topic) led with a full ISR.
async fn wait_settled(
    cluster: &Cluster,
    not: &[i32],
    topics: Option<&[&str]>,
    timeout: Duration,
) -> Result<View> {
    wait_for("five brokers, every ISR full", timeout, || async move {
        view_any(cluster, not, topics)
            .await
            .filter(|v| v.brokers.len() == NODES as usize && v.controller >= 0 && v.settled())
    })
    .await
}

/// Stops `load`, reads the topic back, finishes `tail`, and checks everything (see the file
/// comment). Returns (stats, records in the log, records the tail consumed, tail errors).
async fn finish(
    cluster: &Cluster,
    load: Load,
    tail: Tail,
    topic: &str,
    partitions: i32,
) -> Result<(LoadStats, usize, usize, usize)> {
    let stats = load.stop().await?;
    ensure!(
        stats.errors.is_empty(),
        "{topic}: {} delivery errors reached the producer, e.g. {:?}",
        stats.errors.len(),
        &stats.errors[..stats.errors.len().min(5)]
    );
    let read = consume_all(&cluster.bootstrap(), topic, partitions, stats.acked.len())?;
    check_read_back(&stats.acked, &read).with_context(|| format!("{topic}: read back"))?;
    let (consumed, tail_errors) = tail
        .finish(&stats.acked, &read)
        .await
        .with_context(|| format!("{topic}: tailing consumer"))?;
    Ok((stats, read.len(), consumed, tail_errors))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_node_cluster_under_faults() -> Result<()> {
    let test_start = Instant::now();
    let mut cluster = Cluster::start("five", NODES, FAST_FAILURE_DETECTION)?;
    let formed = wait_for(
        "five brokers and a controller",
        Duration::from_secs(60),
        || async {
            view(&cluster.nodes[0].addr, None)
                .await
                .filter(|v| v.brokers.len() == NODES as usize && v.controller >= 0)
        },
    )
    .await?;
    eprintln!(
        "formation: {} brokers, controller {} after {} ms",
        formed.brokers.len(),
        formed.controller,
        test_start.elapsed().as_millis()
    );
    let all = cluster.all_addrs();

    let r = async {
        leader_chase(&mut cluster, &all).await?;
        jepsen_2013(&mut cluster, &all).await?;
        kill_all(&mut cluster, &all).await?;
        controller_failover(&mut cluster, &all).await?;
        rolling_restart(&mut cluster, &all).await
    }
    .await;
    if r.is_err() {
        cluster.failed = true;
    }
    r?;

    let unclean: Vec<String> = (0..cluster.nodes.len())
        .flat_map(|i| {
            cluster
                .log_text(i)
                .lines()
                .filter(|l| l.contains("unclean election"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    ensure!(unclean.is_empty(), "unclean elections: {unclean:?}");
    eprintln!(
        "five-node test done in {:.1} s",
        test_start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Scenario 1: SIGKILL the leader of the busiest partition five times.
async fn leader_chase(cluster: &mut Cluster, all: &str) -> Result<()> {
    const TOPIC: &str = "chase";
    const PARTS: i32 = 5;
    create_settled_topic(
        &cluster.bootstrap(),
        &cluster.nodes[0].addr,
        TOPIC,
        PARTS,
        3,
    )
    .await?;
    // Half of the records go to partition 0, the rest round-robin: partition 0 is busiest.
    let load = Load::start(all, TOPIC, "a", 30, |i| {
        if i % 2 == 0 {
            0
        } else {
            1 + ((i / 2) % (PARTS as u64 - 1)) as i32
        }
    })?;
    let tail = Tail::start(all, TOPIC, PARTS)?;
    load.wait_acked(
        "acks before the chase",
        None,
        0,
        300,
        Duration::from_secs(60),
    )
    .await?;
    let mut figures = Vec::new();
    for round in 1..=5 {
        let busiest = {
            let s = lock(&load.stats);
            let mut counts: BTreeMap<i32, usize> = BTreeMap::new();
            for (p, _) in s.acked.keys() {
                *counts.entry(*p).or_default() += 1;
            }
            counts
                .into_iter()
                .max_by_key(|(_, n)| *n)
                .map(|(p, _)| p)
                .context("no acks")?
        };
        let v = wait_settled(cluster, &[], Some(&[TOPIC]), Duration::from_secs(60)).await?;
        let leader = v.topic(TOPIC)[&busiest].leader;
        let at_kill = load.acked_on(busiest);
        cluster.kill(cluster.node(leader));
        let killed = Instant::now();
        let c: &Cluster = cluster;
        let new_leader = wait_for(
            "a new leader of the busiest partition",
            Duration::from_secs(30),
            || async move {
                view_any(c, &[leader], Some(&[TOPIC]))
                    .await
                    .and_then(|v| v.topic(TOPIC).get(&busiest).map(|p| p.leader))
                    .filter(|l| *l >= 0 && *l != leader)
            },
        )
        .await?;
        let elected_ms = killed.elapsed().as_millis();
        load.wait_acked(
            "acks on the busiest partition after the kill",
            Some(busiest),
            at_kill,
            1,
            Duration::from_secs(60),
        )
        .await?;
        let resumed_ms = killed.elapsed().as_millis();
        load.wait_acked(
            "100 more acks on the busiest partition",
            Some(busiest),
            at_kill,
            100,
            Duration::from_secs(60),
        )
        .await?;
        cluster.spawn(cluster.node(leader))?;
        let restarted = Instant::now();
        wait_settled(cluster, &[], Some(&[TOPIC]), Duration::from_secs(60)).await?;
        let rejoin_ms = restarted.elapsed().as_millis();
        eprintln!(
            "chase {round}: SIGKILL of node {leader} (leader of {TOPIC}-{busiest}, controller was {}): \
             new leader {new_leader} in Metadata after {elected_ms} ms, acks on the partition again after \
             {resumed_ms} ms; restarted node back in every ISR after {rejoin_ms} ms",
            v.controller
        );
        figures.push((elected_ms, resumed_ms));
    }
    let (stats, in_log, consumed, tail_errors) = finish(cluster, load, tail, TOPIC, PARTS).await?;
    eprintln!(
        "chase: 5 leaders killed; {} acknowledged, {in_log} in the log, all read back once in order; \
         tail consumed {consumed} ({tail_errors} consumer errors); 0 producer errors; \
         new leader after {:?} ms, writes resumed after {:?} ms",
        stats.acked.len(),
        figures.iter().map(|f| f.0).collect::<Vec<_>>(),
        figures.iter().map(|f| f.1).collect::<Vec<_>>()
    );
    Ok(())
}

/// Scenario 2: the 2013 Jepsen scenario (ISR shrinks to the leader, then the leader dies).
async fn jepsen_2013(cluster: &mut Cluster, all: &str) -> Result<()> {
    const TOPIC: &str = "jepsen";
    const PARTS: i32 = 10;
    create_settled_topic(
        &cluster.bootstrap(),
        &cluster.nodes[0].addr,
        TOPIC,
        PARTS,
        3,
    )
    .await?;
    let load = Load::start(all, TOPIC, "j", 20, |i| (i % PARTS as u64) as i32)?;
    let tail = Tail::start(all, TOPIC, PARTS)?;
    load.wait_acked(
        "acks before the stop",
        None,
        0,
        300,
        Duration::from_secs(60),
    )
    .await?;
    let v = wait_settled(cluster, &[], Some(&[TOPIC]), Duration::from_secs(60)).await?;
    let controller = v.controller;
    // A partition whose followers do not include the active controller (preferably one the
    // controller does not replicate at all): stopping them leaves 3 of 5 voters, the
    // controller among them, so AlterPartition and fencing still commit.
    let parts = v.topic(TOPIC);
    let (p, part) = parts
        .iter()
        .filter(|(_, x)| x.leader == controller || !x.replicas.contains(&controller))
        .min_by_key(|(_, x)| x.replicas.contains(&controller))
        .map(|(p, x)| (*p, x.clone()))
        .with_context(|| {
            format!("no partition without the controller {controller} as follower: {parts:?}")
        })?;
    let leader = part.leader;
    let followers: Vec<i32> = part
        .replicas
        .iter()
        .copied()
        .filter(|r| *r != leader)
        .collect();
    ensure!(followers.len() == 2, "RF 3: {part:?}");
    eprintln!(
        "jepsen: controller {controller}; SIGSTOP of {followers:?}, the followers of {TOPIC}-{p} \
         (leader {leader}); partitions: {parts:?}"
    );
    for f in &followers {
        cluster.signal(cluster.node(*f), "-STOP")?;
    }
    let stopped = Instant::now();
    let leader_addr = cluster.addr(leader);
    let shrunk = wait_for(
        "the ISR shrinks to the leader alone",
        Duration::from_secs(30),
        || {
            let a = leader_addr.clone();
            async move {
                view(&a, Some(&[TOPIC]))
                    .await
                    .and_then(|v| v.topic(TOPIC).get(&p).cloned())
                    .filter(|x| x.isr == vec![leader] && x.leader == leader)
            }
        },
    )
    .await?;
    let shrunk_at = Instant::now();
    let shrink_ms = stopped.elapsed().as_millis();
    let acked_p_at_shrink = load.acked_on(p);
    // acks=all below min.insync.replicas=2: refused before anything is written.
    let plain: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &leader_addr)
        .set("acks", "all")
        .set("retries", "0")
        .set("message.timeout.ms", "10000")
        .create()?;
    let mut refused = Vec::new();
    for i in 0..5 {
        let v = format!("refused-{p}-{i}");
        match plain
            .send(
                FutureRecord::<(), _>::to(TOPIC).partition(p).payload(&v),
                Duration::from_secs(5),
            )
            .await
        {
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::NotEnoughReplicas), _)) => {
                refused.push(v)
            }
            other => bail!(
                "expected NOT_ENOUGH_REPLICAS with ISR [{leader}] < min.insync.replicas 2, got {:?}",
                other.map_err(|(e, _)| e)
            ),
        }
    }
    // An absence is observed, not awaited: for one more second the idempotent producer's
    // records for the partition stay pending (librdkafka retries NOT_ENOUGH_REPLICAS); none
    // may be acknowledged while the ISR is [leader].
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked_before_kill = load.acked_on(p);
    cluster.kill(cluster.node(leader));
    let killed = Instant::now();
    let window_ms = (killed - shrunk_at).as_millis();
    let acks_in_window = lock(&load.stats)
        .ack_times
        .iter()
        .filter(|(t, q)| *q == p && *t >= shrunk_at && *t <= killed)
        .count();
    ensure!(
        acks_in_window == 0 && acked_before_kill == acked_p_at_shrink,
        "{acks_in_window} records of {TOPIC}-{p} acknowledged while its ISR was [{leader}]"
    );
    for f in &followers {
        cluster.signal(cluster.node(*f), "-CONT")?;
    }
    let c: &Cluster = cluster;
    let new_leader = wait_for(
        "a former follower leads the partition",
        Duration::from_secs(60),
        || {
            let followers = followers.clone();
            async move {
                view_any(c, &[leader], Some(&[TOPIC]))
                    .await
                    .and_then(|v| v.topic(TOPIC).get(&p).map(|x| x.leader))
                    .filter(|l| followers.contains(l))
            }
        },
    )
    .await?;
    let elected_ms = killed.elapsed().as_millis();
    load.wait_acked(
        "acks on the partition under its new leader",
        Some(p),
        acked_before_kill,
        50,
        Duration::from_secs(90),
    )
    .await?;
    let resumed_ms = killed.elapsed().as_millis();
    cluster.spawn(cluster.node(leader))?;
    wait_settled(cluster, &[], Some(&[TOPIC]), Duration::from_secs(60)).await?;
    let (stats, in_log, consumed, tail_errors) = finish(cluster, load, tail, TOPIC, PARTS).await?;
    let read = consume_all(&cluster.bootstrap(), TOPIC, PARTS, in_log)?;
    let leaked: Vec<&String> = read
        .values()
        .filter(|v| v.starts_with("refused-"))
        .collect();
    ensure!(leaked.is_empty(), "refused records in the log: {leaked:?}");
    eprintln!(
        "jepsen: controller {controller}; {TOPIC}-{p} leader {leader}, followers {followers:?} SIGSTOPped; \
         ISR {:?} after {shrink_ms} ms; {} acks=all records refused with NOT_ENOUGH_REPLICAS, 0 \
         acknowledged on the partition for {window_ms} ms; leader SIGKILLed, followers SIGCONTed: \
         {new_leader} leads (ELR) after {elected_ms} ms, writes acknowledged again after {resumed_ms} ms; \
         {} acknowledged, {in_log} in the log, 0 lost, no refused record in the log; tail consumed \
         {consumed} ({tail_errors} consumer errors); 0 producer errors",
        shrunk.isr,
        refused.len(),
        stats.acked.len()
    );
    Ok(())
}

/// Scenario 3: SIGKILL of all five nodes at once under load, then restart.
async fn kill_all(cluster: &mut Cluster, all: &str) -> Result<()> {
    const TOPIC: &str = "killall";
    const PARTS: i32 = 6;
    create_settled_topic(
        &cluster.bootstrap(),
        &cluster.nodes[0].addr,
        TOPIC,
        PARTS,
        3,
    )
    .await?;
    let load = Load::start(all, TOPIC, "k", 30, |i| (i % PARTS as u64) as i32)?;
    let tail = Tail::start(all, TOPIC, PARTS)?;
    load.wait_acked(
        "acks before the kill",
        None,
        0,
        600,
        Duration::from_secs(60),
    )
    .await?;
    let idx: Vec<usize> = (0..cluster.nodes.len()).collect();
    cluster.kill_together(&idx)?;
    let acked_at_kill = load.acked();
    let killed = Instant::now();
    for i in idx {
        cluster.spawn(i)?;
    }
    let spawned_ms = killed.elapsed().as_millis();
    let formed = wait_for(
        "five brokers and a controller after the restart",
        Duration::from_secs(60),
        || async {
            view_any(cluster, &[], None)
                .await
                .filter(|v| v.brokers.len() == NODES as usize && v.controller >= 0)
        },
    )
    .await?;
    let formed_ms = killed.elapsed().as_millis();
    load.wait_acked(
        "acks after the restart",
        None,
        acked_at_kill,
        1,
        Duration::from_secs(90),
    )
    .await?;
    let resumed_ms = killed.elapsed().as_millis();
    load.wait_acked(
        "600 acks after the restart",
        None,
        acked_at_kill,
        600,
        Duration::from_secs(90),
    )
    .await?;
    wait_settled(cluster, &[], Some(&[TOPIC]), Duration::from_secs(60)).await?;
    let settled_ms = killed.elapsed().as_millis();
    let (stats, in_log, consumed, tail_errors) = finish(cluster, load, tail, TOPIC, PARTS).await?;
    eprintln!(
        "kill-all: {acked_at_kill} acknowledged before the SIGKILL of all 5; restarted (all listening after \
         {spawned_ms} ms), 5 brokers + controller {} after {formed_ms} ms, acks again after {resumed_ms} ms, \
         every ISR full after {settled_ms} ms; {} acknowledged, {in_log} in the log, 0 lost; tail consumed \
         {consumed} ({tail_errors} consumer errors); 0 producer errors",
        formed.controller,
        stats.acked.len()
    );
    Ok(())
}

/// Scenario 4: SIGKILL of the active controller under load.
async fn controller_failover(cluster: &mut Cluster, all: &str) -> Result<()> {
    const TOPIC: &str = "ctl";
    const PARTS: i32 = 6;
    create_settled_topic(
        &cluster.bootstrap(),
        &cluster.nodes[0].addr,
        TOPIC,
        PARTS,
        3,
    )
    .await?;
    let load = Load::start(all, TOPIC, "c", 30, |i| (i % PARTS as u64) as i32)?;
    let tail = Tail::start(all, TOPIC, PARTS)?;
    load.wait_acked(
        "acks before the kill",
        None,
        0,
        300,
        Duration::from_secs(60),
    )
    .await?;
    let v = wait_settled(cluster, &[], Some(&[TOPIC]), Duration::from_secs(60)).await?;
    let old = v.controller;
    let led: Vec<i32> = v
        .topic(TOPIC)
        .iter()
        .filter(|(_, x)| x.leader == old)
        .map(|(p, _)| *p)
        .collect();
    let acked_at_kill = load.acked();
    cluster.kill(cluster.node(old));
    let killed = Instant::now();
    let c: &Cluster = cluster;
    let new = wait_for(
        "a new active controller",
        Duration::from_secs(30),
        || async move {
            view_any(c, &[old], None)
                .await
                .map(|v| v.controller)
                .filter(|c| *c >= 0 && *c != old)
        },
    )
    .await?;
    let elected_ms = killed.elapsed().as_millis();
    create_topic(&cluster.bootstrap(), "after-failover", 3, 3, &[]).await?;
    let created_ms = killed.elapsed().as_millis();
    wait_for(
        "after-failover: every partition led",
        Duration::from_secs(30),
        || async {
            view_any(cluster, &[old], Some(&["after-failover"]))
                .await
                .filter(|v| v.parts.len() == 3 && v.parts.values().all(|x| x.leader >= 0))
        },
    )
    .await?;
    load.wait_acked(
        "300 acks after the kill",
        None,
        acked_at_kill,
        300,
        Duration::from_secs(60),
    )
    .await?;
    let gap = longest_ack_gap(&lock(&load.stats).ack_times, None, killed);
    cluster.spawn(cluster.node(old))?;
    wait_settled(
        cluster,
        &[],
        Some(&[TOPIC, "after-failover"]),
        Duration::from_secs(60),
    )
    .await?;
    let (stats, in_log, consumed, tail_errors) = finish(cluster, load, tail, TOPIC, PARTS).await?;
    eprintln!(
        "controller failover: SIGKILL of controller {old} (leader of {TOPIC} {led:?}); controller {new} in \
         Metadata after {elected_ms} ms; CreateTopics answered {created_ms} ms after the kill; longest gap \
         between two acks (any partition) {} ms; {} acknowledged, {in_log} in the log, 0 lost; tail consumed \
         {consumed} ({tail_errors} consumer errors); 0 producer errors",
        gap.as_millis(),
        stats.acked.len()
    );
    Ok(())
}

/// Scenario 5: rolling restart (SIGTERM, exit, restart, back in every ISR) of every node.
async fn rolling_restart(cluster: &mut Cluster, all: &str) -> Result<()> {
    const TOPIC: &str = "roll";
    const PARTS: i32 = 6;
    create_settled_topic(
        &cluster.bootstrap(),
        &cluster.nodes[0].addr,
        TOPIC,
        PARTS,
        3,
    )
    .await?;
    let load = Load::start(all, TOPIC, "r", 30, |i| (i % PARTS as u64) as i32)?;
    let tail = Tail::start(all, TOPIC, PARTS)?;
    load.wait_acked(
        "acks before the restarts",
        None,
        0,
        300,
        Duration::from_secs(60),
    )
    .await?;
    let started = Instant::now();
    let mut figures = Vec::new();
    for id in 1..=NODES {
        let i = cluster.node(id);
        let exit = cluster.terminate(i)?;
        cluster.spawn(i)?;
        let restarted = Instant::now();
        // Back in the ISR of every partition of every topic it replicates.
        wait_settled(cluster, &[], None, Duration::from_secs(60)).await?;
        let back_ms = restarted.elapsed().as_millis();
        let at = load.acked();
        load.wait_acked(
            "acks after the restart",
            None,
            at,
            150,
            Duration::from_secs(60),
        )
        .await?;
        figures.push((id, exit.as_millis(), back_ms));
    }
    let gap = longest_ack_gap(&lock(&load.stats).ack_times, None, started);
    let (stats, in_log, consumed, tail_errors) = finish(cluster, load, tail, TOPIC, PARTS).await?;
    eprintln!(
        "rolling restart: (node, SIGTERM→exit ms, restart→every ISR full ms) {figures:?}; longest gap \
         between two acks {} ms; {} acknowledged, {in_log} in the log, 0 lost; tail consumed {consumed} \
         ({tail_errors} consumer errors); 0 producer errors; {:.1} s",
        gap.as_millis(),
        stats.acked.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
