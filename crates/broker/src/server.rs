//! The TCP server: accept loop, one task per connection reading frames, a writer task per
//! connection sending responses in request order.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use holdfast_codec::{
    decode_request, encode_response, encode_unsupported_api_versions, FrameDecoder, Request,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::handlers::Reply;
use crate::state::Broker;

/// How long shutdown waits for connections to finish their in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A response slot: `Ok(None)` sends nothing (acks=0), `Err` closes the connection.
type Slot = oneshot::Receiver<Result<Option<BytesMut>, ()>>;

/// A pending response and the share of `queued.max.request.bytes` its request holds until
/// the response is written.
type InFlight = (Option<OwnedSemaphorePermit>, Slot);

/// Serves until `shutdown` resolves, then drains connections. Does not close the logs:
/// call [`Broker::shutdown`] afterwards.
pub async fn serve(broker: Arc<Broker>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(broker.config.max_connections));
    // Request bytes read but not yet answered, across all connections.
    let request_bytes = broker
        .config
        .queued_max_request_bytes
        .map(|n| Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS))));
    let mut conns = JoinSet::new();
    let ticker = tokio::spawn(tick_loop(Arc::clone(&broker), stop_rx.clone()));
    broker.spawn_group_tasks(stop_rx.clone());
    broker.spawn_txn_tasks(stop_rx.clone());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    tracing::warn!(%peer, max = broker.config.max_connections, "max.connections reached: refusing connection");
                    drop(stream);
                    continue;
                };
                let b = Arc::clone(&broker);
                let stop = stop_rx.clone();
                let budget = request_bytes.clone();
                conns.spawn(async move {
                    connection(b, stream, peer, stop, budget).await;
                    drop(permit);
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    tracing::info!("shutting down: no new connections; finishing in-flight requests");
    drop(listener);
    broker.begin_shutdown();
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("connections did not finish in time; aborting them");
        conns.abort_all();
    }
    ticker.abort();
}

async fn tick_loop(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(Duration::from_millis(200));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let retention_every = Duration::from_millis(broker.config.retention_check_interval_ms);
    let mut last_retention = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        let retention = last_retention.elapsed() >= retention_every;
        if retention {
            last_retention = tokio::time::Instant::now();
        }
        let b = Arc::clone(&broker);
        if tokio::task::spawn_blocking(move || b.tick(retention))
            .await
            .is_err()
        {
            tracing::error!("log maintenance task panicked");
        }
    }
}

async fn connection(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
    budget: Option<Arc<Semaphore>>,
) {
    let _ = stream.set_nodelay(true);
    tracing::debug!(%peer, "connection opened");
    let (mut rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel::<InFlight>(broker.config.max_inflight_per_connection.max(1));
    let writer = tokio::spawn(write_loop(wr, rx, peer));
    let decoder = FrameDecoder::new(broker.config.socket_request_max_bytes);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    'conn: loop {
        let mut held: Option<OwnedSemaphorePermit> = None;
        let frame = loop {
            // Reserve the frame's bytes from the broker-wide budget before reading its body
            // (Kafka's queued.max.request.bytes): when the budget is spent, stop reading.
            if held.is_none() {
                if let (Some(sem), Ok(Some(len))) = (&budget, decoder.peek_len(&buf)) {
                    let want = len.clamp(1, sem_capacity(&broker)) as u32;
                    tokio::select! {
                        p = Arc::clone(sem).acquire_many_owned(want) => match p {
                            Ok(p) => held = Some(p),
                            Err(_) => break 'conn,
                        },
                        _ = stop.changed() => break 'conn,
                    }
                }
            }
            match decoder.decode(&mut buf) {
                Ok(Some(f)) => break f,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "bad frame: closing connection");
                    break 'conn;
                }
            }
            if *stop.borrow() {
                break 'conn;
            }
            tokio::select! {
                n = rd.read_buf(&mut buf) => match n {
                    Ok(0) => break 'conn,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "read failed");
                        break 'conn;
                    }
                },
                _ = stop.changed() => break 'conn,
            }
        };
        let (otx, orx) = oneshot::channel();
        match decode_request(frame) {
            Ok(Request::UnsupportedApiVersions { correlation_id }) => {
                let _ = otx.send(
                    encode_unsupported_api_versions(correlation_id)
                        .map(Some)
                        .map_err(|e| {
                            tracing::error!(%peer, error = %e, "encode failed");
                        }),
                );
            }
            Ok(Request::Known {
                header,
                api_key,
                body,
            }) => {
                let version = header.request_api_version;
                let cid = header.correlation_id;
                let started = std::time::Instant::now();
                let encode = move |r: Option<kafka_protocol::messages::ResponseKind>| -> Result<Option<BytesMut>, ()> {
                    crate::metrics::request_done(api_key as i16, started.elapsed());
                    match r {
                        None => {
                            tracing::error!(%peer, ?api_key, "request failed internally: closing connection");
                            Err(())
                        }
                        Some(r) => encode_response(api_key, version, cid, &r).map(Some).map_err(|e| {
                            tracing::error!(%peer, error = %e, "encode failed: closing connection");
                        }),
                    }
                };
                tracing::trace!(%peer, ?api_key, version, cid, "request");
                // Cluster mode answers some APIs itself; a single node gets `body` back.
                let reply =
                    match crate::cluster::api::intercept(&broker, api_key, version, body).await {
                        Ok(reply) => reply,
                        Err(body) if crate::txn::is_txn_api(api_key) => {
                            broker.handle_txn(version, body).await
                        }
                        Err(body) if crate::groups::is_group_api(api_key) => {
                            broker
                                .handle_group(
                                    version,
                                    body,
                                    header.client_id.as_deref().unwrap_or(""),
                                    peer,
                                )
                                .await
                        }
                        Err(body) => broker.handle(api_key, version, body).await,
                    };
                match reply {
                    Reply::Now(r) => {
                        let _ = otx.send(encode(r));
                    }
                    Reply::Later(fut) => {
                        tokio::spawn(async move {
                            let r = fut.await;
                            let _ = otx.send(encode(r));
                        });
                    }
                    Reply::Quiet(fut) => {
                        tokio::spawn(async move {
                            fut.await;
                            crate::metrics::request_done(api_key as i16, started.elapsed());
                            let _ = otx.send(Ok(None));
                        });
                    }
                }
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "unusable request: closing connection");
                break 'conn;
            }
        }
        // Bounded: with max in-flight responses pending, stop reading until one is written.
        if tx.send((held, orx)).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
    tracing::debug!(%peer, "connection closed");
}

/// The most bytes one request may reserve: the whole budget (a frame larger than the budget
/// but within socket.request.max.bytes waits for everything else to drain).
fn sem_capacity(broker: &Broker) -> usize {
    broker
        .config
        .queued_max_request_bytes
        .unwrap_or(usize::MAX)
        .clamp(1, u32::MAX as usize)
}

async fn write_loop(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<InFlight>, peer: SocketAddr) {
    while let Some((_held, slot)) = rx.recv().await {
        match slot.await {
            Ok(Ok(Some(bytes))) => {
                if let Err(e) = wr.write_all(&bytes).await {
                    tracing::debug!(%peer, error = %e, "write failed");
                    return;
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(())) | Err(_) => {
                let _ = wr.shutdown().await;
                return;
            }
        }
    }
    let _ = wr.shutdown().await;
}
