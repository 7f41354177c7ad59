//! `kichhoat check`: the shipped flows pass; broken copies are refused, naming file and state.

use std::path::Path;
use std::process::Command;

use crate::helpers::repo;

fn check(dir: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kichhoat")).args(["check", "--flows"]).arg(dir).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string())
}

/// A copy of the shipped flows with `edit` applied to `file`.
fn broken(file: &str, edit: impl Fn(String) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = repo().join("flows");
    std::fs::create_dir_all(dir.path().join("messages")).unwrap();
    for sub in ["", "messages"] {
        for e in std::fs::read_dir(src.join(sub)).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                let rel = p.strip_prefix(&src).unwrap().to_path_buf();
                let mut text = std::fs::read_to_string(&p).unwrap();
                if rel.to_str() == Some(file) {
                    text = edit(text);
                }
                std::fs::write(dir.path().join(rel), text).unwrap();
            }
        }
    }
    dir
}

#[test]
fn the_shipped_flows_pass_the_check() {
    let (ok, out) = check(&repo().join("flows"));
    assert!(ok, "{out}");
}

#[test]
fn a_dangling_transition_is_refused_naming_file_and_state() {
    let dir = broken("activation.toml", |t| t.replace("next = \"act_phone\"", "next = \"act_phonee\""));
    let (ok, out) = check(dir.path());
    assert!(!ok);
    assert!(out.contains("activation.toml: act_id: transition to \"act_phonee\", which does not exist"), "{out}");
    assert_eq!(out.lines().count(), 1, "the one problem, not its echoes: {out}");
}

#[test]
fn unknown_fields_actions_and_validators_are_refused() {
    let dir = broken("login.toml", |t| {
        t.replace("input = \"secret\"\naction = \"login\"", "input = \"secrett\"\naction = \"login\"")
    });
    let (ok, out) = check(dir.path());
    assert!(!ok);
    assert!(out.contains("login.toml: login_password: unknown validator \"secrett\""), "{out}");
    let dir = broken("main.toml", |t| t.replace("[states.help]\nend", "[states.help]\ncolour = \"red\"\nend"));
    let (ok, out) = check(dir.path());
    assert!(!ok);
    assert!(out.contains("main.toml: -: ") && out.contains("unknown field `colour`"), "{out}");
    let dir = broken("main.toml", |t| t.replace("action = \"switch_language\"", "action = \"fly\""));
    let (_, out) = check(dir.path());
    assert!(out.contains("main.toml: switch_language: unknown action \"fly\""), "{out}");
}

#[test]
fn an_unreachable_state_and_a_missing_outcome_are_refused() {
    let dir = broken("login.toml", |t| format!("{t}\n[states.orphan]\nend = \"login.ok\"\n"));
    let (_, out) = check(dir.path());
    assert!(out.contains("login.toml: orphan: unreachable from the start state \"menu\""), "{out}");
    let dir = broken("activation.toml", |t| t.replace(", pending = \"act_pending\"", ""));
    let (_, out) = check(dir.path());
    assert!(out.contains("act_phone: outcome \"pending\" of action \"request_otp\" has no transition"), "{out}");
}

#[test]
fn a_missing_translation_and_an_oversized_screen_are_refused() {
    let dir =
        broken("messages/en.toml", |t| t.replace("ask_password_again = \"Enter the password again:\\n0. Menu\"\n", ""));
    let (_, out) = check(dir.path());
    assert!(out.contains("act_password_again: message \"act.ask_password_again\" is missing from"), "{out}");
    let dir = broken("messages/vi.toml", |t| {
        t.replace("ask_password_again = \"", &format!("ask_password_again = \"{}", "x".repeat(170)))
    });
    let (_, out) = check(dir.path());
    assert!(out.contains("vi.toml: act_password_again: prompt: screen is"), "{out}");
    assert!(out.contains("over the USSD budget of 182"), "{out}");
}

#[test]
fn outside_the_checkout_the_built_in_flows_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kichhoat")).arg("check").current_dir(dir.path()).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("flows (built in)"));
}

#[test]
fn a_prompt_without_a_way_back_or_a_choice_without_its_space_is_refused() {
    // No `0` among the options of a prompt.
    let dir = broken("login.toml", |t| {
        t.replace("action = \"login\"\noptions = { \"0\" = \"menu\" }\n", "action = \"login\"\n")
    });
    let (ok, out) = check(dir.path());
    assert!(!ok);
    assert!(out.contains("login.toml: login_password: a prompt must offer 0"), "{out}");
    // The option is there but the screen does not show it.
    let dir = broken("messages/en.toml", |t| t.replace("Enter your password:\\n0. Menu", "Enter your password:"));
    let (ok, out) = check(dir.path());
    assert!(!ok);
    assert!(out.contains("en.toml: login_password: the screen does not show its 0 choice"), "{out}");
    // `1.X` where every other screen writes `1. X`.
    let dir = broken("messages/vi.toml", |t| t.replace("\\n1. Dùng số đang gọi", "\\n1.Dùng số đang gọi"));
    let (ok, out) = check(dir.path());
    assert!(!ok);
    assert!(out.contains("vi.toml: act_phone: choice \"1.Dùng số đang gọi\" needs a space after the dot"), "{out}");
}

#[test]
fn the_shipped_screens_do_not_all_fit_ucs2_so_ucs2_ussd_keeps_one_style_without_diacritics() {
    let flow = kichhoat::flow::Flow::load(&repo().join("flows")).unwrap();
    assert!(!flow.fits_ucs2(), "the menu alone is over 80 UCS-2 characters");
}
