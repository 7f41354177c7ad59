//! Message keys the engine itself uses (not named by any flow file). `kichhoat check` requires each of
//! them in every catalogue and measures the screens among them against the USSD budget.

/// Above a menu prompt when the choice matched no option.
pub const ERR_CHOICE: &str = "err.choice";
/// Above a prompt when a new dial reopens an activation where it stopped.
pub const NOTE_RESUME: &str = "note.resume";
/// Above the start prompt when an idle conversation was started over.
pub const NOTE_RESTART: &str = "note.restart";
/// END after too many refused entries at one step.
pub const END_TOO_MANY: &str = "end.too_many_tries";
/// END when an operational fault keeps the service from answering (details go to the log only).
pub const END_UNAVAILABLE: &str = "end.unavailable";
/// END when a carrier hop cannot be matched to the conversation (the citizen should dial again).
pub const END_DIAL_AGAIN: &str = "end.dial_again";
/// The OTP SMS: `{otp}`, `{minutes}`; no links, and a warning that the police never ask for codes.
pub const SMS_OTP: &str = "sms.otp";
/// The confirmation SMS after a successful activation.
pub const SMS_ACTIVATED: &str = "sms.activated";

pub const FIXED: &[&str] =
    &[ERR_CHOICE, NOTE_RESUME, NOTE_RESTART, END_TOO_MANY, END_UNAVAILABLE, END_DIAL_AGAIN, SMS_OTP, SMS_ACTIVATED];
pub const FIXED_SCREENS: &[&str] = &[END_TOO_MANY, END_UNAVAILABLE, END_DIAL_AGAIN];
pub const SMS: &[&str] = &[SMS_OTP, SMS_ACTIVATED];
