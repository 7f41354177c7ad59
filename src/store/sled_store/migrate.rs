//! Opening a data dir written by an earlier release: its store schema is read from the `schema` key and
//! brought to [`SCHEMA`](super::SCHEMA) before anything else touches the trees. A data dir of a newer
//! release is refused with a message naming both versions, rather than misread.
//!
//! Schema 1 (the first release) kept a conversation as `{session, hop}` with the Africa's Talking hop
//! cursor and its recent replies inside, OTP send times in `otp_sends`, log-in failures in
//! `login_failures`, and outbox records without delivery state. Schema 2 had no audit trail file: its
//! audit records are all marked unexported, so the first start of this release writes the history into
//! the file (in id order) before anything new. Each step below is idempotent (a record already in the new
//! form is left alone), so a migration cut short by a crash simply runs again; the schema key is written
//! last.

use serde::{Deserialize, Serialize};

use super::{at_key, backend, decode, encode, encode_conv, ConvRecord, SCHEMA, V2};
use crate::channel::africastalking::legacy_cursor;
use crate::clock::Millis;
use crate::domain::{Msisdn, NationalId};
use crate::engine::policy::{Policy, Pool};
use crate::engine::{Reply, Session};
use crate::limits::{CounterKey, Tally};
use crate::store::{Conversation, QueuedSms, RecentReply, StoreError};

const SCHEMA_KEY: &str = "schema";
/// How long migrated counters are kept at least (schema 1 kept OTP send times for a day).
/// The first release counted OTP sends and log-in failures without telling who asked: they are carried
/// into the strangers' pool, so a citizen's own allowance starts whole.
const MIGRATED_COUNTERS_KEPT: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// Schema 1 records, as that release wrote them.
mod v1 {
    use super::*;

    #[derive(Deserialize)]
    pub struct Conversation {
        pub session: Session,
        pub hop: Option<HopCursor>,
    }

    #[derive(Deserialize)]
    pub struct HopCursor {
        pub session_mac: String,
        pub text_len: usize,
        pub text_mac: String,
        pub recent: Vec<RecentHop>,
    }

    #[derive(Deserialize)]
    pub struct RecentHop {
        pub text_mac: String,
        pub reply: Reply,
        #[serde(default)]
        pub at: Millis,
    }

    #[derive(Deserialize)]
    pub struct OtpSends {
        pub times: Vec<Millis>,
    }

    #[derive(Deserialize)]
    pub struct LoginFailures {
        pub consecutive: u32,
        pub locked_until: Option<Millis>,
    }
}

#[derive(Deserialize, Serialize)]
#[serde(tag = "v")]
enum StoredV1<T> {
    #[serde(rename = "1")]
    V1(T),
}

/// Reads the schema of `db`, migrates it to the current one (dating what has no time of its own `now`), or
/// refuses a newer one.
pub fn to_current(db: &sled::Db, now: Millis) -> Result<(), StoreError> {
    let schema = match db.get(SCHEMA_KEY).map_err(backend)? {
        Some(v) => std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or(StoreError::Corrupt { what: "schema", why: "not a number".into() })?,
        // No schema key: the first release if it made the database (it wrote an instance id), else new.
        None if db.get("instance").map_err(backend)?.is_some() => 1,
        None => SCHEMA,
    };
    if schema > SCHEMA {
        return Err(StoreError::NewerSchema { found: schema, supported: SCHEMA });
    }
    if schema == 1 {
        from_v1(db, now)?;
    }
    if schema <= 2 {
        from_v2(db)?;
    }
    db.insert(SCHEMA_KEY, SCHEMA.to_string().as_bytes()).map_err(backend)?;
    db.flush().map_err(backend)?;
    Ok(())
}

/// Every audit record written before the audit trail file existed is marked for it.
fn from_v2(db: &sled::Db) -> Result<(), StoreError> {
    let (audit, unexported) =
        (db.open_tree("audit").map_err(backend)?, db.open_tree("audit_unexported").map_err(backend)?);
    let mut batch = sled::Batch::default();
    for key in audit.iter().keys() {
        batch.insert(key.map_err(backend)?, &[]);
    }
    unexported.apply_batch(batch).map_err(backend)?;
    db.flush().map_err(backend)?;
    Ok(())
}

fn from_v1(db: &sled::Db, now: Millis) -> Result<(), StoreError> {
    let tree = |name: &str| db.open_tree(name).map_err(backend);
    let (conversations, fresh) = (tree("conversations")?, tree("conv_fresh")?);
    for kv in conversations.iter() {
        let (phone, bytes) = kv.map_err(backend)?;
        let Ok(StoredV1::V1(old)) = serde_json::from_slice::<StoredV1<v1::Conversation>>(&bytes) else {
            continue; // already migrated
        };
        let mut conversation = Conversation::new(old.session);
        if let Some(hop) = old.hop {
            let ended = hop.recent.last().is_some_and(|r| r.reply.end);
            conversation.recent =
                hop.recent.into_iter().map(|r| RecentReply { key: r.text_mac, reply: r.reply, at: r.at }).collect();
            let cursor = legacy_cursor(&hop.session_mac, hop.text_len, &hop.text_mac, ended);
            conversation.cursors.insert(cursor.0.to_string(), cursor.1);
        }
        let at = conversation.session.updated_at;
        let version = db.generate_id().map_err(backend)? + 1;
        let record = ConvRecord { v: V2, version, indexed_at: at, at, swept: false, conversation };
        conversations.insert(&phone, encode_conv(record)?).map_err(backend)?;
        fresh.insert(at_key(at, &phone), &[]).map_err(backend)?;
    }

    let (counters, due) = (tree("counters")?, tree("counter_due")?);
    let put = |key: CounterKey, tally: Tally| -> Result<(), StoreError> {
        if counters.get(key.as_str()).map_err(backend)?.is_none() {
            due.insert(at_key(tally.expires_at, key.as_str().as_bytes()), &[]).map_err(backend)?;
            counters.insert(key.as_str(), encode(&tally)?).map_err(backend)?;
        }
        Ok(())
    };
    for kv in tree("otp_sends")?.iter() {
        let (phone, bytes) = kv.map_err(backend)?;
        let Ok(phone) = Msisdn::parse(&String::from_utf8_lossy(&phone)) else { continue };
        let sends: v1::OtpSends = decode("otp sends", &bytes)?;
        let newest = sends.times.iter().copied().max().unwrap_or(now);
        let tally = Tally { times: sends.times, expires_at: newest.plus(MIGRATED_COUNTERS_KEPT), ..Tally::default() };
        put(Policy::default().otp_phone(&phone, Pool::Other).0, tally)?;
    }
    for kv in tree("login_failures")?.iter() {
        let (id, bytes) = kv.map_err(backend)?;
        let Ok(id) = NationalId::parse_shape(&String::from_utf8_lossy(&id)) else { continue };
        let f: v1::LoginFailures = decode("login failures", &bytes)?;
        let from = f.locked_until.unwrap_or(now).max(now);
        let tally = Tally {
            consecutive: f.consecutive,
            locked_until: f.locked_until,
            expires_at: from.plus(MIGRATED_COUNTERS_KEPT),
            ..Tally::default()
        };
        if !tally.is_empty() {
            put(Policy::default().login_failure(&id, Pool::Other).0, tally)?;
        }
    }

    let (outbox, outbox_due) = (tree("outbox")?, tree("outbox_due")?);
    for kv in outbox.iter() {
        let (key, bytes) = kv.map_err(backend)?;
        let mut sms: QueuedSms = decode("outbox", &bytes)?;
        if sms.give_up_at != Millis(0) {
            continue; // already migrated
        }
        // Schema 1 kept no delivery state: due now, and of use as long as a new message of its kind.
        sms.give_up_at = sms.queued_at.plus(sms.purpose.useful_for());
        sms.due_at = sms.queued_at;
        outbox_due.insert(at_key(sms.due_at, &key), &[]).map_err(backend)?;
        outbox.insert(&key, encode(&sms)?).map_err(backend)?;
    }
    db.flush().map_err(backend)?;
    for old in ["otp_sends", "login_failures"] {
        db.drop_tree(old).map_err(backend)?;
    }
    Ok(())
}
