//! `kichhoat simulate --phone 0912345678`: a keypad phone in the terminal, for people trying the product.
//!
//! It runs the same [`Service`](crate::service::Service) in-process on the in-memory store (a fresh start
//! every run; `--store sled` keeps it in its own data directory), builds each hop exactly as Africa's Talking would (a fresh `sessionId` per dial, the
//! cumulative `*`-joined `text`), shows each screen, and prints the SMS that arrive for the phone. When a
//! screen ends the USSD session, the next line "dials again".

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::app::App;
use crate::channel::africastalking::{self as at, Hop};
use crate::clock::SystemClock;
use crate::config::{Settings, SimulateArgs};
use crate::crypto::HashCost;
use crate::domain::{Msisdn, Secret};
use crate::flow::catalog::to_gsm7;
use crate::sms::{Delivery, OutgoingSms, SendFuture, SmsSender};

/// Shows the SMS on the terminal instead of sending them.
struct ShowingSender {
    phone: Msisdn,
    shown: Mutex<Vec<String>>,
}

impl SmsSender for ShowingSender {
    fn send<'a>(&'a self, sms: &'a OutgoingSms) -> SendFuture<'a> {
        Box::pin(async move {
            let line = if sms.to == self.phone {
                format!("  [SMS to {}] {}", sms.to.e164(), to_gsm7(sms.text.expose()))
            } else {
                format!("  [an SMS went to another phone, {}]", sms.to.masked())
            };
            if let Ok(mut shown) = self.shown.lock() {
                shown.push(line);
            }
            Ok(Delivery::Sent)
        })
    }

    /// Shows what it is handed; a message shown twice harms no one.
    fn idempotent(&self) -> bool {
        true
    }
}

pub async fn run(args: SimulateArgs) -> Result<(), String> {
    let phone = Msisdn::parse(&args.phone).map_err(|e| format!("--phone: {e}"))?;
    let settings = Settings::new(args.data_dir.clone(), None, args.store.clone(), &args.common);
    let sender = Arc::new(ShowingSender { phone: phone.clone(), shown: Mutex::new(Vec::new()) });
    let app = App::open_with_sender(&settings, Arc::new(SystemClock), HashCost::OWASP, Some(sender.clone()))
        .await
        .map_err(|e| e.to_string())?;
    println!("kichhoat simulator: phone {} ({} store)", phone.e164(), settings.store);
    println!("Type your keypad input and press Enter. Ctrl-D hangs up.\n");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut dial = 0u32;
    'dial: loop {
        dial += 1;
        let session_id = format!("sim-{}-{dial}", std::process::id());
        let mut text = String::new();
        let mut first = true;
        loop {
            let hop = Hop { phone: phone.clone(), session_id: session_id.clone(), text: Secret::new(text.clone()) };
            let reply = match app.service.turn(&app.web.africastalking, hop).await {
                Ok(r) => r,
                Err(e) => app.service.fault_reply(&e),
            };
            app.worker.deliver_due().await.map_err(|e| e.to_string())?;
            let body = at::response(&reply, app.web.ussd_charset);
            println!("{}", screen(body.get(4..).unwrap_or_default()));
            if let Ok(mut shown) = sender.shown.lock() {
                for s in shown.drain(..) {
                    println!("{s}\n");
                }
            }
            if reply.end {
                println!("(session ended; press Enter to dial again)");
            }
            let Ok(Some(line)) = lines.next_line().await else {
                break 'dial;
            };
            if reply.end {
                continue 'dial;
            }
            let input = line.trim_end_matches(['\r', '\n']);
            text = if first { input.to_string() } else { format!("{text}*{input}") };
            first = false;
        }
    }
    println!("\n(hung up)");
    app.shutdown().await;
    Ok(())
}

/// Frames a USSD screen like a phone would.
fn screen(body: &str) -> String {
    let line = "-".repeat(32);
    format!("{line}\n{body}\n{line}")
}
