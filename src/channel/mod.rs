//! Channels: one file per carrier or gateway format, all behind [`Channel`]. A channel owns its wire
//! format (parsing and bounding its request, refusing what is not its carrier's form, rendering its
//! reply), and turns its request into what the conversation needs, channel-neutrally: the phone, an
//! engine input, and the key under which a retry of the same request finds its reply. The service
//! ([`crate::service`]) knows no channel by name: it loads the phone's conversation, asks the channel
//! what the request means given the channel's own cursor, runs the engine on the channel's
//! [`Medium`], and stores the reply and the channel's next cursor with the conversation.
//!
//! The conversation is keyed by the phone, not by a channel's session, so every channel of a phone
//! continues the same conversation: an activation begun over USSD can be finished by SMS and the reverse.
//! Each channel keeps only its own cursor in it.
//!
//! - [`africastalking`]: USSD as Africa's Talking relays it (cumulative `text`, `CON`/`END`).
//! - [`kannel`]: SMS as Kannel's `sms-service` delivers it (one request per SMS, the response body is
//!   the reply SMS).
//!
//! Adding a channel touches only this folder, `http.rs` (its route and response shape) and the app wiring.

pub mod africastalking;
pub mod kannel;

use crate::domain::Msisdn;
use crate::engine::{Inbound, Medium, Reply};
use crate::store::Cursor;

/// What a request means for the conversation.
#[derive(Debug)]
pub enum Derived {
    /// A retry of a request already answered: answer the same, change nothing.
    Replay(Reply),
    /// Something for the engine.
    Inbound(Inbound),
    /// The request does not follow from where the channel's session stands (the carrier and we
    /// disagree): the citizen is asked to start again; nothing is stored.
    Lost,
}

pub trait Channel: Send + Sync {
    /// A request as the HTTP layer parsed it (phone already a [`Msisdn`]).
    type Request: Send + Sync;
    /// Names this channel's cursor inside a conversation; stable, as it is stored.
    const KIND: &'static str;
    /// How its replies reach the citizen (words, budget, frame).
    const MEDIUM: Medium;

    fn phone<'r>(&self, r: &'r Self::Request) -> &'r Msisdn;
    /// A keyed hash naming this request among its retries (Africa's Talking: session and cumulative
    /// text; an SMS gateway: its message id). Stored with the reply, so it must not reveal what was typed.
    fn retry_key(&self, r: &Self::Request) -> String;
    /// A short pseudonym of the channel's session for log lines (never the phone or the text).
    fn pseudonym(&self, r: &Self::Request) -> String;
    /// What `r` means, given this channel's cursor and the reply already stored under its retry key.
    fn derive(&self, r: &Self::Request, cursor: Option<&Cursor>, stored: Option<&Reply>) -> Derived;
    /// The cursor after answering `r` with `reply` (`None`: this channel keeps none).
    fn advance(&self, r: &Self::Request, previous: Option<&Cursor>, reply: &Reply) -> Option<Cursor>;
}
