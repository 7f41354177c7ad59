//! Kannel's delivery reports (`GET /sms/kannel/dlr?id=&to=&status=&sig=`): checking that a report is
//! one we asked for, and recording it.
//!
//! The `dlr-url` handed to Kannel with each message carries the message id, the recipient and a keyed
//! MAC of both ([`Crypto::dlr_mac`], see [`super::kannel::KannelSender::dlr_url_for`]); Kannel adds the
//! report type as `status`. A report without a valid signature is refused and changes nothing. A signed
//! one proves Kannel took the message: if it is still in the outbox (in doubt after a send whose answer
//! never came, or a crash during it) it is removed as sent, so it is neither sent again nor failed at its
//! deadline; and every report is audited with its outcome (`sms_delivered`, `sms_undelivered`,
//! `sms_buffered`, `sms_submitted`, `sms_rejected`), the recipient as `phone` and the message id as
//! `detail`, and written to the audit trail file before Kannel is answered (a failure there is logged;
//! the sweeper writes it later). A report about a message of another database (the data dir was
//! replaced, the key kept) is ignored and logged.
//!
//! The type is not covered by the signature (Kannel fills it in): whoever holds one message's `dlr-url`
//! can report another outcome for that message, and nothing else.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::{error, info, warn};

use super::kannel::dlr_event;
use crate::audit::AuditLog;
use crate::clock::Clock;
use crate::crypto::{stored_mac_eq, Crypto};
use crate::domain::Msisdn;
use crate::engine::AuditEvent;
use crate::store::{AuditRecord, Store, StoreError};

/// What became of an accepted report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reported {
    /// Audited as `event`; `resolved`: the message was still in the outbox and is now removed as sent.
    Recorded { event: &'static str, resolved: bool },
    /// About a message of another store instance: nothing recorded.
    OtherInstance,
}

#[derive(Debug, thiserror::Error)]
pub enum DlrError {
    /// Missing fields or a signature that does not match: not a report we asked for.
    #[error("delivery report refused: bad or missing signature")]
    Forbidden,
    /// Signed, but the report type or the message id cannot be read.
    #[error("delivery report refused: {0}")]
    Malformed(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Receives delivery reports for one store.
pub struct DeliveryReports {
    pub store: Arc<dyn Store>,
    pub crypto: Arc<Crypto>,
    pub clock: Arc<dyn Clock>,
    /// Drained after a report is recorded; `None` (tests): left to the next drain elsewhere.
    pub audit_log: Option<Arc<AuditLog>>,
}

impl DeliveryReports {
    /// Checks and records the report made of the query `fields` (`id`, `to`, `status`, `sig`).
    pub async fn report(&self, fields: &HashMap<String, String>) -> Result<Reported, DlrError> {
        let field = |name: &str| fields.get(name).map(String::as_str).filter(|v| !v.is_empty());
        let (Some(id), Some(to), Some(sig)) = (field("id"), field("to"), field("sig")) else {
            warn!("kannel dlr: id, to or sig missing; refused");
            return Err(DlrError::Forbidden);
        };
        // `to` arrives as `+84…`, or with the `+` read as a space; either parses.
        let Ok(to) = Msisdn::parse(to) else {
            warn!("kannel dlr: recipient unreadable; refused");
            return Err(DlrError::Forbidden);
        };
        if !stored_mac_eq(sig, &self.crypto.dlr_mac(id, to.as_str())) {
            warn!(to = %to.masked(), "kannel dlr: signature does not match; refused");
            return Err(DlrError::Forbidden);
        }
        let status = field("status").and_then(|s| s.trim().parse::<u32>().ok());
        let Some(event) = status.and_then(dlr_event) else {
            warn!(sms_id = %id, to = %to.masked(), status = ?field("status"), "kannel dlr: unknown report type; refused");
            return Err(DlrError::Malformed("unknown status"));
        };
        let Some((instance, seq)) = id.rsplit_once('-').and_then(|(i, s)| Some((i, s.parse::<u64>().ok()?))) else {
            return Err(DlrError::Malformed("unreadable message id"));
        };
        if instance != self.store.instance() {
            warn!(sms_id = %id, to = %to.masked(), event, "kannel dlr: about a message of another database; ignored");
            return Ok(Reported::OtherInstance);
        }
        let audit = AuditRecord {
            at: self.clock.now(),
            caller: Some(to.clone()),
            channel: None,
            event: AuditEvent {
                event: event.into(),
                national_id: None,
                phone: Some(to.clone()),
                detail: Some(id.into()),
            },
        };
        let resolved = self.store.delivery_report(seq, audit).await?;
        if let Some(log) = &self.audit_log {
            if let Err(e) = log.drain().await {
                error!(error = %e, sms_id = %id, "audit trail not written after a delivery report; the next drain writes it");
            }
        }
        info!(sms_id = %id, to = %to.masked(), event, resolved, "kannel dlr recorded");
        Ok(Reported::Recorded { event, resolved })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, Millis};
    use crate::crypto::HashCost;
    use crate::engine::{Session, SmsPurpose};
    use crate::flow::Lang;
    use crate::store::memory::MemoryStore;
    use crate::store::{audit_all, Commit, CommitOutcome, Conversation, NewSms};

    const T0: Millis = Millis(1_795_996_800_000);

    struct Rig {
        reports: DeliveryReports,
        to: Msisdn,
        /// The id of the one queued message, `<instance>-<seq>`.
        id: String,
    }

    async fn rig() -> Rig {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let to = Msisdn::parse("0912345678").unwrap();
        let session = Session {
            lang: Lang::Vi,
            state: "otp".into(),
            tries: 0,
            updated_at: T0,
            slots: Default::default(),
            leaving: false,
            parked: None,
        };
        let sms = NewSms { to: to.clone(), purpose: SmsPurpose::Otp, sealed: b"sealed".to_vec(), give_up_at: T0 };
        let commit = Commit {
            at: T0,
            phone: to.clone(),
            conversation: Conversation::new(session),
            activate: None,
            sms: vec![sms],
            audit: Vec::new(),
            bumps: Vec::new(),
            account_update: None,
        };
        assert!(matches!(store.commit(None, commit).await.unwrap(), CommitOutcome::Committed(_)));
        let seq = store.claim_outbox("w", 1, std::time::Duration::from_secs(30), T0).await.unwrap()[0].id;
        let id = format!("{}-{seq}", store.instance());
        let crypto = Arc::new(Crypto::from_master(&[5; 32], HashCost::DANGER_TEST_ONLY).unwrap());
        Rig {
            reports: DeliveryReports { store, crypto, clock: Arc::new(ManualClock::new(T0)), audit_log: None },
            to,
            id,
        }
    }

    impl Rig {
        fn signed(&self, id: &str, to: &str, status: &str) -> HashMap<String, String> {
            let phone = Msisdn::parse(to).unwrap();
            let sig = hex::encode(self.reports.crypto.dlr_mac(id, phone.as_str()));
            [("id", id), ("to", to), ("status", status), ("sig", &sig)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        }

        async fn audited(&self) -> Vec<AuditRecord> {
            audit_all(self.reports.store.as_ref()).await.unwrap()
        }

        async fn waiting(&self) -> usize {
            self.reports.store.outbox_len().await.unwrap()
        }
    }

    #[tokio::test]
    async fn a_signed_report_removes_the_message_it_names_and_every_report_is_audited_with_its_outcome() {
        let r = rig().await;
        // Kannel leaves `+` as is and the form decoder reads it as a space.
        let first = r.signed(&r.id, " 84912345678", "8");
        assert_eq!(
            r.reports.report(&first).await.unwrap(),
            Reported::Recorded { event: "sms_submitted", resolved: true }
        );
        assert_eq!(r.waiting().await, 0);
        let second = r.signed(&r.id, "+84912345678", "1");
        assert_eq!(
            r.reports.report(&second).await.unwrap(),
            Reported::Recorded { event: "sms_delivered", resolved: false }
        );
        let audited = r.audited().await;
        let got: Vec<_> = audited
            .iter()
            .map(|a| (a.event.event.as_str(), a.caller.clone(), a.event.phone.clone(), a.event.detail.clone()))
            .collect();
        let want = |e| (e, Some(r.to.clone()), Some(r.to.clone()), Some(r.id.clone()));
        assert_eq!(got, [want("sms_submitted"), want("sms_delivered")]);
        assert!(audited.iter().all(|a| a.at == T0 && a.event.national_id.is_none()));
    }

    #[tokio::test]
    async fn a_report_with_a_missing_or_wrong_signature_is_refused_and_records_nothing() {
        let r = rig().await;
        let good = r.signed(&r.id, "+84912345678", "1");
        let mut forged = Vec::new();
        for missing in ["id", "to", "sig"] {
            let mut f = good.clone();
            f.remove(missing);
            forged.push(f);
        }
        let with = |k: &str, v: &str| {
            let mut f = good.clone();
            f.insert(k.into(), v.into());
            f
        };
        forged.push(with("sig", ""));
        forged.push(with("sig", &"0".repeat(64)));
        forged.push(with("sig", "not hex"));
        forged.push(with("to", "+84912345679")); // another recipient under this message's signature
        forged.push(with("to", "not a phone"));
        let other_seq = format!("{}-999", r.reports.store.instance());
        forged.push(with("id", &other_seq)); // another message under this signature
        let other_key = Crypto::from_master(&[6; 32], HashCost::DANGER_TEST_ONLY).unwrap();
        forged.push(with("sig", &hex::encode(other_key.dlr_mac(&r.id, r.to.as_str()))));
        for f in &forged {
            assert!(matches!(r.reports.report(f).await, Err(DlrError::Forbidden)), "{f:?}");
        }
        assert_eq!(r.waiting().await, 1, "the message is still in doubt");
        assert!(r.audited().await.is_empty());
        assert!(r.reports.report(&good).await.is_ok(), "the genuine report still counts");
    }

    #[tokio::test]
    async fn a_signed_report_with_an_unknown_type_is_malformed_and_records_nothing() {
        let r = rig().await;
        for status in ["", "3", "32", "x", "-1"] {
            let f = r.signed(&r.id, "+84912345678", status);
            assert!(matches!(r.reports.report(&f).await, Err(DlrError::Malformed(_))), "{status:?}");
        }
        let mut f = r.signed(&r.id, "+84912345678", "1");
        f.remove("status");
        assert!(matches!(r.reports.report(&f).await, Err(DlrError::Malformed(_))));
        assert_eq!(r.waiting().await, 1);
        assert!(r.audited().await.is_empty());
    }

    #[tokio::test]
    async fn a_report_about_a_message_of_another_database_is_ignored() {
        let r = rig().await;
        let seq = r.id.rsplit_once('-').unwrap().1;
        let foreign = format!("0123456789abcdef-{seq}");
        let f = r.signed(&foreign, "+84912345678", "1");
        assert_eq!(r.reports.report(&f).await.unwrap(), Reported::OtherInstance);
        assert_eq!(r.waiting().await, 1, "this database's message of the same sequence is untouched");
        assert!(r.audited().await.is_empty());
        let f = r.signed("no-sequence", "+84912345678", "1");
        assert!(matches!(r.reports.report(&f).await, Err(DlrError::Malformed(_))));
    }
}
