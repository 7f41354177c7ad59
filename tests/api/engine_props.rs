//! Properties of the engine over random keypad sessions: whatever a citizen (or an attacker) types, in
//! whatever order, across dials and clock jumps, the checked flows never make the engine fail, every
//! screen is CON or END and fits one USSD message, and SMS go only to registered phones. The run also
//! checks that the random sessions got deep into the activation, so the property is not vacuous.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use kichhoat::domain::text::gsm7_len;
use kichhoat::domain::Secret;
use kichhoat::engine::Inbound;

use crate::helpers::otp_in;
use crate::transcripts::EngineDriver;

const LONG: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// One step of a random session.
#[derive(Debug, Clone)]
enum Entry {
    Dial,
    /// What a citizen who knows the way would type at the current prompt.
    Right,
    Text(String),
}

/// The entry that moves the activation (or log-in) forward at `state`.
fn right_answer(state: &str, otp: &str) -> String {
    match state {
        "menu" => "1",
        "act_id" | "login_id" => "001099012345",
        "act_phone" => "1",
        "act_otp" => otp,
        "act_password" | "act_password_again" | "login_password" => "Abc*1234x",
        "act_passcode" | "act_passcode_again" => "258147",
        "act_question" => "2",
        "act_answer" => "Mướp",
        _ => "1",
    }
    .to_string()
}

/// What a keypad can send at any prompt, mixing the way forward with mistakes, noise and new dials.
fn entry() -> impl Strategy<Value = Entry> {
    let pick = |v: Vec<&'static str>| prop::sample::select(v).prop_map(|s| Entry::Text(s.to_string()));
    prop_oneof![
        1 => Just(Entry::Dial),
        6 => Just(Entry::Right),
        3 => pick(vec!["0", "1", "2", "3", "4", "9", "", "*", "#"]),
        1 => pick(vec!["001099012345", "001199012346", "031300012348", "001099099999", "12345"]),
        1 => pick(vec!["0912345678", "+84987654321", "0123456789"]),
        1 => pick(vec!["Abc*1234x", "258147", "123456", "111111", "Ha Noi", "Mướp", LONG]),
        1 => "[0-9]{6}".prop_map(Entry::Text),
        1 => "\\PC{0,30}".prop_map(Entry::Text),
    ]
}

#[test]
fn any_keypad_session_stays_within_the_rules() {
    let visited = Arc::new(Mutex::new(BTreeSet::new()));
    let mut runner = TestRunner::new(Config { cases: 256, ..Config::default() });
    // Mostly a citizen's pace, now and then a long pause (codes expire after 3 minutes, activations
    // start over after 15).
    let wait = prop_oneof![12 => 0u64..20, 1 => 0u64..1200];
    let steps = prop::collection::vec((entry(), wait), 1..120);
    let seen_states = visited.clone();
    let result = runner.run(&steps, move |steps| {
        let mut d = EngineDriver::new("0912345678");
        let mut otp = String::new();
        for (entry, wait_secs) in steps {
            d.advance_now(Duration::from_secs(wait_secs));
            let seen = match entry {
                Entry::Dial => d.step(Inbound::Start { choices: Vec::new() }),
                Entry::Right => d.step(Inbound::Text(Secret::new(right_answer(&d.state(), &otp)))),
                Entry::Text(text) => d.step(Inbound::Text(Secret::new(text))),
            };
            if let Some(code) = seen.sms.iter().find_map(|(_, t)| otp_in(t)) {
                otp = code;
            }
            seen_states.lock().unwrap().insert(d.state());
            let body = seen.response.strip_prefix("CON ").or_else(|| seen.response.strip_prefix("END "));
            prop_assert!(body.is_some(), "{:?}", seen.response);
            let len = gsm7_len(body.unwrap_or_default());
            prop_assert!(len.is_some_and(|n| n <= 182), "screen over budget: {:?}", seen.response);
            for (to, _) in &seen.sms {
                prop_assert!(["+84912345678", "+84987654321"].contains(&to.as_str()), "SMS to {to}");
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let visited = visited.lock().unwrap();
    for deep in ["act_otp", "act_password", "act_passcode", "act_question", "act_answer", "login_password"] {
        assert!(visited.contains(deep), "random sessions never reached {deep}: {visited:?}");
    }
}
