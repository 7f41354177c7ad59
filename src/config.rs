//! Command-line interface and settings. Every `serve` flag can also come from `KICHHOAT_<NAME>`, so the
//! same binary runs from a terminal, a systemd unit or a container without a config file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::flow::Charset;

#[derive(Debug, Parser)]
#[command(name = "kichhoat", version, about = "Activate a VNeID account from a keypad phone, over USSD and SMS")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the webhook server.
    Serve(ServeArgs),
    /// Load and validate every flow file and message catalogue; print each problem as `file: state: problem`.
    Check(CheckArgs),
    /// A keypad phone in the terminal, running the same engine and store in-process.
    Simulate(SimulateArgs),
    /// Print the audit trail (authentication events) as JSON lines. Reads the database directly, so run
    /// it while the server is stopped (sled allows one process at a time).
    Audit(AuditArgs),
}

#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    #[arg(long, env = "KICHHOAT_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
}

/// Settings shared by `serve` and `simulate`.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Directory of flow files and message catalogues. Default: `flows/` in the working directory,
    /// or the copy built into the binary when there is none.
    #[arg(long, env = "KICHHOAT_FLOWS")]
    pub flows: Option<PathBuf>,
    /// Citizens CSV (`national_id,phone,full_name,status`), imported at start. Default:
    /// `fixtures/registry.csv` in the working directory, or the demo registry built into the binary.
    #[arg(long, env = "KICHHOAT_REGISTRY")]
    pub registry: Option<PathBuf>,
    /// File holding the 32-byte master key (hex), kept outside the database; created if absent.
    /// Default: `<data-dir>/secret.key`.
    #[arg(long, env = "KICHHOAT_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// USSD screen encoding: gsm7 sends Vietnamese without diacritics (carriers' default).
    #[arg(long, env = "KICHHOAT_USSD_CHARSET", value_enum, default_value_t = Charset::Gsm7)]
    pub ussd_charset: Charset,
    /// SMS reply encoding: gsm7 sends Vietnamese without diacritics (as brandname SMS are sent); ucs2
    /// keeps them when the reply fits 3 UCS-2 parts, and folds it otherwise.
    #[arg(long, env = "KICHHOAT_SMS_CHARSET", value_enum, default_value_t = Charset::Gsm7)]
    pub sms_charset: Charset,
}

/// Where conversations, accounts and the outbox are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// sled in `<data-dir>/db`: durable, one process per data dir.
    Sled,
    /// In memory: nothing survives the process (demos and tests).
    Memory,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "KICHHOAT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the sled database and everything else the server keeps go.
    #[arg(long, env = "KICHHOAT_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Outgoing SMS are appended here as JSON lines. Default: `<data-dir>/outbox.jsonl`.
    #[arg(long, env = "KICHHOAT_SMS_OUTBOX")]
    pub sms_outbox: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "KICHHOAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Storage backend.
    #[arg(long, env = "KICHHOAT_STORE", value_enum, default_value_t = StoreKind::Sled)]
    pub store: StoreKind,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Default: `flows/` in the working directory, or the copy built into the binary.
    #[arg(long, env = "KICHHOAT_FLOWS")]
    pub flows: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// The phone you are "calling" from, in any form (0912345678, 84912345678, +84912345678).
    #[arg(long)]
    pub phone: String,
    /// Where the key file goes (the conversation itself is kept in memory unless `--store sled`), so it
    /// never disturbs a running server's data.
    #[arg(long, env = "KICHHOAT_SIMULATE_DATA_DIR", default_value = "data-simulate")]
    pub data_dir: PathBuf,
    /// Storage backend: in memory by default (each run starts afresh); `sled` keeps it in `<data-dir>/db`.
    #[arg(long, value_enum, default_value_t = StoreKind::Memory)]
    pub store: StoreKind,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Resolved settings for one running instance (server or simulator).
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    /// `None`: the flows built into the binary.
    pub flows: Option<PathBuf>,
    /// `None`: the demo registry built into the binary.
    pub registry: Option<PathBuf>,
    pub key_file: PathBuf,
    pub sms_outbox: PathBuf,
    pub ussd_charset: Charset,
    pub sms_charset: Charset,
    pub store: StoreKind,
}

impl Settings {
    pub fn new(data_dir: PathBuf, sms_outbox: Option<PathBuf>, store: StoreKind, common: &Common) -> Settings {
        Settings {
            store,
            key_file: common.key_file.clone().unwrap_or_else(|| data_dir.join("secret.key")),
            sms_outbox: sms_outbox.unwrap_or_else(|| data_dir.join("outbox.jsonl")),
            flows: resolve(&common.flows, DEFAULT_FLOWS),
            registry: resolve(&common.registry, DEFAULT_REGISTRY),
            ussd_charset: common.ussd_charset,
            sms_charset: common.sms_charset,
            data_dir,
        }
    }

    pub fn db_dir(&self) -> PathBuf {
        db_dir(&self.data_dir)
    }
}

pub const DEFAULT_FLOWS: &str = "flows";
pub const DEFAULT_REGISTRY: &str = "fixtures/registry.csv";

/// A path given is used as given; otherwise the default if it exists here, else the built-in copy.
pub fn resolve(given: &Option<PathBuf>, default: &str) -> Option<PathBuf> {
    match given {
        Some(p) => Some(p.clone()),
        None => Some(PathBuf::from(default)).filter(|p| p.exists()),
    }
}

/// The sled database lives in its own folder inside the data directory.
pub fn db_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("db")
}
