//! Command-line interface and settings. Every `serve` flag can also come from `KICHHOAT_<NAME>`, so the
//! same binary runs from a terminal, a systemd unit or a container without a config file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::domain::Secret;
use crate::engine::Policy;
use crate::flow::Charset;

#[derive(Debug, Parser)]
#[command(name = "kichhoat", version, about = "Activate a VNeID account from a keypad phone, over USSD and SMS")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the webhook server.
    Serve(Box<ServeArgs>),
    /// Load and validate every flow file and message catalogue; print each problem as `file: state: problem`.
    Check(CheckArgs),
    /// A keypad phone in the terminal, running the same engine and store in-process.
    Simulate(SimulateArgs),
    /// Print the audit trail file (rotated files in order, then the active one) as JSON lines, or check
    /// its hash chain (`audit verify`). Reads only the file, so it works while the server runs.
    Audit(AuditArgs),
    /// Load tool: drive realistic USSD traffic at a running server (loopback only) and print hops/s,
    /// p50/p99/p999 and errors beside the server's own /healthz rate (`bench run`), or print a registry
    /// CSV for it (`bench registry N`).
    Bench(crate::bench::BenchArgs),
    /// Operator commands on one citizen (show, unlock, cancel), through the running server's admin API
    /// (or on the data dir when no server runs). Audited with the operator's name.
    Admin(crate::admin::client::AdminArgs),
    /// The citizens registry: `registry import FILE` re-imports it authoritatively, through the running
    /// server's admin API (or on the data dir when no server runs).
    Registry(crate::admin::client::RegistryArgs),
}

#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub action: Option<AuditAction>,
    /// The data directory whose `audit.jsonl` is meant (when --audit-log is not given).
    #[arg(long, env = "KICHHOAT_DATA_DIR", default_value = "data", global = true)]
    pub data_dir: PathBuf,
    /// The audit trail file (the active one; its rotated files sit beside it). Default:
    /// `<data-dir>/audit.jsonl`.
    #[arg(long, env = "KICHHOAT_AUDIT_LOG", global = true)]
    pub audit_log: Option<PathBuf>,
}

impl AuditArgs {
    /// The active file of the trail these arguments name.
    pub fn file(&self) -> PathBuf {
        match &self.action {
            Some(AuditAction::Verify { file: Some(f) }) => f.clone(),
            _ => self.audit_log.clone().unwrap_or_else(|| audit_log(&self.data_dir)),
        }
    }
}

#[derive(Debug, Clone, Subcommand)]
pub enum AuditAction {
    /// Check the hash chain across the rotated files and the active one: prints `ok: N lines, last seq S`
    /// and exits 0, or the first broken line (file, line number, what is wrong) and exits 1.
    Verify {
        /// The active file of the trail. Default: --audit-log, else `<data-dir>/audit.jsonl`.
        file: Option<PathBuf>,
    },
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
    /// The USSD service code citizens dial (the OTP SMS and the screens name it). A fast-dial appends
    /// menu choices and inputs: with `*384#`, `*384*1#` opens activation and `*384*1*<ID>#` also gives the ID.
    #[arg(long, env = "KICHHOAT_USSD_CODE", default_value = crate::engine::DEFAULT_USSD_CODE, value_parser = ussd_code)]
    pub ussd_code: String,
    /// A hotline shown on the help screen (digits, spaces, + and . ; up to 15 characters), e.g. `1900 0368`.
    #[arg(long, env = "KICHHOAT_HELP_PHONE", value_parser = help_phone)]
    pub help_phone: Option<String>,
    /// SMS encoding: gsm7 sends Vietnamese without diacritics (carriers' default); ucs2 keeps the
    /// diacritics of a text that needs them (coding=2 towards Kannel).
    #[arg(long, env = "KICHHOAT_SMS_CHARSET", value_enum, default_value_t = Charset::Gsm7)]
    pub sms_charset: Charset,
    /// The audit trail file: one JSON line per audit event, a hash chain, fsynced before the reply.
    /// Default: `<data-dir>/audit.jsonl`.
    #[arg(long, env = "KICHHOAT_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// Size in MiB past which the audit trail file is rotated (renamed `FILE.<first seq>`).
    #[arg(long, env = "KICHHOAT_AUDIT_LOG_MAX_MB", default_value_t = crate::audit::DEFAULT_MAX_MB)]
    pub audit_log_max_mb: u64,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// The abuse limits (see `engine::policy` for what each counts and why). Per-ID counts are kept in two
/// pools: the registered phone's own, and every other phone's.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Abuse limits")]
pub struct LimitArgs {
    /// Failed log-ins in a row (per ID number and pool) before log-in is locked.
    #[arg(long, env = "KICHHOAT_LOGIN_FAILURES", default_value_t = 5)]
    pub login_failures: u32,
    /// The first log-in lock, in minutes; each further lock in a row doubles it.
    #[arg(long, env = "KICHHOAT_LOGIN_LOCK_MINUTES", default_value_t = 15)]
    pub login_lock_minutes: u64,
    /// The longest log-in lock, in hours.
    #[arg(long, env = "KICHHOAT_LOGIN_LOCK_MAX_HOURS", default_value_t = 24)]
    pub login_lock_max_hours: u64,
    /// OTP SMS per ID number and pool in 15 minutes.
    #[arg(long, env = "KICHHOAT_OTP_PER_ID_15MIN", default_value_t = 3)]
    pub otp_per_id_15min: u32,
    /// OTP SMS per ID number and pool in a day.
    #[arg(long, env = "KICHHOAT_OTP_PER_ID_DAY", default_value_t = 10)]
    pub otp_per_id_day: u32,
    /// OTP SMS to one registered phone per pool in an hour.
    #[arg(long, env = "KICHHOAT_OTP_PER_PHONE_HOUR", default_value_t = 20)]
    pub otp_per_phone_hour: u32,
    /// Wrong codes per ID number and pool in a day, across all its codes; then activation waits.
    #[arg(long, env = "KICHHOAT_WRONG_CODES_PER_ID_DAY", default_value_t = 10)]
    pub wrong_codes_per_id_day: u32,
    /// Activation lookups (ID and phone submitted) per calling phone in an hour.
    #[arg(long, env = "KICHHOAT_LOOKUPS_PER_CALLER_HOUR", default_value_t = 10)]
    pub lookups_per_caller_hour: u32,
    /// Activation lookups per calling phone in a day.
    #[arg(long, env = "KICHHOAT_LOOKUPS_PER_CALLER_DAY", default_value_t = 30)]
    pub lookups_per_caller_day: u32,
    /// Lookups ending without a code (unknown, mismatch, pending, already activated) per calling phone
    /// in an hour.
    #[arg(long, env = "KICHHOAT_FAILED_LOOKUPS_PER_CALLER_HOUR", default_value_t = 5)]
    pub failed_lookups_per_caller_hour: u32,
    /// Lookups ending without a code per ID number and pool in a day.
    #[arg(long, env = "KICHHOAT_FAILED_LOOKUPS_PER_ID_DAY", default_value_t = 10)]
    pub failed_lookups_per_id_day: u32,
}

impl LimitArgs {
    pub fn policy(&self) -> Policy {
        let minutes = |m: u64| std::time::Duration::from_secs(m.saturating_mul(60));
        Policy {
            login_failures: self.login_failures.max(1),
            login_lock: minutes(self.login_lock_minutes),
            login_lock_max: minutes(self.login_lock_max_hours.saturating_mul(60)),
            otp_per_id_15min: self.otp_per_id_15min,
            otp_per_id_day: self.otp_per_id_day,
            otp_per_phone_hour: self.otp_per_phone_hour,
            wrong_codes_per_id_day: self.wrong_codes_per_id_day,
            lookups_per_caller_hour: self.lookups_per_caller_hour,
            lookups_per_caller_day: self.lookups_per_caller_day,
            failed_lookups_per_caller_hour: self.failed_lookups_per_caller_hour,
            failed_lookups_per_id_day: self.failed_lookups_per_id_day,
        }
    }
}

impl Default for LimitArgs {
    fn default() -> LimitArgs {
        let p = Policy::default();
        let minutes = |d: std::time::Duration| d.as_secs() / 60;
        LimitArgs {
            login_failures: p.login_failures,
            login_lock_minutes: minutes(p.login_lock),
            login_lock_max_hours: minutes(p.login_lock_max) / 60,
            otp_per_id_15min: p.otp_per_id_15min,
            otp_per_id_day: p.otp_per_id_day,
            otp_per_phone_hour: p.otp_per_phone_hour,
            wrong_codes_per_id_day: p.wrong_codes_per_id_day,
            lookups_per_caller_hour: p.lookups_per_caller_hour,
            lookups_per_caller_day: p.lookups_per_caller_day,
            failed_lookups_per_caller_hour: p.failed_lookups_per_caller_hour,
            failed_lookups_per_id_day: p.failed_lookups_per_id_day,
        }
    }
}

/// Where outgoing SMS go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SenderKind {
    /// Appended to the outbox file (`--sms-outbox`), for a gateway or a person to pick up.
    File,
    /// Sent through a Kannel smsbox (`--kannel-url`).
    Kannel,
}

/// The outgoing SMS sender, resolved.
#[derive(Debug, Clone)]
pub enum SenderSettings {
    /// The outbox file, [`Settings::sms_outbox`].
    File,
    Kannel(KannelSettings),
}

/// How to reach Kannel's smsbox. `Debug` shows no password ([`Secret`]).
#[derive(Debug, Clone)]
pub struct KannelSettings {
    /// The sendsms URL, e.g. `http://127.0.0.1:13013/cgi-bin/sendsms`.
    pub url: String,
    pub user: String,
    pub password: Secret,
    /// Short code or brand name; `None`: Kannel's default sender.
    pub from: Option<String>,
    /// Where Kannel reaches our delivery-report endpoint (`/sms/kannel/dlr`).
    pub dlr_url: String,
}

fn secret(value: &str) -> Result<Secret, String> {
    Ok(Secret::new(value))
}

/// Where conversations, accounts and the outbox are kept: `sled`, `memory`, or a PostgreSQL URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// sled in `<data-dir>/db`: durable, one process per data dir.
    Sled,
    /// In memory: nothing survives the process (demos and tests).
    Memory,
    /// A PostgreSQL database (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB`), shared by any number of
    /// instances.
    Postgres(DatabaseUrl),
}

/// A database URL; `Debug` and `Display` leave out its password.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::store::postgres::display_url(&self.0))
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::store::postgres::display_url(&self.0))
    }
}

impl std::str::FromStr for StoreKind {
    type Err = String;
    fn from_str(s: &str) -> Result<StoreKind, String> {
        match s {
            "sled" => Ok(StoreKind::Sled),
            "memory" => Ok(StoreKind::Memory),
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(StoreKind::Postgres(DatabaseUrl(url.to_string())))
            }
            _ => Err("expected sled, memory, or a PostgreSQL URL postgres://USER@HOST:PORT/DB".into()),
        }
    }
}

impl std::fmt::Display for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreKind::Sled => f.write_str("sled"),
            StoreKind::Memory => f.write_str("memory"),
            StoreKind::Postgres(url) => write!(f, "{url}"),
        }
    }
}

pub fn store_kind(value: &str) -> Result<StoreKind, String> {
    value.parse()
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "KICHHOAT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the sled database and everything else the server keeps go.
    #[arg(long, env = "KICHHOAT_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// The file sender appends outgoing SMS here as JSON lines (unused with `--sms-sender kannel`).
    /// Default: `<data-dir>/outbox.jsonl`.
    #[arg(long, env = "KICHHOAT_SMS_OUTBOX")]
    pub sms_outbox: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "KICHHOAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Storage backend: `sled` (in --data-dir, one process), `memory` (nothing kept), or a PostgreSQL URL
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DB` shared by several instances (give every instance the
    /// same --key-file). Prefer the environment variable when the URL holds a password.
    #[arg(long, env = "KICHHOAT_STORE", hide_env_values = true, value_parser = store_kind, default_value = "sled")]
    pub store: StoreKind,
    /// Where outgoing SMS go: `file` (the outbox file) or `kannel` (a Kannel smsbox: needs
    /// --kannel-url, --kannel-user and --kannel-password; --sms-outbox is then unused).
    #[arg(long, env = "KICHHOAT_SMS_SENDER", value_enum, default_value_t = SenderKind::File)]
    pub sms_sender: SenderKind,
    /// Kannel smsbox's sendsms URL, e.g. http://127.0.0.1:13013/cgi-bin/sendsms (plain HTTP).
    #[arg(long, env = "KICHHOAT_KANNEL_URL")]
    pub kannel_url: Option<String>,
    /// The username of Kannel's sendsms-user group.
    #[arg(long, env = "KICHHOAT_KANNEL_USER")]
    pub kannel_user: Option<String>,
    /// Its password (prefer the environment variable: a flag shows in the process list).
    #[arg(long, env = "KICHHOAT_KANNEL_PASSWORD", hide_env_values = true, value_parser = secret)]
    pub kannel_password: Option<Secret>,
    /// The SMS sender: a short code or brand name. Default: Kannel's own.
    #[arg(long, env = "KICHHOAT_SMS_FROM")]
    pub sms_from: Option<String>,
    /// Where Kannel reaches our delivery-report endpoint. Default: http://<--listen>/sms/kannel/dlr.
    #[arg(long, env = "KICHHOAT_KANNEL_DLR_URL")]
    pub kannel_dlr_url: Option<String>,
    /// A secret every carrier endpoint requires, as `Authorization: Bearer …` or `?token=…` in the callback
    /// URL (Africa's Talking and Kannel can only do the latter). Prefer the environment variable.
    /// At least 16 characters of A-Z a-z 0-9 . _ - (it goes into URLs as it is).
    #[arg(long, env = "KICHHOAT_WEBHOOK_TOKEN", hide_env_values = true, value_parser = webhook_token)]
    pub webhook_token: Option<Secret>,
    /// Only these addresses may call the carrier endpoints: comma-separated CIDRs or addresses.
    #[arg(long, env = "KICHHOAT_WEBHOOK_ALLOW")]
    pub webhook_allow: Option<String>,
    /// Serve on a non-loopback address without --webhook-token, for a network where only the carrier's
    /// gateway can reach the port (anyone who can reach it could otherwise post any phone number).
    #[arg(long, env = "KICHHOAT_ALLOW_NO_TOKEN")]
    pub allow_no_token: bool,
    /// Open connections at most; beyond, new ones are closed at once (and logged).
    #[arg(long, env = "KICHHOAT_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Seconds a client has to send a whole request head, and the longest a kept-alive connection idles.
    #[arg(long, env = "KICHHOAT_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// Hops in progress at most; past this bound a USSD hop gets an immediate END "busy, try again in a
    /// few minutes" (an SMS a short reply) instead of a carrier time-out, and memory stays bounded.
    #[arg(long, env = "KICHHOAT_MAX_PENDING", default_value_t = 2048)]
    pub max_pending: usize,
    /// Steps that hash (passwords, passcodes, answers, log-ins) waiting for a hashing thread at most;
    /// past it they are answered "busy" at once. Steps that hash nothing never wait for them.
    #[arg(long, env = "KICHHOAT_HASH_QUEUE", default_value_t = 256)]
    pub hash_queue: usize,
    /// sled's page cache in MiB (resident memory). More keeps more conversations in memory when a million
    /// or more are stored (96: first hops' p99 11.9 -> 9.0 ms at 1M) at the cost of RSS (BENCHMARKS.md).
    #[arg(long, env = "KICHHOAT_SLED_CACHE_MB", default_value_t = 64, value_parser = clap::value_parser!(u64).range(8..=65536))]
    pub sled_cache_mb: u64,
    /// Hashing threads (argon2id: one core and 19 MiB each while it runs). Default: the cores.
    #[arg(long, env = "KICHHOAT_HASH_THREADS")]
    pub hash_threads: Option<usize>,
    /// The admin API's address (`kichhoat admin …`, `kichhoat registry import`), loopback only, with a
    /// token drawn at each start and written to `<data-dir>/admin.json` (0600). Default: a free port of
    /// 127.0.0.1 (the CLI finds it in admin.json; a fixed one could take another instance's --listen).
    #[arg(long, env = "KICHHOAT_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// No admin API: operator commands then need the server stopped.
    #[arg(long, env = "KICHHOAT_NO_ADMIN", conflicts_with = "admin_listen")]
    pub no_admin: bool,
    /// Serve the demo citizens built into the binary. Needed outside a checkout (no
    /// `fixtures/registry.csv` here) when --registry is not given, so a forgotten --registry never
    /// silently serves demo citizens.
    #[arg(long, env = "KICHHOAT_DEMO", conflicts_with = "registry")]
    pub demo: bool,
    #[command(flatten)]
    pub common: Common,
}

/// A webhook token: long enough not to be guessed, and safe in a URL as it is (no escaping to get wrong
/// in a carrier's console, nothing Kannel would read as one of its `%` escapes).
/// A USSD service code: `*`, digits (groups separated by `*`), `#`; short enough for every screen.
fn ussd_code(value: &str) -> Result<String, String> {
    let inner = value.strip_prefix('*').and_then(|v| v.strip_suffix('#'));
    let ok = inner
        .is_some_and(|i| !i.is_empty() && i.split('*').all(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit())));
    if !ok || value.len() > USSD_CODE_MAX {
        return Err(format!("a USSD code looks like *384# (at most {USSD_CODE_MAX} characters)"));
    }
    Ok(value.to_string())
}

/// The longest USSD code accepted (the screens' budget is checked with this width).
pub const USSD_CODE_MAX: usize = 10;

fn help_phone(value: &str) -> Result<String, String> {
    let v = value.trim();
    let digits = v.bytes().filter(u8::is_ascii_digit).count();
    if v.is_empty() || v.len() > 15 || digits < 3 || !v.bytes().all(|b| b.is_ascii_digit() || b" +.".contains(&b)) {
        return Err("a hotline is digits with spaces, + or . (at most 15 characters), e.g. 1900 0368".into());
    }
    Ok(v.to_string())
}

fn webhook_token(value: &str) -> Result<Secret, String> {
    if value.len() < 16 {
        return Err("the webhook token needs at least 16 characters".into());
    }
    if !value.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err("the webhook token may hold only A-Z a-z 0-9 . _ -".into());
    }
    Ok(Secret::new(value))
}

/// The delivery-report URL Kannel calls carries the webhook token when one is asked.
fn with_token(url: String, token: Option<&Secret>) -> String {
    match token {
        None => url,
        Some(t) => {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}token={}", t.expose())
        }
    }
}

impl ServeArgs {
    /// The bounds on queued work these flags ask for.
    pub fn bounds(&self) -> crate::service::LoadBounds {
        let default = crate::service::LoadBounds::default();
        crate::service::LoadBounds {
            max_pending: self.max_pending.max(1),
            hash_queue: self.hash_queue,
            hash_threads: self.hash_threads.unwrap_or(default.hash_threads).max(1),
        }
    }

    /// Refuses to serve the built-in demo citizens unless asked: without --registry and outside a
    /// checkout (no `fixtures/registry.csv` in the working directory), --demo must say so.
    pub fn check_registry(&self) -> Result<(), String> {
        if self.common.registry.is_some() || self.demo || std::path::Path::new(DEFAULT_REGISTRY).exists() {
            return Ok(());
        }
        Err(format!(
            "no citizens registry: give --registry FILE (KICHHOAT_REGISTRY), a CSV with the header \
             national_id,phone,full_name,status, or --demo to serve the demo citizens built into the binary \
             (there is no {DEFAULT_REGISTRY} in {}, so this is not a checkout)",
            std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_else(|_| "the working directory".into())
        ))
    }

    /// The admin API's address, checked: loopback only (it speaks plain HTTP).
    pub fn admin_addr(&self) -> Result<Option<(SocketAddr, bool)>, String> {
        if self.no_admin {
            return Ok(None);
        }
        let (addr, given) = match self.admin_listen {
            Some(a) => (a, true),
            None => (crate::admin::api::DEFAULT_LISTEN.parse().map_err(|e| format!("{e}"))?, false),
        };
        if !addr.ip().is_loopback() {
            return Err(format!(
                "refusing --admin-listen {addr}: the admin API speaks plain HTTP and must stay on a loopback \
                 address (127.0.0.1 or ::1); reach it over SSH from elsewhere"
            ));
        }
        Ok(Some((addr, given)))
    }

    /// Refuses to serve where strangers can reach the webhooks without a token, unless told the network
    /// is trusted.
    pub fn check_exposure(&self) -> Result<(), String> {
        if self.listen.ip().is_loopback() || self.webhook_token.is_some() || self.allow_no_token {
            return Ok(());
        }
        Err(format!(
            "refusing to listen on {} without --webhook-token: anyone who can reach this address could post any \
             phone number to the webhooks and take over an activation. Set --webhook-token (KICHHOAT_WEBHOOK_TOKEN) \
             and put it in the carriers' callback URLs (?token=...), or pass --allow-no-token if only the \
             carrier's gateway can reach this network.",
            self.listen
        ))
    }

    /// The webhook allowlist, parsed.
    pub fn allow(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.webhook_allow.as_deref().map(crate::gate::parse_allow).unwrap_or(Ok(Vec::new()))
    }

    /// The SMS sender these flags ask for; says what is missing when Kannel is asked for without what it
    /// needs.
    pub fn sender(&self) -> Result<SenderSettings, String> {
        match self.sms_sender {
            SenderKind::File => Ok(SenderSettings::File),
            SenderKind::Kannel => {
                let missing: Vec<&str> = [
                    (self.kannel_url.is_none(), "--kannel-url (KICHHOAT_KANNEL_URL), smsbox's sendsms URL such as http://127.0.0.1:13013/cgi-bin/sendsms"),
                    (self.kannel_user.is_none(), "--kannel-user (KICHHOAT_KANNEL_USER), the username of Kannel's sendsms-user"),
                    (self.kannel_password.is_none(), "--kannel-password (KICHHOAT_KANNEL_PASSWORD), its password"),
                ]
                .into_iter()
                .filter_map(|(absent, what)| absent.then_some(what))
                .collect();
                match (&self.kannel_url, &self.kannel_user, &self.kannel_password) {
                    (Some(url), Some(user), Some(password)) => Ok(SenderSettings::Kannel(KannelSettings {
                        url: url.clone(),
                        user: user.clone(),
                        password: password.clone(),
                        from: self.sms_from.clone(),
                        dlr_url: with_token(
                            self.kannel_dlr_url
                                .clone()
                                .unwrap_or_else(|| format!("http://{}/sms/kannel/dlr", self.listen)),
                            self.webhook_token.as_ref(),
                        ),
                    })),
                    _ => Err(format!("--sms-sender kannel needs {}", missing.join("; "))),
                }
            }
        }
    }
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
    /// Storage backend: in memory by default (each run starts afresh); `sled` keeps it in `<data-dir>/db`;
    /// a `postgres://…` URL uses that database.
    #[arg(long, value_parser = store_kind, default_value = "memory")]
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
    /// The outbox file of the `file` sender (unused with Kannel).
    pub sms_outbox: PathBuf,
    pub ussd_charset: Charset,
    /// The USSD code and hotline the texts mention.
    pub site: crate::engine::Site,
    /// How SMS texts are encoded (see [`Common::sms_charset`]).
    pub sms_charset: Charset,
    pub store: StoreKind,
    /// The carrier endpoints' token (`--webhook-token`); `None`: not asked.
    pub webhook_token: Option<Secret>,
    /// Addresses allowed to call the carrier endpoints; empty: any.
    pub webhook_allow: Vec<ipnet::IpNet>,
    pub policy: Policy,
    /// Where outgoing SMS go: the outbox file unless set otherwise after [`Settings::new`].
    pub sms_sender: SenderSettings,
    /// The audit trail file (the active one).
    pub audit_log: PathBuf,
    /// The file to write instead when [`Settings::audit_log`] (the default one) is another running
    /// instance's: instances on one shared database may share a data dir. `None`: refuse to start then.
    pub audit_log_fallback: Option<PathBuf>,
    /// The active audit trail file is rotated before a line would take it past this.
    pub audit_log_max_bytes: u64,
    /// Bounds on queued work (overload answers "busy" past them).
    pub bounds: crate::service::LoadBounds,
    /// sled's page cache (resident memory).
    pub sled_cache_bytes: u64,
}

impl Settings {
    pub fn new(data_dir: PathBuf, sms_outbox: Option<PathBuf>, store: StoreKind, common: &Common) -> Settings {
        Settings {
            store,
            policy: common.limits.policy(),
            key_file: common.key_file.clone().unwrap_or_else(|| data_dir.join("secret.key")),
            sms_outbox: sms_outbox.unwrap_or_else(|| data_dir.join("outbox.jsonl")),
            audit_log: common.audit_log.clone().unwrap_or_else(|| audit_log(&data_dir)),
            audit_log_fallback: None,
            audit_log_max_bytes: common.audit_log_max_mb.max(1).saturating_mul(1 << 20),
            flows: resolve(&common.flows, DEFAULT_FLOWS),
            registry: resolve(&common.registry, DEFAULT_REGISTRY),
            ussd_charset: common.ussd_charset,
            site: crate::engine::Site { ussd_code: common.ussd_code.clone(), help_phone: common.help_phone.clone() },
            sms_charset: common.sms_charset,
            sms_sender: SenderSettings::File,
            webhook_token: None,
            webhook_allow: Vec::new(),
            bounds: crate::service::LoadBounds::default(),
            sled_cache_bytes: crate::store::sled_store::CACHE_BYTES,
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

/// The audit trail file's default place.
pub fn audit_log(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("audit.jsonl")
}

/// The audit trail file of an instance listening on `port` whose data dir's default file is another
/// instance's (several instances on one database, one data dir).
pub fn instance_audit_log(data_dir: &std::path::Path, port: u16) -> PathBuf {
    data_dir.join(format!("audit-{port}.jsonl"))
}

/// The sled database lives in its own folder inside the data directory.
pub fn db_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("db")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn serve(args: &[&str]) -> ServeArgs {
        let argv = [&["kichhoat", "serve"], args].concat();
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(s) => *s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_audit_log_defaults_to_the_data_dir_and_is_rotated_at_64_mib_unless_told() {
        let s = serve(&["--data-dir", "/srv/k"]);
        let settings = Settings::new(s.data_dir.clone(), None, StoreKind::Memory, &s.common);
        assert_eq!(settings.audit_log, PathBuf::from("/srv/k/audit.jsonl"));
        assert_eq!(settings.audit_log_max_bytes, 64 << 20);
        let s = serve(&["--audit-log", "/var/log/k/audit.jsonl", "--audit-log-max-mb", "2"]);
        let settings = Settings::new(s.data_dir.clone(), None, StoreKind::Memory, &s.common);
        assert_eq!(
            (settings.audit_log, settings.audit_log_max_bytes),
            (PathBuf::from("/var/log/k/audit.jsonl"), 2 << 20)
        );
        let Command::Simulate(sim) =
            Cli::try_parse_from(["kichhoat", "simulate", "--phone", "0912345678", "--audit-log", "a.jsonl"])
                .unwrap()
                .command
        else {
            panic!("simulate")
        };
        assert_eq!(sim.common.audit_log, Some(PathBuf::from("a.jsonl")));
    }

    #[test]
    fn audit_reads_the_data_dirs_file_unless_a_file_is_named_and_verify_takes_one_too() {
        let audit = |args: &[&str]| match Cli::try_parse_from([&["kichhoat", "audit"], args].concat()).unwrap().command
        {
            Command::Audit(a) => a,
            other => panic!("{other:?}"),
        };
        assert_eq!(audit(&["--data-dir", "d"]).file(), PathBuf::from("d/audit.jsonl"));
        assert_eq!(audit(&["--audit-log", "x.jsonl"]).file(), PathBuf::from("x.jsonl"));
        let v = audit(&["verify", "--data-dir", "d"]);
        assert!(matches!(v.action, Some(AuditAction::Verify { file: None })));
        assert_eq!(v.file(), PathBuf::from("d/audit.jsonl"));
        assert_eq!(audit(&["verify", "y.jsonl"]).file(), PathBuf::from("y.jsonl"));
    }

    #[test]
    fn a_postgres_url_selects_postgres_and_its_password_never_shows() {
        let s = serve(&["--store", "postgres://kichhoat:pw-Zk3!@db.lan:5432/kichhoat"]);
        let StoreKind::Postgres(url) = &s.store else { panic!("{:?}", s.store) };
        assert_eq!(url.expose(), "postgres://kichhoat:pw-Zk3!@db.lan:5432/kichhoat");
        for shown in [format!("{:?}", s.store), s.store.to_string(), format!("{s:?}")] {
            assert!(!shown.contains("pw-Zk3!"), "{shown}");
        }
        assert_eq!(s.store.to_string(), "postgres://kichhoat@db.lan:5432/kichhoat");
        assert_eq!(serve(&["--store", "memory"]).store, StoreKind::Memory);
        let err = Cli::try_parse_from(["kichhoat", "serve", "--store", "mysql://x"]).unwrap_err().to_string();
        assert!(err.contains("postgres://"), "{err}");
    }

    #[test]
    fn the_admin_api_stays_on_loopback_and_can_be_turned_off() {
        assert_eq!(serve(&[]).admin_addr().unwrap(), Some(("127.0.0.1:0".parse().unwrap(), false)));
        assert_eq!(
            serve(&["--admin-listen", "[::1]:9000"]).admin_addr().unwrap(),
            Some(("[::1]:9000".parse().unwrap(), true))
        );
        assert_eq!(serve(&["--no-admin"]).admin_addr().unwrap(), None);
        let err = serve(&["--admin-listen", "0.0.0.0:8081"]).admin_addr().unwrap_err();
        assert!(err.contains("loopback"), "{err}");
        assert!(
            Cli::try_parse_from(["kichhoat", "serve", "--demo", "--registry", "r.csv"]).is_err(),
            "one or the other"
        );
    }

    #[test]
    fn the_file_sender_is_the_default_and_needs_no_kannel_flag() {
        let s = serve(&[]);
        assert!(matches!(s.sender().unwrap(), SenderSettings::File));
        assert_eq!(s.store, StoreKind::Sled);
        assert_eq!(s.common.sms_charset, Charset::Gsm7);
    }

    #[test]
    fn kannel_without_its_url_user_or_password_refuses_to_start_and_names_each_missing_flag() {
        let err = serve(&["--sms-sender", "kannel"]).sender().unwrap_err();
        for flag in ["--kannel-url", "--kannel-user", "--kannel-password", "KICHHOAT_KANNEL_URL"] {
            assert!(err.contains(flag), "{err}");
        }
        let err =
            serve(&["--sms-sender", "kannel", "--kannel-user", "u", "--kannel-password", "p"]).sender().unwrap_err();
        assert!(err.contains("--kannel-url") && !err.contains("--kannel-user"), "{err}");
    }

    #[test]
    fn kannel_settings_come_from_the_flags_and_the_dlr_url_defaults_to_the_listen_address() {
        let s = serve(&[
            "--listen",
            "10.1.2.3:8081",
            "--sms-sender",
            "kannel",
            "--kannel-url",
            "http://127.0.0.1:13013/cgi-bin/sendsms",
            "--kannel-user",
            "kichhoat",
            "--kannel-password",
            "pw-Zk3!",
            "--sms-from",
            "VNeID",
            "--sms-charset",
            "ucs2",
        ]);
        assert_eq!(s.common.sms_charset, Charset::Ucs2);
        let SenderSettings::Kannel(k) = s.sender().unwrap() else { panic!("kannel") };
        assert_eq!(
            (k.url.as_str(), k.user.as_str(), k.password.expose(), k.from.as_deref(), k.dlr_url.as_str()),
            (
                "http://127.0.0.1:13013/cgi-bin/sendsms",
                "kichhoat",
                "pw-Zk3!",
                Some("VNeID"),
                "http://10.1.2.3:8081/sms/kannel/dlr"
            )
        );
        assert!(!format!("{k:?}").contains("pw-Zk3!"), "the password is not in Debug");
        let with_dlr = [
            "--sms-sender",
            "kannel",
            "--kannel-url",
            "http://k/cgi-bin/sendsms",
            "--kannel-user",
            "u",
            "--kannel-password",
            "p",
            "--kannel-dlr-url",
            "http://kichhoat.lan/sms/kannel/dlr",
        ];
        let SenderSettings::Kannel(k) = serve(&with_dlr).sender().unwrap() else { panic!("kannel") };
        assert_eq!((k.dlr_url.as_str(), k.from), ("http://kichhoat.lan/sms/kannel/dlr", None));
    }
}
