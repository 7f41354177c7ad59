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

use std::time::Duration;

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::crypto::{Crypto, CryptoError};
use crate::domain::{Msisdn, NationalId, Secret};
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
    #[serde(default)]
    pub slots: Slots,
}

/// What an activation or log-in has gathered so far. Secrets only as hashes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Slots {
    pub started_at: Option<Millis>,
    pub national_id: Option<NationalId>,
    /// The registered phone the OTP went to.
    pub phone: Option<Msisdn>,
    pub otp: Option<OtpRecord>,
    #[serde(default)]
    pub otp_sends: u8,
    #[serde(default)]
    pub verified: bool,
    pub password_hash: Option<String>,
    pub passcode_hash: Option<String>,
    #[serde(default)]
    pub questions: Vec<Answered>,
    /// A question chosen and waiting for its answer.
    pub question: Option<String>,
}

/// An issued OTP: only its keyed hash is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtpRecord {
    pub mac: String,
    pub expires_at: Millis,
    pub wrong: u8,
}

impl Session {
    pub fn new(flow: &Flow, now: Millis) -> Session {
        Session { lang: Lang::Vi, state: flow.start.clone(), tries: 0, updated_at: now, slots: Slots::default() }
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
        })
    }
}

/// What arrived from the citizen, whatever the channel.
#[derive(Debug, Clone)]
pub enum Inbound {
    /// The citizen opened a new session (dialled the USSD code). With no choices it resumes an activation
    /// in progress; with choices already in it (a fast-dial `*384*2#`) they are meant for the menu, so it
    /// starts there and runs each as typed.
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
}

impl SmsPurpose {
    /// How long after it is queued the message is still of use: an OTP after its lifetime only confuses,
    /// so its delivery gives up then.
    pub fn useful_for(self) -> Duration {
        match self {
            SmsPurpose::Otp => actions::OTP_LIFETIME,
            SmsPurpose::Activated => Duration::from_secs(24 * 60 * 60),
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
    /// Replace an account's password hash (an upgrade after a successful log-in).
    Rehash(Rehash),
}

/// A password hash to replace, if the account still holds `old` (nothing changed it meanwhile).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rehash {
    pub national_id: NationalId,
    pub old: String,
    pub new: String,
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
    let reply = match inbound {
        Inbound::Start { choices } if choices.is_empty() => {
            match resumable(&s) {
                Some(st) if !idle => {
                    s.tries = 0; // a new session: a fresh set of tries at this step
                    let note = actions::resume_note(&st, &s, ctx.now).unwrap_or(keys::NOTE_RESUME);
                    screen(ctx, &s, &out, Some(note), &st.name)
                }
                _ => go(ctx, &mut s, &mut out, &flow.start.clone(), None, rng)?,
            }
        }
        Inbound::Start { choices } => {
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
        // A first message: it answers the step an activation waits at, else it opens the menu.
        Inbound::Open(input) => match resumable(&s) {
            Some(st) if !idle => on_input(ctx, &mut s, &mut out, &st, input, rng)?,
            _ => go(ctx, &mut s, &mut out, &flow.start.clone(), None, rng)?,
        },
        // At a security-answer prompt `HUY` is an answer: Huy is a common given name (a best friend's,
        // say). MENU still leaves.
        Inbound::Command(Command::Cancel, text) if !idle && waits_for_answer(flow, &s) => {
            on_text(ctx, &mut s, &mut out, text, idle, rng)?
        }
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
            Reply { text: render(ctx, &s, &out, keys::END_CANCELLED), end: true }
        }
    };
    let reply = frame(ctx, &s, &out, reply);
    s.updated_at = ctx.now;
    Ok(Stepped { session: s, reply, effects: out.effects, lookup: out.lookup })
}

/// Whether the session stands at a prompt for a free-text security answer.
fn waits_for_answer(flow: &Flow, s: &Session) -> bool {
    flow.state(&s.state)
        .is_some_and(|st| matches!(st.kind, Kind::Input { input: Some((crate::vocab::Validator::Answer, _)), .. }))
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
    match ctx.flow.state(&s.state).filter(|st| matches!(st.kind, Kind::Input { .. })) {
        Some(_) if idle && s.slots != Slots::default() => go(ctx, s, out, &start, Some(keys::NOTE_RESTART), rng),
        Some(st) => {
            let st = st.clone();
            on_input(ctx, s, out, &st, input, rng)
        }
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
    for _ in 0..MAX_HOPS {
        let st = flow.state(&target).ok_or(EngineError::Flow { state: target.clone(), why: "no such state" })?.clone();
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
                let text = render(ctx, s, out, message);
                reset(flow, s);
                return Ok(Reply { text, end: true });
            }
            Kind::Auto { action } => match actions::run(*action, None, s, ctx, out, rng)? {
                Act::Go(outcome, n) => {
                    notice = n.or(notice);
                    target = transition(&st, outcome)?;
                }
                Act::Retry(_) => {
                    return Err(EngineError::Flow { state: st.name.clone(), why: "automatic action asked to retry" })
                }
            },
        }
    }
    Err(EngineError::Flow { state: target, why: "too many automatic states in a row" })
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

/// Renders a message with the placeholders the session and the step provide.
fn render(ctx: &Ctx, s: &Session, out: &Out, key: &str) -> String {
    let catalog = ctx.flow.catalog(s.lang);
    let template = catalog.get_for(ctx.medium, key);
    let mut args: Vec<(&str, String)> = vec![
        ("minutes", (actions::OTP_LIFETIME.as_secs() / 60).to_string()),
        ("n", (s.slots.questions.len() + 1).to_string()),
        ("total", actions::QUESTIONS_REQUIRED.to_string()),
    ];
    if template.contains("{questions}") {
        let chosen: Vec<String> = s.slots.questions.iter().map(|a| a.question.clone()).collect();
        args.push(("questions", ctx.flow.question_list(s.lang, &chosen)));
    }
    if let Some(q) = &s.slots.question {
        args.push(("question", catalog.get(q).to_string()));
    }
    if let Some(p) = &s.slots.phone {
        args.push(("masked_phone", p.masked()));
    }
    args.push(("until", local_time(out.until.unwrap_or(ctx.now), ctx.now, s.lang)));
    args.extend(out.args.iter().cloned());
    crate::flow::catalog::fill(template, &args)
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
