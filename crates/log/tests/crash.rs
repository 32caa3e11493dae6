//! Crash tests. A child process appends under the default policy and is killed with SIGKILL;
//! after reopen every batch it reported durable is present byte for byte. The power-loss
//! variant keeps the data on a loop-mounted ext4 image and mounts a copy of the image taken
//! right after the kill, so writes that were never fsynced are gone as after a power cut.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use holdfast_log::batch::{self, BatchHeader};
use holdfast_log::testkit::batch_for;
use holdfast_log::{Flusher, Log, LogConfig};

const PARTITIONS: u32 = 3;

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("holdfast-crash-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the writer until it has reported `stop_after` durable batches, then SIGKILLs it.
/// Returns (partition -> seq -> base offset) of every batch reported durable.
fn run_writer_and_kill(
    dir: &Path,
    stop_after: usize,
    ack_before_fsync: bool,
) -> BTreeMap<u32, BTreeMap<u64, i64>> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_holdfast-crash-writer"));
    if ack_before_fsync {
        cmd.env("HOLDFAST_NEGATIVE_CONTROL_NO_FSYNC", "1");
    }
    let mut child = cmd
        .arg(dir)
        .arg(PARTITIONS.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked: BTreeMap<u32, BTreeMap<u64, i64>> = BTreeMap::new();
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = 0;
    while seen < stop_after {
        let Some(line) = lines.next() else {
            panic!("writer exited early after {seen} batches")
        };
        let line = line.unwrap();
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f[0], "durable", "unexpected line {line}");
        acked
            .entry(f[1].parse().unwrap())
            .or_default()
            .insert(f[2].parse().unwrap(), f[3].parse().unwrap());
        seen += 1;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Lines printed between our last read and the kill were acknowledged too.
    for line in lines.map_while(Result::ok) {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() == 4 && f[0] == "durable" {
            acked
                .entry(f[1].parse().unwrap())
                .or_default()
                .insert(f[2].parse().unwrap(), f[3].parse().unwrap());
        }
    }
    acked
}

/// Reopens every partition and checks each acknowledged batch byte for byte.
fn verify(dir: &Path, acked: &BTreeMap<u32, BTreeMap<u64, i64>>) -> usize {
    let (checked, lost) = verify_counting(dir, acked);
    assert!(lost.is_empty(), "acknowledged batches lost: {lost:?}");
    checked
}

/// Like `verify`, but returns the (partition, seq) of acknowledged batches not found.
fn verify_counting(
    dir: &Path,
    acked: &BTreeMap<u32, BTreeMap<u64, i64>>,
) -> (usize, Vec<(u32, u64)>) {
    let mut lost = Vec::new();
    let flusher = Flusher::start().unwrap();
    let mut checked = 0;
    for (p, batches) in acked {
        let cfg = LogConfig {
            segment_bytes: 64 * 1024,
            index_interval_bytes: 1024,
            ..LogConfig::default()
        };
        let (mut log, report) =
            Log::open(&dir.join(format!("t-{p}")), cfg, flusher.clone(), 1_000_000).unwrap();
        assert!(report.corruption.is_none(), "partition {p}: {report:?}");
        for (seq, offset) in batches {
            if *offset >= log.log_end_offset() {
                lost.push((*p, *seq));
                continue;
            }
            let s = log
                .read(*offset, 1, i64::MAX, true)
                .unwrap_or_else(|e| panic!("p{p} seq {seq} at {offset}: {e}"));
            let got = s.read_bytes().unwrap();
            let mut want = batch_for(*p, *seq);
            batch::stamp_offset_and_epoch(&mut want, *offset, 0);
            let same = BatchHeader::parse(&got)
                .is_some_and(|h| h.base_offset == *offset && got[..h.total_size()] == want[..]);
            if !same {
                eprintln!("p{p} seq {seq} at {offset}: not found intact (read {} bytes from {}, log end {})", got.len(), s.first_batch_offset, log.log_end_offset());
                lost.push((*p, *seq));
                continue;
            }
            checked += 1;
        }
        // The log stays appendable after recovery.
        let mut b = batch_for(*p, 1 << 40);
        let o = log.append_as_leader(&mut b, 0, 1_000_000).unwrap();
        log.durable().wait_blocking(o.durable_end).unwrap();
        log.close().unwrap();
    }
    flusher.shutdown();
    (checked, lost)
}

#[test]
fn sigkill_at_random_points_loses_no_durable_batch() {
    let dir = tempdir("sigkill");
    let mut rng = fastrand::Rng::with_seed(7);
    let mut total = 0;
    // Several kills of the same data directory: each restart recovers, continues, is killed.
    let mut all: BTreeMap<u32, BTreeMap<u64, i64>> = BTreeMap::new();
    for _ in 0..5 {
        let acked = run_writer_and_kill(&dir, rng.usize(20..300), false);
        for (p, m) in acked {
            all.entry(p).or_default().extend(m);
        }
        total += verify(&dir, &all);
    }
    assert!(total > 100);
    eprintln!("sigkill: verified {total} acknowledged batches over 5 kills");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn sh(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct Mount {
    point: PathBuf,
}
impl Mount {
    fn new(image: &Path, point: &Path) -> Result<Mount, String> {
        std::fs::create_dir_all(point).map_err(|e| e.to_string())?;
        sh(
            "mount",
            &[
                "-o",
                "loop",
                image.to_str().unwrap(),
                point.to_str().unwrap(),
            ],
        )?;
        Ok(Mount {
            point: point.to_path_buf(),
        })
    }
}
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = sh("umount", &[self.point.to_str().unwrap()]);
    }
}

/// Runs `rounds` power cuts; returns (batches verified, acknowledged batches lost), or None
/// when the machine cannot loop-mount an image (the caller skips visibly).
fn power_cuts(tag: &str, rounds: usize, ack_before_fsync: bool) -> Option<(usize, usize)> {
    let work = tempdir(tag);
    let image = work.join("disk.img");
    let setup = (|| -> Result<Mount, String> {
        sh("truncate", &["-s", "256M", image.to_str().unwrap()])?;
        sh("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()])?;
        Mount::new(&image, &work.join("mnt"))
    })();
    let mount = match setup {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED power-cut test: cannot loop-mount an ext4 image here: {e}");
            let _ = std::fs::remove_dir_all(&work);
            return None;
        }
    };
    let mut rng = fastrand::Rng::with_seed(11);
    let (mut verified, mut lost) = (0, 0);
    for round in 0..rounds {
        let data = mount.point.join(format!("data-{round}"));
        let acked = run_writer_and_kill(&data, rng.usize(50..400), ack_before_fsync);
        // The power cut: copy the image now; dirty pages of the mounted fs are not in it.
        let copy = work.join(format!("cut-{round}.img"));
        std::fs::copy(&image, &copy).unwrap();
        let cut = Mount::new(&copy, &work.join(format!("cut-{round}"))).expect("mount the copy");
        let (v, l) = verify_counting(&cut.point.join(format!("data-{round}")), &acked);
        verified += v;
        lost += l.len();
        drop(cut);
        std::fs::remove_file(&copy).unwrap();
    }
    drop(mount);
    std::fs::remove_dir_all(&work).unwrap();
    Some((verified, lost))
}

#[test]
fn power_cut_on_loop_ext4_loses_no_durable_batch() {
    let Some((verified, lost)) = power_cuts("power", 3, false) else {
        return;
    };
    eprintln!("power cut: verified {verified} acknowledged batches over 3 cuts, {lost} lost");
    assert_eq!(lost, 0);
    assert!(verified > 100);
}

/// Negative control: a writer that acknowledges before fsync must be caught losing data,
/// or the power-cut test above proves nothing.
#[test]
fn power_cut_catches_acknowledgement_before_fsync() {
    let Some((verified, lost)) = power_cuts("control", 3, true) else {
        return;
    };
    eprintln!(
        "negative control: {lost} acknowledged-but-unsynced batches lost, {verified} survived"
    );
    assert!(
        lost > 0,
        "the power-cut harness did not notice acknowledgements without fsync"
    );
}
