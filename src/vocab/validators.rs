//! The validators flow files can name (`input = "otp"`), and the reasons each can show when it refuses an
//! entry, so `kichhoat check` can measure every refusal screen. The parsing itself needs the conversation
//! and lives in `engine::validators`.

use super::keys;

/// Parsers from a keypad entry to a domain value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

impl Validator {
    /// Every validator, for looking one up by name.
    pub const ALL: [Validator; 8] = [
        Validator::NationalId,
        Validator::Phone,
        Validator::Otp,
        Validator::NewPassword,
        Validator::NewPasscode,
        Validator::Secret,
        Validator::Question,
        Validator::Answer,
    ];

    pub fn from_name(name: &str) -> Option<Validator> {
        Validator::ALL.into_iter().find(|v| v.name() == name)
    }

    /// The name flow files use.
    /// Whether what the citizen types here is a secret (a password, passcode or answer): never echoed,
    /// and over SMS the reply asks the citizen to delete the message that carried it.
    pub fn takes_secret(self) -> bool {
        match self {
            Validator::NewPassword | Validator::NewPasscode | Validator::Secret | Validator::Answer => true,
            Validator::NationalId | Validator::Phone | Validator::Otp | Validator::Question => false,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Validator::NationalId => "national_id",
            Validator::Phone => "phone",
            Validator::Otp => "otp",
            Validator::NewPassword => "new_password",
            Validator::NewPasscode => "new_passcode",
            Validator::Secret => "secret",
            Validator::Question => "question",
            Validator::Answer => "answer",
        }
    }

    /// Every reason this validator can show.
    pub fn reasons(self) -> &'static [&'static str] {
        match self {
            // Only the shape of an ID number is checked before the lookup (see `engine::validators`).
            Validator::NationalId => &["err.id_empty", "err.id_digits", "err.id_length"],
            Validator::Phone => &["err.phone_empty", "err.phone_digits", "err.phone_length", "err.phone_not_mobile"],
            Validator::Otp => &["err.otp_format"],
            Validator::NewPassword => crate::domain::password::all_reason_keys(),
            Validator::NewPasscode => crate::domain::passcode::all_reason_keys(),
            Validator::Secret => &[keys::ERR_EMPTY],
            Validator::Question => &[keys::ERR_QUESTION],
            Validator::Answer => crate::domain::answer::all_reason_keys(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::domain::{MsisdnError, NationalIdError, OtpError};

    #[test]
    fn every_validator_round_trips_through_its_unique_name() {
        let names: BTreeSet<&str> = Validator::ALL.iter().map(|v| v.name()).collect();
        assert_eq!(names.len(), Validator::ALL.len(), "names are unique");
        for v in Validator::ALL {
            assert_eq!(Validator::from_name(v.name()), Some(v));
        }
        assert_eq!(Validator::from_name("nope"), None);
    }

    #[test]
    fn all_lists_every_validator() {
        // Exhaustive on purpose: a new variant stops this compiling, the reminder to give it a place in ALL.
        let position = |v: Validator| match v {
            Validator::NationalId => 0,
            Validator::Phone => 1,
            Validator::Otp => 2,
            Validator::NewPassword => 3,
            Validator::NewPasscode => 4,
            Validator::Secret => 5,
            Validator::Question => 6,
            Validator::Answer => 7,
        };
        for (i, v) in Validator::ALL.into_iter().enumerate() {
            assert_eq!(position(v), i, "{v:?}");
        }
    }

    #[test]
    fn declared_reasons_cover_what_the_domain_types_return() {
        let shape = [NationalIdError::Empty, NationalIdError::NotDigits, NationalIdError::WrongLength];
        for e in shape {
            assert!(Validator::NationalId.reasons().contains(&e.reason_key()), "{e:?}");
        }
        let phone =
            [MsisdnError::Empty, MsisdnError::NotDigits, MsisdnError::WrongLength, MsisdnError::NotVietnameseMobile];
        for e in phone {
            assert!(Validator::Phone.reasons().contains(&e.reason_key()), "{e:?}");
        }
        assert!(Validator::Otp.reasons().contains(&OtpError::Format.reason_key()));
    }
}
