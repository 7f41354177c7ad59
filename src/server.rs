//! The HTTP/1.1 server loop: what `axum::serve` does, plus the protections a public endpoint needs
//! against slow and greedy clients (OWASP Denial of Service Cheat Sheet; the "slowloris" attack):
//!
//! - a **header-read timeout**: a client that has not sent a whole request head within it (trickling a
//!   byte at a time, or idling on a kept-alive connection) is disconnected;
//! - a **cap on open connections**: beyond it a new connection is closed at once and a warning is logged
//!   (at most once a second), rather than queueing or running the process out of file descriptors;
//! - the process's open-file limit raised to its hard limit at start, so the cap, not `EMFILE`, is what
//!   a flood meets;
//! - graceful shutdown: the listener stops, connections in flight finish (bounded by a grace period).
//!
//! Each connection's peer address is given to handlers as `ConnectInfo<SocketAddr>` (the webhook
//! address allowlist reads it).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tracing::{info, warn};

/// Connection protections; defaults suit a carrier-facing webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    /// Time to send a whole request head, and the longest a kept-alive connection may idle.
    pub header_read_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    pub grace: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_connections: 4096, header_read_timeout: Duration::from_secs(10), grace: Duration::from_secs(10) }
    }
}

/// File descriptors kept for everything but client connections (the database, logs, the outbox).
const SPARE_FDS: u64 = 256;

/// Raises the soft open-file limit to the hard one, and returns how many connections it leaves room
/// for (`None` when it cannot be read).
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit/setrlimit write/read the struct we pass and nothing else.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return None;
            }
            if lim.rlim_cur < lim.rlim_max {
                let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    lim.rlim_cur = lim.rlim_max;
                }
            }
        }
        Some(lim.rlim_cur.saturating_sub(SPARE_FDS))
    }
    #[cfg(not(unix))]
    None
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let room = raise_fd_limit();
    let cap = match room {
        Some(room) if (room as usize) < limits.max_connections => {
            warn!(wanted = limits.max_connections, allowed = room, "connection cap lowered to the open-file limit");
            room.max(1) as usize
        }
        _ => limits.max_connections,
    };
    let slots = Arc::new(Semaphore::new(cap));
    let graceful = GracefulShutdown::new();
    let refused = RefusalLog::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: wait a moment rather than spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused.note(cap);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = router.clone().map_request(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
        let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // A connection's own error (a reset, a timeout) concerns that client only.
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(limits.grace) => info!("grace period over; closing connections still open"),
    }
    Ok(())
}

/// Logs refused connections at most once a second, with how many since the last line.
#[derive(Default)]
struct RefusalLog {
    since: AtomicU64,
    last: std::sync::Mutex<Option<Instant>>,
}

impl RefusalLog {
    fn note(&self, cap: usize) {
        let n = self.since.fetch_add(1, Ordering::Relaxed) + 1;
        let Ok(mut last) = self.last.lock() else { return };
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            self.since.store(0, Ordering::Relaxed);
            warn!(cap, refused = n, "connection cap reached; new connections closed");
        }
    }
}
