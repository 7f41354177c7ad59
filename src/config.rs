//! Command-line interface and settings. Every `serve` flag can also come from `KICHHOAT_<NAME>`, so the
//! same binary runs from a terminal, a systemd unit or a container without a config file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::domain::Secret;
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
    /// SMS encoding: gsm7 sends Vietnamese without diacritics (carriers' default); ucs2 keeps the
    /// diacritics of a text that needs them (coding=2 towards Kannel).
    #[arg(long, env = "KICHHOAT_SMS_CHARSET", value_enum, default_value_t = Charset::Gsm7)]
    pub sms_charset: Charset,
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
    /// The file sender appends outgoing SMS here as JSON lines (unused with `--sms-sender kannel`).
    /// Default: `<data-dir>/outbox.jsonl`.
    #[arg(long, env = "KICHHOAT_SMS_OUTBOX")]
    pub sms_outbox: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "KICHHOAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Storage backend.
    #[arg(long, env = "KICHHOAT_STORE", value_enum, default_value_t = StoreKind::Sled)]
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
    #[command(flatten)]
    pub common: Common,
}

impl ServeArgs {
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
                        dlr_url: self
                            .kannel_dlr_url
                            .clone()
                            .unwrap_or_else(|| format!("http://{}/sms/kannel/dlr", self.listen)),
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
    /// The outbox file of the `file` sender (unused with Kannel).
    pub sms_outbox: PathBuf,
    pub ussd_charset: Charset,
    /// How SMS texts are encoded (see [`Common::sms_charset`]).
    pub sms_charset: Charset,
    pub store: StoreKind,
    /// Where outgoing SMS go: the outbox file unless set otherwise after [`Settings::new`].
    pub sms_sender: SenderSettings,
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
            sms_sender: SenderSettings::File,
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn serve(args: &[&str]) -> ServeArgs {
        let argv = [&["kichhoat", "serve"], args].concat();
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_file_sender_is_the_default_and_needs_no_kannel_flag() {
        let s = serve(&[]);
        assert!(matches!(s.sender().unwrap(), SenderSettings::File));
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
