//! Log-in with the ID number and the password. One refusal for an unknown ID number, an account not
//! activated yet and a wrong password, taking the same time (OWASP Authentication Cheat Sheet); failures
//! are counted per ID number and pool and lock log-in (see [`crate::engine::policy`]; NIST SP 800-63B §5.2.2).

use super::{audit, misuse, Act};
use crate::domain::{NationalId, Secret};
use crate::engine::policy::Pool;
use rand::RngCore;

use crate::engine::{
    Account, AccountUpdate, Citizen, Credential, Ctx, Effect, EngineError, Out, Purpose, Session, Slots,
};
use crate::flow::catalog::NAME_MAX;
use crate::limits::{self, Bump};
use crate::vocab::keys;

/// `start_login`: a fresh log-in for the ID number typed (marked a log-in: operators' views of activations
/// in progress leave it out).
pub(super) fn start_login(id: NationalId, s: &mut Session, ctx: &Ctx) -> Result<Act, EngineError> {
    s.slots = Slots { purpose: Purpose::Login, started_at: Some(ctx.now), national_id: Some(id), ..Slots::default() };
    Ok(Act::Go("done", None))
}

/// `login`: the password typed against the account's, unless log-in of the ID is locked for this pool.
pub(super) fn login(
    pw: Secret,
    s: &mut Session,
    ctx: &Ctx,
    out: &mut Out,
    rng: &mut dyn RngCore,
) -> Result<Act, EngineError> {
    let id = s.slots.national_id.clone().ok_or_else(|| misuse(s, "login before an ID number"))?;
    Ok(match check_password(&pw, &id, ctx, out, rng, "login")? {
        Checked::Right(c, _) => {
            out.args.push(("name", c.full_name.chars().take(NAME_MAX).collect()));
            Act::Go("ok", None)
        }
        Checked::Wrong(reason) => Act::Retry(reason),
        Checked::Locked => Act::Go("locked", None),
    })
}

/// What [`check_password`] found.
pub(super) enum Checked {
    /// The password is the account's: the citizen and the account.
    Right(Citizen, Account),
    /// Refused, with the reason to show above the password prompt (asked again).
    Wrong(&'static str),
    /// Too many failures: locked (`out.until` says until when).
    Locked,
}

/// The password typed for `id`, as log-in checks it (and forgot-passcode, which counts toward the same
/// lock): failures are counted per ID number in two pools, the registered phone's own and everyone
/// else's, so strangers who lock their pool never lock the citizen out (NIST SP 800-63B §5.2.2: a lockout
/// must not become a denial of service). The same words and the same work whether or not the ID exists.
/// Audited as `<event>_ok`, `<event>_failed`, `<event>_locked`, `<event>_while_locked`.
pub(super) fn check_password(
    pw: &Secret,
    id: &NationalId,
    ctx: &Ctx,
    out: &mut Out,
    rng: &mut dyn RngCore,
    event: &str,
) -> Result<Checked, EngineError> {
    let now = ctx.now;
    let citizen = ctx.directory.citizen(id)?;
    let pool = Pool::of(ctx.caller, citizen.as_ref().map(|c| &c.phone));
    let (key, failure) = ctx.policy.login_failure(id, pool);
    let tally = ctx.directory.tally(&key)?;
    if tally.locked_at(now) {
        audit(out, &format!("{event}_while_locked"), Some(id), Some(ctx.caller));
        out.until = tally.locked_until;
        return Ok(Checked::Locked);
    }
    let account = ctx.directory.account(id)?;
    let ok = match &account {
        Some(a) => ctx.crypto.verify_secret(pw.expose(), &a.password_hash),
        None => {
            ctx.crypto.dummy_verify(pw.expose()); // same time whether or not the account exists
            false
        }
    };
    let found = citizen.zip(account).filter(|_| ok);
    let rule = match &found {
        Some(_) => ctx.policy.login_success(id, pool).1,
        None => failure,
    };
    // Counted in the commit: a lock set meanwhile by failures from the same pool refuses this step, which
    // then runs again and answers "locked"; the failure that locks is told so even when it raced others.
    let (next, expect) = limits::apply(&rule, &tally, now)
        .map_err(|_| EngineError::Flow { state: event.to_string(), why: "log-in lock read differently twice" })?;
    out.effects.push(Effect::Count(Bump { key, rule, expect }));
    match found {
        Some((c, a)) => {
            // A hash made before the pepper (or at another cost) is replaced now that the password is known.
            if ctx.crypto.needs_rehash(&a.password_hash) {
                let new = ctx.crypto.hash_secret(pw.expose(), rng)?;
                out.effects.push(Effect::UpdateAccount(AccountUpdate {
                    national_id: id.clone(),
                    credential: Credential::Password,
                    old: a.password_hash.clone(),
                    new,
                    required: false,
                }));
            }
            audit(out, &format!("{event}_ok"), Some(id), Some(ctx.caller));
            Ok(Checked::Right(c, a))
        }
        None => {
            audit(out, &format!("{event}_failed"), Some(id), Some(ctx.caller));
            if expect.locked {
                audit(out, &format!("{event}_locked"), Some(id), Some(ctx.caller));
                out.until = next.locked_until;
                return Ok(Checked::Locked);
            }
            // The password is asked again (the ID stays); tries left are shown from the third failure in a
            // row on.
            let left = ctx.policy.login_failures.saturating_sub(next.consecutive);
            if next.consecutive >= NEAR_LOCK_FROM {
                out.args.push(("attempts", left.to_string()));
                return Ok(Checked::Wrong(keys::ERR_LOGIN_NEAR_LOCK));
            }
            Ok(Checked::Wrong(keys::ERR_LOGIN_REFUSED))
        }
    }
}

/// From this many failures in a row, a refusal says how many tries are left before the lock.
const NEAR_LOCK_FROM: u32 = 3;
