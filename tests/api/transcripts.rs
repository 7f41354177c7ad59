//! Transcripts are the spec: each file in `fixtures/transcripts/` is a conversation (dials, inputs, clock
//! moves) with what the citizen sees (CON/END and words, compared without diacritics) and the SMS that
//! must (and must not) go out. A transcript is over USSD unless it says `channel = "sms"`: then every
//! turn is an SMS the citizen sends (`send`, never `dial`), and CON/END say whether the reply SMS waits
//! for an answer or ends the exchange, read from what it says can be texted next. Every transcript runs
//! three times, as three tests named after its file (see `transcripts!`):
//! - against the pure engine, writing the session out as JSON and reading it back between every turn
//!   (over SMS, the engine input is derived by the Kannel channel's own logic, its cursor kept between
//!   turns as the service keeps it);
//! - against the real HTTP server on a random port, driven as Africa's Talking (USSD) or Kannel (SMS)
//!   drives it, on sled;
//! - the same on PostgreSQL (a fresh database of the tests' throwaway cluster, [`crate::pg`]).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use rand::SeedableRng;
use serde::Deserialize;

use std::sync::Arc;

use kichhoat::channel::africastalking::response;
use kichhoat::channel::kannel::{self, Kannel, Mo};
use kichhoat::channel::{Channel, Derived};
use kichhoat::clock::Millis;
use kichhoat::crypto::{Crypto, HashCost};
use kichhoat::domain::{Msisdn, NationalId, Secret};
use kichhoat::engine::{
    keys, Account, Citizen, Ctx, Directory, DirectoryError, Effect, Inbound, Medium, Policy, Session, Site,
};
use kichhoat::flow::catalog::to_gsm7;
use kichhoat::flow::{Charset, Flow, Lang};
use kichhoat::limits::{self, CounterKey, Tally};
use kichhoat::store::Cursor;

use crate::helpers::{fold, otp_in, repo, AtPhone, SmsPhone, TestServer, T0};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Transcript {
    name: String,
    /// The phone calling.
    phone: String,
    /// How the citizen talks to the service: `ussd` (the default) or `sms`.
    #[serde(default)]
    channel: Via,
    /// `--ussd-code` (default `*384#`).
    ussd_code: Option<String>,
    /// `--help-phone` (default: none).
    help_phone: Option<String>,
    turn: Vec<Turn>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Via {
    #[default]
    Ussd,
    Sms,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Turn {
    /// Start a new USSD session (empty text). Not over SMS.
    #[serde(default)]
    dial: bool,
    /// Start a new USSD session with inputs in the code: `"1*001099012345"` for `*384*1*001099012345#`.
    fast_dial: Option<String>,
    /// Type this at the current prompt. `{otp}` is the last code received, `{otp_prev}` the one before.
    send: Option<String>,
    /// Move the clock forward first, e.g. "4m", "16m".
    advance: Option<String>,
    /// "CON" or "END" (over SMS: the reply waits for an answer, or ends the exchange).
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
    async fn fast_dial(&mut self, inputs: &str) -> Seen;
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
            (None, true) | (None, false) if t.channel == Via::Sms => panic!("{at}: an SMS transcript only sends"),
            (None, true) => driver.dial().await,
            (None, false) => match &turn.fast_dial {
                Some(inputs) => driver.fast_dial(inputs).await,
                None => panic!("{at}: a turn dials, fast-dials or sends"),
            },
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

/// Whether an SMS reply ends the exchange, read from its last line as the citizen reads it: "text
/// anything to open the menu" (END) or "reply to this message, MENU, HUY, TRO GIUP" (it waits). A reply
/// that says neither fails the test: every SMS reply says what can be texted next.
pub fn sms_ends(flow: &Flow, body: &str) -> bool {
    let body = fold(body);
    for lang in Lang::ALL {
        let cat = flow.catalog(lang);
        if body.ends_with(&fold(cat.get_for(Medium::Sms, keys::SMS_AGAIN))) {
            return true;
        }
        if body.ends_with(&fold(cat.get_for(Medium::Sms, keys::SMS_MORE))) {
            return false;
        }
    }
    panic!("an SMS reply that does not say what can be texted next: {body:?}");
}

/// An SMS reply as a transcript compares it: `CON`/`END` (from what it says can be texted next), the body.
fn sms_seen(flow: &Flow, body: &str) -> String {
    format!("{} {body}", if sms_ends(flow, body) { "END" } else { "CON" })
}

pub struct EngineDriver {
    flow: Flow,
    crypto: Arc<Crypto>,
    dir: MemDirectory,
    saved: Option<String>,
    now: Millis,
    rng: rand::rngs::StdRng,
    caller: Msisdn,
    medium: Medium,
    /// Over SMS: the Kannel channel's logic and its cursor, kept between turns as the service keeps it.
    kannel: Kannel,
    cursor: Option<Cursor>,
    policy: Policy,
    site: Site,
}

impl EngineDriver {
    pub fn new(phone: &str) -> EngineDriver {
        Self::on(phone, Medium::Ussd)
    }

    /// A driver for a conversation over `medium` (over SMS, each `send` is one SMS).
    pub fn on(phone: &str, medium: Medium) -> EngineDriver {
        let mut dir = MemDirectory::default();
        let csv = std::fs::read_to_string(repo().join("fixtures/registry.csv")).unwrap();
        for line in csv.lines().skip(1) {
            let fields: Vec<&str> = line.split(',').collect();
            let c = kichhoat::registry::parse_row(&fields).unwrap();
            dir.citizens.insert(c.national_id.as_str().to_string(), c);
        }
        let crypto = Arc::new(Crypto::from_master(&[9; 32], HashCost::DANGER_TEST_ONLY).unwrap());
        EngineDriver {
            flow: Flow::load(&repo().join("flows")).unwrap(),
            kannel: Kannel::new(crypto.clone()),
            crypto,
            dir,
            saved: None,
            now: T0,
            rng: rand::rngs::StdRng::seed_from_u64(7),
            caller: Msisdn::parse(phone).unwrap(),
            medium,
            cursor: None,
            policy: Policy::default(),
            site: Site::default(),
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
        let (reply, sms) = self.step_reply(inbound);
        Seen { response: response(&reply, Charset::Gsm7), sms }
    }

    /// One SMS from the citizen: the Kannel channel derives the engine input from its cursor, the engine
    /// answers over SMS, and the cursor advances, as a turn of the service does.
    pub fn text(&mut self, text: &str) -> Seen {
        let sms =
            Mo { from: Some(self.caller.e164()), text: Some(Secret::new(text)), ..Mo::default() }.parse().unwrap();
        let inbound = match self.kannel.derive(&sms, self.cursor.as_ref(), None) {
            Derived::Inbound(i) => i,
            other => panic!("an SMS without a stored reply derived {other:?}"),
        };
        let (reply, out) = self.step_reply(inbound);
        self.cursor = self.kannel.advance(&sms, self.cursor.as_ref(), &reply);
        let (body, _) = kannel::response(&reply, Charset::Gsm7);
        assert_eq!(sms_ends(&self.flow, &body), reply.end, "what the reply says can be texted next: {body:?}");
        Seen { response: sms_seen(&self.flow, &body), sms: out }
    }

    fn step_reply(&mut self, inbound: Inbound) -> (kichhoat::engine::Reply, Vec<(String, String)>) {
        let session: Option<Session> = self.saved.as_deref().map(|j| serde_json::from_str(j).unwrap());
        let ctx = Ctx {
            flow: &self.flow,
            directory: &self.dir,
            crypto: &self.crypto,
            now: self.now,
            caller: &self.caller,
            medium: self.medium,
            policy: &self.policy,
            site: &self.site,
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
                Effect::UpdateAccount(u) => {
                    let account = self.dir.accounts.get_mut(u.national_id.as_str());
                    assert!(
                        u.apply(account).is_some(),
                        "one conversation at a time: the account is as the step read it"
                    );
                }
                Effect::Audit(_) => {}
            }
        }
        (turn.reply, sms)
    }
}

impl Driver for EngineDriver {
    async fn advance(&mut self, d: Duration) {
        self.now = self.now.plus(d);
    }
    async fn dial(&mut self) -> Seen {
        self.step(Inbound::Start { choices: Vec::new() })
    }
    async fn fast_dial(&mut self, inputs: &str) -> Seen {
        self.step(Inbound::Start { choices: inputs.split('*').map(Secret::new).collect() })
    }
    async fn send(&mut self, input: &str) -> Seen {
        match self.medium {
            Medium::Ussd => self.step(Inbound::Text(Secret::new(input))),
            Medium::Sms => self.text(input),
        }
    }
}

// ---- the real server over HTTP ----

struct ServerDriver {
    server: TestServer,
    phone: Phone,
    seen_sms: usize,
}

/// The citizen's phone, as the transcript's channel reaches the server.
enum Phone {
    Ussd(AtPhone),
    /// Over Kannel, with the flow to read what each reply says can be texted next.
    Sms(SmsPhone, Box<Flow>),
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
        let r = match &mut self.phone {
            Phone::Ussd(p) => p.dial().await,
            Phone::Sms(..) => panic!("an SMS transcript only sends"),
        };
        self.collect(r).await
    }
    async fn fast_dial(&mut self, inputs: &str) -> Seen {
        let r = match &mut self.phone {
            Phone::Ussd(p) => p.fast_dial(inputs).await,
            Phone::Sms(..) => panic!("an SMS transcript only sends"),
        };
        self.collect(r).await
    }
    async fn send(&mut self, input: &str) -> Seen {
        let r = match &mut self.phone {
            Phone::Ussd(p) => p.send(input).await,
            Phone::Sms(p, flow) => sms_seen(flow, &p.send(input).await),
        };
        self.collect(r).await
    }
}

fn site_of(t: &Transcript) -> Site {
    let mut site = Site::default();
    if let Some(code) = &t.ussd_code {
        site.ussd_code = code.clone();
    }
    site.help_phone = t.help_phone.clone();
    site
}

async fn on_engine(file: &str) {
    let t = load(file);
    let medium = match t.channel {
        Via::Ussd => Medium::Ussd,
        Via::Sms => Medium::Sms,
    };
    let mut d = EngineDriver::on(&t.phone, medium);
    d.site = site_of(&t);
    run(file, &t, &mut d, "engine").await;
}

async fn on_http(file: &str) {
    on_server(file, false).await;
}

/// Against the HTTP server on a fresh PostgreSQL database of the test cluster ([`crate::pg`]).
async fn on_postgres(file: &str) {
    on_server(file, true).await;
}

async fn on_server(file: &str, postgres: bool) {
    let t = load(file);
    let dir = tempfile::tempdir().unwrap();
    let mut settings = crate::helpers::settings(dir.path());
    settings.site = site_of(&t);
    if postgres {
        let Some(cluster) = crate::pg::cluster() else { return };
        settings.store = cluster.new_database().parse().unwrap();
    }
    let server = TestServer::start_with(dir, settings).await;
    let e164 = Msisdn::parse(&t.phone).unwrap().e164();
    let phone = match t.channel {
        Via::Ussd => Phone::Ussd(AtPhone::new(&server.url, &e164)),
        Via::Sms => Phone::Sms(SmsPhone::new(&server.url, &e164), Box::new(Flow::load(&repo().join("flows")).unwrap())),
    };
    let mut d = ServerDriver { server, phone, seen_sms: 0 };
    run(file, &t, &mut d, "http").await;
    d.server.stop().await;
}

/// One test per transcript and driver, so a failing transcript hides none of the others:
/// `transcripts::engine::t01_activation_happy_path`, `transcripts::http::t01_activation_happy_path` and
/// `transcripts::postgres::t01_activation_happy_path` (the server on PostgreSQL).
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

        /// Against the HTTP server, driven as Africa's Talking (or Kannel, over SMS) drives it.
        mod http {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::on_http(&super::file_of(stringify!($test))).await;
                }
            )*
        }

        /// The same against the server on PostgreSQL instead of sled.
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::on_postgres(&super::file_of(stringify!($test))).await;
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
    t15_sms_activation,
    t16_sms_keywords,
    t17_sms_refusals_and_idle,
    t18_login_retries_and_lock_time,
    t19_leave_and_come_back,
    t20_fast_dial_activation,
    t21_forgot_password,
    t22_forgot_password_refusals,
    t23_forgot_passcode,
    t24_otp_caps_say_until_when,
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
