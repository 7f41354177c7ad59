//! The numbers of the abuse limits, as an operator may tune them (`kichhoat serve --help` lists them with
//! these defaults), and the counter rules they make. Each limit is counted inside the commit that records
//! its event (see [`crate::limits`]); this module only says which rule with which numbers.
//!
//! Where a stranger could otherwise spend a citizen's allowance, counts per national ID are kept in two
//! pools: requests from the phone registered for the ID, and requests from every other phone together.
//! Strangers who exhaust their pool never lock the citizen's own phone out.
//!
//! Sources: NIST SP 800-63B §5.2.2 (rate limiting: at most 100 consecutive failed attempts per account;
//! lockouts that an attacker cannot use to deny service), §5.1.3.1 (OTP out of band); OWASP Authentication
//! and Forgot Password cheat sheets (enumeration, throttling by account and by source); SMS pumping
//! (OWASP Automated Threats OAT-009 / toll fraud): caps per recipient and per requester.

use std::time::Duration;

use crate::domain::{Msisdn, NationalId};
use crate::limits::{CounterKey, Limit, Rule};

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(60 * 60);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// Whose allowance a request spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// The request comes from the phone registered for the ID number.
    Own,
    /// From any other phone (all strangers share one pool).
    Other,
}

impl Pool {
    pub fn of(caller: &Msisdn, registered: Option<&Msisdn>) -> Pool {
        if registered == Some(caller) {
            Pool::Own
        } else {
            Pool::Other
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Pool::Own => "own",
            Pool::Other => "other",
        }
    }
}

/// Every tunable limit. Defaults are the security issue's numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Failed log-ins in a row, per ID and pool, before log-in from that pool is locked.
    pub login_failures: u32,
    /// The first lock; each further lock in a row doubles it, up to `login_lock_max`.
    pub login_lock: Duration,
    pub login_lock_max: Duration,
    /// OTP SMS per ID and pool in 15 minutes, and in a day.
    pub otp_per_id_15min: u32,
    pub otp_per_id_day: u32,
    /// OTP SMS to one registered phone per hour, per pool (a phone may be registered for several IDs).
    pub otp_per_phone_hour: u32,
    /// Wrong codes per ID and pool in a day, across all its codes; then activation waits.
    pub wrong_codes_per_id_day: u32,
    /// Activation lookups (ID and phone submitted) per calling phone per hour and per day.
    pub lookups_per_caller_hour: u32,
    pub lookups_per_caller_day: u32,
    /// Lookups that end without a code (unknown, mismatch, pending, already activated): per calling phone
    /// per hour, and per ID and pool per day. They tell a caller that an ID and a phone belong together
    /// without an SMS, so they are the enumeration oracle to cap.
    pub failed_lookups_per_caller_hour: u32,
    pub failed_lookups_per_id_day: u32,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            login_failures: 5,
            login_lock: 15 * MINUTE,
            login_lock_max: DAY,
            otp_per_id_15min: 3,
            otp_per_id_day: 10,
            otp_per_phone_hour: 20,
            wrong_codes_per_id_day: 10,
            lookups_per_caller_hour: 10,
            lookups_per_caller_day: 30,
            failed_lookups_per_caller_hour: 5,
            failed_lookups_per_id_day: 10,
        }
    }
}

/// A counter and the rule that changes it.
pub type Limited = (CounterKey, Rule);

fn key(kind: &str, pool: Option<Pool>, subject: &str) -> CounterKey {
    match pool {
        Some(p) => CounterKey::new(&format!("{kind}:{}:{subject}", p.name())),
        None => CounterKey::new(&format!("{kind}:{subject}")),
    }
}

fn window(limit: Limit, max: u32, window: Duration) -> Rule {
    Rule::Window { limit, max, window }
}

impl Policy {
    /// Failed log-ins of `id` from `pool`: the rule that locks.
    pub fn login_failure(&self, id: &NationalId, pool: Pool) -> Limited {
        let rule = Rule::Failure {
            limit: Limit::LoginLocked,
            max: self.login_failures,
            lock: self.login_lock,
            max_lock: self.login_lock_max,
            forget_after: DAY,
        };
        (key("login", Some(pool), id.as_str()), rule)
    }

    /// Wrong security answers of `id` from `pool` while recovering a password: the rule that locks recovery
    /// (the log-in numbers: an answer is a weaker secret than a password, so it gets no more tries).
    pub fn recovery_failure(&self, id: &NationalId, pool: Pool) -> Limited {
        let rule = Rule::Failure {
            limit: Limit::RecoveryLocked,
            max: self.login_failures,
            lock: self.login_lock,
            max_lock: self.login_lock_max,
            forget_after: DAY,
        };
        (key("recovery", Some(pool), id.as_str()), rule)
    }

    /// A right security answer of `id` from `pool`: clears that pool's wrong answers (refused during a lock).
    pub fn recovery_success(&self, id: &NationalId, pool: Pool) -> Limited {
        (key("recovery", Some(pool), id.as_str()), Rule::Success { limit: Limit::RecoveryLocked })
    }

    /// A password reset of `id` proven from the registered phone (its code and a security answer): the
    /// phone's own log-in failures and lock are cleared, so the citizen can log in with the new password
    /// at once. Strangers' pool keeps its count.
    pub fn login_cleared(&self, id: &NationalId) -> Limited {
        (key("login", Some(Pool::Own), id.as_str()), Rule::Clear)
    }

    /// A successful log-in of `id` from `pool`: clears that pool's failures (refused during a lock).
    pub fn login_success(&self, id: &NationalId, pool: Pool) -> Limited {
        (key("login", Some(pool), id.as_str()), Rule::Success { limit: Limit::LoginLocked })
    }

    /// Counters one OTP SMS spends: per ID and pool (15 minutes, a day), per registered phone and pool.
    pub fn otp_sends(&self, id: &NationalId, phone: &Msisdn, pool: Pool) -> [Limited; 3] {
        let [short, day] = self.otp_id(id, pool);
        [short, day, self.otp_phone(phone, pool)]
    }

    /// OTP SMS per ID and pool: 15 minutes, and a day.
    pub fn otp_id(&self, id: &NationalId, pool: Pool) -> [Limited; 2] {
        [
            (key("otp_id_15m", Some(pool), id.as_str()), window(Limit::OtpPerId, self.otp_per_id_15min, 15 * MINUTE)),
            (key("otp_id_day", Some(pool), id.as_str()), window(Limit::OtpPerId, self.otp_per_id_day, DAY)),
        ]
    }

    /// OTP SMS to one registered phone from `pool`, an hour.
    pub fn otp_phone(&self, phone: &Msisdn, pool: Pool) -> Limited {
        (key("otp_phone", Some(pool), phone.as_str()), window(Limit::OtpPerPhone, self.otp_per_phone_hour, HOUR))
    }

    /// The counter a wrong code spends: per ID and pool, a day.
    pub fn wrong_code(&self, id: &NationalId, pool: Pool) -> Limited {
        (key("wrong_code", Some(pool), id.as_str()), window(Limit::WrongCodes, self.wrong_codes_per_id_day, DAY))
    }

    /// Counters every activation lookup spends: per calling phone, an hour and a day.
    pub fn lookups(&self, caller: &Msisdn) -> [Limited; 2] {
        [
            (key("lookup_h", None, caller.as_str()), window(Limit::Lookups, self.lookups_per_caller_hour, HOUR)),
            (key("lookup_d", None, caller.as_str()), window(Limit::Lookups, self.lookups_per_caller_day, DAY)),
        ]
    }

    /// Counters a lookup that ends without a code also spends: per calling phone an hour, per ID and
    /// pool a day.
    pub fn failed_lookups(&self, caller: &Msisdn, id: &NationalId, pool: Pool) -> [Limited; 2] {
        [self.failed_lookups_of_caller(caller), self.failed_lookups_of_id(id, pool)]
    }

    /// Lookups without a code from one calling phone, an hour.
    pub fn failed_lookups_of_caller(&self, caller: &Msisdn) -> Limited {
        (
            key("nolookup_h", None, caller.as_str()),
            window(Limit::FailedLookups, self.failed_lookups_per_caller_hour, HOUR),
        )
    }

    /// Lookups without a code for one ID and pool, a day.
    pub fn failed_lookups_of_id(&self, id: &NationalId, pool: Pool) -> Limited {
        (key("nolookup_d", Some(pool), id.as_str()), window(Limit::FailedLookups, self.failed_lookups_per_id_day, DAY))
    }
}

/// Which lock an operator clears (`kichhoat admin unlock --what`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    /// Failed log-ins and their locks.
    Login,
    /// OTP sends, wrong codes and lookups: everything that makes activation (or recovery) wait.
    Otp,
}

/// One counter an operator sees for an ID number, and may clear.
#[derive(Debug, Clone)]
pub struct Watched {
    pub group: Group,
    /// A stable name (`login`, `otp_id_15m`, ...), shown with a label by `kichhoat admin show`.
    pub name: &'static str,
    /// The pool, for counters kept per ID number or registered phone in pools.
    pub pool: Option<Pool>,
    pub key: CounterKey,
    pub rule: Rule,
}

impl Policy {
    /// Every counter that can refuse an ID number's citizen: per ID and pool (log-in, OTP sends, wrong
    /// codes, lookups without a code), per registered phone and pool (OTP sends), and the registered
    /// phone's own lookups as a caller. A new limit on an ID belongs here too, so operators see and can
    /// clear it.
    pub fn watched(&self, id: &NationalId, registered: Option<&Msisdn>) -> Vec<Watched> {
        let mut out = Vec::new();
        let mut add = |group, name, pool, (key, rule): Limited| out.push(Watched { group, name, pool, key, rule });
        for pool in [Pool::Own, Pool::Other] {
            add(Group::Login, "login", Some(pool), self.login_failure(id, pool));
        }
        // Wrong security answers while recovering a password lock like log-in, and are cleared with it.
        for pool in [Pool::Own, Pool::Other] {
            add(Group::Login, "recovery", Some(pool), self.recovery_failure(id, pool));
        }
        for pool in [Pool::Own, Pool::Other] {
            let [short, day] = self.otp_id(id, pool);
            add(Group::Otp, "otp_id_15m", Some(pool), short);
            add(Group::Otp, "otp_id_day", Some(pool), day);
            add(Group::Otp, "wrong_code", Some(pool), self.wrong_code(id, pool));
            add(Group::Otp, "nolookup_d", Some(pool), self.failed_lookups_of_id(id, pool));
        }
        if let Some(phone) = registered {
            for pool in [Pool::Own, Pool::Other] {
                add(Group::Otp, "otp_phone", Some(pool), self.otp_phone(phone, pool));
            }
            let [hour, day] = self.lookups(phone);
            add(Group::Otp, "lookup_h", None, hour);
            add(Group::Otp, "lookup_d", None, day);
            add(Group::Otp, "nolookup_h", None, self.failed_lookups_of_caller(phone));
        }
        out
    }
}
