//! Every action keeps to what it declares in `vocab`, and everything it declares happens: each action is
//! driven through the situations that produce each of its outcomes (and notices, reasons and resume
//! notices), with the shipped flows, test-cost hashing and an in-memory directory; the sets seen per action
//! must equal the declared sets. An undeclared result fails the run (the guard in `run` refuses it), and a
//! declared one that no situation produces fails the comparison, so a declaration cannot drift from code.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::{declared, resume_note, run, Act, OTP_LIFETIME, OTP_MAX_SENDS, OTP_MAX_WRONG, QUESTIONS_REQUIRED};
use crate::clock::Millis;
use crate::crypto::{Crypto, HashCost};
use crate::domain::{Msisdn, NationalId, Secret};
use crate::engine::policy::{Policy, Pool};
use crate::engine::validators::parse;
use crate::engine::{
    Account, Citizen, CitizenStatus, Ctx, Directory, DirectoryError, Effect, EngineError, Out, Session, SmsPurpose,
};
use crate::flow::{Flow, Kind};
use crate::limits::{self, CounterKey, Rule, Tally};
use crate::vocab::{keys, ActionKind, Medium};

/// 2026-11-29T00:00:00Z.
const T0: Millis = Millis(1_795_996_800_000);
const ID: &str = "001099012345";
const PHONE: &str = "0912345678";
const OTHER_ID: &str = "001199012346";
const OTHER_PHONE: &str = "0987654321";
const PENDING_ID: &str = "031300012348";
const PENDING_PHONE: &str = "0358123456";
const UNKNOWN_ID: &str = "001099099999";
const PASSWORD: &str = "Abc*1234x";
const PASSCODE: &str = "258147";

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

/// What one action was seen to do.
#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    outcomes: BTreeSet<&'static str>,
    notices: BTreeSet<(&'static str, &'static str)>,
    reasons: BTreeSet<&'static str>,
    resume_notices: BTreeSet<&'static str>,
}

impl Seen {
    fn declared(kind: ActionKind) -> Seen {
        let spec = kind.spec();
        Seen {
            outcomes: spec.outcomes.iter().copied().collect(),
            notices: spec.notices.iter().copied().collect(),
            reasons: spec.reasons.iter().copied().collect(),
            resume_notices: spec.resume_notices.iter().copied().collect(),
        }
    }
}

type Record = BTreeMap<ActionKind, Seen>;

/// One situation: the shipped flows, a registry of three citizens, a clock and a seeded rng.
struct Bench<'r> {
    flow: Flow,
    crypto: Crypto,
    dir: MemDirectory,
    now: Millis,
    caller: Msisdn,
    policy: Policy,
    rng: StdRng,
    last_otp: String,
    seen: &'r mut Record,
}

fn citizen(id: &str, phone: &str, status: CitizenStatus) -> (String, Citizen) {
    let c = Citizen {
        national_id: NationalId::parse_shape(id).unwrap(),
        phone: Msisdn::parse(phone).unwrap(),
        full_name: "Nguyễn Văn An".into(),
        status,
    };
    (id.to_string(), c)
}

/// The first run of exactly six digits in an SMS: the code.
fn code_in(text: &str) -> Option<String> {
    text.split(|c: char| !c.is_ascii_digit()).find(|run| run.len() == 6).map(str::to_string)
}

impl<'r> Bench<'r> {
    fn new(seen: &'r mut Record) -> Bench<'r> {
        let dir = MemDirectory {
            citizens: HashMap::from([
                citizen(ID, PHONE, CitizenStatus::Approved),
                citizen(OTHER_ID, OTHER_PHONE, CitizenStatus::Approved),
                citizen(PENDING_ID, PENDING_PHONE, CitizenStatus::Pending),
            ]),
            ..MemDirectory::default()
        };
        Bench {
            flow: Flow::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("flows")).unwrap(),
            crypto: Crypto::from_master(&[9; 32], HashCost::DANGER_TEST_ONLY).unwrap(),
            dir,
            now: T0,
            caller: Msisdn::parse(PHONE).unwrap(),
            // Generous caps: a bench sends many codes for one ID; the caps' own tests fill their counters.
            policy: Policy {
                otp_per_id_15min: 1000,
                otp_per_id_day: 1000,
                wrong_codes_per_id_day: 1000,
                lookups_per_caller_hour: 1000,
                lookups_per_caller_day: 1000,
                failed_lookups_per_caller_hour: 1000,
                failed_lookups_per_id_day: 1000,
                ..Policy::default()
            },
            rng: StdRng::seed_from_u64(7),
            last_otp: String::new(),
            seen,
        }
    }

    /// Fills the counter of `limited` up to its rule's cap at `now`.
    fn fill(&mut self, (key, rule): (CounterKey, Rule), now: Millis) {
        let mut tally = Tally::default();
        while let Ok((next, _)) = limits::apply(&rule, &tally, now) {
            tally = next;
        }
        self.dir.counters.insert(key, tally);
    }

    fn session(&self) -> Session {
        Session::new(&self.flow, self.now)
    }

    /// Runs `kind` on `entry` (parsed by the action's validator, which must accept it), records what it
    /// decided and applies its effects to the directory, as a commit would.
    fn act(&mut self, s: &mut Session, kind: ActionKind, entry: Option<&str>) -> Act {
        let ctx = Ctx {
            flow: &self.flow,
            directory: &self.dir,
            crypto: &self.crypto,
            now: self.now,
            caller: &self.caller,
            medium: Medium::Ussd,
            policy: &self.policy,
            site: &crate::engine::Site::default(),
        };
        let mut out = Out { effects: Vec::new(), args: Vec::new(), took_secret: false, until: None, lookup: false };
        let raw = entry.map(Secret::new);
        let value = match (kind.input(), &raw) {
            (Some(v), Some(raw)) => {
                let value = parse(v, raw, s, &ctx).unwrap_or_else(|r| panic!("{kind:?}: {entry:?} refused: {r}"));
                Some((value, raw))
            }
            (None, None) => None,
            (input, _) => panic!("{kind:?} takes {input:?}, not {entry:?}"),
        };
        let act =
            run(kind, value, s, &ctx, &mut out, &mut self.rng).unwrap_or_else(|e| panic!("{kind:?} on {entry:?}: {e}"));
        let seen = self.seen.entry(kind).or_default();
        match act {
            Act::Go(outcome, notice) => {
                seen.outcomes.insert(outcome);
                if let Some(n) = notice {
                    seen.notices.insert((outcome, n));
                }
            }
            Act::Retry(reason) => {
                seen.reasons.insert(reason);
            }
        }
        for e in out.effects {
            match e {
                Effect::Sms { body, purpose: SmsPurpose::Otp, .. } => {
                    self.last_otp = code_in(body.expose()).unwrap();
                }
                Effect::Activate(a) => {
                    self.dir.accounts.insert(a.national_id.as_str().to_string(), a);
                }
                Effect::Count(bump) => {
                    let old = self.dir.counters.get(&bump.key).cloned().unwrap_or_default();
                    let (next, effect) = limits::apply(&bump.rule, &old, self.now).unwrap();
                    assert_eq!(effect, bump.expect, "{kind:?}: the engine predicted what the commit does");
                    self.dir.counters.insert(bump.key, next);
                }
                Effect::UpdateAccount(u) => {
                    let account = self.dir.accounts.get_mut(u.national_id.as_str());
                    assert!(
                        u.apply(account).is_some(),
                        "one conversation at a time: the account is as the step read it"
                    );
                }
                Effect::Sms { .. } | Effect::Audit(_) => {}
            }
        }
        act
    }

    /// Asks the state running `kind` for its resume note, as a new dial would, and records it.
    fn resume(&mut self, s: &Session, kind: ActionKind) -> Option<&'static str> {
        let state = self
            .flow
            .states
            .values()
            .find(|st| matches!(&st.kind, Kind::Input { input: Some((_, k)), .. } if *k == kind))
            .unwrap_or_else(|| panic!("no state runs {kind:?}"));
        let note = resume_note(state, s, self.now);
        if let Some(n) = note {
            self.seen.entry(kind).or_default().resume_notices.insert(n);
        }
        note
    }

    fn started(&mut self, id: &str) -> Session {
        let mut s = self.session();
        assert_eq!(self.act(&mut s, ActionKind::StartActivation, Some(id)), Act::Go("done", None));
        s
    }

    /// An activation of [`ID`] with a code sent to [`PHONE`].
    fn sent(&mut self) -> Session {
        let mut s = self.started(ID);
        assert_eq!(self.act(&mut s, ActionKind::RequestOtp, Some(PHONE)), Act::Go("sent", None));
        s
    }

    fn verified(&mut self) -> Session {
        let mut s = self.sent();
        let code = self.last_otp.clone();
        assert_eq!(self.act(&mut s, ActionKind::VerifyOtp, Some(&code)), Act::Go("ok", None));
        s
    }

    /// Verified, with password and passcode set and confirmed.
    fn credentials(&mut self) -> Session {
        let mut s = self.verified();
        assert_eq!(self.act(&mut s, ActionKind::ChoosePassword, Some(PASSWORD)), Act::Go("done", None));
        assert_eq!(self.act(&mut s, ActionKind::ConfirmPassword, Some(PASSWORD)), Act::Go("ok", None));
        assert_eq!(self.act(&mut s, ActionKind::ChoosePasscode, Some(PASSCODE)), Act::Go("done", None));
        assert_eq!(self.act(&mut s, ActionKind::ConfirmPasscode, Some(PASSCODE)), Act::Go("ok", None));
        s
    }

    /// Everything set: ready for `finish_activation`.
    fn answered(&mut self) -> Session {
        let mut s = self.credentials();
        for (n, answer) in (1..=QUESTIONS_REQUIRED).zip(["Mướp", "Hà Nội", "Phở", "Lan"]) {
            let question = n.to_string();
            assert_eq!(self.act(&mut s, ActionKind::ChooseQuestion, Some(&question)), Act::Go("done", None));
            let want = if n == QUESTIONS_REQUIRED { "done" } else { "more" };
            assert_eq!(self.act(&mut s, ActionKind::SetAnswer, Some(answer)), Act::Go(want, None));
        }
        s
    }

    fn login_session(&mut self, id: &str) -> Session {
        let mut s = self.session();
        assert_eq!(self.act(&mut s, ActionKind::StartLogin, Some(id)), Act::Go("done", None));
        s
    }
}

/// A code that is not `code`.
fn wrong(code: &str) -> String {
    if code == "000000" { "111111" } else { "000000" }.to_string()
}

fn language(seen: &mut Record) {
    let mut b = Bench::new(seen);
    let mut s = b.session();
    assert_eq!(b.act(&mut s, ActionKind::SwitchLanguage, None), Act::Go("done", None));
}

fn request(seen: &mut Record) {
    let mut b = Bench::new(seen);
    b.sent();
    for (id, phone, want) in
        [(UNKNOWN_ID, PHONE, "no_match"), (ID, OTHER_PHONE, "no_match"), (PENDING_ID, PENDING_PHONE, "pending")]
    {
        let mut s = b.started(id);
        assert_eq!(b.act(&mut s, ActionKind::RequestOtp, Some(phone)), Act::Go(want, None), "{id} {phone}");
    }
    // "1" is the number calling.
    let mut s = b.started(ID);
    assert_eq!(b.act(&mut s, ActionKind::RequestOtp, Some("1")), Act::Go("sent", None));

    let mut b = Bench::new(b.seen);
    let mut s = b.answered();
    assert_eq!(b.act(&mut s, ActionKind::FinishActivation, None), Act::Go("activated", None));
    let mut s = b.started(ID);
    assert_eq!(b.act(&mut s, ActionKind::RequestOtp, Some(PHONE)), Act::Go("already_active", None));

    let mut b = Bench::new(b.seen);
    let now = b.now;
    b.fill(b.policy.otp_phone(&Msisdn::parse(PHONE).unwrap(), Pool::Own), now);
    let mut s = b.started(ID);
    assert_eq!(b.act(&mut s, ActionKind::RequestOtp, Some(PHONE)), Act::Go("limit", None));

    // Too many lookups from this phone: refused before anything is looked up.
    let mut b = Bench::new(b.seen);
    let now = b.now;
    let caller = b.caller.clone();
    b.fill(b.policy.lookups(&caller)[0].clone(), now);
    let mut s = b.started(ID);
    assert_eq!(b.act(&mut s, ActionKind::RequestOtp, Some(PHONE)), Act::Go("rate_limited", None));
}

fn resend(seen: &mut Record) {
    let mut b = Bench::new(seen);
    let mut s = b.sent();
    for _ in 1..OTP_MAX_SENDS {
        assert_eq!(b.act(&mut s, ActionKind::ResendOtp, None), Act::Go("sent", Some(keys::NOTE_OTP_RESENT)));
    }
    assert_eq!(b.act(&mut s, ActionKind::ResendOtp, None), Act::Go("limit", None));

    // The phone's hourly allowance runs out before the activation's.
    let mut b = Bench::new(b.seen);
    let mut s = b.sent();
    let now = b.now;
    b.fill(b.policy.otp_phone(&Msisdn::parse(PHONE).unwrap(), Pool::Own), now);
    assert_eq!(b.act(&mut s, ActionKind::ResendOtp, None), Act::Go("limit", None));
}

fn verify(seen: &mut Record) {
    let mut b = Bench::new(seen);
    let s = b.verified();
    assert_eq!(b.resume(&s, ActionKind::VerifyOtp), Some(keys::NOTE_OTP_EXPIRED), "a used code is gone");

    let mut s = b.sent();
    assert_eq!(b.resume(&s, ActionKind::VerifyOtp), None, "a live code needs no note");
    let bad = wrong(&b.last_otp);
    for _ in 1..OTP_MAX_WRONG {
        assert_eq!(b.act(&mut s, ActionKind::VerifyOtp, Some(&bad)), Act::Retry(keys::ERR_OTP_WRONG));
    }

    assert_eq!(b.act(&mut s, ActionKind::VerifyOtp, Some(&bad)), Act::Go("exhausted", None));
    let code = b.last_otp.clone();
    assert_eq!(b.act(&mut s, ActionKind::VerifyOtp, Some(&code)), Act::Retry(keys::NOTE_OTP_EXPIRED), "voided");

    // The ID's wrong codes for the day are used up: the code is voided, whatever is typed.
    let mut b = Bench::new(b.seen);
    let mut s = b.sent();
    let (now, code) = (b.now, b.last_otp.clone());
    b.fill(b.policy.wrong_code(&NationalId::parse(ID, 2026).unwrap(), Pool::Own), now);
    assert_eq!(b.act(&mut s, ActionKind::VerifyOtp, Some(&code)), Act::Go("rate_limited", None));
    assert_eq!(b.act(&mut s, ActionKind::VerifyOtp, Some(&code)), Act::Retry(keys::NOTE_OTP_EXPIRED), "voided");
    let mut s = b.started(ID);
    assert_eq!(b.act(&mut s, ActionKind::RequestOtp, Some(PHONE)), Act::Go("rate_limited", None), "activation waits");

    let mut b = Bench::new(b.seen);
    let mut s = b.sent();
    b.now = b.now.plus(OTP_LIFETIME + Duration::from_secs(1));
    assert_eq!(b.resume(&s, ActionKind::VerifyOtp), Some(keys::NOTE_OTP_EXPIRED));
    let code = b.last_otp.clone();
    assert_eq!(b.act(&mut s, ActionKind::VerifyOtp, Some(&code)), Act::Retry(keys::NOTE_OTP_EXPIRED));
}

fn credentials(seen: &mut Record) {
    let mut b = Bench::new(seen);
    let mut s = b.credentials();
    assert_eq!(b.act(&mut s, ActionKind::ChoosePassword, Some(PASSWORD)), Act::Go("done", None));
    assert_eq!(
        b.act(&mut s, ActionKind::ConfirmPassword, Some("Xyz*9876q")),
        Act::Go("mismatch", Some(keys::ERR_PW_MISMATCH))
    );
    assert_eq!(b.act(&mut s, ActionKind::ChoosePasscode, Some(PASSCODE)), Act::Go("done", None));
    assert_eq!(
        b.act(&mut s, ActionKind::ConfirmPasscode, Some("147258")),
        Act::Go("mismatch", Some(keys::ERR_PC_MISMATCH))
    );
}

fn answers(seen: &mut Record) {
    let mut b = Bench::new(seen);
    let mut s = b.credentials();
    assert_eq!(b.act(&mut s, ActionKind::ChooseQuestion, Some("2")), Act::Go("done", None));
    assert_eq!(b.act(&mut s, ActionKind::SetAnswer, Some(PASSWORD)), Act::Retry(keys::ERR_ANS_PASSWORD));
    b.answered();
}

fn finish(seen: &mut Record) {
    let mut b = Bench::new(seen);
    let (mut first, mut second) = (b.answered(), b.answered());
    assert_eq!(b.act(&mut first, ActionKind::FinishActivation, None), Act::Go("activated", None));
    assert_eq!(b.act(&mut second, ActionKind::FinishActivation, None), Act::Go("already_active", None));

    // The registry was re-imported with another phone for the ID number meanwhile.
    let mut b = Bench::new(b.seen);
    let mut s = b.answered();
    let (_, moved) = citizen(ID, OTHER_PHONE, CitizenStatus::Approved);
    b.dir.citizens.insert(ID.into(), moved);
    assert_eq!(b.act(&mut s, ActionKind::FinishActivation, None), Act::Go("refused", None));
}

fn login(seen: &mut Record) {
    let mut b = Bench::new(seen);
    let mut s = b.answered();
    assert_eq!(b.act(&mut s, ActionKind::FinishActivation, None), Act::Go("activated", None));
    let mut s = b.login_session(ID);
    assert_eq!(b.act(&mut s, ActionKind::Login, Some(PASSWORD)), Act::Go("ok", None));
    for n in 1..b.policy.login_failures {
        let mut s = b.login_session(ID);
        let want = if n >= 3 { keys::ERR_LOGIN_NEAR_LOCK } else { keys::ERR_LOGIN_REFUSED };
        assert_eq!(b.act(&mut s, ActionKind::Login, Some("Xyz*9876q")), Act::Retry(want), "failure {n}");
    }
    let mut s = b.login_session(ID);
    assert_eq!(b.act(&mut s, ActionKind::Login, Some("Xyz*9876q")), Act::Go("locked", None));
    let mut s = b.login_session(ID);
    assert_eq!(b.act(&mut s, ActionKind::Login, Some(PASSWORD)), Act::Go("locked", None), "even the right one");
    let mut s = b.login_session(UNKNOWN_ID);
    assert_eq!(b.act(&mut s, ActionKind::Login, Some(PASSWORD)), Act::Retry(keys::ERR_LOGIN_REFUSED));
    // The citizen's own phone locked its pool; a stranger's pool is another count.
    b.caller = Msisdn::parse(OTHER_PHONE).unwrap();
    let mut s = b.login_session(ID);
    assert_eq!(b.act(&mut s, ActionKind::Login, Some(PASSWORD)), Act::Go("ok", None), "the other pool is open");
}

impl Bench<'_> {
    /// A bench where [`ID`] is activated (answers "Mướp" and "Hà Nội").
    fn activated(seen: &mut Record) -> Bench<'_> {
        let mut b = Bench::new(seen);
        let mut s = b.answered();
        assert_eq!(b.act(&mut s, ActionKind::FinishActivation, None), Act::Go("activated", None));
        b
    }

    fn reset(&mut self, kind: ActionKind, id: &str) -> Session {
        let mut s = self.session();
        assert_eq!(self.act(&mut s, kind, Some(id)), Act::Go("done", None));
        s
    }

    /// Forgot password for [`ID`]: code sent, verified, a question drawn.
    fn asked(&mut self) -> Session {
        let mut s = self.reset(ActionKind::StartPasswordReset, ID);
        assert_eq!(self.act(&mut s, ActionKind::RequestResetOtp, Some(PHONE)), Act::Go("sent", None));
        let code = self.last_otp.clone();
        assert_eq!(self.act(&mut s, ActionKind::VerifyOtp, Some(&code)), Act::Go("ok", None));
        assert_eq!(self.act(&mut s, ActionKind::PickQuestion, None), Act::Go("done", None));
        s
    }

    /// The right answer to the question `s` was asked.
    fn answer_of(&self, s: &Session) -> &'static str {
        if s.slots.question.as_deref() == self.flow.questions.first().map(String::as_str) {
            "Mướp"
        } else {
            "Hà Nội"
        }
    }
}

fn forgot_password(seen: &mut Record) {
    let mut b = Bench::activated(seen);
    let mut s = b.reset(ActionKind::StartPasswordReset, UNKNOWN_ID);
    assert_eq!(b.act(&mut s, ActionKind::RequestResetOtp, Some(PHONE)), Act::Go("no_match", None));
    let mut s = b.reset(ActionKind::StartPasswordReset, OTHER_ID);
    assert_eq!(b.act(&mut s, ActionKind::RequestResetOtp, Some(OTHER_PHONE)), Act::Go("not_active", None));

    // The citizen locked her own log-in, then resets the password: the lock no longer stands.
    for _ in 0..b.policy.login_failures {
        let mut l = b.login_session(ID);
        b.act(&mut l, ActionKind::Login, Some("Xyz*9876q"));
    }
    let mut l = b.login_session(ID);
    assert_eq!(b.act(&mut l, ActionKind::Login, Some(PASSWORD)), Act::Go("locked", None));
    let mut s = b.asked();
    assert_eq!(b.act(&mut s, ActionKind::CheckAnswer, Some("Sai")), Act::Retry(keys::ERR_ANSWER_WRONG));
    let right = b.answer_of(&s);
    assert_eq!(b.act(&mut s, ActionKind::CheckAnswer, Some(right)), Act::Go("ok", None));
    assert_eq!(b.act(&mut s, ActionKind::ChoosePassword, Some("New#Pass42")), Act::Go("done", None));
    assert_eq!(b.act(&mut s, ActionKind::ConfirmPassword, Some("New#Pass42")), Act::Go("ok", None));
    assert_eq!(b.act(&mut s, ActionKind::FinishPasswordReset, None), Act::Go("done", None));
    let mut l = b.login_session(ID);
    assert_eq!(b.act(&mut l, ActionKind::Login, Some("New#Pass42")), Act::Go("ok", None), "the new password");

    // Five wrong answers lock recovery from this pool; no code is sent while it lasts.
    let mut s = b.asked();
    for _ in 1..b.policy.login_failures {
        assert_eq!(b.act(&mut s, ActionKind::CheckAnswer, Some("Sai")), Act::Retry(keys::ERR_ANSWER_WRONG));
    }
    assert_eq!(b.act(&mut s, ActionKind::CheckAnswer, Some("Sai")), Act::Go("locked", None));
    let right = b.answer_of(&s);
    assert_eq!(b.act(&mut s, ActionKind::CheckAnswer, Some(right)), Act::Go("locked", None), "even the right one");
    let mut s = b.reset(ActionKind::StartPasswordReset, ID);
    assert_eq!(b.act(&mut s, ActionKind::RequestResetOtp, Some(PHONE)), Act::Go("locked", None));

    // The activation's caps hold for recovery too.
    let mut b = Bench::activated(b.seen);
    let now = b.now;
    b.fill(b.policy.otp_phone(&Msisdn::parse(PHONE).unwrap(), Pool::Own), now);
    let mut s = b.reset(ActionKind::StartPasswordReset, ID);
    assert_eq!(b.act(&mut s, ActionKind::RequestResetOtp, Some(PHONE)), Act::Go("limit", None));
    let mut b = Bench::activated(b.seen);
    let (now, caller) = (b.now, b.caller.clone());
    b.fill(b.policy.lookups(&caller)[0].clone(), now);
    let mut s = b.reset(ActionKind::StartPasswordReset, ID);
    assert_eq!(b.act(&mut s, ActionKind::RequestResetOtp, Some(PHONE)), Act::Go("rate_limited", None));

    // The account or the registry entry went away meanwhile.
    let mut b = Bench::activated(b.seen);
    let mut s = b.reset(ActionKind::StartPasswordReset, ID);
    assert_eq!(b.act(&mut s, ActionKind::RequestResetOtp, Some(PHONE)), Act::Go("sent", None));
    let code = b.last_otp.clone();
    assert_eq!(b.act(&mut s, ActionKind::VerifyOtp, Some(&code)), Act::Go("ok", None));
    let account = b.dir.accounts.remove(ID);
    assert_eq!(b.act(&mut s, ActionKind::PickQuestion, None), Act::Go("refused", None));
    b.dir.accounts.extend(account.map(|a| (ID.to_string(), a)));
    let mut s = b.asked();
    let account = b.dir.accounts.remove(ID);
    assert_eq!(b.act(&mut s, ActionKind::CheckAnswer, Some("Sai")), Act::Go("refused", None));
    b.dir.accounts.extend(account.map(|a| (ID.to_string(), a)));
    let mut s = b.asked();
    let right = b.answer_of(&s);
    assert_eq!(b.act(&mut s, ActionKind::CheckAnswer, Some(right)), Act::Go("ok", None));
    assert_eq!(b.act(&mut s, ActionKind::ChoosePassword, Some("New#Pass42")), Act::Go("done", None));
    b.dir.citizens.remove(ID);
    assert_eq!(b.act(&mut s, ActionKind::FinishPasswordReset, None), Act::Go("refused", None));
}

fn forgot_passcode(seen: &mut Record) {
    let mut b = Bench::activated(seen);
    let mut s = b.reset(ActionKind::StartPasscodeReset, ID);
    for n in 1..b.policy.login_failures {
        let want = if n >= 3 { keys::ERR_LOGIN_NEAR_LOCK } else { keys::ERR_LOGIN_REFUSED };
        assert_eq!(b.act(&mut s, ActionKind::CheckPassword, Some("Xyz*9876q")), Act::Retry(want));
    }
    assert_eq!(b.act(&mut s, ActionKind::CheckPassword, Some("Xyz*9876q")), Act::Go("locked", None));

    let mut b = Bench::activated(b.seen);
    let mut s = b.reset(ActionKind::StartPasscodeReset, ID);
    assert_eq!(b.act(&mut s, ActionKind::CheckPassword, Some(PASSWORD)), Act::Go("ok", None));
    assert_eq!(b.act(&mut s, ActionKind::ChoosePasscode, Some("369250")), Act::Go("done", None));
    assert_eq!(b.act(&mut s, ActionKind::ConfirmPasscode, Some("369250")), Act::Go("ok", None));
    assert_eq!(b.act(&mut s, ActionKind::FinishPasscodeReset, None), Act::Go("done", None));
    assert!(b.crypto.verify_secret("369250", &b.dir.accounts[ID].passcode_hash), "the account holds the new one");

    let mut s = b.reset(ActionKind::StartPasscodeReset, ID);
    assert_eq!(b.act(&mut s, ActionKind::CheckPassword, Some(PASSWORD)), Act::Go("ok", None));
    assert_eq!(b.act(&mut s, ActionKind::ChoosePasscode, Some("369250")), Act::Go("done", None));
    b.dir.citizens.remove(ID);
    assert_eq!(b.act(&mut s, ActionKind::FinishPasscodeReset, None), Act::Go("refused", None));
}

#[test]
fn every_action_returns_exactly_what_it_declares() {
    let mut seen = Record::new();
    for situation in
        [language, request, resend, verify, credentials, answers, finish, login, forgot_password, forgot_passcode]
    {
        situation(&mut seen);
    }
    let mut disagree = Vec::new();
    for kind in ActionKind::ALL {
        let got = seen.remove(&kind).unwrap_or_default();
        let want = Seen::declared(kind);
        if got != want {
            disagree.push(format!("{}: declares {want:?}\n    but was seen {got:?}", kind.name()));
        }
    }
    assert!(disagree.is_empty(), "actions and their declarations disagree:\n{}", disagree.join("\n"));
}

#[test]
fn run_refuses_what_an_action_did_not_declare() {
    let s = Bench::new(&mut Record::new()).session();
    let why = |r: Result<(), EngineError>| match r {
        Err(EngineError::Flow { why, .. }) => why,
        other => panic!("{other:?}"),
    };
    assert_eq!(why(declared(ActionKind::Login, Act::Go("done", None), &s)), "action returned an undeclared outcome");
    assert_eq!(
        why(declared(ActionKind::ResendOtp, Act::Go("sent", Some(keys::ERR_PW_MISMATCH)), &s)),
        "action returned an undeclared notice"
    );
    assert_eq!(
        why(declared(ActionKind::ResendOtp, Act::Go("limit", Some(keys::NOTE_OTP_RESENT)), &s)),
        "action returned an undeclared notice",
        "a declared notice, on another outcome"
    );
    assert_eq!(
        why(declared(ActionKind::Login, Act::Retry(keys::ERR_OTP_WRONG), &s)),
        "action refused an entry with an undeclared reason"
    );
    assert!(declared(ActionKind::ResendOtp, Act::Go("sent", Some(keys::NOTE_OTP_RESENT)), &s).is_ok());
    assert!(declared(ActionKind::VerifyOtp, Act::Retry(keys::ERR_OTP_WRONG), &s).is_ok());
}

#[test]
fn an_action_given_the_wrong_kind_of_value_is_a_flow_fault() {
    let mut seen = Record::new();
    let mut b = Bench::new(&mut seen);
    let mut s = b.session();
    let ctx = Ctx {
        flow: &b.flow,
        directory: &b.dir,
        crypto: &b.crypto,
        now: b.now,
        caller: &b.caller,
        medium: Medium::Ussd,
        policy: &b.policy,
        site: &crate::engine::Site::default(),
    };
    let mut out = Out { effects: Vec::new(), args: Vec::new(), took_secret: false, until: None, lookup: false };
    let err = run(ActionKind::Login, None, &mut s, &ctx, &mut out, &mut b.rng).unwrap_err();
    assert!(matches!(err, EngineError::Flow { why: "action given a value of the wrong kind", .. }), "{err:?}");
}
