//! The one-time code: checking the ID number and phone against the registry and sending a code
//! (`request_otp`), sending a new one (`resend_otp`), checking what the citizen typed (`verify_otp`), and
//! the note shown when a new dial reopens the code prompt. Codes are kept only as keyed hashes, expire
//! after [`OTP_LIFETIME`], are single use and die after [`OTP_MAX_WRONG`] wrong entries (NIST SP 800-63B
//! §5.1.3, §5.2.2).

use rand::RngCore;

use super::{audit, misuse, Act, OTP_LIFETIME, OTP_MAX_SENDS, OTP_MAX_WRONG, OTP_SENDS_PER_WINDOW, OTP_SEND_WINDOW};
use crate::clock::Millis;
use crate::crypto::stored_mac_eq;
use crate::domain::{Msisdn, Otp, Secret};
use crate::engine::{CitizenStatus, Ctx, Effect, EngineError, OtpRecord, Out, Session, SmsPurpose};
use crate::flow::{Kind, State};
use crate::limits::{self, Bump, CounterKey, Limit, Rule};
use crate::vocab::{keys, ActionKind};

/// `request_otp`: the phone typed (or the caller's) must be the one the registry holds for the ID number.
pub(super) fn request_otp(
    phone: Msisdn,
    s: &mut Session,
    ctx: &Ctx,
    out: &mut Out,
    rng: &mut dyn RngCore,
) -> Result<Act, EngineError> {
    let id = s.slots.national_id.clone().ok_or_else(|| misuse(s, "request_otp before an ID number"))?;
    let citizen = ctx.directory.citizen(&id)?;
    // Unknown ID and mismatched phone take the same path to the same words (OWASP Authentication Cheat
    // Sheet: generic responses, no account enumeration).
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
    Ok(Act::Go("sent", None))
}

/// `resend_otp` (automatic): a new code, voiding the old one, within [`OTP_MAX_SENDS`] per activation.
pub(super) fn resend_otp(s: &mut Session, ctx: &Ctx, out: &mut Out, rng: &mut dyn RngCore) -> Result<Act, EngineError> {
    if s.slots.otp_sends >= OTP_MAX_SENDS || s.slots.phone.is_none() {
        s.slots.otp = None;
        audit(out, "otp_send_limit", s.slots.national_id.as_ref(), s.slots.phone.as_ref());
        return Ok(Act::Go("limit", None));
    }
    if !send_otp(s, ctx, out, rng)? {
        return Ok(Act::Go("limit", None));
    }
    Ok(Act::Go("sent", Some(keys::NOTE_OTP_RESENT)))
}

/// `verify_otp`: the code typed against the one issued, within its lifetime and its wrong entries.
pub(super) fn verify_otp(code: Otp, s: &mut Session, ctx: &Ctx, out: &mut Out) -> Result<Act, EngineError> {
    let (Some(id), Some(phone)) = (s.slots.national_id.clone(), s.slots.phone.clone()) else {
        return Err(misuse(s, "verify_otp before request_otp"));
    };
    let Some(rec) = s.slots.otp.as_mut() else {
        return Ok(Act::Go("expired", None));
    };
    if ctx.now > rec.expires_at {
        s.slots.otp = None;
        audit(out, "otp_expired", Some(&id), Some(&phone));
        return Ok(Act::Go("expired", None));
    }
    let given = ctx.crypto.otp_mac(id.as_str(), phone.as_str(), &Secret::new(code.expose()));
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

/// Issues a fresh OTP (voiding any earlier one) and queues its SMS; false when the registered phone has
/// had its fill of codes this hour (nothing is sent, the activation ends).
fn send_otp(s: &mut Session, ctx: &Ctx, out: &mut Out, rng: &mut dyn RngCore) -> Result<bool, EngineError> {
    let (Some(id), Some(phone)) = (s.slots.national_id.clone(), s.slots.phone.clone()) else {
        return Err(misuse(s, "send_otp without ID and phone"));
    };
    // Counted in the commit, which refuses the step if the window filled meanwhile.
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
