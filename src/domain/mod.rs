//! Domain types of kichhoat: the identifiers a citizen types (ID number, phone) and the secrets
//! chosen during VNeID activation (password, passcode, OTP, security answers), each parsed once at
//! the edge so the rest of the service only handles checked values.
//!
//! Why a module of its own: domain.md §2 (identifier formats) and §5 (security rules) are enforced
//! here and nowhere else; secrets are wrapped in [`Secret`] so they cannot reach logs by accident,
//! and identifiers print masked (Decree 13/2023/NĐ-CP personal data).

pub mod answer;
pub mod msisdn;
pub mod national_id;
pub mod otp;
pub mod passcode;
pub mod password;
pub mod secret;
pub mod text;

pub use answer::{AnswerProblem, SecurityAnswer};
pub use msisdn::{Msisdn, MsisdnError};
pub use national_id::{NationalId, NationalIdError};
pub use otp::{Otp, OtpError};
pub use passcode::{Passcode, PasscodeProblem};
pub use password::{Password, PasswordContext, PasswordProblem};
pub use secret::Secret;
pub use text::{fold_diacritics, gsm7_len, normalize_spaces, ucs2_len};
