//! Assembling a running instance from settings: flows, keys, store, the audit trail file, registry import,
//! channels, the SMS sender with its delivery worker, and the expiry sweeper. `serve`, `simulate` and the
//! tests all start here.
//!
//! The audit trail is drained at start (records a crash left unexported), by every writer of audit
//! records (a turn before its reply; the gate, delivery reports and the worker after writing), by the
//! sweeper every minute (what a failed drain left), and at shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::audit::{AuditLog, AuditLogError};
use crate::channel::africastalking::AfricasTalking;
use crate::channel::kannel::Kannel;
use crate::clock::Clock;
use crate::config::{SenderSettings, Settings, StoreKind};
use crate::crypto::{Crypto, CryptoError, HashCost};
use crate::flow::{Charset, Flow, Problem};
use crate::gate::Gate;
use crate::registry::{self, RegistryError};
use crate::service::Service;
use crate::sms::dlr::DeliveryReports;
use crate::sms::file::FileSender;
use crate::sms::kannel::{self, KannelConfig, KannelSender};
use crate::sms::worker::Worker;
use crate::sms::SmsSender;
use crate::store::memory::MemoryStore;
use crate::store::postgres::PgStore;
use crate::store::sled_store::SledStore;
use crate::store::{Expired, Retention, Store, StoreError};

/// How often the sweeper reclaims what expired.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("flows in {dir} have {} problem(s):\n{}", .problems.len(), .problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Flows { dir: String, problems: Vec<Problem> },
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{what} {path}: {why}")]
    Io { what: &'static str, path: String, why: String },
    #[error("SMS sender: {0}")]
    Sender(#[from] kannel::KannelError),
    #[error(transparent)]
    AuditLog(#[from] AuditLogError),
}

/// What the HTTP layer serves with: the service and the channels in front of it.
pub struct Web {
    /// Who may call the carrier endpoints.
    pub gate: Arc<Gate>,
    pub service: Arc<Service>,
    pub africastalking: AfricasTalking,
    /// How USSD screens are encoded.
    pub ussd_charset: Charset,
    pub kannel: Kannel,
    /// How SMS replies are encoded.
    pub sms_charset: Charset,
    /// Kannel's delivery reports (`/sms/kannel/dlr`).
    pub delivery_reports: DeliveryReports,
}

pub struct App {
    pub service: Arc<Service>,
    pub web: Arc<Web>,
    pub store: Arc<dyn Store>,
    /// The sled store when that is the backend (flushed at shutdown; tests count its flushes).
    pub sled: Option<Arc<SledStore>>,
    pub worker: Arc<Worker>,
    /// The audit trail file.
    pub audit_log: Arc<AuditLog>,
    /// The injected clock (the sweeper's time, as everything else's).
    clock: Arc<dyn Clock>,
    stop: watch::Sender<bool>,
    /// The SMS delivery worker and the expiry sweeper.
    tasks: Vec<JoinHandle<()>>,
}

/// One expiry pass at the clock's time with the default retention; logs what it reclaimed.
async fn expire_once(store: &dyn Store, clock: &dyn Clock) -> Result<Expired, StoreError> {
    let e = store.expire(clock.now(), &Retention::DEFAULT).await?;
    if e.total() > 0 {
        info!(
            swept = e.swept,
            conversations = e.conversations,
            counters = e.counters,
            failed_sms = e.failed_sms,
            "expired records reclaimed"
        );
    }
    Ok(e)
}

/// Every [`SWEEP_EVERY`], reclaims what the store no longer needs to keep (on the injected clock), and
/// writes to the audit trail what a failed drain left unexported.
async fn sweep(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    audit_log: Arc<AuditLog>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = stop.changed() => break,
        }
        if let Err(e) = expire_once(store.as_ref(), clock.as_ref()).await {
            warn!(error = %e, "expiry sweep failed");
        }
        match audit_log.drain().await {
            Ok(0) => {}
            Ok(n) => info!(lines = n, "audit records left unexported written to the audit trail"),
            Err(e) => error!(error = %e, "audit trail could not be written; retried in a minute"),
        }
    }
}

/// Logs what a registry import did: each row skipped or warned about, then the counts.
pub fn log_import(registry_name: &str, report: &registry::ImportReport) {
    for (line, why) in &report.skipped {
        warn!(registry = %registry_name, line, why = %why, "registry row skipped");
    }
    for (line, why) in &report.warnings {
        warn!(registry = %registry_name, line, why = %why, "registry row imported with a warning");
    }
    info!(
        registry = %registry_name,
        citizens = report.imported,
        added = report.added,
        changed = report.changed,
        restored = report.restored,
        removed = report.removed,
        unchanged = report.unchanged,
        kept_unreadable = report.kept,
        skipped = report.skipped.len(),
        implausible_ids = report.implausible,
        dry_run = report.dry_run,
        "registry imported"
    );
}

/// Data dir 0700, everything in it 0600 (directories 0700): a data dir written before files were made
/// private (or copied in with a wider umask) is tightened at start.
fn make_private(dir: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::symlink_metadata(dir)?;
        let mode = if meta.is_dir() { 0o700 } else { 0o600 };
        if meta.permissions().mode() & 0o777 != mode && !meta.file_type().is_symlink() {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(dir)? {
                make_private(&entry?.path())?;
            }
        }
    }
    Ok(())
}

impl App {
    /// Opens everything and starts the background tasks; must run inside a tokio runtime.
    pub async fn open(settings: &Settings, clock: Arc<dyn Clock>, cost: HashCost) -> Result<App, StartError> {
        Self::open_with_sender(settings, clock, cost, None).await
    }

    /// As [`App::open`], with a sender of the caller's instead of the one the settings name.
    pub async fn open_with_sender(
        settings: &Settings,
        clock: Arc<dyn Clock>,
        cost: HashCost,
        sender: Option<Arc<dyn SmsSender>>,
    ) -> Result<App, StartError> {
        // The metrics are built here, not by the first hop: their definitions are constants, and nothing
        // that could fail runs on a request path.
        std::sync::LazyLock::force(&crate::metrics::METRICS);
        let flow = Flow::load_from(settings.flows.as_deref()).map_err(|problems| {
            let dir =
                settings.flows.as_ref().map(|d| d.display().to_string()).unwrap_or_else(|| "built-in flows".into());
            StartError::Flows { dir, problems }
        })?;
        let io = |what: &'static str, path: &std::path::Path| {
            let path = path.display().to_string();
            move |e: std::io::Error| StartError::Io { what, path, why: e.to_string() }
        };
        std::fs::create_dir_all(&settings.data_dir).map_err(io("data dir", &settings.data_dir))?;
        // The key file first: one others can read is refused, not quietly tightened with the rest.
        let crypto = Arc::new(Crypto::load_or_create(&settings.key_file, cost)?);
        make_private(&settings.data_dir).map_err(io("data dir", &settings.data_dir))?;
        let sender: Arc<dyn SmsSender> = match (sender, &settings.sms_sender) {
            (Some(s), _) => s,
            (None, SenderSettings::File) => {
                Arc::new(FileSender::open(&settings.sms_outbox).map_err(io("sms outbox", &settings.sms_outbox))?)
            }
            (None, SenderSettings::Kannel(k)) => {
                let config = KannelConfig {
                    url: k.url.clone(),
                    user: k.user.clone(),
                    password: k.password.clone(),
                    from: k.from.clone(),
                    dlr_url: k.dlr_url.clone(),
                    charset: settings.sms_charset,
                    connect_timeout: kannel::CONNECT_TIMEOUT,
                    request_timeout: kannel::REQUEST_TIMEOUT,
                };
                Arc::new(KannelSender::new(config, crypto.clone())?)
            }
        };
        let (store, sled): (Arc<dyn Store>, Option<Arc<SledStore>>) = match &settings.store {
            StoreKind::Sled => {
                let sled = Arc::new(SledStore::open_with(&settings.db_dir(), clock.now(), settings.sled_cache_bytes)?);
                (sled.clone(), Some(sled))
            }
            StoreKind::Memory => (Arc::new(MemoryStore::new()), None),
            StoreKind::Postgres(url) => {
                let pg = PgStore::open(url.expose()).await?;
                pg.check_key(&crypto.key_check()).await?;
                (Arc::new(pg), None)
            }
        };
        let max = settings.audit_log_max_bytes;
        let opened = AuditLog::open(&settings.audit_log, max, store.clone(), crypto.clone());
        let (audit_log, audit_path) = match (opened, &settings.audit_log_fallback) {
            (Err(AuditLogError::Locked { .. }), Some(fallback)) => {
                warn!(
                    audit_log = %settings.audit_log.display(),
                    instead = %fallback.display(),
                    "another instance writes the data dir's audit trail; this one writes a file of its own"
                );
                (AuditLog::open(fallback, max, store.clone(), crypto.clone())?, fallback.clone())
            }
            (opened, _) => (opened?, settings.audit_log.clone()),
        };
        let audit_log = Arc::new(audit_log);
        // Records committed before a crash (or an upgrade: a data dir's earlier trail) go in first.
        let recovered = audit_log.drain().await?;
        let (seq, head) = audit_log.head();
        info!(
            audit_log = %audit_path.display(),
            written_at_start = recovered,
            last_seq = seq,
            head = %head,
            "audit trail open"
        );
        let (registry_name, report) = match &settings.registry {
            Some(path) => {
                (path.display().to_string(), registry::import_csv(path, store.as_ref(), clock.now(), "serve").await?)
            }
            None => (
                "demo registry (built in)".to_string(),
                registry::import_demo(store.as_ref(), clock.now(), "serve").await?,
            ),
        };
        log_import(&registry_name, &report);
        // Removed citizens are audited: the trail file gets them before the first turn.
        audit_log.drain().await?;
        // One style per conversation: diacritics on every USSD screen, or on none.
        let ussd_charset = match settings.ussd_charset {
            Charset::Ucs2 if !flow.fits_ucs2() => {
                warn!(
                    "--ussd-charset ucs2: some screens are longer than one UCS-2 message (80 characters); every USSD \
                     screen is sent without diacritics so a conversation keeps one style"
                );
                Charset::Gsm7
            }
            c => c,
        };
        let service = Arc::new(
            Service::new(
                store.clone(),
                Arc::new(registry::ImportedRegistry(store.clone())),
                Arc::new(flow),
                crypto.clone(),
                clock.clone(),
                settings.policy.clone(),
                audit_log.clone(),
            )
            .with_site(settings.site.clone())
            .with_bounds(settings.bounds),
        );
        let gate = Arc::new(Gate::new(
            settings.webhook_token.as_ref(),
            settings.webhook_allow.clone(),
            store.clone(),
            clock.clone(),
            Some(audit_log.clone()),
        ));
        let web = Arc::new(Web {
            gate,
            service: service.clone(),
            africastalking: AfricasTalking::new(crypto.clone()),
            ussd_charset,
            kannel: Kannel::new(crypto.clone()),
            sms_charset: settings.sms_charset,
            delivery_reports: DeliveryReports {
                store: store.clone(),
                crypto: crypto.clone(),
                clock: clock.clone(),
                audit_log: Some(audit_log.clone()),
            },
        });
        let (stop, stopped) = watch::channel(false);
        let mut worker = Worker::new(store.clone(), crypto, sender, clock.clone());
        worker.audit_log = Some(audit_log.clone());
        let worker = Arc::new(worker);
        let delivery = tokio::spawn(worker.clone().run(service.outbox_ready.clone(), stopped.clone()));
        let sweeper = tokio::spawn(sweep(store.clone(), clock.clone(), audit_log.clone(), stopped));
        Ok(App { service, web, store, sled, worker, audit_log, clock, stop, tasks: vec![delivery, sweeper] })
    }

    /// The operator commands over this instance's store, limits, clock and audit trail.
    pub fn admin(&self) -> crate::admin::Admin {
        crate::admin::Admin::new(
            self.store.clone(),
            self.service.policy.clone(),
            self.clock.clone(),
            self.audit_log.clone(),
        )
    }

    /// Runs one expiry pass now, exactly as the periodic sweeper does (the app's clock,
    /// [`Retention::DEFAULT`]): what tests and operators call instead of waiting for it.
    pub async fn expire_now(&self) -> Result<Expired, StoreError> {
        expire_once(self.store.as_ref(), self.clock.as_ref()).await
    }

    /// Stops the background tasks after a last delivery round, writes what is left to the audit trail, and
    /// flushes the store.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        if let Err(e) = self.worker.deliver_due().await {
            warn!(error = %e, "last delivery round failed");
        }
        match self.audit_log.drain().await {
            Ok(_) => {
                let (seq, head) = self.audit_log.head();
                info!(last_seq = seq, head = %head, "audit trail closed");
            }
            Err(e) => error!(error = %e, "audit trail could not be written at shutdown; written at the next start"),
        }
        if let Some(sled) = &self.sled {
            if let Err(e) = sled.flush() {
                warn!(error = %e, "final flush failed");
            }
        }
    }
}
