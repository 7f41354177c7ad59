//! Africa's Talking USSD callbacks (../shared/reference/domain.md §3): form fields `sessionId`,
//! `serviceCode`, `phoneNumber`, `networkCode`, `text`; reply `text/plain` starting `CON ` or `END `.
//!
//! `text` is cumulative: every input of the session joined by `*`. An input may itself contain `*` (a
//! password), so splitting is wrong. The new input is what this hop's text adds to the previous hop's:
//! `text = previous + "*" + input`. The previous text is never stored (it repeats passwords); only its
//! length and a keyed hash are, which is enough to check the prefix and cut the new input off.

use serde::Deserialize;

use crate::clock::Millis;
use crate::crypto::{stored_mac_eq, Crypto};
use crate::domain::{Msisdn, Secret};
use crate::engine::Reply;
use crate::flow::catalog::for_channel;
use crate::flow::Charset;
use crate::store::{HopCursor, RecentHop};

/// Replies kept per phone so a carrier retry of a recent hop (of this session or the one before) gets the
/// same answer.
const RECENT_HOPS: usize = 8;
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

/// What a hop means for the conversation.
#[derive(Debug)]
pub enum Derived {
    /// A retry of a hop already answered: answer the same.
    Replay(Reply),
    /// A new session with empty text: the citizen dialled the service code.
    Dial,
    /// A new session that already carries inputs (dialled `*code*1*2#`): dial, then each.
    DialThen(Vec<Secret>),
    /// The next input of the current session.
    Input(Secret),
    /// The text does not extend the previous hop: the carrier and we disagree; ask to dial again.
    Lost,
}

pub fn derive(crypto: &Crypto, hop: &Hop, cursor: Option<&HopCursor>) -> Derived {
    let phone = hop.phone.as_str();
    let sid = &hop.session_id;
    let text = hop.text.expose();
    let text_mac = crypto.hop_mac(phone, sid, text);
    let session_mac = crypto.hop_mac(phone, sid, "");
    let same_session = |c: &&HopCursor| stored_mac_eq(&c.session_mac, &session_mac);
    // After an END the carrier closes the session; a hop on the same id that is not a retry of that END
    // is a new dial by a client that reuses session ids.
    let reused = cursor
        .filter(same_session)
        .is_some_and(|c| c.recent.last().is_some_and(|r| r.reply.end) && !stored_mac_eq(&c.text_mac, &text_mac));
    // Otherwise a retry is recognised first, even of a hop from the session before (its MAC names the
    // session): a late carrier retry must not run again as a new dial.
    if !reused {
        if let Some(r) = cursor.and_then(|c| c.recent.iter().find(|r| stored_mac_eq(&r.text_mac, &text_mac))) {
            return Derived::Replay(r.reply.clone());
        }
    }
    let Some(c) = cursor.filter(same_session).filter(|_| !reused) else {
        if text.is_empty() {
            return Derived::Dial;
        }
        return Derived::DialThen(text.split('*').map(Secret::new).collect());
    };
    let n = c.text_len;
    if text.len() <= n || !text.is_char_boundary(n) {
        return Derived::Lost;
    }
    let (prefix, rest) = text.split_at(n);
    if !stored_mac_eq(&c.text_mac, &crypto.hop_mac(phone, sid, prefix)) {
        return Derived::Lost;
    }
    match (n, rest.strip_prefix('*')) {
        (0, _) => Derived::Input(Secret::new(rest)),
        (_, Some(input)) => Derived::Input(Secret::new(input)),
        (_, None) => Derived::Lost,
    }
}

/// How long a reply is kept for carrier retries. An AT session lasts at most ~180 s; the keyed hashes of
/// texts that held a password are not kept longer than needed.
pub const RECENT_TTL: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// The cursor after answering `hop` with `reply` at `now`.
pub fn advance(crypto: &Crypto, hop: &Hop, previous: Option<&HopCursor>, reply: &Reply, now: Millis) -> HopCursor {
    let phone = hop.phone.as_str();
    let session_mac = hex::encode(crypto.hop_mac(phone, &hop.session_id, ""));
    let text_mac = hex::encode(crypto.hop_mac(phone, &hop.session_id, hop.text.expose()));
    let mut recent: Vec<RecentHop> = previous.map(|p| p.recent.clone()).unwrap_or_default();
    recent.retain(|r| now.since(r.at) <= RECENT_TTL);
    recent.push(RecentHop { text_mac: text_mac.clone(), reply: reply.clone(), at: now });
    if recent.len() > RECENT_HOPS {
        recent.drain(..recent.len() - RECENT_HOPS);
    }
    HopCursor { session_mac, text_len: hop.text.expose().len(), text_mac, recent }
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

    fn walk(c: &Crypto, texts: &[&str]) -> Vec<String> {
        let mut cursor: Option<HopCursor> = None;
        let mut inputs = Vec::new();
        for t in texts {
            let h = hop("s1", t);
            match derive(c, &h, cursor.as_ref()) {
                Derived::Dial => inputs.push("<dial>".to_string()),
                Derived::Input(s) => inputs.push(s.expose().to_string()),
                other => panic!("unexpected {other:?} at {t:?}"),
            }
            let reply = Reply { text: format!("after {t}"), end: false };
            cursor = Some(advance(c, &h, cursor.as_ref(), &reply, Millis(0)));
        }
        inputs
    }

    #[test]
    fn a_password_with_stars_arrives_whole() {
        let c = Crypto::from_master(&[3; 32], HashCost::DANGER_TEST_ONLY).unwrap();
        let inputs = walk(&c, &["", "1", "1*001099012345", "1*001099012345*1", "1*001099012345*1*Ab*12*cd!9"]);
        assert_eq!(inputs, ["<dial>", "1", "001099012345", "1", "Ab*12*cd!9"]);
    }

    proptest::proptest! {
        /// Whatever the citizen types, stars and letters with diacritics included, each input is
        /// recovered whole from the cumulative text.
        #[test]
        fn every_input_is_recovered_from_the_cumulative_text(inputs in proptest::collection::vec("[0-9a-zA-Z*#!@ ạđ]{1,12}", 1..8)) {
            let c = Crypto::from_master(&[5; 32], HashCost::DANGER_TEST_ONLY).unwrap();
            let mut texts = vec![String::new()];
            for i in 0..inputs.len() {
                texts.push(inputs[..=i].join("*"));
            }
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            let got = walk(&c, &texts);
            proptest::prop_assert_eq!(&got[1..], &inputs[..]);
        }
    }

    #[test]
    fn a_retried_hop_replays_and_a_stranger_text_is_lost() {
        let c = Crypto::from_master(&[3; 32], HashCost::DANGER_TEST_ONLY).unwrap();
        let first = hop("s1", "");
        let reply = Reply { text: "menu".into(), end: false };
        let cur = advance(&c, &first, None, &reply, Millis(0));
        assert!(matches!(derive(&c, &first, Some(&cur)), Derived::Replay(r) if r == reply));
        let second = hop("s1", "1");
        let cur = advance(&c, &second, Some(&cur), &reply, Millis(0));
        assert!(matches!(derive(&c, &hop("s1", "2*5"), Some(&cur)), Derived::Lost));
        assert!(matches!(derive(&c, &hop("s2", ""), Some(&cur)), Derived::Dial));
        assert!(matches!(derive(&c, &hop("s3", "1*2"), Some(&cur)), Derived::DialThen(v) if v.len() == 2));
        // A new dial, then a late retry of the old session's hop: replayed, not run as a new dial.
        let next = hop("s2", "");
        let cur = advance(&c, &next, Some(&cur), &Reply { text: "menu again".into(), end: false }, Millis(0));
        assert!(matches!(derive(&c, &second, Some(&cur)), Derived::Replay(r) if r == reply));
    }

    #[test]
    fn a_session_id_reused_after_an_end_is_a_new_dial_but_the_end_itself_replays() {
        let c = Crypto::from_master(&[3; 32], HashCost::DANGER_TEST_ONLY).unwrap();
        let menu = Reply { text: "menu".into(), end: false };
        let help = Reply { text: "help".into(), end: true };
        let cur = advance(&c, &hop("s1", ""), None, &menu, Millis(0));
        let cur = advance(&c, &hop("s1", "3"), Some(&cur), &help, Millis(0));
        assert!(matches!(derive(&c, &hop("s1", "3"), Some(&cur)), Derived::Replay(r) if r == help));
        assert!(matches!(derive(&c, &hop("s1", ""), Some(&cur)), Derived::Dial));
        assert!(matches!(derive(&c, &hop("s1", "2"), Some(&cur)), Derived::DialThen(_)));
    }

    #[test]
    fn replies_are_kept_for_retries_only_while_a_carrier_could_retry() {
        let c = Crypto::from_master(&[3; 32], HashCost::DANGER_TEST_ONLY).unwrap();
        let reply = Reply { text: "menu".into(), end: false };
        let old = hop("s1", "");
        let cur = advance(&c, &old, None, &reply, Millis(0));
        let later = Millis(RECENT_TTL.as_millis() as u64 + 60_000);
        let cur = advance(&c, &hop("s2", ""), Some(&cur), &reply, later);
        assert_eq!(cur.recent.len(), 1, "the old session's hop was forgotten");
        assert!(!matches!(derive(&c, &old, Some(&cur)), Derived::Replay(_)));
    }

    #[test]
    fn replies_start_with_con_or_end_and_fold_for_gsm7() {
        let r = Reply { text: "Tài khoản".into(), end: true };
        assert_eq!(response(&r, Charset::Gsm7), "END Tai khoan");
        assert_eq!(response(&Reply { end: false, ..r }, Charset::Ucs2), "CON Tài khoản");
    }
}
