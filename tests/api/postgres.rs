//! The PostgreSQL store beyond the contract suite: its migrations, and several `kichhoat serve` processes
//! on one database (hops of one phone alternating between them, duplicates raced across them, limits
//! held across them, one killed mid-activation), with a dump of the database searched for secrets.

use kichhoat::store::postgres::{PgStore, SCHEMA};
use kichhoat::store::{Store, StoreError};

use crate::pg;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_at_once_migrate_once_and_a_newer_schema_is_refused() {
    let Some(cluster) = pg::cluster() else { return };
    let url = cluster.new_database();
    let opens: Vec<_> = (0..4).map(|_| tokio::spawn(PgStore::open_owned(url.clone()))).collect();
    let mut instances = Vec::new();
    for o in opens {
        instances.push(o.await.unwrap().unwrap().instance().to_string());
    }
    instances.dedup();
    assert_eq!(instances.len(), 1, "one database, one instance id: {instances:?}");
    assert_eq!(cluster.psql(&url, "SELECT value FROM kichhoat_meta WHERE key = 'schema'").trim(), SCHEMA.to_string());

    cluster.psql(&url, "UPDATE kichhoat_meta SET value = '99' WHERE key = 'schema'");
    match PgStore::open(&url).await {
        Err(StoreError::NewerSchema { found: 99, supported }) => assert_eq!(supported, SCHEMA),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a database of schema 99 was opened"),
    }
}
