//! Message catalogues (`flows/messages/<lang>.toml`): every text the citizen sees, written once per
//! language with full Vietnamese diacritics, plus the rules that fit a text to a USSD screen.
//!
//! Screen budget (3GPP TS 29.002, USSD string of 160 octets; 3GPP TS 23.038 for the GSM-7 alphabet): 182 GSM-7
//! characters, or 80 UCS-2 characters. Carriers default to GSM-7, so Vietnamese is sent without
//! diacritics there; with `Charset::Ucs2` a screen keeps its diacritics when it fits 80 UCS-2 characters
//! and falls back to the GSM-7 rendering when it does not (each screen must fit one message either way).

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::domain::text::{fold_diacritics, gsm7_len, gsm7_septets, ucs2_len};
use crate::vocab::Medium;

/// Characters in one USSD screen, GSM-7 (182 septets in 160 octets).
pub const USSD_GSM7_BUDGET: usize = 182;
/// Characters in one USSD screen, UCS-2.
pub const USSD_UCS2_BUDGET: usize = 80;
/// One single-part SMS in GSM-7.
pub const SMS_GSM7_BUDGET: usize = 160;
/// Parts an SMS reply may take (concatenated; 3GPP TS 23.040 user data header).
pub const SMS_REPLY_PARTS: usize = 3;
/// Characters per part of a concatenated SMS: GSM-7 153, UCS-2 67 (the header takes the rest).
pub const SMS_GSM7_PART: usize = 153;
pub const SMS_UCS2_PART: usize = 67;
/// An SMS reply of up to [`SMS_REPLY_PARTS`] parts, GSM-7.
pub const SMS_REPLY_GSM7_BUDGET: usize = SMS_REPLY_PARTS * SMS_GSM7_PART;
/// An SMS reply of up to [`SMS_REPLY_PARTS`] parts, UCS-2.
pub const SMS_REPLY_UCS2_BUDGET: usize = SMS_REPLY_PARTS * SMS_UCS2_PART;

/// How screens are encoded towards the carrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Charset {
    /// GSM 03.38: Vietnamese is sent without diacritics (what carriers do by default).
    #[default]
    Gsm7,
    /// UCS-2 with diacritics when the text fits (a USSD screen: 80 characters; an SMS reply: 3 parts of
    /// 67), GSM-7 otherwise. For USSD a conversation keeps one style: the server keeps the diacritics only
    /// when every screen of the flow fits 80 UCS-2 characters ([`super::Flow::fits_ucs2`]), and otherwise
    /// sends every screen in GSM-7 (saying so at start-up), rather than switching from screen to screen.
    Ucs2,
}

/// Renders a finished USSD screen for the channel.
pub fn for_channel(text: &str, charset: Charset) -> String {
    match charset {
        Charset::Ucs2 if ucs2_len(text) <= USSD_UCS2_BUDGET => text.to_string(),
        _ => to_gsm7(text),
    }
}

/// Renders a finished SMS reply: with diacritics (UCS-2) when asked for and it fits the reply's parts,
/// else folded to GSM-7. Returns the text and whether it needs UCS-2.
pub fn for_sms(text: &str, charset: Charset) -> (String, bool) {
    match charset {
        Charset::Ucs2 if ucs2_len(text) <= SMS_REPLY_UCS2_BUDGET && gsm7_len(text).is_none() => {
            (text.to_string(), true)
        }
        _ => (to_gsm7(text), false),
    }
}

/// Folds diacritics and replaces anything still outside GSM-7 (a stray symbol in a name) with `?`.
pub fn to_gsm7(text: &str) -> String {
    fold_diacritics(text).chars().map(|c| if gsm7_septets(c).is_some() { c } else { '?' }).collect()
}

/// Placeholders a message may use, with the most characters each can take (for budget checks).
pub const PLACEHOLDERS: &[(&str, usize)] = &[
    ("masked_phone", 10),
    ("minutes", 2),
    ("attempts", 1),
    ("name", NAME_MAX),
    ("n", 1),
    ("total", 1),
    ("otp", 6),
    ("until", 16),      // "HH:MM ngày DD/MM"
    ("ussd_code", 10),  // config::USSD_CODE_MAX
    ("login_code", 12), // the USSD code with `*2` added
    ("hotline", 15),
    ("questions", 0), // measured from the actual question list
    ("question", 0),  // measured: the longest question
];

/// A greeting truncates the registry name to this many characters so the screen always fits.
pub const NAME_MAX: usize = 40;

/// The texts of one language.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub file: String,
    pub messages: BTreeMap<String, String>,
}

pub static EMPTY: Catalog = Catalog { file: String::new(), messages: BTreeMap::new() };

impl Catalog {
    /// Parses a catalogue; nested tables become dotted keys (`[err] id_length = ".."` is `err.id_length`).
    pub fn parse(file: &str, text: &str) -> Result<Catalog, String> {
        let value: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut messages = BTreeMap::new();
        flatten("", &value, &mut messages)?;
        Ok(Catalog { file: file.to_string(), messages })
    }

    pub fn get<'a>(&'a self, key: &'a str) -> &'a str {
        self.messages.get(key).map(String::as_str).unwrap_or(key)
    }

    /// The message `key` as `medium` shows it: its override in the medium's table (`[for_sms]`, for
    /// texts that say "dial" on USSD and "text" over SMS) when there is one, else the common text.
    pub fn get_for<'a>(&'a self, medium: Medium, key: &'a str) -> &'a str {
        medium
            .overrides()
            .and_then(|table| self.messages.get(&format!("{table}.{key}")))
            .map(String::as_str)
            .unwrap_or_else(|| self.get(key))
    }

    /// The message `key` with `{placeholders}` filled from `args`.
    pub fn render(&self, key: &str, args: &[(&str, String)]) -> String {
        fill(self.get(key), args)
    }
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, String>) -> Result<(), String> {
    for (k, v) in table {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::String(s) => {
                out.insert(key, s.clone());
            }
            toml::Value::Table(t) => flatten(&key, t, out)?,
            _ => return Err(format!("message {key} is not a string")),
        }
    }
    Ok(())
}

/// Replaces each `{name}` with its value; unknown placeholders are left as they are.
pub fn fill(template: &str, args: &[(&str, String)]) -> String {
    fill_with(template, |name| args.iter().find(|(n, _)| *n == name).map(|(_, v)| Cow::Borrowed(v.as_str())))
}

/// Fills a template in one pass, asking `value` for each `{name}` it holds; a name without a value stays
/// as written. What a value holds is never read as a placeholder (a registry name with braces in it
/// stays as it is).
pub fn fill_with<'a>(template: &str, mut value: impl FnMut(&str) -> Option<Cow<'a, str>>) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}').and_then(|close| value(&after[..close]).map(|v| (close, v))) {
            Some((close, v)) => {
                out.push_str(&v);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The `{placeholder}` names a template uses.
pub fn placeholders(template: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                names.push(after[..close].to_string());
                rest = &after[close + 1..];
            }
            None => break,
        }
    }
    names
}

/// Why a finished screen does not fit one USSD message, if it does not. GSM-7 decides for both
/// charsets: in UCS-2 mode a screen over 80 characters is sent in its GSM-7 rendering.
pub fn ussd_overflow(screen: &str) -> Option<String> {
    let gsm = fold_diacritics(screen);
    match gsm7_len(&gsm) {
        None => return Some(format!("screen has characters outside GSM-7 even without diacritics: {gsm:?}")),
        Some(n) if n > USSD_GSM7_BUDGET => {
            return Some(format!("screen is {n} GSM-7 characters, over the USSD budget of {USSD_GSM7_BUDGET}"))
        }
        _ => {}
    }
    None
}

/// Why a finished SMS reply does not fit its parts, if it does not (GSM-7 decides, as for USSD: a reply
/// too long for UCS-2 goes out folded).
pub fn sms_reply_overflow(reply: &str) -> Option<String> {
    let gsm = fold_diacritics(reply);
    match gsm7_len(&gsm) {
        None => Some(format!("reply has characters outside GSM-7 even without diacritics: {gsm:?}")),
        Some(n) if n > SMS_REPLY_GSM7_BUDGET => {
            Some(format!("SMS reply is {n} GSM-7 characters, over {SMS_REPLY_PARTS} parts ({SMS_REPLY_GSM7_BUDGET})"))
        }
        _ => None,
    }
}

/// Why an SMS text does not fit a single GSM-7 part, if it does not.
pub fn sms_overflow(text: &str) -> Option<String> {
    let gsm = fold_diacritics(text);
    match gsm7_len(&gsm) {
        None => Some("SMS has characters outside GSM-7 even without diacritics".into()),
        Some(n) if n > SMS_GSM7_BUDGET => {
            Some(format!("SMS is {n} GSM-7 characters, over one SMS of {SMS_GSM7_BUDGET}"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_tables_become_dotted_keys() {
        let c = Catalog::parse("vi.toml", "menu = \"Chào\"\n[err]\nid_length = \"Sai\"\n").unwrap();
        assert_eq!(c.get("menu"), "Chào");
        assert_eq!(c.get("err.id_length"), "Sai");
    }

    #[test]
    fn placeholders_are_found_and_filled() {
        assert_eq!(placeholders("Ma gui toi {masked_phone}, {minutes} phut"), vec!["masked_phone", "minutes"]);
        assert_eq!(fill("con {attempts} lan", &[("attempts", "4".into())]), "con 4 lan");
        // One pass: unknown names and stray braces stay; a value is never filled in again.
        let args = [("name", "{otp}".to_string()), ("otp", "123456".to_string())];
        assert_eq!(fill("{ {name} {x} {otp}} {", &args), "{ {otp} {x} 123456} {");
    }

    #[test]
    fn gsm7_rendering_drops_diacritics_and_ucs2_keeps_short_screens() {
        let t = "Tài khoản của bạn đã thực hiện kích hoạt";
        assert_eq!(for_channel(t, Charset::Gsm7), "Tai khoan cua ban da thuc hien kich hoat");
        assert_eq!(for_channel(t, Charset::Ucs2), t);
        let long = "ạ".repeat(81);
        assert_eq!(for_channel(&long, Charset::Ucs2), "a".repeat(81));
    }

    #[test]
    fn sms_replies_keep_diacritics_in_ucs2_only_when_asked_and_they_fit() {
        let t = "Chào bạn";
        assert_eq!(for_sms(t, Charset::Gsm7), ("Chao ban".to_string(), false));
        assert_eq!(for_sms(t, Charset::Ucs2), (t.to_string(), true));
        assert_eq!(for_sms("Chao ban", Charset::Ucs2), ("Chao ban".to_string(), false), "GSM-7 when it can be");
        let long = "ạ".repeat(SMS_REPLY_UCS2_BUDGET + 1);
        assert!(!for_sms(&long, Charset::Ucs2).1);
        assert!(sms_reply_overflow(&"a".repeat(459)).is_none());
        assert!(sms_reply_overflow(&"a".repeat(460)).is_some());
    }

    #[test]
    fn a_medium_override_replaces_the_common_text_for_that_medium_only() {
        let c = Catalog::parse("vi.toml", "[end]\nx = \"quay so\"\n[for_sms.end]\nx = \"nhan tin\"\n").unwrap();
        assert_eq!(c.get_for(Medium::Ussd, "end.x"), "quay so");
        assert_eq!(c.get_for(Medium::Sms, "end.x"), "nhan tin");
    }

    #[test]
    fn a_screen_over_182_gsm7_characters_overflows() {
        assert!(ussd_overflow(&"a".repeat(182)).is_none());
        assert!(ussd_overflow(&"a".repeat(183)).is_some());
        assert!(ussd_overflow(&"[".repeat(92)).is_some(), "extension characters cost two");
    }
}
