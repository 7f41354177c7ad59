//! Log-in with the ID number and the password. One refusal for an unknown ID number, an account not
//! activated yet and a wrong password, taking the same time (OWASP Authentication Cheat Sheet); failures
//! are counted per ID number and pool and lock log-in (see [`crate::engine::policy`]; NIST SP 800-63B §5.2.2).

use super::{audit, misuse, Act};
use crate::domain::{NationalId, Secret};
use crate::engine::policy::Pool;
use rand::RngCore;

use crate::engine::{Ctx, Effect, EngineError, Out, Rehash, Session, Slots};
use crate::flow::catalog::NAME_MAX;
use crate::limits::{self, Bump};
use crate::vocab::keys;

/// `start_login`: a fresh log-in for the ID number typed. The same as starting an activation today; kept
/// apart because log-in is about to gather different things.
pub(super) fn start_login(id: NationalId, s: &mut Session, ctx: &Ctx) -> Result<Act, EngineError> {
    s.slots = Slots { started_at: Some(ctx.now), national_id: Some(id), ..Slots::default() };
    Ok(Act::Go("done", None))
}

/// `login`: the password typed against the account's, unless log-in of the ID is locked for this pool.
///
/// Failures are counted per ID number in two pools, the registered phone's own and everyone else's, so
/// strangers who lock their pool never lock the citizen out (NIST SP 800-63B §5.2.2: a lockout must not
/// become a denial of service). The same words and the same work whether or not the ID exists.
pub(super) fn login(
    pw: Secret,
    s: &mut Session,
    ctx: &Ctx,
    out: &mut Out,
    rng: &mut dyn RngCore,
) -> Result<Act, EngineError> {
    let now = ctx.now;
    let id = s.slots.national_id.clone().ok_or_else(|| misuse(s, "login before an ID number"))?;
    let citizen = ctx.directory.citizen(&id)?;
    let pool = Pool::of(ctx.caller, citizen.as_ref().map(|c| &c.phone));
    let (key, failure) = ctx.policy.login_failure(&id, pool);
    let tally = ctx.directory.tally(&key)?;
    if tally.locked_at(now) {
        audit(out, "login_while_locked", Some(&id), Some(ctx.caller));
        out.until = tally.locked_until;
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
    let citizen = citizen.filter(|_| ok);
    let rule = match &citizen {
        Some(_) => ctx.policy.login_success(&id, pool).1,
        None => failure,
    };
    // Counted in the commit: a lock set meanwhile by failures from the same pool refuses this step, which
    // then runs again and answers "locked"; the failure that locks is told so even when it raced others.
    let (next, expect) = match limits::apply(&rule, &tally, now) {
        Ok(v) => v,
        Err(_) => return Err(misuse(s, "log-in lock read differently twice")),
    };
    out.effects.push(Effect::Count(Bump { key, rule, expect }));
    match citizen {
        Some(c) => {
            // A hash made before the pepper (or at another cost) is replaced now that the password is known.
            if let Some(a) = account.filter(|a| ctx.crypto.needs_rehash(&a.password_hash)) {
                let new = ctx.crypto.hash_secret(pw.expose(), rng)?;
                out.effects.push(Effect::Rehash(Rehash { national_id: id.clone(), old: a.password_hash, new }));
            }
            out.args.push(("name", c.full_name.chars().take(NAME_MAX).collect()));
            audit(out, "login_ok", Some(&id), Some(ctx.caller));
            Ok(Act::Go("ok", None))
        }
        None => {
            audit(out, "login_failed", Some(&id), Some(ctx.caller));
            if expect.locked {
                audit(out, "login_locked", Some(&id), Some(ctx.caller));
                out.until = next.locked_until;
                return Ok(Act::Go("locked", None));
            }
            // The password is asked again (the ID stays); tries left are shown from the third failure in a
            // row on.
            let left = ctx.policy.login_failures.saturating_sub(next.consecutive);
            if next.consecutive >= NEAR_LOCK_FROM {
                out.args.push(("attempts", left.to_string()));
                return Ok(Act::Retry(keys::ERR_LOGIN_NEAR_LOCK));
            }
            Ok(Act::Retry(keys::ERR_LOGIN_REFUSED))
        }
    }
}

/// From this many failures in a row, a refusal says how many tries are left before the lock.
const NEAR_LOCK_FROM: u32 = 3;
