//! Validators: parse one keypad entry into a domain value, as flow files name them (`input = "otp"`).
//! Each declares the reasons it can show, so `kichhoat check` can measure every refusal screen.
//! Context-free rules live in the domain types; rules that need the conversation (a password must not
//! contain this citizen's ID) get it from the session here.

use super::{keys, Ctx, Session};
use crate::domain::{Msisdn, NationalId, Otp, Passcode, Password, PasswordContext, Secret, SecurityAnswer};

/// Parsers from a keypad entry to a domain value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validator {
    NationalId,
    /// A Vietnamese mobile number in any form, or `1` for the number calling.
    Phone,
    Otp,
    /// A new password, checked against the composition rules and the citizen's own identifiers.
    NewPassword,
    NewPasscode,
    /// Any non-empty entry, kept secret (log-in password, confirmations).
    Secret,
    /// A number from the security-question list not chosen yet.
    Question,
    Answer,
}

const VALIDATORS: &[(&str, Validator)] = &[
    ("national_id", Validator::NationalId),
    ("phone", Validator::Phone),
    ("otp", Validator::Otp),
    ("new_password", Validator::NewPassword),
    ("new_passcode", Validator::NewPasscode),
    ("secret", Validator::Secret),
    ("question", Validator::Question),
    ("answer", Validator::Answer),
];

impl Validator {
    pub fn from_name(name: &str) -> Option<Validator> {
        VALIDATORS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
    pub fn name(self) -> &'static str {
        VALIDATORS.iter().find(|(_, v)| *v == self).map(|(n, _)| *n).unwrap_or("?")
    }
    /// Every reason this validator can show.
    pub fn reasons(self) -> Vec<&'static str> {
        match self {
            Validator::NationalId => vec!["err.id_empty", "err.id_digits", "err.id_length"],
            Validator::Phone => vec!["err.phone_empty", "err.phone_digits", "err.phone_length", "err.phone_not_mobile"],
            Validator::Otp => vec!["err.otp_format"],
            Validator::NewPassword => crate::domain::password::all_reason_keys().to_vec(),
            Validator::NewPasscode => crate::domain::passcode::all_reason_keys().to_vec(),
            Validator::Secret => vec![ERR_EMPTY],
            Validator::Question => vec![ERR_QUESTION],
            Validator::Answer => crate::domain::answer::all_reason_keys().to_vec(),
        }
    }
}

const ERR_EMPTY: &str = "err.empty";
const ERR_QUESTION: &str = "err.question";

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
