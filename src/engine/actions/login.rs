//! Log-in with the ID number and the password. One refusal for an unknown ID number, an account not
//! activated yet and a wrong password, taking the same time (OWASP Authentication Cheat Sheet); failures
//! are counted per ID number and lock log-in after [`LOGIN_MAX_FAILURES`] (NIST SP 800-63B §5.2.2).

use super::{audit, misuse, Act, LOGIN_FAILURES_KEPT, LOGIN_LOCKOUT, LOGIN_MAX_FAILURES};
use crate::domain::{NationalId, Secret};
use crate::engine::{Ctx, Effect, EngineError, Out, Session, Slots};
use crate::flow::catalog::NAME_MAX;
use crate::limits::{self, Bump, CounterKey, Limit, Rule};

/// `start_login`: a fresh log-in for the ID number typed. The same as starting an activation today; kept
/// apart because log-in is about to gather different things.
pub(super) fn start_login(id: NationalId, s: &mut Session, ctx: &Ctx) -> Result<Act, EngineError> {
    s.slots = Slots { started_at: Some(ctx.now), national_id: Some(id), ..Slots::default() };
    Ok(Act::Go("done", None))
}

/// `login`: the password typed against the account's, unless the ID number is locked.
pub(super) fn login(pw: Secret, s: &mut Session, ctx: &Ctx, out: &mut Out) -> Result<Act, EngineError> {
    let now = ctx.now;
    let id = s.slots.national_id.clone().ok_or_else(|| misuse(s, "login before an ID number"))?;
    // Counted per ID number whether or not it has an account, so a lockout reveals nothing.
    let key = CounterKey::login(&id);
    let tally = ctx.directory.tally(&key)?;
    if tally.locked_at(now) {
        audit(out, "login_while_locked", Some(&id), Some(ctx.caller));
        return Ok(Act::Go("locked", None));
    }
    let account = ctx.directory.account(&id)?;
    let ok = match &account {
        Some(a) => ctx.crypto.verify_secret(pw.expose(), &a.password_hash),
        None => {
            ctx.crypto.dummy_verify(pw.expose()); // same time whether or not the account exists
            false
        }
    };
    let citizen = if ok { ctx.directory.citizen(&id)? } else { None };
    let rule = match &citizen {
        Some(_) => Rule::Success { limit: Limit::LoginLocked },
        None => failure_rule(),
    };
    // Counted in the commit: a lock set meanwhile by failures from other phones refuses this step, which
    // then runs again and answers "locked"; the failure that locks is told so even when it raced others.
    let expect = match limits::apply(&rule, &tally, now) {
        Ok((_, effect)) => effect,
        Err(_) => return Err(misuse(s, "log-in lock read differently twice")),
    };
    out.effects.push(Effect::Count(Bump { key, rule, expect }));
    match citizen {
        Some(c) => {
            out.args.push(("name", c.full_name.chars().take(NAME_MAX).collect()));
            audit(out, "login_ok", Some(&id), Some(ctx.caller));
            Ok(Act::Go("ok", None))
        }
        None => {
            audit(out, "login_failed", Some(&id), Some(ctx.caller));
            if expect.locked {
                audit(out, "login_locked", Some(&id), Some(ctx.caller));
            }
            Ok(Act::Go(if expect.locked { "locked" } else { "refused" }, None))
        }
    }
}

/// A failed log-in: [`LOGIN_MAX_FAILURES`] in a row lock for [`LOGIN_LOCKOUT`]; a record idle for
/// [`LOGIN_FAILURES_KEPT`] is forgotten.
fn failure_rule() -> Rule {
    Rule::Failure {
        limit: Limit::LoginLocked,
        max: LOGIN_MAX_FAILURES,
        lock: LOGIN_LOCKOUT,
        max_lock: LOGIN_LOCKOUT,
        forget_after: LOGIN_FAILURES_KEPT,
    }
}
