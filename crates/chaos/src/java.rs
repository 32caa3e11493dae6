//! A second client library in the workload: `--java-producers N` runs N processes of Apache
//! Kafka's own client (`kafka-clients`, the reference implementation) as producers,
//! `tests/java/src/main/java/dev/holdfast/compat/ChaosProducer.java`, compiled by
//! `scripts/setup-java-deps.sh`. Each prints one JSON line per event; a reader thread per
//! process turns the lines into history events (`F::Send`, process `java-<i>`) recorded through
//! the same [`Recorder`] as the rdkafka producers, so every checker class covers them.
//!
//! Time: an invoke is stamped with the time the Java program took just before `send()`,
//! mapped onto the run's clock by a handshake (the harness writes `sync` at its time R0, the
//! program answers with its own clock J; R0 - J is a lower bound of the offset between the
//! clocks, the largest of five rounds is kept), so the invoke is never recorded later than it
//! happened: a late invoke would make the real-time order check unsound. A completion is
//! stamped when its line arrives (late, which only weakens what the checker can claim).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::Deserialize;

use crate::history::{Event, Kind, Recorder, F};

/// The program's main class.
pub const MAIN_CLASS: &str = "dev.holdfast.compat.ChaosProducer";
/// Environment override of the class path.
pub const CP_ENV: &str = "HOLDFAST_JAVA_CP";
/// Prefix of the processes (and of the values) of the Java producers.
pub const PROCESS_PREFIX: &str = "java-";
/// The JVMs' start (class loading, producer created, the topic's metadata fetched) on a
/// loaded 2-core machine (14 s seen with other runs beside it).
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// A stop: the program's close is bounded by 20 s; JVM exit on top.
const STOP_DEADLINE: Duration = Duration::from_secs(45);
/// Sends without an outcome kept per process (the client's own bound is its buffer and the
/// 15 s delivery timeout: a few thousand at the workload's rates).
const MAX_PENDING: usize = 200_000;
/// Handshake rounds per process (the tightest is kept; a loaded machine answers late).
const SYNC_ROUNDS: usize = 5;

/// Exceptions (class names) of the Java client after which the record is known NOT to be in
/// the log, from the client's semantics (kafka-clients `Sender.completeBatch` / `failBatch`,
/// `TransactionManager.canRetry` / `handleFailedBatch`): the broker refuses these records on
/// every attempt (size, validity), so no earlier attempt can have written them. Everything
/// else is indefinite, in particular:
/// - `TimeoutException` (delivery timeout; the batch may be in flight or written), network
///   errors, `NotLeaderOrFollowerException` and other retriable errors on the last attempt
///   (an earlier attempt that timed out may have been written);
/// - `NotEnoughReplicasException`: refused by the last attempt, but an earlier attempt of the
///   same batch may have been appended (Kafka checks the ISR before the sequence);
/// - `OutOfOrderSequenceException`, `InvalidProducerEpochException`,
///   `UnknownProducerIdException`: the idempotent producer bumps its epoch locally and
///   resends in-flight batches with new sequences, so the attempt refused may follow one
///   under the old epoch that was written;
/// - a bare `KafkaException` (batch siblings of an invalid record; a forced close).
///
/// A failure inside `send()`, before the record reached the client's buffer (`presend`), is
/// definite whatever its class: the record was never sent.
pub fn is_definite(class: &str) -> bool {
    matches!(
        class.rsplit('.').next().unwrap_or(class),
        "RecordTooLargeException"
            | "RecordBatchTooLargeException"
            | "InvalidRecordException"
            | "SerializationException"
    )
}

/// Why `--java-producers` cannot run on this machine (the run is then SKIPPED), or None.
/// Java absent from PATH, or no kafka-clients jar (scripts/setup-java-deps.sh skips without
/// Maven or network, and so do the Java compatibility tests).
pub fn unavailable(classpath: &Classpath) -> Option<String> {
    if find_in_path("java").is_none() {
        return Some("--java-producers needs `java` on PATH (none found)".into());
    }
    match classpath {
        Classpath::Override(_) => None,
        Classpath::Repo { lib, .. } => {
            let has_clients = std::fs::read_dir(lib)
                .map(|d| {
                    d.filter_map(Result::ok).any(|e| {
                        e.file_name()
                            .to_str()
                            .is_some_and(|n| n.starts_with("kafka-clients-") && n.ends_with(".jar"))
                    })
                })
                .unwrap_or(false);
            (!has_clients).then(|| {
                format!(
                    "--java-producers needs the Java client: no kafka-clients jar in {} (scripts/setup-java-deps.sh)",
                    lib.display()
                )
            })
        }
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Where the Java classes come from.
pub enum Classpath {
    /// `HOLDFAST_JAVA_CP`, used as given.
    Override(String),
    /// `.deps/java/lib/*` and `.deps/java/classes` of the repository.
    Repo { lib: PathBuf, classes: PathBuf },
}

impl Classpath {
    /// `HOLDFAST_JAVA_CP`, else the repository's `.deps/java`: the repository is found as the
    /// broker binary is, from this binary's location (`<repo>/target/debug/holdfast-chaos`:
    /// the first ancestor with a `.deps/java`), else from where this crate was built.
    pub fn find() -> Classpath {
        if let Ok(cp) = std::env::var(CP_ENV) {
            if !cp.is_empty() {
                return Classpath::Override(cp);
            }
        }
        let from_exe = std::env::current_exe().ok().and_then(|exe| {
            exe.ancestors()
                .find(|d| d.join(".deps/java").is_dir())
                .map(Path::to_path_buf)
        });
        let root = from_exe.unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .to_path_buf()
        });
        let deps = root.join(".deps/java");
        Classpath::Repo {
            lib: deps.join("lib"),
            classes: deps.join("classes"),
        }
    }

    /// The `-cp` argument; for the repository's, an error when the program is not compiled.
    pub fn arg(&self) -> anyhow::Result<String> {
        match self {
            Classpath::Override(cp) => Ok(cp.clone()),
            Classpath::Repo { lib, classes } => {
                let class = classes.join("dev/holdfast/compat/ChaosProducer.class");
                if !class.is_file() {
                    bail!(
                        "{} not found: run scripts/setup-java-deps.sh (it compiles tests/java/src)",
                        class.display()
                    );
                }
                Ok(format!("{}/*:{}", lib.display(), classes.display()))
            }
        }
    }
}

/// One line of the program.
#[derive(Deserialize, Debug)]
struct Line {
    e: String,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    t: Option<i64>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    partition: Option<i32>,
    #[serde(default)]
    offset: Option<i64>,
    #[serde(default)]
    class: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    presend: Option<bool>,
}

/// What a reader thread tells the harness's thread.
enum Ctl {
    Ready,
    /// The program's clock (ns) and when the line arrived.
    Sync(i64, Instant),
    /// The program's stdout ended (the thread is ending).
    Eof,
}

/// What a reader thread needs before it records: the recorder and the clock offset (ns to
/// add to the program's clock to get ns since the run's start).
type Setup = (Arc<Recorder>, i128);

/// Counts of one process, for the notes.
#[derive(Default, Debug, Clone)]
pub struct Stats {
    pub invoked: u64,
    pub acked: u64,
    pub failed: u64,
    pub indefinite: u64,
    /// The program's last line (`done`), if it stopped cleanly.
    pub done: Option<String>,
    /// Exception classes of the errors, with counts.
    pub errors: std::collections::BTreeMap<String, u64>,
}

struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    ctl: mpsc::Receiver<Ctl>,
    setup: mpsc::SyncSender<Setup>,
    reader: Option<JoinHandle<anyhow::Result<Stats>>>,
    stopping: Arc<AtomicBool>,
    log: PathBuf,
    /// SIGSTOPped by a `pause-client` fault and not yet continued.
    paused: bool,
}

impl Proc {
    fn send_line(&mut self, line: &str) -> anyhow::Result<()> {
        let w = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("{}: stdin already closed", self.name))?;
        w.write_all(line.as_bytes())
            .and_then(|()| w.write_all(b"\n"))
            .and_then(|()| w.flush())
            .with_context(|| format!("{}: writing {line:?} to its stdin", self.name))
    }

    /// The next control message, or an error naming the log on end of output or timeout.
    fn await_ctl(&self, deadline: Duration, what: &str) -> anyhow::Result<Ctl> {
        match self.ctl.recv_timeout(deadline) {
            Ok(Ctl::Eof) | Err(mpsc::RecvTimeoutError::Disconnected) => bail!(
                "{} exited while {what}; its log {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log)
            ),
            Ok(c) => Ok(c),
            Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                "{} not {what} within {deadline:?}; its log {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log)
            ),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stdin.take();
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The running Java producers.
pub struct JavaProducers {
    procs: Vec<Proc>,
    stop_errors: Vec<String>,
}

/// What the Java producers did, for the report's notes.
pub struct Summary {
    pub stats: Vec<(String, Stats)>,
}

impl JavaProducers {
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// SIGSTOPs producer `i`; returns its name and pid for the fault's detail.
    pub fn pause(&mut self, i: usize) -> anyhow::Result<String> {
        let p = self
            .procs
            .get_mut(i)
            .ok_or_else(|| anyhow!("no Java producer {i}"))?;
        let pid = p.child.id().to_string();
        crate::env::sh("kill", &["-STOP", &pid])?;
        p.paused = true;
        Ok(format!("{} (pid {pid})", p.name))
    }

    /// SIGCONTs producer `i`.
    pub fn resume(&mut self, i: usize) -> anyhow::Result<()> {
        let p = self
            .procs
            .get_mut(i)
            .ok_or_else(|| anyhow!("no Java producer {i}"))?;
        crate::env::sh("kill", &["-CONT", &p.child.id().to_string()])?;
        p.paused = false;
        Ok(())
    }

    /// SIGCONTs every producer still paused (at heal, whatever a fault left behind).
    pub fn resume_all(&mut self) {
        for p in &mut self.procs {
            if p.paused {
                let _ = crate::env::sh("kill", &["-CONT", &p.child.id().to_string()]);
                p.paused = false;
            }
        }
    }

    /// Spawns `n` programs (stderr to `<out>/java-<i>.log`) and waits until each has created
    /// its producer. Nothing is sent before [`JavaProducers::start`].
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        n: usize,
        classpath: &Classpath,
        out: &Path,
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        rate: u32,
        acks: &str,
    ) -> anyhow::Result<JavaProducers> {
        let cp = classpath.arg()?;
        let java = find_in_path("java").context("java not on PATH")?;
        let mut procs = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("{PROCESS_PREFIX}{i}");
            let log = out.join(format!("{name}.log"));
            let err = std::fs::File::create(&log)
                .with_context(|| format!("creating {}", log.display()))?;
            let mut child = Command::new(&java)
                .args([
                    "-Xmx256m",
                    "-XX:+UseSerialGC",
                    // C1 only: less compilation competing with the brokers for 2 cores.
                    "-XX:TieredStopAtLevel=1",
                    "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
                    "-Dorg.slf4j.simpleLogger.showDateTime=true",
                    "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
                    "-cp",
                    &cp,
                    MAIN_CLASS,
                    bootstrap,
                    topic,
                    &partitions.to_string(),
                    &rate.to_string(),
                    &name,
                    acks,
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::from(err))
                .spawn()
                .with_context(|| format!("starting {} for {name}", java.display()))?;
            let stdout = child.stdout.take().context("child stdout")?;
            let stdin = child.stdin.take();
            let (ctl_tx, ctl_rx) = mpsc::channel();
            let (setup_tx, setup_rx) = mpsc::sync_channel(1);
            let stopping = Arc::new(AtomicBool::new(false));
            let (nm, st) = (name.clone(), Arc::clone(&stopping));
            let reader = std::thread::Builder::new()
                .name(format!("read-{name}"))
                .spawn(move || read_loop(&nm, stdout, &ctl_tx, &setup_rx, &st))
                .context("spawning a reader thread")?;
            procs.push(Proc {
                name,
                child,
                stdin,
                ctl: ctl_rx,
                setup: setup_tx,
                reader: Some(reader),
                stopping,
                log,
                paused: false,
            });
        }
        let t = Instant::now();
        for p in &procs {
            match p.await_ctl(READY_DEADLINE.saturating_sub(t.elapsed()), "getting ready")? {
                Ctl::Ready => {}
                _ => bail!("{}: unexpected line before ready", p.name),
            }
        }
        Ok(JavaProducers {
            procs,
            stop_errors: Vec::new(),
        })
    }

    /// Maps each program's clock onto the run's, hands the recorder to the reader threads and
    /// lets the programs send. Returns a note per process (the handshake's uncertainty).
    pub fn start(&mut self, rec: &Arc<Recorder>) -> anyhow::Result<Vec<String>> {
        let mut notes = Vec::new();
        for p in &mut self.procs {
            let mut best: Option<(i128, Duration)> = None;
            for _ in 0..SYNC_ROUNDS {
                let r0 = Instant::now();
                p.send_line("sync")?;
                match p.await_ctl(Duration::from_secs(10), "answering sync")? {
                    Ctl::Sync(j, arrived) => {
                        let r0_ns = r0.saturating_duration_since(rec.start()).as_nanos() as i128;
                        let offset = r0_ns - i128::from(j);
                        let rtt = arrived.saturating_duration_since(r0);
                        if best.is_none_or(|(b, _)| offset > b) {
                            best = Some((offset, rtt));
                        }
                    }
                    _ => bail!("{}: unexpected line during the clock handshake", p.name),
                }
            }
            let (offset, rtt) = best.context("no clock handshake")?;
            p.setup
                .send((Arc::clone(rec), offset))
                .map_err(|_| anyhow!("{}: reader thread gone", p.name))?;
            p.send_line("go")?;
            notes.push(format!(
                "{}: clock mapped with a handshake round trip of {} us",
                p.name,
                rtt.as_micros()
            ));
        }
        Ok(notes)
    }

    /// Tells every program to stop (`stop`, then end of stdin) without waiting, so they flush
    /// while the rdkafka producers do. A program it cannot tell is an error of [`stop`].
    ///
    /// [`stop`]: JavaProducers::stop
    pub fn request_stop(&mut self) {
        for p in &mut self.procs {
            if p.stopping.swap(true, Ordering::SeqCst) {
                continue;
            }
            if let Err(e) = p.send_line("stop") {
                self.stop_errors.push(format!("{e:#}"));
            }
            p.stdin.take();
        }
    }

    /// Stops every program (`stop`, then end of stdin), waits (bounded) for its last line and
    /// its exit. An error if a program died during the run, did not stop cleanly, or exited
    /// with a failure: the run then proves nothing about the Java sends.
    pub fn stop(mut self) -> anyhow::Result<Summary> {
        self.request_stop();
        let mut errors = std::mem::take(&mut self.stop_errors);
        let t = Instant::now();
        let mut stats = Vec::new();
        for p in &mut self.procs {
            // The reader thread says Eof when the program's stdout ends.
            let mut ended = false;
            while !ended {
                match p
                    .ctl
                    .recv_timeout(STOP_DEADLINE.saturating_sub(t.elapsed()))
                {
                    Ok(Ctl::Eof) | Err(mpsc::RecvTimeoutError::Disconnected) => ended = true,
                    Ok(_) => {}
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                }
            }
            if !ended {
                errors.push(format!(
                    "{} did not stop within {STOP_DEADLINE:?}; killed",
                    p.name
                ));
                let _ = p.child.kill();
            }
            // Stdout closed: the JVM is exiting; bounded wait for its status (no event to
            // await for a child's exit besides a blocking wait).
            let exit_by = Instant::now() + Duration::from_secs(10);
            let status = loop {
                match p.child.try_wait() {
                    Ok(Some(s)) => break Some(s),
                    Ok(None) if Instant::now() < exit_by => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Ok(None) => {
                        let _ = p.child.kill();
                        break p.child.wait().ok();
                    }
                    Err(_) => break None,
                }
            };
            let res = match p.reader.take().map(JoinHandle::join) {
                Some(Ok(r)) => r,
                Some(Err(_)) => Err(anyhow!("{}: reader thread panicked", p.name)),
                None => Err(anyhow!("{}: no reader thread", p.name)),
            };
            match res {
                Ok(s) => {
                    if s.done.is_none() {
                        errors.push(format!(
                            "{} ended without its final line (exit status {status:?}); its log {}:\n{}",
                            p.name,
                            p.log.display(),
                            tail(&p.log)
                        ));
                    } else if !status.is_some_and(|s| s.success()) {
                        errors.push(format!("{} exited with {status:?}", p.name));
                    }
                    stats.push((p.name.clone(), s));
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if !errors.is_empty() {
            bail!("Java producers: {}", errors.join("; "));
        }
        Ok(Summary { stats })
    }
}

/// A reader thread: lines to history events.
fn read_loop(
    name: &str,
    stdout: std::process::ChildStdout,
    ctl: &mpsc::Sender<Ctl>,
    setup_rx: &mpsc::Receiver<Setup>,
    stopping: &AtomicBool,
) -> anyhow::Result<Stats> {
    let res = read_lines(name, BufReader::new(stdout), ctl, setup_rx, stopping);
    let _ = ctl.send(Ctl::Eof);
    res
}

fn read_lines(
    name: &str,
    input: impl BufRead,
    ctl: &mpsc::Sender<Ctl>,
    setup_rx: &mpsc::Receiver<Setup>,
    stopping: &AtomicBool,
) -> anyhow::Result<Stats> {
    let mut stats = Stats::default();
    let mut setup: Option<Setup> = None;
    // n -> (op, value, partition) of the sends without an outcome.
    let mut pending: HashMap<u64, (u64, String, i32)> = HashMap::new();
    for line in input.lines() {
        let line = line.with_context(|| format!("{name}: reading its output"))?;
        if line.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(&line)
            .with_context(|| format!("{name}: unreadable line {line:?}"))?;
        match l.e.as_str() {
            "ready" => {
                let _ = ctl.send(Ctl::Ready);
            }
            "sync" => {
                let t = l.t.context("sync without t")?;
                let _ = ctl.send(Ctl::Sync(t, Instant::now()));
            }
            "done" => stats.done = Some(line),
            "invoke" | "ok" | "error" => {
                if setup.is_none() {
                    setup = Some(
                        setup_rx
                            .recv_timeout(Duration::from_secs(30))
                            .map_err(|_| anyhow!("{name}: sent before the clock handshake"))?,
                    );
                }
                let Some((rec, offset)) = &setup else {
                    continue;
                };
                event(name, &l, rec, *offset, &mut pending, &mut stats)?;
            }
            other => bail!("{name}: unknown line kind {other:?}"),
        }
    }
    if !stopping.load(Ordering::SeqCst) {
        bail!("{name} exited during the run (its output ended before the harness stopped it)");
    }
    Ok(stats)
}

/// Turns one send line into a history event.
fn event(
    name: &str,
    l: &Line,
    rec: &Recorder,
    offset_ns: i128,
    pending: &mut HashMap<u64, (u64, String, i32)>,
    stats: &mut Stats,
) -> anyhow::Result<()> {
    let n = l.n.context("send line without n")?;
    match l.e.as_str() {
        "invoke" => {
            let value = l.value.clone().context("invoke without value")?;
            let partition = l.partition.context("invoke without partition")?;
            let t = l.t.context("invoke without t")?;
            if pending.len() >= MAX_PENDING {
                bail!("{name}: more than {MAX_PENDING} sends without an outcome");
            }
            let op = rec.next_op();
            let at_us = u64::try_from((i128::from(t) + offset_ns).max(0) / 1000).unwrap_or(0);
            rec.record_at(
                Event::new(Kind::Invoke, F::Send, name, op)
                    .value(&value)
                    .partition(partition),
                at_us,
            );
            pending.insert(n, (op, value, partition));
            stats.invoked += 1;
        }
        "ok" => {
            let (op, value, partition) = pending
                .remove(&n)
                .with_context(|| format!("{name}: outcome of send {n} without its invoke"))?;
            stats.acked += 1;
            rec.record(
                Event::new(Kind::Ok, F::Send, name, op)
                    .value(&value)
                    .partition(l.partition.unwrap_or(partition))
                    .offset(l.offset.unwrap_or(-1)),
            );
        }
        _ => {
            let (op, value, partition) = pending
                .remove(&n)
                .with_context(|| format!("{name}: outcome of send {n} without its invoke"))?;
            let class = l.class.clone().unwrap_or_default();
            let presend = l.presend.unwrap_or(false);
            let kind = if presend || is_definite(&class) {
                stats.failed += 1;
                Kind::Fail
            } else {
                stats.indefinite += 1;
                Kind::Info
            };
            let short = class.rsplit('.').next().unwrap_or(&class).to_string();
            *stats.errors.entry(short.clone()).or_insert(0) += 1;
            let mut text = format!("{short}: {}", l.message.as_deref().unwrap_or(""));
            if presend {
                text += " (inside send(), never sent)";
            }
            rec.record(
                Event::new(kind, F::Send, name, op)
                    .value(&value)
                    .partition(partition)
                    .error(None, text),
            );
        }
    }
    Ok(())
}

/// The client a producer process belongs to (the report's per-library figures).
pub fn client_of(process: &str) -> &'static str {
    if process.starts_with(PROCESS_PREFIX) {
        "java"
    } else {
        "rdkafka"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_repeated_on_every_attempt_are_definite() {
        assert!(is_definite(
            "org.apache.kafka.common.errors.RecordTooLargeException"
        ));
        assert!(is_definite(
            "org.apache.kafka.common.InvalidRecordException"
        ));
        for c in [
            "org.apache.kafka.common.errors.TimeoutException",
            "org.apache.kafka.common.errors.NetworkException",
            "org.apache.kafka.common.errors.NotLeaderOrFollowerException",
            "org.apache.kafka.common.errors.NotEnoughReplicasException",
            "org.apache.kafka.common.errors.OutOfOrderSequenceException",
            "org.apache.kafka.common.errors.InvalidProducerEpochException",
            "org.apache.kafka.common.KafkaException",
            "",
        ] {
            assert!(!is_definite(c), "{c}");
        }
        assert_eq!(client_of("java-0"), "java");
        assert_eq!(client_of("p1.0"), "rdkafka");
    }

    #[test]
    fn lines_become_send_events() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("chaos-java-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let rec = Arc::new(Recorder::create(&dir.join("h.jsonl"))?);
        let (ctl_tx, ctl_rx) = mpsc::channel();
        let (setup_tx, setup_rx) = mpsc::sync_channel(1);
        // The program's clock 1 ms ahead of the run's.
        setup_tx.send((Arc::clone(&rec), -1_000_000))?;
        let input = [
            r#"{"e":"ready"}"#,
            r#"{"e":"invoke","n":0,"t":1001000,"value":"java-0-0","partition":0}"#,
            r#"{"e":"invoke","n":1,"t":1002000,"value":"java-0-1","partition":1}"#,
            r#"{"e":"invoke","n":2,"t":1003000,"value":"java-0-2","partition":2}"#,
            r#"{"e":"invoke","n":3,"t":1004000,"value":"java-0-3","partition":3}"#,
            r#"{"e":"ok","n":0,"partition":0,"offset":7}"#,
            r#"{"e":"error","n":1,"partition":1,"class":"org.apache.kafka.common.errors.TimeoutException","message":"expired","presend":false}"#,
            r#"{"e":"error","n":2,"partition":2,"class":"org.apache.kafka.common.errors.RecordTooLargeException","message":"big","presend":false}"#,
            r#"{"e":"error","n":3,"partition":3,"class":"org.apache.kafka.common.errors.TimeoutException","message":"metadata","presend":true}"#,
            r#"{"e":"done","sent":4,"acked":1,"errors":3}"#,
        ]
        .join("\n");
        let stopping = AtomicBool::new(true);
        let s = read_lines("java-0", input.as_bytes(), &ctl_tx, &setup_rx, &stopping)?;
        assert!(matches!(ctl_rx.try_recv(), Ok(Ctl::Ready)));
        assert_eq!((s.invoked, s.acked, s.failed, s.indefinite), (4, 1, 2, 1));
        assert!(s.done.is_some());
        let ev = rec.finish()?;
        let kinds: Vec<(Kind, Option<&str>)> =
            ev.iter().map(|e| (e.kind, e.value.as_deref())).collect();
        assert_eq!(kinds[4], (Kind::Ok, Some("java-0-0")));
        assert_eq!(kinds[5], (Kind::Info, Some("java-0-1")));
        assert_eq!(kinds[6], (Kind::Fail, Some("java-0-2")));
        assert_eq!(kinds[7], (Kind::Fail, Some("java-0-3")));
        // Invokes on the program's clock minus 1 ms (never later than they arrived).
        assert!(ev[0].t_us <= 1 && ev[3].t_us <= 4, "{ev:?}");
        assert!(ev[4].t_us >= ev[3].t_us);
        assert!(ev.iter().all(|e| e.process == "java-0" && e.f == F::Send));
        assert_eq!(ev[4].offset, Some(7));
        // Output that ends before the harness stopped the program is an error.
        let stopping = AtomicBool::new(false);
        let (_t, srx) = mpsc::sync_channel(1);
        assert!(read_lines(
            "java-1",
            &b"{\"e\":\"ready\"}\n"[..],
            &ctl_tx,
            &srx,
            &stopping
        )
        .is_err());
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
