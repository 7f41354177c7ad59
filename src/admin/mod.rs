//! Operator commands (`kichhoat admin show | unlock | cancel`, `kichhoat registry import`): what a commune
//! police officer helping a citizen needs, working on the store the server uses.
//!
//! [`Admin`] does the work and is the same whether it runs inside the server (behind the admin API,
//! [`api`]) or, with the server stopped, in the CLI's own process on the data dir ([`client`]). Every
//! action is audited with the operator's name (`detail: operator=…`) and the ID number only as the audit
//! file's keyed `subject`, and the audit trail file has the line before the answer. What is shown is
//! never a secret or a hash: states, times, counts, masked phones.
//!
//! - **show**: registry status, activation (and when), every counter that can refuse the citizen (log-in
//!   pools, OTP and wrong-code caps, lookup caps) with until when in Asia/Ho_Chi_Minh time, each
//!   conversation holding the ID number (state, phones masked, since when, the code's state), and when
//!   the last code was sent.
//! - **unlock**: deletes the counters of a group ([`Group`]) in one store write with its audit record.
//! - **cancel**: every conversation holding the ID number is set back to no state (its next input opens
//!   the menu, saying the session restarted), the pending code voided, committed against the version
//!   read like any turn.

pub mod api;
pub mod client;
pub mod view;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::audit::AuditLog;
use crate::clock::{Clock, Millis};
use crate::domain::{Msisdn, NationalId};
use crate::engine::policy::{Group, Policy};
use crate::engine::{AuditEvent, CitizenStatus, Session, Slots, IDLE_RESET};
use crate::limits::{self, Rule};
use crate::registry::{self, ImportReport, RegistryError};
use crate::store::{AuditRecord, Commit, CommitOutcome, Store, StoreError};
pub use view::{ActivationView, CitizenView, LimitView, Time};

/// How often a cancel re-reads a conversation that changed under it before giving up.
const CANCEL_ATTEMPTS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("audit trail: {0}")]
    AuditLog(#[from] crate::audit::AuditLogError),
    #[error("the conversation of {0} kept changing; try again")]
    Busy(String),
    #[error("{0}")]
    BadRequest(String),
}

/// Who acts: a name for the audit trail (`--operator`, else `$USER`). Letters, digits and `._@-`, at
/// most 64 characters, so it cannot forge another field of an audit line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Operator(String);

impl Operator {
    pub fn parse(name: &str) -> Result<Operator, String> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 64 {
            return Err("the operator name must have 1 to 64 characters".into());
        }
        if !name.chars().all(|c| c.is_alphanumeric() || "._@-".contains(c)) {
            return Err("the operator name may hold only letters, digits and . _ @ -".into());
        }
        Ok(Operator(name.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Operator {
    type Error = String;
    fn try_from(s: String) -> Result<Operator, String> {
        Operator::parse(&s)
    }
}

impl From<Operator> for String {
    fn from(o: Operator) -> String {
        o.0
    }
}

/// Which locks `unlock` clears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum What {
    /// Log-in failures and locks (both pools).
    Login,
    /// OTP send caps, wrong codes and lookup caps (both pools, and the registered phone's own lookups).
    Otp,
    /// Both.
    All,
}

impl What {
    fn covers(self, g: Group) -> bool {
        matches!((self, g), (What::All, _) | (What::Login, Group::Login) | (What::Otp, Group::Otp))
    }
    fn name(self) -> &'static str {
        match self {
            What::Login => "login",
            What::Otp => "otp",
            What::All => "all",
        }
    }
}

/// What `unlock` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unlocked {
    pub what: What,
    /// The counters that existed and were cleared, by name and pool (`login:other`).
    pub cleared: Vec<String>,
}

/// What `cancel` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancelled {
    /// The phones (masked) whose conversation was set back to the menu.
    pub conversations: Vec<String>,
    /// Of those, how many had a code pending (now void).
    pub codes_voided: usize,
}

/// The operator commands over one store.
pub struct Admin {
    pub store: Arc<dyn Store>,
    pub policy: Arc<Policy>,
    pub clock: Arc<dyn Clock>,
    pub audit_log: Arc<AuditLog>,
    /// One registry import at a time.
    imports: tokio::sync::Mutex<()>,
}

impl Admin {
    pub fn new(store: Arc<dyn Store>, policy: Arc<Policy>, clock: Arc<dyn Clock>, audit_log: Arc<AuditLog>) -> Admin {
        Admin { store, policy, clock, audit_log, imports: tokio::sync::Mutex::new(()) }
    }

    fn record(&self, event: &str, id: Option<&NationalId>, caller: Option<&Msisdn>, detail: String) -> AuditRecord {
        AuditRecord {
            at: self.clock.now(),
            caller: caller.cloned(),
            channel: Some("admin".into()),
            event: AuditEvent { event: event.into(), national_id: id.cloned(), phone: None, detail: Some(detail) },
        }
    }

    /// Everything an operator may see of the citizen with ID number `id`; audited as `admin_show`.
    pub async fn show(&self, id: &NationalId, by: &Operator) -> Result<CitizenView, AdminError> {
        let now = self.clock.now();
        let citizen = self.store.citizen(id).await?;
        let account = self.store.account(id).await?;
        let registered = citizen.as_ref().map(|c| c.phone.clone());
        let mut limits = Vec::new();
        let mut last_otp: Option<Millis> = None;
        for w in self.policy.watched(id, registered.as_ref()) {
            let tally = self.store.tally(&w.key).await?;
            if w.name == "otp_id_day" {
                last_otp = last_otp.max(tally.times.iter().copied().max());
            }
            limits.push(LimitView::of(&w, &tally, now));
        }
        let mut activations = Vec::new();
        for (phone, conversation, _) in self.store.conversations_of(id).await? {
            // The activation in progress, or one put aside by a fast-dial.
            let Some(s) = conversation.session.activation_of(id) else { continue };
            let s = &s;
            if let Some(otp) = &s.slots.otp {
                let sent =
                    Millis(otp.expires_at.0.saturating_sub(crate::engine::actions::OTP_LIFETIME.as_millis() as u64));
                last_otp = last_otp.max(Some(sent));
            }
            activations.push(ActivationView::of(&phone, s, now));
        }
        let view = CitizenView::new(id, now, citizen.as_ref(), account.as_ref(), limits, activations, last_otp);
        let record = self.record("admin_show", Some(id), None, format!("operator={}", by.as_str()));
        self.store.append_audit(&[record]).await?;
        self.audit_log.drain().await?;
        Ok(view)
    }

    /// Clears the counters of `what` for `id`, with the audit record `admin_unlock` in the same write.
    pub async fn unlock(&self, id: &NationalId, what: What, by: &Operator) -> Result<Unlocked, AdminError> {
        let registered = self.store.citizen(id).await?.map(|c| c.phone);
        let watched: Vec<_> =
            self.policy.watched(id, registered.as_ref()).into_iter().filter(|w| what.covers(w.group)).collect();
        let mut cleared = Vec::new();
        for w in &watched {
            if !self.store.tally(&w.key).await?.is_empty() {
                cleared.push(view::counter_name(w));
            }
        }
        let detail = format!("operator={}; what={}; cleared={}", by.as_str(), what.name(), cleared.join(","));
        let keys: Vec<_> = watched.iter().map(|w| w.key.clone()).collect();
        self.store.reset_counters(&keys, &[self.record("admin_unlock", Some(id), None, detail)]).await?;
        self.audit_log.drain().await?;
        Ok(Unlocked { what, cleared })
    }

    /// Sets every conversation holding `id` back to no state and voids its pending code; audited as
    /// `admin_cancel` (and `otp_voided` when a code was pending) in the commit of each.
    pub async fn cancel(&self, id: &NationalId, by: &Operator) -> Result<Cancelled, AdminError> {
        let mut done = Cancelled { conversations: Vec::new(), codes_voided: 0 };
        for (phone, _, _) in self.store.conversations_of(id).await? {
            if let Some(voided) = self.cancel_one(id, &phone, by).await? {
                done.conversations.push(phone.masked());
                done.codes_voided += usize::from(voided);
            }
        }
        self.audit_log.drain().await?;
        Ok(done)
    }

    /// `Some(code was pending)` when the conversation of `phone` still held `id` and was cancelled.
    async fn cancel_one(&self, id: &NationalId, phone: &Msisdn, by: &Operator) -> Result<Option<bool>, AdminError> {
        for _ in 0..CANCEL_ATTEMPTS {
            let Some((mut conversation, version)) = self.store.load(phone).await? else { return Ok(None) };
            // The activation of `id` in progress, or put aside (a fast-dial, `0` before the code).
            let Some(old) = conversation.session.activation_of(id) else { return Ok(None) };
            let now = self.clock.now();
            let lang = conversation.session.lang;
            let session = &mut conversation.session;
            if session.slots.national_id.as_ref() == Some(id) {
                // What else the phone put aside stays (another ID's activation), unless it is this ID's too.
                let parked = session.parked.take().filter(|p| p.slots.national_id.as_ref() != Some(id));
                *session = Session {
                    lang,
                    state: String::new(),
                    tries: 0,
                    updated_at: now,
                    slots: Slots::default(),
                    leaving: false,
                    parked,
                };
            } else {
                session.parked = None; // only the activation put aside was this ID's
                session.updated_at = now;
            }
            let pending = old.slots.otp.is_some();
            let detail = format!("operator={}; state={}", by.as_str(), old.state);
            let mut audit = vec![self.record("admin_cancel", Some(id), Some(phone), detail)];
            if pending {
                audit.push(self.record("otp_voided", Some(id), Some(phone), format!("operator={}", by.as_str())));
            }
            let commit = Commit {
                at: now,
                phone: phone.clone(),
                conversation,
                activate: None,
                sms: Vec::new(),
                audit,
                bumps: Vec::new(),
                account_update: None,
            };
            match self.store.commit(Some(version), commit).await? {
                CommitOutcome::Committed(_) => return Ok(Some(pending)),
                CommitOutcome::Conflict => continue,
                other => return Err(AdminError::Busy(format!("{} ({other:?})", phone.masked()))),
            }
        }
        Err(AdminError::Busy(phone.masked()))
    }

    /// An operator's authoritative registry import of the CSV `input` (`name` names it in the audit
    /// trail and errors); `dry_run` only reports.
    pub async fn import(
        &self,
        input: impl std::io::Read + Send + 'static,
        name: &str,
        by: &Operator,
        dry_run: bool,
    ) -> Result<ImportReport, AdminError> {
        let _one = self.imports.lock().await;
        let who = format!("operator={}", by.as_str());
        let report = registry::import(input, name, self.store.as_ref(), self.clock.now(), &who, dry_run)
            .await
            // Said in the log too: the operator's client may be gone (an upload cut off).
            .inspect_err(
                |e| tracing::warn!(registry = name, operator = by.as_str(), error = %e, "registry import failed"),
            )?;
        crate::app::log_import(name, &report);
        self.audit_log.drain().await?;
        Ok(report)
    }
}

/// Whether a conversation idle this long restarts at its next input (shown to the operator).
pub fn is_idle(s: &Session, now: Millis) -> bool {
    now.since(s.updated_at) > IDLE_RESET
}

/// When the next event of `rule` would be accepted, if it would be refused now.
pub fn refused_until(rule: &Rule, tally: &limits::Tally, now: Millis) -> Option<Millis> {
    limits::apply(rule, tally, now).err().map(|_| limits::next_allowed(rule, tally, now))
}

/// The registry status an operator reads.
pub fn status_name(s: CitizenStatus) -> &'static str {
    match s {
        CitizenStatus::Approved => "approved",
        CitizenStatus::Pending => "pending",
        CitizenStatus::Removed => "removed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operator_name_cannot_forge_another_audit_field() {
        assert_eq!(Operator::parse(" cong-an.xa1@ha-noi ").unwrap().as_str(), "cong-an.xa1@ha-noi");
        assert!(Operator::parse("Nguyễn").is_ok(), "Vietnamese letters are letters");
        for bad in ["", "a; what=all", "x\ny", "a b", &"x".repeat(65)] {
            assert!(Operator::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unlock_groups_cover_what_they_say() {
        assert!(What::Login.covers(Group::Login) && !What::Login.covers(Group::Otp));
        assert!(What::Otp.covers(Group::Otp) && !What::Otp.covers(Group::Login));
        assert!(What::All.covers(Group::Login) && What::All.covers(Group::Otp));
    }
}
