//! Africa's Talking USSD callbacks (Africa's Talking USSD API documentation): form fields `sessionId`,
//! `serviceCode`, `phoneNumber`, `networkCode`, `text`; reply `text/plain` starting `CON ` or `END `.
//!
//! `text` is cumulative: every input of the session joined by `*`. An input may itself contain `*` (a
//! password), so splitting is wrong. The new input is what this hop's text adds to the previous hop's:
//! `text = previous + "*" + input`. The previous text is never stored (it repeats passwords); only its
//! length and a keyed hash are, which is enough to check the prefix and cut the new input off.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Channel, Derived};
use crate::crypto::{stored_mac_eq, Crypto};
use crate::domain::{Msisdn, Secret};
use crate::engine::{Inbound, Medium, Reply};
use crate::flow::catalog::for_channel;
use crate::flow::Charset;
use crate::store::Cursor;
/// Longest `sessionId` accepted (AT's are ~30 characters).
pub const MAX_SESSION_ID: usize = 128;
/// Longest cumulative `text` accepted; a USSD session holds a handful of short inputs.
pub const MAX_TEXT: usize = 2048;

/// The form Africa's Talking posts. `sessionId` and `phoneNumber` are required; `text` defaults to empty
/// (the first hop) and `serviceCode`/`networkCode` are not needed, so a client that leaves out an empty or
/// unused field is still understood.
#[derive(Debug, Deserialize)]
pub struct AtForm {
    #[serde(rename = "sessionId")]
    pub session_id: String,
    #[serde(rename = "serviceCode", default)]
    pub service_code: String,
    #[serde(rename = "phoneNumber")]
    pub phone_number: String,
    #[serde(rename = "networkCode", default)]
    pub network_code: String,
    #[serde(default)]
    pub text: String,
}

/// A hop the server understood.
pub struct Hop {
    pub phone: Msisdn,
    pub session_id: String,
    /// The cumulative text: may contain passwords. Never logged, never stored.
    pub text: Secret,
}

/// Why a hop is refused with a 4xx.
#[derive(Debug, thiserror::Error)]
pub enum BadHop {
    #[error("sessionId is empty or too long")]
    SessionId,
    #[error("phoneNumber is not a Vietnamese mobile number")]
    Phone,
    #[error("text is too long")]
    Text,
    #[error("a field is not valid UTF-8")]
    Encoding,
}

impl AtForm {
    pub fn parse(self) -> Result<Hop, BadHop> {
        // The form decoder replaces bytes that are not UTF-8 with U+FFFD; no keypad sends that, so such a
        // request is not understood rather than taken as a (wrong) input.
        let fields = [&self.session_id, &self.service_code, &self.phone_number, &self.network_code, &self.text];
        if fields.iter().any(|f| f.contains('\u{fffd}')) {
            return Err(BadHop::Encoding);
        }
        if self.session_id.trim().is_empty() || self.session_id.len() > MAX_SESSION_ID {
            return Err(BadHop::SessionId);
        }
        let phone = Msisdn::parse(&self.phone_number).map_err(|_| BadHop::Phone)?;
        if self.text.len() > MAX_TEXT {
            return Err(BadHop::Text);
        }
        Ok(Hop { phone, session_id: self.session_id, text: Secret::new(self.text) })
    }
}

/// Longest `status` accepted in an end-of-session notification (AT sends `Success`, `Incomplete`,
/// `Failed`).
pub const MAX_STATUS: usize = 32;

/// Africa's Talking's end-of-session notification, as far as it is read. Its `input` (the last thing
/// typed, possibly a password) and `lastAppResponse` (a screen, possibly with a name) are never read.
#[derive(Debug)]
pub struct SessionEnd {
    pub session_id: String,
    /// `phoneNumber`, when it is a Vietnamese mobile: it keys the session's pseudonym like a hop's.
    pub phone: Option<Msisdn>,
    /// A short word (`Success`, `Incomplete`, `Failed`), safe to log as it is.
    pub status: String,
    pub hops: Option<u32>,
    pub duration_ms: Option<u64>,
}

/// Why an end-of-session notification is refused with a 400.
#[derive(Debug, thiserror::Error)]
pub enum BadEvent {
    #[error("sessionId is missing, empty or too long")]
    SessionId,
    #[error("status is missing or not a short word")]
    Status,
}

impl SessionEnd {
    /// Reads the notification's form fields: `sessionId` and `status` are required; `hopsCount` and
    /// `durationInMillis` are kept when they are numbers.
    pub fn parse(fields: &HashMap<String, String>) -> Result<SessionEnd, BadEvent> {
        let session_id = fields.get("sessionId").map(|s| s.trim()).unwrap_or_default();
        if session_id.is_empty() || session_id.len() > MAX_SESSION_ID || session_id.contains('\u{fffd}') {
            return Err(BadEvent::SessionId);
        }
        let status = fields.get("status").map(|s| s.trim()).unwrap_or_default();
        let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if status.is_empty() || status.len() > MAX_STATUS || !status.chars().all(word) {
            return Err(BadEvent::Status);
        }
        Ok(SessionEnd {
            session_id: session_id.to_string(),
            phone: fields.get("phoneNumber").and_then(|p| Msisdn::parse(p).ok()),
            status: status.to_string(),
            hops: fields.get("hopsCount").and_then(|h| h.trim().parse().ok()),
            duration_ms: fields.get("durationInMillis").and_then(|d| d.trim().parse().ok()),
        })
    }
}

/// The Africa's Talking channel: cursors and retry keys are keyed hashes under the service's key.
pub struct AfricasTalking {
    crypto: Arc<Crypto>,
}

impl AfricasTalking {
    pub fn new(crypto: Arc<Crypto>) -> AfricasTalking {
        AfricasTalking { crypto }
    }

    /// The short pseudonym of a USSD session in log lines: the same for its hops and its end.
    pub fn session_pseudonym(&self, phone: Option<&Msisdn>, session_id: &str) -> String {
        let phone = phone.map(Msisdn::as_str).unwrap_or_default();
        hex::encode(&self.crypto.hop_mac(phone, session_id, "")[..4])
    }
}

/// Where the USSD session of a phone stands, without its text (which may repeat a password): keyed
/// hashes of the session id and of the text answered last, the text's length, and whether that answer
/// closed the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct AtCursor {
    #[serde(rename = "s")]
    session_mac: String,
    #[serde(rename = "n")]
    text_len: usize,
    #[serde(rename = "t")]
    text_mac: String,
    #[serde(rename = "e", default)]
    ended: bool,
}

impl AtCursor {
    fn read(c: &Cursor) -> Option<AtCursor> {
        serde_json::from_str(&c.0).ok()
    }
    fn write(&self) -> Option<Cursor> {
        serde_json::to_string(self).ok().map(Cursor)
    }
}

/// The cursor of a conversation stored by the first release (store schema 1), for the migration.
pub fn legacy_cursor(session_mac: &str, text_len: usize, text_mac: &str, ended: bool) -> (&'static str, Cursor) {
    let c = AtCursor { session_mac: session_mac.into(), text_len, text_mac: text_mac.into(), ended };
    (AfricasTalking::KIND, c.write().unwrap_or(Cursor(String::new())))
}

impl Channel for AfricasTalking {
    type Request = Hop;
    const KIND: &'static str = "africastalking";
    const MEDIUM: Medium = Medium::Ussd;

    fn phone<'r>(&self, hop: &'r Hop) -> &'r Msisdn {
        &hop.phone
    }

    fn retry_key(&self, hop: &Hop) -> String {
        hex::encode(self.crypto.hop_mac(hop.phone.as_str(), &hop.session_id, hop.text.expose()))
    }

    fn pseudonym(&self, hop: &Hop) -> String {
        self.session_pseudonym(Some(&hop.phone), &hop.session_id)
    }

    fn derive(&self, hop: &Hop, cursor: Option<&Cursor>, stored: Option<&Reply>) -> Derived {
        let phone = hop.phone.as_str();
        let sid = &hop.session_id;
        let text = hop.text.expose();
        let text_mac = self.crypto.hop_mac(phone, sid, text);
        let session_mac = self.crypto.hop_mac(phone, sid, "");
        let cursor = cursor.and_then(AtCursor::read);
        let same_session = cursor.as_ref().filter(|c| stored_mac_eq(&c.session_mac, &session_mac));
        // After an END the carrier closes the session; a hop on the same id that is not a retry of that
        // END is a new dial by a client that reuses session ids.
        let reused = same_session.is_some_and(|c| c.ended && !stored_mac_eq(&c.text_mac, &text_mac));
        // Otherwise a retry is recognised first, even of a hop from the session before (its key names the
        // session): a late carrier retry must not run again as a new dial.
        if let Some(reply) = stored.filter(|_| !reused) {
            return Derived::Replay(reply.clone());
        }
        let Some(c) = same_session.filter(|_| !reused) else {
            let choices = if text.is_empty() { Vec::new() } else { text.split('*').map(Secret::new).collect() };
            return Derived::Inbound(Inbound::Start { choices });
        };
        let n = c.text_len;
        if text.len() <= n || !text.is_char_boundary(n) {
            return Derived::Lost;
        }
        let (prefix, rest) = text.split_at(n);
        if !stored_mac_eq(&c.text_mac, &self.crypto.hop_mac(phone, sid, prefix)) {
            return Derived::Lost;
        }
        match (n, rest.strip_prefix('*')) {
            (0, _) => Derived::Inbound(Inbound::Text(Secret::new(rest))),
            (_, Some(input)) => Derived::Inbound(Inbound::Text(Secret::new(input))),
            (_, None) => Derived::Lost,
        }
    }

    fn advance(&self, hop: &Hop, _previous: Option<&Cursor>, reply: &Reply) -> Option<Cursor> {
        let phone = hop.phone.as_str();
        AtCursor {
            session_mac: hex::encode(self.crypto.hop_mac(phone, &hop.session_id, "")),
            text_len: hop.text.expose().len(),
            text_mac: hex::encode(self.crypto.hop_mac(phone, &hop.session_id, hop.text.expose())),
            ended: reply.end,
        }
        .write()
    }
}

/// The response body: `CON ` or `END ` and the screen for the configured charset.
pub fn response(reply: &Reply, charset: Charset) -> String {
    let head = if reply.end { "END " } else { "CON " };
    format!("{head}{}", for_channel(&reply.text, charset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::HashCost;

    fn hop(sid: &str, text: &str) -> Hop {
        Hop { phone: Msisdn::parse("0912345678").unwrap(), session_id: sid.into(), text: Secret::new(text) }
    }

    /// The channel's view of one phone, as the service keeps it: the cursor and the stored replies.
    struct Phone {
        at: AfricasTalking,
        cursor: Option<Cursor>,
        replies: Vec<(String, Reply)>,
    }

    impl Phone {
        fn new(seed: u8) -> Phone {
            let crypto = Arc::new(Crypto::from_master(&[seed; 32], HashCost::DANGER_TEST_ONLY).unwrap());
            Phone { at: AfricasTalking::new(crypto), cursor: None, replies: Vec::new() }
        }
        fn derive(&self, h: &Hop) -> Derived {
            let key = self.at.retry_key(h);
            let stored = self.replies.iter().find(|(k, _)| *k == key).map(|(_, r)| r);
            self.at.derive(h, self.cursor.as_ref(), stored)
        }
        fn answer(&mut self, h: &Hop, reply: Reply) {
            self.cursor = self.at.advance(h, self.cursor.as_ref(), &reply);
            self.replies.push((self.at.retry_key(h), reply));
        }
    }

    fn walk(p: &mut Phone, texts: &[&str]) -> Vec<String> {
        let mut inputs = Vec::new();
        for t in texts {
            let h = hop("s1", t);
            match p.derive(&h) {
                Derived::Inbound(Inbound::Start { choices }) if choices.is_empty() => inputs.push("<dial>".to_string()),
                Derived::Inbound(Inbound::Text(s)) => inputs.push(s.expose().to_string()),
                other => panic!("unexpected {other:?} at {t:?}"),
            }
            p.answer(&h, Reply { text: format!("after {t}"), end: false });
        }
        inputs
    }

    fn is_start(d: &Derived, n: usize) -> bool {
        matches!(d, Derived::Inbound(Inbound::Start { choices }) if choices.len() == n)
    }

    #[test]
    fn a_password_with_stars_arrives_whole() {
        let inputs =
            walk(&mut Phone::new(3), &["", "1", "1*001099012345", "1*001099012345*1", "1*001099012345*1*Ab*12*cd!9"]);
        assert_eq!(inputs, ["<dial>", "1", "001099012345", "1", "Ab*12*cd!9"]);
    }

    proptest::proptest! {
        /// Whatever the citizen types, stars and letters with diacritics included, each input is
        /// recovered whole from the cumulative text.
        #[test]
        fn every_input_is_recovered_from_the_cumulative_text(inputs in proptest::collection::vec("[0-9a-zA-Z*#!@ ạđ]{1,12}", 1..8)) {
            let mut texts = vec![String::new()];
            for i in 0..inputs.len() {
                texts.push(inputs[..=i].join("*"));
            }
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            let got = walk(&mut Phone::new(5), &texts);
            proptest::prop_assert_eq!(&got[1..], &inputs[..]);
        }
    }

    #[test]
    fn a_retried_hop_replays_and_a_stranger_text_is_lost() {
        let mut p = Phone::new(3);
        let first = hop("s1", "");
        let reply = Reply { text: "menu".into(), end: false };
        p.answer(&first, reply.clone());
        assert!(matches!(p.derive(&first), Derived::Replay(r) if r == reply));
        let second = hop("s1", "1");
        p.answer(&second, reply.clone());
        assert!(matches!(p.derive(&hop("s1", "2*5")), Derived::Lost));
        assert!(is_start(&p.derive(&hop("s2", "")), 0));
        assert!(is_start(&p.derive(&hop("s3", "1*2")), 2), "a fast-dial carries its choices");
        // A new dial, then a late retry of the old session's hop: replayed, not run as a new dial.
        p.answer(&hop("s2", ""), Reply { text: "menu again".into(), end: false });
        assert!(matches!(p.derive(&second), Derived::Replay(r) if r == reply));
    }

    #[test]
    fn a_session_id_reused_after_an_end_is_a_new_dial_but_the_end_itself_replays() {
        let mut p = Phone::new(3);
        let help = Reply { text: "help".into(), end: true };
        p.answer(&hop("s1", ""), Reply { text: "menu".into(), end: false });
        p.answer(&hop("s1", "3"), help.clone());
        assert!(matches!(p.derive(&hop("s1", "3")), Derived::Replay(r) if r == help));
        // The first hop of the old session replays no more once the session ended: it is a new dial.
        assert!(is_start(&p.derive(&hop("s1", "")), 0));
        assert!(is_start(&p.derive(&hop("s1", "2")), 1));
    }

    #[test]
    fn keys_and_cursors_hold_no_typed_text() {
        let mut p = Phone::new(3);
        let h = hop("s1", "Abc*1234x");
        p.answer(&h, Reply { text: "ok".into(), end: false });
        let stored = format!("{:?}{}", p.cursor, p.at.retry_key(&h));
        assert!(!stored.contains("Abc") && !stored.contains("1234"), "{stored}");
    }

    #[test]
    fn replies_start_with_con_or_end_and_fold_for_gsm7() {
        let r = Reply { text: "Tài khoản".into(), end: true };
        assert_eq!(response(&r, Charset::Gsm7), "END Tai khoan");
        assert_eq!(response(&Reply { end: false, ..r }, Charset::Ucs2), "CON Tài khoản");
    }
}
