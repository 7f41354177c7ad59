//! The store contract (`kichhoat::store`), written once and run against every backend.
//!
//! Each case is an `async fn(Factory)` below; `backend!` makes one test per (backend, case), named
//! `store_contract::<backend>::<case>`, so `cargo test --test api store_contract::sled` runs one backend.
//! Adding a backend is one `backend!` line at the end of this file. A case written here but not listed
//! in `backend!` is dead code, which clippy refuses.

use std::sync::Arc;
use std::time::Duration;

use kichhoat::clock::Millis;
use kichhoat::domain::{Msisdn, NationalId};
use kichhoat::engine::policy::{Policy, Pool};
use kichhoat::engine::{
    Account, AccountUpdate, AuditEvent, Citizen, CitizenStatus, Credential, Reply, Session, Slots, SmsPurpose,
};
use kichhoat::flow::Lang;
use kichhoat::limits::{self, Bump, CounterKey, Effect, Limit, Rule, Tally};
use kichhoat::store::memory::MemoryStore;
use kichhoat::store::postgres::PgStore;
use kichhoat::store::sled_store::SledStore;
use kichhoat::store::{
    AuditRecord, Commit, CommitOutcome, Conversation, Cursor, Expired, FailedSms, NewSms, QueuedSms, RecentReply,
    Retention, Store, Version,
};

use crate::helpers::T0;

// ---------------------------------------------------------------------------------------------------------
// Backends

/// A fresh store of one backend, with what must live as long as it does.
pub struct Fresh {
    pub store: Arc<dyn Store>,
    /// Dropped after the store (fields drop in order).
    _dir: Option<tempfile::TempDir>,
}

/// Makes a fresh, empty store of one backend.
pub type Factory = fn() -> Fresh;

fn memory_store() -> Fresh {
    Fresh { store: Arc::new(MemoryStore::new()), _dir: None }
}

fn sled_store() -> Fresh {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join("db")).unwrap();
    Fresh { store: Arc::new(store), _dir: Some(dir) }
}

/// A fresh database in the test binary's PostgreSQL cluster ([`crate::pg`]), migrated by the store.
fn postgres_store() -> Fresh {
    let cluster = crate::pg::cluster().expect("a PostgreSQL case runs only with a cluster");
    let url = cluster.new_database();
    let open = PgStore::open(&url);
    let store = tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(open)).unwrap();
    Fresh { store: Arc::new(store), _dir: None }
}

/// Whether the backend of `$factory` cannot run here (PostgreSQL not installed, and not required).
fn unavailable(factory: &str) -> bool {
    factory.contains("postgres") && crate::pg::cluster().is_none()
}

/// One test per case for the backend made by `$factory`, in `mod $name`.
macro_rules! backend {
    ($name:ident, $factory:path) => {
        mod $name {
            contract_cases!(
                $factory;
                a_commit_round_trips_and_every_commit_changes_the_version,
                conflict_when_the_conversation_changed,
                turns_racing_on_one_version_commit_exactly_once_each_round,
                conflict_when_a_conversation_exists_and_none_was_expected_or_the_other_way_round,
                a_second_activation_of_one_id_is_refused_whole,
                an_account_update_applies_only_to_the_hash_it_read_and_a_required_one_refuses_the_commit_otherwise,
                a_full_window_refuses_the_event_and_frees_up_as_its_window_moves,
                the_failure_that_reaches_the_max_locks_and_failures_and_successes_are_refused_while_locked,
                a_bump_whose_expected_effect_differs_is_a_conflict_and_writes_nothing,
                a_refused_bump_leaves_the_other_bumps_and_effects_of_its_commit_unwritten,
                two_bumps_on_one_key_in_one_commit_apply_in_sequence,
                sixteen_concurrent_wrong_log_ins_on_stale_reads_lock_exactly_as_sixteen_in_a_row,
                sixty_concurrent_otp_sends_for_one_phone_accept_exactly_the_window,
                claims_take_due_messages_oldest_first_and_hold_them_until_the_lease_ends,
                a_retry_by_the_owner_reschedules_and_a_retry_or_failure_by_anyone_else_is_ignored,
                a_message_failed_by_its_owner_is_kept_and_audited_and_never_holds_up_the_others,
                only_the_claims_owner_marks_a_message_in_flight_and_the_mark_stays_until_a_retry_clears_it,
                a_parked_message_keeps_its_in_flight_mark_and_is_due_again_only_at_its_time,
                a_delivery_report_removes_its_message_whoever_holds_it_and_is_audited_even_when_it_is_gone,
                replies_and_cursors_are_swept_after_their_retention_and_the_conversation_kept,
                an_idle_conversation_is_deleted_or_in_english_reduced_to_its_language,
                a_conversation_written_after_its_sweep_is_not_expired_on_the_old_schedule,
                replies_of_a_conversation_committed_every_few_seconds_are_swept_when_its_last_ones_are_due,
                expiry_racing_commits_from_many_phones_loses_no_commit_and_sweeps_each_last_reply_once_when_due,
                a_version_loaded_before_an_expiry_rewrote_or_deleted_the_conversation_never_matches_again,
                counters_are_removed_once_their_expiry_has_passed_and_not_on_an_old_schedule,
                failed_sms_are_removed_after_their_retention,
                a_second_expiry_at_the_same_time_reclaims_and_rewrites_nothing,
                the_audit_trail_pages_without_gaps_or_duplicates,
                every_audit_record_whoever_wrote_it_is_unexported_until_exported,
                citizens_page_in_id_order_removed_ones_included,
                removing_citizens_marks_them_keeps_their_account_and_audits_in_the_same_write,
                the_conversations_of_an_id_are_found_whichever_phone_holds_them,
                resetting_counters_clears_locks_and_counts_and_audits_in_the_same_write,
                a_record_with_a_smaller_id_stays_unexported_after_a_larger_one_is_exported,
                records_committed_while_being_drained_are_each_taken_exactly_once,
            );
        }
    };
}

macro_rules! contract_cases {
    ($factory:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if super::unavailable(stringify!($factory)) {
                    return;
                }
                super::$case($factory).await;
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------------------------
// Builders

const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);
const KEEP: Retention = Retention::DEFAULT;
/// How often a step runs again after a refused commit (the service's bound is lower; this one only stops a
/// broken backend from looping forever).
const ATTEMPTS: usize = 64;

fn at(d: Duration) -> Millis {
    T0.plus(d)
}

fn minus_1ms(t: Millis) -> Millis {
    Millis(t.0 - 1)
}

fn phone(n: u32) -> Msisdn {
    Msisdn::parse(&format!("+8491{n:07}")).unwrap()
}

fn national_id(n: u32) -> NationalId {
    NationalId::parse_shape(&format!("0010990{n:05}")).unwrap()
}

fn session(state: &str, lang: Lang, now: Millis) -> Session {
    Session {
        lang,
        state: state.to_string(),
        tries: 1,
        updated_at: now,
        slots: Slots { started_at: Some(now), national_id: Some(national_id(1)), ..Slots::default() },
        leaving: false,
        parked: None,
    }
}

/// A conversation at `state` with a reply kept for retries and a channel cursor, as the service writes it.
fn conversation(state: &str, lang: Lang, now: Millis) -> Conversation {
    let mut c = Conversation::new(session(state, lang, now));
    c.recent.push(RecentReply {
        key: format!("key-{state}"),
        reply: Reply { text: state.into(), end: false },
        at: now,
    });
    c.cursors.insert("africastalking".into(), Cursor(format!("cursor-{state}")));
    c
}

/// `phone`'s conversation moved to `state` at `now`, with no other effect.
fn commit(phone: &Msisdn, state: &str, now: Millis) -> Commit {
    commit_in(phone, state, Lang::Vi, now)
}

fn commit_in(phone: &Msisdn, state: &str, lang: Lang, now: Millis) -> Commit {
    Commit {
        at: now,
        phone: phone.clone(),
        conversation: conversation(state, lang, now),
        activate: None,
        sms: Vec::new(),
        audit: Vec::new(),
        bumps: Vec::new(),
        account_update: None,
    }
}

/// A commit with one effect of every kind: an account for `id`, an SMS, an audit record, and a bump of `key`
/// (a window with room to spare).
fn commit_with_everything(phone: &Msisdn, id: &NationalId, key: &CounterKey, now: Millis) -> Commit {
    let mut c = commit(phone, "everything", now);
    c.activate = Some(account(id, phone, now));
    c.sms.push(sms(phone, now));
    c.audit.push(audit(phone, "everything", now));
    c.bumps.push(bump(key, window(100), false));
    c
}

fn account(id: &NationalId, phone: &Msisdn, now: Millis) -> Account {
    Account {
        national_id: id.clone(),
        phone: phone.clone(),
        password_hash: format!("$argon2id$password-of-{}", phone.as_str()),
        passcode_hash: "$argon2id$passcode".into(),
        questions: Vec::new(),
        activated_at: now,
    }
}

fn sms(to: &Msisdn, now: Millis) -> NewSms {
    NewSms { to: to.clone(), purpose: SmsPurpose::Otp, sealed: b"sealed".to_vec(), give_up_at: now.plus(3 * MIN) }
}

fn audit(caller: &Msisdn, event: &str, now: Millis) -> AuditRecord {
    AuditRecord {
        at: now,
        caller: Some(caller.clone()),
        channel: None,
        event: AuditEvent { event: event.into(), national_id: None, phone: None, detail: None },
    }
}

/// An OTP window: at most `max` in an hour.
fn window(max: u32) -> Rule {
    Rule::Window { limit: Limit::OtpPerPhone, max, window: 60 * MIN }
}

/// Log-in failures: the `max`-th in a row locks for 15 minutes; forgotten after a day.
fn failure(max: u32) -> Rule {
    Rule::Failure { limit: Limit::LoginLocked, max, lock: 15 * MIN, max_lock: 15 * MIN, forget_after: 24 * 60 * MIN }
}

fn bump(key: &CounterKey, rule: Rule, locks: bool) -> Bump {
    Bump { key: key.clone(), rule, expect: Effect { locked: locks } }
}

fn login_key(n: u32) -> CounterKey {
    Policy::default().login_failure(&national_id(n), Pool::Other).0
}

fn otp_key(n: u32) -> CounterKey {
    Policy::default().otp_phone(&phone(n), Pool::Other).0
}

/// The counter after `events` of `rule` at `now`, one after the other, applied as every backend must.
fn applied(rule: &Rule, events: usize, now: Millis) -> Tally {
    let mut t = Tally::default();
    for _ in 0..events {
        t = limits::apply(rule, &t, now).unwrap().0;
    }
    t
}

fn committed(outcome: CommitOutcome) -> Version {
    match outcome {
        CommitOutcome::Committed(v) => v,
        other => panic!("expected a commit, got {other:?}"),
    }
}

async fn version(store: &dyn Store, phone: &Msisdn) -> Option<Version> {
    store.load(phone).await.unwrap().map(|(_, v)| v)
}

/// Everything a refused commit could have written.
#[derive(Debug, PartialEq)]
struct Snapshot {
    conversation: Option<(Conversation, Version)>,
    account: Option<Account>,
    tally: Tally,
    outbox: usize,
    audit: Vec<AuditRecord>,
}

async fn snapshot(store: &dyn Store, phone: &Msisdn, id: &NationalId, key: &CounterKey) -> Snapshot {
    Snapshot {
        conversation: store.load(phone).await.unwrap(),
        account: store.account(id).await.unwrap(),
        tally: store.tally(key).await.unwrap(),
        outbox: store.outbox_len().await.unwrap(),
        audit: kichhoat::store::audit_all(store).await.unwrap(),
    }
}

/// Queues one SMS to `to` at `now`, with a commit of its conversation.
async fn queue(store: &dyn Store, to: &Msisdn, now: Millis) {
    let mut c = commit(to, "queued", now);
    c.sms.push(sms(to, now));
    committed(store.commit(version(store, to).await, c).await.unwrap());
}

fn tos(messages: &[QueuedSms]) -> Vec<&str> {
    messages.iter().map(|m| m.to.as_str()).collect()
}

fn ids(messages: &[QueuedSms]) -> Vec<u64> {
    messages.iter().map(|m| m.id).collect()
}

// ---------------------------------------------------------------------------------------------------------
// Commits

async fn a_commit_round_trips_and_every_commit_changes_the_version(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    let (p, other) = (phone(1), phone(2));
    assert_eq!(store.load(&p).await.unwrap(), None);
    let first = commit(&p, "ask_id", at(SEC));
    let written = first.conversation.clone();
    let mut seen = vec![committed(store.commit(None, first).await.unwrap())];
    assert_eq!(store.load(&p).await.unwrap(), Some((written, seen[0])));
    // The same conversation written again still gets a version of its own.
    for _ in 0..3 {
        let again = commit(&p, "ask_phone", at(2 * SEC));
        let written = again.conversation.clone();
        let v = committed(store.commit(seen.last().copied(), again).await.unwrap());
        assert!(!seen.contains(&v), "version {v} repeats one of {seen:?}");
        assert_eq!(store.load(&p).await.unwrap(), Some((written, v)));
        seen.push(v);
    }
    assert_eq!(store.load(&other).await.unwrap(), None, "another phone's conversation is untouched");
    store.durable().await.unwrap();
}

async fn conflict_when_the_conversation_changed(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    let (p, id, key) = (phone(1), national_id(1), otp_key(1));
    let v1 = committed(store.commit(None, commit(&p, "one", at(SEC))).await.unwrap());
    let v2 = committed(store.commit(Some(v1), commit(&p, "two", at(2 * SEC))).await.unwrap());
    let before = snapshot(store, &p, &id, &key).await;
    let stale = store.commit(Some(v1), commit_with_everything(&p, &id, &key, at(3 * SEC))).await.unwrap();
    assert_eq!(stale, CommitOutcome::Conflict);
    assert_eq!(snapshot(store, &p, &id, &key).await, before, "a conflict writes nothing");
    // The refusal left nothing behind that would stop the current version.
    committed(store.commit(Some(v2), commit_with_everything(&p, &id, &key, at(4 * SEC))).await.unwrap());
    assert!(store.account(&id).await.unwrap().is_some());
    assert_eq!(store.outbox_len().await.unwrap(), 1);
}

/// Sixteen turns of one phone racing on one loaded version (a new conversation, then an existing one,
/// then one an expiry swept): exactly one commits each round, the others are refused as conflicts, no
/// version repeats, and the winner's conversation is the one stored and expired on its own schedule.
async fn turns_racing_on_one_version_commit_exactly_once_each_round(new: Factory) {
    let fresh = new();
    let store = fresh.store.clone();
    let p = phone(1);
    let mut expect: Option<Version> = None;
    let mut seen: Vec<Version> = Vec::new();
    for round in 0..3u32 {
        if round == 2 {
            let t = at(3 * SEC + KEEP.replies + SEC);
            assert_eq!(store.expire(t, &KEEP).await.unwrap().swept, 1, "the last winner is filed for its sweep");
            expect = version(store.as_ref(), &p).await;
        }
        let now = at((round + 1) * SEC + if round == 2 { KEEP.replies + 2 * SEC } else { Duration::ZERO });
        let start = Arc::new(tokio::sync::Barrier::new(16));
        let turns: Vec<_> = (0..16)
            .map(|i| {
                let (store, start, p) = (store.clone(), start.clone(), p.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    let c = commit(&p, &format!("s{i}"), now);
                    let written = c.conversation.clone();
                    (store.commit(expect, c).await.unwrap(), written)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in turns {
            match t.await.unwrap() {
                (CommitOutcome::Committed(v), written) => winners.push((v, written)),
                (CommitOutcome::Conflict, _) => {}
                (other, _) => panic!("round {round}: {other:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {} of 16 racing turns committed", winners.len());
        let (v, written) = winners.remove(0);
        assert!(!seen.contains(&v), "version {v} repeats one of {seen:?}");
        assert_eq!(store.load(&p).await.unwrap(), Some((written, v)));
        seen.push(v);
        expect = Some(v);
    }
    // The last winner is swept once its replies' retention has passed, and not before.
    let last = at(3 * SEC + KEEP.replies + 2 * SEC);
    assert_eq!(store.expire(last.plus(KEEP.replies - SEC), &KEEP).await.unwrap().swept, 0);
    assert_eq!(store.expire(last.plus(KEEP.replies + SEC), &KEEP).await.unwrap().swept, 1);
}

async fn conflict_when_a_conversation_exists_and_none_was_expected_or_the_other_way_round(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    let (p, none_yet, id, key) = (phone(1), phone(2), national_id(1), otp_key(1));
    let v = committed(store.commit(None, commit(&p, "one", at(SEC))).await.unwrap());
    let before = snapshot(store, &p, &id, &key).await;
    let outcome = store.commit(None, commit_with_everything(&p, &id, &key, at(2 * SEC))).await.unwrap();
    assert_eq!(outcome, CommitOutcome::Conflict, "expected none, but one exists");
    assert_eq!(snapshot(store, &p, &id, &key).await, before);
    // A version (even one real for another phone) where there is no conversation.
    let before = snapshot(store, &none_yet, &id, &key).await;
    let outcome = store.commit(Some(v), commit_with_everything(&none_yet, &id, &key, at(3 * SEC))).await.unwrap();
    assert_eq!(outcome, CommitOutcome::Conflict, "expected one, but there is none");
    assert_eq!(snapshot(store, &none_yet, &id, &key).await, before);
}

async fn a_second_activation_of_one_id_is_refused_whole(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    let (first, second, third, id, key) = (phone(1), phone(2), phone(3), national_id(1), otp_key(2));
    let mut activation = commit(&first, "done", at(SEC));
    activation.activate = Some(account(&id, &first, at(SEC)));
    committed(store.commit(None, activation).await.unwrap());
    let v = committed(store.commit(None, commit(&second, "confirm", at(2 * SEC))).await.unwrap());
    let before = snapshot(store, &second, &id, &key).await;
    let outcome = store.commit(Some(v), commit_with_everything(&second, &id, &key, at(3 * SEC))).await.unwrap();
    assert_eq!(outcome, CommitOutcome::AccountExists);
    assert_eq!(snapshot(store, &second, &id, &key).await, before, "nothing of the losing commit is written");
    assert_eq!(store.account(&id).await.unwrap().unwrap().phone, first, "the first activation stands");
    // The same from a phone with no conversation yet.
    let outcome = store.commit(None, commit_with_everything(&third, &id, &key, at(4 * SEC))).await.unwrap();
    assert_eq!(outcome, CommitOutcome::AccountExists);
    assert_eq!(store.load(&third).await.unwrap(), None);
    assert_eq!(snapshot(store, &second, &id, &key).await, before);
}

async fn an_account_update_applies_only_to_the_hash_it_read_and_a_required_one_refuses_the_commit_otherwise(
    new: Factory,
) {
    let fresh = new();
    let store = fresh.store.as_ref();
    let (p, id, key) = (phone(1), national_id(1), otp_key(1));
    let mut activation = commit(&p, "done", at(SEC));
    activation.activate = Some(account(&id, &p, at(SEC)));
    let mut v = committed(store.commit(None, activation).await.unwrap());
    let update = |credential, old: &str, new: &str, required| AccountUpdate {
        national_id: id.clone(),
        credential,
        old: old.into(),
        new: new.into(),
        required,
    };
    let password = format!("$argon2id$password-of-{}", p.as_str());
    // A reset of the passcode, against the hash it read: written with the rest of the commit.
    let mut c = commit_with_everything(&p, &national_id(2), &key, at(2 * SEC));
    c.account_update = Some(update(Credential::Passcode, "$argon2id$passcode", "$argon2id$new-passcode", true));
    v = committed(store.commit(Some(v), c).await.unwrap());
    let a = store.account(&id).await.unwrap().unwrap();
    assert_eq!((a.password_hash.as_str(), a.passcode_hash.as_str()), (password.as_str(), "$argon2id$new-passcode"));
    // A required update read before another changed the hash: the whole commit is refused.
    let before = snapshot(store, &p, &national_id(3), &key).await;
    let mut c = commit_with_everything(&p, &national_id(3), &key, at(3 * SEC));
    c.account_update = Some(update(Credential::Password, "$argon2id$stale", "$argon2id$mine", true));
    assert_eq!(store.commit(Some(v), c).await.unwrap(), CommitOutcome::Conflict);
    assert_eq!(snapshot(store, &p, &national_id(3), &key).await, before, "nothing of it is written");
    assert_eq!(store.account(&id).await.unwrap().unwrap().password_hash, password);
    // A rehash (not required) on a stale read is skipped; the rest of its commit stands.
    let mut c = commit(&p, "rehashed", at(4 * SEC));
    c.account_update = Some(update(Credential::Password, "$argon2id$stale", "$argon2id$rehash", false));
    committed(store.commit(Some(v), c).await.unwrap());
    assert_eq!(store.account(&id).await.unwrap().unwrap().password_hash, password);
    // An update for an account that does not exist: refused when required.
    let mut c = commit(&p, "gone", at(5 * SEC));
    c.account_update =
        Some(AccountUpdate { national_id: national_id(9), ..update(Credential::Password, "a", "b", true) });
    assert_eq!(store.commit(version(store, &p).await, c).await.unwrap(), CommitOutcome::Conflict);
}

// ---------------------------------------------------------------------------------------------------------
// Counters

async fn a_full_window_refuses_the_event_and_frees_up_as_its_window_moves(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    let (key, rule) = (otp_key(9), window(3));
    for i in 1..=3 {
        let mut c = commit(&phone(i), "sent", at(i * SEC));
        c.bumps.push(bump(&key, rule, false));
        committed(store.commit(None, c).await.unwrap());
    }
    assert_eq!(store.tally(&key).await.unwrap().times, [at(SEC), at(2 * SEC), at(3 * SEC)]);
    let (p, id) = (phone(4), national_id(4));
    let before = snapshot(store, &p, &id, &key).await;
    let mut full = commit_with_everything(&p, &id, &otp_key(4), at(4 * SEC));
    full.bumps.push(bump(&key, rule, false));
    assert_eq!(store.commit(None, full).await.unwrap(), CommitOutcome::LimitReached(Limit::OtpPerPhone));
    assert_eq!(snapshot(store, &p, &id, &key).await, before, "a refused event writes nothing");
    assert_eq!(store.tally(&otp_key(4)).await.unwrap(), Tally::default(), "nor the other bump of its commit");
    // The rule runs at the commit's time: an hour after the first event, it has left the window.
    let later = at(SEC + 60 * MIN);
    let mut c = commit(&p, "sent", later);
    c.bumps.push(bump(&key, rule, false));
    committed(store.commit(None, c).await.unwrap());
    assert_eq!(store.tally(&key).await.unwrap().times, [at(2 * SEC), at(3 * SEC), later]);
}

async fn the_failure_that_reaches_the_max_locks_and_failures_and_successes_are_refused_while_locked(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    let (key, rule, now) = (login_key(1), failure(3), at(SEC));
    for (i, locks) in [(1, false), (2, false), (3, true)] {
        let mut c = commit(&phone(i), "failed", now);
        c.bumps.push(bump(&key, rule, locks));
        committed(store.commit(None, c).await.unwrap());
    }
    let locked = store.tally(&key).await.unwrap();
    assert_eq!(locked, applied(&rule, 3, now));
    assert_eq!(locked.locked_until, Some(now.plus(15 * MIN)));
    let p = phone(4);
    let success = Rule::Success { limit: Limit::LoginLocked };
    for (rule, locks) in [(rule, false), (rule, true), (success, false)] {
        let mut c = commit(&p, "again", now.plus(14 * MIN));
        c.bumps.push(bump(&key, rule, locks));
        assert_eq!(store.commit(None, c).await.unwrap(), CommitOutcome::LimitReached(Limit::LoginLocked));
    }
    assert_eq!(store.tally(&key).await.unwrap(), locked);
    assert_eq!(store.load(&p).await.unwrap(), None);
    // Once the lock has ended, a failure counts again.
    let end = now.plus(15 * MIN);
    let mut c = commit(&p, "again", end);
    c.bumps.push(bump(&key, rule, false));
    committed(store.commit(None, c).await.unwrap());
    assert_eq!(store.tally(&key).await.unwrap(), limits::apply(&rule, &locked, end).unwrap().0);
}

async fn a_bump_whose_expected_effect_differs_is_a_conflict_and_writes_nothing(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    let (p, id, key, rule, now) = (phone(1), national_id(1), login_key(1), failure(3), at(SEC));
    for i in 2..=3 {
        let mut c = commit(&phone(i), "failed", now);
        c.bumps.push(bump(&key, rule, false));
        committed(store.commit(None, c).await.unwrap());
    }
    let before = snapshot(store, &p, &id, &key).await;
    // The third failure locks, though the engine's earlier read said it would not.
    let mut c = commit_with_everything(&p, &id, &otp_key(1), now);
    c.bumps.push(bump(&key, rule, false));
    assert_eq!(store.commit(None, c).await.unwrap(), CommitOutcome::Conflict);
    assert_eq!(snapshot(store, &p, &id, &key).await, before);
    assert_eq!(store.tally(&otp_key(1)).await.unwrap(), Tally::default());
    // The other way round: a first failure said to lock; a window said to lock.
    for (key, rule) in [(login_key(2), failure(3)), (otp_key(2), window(3))] {
        let mut c = commit(&p, "failed", now);
        c.bumps.push(bump(&key, rule, true));
        assert_eq!(store.commit(None, c).await.unwrap(), CommitOutcome::Conflict);
        assert_eq!(store.tally(&key).await.unwrap(), Tally::default());
    }
    assert_eq!(snapshot(store, &p, &id, &key).await, before);
    // Told right, it commits.
    let mut c = commit(&p, "locked", now);
    c.bumps.push(bump(&key, rule, true));
    committed(store.commit(None, c).await.unwrap());
    assert_eq!(store.tally(&key).await.unwrap(), applied(&rule, 3, now));
}

async fn a_refused_bump_leaves_the_other_bumps_and_effects_of_its_commit_unwritten(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    let (p, id, now) = (phone(1), national_id(1), at(SEC));
    let (roomy, full, locking) = (otp_key(1), otp_key(2), login_key(2));
    let mut c = commit(&phone(2), "sent", now);
    c.bumps.push(bump(&full, window(1), false));
    committed(store.commit(None, c).await.unwrap());
    let full_before = store.tally(&full).await.unwrap();
    let before = snapshot(store, &p, &id, &roomy).await;
    // An accepted bump first (in `commit_with_everything`), then one the rule refuses.
    let mut c = commit_with_everything(&p, &id, &roomy, at(2 * SEC));
    c.bumps.push(bump(&full, window(1), false));
    assert_eq!(store.commit(None, c).await.unwrap(), CommitOutcome::LimitReached(Limit::OtpPerPhone));
    assert_eq!(snapshot(store, &p, &id, &roomy).await, before);
    assert_eq!(store.tally(&full).await.unwrap(), full_before);
    // An accepted bump, then one whose effect is not the one expected (a first failure that locks).
    let mut c = commit_with_everything(&p, &id, &roomy, at(3 * SEC));
    c.bumps.push(bump(&locking, failure(1), false));
    assert_eq!(store.commit(None, c).await.unwrap(), CommitOutcome::Conflict);
    assert_eq!(snapshot(store, &p, &id, &roomy).await, before);
    assert_eq!(store.tally(&locking).await.unwrap(), Tally::default());
}

async fn two_bumps_on_one_key_in_one_commit_apply_in_sequence(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    let now = at(SEC);
    // Two failures in one commit: the second sees the first, so it is the one that locks.
    let (key, rule) = (login_key(1), failure(2));
    let mut c = commit(&phone(1), "failed twice", now);
    c.bumps.extend([bump(&key, rule, false), bump(&key, rule, true)]);
    committed(store.commit(None, c).await.unwrap());
    assert_eq!(store.tally(&key).await.unwrap(), applied(&rule, 2, now));
    // Told that neither locks: the second does.
    let other = login_key(2);
    let mut c = commit(&phone(2), "failed twice", now);
    c.bumps.extend([bump(&other, rule, false), bump(&other, rule, false)]);
    assert_eq!(store.commit(None, c).await.unwrap(), CommitOutcome::Conflict);
    assert_eq!(store.tally(&other).await.unwrap(), Tally::default());
    // Two events fit a window of two; with one there already, the second of the commit is refused.
    let (w, rule) = (otp_key(3), window(2));
    let mut c = commit(&phone(3), "sent twice", now);
    c.bumps.extend([bump(&w, rule, false), bump(&w, rule, false)]);
    committed(store.commit(None, c).await.unwrap());
    assert_eq!(store.tally(&w).await.unwrap(), applied(&rule, 2, now));
    let w2 = otp_key(4);
    let mut c = commit(&phone(4), "sent", now);
    c.bumps.push(bump(&w2, rule, false));
    committed(store.commit(None, c).await.unwrap());
    let mut c = commit(&phone(5), "sent twice", at(2 * SEC));
    c.bumps.extend([bump(&w2, rule, false), bump(&w2, rule, false)]);
    assert_eq!(store.commit(None, c).await.unwrap(), CommitOutcome::LimitReached(Limit::OtpPerPhone));
    assert_eq!(store.tally(&w2).await.unwrap(), applied(&rule, 1, now));
    // A counter written twice in a commit expires once, on its final value's schedule.
    let last = store.tally(&key).await.unwrap().expires_at;
    assert_eq!(store.expire(last.plus(SEC), &KEEP).await.unwrap().counters, 3);
    assert_eq!(store.tally(&key).await.unwrap(), Tally::default());
}

/// What became of one counted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Accepted { locked: bool },
    Refused(Limit),
}

/// One counted event from `phone`, run as the service runs a turn: the engine computes what the event does
/// from its read of the counter (`read`, perhaps stale) and commits; when the commit is refused, it reloads,
/// reads the counter again and runs again. When its read says the rule refuses, the engine counts nothing
/// (it shows the limit's screen): refused.
async fn counted_turn(
    store: &dyn Store,
    phone: &Msisdn,
    key: &CounterKey,
    rule: Rule,
    read: Tally,
    now: Millis,
) -> Fate {
    let mut tally = read;
    for _ in 0..ATTEMPTS {
        let expect = match limits::apply(&rule, &tally, now) {
            Ok((_, effect)) => effect,
            Err(limit) => return Fate::Refused(limit),
        };
        let mut c = commit(phone, "counted", now);
        c.audit.push(audit(phone, if expect.locked { "counted_and_locked" } else { "counted" }, now));
        c.bumps.push(Bump { key: key.clone(), rule, expect });
        match store.commit(version(store, phone).await, c).await.unwrap() {
            CommitOutcome::Committed(_) => return Fate::Accepted { locked: expect.locked },
            CommitOutcome::Conflict | CommitOutcome::LimitReached(_) => tally = store.tally(key).await.unwrap(),
            CommitOutcome::AccountExists => panic!("these commits activate nothing"),
        }
    }
    panic!("{ATTEMPTS} refused commits in a row: the store makes no progress")
}

/// `n` events for `key` from `n` phones at once, each first committed on a read taken before any of them.
async fn all_at_once(store: &Arc<dyn Store>, n: u32, key: &CounterKey, rule: Rule, now: Millis) -> Vec<Fate> {
    let stale = store.tally(key).await.unwrap();
    let start = Arc::new(tokio::sync::Barrier::new(n as usize));
    let turns: Vec<_> = (0..n)
        .map(|i| {
            let (store, start, key, stale) = (store.clone(), start.clone(), key.clone(), stale.clone());
            tokio::spawn(async move {
                start.wait().await;
                counted_turn(store.as_ref(), &phone(100 + i), &key, rule, stale, now).await
            })
        })
        .collect();
    let mut fates = Vec::new();
    for turn in turns {
        fates.push(turn.await.unwrap());
    }
    fates
}

/// The same `n` events one after the other, each on a fresh read.
async fn one_at_a_time(store: &dyn Store, n: u32, key: &CounterKey, rule: Rule, now: Millis) -> Vec<Fate> {
    let mut fates = Vec::new();
    for i in 0..n {
        let read = store.tally(key).await.unwrap();
        fates.push(counted_turn(store, &phone(100 + i), key, rule, read, now).await);
    }
    fates
}

/// How many events met each fate.
fn fates(of: &[Fate]) -> Vec<(String, usize)> {
    let mut counts = std::collections::BTreeMap::new();
    for f in of {
        *counts.entry(format!("{f:?}")).or_insert(0) += 1;
    }
    counts.into_iter().collect()
}

fn expected(pairs: &[(Fate, usize)]) -> Vec<(String, usize)> {
    let mut v: Vec<_> = pairs.iter().map(|(f, n)| (format!("{f:?}"), *n)).collect();
    v.sort();
    v
}

/// Audit records written per event name: one per accepted event, none for a refused one.
async fn audited(store: &dyn Store) -> Vec<(String, usize)> {
    let mut counts = std::collections::BTreeMap::new();
    for r in kichhoat::store::audit_all(store).await.unwrap() {
        *counts.entry(r.event.event).or_insert(0) += 1;
    }
    counts.into_iter().collect()
}

async fn sixteen_concurrent_wrong_log_ins_on_stale_reads_lock_exactly_as_sixteen_in_a_row(new: Factory) {
    let (key, rule, now) = (login_key(1), failure(10), at(SEC));
    let sequential = new();
    let in_a_row = one_at_a_time(sequential.store.as_ref(), 16, &key, rule, now).await;
    let want = expected(&[
        (Fate::Accepted { locked: false }, 9),
        (Fate::Accepted { locked: true }, 1),
        (Fate::Refused(Limit::LoginLocked), 6),
    ]);
    assert_eq!(fates(&in_a_row), want);
    assert_eq!(in_a_row[9], Fate::Accepted { locked: true }, "the tenth failure locks");
    let final_tally = sequential.store.tally(&key).await.unwrap();
    assert_eq!(final_tally, applied(&rule, 10, now));
    assert!(final_tally.locked_at(now));

    let concurrent = new();
    let at_once = all_at_once(&concurrent.store, 16, &key, rule, now).await;
    assert_eq!(fates(&at_once), want, "sixteen at once get no further than sixteen in a row");
    assert_eq!(concurrent.store.tally(&key).await.unwrap(), final_tally);
    let written = audited(concurrent.store.as_ref()).await;
    assert_eq!(written, [("counted".to_string(), 9), ("counted_and_locked".to_string(), 1)]);
    assert_eq!(written, audited(sequential.store.as_ref()).await);
}

async fn sixty_concurrent_otp_sends_for_one_phone_accept_exactly_the_window(new: Factory) {
    let (key, rule, now) = (otp_key(1), window(20), at(SEC));
    let sequential = new();
    let in_a_row = one_at_a_time(sequential.store.as_ref(), 60, &key, rule, now).await;
    let want = expected(&[(Fate::Accepted { locked: false }, 20), (Fate::Refused(Limit::OtpPerPhone), 40)]);
    assert_eq!(fates(&in_a_row), want);
    let final_tally = sequential.store.tally(&key).await.unwrap();
    assert_eq!(final_tally, applied(&rule, 20, now));

    let concurrent = new();
    let at_once = all_at_once(&concurrent.store, 60, &key, rule, now).await;
    assert_eq!(fates(&at_once), want, "sixty at once get no further than sixty in a row");
    assert_eq!(concurrent.store.tally(&key).await.unwrap(), final_tally);
    assert_eq!(audited(concurrent.store.as_ref()).await, [("counted".to_string(), 20)]);
}

// ---------------------------------------------------------------------------------------------------------
// Outbox

async fn claims_take_due_messages_oldest_first_and_hold_them_until_the_lease_ends(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    let (a, b, c, later) = (phone(1), phone(2), phone(3), phone(4));
    queue(store, &later, at(10 * MIN)).await; // queued first, due last
    queue(store, &a, at(SEC)).await;
    queue(store, &b, at(2 * SEC)).await;
    queue(store, &c, at(3 * SEC)).await;
    let (now, lease) = (at(4 * SEC), 30 * SEC);
    let first = store.claim_outbox("w1", 2, lease, now).await.unwrap();
    assert_eq!(tos(&first), [a.as_str(), b.as_str()]);
    for m in &first {
        assert_eq!((m.attempts, m.claimed_by.as_deref(), m.due_at), (1, Some("w1"), now.plus(lease)));
    }
    let second = store.claim_outbox("w2", 10, lease, now).await.unwrap();
    assert_eq!(tos(&second), [c.as_str()], "claimed messages are not claimed again, the later one not yet due");
    let end = now.plus(lease);
    assert_eq!(store.claim_outbox("w3", 10, lease, minus_1ms(end)).await.unwrap().len(), 0);
    let again = store.claim_outbox("w3", 10, lease, end).await.unwrap();
    assert_eq!(tos(&again), [a.as_str(), b.as_str(), c.as_str()], "due again when the lease ends");
    assert_eq!(ids(&again), [ids(&first), ids(&second)].concat());
    assert!(again.iter().all(|m| m.attempts == 2 && m.claimed_by.as_deref() == Some("w3")), "{again:?}");
    assert_eq!(store.outbox_len().await.unwrap(), 4);
    let all = store.claim_outbox("w4", 10, lease, at(10 * MIN)).await.unwrap();
    assert_eq!(tos(&all), [a.as_str(), b.as_str(), c.as_str(), later.as_str()]);
    assert_eq!(all.iter().map(|m| m.attempts).collect::<Vec<_>>(), [3, 3, 3, 1]);
}

async fn a_retry_by_the_owner_reschedules_and_a_retry_or_failure_by_anyone_else_is_ignored(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    let (a, b) = (phone(1), phone(2));
    queue(store, &a, at(SEC)).await;
    queue(store, &b, at(2 * SEC)).await;
    let (now, lease) = (at(3 * SEC), 5 * MIN);
    let claimed = store.claim_outbox("owner", 10, lease, now).await.unwrap();
    let (ida, idb) = (claimed[0].id, claimed[1].id);
    let audit_before = kichhoat::store::audit_all(store).await.unwrap();
    store.outbox_retry("intruder", ida, now.plus(60 * MIN), "intruder").await.unwrap();
    store.outbox_failed("intruder", ida, "intruder", audit(&a, "sms_failed", now)).await.unwrap();
    assert_eq!(store.outbox_len().await.unwrap(), 2);
    assert_eq!(store.failed_sms(10).await.unwrap().len(), 0);
    assert_eq!(kichhoat::store::audit_all(store).await.unwrap(), audit_before);
    // The owner reschedules b in a minute: not claimable before, claimable then.
    store.outbox_retry("owner", idb, now.plus(MIN), "busy").await.unwrap();
    assert_eq!(store.claim_outbox("other", 10, lease, minus_1ms(now.plus(MIN))).await.unwrap().len(), 0);
    let retried = store.claim_outbox("other", 10, lease, now.plus(MIN)).await.unwrap();
    assert_eq!(ids(&retried), [idb]);
    assert_eq!((retried[0].attempts, retried[0].last_error.as_deref()), (2, Some("busy")));
    // a's claim ran to the end of its lease, as if the intruder had not been there.
    let back = store.claim_outbox("other", 10, lease, now.plus(lease)).await.unwrap();
    assert_eq!(ids(&back), [ida]);
    assert_eq!((back[0].attempts, back[0].last_error.as_deref()), (2, None));
    // The first owner lost its say over b when another claimed it.
    store.outbox_retry("owner", idb, now.plus(60 * MIN), "late").await.unwrap();
    store.outbox_failed("owner", idb, "late", audit(&b, "sms_failed", now)).await.unwrap();
    let b_again = store.claim_outbox("third", 10, lease, now.plus(MIN + lease)).await.unwrap();
    assert_eq!(ids(&b_again), [idb]);
    assert_eq!(b_again[0].last_error.as_deref(), Some("busy"));
    assert_eq!(store.failed_sms(10).await.unwrap().len(), 0);
}

async fn a_message_failed_by_its_owner_is_kept_and_audited_and_never_holds_up_the_others(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    let (a, b, c) = (phone(1), phone(2), phone(3));
    for (i, p) in [&a, &b, &c].into_iter().enumerate() {
        queue(store, p, at((i as u32 + 1) * SEC)).await;
    }
    let (now, lease) = (at(4 * SEC), 30 * SEC);
    let first = store.claim_outbox("w", 1, lease, now).await.unwrap();
    assert_eq!(tos(&first), [a.as_str()]);
    let record = audit(&a, "sms_failed", now);
    let audit_before = kichhoat::store::audit_all(store).await.unwrap();
    store.outbox_failed("w", first[0].id, "gave up", record.clone()).await.unwrap();
    assert_eq!(store.outbox_len().await.unwrap(), 2);
    let failed = store.failed_sms(10).await.unwrap();
    let [FailedSms { sms, failed_at, why }] = &failed[..] else { panic!("one failed message: {failed:?}") };
    assert_eq!(
        (sms.id, &sms.to, &sms.sealed, *failed_at, why.as_str()),
        (first[0].id, &a, &first[0].sealed, now, "gave up")
    );
    assert_eq!(kichhoat::store::audit_all(store).await.unwrap(), [audit_before, vec![record]].concat());
    // Neither the failed message nor one rescheduled for later holds up the next.
    let second = store.claim_outbox("w", 1, lease, now).await.unwrap();
    assert_eq!(tos(&second), [b.as_str()]);
    store.outbox_retry("w", second[0].id, now.plus(60 * MIN), "later").await.unwrap();
    let third = store.claim_outbox("w", 1, lease, now).await.unwrap();
    assert_eq!(tos(&third), [c.as_str()]);
    store.outbox_sent(third[0].id).await.unwrap();
    assert_eq!(store.outbox_len().await.unwrap(), 1);
    assert_eq!(store.claim_outbox("w", 10, lease, minus_1ms(now.plus(60 * MIN))).await.unwrap().len(), 0);
    let last = store.claim_outbox("w", 10, lease, now.plus(60 * MIN)).await.unwrap();
    assert_eq!(tos(&last), [b.as_str()]);
    store.outbox_sent(last[0].id).await.unwrap();
    assert_eq!(store.outbox_len().await.unwrap(), 0);
    assert_eq!(store.claim_outbox("w", 10, lease, now.plus(24 * 60 * MIN)).await.unwrap().len(), 0);
    assert_eq!(store.failed_sms(10).await.unwrap().len(), 1, "only the failed one is kept");
}

async fn only_the_claims_owner_marks_a_message_in_flight_and_the_mark_stays_until_a_retry_clears_it(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    let (a, b) = (phone(1), phone(2));
    queue(store, &a, at(SEC)).await;
    queue(store, &b, at(2 * SEC)).await;
    let (now, lease) = (at(3 * SEC), 30 * SEC);
    let claimed = store.claim_outbox("owner", 10, lease, now).await.unwrap();
    let (ida, idb) = (claimed[0].id, claimed[1].id);
    assert!(claimed.iter().all(|m| !m.in_flight), "a queued message is not in flight");
    assert!(!store.outbox_sending("intruder", ida).await.unwrap(), "only the claim's owner marks it");
    assert!(!store.outbox_sending("owner", ida.max(idb) + 1000).await.unwrap(), "no such message");
    assert!(store.outbox_sending("owner", ida).await.unwrap());
    // The claims end unreported (a worker that died): the mark is still there for the next holder.
    let next = store.claim_outbox("other", 10, lease, now.plus(lease)).await.unwrap();
    assert_eq!(ids(&next), [ida, idb]);
    assert_eq!(next.iter().map(|m| m.in_flight).collect::<Vec<_>>(), [true, false]);
    assert!(!store.outbox_sending("owner", idb).await.unwrap(), "the old owner lost its claim");
    // A retry means the gateway did not take it: no longer in doubt.
    let later = now.plus(lease + 10 * SEC);
    store.outbox_retry("other", ida, later, "kannel: 503").await.unwrap();
    let retried = store.claim_outbox("third", 10, lease, later).await.unwrap();
    assert_eq!(ids(&retried), [ida]);
    assert!(!retried[0].in_flight);
    assert_eq!(retried[0].last_error.as_deref(), Some("kannel: 503"));
    // b was never marked by anyone who held it.
    let b_next = store.claim_outbox("fourth", 10, lease, now.plus(2 * lease)).await.unwrap();
    assert_eq!(ids(&b_next), [idb]);
    assert!(!b_next[0].in_flight);
}

async fn a_parked_message_keeps_its_in_flight_mark_and_is_due_again_only_at_its_time(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    let (a, b) = (phone(1), phone(2));
    queue(store, &a, at(SEC)).await;
    let (now, lease) = (at(2 * SEC), 5 * MIN);
    let ida = store.claim_outbox("owner", 10, lease, now).await.unwrap()[0].id;
    assert!(store.outbox_sending("owner", ida).await.unwrap());
    store.outbox_park("intruder", ida, now.plus(MIN), "intruder").await.unwrap();
    assert_eq!(store.claim_outbox("other", 10, lease, now.plus(MIN)).await.unwrap().len(), 0, "still claimed");
    let until = now.plus(2 * MIN);
    store.outbox_park("owner", ida, until, "no answer within 10s").await.unwrap();
    // Parked messages hold up no other.
    queue(store, &b, now).await;
    let others = store.claim_outbox("other", 10, lease, now.plus(MIN)).await.unwrap();
    assert_eq!(tos(&others), [b.as_str()]);
    store.outbox_sent(others[0].id).await.unwrap();
    assert_eq!(store.claim_outbox("other", 10, lease, minus_1ms(until)).await.unwrap().len(), 0);
    let due = store.claim_outbox("other", 10, lease, until).await.unwrap();
    assert_eq!(ids(&due), [ida]);
    assert!(due[0].in_flight, "parking keeps the message in doubt");
    assert_eq!((due[0].attempts, due[0].last_error.as_deref()), (2, Some("no answer within 10s")));
    // The first owner lost its say: its late park changes nothing.
    store.outbox_park("owner", ida, until.plus(60 * MIN), "late").await.unwrap();
    assert_eq!(ids(&store.claim_outbox("third", 10, lease, until.plus(lease)).await.unwrap()), [ida]);
    // Failed for good, the record keeps the mark for operators.
    store.outbox_failed("third", ida, "outcome unknown", audit(&a, "sms_outcome_unknown", until)).await.unwrap();
    let failed = store.failed_sms(10).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert!(failed[0].sms.in_flight);
}

async fn a_delivery_report_removes_its_message_whoever_holds_it_and_is_audited_even_when_it_is_gone(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    let (a, b) = (phone(1), phone(2));
    queue(store, &a, at(SEC)).await;
    queue(store, &b, at(2 * SEC)).await;
    let (now, lease) = (at(3 * SEC), 30 * SEC);
    let claimed = store.claim_outbox("owner", 10, lease, now).await.unwrap();
    let (ida, idb) = (claimed[0].id, claimed[1].id);
    assert!(store.outbox_sending("owner", ida).await.unwrap());
    store.outbox_park("owner", ida, now.plus(3 * MIN), "no answer").await.unwrap();
    let before = kichhoat::store::audit_all(store).await.unwrap();
    let submitted = audit(&a, "sms_submitted", now);
    assert!(store.delivery_report(ida, submitted.clone()).await.unwrap(), "a parked message is resolved");
    assert_eq!(store.outbox_len().await.unwrap(), 1);
    let delivered = audit(&a, "sms_delivered", now.plus(SEC));
    assert!(!store.delivery_report(ida, delivered.clone()).await.unwrap(), "already gone: audited only");
    // b is mid-send (claimed, not marked): the report still removes it, and its owner's late report is moot.
    let b_report = audit(&b, "sms_buffered", now);
    assert!(store.delivery_report(idb, b_report.clone()).await.unwrap());
    store.outbox_failed("owner", idb, "late", audit(&b, "sms_failed", now)).await.unwrap();
    store.outbox_retry("owner", idb, now, "late").await.unwrap();
    store.outbox_sent(idb).await.unwrap();
    let unknown = audit(&b, "sms_delivered", now);
    assert!(!store.delivery_report(ida.max(idb) + 1000, unknown.clone()).await.unwrap());
    assert_eq!(store.outbox_len().await.unwrap(), 0);
    assert!(store.failed_sms(10).await.unwrap().is_empty());
    assert_eq!(store.claim_outbox("w", 10, lease, at(24 * 60 * MIN)).await.unwrap().len(), 0);
    assert_eq!(
        kichhoat::store::audit_all(store).await.unwrap(),
        [before, vec![submitted, delivered, b_report, unknown]].concat(),
        "every report audited once, in order; nothing else"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Expiry

const MS: Duration = Duration::from_millis(1);

async fn replies_and_cursors_are_swept_after_their_retention_and_the_conversation_kept(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    let (p, written_at) = (phone(1), at(SEC));
    let v = committed(store.commit(None, commit(&p, "ask_otp", written_at)).await.unwrap());
    let (before, _) = store.load(&p).await.unwrap().unwrap();
    assert!(!before.recent.is_empty() && !before.cursors.is_empty());
    let due = written_at.plus(KEEP.replies);
    assert_eq!(store.expire(minus_1ms(due), &KEEP).await.unwrap(), Expired::default());
    assert_eq!(version(store, &p).await, Some(v));
    assert_eq!(store.expire(due.plus(MS), &KEEP).await.unwrap(), Expired { swept: 1, ..Expired::default() });
    let (after, v2) = store.load(&p).await.unwrap().unwrap();
    assert_eq!((after.recent, after.cursors), (Vec::new(), Default::default()));
    assert_eq!(after.session, before.session, "the conversation itself is kept");
    assert_ne!(v2, v, "the sweep rewrote it");
}

async fn an_idle_conversation_is_deleted_or_in_english_reduced_to_its_language(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    let (vi, en, t) = (phone(1), phone(2), at(SEC));
    committed(store.commit(None, commit_in(&vi, "ask_id", Lang::Vi, t)).await.unwrap());
    committed(store.commit(None, commit_in(&en, "ask_id", Lang::En, t)).await.unwrap());
    let idle = t.plus(KEEP.conversations);
    assert_eq!(store.expire(minus_1ms(idle), &KEEP).await.unwrap(), Expired { swept: 2, ..Expired::default() });
    assert!(store.load(&vi).await.unwrap().is_some(), "not idle long enough yet");
    assert_eq!(store.expire(idle.plus(MS), &KEEP).await.unwrap(), Expired { conversations: 2, ..Expired::default() });
    assert_eq!(store.load(&vi).await.unwrap(), None, "nothing worth keeping in the default language");
    let (kept, _) = store.load(&en).await.unwrap().unwrap();
    assert_eq!(kept.session.lang, Lang::En);
    assert_eq!((kept.session.state.as_str(), kept.session.tries), ("", 0));
    assert_eq!(kept.session.slots, Slots::default());
    assert!(kept.recent.is_empty() && kept.cursors.is_empty());
    // What was kept is a conversation like any other: written again, it expires on its new schedule.
    let t2 = idle.plus(MIN);
    committed(store.commit(version(store, &en).await, commit_in(&en, "ask_id", Lang::En, t2)).await.unwrap());
    assert_eq!(store.expire(minus_1ms(t2.plus(KEEP.conversations)), &KEEP).await.unwrap().conversations, 0);
    assert_eq!(store.load(&en).await.unwrap().unwrap().0.session.state, "ask_id");
    let later = t2.plus(KEEP.conversations + MS);
    assert_eq!(store.expire(later, &KEEP).await.unwrap(), Expired { conversations: 1, ..Expired::default() });
    assert_eq!(store.load(&en).await.unwrap().unwrap().0.session.state, "");
}

async fn a_conversation_written_after_its_sweep_is_not_expired_on_the_old_schedule(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    let (p, t) = (phone(1), at(SEC));
    committed(store.commit(None, commit(&p, "first", t)).await.unwrap());
    assert_eq!(store.expire(t.plus(KEEP.replies + MS), &KEEP).await.unwrap().swept, 1);
    let t2 = t.plus(30 * MIN);
    committed(store.commit(version(store, &p).await, commit(&p, "second", t2)).await.unwrap());
    let old_schedule = t.plus(KEEP.conversations + MS);
    assert_eq!(store.expire(old_schedule, &KEEP).await.unwrap(), Expired { swept: 1, ..Expired::default() });
    assert_eq!(store.load(&p).await.unwrap().unwrap().0.session.state, "second");
    let new_schedule = t2.plus(KEEP.conversations + MS);
    assert_eq!(store.expire(new_schedule, &KEEP).await.unwrap().conversations, 1);
    assert_eq!(store.load(&p).await.unwrap(), None);
}

/// A citizen typing every 15 s for over two minutes, through both kinds of commit (one with an audit record):
/// whatever a store does to avoid re-filing the conversation on every commit, its replies are swept when
/// the last commit's are due, not when the first one's were.
async fn replies_of_a_conversation_committed_every_few_seconds_are_swept_when_its_last_ones_are_due(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    let p = phone(1);
    let first = at(SEC);
    let mut last = first;
    for i in 0..10u32 {
        last = first.plus(15 * SEC * i);
        let mut c = commit(&p, &format!("step{i}"), last);
        if i % 4 == 3 {
            c.audit.push(audit(&p, "step", last));
        }
        committed(store.commit(version(store, &p).await, c).await.unwrap());
    }
    // Past the first commit's due time (and most others'), before the last one's.
    for now in [first.plus(KEEP.replies + MS), minus_1ms(last.plus(KEEP.replies))] {
        assert_eq!(store.expire(now, &KEEP).await.unwrap(), Expired::default(), "at {now:?}");
        let kept = store.load(&p).await.unwrap().unwrap().0;
        assert_eq!((kept.session.state.as_str(), kept.recent.len()), ("step9", 1));
    }
    // One more commit is not refused for the expiry's own rewrites, and moves the due time again.
    last = last.plus(SEC);
    committed(store.commit(version(store, &p).await, commit(&p, "step10", last)).await.unwrap());
    assert_eq!(store.expire(minus_1ms(last.plus(KEEP.replies)), &KEEP).await.unwrap(), Expired::default());
    assert_eq!(store.expire(last.plus(KEEP.replies + MS), &KEEP).await.unwrap().swept, 1);
    let swept = store.load(&p).await.unwrap().unwrap().0;
    assert_eq!((swept.session.state.as_str(), swept.recent.len()), ("step10", 0));
    assert_eq!(store.expire(last.plus(KEEP.conversations + MS), &KEEP).await.unwrap().conversations, 1);
}

/// Expiry running again and again while 24 phones commit every 10 s (each commit retried on a conflict, as
/// the service does): whatever expiry files again or sweeps in between, no commit is lost, no phone's last
/// replies are swept before they are due, and once due each is swept exactly once.
async fn expiry_racing_commits_from_many_phones_loses_no_commit_and_sweeps_each_last_reply_once_when_due(new: Factory) {
    let fresh = new();
    let store = fresh.store.clone();
    let t0 = at(SEC);
    let steps = 12u32;
    let writers: Vec<_> = (0..24)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let p = phone(n);
                for i in 0..steps {
                    let t = t0.plus(10 * SEC * i);
                    let mut done = false;
                    for _ in 0..ATTEMPTS {
                        let v = version(store.as_ref(), &p).await;
                        match store.commit(v, commit(&p, &format!("s{i}"), t)).await.unwrap() {
                            CommitOutcome::Committed(_) => {
                                done = true;
                                break;
                            }
                            CommitOutcome::Conflict => tokio::task::yield_now().await,
                            other => panic!("{other:?}"),
                        }
                    }
                    assert!(done, "phone {n}, step {i}: refused {ATTEMPTS} times");
                }
            })
        })
        .collect();
    let sweeper = {
        let store = store.clone();
        tokio::spawn(async move {
            // Every time before the last commits' replies are due (t0 + 110 s + their retention).
            for k in 0..55u32 {
                store.expire(t0.plus(KEEP.replies + 2 * SEC * k), &KEEP).await.unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    for w in writers {
        w.await.unwrap();
    }
    sweeper.await.unwrap();
    let last = t0.plus(10 * SEC * (steps - 1));
    let state = |c: &Conversation| (c.session.state.clone(), c.recent.len());
    for n in 0..24 {
        let c = store.load(&phone(n)).await.unwrap().unwrap().0;
        assert_eq!(state(&c), (format!("s{}", steps - 1), 1), "phone {n}");
    }
    assert_eq!(store.expire(minus_1ms(last.plus(KEEP.replies)), &KEEP).await.unwrap().swept, 0);
    assert_eq!(store.expire(last.plus(KEEP.replies + MS), &KEEP).await.unwrap().swept, 24);
    assert_eq!(store.expire(last.plus(KEEP.replies + SEC), &KEEP).await.unwrap().swept, 0);
    for n in 0..24 {
        let c = store.load(&phone(n)).await.unwrap().unwrap().0;
        assert_eq!(state(&c), (format!("s{}", steps - 1), 0), "phone {n}");
    }
}

async fn a_version_loaded_before_an_expiry_rewrote_or_deleted_the_conversation_never_matches_again(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    let (vi, en, t) = (phone(1), phone(2), at(SEC));
    let mut seen = vec![committed(store.commit(None, commit_in(&vi, "ask_id", Lang::Vi, t)).await.unwrap())];
    let en_loaded = committed(store.commit(None, commit_in(&en, "ask_id", Lang::En, t)).await.unwrap());
    // The sweep rewrote both: versions loaded before it are stale.
    store.expire(t.plus(KEEP.replies + MS), &KEEP).await.unwrap();
    assert_eq!(store.commit(Some(seen[0]), commit(&vi, "late", t)).await.unwrap(), CommitOutcome::Conflict);
    assert_eq!(store.commit(Some(en_loaded), commit(&en, "late", t)).await.unwrap(), CommitOutcome::Conflict);
    seen.push(version(store, &vi).await.unwrap());
    let en_swept = version(store, &en).await.unwrap();
    // Deleted (vi) and reduced to its language (en).
    let mut now = t.plus(KEEP.conversations + MS);
    store.expire(now, &KEEP).await.unwrap();
    assert_eq!(store.commit(Some(seen[1]), commit(&vi, "late", now)).await.unwrap(), CommitOutcome::Conflict);
    assert_eq!(store.commit(Some(en_swept), commit(&en, "late", now)).await.unwrap(), CommitOutcome::Conflict);
    assert_eq!(store.load(&vi).await.unwrap(), None, "the refused commits wrote nothing");
    // Made again and deleted again, three times over: no version ever comes back.
    for _ in 0..3 {
        let v = committed(store.commit(None, commit(&vi, "again", now)).await.unwrap());
        assert!(!seen.contains(&v), "version {v} was used before: {seen:?}");
        for old in &seen {
            let stale = store.commit(Some(*old), commit(&vi, "stale", now)).await.unwrap();
            assert_eq!(stale, CommitOutcome::Conflict, "old version {old} matched");
        }
        seen.push(v);
        now = now.plus(KEEP.conversations + MS);
        assert_eq!(store.expire(now, &KEEP).await.unwrap().conversations, 1);
        assert_eq!(store.load(&vi).await.unwrap(), None);
    }
}

async fn counters_are_removed_once_their_expiry_has_passed_and_not_on_an_old_schedule(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    let t = at(SEC);
    let (w, f, again) = (otp_key(1), login_key(1), login_key(2));
    let mut c = commit(&phone(1), "counted", t);
    c.bumps.extend([bump(&w, window(5), false), bump(&f, failure(10), false)]);
    committed(store.commit(None, c).await.unwrap());
    // `again` failed at t and once more an hour later: its expiry moved with it.
    let mut c = commit(&phone(2), "failed", t);
    c.bumps.push(bump(&again, failure(10), false));
    let v = committed(store.commit(None, c).await.unwrap());
    let mut c = commit(&phone(2), "failed", t.plus(60 * MIN));
    c.bumps.push(bump(&again, failure(10), false));
    committed(store.commit(Some(v), c).await.unwrap());
    let (wt, ft, at2) =
        (store.tally(&w).await.unwrap(), store.tally(&f).await.unwrap(), store.tally(&again).await.unwrap());
    assert_eq!((wt.expires_at, ft.expires_at), (t.plus(60 * MIN), t.plus(24 * 60 * MIN)));
    assert_eq!(at2.expires_at, t.plus(25 * 60 * MIN));

    assert_eq!(store.expire(minus_1ms(wt.expires_at), &KEEP).await.unwrap().counters, 0);
    assert_eq!(store.tally(&w).await.unwrap(), wt);
    assert_eq!(store.expire(wt.expires_at.plus(MS), &KEEP).await.unwrap().counters, 1);
    assert_eq!(store.tally(&w).await.unwrap(), Tally::default());
    assert_eq!(store.tally(&f).await.unwrap(), ft);
    assert_eq!(store.expire(ft.expires_at.plus(MS), &KEEP).await.unwrap().counters, 1);
    assert_eq!(store.tally(&f).await.unwrap(), Tally::default());
    assert_eq!(store.tally(&again).await.unwrap(), at2, "kept: its first failure's schedule no longer holds");
    assert_eq!(store.expire(at2.expires_at.plus(MS), &KEEP).await.unwrap().counters, 1);
    assert_eq!(store.tally(&again).await.unwrap(), Tally::default());
}

async fn failed_sms_are_removed_after_their_retention(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    let p = phone(1);
    queue(store, &p, at(SEC)).await;
    let now = at(2 * SEC);
    let claimed = store.claim_outbox("w", 1, MIN, now).await.unwrap();
    store.outbox_failed("w", claimed[0].id, "gave up", audit(&p, "sms_failed", now)).await.unwrap();
    let due = now.plus(KEEP.failed_sms);
    assert_eq!(store.expire(minus_1ms(due), &KEEP).await.unwrap().failed_sms, 0);
    assert_eq!(store.failed_sms(10).await.unwrap().len(), 1);
    assert_eq!(store.expire(due.plus(MS), &KEEP).await.unwrap().failed_sms, 1);
    assert_eq!(store.failed_sms(10).await.unwrap().len(), 0);
}

async fn a_second_expiry_at_the_same_time_reclaims_and_rewrites_nothing(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    let t = at(SEC);
    let (vi, en, texted) = (phone(1), phone(2), phone(3));
    let mut c = commit_in(&vi, "ask_id", Lang::Vi, t);
    c.bumps.push(bump(&otp_key(1), window(5), false));
    committed(store.commit(None, c).await.unwrap());
    committed(store.commit(None, commit_in(&en, "ask_id", Lang::En, t)).await.unwrap());
    queue(store, &texted, t).await;
    let claimed = store.claim_outbox("w", 1, MIN, t).await.unwrap();
    store.outbox_failed("w", claimed[0].id, "gave up", audit(&texted, "sms_failed", t)).await.unwrap();
    for now in [KEEP.replies, KEEP.conversations, KEEP.failed_sms].map(|d| t.plus(d + MS)) {
        let first = store.expire(now, &KEEP).await.unwrap();
        assert!(first.total() > 0, "something expires at each step");
        let state = (
            store.load(&vi).await.unwrap(),
            store.load(&en).await.unwrap(),
            store.tally(&otp_key(1)).await.unwrap(),
            store.failed_sms(10).await.unwrap(),
        );
        assert_eq!(store.expire(now, &KEEP).await.unwrap(), Expired::default(), "after {first:?}");
        let again = (
            store.load(&vi).await.unwrap(),
            store.load(&en).await.unwrap(),
            store.tally(&otp_key(1)).await.unwrap(),
            store.failed_sms(10).await.unwrap(),
        );
        assert_eq!(again, state, "versions included");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Audit

async fn the_audit_trail_pages_without_gaps_or_duplicates(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    let mut want = Vec::new();
    for i in 0..12u32 {
        let (p, now) = (phone(i), at(i * SEC));
        let mut c = commit(&p, "audited", now);
        for j in 0..i % 3 {
            c.audit.push(audit(&p, &format!("event-{i}-{j}"), now));
        }
        want.extend(c.audit.clone());
        committed(store.commit(None, c).await.unwrap());
        if i == 6 {
            // An SMS failure is audited by the outbox, in between.
            let texted = phone(50);
            queue(store, &texted, now).await;
            let claimed = store.claim_outbox("w", 1, MIN, now).await.unwrap();
            let record = audit(&texted, "sms_failed", now);
            store.outbox_failed("w", claimed[0].id, "gave up", record.clone()).await.unwrap();
            want.push(record);
        }
    }
    let mut pages: Vec<(u64, AuditRecord)> = Vec::new();
    let mut after = None;
    loop {
        let page = store.audit_after(after, 5).await.unwrap();
        assert!(page.len() <= 5);
        let Some((last, _)) = page.last() else { break };
        after = Some(*last);
        pages.extend(page);
    }
    assert_eq!(pages.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(), want, "every record once, in order");
    assert!(pages.windows(2).all(|w| w[0].0 < w[1].0), "cursors increase");
    // From any cursor, the next page starts right after it.
    assert_eq!(store.audit_after(None, 3).await.unwrap(), pages[..3]);
    for (k, (cursor, _)) in pages.iter().enumerate() {
        let next = store.audit_after(Some(*cursor), 2).await.unwrap();
        assert_eq!(next, pages[k + 1..].iter().take(2).cloned().collect::<Vec<_>>());
    }
}

async fn unexported(store: &dyn Store) -> Vec<(u64, AuditRecord)> {
    store.audit_unexported(10_000).await.unwrap()
}

async fn every_audit_record_whoever_wrote_it_is_unexported_until_exported(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    let now = T0;
    let (p, texted) = (phone(1), phone(2));
    let mut c = commit(&p, "audited", now);
    c.audit.push(audit(&p, "committed-1", now));
    c.audit.push(audit(&p, "committed-2", now));
    committed(store.commit(None, c).await.unwrap());
    store.append_audit(&[audit(&p, "appended", now)]).await.unwrap();
    queue(store, &texted, now).await;
    queue(store, &phone(3), now).await;
    let claimed = store.claim_outbox("w", 2, MIN, now).await.unwrap();
    store.outbox_failed("w", claimed[0].id, "gave up", audit(&texted, "failed", now)).await.unwrap();
    store.delivery_report(claimed[1].id, audit(&phone(3), "reported", now)).await.unwrap();
    // Refused commits and ignored failures write nothing, so mark nothing.
    let mut refused = commit(&p, "refused", now);
    refused.audit.push(audit(&p, "never", now));
    assert_eq!(store.commit(None, refused).await.unwrap(), CommitOutcome::Conflict);
    store.outbox_failed("intruder", claimed[0].id, "no", audit(&texted, "never", now)).await.unwrap();

    let all = store.audit_after(None, 100).await.unwrap();
    let events = |v: &[(u64, AuditRecord)]| v.iter().map(|(_, r)| r.event.event.clone()).collect::<Vec<_>>();
    assert_eq!(events(&all), ["committed-1", "committed-2", "appended", "failed", "reported"]);
    assert_eq!(unexported(store).await, all, "every record, with its id, smallest id first");
    assert_eq!(store.audit_unexported(2).await.unwrap(), all[..2], "at most n, the smallest ids");

    let (first, third) = (all[0].0, all[2].0);
    store.audit_exported(&[first, third, u64::MAX]).await.unwrap();
    let left: Vec<(u64, AuditRecord)> = all.iter().filter(|(id, _)| ![first, third].contains(id)).cloned().collect();
    assert_eq!(unexported(store).await, left, "exported ones are gone, others stay; an unknown id is ignored");
    store.audit_exported(&[first]).await.unwrap();
    assert_eq!(unexported(store).await, left, "exporting twice changes nothing");
    assert_eq!(store.audit_after(None, 100).await.unwrap(), all, "the audit trail itself is kept whole");
    let rest: Vec<u64> = left.iter().map(|(id, _)| *id).collect();
    store.audit_exported(&rest).await.unwrap();
    assert!(unexported(store).await.is_empty());
    store.append_audit(&[audit(&p, "later", now)]).await.unwrap();
    assert_eq!(events(&unexported(store).await), ["later"], "a new record is unexported again");
}

/// sled draws audit ids inside transactions that may finish in another order: a drain can see (and
/// export) a larger id before a commit holding a smaller one is visible. That record must still be found.
async fn a_record_with_a_smaller_id_stays_unexported_after_a_larger_one_is_exported(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    let (a, b) = (phone(1), phone(2));
    let mut first = commit(&a, "audited", T0);
    first.audit.push(audit(&a, "smaller id", T0));
    committed(store.commit(None, first).await.unwrap());
    let mut second = commit(&b, "audited", T0);
    second.audit.push(audit(&b, "larger id", T0));
    committed(store.commit(None, second).await.unwrap());
    let all = unexported(store).await;
    let [(small, _), (large, _)] = &all[..] else { panic!("two records: {all:?}") };
    assert!(small < large);

    store.audit_exported(&[*large]).await.unwrap();
    let left = unexported(store).await;
    assert_eq!(left.iter().map(|(id, r)| (*id, r.event.event.as_str())).collect::<Vec<_>>(), [(*small, "smaller id")]);
}

async fn records_committed_while_being_drained_are_each_taken_exactly_once(new: Factory) {
    let fresh = new();
    let store = fresh.store.clone();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drainer = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let mut taken: Vec<u64> = Vec::new();
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let page = store.audit_unexported(7).await.unwrap();
                let ids: Vec<u64> = page.iter().map(|(id, _)| *id).collect();
                store.audit_exported(&ids).await.unwrap();
                taken.extend(ids);
                if finished && page.is_empty() {
                    return taken;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let writers: Vec<_> = (0..8u32)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..12u32 {
                    let p = phone(w * 100 + i);
                    let mut c = commit(&p, "audited", T0);
                    c.audit.push(audit(&p, "a", T0));
                    c.audit.push(audit(&p, "b", T0));
                    committed(store.commit(None, c).await.unwrap());
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut taken = drainer.await.unwrap();
    let mut all: Vec<u64> = store.audit_after(None, 10_000).await.unwrap().into_iter().map(|(id, _)| id).collect();
    assert_eq!(all.len(), 8 * 12 * 2);
    taken.sort_unstable();
    let before = taken.len();
    taken.dedup();
    assert_eq!(before, taken.len(), "no record taken twice");
    all.sort_unstable();
    assert_eq!(taken, all, "every record committed was taken");
}

// ---------------------------------------------------------------------------------------------------------
// Registry and operators

fn citizen(n: u32, status: CitizenStatus) -> Citizen {
    Citizen { national_id: national_id(n), phone: phone(n), full_name: format!("Citizen {n}"), status }
}

async fn all_citizens(store: &dyn Store, page: usize) -> Vec<Citizen> {
    let mut out: Vec<Citizen> = Vec::new();
    loop {
        let next = store.citizens_after(out.last().map(|c| &c.national_id), page).await.unwrap();
        assert!(next.len() <= page);
        if next.is_empty() {
            return out;
        }
        out.extend(next);
    }
}

async fn citizens_page_in_id_order_removed_ones_included(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    assert!(store.citizens_after(None, 10).await.unwrap().is_empty());
    let mut want: Vec<Citizen> = [7, 3, 11, 5, 1].iter().map(|n| citizen(*n, CitizenStatus::Approved)).collect();
    store.upsert_citizens(&want).await.unwrap();
    store.remove_citizens(&[national_id(5)], &[]).await.unwrap();
    want.sort_by(|a, b| a.national_id.as_str().cmp(b.national_id.as_str()));
    want[2].status = CitizenStatus::Removed;
    assert_eq!(all_citizens(store, 2).await, want, "pages of 2, every citizen once, in ID order");
    assert_eq!(store.citizens_after(Some(&national_id(4)), 2).await.unwrap(), want[2..4], "after an ID not stored");
}

async fn removing_citizens_marks_them_keeps_their_account_and_audits_in_the_same_write(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    store.upsert_citizens(&[citizen(1, CitizenStatus::Approved), citizen(2, CitizenStatus::Pending)]).await.unwrap();
    let mut c = commit(&phone(1), "done", T0);
    c.activate = Some(account(&national_id(1), &phone(1), T0));
    committed(store.commit(None, c).await.unwrap());
    let record = |n: u32| AuditRecord {
        at: T0,
        caller: None,
        channel: Some("admin".into()),
        event: AuditEvent {
            event: "citizen_removed".into(),
            national_id: Some(national_id(n)),
            phone: None,
            detail: Some("operator=test".into()),
        },
    };
    let ids = [national_id(1), national_id(2), national_id(9)];
    let marked = store.remove_citizens(&ids, &[record(1), record(2)]).await.unwrap();
    assert_eq!(marked, 2, "an ID not stored is skipped");
    for n in [1, 2] {
        let c = store.citizen(&national_id(n)).await.unwrap().expect("kept, not deleted");
        assert_eq!((c.status, c.phone), (CitizenStatus::Removed, phone(n)));
    }
    assert!(store.account(&national_id(1)).await.unwrap().is_some(), "the account stays");
    let events: Vec<String> = unexported(store).await.into_iter().map(|(_, r)| r.event.event).collect();
    assert_eq!(events, ["citizen_removed", "citizen_removed"], "audited and unexported");
    assert_eq!(store.remove_citizens(&ids, &[]).await.unwrap(), 0, "already removed: skipped");
    store.upsert_citizens(&[citizen(2, CitizenStatus::Approved)]).await.unwrap();
    assert_eq!(store.citizen(&national_id(2)).await.unwrap().unwrap().status, CitizenStatus::Approved, "restored");
}

async fn the_conversations_of_an_id_are_found_whichever_phone_holds_them(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    assert!(store.conversations_of(&national_id(1)).await.unwrap().is_empty());
    let with_id = |p: &Msisdn, n: u32| {
        let mut c = commit(p, "otp", T0);
        c.conversation.session.slots.national_id = Some(national_id(n));
        c
    };
    let own = committed(store.commit(None, with_id(&phone(1), 1)).await.unwrap());
    let stranger = committed(store.commit(None, with_id(&phone(2), 1)).await.unwrap());
    committed(store.commit(None, with_id(&phone(3), 3)).await.unwrap());
    let mut menu = commit(&phone(4), "menu", T0);
    menu.conversation.session.slots = Slots::default();
    committed(store.commit(None, menu).await.unwrap());
    let mut found: Vec<(String, Version)> = store
        .conversations_of(&national_id(1))
        .await
        .unwrap()
        .into_iter()
        .map(|(p, c, v)| {
            assert_eq!(c.session.slots.national_id, Some(national_id(1)));
            (p.as_str().to_string(), v)
        })
        .collect();
    found.sort();
    assert_eq!(found, [(phone(1).as_str().to_string(), own), (phone(2).as_str().to_string(), stranger)]);
}

async fn resetting_counters_clears_locks_and_counts_and_audits_in_the_same_write(new: Factory) {
    let fresh = new();
    let store = fresh.store.as_ref();
    let (login, otp) = (login_key(1), otp_key(1));
    for i in 0..3 {
        let mut c = commit(&phone(i + 10), "counted", T0);
        c.bumps.push(bump(&login, failure(3), i == 2));
        c.bumps.push(bump(&otp, window(10), false));
        committed(store.commit(None, c).await.unwrap());
    }
    assert!(store.tally(&login).await.unwrap().locked_at(T0));
    let record = audit(&phone(1), "admin_unlock", T0);
    let cleared = store.reset_counters(&[login.clone(), otp.clone(), login_key(2)], &[record]).await.unwrap();
    assert_eq!(cleared, 2, "a counter that does not exist is not counted");
    assert_eq!(store.tally(&login).await.unwrap(), Tally::default());
    assert_eq!(store.tally(&otp).await.unwrap(), Tally::default());
    let events: Vec<String> = unexported(store).await.into_iter().map(|(_, r)| r.event.event).collect();
    assert_eq!(events, ["admin_unlock"]);
    // A failure after the reset starts a fresh count, and expiry finds nothing left behind.
    let mut c = commit(&phone(20), "counted", T0);
    c.bumps.push(bump(&login, failure(3), false));
    committed(store.commit(None, c).await.unwrap());
    assert_eq!(store.tally(&login).await.unwrap().consecutive, 1);
    let e = store.expire(at(3 * 24 * 60 * MIN), &KEEP).await.unwrap();
    assert_eq!(e.counters, 1, "only the new counter was still indexed");
}

// ---------------------------------------------------------------------------------------------------------
// Every case, for every backend. A new backend is one line here.

backend!(memory, super::memory_store);
backend!(sled, super::sled_store);
backend!(postgres, super::postgres_store);
