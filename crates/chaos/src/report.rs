//! The per-run report (text) and a self-contained SVG timeline of faults, throughput and
//! latency.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use crate::checker::Verdict;
use crate::history::{Event, Kind, F};
use crate::RunSummary;

pub fn text(s: &RunSummary, v: &Verdict) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "== holdfast-chaos run ==");
    let _ = writeln!(
        o,
        "scenario {}  seed {}  seconds {}{}",
        s.scenario,
        s.seed,
        s.seconds,
        if s.unsafe_ack_before_fsync {
            "  NEGATIVE CONTROL: broker acknowledges before fsync"
        } else {
            ""
        }
    );
    if s.unsafe_no_dedup {
        let _ = writeln!(
            o,
            "NEGATIVE CONTROL: broker deduplication of idempotent retries is OFF"
        );
    }
    if let Some((nodes, rf, isr)) = s.cluster {
        let _ = writeln!(
            o,
            "cluster: {nodes} nodes, replication factor {rf}, min.insync.replicas {}",
            isr.map_or("cluster default".to_string(), |m| m.to_string())
        );
    }
    let _ = writeln!(
        o,
        "data dir: {}; broker started {} times; wall time {:.1} s",
        s.data_dir,
        s.broker_starts,
        s.wall.as_secs_f64()
    );
    let _ = writeln!(
        o,
        "machine limits: no netem, nft or iptables (no packet loss, delay or reordering; single-node network faults go through the proxy, cluster partitions are blackhole routes between network namespaces, root only); no device-mapper (no dm-flakey); power cut = copy of a loop-mounted ext4 image"
    );
    for n in &s.notes {
        let _ = writeln!(o, "note: {n}");
    }
    let _ = writeln!(
        o,
        "\nfaults ({} planned, {} applied):",
        s.planned.len(),
        s.applied.len()
    );
    for f in &s.applied {
        let _ = writeln!(
            o,
            "  {:>8.3} s .. {:>8.3} s  {:<9}  {}",
            f.start_us as f64 / 1e6,
            f.end_us as f64 / 1e6,
            f.kind.name(),
            f.detail
        );
    }
    let _ = writeln!(o, "\noperations:");
    for (k, n) in &v.counts {
        let _ = writeln!(o, "  {k:<28} {n}");
    }
    let _ = writeln!(
        o,
        "\nacknowledged sends {}: found in final read {}; indefinite sends observed {} / never observed {}",
        v.acked, v.acked_found, v.info_observed, v.info_unseen
    );
    if !v.by_client.is_empty() {
        // librdkafka (the workload's own producers) first, then the Java client.
        let mut clients: Vec<_> = v.by_client.iter().collect();
        clients.sort_by_key(|(c, _)| (**c != "rdkafka", **c));
        let _ = writeln!(
            o,
            "acknowledged sends by client: {}",
            clients
                .iter()
                .map(|(c, f)| format!("{c} {}", f.acked))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (c, f) in clients {
            let _ = writeln!(
                o,
                "  {c}: {} sent, {} acknowledged ({} lost, {} duplicated), {} failed, {} indefinite",
                f.sent, f.acked, f.lost, f.duplicated, f.failed, f.indefinite
            );
        }
    }
    let _ = writeln!(o, "final read: {} records", v.final_records);
    for (p, (lo, hi)) in &s.final_bounds {
        let _ = writeln!(
            o,
            "  partition {p}: log start {lo}, high watermark {hi}, read to {}",
            s.final_reached.get(p).copied().unwrap_or(-1)
        );
    }
    match &s.probe {
        Ok(d) => {
            let _ = writeln!(
                o,
                "liveness: produce to every partition acknowledged {} ms after healing",
                d.as_millis()
            );
        }
        Err(e) => {
            let _ = writeln!(o, "liveness: FAILED: {e}");
        }
    }
    let _ = writeln!(o, "\nanomalies: {}", v.anomalies.len());
    for (c, n) in v.by_class() {
        let _ = writeln!(o, "  {c}: {n}");
    }
    let mut shown: HashMap<&str, usize> = HashMap::new();
    for a in &v.anomalies {
        let n = shown.entry(a.class).or_insert(0);
        *n += 1;
        if *n > 10 {
            continue;
        }
        let _ = writeln!(o, "  - [{}] {}", a.class, a.what);
        for e in &a.ops {
            let _ = writeln!(
                o,
                "      {}",
                serde_json::to_string(e).unwrap_or_else(|_| format!("{e:?}"))
            );
        }
    }
    let lost = v
        .anomalies
        .iter()
        .filter(|a| a.class == "lost-acknowledged-write")
        .count();
    let _ = writeln!(o, "\nacknowledged writes lost: {lost} of {}", v.acked);
    let coordinated = s
        .applied
        .iter()
        .filter(|f| f.kind == crate::FaultKind::PowerCutAll && !f.detail.starts_with("FAILED"))
        .count();
    if coordinated > 0
        || s.planned
            .iter()
            .any(|f| f.kind == crate::FaultKind::PowerCutAll)
    {
        let _ = writeln!(
            o,
            "coordinated power cuts: {coordinated}; acknowledged writes lost: {lost} of {}",
            v.acked
        );
    }
    let _ = writeln!(
        o,
        "VERDICT: {}",
        if v.anomalies.is_empty() {
            "PASS"
        } else {
            "FAIL"
        }
    );
    o
}

/// Buckets of 250 ms: acks per second and max/median ack latency, with fault spans shaded.
pub fn svg(s: &RunSummary, events: &[Event], v: &Verdict) -> String {
    const BUCKET_US: u64 = 250_000;
    let end_us = events.iter().map(|e| e.t_us).max().unwrap_or(1).max(1);
    let nb = (end_us / BUCKET_US + 1) as usize;
    let mut invoked: HashMap<u64, u64> = HashMap::new();
    let mut acks = vec![0u64; nb];
    let mut fails = vec![0u64; nb];
    let mut lat: Vec<Vec<u64>> = vec![Vec::new(); nb];
    for e in events
        .iter()
        .filter(|e| e.f == F::Send && e.value.is_some())
    {
        let b = (e.t_us / BUCKET_US) as usize;
        match e.kind {
            Kind::Invoke => {
                invoked.insert(e.op, e.t_us);
            }
            Kind::Ok => {
                acks[b] += 1;
                if let Some(t) = invoked.get(&e.op) {
                    lat[b].push(e.t_us.saturating_sub(*t));
                }
            }
            Kind::Fail | Kind::Info => fails[b] += 1,
        }
    }
    let (w, h, left, top) = (1000.0f64, 200.0f64, 60.0f64, 20.0f64);
    let x = |t_us: u64| left + (t_us as f64 / end_us as f64) * w;
    let max_rate = acks.iter().copied().max().unwrap_or(1).max(1) as f64 * 4.0;
    let lat_ms: Vec<(f64, f64)> = lat
        .iter_mut()
        .map(|l| {
            l.sort_unstable();
            let p50 = l.get(l.len() / 2).copied().unwrap_or(0) as f64 / 1000.0;
            let max = l.last().copied().unwrap_or(0) as f64 / 1000.0;
            (p50, max)
        })
        .collect();
    let max_lat = lat_ms.iter().map(|l| l.1).fold(1.0, f64::max);
    let mut o = String::new();
    let total_h = top + h + 40.0 + h + 60.0;
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{total_h}" font-family="sans-serif" font-size="11">"#,
        w + left + 20.0
    );
    let _ = writeln!(
        o,
        r#"<text x="{left}" y="14">holdfast-chaos {} seed {}{}: faults (shaded), acks/s (blue), failed+info/s (red), anomalies (red ticks); ack latency p50 (green), max (orange)</text>"#,
        s.scenario,
        s.seed,
        if s.unsafe_ack_before_fsync {
            " NEGATIVE CONTROL"
        } else {
            ""
        }
    );
    let colors: BTreeMap<&str, &str> = [
        ("kill", "#f4a3a3"),
        ("pause", "#f7d98b"),
        ("power-cut", "#c9a3f4"),
        ("disk-full", "#a3d3f4"),
        ("partition", "#f4c7a3"),
        ("blackhole", "#999999"),
        ("delay", "#a3f4b8"),
        ("fsync-eio", "#f4a3e0"),
        ("kill-node", "#f4a3a3"),
        ("kill-controller", "#e07070"),
        ("pause-node", "#f7d98b"),
        ("power-cut-node", "#c9a3f4"),
        ("power-cut-all", "#8a5cc7"),
    ]
    .into_iter()
    .collect();
    let lat_top = top + h + 40.0;
    for f in &s.applied {
        let c = colors.get(f.kind.name()).copied().unwrap_or("#ddd");
        let (x0, x1) = (x(f.start_us), x(f.end_us).max(x(f.start_us) + 2.0));
        for y0 in [top, lat_top] {
            let _ = writeln!(
                o,
                r#"<rect x="{x0:.1}" y="{y0}" width="{:.1}" height="{h}" fill="{c}" opacity="0.6"><title>{} {}</title></rect>"#,
                x1 - x0,
                f.kind.name(),
                xml(&f.detail)
            );
        }
    }
    for y0 in [top, lat_top] {
        let _ = writeln!(
            o,
            r##"<rect x="{left}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#888"/>"##
        );
    }
    let line = |vals: &[f64], max: f64, y0: f64, color: &str| {
        let pts: Vec<String> = vals
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let t = i as u64 * BUCKET_US + BUCKET_US / 2;
                format!("{:.1},{:.1}", x(t), y0 + h - (v / max) * h)
            })
            .collect();
        format!(
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
            pts.join(" ")
        )
    };
    // Anomalies with a time: a red tick above the throughput panel.
    for a in v.anomalies.iter().filter(|a| a.at_us.is_some()).take(2000) {
        let ax = x(a.at_us.unwrap_or(0));
        let _ = writeln!(
            o,
            r##"<line x1="{ax:.1}" y1="{top}" x2="{ax:.1}" y2="{}" stroke="#d00000" stroke-width="1"><title>{} {}</title></line>"##,
            top + 12.0,
            a.class,
            xml(&a.what)
        );
    }
    let rate: Vec<f64> = acks.iter().map(|a| *a as f64 * 4.0).collect();
    let frate: Vec<f64> = fails.iter().map(|a| *a as f64 * 4.0).collect();
    let _ = writeln!(o, "{}", line(&rate, max_rate, top, "#1f5fbf"));
    let _ = writeln!(o, "{}", line(&frate, max_rate, top, "#d02020"));
    let p50: Vec<f64> = lat_ms.iter().map(|l| l.0).collect();
    let mx: Vec<f64> = lat_ms.iter().map(|l| l.1).collect();
    let _ = writeln!(o, "{}", line(&p50, max_lat, lat_top, "#208020"));
    let _ = writeln!(o, "{}", line(&mx, max_lat, lat_top, "#e07000"));
    let _ = writeln!(
        o,
        r#"<text x="2" y="{}">{max_rate:.0}/s</text><text x="2" y="{}">0</text>"#,
        top + 10.0,
        top + h
    );
    let _ = writeln!(
        o,
        r#"<text x="2" y="{}">{max_lat:.0} ms</text><text x="2" y="{}">0</text>"#,
        lat_top + 10.0,
        lat_top + h
    );
    let secs = end_us / 1_000_000;
    let step = (secs / 10).max(1);
    for t in (0..=secs).step_by(step as usize) {
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{t}s</text>"#,
            x(t * 1_000_000),
            lat_top + h + 14.0
        );
    }
    let mut lx = left;
    for (k, c) in &colors {
        let _ = writeln!(
            o,
            r#"<rect x="{lx}" y="{}" width="12" height="10" fill="{c}"/><text x="{}" y="{}">{k}</text>"#,
            lat_top + h + 30.0,
            lx + 16.0,
            lat_top + h + 39.0
        );
        lx += 110.0;
    }
    o.push_str("</svg>\n");
    o
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
