//! The PostgreSQL store beyond the contract suite: its migrations, and several `kichhoat serve` processes
//! on one database (hops of one phone alternating between them, duplicates raced across them, limits
//! held across them, one killed mid-activation), with a dump of the database searched for secrets.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Barrier;

use kichhoat::sms::file::OutboxLine;
use kichhoat::store::postgres::{PgStore, SCHEMA};
use kichhoat::store::{Store, StoreError};

use crate::helpers::{fold, otp_in, read_outbox, AtPhone, Proc, WORKER_ROUND};
use crate::pg;
use crate::secrets::leaks;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_at_once_migrate_once_and_a_newer_schema_is_refused() {
    let Some(cluster) = pg::cluster() else { return };
    let url = cluster.new_database();
    let opens: Vec<_> = (0..4).map(|_| tokio::spawn(PgStore::open_owned(url.clone()))).collect();
    let mut instances = Vec::new();
    for o in opens {
        instances.push(o.await.unwrap().unwrap().instance().to_string());
    }
    instances.dedup();
    assert_eq!(instances.len(), 1, "one database, one instance id: {instances:?}");
    assert_eq!(cluster.psql(&url, "SELECT value FROM kichhoat_meta WHERE key = 'schema'").trim(), SCHEMA.to_string());

    cluster.psql(&url, "UPDATE kichhoat_meta SET value = '99' WHERE key = 'schema'");
    match PgStore::open(&url).await {
        Err(StoreError::NewerSchema { found: 99, supported }) => assert_eq!(supported, SCHEMA),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a database of schema 99 was opened"),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Two `kichhoat serve` processes on one database

/// Two instances of the binary on one database, with one key file and each its own data dir and outbox.
struct Pair {
    _dir: tempfile::TempDir,
    db: String,
    a: Option<Proc>,
    b: Proc,
    outboxes: [PathBuf; 2],
    logs: [PathBuf; 2],
    key: PathBuf,
    /// The data dir both share (as when an operator gives neither a --data-dir): each writes an audit
    /// trail and an admin endpoint file of its own there.
    data: PathBuf,
}

const AN_ID: &str = "001099012345";
const AN_PHONE: &str = "+84912345678";
const BINH_ID: &str = "001199012346";
const BINH_PHONE: &str = "+84987654321";

fn flags<'a>(db: &'a str, key: &'a Path) -> Vec<&'a str> {
    vec!["--store", db, "--key-file", key.to_str().unwrap()]
}

impl Pair {
    /// Both started at once (they migrate the fresh database together).
    async fn start(cluster: &pg::Cluster) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let db = cluster.new_database();
        let key = dir.path().join("shared.key");
        write_key(&key, &[7; 32]);
        let data = dir.path().join("data");
        let paths = |n: &str| (dir.path().join(format!("{n}-outbox.jsonl")), dir.path().join(format!("{n}.log")));
        let (outbox_a, log_a) = paths("a");
        let (outbox_b, log_b) = paths("b");
        let flags = flags(&db, &key);
        let (a, b) = tokio::join!(
            Proc::spawn_with(&data, &outbox_a, &log_a, "info", &flags, &[]),
            Proc::spawn_with(&data, &outbox_b, &log_b, "info", &flags, &[]),
        );
        Pair {
            db: db.clone(),
            a: Some(a),
            b,
            outboxes: [outbox_a, outbox_b],
            logs: [log_a, log_b],
            key,
            data,
            _dir: dir,
        }
    }

    fn urls(&self) -> [String; 2] {
        [self.a.as_ref().map(|a| a.url.clone()).unwrap_or_default(), self.b.url.clone()]
    }

    /// Every SMS either instance's worker wrote.
    fn sms(&self) -> Vec<OutboxLine> {
        self.outboxes.iter().flat_map(|o| read_outbox(o)).collect()
    }

    /// The SMS once `n` are out and a worker round more has passed (a duplicate would be there).
    async fn settled_sms(&self, n: usize) -> Vec<OutboxLine> {
        for _ in 0..200 {
            if self.sms().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        tokio::time::sleep(WORKER_ROUND).await;
        self.sms()
    }

    /// The audit trail in the database, as events.
    async fn audited(&self, event: &str) -> usize {
        let store = PgStore::open(&self.db).await.unwrap();
        kichhoat::store::audit_all(&store).await.unwrap().iter().filter(|r| r.event.event == event).count()
    }
}

/// The ids and recipients of SMS (never their texts, which hold codes).
fn ids_of(sms: &[OutboxLine]) -> Vec<(&str, &str)> {
    sms.iter().map(|l| (l.id.as_str(), l.to.as_str())).collect()
}

fn write_key(path: &Path, key: &[u8; 32]) {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path).unwrap().write_all(hex::encode(key).as_bytes()).unwrap();
}

/// Sends each (phone, url) pending hop at the same moment.
async fn at_once(hops: Vec<AtPhone>) -> Vec<(u16, String)> {
    let barrier = Arc::new(Barrier::new(hops.len()));
    let tasks: Vec<_> = hops
        .into_iter()
        .map(|p| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                p.hop().await
            })
        })
        .collect();
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    replies
}

/// `p` with its pending hop addressed to `url`.
fn to(p: &AtPhone, url: &str) -> AtPhone {
    let mut q = AtPhone::new(url, &p.phone);
    q.session = p.session.clone();
    q.inputs = p.inputs.clone();
    q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_activation_its_retries_and_duplicates_and_one_finishes_what_a_killed_one_began() {
    let Some(cluster) = pg::cluster() else { return };
    let mut pair = Pair::start(cluster).await;
    let urls = pair.urls();

    // 1. An's activation, each hop on the other instance than the one before; a carrier retry of each
    //    hop on the other instance gets the same reply.
    let mut p = AtPhone::new(&urls[0], AN_PHONE);
    p.dial().await;
    let mut hop = 1;
    let mut send = |p: &mut AtPhone, input: &str| {
        p.url = urls[hop % 2].clone();
        hop += 1;
        p.inputs.push(input.to_string());
    };
    for input in ["1", AN_ID] {
        send(&mut p, input);
        let (_, reply) = p.hop().await;
        let other = if p.url == urls[0] { &urls[1] } else { &urls[0] };
        assert_eq!(to(&p, other).hop().await.1, reply, "a retry on the other instance: the same reply");
    }
    // The hop that sends the code, eight times at once (a carrier's duplicates), four on each.
    send(&mut p, "1");
    let replies = at_once((0..8).map(|i| to(&p, &urls[i % 2])).collect()).await;
    assert!(replies.iter().all(|r| r == &replies[0]), "{replies:?}");
    assert!(fold(&replies[0].1).contains("Nhap ma"), "{replies:?}");
    let sms = pair.settled_sms(1).await;
    assert_eq!(sms.len(), 1, "one code in the union of the outboxes: {:?}", ids_of(&sms));
    let otp = otp_in(&sms[0].text).unwrap();
    let password = "Zq*8!mWx#2";
    let passcode = "604918";
    let answers = ["Chuồn Chuồn", "Bến  Tre"];
    let mut last = String::new();
    for input in [otp.as_str(), password, password, passcode, passcode, "2", answers[0], "5", answers[1]] {
        send(&mut p, input);
        let (status, reply) = p.hop().await;
        assert_eq!(status, 200);
        last = reply;
    }
    assert!(fold(&last).contains("thanh cong"), "{last}");
    for url in &urls {
        let hello = fold(&AtPhone::new(url, AN_PHONE).log_in(AN_ID, password).await);
        assert!(hello.contains("Xin chao Nguyen Van An"), "log-in on {url}: {hello}");
    }

    // 2. Binh asks for a code on A; A is killed right after the code went out; B finishes.
    let mut q = AtPhone::new(&urls[0], BINH_PHONE);
    assert!(fold(&q.request_code(BINH_ID, "1").await).contains("Nhap ma"));
    let sms = pair.settled_sms(3).await;
    let code = sms.iter().filter(|l| l.to == BINH_PHONE).find_map(|l| otp_in(&l.text)).expect("Binh's code went out");
    pair.a.take().unwrap().kill9();
    let mut q = AtPhone::new(&urls[1], BINH_PHONE);
    assert!(fold(&q.dial().await).contains("Tiep tuc"), "B resumes A's activation");
    assert!(fold(&q.send(&code).await).contains("Dat mat khau"));
    for input in ["Abc*1234x", "Abc*1234x", "258147", "258147", "1", "Kim Dong", "4"] {
        assert!(q.send(input).await.starts_with("CON "), "at {input}");
    }
    assert!(fold(&q.send("Pho").await).contains("thanh cong"));
    assert!(fold(&AtPhone::new(&urls[1], BINH_PHONE).log_in(BINH_ID, "Abc*1234x").await).contains("Xin chao"));
    let sms = pair.settled_sms(4).await;
    let ids: HashSet<&str> = sms.iter().map(|l| l.id.as_str()).collect();
    assert_eq!((sms.len(), ids.len()), (4, 4), "two codes, two confirmations, none twice: {:?}", ids_of(&sms));
    assert_eq!(pair.audited("otp_sent").await, 2);
    // The operator's CLI on the shared data dir reaches the instance still running.
    let show = std::process::Command::new(env!("CARGO_BIN_EXE_kichhoat"))
        .args(["admin", "show", BINH_ID, "--json", "--operator", "officer.lan", "--data-dir"])
        .arg(&pair.data)
        .output()
        .unwrap();
    let view: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap_or_default();
    assert!(view["account"].is_object(), "{}", String::from_utf8_lossy(&show.stderr));
    // Each instance kept a whole hash chain of its own in the shared data dir.
    let trails: Vec<PathBuf> = std::fs::read_dir(&pair.data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    assert_eq!(trails.len(), 2, "{trails:?}");
    for trail in &trails {
        let verify = std::process::Command::new(env!("CARGO_BIN_EXE_kichhoat"))
            .args(["audit", "verify"])
            .arg(trail)
            .output()
            .unwrap();
        assert!(verify.status.success(), "{}: {}", trail.display(), String::from_utf8_lossy(&verify.stdout));
    }

    // 3. Nothing secret in the database: a dump of it, searched.
    pair.b.child.kill().ok();
    let dump = cluster.dump(&pair.db);
    assert!(dump.contains("$argon2id$"), "the dump holds the accounts");
    for secret in
        [password, passcode, &otp, &code, "Abc*1234x", "258147", answers[0], answers[1], "chuon chuon", "ben tre"]
    {
        assert!(!leaks(dump.as_bytes(), secret.as_bytes()), "{secret:?} is in the database dump");
    }
    for log in &pair.logs {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(
            !leaks(text.as_bytes(), password.as_bytes()) && !leaks(text.as_bytes(), otp.as_bytes()),
            "{}",
            log.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_log_ins_and_code_requests_spread_over_two_instances_at_once_are_held_to_the_limits_of_one_at_a_time() {
    let Some(cluster) = pg::cluster() else { return };
    let pair = Pair::start(cluster).await;
    let urls = pair.urls();
    let caller = |n: usize| format!("+8498801{n:04}");

    // Sixteen strangers' wrong passwords for one ID, half on each instance, at once: as one at a time,
    // the 5th failure locks (4 refusals, 12 "locked"), five failures and one lock audited.
    let mut phones = Vec::new();
    for i in 0..16 {
        let mut p = AtPhone::new(&urls[i % 2], &caller(i));
        p.dial().await;
        p.send("2").await;
        p.send(AN_ID).await;
        p.inputs.push("Wrong*pw1".into());
        phones.push(p);
    }
    let replies: Vec<String> = at_once(phones).await.into_iter().map(|(_, r)| fold(&r)).collect();
    // A refused password is asked again (CON); the lock ends the session (END).
    let refused = replies.iter().filter(|r| r.starts_with("CON ") && r.contains("khong dung")).count();
    let locked = replies.iter().filter(|r| r.starts_with("END ") && r.contains("tam khoa den")).count();
    assert_eq!((refused, locked), (4, 12), "{replies:?}");
    assert_eq!((pair.audited("login_failed").await, pair.audited("login_locked").await), (5, 1));

    // Twenty strangers asking for a code for one citizen, half on each instance, at once: three codes (the
    // per-ID cap in 15 minutes), three SMS in the union of the outboxes.
    let mut phones = Vec::new();
    for i in 0..20 {
        let mut p = AtPhone::new(&urls[i % 2], &caller(100 + i));
        p.dial().await;
        p.send("1").await;
        p.send(BINH_ID).await;
        p.inputs.push("0987654321".into());
        phones.push(p);
    }
    let replies: Vec<String> = at_once(phones).await.into_iter().map(|(_, r)| fold(&r)).collect();
    let codes = replies.iter().filter(|r| r.starts_with("CON ") && r.contains("Nhap ma")).count();
    let limited = replies.iter().filter(|r| r.starts_with("END ") && r.contains("qua nhieu lan")).count();
    assert_eq!((codes, limited), (3, 17), "{replies:?}");
    let sms = pair.settled_sms(3).await;
    assert_eq!(sms.len(), 3, "{:?}", ids_of(&sms));
    assert_eq!(pair.audited("otp_sent").await, 3);

    // With every instance stopped, an operator clears the lock on the shared database (`admin --store`).
    let Pair { a, b, db, key, .. } = pair;
    drop((a, b));
    let locks = |c: &pg::Cluster| {
        c.psql(&db, &format!("SELECT count(*) FROM kichhoat_counters WHERE key LIKE 'login%{AN_ID}'"))
    };
    assert_ne!(locks(cluster).trim(), "0", "the strangers' lock is stored");
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kichhoat"))
        .args(["admin", "unlock", AN_ID, "--what", "login", "--operator", "tester", "--store", &db, "--key-file"])
        .arg(&key)
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(locks(cluster).trim(), "0", "cleared in the database the instances share");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_with_another_key_file_is_refused_by_a_database_written_with_the_first() {
    let Some(cluster) = pg::cluster() else { return };
    let pair = Pair::start(cluster).await;
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.key");
    write_key(&other, &[9; 32]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kichhoat"))
        .args(["serve", "--listen", "127.0.0.1:0", "--store", &pair.db, "--key-file"])
        .arg(&other)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another master key"), "{err}");
}
