//! Text helpers for what a keypad phone can type and what an SMS or USSD screen can carry.
//!
//! Why: domain.md §4 — a USSD screen is 182 GSM-7 or 80 UCS-2 characters, an SMS 160 GSM-7 or 70
//! UCS-2; Vietnamese with diacritics forces UCS-2, so official SMS are sent "không dấu" (without
//! diacritics). `fold_diacritics` produces that form, `gsm7_len`/`ucs2_len` measure a message in the
//! units the network counts (3GPP TS 23.038 / GSM 03.38 default alphabet), and `normalize_spaces`
//! tidies what people type (also used to normalize security answers, domain.md §5).

use unicode_normalization::UnicodeNormalization;

/// GSM 03.38 basic table, every character except ESC (0x1B), in table order.
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";

/// GSM 03.38 extension table: each costs two septets (ESC + code).
const GSM7_EXTENSION: &str = "\u{0C}^{}\\[~]|€";

/// Septets of each ASCII character (0: none), built from the two tables above.
const GSM7_ASCII: [u8; 128] = {
    let mut t = [0u8; 128];
    let (basic, ext) = (GSM7_BASIC.as_bytes(), GSM7_EXTENSION.as_bytes());
    let mut i = 0;
    while i < basic.len() {
        if basic[i] < 128 {
            t[basic[i] as usize] = 1;
        }
        i += 1;
    }
    i = 0;
    while i < ext.len() {
        if ext[i] < 128 {
            t[ext[i] as usize] = 2;
        }
        i += 1;
    }
    t
};

/// Vietnamese to plain letters: NFD, drop combining marks U+0300–U+036F, đ→d, Đ→D, then NFC.
/// Other characters are left as they are.
///
/// Every USSD screen goes through this (GSM-7 is the default charset), so text made only of ASCII and
/// precomposed Latin letters (Vietnamese is) takes a path with the same result and no intermediate
/// strings: each letter becomes the first character of its canonical decomposition, which is what
/// dropping the marks and composing again leaves of it. Anything else takes the full path.
pub fn fold_diacritics(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii() || matches!(c, '\u{00C0}'..='\u{024F}' | '\u{1E00}'..='\u{1EFF}')) {
        return s.chars().map(fold_latin).collect();
    }
    fold_any(s)
}

/// One precomposed Latin letter without its marks.
fn fold_latin(c: char) -> char {
    match c {
        'đ' => 'd',
        'Đ' => 'D',
        c if c.is_ascii() => c,
        c => {
            let mut base = None;
            unicode_normalization::char::decompose_canonical(c, |d| {
                base.get_or_insert(d);
            });
            base.unwrap_or(c)
        }
    }
}

fn fold_any(s: &str) -> String {
    let stripped: String = s
        .nfd()
        .filter(|c| !('\u{0300}'..='\u{036F}').contains(c))
        .map(|c| match c {
            'đ' => 'd',
            'Đ' => 'D',
            other => other,
        })
        .collect();
    stripped.nfc().collect()
}

/// Length in GSM-7 septets, or `None` if some character is in neither GSM 03.38 table.
pub fn gsm7_len(s: &str) -> Option<usize> {
    s.chars().try_fold(0usize, |n, c| gsm7_septets(c).map(|k| n + k))
}

/// Septets one character takes in GSM-7 (2 for the extension table), or `None` if it has none.
pub fn gsm7_septets(c: char) -> Option<usize> {
    // Every screen is measured character by character: ASCII (nearly all of it) by a table.
    if c.is_ascii() {
        return match GSM7_ASCII[c as usize] {
            0 => None,
            n => Some(n as usize),
        };
    }
    if GSM7_BASIC.contains(c) {
        Some(1)
    } else if GSM7_EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// Length in UCS-2 / UTF-16 code units (what an SMS in `coding=2` counts).
pub fn ucs2_len(s: &str) -> usize {
    s.encode_utf16().count()
}

/// Trims and collapses every run of whitespace to one ASCII space.
pub fn normalize_spaces(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn folds_the_official_already_activated_sentence() {
        assert_eq!(
            fold_diacritics("Tài khoản của bạn đã thực hiện kích hoạt"),
            "Tai khoan cua ban da thuc hien kich hoat"
        );
    }

    #[test]
    fn folds_d_with_stroke_and_stacked_marks_in_both_cases() {
        assert_eq!(fold_diacritics("ĐỒNG Đức ậ ỹ Ừ"), "DONG Duc a y U");
    }

    #[test]
    fn folding_keeps_characters_that_are_not_marks() {
        assert_eq!(fold_diacritics("Số 12*#, Øß €!"), "So 12*#, Øß €!");
    }

    #[test]
    fn the_basic_table_has_127_characters_besides_escape() {
        assert_eq!(GSM7_BASIC.chars().count(), 127);
        assert_eq!(GSM7_EXTENSION.chars().count(), 10);
    }

    #[test]
    fn gsm7_counts_basic_characters_once_and_extension_characters_twice() {
        assert_eq!(gsm7_len(""), Some(0));
        assert_eq!(gsm7_len("Ma OTP: 123456"), Some(14));
        assert_eq!(gsm7_len("a^b€"), Some(6));
        assert_eq!(gsm7_len("[x]{y}~|\\"), Some(16));
        assert_eq!(gsm7_len("àèéìòù"), Some(6));
    }

    #[test]
    fn the_ascii_table_agrees_with_the_gsm7_tables() {
        for b in 0u8..128 {
            let c = b as char;
            let scanned = if GSM7_BASIC.contains(c) {
                Some(1)
            } else if GSM7_EXTENSION.contains(c) {
                Some(2)
            } else {
                None
            };
            assert_eq!(gsm7_septets(c), scanned, "{b:#04x}");
        }
    }

    #[test]
    fn gsm7_refuses_vietnamese_letters_and_the_backtick() {
        assert_eq!(gsm7_len("Hà Nội"), None);
        assert_eq!(gsm7_len("đ"), None);
        assert_eq!(gsm7_len("`"), None);
    }

    #[test]
    fn ucs2_counts_utf16_code_units() {
        assert_eq!(ucs2_len("Hà Nội"), 6);
        assert_eq!(ucs2_len("😀"), 2);
    }

    #[test]
    fn spaces_are_trimmed_and_collapsed() {
        assert_eq!(normalize_spaces("  ha \t\n noi  "), "ha noi");
        assert_eq!(normalize_spaces("   "), "");
    }

    /// One Vietnamese letter, lower or upper case, with any of the five tone marks.
    fn vietnamese_char() -> impl Strategy<Value = String> {
        let bases: Vec<char> = "aăâeêioôơuưyAĂÂEÊIOÔƠUƯYbcdđghklmnpqrstvxĐ0123456789 .,!?:;-()'\"".chars().collect();
        let tones = ['\0', '\u{300}', '\u{301}', '\u{309}', '\u{303}', '\u{323}'];
        (prop::sample::select(bases), prop::sample::select(tones.to_vec())).prop_map(|(b, t)| {
            let mut s = String::from(b);
            if t != '\0' && b.is_alphabetic() && "aăâeêioôơuưyAĂÂEÊIOÔƠUƯY".contains(b) {
                s.push(t);
            }
            s.nfc().collect()
        })
    }

    proptest! {
        #[test]
        fn folded_vietnamese_text_always_fits_gsm7(parts in prop::collection::vec(vietnamese_char(), 0..60)) {
            let text: String = parts.concat();
            let folded = fold_diacritics(&text);
            prop_assert_eq!(gsm7_len(&folded), Some(folded.chars().count()));
        }

        #[test]
        fn the_latin_fast_path_folds_exactly_as_the_full_one(
            s in "[ -~\u{00C0}-\u{024F}\u{1E00}-\u{1EFF}]{0,40}",
            parts in prop::collection::vec(vietnamese_char(), 0..30),
        ) {
            prop_assert_eq!(fold_diacritics(&s), fold_any(&s));
            let text: String = parts.concat();
            prop_assert_eq!(fold_diacritics(&text), fold_any(&text));
        }

        #[test]
        fn normalize_spaces_is_idempotent(s in "\\PC*") {
            let once = normalize_spaces(&s);
            prop_assert_eq!(normalize_spaces(&once), once.clone());
            prop_assert!(!once.contains("  "));
        }
    }
}
