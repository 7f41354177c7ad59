//! The embedded SMS "gateway": each SMS becomes one JSON line in a local outbox file,
//! `{"id": "3f9a1c2b7d4e5f60-7", "to": "+84912345678", "text": "...", "at": "2026-11-29T10:00:00Z"}`.
//!
//! Written with `O_APPEND` and fsynced before the store forgets the message. On open, a torn last line
//! (a crash mid-write) is cut off, and the ids already in the file are remembered so a message re-delivered
//! after a crash is not written twice. Texts go out without diacritics (GSM-7), as Vietnamese OTP and
//! brandname SMS customarily are (carriers' brandname templates; Decree 91/2020/NĐ-CP on messages).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{Delivery, OutgoingSms, SendError, SendFuture, SmsSender};
use crate::flow::catalog::to_gsm7;

/// How much of the file's end is read at start-up to learn which ids are already written.
const TAIL_BYTES: u64 = 4 << 20;

#[derive(Serialize, Deserialize)]
pub struct OutboxLine {
    pub id: String,
    pub to: String,
    pub text: String,
    pub at: String,
}

pub struct FileSender {
    inner: Arc<Mutex<Inner>>,
    path: PathBuf,
}

struct Inner {
    file: File,
    written: HashSet<String>,
}

impl FileSender {
    pub fn open(path: &Path) -> std::io::Result<FileSender> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        // It holds OTPs in clear (it stands for the SMS gateway): readable by the service's user only.
        let mut opts = OpenOptions::new();
        opts.create(true).read(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut file = opts.open(path)?;
        let len = file.metadata()?.len();
        let start = len.saturating_sub(TAIL_BYTES);
        file.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail)?;
        // Cut a torn last line: everything after the last newline.
        let keep = tail.iter().rposition(|&b| b == b'\n').map(|i| i + 1).unwrap_or(0);
        if keep < tail.len() {
            file.set_len(start + keep as u64)?;
            file.sync_all()?;
        }
        let written = tail[..keep]
            .split(|&b| b == b'\n')
            .filter_map(|line| serde_json::from_slice::<OutboxLine>(line).ok())
            .map(|l| l.id)
            .collect();
        Ok(FileSender { inner: Arc::new(Mutex::new(Inner { file, written })), path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl SmsSender for FileSender {
    fn send<'a>(&'a self, sms: &'a OutgoingSms) -> SendFuture<'a> {
        let line = OutboxLine {
            id: sms.id.clone(),
            to: sms.to.e164(),
            text: to_gsm7(sms.text.expose()),
            at: sms.at.rfc3339(),
        };
        let inner = self.inner.clone();
        Box::pin(async move {
            let write = move || -> Result<Delivery, SendError> {
                let tmp = |e: std::io::Error| SendError::Temporary(e.to_string());
                let mut g = inner.lock().map_err(|_| SendError::Temporary("outbox lock poisoned".into()))?;
                if g.written.contains(&line.id) {
                    return Ok(Delivery::AlreadySent);
                }
                let mut bytes = serde_json::to_vec(&line).map_err(|e| SendError::Temporary(e.to_string()))?;
                bytes.push(b'\n');
                let before = g.file.metadata().map_err(tmp)?.len();
                if let Err(e) = g.file.write_all(&bytes).and_then(|_| g.file.sync_data()) {
                    // Cut what was half-written (disk full), so the next line does not join a torn one.
                    let _ = g.file.set_len(before);
                    return Err(tmp(e));
                }
                g.written.insert(line.id);
                Ok(Delivery::Sent)
            };
            tokio::task::spawn_blocking(write).await.map_err(|e| SendError::Temporary(e.to_string()))?
        })
    }

    /// It remembers the ids it wrote, also across restarts (read back from the file).
    fn idempotent(&self) -> bool {
        true
    }
}
