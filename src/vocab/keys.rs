//! Message keys named in Rust rather than in flow files.
//!
//! [`FIXED`] are the keys the engine itself shows whatever the flow: `kichhoat check` requires each of them
//! in every catalogue and measures the screens among them against the USSD budget. The others are reasons
//! and notices of particular actions and validators; the check requires them only where a flow uses the
//! action or validator that declares them (see [`super::ActionKind::spec`], [`super::Validator::reasons`]).

/// Above a menu prompt when the choice matched no option.
pub const ERR_CHOICE: &str = "err.choice";
/// Above a prompt when a new dial reopens an activation where it stopped: what it kept, one line.
pub const NOTE_KEPT_ID: &str = "note.kept_id";
pub const NOTE_KEPT_CODE: &str = "note.kept_code";
pub const NOTE_KEPT_VERIFIED: &str = "note.kept_verified";
pub const NOTE_KEPT_PASSWORD: &str = "note.kept_password";
pub const NOTE_KEPT_PASSCODE: &str = "note.kept_passcode";
pub const NOTE_KEPT_QUESTION: &str = "note.kept_question";
pub const KEPT_NOTES: &[&str] =
    &[NOTE_KEPT_ID, NOTE_KEPT_CODE, NOTE_KEPT_VERIFIED, NOTE_KEPT_PASSWORD, NOTE_KEPT_PASSCODE, NOTE_KEPT_QUESTION];
/// A CON screen: leaving an activation whose code is verified loses it; `1` continue, `2` menu, `0` back.
pub const LEAVE_CONFIRM: &str = "leave_confirm";
/// The same question in a recovery (forgot password or passcode): `1` continue, `2` menu, `0` back.
pub const LEAVE_CONFIRM_RECOVERY: &str = "leave_confirm_recovery";
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
/// The OTP SMS of a password recovery: `{otp}`, `{minutes}`, `{ussd_code}`.
pub const SMS_OTP_RESET: &str = "sms.otp_reset";
/// The notice SMS after a password or passcode reset: if it was not the citizen, say so.
pub const SMS_PASSWORD_RESET: &str = "sms.password_reset";
pub const SMS_PASSCODE_RESET: &str = "sms.passcode_reset";

/// Under the help text when a hotline is set (`--help-phone`): `{hotline}`.
pub const HELP_HOTLINE: &str = "help_hotline";

/// END after `HUY`: the conversation was cancelled.
pub const END_CANCELLED: &str = "end.cancelled";
/// Under an SMS reply that waits for an answer: what the citizen can text next.
pub const SMS_MORE: &str = "sms_reply.more";
/// Under an SMS reply that ends the conversation: how to start again.
pub const SMS_AGAIN: &str = "sms_reply.again";
/// Above an SMS reply to a message that held a secret: delete the message you sent.
pub const SMS_DELETE_SECRET: &str = "sms_reply.delete_secret";

pub const FIXED: &[&str] = &[
    ERR_CHOICE,
    NOTE_KEPT_ID,
    NOTE_KEPT_CODE,
    NOTE_KEPT_VERIFIED,
    NOTE_KEPT_PASSWORD,
    NOTE_KEPT_PASSCODE,
    NOTE_KEPT_QUESTION,
    LEAVE_CONFIRM,
    LEAVE_CONFIRM_RECOVERY,
    NOTE_RESTART,
    END_TOO_MANY,
    END_UNAVAILABLE,
    END_DIAL_AGAIN,
    END_CANCELLED,
    SMS_OTP,
    SMS_ACTIVATED,
    SMS_OTP_RESET,
    SMS_PASSWORD_RESET,
    SMS_PASSCODE_RESET,
    SMS_MORE,
    SMS_AGAIN,
    SMS_DELETE_SECRET,
    HELP_HOTLINE,
];
pub const FIXED_SCREENS: &[&str] = &[END_TOO_MANY, END_UNAVAILABLE, END_DIAL_AGAIN, END_CANCELLED];
pub const SMS: &[&str] = &[SMS_OTP, SMS_ACTIVATED, SMS_OTP_RESET, SMS_PASSWORD_RESET, SMS_PASSCODE_RESET];

// Reasons and notices of actions.

/// `verify_otp` refusing a wrong code: `{attempts}` left.
pub const ERR_OTP_WRONG: &str = "err.otp_wrong";
/// Above the code prompt after `resend_otp` sent a new code.
pub const NOTE_OTP_RESENT: &str = "note.otp_resent";
/// Above the code prompt reopened by a new dial once the code has expired (`verify_otp`'s resume notice).
pub const NOTE_OTP_EXPIRED: &str = "note.otp_expired";
/// `login` refusing a password: one reply for an unknown ID, an account not activated and a wrong password.
pub const ERR_LOGIN_REFUSED: &str = "err.login_refused";
/// The same from the third failure in a row on: `{attempts}` left before the lock.
pub const ERR_LOGIN_NEAR_LOCK: &str = "err.login_near_lock";
/// `check_answer` refusing a wrong security answer: `{attempts}` left before recovery is locked.
pub const ERR_ANSWER_WRONG: &str = "err.answer_wrong";
/// Above the password prompt when the confirmation did not match.
pub const ERR_PW_MISMATCH: &str = "err.pw_mismatch";
/// Above the passcode prompt when the confirmation did not match.
pub const ERR_PC_MISMATCH: &str = "err.pc_mismatch";
/// `set_answer` refusing an answer that is the password.
pub const ERR_ANS_PASSWORD: &str = "err.ans_password";

// Reasons of validators whose rules are not a domain type's.

/// The `secret` validator refusing an empty entry.
pub const ERR_EMPTY: &str = "err.empty";
/// The `question` validator refusing a number not on the list, or a question already answered.
pub const ERR_QUESTION: &str = "err.question";
