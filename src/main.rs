//! `kichhoat serve | check | simulate | audit`: parses the command line and hands over to the library.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tracing::{error, info, warn};

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

async fn serve(args: ServeArgs) -> Result<(), String> {
    args.check_exposure()?;
    let mut settings = Settings::new(args.data_dir.clone(), args.sms_outbox.clone(), args.store.clone(), &args.common);
    settings.sms_sender = args.sender()?;
    settings.webhook_token = args.webhook_token.clone();
    settings.webhook_allow = args.allow()?;
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
        audit_log = %settings.audit_log.display(),
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
    let served = kichhoat::server::serve(listener, router, limits, shutdown_signal()).await;
    info!("shutting down");
    app.shutdown().await;
    info!("stopped");
    served.map_err(|e| e.to_string())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
