//! Starting and finishing an activation, and the language switch on the menu. Finishing checks the
//! registry once more (it may have been re-imported meanwhile) and creates the account as an effect the
//! caller commits; the commit, not this check, settles two phones racing for one ID number.

use super::{audit, misuse, require_verified, Act, QUESTIONS_REQUIRED};
use crate::domain::{NationalId, Secret};
use crate::engine::{Account, CitizenStatus, Ctx, Effect, EngineError, Out, Session, Slots, SmsPurpose};
use crate::vocab::keys;

/// `switch_language` (automatic): the other language from now on.
pub(super) fn switch_language(s: &mut Session) -> Result<Act, EngineError> {
    s.lang = s.lang.other();
    Ok(Act::Go("done", None))
}

/// `start_activation`: a fresh activation for the ID number typed; nothing is looked up yet, so the next
/// step answers alike for numbers the registry has and has not.
pub(super) fn start_activation(id: NationalId, s: &mut Session, ctx: &Ctx) -> Result<Act, EngineError> {
    // Starting over for the ID of an activation put aside replaces it.
    if s.parked.as_ref().is_some_and(|p| p.slots.national_id.as_ref() == Some(&id)) {
        s.parked = None;
    }
    s.slots = Slots { started_at: Some(ctx.now), national_id: Some(id), ..Slots::default() };
    Ok(Act::Go("done", None))
}

/// `finish_activation` (automatic): the account, once the code is verified and every credential is set.
pub(super) fn finish_activation(s: &mut Session, ctx: &Ctx, out: &mut Out) -> Result<Act, EngineError> {
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
        activated_at: ctx.now,
    };
    out.effects.push(Effect::Activate(account));
    let body = ctx.flow.catalog(s.lang).render(keys::SMS_ACTIVATED, &[]);
    out.effects.push(Effect::Sms { to: phone.clone(), body: Secret::new(body), purpose: SmsPurpose::Activated });
    audit(out, "activated", Some(&id), Some(&phone));
    Ok(Act::Go("activated", None))
}
