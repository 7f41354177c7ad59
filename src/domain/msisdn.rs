//! `Msisdn`: a Vietnamese mobile number, stored in one canonical form (`84` + 9 digits, no plus).
//!
//! Why: domain.md §2 — numbers arrive as `0xxxxxxxxx`, `84…`, `+84…` (and `0084…` from some
//! gateways) and must compare equal; only Vietnamese mobile numbers may receive an OTP (SMS pumping,
//! domain.md §5). The prefix check is libphonenumber's VN mobile pattern for the 9-digit national
//! significant number (NSN), written out as a `match` (no regex to fail at run time); a test checks
//! it against the pattern itself for every 3-digit prefix. A phone number is personal data under
//! Decree 13/2023/NĐ-CP, so `Debug` shows only the masked form.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Canonical `84` + 9-digit NSN, e.g. `84912345678`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Msisdn(String);

/// Why a typed phone number was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MsisdnError {
    #[error("phone number is empty")]
    Empty,
    #[error("phone number must contain only digits")]
    NotDigits,
    #[error("phone number has the wrong length")]
    WrongLength,
    #[error("not a Vietnamese mobile number")]
    NotVietnameseMobile,
}

impl MsisdnError {
    /// Message key for the citizen-facing text.
    pub fn reason_key(&self) -> &'static str {
        match self {
            MsisdnError::Empty => "err.phone_empty",
            MsisdnError::NotDigits => "err.phone_digits",
            MsisdnError::WrongLength => "err.phone_length",
            MsisdnError::NotVietnameseMobile => "err.phone_not_mobile",
        }
    }
}

/// libphonenumber VN mobile, anchored:
/// `(?:5(?:2[238]|59)|89[6-9]|99[013-9])\d{6}|(?:3\d|5[689]|7[06-9]|8[1-8]|9[0-8])\d{7}`.
fn is_vn_mobile_nsn(nsn: &str) -> bool {
    let b = nsn.as_bytes();
    if b.len() != 9 || !b.iter().all(u8::is_ascii_digit) {
        return false;
    }
    match (b[0], b[1]) {
        (b'3', _) => true,
        (b'5', b'2') => matches!(b[2], b'2' | b'3' | b'8'),
        (b'5', b'5') => b[2] == b'9',
        (b'5', b'6' | b'8' | b'9') => true,
        (b'7', b'0' | b'6'..=b'9') => true,
        (b'8', b'1'..=b'8') => true,
        (b'8', b'9') => matches!(b[2], b'6'..=b'9'),
        (b'9', b'0'..=b'8') => true,
        (b'9', b'9') => matches!(b[2], b'0' | b'1' | b'3'..=b'9'),
        _ => false,
    }
}

impl Msisdn {
    /// Parses `0xxxxxxxxx`, `84xxxxxxxxx`, `+84xxxxxxxxx` or `0084xxxxxxxxx`; spaces, dots,
    /// dashes and parentheses are ignored.
    pub fn parse(input: &str) -> Result<Msisdn, MsisdnError> {
        let cleaned: String =
            input.chars().filter(|c| !(c.is_whitespace() || matches!(c, '.' | '-' | '(' | ')'))).collect();
        if cleaned.is_empty() {
            return Err(MsisdnError::Empty);
        }
        let (plus, digits) = match cleaned.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, cleaned.as_str()),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(MsisdnError::NotDigits);
        }
        let nsn = if plus {
            digits.strip_prefix("84").ok_or(MsisdnError::NotVietnameseMobile)?
        } else if let Some(intl) = digits.strip_prefix("00") {
            intl.strip_prefix("84").ok_or(MsisdnError::NotVietnameseMobile)?
        } else if let Some(rest) = digits.strip_prefix('0') {
            rest
        } else if let Some(rest) = digits.strip_prefix("84").filter(|_| digits.len() == 11) {
            rest
        } else {
            digits
        };
        if nsn.len() != 9 || nsn.len() == digits.len() {
            return Err(MsisdnError::WrongLength);
        }
        if !is_vn_mobile_nsn(nsn) {
            return Err(MsisdnError::NotVietnameseMobile);
        }
        Ok(Msisdn(format!("84{nsn}")))
    }

    /// Canonical form, e.g. `84912345678`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// E.164 with plus, e.g. `+84912345678`.
    pub fn e164(&self) -> String {
        format!("+{}", self.0)
    }

    /// National form, e.g. `0912345678`.
    pub fn national(&self) -> String {
        format!("0{}", &self.0[2..])
    }

    /// National form with the middle hidden, e.g. `091****678`.
    pub fn masked(&self) -> String {
        let n = self.national();
        format!("{}****{}", &n[..3], &n[7..])
    }

    /// The 9-digit national significant number (used by the context checks of this module tree).
    pub(crate) fn nsn(&self) -> &str {
        &self.0[2..]
    }
}

impl fmt::Debug for Msisdn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Msisdn").field(&self.masked()).finish()
    }
}

/// Accepts anything `parse` accepts, and also any stored canonical `84` + 9 digits, so saved data
/// still reloads if the mobile prefix table changes later.
impl TryFrom<String> for Msisdn {
    type Error = MsisdnError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Msisdn::parse(&value).or_else(|e| {
            let canonical = value.len() == 11 && value.starts_with("84") && value.bytes().all(|b| b.is_ascii_digit());
            if canonical {
                Ok(Msisdn(value))
            } else {
                Err(e)
            }
        })
    }
}

impl From<Msisdn> for String {
    fn from(m: Msisdn) -> String {
        m.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use regex::Regex;

    const LIBPHONENUMBER_VN_MOBILE: &str =
        r"^(?:(?:5(?:2[238]|59)|89[6-9]|99[013-9])\d{6}|(?:3\d|5[689]|7[06-9]|8[1-8]|9[0-8])\d{7})$";

    #[test]
    fn the_prefix_match_agrees_with_libphonenumber_for_every_three_digit_prefix() {
        let re = Regex::new(LIBPHONENUMBER_VN_MOBILE).unwrap();
        for p in 0..1000 {
            for tail in ["000000", "123456", "999999"] {
                let nsn = format!("{p:03}{tail}");
                assert_eq!(is_vn_mobile_nsn(&nsn), re.is_match(&nsn), "{nsn}");
            }
        }
    }

    #[test]
    fn all_written_forms_give_the_canonical_value() {
        for s in ["0912345678", "84912345678", "+84912345678", "0084912345678", "+84 (91) 234-5678", "091.234.5678"] {
            assert_eq!(Msisdn::parse(s).unwrap().as_str(), "84912345678", "{s}");
        }
    }

    #[test]
    fn the_other_forms_are_rendered_from_the_canonical_value() {
        let m = Msisdn::parse("0912345678").unwrap();
        assert_eq!(m.e164(), "+84912345678");
        assert_eq!(m.national(), "0912345678");
        assert_eq!(m.nsn(), "912345678");
        assert_eq!(m.masked(), "091****678");
        let dbg = format!("{m:?}");
        assert!(dbg.contains("091****678") && !dbg.contains("2345"));
    }

    #[test]
    fn refuses_empty_and_non_digit_input() {
        assert_eq!(Msisdn::parse("  "), Err(MsisdnError::Empty));
        assert_eq!(Msisdn::parse("+"), Err(MsisdnError::NotDigits));
        assert_eq!(Msisdn::parse("09123a5678"), Err(MsisdnError::NotDigits));
        assert_eq!(Msisdn::parse("8+4912345678"), Err(MsisdnError::NotDigits));
    }

    #[test]
    fn refuses_wrong_lengths_including_the_old_eleven_digit_numbers() {
        assert_eq!(Msisdn::parse("091234567"), Err(MsisdnError::WrongLength));
        assert_eq!(Msisdn::parse("01623456789"), Err(MsisdnError::WrongLength));
        assert_eq!(Msisdn::parse("+849123456789"), Err(MsisdnError::WrongLength));
        assert_eq!(Msisdn::parse("912345678"), Err(MsisdnError::WrongLength));
        assert_eq!(Msisdn::parse("8491234567"), Err(MsisdnError::WrongLength));
    }

    #[test]
    fn refuses_landlines_and_foreign_numbers() {
        assert_eq!(Msisdn::parse("0243123456"), Err(MsisdnError::NotVietnameseMobile));
        assert_eq!(Msisdn::parse("+12025550123"), Err(MsisdnError::NotVietnameseMobile));
        assert_eq!(Msisdn::parse("0012025550123"), Err(MsisdnError::NotVietnameseMobile));
        assert_eq!(Msisdn::parse("0551234567"), Err(MsisdnError::NotVietnameseMobile));
    }

    #[test]
    fn accepts_the_carrier_prefixes_listed_in_the_reference() {
        for p in [
            "032", "039", "086", "096", "098", "081", "085", "088", "091", "094", "070", "076", "079", "089", "090",
            "093", "052", "056", "058", "092", "059", "087",
        ] {
            assert!(Msisdn::parse(&format!("{p}8765432")).is_ok(), "{p}");
        }
        assert!(Msisdn::parse("0995123456").is_ok());
        assert!(Msisdn::parse("0559123456").is_ok());
    }

    #[test]
    fn reason_keys_match_the_message_catalogue() {
        assert_eq!(MsisdnError::Empty.reason_key(), "err.phone_empty");
        assert_eq!(MsisdnError::NotDigits.reason_key(), "err.phone_digits");
        assert_eq!(MsisdnError::WrongLength.reason_key(), "err.phone_length");
        assert_eq!(MsisdnError::NotVietnameseMobile.reason_key(), "err.phone_not_mobile");
    }

    #[test]
    fn serde_stores_the_canonical_form_and_reloads_it() {
        let m = Msisdn::parse("0912345678").unwrap();
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, "\"84912345678\"");
        assert_eq!(serde_json::from_str::<Msisdn>(&json).unwrap(), m);
        // A stored number whose prefix is no longer in the table still reloads.
        assert!(serde_json::from_str::<Msisdn>("\"84243123456\"").is_ok());
        assert!(serde_json::from_str::<Msisdn>("\"12345\"").is_err());
    }

    proptest! {
        #[test]
        fn the_three_forms_of_any_valid_number_parse_to_the_same_value(
            nsn in "(?:5(?:2[238]|59)|89[6-9]|99[013-9])[0-9]{6}|(?:3[0-9]|5[689]|7[06-9]|8[1-8]|9[0-8])[0-9]{7}"
        ) {
            let national = Msisdn::parse(&format!("0{nsn}")).unwrap();
            prop_assert_eq!(&Msisdn::parse(&format!("84{nsn}")).unwrap(), &national);
            prop_assert_eq!(&Msisdn::parse(&format!("+84{nsn}")).unwrap(), &national);
            prop_assert_eq!(national.national(), format!("0{nsn}"));
        }

        #[test]
        fn parse_agrees_with_the_libphonenumber_pattern(nsn in "[0-9]{9}") {
            let re = Regex::new(LIBPHONENUMBER_VN_MOBILE).unwrap();
            prop_assert_eq!(Msisdn::parse(&format!("+84{nsn}")).is_ok(), re.is_match(&nsn));
        }
    }
}
