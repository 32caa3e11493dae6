//! A frame-aware TCP proxy between the clients and the broker: the network faults of a
//! machine without netem, nft or network namespaces.
//!
//! Every client connects to the proxy (the broker advertises the proxy's address, so
//! connections opened from Metadata go through it too). Each client connection gets its own
//! upstream connection. The client-to-broker direction is read frame by frame (Kafka's
//! `i32 length | request header ...`), so requests can be held back by API key; the
//! broker-to-client direction is copied as bytes.
//!
//! Modes (one for the whole proxy, switched by the nemesis):
//! - `Pass`: forward everything.
//! - `Reset`: a loud partition. Every connection is closed at once and new ones are closed as
//!   soon as they are accepted, so clients see connection errors.
//! - `Blackhole`: a silent partition. Sockets stay open but nothing is forwarded in either
//!   direction, so clients see only timeouts (the case that exposes timeout handling).
//! - `Hold`: requests whose API key is in `keys`, on connections that existed when the hold
//!   began, are held back with everything behind them on that connection (TCP keeps order)
//!   until the mode changes; then they are delivered to the broker, even if the client gave
//!   up and closed its side meanwhile. Connections opened during the hold pass. This is the
//!   delayed-request fault (a Produce or EndTxn that arrives after the client retried on a
//!   new connection), which idempotence and KIP-890 must make harmless.
//!
//! Bounds: one frame is at most `MAX_FRAME_BYTES`; a connection holds at most one frame
//! (the reader stops reading the client while a frame waits); connections are capped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Largest request frame forwarded; a larger length prefix closes the connection.
const MAX_FRAME_BYTES: usize = 128 << 20;
/// Connections open at once through the proxy; more are refused (closed on accept).
const MAX_CONNECTIONS: usize = 512;
/// After the client closed, how long the upstream connection stays open for the responses
/// to requests delivered late.
const LATE_RESPONSE_GRACE: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Reset,
    Blackhole,
    /// Hold requests with these API keys on connections accepted before `conns_before`
    /// (a connection id); connections opened later pass, so a client that gave up and
    /// reconnected gets through while its first attempt is still held.
    Hold {
        keys: Vec<i16>,
        conns_before: u64,
    },
}

/// What the proxy saw, for the report.
#[derive(Default, Debug, Clone)]
pub struct Stats {
    pub connections: u64,
    pub refused: u64,
    pub reset: u64,
    /// API key -> requests held back and delivered late.
    pub held: BTreeMap<i16, u64>,
    /// Held requests delivered after their client had closed its connection.
    pub delivered_after_client_closed: u64,
}

struct Shared {
    mode: watch::Sender<Mode>,
    stats: Mutex<Stats>,
    open: AtomicUsize,
    next_conn_id: AtomicU64,
}

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

fn stats(s: &Shared) -> std::sync::MutexGuard<'_, Stats> {
    s.stats.lock().unwrap_or_else(|p| p.into_inner())
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub fn start(upstream: SocketAddr) -> anyhow::Result<Proxy> {
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("binding the proxy")?;
        std_listener.set_nonblocking(true)?;
        let port = std_listener.local_addr()?.port();
        let (mode, _) = watch::channel(Mode::Pass);
        let shared = Arc::new(Shared {
            mode,
            stats: Mutex::new(Stats::default()),
            open: AtomicUsize::new(0),
            next_conn_id: AtomicU64::new(0),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("proxy runtime")?;
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("chaos-proxy".into())
            .spawn(move || {
                rt.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(std_listener) else {
                        return;
                    };
                    tokio::select! {
                        _ = accept_loop(listener, upstream, sh) => {}
                        _ = stop_rx => {}
                    }
                });
                rt.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(Proxy {
            port,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn set(&self, mode: Mode) {
        self.shared.mode.send_replace(mode);
    }

    /// Holds `keys` on the connections open now (see [`Mode::Hold`]).
    pub fn hold_existing(&self, keys: Vec<i16>) {
        let conns_before = self.shared.next_conn_id.load(Ordering::SeqCst);
        self.set(Mode::Hold { keys, conns_before });
    }

    pub fn stats(&self) -> Stats {
        stats(&self.shared).clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, sh: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // EMFILE and the like: back off a little instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let refuse =
            *sh.mode.borrow() == Mode::Reset || sh.open.load(Ordering::SeqCst) >= MAX_CONNECTIONS;
        if refuse {
            stats(&sh).refused += 1;
            drop(client);
            continue;
        }
        stats(&sh).connections += 1;
        sh.open.fetch_add(1, Ordering::SeqCst);
        let id = sh.next_conn_id.fetch_add(1, Ordering::SeqCst);
        let sh2 = sh.clone();
        tokio::spawn(async move {
            connection(id, client, upstream, &sh2).await;
            sh2.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Waits while the mode says not to forward; false when the connection must be closed.
async fn may_forward(mode: &mut watch::Receiver<Mode>, conn: u64, api_key: Option<i16>) -> bool {
    loop {
        let wait = match &*mode.borrow_and_update() {
            Mode::Pass => false,
            Mode::Reset => return false,
            Mode::Blackhole => true,
            m @ Mode::Hold { .. } => holds(m, conn, api_key),
        };
        if !wait {
            return true;
        }
        if mode.changed().await.is_err() {
            return false;
        }
    }
}

async fn connection(conn: u64, client: TcpStream, upstream: SocketAddr, sh: &Arc<Shared>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut c_rd, mut c_wr) = client.into_split();
    let (mut s_rd, mut s_wr) = server.into_split();
    let client_closed_flag = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // Broker -> client: bytes, paused by a blackhole, cut by a reset.
    let mut mode_down = sh.mode.subscribe();
    let closed = client_closed_flag.clone();
    let down = async move {
        let mut buf = vec![0u8; 64 << 10];
        // Bounded by the connection's life: every iteration reads from the broker.
        loop {
            let n = tokio::select! {
                r = s_rd.read(&mut buf) => r.unwrap_or(0),
                _ = mode_down.changed() => {
                    if *mode_down.borrow_and_update() == Mode::Reset { return; }
                    continue;
                }
            };
            if n == 0 {
                return;
            }
            if !may_forward(&mut mode_down, conn, None).await {
                return;
            }
            if !closed.load(Ordering::SeqCst) && c_wr.write_all(&buf[..n]).await.is_err() {
                closed.store(true, Ordering::SeqCst);
            }
        }
    };

    // Client -> broker: frame by frame. Ends with whether the client closed its side (then
    // late responses are still drained) or the connection must go (reset, broker gone).
    let mut mode_up = sh.mode.subscribe();
    let sh_up = sh.clone();
    let up = async move {
        loop {
            let mut len = [0u8; 4];
            let read = tokio::select! {
                r = c_rd.read_exact(&mut len) => r.is_ok(),
                _ = reset(&mut mode_up) => return false,
            };
            if !read {
                return true;
            }
            let n = i32::from_be_bytes(len);
            if n < 4 || n as usize > MAX_FRAME_BYTES {
                return true;
            }
            let mut frame = vec![0u8; n as usize];
            let read = tokio::select! {
                r = c_rd.read_exact(&mut frame) => r.is_ok(),
                _ = reset(&mut mode_up) => return false,
            };
            if !read {
                return true;
            }
            let api_key = i16::from_be_bytes([frame[0], frame[1]]);
            let held = holds(&mode_up.borrow(), conn, Some(api_key));
            if !may_forward(&mut mode_up, conn, Some(api_key)).await {
                return false;
            }
            if held {
                // Did the client give up while its request was held? A peek does not consume
                // what it may have sent after it; 0 bytes (or an error) means it closed.
                let mut probe = [0u8; 1];
                let gone = matches!(
                    tokio::time::timeout(Duration::from_millis(2), c_rd.peek(&mut probe)).await,
                    Ok(Ok(0)) | Ok(Err(_))
                );
                let mut s = stats(&sh_up);
                *s.held.entry(api_key).or_default() += 1;
                if gone {
                    s.delivered_after_client_closed += 1;
                }
            }
            if s_wr.write_all(&len).await.is_err() || s_wr.write_all(&frame).await.is_err() {
                return false;
            }
        }
    };

    tokio::pin!(down);
    tokio::pin!(up);
    tokio::select! {
        _ = &mut down => {}
        client_closed = &mut up => {
            if client_closed {
                // Keep the upstream open for the responses to late requests; `down` stops
                // at most LATE_RESPONSE_GRACE later.
                client_closed_flag.store(true, Ordering::SeqCst);
                let _ = tokio::time::timeout(LATE_RESPONSE_GRACE, down).await;
            }
        }
    }
    if *sh.mode.borrow() == Mode::Reset {
        stats(sh).reset += 1;
    }
}

/// Whether `mode` holds a request with `api_key` on connection `conn`.
fn holds(mode: &Mode, conn: u64, api_key: Option<i16>) -> bool {
    match mode {
        Mode::Hold { keys, conns_before } => {
            conn < *conns_before && api_key.is_some_and(|k| keys.contains(&k))
        }
        _ => false,
    }
}

/// Resolves when the mode becomes `Reset` (or the proxy is gone).
async fn reset(mode: &mut watch::Receiver<Mode>) {
    loop {
        if *mode.borrow_and_update() == Mode::Reset {
            return;
        }
        if mode.changed().await.is_err() {
            return;
        }
    }
}
