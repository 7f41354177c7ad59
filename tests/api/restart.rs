//! kill -9 at the worst moments: nothing answered is lost, no SMS is lost or sent twice.

use std::collections::HashSet;

use crate::helpers::{fold, otp_in, scratch, settled_outbox, wait_outbox, AtPhone, Proc};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_mid_activation_loses_nothing_that_was_answered() {
    let (_dir, data, outbox, log) = scratch();

    // 1. Up to the OTP, then kill -9 right after the reply.
    let server = Proc::spawn(&data, &outbox, &log, "info").await;
    let mut p = AtPhone::new(&server.url, "+84912345678");
    assert!(fold(&p.request_code("001099012345", "1").await).contains("Nhap ma"));
    server.kill9();

    // 2. Restart: the queued OTP is delivered, and a new dial resumes at the OTP prompt. (That it went
    // out once is checked at the end, when any duplicate has had time to appear.)
    let server = Proc::spawn(&data, &outbox, &log, "info").await;
    let lines = wait_outbox(&outbox, 1).await;
    assert!(!lines.is_empty(), "the OTP queued before the kill is delivered");
    let otp = otp_in(&lines[0].text).unwrap();
    let mut p = AtPhone::new(&server.url, "+84912345678");
    assert!(fold(&p.dial().await).contains("Tiep tuc"));
    assert!(fold(&p.send(&otp).await).contains("Dat mat khau"));
    for input in ["Abc*1234x", "Abc*1234x", "258147", "258147", "1", "Kim Dong", "4"] {
        assert!(p.send(input).await.starts_with("CON "), "at {input}");
    }
    assert!(fold(&p.send("Pho").await).contains("thanh cong"));
    server.kill9();

    // 3. Restart: the account exists, the confirmation SMS went out exactly once. Counted a worker round
    // after the second line appeared, so a late duplicate would be there.
    let server = Proc::spawn(&data, &outbox, &log, "info").await;
    let lines = settled_outbox(&outbox, 2).await;
    assert_eq!(
        lines.len(),
        2,
        "OTP and confirmation, no duplicate: {:?}",
        lines.iter().map(|l| &l.id).collect::<Vec<_>>()
    );
    assert_eq!(lines.iter().map(|l| &l.id).collect::<HashSet<_>>().len(), 2);
    assert!(fold(&lines[1].text).contains("da duoc kich hoat"));
    let mut p = AtPhone::new(&server.url, "+84912345678");
    assert!(fold(&p.log_in("001099012345", "Abc*1234x").await).contains("Xin chao Nguyen Van An"));
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_outbox_line_from_a_crash_is_cut_and_the_sms_written_once() {
    let (_dir, data, outbox, log) = scratch();
    std::fs::write(&outbox, "{\"id\":99,\"to\":\"+8491").unwrap();
    let server = Proc::spawn(&data, &outbox, &log, "info").await;
    let mut p = AtPhone::new(&server.url, "+84912345678");
    p.request_code("001099012345", "1").await;
    let lines = settled_outbox(&outbox, 1).await;
    assert_eq!(lines.len(), 1, "written once: {:?}", lines.iter().map(|l| &l.id).collect::<Vec<_>>());
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_its_built_in_defaults_from_any_directory_when_asked_for_the_demo() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_kichhoat"))
        // Outside a checkout the demo citizens must be asked for (see admin.rs for the refusal).
        .args(["serve", "--demo", "--listen", &addr])
        .current_dir(dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let server = crate::helpers::Proc::adopt(child, format!("http://{addr}")).await;
    let mut p = AtPhone::new(&server.url, "+84912345678");
    assert!(fold(&p.dial().await).contains("Kich hoat tai khoan"));
    p.send("1").await;
    p.send("001099012345").await;
    assert!(fold(&p.send("1").await).contains("091****678"), "the demo registry is built in");
    let outbox = dir.path().join("data/outbox.jsonl");
    assert!(!wait_outbox(&outbox, 1).await.is_empty(), "outbox under ./data by default");
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_database_writing_to_an_old_outbox_file_loses_no_sms() {
    let (dir, data, outbox, log) = scratch();
    for data in [data.clone(), dir.path().join("data-2")] {
        let server = Proc::spawn(&data, &outbox, &log, "info").await;
        let mut p = AtPhone::new(&server.url, "+84912345678");
        p.request_code("001099012345", "1").await;
        server.terminate();
    }
    let lines = crate::helpers::read_outbox(&outbox);
    assert_eq!(
        lines.len(),
        2,
        "both databases' OTPs were written: {:?}",
        lines.iter().map(|l| &l.id).collect::<Vec<_>>()
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_file_holding_codes_is_private_to_the_service_user() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, data, outbox, log) = scratch();
    let server = Proc::spawn(&data, &outbox, &log, "info").await;
    server.terminate();
    assert_eq!(std::fs::metadata(&outbox).unwrap().permissions().mode() & 0o777, 0o600);
}
