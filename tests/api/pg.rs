//! A throwaway PostgreSQL cluster for the tests: made once per test binary (initdb into a temp dir, the
//! server on a free loopback port with its socket in that dir), one fresh database per test, stopped and
//! removed by a watchdog once the test binary exits. No running server is needed.
//!
//! PostgreSQL refuses to run as root: when the tests run as root (CI), initdb and the server run as the
//! `postgres` user (`runuser -u postgres --`), the temp dir given to it. Without PostgreSQL the tests that
//! need it are skipped with a note, unless `KICHHOAT_REQUIRE_POSTGRES=1` (set by `.ci/run`): then they fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The running cluster.
pub struct Cluster {
    pub port: u16,
    bin: PathBuf,
    /// Set when the tools must run as the `postgres` user.
    as_postgres: bool,
}

/// The binaries of the newest PostgreSQL installed (`/usr/lib/postgresql/<major>/bin`), or `PG_BIN`.
fn bin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let major: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

impl Cluster {
    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn start() -> Result<Cluster, String> {
        let bin = bin_dir().ok_or("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin)")?;
        let as_postgres = is_root();
        let dir = tempfile::Builder::new().prefix("kichhoat-pg-").tempdir().map_err(|e| e.to_string())?.keep();
        if as_postgres {
            let out = Command::new("id").args(["-u", "postgres"]).output().map_err(|e| e.to_string())?;
            let uid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().map_err(|_| "no postgres user")?;
            let out = Command::new("id").args(["-g", "postgres"]).output().map_err(|e| e.to_string())?;
            let gid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().map_err(|_| "no postgres group")?;
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
        }
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let cluster = Cluster { port, bin, as_postgres };
        let data = dir.join("data");
        let status = cluster
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("initdb: {e}"))?;
        if !status.success() {
            return Err(format!("initdb failed: {status}"));
        }
        // fsync off: a test cluster's crash safety is not what is tested (the service's commits still wait
        // for synchronous_commit); many connections: each test's store has its own pool.
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=400",
            dir.display()
        );
        let status = cluster
            .command("pg_ctl")
            .args(["-w", "-t", "60", "-D"])
            .arg(&data)
            .args(["-o", &options, "-l"])
            .arg(dir.join("server.log"))
            .arg("start")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("pg_ctl: {e}"))?;
        if !status.success() {
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            return Err(format!("pg_ctl start failed: {status}\n{log}"));
        }
        cluster.watchdog(&dir, &data)?;
        Ok(cluster)
    }

    /// Stops the server and removes its dir once this test binary has exited (checked every second).
    fn watchdog(&self, dir: &Path, data: &Path) -> Result<(), String> {
        let stop = if self.as_postgres { "runuser -u postgres -- " } else { "" };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop}'{pg_ctl}' -D '{data}' -m immediate stop; rm -rf '{dir}'",
            pid = std::process::id(),
            pg_ctl = self.bin.join("pg_ctl").display(),
            data = data.display(),
            dir = dir.display(),
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("watchdog: {e}"))?;
        Ok(())
    }

    /// A URL of a new, empty database of this cluster.
    pub fn new_database(&self) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("t{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", "postgres", "-q", "-c"])
            .arg(format!("CREATE DATABASE {name}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "create database: {}", String::from_utf8_lossy(&out.stderr));
        self.url(&name)
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs `pg_dump` of database `db` (data and schema as SQL text).
    pub fn dump(&self, url: &str) -> String {
        let out = Command::new(self.bin.join("pg_dump")).arg(url).output().unwrap();
        assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// `psql -At -c sql` on the database at `url`: the rows, one a line.
    pub fn psql(&self, url: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql")).args([url, "-At", "-c", sql]).output().unwrap();
        assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }
}

/// The cluster of this test binary, started on first use; `None` (after a note) when PostgreSQL is not
/// installed and not required.
pub fn cluster() -> Option<&'static Cluster> {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    match CLUSTER.get_or_init(Cluster::start) {
        Ok(c) => Some(c),
        Err(why) => {
            if std::env::var("KICHHOAT_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
                panic!("PostgreSQL is required (KICHHOAT_REQUIRE_POSTGRES=1) but could not start: {why}");
            }
            eprintln!("skipped: PostgreSQL unavailable ({why}); install the postgresql package to run this test");
            None
        }
    }
}
