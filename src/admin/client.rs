//! The operator's side: `kichhoat admin show|unlock|cancel` and `kichhoat registry import`. With a server
//! running on the data dir, the command goes to its admin API (URL and token from
//! `<data-dir>/admin.json`); with none, it opens the data dir itself (the store, the key file and the
//! audit trail file), or with `--store postgres://…` the database several instances share, and does the
//! same work in-process, audited the same way.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
use serde::de::DeserializeOwned;

use super::api::{Endpoint, ForId, ImportQuery, ENDPOINT_FILE};
use super::{Admin, AdminError, Cancelled, CitizenView, Operator, Unlocked, What};
use crate::audit::AuditLog;
use crate::clock::{Clock, SystemClock};
use crate::config::StoreKind;
use crate::config::{db_dir, LimitArgs};
use crate::crypto::{Crypto, HashCost};
use crate::domain::NationalId;
use crate::flow::Lang;
use crate::registry::ImportReport;
use crate::store::postgres::PgStore;
use crate::store::sled_store::SledStore;
use crate::store::Store;

#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub action: AdminAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum AdminAction {
    /// A citizen's state by ID number: registry status, activated (when), every lock and cap with until
    /// when (Vietnam time), the activation step in progress, the last code sent. Never a secret.
    Show {
        /// The 12-digit ID number (CCCD).
        id: String,
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// Clears a citizen's locks and counters: `login` (failed log-ins, both pools), `otp` (code sends,
    /// wrong codes, lookups), or `all`.
    Unlock {
        /// The 12-digit ID number (CCCD).
        id: String,
        /// Which locks to clear.
        #[arg(long, value_enum, default_value_t = What::All)]
        what: What,
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// Cancels the activation (or log-in) in progress for the ID number: the conversation holding it
    /// returns to the menu at its next input, the pending code is void.
    Cancel {
        /// The 12-digit ID number (CCCD).
        id: String,
        #[command(flatten)]
        opts: AdminOpts,
    },
}

#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    #[command(subcommand)]
    pub action: RegistryAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum RegistryAction {
    /// Imports a registry CSV (`national_id,phone,full_name,status`) authoritatively: citizens missing
    /// from it are marked removed (kept and audited; they can no longer activate or recover). Prints
    /// the counts added, changed, removed.
    Import {
        /// The CSV file; its rows are sent to the running server (which need not be able to read it).
        file: PathBuf,
        /// Only report what the import would do.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        opts: AdminOpts,
    },
}

/// How an operator command reaches the data.
#[derive(Debug, Clone, Args)]
pub struct AdminOpts {
    /// The server's data directory (its `admin.json` says where the admin API is).
    #[arg(long, env = "KICHHOAT_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Who acts, for the audit trail. Default: $USER.
    #[arg(long, env = "KICHHOAT_OPERATOR")]
    pub operator: Option<String>,
    /// Print JSON (for scripts) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Language of the text output.
    #[arg(long, value_enum, default_value_t = OutLang::Vi)]
    pub lang: OutLang,
    /// With no server running: the key file (default `<data-dir>/secret.key`).
    #[arg(long, env = "KICHHOAT_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// With no server running: the audit trail file (default `<data-dir>/audit.jsonl`).
    #[arg(long, env = "KICHHOAT_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// With no server running: the store the servers use, as `serve --store` (`sled` in the data dir, or
    /// the `postgres://…` database several instances share).
    #[arg(long, env = "KICHHOAT_STORE", hide_env_values = true, value_parser = crate::config::store_kind, default_value = "sled")]
    pub store: StoreKind,
    /// With no server running, the limits are read from the same settings as `serve` (the
    /// `KICHHOAT_*` environment, e.g. a systemd EnvironmentFile) to show caps and locks.
    #[command(flatten)]
    pub limits: LimitArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutLang {
    Vi,
    En,
}

/// Why a command failed, for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Refused(String),
    #[error("the admin API refused the token in {0}: is it the server's data dir?")]
    Unauthorized(String),
    #[error("the server at {url} could not be reached: {why}")]
    Unreachable { url: String, why: String },
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("{0}")]
    Local(String),
}

impl AdminOpts {
    fn operator(&self) -> Result<Operator, ClientError> {
        let name = self
            .operator
            .clone()
            .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
            .or_else(|| std::env::var("LOGNAME").ok().filter(|u| !u.is_empty()))
            .or_else(login_name)
            .unwrap_or_default();
        Operator::parse(&name).map_err(|e| ClientError::Refused(format!("{e} (--operator NAME, or $USER)")))
    }
}

/// The name of the user running the command, from the password database (no $USER under sudo -i, cron,
/// or a container).
fn login_name() -> Option<String> {
    #[cfg(unix)]
    {
        // SAFETY: getpwuid returns a pointer into static storage or null; it is read at once, before any
        // other call could overwrite it (the CLI is single-threaded at this point).
        unsafe {
            let pw = libc::getpwuid(libc::getuid());
            if pw.is_null() || (*pw).pw_name.is_null() {
                return None;
            }
            std::ffi::CStr::from_ptr((*pw).pw_name).to_str().ok().map(str::to_string)
        }
    }
    #[cfg(not(unix))]
    None
}

/// Whether the process that wrote `admin.json` still runs (a file a killed server left is ignored, so the
/// ID number is not sent to whatever listens on its old port now).
pub fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
        // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// The admin API of a running server, or the data dir itself.
enum Target {
    Api(Endpoint),
    Local(Local),
}

/// The data dir (or the shared database) opened in this process (no server holds it).
struct Local {
    admin: Admin,
    /// The sled store, flushed when done; `None` on PostgreSQL (every commit is durable).
    sled: Option<Arc<SledStore>>,
}

impl Local {
    async fn open(opts: &AdminOpts) -> Result<Local, ClientError> {
        let dir = &opts.data_dir;
        let key_file = opts.key_file.clone().unwrap_or_else(|| dir.join("secret.key"));
        let (store, sled): (Arc<dyn Store>, Option<Arc<SledStore>>) = match &opts.store {
            StoreKind::Postgres(url) => {
                // The key must exist: a new one would not open what the servers wrote.
                if !key_file.exists() {
                    return Err(ClientError::Local(format!(
                        "{}: no key file; give the servers' --key-file (KICHHOAT_KEY_FILE)",
                        key_file.display()
                    )));
                }
                let crypto = Crypto::load_or_create(&key_file, HashCost::OWASP)
                    .map_err(|e| ClientError::Local(e.to_string()))?;
                let pg = PgStore::open(url.expose()).await.map_err(|e| ClientError::Local(e.to_string()))?;
                pg.check_key(&crypto.key_check()).await.map_err(|e| ClientError::Local(e.to_string()))?;
                (Arc::new(pg), None)
            }
            _ => {
                if !db_dir(dir).exists() {
                    return Err(ClientError::Local(format!(
                        "no server answers for {} and it holds no database: is --data-dir right? (several \
                         instances on PostgreSQL: give --store)",
                        dir.display()
                    )));
                }
                let sled = SledStore::open(&db_dir(dir)).map_err(|e| {
                    ClientError::Local(format!(
                        "{} is in use ({e}) but its admin API was not found ({}): was the server started with \
                         --no-admin? Run the command while it serves with its admin listener, or stop it first",
                        dir.display(),
                        ENDPOINT_FILE
                    ))
                })?;
                let sled = Arc::new(sled);
                (sled.clone(), Some(sled))
            }
        };
        let crypto = Arc::new(
            Crypto::load_or_create(&key_file, HashCost::OWASP).map_err(|e| ClientError::Local(e.to_string()))?,
        );
        let audit_path = opts.audit_log.clone().unwrap_or_else(|| crate::config::audit_log(dir));
        let max = crate::audit::DEFAULT_MAX_MB.saturating_mul(1 << 20);
        let audit_log =
            AuditLog::open(&audit_path, max, store.clone(), crypto).map_err(|e| ClientError::Local(e.to_string()))?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let admin = Admin::new(store, Arc::new(opts.limits.policy()), clock, Arc::new(audit_log));
        Ok(Local { admin, sled })
    }
}

async fn target(opts: &AdminOpts) -> Result<Target, ClientError> {
    let file = Endpoint::path(&opts.data_dir);
    if let Err(e) = std::fs::File::open(&file) {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            return Err(ClientError::Local(format!(
                "{}: {e}. The server's files are readable by its own user only: run the command as that user \
                 (for example sudo -u kichhoat kichhoat admin …)",
                file.display()
            )));
        }
    }
    for endpoint in Endpoint::find(&opts.data_dir, process_alive) {
        // A file left by a server that died: nothing listens, or something else does.
        let alive = reqwest::get(format!("{}/healthz", endpoint.url)).await.is_ok_and(|r| r.status().is_success());
        if alive {
            return Ok(Target::Api(endpoint));
        }
    }
    Ok(Target::Local(Local::open(opts).await?))
}

async fn post<T: DeserializeOwned>(
    endpoint: &Endpoint,
    path: &str,
    query: Option<&ImportQuery>,
    body: Vec<u8>,
    content_type: &str,
) -> Result<T, ClientError> {
    let url = match query {
        None => format!("{}{path}", endpoint.url),
        Some(q) => {
            let mut s = form_urlencoded::Serializer::new(String::new());
            s.append_pair("operator", &q.operator);
            if let Some(n) = &q.name {
                s.append_pair("name", n);
            }
            s.append_pair("dry_run", if q.dry_run { "true" } else { "false" });
            format!("{}{path}?{}", endpoint.url, s.finish())
        }
    };
    let req = reqwest::Client::new()
        .post(url)
        .header("authorization", format!("Bearer {}", endpoint.token))
        .header("content-type", content_type)
        .body(body);
    let resp =
        req.send().await.map_err(|e| ClientError::Unreachable { url: endpoint.url.clone(), why: e.to_string() })?;
    let status = resp.status();
    let bytes =
        resp.bytes().await.map_err(|e| ClientError::Unreachable { url: endpoint.url.clone(), why: e.to_string() })?;
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Err(ClientError::Unauthorized(ENDPOINT_FILE.into()));
    }
    if !status.is_success() {
        let why = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        return Err(ClientError::Refused(format!("{status}: {why}")));
    }
    serde_json::from_slice(&bytes).map_err(|e| ClientError::Refused(format!("unreadable answer: {e}")))
}

fn parse_id(id: &str) -> Result<NationalId, ClientError> {
    NationalId::parse_shape(id).map_err(|e| ClientError::Refused(format!("ID number: {e}")))
}

fn json_body(id: &NationalId, by: &Operator, what: Option<What>) -> Result<Vec<u8>, ClientError> {
    let body = ForId { id: id.as_str().to_string(), operator: by.as_str().to_string(), what };
    serde_json::to_vec(&body).map_err(|e| ClientError::Local(e.to_string()))
}

/// Runs `kichhoat admin …`; returns what to print.
pub async fn run_admin(args: &AdminArgs) -> Result<String, ClientError> {
    let (id, opts) = match &args.action {
        AdminAction::Show { id, opts } | AdminAction::Unlock { id, opts, .. } | AdminAction::Cancel { id, opts } => {
            (parse_id(id)?, opts)
        }
    };
    let by = opts.operator()?;
    let lang = if opts.lang == OutLang::Vi { Lang::Vi } else { Lang::En };
    let target = target(opts).await?;
    let out = match (&args.action, &target) {
        (AdminAction::Show { .. }, _) => {
            let view: CitizenView = match &target {
                Target::Api(e) => post(e, "/admin/show", None, json_body(&id, &by, None)?, "application/json").await?,
                Target::Local(l) => l.admin.show(&id, &by).await?,
            };
            if opts.json {
                to_json(&view)?
            } else {
                view.render(lang)
            }
        }
        (AdminAction::Unlock { what, .. }, _) => {
            let done: Unlocked = match &target {
                Target::Api(e) => {
                    post(e, "/admin/unlock", None, json_body(&id, &by, Some(*what))?, "application/json").await?
                }
                Target::Local(l) => l.admin.unlock(&id, *what, &by).await?,
            };
            if opts.json {
                to_json(&done)?
            } else {
                unlocked_text(&done, lang)
            }
        }
        (AdminAction::Cancel { .. }, _) => {
            let done: Cancelled = match &target {
                Target::Api(e) => {
                    post(e, "/admin/cancel", None, json_body(&id, &by, None)?, "application/json").await?
                }
                Target::Local(l) => l.admin.cancel(&id, &by).await?,
            };
            if opts.json {
                to_json(&done)?
            } else {
                cancelled_text(&done, lang)
            }
        }
    };
    close(target);
    Ok(out)
}

/// Runs `kichhoat registry import …`; returns what to print.
pub async fn run_registry(args: &RegistryArgs) -> Result<String, ClientError> {
    let RegistryAction::Import { file, dry_run, opts } = &args.action;
    let by = opts.operator()?;
    let limit = crate::admin::api::IMPORT_LIMIT as u64;
    let len = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    if len > limit {
        return Err(ClientError::Refused(format!(
            "{}: {} MiB, more than the {} MiB an import through the server takes; import it at start instead \
             (serve --registry)",
            file.display(),
            len >> 20,
            limit >> 20
        )));
    }
    let csv = std::fs::read(file).map_err(|e| ClientError::Refused(format!("{}: {e}", file.display())))?;
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "registry.csv".into());
    let target = target(opts).await?;
    let report: ImportReport = match &target {
        Target::Api(e) => {
            let q = ImportQuery { operator: by.as_str().to_string(), name: Some(name), dry_run: *dry_run };
            post(e, "/admin/registry/import", Some(&q), csv, "text/csv").await.map_err(|err| match err {
                // The import writes as it goes: a server that stopped mid-way kept what it wrote.
                ClientError::Unreachable { url, why } if !*dry_run => ClientError::Unreachable {
                    url,
                    why: format!(
                        "{why}; if the server stopped during the import, part of the file may be written: \
                         importing it again completes it"
                    ),
                },
                other => other,
            })?
        }
        Target::Local(l) => l.admin.import(std::io::Cursor::new(csv), &name, &by, *dry_run).await?,
    };
    close(target);
    let lang = if opts.lang == OutLang::Vi { Lang::Vi } else { Lang::En };
    if opts.json {
        to_json(&report)
    } else {
        Ok(import_text(&report, lang))
    }
}

fn close(target: Target) {
    if let Target::Local(l) = target {
        if let Some(Err(e)) = l.sled.map(|s| s.flush()) {
            eprintln!("warning: final flush failed: {e}");
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, ClientError> {
    serde_json::to_string_pretty(v).map(|s| s + "\n").map_err(|e| ClientError::Local(e.to_string()))
}

fn unlocked_text(u: &Unlocked, lang: Lang) -> String {
    let cleared = if u.cleared.is_empty() { "-".to_string() } else { u.cleared.join(", ") };
    match lang {
        Lang::Vi => format!("Đã mở khoá ({}). Bộ đếm đã xoá: {cleared}\n", u.what_name()),
        Lang::En => format!("Unlocked ({}). Counters cleared: {cleared}\n", u.what_name()),
    }
}

fn cancelled_text(c: &Cancelled, lang: Lang) -> String {
    match (lang, c.conversations.is_empty()) {
        (Lang::Vi, true) => "Không có phiên kích hoạt nào đang làm dở.\n".into(),
        (Lang::En, true) => "No activation in progress.\n".into(),
        (Lang::Vi, false) => format!(
            "Đã huỷ phiên đang làm dở trên SĐT {} ({} mã OTP bị vô hiệu). Lần nhập sau sẽ về menu.\n",
            c.conversations.join(", "),
            c.codes_voided
        ),
        (Lang::En, false) => format!(
            "Cancelled the conversation(s) on {} ({} pending code(s) voided); the next input opens the menu.\n",
            c.conversations.join(", "),
            c.codes_voided
        ),
    }
}

fn import_text(r: &ImportReport, lang: Lang) -> String {
    let mut o = String::new();
    let head = match (lang, r.dry_run) {
        (Lang::Vi, true) => "Thử nhập (không ghi gì)",
        (Lang::Vi, false) => "Đã nhập danh sách",
        (Lang::En, true) => "Dry run (nothing written)",
        (Lang::En, false) => "Registry imported",
    };
    let vi = lang == Lang::Vi;
    let t = |v: &'static str, e: &'static str| if vi { v } else { e };
    o.push_str(&format!(
        "{head}: {} {}; {} {}, {} {} ({} {}), {} {}, {} {}, {} {}, {} {}\n",
        r.imported,
        t("dòng đọc được", "rows read"),
        t("thêm", "added"),
        r.added,
        t("thay đổi", "changed"),
        r.changed,
        t("khôi phục", "restored"),
        r.restored,
        t("gỡ khỏi danh sách", "removed"),
        r.removed,
        t("không đổi", "unchanged"),
        r.unchanged,
        t("giữ nguyên vì dòng lỗi", "kept (unreadable row)"),
        r.kept,
        t("dòng bỏ qua", "rows skipped"),
        r.skipped.len()
    ));
    for (line, why) in &r.skipped {
        o.push_str(&format!("  {} {line}: {why}\n", t("bỏ qua dòng", "skipped line")));
    }
    for (line, why) in &r.warnings {
        o.push_str(&format!("  {} {line}: {why}\n", t("dòng", "line")));
    }
    o
}

impl Unlocked {
    fn what_name(&self) -> &'static str {
        self.what.name()
    }
}
