//! Flow files: the conversation as data. This module owns their format, loading them from `flows/`, and
//! turning them into a checked [`Flow`] the engine can run without further checks.
//!
//! A flow directory holds state files (`*.toml`) and message catalogues (`messages/<lang>.toml`). Every
//! state is one of three kinds, told apart by its fields:
//!
//! - **input** (`prompt`, with `options` and/or `input` + `action`): shows a CON screen and waits;
//! - **auto** (`action` alone): runs a named action at once and follows the outcome;
//! - **end** (`end`): shows an END screen; the conversation returns to the start state.
//!
//! Transitions are `on = { outcome = "state" }` (`next = "state"` is short for the outcome `done`) and
//! `options = { "1" = "state" }` for literal keypad choices, which are tried before the validator.
//! Loading rejects anything the engine could trip on (see [`check`]); `kichhoat check` and start-up share
//! that code. Security rules (OTP lifetime, attempts, hashing, masking) are Rust, not flow data.
//!
//! The actions and validators a state may name, and what each declares, come from [`crate::vocab`]; this
//! module never reaches into the engine that runs them.

pub mod catalog;
pub mod check;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use catalog::{Catalog, Charset};

use crate::vocab::{ActionKind, Validator};

/// The flow format version this build understands.
pub const SPEC_VERSION: u32 = 1;

/// A language the citizen can choose; the first is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    Vi,
    En,
}

impl Lang {
    pub const ALL: [Lang; 2] = [Lang::Vi, Lang::En];
    pub fn code(self) -> &'static str {
        match self {
            Lang::Vi => "vi",
            Lang::En => "en",
        }
    }
    pub fn from_code(code: &str) -> Option<Lang> {
        Lang::ALL.into_iter().find(|l| l.code() == code)
    }
    /// The other language, for the one-key language switch on the menu.
    pub fn other(self) -> Lang {
        match self {
            Lang::Vi => Lang::En,
            Lang::En => Lang::Vi,
        }
    }
}

/// One problem found while loading flows: `file: state: problem`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub state: String,
    pub problem: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file, self.state, self.problem)
    }
}

/// A state file as written (unknown fields are refused).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDef {
    spec_version: u32,
    settings: Option<SettingsDef>,
    #[serde(default)]
    states: BTreeMap<String, StateDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsDef {
    start: Option<String>,
    help: Option<String>,
    max_tries: Option<u8>,
    questions: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateDef {
    prompt: Option<String>,
    end: Option<String>,
    input: Option<String>,
    action: Option<String>,
    next: Option<String>,
    #[serde(default)]
    on: BTreeMap<String, String>,
    #[serde(default)]
    options: BTreeMap<String, String>,
    #[serde(default)]
    resume: bool,
}

/// What a state does.
#[derive(Debug, Clone)]
pub enum Kind {
    Input { prompt: String, input: Option<(Validator, ActionKind)>, options: BTreeMap<String, String> },
    Auto { action: ActionKind },
    End { message: String },
}

/// A checked state.
#[derive(Debug, Clone)]
pub struct State {
    pub name: String,
    pub file: String,
    pub kind: Kind,
    /// outcome → next state
    pub on: BTreeMap<String, String>,
    /// Whether a new dial while the conversation stands here reopens it here (activation steps).
    pub resume: bool,
}

/// A loaded, checked flow: every name it holds resolves, every message exists in every language.
#[derive(Debug, Clone)]
pub struct Flow {
    pub start: String,
    /// The END state that answers a request for help (`TRO GIUP` over SMS).
    pub help: String,
    pub max_tries: u8,
    /// Message keys of the security questions, in the order they are listed.
    pub questions: Vec<String>,
    pub states: HashMap<String, State>,
    pub catalogs: BTreeMap<Lang, Catalog>,
    /// Where the flow was loaded from (a directory, or the copy built into the binary).
    pub source: String,
}

impl Flow {
    pub fn state(&self, name: &str) -> Option<&State> {
        self.states.get(name)
    }

    pub fn catalog(&self, lang: Lang) -> &Catalog {
        // Every language is present after checking; fall back to any catalogue rather than panic.
        self.catalogs.get(&lang).or_else(|| self.catalogs.values().next()).unwrap_or(&catalog::EMPTY)
    }

    /// The numbered list of security questions in `lang`, leaving out those in `exclude` (already chosen);
    /// the numbers stay those of the full list, so a citizen's choice means the same on every screen.
    pub fn question_list(&self, lang: Lang, exclude: &[String]) -> String {
        let cat = self.catalog(lang);
        self.questions
            .iter()
            .enumerate()
            .filter(|(_, q)| !exclude.contains(q))
            .map(|(i, q)| format!("{}. {}", i + 1, cat.get(q)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Whether every USSD screen of this flow, in every language, fits one UCS-2 message (80 characters)
    /// with its diacritics: measured generously, as the longest notice above the longest prompt, with every
    /// placeholder at its widest. `--ussd-charset ucs2` keeps diacritics only when this holds, so a
    /// conversation never switches style from one screen to the next (see [`Charset::Ucs2`]).
    pub fn fits_ucs2(&self) -> bool {
        use crate::domain::text::ucs2_len;
        self.catalogs.iter().all(|(lang, cat)| {
            let widest = |text: &str| -> usize {
                let mut t = text.to_string();
                for (name, width) in catalog::PLACEHOLDERS {
                    let v = match *name {
                        "questions" => self.question_list(*lang, &[]),
                        "question" => self
                            .questions
                            .iter()
                            .map(|q| cat.get(q).to_string())
                            .max_by_key(|q| q.chars().count())
                            .unwrap_or_default(),
                        _ => "W".repeat(*width),
                    };
                    t = t.replace(&format!("{{{name}}}"), &v);
                }
                ucs2_len(&t)
            };
            // Every text a USSD screen can show (SMS texts and SMS-only wording aside).
            let screens: Vec<usize> = cat
                .messages
                .iter()
                .filter(|(k, _)| !k.starts_with("sms") && !k.starts_with("for_sms") && !k.starts_with("question."))
                .map(|(_, t)| widest(t))
                .collect();
            let longest = screens.iter().copied().max().unwrap_or(0);
            // A notice or reason stands above a prompt: the two longest together bound every screen.
            longest.saturating_mul(2).saturating_add(1) <= catalog::USSD_UCS2_BUDGET
        })
    }

    /// Loads and checks every flow file and catalogue under `dir`.
    pub fn load(dir: &Path) -> Result<Flow, Vec<Problem>> {
        check::load(&Source::from_dir(dir))
    }

    /// Loads and checks the flows at `dir`, or the copy built into the binary when `dir` is `None`.
    pub fn load_from(dir: Option<&Path>) -> Result<Flow, Vec<Problem>> {
        match dir {
            Some(d) => Flow::load(d),
            None => check::load(&Source::embedded()),
        }
    }
}

/// The files of a flow directory: `*.toml` state files and `messages/<lang>.toml` catalogues, by
/// relative path.
#[derive(Debug, Clone)]
pub struct Source {
    /// How problems name it: the directory as given, or `flows (built in)`.
    pub name: String,
    pub files: BTreeMap<String, String>,
    pub error: Option<String>,
}

/// The shipped flows, compiled in so the binary runs from any directory.
const EMBEDDED: &[(&str, &str)] = &[
    ("main.toml", include_str!("../../flows/main.toml")),
    ("activation.toml", include_str!("../../flows/activation.toml")),
    ("login.toml", include_str!("../../flows/login.toml")),
    ("recovery.toml", include_str!("../../flows/recovery.toml")),
    ("messages/vi.toml", include_str!("../../flows/messages/vi.toml")),
    ("messages/en.toml", include_str!("../../flows/messages/en.toml")),
];

impl Source {
    pub fn embedded() -> Source {
        let files = EMBEDDED.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Source { name: "flows (built in)".into(), files, error: None }
    }

    pub fn from_dir(dir: &Path) -> Source {
        let name = dir.display().to_string().trim_end_matches('/').to_string();
        let mut files = BTreeMap::new();
        let mut error = None;
        for sub in ["", "messages"] {
            let entries = match std::fs::read_dir(dir.join(sub)) {
                Ok(e) => e,
                Err(e) if sub.is_empty() => {
                    error = Some(e.to_string());
                    break;
                }
                Err(_) => continue,
            };
            for e in entries.flatten() {
                let path = e.path();
                if !path.is_file() || path.extension().is_none_or(|x| x != "toml") {
                    continue;
                }
                let Some(file) = path.file_name().and_then(|f| f.to_str()) else { continue };
                let rel = if sub.is_empty() { file.to_string() } else { format!("{sub}/{file}") };
                match std::fs::read_to_string(&path) {
                    Ok(text) => {
                        files.insert(rel, text);
                    }
                    Err(e) => error = Some(format!("{}: {e}", path.display())),
                }
            }
        }
        Source { name, files, error }
    }

    /// The display path of a file of this source, for problems.
    pub fn path_of(&self, rel: &str) -> String {
        format!("{}/{rel}", self.name)
    }
}
