//! A data dir written by the previous release (store schema 1, `fixtures/store-v1`, see its README) opens
//! with this build, and everyone in it carries on where they were; one written by a newer release is
//! refused rather than misread.

use std::path::Path;
use std::time::Duration;

use kichhoat::clock::Millis;
use kichhoat::store::sled_store::{SledStore, SCHEMA};
use kichhoat::store::StoreError;

use crate::helpers::{fold, otp_in, repo, settings, AtPhone, TestServer};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The fixture copied to a fresh data dir (it is never opened in place: opening migrates it), and the time
/// it was made.
fn previous_release() -> (tempfile::TempDir, Millis) {
    let fixture = repo().join("fixtures/store-v1");
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture.join("db"), &dir.path().join("db"));
    // sled needs `db/blobs`, which git does not keep (it is empty).
    std::fs::create_dir_all(dir.path().join("db/blobs")).unwrap();
    std::fs::copy(fixture.join("secret.key"), dir.path().join("secret.key")).unwrap();
    // A checkout gives files the umask's mode; the server refuses a key file others can read.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = dir.path().join("secret.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let made = std::fs::read_to_string(fixture.join("created_at_ms")).unwrap();
    (dir, Millis(made.trim().parse().unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_the_previous_release_opens_and_carries_on() {
    let (dir, made) = previous_release();
    let mut settings = settings(dir.path());
    settings.key_file = dir.path().join("secret.key");
    let server = TestServer::start_at(dir, settings, made.plus(Duration::from_secs(60))).await;

    // Trần Thị Bình's activation waits at the code prompt; her code, still queued in the old database,
    // goes out, and typing it carries on.
    let mut binh = AtPhone::new(&server.url, "+84987654321");
    let resumed = binh.dial().await;
    assert!(fold(&resumed).contains("Tiep tuc"), "{resumed}");
    let outbox = server.outbox().await;
    let [sms] = &outbox[..] else { panic!("one SMS, the queued code; got {}", outbox.len()) };
    assert_eq!(sms.to, "+84987654321");
    let otp = otp_in(&sms.text).unwrap();
    let next = binh.send(&otp).await;
    assert!(fold(&next).contains("Dat mat khau"), "{next}");

    // Nguyễn Văn An's three wrong log-ins (from a stranger's phone) came over into the strangers' pool:
    // two more from strangers lock it, not five.
    let mut stranger = AtPhone::new(&server.url, "+84988000111");
    let fourth = fold(&stranger.log_in("001099012345", "Wrong*pw1").await);
    assert!(fourth.contains("khong dung") && fourth.contains("Con 1 lan thu"), "wrong log-in 4: {fourth}");
    let locked = fold(&stranger.log_in("001099012345", "Wrong*pw1").await);
    assert!(locked.contains("tam khoa"), "the fifth wrong log-in locks: {locked}");
    // His account came over, and his own phone was never locked out by strangers.
    let mut an = AtPhone::new(&server.url, "+84912345678");
    let welcome = fold(&an.log_in("001099012345", "Abc*1234x").await);
    assert!(welcome.contains("Xin chao Nguyen Van An"), "{welcome}");
    // His password hash of the first release (no pepper) was upgraded by that log-in, and still works.
    let id = kichhoat::domain::NationalId::parse_shape("001099012345").unwrap();
    let account = server.app().store.account(&id).await.unwrap().unwrap();
    assert!(account.password_hash.contains("keyid="), "{}", account.password_hash);
    assert!(fold(&an.log_in("001099012345", "Abc*1234x").await).contains("Xin chao"));

    // The old release's audit trail is readable, his activation in it.
    let audit = kichhoat::store::audit_all(server.app().store.as_ref()).await.unwrap();
    assert!(
        audit.iter().any(|r| r.event.event == "activated"
            && r.event.national_id.as_ref().map(|id| id.as_str()) == Some("001099012345")
            && r.at < made),
        "{:?}",
        audit.iter().map(|r| &r.event.event).collect::<Vec<_>>()
    );
    // ...and went into the audit trail file at the first start, before anything new, pseudonymously.
    let subject = server.app().service.crypto.audit_subject("001099012345");
    let trail = std::fs::read_to_string(server.dir.path().join("audit.jsonl")).unwrap();
    let lines: Vec<kichhoat::audit::AuditLine> = trail.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let old = audit.iter().filter(|r| r.at < made).count();
    assert!(old > 0 && lines.len() >= old);
    assert!(lines[..old].iter().all(|l| l.at < made.rfc3339_millis()), "the old trail first");
    assert!(lines[..old].iter().any(|l| l.event == "activated" && l.subject.as_deref() == Some(subject.as_str())));
    assert!(!trail.contains("001099012345"));
    assert!(matches!(
        kichhoat::audit::verify(&server.dir.path().join("audit.jsonl")).unwrap(),
        kichhoat::audit::Verdict::Ok(_)
    ));
    server.stop().await;
}

/// Runs `open` until the data dir's lock is free: a store just dropped may still be closing on another
/// thread (its flusher holds the database until it sees the store gone).
fn when_unlocked<T>(mut open: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    for _ in 0..200 {
        match open() {
            Err(e) if e.contains("lock") => std::thread::sleep(Duration::from_millis(10)),
            other => return other,
        }
    }
    open()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_a_newer_release_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    drop(SledStore::open(&db).unwrap());
    let raw = when_unlocked(|| sled::open(&db).map_err(|e| e.to_string())).unwrap();
    raw.insert("schema", "99").unwrap();
    raw.flush().unwrap();
    drop(raw);

    let refused = when_unlocked(|| match SledStore::open(&db) {
        Ok(_) => Ok(None),
        Err(StoreError::Backend(e)) => Err(e),
        Err(e) => Ok(Some(e)),
    });
    let err = refused.unwrap().expect("a data dir of schema 99 is refused");
    assert!(matches!(err, StoreError::NewerSchema { found: 99, supported: SCHEMA }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("99") && message.contains(&SCHEMA.to_string()), "{message}");
}
