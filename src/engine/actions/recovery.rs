//! Recovering credentials, as VNeID's "Quên mật khẩu" and "Quên passcode" do, for citizens who activated by
//! USSD. Forgot password: the ID number and the registered phone (the activation's lookup, its caps and its
//! generic refusal: `otp::request_otp`), the code, then one of the two security questions chosen at
//! activation, asked by the service (wrong answers are counted toward a lock, per ID number and pool, in
//! the commit), then a new password. Forgot passcode: the ID number and the password (checked as log-in
//! checks it, toward the same lock), then a new passcode. Either ends with the account updated in the
//! commit, a confirmation SMS and an audit record (OWASP Forgot Password Cheat Sheet: a side channel
//! proves the phone, a second factor before the reset, the same reply whether or not the account exists,
//! a notice after the change; NIST SP 800-63B §5.2.2 for the failure limits).

use rand::RngCore;

use super::login::{check_password as check_login_password, Checked};
use super::{audit, misuse, require_verified, Act};
use crate::domain::{NationalId, PasswordContext, Secret, SecurityAnswer};
use crate::engine::policy::Pool;
use crate::engine::{
    AccountUpdate, CitizenStatus, Credential, Ctx, Effect, EngineError, Out, Purpose, Session, Slots, SmsPurpose,
};
use crate::limits::{self, Bump};
use crate::vocab::keys;

/// `start_password_reset` / `start_passcode_reset`: a fresh recovery for the ID number typed; nothing is
/// looked up yet, so the next step answers alike for numbers the registry has and has not.
pub(super) fn start(id: NationalId, purpose: Purpose, s: &mut Session, ctx: &Ctx) -> Result<Act, EngineError> {
    s.slots = Slots { purpose, started_at: Some(ctx.now), national_id: Some(id), ..Slots::default() };
    Ok(Act::Go("done", None))
}

/// The session is on a recovery of this kind (a flow that ran a recovery action elsewhere is a fault).
pub(super) fn require(s: &Session, purpose: Purpose) -> Result<(), EngineError> {
    if s.slots.purpose == purpose {
        Ok(())
    } else {
        Err(misuse(s, "recovery action outside its recovery"))
    }
}

/// `pick_question` (automatic): one of the account's security questions, drawn by the service so the
/// citizen (or whoever holds the phone) cannot pick the one they can guess.
pub(super) fn pick_question(s: &mut Session, ctx: &Ctx, rng: &mut dyn RngCore) -> Result<Act, EngineError> {
    require(s, Purpose::ResetPassword)?;
    if !s.slots.verified {
        return Err(misuse(s, "pick_question before a verified code"));
    }
    let id = s.slots.national_id.clone().ok_or_else(|| misuse(s, "pick_question before an ID number"))?;
    let Some(account) = ctx.directory.account(&id)?.filter(|a| !a.questions.is_empty()) else {
        return Ok(Act::Go("refused", None));
    };
    let i = (rng.next_u32() as usize) % account.questions.len();
    s.slots.question = Some(account.questions[i].question.clone());
    Ok(Act::Go("done", None))
}

/// `check_answer`: the answer typed, normalized as at activation, against the one stored for the question
/// asked. Wrong answers count toward the recovery lock of the ID number from this pool, inside the commit.
pub(super) fn check_answer(raw: Secret, s: &mut Session, ctx: &Ctx, out: &mut Out) -> Result<Act, EngineError> {
    require(s, Purpose::ResetPassword)?;
    let (Some(id), Some(phone), Some(question)) =
        (s.slots.national_id.clone(), s.slots.phone.clone(), s.slots.question.clone())
    else {
        return Err(misuse(s, "check_answer before the question"));
    };
    if !s.slots.verified {
        return Err(misuse(s, "check_answer before a verified code"));
    }
    let now = ctx.now;
    let pool = Pool::of(ctx.caller, Some(&phone));
    let (key, failure) = ctx.policy.recovery_failure(&id, pool);
    let tally = ctx.directory.tally(&key)?;
    if tally.locked_at(now) {
        audit(out, "recovery_while_locked", Some(&id), Some(ctx.caller));
        out.until = tally.locked_until;
        return Ok(Act::Go("locked", None));
    }
    let Some(stored) =
        ctx.directory.account(&id)?.and_then(|a| a.questions.into_iter().find(|q| q.question == question))
    else {
        return Ok(Act::Go("refused", None));
    };
    let pc = PasswordContext { national_id: &id, phone: &phone };
    let right = match SecurityAnswer::parse(raw.clone(), &pc) {
        Ok(answer) => ctx.crypto.verify_secret(answer.expose(), &stored.answer_hash),
        Err(_) => {
            ctx.crypto.dummy_verify(raw.expose()); // an answer that could never have been set: wrong, same time
            false
        }
    };
    let rule = if right { ctx.policy.recovery_success(&id, pool).1 } else { failure };
    let (next, expect) =
        limits::apply(&rule, &tally, now).map_err(|_| misuse(s, "recovery lock read differently twice"))?;
    out.effects.push(Effect::Count(Bump { key, rule, expect }));
    if right {
        s.slots.answered = true;
        audit(out, "recovery_answer_ok", Some(&id), Some(ctx.caller));
        return Ok(Act::Go("ok", None));
    }
    audit(out, "recovery_answer_wrong", Some(&id), Some(ctx.caller));
    if expect.locked {
        audit(out, "recovery_locked", Some(&id), Some(ctx.caller));
        out.until = next.locked_until;
        return Ok(Act::Go("locked", None));
    }
    let left = ctx.policy.login_failures.saturating_sub(next.consecutive);
    out.args.push(("attempts", left.to_string()));
    Ok(Act::Retry(keys::ERR_ANSWER_WRONG))
}

/// `check_password` (forgot passcode): the password, checked as log-in checks it and counted toward the
/// same lock; right, it proves the citizen for a new passcode.
pub(super) fn check_password(
    pw: Secret,
    s: &mut Session,
    ctx: &Ctx,
    out: &mut Out,
    rng: &mut dyn RngCore,
) -> Result<Act, EngineError> {
    require(s, Purpose::ResetPasscode)?;
    let id = s.slots.national_id.clone().ok_or_else(|| misuse(s, "check_password before an ID number"))?;
    Ok(match check_login_password(&pw, &id, ctx, out, rng, "passcode_reset_password")? {
        Checked::Right(_, account) => {
            s.slots.phone = Some(account.phone);
            s.slots.verified = true;
            Act::Go("ok", None)
        }
        Checked::Wrong(reason) => Act::Retry(reason),
        Checked::Locked => Act::Go("locked", None),
    })
}

/// `finish_password_reset` / `finish_passcode_reset` (automatic): the new credential replaces the old one
/// in the commit (refused, and the step run again, if the account changed since it was read), then a
/// confirmation SMS to the registered phone.
pub(super) fn finish(credential: Credential, s: &mut Session, ctx: &Ctx, out: &mut Out) -> Result<Act, EngineError> {
    let purpose = match credential {
        Credential::Password => Purpose::ResetPassword,
        Credential::Passcode => Purpose::ResetPasscode,
    };
    require(s, purpose)?;
    require_verified(s)?;
    let new = match credential {
        Credential::Password => s.slots.password_hash.clone(),
        Credential::Passcode => s.slots.passcode_hash.clone(),
    };
    let (Some(id), Some(new)) = (s.slots.national_id.clone(), new) else {
        return Err(misuse(s, "finishing a reset before the new credential is set"));
    };
    let account = ctx.directory.account(&id)?;
    // The registry may have changed meanwhile (a re-import): the citizen must still be there, approved.
    let citizen = ctx.directory.citizen(&id)?;
    let (Some(account), true) = (account, citizen.is_some_and(|c| c.status == CitizenStatus::Approved)) else {
        audit(out, "recovery_refused_registry_changed", Some(&id), Some(ctx.caller));
        return Ok(Act::Go("refused", None));
    };
    let old = match credential {
        Credential::Password => account.password_hash.clone(),
        Credential::Passcode => account.passcode_hash.clone(),
    };
    out.effects.push(Effect::UpdateAccount(AccountUpdate {
        national_id: id.clone(),
        credential,
        old,
        new,
        required: true,
    }));
    if credential == Credential::Password {
        // Proven by the registered phone's code and an answer: its own log-in lock no longer stands in the way.
        if s.slots.phone.as_ref() == Some(&account.phone) {
            let (key, rule) = ctx.policy.login_cleared(&id);
            out.effects.push(Effect::Count(Bump { key, rule, expect: Default::default() }));
        }
    }
    let (sms, event) = match credential {
        Credential::Password => (keys::SMS_PASSWORD_RESET, "password_reset"),
        Credential::Passcode => (keys::SMS_PASSCODE_RESET, "passcode_reset"),
    };
    let body = ctx.flow.catalog(s.lang).render(sms, &[]);
    out.effects.push(Effect::Sms {
        to: account.phone.clone(),
        body: Secret::new(body),
        purpose: SmsPurpose::CredentialChanged,
    });
    audit(out, event, Some(&id), Some(&account.phone));
    Ok(Act::Go("done", None))
}
