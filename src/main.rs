//! `kichhoat serve | check | simulate | audit | admin | registry`: parses the command line and hands over to the library.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tracing::{error, info, warn};

use kichhoat::admin::api::Endpoint;
use kichhoat::app::App;
use kichhoat::audit::Verdict;
use kichhoat::clock::SystemClock;
use kichhoat::config::{
    resolve, AuditAction, AuditArgs, Cli, Command, LogFormat, SenderSettings, ServeArgs, Settings, DEFAULT_FLOWS,
};
use kichhoat::crypto::HashCost;
use kichhoat::flow::Flow;
use kichhoat::sms::kannel::display_url;

fn main() -> ExitCode {
    private_files();
    tune_allocator();
    let cli = Cli::parse();
    match cli.command {
        Command::Check(args) => match Flow::load_from(resolve(&args.flows, DEFAULT_FLOWS).as_deref()) {
            Ok(flow) => {
                println!("{}: {} states, {} languages: ok", flow.source, flow.states.len(), flow.catalogs.len());
                ExitCode::SUCCESS
            }
            Err(problems) => {
                for p in &problems {
                    println!("{p}");
                }
                eprintln!("{} problem(s)", problems.len());
                ExitCode::FAILURE
            }
        },
        Command::Serve(args) => {
            init_logs(args.log_format, "info");
            run(serve(*args))
        }
        Command::Simulate(args) => {
            init_logs(LogFormat::Text, "warn");
            run(kichhoat::simulate::run(args))
        }
        Command::Audit(args) => audit(&args),
        Command::Bench(args) => run(kichhoat::bench::run(args)),
        Command::Admin(args) => operator(kichhoat::admin::client::run_admin(&args)),
        Command::Registry(args) => operator(kichhoat::admin::client::run_registry(&args)),
    }
}

/// Runs an operator command and prints its answer (exit 1 with the reason when it failed).
fn operator(fut: impl std::future::Future<Output = Result<String, kichhoat::admin::client::ClientError>>) -> ExitCode {
    init_logs(LogFormat::Text, "warn");
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kichhoat: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `kichhoat audit`: prints the trail; `kichhoat audit verify`: checks its chain (exit 1 when broken).
fn audit(args: &AuditArgs) -> ExitCode {
    let file = args.file();
    match &args.action {
        None => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let printed = kichhoat::audit::print(&file, &mut out).map_err(|e| e.to_string());
            match printed.and_then(|_| std::io::Write::flush(&mut out).map_err(|e| e.to_string())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("kichhoat audit: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(AuditAction::Verify { .. }) => match kichhoat::audit::verify(&file) {
            Ok(Verdict::Ok(v)) => {
                for note in &v.notes {
                    println!("note: {note}");
                }
                match v.last_seq {
                    Some(seq) => println!("ok: {} lines, last seq {seq}", v.lines),
                    None => println!("ok: 0 lines"),
                }
                ExitCode::SUCCESS
            }
            Ok(Verdict::Broken(b)) => {
                for note in &b.notes {
                    println!("note: {note}");
                }
                println!("{b}");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("kichhoat audit verify: {e}");
                ExitCode::from(2)
            }
        },
    }
}

/// Every file and directory the service creates (sled's, the outbox, the key, the audit log) is readable
/// by its own user only: they hold names, ID numbers, phones and hashes (Decree 13/2023/NĐ-CP).
fn private_files() {
    #[cfg(unix)]
    // SAFETY: umask only changes this process's file-creation mask; it cannot fail and touches no memory.
    unsafe {
        libc::umask(0o077);
    }
}

/// The process's allocator: mimalloc, not glibc's. A durable first hop spent a quarter of its CPU in glibc's
/// `malloc`/`free` and their arena locks (futex waits between the runtime's workers); with mimalloc the same
/// run answers 63-70% more hops (measured in BENCHMARKS.md, "allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option: its index in `mi_option_t` in mimalloc 3.x (`include/mimalloc.h`; the
/// `libmimalloc-sys` bindings have no constant for it). The same as setting `MIMALLOC_PURGE_DELAY`.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Memory freed goes back to the system at once instead of after mimalloc's delay: argon2id's 19 MiB blocks
/// are freed after every hash, and a burst of log-ins otherwise leaves them resident (peak RSS 257 → 221 MiB
/// during 200 log-ins beside first hops, 186 → 133 MiB after, no hashing rate lost: BENCHMARKS.md). The
/// option is set only on mimalloc 3.x, whose options are numbered as above (another is left as it is), and
/// not when the operator set `MIMALLOC_PURGE_DELAY` themselves.
fn tune_allocator() {
    // SAFETY: plain reads and writes of mimalloc's option table; no memory is handed over.
    unsafe {
        if libmimalloc_sys::mi_version() / 10_000 == 3 && std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        }
    }
}

fn run(fut: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("kichhoat: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(format: LogFormat, default: &str) {
    // KICHHOAT_LOG first, the conventional RUST_LOG second.
    let filter = tracing_subscriber::EnvFilter::try_from_env("KICHHOAT_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Binds the admin listener: the address given, or the default and, when that is taken, a free loopback
/// port (the CLI reads the address from `<data-dir>/admin.json`).
async fn admin_listener(args: &ServeArgs) -> Result<Option<tokio::net::TcpListener>, String> {
    let Some((addr, given)) = args.admin_addr()? else { return Ok(None) };
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Ok(Some(l)),
        Err(e) if !given => {
            warn!(%addr, error = %e, "the admin API's default address is taken; using a free loopback port");
            let any = std::net::SocketAddr::new(addr.ip(), 0);
            tokio::net::TcpListener::bind(any).await.map(Some).map_err(|e| format!("admin listen on {any}: {e}"))
        }
        Err(e) => Err(format!("admin listen on {addr}: {e} (choose another with --admin-listen, or --no-admin)")),
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    args.check_exposure()?;
    args.check_registry()?;
    let admin_listener = admin_listener(&args).await?;
    let mut settings = Settings::new(args.data_dir.clone(), args.sms_outbox.clone(), args.store.clone(), &args.common);
    settings.sms_sender = args.sender()?;
    settings.webhook_token = args.webhook_token.clone();
    settings.webhook_allow = args.allow()?;
    settings.bounds = args.bounds();
    settings.sled_cache_bytes = args.sled_cache_mb << 20;
    // Instances on one shared database may be started on one data dir: the second writes its own trail.
    if args.common.audit_log.is_none() && !matches!(settings.store, kichhoat::config::StoreKind::Sled) {
        settings.audit_log_fallback =
            Some(kichhoat::config::instance_audit_log(&settings.data_dir, args.listen.port()));
    }
    let app = App::open(&settings, Arc::new(SystemClock), HashCost::OWASP).await.map_err(|e| e.to_string())?;
    match &settings.sms_sender {
        SenderSettings::File => info!(
            sms_sender = "file",
            sms_outbox = %settings.sms_outbox.display(),
            "outgoing SMS are written to the outbox file"
        ),
        // Never the password; the URL without anything that could carry a credential.
        SenderSettings::Kannel(k) => info!(
            sms_sender = "kannel",
            kannel_url = %display_url(&k.url),
            kannel_user = %k.user,
            sms_from = k.from.as_deref().unwrap_or("(kannel's default)"),
            dlr_url = %display_url(&k.dlr_url),
            sms_charset = ?settings.sms_charset,
            "outgoing SMS go through Kannel (--sms-outbox unused)"
        ),
    }
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.map_err(|e| format!("listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    info!(
        %addr,
        data_dir = %settings.data_dir.display(),
        store = %settings.store,
        audit_log = %app.audit_log.path().display(),
        flows = %app.service.flow.source,
        "kichhoat listening on http://{addr} (POST /ussd/africastalking, GET|POST /sms/kannel)"
    );
    if app.web.gate.is_open() {
        warn!(%addr, "carrier endpoints answer any caller that can reach this address (no --webhook-token)");
    }
    let router = kichhoat::http::router(app.web.clone());
    let limits = kichhoat::server::Limits {
        max_connections: args.max_connections.max(1),
        header_read_timeout: std::time::Duration::from_secs(args.header_timeout_secs.max(1)),
        ..Default::default()
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stop = Arc::new(stop);
    // A store write fault ends the process non-zero once the hops in flight are answered: sled refuses
    // every write after an I/O error until reopened, and the supervisor (systemd's Restart=, Docker's
    // restart policy) starts it again, and again until the fault (a full disk) is gone.
    let stopped_by_fault = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (health, flag, stop) = (app.service.health.clone(), stopped_by_fault.clone(), stop.clone());
        tokio::spawn(async move {
            health.fault.notified().await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = stop.send(true);
        });
    }
    let signalled = stop.clone();
    // Registered here, before anything is served: registered inside the task, a SIGTERM that came before
    // the task first ran met no handler and killed the process outright (seen once in CI).
    let signals = ShutdownSignals::register();
    tokio::spawn(async move {
        signals.recv().await;
        let _ = signalled.send(true);
    });
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut endpoint = None;
    let mut admin_server = None;
    if let Some(listener) = admin_listener {
        let admin_addr = listener.local_addr().map_err(|e| e.to_string())?;
        let e = Endpoint::new(admin_addr);
        let endpoint_file = e
            .write(&settings.data_dir, kichhoat::admin::client::process_alive)
            .map_err(|err| format!("{}: {err}", Endpoint::path(&settings.data_dir).display()))?;
        let api = Arc::new(kichhoat::admin::api::AdminApi::new(Arc::new(app.admin()), &e));
        let admin_limits = kichhoat::server::Limits { max_connections: 64, ..Default::default() };
        let router = kichhoat::admin::api::router(api);
        admin_server =
            Some(tokio::spawn(kichhoat::server::serve(listener, router, admin_limits, until_stopped(stopped.clone()))));
        info!(
            addr = %admin_addr,
            endpoint_file = %endpoint_file.display(),
            "admin API on http://{admin_addr} (kichhoat admin, kichhoat registry import)"
        );
        endpoint = Some((e, endpoint_file));
    }
    let served = kichhoat::server::serve(listener, router, limits, until_stopped(stopped)).await;
    info!("shutting down");
    // Whatever ended the carrier server ends the admin API too.
    let _ = stop.send(true);
    if let Some(task) = admin_server {
        let _ = task.await;
    }
    if let Some((e, file)) = &endpoint {
        e.remove(file);
    }
    app.shutdown().await;
    info!("stopped");
    if stopped_by_fault.load(std::sync::atomic::Ordering::SeqCst) {
        return Err("the store could not write; exiting for the supervisor to restart the service".into());
    }
    served.map_err(|e| e.to_string())
}

/// SIGINT and SIGTERM, their handlers installed when this is built.
struct ShutdownSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    fn register() -> ShutdownSignals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            ShutdownSignals { term: signal(SignalKind::terminate()).ok(), int: signal(SignalKind::interrupt()).ok() }
        }
        #[cfg(not(unix))]
        ShutdownSignals {}
    }

    /// Waits for the first of them.
    async fn recv(self) {
        #[cfg(unix)]
        {
            async fn one(s: Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = one(self.term) => {}
                _ = one(self.int) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
