//! The actions flow files can name (`action = "verify_otp"`): what happens with a parsed entry, or at once
//! in an automatic state. Each declares what `kichhoat check` needs to know and the engine is held to at
//! run time: the input it takes, the outcomes it can return, and the message keys it can put on screen.
//! The actions themselves live in `engine::actions`.

use super::keys;
use super::Validator;

/// Actions flow files can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActionKind {
    SwitchLanguage,
    StartActivation,
    RequestOtp,
    ResendOtp,
    VerifyOtp,
    ChoosePassword,
    ConfirmPassword,
    ChoosePasscode,
    ConfirmPasscode,
    ChooseQuestion,
    SetAnswer,
    FinishActivation,
    StartLogin,
    Login,
    StartPasswordReset,
    StartPasscodeReset,
    RequestResetOtp,
    PickQuestion,
    CheckAnswer,
    FinishPasswordReset,
    CheckPassword,
    FinishPasscodeReset,
}

/// What an action declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionSpec {
    /// The validator whose value the action takes; `None` for an automatic action.
    pub input: Option<Validator>,
    /// Every outcome it can return; a state running it maps each to a transition.
    pub outcomes: &'static [&'static str],
    /// Reasons it shows when it refuses an entry that parsed (the prompt is asked again).
    pub reasons: &'static [&'static str],
    /// `(outcome, notice)`: the notice stands above the prompt the outcome leads to.
    pub notices: &'static [(&'static str, &'static str)],
    /// Notices it may put above its own prompt when a new dial reopens it (instead of "continuing").
    pub resume_notices: &'static [&'static str],
}

/// An action with no reasons and no notices.
const fn plain(input: Option<Validator>, outcomes: &'static [&'static str]) -> ActionSpec {
    ActionSpec { input, outcomes, reasons: &[], notices: &[], resume_notices: &[] }
}

impl ActionKind {
    /// Every action, for looking one up by name.
    pub const ALL: [ActionKind; 22] = [
        ActionKind::SwitchLanguage,
        ActionKind::StartActivation,
        ActionKind::RequestOtp,
        ActionKind::ResendOtp,
        ActionKind::VerifyOtp,
        ActionKind::ChoosePassword,
        ActionKind::ConfirmPassword,
        ActionKind::ChoosePasscode,
        ActionKind::ConfirmPasscode,
        ActionKind::ChooseQuestion,
        ActionKind::SetAnswer,
        ActionKind::FinishActivation,
        ActionKind::StartLogin,
        ActionKind::Login,
        ActionKind::StartPasswordReset,
        ActionKind::StartPasscodeReset,
        ActionKind::RequestResetOtp,
        ActionKind::PickQuestion,
        ActionKind::CheckAnswer,
        ActionKind::FinishPasswordReset,
        ActionKind::CheckPassword,
        ActionKind::FinishPasscodeReset,
    ];

    pub fn from_name(name: &str) -> Option<ActionKind> {
        ActionKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The name flow files use.
    pub fn name(self) -> &'static str {
        match self {
            ActionKind::SwitchLanguage => "switch_language",
            ActionKind::StartActivation => "start_activation",
            ActionKind::RequestOtp => "request_otp",
            ActionKind::ResendOtp => "resend_otp",
            ActionKind::VerifyOtp => "verify_otp",
            ActionKind::ChoosePassword => "choose_password",
            ActionKind::ConfirmPassword => "confirm_password",
            ActionKind::ChoosePasscode => "choose_passcode",
            ActionKind::ConfirmPasscode => "confirm_passcode",
            ActionKind::ChooseQuestion => "choose_question",
            ActionKind::SetAnswer => "set_answer",
            ActionKind::FinishActivation => "finish_activation",
            ActionKind::StartLogin => "start_login",
            ActionKind::Login => "login",
            ActionKind::StartPasswordReset => "start_password_reset",
            ActionKind::StartPasscodeReset => "start_passcode_reset",
            ActionKind::RequestResetOtp => "request_reset_otp",
            ActionKind::PickQuestion => "pick_question",
            ActionKind::CheckAnswer => "check_answer",
            ActionKind::FinishPasswordReset => "finish_password_reset",
            ActionKind::CheckPassword => "check_password",
            ActionKind::FinishPasscodeReset => "finish_passcode_reset",
        }
    }

    pub fn spec(self) -> ActionSpec {
        use Validator as V;
        match self {
            ActionKind::SwitchLanguage => plain(None, &["done"]),
            ActionKind::StartActivation => plain(Some(V::NationalId), &["done"]),
            ActionKind::RequestOtp => {
                plain(Some(V::Phone), &["sent", "already_active", "pending", "no_match", "limit", "rate_limited"])
            }
            ActionKind::ResendOtp => {
                ActionSpec { notices: &[("sent", keys::NOTE_OTP_RESENT)], ..plain(None, &["sent", "limit"]) }
            }
            ActionKind::VerifyOtp => ActionSpec {
                reasons: &[keys::ERR_OTP_WRONG, keys::NOTE_OTP_EXPIRED],
                resume_notices: &[keys::NOTE_OTP_EXPIRED],
                ..plain(Some(V::Otp), &["ok", "exhausted", "rate_limited"])
            },
            ActionKind::ChoosePassword => plain(Some(V::NewPassword), &["done"]),
            ActionKind::ConfirmPassword => ActionSpec {
                notices: &[("mismatch", keys::ERR_PW_MISMATCH)],
                ..plain(Some(V::Secret), &["ok", "mismatch"])
            },
            ActionKind::ChoosePasscode => plain(Some(V::NewPasscode), &["done"]),
            ActionKind::ConfirmPasscode => ActionSpec {
                notices: &[("mismatch", keys::ERR_PC_MISMATCH)],
                ..plain(Some(V::Secret), &["ok", "mismatch"])
            },
            ActionKind::ChooseQuestion => plain(Some(V::Question), &["done"]),
            ActionKind::SetAnswer => {
                ActionSpec { reasons: &[keys::ERR_ANS_PASSWORD], ..plain(Some(V::Answer), &["more", "done"]) }
            }
            ActionKind::FinishActivation => plain(None, &["activated", "already_active", "refused"]),
            ActionKind::StartLogin => plain(Some(V::NationalId), &["done"]),
            ActionKind::Login => ActionSpec {
                reasons: &[keys::ERR_LOGIN_REFUSED, keys::ERR_LOGIN_NEAR_LOCK],
                ..plain(Some(V::Secret), &["ok", "locked"])
            },
            ActionKind::StartPasswordReset | ActionKind::StartPasscodeReset => plain(Some(V::NationalId), &["done"]),
            ActionKind::RequestResetOtp => {
                plain(Some(V::Phone), &["sent", "no_match", "not_active", "locked", "limit", "rate_limited"])
            }
            ActionKind::PickQuestion => plain(None, &["done", "refused"]),
            ActionKind::CheckAnswer => ActionSpec {
                reasons: &[keys::ERR_ANSWER_WRONG],
                ..plain(Some(V::Secret), &["ok", "locked", "refused"])
            },
            ActionKind::CheckPassword => ActionSpec {
                reasons: &[keys::ERR_LOGIN_REFUSED, keys::ERR_LOGIN_NEAR_LOCK],
                ..plain(Some(V::Secret), &["ok", "locked"])
            },
            ActionKind::FinishPasswordReset | ActionKind::FinishPasscodeReset => plain(None, &["done", "refused"]),
        }
    }

    /// The validator whose value this action takes; `None` for an automatic action.
    pub fn input(self) -> Option<Validator> {
        self.spec().input
    }
    pub fn outcomes(self) -> &'static [&'static str] {
        self.spec().outcomes
    }
    /// Reasons shown when the action refuses an entry that parsed.
    pub fn reasons(self) -> &'static [&'static str] {
        self.spec().reasons
    }
    /// (outcome, notice) pairs: the notice stands above the prompt the outcome leads to.
    pub fn notices(self) -> &'static [(&'static str, &'static str)] {
        self.spec().notices
    }
    /// Notices that may stand above this action's prompt when a new dial reopens it.
    pub fn resume_notices(self) -> &'static [&'static str] {
        self.spec().resume_notices
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_action_round_trips_through_its_unique_name() {
        let names: BTreeSet<&str> = ActionKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), ActionKind::ALL.len(), "names are unique");
        for k in ActionKind::ALL {
            assert_eq!(ActionKind::from_name(k.name()), Some(k));
        }
        assert_eq!(ActionKind::from_name("fly"), None);
    }

    #[test]
    fn all_lists_every_action() {
        // Exhaustive on purpose: a new variant stops this compiling, the reminder to give it a place in ALL.
        let position = |k: ActionKind| match k {
            ActionKind::SwitchLanguage => 0,
            ActionKind::StartActivation => 1,
            ActionKind::RequestOtp => 2,
            ActionKind::ResendOtp => 3,
            ActionKind::VerifyOtp => 4,
            ActionKind::ChoosePassword => 5,
            ActionKind::ConfirmPassword => 6,
            ActionKind::ChoosePasscode => 7,
            ActionKind::ConfirmPasscode => 8,
            ActionKind::ChooseQuestion => 9,
            ActionKind::SetAnswer => 10,
            ActionKind::FinishActivation => 11,
            ActionKind::StartLogin => 12,
            ActionKind::Login => 13,
            ActionKind::StartPasswordReset => 14,
            ActionKind::StartPasscodeReset => 15,
            ActionKind::RequestResetOtp => 16,
            ActionKind::PickQuestion => 17,
            ActionKind::CheckAnswer => 18,
            ActionKind::FinishPasswordReset => 19,
            ActionKind::CheckPassword => 20,
            ActionKind::FinishPasscodeReset => 21,
        };
        for (i, k) in ActionKind::ALL.into_iter().enumerate() {
            assert_eq!(position(k), i, "{k:?}");
        }
    }

    #[test]
    fn specs_are_well_formed() {
        for k in ActionKind::ALL {
            let spec = k.spec();
            let outcomes: BTreeSet<&str> = spec.outcomes.iter().copied().collect();
            assert!(!outcomes.is_empty(), "{k:?} declares no outcome");
            assert_eq!(outcomes.len(), spec.outcomes.len(), "{k:?} declares an outcome twice");
            for (outcome, _) in spec.notices {
                assert!(outcomes.contains(outcome), "{k:?}: notice on undeclared outcome {outcome:?}");
            }
            // Refusing an entry and reopening a prompt only make sense where there is a prompt.
            if spec.input.is_none() {
                assert!(spec.reasons.is_empty() && spec.resume_notices.is_empty(), "{k:?}");
            }
        }
    }
}
