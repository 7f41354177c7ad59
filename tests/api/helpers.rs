//! Shared test plumbing: an in-process server on a random port with an injected clock, an Africa's
//! Talking client that builds cumulative `text` like the aggregator does, and the outbox reader.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kichhoat::app::App;
use kichhoat::clock::{Clock, ManualClock, Millis};
use kichhoat::config::{Common, Settings};
use kichhoat::crypto::HashCost;
use kichhoat::domain::text::fold_diacritics;
use kichhoat::flow::Charset;
use kichhoat::sms::file::OutboxLine;

/// 2026-11-29T00:00:00Z: a fixed start for injected clocks.
pub const T0: Millis = Millis(1_795_996_800_000);

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn settings(data_dir: &Path) -> Settings {
    let common = Common {
        flows: repo().join("flows"),
        registry: repo().join("fixtures/registry.csv"),
        key_file: None,
        ussd_charset: Charset::Gsm7,
    };
    Settings::new(data_dir.to_path_buf(), None, &common)
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
        let clock = Arc::new(ManualClock::new(T0));
        let app = App::open(
            &settings,
            clock.clone() as Arc<dyn Clock>,
            HashCost::DANGER_TEST_ONLY,
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let router = kichhoat::http::router(app.service.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        TestServer {
            url,
            clock,
            app: Some(app),
            outbox: settings.sms_outbox.clone(),
            dir,
            server,
        }
    }

    pub fn app(&self) -> &App {
        self.app.as_ref().unwrap()
    }

    /// Delivers queued SMS now (the worker would within a second) and returns every line of the outbox.
    pub async fn outbox(&self) -> Vec<OutboxLine> {
        let app = self.app();
        kichhoat::sms::worker::deliver_pending(
            app.store.as_ref(),
            &app.service.crypto,
            app.sender.as_ref(),
        )
        .await
        .unwrap();
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
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
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
        AtPhone {
            url: url.into(),
            phone: phone.into(),
            session: String::new(),
            inputs: Vec::new(),
            dials: 0,
        }
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
        self.dials += 1;
        self.session = format!(
            "ATUid_{}_{}_{}",
            self.phone.trim_start_matches('+'),
            self.dials,
            std::process::id()
        );
        self.inputs.clear();
        let (status, body) = self.hop().await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn send(&mut self, input: &str) -> String {
        self.inputs.push(input.to_string());
        let (status, body) = self.hop().await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

/// Folded, for comparing texts regardless of diacritics.
pub fn fold(s: &str) -> String {
    fold_diacritics(s)
}
