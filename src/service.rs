//! One turn of a conversation, from a channel's parsed request to a durable reply. Shared by every
//! channel, the HTTP server and `kichhoat simulate`; it names no carrier.
//!
//! Per turn: take the phone's lock (an optimisation: concurrent turns of one phone in this process wait
//! instead of conflicting; one lock per phone with a turn in progress, so a phone waiting for a hash
//! never holds up another phone), load the conversation and its version, let the channel say what the
//! request means (a retry gets the stored reply and changes nothing), run the engine on the bounded
//! blocking pool, and commit the conversation with its effects against the version loaded. The commit
//! is what makes it correct across processes: when the conversation changed meanwhile, another phone
//! activated the ID first, or a counter's limit was reached, nothing is written and the turn runs again
//! on fresh state (a bounded number of times). The reply goes out only once its commit is durable and,
//! when it audited something, once the audit trail file has those lines on disk ([`AuditLog::drain`]);
//! a trail that cannot be written (disk full) makes the turn a fault: the commit stands, the records stay
//! unexported for the next drain, and the citizen gets the polite "try again later".

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use rand::rngs::OsRng;
use tokio::sync::{Mutex, Notify, OwnedMutexGuard};
use tracing::{debug, debug_span, error, info, warn, Instrument};

use crate::audit::{AuditLog, AuditLogError};
use crate::channel::{Channel, Derived};
use crate::clock::{Clock, Millis};
use crate::crypto::{Crypto, CryptoError};
use crate::domain::{Msisdn, NationalId};
use crate::engine::Policy;
use crate::engine::{
    self, keys, Account, Citizen, Ctx, Directory, DirectoryError, Effect, EngineError, Inbound, Medium, Reply, Session,
    Site,
};
use crate::flow::{Flow, Kind, Lang};
use crate::hashing::{HashPool, PoolError};
use crate::limits::{CounterKey, Tally};
use crate::metrics::METRICS;
use crate::registry::Registry;
use crate::store::{AuditRecord, Commit, CommitOutcome, Conversation, NewSms, RecentReply, Store, StoreError};
use crate::vocab::ActionKind;

/// How often a turn runs again when its commit was refused (a conflict, a lost activation race, a limit
/// reached meanwhile). Each refusal means another turn made progress, so a handful suffices.
const COMMIT_ATTEMPTS: usize = 6;
/// How long a reply is kept for a channel's retries (an Africa's Talking session lasts at most ~180 s),
/// and how many per phone. The keys are keyed hashes of texts that may hold a password: not kept longer.
pub const RETRY_TTL: Duration = Duration::from_secs(10 * 60);
const RECENT_REPLIES: usize = 8;
/// How long after a reply that queued an SMS the delivery worker is woken.
const WAKE_AFTER_REPLY: Duration = Duration::from_millis(20);
/// The least time a turn that looked an ID number up takes to its reply. Unknown ID, phone mismatch, pending
/// and a real lookup (which hashes and seals a code) already do the same store work; padding them to one
/// floor, above what any of them costs on a loaded 2-core machine, hides what differences remain (OWASP
/// Authentication Cheat Sheet: response times must not tell whether an account exists).
const LOOKUP_FLOOR: Duration = Duration::from_millis(30);

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("worker pool: {0}")]
    Pool(String),
    #[error("the turn's commit was refused {COMMIT_ATTEMPTS} times in a row")]
    Contention,
    #[error("the turn was not answered in time")]
    Timeout,
    #[error(transparent)]
    AuditLog(#[from] AuditLogError),
    /// Queued work passed its bound ([`LoadBounds`]): answered "busy" at once, nothing changed.
    #[error("overloaded: {0}")]
    Busy(&'static str),
}

/// Bounds on queued work; past them a hop is answered "busy, try again in a few minutes" at once rather
/// than left to time out at the carrier, and memory stays bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadBounds {
    /// Turns in progress (waiting for their phone's lock, the store or a hashing slot) at most.
    pub max_pending: usize,
    /// Steps that hash waiting for a hashing thread at most.
    pub hash_queue: usize,
    /// Hashing threads: argon2id takes 19 MiB and one core each while it runs.
    pub hash_threads: usize,
}

impl Default for LoadBounds {
    fn default() -> LoadBounds {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(2);
        LoadBounds { max_pending: 2048, hash_queue: 256, hash_threads: cores }
    }
}

/// The actions that run argon2id (hash or verify a credential): steps at a state taking input for one of
/// them go to the hashing pool; every other step runs at once.
const HASHING_ACTIONS: &[ActionKind] = &[
    ActionKind::ChoosePassword,
    ActionKind::ConfirmPassword,
    ActionKind::ChoosePasscode,
    ActionKind::ConfirmPasscode,
    ActionKind::SetAnswer,
    ActionKind::Login,
    ActionKind::CheckAnswer,
    ActionKind::CheckPassword,
];

/// Whether the store takes writes, as far as the service has seen (`/healthz` reads it).
#[derive(Default)]
pub struct StoreHealth {
    failed: AtomicBool,
    /// Woken on a write fault: `serve` then exits non-zero so the supervisor restarts it once the fault
    /// is gone (sled keeps refusing writes after an I/O error until the database is reopened).
    pub fault: Notify,
}

impl StoreHealth {
    pub fn writable(&self) -> bool {
        !self.failed.load(Ordering::Acquire)
    }

    /// A write or flush failed: nothing more is answered as stored.
    pub fn write_failed(&self, e: &StoreError) {
        if !self.failed.swap(true, Ordering::AcqRel) {
            error!(error = %e, "the store could not write; readiness fails until a restart");
        }
        METRICS.store_errors.inc();
        METRICS.store_writable.set(0);
        self.fault.notify_one();
    }
}

/// A phone's turn lock; the phone's entry goes with its last holder or waiter.
struct PhoneLock {
    guard: Option<OwnedMutexGuard<()>>,
    locks: Arc<std::sync::Mutex<HashMap<Msisdn, Arc<Mutex<()>>>>>,
    phone: Msisdn,
}

impl Drop for PhoneLock {
    fn drop(&mut self) {
        self.guard.take();
        if let Ok(mut map) = self.locks.lock() {
            // Only the map holds it: nobody waits for this phone.
            if map.get(&self.phone).is_some_and(|l| Arc::strong_count(l) == 1) {
                map.remove(&self.phone);
            }
        }
    }
}

/// Counts a turn in progress until dropped.
struct Pending<'a>(&'a AtomicUsize);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct Service {
    pub store: Arc<dyn Store>,
    /// Where citizens are looked up (the imported CSV today; a national registry API later).
    pub registry: Arc<dyn Registry>,
    pub flow: Arc<Flow>,
    pub crypto: Arc<Crypto>,
    pub clock: Arc<dyn Clock>,
    /// The abuse limits in force.
    pub policy: Arc<Policy>,
    /// The USSD code and hotline the texts mention (see [`Service::with_site`]).
    pub site: Arc<Site>,
    /// Woken after a commit that queued an SMS.
    pub outbox_ready: Arc<Notify>,
    /// Where a turn's audit records are written before its reply.
    pub audit_log: Arc<AuditLog>,
    /// Whether the store takes writes.
    pub health: Arc<StoreHealth>,
    /// The lock of each phone with a turn in progress (removed with its last holder).
    locks: Arc<std::sync::Mutex<HashMap<Msisdn, Arc<Mutex<()>>>>>,
    /// Steps that may hash with argon2id run here, behind their own bounded queue.
    hashing: HashPool,
    bounds: LoadBounds,
    pending: AtomicUsize,
}

/// The engine's view for a step run at once on a runtime thread: each lookup is polled once, which
/// completes for a store that answers from memory or its own cache (sled, the memory store). One that
/// would wait (a network database) marks `blocked`, and the step is run again on the blocking pool.
struct InlineLookups<'a> {
    store: &'a dyn Store,
    registry: &'a dyn Registry,
    blocked: std::cell::Cell<bool>,
}

impl InlineLookups<'_> {
    fn now<T>(&self, f: impl Future<Output = Result<T, StoreError>>) -> Result<T, DirectoryError> {
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => lookup(r),
            Poll::Pending => {
                self.blocked.set(true);
                Err(DirectoryError("the lookup would wait; the step runs on the blocking pool".into()))
            }
        }
    }
}

impl Directory for InlineLookups<'_> {
    fn citizen(&self, id: &NationalId) -> Result<Option<Citizen>, DirectoryError> {
        self.now(self.registry.citizen(id))
    }
    fn account(&self, id: &NationalId) -> Result<Option<Account>, DirectoryError> {
        self.now(self.store.account(id))
    }
    fn tally(&self, key: &CounterKey) -> Result<Tally, DirectoryError> {
        self.now(self.store.tally(key))
    }
}

/// The engine's view from a hashing or blocking thread: citizens from the registry, the rest from the
/// store.
struct Lookups {
    store: Arc<dyn Store>,
    registry: Arc<dyn Registry>,
    rt: tokio::runtime::Handle,
}

fn lookup<T>(r: Result<T, StoreError>) -> Result<T, DirectoryError> {
    r.map_err(|e| DirectoryError(e.to_string()))
}

impl Directory for Lookups {
    fn citizen(&self, id: &NationalId) -> Result<Option<Citizen>, DirectoryError> {
        lookup(self.rt.block_on(self.registry.citizen(id)))
    }
    fn account(&self, id: &NationalId) -> Result<Option<Account>, DirectoryError> {
        lookup(self.rt.block_on(self.store.account(id)))
    }
    fn tally(&self, key: &CounterKey) -> Result<Tally, DirectoryError> {
        lookup(self.rt.block_on(self.store.tally(key)))
    }
}

impl Service {
    pub fn new(
        store: Arc<dyn Store>,
        registry: Arc<dyn Registry>,
        flow: Arc<Flow>,
        crypto: Arc<Crypto>,
        clock: Arc<dyn Clock>,
        policy: Policy,
        audit_log: Arc<AuditLog>,
    ) -> Service {
        let bounds = LoadBounds::default();
        METRICS.store_writable.set(1);
        Service {
            store,
            registry,
            flow,
            crypto,
            clock,
            policy: Arc::new(policy),
            site: Arc::new(Site::default()),
            outbox_ready: Arc::new(Notify::new()),
            audit_log,
            health: Arc::new(StoreHealth::default()),
            locks: Arc::default(),
            hashing: HashPool::new(bounds.hash_threads, bounds.hash_queue),
            bounds,
            pending: AtomicUsize::new(0),
        }
    }

    /// The service with the USSD code and hotline its texts mention.
    pub fn with_site(mut self, site: Site) -> Service {
        self.site = Arc::new(site);
        self
    }

    /// The same service with other bounds on queued work.
    pub fn with_bounds(mut self, bounds: LoadBounds) -> Service {
        self.hashing = HashPool::new(bounds.hash_threads, bounds.hash_queue);
        self.bounds = bounds;
        self
    }

    pub fn bounds(&self) -> LoadBounds {
        self.bounds
    }

    /// Steps queued for or running on the hashing threads.
    pub fn hashing_depth(&self) -> usize {
        self.hashing.depth()
    }

    async fn lock(&self, phone: &Msisdn) -> PhoneLock {
        let lock = match self.locks.lock() {
            Ok(mut map) => map.entry(phone.clone()).or_default().clone(),
            // A holder panicked with the map locked: fall back to a private lock (the commit's version
            // check still serializes the phone's turns).
            Err(_) => Arc::default(),
        };
        PhoneLock { guard: Some(lock.lock_owned().await), locks: self.locks.clone(), phone: phone.clone() }
    }

    /// Answers one request of channel `ch`.
    pub async fn turn<C: Channel>(&self, ch: &C, request: C::Request) -> Result<Reply, ServiceError> {
        // Log lines of a turn carry the masked phone and a short pseudonym of the channel's session, so an
        // operator can follow a conversation without the logs holding who it was or what was typed.
        // A debug span: at `info` its fields (a keyed hash among them) are never computed.
        let span = debug_span!("turn", channel = C::KIND, phone = %ch.phone(&request).masked(), session = %ch.pseudonym(&request));
        let n = self.pending.fetch_add(1, Ordering::AcqRel);
        let _pending = Pending(&self.pending);
        if n >= self.bounds.max_pending {
            return Err(ServiceError::Busy("turns in progress at their bound"));
        }
        self.turn_in_span(ch, request).instrument(span).await
    }

    async fn turn_in_span<C: Channel>(&self, ch: &C, request: C::Request) -> Result<Reply, ServiceError> {
        let started = tokio::time::Instant::now();
        let phone = ch.phone(&request).clone();
        let guard = self.lock(&phone).await;
        let key = ch.retry_key(&request);
        for _ in 0..COMMIT_ATTEMPTS {
            let loaded = self.store.load(&phone).await?;
            let (conversation, version) = match loaded {
                Some((c, v)) => (Some(c), Some(v)),
                None => (None, None),
            };
            let stored = conversation.as_ref().and_then(|c| c.recent.iter().find(|r| r.key == key));
            let cursor = conversation.as_ref().and_then(|c| c.cursors.get(C::KIND));
            let inbound = match ch.derive(&request, cursor, stored.map(|r| &r.reply)) {
                Derived::Replay(reply) => {
                    // The original answer may have timed out before its commit was on disk, or before its
                    // audit lines were: make sure they are.
                    self.store.durable().await.inspect_err(|e| self.health.write_failed(e))?;
                    self.audit_log.drain().await?;
                    debug!("retry answered from the stored reply");
                    METRICS.hop(C::KIND, "", "replay");
                    return Ok(reply);
                }
                Derived::Lost => {
                    info!("request does not follow the channel's session; asked to start again");
                    METRICS.hop(C::KIND, "", "lost");
                    let lang = conversation.as_ref().map(|c| c.session.lang).unwrap_or(Lang::Vi);
                    return Ok(Reply {
                        text: self.flow.catalog(lang).get(keys::END_DIAL_AGAIN).to_string(),
                        end: true,
                    });
                }
                Derived::Inbound(i) => i,
            };
            let now = self.clock.now();
            let session = conversation.as_ref().map(|c| c.session.clone());
            let before = session.as_ref().map(|s| (s.state.clone(), s.tries));
            let dialled = matches!(inbound, Inbound::Start { .. });
            let (session, reply, effects, looked_up) =
                self.run_step(phone.clone(), C::MEDIUM, session, inbound, now).await?;
            let state = session.state.clone();
            let tries = session.tries;
            let mut next = conversation.unwrap_or_else(|| Conversation::new(session.clone()));
            next.session = session;
            next.recent.retain(|r| now.since(r.at) <= RETRY_TTL && r.key != key);
            next.recent.push(RecentReply { key: key.clone(), reply: reply.clone(), at: now });
            if next.recent.len() > RECENT_REPLIES {
                next.recent.drain(..next.recent.len() - RECENT_REPLIES);
            }
            match ch.advance(&request, next.cursors.get(C::KIND), &reply) {
                Some(c) => next.cursors.insert(C::KIND.to_string(), c),
                None => next.cursors.remove(C::KIND),
            };
            let queued_sms = effects.iter().any(|e| matches!(e, Effect::Sms { .. }));
            let commit = self.commit_of(&phone, C::KIND, next, effects, now)?;
            let audited: Vec<_> = commit.audit.iter().map(|a| a.event.clone()).collect();
            let committing = Instant::now();
            let outcome = self.store.commit(version, commit).await.inspect_err(|e| self.health.write_failed(e))?;
            METRICS.commit_seconds.observe(committing.elapsed().as_secs_f64());
            match outcome {
                CommitOutcome::Committed(_) => {
                    // Logged once, and only for what was written.
                    for a in &audited {
                        let id = a.national_id.as_ref().map(|i| i.masked()).unwrap_or_default();
                        let to = a.phone.as_ref().map(|p| p.masked()).unwrap_or_default();
                        info!(event = %a.event, id = %id, registered_phone = %to, "audit");
                        METRICS.audited(&a.event);
                    }
                    self.count_step(before.as_ref(), &state, tries, dialled);
                    METRICS.hop(C::KIND, &state, if reply.end { "end" } else { "con" });
                    if !audited.is_empty() {
                        // Everything audited is in the trail file, on disk, before the citizen is answered.
                        self.audit_log.drain().await?;
                    }
                    // The floor is waited out without the phone's lock: the phone's next hop may go on.
                    drop(guard);
                    if looked_up {
                        tokio::time::sleep_until(started + LOOKUP_FLOOR).await;
                    }
                    if queued_sms {
                        // Woken once the reply is on its way, not while it is: a lookup that sends a code
                        // must not be told apart from one that does not by the delivery it starts
                        // (OWASP: no enumeration by timing). The SMS still leaves within milliseconds.
                        let ready = self.outbox_ready.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(WAKE_AFTER_REPLY).await;
                            ready.notify_one();
                        });
                    }
                    debug!(state = %state, end = reply.end, "turn answered");
                    return Ok(reply);
                }
                CommitOutcome::Conflict => debug!("conversation or counter changed meanwhile; running the turn again"),
                CommitOutcome::AccountExists => debug!("activation lost a race; running the turn again"),
                CommitOutcome::LimitReached(limit) => {
                    METRICS.rate_limited.with_label_values(&["reached_meanwhile"]).inc();
                    debug!(%limit, "limit reached meanwhile; running the turn again")
                }
            }
        }
        Err(ServiceError::Contention)
    }

    /// The activation funnel: a state entered, left forward (completed), an entry refused there, or
    /// left by a new dial that started over (abandoned). State names only: nothing personal.
    fn count_step(&self, before: Option<&(String, u8)>, state: &str, tries: u8, dialled: bool) {
        let was_input =
            |s: &str| self.flow.state(s).is_some_and(|st| !matches!(st.kind, Kind::End { .. })) && s != self.flow.start;
        match before {
            Some((prev, prev_tries)) if prev == state => {
                if tries > *prev_tries {
                    METRICS.step(state, "refused");
                }
            }
            Some((prev, _)) => {
                if was_input(prev) {
                    METRICS.step(prev, if dialled { "abandoned" } else { "completed" });
                }
                METRICS.step(state, "entered");
            }
            None => METRICS.step(state, "entered"),
        }
    }

    /// Whether the step may run argon2id: input at a state whose action hashes or verifies a credential,
    /// or a fast dial whose choices could reach one.
    fn may_hash(&self, session: Option<&Session>, inbound: &Inbound) -> bool {
        match inbound {
            Inbound::Start { choices } => !choices.is_empty(),
            _ => session.and_then(|s| self.flow.state(&s.state)).is_some_and(|st| {
                matches!(&st.kind, Kind::Input { input: Some((_, action)), .. } if HASHING_ACTIONS.contains(action))
            }),
        }
    }

    async fn run_step(
        &self,
        caller: Msisdn,
        medium: Medium,
        session: Option<Session>,
        inbound: Inbound,
        now: Millis,
    ) -> Result<(Session, Reply, Vec<Effect>, bool), ServiceError> {
        if !self.may_hash(session.as_ref(), &inbound) {
            // At once, on this thread: no hand-off for a step that hashes nothing.
            let lookups =
                InlineLookups { store: self.store.as_ref(), registry: self.registry.as_ref(), blocked: false.into() };
            let ctx = Ctx {
                flow: &self.flow,
                directory: &lookups,
                crypto: &self.crypto,
                now,
                caller: &caller,
                medium,
                policy: &self.policy,
                site: &self.site,
            };
            let stepped = engine::step(&ctx, session.clone(), inbound.clone(), &mut OsRng);
            if !lookups.blocked.get() {
                let stepped = stepped?;
                return Ok((stepped.session, stepped.reply, stepped.effects, stepped.lookup));
            }
        }
        let flow = self.flow.clone();
        let crypto = self.crypto.clone();
        let policy = self.policy.clone();
        let site = self.site.clone();
        let lookups = Lookups {
            store: self.store.clone(),
            registry: self.registry.clone(),
            rt: tokio::runtime::Handle::current(),
        };
        let hashing = self.may_hash(session.as_ref(), &inbound);
        let job = move || -> Result<(Session, Reply, Vec<Effect>, bool), EngineError> {
            let ctx = Ctx {
                flow: &flow,
                directory: &lookups,
                crypto: &crypto,
                now,
                caller: &caller,
                medium,
                policy: &policy,
                site: &site,
            };
            let stepped = engine::step(&ctx, session, inbound, &mut OsRng)?;
            Ok((stepped.session, stepped.reply, stepped.effects, stepped.lookup))
        };
        let result = if hashing {
            self.hashing.run(job).await.map_err(|e| match e {
                PoolError::Full => ServiceError::Busy("the hashing queue is full"),
                PoolError::Gone => ServiceError::Pool(e.to_string()),
            })?
        } else {
            tokio::task::spawn_blocking(job).await.map_err(|e| ServiceError::Pool(e.to_string()))?
        };
        Ok(result?)
    }

    fn commit_of(
        &self,
        phone: &Msisdn,
        channel: &str,
        conversation: Conversation,
        effects: Vec<Effect>,
        now: Millis,
    ) -> Result<Commit, ServiceError> {
        let mut commit = Commit {
            at: now,
            phone: phone.clone(),
            conversation,
            activate: None,
            sms: Vec::new(),
            audit: Vec::new(),
            bumps: Vec::new(),
            account_update: None,
        };
        for e in effects {
            match e {
                Effect::Sms { to, body, purpose } => {
                    let sealed = self.crypto.seal(&body, to.as_str().as_bytes(), &mut OsRng)?;
                    commit.sms.push(NewSms { to, purpose, sealed, give_up_at: now.plus(purpose.useful_for()) });
                }
                Effect::Activate(account) => commit.activate = Some(account),
                Effect::Count(bump) => commit.bumps.push(bump),
                Effect::UpdateAccount(u) => commit.account_update = Some(u),
                Effect::Audit(event) => commit.audit.push(AuditRecord {
                    at: now,
                    caller: Some(phone.clone()),
                    channel: Some(channel.to_string()),
                    event,
                }),
            }
        }
        Ok(commit)
    }

    /// The reply for an operational fault: logged here once, with no detail for the caller. Overload
    /// ("busy") is counted, not logged per hop.
    pub fn fault_reply(&self, err: &ServiceError) -> Reply {
        match err {
            ServiceError::Busy(why) => debug!(why, "turn refused: busy"),
            ServiceError::Timeout => warn!(error = %err, "turn failed"),
            _ => error!(error = %err, "turn failed"),
        }
        Reply { text: self.flow.catalog(Lang::Vi).get(keys::END_UNAVAILABLE).to_string(), end: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::africastalking::{AfricasTalking, Hop};
    use crate::clock::ManualClock;
    use crate::crypto::HashCost;
    use crate::domain::Secret;
    use crate::registry::ImportedRegistry;
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn a_store_write_fault_fails_readiness_and_wakes_the_supervisor_exit() {
        let health = Arc::new(StoreHealth::default());
        assert!(health.writable());
        let woken = {
            let h = health.clone();
            tokio::spawn(async move { h.fault.notified().await })
        };
        tokio::task::yield_now().await;
        health.write_failed(&StoreError::Backend("No space left on device".into()));
        health.write_failed(&StoreError::Backend("No space left on device".into()));
        assert!(!health.writable(), "readiness fails, and stays failed until a restart");
        tokio::time::timeout(Duration::from_secs(5), woken).await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_turn_whose_audit_line_cannot_be_written_is_a_fault_and_its_retry_writes_it_before_answering() {
        let now = Millis(1_795_996_800_000);
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        crate::registry::import_demo(store.as_ref(), now, "test").await.unwrap();
        let crypto = Arc::new(Crypto::from_master(&[4; 32], HashCost::DANGER_TEST_ONLY).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = Arc::new(AuditLog::open(&path, 1 << 20, store.clone(), crypto.clone()).unwrap());
        let service = Service::new(
            store.clone(),
            Arc::new(ImportedRegistry(store.clone())),
            Arc::new(Flow::load_from(None).unwrap()),
            crypto.clone(),
            Arc::new(ManualClock::new(now)),
            Policy::default(),
            log.clone(),
        );
        let at = AfricasTalking::new(crypto);
        let phone = Msisdn::parse("0987654321").unwrap();
        let hop = |text: &str| Hop { phone: phone.clone(), session_id: "s1".into(), text: Secret::new(text) };
        for text in ["", "2", "2*001099012345"] {
            service.turn(&at, hop(text)).await.unwrap();
        }

        log.fail_writes(true);
        let err = service.turn(&at, hop("2*001099012345*Wrong*pw1")).await.unwrap_err();
        assert!(matches!(err, ServiceError::AuditLog(_)), "{err}");
        assert!(service.fault_reply(&err).end, "the polite fault reply");
        let audited = crate::store::audit_all(store.as_ref()).await.unwrap();
        assert_eq!(audited.last().map(|r| r.event.event.as_str()), Some("login_failed"), "the commit stands");
        assert_eq!(store.audit_unexported(10).await.unwrap().len(), 1, "and waits for the next drain");
        assert!(!std::fs::read_to_string(&path).unwrap().contains("login_failed"));

        // The carrier retries the hop: the stored reply, once the line is on disk.
        log.fail_writes(false);
        let reply = service.turn(&at, hop("2*001099012345*Wrong*pw1")).await.unwrap();
        assert!(!reply.end, "the password is asked again");
        assert!(std::fs::read_to_string(&path).unwrap().contains("\"event\":\"login_failed\""));
        assert!(store.audit_unexported(10).await.unwrap().is_empty());
    }
}
