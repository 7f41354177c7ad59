//! One black-box test binary (cargo links it once). Modules by concern:
//! transcripts (data-driven conversations over USSD and SMS, engine and server), webhook (the Africa's
//! Talking contract, retries and races), sms (the Kannel contract: an SMS in, the reply SMS out, retries
//! by message id, one conversation across USSD and SMS), concurrency (N requests at once get no further
//! than one at a time), flows (`kichhoat check`), restart (kill -9), secrets (nothing secret on disk or
//! in logs), expiry (what the sweeper reclaims, on the injected clock), store_contract (the `Store`
//! contract, run against every backend), migration (a data dir of the previous release opens and
//! carries on), kannel_sender (outgoing SMS through a fake Kannel smsbox: answers, doubt, delivery
//! reports, the binary), kannel (SMS both ways end to end through a real Kannel gateway, driven by
//! kannel_harness), audit_log (the
//! audit trail file through the binary: one chained line per event, `audit verify`, what a crash leaves).

mod admin;
mod audit_log;
mod cli;
mod concurrency;
mod engine_props;
mod expiry;
mod flows;
mod gate;
mod helpers;
mod kannel;
mod kannel_harness;
mod kannel_sender;
mod migration;
mod operations;
mod pg;
mod postgres;
mod registry;
mod restart;
mod secrets;
mod sms;
mod store_contract;
mod transcripts;
mod webhook;
