//! Outgoing SMS through a Kannel gateway: [`KannelSender`] calls smsbox's `sendsms` CGI
//! (`GET /cgi-bin/sendsms?username=&password=&from=&to=&text=…`).
//!
//! It owns the request (credentials, sender, recipient, coding, and a delivery-report request whose
//! `dlr-url` is signed so reports cannot be forged, see [`super::dlr`]), the reading of Kannel's answer
//! into the worker's outcomes, and logging without secrets:
//!
//! - `2xx` (`0: Accepted for delivery`, `3: Queued for later delivery`) → [`Delivery::Sent`];
//! - `4xx` (bad credentials or parameters) → [`SendError::Permanent`]; any other non-2xx, non-5xx answer
//!   (a redirect: not smsbox) too;
//! - `5xx` (a temporary fault) and a connection that could not be made (refused: smsbox down; DNS)
//!   → [`SendError::Temporary`]: Kannel did not take the message;
//! - a timeout or a broken connection once the request may have left → [`SendError::Unknown`]: Kannel
//!   may have taken it.
//!
//! sendsms has no idempotency key, so this sender is not idempotent: the worker hands it each message at
//! most once (see [`super::worker`]). Every request uses a fresh connection, so a failure to connect is
//! never confused with a kept-alive connection that broke after the request went out.
//!
//! Texts go out in GSM-7 without diacritics and without a coding parameter by default; with
//! [`Charset::Ucs2`] a text outside GSM-7 keeps its diacritics and is sent with `coding=2&charset=UTF-8`.
//!
//! The request URL carries the password and the text (an OTP): it is never logged, and reqwest's errors
//! are stripped of it. Logs name the message id, the masked recipient and Kannel's status line.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::{Delivery, OutgoingSms, SendError, SendFuture, SmsSender};
use crate::crypto::Crypto;
use crate::domain::text::gsm7_len;
use crate::domain::{Msisdn, Secret};
use crate::flow::catalog::to_gsm7;
use crate::flow::Charset;

/// How long to wait for a TCP connection to smsbox (a private gateway next door answers in milliseconds).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a whole sendsms request may take; under the worker's `SEND_TIMEOUT`, so the sender's own
/// reading of what happened (connect failure or answer missing) is what counts.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Every delivery report Kannel can send: delivered (1), undelivered (2), buffered (4), submitted to the
/// SMSC (8), rejected by the SMSC (16).
pub const DLR_MASK: u32 = 31;
/// Characters of Kannel's answer kept for logs and the outbox's `last_error`.
const STATUS_LINE_MAX: usize = 120;

/// The audit event of a Kannel delivery report type (the `%d` of the `dlr-url`).
pub fn dlr_event(status: u32) -> Option<&'static str> {
    match status {
        1 => Some("sms_delivered"),
        2 => Some("sms_undelivered"),
        4 => Some("sms_buffered"),
        8 => Some("sms_submitted"),
        16 => Some("sms_rejected"),
        _ => None,
    }
}

/// Where and how to reach smsbox.
#[derive(Debug, Clone)]
pub struct KannelConfig {
    /// The sendsms URL, e.g. `http://127.0.0.1:13013/cgi-bin/sendsms`. Parameters already in it (such as
    /// `smsc=…`) are kept and the message's are appended.
    pub url: String,
    pub user: String,
    pub password: Secret,
    /// The sender: a short code or a brand name. `None`: Kannel's own default.
    pub from: Option<String>,
    /// Our delivery-report endpoint as Kannel reaches it, e.g. `http://10.0.0.5:8080/sms/kannel/dlr`.
    pub dlr_url: String,
    pub charset: Charset,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum KannelError {
    #[error("--kannel-url {url:?}: {why}")]
    Url { url: String, why: String },
    #[error("--kannel-dlr-url {url:?}: {why}")]
    DlrUrl { url: String, why: String },
    #[error("HTTP client: {0}")]
    Client(String),
}

/// Checks a URL given for Kannel: plain `http` (no TLS is built in: a private Kannel speaks HTTP), a host.
fn http_url(given: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(given).map_err(|e| e.to_string())?;
    if url.scheme() != "http" {
        return Err(format!(
            "the scheme must be http, not {} (TLS is not built in: reach a private Kannel over plain HTTP)",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    Ok(url)
}

/// A URL with what could hold a credential left out (user info, query): for start-up logs.
pub fn display_url(given: &str) -> String {
    match reqwest::Url::parse(given) {
        Ok(u) => {
            format!(
                "{}://{}{}",
                u.scheme(),
                u.host_str().unwrap_or_default(),
                u.port().map(|p| format!(":{p}")).unwrap_or_default()
            ) + u.path()
        }
        Err(_) => "(not a URL)".into(),
    }
}

pub struct KannelSender {
    client: reqwest::Client,
    url: reqwest::Url,
    user: String,
    password: Secret,
    from: Option<String>,
    dlr_url: String,
    charset: Charset,
    crypto: Arc<Crypto>,
}

impl KannelSender {
    pub fn new(config: KannelConfig, crypto: Arc<Crypto>) -> Result<KannelSender, KannelError> {
        let url = http_url(&config.url).map_err(|why| KannelError::Url { url: display_url(&config.url), why })?;
        let dlr_bad = |why: String| KannelError::DlrUrl { url: config.dlr_url.clone(), why };
        let dlr = reqwest::Url::parse(&config.dlr_url).map_err(|e| dlr_bad(e.to_string()))?;
        if !matches!(dlr.scheme(), "http" | "https") || dlr.host_str().is_none_or(str::is_empty) {
            return Err(dlr_bad("an http or https URL with a host, which Kannel can reach".into()));
        }
        if config.dlr_url.contains(['#', '%']) {
            // A fragment would swallow the parameters appended; Kannel reads `%` as its own escapes.
            return Err(dlr_bad("no '#' or '%' allowed".into()));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            // A fresh connection per message: a connection error then always means "not sent".
            .pool_max_idle_per_host(0)
            // The request holds the password: never follow it elsewhere, nor through a proxy.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| KannelError::Client(e.without_url().to_string()))?;
        Ok(KannelSender {
            client,
            url,
            user: config.user,
            password: config.password,
            from: config.from,
            dlr_url: config.dlr_url,
            charset: config.charset,
            crypto,
        })
    }

    /// The address Kannel calls with the delivery reports of message `id` to `to`:
    /// `<dlr-url>?id=<id>&to=<+84…>&status=%d&sig=<hex MAC of (id, to)>`. Kannel replaces `%d` with the
    /// report type. `+` is left as is: Kannel passes it through and the endpoint reads the phone either
    /// way (a `%2B` would meet Kannel's own `%` escapes).
    pub fn dlr_url_for(&self, id: &str, to: &Msisdn) -> String {
        let sig = hex::encode(self.crypto.dlr_mac(id, to.as_str()));
        let sep = if self.dlr_url.contains('?') { '&' } else { '?' };
        format!("{}{sep}id={id}&to={}&status=%d&sig={sig}", self.dlr_url, to.e164())
    }

    /// The text as it goes out, and whether it needs `coding=2` (UCS-2).
    fn encode(&self, text: &str) -> (String, bool) {
        match self.charset {
            Charset::Ucs2 if gsm7_len(text).is_none() => (text.to_string(), true),
            _ => (to_gsm7(text), false),
        }
    }

    /// The sendsms request for `sms`. It holds the password and the text: never log it.
    fn request(&self, sms: &OutgoingSms) -> reqwest::Url {
        let (text, ucs2) = self.encode(sms.text.expose());
        let dlr_url = self.dlr_url_for(&sms.id, &sms.to);
        let mut url = self.url.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("username", &self.user).append_pair("password", self.password.expose());
            if let Some(from) = &self.from {
                q.append_pair("from", from);
            }
            q.append_pair("to", &sms.to.e164()).append_pair("text", &text);
            if ucs2 {
                q.append_pair("coding", "2").append_pair("charset", "UTF-8");
            }
            q.append_pair("dlr-mask", &DLR_MASK.to_string()).append_pair("dlr-url", &dlr_url);
        }
        url
    }

    async fn deliver(&self, sms: &OutgoingSms) -> Result<Delivery, SendError> {
        let to = sms.to.masked();
        let answer = match self.client.get(self.request(sms)).send().await {
            Ok(answer) => answer,
            Err(e) => {
                let connect = e.is_connect();
                let why = describe(e.without_url());
                warn!(sms_id = %sms.id, to = %to, error = %why, "kannel: sendsms failed");
                return Err(if connect {
                    SendError::Temporary(format!("kannel unreachable: {why}"))
                } else {
                    SendError::Unknown(format!("kannel may have taken it: {why}"))
                });
            }
        };
        let status = answer.status();
        // The status is known; the body only explains it (a body that does not arrive changes nothing).
        let line = status_line(&answer.text().await.unwrap_or_default());
        let said = format!("{} {line}", status.as_u16());
        if status.is_success() {
            info!(sms_id = %sms.id, to = %to, kannel = %said, "kannel: sendsms accepted");
            return Ok(Delivery::Sent);
        }
        warn!(sms_id = %sms.id, to = %to, kannel = %said, "kannel: sendsms refused");
        if status.is_server_error() {
            Err(SendError::Temporary(format!("kannel: {said}")))
        } else {
            Err(SendError::Permanent(format!("kannel: {said}")))
        }
    }
}

impl SmsSender for KannelSender {
    fn send<'a>(&'a self, sms: &'a OutgoingSms) -> SendFuture<'a> {
        Box::pin(self.deliver(sms))
    }

    /// sendsms has no idempotency key: the same message handed over twice is sent twice.
    fn idempotent(&self) -> bool {
        false
    }
}

/// A reqwest error (already stripped of its URL) and its innermost cause, e.g. "error sending request:
/// Connection refused (os error 111)".
fn describe(e: reqwest::Error) -> String {
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    let mut last = None;
    while let Some(c) = cause {
        last = Some(c.to_string());
        cause = c.source();
    }
    match last {
        Some(root) => format!("{e}: {root}"),
        None => e.to_string(),
    }
}

/// The first line of Kannel's answer, without control characters, cut to [`STATUS_LINE_MAX`].
fn status_line(body: &str) -> String {
    body.lines().next().unwrap_or_default().chars().filter(|c| !c.is_control()).take(STATUS_LINE_MAX).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{stored_mac_eq, HashCost};

    fn config() -> KannelConfig {
        KannelConfig {
            url: "http://127.0.0.1:13013/cgi-bin/sendsms".into(),
            user: "kichhoat".into(),
            password: Secret::new("pw-Zk3!"),
            from: Some("VNeID".into()),
            dlr_url: "http://10.0.0.5:8080/sms/kannel/dlr".into(),
            charset: Charset::Gsm7,
            connect_timeout: CONNECT_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
        }
    }

    fn crypto() -> Arc<Crypto> {
        Arc::new(Crypto::from_master(&[5; 32], HashCost::DANGER_TEST_ONLY).unwrap())
    }

    fn sender(config: KannelConfig) -> KannelSender {
        KannelSender::new(config, crypto()).unwrap()
    }

    fn sms(text: &str) -> OutgoingSms {
        OutgoingSms {
            id: "3f9a1c2b7d4e5f60-7".into(),
            to: Msisdn::parse("0912345678").unwrap(),
            text: Secret::new(text),
            purpose: crate::engine::SmsPurpose::Otp,
            at: crate::clock::Millis(0),
        }
    }

    fn params(url: &reqwest::Url) -> Vec<(String, String)> {
        url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
    }

    fn param(url: &reqwest::Url, name: &str) -> Option<String> {
        params(url).into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    #[test]
    fn the_dlr_url_names_the_message_and_recipient_leaves_the_type_to_kannel_and_is_signed_for_both() {
        let s = sender(config());
        let to = Msisdn::parse("0912345678").unwrap();
        let url = s.dlr_url_for("3f9a1c2b7d4e5f60-7", &to);
        let (base, query) = url.split_once('?').unwrap();
        assert_eq!(base, "http://10.0.0.5:8080/sms/kannel/dlr");
        let fields: Vec<(&str, &str)> = query.split('&').map(|kv| kv.split_once('=').unwrap()).collect();
        let names: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
        assert_eq!(names, ["id", "to", "status", "sig"]);
        assert_eq!(fields[0].1, "3f9a1c2b7d4e5f60-7");
        assert_eq!(fields[1].1, "+84912345678");
        assert_eq!(fields[2].1, "%d", "Kannel's escape for the report type");
        assert!(stored_mac_eq(fields[3].1, &s.crypto.dlr_mac("3f9a1c2b7d4e5f60-7", to.as_str())));
        assert!(!stored_mac_eq(fields[3].1, &s.crypto.dlr_mac("3f9a1c2b7d4e5f60-8", to.as_str())));
        // A dlr-url that already has a query gets the fields appended to it.
        let s = sender(KannelConfig { dlr_url: "http://h/dlr?src=kannel".into(), ..config() });
        assert!(s.dlr_url_for("a-1", &to).starts_with("http://h/dlr?src=kannel&id=a-1&to="));
    }

    #[test]
    fn the_request_carries_credentials_sender_recipient_text_and_the_dlr_url_as_one_encoded_value() {
        let s = sender(config());
        let m = sms("Mã OTP kích hoạt tài khoản VNeID: 123456");
        let url = s.request(&m);
        assert_eq!(
            (url.scheme(), url.host_str(), url.port(), url.path()),
            ("http", Some("127.0.0.1"), Some(13013), "/cgi-bin/sendsms")
        );
        let names: Vec<String> = params(&url).into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["username", "password", "from", "to", "text", "dlr-mask", "dlr-url"]);
        assert_eq!(param(&url, "username").as_deref(), Some("kichhoat"));
        assert_eq!(param(&url, "password").as_deref(), Some("pw-Zk3!"));
        assert_eq!(param(&url, "from").as_deref(), Some("VNeID"));
        assert_eq!(param(&url, "to").as_deref(), Some("+84912345678"));
        assert_eq!(
            param(&url, "text").as_deref(),
            Some("Ma OTP kich hoat tai khoan VNeID: 123456"),
            "GSM-7, no diacritics"
        );
        assert_eq!(param(&url, "dlr-mask").as_deref(), Some("31"));
        assert_eq!(param(&url, "dlr-url"), Some(s.dlr_url_for(&m.id, &m.to)), "decodes to the whole dlr-url");
        let raw = url.query().unwrap();
        assert!(raw.contains("dlr-url=http%3A%2F%2F10.0.0.5%3A8080%2Fsms%2Fkannel%2Fdlr%3Fid%3D"), "{raw}");
        assert!(raw.contains("status%3D%25d"), "the % of %d is escaped in transit: {raw}");
        // No sender configured: no `from`, Kannel's default applies.
        let url = sender(KannelConfig { from: None, ..config() }).request(&m);
        assert_eq!(param(&url, "from"), None);
    }

    #[test]
    fn ucs2_keeps_diacritics_with_coding_2_only_for_a_text_outside_gsm7() {
        let s = sender(KannelConfig { charset: Charset::Ucs2, ..config() });
        let url = s.request(&sms("Mã OTP: 123456"));
        assert_eq!(param(&url, "text").as_deref(), Some("Mã OTP: 123456"));
        assert_eq!((param(&url, "coding").as_deref(), param(&url, "charset").as_deref()), (Some("2"), Some("UTF-8")));
        let url = s.request(&sms("Ma OTP: 123456"));
        assert_eq!(param(&url, "text").as_deref(), Some("Ma OTP: 123456"));
        assert_eq!((param(&url, "coding"), param(&url, "charset")), (None, None), "GSM-7 text needs no coding");
        let url = sender(config()).request(&sms("Mã OTP: 123456"));
        assert_eq!((param(&url, "coding"), param(&url, "charset")), (None, None), "gsm7 mode: never a coding");
    }

    #[test]
    fn a_kannel_url_that_is_not_plain_http_or_a_dlr_url_kannel_would_mangle_is_refused_at_start() {
        for (url, why) in [
            ("https://kannel:13013/cgi-bin/sendsms", "TLS"),
            ("ftp://kannel/cgi-bin/sendsms", "scheme"),
            ("kannel:13013/cgi-bin/sendsms", "scheme"),
            ("not a url", ""),
        ] {
            let err = KannelSender::new(KannelConfig { url: url.into(), ..config() }, crypto()).err().unwrap();
            assert!(err.to_string().starts_with("--kannel-url"), "{url}: {err}");
            assert!(err.to_string().contains(why), "{url}: {err}");
        }
        for dlr in ["/sms/kannel/dlr", "http://h/dlr#x", "http://h/dlr?x=%41", "mailto:a@b"] {
            let err = KannelSender::new(KannelConfig { dlr_url: dlr.into(), ..config() }, crypto()).err().unwrap();
            assert!(err.to_string().starts_with("--kannel-dlr-url"), "{dlr}: {err}");
        }
        assert!(KannelSender::new(
            KannelConfig { dlr_url: "https://kichhoat.example/sms/kannel/dlr".into(), ..config() },
            crypto()
        )
        .is_ok());
    }

    #[test]
    fn the_url_shown_in_logs_has_no_user_info_or_query() {
        assert_eq!(
            display_url("http://u:secret@kannel:13013/cgi-bin/sendsms?username=a&password=secret"),
            "http://kannel:13013/cgi-bin/sendsms"
        );
        assert_eq!(display_url("http://kannel/cgi-bin/sendsms"), "http://kannel/cgi-bin/sendsms");
        assert_eq!(display_url("::"), "(not a URL)");
    }

    #[test]
    fn kannels_status_line_is_its_first_line_without_control_characters_and_short() {
        assert_eq!(status_line("0: Accepted for delivery\n"), "0: Accepted for delivery");
        assert_eq!(status_line("3: Queued\u{1b}[31m for later\r\nmore"), "3: Queued[31m for later");
        assert_eq!(status_line(&"x".repeat(1000)).len(), STATUS_LINE_MAX);
        assert_eq!(status_line(""), "");
    }

    #[test]
    fn each_kannel_report_type_has_its_audit_event_and_others_none() {
        let events: Vec<_> = [1, 2, 4, 8, 16].into_iter().map(dlr_event).collect();
        assert_eq!(
            events,
            [
                Some("sms_delivered"),
                Some("sms_undelivered"),
                Some("sms_buffered"),
                Some("sms_submitted"),
                Some("sms_rejected")
            ]
        );
        for other in [0, 3, 31, 32] {
            assert_eq!(dlr_event(other), None);
        }
    }

    #[test]
    fn the_kannel_sender_says_it_is_not_idempotent() {
        assert!(!sender(config()).idempotent());
    }
}
