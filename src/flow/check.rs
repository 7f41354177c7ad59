//! Loading and checking a flow directory. Every problem is collected (not just the first) and named by
//! file and state, so `kichhoat check` can list them all and start-up can refuse a broken flow.
//!
//! Checked: TOML syntax and unknown fields, the spec version, state shapes, unknown validators and
//! actions, validator/action pairing, every outcome of an action mapped and no unknown outcome, dangling
//! transitions, unreachable states, missing or unused translations, unknown placeholders, and every
//! screen (with each reason or notice that can stand above it) against the USSD budget.
//!
//! What actions and validators exist, and what each takes, returns and shows, is read from their
//! declarations in [`crate::vocab`]; the engine is held to the same declarations when it runs.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use super::catalog::{placeholders, sms_overflow, sms_reply_overflow, ussd_overflow, Catalog, PLACEHOLDERS};
use super::{FileDef, Flow, Kind, Lang, Problem, Source, State, StateDef, SPEC_VERSION};
use crate::vocab::{keys, ActionKind, Medium, Validator};

/// The fewest refused entries a citizen gets at one step before the session ends (issue #2).
pub const MIN_TRIES: u8 = 5;
/// VNeID asks two questions, so a list needs at least this many for a real choice.
pub const MIN_QUESTIONS: usize = 6;

struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, file: &str, state: &str, problem: impl Into<String>) {
        self.0.push(Problem { file: file.to_string(), state: state.to_string(), problem: problem.into() });
    }
}

pub fn load(src: &Source) -> Result<Flow, Vec<Problem>> {
    let mut p = Problems(Vec::new());
    let dir_name = src.name.clone();
    let mut files: Vec<(String, FileDef)> = Vec::new();
    if let Some(e) = &src.error {
        p.add(&dir_name, "-", format!("cannot read the flow directory: {e}"));
        return Err(p.0);
    }
    for (rel, text) in src.files.iter().filter(|(rel, _)| !rel.contains('/')) {
        let name = src.path_of(rel);
        match toml::from_str::<FileDef>(text) {
            Ok(def) => files.push((name, def)),
            Err(e) => p.add(&name, "-", one_line(&e.to_string())),
        }
    }
    let catalogs = load_catalogs(src, &mut p);

    // Settings, each given once.
    let (mut start, mut help, mut max_tries, mut questions) = (None, None, None, None);
    for (file, def) in &files {
        if def.spec_version != SPEC_VERSION {
            p.add(
                file,
                "-",
                format!("spec_version {} is not supported (this build reads {SPEC_VERSION})", def.spec_version),
            );
        }
        if let Some(s) = &def.settings {
            set_once(&mut start, &s.start, file, "start", &mut p);
            set_once(&mut help, &s.help, file, "help", &mut p);
            set_once(&mut max_tries, &s.max_tries, file, "max_tries", &mut p);
            set_once(&mut questions, &s.questions, file, "questions", &mut p);
        }
    }
    let start = start.map(|(v, _)| v).unwrap_or_else(|| {
        p.add(&dir_name, "-", "no file sets settings.start");
        String::new()
    });
    let help = help.map(|(v, _)| v).unwrap_or_else(|| {
        p.add(&dir_name, "-", "no file sets settings.help (the END state that answers a request for help)");
        String::new()
    });
    let max_tries = max_tries.map(|(v, _)| v).unwrap_or(MIN_TRIES);
    if max_tries < MIN_TRIES {
        p.add(&dir_name, "-", format!("settings.max_tries is {max_tries}; a citizen gets at least {MIN_TRIES} tries"));
    }
    let (questions, questions_file) = questions.unwrap_or_else(|| (Vec::new(), dir_name.clone()));
    if questions.len() < MIN_QUESTIONS {
        p.add(
            &questions_file,
            "-",
            format!("settings.questions lists {}; at least {MIN_QUESTIONS} are needed", questions.len()),
        );
    }

    // States.
    let mut states: HashMap<String, State> = HashMap::new();
    for (file, def) in &files {
        for (name, sd) in &def.states {
            if let Some(prev) = states.get(name) {
                p.add(file, name, format!("state is also defined in {}", prev.file));
                continue;
            }
            if let Some(state) = build_state(file, name, sd, &mut p) {
                states.insert(name.clone(), state);
            }
        }
    }
    if !start.is_empty() && !states.contains_key(&start) {
        p.add(&dir_name, &start, "settings.start names a state that does not exist");
    }
    match states.get(&help) {
        Some(st) if matches!(st.kind, Kind::End { .. }) => {}
        Some(st) => p.add(&st.file, &help, "settings.help names a state that is not an end state"),
        None if !help.is_empty() => p.add(&dir_name, &help, "settings.help names a state that does not exist"),
        None => {}
    }
    let broken_before_messages = !p.0.is_empty();
    check_graph(&start, &states, &mut p);

    let flow = Flow { start, help, max_tries, questions, states, catalogs, source: src.name.clone() };
    check_messages(&flow, &questions_file, !broken_before_messages, &mut p);
    if p.0.is_empty() {
        Ok(flow)
    } else {
        Err(p.0)
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn set_once<T: Clone>(slot: &mut Option<(T, String)>, value: &Option<T>, file: &str, what: &str, p: &mut Problems) {
    if let Some(v) = value {
        match slot {
            Some((_, first)) => p.add(file, "-", format!("settings.{what} is also set in {first}")),
            None => *slot = Some((v.clone(), file.to_string())),
        }
    }
}

fn load_catalogs(src: &Source, p: &mut Problems) -> BTreeMap<Lang, Catalog> {
    let mut out = BTreeMap::new();
    for lang in Lang::ALL {
        let rel = format!("messages/{}.toml", lang.code());
        let name = src.path_of(&rel);
        match src.files.get(&rel) {
            Some(text) => match Catalog::parse(&name, text) {
                Ok(c) => {
                    out.insert(lang, c);
                }
                Err(e) => p.add(&name, "-", one_line(&e)),
            },
            None => p.add(&name, "-", format!("missing message catalogue for {}", lang.code())),
        }
    }
    for rel in src.files.keys().filter_map(|r| r.strip_prefix("messages/")) {
        let stem = rel.trim_end_matches(".toml");
        if Lang::from_code(stem).is_none() {
            p.add(&src.path_of(&format!("messages/{rel}")), "-", format!("unknown language {stem:?}"));
        }
    }
    out
}

fn build_state(file: &str, name: &str, sd: &StateDef, p: &mut Problems) -> Option<State> {
    let mut on = sd.on.clone();
    if let Some(next) = &sd.next {
        if on.insert("done".into(), next.clone()).is_some() {
            p.add(file, name, "both next and on.done are set");
        }
    }
    let action = match &sd.action {
        Some(a) => match ActionKind::from_name(a) {
            Some(k) => Some(k),
            None => {
                p.add(file, name, format!("unknown action {a:?}"));
                return None;
            }
        },
        None => None,
    };
    let validator = match &sd.input {
        Some(v) => match Validator::from_name(v) {
            Some(k) => Some(k),
            None => {
                p.add(file, name, format!("unknown validator {v:?}"));
                return None;
            }
        },
        None => None,
    };
    let kind = match (&sd.end, &sd.prompt) {
        (Some(_), Some(_)) => {
            p.add(file, name, "a state has either end or prompt, not both");
            return None;
        }
        (Some(message), None) => {
            if action.is_some() || validator.is_some() || !on.is_empty() || !sd.options.is_empty() || sd.resume {
                p.add(file, name, "an end state takes no input, action, transitions, options or resume");
                return None;
            }
            Kind::End { message: message.clone() }
        }
        (None, Some(prompt)) => {
            let input = match (validator, action) {
                (Some(v), Some(a)) => {
                    if a.input() != Some(v) {
                        let wants = a.input().map(|v| v.name()).unwrap_or("no input");
                        p.add(file, name, format!("action {:?} takes {wants}, not input {:?}", a.name(), v.name()));
                        return None;
                    }
                    Some((v, a))
                }
                (Some(v), None) => {
                    p.add(file, name, format!("input {:?} needs an action to receive it", v.name()));
                    return None;
                }
                (None, Some(a)) => {
                    p.add(file, name, format!("action {:?} on a prompt needs an input", a.name()));
                    return None;
                }
                (None, None) => None,
            };
            if !sd.options.contains_key("0") {
                p.add(file, name, "a prompt must offer 0 (options = { \"0\" = ... }): every screen has a way back");
            }
            if input.is_none() && sd.options.is_empty() {
                p.add(file, name, "a prompt needs options or an input, or the citizen is stuck");
                return None;
            }
            Kind::Input { prompt: prompt.clone(), input, options: sd.options.clone() }
        }
        (None, None) => match (action, validator) {
            (Some(a), None) if a.input().is_none() => {
                if !sd.options.is_empty() || sd.resume {
                    p.add(file, name, "an automatic state takes no options or resume");
                    return None;
                }
                Kind::Auto { action: a }
            }
            (Some(a), _) => {
                p.add(file, name, format!("action {:?} needs an input and a prompt", a.name()));
                return None;
            }
            _ => {
                p.add(file, name, "a state needs prompt, end or action");
                return None;
            }
        },
    };
    // Outcomes: exactly those of the action.
    let outcomes: &[&str] = match &kind {
        Kind::Input { input: Some((_, a)), .. } | Kind::Auto { action: a } => a.outcomes(),
        _ => &[],
    };
    for o in outcomes {
        if !on.contains_key(*o) {
            p.add(
                file,
                name,
                format!("outcome {o:?} of action {:?} has no transition", action.map(|a| a.name()).unwrap_or("")),
            );
        }
    }
    for o in on.keys() {
        if !outcomes.contains(&o.as_str()) {
            p.add(file, name, format!("transition on unknown outcome {o:?}"));
        }
    }
    Some(State { name: name.to_string(), file: file.to_string(), kind, on, resume: sd.resume })
}

/// Targets of a state's transitions and options.
pub fn targets(state: &State) -> impl Iterator<Item = &String> {
    let opts = match &state.kind {
        Kind::Input { options, .. } => Some(options.values()),
        _ => None,
    };
    state.on.values().chain(opts.into_iter().flatten())
}

fn check_graph(start: &str, states: &HashMap<String, State>, p: &mut Problems) {
    let mut sorted: Vec<&State> = states.values().collect();
    sorted.sort_by(|a, b| (&a.file, &a.name).cmp(&(&b.file, &b.name)));
    let mut dangling = false;
    for s in &sorted {
        for t in targets(s) {
            if !states.contains_key(t) {
                p.add(&s.file, &s.name, format!("transition to {t:?}, which does not exist"));
                dangling = true;
            }
        }
    }
    // A dangling transition strands everything behind it; listing all of that as unreachable would
    // bury the one real problem.
    if dangling || !states.contains_key(start) {
        return;
    }
    let mut seen = BTreeSet::from([start.to_string()]);
    let mut queue = VecDeque::from([start.to_string()]);
    while let Some(n) = queue.pop_front() {
        if let Some(s) = states.get(&n) {
            for t in targets(s) {
                if states.contains_key(t) && seen.insert(t.clone()) {
                    queue.push_back(t.clone());
                }
            }
        }
    }
    for s in sorted {
        if !seen.contains(&s.name) {
            p.add(&s.file, &s.name, format!("unreachable from the start state {start:?}"));
        }
    }
}

/// Which notices can stand above each state's prompt: (state → notice keys), from actions leading to it.
fn notices_into(flow: &Flow) -> HashMap<&str, BTreeSet<&'static str>> {
    let mut out: HashMap<&str, BTreeSet<&'static str>> = HashMap::new();
    for s in flow.states.values() {
        let action = match &s.kind {
            Kind::Input { input: Some((_, a)), .. } | Kind::Auto { action: a } => *a,
            _ => continue,
        };
        for (outcome, key) in action.notices() {
            if let Some(target) = s.on.get(*outcome) {
                out.entry(target.as_str()).or_default().insert(key);
            }
        }
    }
    out
}

/// `report_unused`: false when some state failed to load, since its messages would look unused.
fn check_messages(flow: &Flow, questions_file: &str, report_unused: bool, p: &mut Problems) {
    let known: BTreeMap<&str, usize> = PLACEHOLDERS.iter().copied().collect();
    // Every key each catalogue must hold, with where it is used.
    let mut used: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut use_key = |k: &str, file: &str, state: &str| {
        used.entry(k.to_string()).or_insert((file.to_string(), state.to_string()));
    };
    for k in keys::FIXED {
        use_key(k, "(engine)", k);
    }
    for q in &flow.questions {
        use_key(q, questions_file, "settings.questions");
    }
    let notices = notices_into(flow);
    let mut screens: Vec<(&State, Vec<&str>, &str, bool)> = Vec::new(); // state, prefixes, body, is_input
    let mut sorted: Vec<&State> = flow.states.values().collect();
    sorted.sort_by(|a, b| (&a.file, &a.name).cmp(&(&b.file, &b.name)));
    for s in sorted {
        match &s.kind {
            Kind::Input { prompt, input, options } => {
                let mut prefixes: Vec<&str> = Vec::new();
                if let Some((v, a)) = input {
                    prefixes.extend(v.reasons());
                    prefixes.extend(a.reasons());
                }
                if !options.is_empty() && input.is_none() {
                    prefixes.push(keys::ERR_CHOICE);
                }
                if s.resume {
                    prefixes.extend(keys::KEPT_NOTES);
                    if let Some((_, a)) = input {
                        prefixes.extend(a.resume_notices());
                    }
                }
                if s.name == flow.start {
                    prefixes.push(keys::NOTE_RESTART);
                }
                if let Some(n) = notices.get(s.name.as_str()) {
                    prefixes.extend(n.iter().copied());
                }
                for k in prefixes.iter().copied().chain([prompt.as_str()]) {
                    use_key(k, &s.file, &s.name);
                }
                screens.push((s, prefixes, prompt, true));
            }
            Kind::End { message } => {
                use_key(message, &s.file, &s.name);
                screens.push((s, Vec::new(), message, false));
            }
            Kind::Auto { action } => {
                for (_, k) in action.notices() {
                    use_key(k, &s.file, &s.name);
                }
            }
        }
    }
    for (lang, cat) in &flow.catalogs {
        for (k, (file, state)) in &used {
            if !cat.messages.contains_key(k) {
                p.add(file, state, format!("message {k:?} is missing from {} ({})", cat.file, lang.code()));
            }
        }
        for (k, text) in &cat.messages {
            let overrides = Medium::ALL
                .iter()
                .filter_map(|m| m.overrides())
                .find_map(|t| k.strip_prefix(t).and_then(|rest| rest.strip_prefix('.')).map(|base| (t, base)));
            match overrides {
                Some((table, base)) if report_unused && !used.contains_key(base) => {
                    p.add(&cat.file, k, format!("[{table}] replaces {base:?}, which no flow uses"))
                }
                Some(_) => {}
                None if report_unused && !used.contains_key(k) => {
                    p.add(&cat.file, k, "message is not used by any flow")
                }
                None => {}
            }
            for ph in placeholders(text) {
                if !known.contains_key(ph.as_str()) {
                    p.add(&cat.file, k, format!("unknown placeholder {{{ph}}}"));
                }
            }
        }
    }
    // Budgets, with every placeholder at its widest, for every medium a screen can be shown on.
    for (lang, cat) in &flow.catalogs {
        let list = flow.question_list(*lang, &[]);
        let longest = flow.questions.iter().map(|q| cat.get(q)).max_by_key(|t| t.chars().count()).unwrap_or("");
        let widest = |medium: Medium, key: &str| -> String {
            let mut t = cat.get_for(medium, key).to_string();
            for (name, width) in PLACEHOLDERS {
                let v = match *name {
                    "questions" => list.clone(),
                    "question" => longest.to_string(),
                    _ => "W".repeat(*width),
                };
                t = t.replace(&format!("{{{name}}}"), &v);
            }
            t
        };
        for medium in Medium::ALL {
            // Over SMS a reply may also carry the reminder to delete a secret above it, and always what
            // can be texted next below it.
            let frame = |screen: String, is_input: bool| -> String {
                match medium {
                    Medium::Ussd => screen,
                    Medium::Sms => {
                        let footer = if is_input { keys::SMS_MORE } else { keys::SMS_AGAIN };
                        format!("{}\n{screen}\n{}", widest(medium, keys::SMS_DELETE_SECRET), widest(medium, footer))
                    }
                }
            };
            let overflow = |text: &str| match medium {
                Medium::Ussd => ussd_overflow(text),
                Medium::Sms => sms_reply_overflow(text),
            };
            let on = |what: String| match medium {
                Medium::Ussd => what,
                Medium::Sms => format!("over SMS, {what}"),
            };
            for (s, prefixes, body, is_input) in &screens {
                let body_text = widest(medium, body);
                if medium == Medium::Ussd {
                    numbering(&cat.file, s, &body_text, *is_input, p);
                }
                let mut candidates = vec![(String::from("prompt"), body_text.clone())];
                for pre in prefixes {
                    candidates
                        .push((format!("{pre:?} above the prompt"), format!("{}\n{}", widest(medium, pre), body_text)));
                }
                for (what, screen) in candidates {
                    if let Some(why) = overflow(&frame(screen, *is_input)) {
                        p.add(&cat.file, &s.name, on(format!("{what}: {why}")));
                    }
                }
            }
            if let Some(help) = flow.state(&flow.help).and_then(|s| match &s.kind {
                Kind::End { message } => Some(message),
                _ => None,
            }) {
                let screen = format!("{}\n{}", widest(medium, help), widest(medium, keys::HELP_HOTLINE));
                if let Some(why) = overflow(&frame(screen, false)) {
                    p.add(&cat.file, &flow.help, on(format!("with the hotline below: {why}")));
                }
            }
            // The engine's own CON screen, alone or under a refused choice.
            for (key, above) in [keys::LEAVE_CONFIRM, keys::LEAVE_CONFIRM_RECOVERY]
                .into_iter()
                .flat_map(|k| [(k, None), (k, Some(keys::ERR_CHOICE))])
            {
                let body = widest(medium, key);
                let screen = match above {
                    Some(a) => format!("{}\n{body}", widest(medium, a)),
                    None => body.clone(),
                };
                if let Some(why) = overflow(&frame(screen, true)) {
                    p.add(&cat.file, key, on(why));
                }
                if medium == Medium::Ussd && !body.lines().any(|l| l.starts_with("0. ")) {
                    p.add(&cat.file, key, "the screen does not show its 0 choice (a line \"0. ...\")");
                }
            }
            for k in keys::FIXED_SCREENS {
                if let Some(why) = overflow(&frame(widest(medium, k), false)) {
                    p.add(&cat.file, k, on(why));
                }
            }
        }
        for k in keys::SMS {
            for medium in Medium::ALL {
                if let Some(why) = sms_overflow(&widest(medium, k)) {
                    p.add(&cat.file, k, on_medium(medium, why));
                }
            }
        }
    }
}

/// One numbering style on every screen, and a way back from every prompt: a numbered choice is written
/// `1. X` (number, dot, space), and a CON screen offers `0` (its options hold a `0`, and the screen says so
/// on a line of its own, `0. ...`).
fn numbering(file: &str, s: &State, screen: &str, is_input: bool, p: &mut Problems) {
    for line in screen.lines() {
        let digits = line.bytes().take_while(u8::is_ascii_digit).count();
        let rest = &line[digits..];
        if digits > 0 && rest.starts_with('.') && !rest[1..].starts_with(' ') && !rest[1..].is_empty() {
            p.add(file, &s.name, format!("choice {line:?} needs a space after the dot (\"1. X\")"));
        }
    }
    if !is_input {
        return;
    }
    if !screen.lines().any(|l| l.starts_with("0. ")) {
        p.add(file, &s.name, "the screen does not show its 0 choice (a line \"0. ...\")");
    }
}

fn on_medium(medium: Medium, what: String) -> String {
    match medium {
        Medium::Ussd => what,
        Medium::Sms => format!("over SMS, {what}"),
    }
}
