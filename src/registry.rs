//! The citizens registry. Today a CSV file (`national_id,phone,full_name,status`) imported into the store
//! at start-up; later a national registry API implementing [`Registry`] instead.
//!
//! Import is forgiving by row and strict by field: a malformed row is reported with its line number and
//! skipped, the rest still load, and the server starts. Re-importing updates citizens and never touches an
//! account, so an activation survives a registry refresh.

use std::path::Path;

use crate::domain::{Msisdn, NationalId};
use crate::engine::{Citizen, CitizenStatus};
use crate::store::{Store, StoreError};

/// Where the engine's citizen lookups come from.
#[async_trait::async_trait]
pub trait Registry: Send + Sync {
    async fn citizen(&self, id: &NationalId) -> Result<Option<Citizen>, StoreError>;
}

/// The embedded default: the citizens the CSV import put into the store.
pub struct ImportedRegistry(pub std::sync::Arc<dyn Store>);

#[async_trait::async_trait]
impl Registry for ImportedRegistry {
    async fn citizen(&self, id: &NationalId) -> Result<Option<Citizen>, StoreError> {
        self.0.citizen(id).await
    }
}

/// Rows written to the store at once.
const IMPORT_BATCH: usize = 10_000;

/// What an import did.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub imported: usize,
    /// (line number, why) of each row skipped.
    pub skipped: Vec<(u64, String)>,
    /// (line number, why) of rows imported that deserve a look (an ID listed twice).
    pub warnings: Vec<(u64, String)>,
    /// Rows whose ID digits read as an impossible birth year (a century digit of 6-9, or a year after
    /// this one). Imported as given, since the registry decides which numbers exist; counted so an
    /// operator can see a registry that was generated rather than issued.
    pub implausible: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {path}: {why}")]
    File { path: String, why: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub const HEADER: [&str; 4] = ["national_id", "phone", "full_name", "status"];

/// Parses one CSV row into a citizen.
pub fn parse_row(fields: &[&str]) -> Result<Citizen, String> {
    let [id, phone, name, status] = fields else {
        return Err(format!("expected 4 fields, found {}", fields.len()));
    };
    let national_id = NationalId::parse_shape(id).map_err(|e| format!("national_id: {e}"))?;
    let phone = Msisdn::parse(phone).map_err(|e| format!("phone: {e}"))?;
    let full_name = name.trim().to_string();
    if full_name.is_empty() {
        return Err("full_name is empty".into());
    }
    let status = match status.trim().to_ascii_lowercase().as_str() {
        "approved" => CitizenStatus::Approved,
        "pending" => CitizenStatus::Pending,
        other => return Err(format!("status {other:?} is neither approved nor pending")),
    };
    Ok(Citizen { national_id, phone, full_name, status })
}

/// The demo registry (`fixtures/registry.csv`), built into the binary for runs outside the checkout.
pub const DEMO: &str = include_str!("../fixtures/registry.csv");

/// Imports the CSV at `path` into `store`.
pub async fn import_csv(path: &Path, store: &dyn Store, current_year: i32) -> Result<ImportReport, RegistryError> {
    let file = std::fs::File::open(path)
        .map_err(|e| RegistryError::File { path: path.display().to_string(), why: e.to_string() })?;
    import(file, &path.display().to_string(), store, current_year).await
}

/// Imports the built-in demo registry.
pub async fn import_demo(store: &dyn Store, current_year: i32) -> Result<ImportReport, RegistryError> {
    import(DEMO.as_bytes(), "demo registry", store, current_year).await
}

async fn import(
    input: impl std::io::Read,
    name: &str,
    store: &dyn Store,
    current_year: i32,
) -> Result<ImportReport, RegistryError> {
    let file_err = |why: String| RegistryError::File { path: name.to_string(), why };
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(true).trim(csv::Trim::All).from_reader(input);
    let headers = reader.headers().map_err(|e| file_err(e.to_string()))?.clone();
    // Spreadsheet exports add a byte-order mark and capitalise headers; neither changes the meaning.
    let names: Vec<String> =
        headers.iter().map(|h| h.trim_start_matches('\u{feff}').trim().to_ascii_lowercase()).collect();
    if names != HEADER {
        return Err(file_err(format!("header must be {}", HEADER.join(","))));
    }
    let mut report = ImportReport::default();
    let mut seen: std::collections::HashMap<NationalId, u64> = std::collections::HashMap::new();
    let mut batch: Vec<Citizen> = Vec::with_capacity(IMPORT_BATCH);
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
                batch.push(citizen);
                report.imported += 1;
                if batch.len() >= IMPORT_BATCH {
                    store.upsert_citizens(&batch).await?;
                    batch.clear();
                }
            }
            Err(why) => report.skipped.push((line, why)),
        }
    }
    store.upsert_citizens(&batch).await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_in_any_phone_form_parses() {
        for phone in ["0912345678", "84912345678", "+84912345678"] {
            let c = parse_row(&["001099012345", phone, "Nguyễn Văn An", "approved"]).unwrap();
            assert_eq!(c.phone.e164(), "+84912345678");
        }
    }

    #[tokio::test]
    async fn a_spreadsheet_export_with_a_bom_and_capitals_imports() {
        let store = crate::store::memory::MemoryStore::new();
        let csv = "\u{feff}National_ID,Phone,Full_Name,Status\r\n001099012345,0912345678,Nguyễn Văn An,Approved\r\n";
        let report = import(csv.as_bytes(), "test", &store, 2026).await.unwrap();
        assert_eq!((report.imported, report.skipped.len()), (1, 0));
    }

    #[test]
    fn a_bad_status_or_id_is_refused_with_a_reason() {
        assert!(parse_row(&["001099012345", "0912345678", "A", "maybe"]).unwrap_err().contains("status"));
        assert!(parse_row(&["12345", "0912345678", "A", "approved"]).unwrap_err().contains("national_id"));
        assert!(parse_row(&["001099012345", "0912345678"]).unwrap_err().contains("4 fields"));
    }
}
