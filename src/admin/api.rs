//! The admin API: the operator commands over HTTP on a listener of their own (`--admin-listen`, loopback
//! only, default a free port of `127.0.0.1`), so they work while the server holds the data dir (sled allows one
//! process per data dir).
//!
//! Every route but `/healthz` wants `Authorization: Bearer <token>`. The token is 32 random bytes drawn
//! at each start and written with the listener's URL to `<data-dir>/admin.json` (mode 0600, like the rest
//! of the data dir: whoever can read it can read the database anyway); the CLI reads it from there. It is
//! compared in constant time over SHA-256 digests (OWASP ASVS V11). A refused call gets 401 with no detail,
//! is logged with the peer address and audited as `admin_rejected`. The file is removed at shutdown.
//!
//! Routes (JSON in and out, IDs only in bodies: request logs name the path only):
//! - `POST /admin/show` `{"id","operator"}` → [`CitizenView`](super::CitizenView)
//! - `POST /admin/unlock` `{"id","operator","what"}` → [`Unlocked`](super::Unlocked)
//! - `POST /admin/cancel` `{"id","operator"}` → [`Cancelled`](super::Cancelled)
//! - `POST /admin/registry/import?operator=&name=&dry_run=` with the CSV as the body →
//!   [`ImportReport`](crate::registry::ImportReport)
//! - `GET /healthz`

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tracing::{error, warn};

use super::{Admin, AdminError, Operator, What};
use crate::domain::NationalId;
use crate::engine::AuditEvent;
use crate::store::AuditRecord;

/// The admin listener's default address: a free loopback port, found by the CLI in `admin.json`. A fixed
/// port would be taken from the next instance on the machine (several on one database), whose `--listen`
/// could well be it.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:0";
/// The file, in the data dir, that tells the CLI where the admin API is and its token.
pub const ENDPOINT_FILE: &str = "admin.json";
/// The largest registry CSV the API takes (about 19 million rows of ~55 bytes; its rows are held, ~90 bytes
/// each, while they are sorted). A larger registry is imported at start (`serve --registry`).
pub const IMPORT_LIMIT: usize = 1 << 30;
/// An import of a large registry takes a while.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// Where the admin API listens and its token, as `<data-dir>/admin.json` holds them.
#[derive(Clone, Serialize, Deserialize)]
pub struct Endpoint {
    pub url: String,
    pub token: String,
    pub pid: u32,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("url", &self.url).field("token", &"<redacted>").finish()
    }
}

impl Endpoint {
    /// A fresh token for the API at `addr`.
    pub fn new(addr: SocketAddr) -> Endpoint {
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        Endpoint { url: format!("http://{addr}"), token: hex::encode(bytes), pid: std::process::id() }
    }

    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(ENDPOINT_FILE)
    }

    /// The file of an instance that found `admin.json` held by another live server (several instances on
    /// one database may share a data dir): `admin-<pid>.json`.
    fn own_path(data_dir: &Path) -> PathBuf {
        data_dir.join(format!("admin-{}.json", std::process::id()))
    }

    /// Writes the file (0600, replaced whole): `admin.json`, or `admin-<pid>.json` when `admin.json` is
    /// another running server's (`alive` tells whether a pid runs). Returns the path written.
    pub fn write(&self, data_dir: &Path, alive: impl Fn(u32) -> bool) -> std::io::Result<PathBuf> {
        // The files of further instances that died (killed: nothing removed them) go first.
        for (pid, stale) in Endpoint::instance_files(data_dir) {
            if pid != self.pid && !alive(pid) {
                let _ = std::fs::remove_file(stale);
            }
        }
        let tmp = data_dir.join(format!("{ENDPOINT_FILE}.{}.tmp", self.pid));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        std::io::Write::write_all(&mut file, &serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        let written = self.claim(data_dir, &tmp, alive);
        let _ = std::fs::remove_file(&tmp);
        written
    }

    /// Puts the written `tmp` at `admin.json` if no other live server holds it, else at `admin-<pid>.json`.
    /// `admin.json` is taken with a hard link, which fails if the name exists: two instances starting at
    /// the same moment cannot both take it (a check then a rename let the second overwrite the first, and
    /// the CLI lost the first once the second stopped).
    fn claim(&self, data_dir: &Path, tmp: &Path, alive: impl Fn(u32) -> bool) -> std::io::Result<PathBuf> {
        let shared = Endpoint::path(data_dir);
        for _ in 0..8 {
            match Endpoint::read_at(&shared) {
                Some(e) if e.pid == self.pid => break,
                Some(e) if alive(e.pid) => {
                    let own = Endpoint::own_path(data_dir);
                    std::fs::rename(tmp, &own)?;
                    return Ok(own);
                }
                // Left by a server that died: removed if it is still that one.
                Some(stale) => stale.remove(&shared),
                None => {}
            }
            match std::fs::hard_link(tmp, &shared) {
                Ok(()) => return Ok(shared),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(_) => break,
            }
        }
        // Our own file, or a file system without hard links: replaced whole, as before.
        std::fs::rename(tmp, &shared)?;
        Ok(shared)
    }

    fn read_at(path: &Path) -> Option<Endpoint> {
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The `admin-<pid>.json` files of further instances, oldest pid first.
    fn instance_files(data_dir: &Path) -> Vec<(u32, PathBuf)> {
        let mut files: Vec<(u32, PathBuf)> = std::fs::read_dir(data_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let pid = name.strip_prefix("admin-")?.strip_suffix(".json")?.parse().ok()?;
                Some((pid, entry.path()))
            })
            .collect();
        files.sort();
        files
    }

    /// The endpoints of the servers on this data dir whose process runs: `admin.json` first, then the
    /// `admin-<pid>.json` of further instances (oldest pid first).
    pub fn find(data_dir: &Path, alive: impl Fn(u32) -> bool) -> Vec<Endpoint> {
        std::iter::once(Endpoint::path(data_dir))
            .chain(Endpoint::instance_files(data_dir).into_iter().map(|(_, p)| p))
            .filter_map(|p| Endpoint::read_at(&p))
            .filter(|e| alive(e.pid))
            .collect()
    }

    /// Removes the file at `path` if it is still this one (a newer server may have replaced it).
    pub fn remove(&self, path: &Path) {
        if Endpoint::read_at(path).is_some_and(|e| e.token == self.token) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// What the admin routes share.
pub struct AdminApi {
    pub admin: Arc<Admin>,
    token: [u8; 32],
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl AdminApi {
    pub fn new(admin: Arc<Admin>, endpoint: &Endpoint) -> AdminApi {
        AdminApi { admin, token: digest(&endpoint.token) }
    }

    fn authorized(&self, req: &Request) -> bool {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        given.is_some_and(|g| bool::from(digest(g).ct_eq(&self.token)))
    }
}

async fn guard(State(api): State<Arc<AdminApi>>, req: Request, next: Next) -> Response {
    if api.authorized(&req) {
        return next.run(req).await;
    }
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.to_string()).unwrap_or_default();
    let path = req.uri().path().to_string();
    warn!(peer = %peer, path = %path, "admin API: call without the right token refused");
    let record = AuditRecord {
        at: api.admin.clock.now(),
        caller: None,
        channel: Some("admin".into()),
        event: AuditEvent {
            event: "admin_rejected".into(),
            national_id: None,
            phone: None,
            detail: Some(format!("peer={peer}; path={path}")),
        },
    };
    if let Err(e) = api.admin.store.append_audit(&[record]).await {
        error!(error = %e, "admin API: refusal could not be audited");
    } else if let Err(e) = api.admin.audit_log.drain().await {
        error!(error = %e, "admin API: audit trail not written; the sweeper retries");
    }
    (StatusCode::UNAUTHORIZED, "unauthorized\n").into_response()
}

pub fn router(api: Arc<AdminApi>) -> Router {
    let guarded = Router::new()
        .route("/admin/show", post(show))
        .route("/admin/unlock", post(unlock))
        .route("/admin/cancel", post(cancel))
        .route("/admin/registry/import", post(import))
        .route_layer(axum::middleware::from_fn_with_state(api.clone(), guard));
    Router::new()
        .merge(guarded)
        .route("/healthz", get(|| async { "ok\n" }))
        // axum's extractors stop at 2 MB of their own accord: a registry is larger.
        .layer(DefaultBodyLimit::max(IMPORT_LIMIT))
        .layer(RequestBodyLimitLayer::new(IMPORT_LIMIT))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, REQUEST_TIMEOUT))
        .layer(TraceLayer::new_for_http().make_span_with(
            |req: &Request<Body>| tracing::debug_span!("admin", method = %req.method(), path = %req.uri().path()),
        ))
        .with_state(api)
}

/// An error as the API answers it: a reason for a bad request, nothing internal otherwise (logged).
fn failed(e: AdminError) -> Response {
    let (status, message) = match &e {
        AdminError::BadRequest(why) => (StatusCode::BAD_REQUEST, why.clone()),
        AdminError::Registry(crate::registry::RegistryError::File { .. }) => (StatusCode::BAD_REQUEST, e.to_string()),
        AdminError::Busy(_) => (StatusCode::CONFLICT, e.to_string()),
        _ => {
            error!(error = %e, "admin API: action failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error (see the server log)".to_string())
        }
    };
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

fn reply<T: Serialize>(r: Result<T, AdminError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => failed(e),
    }
}

/// The body of `show`, `unlock` and `cancel`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForId {
    pub id: String,
    pub operator: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub what: Option<What>,
}

impl ForId {
    fn parse(&self) -> Result<(NationalId, Operator), AdminError> {
        let id = NationalId::parse_shape(&self.id).map_err(|e| AdminError::BadRequest(format!("id: {e}")))?;
        let by = Operator::parse(&self.operator).map_err(AdminError::BadRequest)?;
        Ok((id, by))
    }
}

fn body(json: Result<Json<ForId>, axum::extract::rejection::JsonRejection>) -> Result<ForId, AdminError> {
    json.map(|Json(b)| b).map_err(|r| AdminError::BadRequest(r.body_text()))
}

async fn show(
    State(api): State<Arc<AdminApi>>,
    json: Result<Json<ForId>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let run = async {
        let (id, by) = body(json)?.parse()?;
        api.admin.show(&id, &by).await
    };
    reply(run.await)
}

async fn unlock(
    State(api): State<Arc<AdminApi>>,
    json: Result<Json<ForId>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let run = async {
        let b = body(json)?;
        let (id, by) = b.parse()?;
        api.admin.unlock(&id, b.what.unwrap_or(What::All), &by).await
    };
    reply(run.await)
}

async fn cancel(
    State(api): State<Arc<AdminApi>>,
    json: Result<Json<ForId>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let run = async {
        let (id, by) = body(json)?.parse()?;
        api.admin.cancel(&id, &by).await
    };
    reply(run.await)
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ImportQuery {
    pub operator: String,
    /// The file's name, for the audit trail.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
}

async fn import(
    State(api): State<Arc<AdminApi>>,
    query: Result<Query<ImportQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Response {
    let run = async {
        let Ok(Query(q)) = query else {
            return Err(AdminError::BadRequest("the query needs operator (and may give name, dry_run)".into()));
        };
        let by = Operator::parse(&q.operator).map_err(AdminError::BadRequest)?;
        let name: String = q
            .name
            .as_deref()
            .unwrap_or("registry.csv")
            .chars()
            .filter(|c| c.is_alphanumeric() || "._-/".contains(*c))
            .take(200)
            .collect();
        // Parsed as it arrives: a body cut off (or past the limit) fails the read, and the import with it,
        // before anything is written.
        let stream = futures_util::TryStreamExt::map_err(body.into_data_stream(), std::io::Error::other);
        let csv = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
        // Run to its end even if the operator's client goes away (or the request times out) once the file
        // is read: an import dropped part-way through its writes would leave the registry half synced. Its
        // outcome is in the log either way.
        let admin = api.admin.clone();
        let dry_run = q.dry_run;
        tokio::spawn(async move { admin.import(csv, &name, &by, dry_run).await })
            .await
            .map_err(|e| AdminError::Store(crate::store::StoreError::Backend(format!("the import stopped: {e}"))))?
    };
    reply(run.await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditLog;
    use crate::clock::{Clock, ManualClock, Millis};
    use crate::crypto::{Crypto, HashCost};
    use crate::store::memory::MemoryStore;
    use crate::store::Store;
    use tower::ServiceExt;

    fn api(dir: &Path) -> (Arc<AdminApi>, Endpoint) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let crypto = Arc::new(Crypto::from_master(&[3; 32], HashCost::DANGER_TEST_ONLY).unwrap());
        let log = AuditLog::open(&dir.join("audit.jsonl"), 1 << 20, store.clone(), crypto).unwrap();
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(Millis(1_795_996_800_000)));
        let admin = Admin::new(store, Arc::new(crate::engine::Policy::default()), clock, Arc::new(log));
        let endpoint = Endpoint::new("127.0.0.1:8081".parse().unwrap());
        (Arc::new(AdminApi::new(Arc::new(admin), &endpoint)), endpoint)
    }

    #[tokio::test]
    async fn a_registry_larger_than_axums_default_body_limit_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let (api, endpoint) = api(dir.path());
        let mut csv = String::from("national_id,phone,full_name,status\n");
        for n in 0..60_000u32 {
            csv.push_str(&format!("001099{n:06},091{n:07},Nguyen Van {n},approved\n"));
        }
        assert!(csv.len() > 2 << 20);
        let req = axum::http::Request::post("/admin/registry/import?operator=test")
            .header("authorization", format!("Bearer {}", endpoint.token))
            .body(Body::from(csv))
            .unwrap();
        let resp = router(api.clone()).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let report: crate::registry::ImportReport = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(report.added, 60_000);
    }

    #[tokio::test]
    async fn an_upload_cut_off_part_way_imports_nothing_and_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (api, endpoint) = api(dir.path());
        let first = "national_id,phone,full_name,status\n001099000001,0910000001,An,approved\n";
        let parts: Vec<Result<axum::body::Bytes, std::io::Error>> =
            vec![Ok(first.into()), Err(std::io::Error::other("connection reset"))];
        let req = axum::http::Request::post("/admin/registry/import?operator=test")
            .header("authorization", format!("Bearer {}", endpoint.token))
            .body(Body::from_stream(futures_util::stream::iter(parts)))
            .unwrap();
        let resp = router(api.clone()).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains("reading stopped"), "{bytes:?}");
        let id = NationalId::parse_shape("001099000001").unwrap();
        assert_eq!(api.admin.store.citizen(&id).await.unwrap(), None, "nothing of the cut file was written");
    }

    #[test]
    fn the_endpoint_file_is_private_and_its_debug_hides_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let e = Endpoint::new("127.0.0.1:8081".parse().unwrap());
        let file = e.write(dir.path(), |_| true).unwrap();
        assert_eq!(file, Endpoint::path(dir.path()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(Endpoint::find(dir.path(), |_| true)[0].token, e.token);
        assert!(!format!("{e:?}").contains(&e.token));
        let newer = Endpoint::new("127.0.0.1:8082".parse().unwrap());
        assert_eq!(newer.write(dir.path(), |_| true).unwrap(), file, "a restarted server takes the file back");
        e.remove(&file);
        assert_eq!(Endpoint::find(dir.path(), |_| true).len(), 1, "an older server leaves a newer one's file alone");
        newer.remove(&file);
        assert!(Endpoint::find(dir.path(), |_| true).is_empty());
    }

    #[test]
    fn a_second_instance_on_one_data_dir_writes_a_file_of_its_own_and_the_cli_finds_whichever_runs() {
        let dir = tempfile::tempdir().unwrap();
        let first = Endpoint { pid: 1_000_001, ..Endpoint::new("127.0.0.1:8081".parse().unwrap()) };
        first.write(dir.path(), |_| true).unwrap();
        let second = Endpoint::new("127.0.0.1:8082".parse().unwrap());
        let own = second.write(dir.path(), |pid| pid == 1_000_001).unwrap();
        assert_eq!(own, dir.path().join(format!("admin-{}.json", std::process::id())));
        let urls = |alive: &dyn Fn(u32) -> bool| -> Vec<String> {
            Endpoint::find(dir.path(), alive).into_iter().map(|e| e.url).collect()
        };
        assert_eq!(urls(&|_| true), ["http://127.0.0.1:8081", "http://127.0.0.1:8082"]);
        // The first killed (its file stays): the CLI goes to the second.
        assert_eq!(urls(&|pid| pid != 1_000_001), ["http://127.0.0.1:8082"]);
        // A third starting after the first died takes admin.json over.
        let third = Endpoint::new("127.0.0.1:8083".parse().unwrap());
        assert_eq!(third.write(dir.path(), |pid| pid != 1_000_001).unwrap(), Endpoint::path(dir.path()));
        second.remove(&own);
        assert!(!own.exists());
        // A killed instance's file is cleared by the next server that starts.
        let dead = dir.path().join("admin-1000002.json");
        std::fs::copy(Endpoint::path(dir.path()), &dead).unwrap();
        third.write(dir.path(), |pid| pid != 1_000_002).unwrap();
        assert!(!dead.exists());
    }

    #[test]
    fn two_instances_starting_at_once_never_both_take_admin_json() {
        for round in 0..50 {
            let dir = tempfile::tempdir().unwrap();
            let barrier = std::sync::Barrier::new(2);
            let (a, b) = (
                Endpoint { pid: 2_000_001, ..Endpoint::new("127.0.0.1:8081".parse().unwrap()) },
                Endpoint { pid: 2_000_002, ..Endpoint::new("127.0.0.1:8082".parse().unwrap()) },
            );
            let go = |e: &Endpoint| {
                barrier.wait();
                e.write(dir.path(), |_| true).unwrap()
            };
            let paths: Vec<PathBuf> = std::thread::scope(|s| {
                let (ha, hb) = (s.spawn(|| go(&a)), s.spawn(|| go(&b)));
                vec![ha.join().unwrap(), hb.join().unwrap()]
            });
            assert!(paths.contains(&Endpoint::path(dir.path())), "round {round}: {paths:?}");
            let mut urls: Vec<String> = Endpoint::find(dir.path(), |_| true).into_iter().map(|e| e.url).collect();
            urls.sort();
            assert_eq!(urls, ["http://127.0.0.1:8081", "http://127.0.0.1:8082"], "round {round}: both are found");
        }
    }
}
