//! The environment a run owns: a work directory, an optional loop-mounted ext4 image holding
//! the broker's data directory, and the broker process. Every piece is a Drop guard, so
//! processes, mounts and files are cleaned up on success, error and panic alike.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

pub fn sh(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", p.display()))
}

/// A directory removed on drop.
pub struct WorkDir {
    pub path: PathBuf,
}

impl WorkDir {
    pub fn create(tag: &str) -> anyhow::Result<WorkDir> {
        let path =
            std::env::temp_dir().join(format!("holdfast-chaos-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    /// `HOLDFAST_CHAOS_KEEP_DATA=1` keeps the directory (data dirs, disk images) for a post-mortem.
    fn drop(&mut self) {
        if std::env::var_os("HOLDFAST_CHAOS_KEEP_DATA").is_some_and(|v| v == "1") {
            eprintln!("chaos: kept {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// An ext4 image file loop-mounted at a fixed mount point. A power cut replaces the image by
/// a copy taken right after the broker was killed, mounted at the same point.
pub struct Disk {
    work: PathBuf,
    pub mount_point: PathBuf,
    image: PathBuf,
    generation: u32,
    mounted: bool,
}

/// Image size: room for a few minutes of the workload, small enough to copy in well under a
/// second and to fill quickly for disk-full.
pub const IMAGE_MB: u64 = 192;

impl Disk {
    /// Creates and mounts a fresh ext4 image, or explains why this machine cannot.
    pub fn create(work: &Path) -> anyhow::Result<Disk> {
        let image = work.join("disk-0.img");
        let mount_point = work.join("mnt");
        std::fs::create_dir_all(&mount_point)?;
        sh(
            "truncate",
            &["-s", &format!("{IMAGE_MB}M"), path_str(&image)?],
        )?;
        // -m 0: no blocks reserved for root (the broker runs as root here).
        sh("mkfs.ext4", &["-q", "-F", "-m", "0", path_str(&image)?])?;
        let mut d = Disk {
            work: work.to_path_buf(),
            mount_point,
            image,
            generation: 0,
            mounted: false,
        };
        d.mount()?;
        Ok(d)
    }

    fn mount(&mut self) -> anyhow::Result<()> {
        sh(
            "mount",
            &[
                "-o",
                "loop",
                path_str(&self.image)?,
                path_str(&self.mount_point)?,
            ],
        )?;
        self.mounted = true;
        Ok(())
    }

    fn umount(&mut self) -> anyhow::Result<()> {
        if self.mounted {
            sh("umount", &[path_str(&self.mount_point)?])?;
            self.mounted = false;
        }
        Ok(())
    }

    /// The power cut proper; the broker must already be dead. Copies the image file now (the
    /// mounted file system's dirty pages, never written back, are not in the copy), then
    /// swaps the mount to the copy. Returns the time the copy took.
    pub fn cut_power(&mut self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        self.generation += 1;
        let copy = self.work.join(format!("disk-{}.img", self.generation));
        sh(
            "cp",
            &["--sparse=always", path_str(&self.image)?, path_str(&copy)?],
        )?;
        let took = t.elapsed();
        self.umount()?;
        let old = std::mem::replace(&mut self.image, copy);
        std::fs::remove_file(&old).with_context(|| format!("removing {}", old.display()))?;
        self.mount()?;
        Ok(took)
    }

    /// Fills the file system with a file until writes fail with ENOSPC. Returns bytes written.
    pub fn fill(&self) -> anyhow::Result<u64> {
        let path = self.filler();
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let mut written = 0u64;
        let big = vec![0xa5u8; 1 << 20];
        let small = vec![0xa5u8; 4096];
        // Bounded: the image cannot hold more than IMAGE_MB MiB.
        for _ in 0..(IMAGE_MB + 8) {
            match f.write(&big) {
                Ok(n) if n > 0 => written += n as u64,
                _ => break,
            }
        }
        for _ in 0..(2 * 256 + 64) {
            match f.write(&small) {
                Ok(n) if n > 0 => written += n as u64,
                _ => break,
            }
        }
        // Metadata blocks too: make sure the space is really taken.
        let _ = f.sync_all();
        Ok(written)
    }

    pub fn unfill(&self) -> anyhow::Result<()> {
        let p = self.filler();
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
        Ok(())
    }

    fn filler(&self) -> PathBuf {
        self.mount_point.join("chaos-filler")
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if self.mounted {
            if let Ok(p) = path_str(&self.mount_point) {
                if sh("umount", &[p]).is_err() {
                    let _ = sh("umount", &["-l", p]);
                }
            }
        }
    }
}

/// The broker process, restarted on the same port and data directory.
pub struct Broker {
    bin: PathBuf,
    pub data_dir: PathBuf,
    /// Address the broker listens on (127.0.0.1, or its namespace's address).
    pub host: String,
    pub port: u16,
    /// Network namespace to run in (`crate::netns`), entered with `nsenter --net`.
    pub netns: Option<String>,
    /// `host:port` the broker advertises instead of its own (the network proxy).
    pub advertise: Option<String>,
    /// More `serve` arguments (cluster mode: node id, voters, settings).
    pub extra_args: Vec<String>,
    log: PathBuf,
    /// Negative-control and fault-injection switches passed to the broker
    /// (`HOLDFAST_UNSAFE_*`, `HOLDFAST_TEST_*`), each set to `1`.
    unsafe_env: Vec<&'static str>,
    /// Clock faults (`FaultKind::ClockJump`): the broker runs under libfaketime, reading its
    /// wall-clock offset from this file (see [`Clock`]).
    pub clock: Option<Clock>,
    child: Option<Child>,
    paused: bool,
    pub starts: u32,
}

/// A broker's wall clock, shifted by libfaketime (`LD_PRELOAD`): `CLOCK_REALTIME` (what
/// `SystemTime::now` reads) is the real time plus the offset in `file`, re-read at most once
/// a second; the monotonic clock is left alone, as a real NTP step leaves it. The file
/// is replaced atomically (rename), so the library never reads half an offset.
pub struct Clock {
    pub file: PathBuf,
    lib: PathBuf,
    /// The offset last written, seconds.
    pub offset_s: i64,
}

/// Where Debian's `libfaketime` package puts the multi-threaded library (`HOLDFAST_LIBFAKETIME`
/// overrides). `None`: not installed (`apt-get install faketime`).
pub fn libfaketime() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HOLDFAST_LIBFAKETIME") {
        return Some(PathBuf::from(p));
    }
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
        "/usr/local/lib/faketime/libfaketimeMT.so.1",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

impl Clock {
    /// A clock at offset 0 whose offset lives in `file`.
    pub fn create(lib: &Path, file: &Path) -> anyhow::Result<Clock> {
        let c = Clock {
            file: file.to_path_buf(),
            lib: lib.to_path_buf(),
            offset_s: 0,
        };
        c.write(0)?;
        Ok(c)
    }

    fn write(&self, offset_s: i64) -> anyhow::Result<()> {
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, format!("{offset_s:+}\n"))
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.file)
            .with_context(|| format!("replacing {}", self.file.display()))?;
        Ok(())
    }

    /// Steps the broker's wall clock to real time + `offset_s` (seen within about a second:
    /// `FAKETIME_CACHE_DURATION=1`).
    pub fn set(&mut self, offset_s: i64) -> anyhow::Result<()> {
        self.write(offset_s)?;
        self.offset_s = offset_s;
        Ok(())
    }

    /// The clock-jump fault: steps to `offset_s`, waits `hold` (interruptibly), steps back to
    /// real time.
    pub fn step_for(&mut self, offset_s: i64, hold: Duration) -> anyhow::Result<()> {
        self.set(offset_s)?;
        crate::sleep(hold)?;
        self.set(0)
    }

    fn apply(&self, cmd: &mut Command) {
        cmd.env("LD_PRELOAD", &self.lib)
            .env("FAKETIME_TIMESTAMP_FILE", &self.file)
            .env("FAKETIME_CACHE_DURATION", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .env("FAKETIME_DISABLE_SHM", "1")
            .env("NO_FAKE_STAT", "1");
    }
}

impl Broker {
    pub fn new(
        bin: &Path,
        data_dir: &Path,
        log: &Path,
        unsafe_env: Vec<&'static str>,
    ) -> anyhow::Result<Broker> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        Ok(Broker {
            bin: bin.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            host: "127.0.0.1".into(),
            port,
            netns: None,
            advertise: None,
            extra_args: Vec::new(),
            log: log.to_path_buf(),
            unsafe_env,
            clock: None,
            child: None,
            paused: false,
            starts: 0,
        })
    }

    pub fn bootstrap(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the broker and waits (bounded) for `holdfast listening on`.
    pub fn start(&mut self, deadline: Duration) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let rx = self.spawn()?;
        self.await_listening(&rx, deadline)?;
        Ok(t.elapsed())
    }

    /// Starts the broker process; the receiver says whether it printed its listening line
    /// (`true`) or exited before (`false`). See [`Broker::await_listening`].
    pub fn spawn(&mut self) -> anyhow::Result<mpsc::Receiver<bool>> {
        if self.child.is_some() {
            bail!("broker already running");
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        // In a namespace: nsenter enters only its network namespace and execs the broker, so
        // the child's pid is the broker's (signals reach it directly).
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/var/run/netns/{ns}"))
                    .arg("--")
                    .arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(self.bootstrap())
            .args(["--set", "num.partitions=4"])
            .args(
                self.advertise
                    .iter()
                    .flat_map(|a| ["--advertise", a.as_str()]),
            )
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        for var in [
            "HOLDFAST_UNSAFE_ACK_BEFORE_FSYNC",
            "HOLDFAST_UNSAFE_NO_DEDUP",
            "HOLDFAST_UNSAFE_ABORT_AS_COMMIT",
            "HOLDFAST_TEST_FSYNC_EIO_ON_SIGUSR1",
            "HOLDFAST_UNSAFE_OFFSETS_NO_FSYNC",
            "HOLDFAST_UNSAFE_LSO_OFF_BY_ONE",
            "HOLDFAST_UNSAFE_WALL_CLOCK_TIMERS",
        ] {
            cmd.env_remove(var);
        }
        for var in &self.unsafe_env {
            cmd.env(var, "1");
        }
        if let Some(c) = &self.clock {
            c.apply(&mut cmd);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no broker stdout"))?;
        self.child = Some(child);
        self.starts += 1;
        let (tx, rx) = mpsc::sync_channel::<bool>(1);
        let log_path = self.log.clone();
        std::thread::spawn(move || {
            // Copies stdout to the log; signals once the listening line is seen.
            let mut sent = false;
            let mut log = OpenOptions::new().append(true).open(log_path).ok();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(l) = log.as_mut() {
                    let _ = writeln!(l, "{line}");
                }
                if !sent && line.contains("holdfast listening on") {
                    let _ = tx.try_send(true);
                    sent = true;
                }
            }
            if !sent {
                let _ = tx.try_send(false);
            }
        });
        Ok(rx)
    }

    /// Waits (bounded) for the listening line of a process started by [`Broker::spawn`];
    /// kills it on failure.
    pub fn await_listening(
        &mut self,
        rx: &mpsc::Receiver<bool>,
        deadline: Duration,
    ) -> anyhow::Result<()> {
        match rx.recv_timeout(deadline) {
            Ok(true) => self.check_clock_loaded(),
            Ok(false) => {
                let _ = self.kill();
                bail!("broker exited before listening; see {}", self.log.display())
            }
            Err(_) => {
                let _ = self.kill();
                bail!(
                    "broker did not listen within {deadline:?}; see {}",
                    self.log.display()
                )
            }
        }
    }

    /// With a [`Clock`], the broker must have libfaketime mapped: a clock fault that did not
    /// reach the broker would pass without testing anything.
    fn check_clock_loaded(&mut self) -> anyhow::Result<()> {
        let (Some(c), Some(pid)) = (&self.clock, self.pid()) else {
            return Ok(());
        };
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .with_context(|| format!("reading /proc/{pid}/maps"))?;
        let lib = c
            .lib
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("libfaketime")
            .to_string();
        if !maps.contains(&lib) {
            let _ = self.kill();
            bail!("the broker (pid {pid}) did not load {lib}: clock faults would not apply");
        }
        Ok(())
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().context("SIGKILL broker")?;
            c.wait().context("reaping broker")?;
        }
        self.paused = false;
        Ok(())
    }

    /// Sends SIGKILL without waiting (a coordinated power cut kills every node in one loop,
    /// then reaps them with [`Broker::reap`]).
    pub fn sigkill_nowait(&mut self) -> anyhow::Result<()> {
        if let Some(c) = self.child.as_mut() {
            c.kill().context("SIGKILL broker")?;
        }
        Ok(())
    }

    /// Reaps a process killed by [`Broker::sigkill_nowait`].
    pub fn reap(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.wait().context("reaping broker")?;
        }
        self.paused = false;
        Ok(())
    }

    fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let pid = self.pid().ok_or_else(|| anyhow!("broker not running"))?;
        sh("kill", &[sig, &pid.to_string()])?;
        Ok(())
    }

    /// SIGUSR1: with `HOLDFAST_TEST_FSYNC_EIO_ON_SIGUSR1=1` the broker's next fsync fails.
    pub fn fail_next_fsync(&self) -> anyhow::Result<()> {
        self.signal("-USR1")
    }

    pub fn pause(&mut self) -> anyhow::Result<()> {
        self.signal("-STOP")?;
        self.paused = true;
        Ok(())
    }

    pub fn resume(&mut self) -> anyhow::Result<()> {
        self.signal("-CONT")?;
        self.paused = false;
        Ok(())
    }

    /// True if the process is still alive (not exited).
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        }
    }

    /// Graceful stop at the end of a run (SIGTERM, bounded wait, then SIGKILL).
    pub fn stop(&mut self) {
        if self.paused {
            let _ = self.resume();
        }
        if let Some(pid) = self.pid() {
            let _ = sh("kill", &["-TERM", &pid.to_string()]);
            for _ in 0..100 {
                if !self.alive() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.kill();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.paused {
            let _ = self.resume();
        }
        let _ = self.kill();
    }
}

pub fn is_root() -> bool {
    sh("id", &["-u"]).map(|s| s.trim() == "0").unwrap_or(false)
}
