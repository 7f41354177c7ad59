//! Transcripts are the spec: each file in `fixtures/transcripts/` is a conversation (dials, inputs, clock
//! moves) with what the citizen sees (CON/END and words, compared without diacritics) and the SMS that
//! must (and must not) go out. Every transcript runs twice, as two tests named after its file (see
//! `transcripts!`):
//! - against the pure engine, writing the session out as JSON and reading it back between every turn;
//! - against the real HTTP server on a random port, driven as Africa's Talking drives it.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use rand::SeedableRng;
use serde::Deserialize;

use kichhoat::channel::africastalking::response;
use kichhoat::clock::Millis;
use kichhoat::crypto::{Crypto, HashCost};
use kichhoat::domain::{Msisdn, NationalId, Secret};
use kichhoat::engine::{Account, Citizen, Ctx, Directory, DirectoryError, Effect, Inbound, Medium, Policy, Session};
use kichhoat::flow::catalog::to_gsm7;
use kichhoat::flow::{Charset, Flow};
use kichhoat::limits::{self, CounterKey, Tally};

use crate::helpers::{fold, otp_in, repo, AtPhone, TestServer, T0};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Transcript {
    name: String,
    /// The phone calling.
    phone: String,
    turn: Vec<Turn>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Turn {
    /// Start a new USSD session (empty text).
    #[serde(default)]
    dial: bool,
    /// Type this at the current prompt. `{otp}` is the last code received, `{otp_prev}` the one before.
    send: Option<String>,
    /// Move the clock forward first, e.g. "4m", "16m".
    advance: Option<String>,
    /// "CON" or "END".
    expect: String,
    #[serde(default)]
    contains: Vec<String>,
    #[serde(default)]
    not_contains: Vec<String>,
    /// How many SMS this turn sends (0 unless given).
    #[serde(default)]
    sms: usize,
    sms_to: Option<String>,
    #[serde(default)]
    sms_contains: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    note: Option<String>,
}

/// The transcript file a test is named after: test `t01_activation_happy_path` runs
/// `fixtures/transcripts/01_activation_happy_path.toml` (a Rust name cannot start with a digit).
fn file_of(test: &str) -> String {
    format!("{}.toml", test.strip_prefix('t').unwrap_or(test))
}

fn load(file: &str) -> Transcript {
    let path = repo().join("fixtures/transcripts").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn duration(s: &str) -> Duration {
    humantime::parse_duration(s).unwrap_or_else(|e| panic!("bad duration {s:?}: {e}"))
}

/// What one turn showed: the carrier response and the SMS sent during it (to, text).
pub struct Seen {
    pub response: String,
    pub sms: Vec<(String, String)>,
}

trait Driver {
    async fn advance(&mut self, d: Duration);
    async fn dial(&mut self) -> Seen;
    async fn send(&mut self, input: &str) -> Seen;
}

async fn run(file: &str, t: &Transcript, driver: &mut impl Driver, via: &str) {
    let mut otps: Vec<String> = Vec::new();
    for (i, turn) in t.turn.iter().enumerate() {
        let at = format!("{file} ({}) turn {} via {via}", t.name, i + 1);
        if let Some(a) = &turn.advance {
            driver.advance(duration(a)).await;
        }
        let seen = match (&turn.send, turn.dial) {
            (None, true) => driver.dial().await,
            (Some(input), false) => {
                let last = otps.last().cloned().unwrap_or_default();
                let prev = otps.len().checked_sub(2).and_then(|i| otps.get(i)).cloned().unwrap_or_default();
                let input = input.replace("{otp_prev}", &prev).replace("{otp}", &last);
                driver.send(&input).await
            }
            _ => panic!("{at}: a turn either dials or sends"),
        };
        let shown = fold(&seen.response);
        assert!(shown.starts_with(&format!("{} ", turn.expect)), "{at}: expected {}, got {shown:?}", turn.expect);
        for c in &turn.contains {
            assert!(shown.contains(&fold(c)), "{at}: {shown:?} should contain {c:?}");
        }
        for c in &turn.not_contains {
            assert!(!shown.contains(&fold(c)), "{at}: {shown:?} should not contain {c:?}");
        }
        assert_eq!(seen.sms.len(), turn.sms, "{at}: SMS sent: {:?}", seen.sms.iter().map(|s| &s.0).collect::<Vec<_>>());
        for (to, text) in &seen.sms {
            if let Some(want) = &turn.sms_to {
                assert_eq!(to, want, "{at}: SMS recipient");
            }
            for c in &turn.sms_contains {
                assert!(fold(text).contains(&fold(c)), "{at}: SMS {text:?} should contain {c:?}");
            }
            assert!(!text.contains("http") && !text.contains("www."), "{at}: SMS carry no links");
            if let Some(code) = otp_in(text) {
                otps.push(code);
            }
        }
    }
}

// ---- the pure engine, session round-tripped through JSON on every turn ----

#[derive(Default)]
struct MemDirectory {
    citizens: HashMap<String, Citizen>,
    accounts: HashMap<String, Account>,
    counters: HashMap<CounterKey, Tally>,
}

impl Directory for MemDirectory {
    fn citizen(&self, id: &NationalId) -> Result<Option<Citizen>, DirectoryError> {
        Ok(self.citizens.get(id.as_str()).cloned())
    }
    fn account(&self, id: &NationalId) -> Result<Option<Account>, DirectoryError> {
        Ok(self.accounts.get(id.as_str()).cloned())
    }
    fn tally(&self, key: &CounterKey) -> Result<Tally, DirectoryError> {
        Ok(self.counters.get(key).cloned().unwrap_or_default())
    }
}

pub struct EngineDriver {
    flow: Flow,
    crypto: Crypto,
    dir: MemDirectory,
    saved: Option<String>,
    now: Millis,
    rng: rand::rngs::StdRng,
    caller: Msisdn,
    policy: Policy,
}

impl EngineDriver {
    pub fn new(phone: &str) -> EngineDriver {
        let mut dir = MemDirectory::default();
        let csv = std::fs::read_to_string(repo().join("fixtures/registry.csv")).unwrap();
        for line in csv.lines().skip(1) {
            let fields: Vec<&str> = line.split(',').collect();
            let c = kichhoat::registry::parse_row(&fields).unwrap();
            dir.citizens.insert(c.national_id.as_str().to_string(), c);
        }
        EngineDriver {
            flow: Flow::load(&repo().join("flows")).unwrap(),
            crypto: Crypto::from_master(&[9; 32], HashCost::DANGER_TEST_ONLY).unwrap(),
            dir,
            saved: None,
            now: T0,
            rng: rand::rngs::StdRng::seed_from_u64(7),
            caller: Msisdn::parse(phone).unwrap(),
            policy: Policy::default(),
        }
    }

    /// The state the saved session stands at.
    pub fn state(&self) -> String {
        self.saved.as_deref().map(|j| serde_json::from_str::<Session>(j).unwrap().state).unwrap_or_default()
    }

    pub fn advance_now(&mut self, d: Duration) {
        self.now = self.now.plus(d);
    }

    pub fn step(&mut self, inbound: Inbound) -> Seen {
        let session: Option<Session> = self.saved.as_deref().map(|j| serde_json::from_str(j).unwrap());
        let ctx = Ctx {
            flow: &self.flow,
            directory: &self.dir,
            crypto: &self.crypto,
            now: self.now,
            caller: &self.caller,
            medium: Medium::Ussd,
            policy: &self.policy,
        };
        let turn = kichhoat::engine::step(&ctx, session, inbound, &mut self.rng).unwrap();
        self.saved = Some(serde_json::to_string(&turn.session).unwrap());
        let mut sms = Vec::new();
        for e in turn.effects {
            match e {
                Effect::Sms { to, body, .. } => sms.push((to.e164(), to_gsm7(body.expose()))),
                Effect::Activate(a) => {
                    self.dir.accounts.insert(a.national_id.as_str().to_string(), a);
                }
                Effect::Count(bump) => {
                    // One conversation at a time: the engine's read is exact, so the rule must agree.
                    let old = self.dir.counters.get(&bump.key).cloned().unwrap_or_default();
                    let (next, effect) = limits::apply(&bump.rule, &old, self.now).unwrap();
                    assert_eq!(effect, bump.expect);
                    self.dir.counters.insert(bump.key, next);
                }
                Effect::Rehash(r) => {
                    if let Some(a) = self.dir.accounts.get_mut(r.national_id.as_str()) {
                        a.password_hash = r.new;
                    }
                }
                Effect::Audit(_) => {}
            }
        }
        Seen { response: response(&turn.reply, Charset::Gsm7), sms }
    }
}

impl Driver for EngineDriver {
    async fn advance(&mut self, d: Duration) {
        self.now = self.now.plus(d);
    }
    async fn dial(&mut self) -> Seen {
        self.step(Inbound::Start { choices: Vec::new() })
    }
    async fn send(&mut self, input: &str) -> Seen {
        self.step(Inbound::Text(Secret::new(input)))
    }
}

// ---- the real server over HTTP ----

struct ServerDriver {
    server: TestServer,
    phone: AtPhone,
    seen_sms: usize,
}

impl ServerDriver {
    async fn collect(&mut self, response: String) -> Seen {
        let lines = self.server.outbox().await;
        let sms = lines[self.seen_sms..].iter().map(|l| (l.to.clone(), l.text.clone())).collect();
        self.seen_sms = lines.len();
        Seen { response, sms }
    }
}

impl Driver for ServerDriver {
    async fn advance(&mut self, d: Duration) {
        self.server.clock.advance(d);
    }
    async fn dial(&mut self) -> Seen {
        let r = self.phone.dial().await;
        self.collect(r).await
    }
    async fn send(&mut self, input: &str) -> Seen {
        let r = self.phone.send(input).await;
        self.collect(r).await
    }
}

async fn on_engine(file: &str) {
    let t = load(file);
    let mut d = EngineDriver::new(&t.phone);
    run(file, &t, &mut d, "engine").await;
}

async fn on_http(file: &str) {
    let t = load(file);
    let server = TestServer::start().await;
    let phone = AtPhone::new(&server.url, &Msisdn::parse(&t.phone).unwrap().e164());
    let mut d = ServerDriver { server, phone, seen_sms: 0 };
    run(file, &t, &mut d, "http").await;
    d.server.stop().await;
}

/// One test per transcript and driver, so a failing transcript hides none of the others:
/// `transcripts::engine::t01_activation_happy_path` and `transcripts::http::t01_activation_happy_path`.
/// Each name is the file's, see [`file_of`].
macro_rules! transcripts {
    ($($test:ident),* $(,)?) => {
        /// The tests, by name, for [`every_transcript_file_has_a_test_and_every_test_a_file`].
        const LISTED: &[&str] = &[$(stringify!($test)),*];

        /// Against the pure engine, the session round-tripped through JSON on every turn.
        mod engine {
            $(
                #[tokio::test]
                async fn $test() {
                    super::on_engine(&super::file_of(stringify!($test))).await;
                }
            )*
        }

        /// Against the HTTP server, driven as Africa's Talking drives it.
        mod http {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::on_http(&super::file_of(stringify!($test))).await;
                }
            )*
        }
    };
}

transcripts! {
    t01_activation_happy_path,
    t02_unknown_and_mismatch_look_alike,
    t03_pending,
    t04_otp_wrong_five_times,
    t05_otp_expired,
    t06_otp_resend,
    t07_password_and_passcode_rules,
    t08_idle_starts_over,
    t09_english_and_help,
    t10_malformed_id_refused,
    t11_login_refusals,
    t12_typed_phone_forms,
    t13_otp_valid_until_three_minutes,
    t14_too_many_refusals_keep_the_activation,
}

#[test]
fn every_transcript_file_has_a_test_and_every_test_a_file() {
    let dir = repo().join("fixtures/transcripts");
    let files: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|name| name.ends_with(".toml"))
        .collect();
    let tested: BTreeSet<String> = LISTED.iter().map(|t| file_of(t)).collect();
    assert_eq!(tested.len(), LISTED.len(), "a transcript listed twice: {LISTED:?}");
    let untested: Vec<_> = files.difference(&tested).collect();
    let missing: Vec<_> = tested.difference(&files).collect();
    assert!(untested.is_empty(), "transcripts without a test (add them to `transcripts!`): {untested:?}");
    assert!(missing.is_empty(), "tests without a transcript in {}: {missing:?}", dir.display());
}
