//! An authoritative registry import: the file read whole and sorted by ID number (the later row of an ID
//! winning), walked beside the stored citizens page by page in ID order, and only the difference written
//! as the walk goes: new citizens added, changed ones updated (a removed citizen listed again is
//! restored), and citizens the file no longer lists marked removed, each with an audit record
//! `citizen_removed` in the transaction that marks it, and one `registry_imported` record with the counts.
//!
//! Safety rails an operator expects of a file that decides who may activate:
//! - a row that cannot be read but whose ID number can is **kept as it was** (neither updated nor
//!   removed), and reported with its line, so a typo in one phone number never removes a citizen;
//! - a file with no readable row never removes anyone (a wrong file, an export cut short): refused;
//! - `dry_run` computes and reports the counts and changes nothing.
//!
//! A crash mid-import leaves some changes written: importing the same file again completes it (every
//! step is idempotent). Imports are not meant to run concurrently; the server serializes its own.

use std::collections::HashSet;
use std::path::Path;

use super::{parse_row, RegistryError, DEMO, HEADER};
use crate::clock::Millis;
use crate::domain::NationalId;
use crate::engine::{AuditEvent, Citizen, CitizenStatus};
use crate::store::{AuditRecord, Store, StoreError};

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
    ///
    /// The file is read and sorted on the blocking pool: ten million rows take seconds of CPU that would
    /// otherwise hold up a runtime thread, and every hop it was due to run.
    pub async fn run(
        &self,
        input: impl std::io::Read + Send + 'static,
        name: &str,
    ) -> Result<ImportReport, RegistryError> {
        let (owned, year, dry_run) = (name.to_string(), self.now.year(), self.dry_run);
        let (mut report, listed, kept) = tokio::task::spawn_blocking(move || {
            let mut report = ImportReport { dry_run, ..ImportReport::default() };
            read(input, &owned, year, &mut report).map(|(listed, kept)| (report, listed, kept))
        })
        .await
        .map_err(|e| RegistryError::File { path: name.to_string(), why: format!("reading stopped: {e}") })??;
        if report.imported == 0 && self.would_empty(&kept).await? {
            return Err(RegistryError::File {
                path: name.to_string(),
                why: format!(
                    "no citizen could be read from it ({} row(s) skipped), so nothing was changed: an import \
                     removes every citizen it does not list",
                    report.skipped.len()
                ),
            });
        }
        // Both sides in ID order, walked together: what the file adds or changes is written in ID order (a
        // B-tree takes keys in order far faster than scattered), in batches while the walk goes on. A
        // citizen the file adds sorts before the stored one the walk stands on, so no later page of stored
        // citizens can hold it.
        let mut listed = listed.peekable();
        let mut changes: Vec<Citizen> = Vec::new();
        let mut removals: Vec<NationalId> = Vec::new();
        let mut after: Option<NationalId> = None;
        loop {
            let page = self.store.citizens_after(after.as_ref(), BATCH).await?;
            // The walk is right only if the store pages in the byte order the file was sorted in (12 digits
            // sort alike in every collation); checked before any citizen of the page is compared.
            let ids = after.iter().chain(page.iter().map(|c| &c.national_id)).map(NationalId::as_str);
            if !ids.is_sorted_by(|a, b| a < b) {
                let why = "stored citizens not listed in ID order; the import stopped".to_string();
                return Err(StoreError::Corrupt { what: "citizens", why }.into());
            }
            let Some(last) = page.last() else { break };
            after = Some(last.national_id.clone());
            for (i, old) in page.into_iter().enumerate() {
                // A live import shares the runtime threads with hops: they get a turn every 1,000 rows.
                if i % 1_000 == 999 {
                    tokio::task::yield_now().await;
                }
                while let Some(new) = listed.next_if(|r| r.id() < old.national_id.as_str()) {
                    report.added += 1;
                    changes.push(new.citizen(name)?);
                }
                let live = old.status != CitizenStatus::Removed;
                match listed.next_if(|r| r.id() == old.national_id.as_str()).map(|r| r.citizen(name)).transpose()? {
                    Some(new) if new == old => report.unchanged += 1,
                    Some(new) => {
                        report.changed += 1;
                        report.restored += usize::from(!live);
                        changes.push(new);
                    }
                    None if kept.contains(&old.national_id) => report.kept += 1,
                    None if live => {
                        report.removed += 1;
                        removals.push(old.national_id);
                    }
                    None => {}
                }
            }
            self.write(&mut changes, &mut removals, BATCH).await?;
        }
        for new in listed {
            report.added += 1;
            changes.push(new.citizen(name)?);
            self.write(&mut changes, &mut removals, BATCH).await?;
        }
        self.write(&mut changes, &mut removals, 1).await?;
        if self.dry_run {
            return Ok(report);
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

    /// Whether a file that lists no citizen would remove every live stored one: some citizen is live and
    /// none is kept by an unreadable row.
    async fn would_empty(&self, kept: &HashSet<NationalId>) -> Result<bool, RegistryError> {
        let (mut live, mut after) = (false, None::<NationalId>);
        loop {
            let page = self.store.citizens_after(after.as_ref(), BATCH).await?;
            let Some(last) = page.last() else { return Ok(live) };
            if page.iter().any(|c| kept.contains(&c.national_id)) {
                return Ok(false);
            }
            live |= page.iter().any(|c| c.status != CitizenStatus::Removed);
            after = Some(last.national_id.clone());
        }
    }

    /// Writes the pending changes and removals once either holds `at_least` (a dry run only drops them).
    async fn write(
        &self,
        changes: &mut Vec<Citizen>,
        removals: &mut Vec<NationalId>,
        at_least: usize,
    ) -> Result<(), RegistryError> {
        if self.dry_run {
            changes.clear();
            removals.clear();
            return Ok(());
        }
        if changes.len() >= at_least {
            self.store.upsert_citizens(changes).await?;
            changes.clear();
        }
        if removals.len() >= at_least {
            let audit: Vec<AuditRecord> =
                removals.iter().map(|id| self.record("citizen_removed", Some(id), None)).collect();
            self.store.remove_citizens(removals, &audit).await?;
            removals.clear();
        }
        Ok(())
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

/// The citizens a file lists, in ID order.
type Listed = std::vec::IntoIter<Row>;

/// A citizen read from the file, held until the whole file is sorted: one allocation,
/// `<12-digit ID><a|p><phone>\x1f<name>` (the name last: any character in it is its own), about half the
/// memory of a [`Citizen`] and its line, which for ten million rows is a gigabyte.
struct Row {
    packed: Box<str>,
    line: u64,
}

impl Row {
    fn pack(c: &Citizen, line: u64) -> Row {
        let status = if c.status == CitizenStatus::Pending { "p" } else { "a" };
        let packed = format!("{}{status}{}\x1f{}", c.national_id.as_str(), c.phone.as_str(), c.full_name);
        Row { packed: packed.into_boxed_str(), line }
    }

    /// The ID number (12 digits: a parsed one is never another length).
    fn id(&self) -> &str {
        self.packed.get(..12).unwrap_or("")
    }

    /// The citizen again, parsed from the forms it was packed in.
    fn citizen(&self, file: &str) -> Result<Citizen, RegistryError> {
        let (head, name) = self.packed.split_once('\x1f').unwrap_or((&self.packed, ""));
        let (id, rest) = head.split_at_checked(12).unwrap_or((head, ""));
        let (status, phone) = rest.split_at_checked(1).unwrap_or(("a", rest));
        let status = if status == "p" { "pending" } else { "approved" };
        parse_row(&[id, phone, name, status])
            .map_err(|why| RegistryError::File { path: file.to_string(), why: format!("line {}: {why}", self.line) })
    }
}

/// Reads every row: the citizens in ID order (of an ID listed twice, the later row), and the ID numbers of
/// rows that could not be read but whose ID number could.
fn read(
    input: impl std::io::Read,
    name: &str,
    current_year: i32,
    report: &mut ImportReport,
) -> Result<(Listed, HashSet<NationalId>), RegistryError> {
    let file_err = |why: String| RegistryError::File { path: name.to_string(), why };
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(true).trim(csv::Trim::All).from_reader(input);
    let headers = reader.headers().map_err(|e| file_err(e.to_string()))?.clone();
    // Spreadsheet exports add a byte-order mark and capitalise headers; neither changes the meaning.
    let names: Vec<String> =
        headers.iter().map(|h| h.trim_start_matches('\u{feff}').trim().to_ascii_lowercase()).collect();
    if names != HEADER {
        return Err(file_err(format!("header must be {}", HEADER.join(","))));
    }
    // Rows with their line, sorted afterwards: a vector and one sort hold 10M rows in far less memory and
    // time than a map, and give the ID order the comparison with the store walks in.
    let mut rows: Vec<Row> = Vec::new();
    let mut kept: HashSet<NationalId> = HashSet::new();
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            // A read that failed part-way (a disk error, an upload cut off) is not a bad row: carrying on
            // would import part of the registry and remove every citizen after the cut.
            Err(e) if e.is_io_error() => return Err(file_err(format!("reading stopped: {e}"))),
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                report.skipped.push((line, e.to_string()));
                continue;
            }
        }
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        let fields: Vec<&str> = record.iter().collect();
        if fields.iter().all(|f| f.is_empty()) {
            continue;
        }
        match parse_row(&fields) {
            Ok(citizen) => {
                if citizen.national_id.plausibility(current_year).is_err() {
                    report.implausible += 1;
                }
                report.imported += 1;
                rows.push(Row::pack(&citizen, line));
            }
            Err(why) => {
                if let Some(id) = fields.first().and_then(|f| NationalId::parse_shape(f).ok()) {
                    kept.insert(id);
                }
                report.skipped.push((line, why));
            }
        }
    }
    // Stable: rows of one ID stay in file order, and the last of them wins. Compacted in place: a second
    // vector would double the peak memory of a large file.
    rows.sort_by(|a, b| a.id().cmp(b.id()));
    let mut w = 0;
    for r in 0..rows.len() {
        if w > 0 && rows[w - 1].id() == rows[r].id() {
            let why = format!("national_id already on line {}; this later row wins", rows[w - 1].line);
            report.warnings.push((rows[r].line, why));
            rows.swap(w - 1, r);
        } else {
            rows.swap(w, r);
            w += 1;
        }
    }
    rows.truncate(w);
    report.warnings.sort_by_key(|w| w.0);
    // A row read after an unreadable one for the same ID wins: the citizen is listed, not kept.
    kept.retain(|id| rows.binary_search_by(|r| r.id().cmp(id.as_str())).is_err());
    Ok((rows.into_iter(), kept))
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
    input: impl std::io::Read + Send + 'static,
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
        import(std::io::Cursor::new(format!("{HEAD}{rows}")), "test.csv", store, NOW, "operator=t", dry_run).await
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
    async fn a_file_interleaving_new_changed_and_missing_citizens_over_many_pages_leaves_the_store_equal_to_it() {
        // Stored: the even numbers below 30,000 (three pages of stored citizens). The file, out of order and
        // with one ID listed twice: every odd number (new), the multiples of 4 (those of 8 renamed), not the
        // other evens (removed).
        let id = |n: u32| format!("0010990{n:05}");
        let row = |n: u32, name: &str| format!("{},09{n:08},{name},approved\n", id(n));
        let store = MemoryStore::new();
        let stored: String = (0..30_000).step_by(2).map(|n| row(n, "Old")).collect();
        run(&store, &stored, false).await.unwrap();
        let mut file: Vec<String> = (0..30_000)
            .filter(|n| n % 4 != 2)
            .map(|n| {
                row(
                    n,
                    if n % 2 == 1 {
                        "New"
                    } else if n % 8 == 0 {
                        "Renamed"
                    } else {
                        "Old"
                    },
                )
            })
            .collect();
        file.reverse();
        file.insert(0, row(7, "Listed first then overridden"));
        let r = run(&store, &file.concat(), false).await.unwrap();
        assert_eq!((r.added, r.changed, r.unchanged, r.removed), (15_000, 3_750, 3_750, 7_500));
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(r.warnings[0].1.contains("already on line 2"), "{:?}", r.warnings);
        let name = |n: u32| {
            let store = &store;
            async move { store.citizen(&NationalId::parse_shape(&id(n)).unwrap()).await.unwrap().map(|c| c.full_name) }
        };
        assert_eq!(name(7).await.as_deref(), Some("New"), "the later row wins");
        assert_eq!(name(29_999).await.as_deref(), Some("New"));
        assert_eq!(name(16).await.as_deref(), Some("Renamed"));
        assert_eq!(status(&store, &id(6)).await, Some(CitizenStatus::Removed));
        let again = run(&store, &file.concat(), false).await.unwrap();
        assert_eq!((again.added, again.changed, again.removed, again.unchanged), (0, 0, 0, 22_500));
    }

    #[test]
    fn a_packed_row_gives_back_the_citizen_it_was_read_as() {
        for fields in [
            ["001099012345", "0912345678", "Nguyễn Văn An", "approved"],
            ["079203000001", "+84 98 765 4321", "Trần\u{1f}Thị\u{1f}Bình, \"B\"", "Pending"],
        ] {
            let citizen = parse_row(&fields).unwrap();
            assert_eq!(Row::pack(&citizen, 7).citizen("f.csv").unwrap(), citizen);
        }
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

    /// The first `n` bytes of a text, then a read error (an upload cut off, a failing disk).
    struct CutOff(std::io::Cursor<String>, usize);

    impl std::io::Read for CutOff {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let left = self.1.saturating_sub(self.0.position() as usize);
            if left == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "cut off"));
            }
            let n = buf.len().min(left);
            self.0.read(&mut buf[..n])
        }
    }

    #[tokio::test]
    async fn a_read_that_fails_part_way_imports_nothing_rather_than_remove_the_rest() {
        let store = MemoryStore::new();
        let rows = "001099012345,0912345678,An,approved\n001199012346,0987654321,Binh,approved\n";
        run(&store, rows, false).await.unwrap();
        let changed = format!("{HEAD}001099012345,0912345678,An,pending\n001199012346,0987654321,Binh,approved\n");
        let cut = HEAD.len() + 40; // inside the second row
        let err = import(CutOff(std::io::Cursor::new(changed), cut), "cut.csv", &store, NOW, "operator=t", false)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("reading stopped"), "{err}");
        assert_eq!(status(&store, "001099012345").await, Some(CitizenStatus::Approved), "nothing written");
        assert_eq!(status(&store, "001199012346").await, Some(CitizenStatus::Approved), "nobody removed");
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
