//! One black-box test binary (cargo links it once). Modules by concern:
//! transcripts (data-driven conversations, engine and server), webhook (carrier contract, retries and
//! races), flows (`kichhoat check`), restart (kill -9), secrets (nothing secret on disk or in logs),
//! store_contract (the `Store` contract, run against every backend), migration (a data dir of the previous
//! release opens and carries on).

mod cli;
mod engine_props;
mod flows;
mod helpers;
mod migration;
mod registry;
mod restart;
mod secrets;
mod store_contract;
mod transcripts;
mod webhook;
