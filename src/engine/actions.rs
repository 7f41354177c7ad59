//! Named actions, as flow files refer to them (`action = "verify_otp"`): what happens with a parsed entry,
//! or at once in an automatic state. Each declares what `kichhoat check` needs to know: the input it
//! takes, the outcomes it can return, and the message keys it can put on screen.
//!
//! Security numbers (NIST SP 800-63B §5.1.3 for OTPs; VNeID's 3-minute OTP; our 5-attempt cap,
//! ../shared/reference/domain.md §5) live here, not in flow data.

use std::time::Duration;

use rand::RngCore;

pub use super::validators::{Validator, Value};
use super::{
    Account, Answered, AuditEvent, CitizenStatus, Ctx, Effect, EngineError, OtpRecord, Out, Session, Slots, SmsPurpose,
};
use crate::clock::Millis;
use crate::crypto::stored_mac_eq;
use crate::domain::{Msisdn, NationalId, Otp, Secret};
use crate::engine::keys;
use crate::limits::{self, Bump, CounterKey, Limit, Rule};

/// VNeID's OTP lifetime (press guides; NIST allows up to 10 minutes).
pub const OTP_LIFETIME: Duration = Duration::from_secs(3 * 60);
/// Wrong entries that void an OTP (our choice; NIST §5.2.2 caps consecutive failures at 100).
pub const OTP_MAX_WRONG: u8 = 5;
/// OTP SMS per activation attempt, the first included (SMS pumping guard until per-phone limits land).
pub const OTP_MAX_SENDS: u8 = 3;
/// OTP SMS to one registered phone per rolling hour, across activations and callers: restarting an
/// activation must not make the service an SMS cannon aimed at one citizen (domain.md §5, SMS pumping).
/// Generous on purpose: a citizen who mistypes and retries a few times never meets it.
pub const OTP_SENDS_PER_WINDOW: u32 = 20;
pub const OTP_SEND_WINDOW: Duration = Duration::from_secs(60 * 60);
/// Consecutive failed log-ins of one ID number before log-in is locked, and for how long. NIST SP
/// 800-63B §5.2.2 allows at most 100 consecutive failures; a 10-then-15-minutes lock keeps an online
/// guesser near 1,000 tries a day while a citizen who forgot a character is never stopped for long.
pub const LOGIN_MAX_FAILURES: u32 = 10;
pub const LOGIN_LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// Failures in a row idle this long (and not locked) are forgotten, so a record does not live for ever.
pub const LOGIN_FAILURES_KEPT: Duration = Duration::from_secs(24 * 60 * 60);

fn login_failure_rule() -> Rule {
    Rule::Failure {
        limit: Limit::LoginLocked,
        max: LOGIN_MAX_FAILURES,
        lock: LOGIN_LOCKOUT,
        max_lock: LOGIN_LOCKOUT,
        forget_after: LOGIN_FAILURES_KEPT,
    }
}
/// VNeID asks two security questions.
pub const QUESTIONS_REQUIRED: usize = 2;

/// What an action decided.
pub enum Act {
    /// Follow this outcome, optionally with a notice above the next prompt.
    Go(&'static str, Option<&'static str>),
    /// Re-ask the same prompt with this reason.
    Retry(&'static str),
}

/// Actions flow files can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    SwitchLanguage,
    StartActivation,
    RequestOtp,
    ResendOtp,
    VerifyOtp,
    ChoosePassword,
    ConfirmPassword,
    ChoosePasscode,
    ConfirmPasscode,
    ChooseQuestion,
    SetAnswer,
    FinishActivation,
    StartLogin,
    Login,
}

struct Spec {
    name: &'static str,
    kind: ActionKind,
    input: Option<Validator>,
    outcomes: &'static [&'static str],
    reasons: &'static [&'static str],
    notices: &'static [(&'static str, &'static str)],
}

const SPECS: &[Spec] = &[
    Spec {
        name: "switch_language",
        kind: ActionKind::SwitchLanguage,
        input: None,
        outcomes: &["done"],
        reasons: &[],
        notices: &[],
    },
    Spec {
        name: "start_activation",
        kind: ActionKind::StartActivation,
        input: Some(Validator::NationalId),
        outcomes: &["done"],
        reasons: &[],
        notices: &[],
    },
    Spec {
        name: "request_otp",
        kind: ActionKind::RequestOtp,
        input: Some(Validator::Phone),
        outcomes: &["sent", "already_active", "pending", "no_match", "limit"],
        reasons: &[],
        notices: &[],
    },
    Spec {
        name: "resend_otp",
        kind: ActionKind::ResendOtp,
        input: None,
        outcomes: &["sent", "limit"],
        reasons: &[],
        notices: &[("sent", "note.otp_resent")],
    },
    Spec {
        name: "verify_otp",
        kind: ActionKind::VerifyOtp,
        input: Some(Validator::Otp),
        outcomes: &["ok", "exhausted", "expired"],
        reasons: &["err.otp_wrong"],
        notices: &[],
    },
    Spec {
        name: "choose_password",
        kind: ActionKind::ChoosePassword,
        input: Some(Validator::NewPassword),
        outcomes: &["done"],
        reasons: &[],
        notices: &[],
    },
    Spec {
        name: "confirm_password",
        kind: ActionKind::ConfirmPassword,
        input: Some(Validator::Secret),
        outcomes: &["ok", "mismatch"],
        reasons: &[],
        notices: &[("mismatch", "err.pw_mismatch")],
    },
    Spec {
        name: "choose_passcode",
        kind: ActionKind::ChoosePasscode,
        input: Some(Validator::NewPasscode),
        outcomes: &["done"],
        reasons: &[],
        notices: &[],
    },
    Spec {
        name: "confirm_passcode",
        kind: ActionKind::ConfirmPasscode,
        input: Some(Validator::Secret),
        outcomes: &["ok", "mismatch"],
        reasons: &[],
        notices: &[("mismatch", "err.pc_mismatch")],
    },
    Spec {
        name: "choose_question",
        kind: ActionKind::ChooseQuestion,
        input: Some(Validator::Question),
        outcomes: &["done"],
        reasons: &[],
        notices: &[],
    },
    Spec {
        name: "set_answer",
        kind: ActionKind::SetAnswer,
        input: Some(Validator::Answer),
        outcomes: &["more", "done"],
        reasons: &["err.ans_password"],
        notices: &[],
    },
    Spec {
        name: "finish_activation",
        kind: ActionKind::FinishActivation,
        input: None,
        outcomes: &["activated", "already_active", "refused"],
        reasons: &[],
        notices: &[],
    },
    Spec {
        name: "start_login",
        kind: ActionKind::StartLogin,
        input: Some(Validator::NationalId),
        outcomes: &["done"],
        reasons: &[],
        notices: &[],
    },
    Spec {
        name: "login",
        kind: ActionKind::Login,
        input: Some(Validator::Secret),
        outcomes: &["ok", "refused", "locked"],
        reasons: &[],
        notices: &[],
    },
];

impl ActionKind {
    fn spec(self) -> &'static Spec {
        // SPECS lists every variant; the fallback is never reached but keeps this total.
        SPECS.iter().find(|s| s.kind == self).unwrap_or(&SPECS[0])
    }
    pub fn from_name(name: &str) -> Option<ActionKind> {
        SPECS.iter().find(|s| s.name == name).map(|s| s.kind)
    }
    pub fn name(self) -> &'static str {
        self.spec().name
    }
    /// The validator whose value this action takes; `None` for an automatic action.
    pub fn input(self) -> Option<Validator> {
        self.spec().input
    }
    pub fn outcomes(self) -> &'static [&'static str] {
        self.spec().outcomes
    }
    /// Reasons shown when the action refuses an entry that parsed.
    pub fn reasons(self) -> &'static [&'static str] {
        self.spec().reasons
    }
    /// Notes [`resume_note`] may put above this action's prompt when a new dial reopens it.
    pub fn resume_notices(self) -> &'static [&'static str] {
        match self {
            ActionKind::VerifyOtp => &[NOTE_OTP_EXPIRED],
            _ => &[],
        }
    }
    /// (outcome, notice) pairs: the notice stands above the prompt the outcome leads to.
    pub fn notices(self) -> &'static [(&'static str, &'static str)] {
        self.spec().notices
    }
}

fn audit(out: &mut Out, event: &str, id: Option<&NationalId>, phone: Option<&Msisdn>) {
    out.effects.push(Effect::Audit(AuditEvent {
        event: event.into(),
        national_id: id.cloned(),
        phone: phone.cloned(),
    }));
}

fn misuse(s: &Session, why: &'static str) -> EngineError {
    EngineError::Flow { state: s.state.clone(), why }
}

/// Runs `kind` with the parsed value (and the raw entry it came from), or with none for automatic actions.
pub(crate) fn run(
    kind: ActionKind,
    value: Option<(Value, &Secret)>,
    s: &mut Session,
    ctx: &Ctx,
    out: &mut Out,
    rng: &mut dyn RngCore,
) -> Result<Act, EngineError> {
    let now = ctx.now;
    let crypto = ctx.crypto;
    let (value, raw) = match value {
        Some((v, raw)) => (Some(v), Some(raw)),
        None => (None, None),
    };
    Ok(match (kind, value) {
        (ActionKind::SwitchLanguage, None) => {
            s.lang = s.lang.other();
            Act::Go("done", None)
        }
        (ActionKind::StartActivation, Some(Value::Id(id))) => {
            s.slots = Slots { started_at: Some(now), national_id: Some(id), ..Slots::default() };
            Act::Go("done", None)
        }
        (ActionKind::RequestOtp, Some(Value::Phone(phone))) => {
            let id = s.slots.national_id.clone().ok_or_else(|| misuse(s, "request_otp before an ID number"))?;
            let citizen = ctx.directory.citizen(&id)?;
            // Unknown ID and mismatched phone take the same path to the same words (OWASP enumeration).
            let Some(citizen) = citizen.filter(|c| c.phone == phone) else {
                audit(out, "activation_no_match", Some(&id), Some(ctx.caller));
                return Ok(Act::Go("no_match", None));
            };
            if ctx.directory.account(&id)?.is_some() {
                audit(out, "activation_already_active", Some(&id), Some(&phone));
                return Ok(Act::Go("already_active", None));
            }
            if citizen.status == CitizenStatus::Pending {
                audit(out, "activation_pending", Some(&id), Some(&phone));
                return Ok(Act::Go("pending", None));
            }
            s.slots.phone = Some(phone);
            if !send_otp(s, ctx, out, rng)? {
                return Ok(Act::Go("limit", None));
            }
            Act::Go("sent", None)
        }
        (ActionKind::ResendOtp, None) => {
            if s.slots.otp_sends >= OTP_MAX_SENDS || s.slots.phone.is_none() {
                s.slots.otp = None;
                audit(out, "otp_send_limit", s.slots.national_id.as_ref(), s.slots.phone.as_ref());
                return Ok(Act::Go("limit", None));
            }
            if !send_otp(s, ctx, out, rng)? {
                return Ok(Act::Go("limit", None));
            }
            Act::Go("sent", Some("note.otp_resent"))
        }
        (ActionKind::VerifyOtp, Some(Value::Otp(code))) => {
            let (Some(id), Some(phone)) = (s.slots.national_id.clone(), s.slots.phone.clone()) else {
                return Err(misuse(s, "verify_otp before request_otp"));
            };
            let Some(rec) = s.slots.otp.as_mut() else {
                return Ok(Act::Go("expired", None));
            };
            if now > rec.expires_at {
                s.slots.otp = None;
                audit(out, "otp_expired", Some(&id), Some(&phone));
                return Ok(Act::Go("expired", None));
            }
            let given = crypto.otp_mac(id.as_str(), phone.as_str(), &Secret::new(code.expose()));
            if stored_mac_eq(&rec.mac, &given) {
                s.slots.otp = None; // single use
                s.slots.verified = true;
                audit(out, "otp_verified", Some(&id), Some(&phone));
                return Ok(Act::Go("ok", None));
            }
            rec.wrong += 1;
            let left = OTP_MAX_WRONG.saturating_sub(rec.wrong);
            if left == 0 {
                s.slots.otp = None;
                audit(out, "otp_exhausted", Some(&id), Some(&phone));
                return Ok(Act::Go("exhausted", None));
            }
            audit(out, "otp_wrong", Some(&id), Some(&phone));
            out.args.push(("attempts", left.to_string()));
            Act::Retry("err.otp_wrong")
        }
        (ActionKind::ChoosePassword, Some(Value::Password(pw))) => {
            require_verified(s)?;
            s.slots.password_hash = Some(crypto.hash_secret(pw.expose(), rng)?);
            Act::Go("done", None)
        }
        (ActionKind::ConfirmPassword, Some(Value::Secret(again))) => {
            let hash =
                s.slots.password_hash.clone().ok_or_else(|| misuse(s, "confirm_password before choose_password"))?;
            if crypto.verify_secret(again.expose(), &hash) {
                Act::Go("ok", None)
            } else {
                s.slots.password_hash = None;
                Act::Go("mismatch", Some("err.pw_mismatch"))
            }
        }
        (ActionKind::ChoosePasscode, Some(Value::Passcode(pc))) => {
            require_verified(s)?;
            s.slots.passcode_hash = Some(crypto.hash_secret(pc.expose(), rng)?);
            Act::Go("done", None)
        }
        (ActionKind::ConfirmPasscode, Some(Value::Secret(again))) => {
            let hash =
                s.slots.passcode_hash.clone().ok_or_else(|| misuse(s, "confirm_passcode before choose_passcode"))?;
            if crypto.verify_secret(again.expose().trim(), &hash) {
                Act::Go("ok", None)
            } else {
                s.slots.passcode_hash = None;
                Act::Go("mismatch", Some("err.pc_mismatch"))
            }
        }
        (ActionKind::ChooseQuestion, Some(Value::Question(q))) => {
            s.slots.question = Some(q);
            Act::Go("done", None)
        }
        (ActionKind::SetAnswer, Some(Value::Answer(answer))) => {
            require_verified(s)?;
            let question = s.slots.question.clone().ok_or_else(|| misuse(s, "set_answer before choose_question"))?;
            // An answer must not be the password (domain.md §5): the password is only a hash by now.
            if let (Some(pw), Some(raw)) = (&s.slots.password_hash, raw) {
                if crypto.verify_secret(raw.expose().trim(), pw) {
                    return Ok(Act::Retry("err.ans_password"));
                }
            }
            let answer_hash = crypto.hash_secret(answer.expose(), rng)?;
            s.slots.questions.push(Answered { question, answer_hash });
            s.slots.question = None;
            if s.slots.questions.len() >= QUESTIONS_REQUIRED {
                Act::Go("done", None)
            } else {
                Act::Go("more", None)
            }
        }
        (ActionKind::FinishActivation, None) => {
            require_verified(s)?;
            let sl = &s.slots;
            let (Some(id), Some(phone), Some(password_hash), Some(passcode_hash)) =
                (sl.national_id.clone(), sl.phone.clone(), sl.password_hash.clone(), sl.passcode_hash.clone())
            else {
                return Err(misuse(s, "finish_activation before every credential is set"));
            };
            if sl.questions.len() < QUESTIONS_REQUIRED {
                return Err(misuse(s, "finish_activation before the security questions"));
            }
            if ctx.directory.account(&id)?.is_some() {
                audit(out, "activation_already_active", Some(&id), Some(&phone));
                return Ok(Act::Go("already_active", None));
            }
            // The registry may have changed during the activation (a re-import): check it again.
            let still = ctx.directory.citizen(&id)?;
            if !still.is_some_and(|c| c.phone == phone && c.status == CitizenStatus::Approved) {
                audit(out, "activation_refused_registry_changed", Some(&id), Some(&phone));
                return Ok(Act::Go("refused", None));
            }
            let account = Account {
                national_id: id.clone(),
                phone: phone.clone(),
                password_hash,
                passcode_hash,
                questions: sl.questions.clone(),
                activated_at: now,
            };
            out.effects.push(Effect::Activate(account));
            let body = ctx.flow.catalog(s.lang).render(keys::SMS_ACTIVATED, &[]);
            out.effects.push(Effect::Sms {
                to: phone.clone(),
                body: Secret::new(body),
                purpose: SmsPurpose::Activated,
            });
            audit(out, "activated", Some(&id), Some(&phone));
            Act::Go("activated", None)
        }
        (ActionKind::StartLogin, Some(Value::Id(id))) => {
            s.slots = Slots { started_at: Some(now), national_id: Some(id), ..Slots::default() };
            Act::Go("done", None)
        }
        (ActionKind::Login, Some(Value::Secret(pw))) => {
            let id = s.slots.national_id.clone().ok_or_else(|| misuse(s, "login before an ID number"))?;
            // Counted per ID number whether or not it has an account, so a lockout reveals nothing.
            let key = CounterKey::login(&id);
            let tally = ctx.directory.tally(&key)?;
            if tally.locked_at(now) {
                audit(out, "login_while_locked", Some(&id), Some(ctx.caller));
                return Ok(Act::Go("locked", None));
            }
            let account = ctx.directory.account(&id)?;
            let ok = match &account {
                Some(a) => crypto.verify_secret(pw.expose(), &a.password_hash),
                None => {
                    crypto.dummy_verify(pw.expose()); // same time whether or not the account exists
                    false
                }
            };
            let citizen = if ok { ctx.directory.citizen(&id)? } else { None };
            let (rule, outcome) = match &citizen {
                Some(_) => (Rule::Success { limit: Limit::LoginLocked }, "ok"),
                None => (login_failure_rule(), "refused"),
            };
            // Counted in the commit: a lock set meanwhile by failures from other phones refuses this step,
            // which then runs again and answers "locked".
            let expect = match limits::apply(&rule, &tally, now) {
                Ok((_, effect)) => effect,
                Err(_) => return Err(misuse(s, "login lock read twice differently")),
            };
            out.effects.push(Effect::Count(Bump { key, rule, expect }));
            match citizen {
                Some(c) => {
                    out.args.push(("name", c.full_name.chars().take(crate::flow::catalog::NAME_MAX).collect()));
                    audit(out, "login_ok", Some(&id), Some(ctx.caller));
                    Act::Go(outcome, None)
                }
                None => {
                    audit(out, "login_failed", Some(&id), Some(ctx.caller));
                    if expect.locked {
                        audit(out, "login_locked", Some(&id), Some(ctx.caller));
                    }
                    Act::Go(if expect.locked { "locked" } else { outcome }, None)
                }
            }
        }
        _ => return Err(misuse(s, "action given a value of the wrong kind")),
    })
}

/// The note above a prompt reopened by a new dial, when the state has something more useful to say than
/// "continuing": at the code prompt, that the code has expired and `1` sends a new one.
pub fn resume_note(state: &crate::flow::State, s: &Session, now: Millis) -> Option<&'static str> {
    let crate::flow::Kind::Input { input: Some((_, action)), .. } = &state.kind else { return None };
    match action {
        ActionKind::VerifyOtp if s.slots.otp.as_ref().is_none_or(|o| now > o.expires_at) => Some(NOTE_OTP_EXPIRED),
        _ => None,
    }
}

const NOTE_OTP_EXPIRED: &str = "note.otp_expired";

fn require_verified(s: &Session) -> Result<(), EngineError> {
    if s.slots.verified {
        Ok(())
    } else {
        Err(misuse(s, "credential step before a verified OTP"))
    }
}

/// Issues a fresh OTP (voiding any earlier one) and queues its SMS; false when the registered phone has
/// had its fill of codes this hour (nothing is sent, the activation ends).
fn send_otp(s: &mut Session, ctx: &Ctx, out: &mut Out, rng: &mut dyn RngCore) -> Result<bool, EngineError> {
    let (Some(id), Some(phone)) = (s.slots.national_id.clone(), s.slots.phone.clone()) else {
        return Err(misuse(s, "send_otp without ID and phone"));
    };
    let key = CounterKey::otp_phone(&phone);
    let rule = Rule::Window { limit: Limit::OtpPerPhone, max: OTP_SENDS_PER_WINDOW, window: OTP_SEND_WINDOW };
    let Ok((_, expect)) = limits::apply(&rule, &ctx.directory.tally(&key)?, ctx.now) else {
        s.slots.otp = None;
        audit(out, "otp_phone_limit", Some(&id), Some(&phone));
        return Ok(false);
    };
    out.effects.push(Effect::Count(Bump { key, rule, expect }));
    let code = Otp::generate(rng);
    let mac = ctx.crypto.otp_mac(id.as_str(), phone.as_str(), &Secret::new(code.expose()));
    s.slots.otp = Some(OtpRecord { mac: hex::encode(mac), expires_at: ctx.now.plus(OTP_LIFETIME), wrong: 0 });
    s.slots.otp_sends = s.slots.otp_sends.saturating_add(1);
    let minutes = (OTP_LIFETIME.as_secs() / 60).to_string();
    let body =
        ctx.flow.catalog(s.lang).render(keys::SMS_OTP, &[("otp", code.expose().to_string()), ("minutes", minutes)]);
    out.effects.push(Effect::Sms { to: phone.clone(), body: Secret::new(body), purpose: SmsPurpose::Otp });
    audit(out, "otp_sent", Some(&id), Some(&phone));
    Ok(true)
}
