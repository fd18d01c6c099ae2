//! The HTTP listener: accepts connections (at most `max_connections` at once; more wait in the
//! kernel's backlog), gives each client a time limit for sending a request head (idle kept-alive
//! connections included), records the peer address for the per-client login limits, and on
//! shutdown stops accepting and lets open requests finish within a grace period.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Semaphore, watch};
use tower_service::Service;
use tracing::{debug, warn};

/// Connections the kernel completes and queues for us while every slot is taken (the kernel
/// may lower it to `net.core.somaxconn`); more than that, and clients' connects are retried.
const BACKLOG: u32 = 1024;

/// Listen on `address` with a queue deep enough for bursts (the standard library's 128 is
/// quickly full while the connection cap holds clients back).
pub fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)
}

/// How the listener treats connections.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A client must send a complete request head within this (from connecting, or from the
    /// end of its previous response); else the connection is closed.
    pub header_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// After the shutdown signal, how long open requests may take to finish.
    pub drain: Duration,
}

/// Serve `router` on `listener` until `shutdown` completes; then stop accepting, ask every
/// connection to close after its current request, and return when all have (or `drain` ran out).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // Dropping `stop_rx` tells every connection to finish; each holds a `done` receiver.
    let (stop_tx, stop_rx) = watch::channel(());
    tokio::spawn(async move {
        shutdown.await;
        drop(stop_rx);
    });
    let (done_tx, done_rx) = watch::channel(());
    let mut logged_full = false;
    loop {
        // A free slot first, so the connections over the cap stay unaccepted.
        let permit = if slots.available_permits() == 0 {
            if !logged_full {
                warn!(
                    max_connections = limits.max_connections,
                    "connection limit reached; new connections wait"
                );
                logged_full = true;
            }
            tokio::select! {
                permit = slots.clone().acquire_owned() => permit,
                _ = stop_tx.closed() => break,
            }
        } else {
            logged_full = false;
            slots.clone().acquire_owned().await
        };
        let Ok(permit) = permit else { break };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop_tx.closed() => break,
        };
        let router = router.clone();
        let stop = stop_tx.clone();
        let done = done_rx.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, router, limits, stop).await;
            drop(permit);
            drop(done);
        });
    }
    drop(listener);
    drop(done_rx);
    if tokio::time::timeout(limits.drain, done_tx.closed())
        .await
        .is_err()
    {
        warn!(
            open = done_tx.receiver_count(),
            "connections still open after the drain period; closing them"
        );
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    stop: watch::Sender<()>,
) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut router = router.clone();
        router.call(request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                debug!(%peer, error = %e, "connection ended");
            }
            return;
        }
        _ = stop.closed() => {}
    }
    connection.as_mut().graceful_shutdown();
    if let Err(e) = connection.await {
        debug!(%peer, error = %e, "connection ended during shutdown");
    }
}
