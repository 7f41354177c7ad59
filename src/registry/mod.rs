//! The citizens registry. Today a CSV file (`national_id,phone,full_name,status`) imported into the store
//! at start-up and by `kichhoat registry import` (through the running server's admin API); later a
//! national registry API implementing [`Registry`] instead.
//!
//! Import is forgiving by row and strict by field: a malformed row is reported with its line number and
//! skipped, the rest still load. An import is **authoritative** ([`import`]): citizens stored but missing
//! from the new file are marked removed (never deleted; an account stays), audited one by one, and from
//! then on the registry answers for them as for an unknown ID number, so no activation or recovery can
//! start (the same reply as an unknown ID: no enumeration). Re-importing never touches an account, so an
//! activation survives a registry refresh.

use crate::domain::{Msisdn, NationalId};
use crate::engine::{Citizen, CitizenStatus};
use crate::store::{Store, StoreError};

/// Where the engine's citizen lookups come from.
#[async_trait::async_trait]
pub trait Registry: Send + Sync {
    async fn citizen(&self, id: &NationalId) -> Result<Option<Citizen>, StoreError>;
}

/// The embedded default: the citizens the CSV import put into the store. A citizen the latest import
/// removed is answered as unknown.
pub struct ImportedRegistry(pub std::sync::Arc<dyn Store>);

#[async_trait::async_trait]
impl Registry for ImportedRegistry {
    async fn citizen(&self, id: &NationalId) -> Result<Option<Citizen>, StoreError> {
        Ok(self.0.citizen(id).await?.filter(|c| c.status != CitizenStatus::Removed))
    }
}

mod import;

pub use import::{import, import_csv, import_demo, ImportReport, Importer};

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

/// The demo registry (`fixtures/registry.csv`), built into the binary for `--demo` and `simulate`.
pub const DEMO: &str = include_str!("../../fixtures/registry.csv");

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
        let report = Importer::new(&store, crate::clock::Millis(1_795_996_800_000), "test")
            .run(csv.as_bytes(), "test")
            .await
            .unwrap();
        assert_eq!((report.imported, report.skipped.len()), (1, 0));
    }

    #[test]
    fn a_bad_status_or_id_is_refused_with_a_reason() {
        assert!(parse_row(&["001099012345", "0912345678", "A", "maybe"]).unwrap_err().contains("status"));
        assert!(parse_row(&["12345", "0912345678", "A", "approved"]).unwrap_err().contains("national_id"));
        assert!(parse_row(&["001099012345", "0912345678"]).unwrap_err().contains("4 fields"));
    }
}
