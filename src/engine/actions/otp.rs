//! The one-time code: checking the ID number and phone against the registry and sending a code
//! (`request_otp`), sending a new one (`resend_otp`), checking what the citizen typed (`verify_otp`), and
//! the note shown when a new dial reopens the code prompt. Codes are kept only as keyed hashes, expire
//! after [`OTP_LIFETIME`], are single use and die after [`OTP_MAX_WRONG`] wrong entries (NIST SP 800-63B
//! §5.1.3, §5.2.2).

use rand::RngCore;

use super::{audit, count, misuse, rate_limited, spend, Act, OTP_LIFETIME, OTP_MAX_SENDS, OTP_MAX_WRONG};
use crate::clock::Millis;
use crate::crypto::stored_mac_eq;
use crate::domain::{Msisdn, NationalId, Otp, Secret};
use crate::engine::policy::Pool;
use crate::engine::{CitizenStatus, Ctx, Effect, EngineError, OtpRecord, Out, Purpose, Session, SmsPurpose};
use crate::flow::catalog::fill;
use crate::flow::{Kind, State};
use crate::limits::Limit;
use crate::vocab::{keys, ActionKind};

/// `request_otp`: the phone typed (or the caller's) must be the one the registry holds for the ID number.
///
/// Every lookup is counted per calling phone; one that ends without a code (unknown ID, mismatch, pending,
/// already activated) tells the caller whether an ID and a phone belong together without an SMS, so it is
/// also capped per calling phone and per ID (in pools: the registered phone's own, and everyone else's).
pub(super) fn request_otp(
    phone: Msisdn,
    s: &mut Session,
    ctx: &Ctx,
    out: &mut Out,
    rng: &mut dyn RngCore,
) -> Result<Act, EngineError> {
    let id = s.slots.national_id.clone().ok_or_else(|| misuse(s, "request_otp before an ID number"))?;
    out.lookup = true;
    let lookups = match spend(ctx, &ctx.policy.lookups(ctx.caller)) {
        Ok(bumps) => bumps,
        Err((limit, until)) => return Ok(limited(out, ctx, limit, until, &id)),
    };
    // A citizen the registry removed is answered as unknown (the registry says so already; defence in depth).
    let citizen = ctx.directory.citizen(&id)?.filter(|c| c.status != CitizenStatus::Removed);
    let pool = Pool::of(ctx.caller, citizen.as_ref().map(|c| &c.phone));
    // Unknown ID and mismatched phone take the same path to the same words (OWASP Authentication Cheat
    // Sheet: generic responses, no account enumeration). Both purposes read the citizen and the account.
    let matched = citizen.as_ref().filter(|c| c.phone == phone);
    let account = ctx.directory.account(&id)?;
    let refusal = match (s.slots.purpose, matched) {
        (Purpose::Activation, None) => Some(("no_match", "activation_no_match")),
        (Purpose::Activation, Some(_)) if account.is_some() => Some(("already_active", "activation_already_active")),
        (Purpose::Activation, Some(c)) if c.status == CitizenStatus::Pending => Some(("pending", "activation_pending")),
        (Purpose::Activation, Some(_)) => None,
        (_, None) => Some(("no_match", "recovery_no_match")),
        (_, Some(_)) if account.is_none() => Some(("not_active", "recovery_not_active")),
        (_, Some(_)) => None,
    };
    if let Some((outcome, event)) = refusal {
        let failed = match spend(ctx, &ctx.policy.failed_lookups(ctx.caller, &id, pool)) {
            Ok(bumps) => bumps,
            Err((limit, until)) => return Ok(limited(out, ctx, limit, until, &id)),
        };
        count(out, lookups);
        count(out, failed);
        let who = if outcome == "no_match" { ctx.caller } else { &phone };
        audit(out, event, Some(&id), Some(who));
        return Ok(Act::Go(outcome, None));
    }
    // Recovery locked by wrong security answers from this pool: no code is worth sending until it ends.
    if s.slots.purpose == Purpose::ResetPassword {
        let (key, _) = ctx.policy.recovery_failure(&id, pool);
        let tally = ctx.directory.tally(&key)?;
        if tally.locked_at(ctx.now) {
            audit(out, "recovery_while_locked", Some(&id), Some(ctx.caller));
            out.until = tally.locked_until;
            return Ok(Act::Go("locked", None));
        }
    }
    // Too many wrong codes for this ID today: activation waits, whatever the phone.
    let wrong = ctx.policy.wrong_code(&id, pool);
    if let Err((limit, until)) = spend(ctx, std::slice::from_ref(&wrong)) {
        return Ok(limited(out, ctx, limit, until, &id));
    }
    s.slots.phone = Some(phone);
    if !send_otp(s, ctx, out, rng)? {
        return Ok(Act::Go("limit", None));
    }
    count(out, lookups);
    Ok(Act::Go("sent", None))
}

/// A cap reached before anything was looked up or sent: the activation ends, saying until when.
fn limited(out: &mut Out, ctx: &Ctx, limit: Limit, until: Millis, id: &NationalId) -> Act {
    rate_limited(out, ctx, limit, until, Some(id));
    Act::Go("rate_limited", None)
}

/// `resend_otp` (automatic): a new code, voiding the old one, within [`OTP_MAX_SENDS`] per activation.
pub(super) fn resend_otp(s: &mut Session, ctx: &Ctx, out: &mut Out, rng: &mut dyn RngCore) -> Result<Act, EngineError> {
    if s.slots.otp_sends >= OTP_MAX_SENDS || s.slots.phone.is_none() {
        s.slots.otp = None;
        audit(out, "otp_send_limit", s.slots.national_id.as_ref(), s.slots.phone.as_ref());
        // The next activation may ask again once the ID's short window has room.
        if let (Some(id), Some(phone)) = (&s.slots.national_id, &s.slots.phone) {
            let pool = Pool::of(ctx.caller, Some(phone));
            if let Err((_, until)) = spend(ctx, &ctx.policy.otp_sends(id, phone, pool)) {
                out.until = Some(until);
            }
        }
        return Ok(Act::Go("limit", None));
    }
    if !send_otp(s, ctx, out, rng)? {
        return Ok(Act::Go("limit", None));
    }
    Ok(Act::Go("sent", Some(keys::NOTE_OTP_RESENT)))
}

/// `verify_otp`: the code typed against the one issued, within its lifetime and its wrong entries. Wrong
/// codes are also counted per ID (pooled) across all its codes: past the day's cap the code is voided and
/// activation of that ID waits.
pub(super) fn verify_otp(code: Otp, s: &mut Session, ctx: &Ctx, out: &mut Out) -> Result<Act, EngineError> {
    let (Some(id), Some(phone)) = (s.slots.national_id.clone(), s.slots.phone.clone()) else {
        return Err(misuse(s, "verify_otp before request_otp"));
    };
    // An expired (or voided) code is refused at the prompt, which offers a new one: the activation goes on.
    if s.slots.otp.is_none() {
        return Ok(Act::Retry(keys::NOTE_OTP_EXPIRED));
    }
    let wrong = ctx.policy.wrong_code(&id, Pool::of(ctx.caller, Some(&phone)));
    let wrong_bump = match spend(ctx, std::slice::from_ref(&wrong)) {
        Ok(bumps) => bumps,
        Err((limit, until)) => {
            s.slots.otp = None;
            return Ok(limited(out, ctx, limit, until, &id));
        }
    };
    let Some(rec) = s.slots.otp.as_mut() else {
        return Ok(Act::Retry(keys::NOTE_OTP_EXPIRED));
    };
    if ctx.now > rec.expires_at {
        s.slots.otp = None;
        audit(out, "otp_expired", Some(&id), Some(&phone));
        return Ok(Act::Retry(keys::NOTE_OTP_EXPIRED));
    }
    let given = ctx.crypto.otp_mac(id.as_str(), phone.as_str(), &Secret::new(code.expose()));
    if stored_mac_eq(&rec.mac, &given) {
        s.slots.otp = None; // single use
        s.slots.verified = true;
        audit(out, "otp_verified", Some(&id), Some(&phone));
        return Ok(Act::Go("ok", None));
    }
    count(out, wrong_bump);
    rec.wrong += 1;
    let left = OTP_MAX_WRONG.saturating_sub(rec.wrong);
    if left == 0 {
        s.slots.otp = None;
        audit(out, "otp_exhausted", Some(&id), Some(&phone));
        return Ok(Act::Go("exhausted", None));
    }
    audit(out, "otp_wrong", Some(&id), Some(&phone));
    out.args.push(("attempts", left.to_string()));
    Ok(Act::Retry(keys::ERR_OTP_WRONG))
}

/// The note above a prompt reopened by a new dial, when the state has something more useful to say than
/// "continuing": at the code prompt, that the code has expired and `1` sends a new one. Each note is
/// among its action's [`ActionKind::resume_notices`].
pub fn resume_note(state: &State, s: &Session, now: Millis) -> Option<&'static str> {
    let Kind::Input { input: Some((_, action)), .. } = &state.kind else { return None };
    match action {
        ActionKind::VerifyOtp if s.slots.otp.as_ref().is_none_or(|o| now > o.expires_at) => {
            Some(keys::NOTE_OTP_EXPIRED)
        }
        _ => None,
    }
}

/// Issues a fresh OTP (voiding any earlier one) and queues its SMS; false when a send cap is reached (the
/// ID's short or daily allowance from this pool, or the registered phone's hourly one): nothing is sent,
/// the activation ends, and the reply says until when.
fn send_otp(s: &mut Session, ctx: &Ctx, out: &mut Out, rng: &mut dyn RngCore) -> Result<bool, EngineError> {
    let (Some(id), Some(phone)) = (s.slots.national_id.clone(), s.slots.phone.clone()) else {
        return Err(misuse(s, "send_otp without ID and phone"));
    };
    // Counted in the commit, which refuses the step if a window filled meanwhile.
    let pool = Pool::of(ctx.caller, Some(&phone));
    let sends = match spend(ctx, &ctx.policy.otp_sends(&id, &phone, pool)) {
        Ok(bumps) => bumps,
        Err((limit, until)) => {
            s.slots.otp = None;
            rate_limited(out, ctx, limit, until, Some(&id));
            return Ok(false);
        }
    };
    count(out, sends);
    let code = Otp::generate(rng);
    let mac = ctx.crypto.otp_mac(id.as_str(), phone.as_str(), &Secret::new(code.expose()));
    s.slots.otp = Some(OtpRecord { mac: hex::encode(mac), expires_at: ctx.now.plus(OTP_LIFETIME), wrong: 0 });
    s.slots.otp_sends = s.slots.otp_sends.saturating_add(1);
    let minutes = (OTP_LIFETIME.as_secs() / 60).to_string();
    // Over USSD the SMS says what to dial to enter the code; over SMS, to reply with it.
    let args = [("otp", code.expose().to_string()), ("minutes", minutes), ("ussd_code", ctx.site.ussd_code.clone())];
    let key = if s.slots.purpose == Purpose::Activation { keys::SMS_OTP } else { keys::SMS_OTP_RESET };
    let body = fill(ctx.flow.catalog(s.lang).get_for(ctx.medium, key), &args);
    out.effects.push(Effect::Sms { to: phone.clone(), body: Secret::new(body), purpose: SmsPurpose::Otp });
    audit(out, "otp_sent", Some(&id), Some(&phone));
    Ok(true)
}
