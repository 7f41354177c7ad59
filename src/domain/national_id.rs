//! `NationalId`: the 12-digit personal ID number (số định danh cá nhân, printed on the CCCD).
//!
//! Why: domain.md §2 — 3-digit province code + 1 digit for century and sex (0/1 → 1900s,
//! 2/3 → 2000s, 4/5 → 2100s) + 2 digits of birth year + 6 random digits, no check digit
//! (Decree 137/2015/NĐ-CP art. 13; Circular 07/2016/TT-BCA art. 7). An unknown province code is
//! not rejected (births registered abroad use other codes). The number is basic personal data
//! under Decree 13/2023/NĐ-CP, so `Debug` shows only the masked form and there is no `Display`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Twelve ASCII digits, checked by [`NationalId::parse`].
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NationalId(String);

/// Why a typed ID number was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NationalIdError {
    #[error("ID number is empty")]
    Empty,
    #[error("ID number must contain only digits")]
    NotDigits,
    #[error("ID number must have 12 digits")]
    WrongLength,
    #[error("ID number has an impossible century digit")]
    ImpossibleCentury,
    #[error("ID number has a birth year in the future")]
    FutureBirthYear,
}

impl NationalIdError {
    /// Message key for the citizen-facing text.
    pub fn reason_key(&self) -> &'static str {
        match self {
            NationalIdError::Empty => "err.id_empty",
            NationalIdError::NotDigits => "err.id_digits",
            NationalIdError::WrongLength => "err.id_length",
            NationalIdError::ImpossibleCentury | NationalIdError::FutureBirthYear => "err.id_invalid",
        }
    }
}

impl NationalId {
    /// Parses what a citizen typed: spaces, dots and dashes inside are ignored; the century digit
    /// must be 0–5 and the birth year must not be after `current_year`.
    pub fn parse(input: &str, current_year: i32) -> Result<NationalId, NationalIdError> {
        let id = Self::parse_shape(input)?;
        id.plausibility(current_year)?;
        Ok(id)
    }

    /// The shape alone (12 digits once spaces, dots and dashes are dropped). The registry is the
    /// authority on which numbers exist, so it is imported with this and [`Self::plausibility`] only
    /// warns there.
    pub fn parse_shape(input: &str) -> Result<NationalId, NationalIdError> {
        let digits: String = input.chars().filter(|c| !(c.is_whitespace() || *c == '.' || *c == '-')).collect();
        Self::lenient(digits)
    }

    /// Whether the century digit exists and the birth year is not after `current_year`.
    pub fn plausibility(&self, current_year: i32) -> Result<(), NationalIdError> {
        let b = self.0.as_bytes();
        let century = match b[3] {
            b'0' | b'1' => 1900,
            b'2' | b'3' => 2000,
            b'4' | b'5' => 2100,
            _ => return Err(NationalIdError::ImpossibleCentury),
        };
        let birth_year = century + i32::from(b[4] - b'0') * 10 + i32::from(b[5] - b'0');
        if birth_year > current_year {
            return Err(NationalIdError::FutureBirthYear);
        }
        Ok(())
    }

    /// Shape check only (12 ASCII digits), so stored data reloads whatever the year is.
    fn lenient(digits: String) -> Result<NationalId, NationalIdError> {
        if digits.is_empty() {
            Err(NationalIdError::Empty)
        } else if !digits.bytes().all(|b| b.is_ascii_digit()) {
            Err(NationalIdError::NotDigits)
        } else if digits.len() != 12 {
            Err(NationalIdError::WrongLength)
        } else {
            Ok(NationalId(digits))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// First 3 and last 2 digits, e.g. `001*******45`, for logs and screens.
    pub fn masked(&self) -> String {
        format!("{}*******{}", &self.0[..3], &self.0[10..])
    }
}

impl fmt::Debug for NationalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NationalId").field(&self.masked()).finish()
    }
}

impl TryFrom<String> for NationalId {
    type Error = NationalIdError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        NationalId::lenient(value)
    }
}

impl From<NationalId> for String {
    fn from(id: NationalId) -> String {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const YEAR: i32 = 2025;

    #[test]
    fn accepts_twelve_digits_typed_with_spaces_dots_and_dashes() {
        let id = NationalId::parse(" 001.099-012 345 ", YEAR).unwrap();
        assert_eq!(id.as_str(), "001099012345");
    }

    #[test]
    fn refuses_empty_input_and_separators_only() {
        assert_eq!(NationalId::parse("", YEAR), Err(NationalIdError::Empty));
        assert_eq!(NationalId::parse(" .- ", YEAR), Err(NationalIdError::Empty));
    }

    #[test]
    fn refuses_letters_and_non_ascii_digits() {
        assert_eq!(NationalId::parse("00109901234a", YEAR), Err(NationalIdError::NotDigits));
        assert_eq!(NationalId::parse("００１０９９０１２３４５", YEAR), Err(NationalIdError::NotDigits));
    }

    #[test]
    fn refuses_eleven_or_thirteen_digits() {
        assert_eq!(NationalId::parse("00109901234", YEAR), Err(NationalIdError::WrongLength));
        assert_eq!(NationalId::parse("0010990123456", YEAR), Err(NationalIdError::WrongLength));
    }

    #[test]
    fn refuses_century_digits_six_to_nine() {
        for d in 6..=9 {
            let s = format!("001{d}99012345");
            assert_eq!(NationalId::parse(&s, YEAR), Err(NationalIdError::ImpossibleCentury));
        }
    }

    #[test]
    fn refuses_a_birth_year_after_the_current_year() {
        assert!(NationalId::parse("001225012345", YEAR).is_ok());
        assert_eq!(NationalId::parse("001226012345", YEAR), Err(NationalIdError::FutureBirthYear));
        assert_eq!(NationalId::parse("001400012345", YEAR), Err(NationalIdError::FutureBirthYear));
        assert!(NationalId::parse("001400012345", 2100).is_ok());
    }

    #[test]
    fn an_unknown_province_code_is_accepted() {
        assert!(NationalId::parse("999199012345", YEAR).is_ok());
    }

    #[test]
    fn both_invalid_reasons_share_one_message_key() {
        assert_eq!(NationalIdError::ImpossibleCentury.reason_key(), "err.id_invalid");
        assert_eq!(NationalIdError::FutureBirthYear.reason_key(), "err.id_invalid");
        assert_eq!(NationalIdError::Empty.reason_key(), "err.id_empty");
        assert_eq!(NationalIdError::NotDigits.reason_key(), "err.id_digits");
        assert_eq!(NationalIdError::WrongLength.reason_key(), "err.id_length");
    }

    #[test]
    fn debug_and_masked_hide_the_middle_digits() {
        let id = NationalId::parse("001099012345", YEAR).unwrap();
        assert_eq!(id.masked(), "001*******45");
        let dbg = format!("{id:?}");
        assert!(dbg.contains("001*******45") && !dbg.contains("099012"));
    }

    #[test]
    fn serde_reloads_stored_ids_without_the_year_check() {
        let id: NationalId = serde_json::from_str("\"001999012345\"").unwrap();
        assert_eq!(id.as_str(), "001999012345");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"001999012345\"");
        assert!(serde_json::from_str::<NationalId>("\"0019990123\"").is_err());
        assert!(serde_json::from_str::<NationalId>("\"001 999 012 345\"").is_err());
    }

    proptest! {
        #[test]
        fn every_well_formed_id_parses_and_round_trips_through_json(
            province in 0u32..1000, century in 0u32..6, yy in 0u32..100, rest in 0u32..1_000_000
        ) {
            let s = format!("{province:03}{century}{yy:02}{rest:06}");
            let id = NationalId::parse(&s, 2199).unwrap();
            prop_assert_eq!(id.as_str(), s.as_str());
            let json = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(serde_json::from_str::<NationalId>(&json).unwrap(), id);
        }
    }
}
