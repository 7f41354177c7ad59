//! Operational metrics, served as Prometheus text (`GET /metrics`, exposition format 0.0.4) by the
//! `prometheus` crate. One process-wide set, so every part of the service counts into the same place.
//!
//! Nothing personal is a label or a value: labels are channel kinds, flow state names, outcomes, audit
//! event names and limit names, all from fixed sets (bounded cardinality). See the README's "Metrics"
//! section for what each means and the queries worth a dashboard.

// The definitions are constants: `expect` fails only on a programming error (a name twice, a bad
// name), which the first test that renders the metrics catches.
#![allow(clippy::expect_used)]

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Buckets for hop, commit and flush latencies: 0.25 ms to 10 s.
const LATENCY_BUCKETS: &[f64] =
    &[0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

pub struct Metrics {
    registry: Registry,
    /// Hops answered, by channel, the state the conversation stands at after it, and outcome (`con`,
    /// `end`, `replay`, `lost`, `busy`, `fault`, `timeout`).
    pub hops: IntCounterVec,
    /// Time from a hop's arrival to its reply, by channel.
    pub hop_seconds: HistogramVec,
    pub otp_sent: IntCounter,
    pub otp_verified: IntCounter,
    /// Wrong, expired or exhausted codes, by reason.
    pub otp_failed: IntCounterVec,
    /// Log-in locks started.
    pub lockouts: IntCounter,
    /// Requests refused by an abuse limit, by the limit's name (or the audit event that reported it).
    pub rate_limited: IntCounterVec,
    /// Audit events committed, by event name.
    pub audit_events: IntCounterVec,
    pub sms_sent: IntCounter,
    /// SMS attempts that failed, by what became of the message (`retry`, `parked`, `failed`, `in_doubt`).
    pub sms_failures: IntCounterVec,
    /// Messages in the outbox not yet handed to the gateway (read at scrape time).
    pub outbox_backlog: IntGauge,
    /// Steps waiting for a hashing slot, and steps hashing now.
    pub hashing_waiting: IntGauge,
    pub hashing_running: IntGauge,
    /// Hops refused at once because the queued work passed its bound.
    pub overloaded: IntCounterVec,
    /// A conversation commit (transaction and the wait for it to be on disk).
    pub commit_seconds: Histogram,
    /// One group flush of the store (what every waiting commit shares).
    pub flush_seconds: Histogram,
    /// A commit's transaction alone (before the wait for the flush).
    pub transaction_seconds: Histogram,
    /// Write errors of the store; and 1 while the store accepts writes, 0 while it does not.
    pub store_errors: IntCounter,
    pub store_writable: IntGauge,
    /// The activation funnel per flow state: `entered`, `completed` (left forward), `refused` (an entry
    /// re-prompted), `abandoned` (a new dial started over from it).
    pub steps: IntCounterVec,
    /// Resident memory of the process (read at scrape time, Linux).
    pub rss: IntGauge,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("metric definition");
    registry.register(Box::new(c.clone())).expect("metric registered once");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric definition");
    registry.register(Box::new(c.clone())).expect("metric registered once");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("metric definition");
    registry.register(Box::new(g.clone())).expect("metric registered once");
    g
}

fn histogram(registry: &Registry, name: &str, help: &str) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))
        .expect("metric definition");
    registry.register(Box::new(h.clone())).expect("metric registered once");
    h
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let hop_seconds = HistogramVec::new(
            HistogramOpts::new("kichhoat_hop_duration_seconds", "Time from a hop's arrival to its reply")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["channel"],
        )
        .expect("metric definition");
        r.register(Box::new(hop_seconds.clone())).expect("metric registered once");
        Metrics {
            hops: counter_vec(
                &r,
                "kichhoat_hops_total",
                "Hops answered, by channel, the state after the hop and outcome",
                &["channel", "state", "outcome"],
            ),
            hop_seconds,
            otp_sent: counter(&r, "kichhoat_otp_sent_total", "One-time codes issued (an SMS queued)"),
            otp_verified: counter(&r, "kichhoat_otp_verified_total", "One-time codes entered correctly"),
            otp_failed: counter_vec(
                &r,
                "kichhoat_otp_failed_total",
                "One-time codes refused, by reason (wrong, expired, exhausted)",
                &["reason"],
            ),
            lockouts: counter(&r, "kichhoat_login_lockouts_total", "Log-in locks started"),
            rate_limited: counter_vec(
                &r,
                "kichhoat_rate_limited_total",
                "Requests refused by an abuse limit, by limit",
                &["limit"],
            ),
            audit_events: counter_vec(&r, "kichhoat_audit_events_total", "Audit events committed", &["event"]),
            sms_sent: counter(&r, "kichhoat_sms_sent_total", "SMS taken by the gateway"),
            sms_failures: counter_vec(
                &r,
                "kichhoat_sms_failures_total",
                "SMS attempts that failed, by what became of the message",
                &["fate"],
            ),
            outbox_backlog: gauge(&r, "kichhoat_outbox_backlog", "SMS queued and not yet taken by the gateway"),
            hashing_waiting: gauge(&r, "kichhoat_hashing_queue_depth", "Steps waiting for a hashing slot"),
            hashing_running: gauge(&r, "kichhoat_hashing_running", "Steps hashing (argon2id) now"),
            overloaded: counter_vec(
                &r,
                "kichhoat_overloaded_total",
                "Hops answered 'busy' at once because queued work passed its bound",
                &["channel"],
            ),
            commit_seconds: histogram(
                &r,
                "kichhoat_store_commit_duration_seconds",
                "A conversation commit, until it is on disk",
            ),
            flush_seconds: histogram(&r, "kichhoat_store_flush_duration_seconds", "One group flush of the store"),
            transaction_seconds: histogram(
                &r,
                "kichhoat_store_transaction_duration_seconds",
                "A commit's transaction, before the wait for its flush",
            ),
            store_errors: counter(&r, "kichhoat_store_errors_total", "Store operations that failed"),
            store_writable: gauge(&r, "kichhoat_store_writable", "1 while the store accepts writes, else 0"),
            steps: counter_vec(
                &r,
                "kichhoat_step_total",
                "The funnel per flow state: entered, completed, refused, abandoned",
                &["state", "event"],
            ),
            rss: gauge(&r, "process_resident_memory_bytes", "Resident memory size in bytes"),
            registry: r,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        if let Some(rss) = resident_bytes() {
            self.rss.set(rss as i64);
        }
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail on I/O; a metric the encoder refuses is left out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Counts what a committed audit event means for the operator's counters.
    pub fn audited(&self, event: &str) {
        self.audit_events.with_label_values(&[event]).inc();
        match event {
            "otp_sent" => self.otp_sent.inc(),
            "otp_verified" => self.otp_verified.inc(),
            "otp_wrong" => self.otp_failed.with_label_values(&["wrong"]).inc(),
            "otp_expired" => self.otp_failed.with_label_values(&["expired"]).inc(),
            "otp_exhausted" => self.otp_failed.with_label_values(&["exhausted"]).inc(),
            "login_locked" => self.lockouts.inc(),
            "rate_limited" | "otp_send_limit" => self.rate_limited.with_label_values(&[event]).inc(),
            _ => {}
        }
    }

    pub fn hop(&self, channel: &str, state: &str, outcome: &str) {
        self.hops.with_label_values(&[channel, state, outcome]).inc();
    }

    pub fn hop_took(&self, channel: &str, took: Duration) {
        self.hop_seconds.with_label_values(&[channel]).observe(took.as_secs_f64());
    }

    pub fn step(&self, state: &str, event: &str) {
        self.steps.with_label_values(&[state, event]).inc();
    }
}

/// The process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Resident set size from `/proc/self/statm` (Linux); `None` elsewhere.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the system and touches no memory of ours.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(4096) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_family_in_prometheus_text() {
        METRICS.hop("africastalking", "menu", "con");
        METRICS.hop_took("africastalking", Duration::from_millis(3));
        METRICS.audited("otp_sent");
        METRICS.step("act_id", "entered");
        let text = METRICS.render();
        for family in [
            "# TYPE kichhoat_hops_total counter",
            "kichhoat_hops_total{channel=\"africastalking\",outcome=\"con\",state=\"menu\"}",
            "# TYPE kichhoat_hop_duration_seconds histogram",
            "kichhoat_otp_sent_total",
            "kichhoat_step_total{event=\"entered\",state=\"act_id\"}",
            "kichhoat_hashing_queue_depth",
            "kichhoat_store_flush_duration_seconds_bucket",
            "process_resident_memory_bytes",
        ] {
            assert!(text.contains(family), "{family} missing from:\n{text}");
        }
    }
}
