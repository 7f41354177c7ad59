//! A bounded load generator for a running `kichhoat serve`, on loopback only.
//!
//! ```text
//! cargo run --release --example loadgen -- registry 2000 > /tmp/load-registry.csv
//! cargo run --release -- serve --data-dir /tmp/load-data --registry /tmp/load-registry.csv \
//!     --sms-outbox /tmp/load-outbox.jsonl &
//! cargo run --release --example loadgen -- lookup   http://127.0.0.1:8080 2000 64
//! cargo run --release --example loadgen -- activate http://127.0.0.1:8080 200 16 /tmp/load-outbox.jsonl
//! ```
//!
//! `lookup`: each virtual phone dials, picks 1, types an ID nobody has and "1" (4 hops, the no-match
//! path: no hashing, no SMS). `activate`: each phone runs a whole activation of one generated citizen
//! (13 hops, 6 argon2id hashes or verifications, 2 SMS) reading its OTP from the outbox file.
//! Several instances: URL may list them separated by commas (each hop goes to the next one, so one phone's
//! hops alternate between them), and OUTBOX too (each instance writes its own).
//! Prints hops, errors, throughput and hop latency percentiles. Every loop is bounded by count and by a
//! 120-second deadline, and only loopback addresses are accepted as targets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, Semaphore};

const DEADLINE: Duration = Duration::from_secs(120);

fn phone(i: usize) -> String {
    format!("0939{:06}", i)
}

fn citizen_id(i: usize) -> String {
    // province 001, century 2 (2000s), born 2001, six digits of sequence
    format!("001201{:06}", i)
}

struct Stats {
    latencies: Vec<Duration>,
    errors: usize,
}

async fn hop(
    client: &reqwest::Client,
    url: &str,
    stats: &Mutex<Stats>,
    sid: &str,
    phone: &str,
    text: &str,
) -> Option<String> {
    let t = Instant::now();
    let form = [
        ("sessionId", sid),
        ("serviceCode", "*384#"),
        ("phoneNumber", phone),
        ("networkCode", "45204"),
        ("text", text),
    ];
    // Several instances (URLs separated by commas): each hop to the next one, as a load balancer without
    // session affinity would send them.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let urls: Vec<&str> = url.split(',').collect();
    let url = urls[NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % urls.len()];
    let result = client.post(format!("{url}/ussd/africastalking")).form(&form).send().await;
    let body = match result {
        Ok(r) if r.status().is_success() => r.text().await.ok(),
        _ => None,
    };
    let mut s = stats.lock().await;
    match &body {
        Some(b) if b.starts_with("CON ") || b.starts_with("END ") => s.latencies.push(t.elapsed()),
        _ => s.errors += 1,
    }
    body
}

async fn otp_for(outbox: &str, to: &str) -> Option<String> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let text: String = outbox.split(',').map(|f| std::fs::read_to_string(f).unwrap_or_default()).collect();
        for line in text.lines().rev() {
            if line.contains(&format!("\"to\":\"{to}\"")) && line.contains("OTP") {
                let digits: String = line.split("VNeID: ").nth(1)?.chars().take(6).collect();
                return Some(digits);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

async fn run_phone(mode: &str, i: usize, client: &reqwest::Client, url: &str, outbox: &str, stats: &Mutex<Stats>) {
    let p = format!("+84{}", &phone(i)[1..]);
    let sid = format!("load-{i}-{}", std::process::id());
    if mode == "lookup" {
        let unknown = format!("001099{:06}", 900_000 + i % 99_999);
        for text in ["".to_string(), "1".into(), format!("1*{unknown}"), format!("1*{unknown}*1")] {
            hop(client, url, stats, &sid, &p, &text).await;
        }
        return;
    }
    let mut inputs: Vec<String> = Vec::new();
    hop(client, url, stats, &sid, &p, "").await;
    for input in ["1".to_string(), citizen_id(i), "1".into()] {
        inputs.push(input);
        hop(client, url, stats, &sid, &p, &inputs.join("*")).await;
    }
    let Some(otp) = otp_for(outbox, &p).await else {
        stats.lock().await.errors += 1;
        return;
    };
    let sid = format!("{sid}-2");
    hop(client, url, stats, &sid, &p, "").await;
    let mut inputs: Vec<String> = Vec::new();
    for input in [otp.as_str(), "Load*9xQ", "Load*9xQ", "258147", "258147", "1", "Kim Dong", "4", "Pho"] {
        inputs.push(input.to_string());
        hop(client, url, stats, &sid, &p, &inputs.join("*")).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: loadgen registry N | loadgen lookup URL PHONES CONCURRENCY | loadgen activate URL PHONES CONCURRENCY OUTBOX";
    let mode = args.first().ok_or(usage)?.clone();
    if mode == "registry" {
        let n: usize = args.get(1).and_then(|s| s.parse().ok()).ok_or(usage)?;
        println!("national_id,phone,full_name,status");
        for i in 0..n {
            println!("{},{},Load Citizen {i},approved", citizen_id(i), phone(i));
        }
        return Ok(());
    }
    let url = args.get(1).ok_or(usage)?.split(',').map(|u| u.trim_end_matches('/')).collect::<Vec<_>>().join(",");
    let loopback = |u: &str| ["http://127.", "http://localhost", "http://[::1]"].iter().any(|p| u.starts_with(p));
    if !url.split(',').all(loopback) {
        return Err("only loopback targets (127.0.0.0/8, localhost, [::1])".into());
    }
    let phones: usize = args.get(2).and_then(|s| s.parse().ok()).ok_or(usage)?;
    let concurrency: usize = args.get(3).and_then(|s| s.parse().ok()).ok_or(usage)?;
    let outbox = args.get(4).cloned().unwrap_or_default();
    if mode == "activate" && outbox.is_empty() {
        return Err(usage.into());
    }
    let client = reqwest::Client::new();
    let stats = Arc::new(Mutex::new(Stats { latencies: Vec::new(), errors: 0 }));
    let gate = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..phones {
        let permit = gate.clone().acquire_owned().await.map_err(|e| e.to_string())?;
        if started.elapsed() > DEADLINE {
            break;
        }
        let (client, url, outbox, stats, mode) =
            (client.clone(), url.clone(), outbox.clone(), stats.clone(), mode.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            run_phone(&mode, i, &client, &url, &outbox, &stats).await;
        }));
    }
    for t in tasks {
        let _ = tokio::time::timeout(DEADLINE, t).await;
    }
    let elapsed = started.elapsed();
    let mut s = stats.lock().await;
    s.latencies.sort();
    let pct = |p: f64| {
        s.latencies
            .get(((s.latencies.len() as f64 * p) as usize).min(s.latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "mode={mode} phones={phones} concurrency={concurrency} hops={} errors={} elapsed={:.2}s throughput={:.0} hops/s",
        s.latencies.len(),
        s.errors,
        elapsed.as_secs_f64(),
        s.latencies.len() as f64 / elapsed.as_secs_f64()
    );
    println!("hop latency p50={:?} p90={:?} p99={:?} max={:?}", pct(0.50), pct(0.90), pct(0.99), pct(1.0));
    Ok(())
}
