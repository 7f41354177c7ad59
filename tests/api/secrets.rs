//! After a whole conversation (with trace logging on, over USSD and over SMS, whose texts travel in a URL
//! query), no password, passcode, OTP or security answer is anywhere in the data directory or the logs,
//! and ID numbers and phones appear in logs only masked.

use std::path::Path;

use crate::helpers::{fold, otp_in, scratch, wait_outbox, AtPhone, Proc, SmsPhone};

/// Every file under `dir`, recursively.
pub fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Occurrences of `needle` not embedded in a longer run of hex digits (a hash or a timestamp that
/// happens to contain the same six digits is not a leak).
pub fn leaks(hay: &[u8], needle: &[u8]) -> bool {
    let hexish = |b: u8| b.is_ascii_hexdigit();
    // The fraction of a log timestamp (`…:52.630926Z`) is six digits too: not a leaked code.
    let fraction = |i: usize| {
        needle.iter().all(u8::is_ascii_digit)
            && i > 0
            && hay[i - 1] == b'.'
            && hay.get(i + needle.len()).is_some_and(|&b| b == b'Z' || b == b'+')
    };
    hay.windows(needle.len()).enumerate().any(|(i, w)| {
        w == needle
            && !(i > 0 && hexish(hay[i - 1]) && hexish(needle[0]))
            && !(hay.get(i + needle.len()).is_some_and(|&b| hexish(b)) && hexish(needle[needle.len() - 1]))
            && !fraction(i)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_is_stored_or_logged_after_a_full_conversation() {
    let (_dir, data, outbox, log) = scratch(); // the outbox (SMS "delivered") is outside the data dir
    let server = Proc::spawn(&data, &outbox, &log, "trace").await;

    let password = "Zq*8!mWx#2";
    let passcode = "604918";
    let answers = ["Chuồn Chuồn", "Bến  Tre"];
    let mut p = AtPhone::new(&server.url, "+84912345678");
    p.request_code("001099012345", "1").await;
    let otp = otp_in(&wait_outbox(&outbox, 1).await[0].text).unwrap();
    p.send("999999").await; // a wrong code too
    assert!(fold(&p.send(&otp).await).contains("Dat mat khau"));
    let cumulative_with_password = {
        p.send(password).await;
        p.text()
    };
    for input in [password, passcode, passcode, "2", answers[0], "5", answers[1]] {
        p.send(input).await;
    }
    let mut l = AtPhone::new(&server.url, "+84912345678");
    assert!(fold(&l.log_in("001099012345", password).await).contains("Xin chao"));
    let mut l = AtPhone::new(&server.url, "+84912345678");
    l.log_in("001099012345", "Wr0ng*pass!").await;

    // Forgot password: a code, a wrong answer, then the right one (whichever question is drawn, the
    // answer typed is the one stored for it), a new password twice.
    let new_password = "Kt#5vRn!9p";
    let mut r = AtPhone::new(&server.url, "+84912345678");
    r.fast_dial("4*001099012345*1").await;
    let reset_otp = otp_in(&wait_outbox(&outbox, 3).await[2].text).unwrap();
    let asked = fold(&r.send(&reset_otp).await);
    r.send("Sai be").await;
    let answer = if asked.contains("Ten thu cung") { answers[0] } else { answers[1] };
    assert!(fold(&r.send(answer).await).contains("Dat mat khau moi"), "{asked}");
    r.send(new_password).await;
    assert!(fold(&r.send(new_password).await).contains("thanh cong"));
    // Forgot passcode: the password (a wrong one first), a new passcode twice.
    let new_passcode = "815903";
    let mut c = AtPhone::new(&server.url, "+84912345678");
    c.fast_dial("5*001099012345").await;
    c.send("Wr0ng*again!").await;
    c.send(new_password).await;
    c.send(new_passcode).await;
    assert!(fold(&c.send(new_passcode).await).contains("thanh cong"));
    server.terminate();

    let mut all = Vec::new();
    files(&data, &mut all);
    all.push(log.clone());
    assert!(all.len() > 3, "{all:?}");
    let needles: Vec<String> = vec![
        password.into(),
        passcode.into(),
        otp.clone(),
        "Wr0ng*pass!".into(),
        answers[0].into(),
        answers[1].into(),
        "chuon chuon".into(),
        "ben tre".into(),
        cumulative_with_password,
        reset_otp,
        new_password.into(),
        new_passcode.into(),
        "Wr0ng*again!".into(),
        "sai be".into(),
    ];
    let stored = all.iter().any(|f| std::fs::read(f).unwrap().windows(10).any(|w| w == b"$argon2id$"));
    assert!(stored, "the scan saw the stored account");
    for f in &all {
        let bytes = std::fs::read(f).unwrap();
        for n in &needles {
            assert!(!leaks(&bytes, n.as_bytes()), "{n:?} found in {}", f.display());
        }
    }
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("turn answered"), "the log is real");
    for personal in ["001099012345", "0912345678", "84912345678"] {
        assert!(!logs.contains(personal), "{personal} appears unmasked in the logs");
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_is_private_to_the_service_user_and_a_readable_key_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, data, outbox, log) = scratch();
    // A data dir as the first release left it: world-readable.
    std::fs::create_dir_all(data.join("old")).unwrap();
    std::fs::write(data.join("old/file"), b"x").unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(data.join("old/file"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = Proc::spawn(&data, &outbox, &log, "info").await;
    let mut p = AtPhone::new(&server.url, "+84912345678");
    p.request_code("001099012345", "1").await;
    server.terminate();
    let mut all = vec![data.clone()];
    files(&data, &mut all);
    let mut dirs = vec![data.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                all.push(p.clone());
                dirs.push(p);
            }
        }
    }
    for f in &all {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        let want = if f.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} is {mode:o}", f.display());
    }
    // A key file others can read: the server refuses to start, saying what to do.
    let key = data.join("secret.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kichhoat"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("chmod 600"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_is_stored_or_logged_when_sms_carry_them_in_the_query() {
    let (_dir, data, outbox, log) = scratch();
    let server = Proc::spawn(&data, &outbox, &log, "trace").await;

    let password = "Qv*7!nXz#4";
    let passcode = "630174";
    let answers = ["Cào Cào", "Cần  Thơ"];
    let p = SmsPhone::new(&server.url, "+84912345678");
    for input in ["Xin chao", "1", "001099012345", "1"] {
        p.send(input).await;
    }
    let otp = otp_in(&wait_outbox(&outbox, 1).await[0].text).unwrap();
    assert!(fold(&p.send(&otp).await).contains("Dat mat khau"));
    for input in [password, password, passcode, passcode, "2", answers[0], "5", answers[1]] {
        p.send(input).await;
    }
    for input in ["Dang nhap", "2", "001099012345"] {
        p.send(input).await;
    }
    assert!(fold(&p.send(password).await).contains("Xin chao"));
    server.terminate();

    let mut all = Vec::new();
    files(&data, &mut all);
    all.push(log.clone());
    let needles = [password, passcode, &otp, answers[0], answers[1], "cao cao", "can tho", "Qv%2A7", "Qv*7"];
    for f in &all {
        let bytes = std::fs::read(f).unwrap();
        for n in needles {
            assert!(!leaks(&bytes, n.as_bytes()), "{n:?} found in {}", f.display());
        }
    }
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("turn answered") && logs.contains("/sms/kannel"), "the log is real");
    for personal in ["001099012345", "0912345678", "84912345678"] {
        assert!(!logs.contains(personal), "{personal} appears unmasked in the logs");
    }
}
