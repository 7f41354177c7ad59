//! The reference the hop ratio is judged against: a bare axum + sled server doing what a durable first
//! hop does to the store and nothing else. For each Africa's Talking POST it reads the phone's record (600
//! bytes, about a stored conversation), writes it back changed, and answers once a group flush covers the
//! write (the same group commit as the service: one thread flushes for every waiter queued so far). No
//! engine, no keyed hashes, no flow, no metrics.
//!
//! `cargo run --release --example bare_sled -- 127.0.0.1:18182 [SPIN_US]` stores 100,000 records for
//! +84930000000 … +84930099999 (the numbering of `bench/wrk-first-hop.lua`) and serves `/healthz` and
//! `/ussd/africastalking`; SPIN_US burns that much CPU per hop before the store work, standing in for a
//! service's own cost. BENCHMARKS.md ("The bare sled server") has what it measured.

use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Form, Router};
use tokio::sync::oneshot;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RECORD: usize = 600;
const PHONES: u64 = 100_000;

struct Bare {
    records: sled::Tree,
    flush: Mutex<mpsc::Sender<oneshot::Sender<bool>>>,
    spin: Duration,
}

#[derive(serde::Deserialize)]
struct Hop {
    #[serde(rename = "phoneNumber")]
    phone: String,
}

async fn hop(State(bare): State<Arc<Bare>>, Form(hop): Form<Hop>) -> Result<&'static str, &'static str> {
    let started = Instant::now();
    while started.elapsed() < bare.spin {
        std::hint::spin_loop();
    }
    let key = hop.phone.as_bytes();
    let old = bare.records.get(key).map_err(|_| "END read failed")?;
    let mut record = old.map(|r| r.to_vec()).unwrap_or_else(|| vec![b'x'; RECORD]);
    record[0] = record[0].wrapping_add(1);
    bare.records.insert(key, record).map_err(|_| "END write failed")?;
    let (tx, rx) = oneshot::channel();
    bare.flush.lock().map_err(|_| "END flusher gone")?.send(tx).map_err(|_| "END flusher gone")?;
    match rx.await {
        Ok(true) => Ok("CON VNeID\n1. Kich hoat tai khoan\n2. Dang nhap\n0. Thoat"),
        _ => Err("END flush failed"),
    }
}

fn group_commit(db: sled::Db, rx: mpsc::Receiver<oneshot::Sender<bool>>) {
    while let Ok(first) = rx.recv() {
        let mut waiters = vec![first];
        waiters.extend(rx.try_iter());
        let ok = db.flush().is_ok();
        for w in waiters {
            let _ = w.send(ok);
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18182".into());
    let spin = Duration::from_micros(args.next().map(|s| s.parse()).transpose()?.unwrap_or(0));
    let dir = std::env::temp_dir().join(format!("bare-sled-{}", std::process::id()));
    // The service's settings: high-throughput mode, a 64 MiB page cache.
    let db = sled::Config::new().path(&dir).mode(sled::Mode::HighThroughput).cache_capacity(64 << 20).open()?;
    let records = db.open_tree("conversations")?;
    for n in 0..PHONES {
        records.insert(format!("+8493{n:07}"), vec![b'x'; RECORD])?;
    }
    db.flush()?;
    let (tx, rx) = mpsc::channel();
    let flusher = db.clone();
    std::thread::spawn(move || group_commit(flusher, rx));
    let bare = Arc::new(Bare { records, flush: Mutex::new(tx), spin });
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/ussd/africastalking", post(hop))
        .with_state(bare);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("bare sled server on {addr}, {PHONES} records in {}", dir.display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let served = axum::serve(listener, app).with_graceful_shutdown(stop).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(served?)
}
