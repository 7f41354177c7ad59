//! The credentials an activation sets once the code is verified: the password and the passcode (each typed
//! twice), and two security questions with their answers. Everything is kept only as an argon2id hash
//! (OWASP Password Storage Cheat Sheet); a confirmation that does not match voids the first entry, so the
//! citizen sets it again.

use rand::RngCore;

use super::{misuse, require_verified, Act, QUESTIONS_REQUIRED};
use crate::domain::{Passcode, Password, Secret, SecurityAnswer};
use crate::engine::{Answered, Ctx, EngineError, Session};
use crate::vocab::keys;

/// `choose_password`: a password that passed the composition rules, kept as a hash until confirmed.
pub(super) fn choose_password(
    pw: Password,
    s: &mut Session,
    ctx: &Ctx,
    rng: &mut dyn RngCore,
) -> Result<Act, EngineError> {
    require_verified(s)?;
    s.slots.password_hash = Some(ctx.crypto.hash_secret(pw.expose(), rng)?);
    Ok(Act::Go("done", None))
}

/// `confirm_password`: the password typed again.
pub(super) fn confirm_password(again: Secret, s: &mut Session, ctx: &Ctx) -> Result<Act, EngineError> {
    let hash = s.slots.password_hash.clone().ok_or_else(|| misuse(s, "confirm_password before choose_password"))?;
    if ctx.crypto.verify_secret(again.expose(), &hash) {
        Ok(Act::Go("ok", None))
    } else {
        s.slots.password_hash = None;
        Ok(Act::Go("mismatch", Some(keys::ERR_PW_MISMATCH)))
    }
}

/// `choose_passcode`: a 6-digit passcode that passed its rules, kept as a hash until confirmed.
pub(super) fn choose_passcode(
    pc: Passcode,
    s: &mut Session,
    ctx: &Ctx,
    rng: &mut dyn RngCore,
) -> Result<Act, EngineError> {
    require_verified(s)?;
    s.slots.passcode_hash = Some(ctx.crypto.hash_secret(pc.expose(), rng)?);
    Ok(Act::Go("done", None))
}

/// `confirm_passcode`: the passcode typed again (surrounding spaces ignored, as when it was chosen).
pub(super) fn confirm_passcode(again: Secret, s: &mut Session, ctx: &Ctx) -> Result<Act, EngineError> {
    let hash = s.slots.passcode_hash.clone().ok_or_else(|| misuse(s, "confirm_passcode before choose_passcode"))?;
    if ctx.crypto.verify_secret(again.expose().trim(), &hash) {
        Ok(Act::Go("ok", None))
    } else {
        s.slots.passcode_hash = None;
        Ok(Act::Go("mismatch", Some(keys::ERR_PC_MISMATCH)))
    }
}

/// `choose_question`: a question from the list, not answered yet (the validator saw to both).
pub(super) fn choose_question(question: String, s: &mut Session) -> Result<Act, EngineError> {
    s.slots.question = Some(question);
    Ok(Act::Go("done", None))
}

/// `set_answer`: the answer to the chosen question; `more` until [`QUESTIONS_REQUIRED`] are answered.
pub(super) fn set_answer(
    answer: SecurityAnswer,
    raw: &Secret,
    s: &mut Session,
    ctx: &Ctx,
    rng: &mut dyn RngCore,
) -> Result<Act, EngineError> {
    require_verified(s)?;
    let question = s.slots.question.clone().ok_or_else(|| misuse(s, "set_answer before choose_question"))?;
    // An answer must not be the password: whoever learns the one, a weak secret by nature (OWASP Choosing
    // and Using Security Questions Cheat Sheet), would hold the other. The password is only a hash by now,
    // so the raw entry is checked against it.
    if let Some(pw) = &s.slots.password_hash {
        if ctx.crypto.verify_secret(raw.expose().trim(), pw) {
            return Ok(Act::Retry(keys::ERR_ANS_PASSWORD));
        }
    }
    let answer_hash = ctx.crypto.hash_secret(answer.expose(), rng)?;
    s.slots.questions.push(Answered { question, answer_hash });
    s.slots.question = None;
    if s.slots.questions.len() >= QUESTIONS_REQUIRED {
        Ok(Act::Go("done", None))
    } else {
        Ok(Act::Go("more", None))
    }
}
