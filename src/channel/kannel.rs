//! Kannel's SMS gateway, inbound: an `sms-service` calls us once per SMS a citizen sends (`get-url`, or
//! `post-url` with the text as the body) and **the HTTP response body is the reply SMS**.
//!
//! An SMS has no session: the conversation of the phone is the session, shared with every other channel,
//! so an activation begun over USSD can be finished by SMS and the reverse. This channel's cursor says
//! only whether its last reply waits for an answer (it was not an END): then the next SMS answers that
//! prompt ([`Inbound::Text`]); otherwise it opens an exchange ([`Inbound::Open`]: it answers the step an
//! activation in progress waits at, else opens the menu whatever it says). A whole message that is a
//! keyword (`HUY`, `MENU`, `TRO GIUP`, in any case, with or without diacritics) is a [`Command`].
//!
//! Retries: Kannel asks again with the same message id (`%I`) when it got no answer. The retry key is a
//! keyed hash of the phone and that id, so a retry gets the stored reply and repeats nothing; a request
//! without an id gets a random key (it cannot be recognised as a retry).

use std::sync::Arc;

use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::{Channel, Derived};
use crate::crypto::Crypto;
use crate::domain::text::fold_diacritics;
use crate::domain::{Msisdn, Secret};
use crate::engine::{Command, Inbound, Medium, Reply};
use crate::flow::catalog::for_sms;
use crate::flow::Charset;
use crate::store::Cursor;

/// Longest text accepted, in bytes: a keypad phone's SMS of a few parts is far shorter.
pub const MAX_TEXT: usize = 1024;
/// Longest message id accepted (Kannel's `%I` is a 36-character UUID).
pub const MAX_ID: usize = 128;
/// Longest `to` accepted (a short code or a number).
pub const MAX_TO: usize = 32;

/// The fields of one inbound SMS as Kannel sent them, before they are checked: from the query
/// (`from=%p&to=%P&text=%a&id=%I`) and, for `post-url`, from the `X-Kannel-From`/`X-Kannel-To` headers
/// and the body.
#[derive(Debug, Default)]
pub struct Mo {
    pub from: Option<String>,
    pub to: Option<String>,
    pub id: Option<String>,
    /// May hold a password: never logged.
    pub text: Option<Secret>,
}

/// An inbound SMS the server understood.
pub struct Sms {
    pub phone: Msisdn,
    /// The number the citizen texted (our short code), when given. Not needed to answer.
    pub to: Option<String>,
    /// What the citizen typed, trimmed: may be a password. Never logged, never stored.
    pub text: Secret,
    retry: RetryOf,
}

/// What names an SMS among Kannel's retries of it.
enum RetryOf {
    /// Kannel's message id (`%I`): its retries carry the same.
    Id(String),
    /// No id was given: a random key, so the request is never taken for a retry of another.
    Unique([u8; 16]),
}

/// Why a request is refused with a 4xx: it is not Kannel's form.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadSms {
    #[error("from is missing")]
    NoFrom,
    #[error("from is not a Vietnamese mobile number")]
    Phone,
    #[error("text is too long")]
    Text,
    #[error("id is too long")]
    Id,
    #[error("to is too long")]
    To,
    #[error("a field is not valid UTF-8")]
    Encoding,
    #[error("the body's content type or charset is not supported")]
    Charset,
}

impl BadSms {
    /// The HTTP status of the refusal: 415 for a body in a charset we do not read, else 400.
    pub fn status(&self) -> u16 {
        match self {
            BadSms::Charset => 415,
            _ => 400,
        }
    }
}

impl Mo {
    /// The fields of a form-encoded query (`get-url`, or the query of a `post-url`).
    pub fn from_query(query: &str) -> Result<Mo, BadSms> {
        let mut mo = Mo::default();
        for (k, v) in decode_form(query)? {
            let slot = match k.as_str() {
                "from" => &mut mo.from,
                "to" => &mut mo.to,
                "id" => &mut mo.id,
                "text" => {
                    if mo.text.is_none() {
                        mo.text = Some(Secret::new(v));
                    }
                    continue;
                }
                _ => continue,
            };
            // The first of a repeated field counts, as with any form decoder.
            if slot.is_none() {
                *slot = Some(v);
            }
        }
        Ok(mo)
    }

    /// Checks the fields: `from` is required and must be a Vietnamese mobile; `text` (absent: empty) and
    /// `id` are bounded.
    pub fn parse(self) -> Result<Sms, BadSms> {
        let from = self.from.ok_or(BadSms::NoFrom)?;
        let phone = Msisdn::parse(&from).map_err(|_| BadSms::Phone)?;
        let text = self.text.map(|t| t.expose().trim().to_string()).unwrap_or_default();
        if text.len() > MAX_TEXT {
            return Err(BadSms::Text);
        }
        if self.to.as_ref().is_some_and(|t| t.len() > MAX_TO) {
            return Err(BadSms::To);
        }
        let retry = match self.id.map(|id| id.trim().to_string()).filter(|id| !id.is_empty()) {
            Some(id) if id.len() > MAX_ID => return Err(BadSms::Id),
            Some(id) => RetryOf::Id(id),
            None => {
                let mut nonce = [0u8; 16];
                rand::rngs::OsRng.fill_bytes(&mut nonce);
                RetryOf::Unique(nonce)
            }
        };
        Ok(Sms { phone, to: self.to, text: Secret::new(text), retry })
    }
}

/// Decodes `application/x-www-form-urlencoded` strictly: `+` is a space, `%XX` a byte, and a value whose
/// bytes are not UTF-8 refuses the whole request (a lossy decoder would turn it into a wrong input).
pub fn decode_form(query: &str) -> Result<Vec<(String, String)>, BadSms> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Result<String, BadSms> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
                (Some(hi), Some(lo)) => {
                    out.push((hi * 16 + lo) as u8);
                    i += 2;
                }
                // A lone `%` stands for itself, as browsers and Kannel's own decoder take it.
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| BadSms::Encoding)
}

/// The text of a `post-url` body, in the charset its `Content-Type` names (UTF-8 when none is named).
/// Kannel sends `text/plain; charset="UTF-8"` once `mo-recode` has recoded a UCS-2 message; without it a
/// UCS-2 message comes as `charset="UTF-16BE"`, also read. A binary (8-bit) message is refused.
pub fn decode_body(content_type: Option<&str>, body: &[u8]) -> Result<String, BadSms> {
    let (mime, charset) = match content_type {
        None => ("text/plain".to_string(), None),
        Some(ct) => {
            let mut parts = ct.split(';');
            let mime = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let charset = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("charset"))
                .map(|(_, v)| v.trim().trim_matches('"').to_ascii_lowercase());
            (mime, charset)
        }
    };
    if !mime.starts_with("text/") {
        return Err(BadSms::Charset);
    }
    match charset.as_deref() {
        None | Some("utf-8" | "utf8" | "us-ascii") => String::from_utf8(body.to_vec()).map_err(|_| BadSms::Encoding),
        Some("iso-8859-1" | "latin1") => Ok(body.iter().map(|&b| char::from(b)).collect()),
        Some("utf-16be" | "ucs-2" | "ucs2") => {
            if !body.len().is_multiple_of(2) {
                return Err(BadSms::Encoding);
            }
            let units = body.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units).collect::<Result<String, _>>().map_err(|_| BadSms::Encoding)
        }
        Some(_) => Err(BadSms::Charset),
    }
}

/// The command a whole message stands for, if it is one: any case, with or without diacritics,
/// surrounding spaces and punctuation ignored (`"Hủy."`, `" tro  giup "`, `"HELP!"`). A keyword inside a
/// longer message is not one.
pub fn keyword(text: &str) -> Option<Command> {
    let folded = fold_diacritics(text).to_uppercase();
    let words: Vec<&str> = folded.trim_matches(|c: char| !c.is_alphanumeric()).split_whitespace().collect();
    match words.join(" ").as_str() {
        "HUY" | "CANCEL" => Some(Command::Cancel),
        "MENU" => Some(Command::Menu),
        "TRO GIUP" | "TROGIUP" | "HELP" => Some(Command::Help),
        _ => None,
    }
}

/// The Kannel channel: retry keys and pseudonyms are keyed hashes under the service's key.
pub struct Kannel {
    crypto: Arc<Crypto>,
}

impl Kannel {
    pub fn new(crypto: Arc<Crypto>) -> Kannel {
        Kannel { crypto }
    }

    /// The keyed hash naming Kannel's message `id` from `phone`.
    fn id_mac(&self, phone: &Msisdn, id: &str) -> [u8; 32] {
        self.crypto.hop_mac(phone.as_str(), &format!("kannel:{id}"), "")
    }
}

/// Whether this channel's last reply to the phone waits for an answer (it was not an END). Holds no text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SmsCursor {
    #[serde(rename = "w")]
    waits: bool,
}

impl SmsCursor {
    fn read(c: &Cursor) -> Option<SmsCursor> {
        serde_json::from_str(&c.0).ok()
    }
    fn write(&self) -> Option<Cursor> {
        serde_json::to_string(self).ok().map(Cursor)
    }
}

impl Channel for Kannel {
    type Request = Sms;
    const KIND: &'static str = "sms";
    const MEDIUM: Medium = Medium::Sms;

    fn phone<'r>(&self, sms: &'r Sms) -> &'r Msisdn {
        &sms.phone
    }

    fn retry_key(&self, sms: &Sms) -> String {
        match &sms.retry {
            RetryOf::Id(id) => hex::encode(self.id_mac(&sms.phone, id)),
            RetryOf::Unique(nonce) => hex::encode(nonce),
        }
    }

    /// The message's pseudonym (its retries share it); `-` when Kannel gave no id.
    fn pseudonym(&self, sms: &Sms) -> String {
        match &sms.retry {
            RetryOf::Id(id) => hex::encode(&self.id_mac(&sms.phone, id)[..4]),
            RetryOf::Unique(_) => "-".into(),
        }
    }

    fn derive(&self, sms: &Sms, cursor: Option<&Cursor>, stored: Option<&Reply>) -> Derived {
        if let Some(reply) = stored {
            return Derived::Replay(reply.clone());
        }
        let text = sms.text.expose();
        if let Some(command) = keyword(text) {
            return Derived::Inbound(Inbound::Command(command, Secret::new(text)));
        }
        let waits = cursor.and_then(SmsCursor::read).is_some_and(|c| c.waits);
        let text = Secret::new(text);
        Derived::Inbound(if waits { Inbound::Text(text) } else { Inbound::Open(text) })
    }

    fn advance(&self, _sms: &Sms, _previous: Option<&Cursor>, reply: &Reply) -> Option<Cursor> {
        SmsCursor { waits: !reply.end }.write()
    }
}

/// The reply SMS for the configured charset: the body, and whether it needs UCS-2 (`X-Kannel-Coding: 2`).
pub fn response(reply: &Reply, charset: Charset) -> (String, bool) {
    for_sms(&reply.text, charset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::HashCost;

    fn kannel() -> Kannel {
        Kannel::new(Arc::new(Crypto::from_master(&[4; 32], HashCost::DANGER_TEST_ONLY).unwrap()))
    }

    fn sms(query: &str) -> Sms {
        Mo::from_query(query).unwrap().parse().unwrap()
    }

    fn is_text(d: &Derived, want: &str) -> bool {
        matches!(d, Derived::Inbound(Inbound::Text(t)) if t.expose() == want)
    }

    fn is_open(d: &Derived, want: &str) -> bool {
        matches!(d, Derived::Inbound(Inbound::Open(t)) if t.expose() == want)
    }

    #[test]
    fn keywords_are_whole_messages_in_any_case_with_or_without_diacritics() {
        for cancel in ["HUY", "huy", "Hủy", "HỦY", "Huỷ", " huy. ", "CANCEL", "cancel!"] {
            assert_eq!(keyword(cancel), Some(Command::Cancel), "{cancel:?}");
        }
        for menu in ["MENU", "menu", " Menu ?"] {
            assert_eq!(keyword(menu), Some(Command::Menu), "{menu:?}");
        }
        for help in ["TRO GIUP", "tro giup", "Trợ giúp", "TRỢ GIÚP", "TROGIUP", "tro   giup", "HELP", "help?"] {
            assert_eq!(keyword(help), Some(Command::Help), "{help:?}");
        }
        for not in ["huy bo", "menu 1", "Xin chao", "1", "", "TRO", "helps", "Huy Hoang"] {
            assert_eq!(keyword(not), None, "{not:?}");
        }
    }

    #[test]
    fn the_query_is_decoded_as_a_form_with_plus_as_a_space() {
        let m = Mo::from_query("from=%2B84912345678&to=8088&text=Ph%E1%BB%9F+b%C3%B2&id=abc&x=1").unwrap();
        assert_eq!(m.from.as_deref(), Some("+84912345678"));
        assert_eq!(m.to.as_deref(), Some("8088"));
        assert_eq!(m.text.as_ref().map(|t| t.expose()), Some("Phở bò"));
        assert_eq!(m.id.as_deref(), Some("abc"));
        assert_eq!(Mo::from_query("text=%FF%FE&from=0912345678").unwrap_err(), BadSms::Encoding);
        assert_eq!(Mo::from_query("text=50%&from=0912345678").unwrap().text.unwrap().expose(), "50%");
    }

    #[test]
    fn from_takes_every_vietnamese_form_and_refuses_anything_else() {
        for from in ["+84912345678", "84912345678", "0912345678", "+84 91 234 5678"] {
            assert_eq!(sms(&format!("from={}&text=1", from.replace('+', "%2B"))).phone.as_str(), "84912345678");
        }
        let refused = |q: &str| Mo::from_query(q).unwrap().parse().err();
        assert_eq!(refused("text=hi"), Some(BadSms::NoFrom));
        assert_eq!(refused("from=%2B14155550123&text=hi"), Some(BadSms::Phone));
        assert_eq!(refused("from=0241234567&text=hi"), Some(BadSms::Phone), "a landline");
        assert_eq!(refused(&format!("from=0912345678&text={}", "a".repeat(MAX_TEXT + 1))), Some(BadSms::Text));
        assert!(refused(&format!("from=0912345678&text={}", "a".repeat(MAX_TEXT))).is_none());
        assert_eq!(refused(&format!("from=0912345678&id={}", "i".repeat(MAX_ID + 1))), Some(BadSms::Id));
        assert_eq!(refused(&format!("from=0912345678&to={}", "9".repeat(MAX_TO + 1))), Some(BadSms::To));
        assert_eq!(sms("from=0912345678").text.expose(), "", "no text is an empty SMS");
        assert_eq!(sms("from=0912345678&text=+Abc*1234x%0A").text.expose(), "Abc*1234x", "trimmed");
    }

    #[test]
    fn a_body_is_read_in_the_charset_its_content_type_names() {
        assert_eq!(decode_body(None, "Phở".as_bytes()).unwrap(), "Phở");
        assert_eq!(decode_body(Some("text/plain; charset=\"UTF-8\""), "Phở".as_bytes()).unwrap(), "Phở");
        assert_eq!(decode_body(Some("text/plain"), "Phở".as_bytes()).unwrap(), "Phở");
        let utf16: Vec<u8> = "Phở".encode_utf16().flat_map(u16::to_be_bytes).collect();
        assert_eq!(decode_body(Some("text/plain; charset=\"UTF-16BE\""), &utf16).unwrap(), "Phở");
        assert_eq!(decode_body(Some("text/plain; charset=ISO-8859-1"), b"caf\xe9").unwrap(), "café");
        assert_eq!(decode_body(Some("text/plain"), b"\xff\xfe").unwrap_err(), BadSms::Encoding);
        assert_eq!(decode_body(Some("application/octet-stream"), b"x").unwrap_err(), BadSms::Charset);
        assert_eq!(decode_body(Some("text/plain; charset=koi8-r"), b"x").unwrap_err(), BadSms::Charset);
    }

    #[test]
    fn the_same_id_is_the_same_retry_key_and_no_id_never_repeats() {
        let k = kannel();
        let a = sms("from=0912345678&text=1&id=m-1");
        let b = sms("from=%2B84912345678&text=1&id=m-1");
        assert_eq!(k.retry_key(&a), k.retry_key(&b), "the same message whatever the form of the number");
        assert_ne!(k.retry_key(&a), k.retry_key(&sms("from=0912345678&text=1&id=m-2")));
        assert_ne!(k.retry_key(&a), k.retry_key(&sms("from=0987654321&text=1&id=m-1")), "another phone");
        let (x, y) = (sms("from=0912345678&text=1"), sms("from=0912345678&text=1"));
        assert_ne!(k.retry_key(&x), k.retry_key(&y));
        assert_eq!(k.retry_key(&x), k.retry_key(&x));
        assert_eq!(k.pseudonym(&x), "-");
        assert_eq!(k.pseudonym(&a), k.pseudonym(&b));
    }

    #[test]
    fn a_stored_reply_replays_then_keywords_then_the_cursor_decides_text_or_open() {
        let k = kannel();
        let waits = k.advance(&sms("from=0912345678"), None, &Reply { text: "menu".into(), end: false });
        let ended = k.advance(&sms("from=0912345678"), None, &Reply { text: "help".into(), end: true });
        let stored = Reply { text: "before".into(), end: false };
        let one = sms("from=0912345678&text=1");
        assert!(matches!(k.derive(&one, waits.as_ref(), Some(&stored)), Derived::Replay(r) if r == stored));
        let huy = sms("from=0912345678&text=H%E1%BB%A7y");
        assert!(matches!(k.derive(&huy, waits.as_ref(), None), Derived::Inbound(Inbound::Command(Command::Cancel, _))));
        assert!(is_text(&k.derive(&one, waits.as_ref(), None), "1"));
        assert!(is_open(&k.derive(&one, ended.as_ref(), None), "1"));
        assert!(is_open(&k.derive(&one, None, None), "1"), "a first SMS opens");
        assert!(is_open(&k.derive(&one, Some(&Cursor("garbage".into())), None), "1"));
    }

    #[test]
    fn the_cursor_and_keys_hold_no_typed_text() {
        let k = kannel();
        let s = sms("from=0912345678&text=Abc*1234x&id=m-9");
        let cursor = k.advance(&s, None, &Reply { text: "ok".into(), end: false });
        let stored = format!("{cursor:?}{}{}", k.retry_key(&s), k.pseudonym(&s));
        assert!(!stored.contains("Abc") && !stored.contains("1234") && !stored.contains("m-9"), "{stored}");
    }

    #[test]
    fn replies_fold_for_gsm7_and_keep_diacritics_in_ucs2_when_they_fit() {
        let r = Reply { text: "Chào bạn".into(), end: true };
        assert_eq!(response(&r, Charset::Gsm7), ("Chao ban".to_string(), false));
        assert_eq!(response(&r, Charset::Ucs2), ("Chào bạn".to_string(), true));
        let long = Reply { text: "ạ".repeat(202), end: false };
        assert_eq!(response(&long, Charset::Ucs2), ("a".repeat(202), false));
    }
}
