//! Time as a parameter: the engine takes `now` as a value; the service asks a [`Clock`] for it, so tests
//! inject a [`ManualClock`] and move time forward instead of sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch; the one time type the engine and the stored records use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Millis(pub u64);

impl Millis {
    pub fn plus(self, d: Duration) -> Millis {
        Millis(self.0.saturating_add(d.as_millis() as u64))
    }
    pub fn since(self, earlier: Millis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }
    /// RFC 3339 in UTC with seconds, as the outbox and the audit trail write it.
    pub fn rfc3339(self) -> String {
        humantime::format_rfc3339_seconds(self.to_system_time()).to_string()
    }
    /// The calendar year (UTC), used to refuse an ID number whose birth year is in the future.
    pub fn year(self) -> i32 {
        let s = self.rfc3339();
        s.get(0..4).and_then(|y| y.parse().ok()).unwrap_or(1970)
    }
}

pub trait Clock: Send + Sync {
    fn now(&self) -> Millis;
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Millis(d.as_millis() as u64)
    }
}

/// A clock that only moves when told to; for tests.
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start: Millis) -> Self {
        ManualClock(AtomicU64::new(start.0))
    }
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        Millis(self.0.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_render_as_rfc3339_and_know_their_year() {
        let t = Millis(1_796_000_000_000); // 2026-11-29
        assert!(t.rfc3339().starts_with("2026-"));
        assert_eq!(t.year(), 2026);
    }

    #[test]
    fn a_manual_clock_moves_only_when_advanced() {
        let c = ManualClock::new(Millis(1000));
        assert_eq!(c.now(), Millis(1000));
        c.advance(Duration::from_secs(2));
        assert_eq!(c.now(), Millis(3000));
    }
}
