//! Anti-enumeration, measured (a test binary of its own, so the timings are not taken while the black-box
//! suite runs its tests in parallel): a lookup of an unknown ID, of a known ID with another phone, of a pending
//! citizen and a real one (a code sent) take the same time up to the reply, so timing does not tell a
//! caller which it was (OWASP Authentication Cheat Sheet; ASVS 5.0 6.3.8). The four kinds are sent in
//! interleaved rounds, each from its own caller to its own citizen (so no cap is met), and the medians
//! compared.

use std::path::Path;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::SeedableRng;

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
#[path = "api/pg.rs"]
#[allow(dead_code)]
mod pg;

use helpers::{fold, settings, AtPhone, TestServer};

const ROUNDS: usize = 25;
/// How far a kind's median may stand from the real lookup's.
const TOLERANCE: f64 = 0.15;

/// A registry with `ROUNDS` approved citizens for real lookups, as many for mismatches, and as many
/// pending.
fn registry(dir: &Path) {
    let mut csv = String::from("national_id,phone,full_name,status\n");
    for i in 0..ROUNDS {
        csv.push_str(&format!("001099{:06},0916{:06},Nguyen Van Thu,approved\n", 100_000 + i, i));
        csv.push_str(&format!("001099{:06},0917{:06},Nguyen Van Hai,approved\n", 200_000 + i, i));
        csv.push_str(&format!("001199{:06},0918{:06},Tran Thi Ba,pending\n", 300_000 + i, i));
    }
    std::fs::write(dir.join("registry.csv"), csv).unwrap();
}

/// The time of the hop that submits the phone, for (ID, phone typed) from a fresh caller.
async fn lookup(server: &TestServer, caller: String, id: String, phone: String) -> (Duration, String) {
    let mut p = AtPhone::new(&server.url, &caller);
    p.dial().await;
    p.send("1").await;
    p.send(&id).await;
    let t = Instant::now();
    let reply = p.send(&phone).await;
    (t.elapsed(), fold(&reply))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_mismatched_pending_and_real_lookups_take_the_same_time() {
    let dir = tempfile::tempdir().unwrap();
    registry(dir.path());
    let mut s = settings(&dir.path().join("data"));
    s.registry = Some(dir.path().join("registry.csv"));
    let server = TestServer::start_with(dir, s).await;
    let kinds = ["real", "unknown", "mismatch", "pending"];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); kinds.len()];
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    // A few untimed rounds first: the first requests warm caches and connections.
    for round in 0..ROUNDS + 3 {
        let i = round % ROUNDS;
        let cases = [
            (format!("001099{:06}", 100_000 + i), format!("0916{i:06}"), "Nhap ma"),
            (format!("001099{:06}", 900_000 + i), format!("0916{i:06}"), "khong khop"),
            (format!("001099{:06}", 200_000 + i), format!("0919{i:06}"), "khong khop"),
            (format!("001199{:06}", 300_000 + i), format!("0918{i:06}"), "chua duoc phe duyet"),
        ];
        // A fresh random order each round: a rotation would always put the same kind right after a real
        // lookup, whose SMS delivery (20 ms later) would then be paid by that kind alone.
        let mut order: Vec<usize> = (0..kinds.len()).collect();
        order.shuffle(&mut rng);
        for kind in order {
            let (id, phone, want) = cases[kind].clone();
            let caller = format!("+8498{kind}{round:06}");
            let (took, reply) = lookup(&server, caller, id, phone).await;
            assert!(reply.contains(want), "{}: {reply}", kinds[kind]);
            if round >= 3 {
                times[kind].push(took);
            }
        }
    }
    let medians: Vec<Duration> = times.into_iter().map(median).collect();
    let real = medians[0].as_secs_f64();
    eprintln!("lookup medians: {:?}", kinds.iter().zip(&medians).collect::<Vec<_>>());
    for (kind, m) in kinds.iter().zip(&medians).skip(1) {
        let off = (m.as_secs_f64() - real).abs() / real;
        assert!(off <= TOLERANCE, "{kind} median {m:?} is {:.0}% off the real lookup's {:?}", off * 100.0, medians[0]);
    }
    server.stop().await;
}
