-- kichhoat store schema 1 on PostgreSQL (see src/store/postgres.rs for what each table holds).
-- Kept to SQL that CockroachDB and YugabyteDB also accept: no extensions, no triggers, no stored
-- procedures; times are milliseconds since the Unix epoch in BIGINT columns (the service's clock, not the
-- database's); records the database never filters on are JSON text, read and written whole by the service.

-- Conversations, one row per phone. `version` changes on every write and never repeats (a sequence), so a
-- stale compare-and-set can never match. `fresh_at`: when its retry replies were written (NULL once they
-- are swept); `idle_at`: when it was swept (NULL once it is reduced to its language, or while fresh).
CREATE SEQUENCE kichhoat_versions;
CREATE TABLE kichhoat_conversations (
    phone     TEXT PRIMARY KEY,
    version   BIGINT NOT NULL,
    fresh_at  BIGINT,
    idle_at   BIGINT,
    body      TEXT NOT NULL
);
CREATE INDEX kichhoat_conversations_fresh ON kichhoat_conversations (fresh_at);
CREATE INDEX kichhoat_conversations_idle ON kichhoat_conversations (idle_at);

-- The citizen registry (imported by every instance at start; an unchanged row is not rewritten).
CREATE TABLE kichhoat_citizens (
    national_id TEXT PRIMARY KEY,
    body        TEXT NOT NULL
);

-- Activated accounts: argon2id hashes only.
CREATE TABLE kichhoat_accounts (
    national_id TEXT PRIMARY KEY,
    body        TEXT NOT NULL
);

-- Abuse-limit counters, deleted once `expires_at` has passed.
CREATE TABLE kichhoat_counters (
    key        TEXT PRIMARY KEY,
    tally      TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX kichhoat_counters_expiry ON kichhoat_counters (expires_at);

-- The SMS outbox: bodies sealed with the master key (never plain text). `due_at` is when a message is next
-- due: when queued, a scheduled retry, or the end of a claim's lease.
CREATE SEQUENCE kichhoat_outbox_ids;
CREATE TABLE kichhoat_outbox (
    id          BIGINT PRIMARY KEY,
    recipient   TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    sealed      BYTEA NOT NULL,
    queued_at   BIGINT NOT NULL,
    give_up_at  BIGINT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    due_at      BIGINT NOT NULL,
    claimed_by  TEXT,
    in_flight   BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX kichhoat_outbox_due ON kichhoat_outbox (due_at, id);

-- SMS that failed for good, kept for operators until their retention ends.
CREATE TABLE kichhoat_outbox_failed (
    id        BIGINT PRIMARY KEY,
    failed_at BIGINT NOT NULL,
    why       TEXT NOT NULL,
    sms       TEXT NOT NULL
);
CREATE INDEX kichhoat_outbox_failed_at ON kichhoat_outbox_failed (failed_at, id);

-- The audit trail, shared by every instance. Ids are unique, not in commit order.
CREATE SEQUENCE kichhoat_audit_ids;
CREATE TABLE kichhoat_audit (
    id     BIGINT PRIMARY KEY,
    record TEXT NOT NULL
);
-- Records not yet in an audit trail file; an instance draining them holds a claim on them until
-- `claim_until` (milliseconds, the database's clock), so each goes to one instance's file.
CREATE TABLE kichhoat_audit_unexported (
    id          BIGINT PRIMARY KEY,
    claimed_by  TEXT,
    claim_until BIGINT
);
