//! kichhoat: activate a VNeID e-identity account from a keypad phone, over USSD.
//!
//! The crate is layered so that every outside concern sits at the edge and the conversation itself is a
//! pure function:
//!
//! ```text
//!  carrier ──HTTP──▶ channel (Channel trait)  ──▶ service ──▶ engine::step (pure)
//!                    africastalking: form →      (lock, load   (flow, session, input, now, rng)
//!                    phone, retry key, input      + version,      → (session, reply, effects)
//!                                                 commit against
//!                                                 the version)
//!                                                   │
//!              store (async trait: sled, memory) ◀──┘──▶ sms::worker ──▶ sms sender (outbox file, Kannel)
//!                    │
//!                    └── unexported audit records ──▶ audit::AuditLog ──▶ audit.jsonl (hash chain)
//! ```
//!
//! - [`domain`]: parsed identifiers and secrets (`NationalId`, `Msisdn`, `Password`, `Otp`, ...).
//! - [`vocab`]: names of actions and validators and what each declares (data only, a leaf).
//! - [`flow`]: flow files and message catalogues as checked data (`kichhoat check`).
//! - [`engine`]: the conversation step, its validators and named actions; no IO, no clock, no tokio.
//! - [`limits`]: counter rules (windows, failures that lock), applied by the store inside commits.
//! - [`crypto`]: argon2id, keyed hashes and sealing, with keys kept outside the database.
//! - [`store`]: the storage trait (versions, claims, expiry) and its sled and memory backends.
//! - [`registry`]: the citizens registry import (CSV today, a national API later).
//! - [`sms`]: outgoing SMS senders (outbox file, Kannel) and the delivery worker (retries, backoff,
//!   permanent failures, messages in doubt), and Kannel's delivery reports.
//! - [`channel`]: the channel interface and carrier formats (Africa's Talking USSD).
//! - [`service`]: one turn of any channel to a durable reply; shared by HTTP and `simulate`.
//! - [`audit`]: the audit trail file (a hash chain of JSON lines, drained from the store before a reply),
//!   its rotation and `kichhoat audit verify`.
//! - [`app`]: assembling an instance (flows, keys, store, registry import, SMS worker, expiry sweeper).
//! - [`clock`]: time as a parameter (`Millis`, the system clock, a manual clock for tests).
//! - [`http`], [`config`], [`simulate`]: the server, its settings and the terminal keypad phone.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod admin;
pub mod app;
pub mod audit;
pub mod channel;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod engine;
pub mod flow;
pub mod gate;
pub mod http;
pub mod limits;
pub mod registry;
pub mod server;
pub mod service;
pub mod simulate;
pub mod sms;
pub mod store;
pub mod vocab;
