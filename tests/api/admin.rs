//! Operator commands through the binary: `kichhoat admin show|unlock|cancel` and `kichhoat registry import`
//! against a running server (its admin API on a random loopback port, found through
//! `<data-dir>/admin.json`), calls without the token refused and audited, the same commands on the data
//! dir with the server stopped, and `serve` refusing to guess a registry outside a checkout.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::helpers::{fold, repo, scratch, wait_outbox, AtPhone, Proc};

const ID: &str = "001099012345";
const PHONE: &str = "+84912345678";
const STRANGER: &str = "+84987000111";
/// A citizen of the demo registry, and the unknown ID used to compare refusals.
const OTHER_ID: &str = "001199012346";
const UNKNOWN_ID: &str = "001099099999";

/// Runs the binary with `args`, then `--data-dir data`; returns (success, stdout, stderr).
fn kichhoat(data: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kichhoat"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env("KICHHOAT_OPERATOR", "officer.lan")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(data: &Path, args: &[&str]) -> Value {
    let (ok, stdout, stderr) = kichhoat(data, &[args, &["--json"]].concat());
    assert!(ok, "{args:?}: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn limit<'a>(view: &'a Value, name: &str, pool: &str) -> &'a Value {
    view["limits"].as_array().unwrap().iter().find(|l| l["name"] == name && l["pool"] == pool).unwrap()
}

fn trail(data: &Path) -> Vec<Value> {
    let (ok, stdout, stderr) = kichhoat(data, &["audit"]);
    assert!(ok, "{stderr}");
    stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The binary serving `data` with its admin API on a free loopback port, and `registry` (default: the
/// checkout's fixture).
async fn server(data: &Path, outbox: &Path, log: &Path, registry: Option<&Path>) -> Proc {
    let Some(registry) = registry else {
        return Proc::spawn_with(data, outbox, log, "info", &["--admin-listen", "127.0.0.1:0"], &[]).await;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_kichhoat"))
        .args(["serve", "--admin-listen", "127.0.0.1:0", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data)
        .arg("--sms-outbox")
        .arg(outbox)
        .arg("--registry")
        .arg(registry)
        .arg("--flows")
        .arg(repo().join("flows"))
        .env("KICHHOAT_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Proc::adopt(child, format!("http://127.0.0.1:{port}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_unlock_and_cancel_work_while_the_server_runs_and_are_audited_without_the_id() {
    let (_dir, data, outbox, log) = scratch();
    let server = server(&data, &outbox, &log, None).await;
    let endpoint: Value = serde_json::from_slice(&std::fs::read(data.join("admin.json")).unwrap()).unwrap();
    assert_ne!(endpoint["url"], format!("http://{}", kichhoat::admin::api::DEFAULT_LISTEN), "the port given");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("admin.json")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The citizen asks for a code; a stranger locks the "other phones" pool with five wrong log-ins.
    let mut citizen = AtPhone::new(&server.url, PHONE);
    assert!(fold(&citizen.request_code(ID, "1").await).contains("Nhap ma"));
    wait_outbox(&outbox, 1).await;
    let mut stranger = AtPhone::new(&server.url, STRANGER);
    for i in 0..5 {
        stranger.log_in(ID, &format!("Wrong*pass{i}")).await;
    }

    let view = json(&data, &["admin", "show", ID]);
    assert_eq!(view["registry"]["status"], "approved");
    assert_eq!(view["registry"]["phone"], "091****678");
    assert!(view["account"].is_null(), "not activated");
    let locked = limit(&view, "login", "other");
    assert!(locked["until"]["local"].as_str().unwrap().contains(':'), "locked, until when: {locked}");
    assert!(limit(&view, "login", "own")["until"].is_null(), "the citizen's own phone is not locked");
    assert_eq!(limit(&view, "otp_id_15m", "own")["used"], 1);
    let activation = &view["activations"][0];
    assert_eq!(
        (&activation["state"], &activation["caller"], &activation["phone"], &activation["code"]),
        (&Value::from("act_otp"), &Value::from("091****678"), &Value::from("091****678"), &Value::from("pending"))
    );
    assert!(activation["started_at"]["utc"].is_string() && !view["last_otp_sent_at"].is_null());
    let (ok, text, _) = kichhoat(&data, &["admin", "show", ID, "--lang", "en"]);
    assert!(ok && text.contains("LOCKED until") && text.contains("step act_otp"), "{text}");
    let (_, text_vi, _) = kichhoat(&data, &["admin", "show", ID]);
    assert!(text_vi.contains("BỊ KHOÁ đến"), "{text_vi}");
    for shown in [&text, &text_vi, &view.to_string()] {
        assert!(!shown.contains(ID) && !shown.contains("912345678"), "never the full ID or phone: {shown}");
        assert!(!shown.contains("$argon2") && !shown.contains("mac"), "never a hash: {shown}");
    }

    let unlocked = json(&data, &["admin", "unlock", ID, "--what", "login"]);
    assert_eq!(unlocked["cleared"], serde_json::json!(["login:other"]));
    let view = json(&data, &["admin", "show", ID]);
    assert!(limit(&view, "login", "other")["until"].is_null(), "unlocked");
    assert_eq!(limit(&view, "otp_id_15m", "own")["used"], 1, "--what login leaves the OTP caps");
    let refused = fold(&stranger.log_in(ID, "Wrong*again1").await);
    assert!(!refused.contains("tam khoa den"), "log-in is open again: {refused}");

    let cancelled = json(&data, &["admin", "cancel", ID]);
    assert_eq!(cancelled, serde_json::json!({"conversations": ["091****678"], "codes_voided": 1}));
    let otp = crate::helpers::otp_in(&wait_outbox(&outbox, 1).await[0].text).unwrap();
    let after = fold(&citizen.send(&otp).await);
    assert!(after.contains("bat dau lai") && after.contains("1. Kich hoat"), "back at the menu: {after}");
    assert!(json(&data, &["admin", "show", ID])["activations"].as_array().unwrap().is_empty());
    server.terminate();

    let lines = trail(&data);
    let of = |event: &str| lines.iter().filter(|l| l["event"] == event).cloned().collect::<Vec<_>>();
    assert_eq!(of("admin_show").len(), 5);
    for event in ["admin_show", "admin_unlock", "admin_cancel", "otp_voided"] {
        let l = &of(event)[0];
        assert_eq!(l["channel"], "admin", "{l}");
        assert!(l["detail"].as_str().unwrap().contains("operator=officer.lan"), "{l}");
        assert_eq!(l["subject"], of("otp_sent")[0]["subject"], "the ID only as its keyed subject: {l}");
    }
    assert!(of("admin_unlock")[0]["detail"].as_str().unwrap().contains("cleared=login:other"));
    let file = std::fs::read_to_string(data.join("audit.jsonl")).unwrap();
    assert!(!file.contains(ID), "never the full ID in the audit trail");
    let (ok, verified, _) = kichhoat(&data, &["audit", "verify"]);
    assert!(ok, "{verified}");
    assert!(!data.join("admin.json").exists(), "removed at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_without_the_right_token_are_refused_audited_and_change_nothing() {
    let (_dir, data, outbox, log) = scratch();
    let server = server(&data, &outbox, &log, None).await;
    let endpoint: Value = serde_json::from_slice(&std::fs::read(data.join("admin.json")).unwrap()).unwrap();
    let (url, token) = (endpoint["url"].as_str().unwrap(), endpoint["token"].as_str().unwrap());
    let mut stranger = AtPhone::new(&server.url, STRANGER);
    for i in 0..5 {
        stranger.log_in(ID, &format!("Wrong*pass{i}")).await;
    }
    let body = serde_json::json!({"id": ID, "operator": "mallory", "what": "all"}).to_string();
    let client = reqwest::Client::new();
    let wrong = format!("Bearer {}", "0".repeat(64));
    for auth in [None, Some(wrong.as_str()), Some("Bearer "), Some(token)] {
        let mut req = client.post(format!("{url}/admin/unlock")).body(body.clone());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert_eq!(r.text().await.unwrap(), "unauthorized\n", "no detail");
    }
    let r = client
        .post(format!("{url}/admin/registry/import?operator=mallory"))
        .body("national_id,phone,full_name,status\n");
    assert_eq!(r.send().await.unwrap().status(), 401);
    assert_eq!(reqwest::get(format!("{url}/healthz")).await.unwrap().status(), 200, "health stays open");
    let view = json(&data, &["admin", "show", ID]);
    assert!(!limit(&view, "login", "other")["until"].is_null(), "still locked: nothing changed");
    // The right token, a bad request: the reason, not a 500.
    let r = client
        .post(format!("{url}/admin/show"))
        .header("authorization", format!("Bearer {token}"))
        .body(serde_json::json!({"id": "12345", "operator": "x"}).to_string())
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    server.terminate();
    let rejected: Vec<Value> = trail(&data).into_iter().filter(|l| l["event"] == "admin_rejected").collect();
    assert_eq!(rejected.len(), 5, "each refusal audited");
    assert!(rejected[0]["detail"].as_str().unwrap().contains("path=/admin/unlock"));
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(!logs.contains(token) && !trail(&data).iter().any(|l| l.to_string().contains(token)), "never the token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_import_removes_a_citizen_who_then_gets_the_unknown_id_reply_and_a_later_one_restores_them() {
    let (dir, data, outbox, log) = scratch();
    let registry = dir.path().join("registry.csv");
    std::fs::copy(repo().join("fixtures/registry.csv"), &registry).unwrap();
    let server = server(&data, &outbox, &log, Some(&registry)).await;
    let full = std::fs::read_to_string(&registry).unwrap();
    let without: String = full.lines().filter(|l| !l.starts_with(OTHER_ID)).map(|l| format!("{l}\n")).collect();
    let smaller = dir.path().join("registry-2.csv");
    std::fs::write(&smaller, &without).unwrap();
    let path = smaller.display().to_string();

    let dry = json(&data, &["registry", "import", &path, "--dry-run"]);
    assert_eq!((dry["removed"].as_u64(), dry["dry_run"].as_bool()), (Some(1), Some(true)));
    assert_eq!(json(&data, &["admin", "show", OTHER_ID])["registry"]["status"], "approved", "a dry run writes nothing");
    let (ok, text, stderr) = kichhoat(&data, &["registry", "import", &path, "--lang", "en"]);
    assert!(ok, "{stderr}");
    assert!(text.contains("added 0") && text.contains("removed 1") && text.contains("unchanged 5"), "{text}");
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("registry imported") && logs.contains("removed=1"), "the import logs its counts");
    assert_eq!(json(&data, &["admin", "show", OTHER_ID])["registry"]["status"], "removed", "marked, not deleted");

    // The removed citizen, from her own phone, is answered exactly as an unknown ID number.
    let removed = fold(&AtPhone::new(&server.url, "+84987654321").request_code(OTHER_ID, "1").await);
    let unknown = fold(&AtPhone::new(&server.url, "+84987654321").request_code(UNKNOWN_ID, "1").await);
    assert_eq!(removed, unknown);
    assert!(removed.starts_with("END") && !removed.contains("Nhap ma"), "{removed}");

    // A file with no readable row removes no one.
    let broken = dir.path().join("broken.csv");
    std::fs::write(&broken, "national_id,phone,full_name,status\n12345,0912345678,A,approved\n").unwrap();
    let (ok, _, stderr) = kichhoat(&data, &["registry", "import", &broken.display().to_string()]);
    assert!(!ok && stderr.contains("nothing was changed"), "{stderr}");
    assert_eq!(json(&data, &["admin", "show", ID])["registry"]["status"], "approved");

    // The full registry again, at the next start: restored, and she can activate.
    server.terminate();
    let server = self::server(&data, &outbox, &log, Some(&registry)).await;
    assert_eq!(json(&data, &["admin", "show", OTHER_ID])["registry"]["status"], "approved");
    let again = fold(&AtPhone::new(&server.url, "+84987654321").request_code(OTHER_ID, "1").await);
    assert!(again.contains("Nhap ma"), "{again}");
    server.terminate();
    let lines = trail(&data);
    let removed: Vec<&Value> = lines.iter().filter(|l| l["event"] == "citizen_removed").collect();
    assert_eq!(removed.len(), 1);
    assert!(removed[0]["detail"].as_str().unwrap().contains("operator=officer.lan"), "{}", removed[0]);
    let imports: Vec<String> =
        lines.iter().filter(|l| l["event"] == "registry_imported").map(|l| l["detail"].to_string()).collect();
    assert_eq!(imports.len(), 2, "the operator's import and the restoring start: {imports:?}");
    assert!(imports[0].contains("removed=1") && imports[1].contains("changed=1"), "{imports:?}");
    assert!(!std::fs::read_to_string(data.join("audit.jsonl")).unwrap().contains(OTHER_ID));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_server_gone_the_commands_open_the_data_dir_and_are_audited_the_same_way() {
    let (_dir, data, outbox, log) = scratch();
    let server = server(&data, &outbox, &log, None).await;
    let mut stranger = AtPhone::new(&server.url, STRANGER);
    for i in 0..5 {
        stranger.log_in(ID, &format!("Wrong*pass{i}")).await;
    }
    // Killed: its admin.json stays behind, and is recognised as stale.
    server.kill9();
    assert!(data.join("admin.json").exists());
    let view = json(&data, &["admin", "show", ID]);
    assert!(!limit(&view, "login", "other")["until"].is_null());
    assert_eq!(json(&data, &["admin", "unlock", ID])["cleared"], serde_json::json!(["login:other"]));
    assert!(limit(&json(&data, &["admin", "show", ID]), "login", "other")["until"].is_null());
    let events: Vec<Value> = trail(&data).into_iter().map(|l| l["event"].clone()).collect();
    assert!(events.contains(&Value::from("admin_unlock")), "{events:?}");
    let (ok, out, _) = kichhoat(&data, &["audit", "verify"]);
    assert!(ok, "{out}");
    // A data dir that holds nothing: said so, nothing created.
    let (ok, _, stderr) = kichhoat(&data.join("nowhere"), &["admin", "show", ID]);
    assert!(!ok && stderr.contains("--data-dir"), "{stderr}");
    assert!(!data.join("nowhere").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_outside_a_checkout_without_a_registry_refuses_unless_demo() {
    let (dir, data, outbox, log) = scratch();
    let out = Command::new(env!("CARGO_BIN_EXE_kichhoat"))
        .args(["serve", "--listen", "127.0.0.1:0", "--no-admin", "--data-dir"])
        .arg(&data)
        .current_dir(dir.path())
        .env_remove("KICHHOAT_REGISTRY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--registry FILE") && stderr.contains("--demo"), "says why and how: {stderr}");
    assert!(!data.exists(), "refused before anything was created");
    // With --demo it serves the built-in citizens.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(env!("CARGO_BIN_EXE_kichhoat"))
        .args(["serve", "--demo", "--no-admin", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(&data)
        .arg("--sms-outbox")
        .arg(&outbox)
        .current_dir(dir.path())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let server = Proc::adopt(child, format!("http://127.0.0.1:{port}")).await;
    let reply = fold(&AtPhone::new(&server.url, PHONE).request_code(ID, "1").await);
    assert!(reply.contains("Nhap ma"), "{reply}");
    server.terminate();
}

/// Operators racing each other and the citizen: eight cancels at once void the code once and audit one
/// cancel; eight unlocks at once while wrong log-ins keep coming leave the counter as some order of the
/// same events one at a time would (never a lock the failures since the last unlock did not earn).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_racing_each_other_and_the_citizen_act_once_and_leave_consistent_counters() {
    use kichhoat::admin::{Operator, What};
    use kichhoat::domain::NationalId;
    use kichhoat::engine::policy::Pool;
    let server = crate::helpers::TestServer::start().await;
    let app = server.app();
    let id = NationalId::parse_shape(ID).unwrap();
    let by = Operator::parse("officer.lan").unwrap();
    let mut citizen = AtPhone::new(&server.url, PHONE);
    assert!(fold(&citizen.request_code(ID, "1").await).contains("Nhap ma"));
    let admin = std::sync::Arc::new(app.admin());
    let cancels: Vec<_> = (0..8)
        .map(|_| {
            let (admin, id, by) = (admin.clone(), id.clone(), by.clone());
            tokio::spawn(async move { admin.cancel(&id, &by).await.unwrap() })
        })
        .collect();
    let mut voided = 0;
    for c in cancels {
        voided += c.await.unwrap().codes_voided;
    }
    assert_eq!(voided, 1, "the code is voided once");
    let trail = kichhoat::store::audit_all(app.store.as_ref()).await.unwrap();
    assert_eq!(trail.iter().filter(|r| r.event.event == "admin_cancel").count(), 1, "one cancel audited");

    // Wrong log-ins from a stranger while operators unlock: each failure is counted on the counter as it
    // stands inside its own commit.
    let key = app.service.policy.login_failure(&id, Pool::Other).0;
    let failures: Vec<_> = (0..4)
        .map(|i| {
            let url = server.url.clone();
            tokio::spawn(async move {
                AtPhone::new(&url, &format!("+8498700{:04}", 100 + i)).log_in(ID, "Wrong*pass1").await;
            })
        })
        .collect();
    let unlocks: Vec<_> = (0..8)
        .map(|_| {
            let (admin, id, by) = (admin.clone(), id.clone(), by.clone());
            tokio::spawn(async move { admin.unlock(&id, What::Login, &by).await.unwrap() })
        })
        .collect();
    for f in failures {
        f.await.unwrap();
    }
    for u in unlocks {
        u.await.unwrap();
    }
    let tally = app.store.tally(&key).await.unwrap();
    assert!(tally.consecutive <= 4 && tally.locked_until.is_none(), "4 failures never lock at 5: {tally:?}");
    let trail = kichhoat::store::audit_all(app.store.as_ref()).await.unwrap();
    assert_eq!(trail.iter().filter(|r| r.event.event == "admin_unlock").count(), 8, "each unlock audited");
    server.stop().await;
}
