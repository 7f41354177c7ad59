//! `Secret`: the one wrapper for every value a citizen types that must never be shown
//! (password, passcode, OTP, security answer).
//!
//! Why: domain.md §5 "Logs and storage" — no password, passcode, OTP or answer in logs, traces or
//! errors (OWASP Logging Cheat Sheet, "data to exclude"). The wrapper therefore has a redacted
//! `Debug`, deliberately no `Display` and no `Serialize`, and reading the value takes an explicit
//! `expose()` call that is easy to find in review. The memory is wiped on drop by `secrecy`/`zeroize`.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

/// A secret string. `Debug` prints `Secret(***)`; there is no `Display` and no `Serialize`.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// Wraps a value; the caller's `String` moves in and is zeroized when the `Secret` drops.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(SecretString::from(value.into()))
    }

    /// Reads the secret. Every call site is a place where the value leaves protection.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_contains_the_value() {
        let s = Secret::new("Hunter2!xyz");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s:#?}"), "Secret(***)");
        assert!(!format!("{:?}", Some(&s)).contains("Hunter2"));
    }

    #[test]
    fn expose_returns_the_value_given() {
        assert_eq!(Secret::new("abc").expose(), "abc");
        assert_eq!(Secret::from(String::from("xyz")).expose(), "xyz");
    }

    #[test]
    fn a_clone_holds_the_same_value() {
        let a = Secret::new("same");
        let b = a.clone();
        drop(a);
        assert_eq!(b.expose(), "same");
    }
}
