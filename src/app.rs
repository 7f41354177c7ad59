//! Assembling a running instance from settings: flows, keys, store, registry import, SMS sender and the
//! delivery worker. `serve`, `simulate` and the tests all start here.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::channel::africastalking::RECENT_TTL;
use crate::clock::{Clock, Millis};
use crate::config::Settings;
use crate::crypto::{Crypto, CryptoError, HashCost};
use crate::flow::{Flow, Problem};
use crate::registry::{self, RegistryError};
use crate::service::Service;
use crate::sms::file::FileSender;
use crate::sms::{worker, SmsSender};
use crate::store::sled_store::SledStore;
use crate::store::{Store, StoreError};

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
}

pub struct App {
    pub service: Arc<Service>,
    pub store: Arc<SledStore>,
    pub sender: Arc<dyn SmsSender>,
    stop: watch::Sender<bool>,
    /// The SMS delivery worker and the hop sweeper.
    tasks: Vec<JoinHandle<()>>,
}

/// Every minute, forgets the hop cursors of conversations idle longer than a carrier could retry:
/// they hold keyed hashes of texts that may include a password (see `channel::africastalking`).
async fn sweep(store: Arc<dyn Store>, clock: Arc<dyn Clock>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
            _ = stop.changed() => break,
        }
        let cutoff = Millis(clock.now().0.saturating_sub(RECENT_TTL.as_millis() as u64));
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.sweep_hops(cutoff)).await {
            Ok(Ok(n)) if n > 0 => info!(cleared = n, "idle hop cursors swept"),
            Ok(Err(e)) => warn!(error = %e, "hop sweep failed"),
            _ => {}
        }
    }
}

impl App {
    /// Opens everything; must run inside a tokio runtime (it spawns the delivery worker).
    pub fn open(settings: &Settings, clock: Arc<dyn Clock>, cost: HashCost) -> Result<App, StartError> {
        Self::open_with_sender(settings, clock, cost, None)
    }

    /// As [`App::open`], with a sender of the caller's instead of the outbox file.
    pub fn open_with_sender(
        settings: &Settings,
        clock: Arc<dyn Clock>,
        cost: HashCost,
        sender: Option<Arc<dyn SmsSender>>,
    ) -> Result<App, StartError> {
        let flow = Flow::load_from(settings.flows.as_deref()).map_err(|problems| {
            let dir =
                settings.flows.as_ref().map(|d| d.display().to_string()).unwrap_or_else(|| "built-in flows".into());
            StartError::Flows { dir, problems }
        })?;
        std::fs::create_dir_all(&settings.data_dir).map_err(|e| StartError::Io {
            what: "data dir",
            path: settings.data_dir.display().to_string(),
            why: e.to_string(),
        })?;
        let crypto = Crypto::load_or_create(&settings.key_file, cost)?;
        let store = Arc::new(SledStore::open(&settings.db_dir())?);
        let year = clock.now().year();
        let (registry_name, report) = match &settings.registry {
            Some(path) => (path.display().to_string(), registry::import_csv(path, store.as_ref(), year)?),
            None => ("demo registry (built in)".to_string(), registry::import_demo(store.as_ref(), year)?),
        };
        for (line, why) in &report.skipped {
            warn!(registry = %registry_name, line, why = %why, "registry row skipped");
        }
        for (line, why) in &report.warnings {
            warn!(registry = %registry_name, line, why = %why, "registry row imported with a warning");
        }
        info!(
            registry = %registry_name,
            citizens = report.imported,
            skipped = report.skipped.len(),
            implausible_ids = report.implausible,
            "registry imported"
        );
        let sender: Arc<dyn SmsSender> = match sender {
            Some(s) => s,
            None => Arc::new(FileSender::open(&settings.sms_outbox).map_err(|e| StartError::Io {
                what: "sms outbox",
                path: settings.sms_outbox.display().to_string(),
                why: e.to_string(),
            })?),
        };
        let dyn_store: Arc<dyn Store> = store.clone();
        let crypto = Arc::new(crypto);
        let service = Arc::new(Service::new(
            dyn_store.clone(),
            Arc::new(registry::ImportedRegistry(dyn_store.clone())),
            Arc::new(flow),
            crypto.clone(),
            clock.clone(),
            settings.ussd_charset,
        ));
        let (stop, stopped) = watch::channel(false);
        let worker = tokio::spawn(worker::run(
            dyn_store.clone(),
            crypto,
            sender.clone(),
            service.outbox_ready.clone(),
            stopped.clone(),
        ));
        let sweeper = tokio::spawn(sweep(dyn_store, clock, stopped));
        Ok(App { service, store, sender, stop, tasks: vec![worker, sweeper] })
    }

    /// Stops the delivery worker after a last delivery round, and flushes the store.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        let _ = worker::deliver_pending(self.store.as_ref(), &self.service.crypto, self.sender.as_ref()).await;
        if let Err(e) = self.store.flush() {
            warn!(error = %e, "final flush failed");
        }
    }
}
