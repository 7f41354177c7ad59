//! The named actions at work: what happens with a parsed entry, or at once in an automatic state. What each
//! action takes, may return and may show is declared in [`crate::vocab::ActionKind::spec`]; `run`
//! dispatches to one function per action and refuses any outcome, notice or reason the action did not
//! declare, so `kichhoat check` (which reads only the declarations) speaks for what runs.
//!
//! The actions, by family: `otp` (request, resend and verify a code), `credentials` (password, passcode,
//! security questions), `activation` (start and finish an activation, the language switch), `login`.
//! Security numbers live here, with their sources, not in flow data.

mod activation;
mod credentials;
mod login;
mod otp;
mod recovery;
#[cfg(test)]
mod tests;

use std::time::Duration;

use rand::RngCore;

pub use otp::resume_note;

use super::policy::Limited;
use super::validators::Value;
use super::{AuditEvent, Credential, Ctx, Effect, EngineError, Out, Purpose, Session};
use crate::clock::Millis;
use crate::domain::{Msisdn, NationalId, Secret};
use crate::limits::{self, Bump, Limit};
use crate::vocab::ActionKind;

/// VNeID's OTP lifetime (VNeID press guides; NIST SP 800-63B §5.1.3 allows up to 10 minutes).
pub const OTP_LIFETIME: Duration = Duration::from_secs(3 * 60);
/// Wrong entries that void an OTP (our choice; NIST SP 800-63B §5.2.2 caps consecutive failures at 100).
pub const OTP_MAX_WRONG: u8 = 5;
/// OTP SMS per activation attempt, the first included (with the per-phone cap below, the SMS pumping guard).
pub const OTP_MAX_SENDS: u8 = 3;
/// The abuse limits (sends, guesses, lookups, log-in failures) are tunable: see [`crate::engine::policy`].
/// VNeID asks two security questions.
pub const QUESTIONS_REQUIRED: usize = 2;

/// What an action decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// Follow this outcome, optionally with a notice above the next prompt.
    Go(&'static str, Option<&'static str>),
    /// Re-ask the same prompt with this reason.
    Retry(&'static str),
}

/// Runs `kind` with the parsed value (and the raw entry it came from), or with none for automatic actions,
/// and holds the result to what `kind` declares.
pub(crate) fn run(
    kind: ActionKind,
    value: Option<(Value, &Secret)>,
    s: &mut Session,
    ctx: &Ctx,
    out: &mut Out,
    rng: &mut dyn RngCore,
) -> Result<Act, EngineError> {
    let act = dispatch(kind, value, s, ctx, out, rng)?;
    declared(kind, act, s)?;
    Ok(act)
}

/// One arm per action: the value is matched to the input the action takes, once, here.
fn dispatch(
    kind: ActionKind,
    value: Option<(Value, &Secret)>,
    s: &mut Session,
    ctx: &Ctx,
    out: &mut Out,
    rng: &mut dyn RngCore,
) -> Result<Act, EngineError> {
    use ActionKind as K;
    match (kind, value) {
        (K::SwitchLanguage, None) => activation::switch_language(s),
        (K::StartActivation, Some((Value::Id(id), _))) => activation::start_activation(id, s, ctx),
        (K::RequestOtp, Some((Value::Phone(phone), _))) => otp::request_otp(phone, s, ctx, out, rng),
        (K::ResendOtp, None) => otp::resend_otp(s, ctx, out, rng),
        (K::VerifyOtp, Some((Value::Otp(code), _))) => otp::verify_otp(code, s, ctx, out),
        (K::ChoosePassword, Some((Value::Password(pw), _))) => credentials::choose_password(pw, s, ctx, rng),
        (K::ConfirmPassword, Some((Value::Secret(again), _))) => credentials::confirm_password(again, s, ctx),
        (K::ChoosePasscode, Some((Value::Passcode(pc), _))) => credentials::choose_passcode(pc, s, ctx, rng),
        (K::ConfirmPasscode, Some((Value::Secret(again), _))) => credentials::confirm_passcode(again, s, ctx),
        (K::ChooseQuestion, Some((Value::Question(q), _))) => credentials::choose_question(q, s),
        (K::SetAnswer, Some((Value::Answer(answer), raw))) => credentials::set_answer(answer, raw, s, ctx, rng),
        (K::FinishActivation, None) => activation::finish_activation(s, ctx, out),
        (K::StartLogin, Some((Value::Id(id), _))) => login::start_login(id, s, ctx),
        (K::Login, Some((Value::Secret(pw), _))) => login::login(pw, s, ctx, out, rng),
        (K::StartPasswordReset, Some((Value::Id(id), _))) => recovery::start(id, Purpose::ResetPassword, s, ctx),
        (K::StartPasscodeReset, Some((Value::Id(id), _))) => recovery::start(id, Purpose::ResetPasscode, s, ctx),
        (K::RequestResetOtp, Some((Value::Phone(phone), _))) => {
            if s.slots.purpose == Purpose::Activation {
                return Err(misuse(s, "request_reset_otp outside a recovery"));
            }
            otp::request_otp(phone, s, ctx, out, rng)
        }
        (K::PickQuestion, None) => recovery::pick_question(s, ctx, rng),
        (K::CheckAnswer, Some((Value::Secret(answer), _))) => recovery::check_answer(answer, s, ctx, out),
        (K::FinishPasswordReset, None) => recovery::finish(Credential::Password, s, ctx, out),
        (K::CheckPassword, Some((Value::Secret(pw), _))) => recovery::check_password(pw, s, ctx, out, rng),
        (K::FinishPasscodeReset, None) => recovery::finish(Credential::Passcode, s, ctx, out),
        // Every kind is named (no wildcard), so a new action does not compile until it has an arm above.
        (
            K::SwitchLanguage
            | K::StartActivation
            | K::RequestOtp
            | K::ResendOtp
            | K::VerifyOtp
            | K::ChoosePassword
            | K::ConfirmPassword
            | K::ChoosePasscode
            | K::ConfirmPasscode
            | K::ChooseQuestion
            | K::SetAnswer
            | K::FinishActivation
            | K::StartLogin
            | K::Login
            | K::StartPasswordReset
            | K::StartPasscodeReset
            | K::RequestResetOtp
            | K::PickQuestion
            | K::CheckAnswer
            | K::FinishPasswordReset
            | K::CheckPassword
            | K::FinishPasscodeReset,
            _,
        ) => Err(misuse(s, "action given a value of the wrong kind")),
    }
}

/// An outcome, notice or reason `kind` does not declare is a fault, not something to follow: the check of
/// the flow files vouched only for the declared ones.
fn declared(kind: ActionKind, act: Act, s: &Session) -> Result<(), EngineError> {
    match act {
        Act::Go(outcome, _) if !kind.outcomes().contains(&outcome) => {
            Err(misuse(s, "action returned an undeclared outcome"))
        }
        Act::Go(outcome, Some(notice)) if !kind.notices().contains(&(outcome, notice)) => {
            Err(misuse(s, "action returned an undeclared notice"))
        }
        Act::Retry(reason) if !kind.reasons().contains(&reason) => {
            Err(misuse(s, "action refused an entry with an undeclared reason"))
        }
        Act::Go(..) | Act::Retry(_) => Ok(()),
    }
}

/// Checks the counters `limited` would spend at `now` against their rules (the engine's read, a hint: the
/// commit applies them again). `Ok` with the bumps to commit, or `Err` with the limit and the time it
/// frees up.
fn spend(ctx: &Ctx, limited: &[Limited]) -> Result<Vec<Bump>, (Limit, Millis)> {
    let mut bumps = Vec::new();
    for (key, rule) in limited {
        let tally = ctx.directory.tally(key).map_err(|_| (Limit::Lookups, ctx.now))?;
        match limits::apply(rule, &tally, ctx.now) {
            Ok((_, expect)) => bumps.push(Bump { key: key.clone(), rule: *rule, expect }),
            Err(limit) => return Err((limit, limits::next_allowed(rule, &tally, ctx.now))),
        }
    }
    Ok(bumps)
}

/// Counts `bumps` in the commit of this step.
fn count(out: &mut Out, bumps: Vec<Bump>) {
    out.effects.extend(bumps.into_iter().map(Effect::Count));
}

/// A cap was reached: audited `rate_limited` (with which cap), and the reply says until when (`{until}`).
fn rate_limited(out: &mut Out, ctx: &Ctx, limit: Limit, until: Millis, id: Option<&NationalId>) {
    out.effects.push(Effect::Audit(AuditEvent {
        event: "rate_limited".into(),
        national_id: id.cloned(),
        phone: Some(ctx.caller.clone()),
        detail: Some(limit.to_string()),
    }));
    out.until = Some(until);
}

fn audit(out: &mut Out, event: &str, id: Option<&NationalId>, phone: Option<&Msisdn>) {
    out.effects.push(Effect::Audit(AuditEvent {
        event: event.into(),
        national_id: id.cloned(),
        phone: phone.cloned(),
        detail: None,
    }));
}

fn misuse(s: &Session, why: &'static str) -> EngineError {
    EngineError::Flow { state: s.state.clone(), why }
}

/// Credentials are set only once the citizen is proven: the code verified (and, to reset a password, a
/// security answer right; to reset a passcode, the password right, which sets `verified`).
fn require_verified(s: &Session) -> Result<(), EngineError> {
    if s.slots.verified && (s.slots.purpose != Purpose::ResetPassword || s.slots.answered) {
        Ok(())
    } else {
        Err(misuse(s, "credential step before a verified OTP"))
    }
}
