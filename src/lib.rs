//! kichhoat: activate a VNeID e-identity account from a keypad phone, over USSD.
//!
//! The crate is layered so that every outside concern sits at the edge and the conversation itself is a
//! pure function:
//!
//! ```text
//!  carrier ──HTTP──▶ channel::africastalking ──▶ service ──▶ engine::step (pure)
//!                    (form → phone, new input)   (lock,       (flow, session, input, now, rng)
//!                                                 load,          → (session, reply, effects)
//!                                                 commit,
//!                                                 group flush)
//!                                                   │
//!                           store (sled, behind a trait) ◀─┘──▶ sms::worker ──▶ sms sender (outbox file)
//! ```
//!
//! - [`domain`]: parsed identifiers and secrets (`NationalId`, `Msisdn`, `Password`, `Otp`, ...).
//! - [`vocab`]: the named actions and validators flow files may use, what each declares (input, outcomes,
//!   reasons, notices), and the message keys the engine shows; data only, so flows are checked without
//!   the interpreter.
//! - [`flow`]: flow files and message catalogues as checked data (`kichhoat check`); depends on `vocab`,
//!   never on `engine`.
//! - [`engine`]: the conversation step, parsing for the validators and the named actions, held to what
//!   `vocab` declares; no IO, no clock, no tokio.
//! - [`crypto`]: argon2id, keyed hashes and sealing, with keys kept outside the database.
//! - [`store`]: storage trait and its sled implementation with group commit.
//! - [`registry`]: the citizens registry import (CSV today, a national API later).
//! - [`sms`]: outgoing SMS senders and the outbox delivery worker.
//! - [`channel`]: carrier webhook formats (Africa's Talking USSD).
//! - [`service`]: one inbound hop from a carrier to a durable reply; shared by HTTP and `simulate`.
//! - [`app`]: assembling an instance (flows, keys, store, registry import, SMS worker, hop sweeper).
//! - [`clock`]: time as a parameter (`Millis`, the system clock, a manual clock for tests).
//! - [`http`], [`config`], [`simulate`]: the server, its settings and the terminal keypad phone.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod app;
pub mod channel;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod engine;
pub mod flow;
pub mod http;
pub mod limits;
pub mod registry;
pub mod service;
pub mod simulate;
pub mod sms;
pub mod store;
pub mod vocab;
