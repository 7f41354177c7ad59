//! `Otp`: the 6-digit one-time code sent by SMS to the registered phone (domain.md §1 step 2, §5).
//!
//! NIST SP 800-63B §5.1.3 (out-of-band authenticators) and the OWASP Multifactor Authentication
//! Cheat Sheet: the code comes from a CSPRNG (the caller passes one, e.g. `rand::rngs::OsRng`) and
//! is drawn uniformly. `gen_range` uses rejection sampling, so there is no `random % 10^6` bias.
//! Six decimal digits carry log2(10^6) ≈ 19.9 bits, the customary reading of NIST's 20-bit floor
//! and the length VNeID itself uses. Single use, lifetime and attempt limits belong to the store
//! that keeps only a keyed hash of the code; this type only makes and reads codes, and never
//! shows them in `Debug`.

use std::fmt;

use rand::Rng;

use super::secret::Secret;

/// Six ASCII digits.
pub struct Otp(Secret);

/// Why a typed code was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OtpError {
    #[error("code must be exactly 6 digits")]
    Format,
}

impl OtpError {
    /// Message key for the citizen-facing text.
    pub fn reason_key(&self) -> &'static str {
        match self {
            OtpError::Format => "err.otp_format",
        }
    }
}

impl Otp {
    /// A fresh code, uniform over 000000–999999.
    pub fn generate(rng: &mut (impl rand::RngCore + ?Sized)) -> Otp {
        let n: u32 = rng.gen_range(0..1_000_000u32);
        Otp(Secret::new(format!("{n:06}")))
    }

    /// Exactly 6 ASCII digits after trimming surrounding whitespace.
    pub fn parse(input: &str) -> Result<Otp, OtpError> {
        let code = input.trim();
        if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Otp(Secret::new(code)))
        } else {
            Err(OtpError::Format)
        }
    }

    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for Otp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Otp(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{RngCore, SeedableRng};

    #[test]
    fn parses_six_digits_with_surrounding_whitespace() {
        assert_eq!(Otp::parse(" 012345\n").unwrap().expose(), "012345");
    }

    #[test]
    fn refuses_other_lengths_and_non_digits() {
        for bad in ["", "12345", "1234567", "12 456", "12a456", "１２３４５６", "-12345"] {
            assert_eq!(Otp::parse(bad).err(), Some(OtpError::Format), "{bad}");
        }
        assert_eq!(OtpError::Format.reason_key(), "err.otp_format");
    }

    #[test]
    fn generated_codes_keep_their_leading_zeros() {
        let mut rng = StdRng::seed_from_u64(7);
        let codes: Vec<Otp> = (0..20_000).map(|_| Otp::generate(&mut rng)).collect();
        assert!(codes.iter().all(|c| c.expose().len() == 6));
        let leading_zero = codes.iter().filter(|c| c.expose().starts_with('0')).count();
        // About 10% of uniform codes start with 0; allow a wide margin.
        assert!((1_600..2_400).contains(&leading_zero), "{leading_zero}");
    }

    #[test]
    fn generate_accepts_a_dynamic_rng() {
        let mut boxed: Box<dyn RngCore> = Box::new(StdRng::seed_from_u64(1));
        assert!(Otp::parse(Otp::generate(boxed.as_mut()).expose()).is_ok());
        assert!(Otp::parse(Otp::generate(&mut rand::thread_rng()).expose()).is_ok());
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(format!("{:?}", Otp::parse("123456").unwrap()), "Otp(***)");
    }

    proptest! {
        #[test]
        fn a_generated_code_always_parses(seed in any::<u64>()) {
            let otp = Otp::generate(&mut StdRng::seed_from_u64(seed));
            let parsed = Otp::parse(otp.expose()).unwrap();
            prop_assert_eq!(parsed.expose(), otp.expose());
        }
    }
}
