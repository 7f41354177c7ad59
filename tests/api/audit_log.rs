//! The audit trail file through the binary: a whole activation and wrong log-ins leave one chained line per
//! audit event, `kichhoat audit` prints them while the server still runs, `kichhoat audit verify` checks
//! the chain and names the line an edit broke, and neither the file nor the logs hold a full ID number or
//! phone.

use std::path::Path;
use std::process::{Command, Output};

use kichhoat::audit::{line_hash, AuditLine, GENESIS};
use kichhoat::store::sled_store::SledStore;
use kichhoat::store::Store;

use crate::helpers::{fold, otp_in, scratch, wait_outbox, AtPhone, Proc};

fn kichhoat(args: &[&str], data: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kichhoat")).args(args).arg("--data-dir").arg(data).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activation_and_wrong_log_ins_leave_one_chained_line_per_event_that_verify_checks_and_an_edit_breaks() {
    let (_dir, data, outbox, log) = scratch();
    let server = Proc::spawn(&data, &outbox, &log, "trace").await;

    let mut p = AtPhone::new(&server.url, "+84912345678");
    p.request_code("001099012345", "1").await;
    let otp = otp_in(&wait_outbox(&outbox, 1).await[0].text).unwrap();
    assert!(fold(&p.send(&otp).await).contains("Dat mat khau"));
    for input in ["Zq*8!mWx#2", "Zq*8!mWx#2", "604918", "604918", "2", "Chuon Chuon", "5"] {
        p.send(input).await;
    }
    assert!(fold(&p.send("Ben Tre").await).contains("tai khoan thanh cong"), "activated");
    let mut stranger = AtPhone::new(&server.url, "+84988000111");
    stranger.log_in("001099012345", "Wrong*pass1").await;
    stranger.log_in("001099012345", "Wrong*pass2").await;

    // While the server runs (sled is locked by it), the trail is printed from the file: every event of the
    // turns above is there already, since each reply waited for its lines. The delivery worker's
    // `sms_accepted` lines (the code, the confirmation) come as the SMS go out: wait for both.
    let file = data.join("audit.jsonl");
    for _ in 0..200 {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if text.matches("\"sms_accepted\"").count() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let printed = kichhoat(&["audit"], &data);
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    assert_eq!(stdout(&printed), std::fs::read_to_string(&file).unwrap(), "the file's lines, as they are");
    let lines: Vec<AuditLine> = stdout(&printed).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // The turns' own events in order; the delivery worker's `sms_accepted` lines land among them as the
    // SMS go out.
    let events: Vec<&str> = lines.iter().map(|l| l.event.as_str()).filter(|e| *e != "sms_accepted").collect();
    assert_eq!(events, ["otp_sent", "otp_verified", "activated", "login_failed", "login_failed"], "{events:?}");
    assert_eq!(lines.len(), events.len() + 2, "and the two SMS accepted");
    let verified = kichhoat(&["audit", "verify"], &data);
    assert_eq!(stdout(&verified).trim(), format!("ok: {n} lines, last seq {n}", n = lines.len()));
    assert!(verified.status.success());
    server.terminate();

    // One line per event: exactly the records of the store's audit tree, in order, each once.
    let store = SledStore::open(&data.join("db")).unwrap();
    let records = store.audit_after(None, 100).await.unwrap();
    let refs: Vec<String> = records.iter().map(|(id, _)| format!("{}-{id}", store.instance())).collect();
    assert_eq!(lines.iter().map(|l| l.reference.clone()).collect::<Vec<_>>(), refs);
    let recorded: Vec<&str> = records.iter().map(|(_, r)| r.event.event.as_str()).collect();
    assert_eq!(recorded, lines.iter().map(|l| l.event.as_str()).collect::<Vec<_>>());
    assert!(store.audit_unexported(100).await.unwrap().is_empty(), "every record marked exported");
    drop(store);
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(lines[0].prev, GENESIS);
    for (i, l) in text.lines().enumerate().skip(1) {
        assert_eq!(lines[i].seq, i as u64 + 1);
        assert_eq!(lines[i].prev, line_hash(text.lines().nth(i - 1).unwrap().as_bytes()), "{l}");
    }
    // Who, pseudonymously: the callers' last digits, one subject for the one ID number.
    let first = |event: &str| lines.iter().find(|l| l.event == event).unwrap();
    assert_eq!(first("otp_sent").caller.as_deref(), Some("*678"));
    assert_eq!(first("login_failed").caller.as_deref(), Some("*111"));
    let about_the_id: Vec<&AuditLine> = lines.iter().filter(|l| l.event != "sms_accepted").collect();
    assert!(about_the_id
        .iter()
        .all(|l| l.subject == lines[0].subject && l.subject.as_ref().is_some_and(|s| s.len() == 32)));

    // No full ID number or phone in the trail or the logs.
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("turn answered"), "the log is real");
    for personal in ["001099012345", "0912345678", "84912345678", "912345678", "988000111"] {
        assert!(!text.contains(personal), "{personal} in the audit trail");
        assert!(!logs.contains(personal), "{personal} in the logs");
    }

    // One byte of a middle line changed (the JSON still valid): verify names that line.
    let original = text.clone();
    let (at, middle) = text.lines().enumerate().find(|(_, l)| l.contains("\"event\":\"activated\"")).unwrap();
    assert!(at > 0 && at + 1 < text.lines().count(), "a middle line");
    let changed_line = middle.replacen("\"event\":\"activated\"", "\"event\":\"activatee\"", 1);
    assert_ne!(changed_line, middle);
    std::fs::write(&file, original.replacen(middle, &changed_line, 1)).unwrap();
    let broken = kichhoat(&["audit", "verify"], &data);
    assert_eq!(broken.status.code(), Some(1), "{}", stdout(&broken));
    assert!(stdout(&broken).contains(&format!("{} line {}:", file.display(), at + 1)), "{}", stdout(&broken));

    // A middle line deleted: verify names where the chain breaks.
    std::fs::write(&file, original.replacen(&format!("{middle}\n"), "", 1)).unwrap();
    let broken = kichhoat(&["audit", "verify"], &data);
    assert_eq!(broken.status.code(), Some(1), "{}", stdout(&broken));
    let named = format!("line {}:", at + 1);
    assert!(stdout(&broken).contains(&named) && stdout(&broken).contains("removed"), "{}", stdout(&broken));

    std::fs::write(&file, &original).unwrap();
    assert!(kichhoat(&["audit", "verify"], &data).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_a_kill_9_left_unexported_are_written_at_the_next_start_once_and_the_chain_goes_on() {
    let (_dir, data, outbox, log) = scratch();
    let server = Proc::spawn(&data, &outbox, &log, "info").await;
    let mut p = AtPhone::new(&server.url, "+84987654321");
    p.log_in("001199012346", "Wrong*pass1").await;
    server.kill9();
    let file = data.join("audit.jsonl");
    let before = std::fs::read_to_string(&file).unwrap();
    assert_eq!(before.lines().count(), 1, "written before the reply");

    // Records committed but not in the file (a crash between the commit and the drain): marked
    // unexported in the store, written by the next start.
    {
        let store = SledStore::open(&data.join("db")).unwrap();
        let record = store.audit_after(None, 1).await.unwrap().remove(0).1;
        let mut missing = record.clone();
        missing.event.event = "login_locked".into();
        store.append_audit(&[missing]).await.unwrap();
    }
    let server = Proc::spawn(&data, &outbox, &log, "info").await;
    let mut p = AtPhone::new(&server.url, "+84987654321");
    p.log_in("001199012346", "Wrong*pass2").await;
    server.terminate();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with(&before), "the first start's line untouched");
    let events: Vec<String> = text.lines().map(|l| serde_json::from_str::<AuditLine>(l).unwrap().event).collect();
    assert_eq!(events, ["login_failed", "login_locked", "login_failed"]);
    let verified = kichhoat(&["audit", "verify"], &data);
    assert_eq!(stdout(&verified).trim(), "ok: 3 lines, last seq 3");
}

#[test]
fn verify_checks_the_chain_across_rotated_files_and_says_when_the_oldest_were_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let active = dir.path().join("audit.jsonl");
    let mut prev = GENESIS.to_string();
    let mut files: Vec<(u64, String)> = vec![(1, String::new()), (3, String::new()), (5, String::new())];
    for seq in 1..=6u64 {
        let line = AuditLine {
            seq,
            at: "2026-11-30T00:00:00.000Z".into(),
            event: "login_failed".into(),
            channel: Some("africastalking".into()),
            caller: Some("*678".into()),
            subject: Some("00112233445566778899aabbccddeeff".into()),
            phone: None,
            detail: None,
            reference: format!("feed-{seq}"),
            prev: prev.clone(),
        };
        let bytes = serde_json::to_string(&line).unwrap();
        prev = line_hash(bytes.as_bytes());
        let slot = files.iter_mut().rev().find(|(first, _)| *first <= seq).unwrap();
        slot.1.push_str(&bytes);
        slot.1.push('\n');
    }
    for (i, (first, text)) in files.iter().enumerate() {
        let path =
            if i == files.len() - 1 { active.clone() } else { dir.path().join(format!("audit.jsonl.{first:012}")) };
        std::fs::write(path, text).unwrap();
    }
    let verify =
        || Command::new(env!("CARGO_BIN_EXE_kichhoat")).args(["audit", "verify"]).arg(&active).output().unwrap();
    let ok = verify();
    assert_eq!(stdout(&ok).trim(), "ok: 6 lines, last seq 6", "{}", String::from_utf8_lossy(&ok.stderr));
    let printed =
        Command::new(env!("CARGO_BIN_EXE_kichhoat")).args(["audit", "--audit-log"]).arg(&active).output().unwrap();
    assert_eq!(stdout(&printed), files.iter().map(|(_, t)| t.as_str()).collect::<String>(), "oldest file first");

    std::fs::remove_file(dir.path().join("audit.jsonl.000000000001")).unwrap();
    let ok = verify();
    assert!(ok.status.success(), "{}", stdout(&ok));
    assert!(stdout(&ok).contains("mid-chain") && stdout(&ok).contains("ok: 4 lines, last seq 6"), "{}", stdout(&ok));
}
