//! The operator and newcomer commands: `simulate` (the terminal keypad phone) and `audit`.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::helpers::{fold, scratch, AtPhone, Proc};

#[test]
fn simulate_shows_screens_and_the_sms_for_the_phone_and_dials_again_after_an_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kichhoat"))
        .args(["simulate", "--phone", "0912345678", "--data-dir"])
        .arg(dir.path().join("sim"))
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // activate → ID → "this number" → (code prompt) → 0 (menu; the activation put aside) → help; dialling
    // again brings the code prompt back, 0 → menu → 2 log in.
    child.stdin.take().unwrap().write_all(b"1\n001099012345\n1\n0\n3\n\n0\n2\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = fold(&String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("1. Kich hoat tai khoan"), "{stdout}");
    assert!(stdout.contains("[SMS to +84912345678] Ma OTP"), "{stdout}");
    assert!(stdout.contains("Cong an xa, phuong noi cu tru"), "help after the menu: {stdout}");
    assert!(stdout.contains("(session ended; press Enter to dial again)"), "{stdout}");
    assert!(stdout.contains("Tiep tuc: ma OTP da gui con dung"), "the new dial resumed the activation: {stdout}");
    assert!(stdout.contains("Dang nhap. Nhap so dinh danh"), "then the menu: {stdout}");
    assert!(!stdout.contains("CON ") && !stdout.contains("END "), "screens, not protocol");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_prints_the_authentication_events_as_json_lines_with_the_id_as_a_pseudonym_only() {
    let (_dir, data, outbox, log) = scratch();
    let server = Proc::spawn(&data, &outbox, &log, "info").await;
    let mut p = AtPhone::new(&server.url, "+84912345678");
    p.log_in("001099012345", "Wrong*pass1").await;
    server.terminate();
    let out = Command::new(env!("CARGO_BIN_EXE_kichhoat")).args(["audit", "--data-dir"]).arg(&data).output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(line["seq"], 1);
    assert_eq!(line["event"], "login_failed");
    assert_eq!(line["caller"], "*678");
    let subject = line["subject"].as_str().unwrap();
    assert!(subject.len() == 32 && subject.bytes().all(|b| b.is_ascii_hexdigit()), "{subject}");
    assert!(line.get("national_id").is_none(), "{line}");
    let at = line["at"].as_str().unwrap();
    assert!(at.ends_with('Z') && at.len() == "2026-11-30T00:00:00.000Z".len(), "milliseconds: {at}");
    for never in ["Wrong*pass1", "001099012345", "912345678"] {
        assert!(!stdout.contains(never), "{never}: {stdout}");
    }
}
