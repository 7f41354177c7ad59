//! `Passcode`: the 6-digit VNeID passcode chosen during activation (domain.md §1 step 4, §5).
//!
//! Six digits are only 10^6 values, so lockout is what really protects it (NIST SP 800-63B
//! §5.2.2, at most 100 consecutive failures). What this module adds is refusing the codes people
//! pick first: NIST SP 800-63B §5.1.1.2 asks to refuse "repetitive or sequential characters"
//! (111111, 123456, 654321, also across 9→0 like 890123), 123123- and 121212-style patterns, and
//! context-specific values (any 6 digits found inside the ID number or the phone number).

use std::fmt;

use super::password::PasswordContext;
use super::secret::Secret;

/// Six ASCII digits that passed the checks below.
pub struct Passcode(Secret);

/// Why a passcode was refused, in check order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PasscodeProblem {
    #[error("passcode must be exactly 6 digits")]
    NotSixDigits,
    #[error("passcode repeats one digit")]
    Repeated,
    #[error("passcode is an ascending or descending run")]
    Sequence,
    #[error("passcode is a repeated pattern")]
    Pattern,
    #[error("passcode is part of the ID or phone number")]
    PartOfIdOrPhone,
}

const REASON_KEYS: &[&str] =
    &["err.pc_format", "err.pc_repeated", "err.pc_sequence", "err.pc_pattern", "err.pc_personal"];

impl PasscodeProblem {
    /// Message key for the citizen-facing text.
    pub fn reason_key(&self) -> &'static str {
        match self {
            PasscodeProblem::NotSixDigits => "err.pc_format",
            PasscodeProblem::Repeated => "err.pc_repeated",
            PasscodeProblem::Sequence => "err.pc_sequence",
            PasscodeProblem::Pattern => "err.pc_pattern",
            PasscodeProblem::PartOfIdOrPhone => "err.pc_personal",
        }
    }
}

/// Every message key `reason_key` can return.
pub fn all_reason_keys() -> &'static [&'static str] {
    REASON_KEYS
}

/// True when each digit is the previous one plus `step` (mod 10).
fn is_run(d: &[u8], step: u8) -> bool {
    d.windows(2).all(|w| (w[0] + step) % 10 == w[1])
}

impl Passcode {
    /// Exactly 6 ASCII digits (surrounding whitespace ignored), then the checks in enum order.
    pub fn parse(input: Secret, ctx: &PasswordContext) -> Result<Passcode, PasscodeProblem> {
        let code = input.expose().trim();
        if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PasscodeProblem::NotSixDigits);
        }
        let d: Vec<u8> = code.bytes().map(|b| b - b'0').collect();
        if d.iter().all(|&x| x == d[0]) {
            Err(PasscodeProblem::Repeated)
        } else if is_run(&d, 1) || is_run(&d, 9) {
            Err(PasscodeProblem::Sequence)
        } else if d[..3] == d[3..] || (0..4).all(|i| d[i] == d[i + 2]) {
            Err(PasscodeProblem::Pattern)
        } else if ctx.national_id.as_str().contains(code) || ctx.phone.national().contains(code) {
            Err(PasscodeProblem::PartOfIdOrPhone)
        } else {
            Ok(Passcode(Secret::new(code)))
        }
    }

    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for Passcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passcode(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::PasscodeProblem::*;
    use super::*;
    use crate::domain::msisdn::Msisdn;
    use crate::domain::national_id::NationalId;
    use proptest::prelude::*;

    fn check(code: &str) -> Result<Passcode, PasscodeProblem> {
        let id = NationalId::parse("001099012345", 2025).unwrap();
        let phone = Msisdn::parse("0912345678").unwrap();
        let ctx = PasswordContext { national_id: &id, phone: &phone };
        Passcode::parse(Secret::new(code), &ctx)
    }

    #[test]
    fn accepts_an_unremarkable_code_and_trims_whitespace() {
        assert_eq!(check(" 285714\n").unwrap().expose(), "285714");
    }

    #[test]
    fn refuses_anything_but_six_ascii_digits() {
        for bad in ["", "12345", "1234567", "12 345", "12a456", "１２３４５６", "+12345"] {
            assert_eq!(check(bad).err(), Some(NotSixDigits), "{bad}");
        }
    }

    #[test]
    fn refuses_one_digit_repeated() {
        assert_eq!(check("111111").err(), Some(Repeated));
        assert_eq!(check("000000").err(), Some(Repeated));
    }

    #[test]
    fn refuses_runs_up_and_down_including_across_nine_to_zero() {
        for s in ["123456", "654321", "890123", "098765", "012345", "987654", "789012"] {
            assert_eq!(check(s).err(), Some(Sequence), "{s}");
        }
    }

    #[test]
    fn refuses_repeated_halves_and_two_digit_patterns() {
        for s in ["123123", "386386", "121212", "909090"] {
            assert_eq!(check(s).err(), Some(Pattern), "{s}");
        }
    }

    #[test]
    fn refuses_six_digits_taken_from_the_id_or_the_phone() {
        assert_eq!(check("099012").err(), Some(PartOfIdOrPhone));
        assert_eq!(check("012345").err(), Some(Sequence)); // also in the ID, but a run first
        assert_eq!(check("091234").err(), Some(PartOfIdOrPhone));
        assert_eq!(check("345678").err(), Some(Sequence));
        assert_eq!(check("912345").err(), Some(PartOfIdOrPhone));
    }

    #[test]
    fn reason_keys_are_all_listed_in_enum_order() {
        let all = [NotSixDigits, Repeated, Sequence, Pattern, PartOfIdOrPhone];
        let keys: Vec<_> = all.iter().map(|p| p.reason_key()).collect();
        assert_eq!(keys, all_reason_keys());
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(format!("{:?}", check("285714").unwrap()), "Passcode(***)");
    }

    proptest! {
        #[test]
        fn an_accepted_passcode_is_six_digits_with_at_least_two_distinct(s in "[0-9]{6}") {
            if let Ok(p) = check(&s) {
                prop_assert_eq!(p.expose(), s.as_str());
                let mut distinct: Vec<char> = s.chars().collect();
                distinct.sort_unstable();
                distinct.dedup();
                prop_assert!(distinct.len() >= 2);
                prop_assert!(!"001099012345".contains(s.as_str()));
            }
        }
    }
}
