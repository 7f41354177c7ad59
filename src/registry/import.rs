//! An authoritative registry import: the file read whole (rows by ID number, the later row winning),
//! compared with the stored citizens page by page in ID order, then only the difference written: new
//! citizens added, changed ones updated (a removed citizen listed again is restored), and citizens the
//! file no longer lists marked removed, each with an audit record `citizen_removed` in the transaction
//! that marks it, and one `registry_imported` record with the counts.
//!
//! Safety rails an operator expects of a file that decides who may activate:
//! - a row that cannot be read but whose ID number can is **kept as it was** (neither updated nor
//!   removed), and reported with its line, so a typo in one phone number never removes a citizen;
//! - a file with no readable row never removes anyone (a wrong file, an export cut short): refused;
//! - `dry_run` computes and reports the counts and changes nothing.
//!
//! A crash mid-import leaves some changes written: importing the same file again completes it (every
//! step is idempotent). Imports are not meant to run concurrently; the server serializes its own.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::{parse_row, RegistryError, DEMO, HEADER};
use crate::clock::Millis;
use crate::domain::NationalId;
use crate::engine::{AuditEvent, Citizen, CitizenStatus};
use crate::store::{AuditRecord, Store};

/// Rows written to the store at once, and citizens read per page.
const BATCH: usize = 10_000;

/// What an import did (or, in a dry run, would do).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct ImportReport {
    /// Rows read into citizens (an ID listed twice counts twice).
    pub imported: usize,
    /// Citizens not stored before.
    pub added: usize,
    /// Citizens whose phone, name or status changed (restored ones included).
    pub changed: usize,
    /// Of `changed`: citizens removed by an earlier import and listed again.
    pub restored: usize,
    pub unchanged: usize,
    /// Citizens stored but missing from the file: marked removed.
    pub removed: usize,
    /// Citizens kept as they were because their row could not be read (its ID number could).
    pub kept: usize,
    /// (line number, why) of each row skipped.
    pub skipped: Vec<(u64, String)>,
    /// (line number, why) of rows imported that deserve a look (an ID listed twice).
    pub warnings: Vec<(u64, String)>,
    /// Rows whose ID digits read as an impossible birth year (a century digit of 6-9, or a year after
    /// this one). Imported as given, since the registry decides which numbers exist; counted so an
    /// operator can see a registry that was generated rather than issued.
    pub implausible: usize,
    /// Nothing was written.
    pub dry_run: bool,
}

/// One import: into which store, at what time, on whose behalf (written in the audit records).
pub struct Importer<'a> {
    store: &'a dyn Store,
    now: Millis,
    by: String,
    dry_run: bool,
    audit_always: bool,
}

impl<'a> Importer<'a> {
    /// `by` names who imports (`operator=…` or `serve --registry`), for the audit trail.
    pub fn new(store: &'a dyn Store, now: Millis, by: &str) -> Importer<'a> {
        Importer { store, now, by: by.to_string(), dry_run: false, audit_always: false }
    }

    /// Audits the import (`registry_imported`, with its counts) even when it removed nothing: an
    /// operator's import. Otherwise only an import that removed or restored citizens is (a restart that
    /// re-imports the same file is not an event).
    pub fn audited(mut self, yes: bool) -> Importer<'a> {
        self.audit_always = yes;
        self
    }

    /// Computes and reports, writes nothing.
    pub fn dry_run(mut self, yes: bool) -> Importer<'a> {
        self.dry_run = yes;
        self
    }

    /// Imports the CSV read from `input`; `name` names it in errors.
    pub async fn run(&self, input: impl std::io::Read, name: &str) -> Result<ImportReport, RegistryError> {
        let mut report = ImportReport { dry_run: self.dry_run, ..ImportReport::default() };
        let (mut listed, kept) = read(input, name, self.now.year(), &mut report)?;
        let mut changes: Vec<Citizen> = Vec::new();
        let mut removals: Vec<NationalId> = Vec::new();
        let mut after: Option<NationalId> = None;
        let mut stored_live = 0usize;
        loop {
            let page = self.store.citizens_after(after.as_ref(), BATCH).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.national_id.clone());
            for old in page {
                let live = old.status != CitizenStatus::Removed;
                stored_live += usize::from(live);
                match listed.remove(&old.national_id) {
                    Some(new) if new == old => report.unchanged += 1,
                    Some(new) => {
                        report.changed += 1;
                        report.restored += usize::from(!live);
                        changes.push(new);
                    }
                    None if kept.contains(&old.national_id) => report.kept += 1,
                    None if live => removals.push(old.national_id),
                    None => {}
                }
            }
        }
        report.added = listed.len();
        report.removed = removals.len();
        if report.imported == 0 && report.kept == 0 && stored_live > 0 {
            return Err(RegistryError::File {
                path: name.to_string(),
                why: format!(
                    "no citizen could be read from it ({} row(s) skipped), so nothing was changed: an import \
                     removes every citizen it does not list",
                    report.skipped.len()
                ),
            });
        }
        if self.dry_run {
            return Ok(report);
        }
        changes.extend(listed.into_values());
        for chunk in changes.chunks(BATCH) {
            self.store.upsert_citizens(chunk).await?;
        }
        for chunk in removals.chunks(BATCH) {
            let audit: Vec<AuditRecord> =
                chunk.iter().map(|id| self.record("citizen_removed", Some(id), None)).collect();
            self.store.remove_citizens(chunk, &audit).await?;
        }
        let summary = format!(
            "{}; source={name}; added={}; changed={}; removed={}; unchanged={}; skipped={}",
            self.by,
            report.added,
            report.changed,
            report.removed,
            report.unchanged,
            report.skipped.len()
        );
        if self.audit_always || report.removed > 0 || report.restored > 0 {
            self.store.append_audit(&[self.record("registry_imported", None, Some(summary))]).await?;
        }
        Ok(report)
    }

    fn record(&self, event: &str, id: Option<&NationalId>, detail: Option<String>) -> AuditRecord {
        AuditRecord {
            at: self.now,
            caller: None,
            channel: Some("admin".into()),
            event: AuditEvent {
                event: event.into(),
                national_id: id.cloned(),
                phone: None,
                detail: detail.or_else(|| Some(self.by.clone())),
            },
        }
    }
}

/// Reads every row: the citizens by ID number (the later row wins), and the ID numbers of rows that could
/// not be read but whose ID number could.
fn read(
    input: impl std::io::Read,
    name: &str,
    current_year: i32,
    report: &mut ImportReport,
) -> Result<(HashMap<NationalId, Citizen>, HashSet<NationalId>), RegistryError> {
    let file_err = |why: String| RegistryError::File { path: name.to_string(), why };
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(true).trim(csv::Trim::All).from_reader(input);
    let headers = reader.headers().map_err(|e| file_err(e.to_string()))?.clone();
    // Spreadsheet exports add a byte-order mark and capitalise headers; neither changes the meaning.
    let names: Vec<String> =
        headers.iter().map(|h| h.trim_start_matches('\u{feff}').trim().to_ascii_lowercase()).collect();
    if names != HEADER {
        return Err(file_err(format!("header must be {}", HEADER.join(","))));
    }
    let mut listed: HashMap<NationalId, Citizen> = HashMap::new();
    let mut kept: HashSet<NationalId> = HashSet::new();
    let mut seen: HashMap<NationalId, u64> = HashMap::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                report.skipped.push((line, e.to_string()));
                continue;
            }
        };
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        let fields: Vec<&str> = record.iter().collect();
        if fields.iter().all(|f| f.is_empty()) {
            continue;
        }
        match parse_row(&fields) {
            Ok(citizen) => {
                if let Some(first) = seen.insert(citizen.national_id.clone(), line) {
                    report.warnings.push((line, format!("national_id already on line {first}; this later row wins")));
                }
                if citizen.national_id.plausibility(current_year).is_err() {
                    report.implausible += 1;
                }
                report.imported += 1;
                listed.insert(citizen.national_id.clone(), citizen);
            }
            Err(why) => {
                if let Some(id) = fields.first().and_then(|f| NationalId::parse_shape(f).ok()) {
                    kept.insert(id);
                }
                report.skipped.push((line, why));
            }
        }
    }
    // A row read after an unreadable one for the same ID wins: the citizen is listed, not kept.
    kept.retain(|id| !listed.contains_key(id));
    Ok((listed, kept))
}

/// Imports the CSV at `path` into `store`, authoritatively.
pub async fn import_csv(path: &Path, store: &dyn Store, now: Millis, by: &str) -> Result<ImportReport, RegistryError> {
    let file = std::fs::File::open(path)
        .map_err(|e| RegistryError::File { path: path.display().to_string(), why: e.to_string() })?;
    Importer::new(store, now, by).run(std::io::BufReader::new(file), &path.display().to_string()).await
}

/// Imports the built-in demo registry, authoritatively.
pub async fn import_demo(store: &dyn Store, now: Millis, by: &str) -> Result<ImportReport, RegistryError> {
    Importer::new(store, now, by).run(DEMO.as_bytes(), "demo registry").await
}

/// An operator's import of `input` (a CSV) into `store`, authoritative and audited; `dry_run` writes
/// nothing.
pub async fn import(
    input: impl std::io::Read,
    name: &str,
    store: &dyn Store,
    now: Millis,
    by: &str,
    dry_run: bool,
) -> Result<ImportReport, RegistryError> {
    Importer::new(store, now, by).dry_run(dry_run).audited(true).run(input, name).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    const NOW: Millis = Millis(1_795_996_800_000);
    const HEAD: &str = "national_id,phone,full_name,status\n";

    async fn run(store: &MemoryStore, rows: &str, dry_run: bool) -> Result<ImportReport, RegistryError> {
        import(format!("{HEAD}{rows}").as_bytes(), "test.csv", store, NOW, "operator=t", dry_run).await
    }

    async fn status(store: &MemoryStore, id: &str) -> Option<CitizenStatus> {
        store.citizen(&NationalId::parse_shape(id).unwrap()).await.unwrap().map(|c| c.status)
    }

    #[tokio::test]
    async fn counts_added_changed_unchanged_removed_and_a_dry_run_writes_nothing() {
        let store = MemoryStore::new();
        let first = "001099012345,0912345678,An,approved\n001199012346,0987654321,Binh,approved\n\
                     001099012347,0912345679,Cuong,pending\n";
        let r = run(&store, first, false).await.unwrap();
        assert_eq!((r.added, r.changed, r.unchanged, r.removed), (3, 0, 0, 0));
        let second = "001099012345,0912345678,An,approved\n001199012346,0987654321,Binh,pending\n\
                      001099012348,0912345670,Dung,approved\n";
        let dry = run(&store, second, true).await.unwrap();
        assert_eq!((dry.added, dry.changed, dry.unchanged, dry.removed, dry.dry_run), (1, 1, 1, 1, true));
        assert_eq!(status(&store, "001099012347").await, Some(CitizenStatus::Pending), "the dry run wrote nothing");
        assert_eq!(status(&store, "001099012348").await, None);
        let r = run(&store, second, false).await.unwrap();
        assert_eq!((r.added, r.changed, r.unchanged, r.removed), (1, 1, 1, 1));
        assert_eq!(status(&store, "001099012347").await, Some(CitizenStatus::Removed));
        assert_eq!(status(&store, "001199012346").await, Some(CitizenStatus::Pending));
        let audit = crate::store::audit_all(&store).await.unwrap();
        let events: Vec<&str> = audit.iter().map(|r| r.event.event.as_str()).collect();
        assert_eq!(events, ["registry_imported", "citizen_removed", "registry_imported"]);
        // Listed again: restored.
        let r = run(&store, first, false).await.unwrap();
        assert_eq!((r.restored, r.removed), (1, 1));
        assert_eq!(status(&store, "001099012347").await, Some(CitizenStatus::Pending));
    }

    #[tokio::test]
    async fn a_citizen_whose_row_cannot_be_read_is_kept_and_a_file_with_no_readable_row_changes_nothing() {
        let store = MemoryStore::new();
        run(&store, "001099012345,0912345678,An,approved\n001199012346,0987654321,Binh,approved\n", false)
            .await
            .unwrap();
        let r =
            run(&store, "001099012345,0912345678,An,approved\n001199012346,0123,Binh,approved\n", false).await.unwrap();
        assert_eq!((r.kept, r.removed, r.skipped.len()), (1, 0, 1), "a typo in a phone removes no one");
        assert_eq!(status(&store, "001199012346").await, Some(CitizenStatus::Approved));
        let err = run(&store, "12345,0912345678,An,approved\n", false).await.unwrap_err();
        assert!(err.to_string().contains("nothing was changed"), "{err}");
        assert_eq!(status(&store, "001099012345").await, Some(CitizenStatus::Approved));
    }

    #[tokio::test]
    async fn a_removed_citizen_is_unknown_to_the_registry_the_engine_reads() {
        use crate::registry::{ImportedRegistry, Registry};
        let store = std::sync::Arc::new(MemoryStore::new());
        run(&store, "001099012345,0912345678,An,approved\n001199012346,0987654321,Binh,approved\n", false)
            .await
            .unwrap();
        run(&store, "001099012345,0912345678,An,approved\n", false).await.unwrap();
        let registry = ImportedRegistry(store.clone());
        let id = |s: &str| NationalId::parse_shape(s).unwrap();
        assert!(registry.citizen(&id("001199012346")).await.unwrap().is_none());
        assert!(registry.citizen(&id("001099012345")).await.unwrap().is_some());
    }
}
