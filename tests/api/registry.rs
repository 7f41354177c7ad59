//! The registry CSV: bad rows are reported by line and skipped, the server still starts, and
//! re-importing updates citizens without resetting an activation.

use std::sync::Arc;

use kichhoat::app::App;
use kichhoat::clock::{Clock, ManualClock};
use kichhoat::crypto::HashCost;
use kichhoat::domain::NationalId;
use kichhoat::registry::import_csv;

use crate::helpers::{settings, TestServer, T0};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_rows_are_reported_by_line_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("registry.csv");
    std::fs::write(
        &csv,
        "national_id,phone,full_name,status\n\
         001099012345,0912345678,Nguyễn Văn An,approved\n\
         12345,0912345678,Short Id,approved\n\
         001199012346,0123,Bad Phone,approved\n\
         001199012347,0987654322,Unknown Status,maybe\n\
         \"001199012348\",\"+84987654323\",\"Trần, Thị Quote\",pending\n",
    )
    .unwrap();
    let mut s = settings(&dir.path().join("data"));
    s.registry = Some(csv.clone());
    let app =
        App::open(&s, Arc::new(ManualClock::new(T0)) as Arc<dyn Clock>, HashCost::DANGER_TEST_ONLY).await.unwrap();
    let report = import_csv(&csv, app.store.as_ref(), T0, "test").await.unwrap();
    assert_eq!(report.imported, 2);
    let lines: Vec<u64> = report.skipped.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, [3, 4, 5]);
    let quoted = app.store.citizen(&NationalId::parse("001199012348", 2026).unwrap()).await.unwrap().unwrap();
    assert_eq!(quoted.full_name, "Trần, Thị Quote");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_importing_the_registry_never_resets_an_activation() {
    let server = TestServer::start().await;
    crate::webhook::activate(&server, "+84912345678", "001099012345", "Abc*1234x").await;
    let dir = server.stop().await;
    // Same data dir, the registry imported again at start.
    let server = TestServer::start_in(dir).await;
    let id = NationalId::parse("001099012345", 2026).unwrap();
    assert!(server.app().store.account(&id).await.unwrap().is_some());
    server.stop().await;
}
