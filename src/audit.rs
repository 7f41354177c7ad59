//! The audit trail file (`--audit-log`, default `<data-dir>/audit.jsonl`): one JSON line per audit event,
//! written and fsynced before the reply of the turn that caused it, each line holding the SHA-256 of the
//! line before it, so the file is a hash chain that shows a line changed, removed or inserted.
//!
//! ```json
//! {"seq":7,"at":"2026-11-29T10:00:00.123Z","event":"login_failed","channel":"africastalking","caller":"*678","subject":"5f0c…","phone":"*678","ref":"3f9a1c2b7d4e5f60-41","prev":"9b1e…"}
//! ```
//!
//! Fields, in this order: `seq` (1, 2, 3… along the chain, across rotated files), `at` (RFC 3339 UTC with
//! milliseconds), `event`, `channel` (when the event came through one), `caller` (the phone it came from,
//! masked to its last 3 digits), `subject` (a keyed hash of the ID number, [`Crypto::audit_subject`]; never
//! the number), `phone` (the registered phone or recipient, masked like `caller`), `detail` (a cap reached,
//! an SMS message id, a refused caller's address), `ref` (`<store instance>-<audit id>`, the record's
//! identity in the store), and `prev` (hex SHA-256 of the previous line's exact bytes without its newline;
//! 64 zeros for the very first line). Absent values are left out. Decree 13/2023/NĐ-CP asks for the least
//! personal data a purpose needs: an operator can follow one citizen's events (same `subject`) and, with
//! the key, check whether they belong to a given ID number, but the file alone names no one.
//!
//! **Crash consistency.** The store stays the source of truth: every audit record is marked unexported in
//! the transaction that writes it ([`Store::audit_unexported`]). [`AuditLog::drain`] appends what is
//! unexported, fsyncs, and only then marks it exported. A crash between the two leaves records unexported
//! that the file already has: on open the writer reads the `ref`s of the last [`RECENT_REFS`] lines (of the
//! newest rotated file too when the active one is short) and skips those, so each record is written once
//! (at least once, de-duplicated by `ref`). A torn last line (a crash mid-write) is cut on open. A write
//! that fails (disk full) is cut back to the last complete line; its records stay unexported and the next
//! drain writes them.
//!
//! **Group commit.** Drains are serialized: whoever holds the turn writes everything pending (one write,
//! one fsync), so concurrent turns share an fsync, and one that finds nothing pending returns at once. The
//! write and the fsync run on the blocking pool.
//!
//! **Rotation.** Before a line would take the active file past `--audit-log-max-mb`, the file (already
//! fsynced) is renamed `FILE.<seq of its first line, 12 digits>` and a new one started, whose first line's
//! `prev` is the hash of the rotated file's last line: the chain continues across files.
//!
//! **One writer.** `FILE.lock` beside the file is held while an [`AuditLog`] is open: a second writer
//! (another instance, or `simulate` pointed at a server's data dir) is refused rather than let two chains
//! interleave.
//!
//! **Reading.** [`trail_files`] lists the rotated files in order and then the active one; [`verify`] walks
//! the chain across them (`kichhoat audit verify`). Neither needs the store, so both run beside a live
//! server. The chain shows an edit in the middle; it cannot show the newest lines removed, or a file
//! rewritten whole from some line on by someone who can write it (copy the file, or its last `prev`, off
//! the machine to anchor it).

use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::crypto::Crypto;
use crate::domain::Msisdn;
use crate::store::{AuditRecord, Store, StoreError};

/// The `prev` of the very first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The default size at which the active file is rotated (`--audit-log-max-mb`).
pub const DEFAULT_MAX_MB: u64 = 64;
/// How many of the last lines' `ref`s are remembered: far more than one drain writes before it marks them
/// exported (1024 records), which is all a crash can leave written and unmarked.
pub const RECENT_REFS: usize = 8192;
/// Records taken from the store per write.
const BATCH: usize = 1024;
/// How much of a file's end is read on open (lines are a few hundred bytes).
const TAIL_BYTES: u64 = 8 << 20;
/// Digits of the first seq in a rotated file's name.
const ROTATED_DIGITS: usize = 12;

/// One line of the audit trail, fields in the order written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLine {
    pub seq: u64,
    pub at: String,
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(rename = "ref")]
    pub reference: String,
    pub prev: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditLogError {
    #[error("audit trail {path}: {why}")]
    Io { path: String, why: String },
    /// Another process writes this file (one writer per file keeps the chain whole).
    #[error(
        "audit trail {path}: another process is writing this audit trail ({lock} is locked); give each instance \
         a file of its own"
    )]
    Locked { path: String, lock: String },
    /// The file is not what this writer left: it will not guess how to continue the chain.
    #[error(
        "audit trail {path}: {why}. Check it with `kichhoat audit verify`; to go on, move the file aside \
         (keep it: it is evidence) and start again"
    )]
    Damaged { path: String, why: String },
    #[error("audit trail: {0}")]
    Store(#[from] StoreError),
    #[error("audit trail writer: {0}")]
    Pool(String),
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> AuditLogError + '_ {
    move |e| AuditLogError::Io { path: path.display().to_string(), why: e.to_string() }
}

fn damaged(path: &Path, why: impl Into<String>) -> AuditLogError {
    AuditLogError::Damaged { path: path.display().to_string(), why: why.into() }
}

/// A phone as the trail shows it: its last 3 digits (`*678`).
pub fn mask(phone: &Msisdn) -> String {
    let digits = phone.as_str();
    format!("*{}", digits.get(digits.len().saturating_sub(3)..).unwrap_or_default())
}

/// The hash a line's successor holds as `prev`: hex SHA-256 of its bytes, newline excluded.
pub fn line_hash(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

/// The name a rotated file gets: `FILE.<seq of its first line, zero-padded>`.
pub fn rotated_path(active: &Path, first_seq: u64) -> PathBuf {
    let mut name = active.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{first_seq:0ROTATED_DIGITS$}"));
    active.with_file_name(name)
}

/// The rotated files of `active`, oldest first, with the seq their names give.
fn rotated_files(active: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let dir = match active.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    };
    let Some(base) = active.file_name().and_then(|n| n.to_str()).map(|n| format!("{n}.")) else {
        return Ok(Vec::new());
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&base)) else { continue };
        if rest.len() < ROTATED_DIGITS || !rest.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(seq) = rest.parse::<u64>() {
            out.push((seq, dir.join(&name)));
        }
    }
    out.sort();
    Ok(out)
}

/// Every file of the trail, oldest first: the rotated ones, then the active one (when it exists).
pub fn trail_files(active: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = rotated_files(active)?.into_iter().map(|(_, p)| p).collect();
    if active.exists() {
        files.push(active.to_path_buf());
    }
    Ok(files)
}

fn open_active(path: &Path) -> std::io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.create(true).read(true).append(true);
    // It names events of citizens (pseudonymously): readable by the service's user only.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)
}

/// Takes `FILE.lock` for the writer of `path`; refused while another writer (this process or another)
/// holds it.
fn lock(path: &Path) -> Result<File, AuditLogError> {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".lock");
    let lock_path = path.with_file_name(name);
    let mut opts = OpenOptions::new();
    opts.create(true).truncate(false).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let file = opts.open(&lock_path).map_err(io_error(&lock_path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(AuditLogError::Locked { path: path.display().to_string(), lock: lock_path.display().to_string() })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(io_error(&lock_path)(e)),
    }
}

/// Makes a rename or a new file in `path`'s directory durable.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(d) => d,
            None => Path::new("."),
        };
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// The last `max` bytes of `file` and where they start.
fn read_tail(file: &mut File, max: u64) -> std::io::Result<(u64, Vec<u8>)> {
    let len = file.metadata()?.len();
    let start = len.saturating_sub(max);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.take(len - start).read_to_end(&mut tail)?;
    Ok((start, tail))
}

/// The complete lines of a tail (which ends with a newline or is empty); the first is dropped when the
/// tail starts mid-file (it may be the end of a line).
fn tail_lines(tail: &[u8], mid_file: bool) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = tail.split(|&b| b == b'\n').collect();
    lines.pop(); // after the last newline: empty
    if mid_file && !lines.is_empty() {
        lines.remove(0);
    }
    lines
}

fn parse_line(bytes: &[u8]) -> Result<AuditLine, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// The `ref`s of recently written lines, at most `cap`, oldest forgotten first.
struct Recent {
    order: VecDeque<String>,
    set: HashSet<String>,
    cap: usize,
}

impl Recent {
    fn new(cap: usize) -> Recent {
        Recent { order: VecDeque::new(), set: HashSet::new(), cap }
    }

    fn contains(&self, r: &str) -> bool {
        self.set.contains(r)
    }

    fn insert(&mut self, r: String) {
        if self.set.insert(r.clone()) {
            self.order.push_back(r);
        }
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

/// A record to write, with its identity in the store.
struct Entry {
    id: u64,
    reference: String,
    record: AuditRecord,
}

/// What one append did.
#[derive(Debug, Default)]
struct Appended {
    /// Records the file now has (written now, or found already written): to be marked exported.
    ids: Vec<u64>,
    /// Lines written now.
    written: usize,
}

/// Lines rendered and not yet written.
struct Stage {
    buf: Vec<u8>,
    seq: u64,
    prev: String,
    first: Option<u64>,
    refs: Vec<String>,
    ids: Vec<u64>,
}

/// The file and where the chain stands. Only [`AuditLog`] touches it, on the blocking pool.
struct Writer {
    /// `FILE.lock`, locked while this writer lives: two writers of one file would interleave two chains.
    _lock: File,
    path: PathBuf,
    max_bytes: u64,
    /// `None` after a rotation renamed the active file but could not start the next one: started by the
    /// next write.
    file: Option<File>,
    /// Length of the active file in complete, fsynced lines.
    size: u64,
    /// A failed write may have left bytes after `size`: cut them before writing again.
    dirty: bool,
    /// The last line's seq (0: no line yet) and hash.
    seq: u64,
    prev: String,
    /// Seq of the active file's first line (its name once rotated); `None` while it is empty.
    first_seq: Option<u64>,
    recent: Recent,
    /// Tests: make every write fail as a full disk would.
    #[cfg(test)]
    fail_writes: bool,
}

impl Writer {
    fn open(path: &Path, max_bytes: u64) -> Result<Writer, AuditLogError> {
        let io = io_error(path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(&io)?;
        }
        let lock = lock(path)?;
        let mut file = open_active(path).map_err(&io)?;
        let (start, mut tail) = read_tail(&mut file, TAIL_BYTES).map_err(&io)?;
        let keep = tail.iter().rposition(|&b| b == b'\n').map(|i| i + 1).unwrap_or(0);
        if keep < tail.len() {
            // A crash mid-write: the line was never fsynced, so no reply waited for it.
            warn!(path = %path.display(), bytes = tail.len() - keep, "audit trail: a torn last line was cut");
            file.set_len(start + keep as u64).map_err(&io)?;
            file.sync_all().map_err(&io)?;
            tail.truncate(keep);
        }
        let size = start + keep as u64;
        let lines = tail_lines(&tail, start > 0);
        let mut refs: Vec<String> = Vec::new();
        let (mut seq, mut prev, mut first_seq) = (0, GENESIS.to_string(), None);
        if let Some(last) = lines.last() {
            let line =
                parse_line(last).map_err(|e| damaged(path, format!("its last line is not an audit line ({e})")))?;
            (seq, prev) = (line.seq, line_hash(last));
            first_seq = Some(first_line_seq(&mut file).map_err(|why| damaged(path, why))?);
        }
        // The active file may have just been started by a rotation: the newest rotated file then holds the
        // chain's last line, and the lines a crash may have left unmarked.
        if lines.len() < RECENT_REFS {
            if let Some((_, newest)) = rotated_files(path).map_err(&io)?.pop() {
                let mut old = File::open(&newest).map_err(io_error(&newest))?;
                let (ostart, otail) = read_tail(&mut old, TAIL_BYTES).map_err(io_error(&newest))?;
                let olines = tail_lines(&otail, ostart > 0);
                if lines.is_empty() {
                    if let Some(last) = olines.last() {
                        let line = parse_line(last)
                            .map_err(|e| damaged(&newest, format!("its last line is not an audit line ({e})")))?;
                        (seq, prev) = (line.seq, line_hash(last));
                    }
                }
                refs.extend(olines.iter().filter_map(|l| parse_line(l).ok()).map(|l| l.reference));
            }
        }
        refs.extend(lines.iter().filter_map(|l| parse_line(l).ok()).map(|l| l.reference));
        let mut recent = Recent::new(RECENT_REFS);
        for r in refs.into_iter().rev().take(RECENT_REFS).collect::<Vec<_>>().into_iter().rev() {
            recent.insert(r);
        }
        Ok(Writer {
            _lock: lock,
            path: path.to_path_buf(),
            max_bytes: max_bytes.max(1),
            file: Some(file),
            size,
            dirty: false,
            seq,
            prev,
            first_seq,
            recent,
            #[cfg(test)]
            fail_writes: false,
        })
    }

    /// The active file, started if a rotation left none, with anything a failed write left cut off.
    fn ready(&mut self) -> Result<&mut File, AuditLogError> {
        let io = io_error(&self.path);
        if self.file.is_none() {
            let file = open_active(&self.path).map_err(&io)?;
            if file.metadata().map_err(&io)?.len() > 0 {
                return Err(damaged(&self.path, "a file appeared in place of the one just rotated"));
            }
            sync_dir(&self.path).map_err(&io)?;
            (self.size, self.first_seq, self.dirty) = (0, None, false);
            self.file = Some(file);
        }
        let (size, dirty) = (self.size, self.dirty);
        let Some(file) = self.file.as_mut() else { return Err(damaged(&self.path, "no active file")) };
        if dirty {
            file.set_len(size).map_err(&io)?;
            self.dirty = false;
        }
        Ok(file)
    }

    /// Appends the entries the file does not have yet, rotating as needed; every line is fsynced when it
    /// returns. On an error the file is cut back to its last complete line and nothing after is counted.
    fn append(&mut self, entries: Vec<Entry>, crypto: &Crypto) -> Result<Appended, AuditLogError> {
        self.ready()?;
        let mut out = Appended::default();
        let mut stage = Stage {
            buf: Vec::new(),
            seq: self.seq,
            prev: self.prev.clone(),
            first: None,
            refs: Vec::new(),
            ids: Vec::new(),
        };
        for e in entries {
            if self.recent.contains(&e.reference) {
                out.ids.push(e.id); // written before a crash, or before a failed mark
                continue;
            }
            let line = render(stage.seq + 1, &stage.prev, &e, crypto)
                .map_err(|why| AuditLogError::Io { path: self.path.display().to_string(), why })?;
            let pending = self.size + stage.buf.len() as u64;
            if pending > 0 && pending + line.len() as u64 + 1 > self.max_bytes {
                self.write_stage(&mut stage, &mut out)?;
                self.rotate()?;
            }
            stage.seq += 1;
            stage.prev = line_hash(&line);
            stage.first.get_or_insert(stage.seq);
            stage.buf.extend_from_slice(&line);
            stage.buf.push(b'\n');
            stage.refs.push(e.reference);
            stage.ids.push(e.id);
        }
        self.write_stage(&mut stage, &mut out)?;
        Ok(out)
    }

    /// Writes and fsyncs the staged lines, then makes them the chain's head.
    fn write_stage(&mut self, stage: &mut Stage, out: &mut Appended) -> Result<(), AuditLogError> {
        if stage.buf.is_empty() {
            return Ok(());
        }
        #[cfg(test)]
        let fail = self.fail_writes;
        #[cfg(not(test))]
        let fail = false;
        let size = self.size;
        let file = self.ready()?;
        let written = if fail {
            Err(std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device (test)"))
        } else {
            file.write_all(&stage.buf).and_then(|_| file.sync_data())
        };
        // On a failure, cut what may have been half-written, so the next line does not join a torn one;
        // if even that fails, the next write cuts first.
        if let Err((e, cut_failed)) = written.map_err(|e| (e, file.set_len(size).is_err())) {
            self.dirty = cut_failed;
            return Err(io_error(&self.path)(e));
        }
        self.size += stage.buf.len() as u64;
        self.seq = stage.seq;
        self.prev = stage.prev.clone();
        if self.first_seq.is_none() {
            self.first_seq = stage.first;
        }
        out.written += stage.ids.len();
        out.ids.append(&mut stage.ids);
        for r in stage.refs.drain(..) {
            self.recent.insert(r);
        }
        stage.buf.clear();
        stage.first = None;
        Ok(())
    }

    /// Renames the active file (fsynced) after the seq of its first line and starts a new one.
    fn rotate(&mut self) -> Result<(), AuditLogError> {
        let Some(first) = self.first_seq else { return Ok(()) };
        let to = rotated_path(&self.path, first);
        if to.exists() {
            return Err(damaged(&self.path, format!("{} exists already", to.display())));
        }
        std::fs::rename(&self.path, &to).map_err(io_error(&self.path))?;
        self.file = None;
        info!(
            rotated = %to.display(),
            last_seq = self.seq,
            head = %self.prev,
            "audit trail rotated; the chain continues in a new file"
        );
        self.ready()?;
        Ok(())
    }
}

/// The seq of the first line of `file`.
fn first_line_seq(file: &mut File) -> Result<u64, String> {
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut first = Vec::new();
    BufReader::new(file.take(TAIL_BYTES)).read_until(b'\n', &mut first).map_err(|e| e.to_string())?;
    if first.last() == Some(&b'\n') {
        first.pop();
    }
    parse_line(&first).map(|l| l.seq).map_err(|e| format!("its first line is not an audit line ({e})"))
}

/// One record as its line, without the newline.
fn render(seq: u64, prev: &str, e: &Entry, crypto: &Crypto) -> Result<Vec<u8>, String> {
    let r = &e.record;
    let line = AuditLine {
        seq,
        at: r.at.rfc3339_millis(),
        event: r.event.event.clone(),
        channel: r.channel.clone(),
        caller: r.caller.as_ref().map(mask),
        subject: r.event.national_id.as_ref().map(|id| crypto.audit_subject(id.as_str())),
        phone: r.event.phone.as_ref().map(mask),
        detail: r.event.detail.clone(),
        reference: e.reference.clone(),
        prev: prev.to_string(),
    };
    serde_json::to_vec(&line).map_err(|e| e.to_string())
}

/// The audit trail file of one store.
pub struct AuditLog {
    store: Arc<dyn Store>,
    crypto: Arc<Crypto>,
    path: PathBuf,
    /// One drain at a time: whoever holds it writes everything pending, so the turns waiting behind it
    /// find their records written and return at once.
    draining: tokio::sync::Mutex<()>,
    writer: Arc<StdMutex<Writer>>,
    syncs: Arc<AtomicU64>,
}

impl AuditLog {
    /// Opens (or creates) the trail at `path`, rotated at `max_bytes`: cuts a torn last line, finds where
    /// the chain stands (in the newest rotated file when the active one is empty), and remembers the
    /// `ref`s of the last lines. Refuses a file whose last line is not an audit line.
    pub fn open(
        path: &Path,
        max_bytes: u64,
        store: Arc<dyn Store>,
        crypto: Arc<Crypto>,
    ) -> Result<AuditLog, AuditLogError> {
        let writer = Writer::open(path, max_bytes)?;
        Ok(AuditLog {
            store,
            crypto,
            path: path.to_path_buf(),
            draining: tokio::sync::Mutex::new(()),
            writer: Arc::new(StdMutex::new(writer)),
            syncs: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The seq and hash of the chain's last line (0 and [`GENESIS`] when there is none).
    pub fn head(&self) -> (u64, String) {
        match self.writer.lock() {
            Ok(w) => (w.seq, w.prev.clone()),
            Err(_) => (0, GENESIS.to_string()),
        }
    }

    /// How many writes (each one fsync) drains have made: concurrent drains share one.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }

    /// Writes every record the store has not exported, fsyncs, and marks them exported; returns how many
    /// lines it wrote. When it returns `Ok`, every audit record committed before the call is in the file
    /// on disk. On an error, what was not written stays unexported for the next drain.
    pub async fn drain(&self) -> Result<usize, AuditLogError> {
        let _turn = self.draining.lock().await;
        let mut written = 0;
        loop {
            let batch = self.store.audit_unexported(BATCH).await?;
            if batch.is_empty() {
                break;
            }
            let full = batch.len() == BATCH;
            let instance = self.store.instance().to_string();
            let entries: Vec<Entry> = batch
                .into_iter()
                .map(|(id, record)| Entry { id, reference: format!("{instance}-{id}"), record })
                .collect();
            let (writer, crypto, syncs) = (self.writer.clone(), self.crypto.clone(), self.syncs.clone());
            let job = move || -> Result<Appended, AuditLogError> {
                let mut w = writer.lock().map_err(|_| AuditLogError::Pool("audit writer lock poisoned".into()))?;
                let out = w.append(entries, &crypto)?;
                if out.written > 0 {
                    syncs.fetch_add(1, Ordering::SeqCst);
                }
                Ok(out)
            };
            let appended = tokio::task::spawn_blocking(job).await.map_err(|e| AuditLogError::Pool(e.to_string()))??;
            self.store.audit_exported(&appended.ids).await?;
            written += appended.written;
            if !full {
                break;
            }
        }
        Ok(written)
    }

    /// Tests: every write fails (as on a full disk) until told otherwise.
    #[cfg(test)]
    pub(crate) fn fail_writes(&self, fail: bool) {
        if let Ok(mut w) = self.writer.lock() {
            w.fail_writes = fail;
        }
    }
}

/// A trail that checks out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub lines: u64,
    pub last_seq: Option<u64>,
    /// What is worth knowing but breaks nothing (the oldest file starts mid-chain, a line being written).
    pub notes: Vec<String>,
}

/// The first place the chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub file: PathBuf,
    /// 1-based, in `file`.
    pub line: u64,
    pub what: String,
    pub notes: Vec<String>,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "broken: {} line {}: {}", self.file.display(), self.line, self.what)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok(Verified),
    Broken(Broken),
}

/// The trail's files opened together, oldest first (re-listed until no rotation happened meanwhile, so a
/// file renamed while they were opened is neither missed nor read twice).
fn snapshot(active: &Path) -> Result<Vec<(PathBuf, File)>, AuditLogError> {
    let io = io_error(active);
    for _ in 0..20 {
        let names = trail_files(active).map_err(&io)?;
        if names.is_empty() {
            return Err(AuditLogError::Io {
                path: active.display().to_string(),
                why: "no audit trail here (see --audit-log and --data-dir)".into(),
            });
        }
        let mut opened = Vec::new();
        for name in &names {
            match File::open(name) {
                Ok(f) => opened.push((name.clone(), f)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => return Err(io_error(name)(e)),
            }
        }
        if opened.len() == names.len() && trail_files(active).map_err(&io)? == names {
            return Ok(opened);
        }
    }
    Err(AuditLogError::Io { path: active.display().to_string(), why: "the files kept changing while read".into() })
}

/// Calls `each` with every complete line of the trail (no newline), oldest first, with its file and
/// 1-based line number. A last line of the active file without its newline (being written, or torn by a
/// crash and not yet cut) is not a line: `partial` is told of it.
fn walk(
    active: &Path,
    mut each: impl FnMut(&Path, u64, &[u8]) -> Result<bool, AuditLogError>,
    mut partial: impl FnMut(&Path, u64),
) -> Result<(), AuditLogError> {
    let files = snapshot(active)?;
    let last = files.len().saturating_sub(1);
    for (i, (path, file)) in files.into_iter().enumerate() {
        let mut reader = BufReader::new(file);
        let mut buf = Vec::new();
        let mut n = 0u64;
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf).map_err(io_error(&path))? == 0 {
                break;
            }
            n += 1;
            if buf.last() == Some(&b'\n') {
                buf.pop();
            } else if i == last && path == active {
                partial(&path, n);
                break;
            }
            if !each(&path, n, &buf)? {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Copies every complete line of the trail to `out`, oldest first.
pub fn print(active: &Path, out: &mut impl Write) -> Result<u64, AuditLogError> {
    let mut lines = 0;
    walk(
        active,
        |path, _, line| {
            out.write_all(line).and_then(|_| out.write_all(b"\n")).map_err(io_error(path))?;
            lines += 1;
            Ok(true)
        },
        |_, _| {},
    )?;
    Ok(lines)
}

/// Checks the chain across the rotated files and the active one: every line parses, `seq` goes up by one,
/// `prev` is the hash of the line before, a rotated file's name matches its first line, and the first line
/// of all is seq 1 with `prev` [`GENESIS`] (or, when older files were deleted, the trail is checked from
/// where it starts, and a note says so).
pub fn verify(active: &Path) -> Result<Verdict, AuditLogError> {
    let named: Vec<(PathBuf, u64)> =
        rotated_files(active).map_err(io_error(active))?.into_iter().map(|(seq, p)| (p, seq)).collect();
    let mut notes = Vec::new();
    let mut broken: Option<Broken> = None;
    let mut last: Option<(u64, String, PathBuf, u64)> = None; // seq, hash, where
    let mut lines = 0u64;
    let mut at_file: Option<PathBuf> = None;
    let mut partial_note = None;
    walk(
        active,
        |path, n, bytes| {
            let mut fail = |line: u64, file: &Path, what: String| {
                broken = Some(Broken { file: file.to_path_buf(), line, what, notes: Vec::new() });
                Ok(false)
            };
            let line = match parse_line(bytes) {
                Ok(l) => l,
                Err(e) if bytes.is_empty() => return fail(n, path, format!("an empty line ({e})")),
                Err(e) => return fail(n, path, format!("not an audit line ({e})")),
            };
            if at_file.as_deref() != Some(path) {
                at_file = Some(path.to_path_buf());
                if let Some((_, named_seq)) = named.iter().find(|(p, _)| p == path) {
                    if line.seq != *named_seq {
                        let what = format!(
                            "the file's name says it starts at seq {named_seq}, its first line is seq {}",
                            line.seq
                        );
                        return fail(n, path, what);
                    }
                }
            }
            match &last {
                None if line.seq == 1 && line.prev != GENESIS => {
                    return fail(n, path, format!("the first line of the trail has prev {}, not 64 zeros", line.prev));
                }
                None if line.seq == 1 => {}
                None => notes.push(format!(
                    "the trail starts mid-chain, at seq {} ({} line {n}): older files were deleted? It is checked from there",
                    line.seq,
                    path.display()
                )),
                Some((seq, _, _, _)) if line.seq != seq + 1 => {
                    let what = if line.seq > seq + 1 {
                        format!("seq {} follows seq {seq}: {} line(s) before this one removed", line.seq, line.seq - seq - 1)
                    } else {
                        format!("seq {} follows seq {seq}: a line inserted or repeated", line.seq)
                    };
                    return fail(n, path, what);
                }
                Some((_, hash, prev_file, prev_line)) if line.prev != *hash => {
                    let here = if prev_file.as_path() == path {
                        format!("line {n}")
                    } else {
                        format!("line {n} of {}", path.display())
                    };
                    let what = format!(
                        "changed: its hash does not match the prev of the next line ({here}); this line was \
                         altered, or that line's prev"
                    );
                    let (f, l) = (prev_file.clone(), *prev_line);
                    return fail(l, &f, what);
                }
                Some(_) => {}
            }
            last = Some((line.seq, line_hash(bytes), path.to_path_buf(), n));
            lines += 1;
            Ok(true)
        },
        |path, n| {
            partial_note = Some(format!(
                "{} line {n} has no newline yet (being written, or torn by a crash: the server cuts it when it starts); not checked",
                path.display()
            ));
        },
    )?;
    notes.extend(partial_note);
    Ok(match broken {
        Some(mut b) => {
            b.notes = notes;
            Verdict::Broken(b)
        }
        None => Verdict::Ok(Verified { lines, last_seq: last.map(|(s, _, _, _)| s), notes }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Millis;
    use crate::crypto::HashCost;
    use crate::domain::NationalId;
    use crate::engine::{AuditEvent, Session, Slots};
    use crate::flow::Lang;
    use crate::store::memory::MemoryStore;
    use crate::store::{Commit, CommitOutcome, Conversation};

    const T0: Millis = Millis(1_795_996_800_123);

    struct Rig {
        dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        crypto: Arc<Crypto>,
        /// `None` only while reopening.
        opened: Option<AuditLog>,
    }

    impl Rig {
        fn new(max_bytes: u64) -> Rig {
            let dir = tempfile::tempdir().unwrap();
            let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
            let crypto = Arc::new(Crypto::from_master(&[3; 32], HashCost::DANGER_TEST_ONLY).unwrap());
            let log =
                AuditLog::open(&dir.path().join("audit.jsonl"), max_bytes, store.clone(), crypto.clone()).unwrap();
            Rig { dir, store, crypto, opened: Some(log) }
        }

        fn log(&self) -> &AuditLog {
            self.opened.as_ref().unwrap()
        }

        fn path(&self) -> PathBuf {
            self.dir.path().join("audit.jsonl")
        }

        /// The log closed and opened again, as after a restart.
        fn reopen(&mut self, max_bytes: u64) {
            self.opened = None; // closed first: it holds the file's lock
            self.opened =
                Some(AuditLog::open(&self.path(), max_bytes, self.store.clone(), self.crypto.clone()).unwrap());
        }

        /// Commits a conversation of `phone` with `events` audited (ID 001099012345, registered phone
        /// 0912345678).
        async fn commit(&self, phone: &str, events: &[&str]) {
            let caller = Msisdn::parse(phone).unwrap();
            let id = NationalId::parse_shape("001099012345").unwrap();
            let registered = Msisdn::parse("0912345678").unwrap();
            let session = Session {
                lang: Lang::Vi,
                state: "menu".into(),
                tries: 0,
                updated_at: T0,
                slots: Slots::default(),
                leaving: false,
                parked: None,
            };
            let audit = events
                .iter()
                .map(|e| AuditRecord {
                    at: T0,
                    caller: Some(caller.clone()),
                    channel: Some("africastalking".into()),
                    event: AuditEvent {
                        event: (*e).into(),
                        national_id: Some(id.clone()),
                        phone: Some(registered.clone()),
                        detail: None,
                    },
                })
                .collect();
            let version = self.store.load(&caller).await.unwrap().map(|(_, v)| v);
            let commit = Commit {
                at: T0,
                phone: caller,
                conversation: Conversation::new(session),
                activate: None,
                sms: Vec::new(),
                audit,
                bumps: Vec::new(),
                account_update: None,
            };
            assert!(matches!(self.store.commit(version, commit).await.unwrap(), CommitOutcome::Committed(_)));
        }

        /// Every line of every file of the trail, oldest first, parsed, with its bytes.
        fn lines(&self) -> Vec<(AuditLine, Vec<u8>)> {
            let mut out = Vec::new();
            for f in trail_files(&self.path()).unwrap() {
                let bytes = std::fs::read(&f).unwrap();
                assert!(bytes.is_empty() || bytes.ends_with(b"\n"), "{} ends with a newline", f.display());
                for l in tail_lines(&bytes, false) {
                    out.push((parse_line(l).unwrap(), l.to_vec()));
                }
            }
            out
        }
    }

    fn assert_chain(lines: &[(AuditLine, Vec<u8>)]) {
        let mut prev = GENESIS.to_string();
        for (i, (line, bytes)) in lines.iter().enumerate() {
            assert_eq!(line.seq, i as u64 + 1, "seq of line {i}");
            assert_eq!(line.prev, prev, "prev of seq {}", line.seq);
            prev = line_hash(bytes);
        }
    }

    fn ok_lines(path: &Path) -> u64 {
        match verify(path).unwrap() {
            Verdict::Ok(v) => v.lines,
            Verdict::Broken(b) => panic!("{b}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lines_chain_by_hash_from_64_zeros_in_field_order_and_show_no_id_or_phone() {
        let rig = Rig::new(1 << 20);
        rig.commit("0987654321", &["login_failed", "login_locked"]).await;
        assert_eq!(rig.log().drain().await.unwrap(), 2);
        rig.commit("0987654321", &["otp_sent"]).await;
        assert_eq!(rig.log().drain().await.unwrap(), 1);

        let lines = rig.lines();
        assert_eq!(
            lines.iter().map(|(l, _)| l.event.as_str()).collect::<Vec<_>>(),
            ["login_failed", "login_locked", "otp_sent"]
        );
        assert_chain(&lines);
        let (first, bytes) = &lines[0];
        let text = String::from_utf8(bytes.clone()).unwrap();
        let keys: Vec<&str> = ["seq", "at", "event", "channel", "caller", "subject", "phone", "ref", "prev"].to_vec();
        let positions: Vec<usize> = keys.iter().map(|k| text.find(&format!("\"{k}\":")).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "fields in order: {text}");
        assert_eq!(first.at, "2026-11-30T00:00:00.123Z");
        assert_eq!((first.caller.as_deref(), first.phone.as_deref()), (Some("*321"), Some("*678")));
        assert_eq!(first.subject.as_deref(), Some(rig.crypto.audit_subject("001099012345").as_str()));
        assert_eq!(first.channel.as_deref(), Some("africastalking"));
        let ids: Vec<u64> = rig.store.audit_after(None, 10).await.unwrap().into_iter().map(|(id, _)| id).collect();
        let refs: Vec<String> = lines.iter().map(|(l, _)| l.reference.clone()).collect();
        assert_eq!(refs, ids.iter().map(|id| format!("{}-{id}", rig.store.instance())).collect::<Vec<_>>());
        let file = std::fs::read_to_string(rig.path()).unwrap();
        for personal in ["001099012345", "0912345678", "84912345678", "912345678", "987654321"] {
            assert!(!file.contains(personal), "{personal} in {file}");
        }
        assert!(rig.store.audit_unexported(10).await.unwrap().is_empty(), "all marked exported");
        assert_eq!(ok_lines(&rig.path()), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_drain_with_nothing_pending_writes_and_syncs_nothing() {
        let rig = Rig::new(1 << 20);
        assert_eq!(rig.log().drain().await.unwrap(), 0);
        rig.commit("0987654321", &["login_ok"]).await;
        rig.log().drain().await.unwrap();
        let (syncs, len) = (rig.log().syncs(), std::fs::metadata(rig.path()).unwrap().len());
        assert_eq!(rig.log().drain().await.unwrap(), 0);
        assert_eq!((rig.log().syncs(), std::fs::metadata(rig.path()).unwrap().len()), (syncs, len));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rotation_renames_by_first_seq_and_the_chain_continues_across_files_and_restarts() {
        const MAX: u64 = 700; // two or three lines a file
        let mut rig = Rig::new(MAX);
        for i in 0..5 {
            rig.commit(&format!("098765432{i}"), &["otp_sent", "otp_wrong"]).await;
            rig.log().drain().await.unwrap();
        }
        let files = trail_files(&rig.path()).unwrap();
        assert!(files.len() >= 3, "{files:?}");
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() <= MAX, "{} over the limit", f.display());
        }
        // Each rotated file is named after its first line's seq.
        let mut seq = 1;
        for f in &files[..files.len() - 1] {
            assert_eq!(*f, rotated_path(&rig.path(), seq));
            assert!(f.to_string_lossy().ends_with(&format!(".{seq:012}")));
            seq += tail_lines(&std::fs::read(f).unwrap(), false).len() as u64;
        }
        assert_chain(&rig.lines());
        assert_eq!(ok_lines(&rig.path()), 10);

        // After a restart whose active file is empty (the crash came right after a rotation), the chain goes on
        // from the newest rotated file.
        let last = rig.lines().last().unwrap().1.clone();
        std::fs::write(rig.path(), b"").unwrap();
        rig.reopen(MAX);
        let head = rig.log().head();
        assert!(head.0 < 10 && head.1 != line_hash(&last), "the removed active file's lines are gone: {head:?}");
        let newest_rotated = files[files.len() - 2].clone();
        let rotated_last = tail_lines(&std::fs::read(&newest_rotated).unwrap(), false).last().unwrap().to_vec();
        assert_eq!(head.1, line_hash(&rotated_last), "the chain continues from the newest rotated file");
        rig.commit("0987654329", &["activated"]).await;
        rig.log().drain().await.unwrap();
        assert_chain(&rig.lines());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_torn_last_line_is_cut_on_open_and_the_chain_continues_from_the_last_whole_line() {
        let mut rig = Rig::new(1 << 20);
        rig.commit("0987654321", &["otp_sent", "otp_wrong", "otp_verified"]).await;
        rig.log().drain().await.unwrap();
        let whole = std::fs::read(rig.path()).unwrap();
        let mut torn = whole.clone();
        torn.extend_from_slice(br#"{"seq":4,"at":"2026-11-29T00:00"#);
        std::fs::write(rig.path(), &torn).unwrap();

        rig.reopen(1 << 20);
        assert_eq!(std::fs::read(rig.path()).unwrap(), whole, "cut back to the last newline");
        rig.commit("0987654321", &["activated"]).await;
        assert_eq!(rig.log().drain().await.unwrap(), 1);
        let lines = rig.lines();
        assert_eq!(lines.len(), 4);
        assert_chain(&lines);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_written_before_a_crash_that_kept_them_unexported_are_not_written_again() {
        let mut rig = Rig::new(1 << 20);
        rig.commit("0987654321", &["otp_sent", "otp_wrong", "otp_verified"]).await;
        // Written and fsynced, then the crash: never marked exported.
        let pending = rig.store.audit_unexported(100).await.unwrap();
        let instance = rig.store.instance().to_string();
        let entries: Vec<Entry> = pending
            .into_iter()
            .map(|(id, record)| Entry { id, reference: format!("{instance}-{id}"), record })
            .collect();
        let appended = rig.log().writer.lock().unwrap().append(entries, &rig.crypto).unwrap();
        assert_eq!(appended.written, 3);
        assert_eq!(rig.store.audit_unexported(100).await.unwrap().len(), 3, "the crash lost the marks");

        rig.reopen(1 << 20);
        assert_eq!(rig.log().drain().await.unwrap(), 0, "recognised by ref, not written again");
        assert!(rig.store.audit_unexported(100).await.unwrap().is_empty(), "and now marked exported");
        rig.commit("0987654321", &["activated"]).await;
        assert_eq!(rig.log().drain().await.unwrap(), 1);
        let lines = rig.lines();
        assert_eq!(
            lines.iter().map(|(l, _)| l.event.as_str()).collect::<Vec<_>>(),
            ["otp_sent", "otp_wrong", "otp_verified", "activated"]
        );
        assert_chain(&lines);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_a_crash_left_unexported_right_after_a_rotation_are_recognised_in_the_rotated_file() {
        let mut rig = Rig::new(700);
        rig.commit("0987654321", &["otp_sent", "otp_wrong"]).await;
        let pending = rig.store.audit_unexported(100).await.unwrap();
        let instance = rig.store.instance().to_string();
        let entries: Vec<Entry> = pending
            .into_iter()
            .map(|(id, record)| Entry { id, reference: format!("{instance}-{id}"), record })
            .collect();
        rig.log().writer.lock().unwrap().append(entries, &rig.crypto).unwrap();
        // The crash came after a rotation: the lines are in the rotated file, the active one is empty.
        std::fs::rename(rig.path(), rotated_path(&rig.path(), 1)).unwrap();
        rig.reopen(700);
        assert_eq!(rig.log().drain().await.unwrap(), 0);
        assert!(rig.store.audit_unexported(100).await.unwrap().is_empty());
        rig.commit("0987654321", &["otp_verified"]).await;
        rig.log().drain().await.unwrap();
        assert_chain(&rig.lines());
        assert_eq!(ok_lines(&rig.path()), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_drains_write_each_record_once_and_share_fsyncs() {
        let rig = Arc::new(Rig::new(1 << 20));
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let rig = rig.clone();
                tokio::spawn(async move {
                    rig.commit(&format!("09876{i:05}"), &["login_failed", "login_failed"]).await;
                    rig.log().drain().await.unwrap();
                    // When a drain returns, the records committed before it are in the file.
                    let mine = rig.store.audit_unexported(1000).await.unwrap();
                    let phone = Msisdn::parse(&format!("09876{i:05}")).unwrap();
                    assert!(!mine.iter().any(|(_, r)| r.caller.as_ref() == Some(&phone)), "task {i} drained its own");
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let lines = rig.lines();
        assert_eq!(lines.len(), 128);
        assert_chain(&lines);
        let refs: HashSet<&str> = lines.iter().map(|(l, _)| l.reference.as_str()).collect();
        assert_eq!(refs.len(), 128, "each record once");
        assert!((1..64).contains(&rig.log().syncs()), "{} fsyncs for 64 drains", rig.log().syncs());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_write_is_cut_back_and_its_records_are_written_by_the_next_drain() {
        let rig = Rig::new(1 << 20);
        rig.commit("0987654321", &["otp_sent"]).await;
        rig.log().drain().await.unwrap();
        let before = std::fs::read(rig.path()).unwrap();
        rig.log().fail_writes(true);
        rig.commit("0987654321", &["otp_wrong", "otp_verified"]).await;
        let err = rig.log().drain().await.unwrap_err().to_string();
        assert!(err.contains("No space left"), "{err}");
        assert_eq!(std::fs::read(rig.path()).unwrap(), before, "nothing half-written");
        assert_eq!(rig.store.audit_unexported(10).await.unwrap().len(), 2, "still unexported");
        rig.log().fail_writes(false);
        assert_eq!(rig.log().drain().await.unwrap(), 2);
        let lines = rig.lines();
        assert_eq!(lines.len(), 3);
        assert_chain(&lines);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_writer_of_one_file_is_refused_until_the_first_is_closed() {
        let mut rig = Rig::new(1 << 20);
        let second = AuditLog::open(&rig.path(), 1 << 20, rig.store.clone(), rig.crypto.clone()).err().unwrap();
        assert!(second.to_string().contains("another process is writing this audit trail"), "{second}");
        rig.reopen(1 << 20);
        rig.commit("0987654321", &["otp_sent"]).await;
        assert_eq!(rig.log().drain().await.unwrap(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_whose_last_line_is_not_an_audit_line_is_refused_at_open() {
        let mut rig = Rig::new(1 << 20);
        rig.commit("0987654321", &["otp_sent"]).await;
        rig.log().drain().await.unwrap();
        let mut bytes = std::fs::read(rig.path()).unwrap();
        bytes.extend_from_slice(b"not json\n");
        std::fs::write(rig.path(), bytes).unwrap();
        rig.opened = None;
        let err = AuditLog::open(&rig.path(), 1 << 20, rig.store.clone(), rig.crypto.clone()).err().unwrap();
        assert!(matches!(err, AuditLogError::Damaged { .. }), "{err}");
        assert!(err.to_string().contains("kichhoat audit verify"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verify_names_a_changed_line_a_removed_line_and_a_trail_that_starts_mid_chain() {
        let rig = Rig::new(700);
        for i in 0..4 {
            rig.commit(&format!("098765432{i}"), &["login_failed", "login_ok"]).await;
            rig.log().drain().await.unwrap();
        }
        let active = rig.path();
        assert_eq!(ok_lines(&active), 8);
        let files = trail_files(&active).unwrap();
        let target = files[1].clone();
        let original = std::fs::read(&target).unwrap();

        // One byte of its first line changed, the JSON still valid.
        let mut changed = original.clone();
        let at = changed.windows(12).position(|w| w == b"login_failed").unwrap();
        changed[at] = b'L';
        std::fs::write(&target, &changed).unwrap();
        let Verdict::Broken(b) = verify(&active).unwrap() else { panic!("a changed line passes") };
        assert_eq!((b.file.clone(), b.line), (target.clone(), 1), "{b}");
        assert!(b.what.contains("changed"), "{b}");

        // Its first line removed.
        let cut = original.iter().position(|&c| c == b'\n').unwrap() + 1;
        std::fs::write(&target, &original[cut..]).unwrap();
        let Verdict::Broken(b) = verify(&active).unwrap() else { panic!("a removed line passes") };
        assert_eq!(b.file, target, "{b}");
        std::fs::write(&target, &original).unwrap();
        assert_eq!(ok_lines(&active), 8);

        // The oldest file deleted by an operator: the rest still checks, with a note.
        std::fs::remove_file(&files[0]).unwrap();
        let Verdict::Ok(v) = verify(&active).unwrap() else { panic!("a trail without its oldest file is broken") };
        assert!(v.notes.iter().any(|n| n.contains("mid-chain")), "{:?}", v.notes);
        assert_eq!(v.last_seq, Some(8));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn print_copies_every_whole_line_and_skips_one_being_written() {
        let rig = Rig::new(700);
        for i in 0..3 {
            rig.commit(&format!("098765432{i}"), &["otp_sent", "otp_wrong"]).await;
            rig.log().drain().await.unwrap();
        }
        let want: Vec<u8> = rig.lines().iter().flat_map(|(_, b)| [b.clone(), b"\n".to_vec()].concat()).collect();
        let mut f = OpenOptions::new().append(true).open(rig.path()).unwrap();
        f.write_all(br#"{"seq":7,"#).unwrap();
        let mut out = Vec::new();
        assert_eq!(print(&rig.path(), &mut out).unwrap(), 6);
        assert_eq!(out, want);
        let Verdict::Ok(v) = verify(&rig.path()).unwrap() else { panic!("a line being written breaks nothing") };
        assert!(v.notes.iter().any(|n| n.contains("no newline")), "{:?}", v.notes);
    }
}
