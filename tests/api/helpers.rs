//! Shared test plumbing: an in-process server on a random port with an injected clock, an Africa's
//! Talking client that builds cumulative `text` like the aggregator does, a Kannel client that calls
//! `/sms/kannel` as an `sms-service` does, and the outbox reader.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use kichhoat::app::App;
use kichhoat::clock::{Clock, ManualClock, Millis};
use kichhoat::config::{Common, Settings, StoreKind};
use kichhoat::crypto::HashCost;
use kichhoat::domain::text::fold_diacritics;
use kichhoat::flow::Charset;
use kichhoat::sms::file::OutboxLine;
use kichhoat::sms::SmsSender;

/// 2026-11-29T00:00:00Z: a fixed start for injected clocks.
pub const T0: Millis = Millis(1_795_996_800_000);

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn settings(data_dir: &Path) -> Settings {
    let common = Common {
        flows: Some(repo().join("flows")),
        registry: Some(repo().join("fixtures/registry.csv")),
        key_file: None,
        ussd_charset: Charset::Gsm7,
        ussd_code: kichhoat::engine::DEFAULT_USSD_CODE.into(),
        help_phone: None,
        sms_charset: Charset::Gsm7,
        audit_log: None,
        audit_log_max_mb: kichhoat::audit::DEFAULT_MAX_MB,
        limits: Default::default(),
    };
    Settings::new(data_dir.to_path_buf(), None, StoreKind::Sled, &common)
}

/// A running in-process server.
pub struct TestServer {
    pub url: String,
    pub clock: Arc<ManualClock>,
    pub app: Option<App>,
    pub dir: tempfile::TempDir,
    pub outbox: PathBuf,
    server: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir).await
    }

    pub async fn start_in(dir: tempfile::TempDir) -> TestServer {
        let settings = settings(dir.path());
        Self::start_with(dir, settings).await
    }

    pub async fn start_with(dir: tempfile::TempDir, settings: Settings) -> TestServer {
        Self::start_at(dir, settings, T0).await
    }

    /// As [`TestServer::start_with`], with the clock starting at `now` (a data dir made at another time).
    pub async fn start_at(dir: tempfile::TempDir, settings: Settings, now: Millis) -> TestServer {
        Self::start_full(dir, settings, now, None).await
    }

    /// As [`TestServer::start_with`], with `sender` instead of the outbox file.
    pub async fn start_with_sender(
        dir: tempfile::TempDir,
        settings: Settings,
        sender: Arc<dyn SmsSender>,
    ) -> TestServer {
        Self::start_full(dir, settings, T0, Some(sender)).await
    }

    async fn start_full(
        dir: tempfile::TempDir,
        settings: Settings,
        now: Millis,
        sender: Option<Arc<dyn SmsSender>>,
    ) -> TestServer {
        let clock = Arc::new(ManualClock::new(now));
        let app = App::open_with_sender(&settings, clock.clone() as Arc<dyn Clock>, HashCost::DANGER_TEST_ONLY, sender)
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let router = kichhoat::http::router(app.web.clone());
        let server = tokio::spawn(async move {
            // The server loop the binary runs (connection limits, peer addresses for the gate).
            let limits = kichhoat::server::Limits::default();
            let _ = kichhoat::server::serve(listener, router, limits, std::future::pending()).await;
        });
        TestServer { url, clock, app: Some(app), outbox: settings.sms_outbox.clone(), dir, server }
    }

    /// A server on a fresh database of the tests' PostgreSQL cluster; `None` when PostgreSQL is not
    /// installed (and not required, see [`crate::pg::cluster`]).
    pub async fn start_postgres() -> Option<TestServer> {
        let cluster = crate::pg::cluster()?;
        let dir = tempfile::tempdir().unwrap();
        let mut settings = settings(dir.path());
        settings.store = cluster.new_database().parse().unwrap();
        Some(Self::start_with(dir, settings).await)
    }

    /// A fresh server on sled, or on PostgreSQL when `postgres` (`None`: PostgreSQL unavailable).
    pub async fn start_on(postgres: bool) -> Option<TestServer> {
        match postgres {
            true => Self::start_postgres().await,
            false => Some(Self::start().await),
        }
    }

    pub fn app(&self) -> &App {
        self.app.as_ref().unwrap()
    }

    /// Delivers queued SMS now (the worker would within a second) and returns every line of the outbox.
    /// The background worker may hold a message's claim meanwhile: wait until the outbox is empty.
    pub async fn outbox(&self) -> Vec<OutboxLine> {
        let app = self.app();
        for _ in 0..500 {
            app.worker.deliver_due().await.unwrap();
            if app.store.outbox_len().await.unwrap() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        read_outbox(&self.outbox)
    }

    pub async fn stop(mut self) -> tempfile::TempDir {
        self.server.abort();
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
        self.dir
    }
}

pub fn read_outbox(path: &Path) -> Vec<OutboxLine> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad outbox line {l:?}: {e}")))
        .collect()
}

/// The 6-digit code in an OTP SMS.
pub fn otp_in(text: &str) -> Option<String> {
    let re = regex::Regex::new(r"(?:^|\D)(\d{6})(?:\D|$)").unwrap();
    re.captures(text).map(|c| c[1].to_string())
}

/// A raw POST of an Africa's Talking form.
pub async fn post_at(url: &str, fields: &[(&str, &str)]) -> (u16, String) {
    let body = serde_urlencoded(fields);
    let resp = reqwest::Client::new()
        .post(format!("{url}/ussd/africastalking"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn serde_urlencoded(fields: &[(&str, &str)]) -> String {
    fields.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&")
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A phone talking to the server the way Africa's Talking relays it.
pub struct AtPhone {
    pub url: String,
    pub phone: String,
    pub session: String,
    pub inputs: Vec<String>,
    dials: u32,
}

impl AtPhone {
    pub fn new(url: &str, phone: &str) -> AtPhone {
        AtPhone { url: url.into(), phone: phone.into(), session: String::new(), inputs: Vec::new(), dials: 0 }
    }

    pub fn text(&self) -> String {
        self.inputs.join("*")
    }

    pub async fn hop(&self) -> (u16, String) {
        let text = self.text();
        post_at(
            &self.url,
            &[
                ("sessionId", &self.session),
                ("serviceCode", "*384*2#"),
                ("phoneNumber", &self.phone),
                ("networkCode", "45204"),
                ("text", &text),
            ],
        )
        .await
    }

    pub async fn dial(&mut self) -> String {
        static SESSIONS: AtomicU32 = AtomicU32::new(0);
        self.dials += 1;
        let n = SESSIONS.fetch_add(1, Ordering::SeqCst);
        self.session = format!("ATUid_{}_{n}_{}", self.phone.trim_start_matches('+'), std::process::id());
        self.inputs.clear();
        let (status, body) = self.hop().await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Dials with inputs in the code (`*384*1*ID#` is `"1*ID"`): a new session whose first hop carries them.
    pub async fn fast_dial(&mut self, inputs: &str) -> String {
        self.dial_fresh();
        self.inputs = inputs.split('*').map(str::to_string).collect();
        let (status, body) = self.hop().await;
        assert_eq!(status, 200, "{body}");
        body
    }

    fn dial_fresh(&mut self) {
        static FAST: AtomicU32 = AtomicU32::new(0);
        self.dials += 1;
        let n = FAST.fetch_add(1, Ordering::SeqCst);
        self.session = format!("ATUid_fast_{}_{n}_{}", self.phone.trim_start_matches('+'), std::process::id());
        self.inputs.clear();
    }

    /// Dials, picks 1 (activate), types the ID and the registered phone (`"1"` = this number): the reply
    /// to the step that sends the code.
    pub async fn request_code(&mut self, id: &str, phone: &str) -> String {
        self.dial().await;
        self.send("1").await;
        self.send(id).await;
        self.send(phone).await
    }

    /// Dials, picks 2 (log in), types the ID and the password: the END reply.
    pub async fn log_in(&mut self, id: &str, password: &str) -> String {
        self.dial().await;
        self.send("2").await;
        self.send(id).await;
        self.send(password).await
    }

    pub async fn send(&mut self, input: &str) -> String {
        self.inputs.push(input.to_string());
        let (status, body) = self.hop().await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

/// What Kannel got back for one SMS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KannelReply {
    pub status: u16,
    /// Every response header but `date` (which only says when), names lower-case, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl KannelReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

async fn kannel_reply(resp: reqwest::Response) -> KannelReply {
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .filter(|(n, _)| n.as_str() != "date")
        .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap().to_string()))
        .collect();
    KannelReply { status, headers, body: resp.text().await.unwrap() }
}

/// `GET /sms/kannel?<query>` as Kannel's `get-url` calls it; `fields` are form-encoded (`%p`, `%P`, `%a`,
/// `%I` are URL-encoded by Kannel).
pub async fn get_kannel(url: &str, fields: &[(&str, &str)]) -> KannelReply {
    get_kannel_raw(url, &serde_urlencoded(fields)).await
}

/// `GET /sms/kannel?<query>` with the query exactly as given (to send bytes that are not UTF-8).
pub async fn get_kannel_raw(url: &str, query: &str) -> KannelReply {
    let resp = reqwest::Client::new().get(format!("{url}/sms/kannel?{query}")).send().await.unwrap();
    kannel_reply(resp).await
}

/// `POST /sms/kannel?<query>` as Kannel's `post-url` calls it: the text as the body, `headers` such as
/// `X-Kannel-From`.
pub async fn post_kannel(url: &str, query: &str, headers: &[(&str, &str)], body: Vec<u8>) -> KannelReply {
    let mut req = reqwest::Client::new().post(format!("{url}/sms/kannel?{query}")).body(body);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    kannel_reply(req.send().await.unwrap()).await
}

/// A phone texting the service through Kannel (`get-url = ".../sms/kannel?from=%p&to=%P&text=%a&id=%I"`).
pub struct SmsPhone {
    pub url: String,
    /// As Kannel gives `%p` (here `+84…`).
    pub phone: String,
    /// The short code texted (`%P`).
    pub to: String,
}

impl SmsPhone {
    pub fn new(url: &str, phone: &str) -> SmsPhone {
        SmsPhone { url: url.into(), phone: phone.into(), to: "8088".into() }
    }

    /// A fresh message id, like Kannel's `%I` (a UUID).
    pub fn new_id() -> String {
        static IDS: AtomicU32 = AtomicU32::new(0);
        let n = IDS.fetch_add(1, Ordering::SeqCst);
        format!("{:08x}-0000-4000-8000-{:012x}", std::process::id(), n)
    }

    /// Texts `text` with message id `id`: what Kannel got back.
    pub async fn send_as(&self, id: &str, text: &str) -> KannelReply {
        get_kannel(&self.url, &[("from", &self.phone), ("to", &self.to), ("text", text), ("id", id)]).await
    }

    /// Texts `text` (a new message id): the reply SMS, which must be a 200 with a body.
    pub async fn send(&self, text: &str) -> String {
        let r = self.send_as(&Self::new_id(), text).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(!r.body.trim().is_empty(), "an empty reply for {:?}", self.phone);
        r.body
    }
}

/// Folded, for comparing texts regardless of diacritics.
pub fn fold(s: &str) -> String {
    fold_diacritics(s)
}

/// The release-like binary, started as an operator would, for crash and log tests.
pub struct Proc {
    pub child: std::process::Child,
    pub url: String,
    /// The server's log file, shown when it does not stop cleanly.
    pub log: Option<PathBuf>,
}

impl Proc {
    pub async fn spawn(data: &Path, outbox: &Path, log: &Path, log_level: &str) -> Proc {
        Proc::spawn_with(data, outbox, log, log_level, &[], &[]).await
    }

    /// As [`Proc::spawn`], with more `serve` flags and environment variables.
    pub async fn spawn_with(
        data: &Path,
        outbox: &Path,
        log: &Path,
        log_level: &str,
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let log_path = log.to_path_buf();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_kichhoat"))
            .arg("serve")
            .args(flags)
            .envs(env.iter().copied())
            .args(["--listen", &addr])
            .arg("--data-dir")
            .arg(data)
            .arg("--sms-outbox")
            .arg(outbox)
            .arg("--registry")
            .arg(repo().join("fixtures/registry.csv"))
            .arg("--flows")
            .arg(repo().join("flows"))
            .env("KICHHOAT_LOG", log_level)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut proc = Proc::adopt(child, format!("http://{addr}")).await;
        proc.log = Some(log_path);
        proc
    }

    /// Waits for a started server to answer its health check.
    pub async fn adopt(child: std::process::Child, url: String) -> Proc {
        let proc = Proc { child, url, log: None };
        for _ in 0..200 {
            if let Ok(r) = reqwest::get(format!("{}/healthz", proc.url)).await {
                if r.status() == 200 {
                    return proc;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("server did not start");
    }

    /// kill -9: no chance to flush anything.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and wait for the clean shutdown.
    pub fn terminate(mut self) {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        if !status.success() {
            let log = self.log.as_ref().and_then(|l| std::fs::read_to_string(l).ok()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!("clean shutdown on SIGTERM: {status:?}; the server's last log lines:\n{}", tail.join("\n"));
        }
    }
}

/// Waits until the outbox file has `n` lines (the delivery worker runs in the background).
pub async fn wait_outbox(path: &Path, n: usize) -> Vec<OutboxLine> {
    for _ in 0..200 {
        let lines = read_outbox(path);
        if lines.len() >= n {
            return lines;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    read_outbox(path)
}

/// A delivery round of the background worker (it sleeps 1 s between rounds) and some margin.
pub const WORKER_ROUND: std::time::Duration = std::time::Duration::from_millis(1500);

/// The outbox once it has `n` lines and a worker round more has passed: a duplicate written after the
/// n-th line (a message delivered twice, a claim released and delivered again) has had its chance to
/// appear. Asserting "no second SMS" on what [`wait_outbox`] returns would check it the instant the
/// first arrived.
pub async fn settled_outbox(path: &Path, n: usize) -> Vec<OutboxLine> {
    wait_outbox(path, n).await;
    tokio::time::sleep(WORKER_ROUND).await;
    read_outbox(path)
}

impl Drop for Proc {
    /// A failing test must not leave a server behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch folder with the paths a spawned server uses: (folder, data dir, outbox, log).
pub fn scratch() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (data, outbox, log) = (dir.path().join("data"), dir.path().join("outbox.jsonl"), dir.path().join("server.log"));
    (dir, data, outbox, log)
}
