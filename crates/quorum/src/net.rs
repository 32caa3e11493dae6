//! Length-prefixed RPC over TCP: `u32 length | u8 kind | u32 correlation | u32 crc32c(body) | body`.
//!
//! One connection per peer, requests pipelined (matched by correlation id), every queue
//! bounded. A malformed frame closes the connection; nothing here panics on peer input.
//!
//! Every connection starts with a `Hello` naming the cluster and the node it is meant for; a
//! server refuses (and closes) a connection from another cluster or meant for another node
//! before handling anything on it. Without this, a node of an earlier cluster still running
//! at a reused address (or a leader still addressing a port now owned by a new node) took part
//! in a cluster it does not belong to: its leader saw a freshly formatted node as a follower
//! whose log had gone backwards, and openraft panicked ("follower log reversion").

use std::collections::HashMap;
use std::future::Future;
use std::io::{self, Cursor};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RPCTypes, Raft, Snapshot, SnapshotMeta, Vote};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::{AbortHandle, JoinSet};

use crate::{AppHandler, TypeConfig};

/// Bytes after the length field that are not body: kind, correlation, crc.
const FRAME_OVERHEAD: usize = 1 + 4 + 4;
/// Frames queued for a connection's writer.
const WRITE_QUEUE: usize = 64;
/// Requests in flight on one connection (client side) or being served (server side).
const MAX_IN_FLIGHT: usize = 128;
/// Inbound connections served at once; more are closed on accept.
const MAX_CONNECTIONS: usize = 256;
/// How long a refused connection is kept open for the peer to read the refusal.
const REFUSED_LINGER: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    AppendReq = 1,
    AppendResp = 2,
    VoteReq = 3,
    VoteResp = 4,
    SnapshotReq = 5,
    SnapshotResp = 6,
    AppReq = 7,
    AppResp = 8,
    NotLeader = 9,
    Error = 10,
    Hello = 11,
    Refused = 12,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::AppendReq,
            2 => Kind::AppendResp,
            3 => Kind::VoteReq,
            4 => Kind::VoteResp,
            5 => Kind::SnapshotReq,
            6 => Kind::SnapshotResp,
            7 => Kind::AppReq,
            8 => Kind::AppResp,
            9 => Kind::NotLeader,
            10 => Kind::Error,
            11 => Kind::Hello,
            12 => Kind::Refused,
            _ => return None,
        })
    }
}

#[derive(Debug)]
pub(crate) struct Frame {
    pub kind: Kind,
    pub correlation: u32,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("io: {0}")]
    Io(#[from] io::Error),
    #[error("frame length {0} outside 9..={1}")]
    Length(usize, usize),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("frame checksum mismatch")]
    Crc,
}

pub(crate) fn encode_frame(kind: Kind, correlation: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + FRAME_OVERHEAD + body.len());
    out.extend_from_slice(&((FRAME_OVERHEAD + body.len()) as u32).to_be_bytes());
    out.push(kind as u8);
    out.extend_from_slice(&correlation.to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Reads one frame; `Ok(None)` on a clean end of stream before a frame starts. The length is
/// checked against `max_frame` before anything is allocated.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max_frame: usize,
) -> Result<Option<Frame>, FrameError> {
    let mut len = [0u8; 4];
    // End of stream is clean only before the first byte of a frame.
    if r.read(&mut len[..1]).await? == 0 {
        return Ok(None);
    }
    r.read_exact(&mut len[1..]).await?;
    let len = u32::from_be_bytes(len) as usize;
    if !(FRAME_OVERHEAD..=max_frame).contains(&len) {
        return Err(FrameError::Length(len, max_frame));
    }
    let mut head = [0u8; FRAME_OVERHEAD];
    r.read_exact(&mut head).await?;
    let kind = Kind::from_u8(head[0]).ok_or(FrameError::Kind(head[0]))?;
    let correlation = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    let crc = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
    let mut body = vec![0u8; len - FRAME_OVERHEAD];
    r.read_exact(&mut body).await?;
    if crc32c::crc32c(&body) != crc {
        return Err(FrameError::Crc);
    }
    Ok(Some(Frame {
        kind,
        correlation,
        body,
    }))
}

/// Snapshot request body: `u32 header_len | header JSON | snapshot data`.
#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    vote: Vote<u64>,
    meta: SnapshotMeta<u64, BasicNode>,
}

fn encode_snapshot_req(
    vote: Vote<u64>,
    meta: SnapshotMeta<u64, BasicNode>,
    data: &[u8],
) -> Result<Vec<u8>, serde_json::Error> {
    let header = serde_json::to_vec(&SnapshotHeader { vote, meta })?;
    let mut out = Vec::with_capacity(4 + header.len() + data.len());
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    Ok(out)
}

fn decode_snapshot_req(body: &[u8]) -> Result<(SnapshotHeader, Vec<u8>), String> {
    if body.len() < 4 {
        return Err("snapshot body too short".into());
    }
    let hlen = crate::fsutil::be_u32(body) as usize;
    if hlen > body.len() - 4 {
        return Err("snapshot header length out of range".into());
    }
    let header = serde_json::from_slice(&body[4..4 + hlen]).map_err(|e| e.to_string())?;
    Ok((header, body[4 + hlen..].to_vec()))
}

/// The first frame of every connection (correlation 0): which cluster the connecting node
/// belongs to, its id, and the node it means to reach.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub cluster_id: String,
    pub from: u64,
    pub to: u64,
}

/// Who this node is: what it sends in its `Hello`s and what it accepts in others'.
#[derive(Clone, Debug)]
pub(crate) struct Identity {
    pub cluster_id: String,
    pub node_id: u64,
}

impl Identity {
    fn hello_frame(&self, to: u64) -> Vec<u8> {
        let hello = Hello {
            cluster_id: self.cluster_id.clone(),
            from: self.node_id,
            to,
        };
        // A struct of a string and two integers always serializes.
        let body = serde_json::to_vec(&hello).unwrap_or_default();
        encode_frame(Kind::Hello, 0, &body)
    }

    /// Checks the first frame of an accepted connection; `Err` is the reason it is refused.
    fn check_hello(&self, frame: &Frame) -> Result<Hello, String> {
        if frame.kind != Kind::Hello {
            return Err(format!(
                "first frame is {:?}, not Hello (a peer without the cluster handshake)",
                frame.kind
            ));
        }
        let hello: Hello =
            serde_json::from_slice(&frame.body).map_err(|e| format!("bad Hello: {e}"))?;
        if hello.cluster_id != self.cluster_id {
            return Err(format!(
                "node {} of cluster {:?} is not in cluster {:?}",
                hello.from, hello.cluster_id, self.cluster_id
            ));
        }
        if hello.to != self.node_id {
            return Err(format!(
                "node {} meant to reach node {}, this is node {}",
                hello.from, hello.to, self.node_id
            ));
        }
        Ok(hello)
    }
}

// ---------------------------------------------------------------------------------------------
// Server

pub(crate) struct ServerCtx {
    pub node_id: u64,
    pub identity: Identity,
    /// Inbound connections refused by the handshake, counted.
    pub refused: watch::Sender<u64>,
    pub raft: Raft<TypeConfig>,
    pub app: Arc<dyn AppHandler>,
    pub leader: watch::Receiver<Option<u64>>,
    pub max_frame: usize,
}

/// A decoded request, ready to be served.
enum Request {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    Snapshot(SnapshotHeader, Vec<u8>),
    App(Vec<u8>),
}

fn decode_request(frame: Frame) -> Result<Request, String> {
    Ok(match frame.kind {
        Kind::AppendReq => {
            Request::Append(serde_json::from_slice(&frame.body).map_err(|e| e.to_string())?)
        }
        Kind::VoteReq => {
            Request::Vote(serde_json::from_slice(&frame.body).map_err(|e| e.to_string())?)
        }
        Kind::SnapshotReq => {
            let (h, d) = decode_snapshot_req(&frame.body)?;
            Request::Snapshot(h, d)
        }
        Kind::AppReq => Request::App(frame.body),
        other => return Err(format!("unexpected frame kind {other:?} from a client")),
    })
}

/// Fuzzing entry point: decodes a frame's body as a server would.
pub(crate) fn fuzz_decode_request(frame: Frame) {
    if frame.kind == Kind::Hello {
        let id = Identity {
            cluster_id: "fuzz".into(),
            node_id: 1,
        };
        let _ = id.check_hello(&frame);
        return;
    }
    let _ = decode_request(frame);
}

/// Accepts connections until the task is aborted (aborting drops every connection task).
pub(crate) async fn serve(listener: TcpListener, ctx: Arc<ServerCtx>) {
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((stream, peer)) => {
                if conns.len() >= MAX_CONNECTIONS {
                    tracing::warn!(%peer, "too many quorum connections; closing the new one");
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let ctx = ctx.clone();
                conns.spawn(async move {
                    if let Err(e) = serve_conn(stream, ctx).await {
                        tracing::warn!(%peer, error = %e, "quorum connection closed");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "quorum accept failed");
                // Back off briefly (e.g. out of file descriptors) instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_conn(stream: TcpStream, ctx: Arc<ServerCtx>) -> Result<(), FrameError> {
    let (mut rd, mut wr) = stream.into_split();
    // The handshake: nothing is handled on a connection from another cluster, or meant for
    // another node (see the module comment).
    let Some(first) = read_frame(&mut rd, ctx.max_frame).await? else {
        return Ok(());
    };
    if let Err(why) = ctx.identity.check_hello(&first) {
        tracing::warn!(reason = %why, "quorum connection refused");
        ctx.refused.send_modify(|n| *n += 1);
        wr.write_all(&encode_frame(
            Kind::Refused,
            first.correlation,
            why.as_bytes(),
        ))
        .await?;
        let _ = wr.shutdown().await;
        // Discard what the peer pipelined after its Hello until it closes (bounded in time):
        // closing with unread input would reset the connection, and the peer could lose the
        // Refused frame and its reason.
        let mut sink = vec![0u8; 4096];
        let _ = tokio::time::timeout(REFUSED_LINGER, async {
            while let Ok(n) = rd.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        return Ok(());
    }
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        while let Some(buf) = rx.recv().await {
            if let Err(e) = wr.write_all(&buf).await {
                tracing::debug!(error = %e, "quorum response write failed");
                return;
            }
        }
    });
    let inflight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        while tasks.try_join_next().is_some() {}
        let Some(frame) = read_frame(&mut rd, ctx.max_frame).await? else {
            // Clean end of stream: answer what is in flight, then close.
            drop(tx);
            while tasks.join_next().await.is_some() {}
            return Ok(());
        };
        let correlation = frame.correlation;
        let request = match decode_request(frame) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "malformed quorum request; closing the connection");
                return Ok(());
            }
        };
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            return Ok(());
        };
        let ctx = ctx.clone();
        let tx = tx.clone();
        tasks.spawn(async move {
            let (kind, body) = handle(&ctx, request).await;
            let _ = tx.send(encode_frame(kind, correlation, &body)).await;
            drop(permit);
        });
    }
}

fn json<T: Serialize>(kind: Kind, v: &T) -> (Kind, Vec<u8>) {
    match serde_json::to_vec(v) {
        Ok(b) => (kind, b),
        Err(e) => (Kind::Error, e.to_string().into_bytes()),
    }
}

async fn handle(ctx: &ServerCtx, request: Request) -> (Kind, Vec<u8>) {
    match request {
        Request::Append(req) => json(Kind::AppendResp, &ctx.raft.append_entries(req).await),
        Request::Vote(req) => json(Kind::VoteResp, &ctx.raft.vote(req).await),
        Request::Snapshot(header, data) => {
            let snapshot = Snapshot {
                meta: header.meta,
                snapshot: Box::new(Cursor::new(data)),
            };
            json(
                Kind::SnapshotResp,
                &ctx.raft.install_full_snapshot(header.vote, snapshot).await,
            )
        }
        Request::App(req) => {
            let leader = *ctx.leader.borrow();
            if leader == Some(ctx.node_id) {
                (Kind::AppResp, ctx.app.handle(req).await)
            } else {
                json(Kind::NotLeader, &leader)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client

#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The node at the address refused the handshake (another cluster, or another node id).
    #[error("refused by the node at the address: {0}")]
    Refused(String),
    #[error("timed out")]
    Timeout,
}

struct Conn {
    tx: mpsc::Sender<Vec<u8>>,
    pending: Arc<Mutex<HashMap<u32, oneshot::Sender<Frame>>>>,
    closed: Arc<AtomicBool>,
    /// Why the peer refused the handshake, if it did.
    refused: Arc<OnceLock<String>>,
    tasks: Vec<AbortHandle>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn lock_pending(
    p: &Mutex<HashMap<u32, oneshot::Sender<Frame>>>,
) -> std::sync::MutexGuard<'_, HashMap<u32, oneshot::Sender<Frame>>> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

fn close(closed: &AtomicBool, pending: &Mutex<HashMap<u32, oneshot::Sender<Frame>>>) {
    closed.store(true, Ordering::SeqCst);
    lock_pending(pending).clear(); // dropping the senders wakes every waiter
}

/// One peer: a lazily (re)connected, pipelined connection.
pub(crate) struct Peer {
    addr: String,
    /// The first frame of every connection to this peer.
    hello: Vec<u8>,
    max_frame: usize,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    next: AtomicU32,
    inflight: Semaphore,
}

impl Peer {
    fn new(addr: String, hello: Vec<u8>, max_frame: usize) -> Peer {
        Peer {
            addr,
            hello,
            max_frame,
            conn: tokio::sync::Mutex::new(None),
            next: AtomicU32::new(1),
            inflight: Semaphore::new(MAX_IN_FLIGHT),
        }
    }

    async fn connection(&self) -> Result<Arc<Conn>, CallError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            if !c.closed.load(Ordering::SeqCst) {
                return Ok(c.clone());
            }
        }
        *guard = None;
        let stream = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| CallError::Unreachable(format!("{}: {e}", self.addr)))?;
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        // The handshake goes first; requests may follow at once (the server handles none of
        // them if it refuses the handshake).
        wr.write_all(&self.hello)
            .await
            .map_err(|e| CallError::Unreachable(format!("{}: {e}", self.addr)))?;
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
        let pending: Arc<Mutex<HashMap<u32, oneshot::Sender<Frame>>>> = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let refused: Arc<OnceLock<String>> = Arc::default();
        let (p, c) = (pending.clone(), closed.clone());
        let writer = tokio::spawn(async move {
            while let Some(buf) = rx.recv().await {
                if let Err(e) = wr.write_all(&buf).await {
                    tracing::debug!(error = %e, "quorum request write failed");
                    break;
                }
            }
            close(&c, &p);
        });
        let (p, c, r, max_frame, addr) = (
            pending.clone(),
            closed.clone(),
            refused.clone(),
            self.max_frame,
            self.addr.clone(),
        );
        let reader = tokio::spawn(async move {
            loop {
                match read_frame(&mut rd, max_frame).await {
                    Ok(Some(frame)) if frame.kind == Kind::Refused => {
                        let why = String::from_utf8_lossy(&frame.body).into_owned();
                        tracing::warn!(peer = %addr, reason = %why, "quorum peer refused the connection");
                        let _ = r.set(why);
                        break;
                    }
                    Ok(Some(frame)) => {
                        if let Some(waiter) = lock_pending(&p).remove(&frame.correlation) {
                            let _ = waiter.send(frame);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(peer = %addr, error = %e, "malformed quorum response; closing the connection");
                        break;
                    }
                }
            }
            close(&c, &p);
        });
        let conn = Arc::new(Conn {
            tx,
            pending,
            closed,
            refused,
            tasks: vec![writer.abort_handle(), reader.abort_handle()],
        });
        *guard = Some(conn.clone());
        Ok(conn)
    }

    async fn call_inner(&self, kind: Kind, body: &[u8]) -> Result<Frame, CallError> {
        let _permit = self
            .inflight
            .acquire()
            .await
            .map_err(|_| CallError::Unreachable("closed".into()))?;
        let conn = self.connection().await?;
        let correlation = self.next.fetch_add(1, Ordering::Relaxed);
        let (otx, orx) = oneshot::channel();
        lock_pending(&conn.pending).insert(correlation, otx);
        if conn.closed.load(Ordering::SeqCst) {
            lock_pending(&conn.pending).remove(&correlation);
            return Err(match conn.refused.get() {
                Some(why) => CallError::Refused(why.clone()),
                None => CallError::Unreachable("connection closed".into()),
            });
        }
        struct Forget<'a>(&'a Conn, u32);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                lock_pending(&self.0.pending).remove(&self.1);
            }
        }
        let _forget = Forget(&conn, correlation);
        let lost = |conn: &Conn| match conn.refused.get() {
            Some(why) => CallError::Refused(why.clone()),
            None => CallError::Unreachable("connection closed".into()),
        };
        if conn
            .tx
            .send(encode_frame(kind, correlation, body))
            .await
            .is_err()
        {
            return Err(lost(&conn));
        }
        orx.await.map_err(|_| lost(&conn))
    }

    /// Sends one request and waits for its response, up to `timeout` (connect included).
    pub(crate) async fn call(
        &self,
        kind: Kind,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Frame, CallError> {
        if body.len() + FRAME_OVERHEAD > self.max_frame {
            return Err(CallError::Unreachable(format!(
                "request of {} bytes exceeds the frame limit",
                body.len()
            )));
        }
        match tokio::time::timeout(timeout, self.call_inner(kind, body)).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout),
        }
    }

    async fn close(&self) {
        *self.conn.lock().await = None;
    }
}

/// Connections to every peer, shared by openraft's network and `call_leader`.
pub(crate) struct Peers {
    identity: Identity,
    max_frame: usize,
    map: Mutex<HashMap<u64, Arc<Peer>>>,
}

impl Peers {
    pub(crate) fn new(identity: Identity, max_frame: usize) -> Peers {
        Peers {
            identity,
            max_frame,
            map: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn get(&self, id: u64, addr: &str) -> Arc<Peer> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&id) {
            Some(p) if p.addr == addr => p.clone(),
            _ => {
                let hello = self.identity.hello_frame(id);
                let p = Arc::new(Peer::new(addr.to_string(), hello, self.max_frame));
                map.insert(id, p.clone());
                p
            }
        }
    }

    pub(crate) async fn close_all(&self) {
        let peers: Vec<Arc<Peer>> = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            map.drain().map(|(_, p)| p).collect()
        };
        for p in peers {
            p.close().await;
        }
    }
}

pub(crate) struct NetFactory {
    pub node_id: u64,
    pub peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for NetFactory {
    type Network = NetClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> NetClient {
        NetClient {
            node_id: self.node_id,
            target,
            peer: self.peers.get(target, &node.addr),
        }
    }
}

pub(crate) struct NetClient {
    node_id: u64,
    target: u64,
    peer: Arc<Peer>,
}

type RaftRpcError<E = openraft::error::Infallible> = RPCError<u64, BasicNode, RaftError<u64, E>>;

impl NetClient {
    fn map_call<E: std::error::Error>(
        &self,
        e: CallError,
        action: RPCTypes,
        ttl: Duration,
    ) -> RPCError<u64, BasicNode, E> {
        match e {
            CallError::Timeout => RPCError::Timeout(Timeout {
                action,
                id: self.node_id,
                target: self.target,
                timeout: ttl,
            }),
            // A refusing node is not the peer openraft means: to openraft it is unreachable
            // (it backs off and retries), and no Raft response is ever taken from it.
            CallError::Unreachable(why) | CallError::Refused(why) => {
                RPCError::Unreachable(Unreachable::new(&io::Error::other(why)))
            }
        }
    }

    /// Decodes a `Result<T, RaftError>` response of the expected kind.
    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        frame: Frame,
        want: Kind,
    ) -> Result<T, RaftRpcError> {
        if frame.kind != want {
            let why = format!(
                "unexpected response kind {:?}: {}",
                frame.kind,
                String::from_utf8_lossy(&frame.body)
            );
            return Err(RPCError::Network(NetworkError::new(&io::Error::other(why))));
        }
        let res: Result<T, RaftError<u64>> = serde_json::from_slice(&frame.body)
            .map_err(|e| RPCError::Network(NetworkError::new(&io::Error::other(e.to_string()))))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for NetClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RaftRpcError> {
        let n = rpc.entries.len() as u64;
        let body =
            serde_json::to_vec(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if body.len() + FRAME_OVERHEAD > self.peer.max_frame && n > 1 {
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(n / 2),
            ));
        }
        let ttl = option.hard_ttl();
        let frame = self
            .peer
            .call(Kind::AppendReq, &body, ttl)
            .await
            .map_err(|e| self.map_call(e, RPCTypes::AppendEntries, ttl))?;
        self.decode(frame, Kind::AppendResp)
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RaftRpcError<InstallSnapshotError>> {
        // Never called: `full_snapshot` below sends the whole snapshot in one frame.
        Err(RPCError::Network(NetworkError::new(&io::Error::other(
            "chunked snapshots are not supported",
        ))))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RaftRpcError> {
        let body =
            serde_json::to_vec(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let ttl = option.hard_ttl();
        let frame = self
            .peer
            .call(Kind::VoteReq, &body, ttl)
            .await
            .map_err(|e| self.map_call(e, RPCTypes::Vote, ttl))?;
        self.decode(frame, Kind::VoteResp)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<u64>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<TypeConfig, Fatal<u64>>> {
        let data = snapshot.snapshot.into_inner();
        let body = encode_snapshot_req(vote, snapshot.meta, &data)
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let ttl = option.hard_ttl();
        let call = self.peer.call(Kind::SnapshotReq, &body, ttl);
        let frame = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = call => r,
        };
        let frame = frame.map_err(|e| match e {
            CallError::Timeout => StreamingError::Timeout(Timeout {
                action: RPCTypes::InstallSnapshot,
                id: self.node_id,
                target: self.target,
                timeout: ttl,
            }),
            CallError::Unreachable(why) | CallError::Refused(why) => {
                StreamingError::Unreachable(Unreachable::new(&io::Error::other(why)))
            }
        })?;
        if frame.kind != Kind::SnapshotResp {
            let why = format!("unexpected response kind {:?}", frame.kind);
            return Err(StreamingError::Network(NetworkError::new(
                &io::Error::other(why),
            )));
        }
        let res: Result<SnapshotResponse<u64>, Fatal<u64>> = serde_json::from_slice(&frame.body)
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| StreamingError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_every_truncation_is_an_error() {
        let frame = encode_frame(Kind::AppReq, 7, b"body bytes");
        let got = read_frame(&mut frame.as_slice(), 1024)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (got.kind, got.correlation, got.body.as_slice()),
            (Kind::AppReq, 7, b"body bytes".as_slice())
        );
        assert!(read_frame(&mut [].as_slice(), 1024)
            .await
            .unwrap()
            .is_none());
        for cut in 1..frame.len() {
            assert!(
                read_frame(&mut &frame[..cut], 1024).await.is_err(),
                "cut at {cut}"
            );
        }
        // The length is checked before the body is read or allocated.
        assert!(matches!(
            read_frame(&mut frame.as_slice(), 12).await,
            Err(FrameError::Length(19, 12))
        ));
        let mut bad = frame.clone();
        bad[4] = 99;
        assert!(matches!(
            read_frame(&mut bad.as_slice(), 1024).await,
            Err(FrameError::Kind(99))
        ));
        let mut bad = frame;
        bad[13] ^= 1;
        assert!(matches!(
            read_frame(&mut bad.as_slice(), 1024).await,
            Err(FrameError::Crc)
        ));
    }

    #[test]
    fn snapshot_request_body_rejects_bad_header_lengths() {
        assert!(decode_snapshot_req(&[0, 0]).is_err());
        assert!(decode_snapshot_req(&[0, 0, 1, 0, b'{']).is_err());
        assert!(decode_snapshot_req(&[0, 0, 0, 2, b'{', b'}']).is_err()); // missing fields
    }
}
