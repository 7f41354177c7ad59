//! What operators run the binary with: `/metrics` checked against the traffic sent, readiness in
//! `/healthz`, the fast "busy" past the bound on queued work, and a kill -9 loop under load whose
//! invariants are checked after every restart.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use kichhoat::bench::{citizen_id, phone};

use crate::helpers::*;

/// The binary with a registry of `citizens` bench citizens (their phones are `bench::phone(i)`).
async fn spawn(dir: &Path, citizens: usize, flags: &[&str]) -> Proc {
    let registry = dir.join("registry.csv");
    if !registry.exists() {
        let mut csv = String::from("national_id,phone,full_name,status\n");
        for i in 0..citizens {
            csv.push_str(&format!("{},{},Citizen {i},approved\n", citizen_id(i), phone(i)));
        }
        std::fs::write(&registry, csv).unwrap();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("server.log")).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_kichhoat"))
        .arg("serve")
        .args(flags)
        .args(["--listen", &addr])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--sms-outbox")
        .arg(dir.join("outbox.jsonl"))
        .arg("--registry")
        .arg(&registry)
        .arg("--flows")
        .arg(repo().join("flows"))
        .env("KICHHOAT_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Proc::adopt(child, format!("http://{addr}")).await
}

/// One hop that may fail (the server killed under it): the reply, or `None`.
async fn try_hop(client: &reqwest::Client, url: &str, session: &str, phone: &str, text: &str) -> Option<String> {
    let form = [
        ("sessionId", session),
        ("serviceCode", "*384#"),
        ("phoneNumber", phone),
        ("networkCode", "45201"),
        ("text", text),
    ];
    let r = client.post(format!("{url}/ussd/africastalking")).form(&form).send().await.ok()?;
    if r.status() != 200 {
        return None;
    }
    r.text().await.ok()
}

async fn metrics(url: &str) -> HashMap<String, f64> {
    let text = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').map(|(k, v)| (k.to_string(), v.parse().unwrap_or(f64::NAN))))
        .collect()
}

fn sum(m: &HashMap<String, f64>, prefix: &str) -> f64 {
    m.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_the_traffic_sent_and_hold_nothing_personal() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(dir.path(), 3, &[]).await;
    let client = reqwest::Client::new();
    let me = format!("+84{}", &phone(0)[1..]);
    // A whole code request (4 hops: menu, choice, ID, this phone), a retried hop, and an unknown ID.
    for text in ["", "1", &format!("1*{}", citizen_id(0)), &format!("1*{}*1", citizen_id(0))] {
        assert!(try_hop(&client, &server.url, "s1", &me, text).await.is_some());
    }
    assert!(try_hop(&client, &server.url, "s1", &me, &format!("1*{}*1", citizen_id(0))).await.is_some());
    let other = format!("+84{}", &phone(1)[1..]);
    for text in ["", "1", "1*001099123456", "1*001099123456*1"] {
        assert!(try_hop(&client, &server.url, "s2", &other, text).await.is_some());
    }
    let m = metrics(&server.url).await;
    assert_eq!(sum(&m, "kichhoat_hops_total{"), 9.0, "{m:?}");
    assert_eq!(sum(&m, "kichhoat_hops_total{channel=\"africastalking\",outcome=\"replay\""), 1.0);
    assert_eq!(m["kichhoat_hop_duration_seconds_count{channel=\"africastalking\"}"], 9.0);
    assert_eq!(m["kichhoat_otp_sent_total"], 1.0);
    assert_eq!(m["kichhoat_step_total{event=\"entered\",state=\"act_otp\"}"], 1.0);
    assert_eq!(m["kichhoat_step_total{event=\"completed\",state=\"act_id\"}"], 2.0);
    assert_eq!(m["kichhoat_store_writable"], 1.0);
    assert!(m["process_resident_memory_bytes"] > 1e6);
    let text = reqwest::get(format!("{}/metrics", server.url)).await.unwrap().text().await.unwrap();
    // Names, labels and comments: a sample's value is a number, and a sum such as 0.0930000000001 holds a
    // phone's digits without holding a phone.
    let without_values: Vec<&str> = text
        .lines()
        .map(|l| if l.starts_with('#') { l } else { l.rsplit_once(' ').map_or(l, |(key, _)| key) })
        .collect();
    for personal in [citizen_id(0), phone(0), phone(0)[1..].to_string(), "001099123456".into()] {
        assert!(!without_values.iter().any(|l| l.contains(&personal)), "{personal} in /metrics");
    }
    assert_eq!(reqwest::get(format!("{}/healthz", server.url)).await.unwrap().status(), 200);
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_bound_on_queued_work_a_hop_gets_a_fast_busy_end_and_other_hops_do_not_wait() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(dir.path(), 20, &["--hash-threads", "1", "--hash-queue", "1"]).await;
    let client = reqwest::Client::new();
    // 20 log-ins reach their password at about the same time, against one hashing thread and one
    // queue slot: the refused ones are answered at once, never left hanging.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(20));
    let logins = (0..20).map(|i| {
        let (client, url, barrier) = (client.clone(), server.url.clone(), barrier.clone());
        tokio::spawn(async move {
            let me = format!("+84{}", &phone(i)[1..]);
            let (id, session) = (citizen_id(i), format!("b{i}"));
            for text in ["".to_string(), "2".into(), format!("2*{id}")] {
                assert!(try_hop(&client, &url, &session, &me, &text).await.unwrap().starts_with("CON "));
            }
            barrier.wait().await;
            let started = Instant::now();
            (try_hop(&client, &url, &session, &me, &format!("2*{id}*Wrong*pw1")).await, started.elapsed())
        })
    });
    let logins: Vec<_> = logins.collect();
    let mut busy = 0;
    for h in logins {
        let (reply, took) = h.await.unwrap();
        let reply = reply.expect("every hop answered");
        // A wrong password is asked again (CON); a log-in past the bound ends at once (END, busy).
        if fold(&reply).contains("dang ban") {
            assert!(reply.starts_with("END "), "{reply}");
            assert!(took < Duration::from_secs(2), "busy is fast: {took:?}");
            busy += 1;
        } else {
            assert!(reply.starts_with("CON ") && fold(&reply).contains("khong dung"), "{reply}");
        }
    }
    assert!(busy > 0, "some log-ins were past the bound");
    let m = metrics(&server.url).await;
    assert_eq!(m.get("kichhoat_overloaded_total{channel=\"africastalking\"}").copied().unwrap_or(0.0), busy as f64);
    assert_eq!(m["kichhoat_hashing_queue_depth"], 0.0);
    server.terminate();
}

/// Kills the server with SIGKILL at random moments while 16 phones request codes, five times. After
/// each restart: every phone that was told "code sent" resumes at the code prompt (its reply was
/// stored), its OTP SMS is in the outbox exactly once (none lost, none twice), and at the end every
/// conversation loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_loop_under_load_loses_no_reply_and_sends_no_sms_twice() {
    const ROUNDS: usize = 5;
    const PHONES: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox.jsonl");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let mut told_sent: Vec<usize> = Vec::new();
    let mut seed = std::process::id() as u64;
    for round in 0..=ROUNDS {
        let server = spawn(dir.path(), PHONES * ROUNDS, &[]).await;
        // The previous rounds' phones that were told their code was sent resume at the code prompt.
        for &i in &told_sent {
            let me = format!("+84{}", &phone(i)[1..]);
            let reply = try_hop(&client, &server.url, &format!("check-{round}-{i}"), &me, "").await.unwrap();
            assert!(fold(&reply).contains("Nhap ma (6 so)"), "phone {i} after round {round}: {reply}");
        }
        if round == ROUNDS {
            let lines = settled_outbox(&outbox, told_sent.len()).await;
            let ids: HashSet<&String> = lines.iter().map(|l| &l.id).collect();
            assert_eq!(ids.len(), lines.len(), "no SMS twice");
            let mut per_phone: HashMap<&str, usize> = HashMap::new();
            for l in &lines {
                *per_phone.entry(l.to.as_str()).or_default() += 1;
            }
            assert!(per_phone.values().all(|n| *n == 1), "one OTP per phone: {per_phone:?}");
            for &i in &told_sent {
                let me = format!("+84{}", &phone(i)[1..]);
                assert_eq!(per_phone.get(me.as_str()), Some(&1), "the OTP of phone {i} was not lost");
            }
            server.terminate();
            break;
        }
        let phones: Vec<usize> = (round * PHONES..(round + 1) * PHONES).collect();
        let tasks: Vec<_> = phones
            .iter()
            .map(|&i| {
                let (client, url) = (client.clone(), server.url.clone());
                tokio::spawn(async move {
                    let me = format!("+84{}", &phone(i)[1..]);
                    let session = format!("crash-{i}");
                    let id = citizen_id(i);
                    for text in ["".to_string(), "1".into(), format!("1*{id}"), format!("1*{id}*1")] {
                        match try_hop(&client, &url, &session, &me, &text).await {
                            Some(r) if fold(&r).contains("Nhap ma") => return Some(i),
                            Some(_) => {}
                            None => return None,
                        }
                    }
                    None
                })
            })
            .collect();
        // A random moment within the first ~300 ms of load.
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        tokio::time::sleep(Duration::from_millis(20 + (seed >> 33) % 280)).await;
        server.kill9();
        for t in tasks {
            if let Some(i) = t.await.unwrap() {
                told_sent.push(i);
            }
        }
    }
    assert!(!told_sent.is_empty(), "some code requests were answered before the kills");

    // Every conversation stored loads.
    let store = kichhoat::store::sled_store::SledStore::open(&dir.path().join("data").join("db")).unwrap();
    use kichhoat::store::Store;
    for i in 0..PHONES * ROUNDS {
        let me = kichhoat::domain::Msisdn::parse(&phone(i)).unwrap();
        store.load(&me).await.unwrap_or_else(|e| panic!("phone {i}: {e}"));
    }
}

/// The systemd unit passes `systemd-analyze verify` where the tool exists (with the binary this build
/// made standing in for the installed one).
#[test]
fn the_systemd_unit_verifies() {
    let Ok(which) = std::process::Command::new("systemd-analyze").arg("--version").output() else {
        return; // no systemd here
    };
    if !which.status.success() {
        return;
    }
    let unit = std::fs::read_to_string(repo().join("packaging/kichhoat.service")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kichhoat.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/kichhoat", env!("CARGO_BIN_EXE_kichhoat"))).unwrap();
    let out = std::process::Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && !said.contains("kichhoat.service:"), "{said}");
}

/// Unmounts the scratch file system however the test ends.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A full disk: the hop that cannot be stored is answered "busy" (never as if stored), readiness fails, the
/// process exits non-zero for its supervisor; restarted once there is room, it serves again with what it
/// had answered. Needs a small tmpfs (root); skipped where it cannot be mounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_busy_exits_non_zero_and_a_restart_after_freeing_space_serves_again() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(&mnt)
        .stderr(std::process::Stdio::null())
        .status();
    if !mounted.is_ok_and(|s| s.success()) {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    let _umount = Mounted(mnt.clone());
    let mut server = spawn(&mnt, 2, &[]).await;
    let client = reqwest::Client::new();
    let me = format!("+84{}", &phone(0)[1..]);
    let first = try_hop(&client, &server.url, "f1", &me, "").await.unwrap();
    assert!(first.starts_with("CON "), "{first}");

    // Fill the disk.
    {
        use std::io::Write;
        let mut fill = std::fs::File::create(mnt.join("fill")).unwrap();
        let block = vec![0u8; 1 << 20];
        while fill.write_all(&block).is_ok() {}
        let _ = fill.sync_all();
    }
    let mut busy = false;
    for i in 0..200 {
        let other = format!("+84{}", &phone(1000 + i)[1..]);
        match try_hop(&client, &server.url, &format!("x{i}"), &other, "").await {
            Some(r) if r.starts_with("END ") => {
                assert!(fold(&r).contains("dang ban"), "{r}");
                busy = true;
                break;
            }
            Some(r) => assert!(r.starts_with("CON "), "{r}"),
            None => break, // already exiting
        }
    }
    assert!(busy, "a hop that could not be stored was answered busy");
    let mut exited = None;
    for _ in 0..100 {
        if let Some(status) = server.child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = exited.expect("the process exits after a store write fault");
    assert!(!status.success(), "non-zero, for the supervisor: {status:?}");

    // Room again: a restart serves, and the conversation answered before the fault is there.
    std::fs::remove_file(mnt.join("fill")).unwrap();
    let server = spawn(&mnt, 2, &[]).await;
    let again = try_hop(&client, &server.url, "f2", &me, "1").await;
    assert!(again.is_some_and(|r| r.starts_with("CON ")));
    assert_eq!(reqwest::get(format!("{}/healthz", server.url)).await.unwrap().status(), 200);
    server.terminate();
}
