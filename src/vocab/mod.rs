//! The vocabulary flow files and the engine share: the named actions and validators a flow may use, what
//! each declares (its input, outcomes, the reasons and notices it can put on screen), and the message keys
//! the engine shows on its own.
//!
//! Why a leaf: `flow::check` proves a flow directory against these declarations, and the engine is held to
//! them at run time; neither side should need the other to do its part. This module is data only: it
//! imports nothing from `engine`, `flow`, `store` or `service` (the validators' reason lists come from
//! `domain`, itself a leaf).

pub mod actions;
pub mod keys;
pub mod validators;

pub use actions::{ActionKind, ActionSpec};
pub use validators::Validator;

/// How a conversation reaches the citizen this turn: it decides the words (dial again, or text again),
/// the screen budget, and what stands around a reply (an SMS reply says what can be texted next).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Medium {
    /// A USSD session: one screen of 182 GSM-7 (80 UCS-2) characters, the carrier keeps the session.
    Ussd,
    /// SMS both ways: a reply of up to 3 concatenated parts; no session but the conversation itself.
    Sms,
}

impl Medium {
    pub const ALL: [Medium; 2] = [Medium::Ussd, Medium::Sms];
    /// The catalogue table whose messages replace the common ones for this medium (`[for_sms]`).
    pub fn overrides(self) -> Option<&'static str> {
        match self {
            Medium::Ussd => None,
            Medium::Sms => Some("for_sms"),
        }
    }
}

/// Words an SMS can carry instead of an answer, in any case, with or without diacritics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `HUY` / `CANCEL`: end the conversation in progress; a code sent before no longer opens anything.
    Cancel,
    /// `MENU`: back to the main menu.
    Menu,
    /// `TRO GIUP` / `HELP`: the help text.
    Help,
}
