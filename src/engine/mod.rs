//! The conversation engine: a pure, deterministic step
//! `(flow, session, inbound input, now, randomness, read-only directory) → (session, reply, effects)`.
//!
//! No tokio, sled, clock or network here. The caller loads the session, runs [`step`] (on a blocking
//! pool: some actions hash with argon2id), commits the new session together with the effects in one
//! transaction, and only then answers the carrier. Effects are data: an SMS to queue, an account to
//! create, an audit event. Security rules (OTP lifetime and attempts, what must precede an activation)
//! are here in Rust; the dialogue around them is flow data.

pub mod actions;
pub mod policy;
pub mod validators;

use std::borrow::Cow;
use std::time::Duration;

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::crypto::{Crypto, CryptoError};
use crate::domain::{Msisdn, NationalId, Secret};
use crate::flow::catalog::Catalog;
use crate::flow::{Flow, Kind, Lang};
use crate::limits::{Bump, CounterKey, Tally};
/// The message keys the engine shows, re-exported from their home in [`crate::vocab`].
pub use crate::vocab::keys;
pub use crate::vocab::{Command, Medium};
pub use actions::Act;
pub use policy::Policy;

/// An activation (or log-in) idle this long starts over (issue #2).
pub const IDLE_RESET: Duration = Duration::from_secs(15 * 60);
/// Automatic states followed in one step before the engine gives up (a loop in a flow).
const MAX_HOPS: usize = 32;

/// A citizen in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Citizen {
    pub national_id: NationalId,
    pub phone: Msisdn,
    pub full_name: String,
    pub status: CitizenStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CitizenStatus {
    Approved,
    Pending,
    /// Missing from the latest registry import: kept (never deleted, an account stays), but the registry
    /// answers as for an unknown ID number, so no activation or recovery can start.
    Removed,
}

/// An activated account: credentials only as argon2id PHC strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub national_id: NationalId,
    pub phone: Msisdn,
    pub password_hash: String,
    pub passcode_hash: String,
    pub questions: Vec<Answered>,
    pub activated_at: Millis,
}

/// A security question and the argon2id hash of its normalized answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answered {
    pub question: String,
    pub answer_hash: String,
}

/// Read-only view of what the engine may consult: citizens, accounts, and the counters limits read.
/// What it reads is a hint for the reply: limits are enforced again by the commit (see
/// [`crate::limits`]).
pub trait Directory {
    fn citizen(&self, id: &NationalId) -> Result<Option<Citizen>, DirectoryError>;
    fn account(&self, id: &NationalId) -> Result<Option<Account>, DirectoryError>;
    fn tally(&self, key: &CounterKey) -> Result<Tally, DirectoryError>;
}

#[derive(Debug, thiserror::Error)]
#[error("directory lookup failed: {0}")]
pub struct DirectoryError(pub String);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("flow misuse at state {state}: {why}")]
    Flow { state: String, why: &'static str },
}

/// The conversation of one phone, kept between hops and between USSD sessions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub lang: Lang,
    /// The state whose prompt the citizen was last shown.
    pub state: String,
    /// Refused entries at this state.
    pub tries: u8,
    pub updated_at: Millis,
    #[serde(default, skip_serializing_if = "Slots::is_empty")]
    pub slots: Slots,
    /// The citizen chose to leave an activation whose code is verified and is asked to confirm
    /// ([`keys::LEAVE_CONFIRM`]); the session still stands at the step left.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
    /// An activation put aside when the citizen went elsewhere (a fast-dial, `0` before the code was
    /// verified): the next plain dial within [`IDLE_RESET`] of it brings it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked: Option<Box<Parked>>,
}

/// An activation put aside: the step it stood at and what it had gathered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parked {
    pub state: String,
    pub slots: Slots,
    /// When it was last worked on: it is kept as long as an activation idle this long would be.
    pub at: Millis,
}

/// What a conversation is about: which SMS a code goes out in, and what a verified code opens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    #[default]
    Activation,
    /// Forgot password: code, one security answer, a new password.
    ResetPassword,
    /// Forgot passcode: the password, a new passcode.
    ResetPasscode,
    /// A log-in: the ID number waiting for its password.
    Login,
}

/// What an activation, log-in or recovery has gathered so far. Secrets only as hashes.
///
/// Empty fields are left out of the stored form (every stored conversation carries its slots, most of
/// them empty: about 150 bytes each, BENCHMARKS.md) and read back as empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Slots {
    #[serde(default, skip_serializing_if = "is_activation")]
    pub purpose: Purpose,
    /// A recovery's security answer was right.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub answered: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub national_id: Option<NationalId>,
    /// The registered phone the OTP went to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<Msisdn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otp: Option<OtpRecord>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub otp_sends: u8,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verified: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passcode_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub questions: Vec<Answered>,
    /// A question chosen and waiting for its answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question: Option<String>,
}

impl Slots {
    /// Nothing gathered (the menu, a fresh dial).
    pub fn is_empty(&self) -> bool {
        *self == Slots::default()
    }
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

/// An issued OTP: only its keyed hash is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtpRecord {
    pub mac: String,
    pub expires_at: Millis,
    pub wrong: u8,
}

fn is_activation(p: &Purpose) -> bool {
    *p == Purpose::Activation
}

impl Session {
    pub fn new(flow: &Flow, now: Millis) -> Session {
        Session {
            lang: Lang::Vi,
            state: flow.start.clone(),
            tries: 0,
            updated_at: now,
            slots: Slots::default(),
            leaving: false,
            parked: None,
        }
    }

    /// The activation (or recovery) of `id` this conversation holds, as a session standing at it: the one
    /// in progress, or the one put aside ([`Session::parked`]). For operators' views.
    pub fn activation_of(&self, id: &NationalId) -> Option<Session> {
        if self.slots.national_id.as_ref() == Some(id) && self.slots.purpose != Purpose::Login {
            return Some(self.clone());
        }
        let p = self.parked.as_ref().filter(|p| p.slots.national_id.as_ref() == Some(id))?;
        Some(Session {
            state: p.state.clone(),
            slots: p.slots.clone(),
            updated_at: p.at,
            leaving: false,
            parked: None,
            ..self.clone()
        })
    }

    /// What is worth keeping of a conversation idle past [`IDLE_RESET`]: only the language choice, at no
    /// state (the next input starts at the menu). `None` when that is the default, so nothing is kept.
    pub fn idle_form(&self) -> Option<Session> {
        (self.lang != Lang::Vi).then(|| Session {
            lang: self.lang,
            state: String::new(),
            tries: 0,
            updated_at: self.updated_at,
            slots: Slots::default(),
            leaving: false,
            parked: None,
        })
    }
}

/// What arrived from the citizen, whatever the channel.
#[derive(Debug, Clone)]
pub enum Inbound {
    /// The citizen opened a new session (dialled the USSD code). With no choices it resumes an activation
    /// in progress (or one put aside, see [`Session::parked`]); with choices already in it (a fast-dial
    /// `*384*1*<ID>#`) they are meant for the menu, so an activation in progress is put aside and the
    /// session starts at the menu and runs each choice as typed.
    Start { choices: Vec<Secret> },
    /// One entry typed at the current prompt. Wrapped: it may be a password.
    Text(Secret),
    /// A message that opens an exchange (a first SMS, or one after the last reply ended it): it answers
    /// the step an activation in progress waits at, and otherwise opens the menu whatever it says.
    Open(Secret),
    /// A command word instead of an answer (SMS keywords), with the text that carried it.
    Command(Command, Secret),
}

/// The screen to show: full text with diacritics; the channel renders it for its charset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub text: String,
    /// true: END (the session closes); false: CON (waits for input).
    pub end: bool,
}

/// Why an SMS is sent; decides nothing in the engine, but lets the edge log and count without the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmsPurpose {
    Otp,
    Activated,
    /// The password or passcode was reset: if it was not the citizen, they should say so.
    CredentialChanged,
}

impl SmsPurpose {
    /// How long after it is queued the message is still of use: an OTP after its lifetime only confuses,
    /// so its delivery gives up then.
    pub fn useful_for(self) -> Duration {
        match self {
            SmsPurpose::Otp => actions::OTP_LIFETIME,
            SmsPurpose::Activated | SmsPurpose::CredentialChanged => Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// A side effect for the caller to commit atomically with the new session.
#[derive(Debug)]
pub enum Effect {
    Sms {
        to: Msisdn,
        body: Secret,
        purpose: SmsPurpose,
    },
    /// Create the account; the commit must fail if one already exists (two phones racing).
    Activate(Account),
    Audit(AuditEvent),
    /// A counted event: the commit applies its rule to the counter and refuses the whole step if the
    /// rule refuses it.
    Count(Bump),
    /// Replace a credential's hash on an account (a reset, or an upgrade after a successful log-in).
    UpdateAccount(AccountUpdate),
}

/// Which credential of an account an update replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    Password,
    Passcode,
}

/// A credential hash to replace on an account, if the account still holds `old` (what the step read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountUpdate {
    pub national_id: NationalId,
    pub credential: Credential,
    pub old: String,
    pub new: String,
    /// What the commit does when the account no longer holds `old` (or is gone): a rehash is skipped
    /// (`false`); a reset the citizen is told about is refused as a conflict, and the step runs again on
    /// the account as it is now (`true`).
    pub required: bool,
}

impl AccountUpdate {
    /// Applies the update to `account`: `Some(true)` changed, `Some(false)` skipped, `None` refused.
    pub fn apply(&self, account: Option<&mut Account>) -> Option<bool> {
        let slot = account.map(|a| match self.credential {
            Credential::Password => &mut a.password_hash,
            Credential::Passcode => &mut a.passcode_hash,
        });
        match slot {
            Some(h) if *h == self.old => {
                *h = self.new.clone();
                Some(true)
            }
            _ if self.required => None,
            _ => Some(false),
        }
    }
}

/// An authentication or delivery event for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub event: String,
    pub national_id: Option<NationalId>,
    pub phone: Option<Msisdn>,
    /// What the event is about when that is neither an ID number nor a phone: an SMS event names the
    /// message id (`<store instance>-<seq>`). Never a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The result of one step.
#[derive(Debug)]
pub struct Stepped {
    pub session: Session,
    pub reply: Reply,
    pub effects: Vec<Effect>,
    /// The step looked an ID number up in the registry: the service pads such replies to one floor, so
    /// their time does not tell which answer the registry gave.
    pub lookup: bool,
}

/// What the screens and SMS say about this deployment: the USSD code citizens dial, and a hotline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// The service code, e.g. `*384#` (`--ussd-code`); a fast-dial appends choices: `*384*1#`.
    pub ussd_code: String,
    /// A phone number for help, shown on the help screen when set (`--help-phone`).
    pub help_phone: Option<String>,
}

impl Default for Site {
    fn default() -> Site {
        Site { ussd_code: DEFAULT_USSD_CODE.into(), help_phone: None }
    }
}

/// The service code dialled when none is configured.
pub const DEFAULT_USSD_CODE: &str = "*384#";

impl Site {
    /// The code that dials straight to menu choice `choice`: `*384#` and 2 make `*384*2#`.
    pub fn fast_dial(&self, choice: &str) -> String {
        match self.ussd_code.strip_suffix('#') {
            Some(base) => format!("{base}*{choice}#"),
            None => self.ussd_code.clone(),
        }
    }
}

/// Everything a step reads besides the session and the input.
pub struct Ctx<'a> {
    pub flow: &'a Flow,
    pub directory: &'a dyn Directory,
    pub crypto: &'a Crypto,
    pub now: Millis,
    /// The phone the citizen is calling from.
    pub caller: &'a Msisdn,
    /// How the reply reaches the citizen this turn (its words, budget and frame).
    pub medium: Medium,
    /// The abuse limits in force.
    pub policy: &'a Policy,
    /// The USSD code and hotline the texts mention.
    pub site: &'a Site,
}

/// Working state of one step.
pub(crate) struct Out {
    pub effects: Vec<Effect>,
    pub args: Vec<(&'static str, String)>,
    /// The citizen typed a secret this turn (a password, passcode or answer).
    pub took_secret: bool,
    /// Until when a lock or cap met this turn lasts (`{until}` on screen, local time in Vietnam).
    pub until: Option<Millis>,
    /// An ID number was looked up this turn (see [`Stepped::lookup`]).
    pub lookup: bool,
}

/// Runs one step of the conversation.
pub fn step(
    ctx: &Ctx,
    session: Option<Session>,
    inbound: Inbound,
    rng: &mut dyn RngCore,
) -> Result<Stepped, EngineError> {
    let flow = ctx.flow;
    let mut s = session.unwrap_or_else(|| Session::new(flow, ctx.now));
    let mut out = Out { effects: Vec::new(), args: Vec::new(), took_secret: false, until: None, lookup: false };
    let idle = ctx.now.since(s.updated_at) > IDLE_RESET;
    let resumable =
        |s: &Session| flow.state(&s.state).filter(|st| st.resume && matches!(st.kind, Kind::Input { .. })).cloned();
    if s.parked.as_ref().is_some_and(|p| ctx.now.since(p.at) > IDLE_RESET) {
        s.parked = None;
    }
    let reply = match inbound {
        Inbound::Start { choices } if choices.is_empty() => {
            s.leaving = false;
            match resumable(&s) {
                Some(st) if !idle => resume(ctx, &mut s, &out, &st),
                _ => match unpark(flow, &mut s) {
                    Some(st) => resume(ctx, &mut s, &out, &st),
                    None => go(ctx, &mut s, &mut out, &flow.start.clone(), None, rng)?,
                },
            }
        }
        Inbound::Start { choices } => {
            // A fast-dial (`*384*2#`) is meant for the menu; an activation in progress is put aside, and
            // the next plain dial brings it back.
            s.leaving = false;
            if resumable(&s).is_some() && !idle {
                park(&mut s);
            }
            let mut reply = go(ctx, &mut s, &mut out, &flow.start.clone(), None, rng)?;
            for choice in choices {
                if reply.end {
                    break;
                }
                reply = on_text(ctx, &mut s, &mut out, choice, false, rng)?;
            }
            reply
        }
        Inbound::Text(input) => on_text(ctx, &mut s, &mut out, input, idle, rng)?,
        // A first message: it answers the step an activation waits at, else it opens the menu (or the
        // activation put aside, where it stopped).
        Inbound::Open(input) => match resumable(&s) {
            Some(_) if !idle && s.leaving => {
                s.leaving = false;
                leave_choice(ctx, &mut s, &mut out, input, rng)?
            }
            Some(st) if !idle => on_input(ctx, &mut s, &mut out, &st, input, rng)?,
            _ => {
                s.leaving = false;
                match unpark(flow, &mut s) {
                    Some(st) => resume(ctx, &mut s, &out, &st),
                    None => go(ctx, &mut s, &mut out, &flow.start.clone(), None, rng)?,
                }
            }
        },
        // At a security-answer prompt `HUY` is an answer: Huy is a common given name (a best friend's,
        // say). MENU still leaves.
        Inbound::Command(Command::Cancel, text) if !idle && waits_for_answer(flow, &s) => {
            on_text(ctx, &mut s, &mut out, text, idle, rng)?
        }
        Inbound::Command(Command::Menu, _) if !idle => to_menu(ctx, &mut s, &mut out, rng)?,
        Inbound::Command(Command::Menu, _) => go(ctx, &mut s, &mut out, &flow.start.clone(), None, rng)?,
        Inbound::Command(Command::Help, _) => go(ctx, &mut s, &mut out, &flow.help.clone(), None, rng)?,
        Inbound::Command(Command::Cancel, _) => {
            if s.slots != Slots::default() {
                let (id, phone) = (s.slots.national_id.clone(), s.slots.phone.clone());
                out.effects.push(Effect::Audit(AuditEvent {
                    event: "cancelled".into(),
                    national_id: id,
                    phone: phone.or_else(|| Some(ctx.caller.clone())),
                    detail: None,
                }));
            }
            reset(flow, &mut s);
            s.parked = None;
            Reply { text: render(ctx, &s, &out, keys::END_CANCELLED), end: true }
        }
    };
    let reply = frame(ctx, &s, &out, reply);
    s.updated_at = ctx.now;
    Ok(Stepped { session: s, reply, effects: out.effects, lookup: out.lookup })
}

/// Whether the session stands at a prompt for a free-text security answer.
fn waits_for_answer(flow: &Flow, s: &Session) -> bool {
    use crate::vocab::{ActionKind, Validator};
    flow.state(&s.state).is_some_and(|st| {
        matches!(
            st.kind,
            Kind::Input { input: Some((Validator::Answer, _)), .. }
                | Kind::Input { input: Some((_, ActionKind::CheckAnswer)), .. }
        )
    })
}

/// What stands around a reply on its medium: over SMS, a reminder to delete a message that carried a
/// secret above it, and what the citizen can text next below it.
fn frame(ctx: &Ctx, s: &Session, out: &Out, reply: Reply) -> Reply {
    match ctx.medium {
        Medium::Ussd => reply,
        Medium::Sms => {
            let mut text = String::new();
            if out.took_secret {
                text.push_str(&render(ctx, s, out, keys::SMS_DELETE_SECRET));
                text.push('\n');
            }
            text.push_str(&reply.text);
            text.push('\n');
            text.push_str(&render(ctx, s, out, if reply.end { keys::SMS_AGAIN } else { keys::SMS_MORE }));
            Reply { text, end: reply.end }
        }
    }
}

/// An entry typed at whatever the session stands at; an idle activation or a session at no state starts
/// over at the menu instead.
fn on_text(
    ctx: &Ctx,
    s: &mut Session,
    out: &mut Out,
    input: Secret,
    idle: bool,
    rng: &mut dyn RngCore,
) -> Result<Reply, EngineError> {
    let start = ctx.flow.start.clone();
    if s.leaving {
        s.leaving = false;
        if idle {
            return go(ctx, s, out, &start, Some(keys::NOTE_RESTART), rng);
        }
        return leave_choice(ctx, s, out, input, rng);
    }
    match ctx.flow.state(&s.state).filter(|st| matches!(st.kind, Kind::Input { .. })) {
        Some(_) if idle && s.slots != Slots::default() => go(ctx, s, out, &start, Some(keys::NOTE_RESTART), rng),
        Some(st) => on_input(ctx, s, out, st, input, rng),
        None => go(ctx, s, out, &start, Some(keys::NOTE_RESTART), rng),
    }
}

fn on_input(
    ctx: &Ctx,
    s: &mut Session,
    out: &mut Out,
    st: &crate::flow::State,
    input: Secret,
    rng: &mut dyn RngCore,
) -> Result<Reply, EngineError> {
    let Kind::Input { options, input: parse, .. } = &st.kind else {
        return Err(EngineError::Flow { state: st.name.clone(), why: "input at a state without a prompt" });
    };
    if let Some(target) = options.get(input.expose().trim()) {
        let target = target.clone();
        if target == ctx.flow.start && st.resume {
            return to_menu(ctx, s, out, rng);
        }
        return go(ctx, s, out, &target, None, rng);
    }
    let Some((validator, action)) = parse else {
        return Ok(retry(ctx, s, out, st, keys::ERR_CHOICE));
    };
    out.took_secret |= validator.takes_secret();
    let value = match validators::parse(*validator, &input, s, ctx) {
        Ok(v) => v,
        Err(reason) => return Ok(retry(ctx, s, out, st, reason)),
    };
    match actions::run(*action, Some((value, &input)), s, ctx, out, rng)? {
        Act::Go(outcome, notice) => {
            let target = transition(st, outcome)?;
            go(ctx, s, out, &target, notice, rng)
        }
        Act::Retry(reason) => Ok(retry(ctx, s, out, st, reason)),
    }
}

fn transition(st: &crate::flow::State, outcome: &str) -> Result<String, EngineError> {
    st.on.get(outcome).cloned().ok_or(EngineError::Flow { state: st.name.clone(), why: "outcome without transition" })
}

/// A refused entry: re-ask with the reason, or end the USSD session after too many. A resumable step
/// keeps what the activation has gathered (a verified code, a password), so the next dial reopens it;
/// security limits that must survive that (wrong codes) are counted by their actions, not here.
fn retry(ctx: &Ctx, s: &mut Session, out: &Out, st: &crate::flow::State, reason: &str) -> Reply {
    s.tries = s.tries.saturating_add(1);
    if s.tries >= ctx.flow.max_tries {
        if st.resume {
            s.tries = 0;
        } else {
            reset(ctx.flow, s);
        }
        return Reply { text: render(ctx, s, out, keys::END_TOO_MANY), end: true };
    }
    screen(ctx, s, out, Some(reason), &st.name)
}

/// Follows transitions from `target` until a state that shows something.
fn go(
    ctx: &Ctx,
    s: &mut Session,
    out: &mut Out,
    target: &str,
    mut notice: Option<&'static str>,
    rng: &mut dyn RngCore,
) -> Result<Reply, EngineError> {
    let flow = ctx.flow;
    let mut target = target.to_string();
    s.leaving = false; // wherever it goes, the question whether to leave is answered
    for _ in 0..MAX_HOPS {
        let st = flow.state(&target).ok_or(EngineError::Flow { state: target.clone(), why: "no such state" })?;
        match &st.kind {
            Kind::Input { .. } => {
                if st.name == flow.start {
                    s.slots = Slots::default();
                }
                s.state = st.name.clone();
                s.tries = 0;
                return Ok(screen(ctx, s, out, notice, &st.name));
            }
            Kind::End { message } => {
                let mut text = render(ctx, s, out, message);
                if st.name == flow.help && ctx.site.help_phone.is_some() {
                    text.push('\n');
                    text.push_str(&render(ctx, s, out, keys::HELP_HOTLINE));
                }
                reset(flow, s);
                return Ok(Reply { text, end: true });
            }
            Kind::Auto { action } => match actions::run(*action, None, s, ctx, out, rng)? {
                Act::Go(outcome, n) => {
                    notice = n.or(notice);
                    target = transition(st, outcome)?;
                }
                Act::Retry(_) => {
                    return Err(EngineError::Flow { state: st.name.clone(), why: "automatic action asked to retry" })
                }
            },
        }
    }
    Err(EngineError::Flow { state: target, why: "too many automatic states in a row" })
}

/// Reopens the activation step `st` the session stands at, with one line saying what was kept.
fn resume(ctx: &Ctx, s: &mut Session, out: &Out, st: &crate::flow::State) -> Reply {
    s.tries = 0; // a new session: a fresh set of tries at this step
    let note = actions::resume_note(st, s, ctx.now).unwrap_or_else(|| kept_note(&s.slots));
    screen(ctx, s, out, Some(note), &st.name)
}

/// The line above a reopened step saying what the activation kept (one of [`keys::KEPT_NOTES`]).
fn kept_note(sl: &Slots) -> &'static str {
    match (sl.verified, &sl.password_hash, &sl.passcode_hash, sl.questions.len()) {
        (true, _, _, n) if n > 0 => keys::NOTE_KEPT_QUESTION,
        (true, _, Some(_), _) => keys::NOTE_KEPT_PASSCODE,
        (true, Some(_), _, _) => keys::NOTE_KEPT_PASSWORD,
        (true, ..) => keys::NOTE_KEPT_VERIFIED,
        (false, ..) if sl.otp.is_some() => keys::NOTE_KEPT_CODE,
        (false, ..) => keys::NOTE_KEPT_ID,
    }
}

/// Puts the activation in progress aside (it comes back on the next plain dial).
fn park(s: &mut Session) {
    s.parked = Some(Box::new(Parked {
        state: std::mem::take(&mut s.state),
        slots: std::mem::take(&mut s.slots),
        at: s.updated_at,
    }));
}

/// Brings back the activation put aside, if there is one (expired ones were dropped already).
fn unpark(flow: &Flow, s: &mut Session) -> Option<crate::flow::State> {
    let p = s.parked.take()?;
    let st = flow.state(&p.state).filter(|st| st.resume && matches!(st.kind, Kind::Input { .. }))?.clone();
    s.state = p.state;
    s.slots = p.slots;
    Some(st)
}

/// The citizen asked for the menu from an activation step. Once the code is verified, the citizen is
/// asked to confirm (leaving loses the verified code and what was set); before, the activation is put
/// aside and comes back on the next plain dial.
fn to_menu(ctx: &Ctx, s: &mut Session, out: &mut Out, rng: &mut dyn RngCore) -> Result<Reply, EngineError> {
    let start = ctx.flow.start.clone();
    let at_step = ctx.flow.state(&s.state).is_some_and(|st| st.resume && matches!(st.kind, Kind::Input { .. }));
    if at_step && s.slots.verified {
        s.leaving = true;
        return Ok(leave_screen(ctx, s, out, None));
    }
    if at_step && s.slots != Slots::default() {
        park(s);
    }
    go(ctx, s, out, &start, None, rng)
}

/// The answer to [`keys::LEAVE_CONFIRM`]: `1` or `0` go back to the step, `2` leaves for the menu.
fn leave_choice(
    ctx: &Ctx,
    s: &mut Session,
    out: &mut Out,
    input: Secret,
    rng: &mut dyn RngCore,
) -> Result<Reply, EngineError> {
    match input.expose().trim() {
        "1" | "0" => match ctx.flow.state(&s.state).cloned() {
            Some(st) => Ok(resume(ctx, s, out, &st)),
            None => go(ctx, s, out, &ctx.flow.start.clone(), None, rng),
        },
        "2" => {
            let event =
                if s.slots.purpose == Purpose::Activation { "activation_abandoned" } else { "recovery_abandoned" };
            out.effects.push(Effect::Audit(AuditEvent {
                event: event.into(),
                national_id: s.slots.national_id.clone(),
                phone: s.slots.phone.clone().or_else(|| Some(ctx.caller.clone())),
                detail: None,
            }));
            go(ctx, s, out, &ctx.flow.start.clone(), None, rng)
        }
        _ => {
            s.leaving = true;
            Ok(leave_screen(ctx, s, out, Some(keys::ERR_CHOICE)))
        }
    }
}

fn leave_screen(ctx: &Ctx, s: &Session, out: &Out, above: Option<&str>) -> Reply {
    let key = if s.slots.purpose == Purpose::Activation { keys::LEAVE_CONFIRM } else { keys::LEAVE_CONFIRM_RECOVERY };
    let body = render(ctx, s, out, key);
    let text = match above {
        Some(k) => format!("{}\n{}", render(ctx, s, out, k), body),
        None => body,
    };
    Reply { text, end: false }
}

fn reset(flow: &Flow, s: &mut Session) {
    s.state = flow.start.clone();
    s.tries = 0;
    s.slots = Slots::default();
}

/// A CON screen: optional reason or notice, then the prompt of `state`.
fn screen(ctx: &Ctx, s: &Session, out: &Out, above: Option<&str>, state: &str) -> Reply {
    let prompt = match ctx.flow.state(state).map(|st| &st.kind) {
        Some(Kind::Input { prompt, .. }) => prompt.as_str(),
        _ => state,
    };
    let body = render(ctx, s, out, prompt);
    let text = match above {
        Some(k) => format!("{}\n{}", render(ctx, s, out, k), body),
        None => body,
    };
    Reply { text, end: false }
}

/// Renders a message with the placeholders the session and the step provide, each made only if the
/// template holds it.
fn render(ctx: &Ctx, s: &Session, out: &Out, key: &str) -> String {
    let catalog = ctx.flow.catalog(s.lang);
    let template = catalog.get_for(ctx.medium, key);
    crate::flow::catalog::fill_with(template, |name| placeholder(ctx, s, out, catalog, name))
}

/// One placeholder's value: the session's and the site's first, then what the step gave.
fn placeholder<'a>(
    ctx: &'a Ctx,
    s: &'a Session,
    out: &'a Out,
    catalog: &'a Catalog,
    name: &str,
) -> Option<Cow<'a, str>> {
    Some(match name {
        "minutes" => (actions::OTP_LIFETIME.as_secs() / 60).to_string().into(),
        "n" => (s.slots.questions.len() + 1).to_string().into(),
        "total" => actions::QUESTIONS_REQUIRED.to_string().into(),
        "ussd_code" => ctx.site.ussd_code.as_str().into(),
        "login_code" => ctx.site.fast_dial("2").into(),
        "hotline" => ctx.site.help_phone.as_deref().unwrap_or_default().into(),
        "questions" => {
            let chosen: Vec<String> = s.slots.questions.iter().map(|a| a.question.clone()).collect();
            ctx.flow.question_list(s.lang, &chosen).into()
        }
        "question" if s.slots.question.is_some() => catalog.get(s.slots.question.as_deref()?).into(),
        "masked_phone" if s.slots.phone.is_some() => s.slots.phone.as_ref()?.masked().into(),
        "until" => local_time(out.until.unwrap_or(ctx.now), ctx.now, s.lang).into(),
        _ => return out.args.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str().into()),
    })
}

/// A time as a citizen reads it: `HH:MM` in Vietnam, with the date when it is not today.
fn local_time(t: Millis, now: Millis, lang: Lang) -> String {
    let (_, m, d, hh, mm) = t.vietnam();
    let (_, nm, nd, _, _) = now.vietnam();
    match ((m, d) == (nm, nd), lang) {
        (true, _) => format!("{hh:02}:{mm:02}"),
        (false, Lang::Vi) => format!("{hh:02}:{mm:02} ngày {d:02}/{m:02}"),
        (false, Lang::En) => format!("{hh:02}:{mm:02} on {d:02}/{m:02}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_slots_are_left_out_of_the_stored_form_and_old_records_with_every_field_still_read() {
        let mut session = Session {
            lang: Lang::Vi,
            state: "menu".into(),
            tries: 0,
            updated_at: Millis(5),
            slots: Slots::default(),
            leaving: false,
            parked: None,
        };
        let json = serde_json::to_string(&session).unwrap();
        assert_eq!(json, r#"{"lang":"vi","state":"menu","tries":0,"updated_at":5}"#);
        assert_eq!(serde_json::from_str::<Session>(&json).unwrap(), session);
        let old = r#"{"lang":"vi","state":"menu","tries":0,"updated_at":5,"slots":{"started_at":null,
            "national_id":null,"phone":null,"otp":null,"otp_sends":0,"verified":false,"password_hash":null,
            "passcode_hash":null,"questions":[],"question":null}}"#;
        assert_eq!(serde_json::from_str::<Session>(old).unwrap(), session);
        session.slots.otp_sends = 2;
        session.slots.started_at = Some(Millis(4));
        let json = serde_json::to_string(&session).unwrap();
        assert!(json.ends_with(r#""slots":{"started_at":4,"otp_sends":2}}"#), "{json}");
        assert_eq!(serde_json::from_str::<Session>(&json).unwrap(), session);
    }
}
