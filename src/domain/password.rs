//! `Password`: the VNeID account password chosen during activation (domain.md §1 step 4, §5).
//!
//! Rules and where they come from:
//! - 8–20 characters with a digit, an upper-case, a lower-case and a special character: VNeID's
//!   own rule (the handbook's specials are `! @ # $ ^ * ( ) _`). NIST SP 800-63B §5.1.1.2 advises
//!   against composition rules and a 20-character cap, but the password must be accepted by VNeID,
//!   so its rules win; NIST's 8-character minimum is met.
//! - Printable ASCII without spaces only: a keypad's multi-tap types ASCII letters, digits and
//!   symbols, and VNeID's web form expects the same; anything else would be a typing accident.
//!   `*` is allowed — the USSD layer must handle it (domain.md §3).
//! - No context-specific words (the ID number, the phone, the service name "vneid") and no
//!   commonly used passwords: NIST SP 800-63B §5.1.1.2 blocklist; OWASP Authentication Cheat Sheet.
//! - Each refusal names its reason (NIST: "SHALL advise the subscriber" why), via `reason_key`.
//!
//! `parse_login` only bounds the size (≤ 64, NIST's "at least 64" ceiling): at log-in, saying which
//! rule an old password breaks would leak information.

use std::fmt;

use super::msisdn::Msisdn;
use super::national_id::NationalId;
use super::secret::Secret;

/// A password that passed the activation rules (or, via `parse_login`, a size check only).
pub struct Password(Secret);

/// What a password, passcode or answer must not be built from.
pub struct PasswordContext<'a> {
    pub national_id: &'a NationalId,
    pub phone: &'a Msisdn,
}

/// Why a new password was refused, in check order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PasswordProblem {
    #[error("password is shorter than 8 characters")]
    TooShort,
    #[error("password is longer than 20 characters")]
    TooLong,
    #[error("password has a space or a character outside printable ASCII")]
    BadCharacter,
    #[error("password has no digit")]
    NoDigit,
    #[error("password has no upper-case letter")]
    NoUpper,
    #[error("password has no lower-case letter")]
    NoLower,
    #[error("password has no special character")]
    NoSpecial,
    #[error("password contains the ID number")]
    ContainsId,
    #[error("password contains the phone number")]
    ContainsPhone,
    #[error("password contains the service name")]
    ContainsServiceName,
    #[error("password is too common")]
    Common,
}

const REASON_KEYS: &[&str] = &[
    "err.pw_short",
    "err.pw_long",
    "err.pw_char",
    "err.pw_digit",
    "err.pw_upper",
    "err.pw_lower",
    "err.pw_special",
    "err.pw_id",
    "err.pw_phone",
    "err.pw_name",
    "err.pw_common",
];

impl PasswordProblem {
    /// Message key for the citizen-facing text.
    pub fn reason_key(&self) -> &'static str {
        match self {
            PasswordProblem::TooShort => "err.pw_short",
            PasswordProblem::TooLong => "err.pw_long",
            PasswordProblem::BadCharacter => "err.pw_char",
            PasswordProblem::NoDigit => "err.pw_digit",
            PasswordProblem::NoUpper => "err.pw_upper",
            PasswordProblem::NoLower => "err.pw_lower",
            PasswordProblem::NoSpecial => "err.pw_special",
            PasswordProblem::ContainsId => "err.pw_id",
            PasswordProblem::ContainsPhone => "err.pw_phone",
            PasswordProblem::ContainsServiceName => "err.pw_name",
            PasswordProblem::Common => "err.pw_common",
        }
    }
}

/// Every message key `reason_key` can return.
pub fn all_reason_keys() -> &'static [&'static str] {
    REASON_KEYS
}

const MIN_LEN: usize = 8;
const MAX_LEN: usize = 20;
const MAX_LOGIN_LEN: usize = 64;

/// Common passwords that satisfy the composition rules, compared case-insensitively.
/// Drawn from public breach lists' top entries in the "Word@123" shape, plus Vietnamese ones
/// ("matkhau" = password, "anhyeuem"/"emyeuanh" = I love you).
const BLOCKLIST: &[&str] = &[
    "Password@1",
    "Password@123",
    "Password1!",
    "Password123!",
    "P@ssw0rd",
    "P@ssword1",
    "P@ssw0rd123",
    "Abc@12345",
    "Abc@123456",
    "Abc@1234",
    "Abcd@1234",
    "Abcd@12345",
    "Abc123!@#",
    "Admin@123",
    "Admin@1234",
    "Admin123!",
    "Vneid@123",
    "Vneid@2024",
    "Matkhau@123",
    "Matkhau@1",
    "Matkhau123!",
    "Qwerty@123",
    "Qwerty123!",
    "Aa@123456",
    "Aa123456@",
    "Aa@12345",
    "Welcome@123",
    "Hello@123",
    "Iloveyou@1",
    "Anhyeuem@123",
    "Emyeuanh@123",
    "Vietnam@123",
    "1qaz@WSX",
    "Zxcvbnm@123",
    "Test@123",
];

/// The NIST "context-specific words": the ID number, the phone, the service name.
fn contains_context(text: &str, ctx: &PasswordContext) -> Option<PasswordProblem> {
    if text.contains(ctx.national_id.as_str()) {
        Some(PasswordProblem::ContainsId)
    } else if text.contains(ctx.phone.nsn()) {
        // The 9-digit NSN is inside every written form of the phone: 0…, 84…, +84….
        Some(PasswordProblem::ContainsPhone)
    } else if text.to_ascii_lowercase().contains("vneid") {
        Some(PasswordProblem::ContainsServiceName)
    } else {
        None
    }
}

impl Password {
    /// Checks a new password in this order: length, characters, digit, upper, lower, special,
    /// context words, blocklist; the first failing rule is returned.
    pub fn parse(input: Secret, ctx: &PasswordContext) -> Result<Password, PasswordProblem> {
        use PasswordProblem::*;
        let pw = input.expose();
        let len = pw.chars().count();
        let has = |f: fn(&u8) -> bool| pw.as_bytes().iter().any(f);
        let problem = if len < MIN_LEN {
            Some(TooShort)
        } else if len > MAX_LEN {
            Some(TooLong)
        } else if !pw.bytes().all(|b| b.is_ascii_graphic()) {
            Some(BadCharacter)
        } else if !has(u8::is_ascii_digit) {
            Some(NoDigit)
        } else if !has(u8::is_ascii_uppercase) {
            Some(NoUpper)
        } else if !has(u8::is_ascii_lowercase) {
            Some(NoLower)
        } else if !has(u8::is_ascii_punctuation) {
            Some(NoSpecial)
        } else if let Some(p) = contains_context(pw, ctx) {
            Some(p)
        } else if BLOCKLIST.iter().any(|c| c.eq_ignore_ascii_case(pw)) {
            Some(Common)
        } else {
            None
        };
        match problem {
            Some(p) => Err(p),
            None => Ok(Password(input)),
        }
    }

    /// The size check used at log-in: non-empty and at most 64 characters, nothing else.
    pub fn parse_login(input: Secret) -> Result<Password, PasswordProblem> {
        match input.expose().chars().count() {
            0 => Err(PasswordProblem::TooShort),
            n if n > MAX_LOGIN_LEN => Err(PasswordProblem::TooLong),
            _ => Ok(Password(input)),
        }
    }

    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::PasswordProblem::*;
    use super::*;
    use proptest::prelude::*;

    fn ids() -> (NationalId, Msisdn) {
        (NationalId::parse("001099012345", 2025).unwrap(), Msisdn::parse("0912345678").unwrap())
    }

    fn check(pw: &str) -> Result<Password, PasswordProblem> {
        let (id, phone) = ids();
        let ctx = PasswordContext { national_id: &id, phone: &phone };
        Password::parse(Secret::new(pw), &ctx)
    }

    #[test]
    fn accepts_a_password_with_every_kind_of_character() {
        assert_eq!(check("Ha*Noi2024!").unwrap().expose(), "Ha*Noi2024!");
        assert!(check("Xy7*Kp#Qz").is_ok());
    }

    #[test]
    fn length_is_counted_in_characters_from_eight_to_twenty() {
        assert_eq!(check("Ab1*xyz").err(), Some(TooShort));
        assert!(check("Ab1*xyzw").is_ok());
        assert!(check("Ab1*xyzwxyzwxyzwxyzw").is_ok());
        assert_eq!(check("Ab1*xyzwxyzwxyzwxyzwx").err(), Some(TooLong));
        assert_eq!(check("Àb1*xyz").err(), Some(TooShort));
    }

    #[test]
    fn refuses_spaces_and_non_ascii_letters() {
        assert_eq!(check("Ab1* xyzw").err(), Some(BadCharacter));
        assert_eq!(check("Àb1*xyzw").err(), Some(BadCharacter));
        assert_eq!(check("Ab1*xyz\tw").err(), Some(BadCharacter));
    }

    #[test]
    fn each_missing_character_class_is_named() {
        assert_eq!(check("Abc*defgh").err(), Some(NoDigit));
        assert_eq!(check("abc*1defg").err(), Some(NoUpper));
        assert_eq!(check("ABC*1DEFG").err(), Some(NoLower));
        assert_eq!(check("Abc11defg").err(), Some(NoSpecial));
    }

    #[test]
    fn every_handbook_special_character_counts_including_the_star() {
        for c in ['!', '@', '#', '$', '^', '*', '(', ')', '_'] {
            assert!(check(&format!("Xyzk{c}2468")).is_ok(), "{c}");
        }
    }

    #[test]
    fn refuses_the_id_the_phone_and_the_service_name() {
        assert_eq!(check("A*001099012345b").err(), Some(ContainsId));
        assert_eq!(check("A*0912345678b").err(), Some(ContainsPhone));
        assert_eq!(check("A*912345678b").err(), Some(ContainsPhone));
        assert_eq!(check("Xx1*VnEiD9").err(), Some(ContainsServiceName));
    }

    #[test]
    fn refuses_common_passwords_whatever_their_case() {
        assert_eq!(check("P@ssw0rd").err(), Some(Common));
        assert_eq!(check("aBC@12345").err(), Some(Common));
        assert_eq!(check("MatKhau@123").err(), Some(Common));
    }

    #[test]
    fn every_blocklist_entry_passes_composition_so_the_list_is_not_dead_weight() {
        for entry in BLOCKLIST {
            let got = check(entry).err();
            assert!(matches!(got, Some(Common | ContainsServiceName)), "{entry}: {got:?}");
        }
        assert!(BLOCKLIST.len() >= 30);
    }

    #[test]
    fn login_only_checks_that_the_size_is_sane() {
        assert!(Password::parse_login(Secret::new("a")).is_ok());
        assert!(Password::parse_login(Secret::new("old pass ừ")).is_ok());
        assert_eq!(Password::parse_login(Secret::new("")).err(), Some(TooShort));
        assert!(Password::parse_login(Secret::new("x".repeat(64))).is_ok());
        assert_eq!(Password::parse_login(Secret::new("x".repeat(65))).err(), Some(TooLong));
    }

    #[test]
    fn reason_keys_follow_the_enum_and_are_all_listed() {
        let all = [
            TooShort,
            TooLong,
            BadCharacter,
            NoDigit,
            NoUpper,
            NoLower,
            NoSpecial,
            ContainsId,
            ContainsPhone,
            ContainsServiceName,
            Common,
        ];
        let keys: Vec<_> = all.iter().map(|p| p.reason_key()).collect();
        assert_eq!(keys, all_reason_keys());
        assert_eq!(ContainsServiceName.reason_key(), "err.pw_name");
        assert_eq!(BadCharacter.reason_key(), "err.pw_char");
    }

    #[test]
    fn debug_is_redacted() {
        let pw = check("Ha*Noi2024!").unwrap();
        assert_eq!(format!("{pw:?}"), "Password(***)");
    }

    proptest! {
        #[test]
        fn an_accepted_password_always_meets_every_composition_rule(s in "[!-~]{8,20}") {
            if let Ok(pw) = check(&s) {
                let p = pw.expose();
                prop_assert!(p.bytes().any(|b| b.is_ascii_digit()));
                prop_assert!(p.bytes().any(|b| b.is_ascii_uppercase()));
                prop_assert!(p.bytes().any(|b| b.is_ascii_lowercase()));
                prop_assert!(p.bytes().any(|b| b.is_ascii_punctuation()));
                prop_assert!(!p.to_ascii_lowercase().contains("vneid"));
            }
        }
    }
}
