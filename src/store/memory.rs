//! A store in memory: the same contract as sled without a disk, for tests and `kichhoat simulate`.
//! One mutex guards everything, so a commit is trivially atomic and serializable; "durable" means
//! "applied" (nothing survives the process, by design).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::{
    AuditRecord, Commit, CommitOutcome, Conversation, Expired, FailedSms, QueuedSms, Retention, Store, StoreError,
    Version,
};
use crate::clock::Millis;
use crate::domain::{Msisdn, NationalId};
use crate::engine::{Account, Citizen, CitizenStatus};
use crate::limits::{self, CounterKey, Tally};

#[derive(Default)]
struct State {
    /// phone → (version, filed at, swept, conversation)
    conversations: HashMap<Msisdn, Stored>,
    fresh: BTreeSet<(Millis, Msisdn)>,
    idle: BTreeSet<(Millis, Msisdn)>,
    citizens: HashMap<NationalId, Citizen>,
    accounts: HashMap<NationalId, Account>,
    counters: HashMap<CounterKey, Tally>,
    counter_due: BTreeSet<(Millis, CounterKey)>,
    outbox: BTreeMap<u64, QueuedSms>,
    outbox_due: BTreeSet<(Millis, u64)>,
    failed: BTreeMap<(Millis, u64), FailedSms>,
    audit: BTreeMap<u64, AuditRecord>,
    /// Audit ids not yet in the audit trail file.
    unexported: BTreeSet<u64>,
}

struct Stored {
    version: Version,
    indexed_at: Millis,
    swept: bool,
    conversation: Conversation,
}

pub struct MemoryStore {
    state: Mutex<State>,
    seq: AtomicU64,
    instance: String,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        let mut bytes = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        MemoryStore { state: Mutex::new(State::default()), seq: AtomicU64::new(1), instance: hex::encode(bytes) }
    }

    fn state(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        self.state.lock().map_err(|_| StoreError::Backend("memory store lock poisoned".into()))
    }

    fn next(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst)
    }
}

impl State {
    /// Applies the bumps to copies of their counters; nothing changes unless all are accepted.
    fn bumps(&self, c: &Commit) -> Result<Vec<(CounterKey, Option<Tally>, Tally)>, CommitOutcome> {
        let mut staged: Vec<(CounterKey, Option<Tally>, Tally)> = Vec::new();
        for b in &c.bumps {
            let old = staged
                .iter()
                .rev()
                .find(|(k, _, _)| *k == b.key)
                .map(|(_, _, t)| t.clone())
                .or_else(|| self.counters.get(&b.key).cloned());
            let (next, effect) =
                limits::apply(&b.rule, &old.clone().unwrap_or_default(), c.at).map_err(CommitOutcome::LimitReached)?;
            if effect != b.expect {
                return Err(CommitOutcome::Conflict);
            }
            let first = staged.iter().find(|(k, _, _)| *k == b.key).map(|(_, o, _)| o.clone());
            staged.push((b.key.clone(), first.unwrap_or(old), next));
        }
        Ok(staged)
    }

    /// An audit record, unexported until the audit trail file has it.
    fn add_audit(&mut self, id: u64, record: AuditRecord) {
        self.audit.insert(id, record);
        self.unexported.insert(id);
    }

    fn set_counter(&mut self, key: CounterKey, old: Option<&Tally>, next: Tally) {
        if let Some(old) = old {
            self.counter_due.remove(&(old.expires_at, key.clone()));
        }
        self.counters.remove(&key);
        if !next.is_empty() {
            self.counter_due.insert((next.expires_at, key.clone()));
            self.counters.insert(key, next);
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn instance(&self) -> &str {
        &self.instance
    }

    async fn load(&self, phone: &Msisdn) -> Result<Option<(Conversation, Version)>, StoreError> {
        Ok(self.state()?.conversations.get(phone).map(|s| (s.conversation.clone(), s.version)))
    }

    async fn commit(&self, expect: Option<Version>, c: Commit) -> Result<CommitOutcome, StoreError> {
        let mut st = self.state()?;
        if st.conversations.get(&c.phone).map(|s| s.version) != expect {
            return Ok(CommitOutcome::Conflict);
        }
        let staged = match st.bumps(&c) {
            Ok(s) => s,
            Err(outcome) => return Ok(outcome),
        };
        if let Some(a) = &c.activate {
            if st.accounts.contains_key(&a.national_id) {
                return Ok(CommitOutcome::AccountExists);
            }
        }
        if let Some(u) = &c.account_update {
            let mut probe = st.accounts.get(&u.national_id).cloned();
            if u.apply(probe.as_mut()).is_none() {
                return Ok(CommitOutcome::Conflict);
            }
        }
        let mut applied: Vec<CounterKey> = Vec::new();
        for (key, old, next) in staged.into_iter().rev() {
            // The last staged value of a key is its final one; `old` is what was stored before the commit.
            if applied.contains(&key) {
                continue;
            }
            applied.push(key.clone());
            st.set_counter(key, old.as_ref(), next);
        }
        if let Some(a) = c.activate {
            st.accounts.insert(a.national_id.clone(), a);
        }
        if let Some(u) = c.account_update {
            u.apply(st.accounts.get_mut(&u.national_id));
        }
        if let Some(old) = st.conversations.get(&c.phone) {
            let entry = (old.indexed_at, c.phone.clone());
            if old.swept {
                st.idle.remove(&entry);
            } else {
                st.fresh.remove(&entry);
            }
        }
        let version = self.next();
        st.fresh.insert((c.at, c.phone.clone()));
        st.conversations
            .insert(c.phone.clone(), Stored { version, indexed_at: c.at, swept: false, conversation: c.conversation });
        for sms in c.sms {
            let id = self.next();
            st.outbox_due.insert((c.at, id));
            st.outbox.insert(
                id,
                QueuedSms {
                    id,
                    to: sms.to,
                    purpose: sms.purpose,
                    sealed: sms.sealed,
                    queued_at: c.at,
                    attempts: 0,
                    give_up_at: sms.give_up_at,
                    last_error: None,
                    due_at: c.at,
                    claimed_by: None,
                    in_flight: false,
                },
            );
        }
        for a in c.audit {
            let id = self.next();
            st.add_audit(id, a);
        }
        Ok(CommitOutcome::Committed(version))
    }

    async fn durable(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn citizen(&self, id: &NationalId) -> Result<Option<Citizen>, StoreError> {
        Ok(self.state()?.citizens.get(id).cloned())
    }

    async fn account(&self, id: &NationalId) -> Result<Option<Account>, StoreError> {
        Ok(self.state()?.accounts.get(id).cloned())
    }

    async fn tally(&self, key: &CounterKey) -> Result<Tally, StoreError> {
        Ok(self.state()?.counters.get(key).cloned().unwrap_or_default())
    }

    async fn upsert_citizens(&self, citizens: &[Citizen]) -> Result<(), StoreError> {
        let mut st = self.state()?;
        for c in citizens {
            st.citizens.insert(c.national_id.clone(), c.clone());
        }
        Ok(())
    }

    async fn citizens_after(&self, after: Option<&NationalId>, n: usize) -> Result<Vec<Citizen>, StoreError> {
        let st = self.state()?;
        let mut ids: Vec<&NationalId> =
            st.citizens.keys().filter(|id| after.is_none_or(|a| id.as_str() > a.as_str())).collect();
        ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(ids.into_iter().take(n).filter_map(|id| st.citizens.get(id).cloned()).collect())
    }

    async fn remove_citizens(&self, ids: &[NationalId], audit: &[AuditRecord]) -> Result<usize, StoreError> {
        let mut st = self.state()?;
        let mut marked = 0;
        for id in ids {
            if let Some(c) = st.citizens.get_mut(id).filter(|c| c.status != CitizenStatus::Removed) {
                c.status = CitizenStatus::Removed;
                marked += 1;
            }
        }
        for a in audit {
            let id = self.next();
            st.add_audit(id, a.clone());
        }
        Ok(marked)
    }

    async fn conversations_of(&self, id: &NationalId) -> Result<Vec<(Msisdn, Conversation, Version)>, StoreError> {
        let st = self.state()?;
        let mut out: Vec<(Msisdn, Conversation, Version)> = st
            .conversations
            .iter()
            .filter(|(_, s)| s.conversation.session.activation_of(id).is_some())
            .map(|(phone, s)| (phone.clone(), s.conversation.clone(), s.version))
            .collect();
        out.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        Ok(out)
    }

    async fn reset_counters(&self, keys: &[CounterKey], audit: &[AuditRecord]) -> Result<usize, StoreError> {
        let mut st = self.state()?;
        let mut cleared = 0;
        for key in keys {
            if let Some(old) = st.counters.get(key).cloned() {
                st.set_counter(key.clone(), Some(&old), Tally::default());
                cleared += 1;
            }
        }
        for a in audit {
            let id = self.next();
            st.add_audit(id, a.clone());
        }
        Ok(cleared)
    }

    async fn claim_outbox(
        &self,
        owner: &str,
        n: usize,
        lease: Duration,
        now: Millis,
    ) -> Result<Vec<QueuedSms>, StoreError> {
        let mut st = self.state()?;
        let due: Vec<(Millis, u64)> = st.outbox_due.range(..=(now, u64::MAX)).take(n).copied().collect();
        let mut claimed = Vec::new();
        for entry in due {
            st.outbox_due.remove(&entry);
            let until = now.plus(lease);
            if let Some(sms) = st.outbox.get_mut(&entry.1) {
                sms.attempts = sms.attempts.saturating_add(1);
                sms.due_at = until;
                sms.claimed_by = Some(owner.to_string());
                claimed.push(sms.clone());
                st.outbox_due.insert((until, entry.1));
            }
        }
        Ok(claimed)
    }

    async fn outbox_sent(&self, id: u64) -> Result<(), StoreError> {
        let mut st = self.state()?;
        if let Some(sms) = st.outbox.remove(&id) {
            st.outbox_due.remove(&(sms.due_at, id));
        }
        Ok(())
    }

    async fn outbox_retry(&self, owner: &str, id: u64, at: Millis, why: &str) -> Result<(), StoreError> {
        let mut st = self.state()?;
        let Some(sms) = st.outbox.get_mut(&id) else { return Ok(()) };
        if sms.claimed_by.as_deref() != Some(owner) {
            return Ok(());
        }
        let old = sms.due_at;
        sms.due_at = at;
        sms.claimed_by = None;
        sms.in_flight = false;
        sms.last_error = Some(why.to_string());
        st.outbox_due.remove(&(old, id));
        st.outbox_due.insert((at, id));
        Ok(())
    }

    async fn outbox_sending(&self, owner: &str, id: u64) -> Result<bool, StoreError> {
        let mut st = self.state()?;
        let Some(sms) = st.outbox.get_mut(&id) else { return Ok(false) };
        if sms.claimed_by.as_deref() != Some(owner) {
            return Ok(false);
        }
        sms.in_flight = true;
        Ok(true)
    }

    async fn outbox_park(&self, owner: &str, id: u64, until: Millis, why: &str) -> Result<(), StoreError> {
        let mut st = self.state()?;
        let Some(sms) = st.outbox.get_mut(&id) else { return Ok(()) };
        if sms.claimed_by.as_deref() != Some(owner) {
            return Ok(());
        }
        let old = sms.due_at;
        sms.due_at = until;
        sms.claimed_by = None;
        sms.last_error = Some(why.to_string());
        st.outbox_due.remove(&(old, id));
        st.outbox_due.insert((until, id));
        Ok(())
    }

    async fn delivery_report(&self, id: u64, audit: AuditRecord) -> Result<bool, StoreError> {
        let mut st = self.state()?;
        let removed = match st.outbox.remove(&id) {
            Some(sms) => {
                st.outbox_due.remove(&(sms.due_at, id));
                true
            }
            None => false,
        };
        let aid = self.next();
        st.add_audit(aid, audit);
        Ok(removed)
    }

    async fn outbox_failed(&self, owner: &str, id: u64, why: &str, audit: AuditRecord) -> Result<(), StoreError> {
        let mut st = self.state()?;
        if st.outbox.get(&id).is_none_or(|s| s.claimed_by.as_deref() != Some(owner)) {
            return Ok(());
        }
        let Some(sms) = st.outbox.remove(&id) else { return Ok(()) };
        st.outbox_due.remove(&(sms.due_at, id));
        st.failed.insert((audit.at, id), FailedSms { sms, failed_at: audit.at, why: why.to_string() });
        let aid = self.next();
        st.add_audit(aid, audit);
        Ok(())
    }

    async fn outbox_len(&self) -> Result<usize, StoreError> {
        Ok(self.state()?.outbox.len())
    }

    async fn failed_sms(&self, n: usize) -> Result<Vec<FailedSms>, StoreError> {
        Ok(self.state()?.failed.values().take(n).cloned().collect())
    }

    async fn expire(&self, now: Millis, keep: &Retention) -> Result<Expired, StoreError> {
        let mut st = self.state()?;
        let mut out = Expired::default();
        let before = |d: Duration| Millis(now.0.saturating_sub(d.as_millis() as u64));
        let cut = before(keep.replies);
        let swept: Vec<(Millis, Msisdn)> = st.fresh.iter().take_while(|(t, _)| *t < cut).cloned().collect();
        for entry in swept {
            st.fresh.remove(&entry);
            if let Some(s) = st.conversations.get_mut(&entry.1) {
                s.conversation.recent.clear();
                s.conversation.cursors.clear();
                s.swept = true;
                s.version = self.seq.fetch_add(1, Ordering::SeqCst);
                st.idle.insert(entry);
                out.swept += 1;
            }
        }
        let cut = before(keep.conversations);
        let idle: Vec<(Millis, Msisdn)> = st.idle.iter().take_while(|(t, _)| *t < cut).cloned().collect();
        for entry in idle {
            st.idle.remove(&entry);
            let Some(s) = st.conversations.get_mut(&entry.1) else { continue };
            match s.conversation.session.idle_form() {
                Some(session) => {
                    s.conversation = Conversation::new(session);
                    s.indexed_at = Millis(0);
                    s.version = self.seq.fetch_add(1, Ordering::SeqCst);
                }
                None => {
                    st.conversations.remove(&entry.1);
                }
            }
            out.conversations += 1;
        }
        let due: Vec<(Millis, CounterKey)> = st.counter_due.iter().take_while(|(t, _)| *t <= now).cloned().collect();
        for entry in due {
            st.counter_due.remove(&entry);
            if st.counters.get(&entry.1).is_some_and(|t| t.expires_at == entry.0) {
                st.counters.remove(&entry.1);
                out.counters += 1;
            }
        }
        let cut = before(keep.failed_sms);
        let old: Vec<(Millis, u64)> = st.failed.keys().take_while(|(t, _)| *t < cut).copied().collect();
        for k in old {
            st.failed.remove(&k);
            out.failed_sms += 1;
        }
        Ok(out)
    }

    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        let mut st = self.state()?;
        for r in records {
            let id = self.next();
            st.add_audit(id, r.clone());
        }
        Ok(())
    }

    async fn audit_after(&self, after: Option<u64>, n: usize) -> Result<Vec<(u64, AuditRecord)>, StoreError> {
        let st = self.state()?;
        let start = after.map(|a| a.saturating_add(1)).unwrap_or(0);
        Ok(st.audit.range(start..).take(n).map(|(k, v)| (*k, v.clone())).collect())
    }

    async fn audit_unexported(&self, n: usize) -> Result<Vec<(u64, AuditRecord)>, StoreError> {
        let st = self.state()?;
        Ok(st.unexported.iter().filter_map(|id| Some((*id, st.audit.get(id)?.clone()))).take(n).collect())
    }

    async fn audit_exported(&self, ids: &[u64]) -> Result<(), StoreError> {
        let mut st = self.state()?;
        for id in ids {
            st.unexported.remove(id);
        }
        Ok(())
    }
}
