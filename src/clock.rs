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
    /// RFC 3339 in UTC with seconds, as the outbox writes it.
    pub fn rfc3339(self) -> String {
        humantime::format_rfc3339_seconds(self.to_system_time()).to_string()
    }
    /// RFC 3339 in UTC with milliseconds (`2026-11-29T10:00:00.123Z`), as the audit trail writes it.
    pub fn rfc3339_millis(self) -> String {
        humantime::format_rfc3339_millis(self.to_system_time()).to_string()
    }
    /// The local time in Vietnam (Asia/Ho_Chi_Minh: UTC+7 all year, no daylight saving since 1975) as
    /// (year, month, day, hour, minute): how a citizen is told until when a lock lasts.
    pub fn vietnam(self) -> (i64, u32, u32, u32, u32) {
        let secs = (self.0 / 1000) as i64 + VIETNAM_OFFSET_SECS;
        let (days, of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        (y, m, d, (of_day / 3600) as u32, ((of_day % 3600) / 60) as u32)
    }

    /// The calendar year (UTC), used to refuse an ID number whose birth year is in the future.
    pub fn year(self) -> i32 {
        let s = self.rfc3339();
        s.get(0..4).and_then(|y| y.parse().ok()).unwrap_or(1970)
    }
}

/// Asia/Ho_Chi_Minh is UTC+7 (IANA tz database: no DST rules since 1975).
const VIETNAM_OFFSET_SECS: i64 = 7 * 3600;

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
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
        assert_eq!(Millis(1_795_996_800_007).rfc3339_millis(), "2026-11-30T00:00:00.007Z");
    }

    #[test]
    fn vietnam_time_is_seven_hours_ahead_of_utc_across_midnight_and_new_year() {
        // 2026-11-30T00:00:00Z is 07:00 the same day in Hanoi.
        assert_eq!(Millis(1_795_996_800_000).vietnam(), (2026, 11, 30, 7, 0));
        // 2026-12-31T17:30:00Z is 00:30 on New Year's Day in Hanoi.
        assert_eq!(Millis(1_798_738_200_000).vietnam(), (2027, 1, 1, 0, 30));
        assert_eq!(Millis(0).vietnam(), (1970, 1, 1, 7, 0));
    }

    #[test]
    fn a_manual_clock_moves_only_when_advanced() {
        let c = ManualClock::new(Millis(1000));
        assert_eq!(c.now(), Millis(1000));
        c.advance(Duration::from_secs(2));
        assert_eq!(c.now(), Millis(3000));
    }
}
