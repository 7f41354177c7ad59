//! Counters that limits read, and the pure rules that change them.
//!
//! A limit (log-in failures per ID, OTP SMS per registered phone, ...) is only as good as the place it
//! is enforced. Reading a counter, deciding, and writing the new value later is a race: sixteen wrong
//! log-ins sent at once all read "no failures yet". So every counted event travels to the store as a
//! [`Bump`] (the counter, the rule, and what the engine expects the event to do), and the store applies
//! the rule to the counter *inside the transaction that records the event*:
//!
//! - the rule refuses the event (a lock is in force, the window is full): the commit answers
//!   `LimitReached` and writes nothing; the service runs the step again and the engine, reading the
//!   counter afresh, answers with the limit's screen;
//! - the rule accepts it but with another effect than the engine assumed (this failure is the one that
//!   locks, though the engine's earlier read said two more were allowed): the commit answers `Conflict`
//!   and the step runs again on fresh counters, so the citizen is told what really happened;
//! - otherwise the new counter is written with the rest of the commit.
//!
//! The engine's own read of a counter (through `engine::Directory::tally`) is therefore only a hint for
//! the reply text. Whatever the concurrency, N events at once never get further than the same N one at a
//! time. The rules are plain functions of (rule, tally, now) so every backend (sled, memory, PostgreSQL)
//! applies exactly the same arithmetic.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::Millis;

/// Which limit refused an event (logged, and returned by the store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// Log-in of an ID number is locked after too many failures in a row.
    LoginLocked,
    /// Too many OTP SMS to one registered phone in the window.
    OtpPerPhone,
    /// Too many OTP SMS for one ID number in the window.
    OtpPerId,
    /// Too many wrong codes for one ID number in the window.
    WrongCodes,
    /// Too many activation lookups from one calling phone.
    Lookups,
    /// Too many lookups that ended without a code (unknown, mismatch, pending, already activated).
    FailedLookups,
    /// Password recovery of an ID number is locked after too many wrong security answers in a row.
    RecoveryLocked,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::LoginLocked => "login_locked",
            Limit::OtpPerPhone => "otp_per_phone",
            Limit::OtpPerId => "otp_per_id",
            Limit::WrongCodes => "wrong_codes",
            Limit::Lookups => "lookups",
            Limit::FailedLookups => "failed_lookups",
            Limit::RecoveryLocked => "recovery_locked",
        })
    }
}

/// The name of one counter: a kind and the identifier it counts for (`login:001099012345`).
///
/// Keys hold identifiers in clear, like the accounts and citizens they sit beside; they never hold a
/// secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CounterKey(String);

impl CounterKey {
    /// `kind:[pool:]subject`; the names are made by `engine::policy`.
    pub fn new(name: &str) -> CounterKey {
        CounterKey(name.to_string())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// A key read back from storage.
    pub fn from_stored(s: String) -> CounterKey {
        CounterKey(s)
    }
}

impl fmt::Display for CounterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The identifier is personal data: logs get the kind only.
        f.write_str(self.0.split(':').next().unwrap_or(""))
    }
}

/// What a counter holds. One shape serves both kinds of rule; unused fields stay at their defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Times of the events still inside the window (window rules).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub times: Vec<Millis>,
    /// Failures in a row (failure rules).
    #[serde(default)]
    pub consecutive: u32,
    /// Locks in a row, for lock times that grow with each further lock.
    #[serde(default)]
    pub locks: u32,
    #[serde(default)]
    pub locked_until: Option<Millis>,
    /// When this counter no longer matters and the store may delete it (set by [`apply`]).
    #[serde(default)]
    pub expires_at: Millis,
}

impl Tally {
    pub fn locked_at(&self, now: Millis) -> bool {
        self.locked_until.is_some_and(|t| now < t)
    }
    /// Nothing worth keeping: the store deletes a counter that comes back empty.
    pub fn is_empty(&self) -> bool {
        self.times.is_empty() && self.consecutive == 0 && self.locks == 0 && self.locked_until.is_none()
    }
}

/// How an event changes its counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rule {
    /// At most `max` events in any rolling `window`; the event that would be one too many is refused.
    Window { limit: Limit, max: u32, window: Duration },
    /// A failure. Refused while a lock is in force; the `max`-th failure in a row locks for `lock`,
    /// each further lock in a row for twice the one before, up to `max_lock`. A failure record idle for
    /// `forget_after` (and not locked) is forgotten.
    Failure { limit: Limit, max: u32, lock: Duration, max_lock: Duration, forget_after: Duration },
    /// A success: refused while a lock is in force (the lock applies to right answers too); otherwise
    /// clears the failures in a row and the lock history.
    Success { limit: Limit },
    /// A proof stronger than what the counter guards (a password reset by code and security answer):
    /// clears failures and any lock in force. Never refused.
    Clear,
}

/// What an accepted event did, beyond counting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effect {
    /// This event started a lock.
    pub locked: bool,
}

/// One counted event, as it travels in a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bump {
    pub key: CounterKey,
    pub rule: Rule,
    /// What the engine told the citizen, from its earlier read: the store refuses the commit
    /// (`Conflict`) when applying the rule to the real counter would do otherwise.
    pub expect: Effect,
}

/// When the next event could be accepted, for a counter whose rule refuses one now: the end of a lock, or
/// when the oldest event in a full window leaves it.
pub fn next_allowed(rule: &Rule, tally: &Tally, now: Millis) -> Millis {
    match *rule {
        Rule::Window { max, window, .. } => {
            let mut inside: Vec<Millis> = tally.times.iter().copied().filter(|t| now.since(*t) < window).collect();
            inside.sort();
            let excess = inside.len().saturating_sub(max as usize);
            inside.get(excess).map(|t| t.plus(window)).unwrap_or(now)
        }
        Rule::Failure { .. } | Rule::Success { .. } | Rule::Clear => {
            tally.locked_until.filter(|t| *t > now).unwrap_or(now)
        }
    }
}

/// Applies `rule` to `tally` at `now`: the new counter and what the event did, or the limit that
/// refuses it.
pub fn apply(rule: &Rule, tally: &Tally, now: Millis) -> Result<(Tally, Effect), Limit> {
    match *rule {
        Rule::Window { limit, max, window } => {
            let mut times: Vec<Millis> = tally.times.iter().copied().filter(|t| now.since(*t) < window).collect();
            if times.len() >= max as usize {
                return Err(limit);
            }
            times.push(now);
            let oldest = times.first().copied().unwrap_or(now);
            Ok((Tally { times, expires_at: oldest.plus(window), ..Tally::default() }, Effect::default()))
        }
        Rule::Failure { limit, max, lock, max_lock, forget_after } => {
            if tally.locked_at(now) {
                return Err(limit);
            }
            // A record idle long enough is forgotten, as the store would have deleted it.
            let stale = tally.expires_at <= now && !tally.is_empty();
            let base = if stale { Tally::default() } else { tally.clone() };
            let mut next = Tally { locked_until: None, ..base };
            next.consecutive = next.consecutive.saturating_add(1);
            let mut effect = Effect::default();
            if next.consecutive >= max {
                let factor = 1u32.checked_shl(next.locks.min(31)).unwrap_or(u32::MAX);
                let length = lock.checked_mul(factor).unwrap_or(max_lock).min(max_lock);
                next.locked_until = Some(now.plus(length));
                next.locks = next.locks.saturating_add(1);
                next.consecutive = 0;
                effect.locked = true;
            }
            next.expires_at = next.locked_until.unwrap_or(now).plus(forget_after);
            Ok((next, effect))
        }
        Rule::Success { limit } => {
            if tally.locked_at(now) {
                return Err(limit);
            }
            Ok((Tally::default(), Effect::default()))
        }
        Rule::Clear => Ok((Tally::default(), Effect::default())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn failure(max: u32) -> Rule {
        Rule::Failure {
            limit: Limit::LoginLocked,
            max,
            lock: 15 * MIN,
            max_lock: 24 * 60 * MIN,
            forget_after: 24 * 60 * MIN,
        }
    }

    #[test]
    fn a_window_refuses_the_event_one_too_many_and_frees_up_as_time_passes() {
        let rule = Rule::Window { limit: Limit::OtpPerPhone, max: 3, window: 60 * MIN };
        let mut t = Tally::default();
        for i in 0..3 {
            t = apply(&rule, &t, Millis(i * 1000)).unwrap().0;
        }
        assert_eq!(apply(&rule, &t, Millis(5000)), Err(Limit::OtpPerPhone));
        assert_eq!(t.expires_at, Millis(0).plus(60 * MIN));
        let later = Millis(0).plus(60 * MIN);
        let (t2, _) = apply(&rule, &t, later).unwrap();
        assert_eq!(t2.times.len(), 3, "the first event left the window");
    }

    #[test]
    fn a_full_window_frees_up_when_its_oldest_event_leaves() {
        let rule = Rule::Window { limit: Limit::OtpPerPhone, max: 2, window: 60 * MIN };
        let t = Tally { times: vec![Millis(1000), Millis(5000)], ..Tally::default() };
        assert_eq!(next_allowed(&rule, &t, Millis(6000)), Millis(1000).plus(60 * MIN));
        let lock = Tally { locked_until: Some(Millis(9000)), ..Tally::default() };
        assert_eq!(next_allowed(&failure(3), &lock, Millis(6000)), Millis(9000));
    }

    #[test]
    fn the_max_th_failure_locks_and_each_further_lock_doubles_up_to_the_cap() {
        let rule = failure(3);
        let mut t = Tally::default();
        let mut now = Millis(0);
        let mut lengths = Vec::new();
        for _ in 0..9 {
            for i in 0..3 {
                let (next, effect) = apply(&rule, &t, now).unwrap();
                assert_eq!(effect.locked, i == 2);
                t = next;
            }
            let until = t.locked_until.unwrap();
            lengths.push(until.since(now).as_secs() / 60);
            assert_eq!(apply(&rule, &t, now), Err(Limit::LoginLocked), "refused while locked");
            now = until;
        }
        assert_eq!(lengths, [15, 30, 60, 120, 240, 480, 960, 1440, 1440]);
    }

    #[test]
    fn a_success_clears_failures_but_not_during_a_lock() {
        let rule = failure(2);
        let ok = Rule::Success { limit: Limit::LoginLocked };
        let (t, _) = apply(&rule, &Tally::default(), Millis(0)).unwrap();
        assert_eq!(apply(&ok, &t, Millis(1)).unwrap().0, Tally::default());
        let (t, e) = apply(&rule, &t, Millis(2)).unwrap();
        assert!(e.locked);
        assert_eq!(apply(&ok, &t, Millis(3)), Err(Limit::LoginLocked));
    }

    #[test]
    fn a_clear_lifts_a_lock_in_force_and_is_never_refused() {
        let rule = failure(2);
        let (t, _) = apply(&rule, &Tally::default(), Millis(0)).unwrap();
        let (t, e) = apply(&rule, &t, Millis(1)).unwrap();
        assert!(e.locked && t.locked_at(Millis(2)));
        let (cleared, e) = apply(&Rule::Clear, &t, Millis(2)).unwrap();
        assert_eq!((cleared, e), (Tally::default(), Effect::default()));
    }

    #[test]
    fn failures_idle_past_their_retention_are_forgotten() {
        let rule = failure(3);
        let (t, _) = apply(&rule, &Tally::default(), Millis(0)).unwrap();
        let (t, _) = apply(&rule, &t, Millis(1)).unwrap();
        let late = t.expires_at;
        let (t, e) = apply(&rule, &t, late).unwrap();
        assert_eq!((t.consecutive, e.locked), (1, false));
    }
}
