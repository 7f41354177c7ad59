//! What `kichhoat admin show` reports, as data (`--json`) and as text a commune police officer reads
//! (Vietnamese labels by default, English with `--lang en`). Times are given in Asia/Ho_Chi_Minh (UTC+7)
//! and, in JSON, also in RFC 3339 UTC. Nothing here is a secret or a hash: phones are masked, the ID
//! number is shown masked (the operator typed it).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::{is_idle, refused_until, status_name};
use crate::clock::Millis;
use crate::domain::{Msisdn, NationalId};
use crate::engine::policy::Watched;
use crate::engine::{Account, Citizen, Session};
use crate::flow::Lang;
use crate::limits::{Rule, Tally};

/// A moment, for people (Vietnam's local time) and for scripts (UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Time {
    /// `HH:MM dd/mm/yyyy`, Asia/Ho_Chi_Minh.
    pub local: String,
    /// RFC 3339, UTC.
    pub utc: String,
}

impl Time {
    pub fn of(t: Millis) -> Time {
        let (y, mo, d, h, mi) = t.vietnam();
        Time { local: format!("{h:02}:{mi:02} {d:02}/{mo:02}/{y}"), utc: t.rfc3339() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryView {
    /// approved, pending or removed.
    pub status: String,
    pub full_name: String,
    /// The registered phone, masked.
    pub phone: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    pub activated_at: Time,
    pub phone: String,
}

/// One counter that can refuse the citizen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitView {
    /// `login` or `otp` (what `unlock --what` clears).
    pub group: String,
    /// `login`, `otp_id_15m`, `otp_id_day`, `wrong_code`, `nolookup_d`, `otp_phone`, `lookup_h`,
    /// `lookup_d`, `nolookup_h`.
    pub name: String,
    /// `own` (from the registered phone), `other` (every other phone), or none (the registered phone as
    /// a caller).
    pub pool: Option<String>,
    /// Events in the window now, or failures in a row.
    pub used: u32,
    /// The cap, or the failures that lock.
    pub max: u32,
    /// Locks in a row so far (a failure counter; each doubles the next).
    pub locks: u32,
    /// Refused until then (a lock, or a full window).
    pub until: Option<Time>,
}

impl LimitView {
    pub fn of(w: &Watched, tally: &Tally, now: Millis) -> LimitView {
        let (used, max) = match w.rule {
            Rule::Window { max, window, .. } => {
                (tally.times.iter().filter(|t| now.since(**t) < window).count() as u32, max)
            }
            Rule::Failure { max, .. } => (tally.consecutive, max),
            Rule::Success { .. } | Rule::Clear => (0, 0),
        };
        LimitView {
            group: format!("{:?}", w.group).to_lowercase(),
            name: w.name.to_string(),
            pool: w.pool.map(|p| p.name().to_string()),
            used,
            max,
            locks: tally.locks,
            until: refused_until(&w.rule, tally, now).map(Time::of),
        }
    }
}

/// The name of a counter with its pool, as audit details and `unlock` print it (`login:other`).
pub fn counter_name(w: &Watched) -> String {
    match w.pool {
        Some(p) => format!("{}:{}", w.name, p.name()),
        None => w.name.to_string(),
    }
}

/// A conversation holding the ID number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationView {
    /// The phone the conversation is on (masked).
    pub caller: String,
    /// The flow state it waits at (`act_otp`, `act_password`, `login_password`, ...).
    pub state: String,
    /// The registered phone the code went to (masked), once the lookup matched.
    pub phone: Option<String>,
    pub started_at: Option<Time>,
    pub last_activity: Time,
    /// Idle past the reset: its next input starts over at the menu.
    pub idle: bool,
    /// `none`, `pending` (until when, wrong tries), `verified`.
    pub code: String,
    pub code_valid_until: Option<Time>,
    pub code_wrong: u8,
    pub codes_sent: u8,
}

impl ActivationView {
    pub fn of(caller: &Msisdn, s: &Session, now: Millis) -> ActivationView {
        let sl = &s.slots;
        let code = match (&sl.otp, sl.verified) {
            (_, true) => "verified",
            (Some(o), _) if now <= o.expires_at => "pending",
            (Some(_), _) => "expired",
            (None, _) => "none",
        };
        ActivationView {
            caller: caller.masked(),
            state: s.state.clone(),
            phone: sl.phone.as_ref().map(Msisdn::masked),
            started_at: sl.started_at.map(Time::of),
            last_activity: Time::of(s.updated_at),
            idle: is_idle(s, now),
            code: code.into(),
            code_valid_until: sl.otp.as_ref().map(|o| Time::of(o.expires_at)),
            code_wrong: sl.otp.as_ref().map(|o| o.wrong).unwrap_or(0),
            codes_sent: sl.otp_sends,
        }
    }
}

/// Everything `admin show` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CitizenView {
    /// The ID number, masked.
    pub id: String,
    pub at: Time,
    /// `None`: not in the registry.
    pub registry: Option<RegistryView>,
    /// `None`: not activated.
    pub account: Option<AccountView>,
    pub limits: Vec<LimitView>,
    pub activations: Vec<ActivationView>,
    /// The last code sent for this ID number in the past day (counters keep a day).
    pub last_otp_sent_at: Option<Time>,
}

impl CitizenView {
    pub fn new(
        id: &NationalId,
        now: Millis,
        citizen: Option<&Citizen>,
        account: Option<&Account>,
        limits: Vec<LimitView>,
        activations: Vec<ActivationView>,
        last_otp: Option<Millis>,
    ) -> CitizenView {
        CitizenView {
            id: id.masked(),
            at: Time::of(now),
            registry: citizen.map(|c| RegistryView {
                status: status_name(c.status).into(),
                full_name: c.full_name.clone(),
                phone: c.phone.masked(),
            }),
            account: account.map(|a| AccountView { activated_at: Time::of(a.activated_at), phone: a.phone.masked() }),
            limits,
            activations,
            last_otp_sent_at: last_otp.map(Time::of),
        }
    }

    /// The report as text, in `lang`.
    pub fn render(&self, lang: Lang) -> String {
        let vi = lang == Lang::Vi;
        let t = |v: &'static str, e: &'static str| if vi { v } else { e };
        let mut o = String::new();
        let _ = writeln!(o, "{} {}  ({} {})", t("Số định danh", "ID number"), self.id, t("lúc", "at"), self.at.local);
        match &self.registry {
            Some(r) => {
                let status = match (r.status.as_str(), vi) {
                    ("approved", true) => "đã duyệt",
                    ("pending", true) => "chờ duyệt",
                    ("removed", true) => "đã bị gỡ khỏi danh sách (không thể kích hoạt)",
                    ("removed", false) => "removed (cannot activate)",
                    (s, _) => {
                        if s == "approved" {
                            "approved"
                        } else {
                            "pending"
                        }
                    }
                };
                let _ = writeln!(
                    o,
                    "  {}: {} — {}, {} {}",
                    t("Danh sách", "Registry"),
                    status,
                    r.full_name,
                    t("SĐT", "phone"),
                    r.phone
                );
            }
            None => {
                let _ = writeln!(o, "  {}: {}", t("Danh sách", "Registry"), t("không có", "not listed"));
            }
        }
        match &self.account {
            Some(a) => {
                let _ = writeln!(
                    o,
                    "  {}: {} {} ({} {})",
                    t("Tài khoản", "Account"),
                    t("đã kích hoạt lúc", "activated at"),
                    a.activated_at.local,
                    t("SĐT", "phone"),
                    a.phone
                );
            }
            None => {
                let _ = writeln!(o, "  {}: {}", t("Tài khoản", "Account"), t("chưa kích hoạt", "not activated"));
            }
        }
        let last = self.last_otp_sent_at.as_ref().map(|x| x.local.as_str());
        let _ = writeln!(
            o,
            "  {}: {}",
            t("Mã OTP gửi gần nhất", "Last code sent"),
            last.unwrap_or(t("không có trong 24 giờ qua", "none in the past 24 hours"))
        );
        let _ = writeln!(o, "{}", t("Khoá và giới hạn:", "Locks and caps:"));
        let mut any = false;
        for l in &self.limits {
            if l.used == 0 && l.until.is_none() && l.locks == 0 {
                continue;
            }
            any = true;
            let label = limit_label(&l.name, vi);
            let pool = match (l.pool.as_deref(), vi) {
                (Some("own"), true) => " (từ SĐT đăng ký)",
                (Some("own"), false) => " (from the registered phone)",
                (Some(_), true) => " (từ SĐT khác)",
                (Some(_), false) => " (from other phones)",
                (None, _) => "",
            };
            let mut state = match &l.until {
                Some(u) => format!("{} {}", t("BỊ KHOÁ đến", "LOCKED until"), u.local),
                None => t("chưa khoá", "not locked").to_string(),
            };
            if l.locks > 0 {
                let _ = write!(state, " ({} {})", t("số lần đã khoá liên tiếp:", "locks in a row:"), l.locks);
            }
            let _ = writeln!(o, "  - {label}{pool}: {}/{} — {state}", l.used, l.max);
        }
        if !any {
            let _ = writeln!(o, "  {}", t("không có", "none"));
        }
        let _ = writeln!(o, "{}", t("Phiên đang làm dở:", "Conversations in progress:"));
        if self.activations.is_empty() {
            let _ = writeln!(o, "  {}", t("không có", "none"));
        }
        for a in &self.activations {
            let _ = writeln!(
                o,
                "  - {} {}: {} {}, {} {}{}",
                t("SĐT gọi", "calling phone"),
                a.caller,
                t("bước", "step"),
                a.state,
                t("hoạt động gần nhất", "last active"),
                a.last_activity.local,
                if a.idle {
                    t(" (đã quá hạn, sẽ bắt đầu lại)", " (idle: restarts at the next input)")
                } else {
                    ""
                }
            );
            if let Some(s) = &a.started_at {
                let _ = writeln!(o, "    {} {}", t("bắt đầu lúc", "started at"), s.local);
            }
            if let Some(p) = &a.phone {
                let _ = writeln!(o, "    {} {}", t("mã gửi tới SĐT", "code sent to"), p);
            }
            let code = match (a.code.as_str(), &a.code_valid_until) {
                ("pending", Some(u)) => format!(
                    "{} {} ({} {})",
                    t("mã còn hiệu lực đến", "code valid until"),
                    u.local,
                    a.code_wrong,
                    t("lần nhập sai", "wrong tries")
                ),
                ("verified", _) => t("mã đã xác thực", "code verified").to_string(),
                ("expired", _) => t("mã đã hết hạn", "code expired").to_string(),
                _ => t("chưa có mã", "no code").to_string(),
            };
            let _ = writeln!(o, "    {code}; {} {}", t("số mã đã gửi:", "codes sent:"), a.codes_sent);
        }
        o
    }
}

fn limit_label(name: &str, vi: bool) -> &'static str {
    match (name, vi) {
        ("login", true) => "Đăng nhập sai liên tiếp",
        ("login", false) => "Failed log-ins in a row",
        ("recovery", true) => "Trả lời câu hỏi bảo mật sai liên tiếp (quên mật khẩu)",
        ("recovery", false) => "Wrong security answers in a row (forgot password)",
        ("otp_id_15m", true) => "Mã OTP đã gửi trong 15 phút",
        ("otp_id_15m", false) => "Codes sent in 15 minutes",
        ("otp_id_day", true) => "Mã OTP đã gửi trong ngày",
        ("otp_id_day", false) => "Codes sent in a day",
        ("wrong_code", true) => "Nhập sai mã OTP trong ngày",
        ("wrong_code", false) => "Wrong codes in a day",
        ("nolookup_d", true) => "Tra cứu không thành công trong ngày",
        ("nolookup_d", false) => "Lookups without a code in a day",
        ("otp_phone", true) => "Mã OTP gửi tới SĐT đăng ký trong 1 giờ",
        ("otp_phone", false) => "Codes sent to the registered phone in an hour",
        ("lookup_h", true) => "Tra cứu từ SĐT đăng ký trong 1 giờ",
        ("lookup_h", false) => "Lookups from the registered phone in an hour",
        ("lookup_d", true) => "Tra cứu từ SĐT đăng ký trong ngày",
        ("lookup_d", false) => "Lookups from the registered phone in a day",
        ("nolookup_h", true) => "Tra cứu không thành công từ SĐT đăng ký trong 1 giờ",
        ("nolookup_h", false) => "Lookups without a code from the registered phone in an hour",
        (_, true) => "Giới hạn khác",
        (_, false) => "Other limit",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_shown_in_vietnam_and_utc() {
        // 2026-11-30T00:00:00Z is 07:00 in Ha Noi.
        let t = Time::of(Millis(1_795_996_800_000));
        assert_eq!((t.local.as_str(), t.utc.as_str()), ("07:00 30/11/2026", "2026-11-30T00:00:00Z"));
    }

    #[test]
    fn a_report_shows_a_lock_until_when_and_nothing_secret() {
        let now = Millis(1_795_996_800_000);
        let id = NationalId::parse_shape("001099012345").unwrap();
        let phone = Msisdn::parse("0912345678").unwrap();
        let citizen = Citizen {
            national_id: id.clone(),
            phone: phone.clone(),
            full_name: "Nguyễn Văn An".into(),
            status: crate::engine::CitizenStatus::Removed,
        };
        let policy = crate::engine::Policy::default();
        let w = &policy.watched(&id, Some(&phone))[1];
        let tally =
            Tally { locked_until: Some(now.plus(std::time::Duration::from_secs(900))), locks: 1, ..Tally::default() };
        let limits = vec![LimitView::of(w, &tally, now)];
        let view = CitizenView::new(&id, now, Some(&citizen), None, limits, Vec::new(), None);
        let vi = view.render(Lang::Vi);
        assert!(vi.contains("BỊ KHOÁ đến 07:15 30/11/2026") && vi.contains("từ SĐT khác"), "{vi}");
        assert!(vi.contains("đã bị gỡ khỏi danh sách"), "{vi}");
        let en = view.render(Lang::En);
        assert!(en.contains("LOCKED until 07:15") && en.contains("removed (cannot activate)"), "{en}");
        for text in [vi, en] {
            assert!(!text.contains("001099012345") && !text.contains("912345678"), "{text}");
        }
    }
}
