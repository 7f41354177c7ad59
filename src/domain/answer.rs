//! `SecurityAnswer`: the answer to one of the two VNeID security questions (domain.md §1 step 4, §5).
//!
//! Security questions are weak by nature — NIST SP 800-63B §5.1.1.2 forbids them as a secret —
//! but VNeID requires them, so the service keeps them and hashes them like passwords. Answers are
//! normalized before hashing so that what a keypad can type matches what a smartphone types:
//! Unicode NFKC, lower-case, diacritics folded ("Hà Nội" → "ha noi"), spaces trimmed and collapsed.
//! An answer equal to the ID number or the phone (OWASP "Choosing and Using Security Questions":
//! answers must not be public or guessable from the account) is refused. Comparing with the
//! password is the caller's job: the password is not in the context.

use std::fmt;

use unicode_normalization::UnicodeNormalization;

use super::password::PasswordContext;
use super::secret::Secret;
use super::text::{fold_diacritics, normalize_spaces};

/// A normalized answer.
pub struct SecurityAnswer(Secret);

/// Why an answer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AnswerProblem {
    #[error("answer is shorter than 2 characters")]
    TooShort,
    #[error("answer is longer than 40 characters")]
    TooLong,
    #[error("answer is the ID or phone number")]
    Personal,
}

const REASON_KEYS: &[&str] = &["err.ans_short", "err.ans_long", "err.ans_personal"];

impl AnswerProblem {
    /// Message key for the citizen-facing text.
    pub fn reason_key(&self) -> &'static str {
        match self {
            AnswerProblem::TooShort => "err.ans_short",
            AnswerProblem::TooLong => "err.ans_long",
            AnswerProblem::Personal => "err.ans_personal",
        }
    }
}

/// Every message key `reason_key` can return.
pub fn all_reason_keys() -> &'static [&'static str] {
    REASON_KEYS
}

const MIN_CHARS: usize = 2;
const MAX_CHARS: usize = 40;

/// NFKC, lower-case, fold diacritics, collapse spaces. Lower-casing comes before folding because
/// a few capitals lower-case to a letter plus a combining mark (`İ` → `i̇`); folding last keeps the
/// result stable when normalized again.
fn normalize(raw: &str) -> String {
    let nfkc: String = raw.nfkc().collect();
    normalize_spaces(&fold_diacritics(&nfkc.to_lowercase()))
}

/// True when the answer is only a number (digits and phone punctuation) equal to the ID or the
/// phone in any written form.
fn is_personal(answer: &str, ctx: &PasswordContext) -> bool {
    if !answer.chars().all(|c| c.is_ascii_digit() || " +.-()".contains(c)) {
        return false;
    }
    let digits: String = answer.chars().filter(char::is_ascii_digit).collect();
    let phone = ctx.phone;
    let forms = [
        ctx.national_id.as_str().to_owned(),
        phone.as_str().to_owned(),
        format!("00{}", phone.as_str()),
        phone.national(),
        phone.nsn().to_owned(),
    ];
    forms.contains(&digits)
}

impl SecurityAnswer {
    /// Normalizes, then checks length (2–40 characters) and that it is not the ID or phone.
    pub fn parse(input: Secret, ctx: &PasswordContext) -> Result<SecurityAnswer, AnswerProblem> {
        let answer = normalize(input.expose());
        let len = answer.chars().count();
        if len < MIN_CHARS {
            Err(AnswerProblem::TooShort)
        } else if len > MAX_CHARS {
            Err(AnswerProblem::TooLong)
        } else if is_personal(&answer, ctx) {
            Err(AnswerProblem::Personal)
        } else {
            Ok(SecurityAnswer(Secret::new(answer)))
        }
    }

    /// The normalized answer (what gets hashed).
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for SecurityAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecurityAnswer(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::AnswerProblem::*;
    use super::*;
    use crate::domain::msisdn::Msisdn;
    use crate::domain::national_id::NationalId;
    use proptest::prelude::*;

    fn check(answer: &str) -> Result<SecurityAnswer, AnswerProblem> {
        let id = NationalId::parse("001099012345", 2025).unwrap();
        let phone = Msisdn::parse("0912345678").unwrap();
        let ctx = PasswordContext { national_id: &id, phone: &phone };
        SecurityAnswer::parse(Secret::new(answer), &ctx)
    }

    #[test]
    fn a_smartphone_answer_and_a_keypad_answer_normalize_alike() {
        let smart = check("  Hà   Nội ").unwrap();
        let keypad = check("HA NOI").unwrap();
        assert_eq!(smart.expose(), "ha noi");
        assert_eq!(keypad.expose(), smart.expose());
    }

    #[test]
    fn decomposed_and_full_width_input_normalize_too() {
        assert_eq!(check("Đa\u{300} Nă\u{306}\u{301}ng").unwrap().expose(), "da nang");
        assert_eq!(check("ＬＡＮ").unwrap().expose(), "lan");
    }

    #[test]
    fn length_is_counted_after_normalization() {
        assert_eq!(check(" a ").err(), Some(TooShort));
        assert_eq!(check("").err(), Some(TooShort));
        assert!(check("ab").is_ok());
        assert!(check(&"x".repeat(40)).is_ok());
        assert_eq!(check(&"x".repeat(41)).err(), Some(TooLong));
        assert!(check(&format!("{}   {}", "x".repeat(19), "y".repeat(20))).is_ok());
    }

    #[test]
    fn refuses_the_id_and_every_form_of_the_phone() {
        for s in ["001099012345", "001 099 012 345", "0912345678", "+84 912 345 678", "84912345678", "912345678"] {
            assert_eq!(check(s).err(), Some(Personal), "{s}");
        }
    }

    #[test]
    fn an_answer_that_only_mentions_a_number_is_allowed() {
        assert!(check("nha so 0912345678").is_ok());
        assert!(check("1999").is_ok());
    }

    #[test]
    fn reason_keys_are_all_listed_in_enum_order() {
        let keys: Vec<_> = [TooShort, TooLong, Personal].iter().map(|p| p.reason_key()).collect();
        assert_eq!(keys, all_reason_keys());
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(format!("{:?}", check("ha noi").unwrap()), "SecurityAnswer(***)");
    }

    proptest! {
        #[test]
        fn normalizing_an_accepted_answer_again_changes_nothing(s in "\\PC{0,50}") {
            if let Ok(a) = check(&s) {
                let again = check(a.expose()).unwrap();
                prop_assert_eq!(again.expose(), a.expose());
            }
        }
    }
}
