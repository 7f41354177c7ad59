//! Validators at work: parse one keypad entry into a domain value, for the validator a flow state names
//! (`input = "otp"`). The [`Validator`] names and the reasons each may show are declared in
//! [`crate::vocab`], where `kichhoat check` reads them. Context-free rules live in the domain types; rules
//! that need the conversation (a password must not contain this citizen's ID) get it from the session here.

use super::{Ctx, Session};
use crate::domain::{Msisdn, NationalId, Otp, Passcode, Password, PasswordContext, Secret, SecurityAnswer};
use crate::vocab::keys::{self, ERR_EMPTY, ERR_QUESTION};
use crate::vocab::Validator;

/// A parsed entry.
pub enum Value {
    Id(NationalId),
    Phone(Msisdn),
    Otp(Otp),
    Password(Password),
    Passcode(Passcode),
    Secret(Secret),
    Question(String),
    Answer(SecurityAnswer),
}

/// Parses `input` at a state whose validator is `v`; `Err` holds the reason key to show.
pub fn parse(v: Validator, input: &Secret, s: &Session, ctx: &Ctx) -> Result<Value, &'static str> {
    let raw = input.expose();
    let personal = || -> Result<(NationalId, Msisdn), &'static str> {
        match (&s.slots.national_id, &s.slots.phone) {
            (Some(id), Some(p)) => Ok((id.clone(), p.clone())),
            _ => Err(keys::END_UNAVAILABLE),
        }
    };
    Ok(match v {
        // Only the shape is checked here. Refusing an implausible number (a birth year in the future)
        // before the lookup would answer differently for registered and unregistered numbers, and the
        // registry, not the digits, decides which numbers exist; an unknown one meets the generic reply.
        Validator::NationalId => Value::Id(NationalId::parse_shape(raw).map_err(|e| e.reason_key())?),
        Validator::Phone if raw.trim() == "1" => Value::Phone(ctx.caller.clone()),
        Validator::Phone => Value::Phone(Msisdn::parse(raw).map_err(|e| e.reason_key())?),
        Validator::Otp => Value::Otp(Otp::parse(raw).map_err(|e| e.reason_key())?),
        Validator::NewPassword => {
            let (id, phone) = personal()?;
            let pc = PasswordContext { national_id: &id, phone: &phone };
            Value::Password(Password::parse(input.clone(), &pc).map_err(|e| e.reason_key())?)
        }
        Validator::NewPasscode => {
            let (id, phone) = personal()?;
            let pc = PasswordContext { national_id: &id, phone: &phone };
            Value::Passcode(Passcode::parse(input.clone(), &pc).map_err(|e| e.reason_key())?)
        }
        Validator::Secret if raw.trim().is_empty() => return Err(ERR_EMPTY),
        Validator::Secret => Value::Secret(input.clone()),
        Validator::Question => {
            let n: usize = raw.trim().parse().map_err(|_| ERR_QUESTION)?;
            let q = n.checked_sub(1).and_then(|i| ctx.flow.questions.get(i)).ok_or(ERR_QUESTION)?;
            if s.slots.questions.iter().any(|a| &a.question == q) {
                return Err(ERR_QUESTION);
            }
            Value::Question(q.clone())
        }
        Validator::Answer => {
            let (id, phone) = personal()?;
            let pc = PasswordContext { national_id: &id, phone: &phone };
            Value::Answer(SecurityAnswer::parse(input.clone(), &pc).map_err(|e| e.reason_key())?)
        }
    })
}
