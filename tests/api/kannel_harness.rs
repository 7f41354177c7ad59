//! A real Kannel 1.4.5 on loopback for end-to-end SMS tests: bearerbox (with a fake SMSC) and smsbox
//! started from a generated `kannel.conf` in a temp dir, kichhoat as an operator runs it
//! (`--sms-sender kannel`), and [`FakePhone`]s that talk to the fake SMSC through Kannel's own `fakesmsc`.
//!
//! - Every process is started by this module and stopped **by its PID** when its owner drops (also when
//!   the test fails: a panic unwinds through the drops). A failing test prints the tail of every log first.
//! - Every wait is a bounded poll.
//! - Debian's `fakesmsc` crashes in interactive mode when a message arrives, so a phone runs one
//!   `fakesmsc` per SMS it sends (`-m 1`), reads its output until the SMS it expects have arrived, then
//!   kills it. The fake SMSC serves one client at a time; what is sent while no phone is connected waits
//!   in bearerbox and reaches the next one (`sms-resend-freq = 1` so a message that failed on a
//!   disconnecting client is tried again within a second, not a minute).
//! - `fakesmsc` shows each SMS as `<from> <to> text <raw>` (a newline in the text starts a new output
//!   line), `ucs-2 <url-encoded UTF-16BE>`, `data <url-encoded>`, or, for each part of a concatenated SMS,
//!   `udh <url-encoded UDH> data <url-encoded part>`; [`FakePhone`] puts them back together.
//!
//! Without the Kannel binaries (a fresh CI machine before `.ci/run` installs them), [`kannel`] says so
//! loudly and the test returns; with `KICHHOAT_REQUIRE_KANNEL` set, it fails instead.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::helpers::repo;

/// The number citizens text (the `to` of every MO).
pub const SHORT_CODE: &str = "8188";
/// What kichhoat sends its own SMS (OTP, confirmation) from: `--sms-from`. Deliberately not the short
/// code, so a test can tell an SMS kichhoat sent through sendsms from a reply Kannel relayed.
pub const SMS_FROM: &str = "1789";
pub const SENDSMS_USER: &str = "kichhoat";
pub const SENDSMS_PASSWORD: &str = "s3ndsms-test";
const ADMIN_PASSWORD: &str = "admin-test";

/// How long a phone waits for the SMS it expects after sending one.
pub const MT_WAIT: Duration = Duration::from_secs(20);
/// How long a Kannel box or kichhoat may take to come up.
const START_WAIT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(25);
/// After the expected SMS have arrived, how long a phone stays connected before it hangs up: the rest
/// of an SMS already being written (the lines of a multi-line text) is not lost with the process.
const GRACE: Duration = Duration::from_millis(150);

/// The Kannel programs the tests run.
#[derive(Debug, Clone)]
pub struct Kannel {
    pub bearerbox: PathBuf,
    pub smsbox: PathBuf,
    pub fakesmsc: PathBuf,
}

fn find(name: &str, dirs: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain(dirs.iter().map(PathBuf::from)).map(|d| d.join(name)).find(|p| p.is_file())
}

/// The installed Kannel, or `None` after a loud notice that `test` was skipped. With
/// `KICHHOAT_REQUIRE_KANNEL` set (CI), a missing Kannel fails the test instead.
pub fn kannel(test: &str) -> Option<Kannel> {
    let sbin = ["/usr/sbin", "/usr/local/sbin", "/sbin"];
    let found = (
        find("bearerbox", &sbin),
        find("smsbox", &sbin),
        find("fakesmsc", &["/usr/lib/kannel/test", "/usr/local/lib/kannel/test", "/usr/lib/kannel"]),
    );
    if let (Some(bearerbox), Some(smsbox), Some(fakesmsc)) = found.clone() {
        return Some(Kannel { bearerbox, smsbox, fakesmsc });
    }
    let missing: Vec<&str> = [("bearerbox", &found.0), ("smsbox", &found.1), ("fakesmsc", &found.2)]
        .iter()
        .filter(|(_, p)| p.is_none())
        .map(|(n, _)| *n)
        .collect();
    let required = std::env::var("KICHHOAT_REQUIRE_KANNEL").is_ok_and(|v| !v.is_empty() && v != "0");
    assert!(
        !required,
        "KICHHOAT_REQUIRE_KANNEL is set but Kannel is not installed (missing: {}); \
         apt-get install kannel kannel-extras",
        missing.join(", ")
    );
    eprintln!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !!! SKIPPED {test}: Kannel is not installed (missing: {}).\n\
         !!! Install kannel and kannel-extras, or set KICHHOAT_REQUIRE_KANNEL=1 to make this a failure.\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n",
        missing.join(", ")
    );
    None
}

/// A loopback port nothing listens on now, never handed out twice by this process (another process
/// may still take it before its user binds it: [`Gateway::start`] retries with fresh ports).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The last `n` lines of a file, for failure reports.
pub fn tail(path: &Path, n: usize) -> String {
    let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A child process killed by its PID (SIGKILL) and reaped when dropped.
pub struct Daemon {
    pub name: String,
    pub child: Child,
}

impl Daemon {
    /// Starts `cmd` with its stdout and stderr in `output`.
    pub fn spawn(name: &str, mut cmd: Command, output: &Path) -> Daemon {
        let out = File::create(output).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Daemon { name: name.to_string(), child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a process with this PID still exists (reaped children do not).
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Ports of one gateway.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub admin: u16,
    pub smsbox: u16,
    pub smsc: u16,
    pub sendsms: u16,
}

/// bearerbox (core and fake SMSC) and smsbox, configured for kichhoat.
pub struct Gateway {
    pub kannel: Kannel,
    pub ports: Ports,
    pub conf: PathBuf,
    bearerbox: Option<Daemon>,
    smsbox: Option<Daemon>,
    /// Declared last: removed after the processes are gone.
    pub dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts bearerbox, then smsbox, whose `sms-service` calls kichhoat as `service` says (its
    /// `get-url`/`post-url` lines, see [`Service`]). Ports are fresh; a start that fails on a port someone
    /// took meanwhile is tried again with others.
    pub async fn start(kannel: &Kannel, service: &str) -> Gateway {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Gateway::try_start(kannel, service).await {
                Ok(g) => return g,
                Err(e) => failures.push(e),
            }
        }
        panic!("Kannel did not start:\n{}", failures.join("\n----\n"));
    }

    async fn try_start(kannel: &Kannel, service: &str) -> Result<Gateway, String> {
        let dir = tempfile::tempdir().unwrap();
        let ports = Ports { admin: free_port(), smsbox: free_port(), smsc: free_port(), sendsms: free_port() };
        let conf = dir.path().join("kannel.conf");
        std::fs::write(&conf, kannel_conf(dir.path(), ports, service)).unwrap();
        let mut g = Gateway { kannel: kannel.clone(), ports, conf, bearerbox: None, smsbox: None, dir };
        let mut cmd = Command::new(&kannel.bearerbox);
        cmd.arg(&g.conf);
        g.bearerbox = Some(Daemon::spawn("bearerbox", cmd, &g.path("bearerbox.out")));
        g.wait_until("bearerbox running", |status| status.contains("Status: running")).await?;
        g.start_smsbox_inner().await?;
        Ok(g)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn sendsms_url(&self) -> String {
        format!("http://127.0.0.1:{}/cgi-bin/sendsms", self.ports.sendsms)
    }

    /// bearerbox's `status.txt` (empty when it does not answer).
    pub async fn status(&self) -> String {
        let url = format!("http://127.0.0.1:{}/status.txt?password={ADMIN_PASSWORD}", self.ports.admin);
        match reqwest::get(url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Whether bearerbox lists a connected smsbox.
    fn smsbox_connected(status: &str) -> bool {
        status.split("Box connections:").nth(1).is_some_and(|s| s.contains("smsbox:"))
    }

    /// Polls `status.txt` until `ready` holds; fails early when a box has exited.
    async fn wait_until(&mut self, what: &str, ready: impl Fn(&str) -> bool) -> Result<(), String> {
        let start = Instant::now();
        while start.elapsed() < START_WAIT {
            if ready(&self.status().await) {
                return Ok(());
            }
            let exited = [&mut self.bearerbox, &mut self.smsbox]
                .into_iter()
                .flatten()
                .find_map(|d| d.exited().map(|status| format!("{} exited ({status})", d.name)));
            if let Some(exited) = exited {
                return Err(format!("{exited} waiting for {what}:\n{}", self.logs()));
            }
            tokio::time::sleep(POLL).await;
        }
        Err(format!("no {what} within {START_WAIT:?}:\n{}", self.logs()))
    }

    async fn start_smsbox_inner(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(&self.kannel.smsbox);
        cmd.arg(&self.conf);
        self.smsbox = Some(Daemon::spawn("smsbox", cmd, &self.path("smsbox.out")));
        self.wait_until("smsbox connected to bearerbox", Gateway::smsbox_connected).await?;
        // sendsms answers (403 without credentials) once smsbox listens.
        let start = Instant::now();
        while start.elapsed() < START_WAIT {
            if reqwest::get(self.sendsms_url()).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
        Err(format!("sendsms did not answer within {START_WAIT:?}:\n{}", self.logs()))
    }

    /// Starts smsbox again after [`Gateway::stop_smsbox`].
    pub async fn start_smsbox(&mut self) {
        assert!(self.smsbox.is_none(), "smsbox is running");
        if let Err(e) = self.start_smsbox_inner().await {
            panic!("{e}");
        }
    }

    /// Kills smsbox (sendsms and the get-url calls stop; bearerbox and the fake SMSC stay) and waits
    /// until its port is closed.
    pub async fn stop_smsbox(&mut self) {
        drop(self.smsbox.take());
        let start = Instant::now();
        while reqwest::get(self.sendsms_url()).await.is_ok() {
            assert!(start.elapsed() < START_WAIT, "sendsms still answers after smsbox was killed");
            tokio::time::sleep(POLL).await;
        }
    }

    /// PIDs of the running boxes.
    pub fn pids(&self) -> Vec<u32> {
        [&self.bearerbox, &self.smsbox].into_iter().flatten().map(Daemon::pid).collect()
    }

    pub fn phone(&self, number: &str) -> FakePhone {
        FakePhone::new(&self.kannel.fakesmsc, self.ports.smsc, number, self.dir.path())
    }

    pub fn smsbox_log(&self) -> String {
        read_lossy(&self.path("smsbox.log"))
    }

    /// What smsbox fetched for each SMS a phone sent: `(HTTP status, url)` from its access log, status
    /// -1 or 0 when the request itself failed. (Delivery-report calls are not in the access log; a failed
    /// one shows as an ERROR line in [`Gateway::smsbox_log`].)
    pub fn fetches(&self) -> Vec<(i32, String)> {
        let log = read_lossy(&self.path("smsbox-access.log"));
        let re = regex::Regex::new(r"(?s)SMS HTTP-request sender:.*? url: '([^']*)' reply: (-?\d+) ").unwrap();
        re.captures_iter(&log).map(|c| (c[2].parse().unwrap(), c[1].to_string())).collect()
    }

    /// Every log of the gateway, tails only.
    pub fn logs(&self) -> String {
        ["bearerbox.out", "bearerbox.log", "smsbox.out", "smsbox.log", "smsbox-access.log"]
            .iter()
            .map(|n| format!("== {n}\n{}", tail(&self.path(n), 40)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- Kannel logs ({})\n{}", self.dir.path().display(), self.logs());
        }
        drop(self.smsbox.take());
        drop(self.bearerbox.take());
    }
}

pub fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// The configuration kichhoat's tests run Kannel with; `docs/carriers.md` explains each setting.
fn kannel_conf(dir: &Path, p: Ports, service: &str) -> String {
    let d = dir.display();
    format!(
        r#"group = core
admin-port = {admin}
admin-password = {ADMIN_PASSWORD}
admin-interface = 127.0.0.1
smsbox-port = {smsbox}
box-allow-ip = 127.0.0.1
log-file = "{d}/bearerbox.log"
log-level = 1
access-log = "{d}/bearerbox-access.log"
dlr-storage = internal
sms-resend-freq = 1
sms-resend-retry = -1

group = smsc
smsc = fake
smsc-id = fake
port = {smsc}
connect-allow-ip = 127.0.0.1

group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {smsbox}
sendsms-port = {sendsms}
sendsms-interface = 127.0.0.1
mo-recode = true
log-file = "{d}/smsbox.log"
log-level = 1
access-log = "{d}/smsbox-access.log"

group = sendsms-user
username = {SENDSMS_USER}
password = {SENDSMS_PASSWORD}
max-messages = 3
concatenation = true

group = sms-service
keyword = default
{service}
accept-x-kannel-headers = true
omit-empty = true
max-messages = 3
concatenation = true
"#,
        admin = p.admin,
        smsbox = p.smsbox,
        smsc = p.smsc,
        sendsms = p.sendsms,
    )
}

/// An SMS as the phone shows it (concatenated parts joined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sms {
    pub from: String,
    pub to: String,
    pub text: String,
    /// Sent in UCS-2 (diacritics kept).
    pub ucs2: bool,
    pub parts: usize,
}

/// One line of `fakesmsc` output as Kannel sent it, before concatenated parts are joined.
#[derive(Debug, Clone)]
enum Part {
    Text { from: String, to: String, text: String },
    Bytes { from: String, to: String, bytes: Vec<u8>, ucs2: bool },
    Udh { from: String, to: String, udh: Vec<u8>, bytes: Vec<u8> },
}

/// `+` is a space, `%XX` a byte.
pub fn url_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// Every byte but unreserved ASCII as `%XX`.
pub fn url_encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn utf16be(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])).collect();
    String::from_utf16_lossy(&units)
}

/// 8-bit text as Kannel holds it: UTF-8 when it is, else Latin-1.
fn eight_bit(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => bytes.iter().map(|&b| b as char).collect(),
    }
}

/// The same subscriber, whatever the form (`0912…`, `84912…`, `+84912…`).
pub fn same_number(a: &str, b: &str) -> bool {
    let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
    let (a, b) = (digits(a), digits(b));
    a.len() >= 9 && b.len() >= 9 && a[a.len() - 9..] == b[b.len() - 9..]
}

/// Concatenation reference, total and sequence number in a UDH (8- or 16-bit reference).
fn concat_of(udh: &[u8]) -> Option<(u16, u8, u8)> {
    let mut i = 1;
    while i + 1 < udh.len() {
        let (iei, len) = (udh[i], udh[i + 1] as usize);
        let ie = udh.get(i + 2..i + 2 + len)?;
        match (iei, len) {
            (0x00, 3) => return Some((ie[0] as u16, ie[1], ie[2])),
            (0x08, 4) => return Some((u16::from_be_bytes([ie[0], ie[1]]), ie[2], ie[3])),
            _ => i += 2 + len,
        }
    }
    None
}

/// Parses the MT lines of `fakesmsc` output (the contents of `Got message N: <…>`). The fake SMSC hands
/// every SMS to whichever phone is connected, whatever its number: each keeps the `to` it was sent to.
fn parse_parts(lines: &[String]) -> Vec<Part> {
    let number = |s: &str| s.strip_prefix('+').unwrap_or(s).bytes().all(|b| b.is_ascii_digit()) && s.len() > 2;
    let mut parts: Vec<Part> = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.splitn(4, ' ').collect();
        let header =
            f.len() >= 3 && !f[0].is_empty() && number(f[1]) && matches!(f[2], "text" | "data" | "ucs-2" | "udh");
        if !header {
            // A text SMS containing a newline: the fake SMSC writes it raw, so its next line arrives as
            // another "message".
            match parts.last_mut() {
                Some(Part::Text { text, .. }) => {
                    text.push('\n');
                    text.push_str(line);
                }
                _ => panic!("unexpected fakesmsc line {line:?} in {lines:#?}"),
            }
            continue;
        }
        let (from, to, rest) = (f[0].to_string(), f[1].to_string(), f.get(3).copied().unwrap_or(""));
        parts.push(match f[2] {
            "text" => Part::Text { from, to, text: rest.to_string() },
            "data" => Part::Bytes { from, to, bytes: url_decode(rest), ucs2: false },
            "ucs-2" => Part::Bytes { from, to, bytes: url_decode(rest), ucs2: true },
            _ => {
                // `udh <udh> data <part>` (1.4.5), or `udh <udh> <part>` (older fake SMSCs).
                let mut w = rest.split(' ');
                let udh = url_decode(w.next().unwrap_or(""));
                let mut data = w.next().unwrap_or("");
                if data == "data" {
                    data = w.next().unwrap_or("");
                }
                Part::Udh { from, to, udh, bytes: url_decode(data) }
            }
        });
    }
    parts
}

/// Joins concatenated parts: complete SMS in order of their last part, and the parts still waiting for
/// the rest of their SMS.
fn assemble(parts: Vec<Part>) -> (Vec<Sms>, Vec<Part>) {
    let mut done = Vec::new();
    let mut waiting: Vec<Part> = Vec::new();
    for part in parts {
        match part {
            Part::Text { from, to, text } => done.push(Sms { from, to, text, ucs2: false, parts: 1 }),
            Part::Bytes { from, to, bytes, ucs2 } => {
                let text = if ucs2 { utf16be(&bytes) } else { eight_bit(&bytes) };
                done.push(Sms { from, to, text, ucs2, parts: 1 })
            }
            Part::Udh { ref from, ref udh, .. } => {
                let Some((reference, total, _)) = concat_of(udh) else {
                    panic!("a UDH without concatenation: {udh:02x?}");
                };
                let from = from.clone();
                waiting.push(part);
                let same = |p: &Part| match p {
                    Part::Udh { from: f, udh, .. } => {
                        *f == from && concat_of(udh).is_some_and(|(r, t, _)| r == reference && t == total)
                    }
                    _ => false,
                };
                let mut mine: Vec<(u8, Vec<u8>, String)> = waiting
                    .iter()
                    .filter(|p| same(p))
                    .map(|p| match p {
                        Part::Udh { udh, bytes, to, .. } => {
                            (concat_of(udh).map(|c| c.2).unwrap_or(0), bytes.clone(), to.clone())
                        }
                        _ => unreachable!(),
                    })
                    .collect();
                mine.sort_by_key(|m| m.0);
                mine.dedup_by_key(|m| m.0);
                if mine.len() == total as usize {
                    waiting.retain(|p| !same(p));
                    let bytes: Vec<u8> = mine.iter().flat_map(|m| m.1.clone()).collect();
                    // The line does not say the coding: GSM-7 text as Kannel holds it has no NUL byte,
                    // UTF-16 of Vietnamese always has (ASCII letters, spaces).
                    let ucs2 = bytes.contains(&0);
                    let text = if ucs2 { utf16be(&bytes) } else { eight_bit(&bytes) };
                    done.push(Sms { from, to: mine[0].2.clone(), text, ucs2, parts: total as usize });
                }
            }
        }
    }
    (done, waiting)
}

/// A keypad phone on the fake SMSC: sends one SMS per `fakesmsc` run and collects what arrives.
pub struct FakePhone {
    pub number: String,
    /// Every SMS received so far, in order.
    pub inbox: Vec<Sms>,
    fakesmsc: PathBuf,
    port: u16,
    dir: PathBuf,
    runs: u32,
    /// Parts of a concatenated SMS whose other parts have not arrived yet.
    waiting: Vec<Part>,
}

impl FakePhone {
    pub fn new(fakesmsc: &Path, port: u16, number: &str, dir: &Path) -> FakePhone {
        FakePhone {
            number: number.to_string(),
            inbox: Vec::new(),
            fakesmsc: fakesmsc.to_path_buf(),
            port,
            dir: dir.to_path_buf(),
            runs: 0,
            waiting: Vec::new(),
        }
    }

    /// Texts `text` (plain, GSM-7) to the short code and returns the SMS received until `expect` have
    /// arrived; fails after [`MT_WAIT`] with fewer.
    pub async fn send(&mut self, text: &str, expect: usize) -> Vec<Sms> {
        assert!(!text.contains('\n'), "one line per SMS");
        let mo = format!("{} {SHORT_CODE} text {text}", self.number);
        self.run(Some(mo), expect, MT_WAIT, true).await
    }

    /// Texts `text` in UCS-2 (diacritics kept), as a phone does when the text has them.
    pub async fn send_ucs2(&mut self, text: &str, expect: usize) -> Vec<Sms> {
        let bytes: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
        let mo = format!("{} {SHORT_CODE} ucs2 {}", self.number, url_encode(&bytes));
        self.run(Some(mo), expect, MT_WAIT, true).await
    }

    /// Stays connected without sending until `expect` SMS have arrived or `within` has passed, and
    /// returns what arrived (possibly fewer).
    pub async fn listen(&mut self, expect: usize, within: Duration) -> Vec<Sms> {
        self.run(None, expect, within, false).await
    }

    /// Stays connected for `d` and returns everything that arrived.
    pub async fn listen_for(&mut self, d: Duration) -> Vec<Sms> {
        self.listen(usize::MAX, d).await
    }

    fn received(&self, output: &Path) -> (Vec<Sms>, Vec<Part>) {
        let text = read_lossy(output);
        let re = regex::Regex::new(r"(?:INFO|DEBUG): Got message \d+: <(.*)>$").unwrap();
        let lines: Vec<String> = text.lines().filter_map(|l| re.captures(l).map(|c| c[1].to_string())).collect();
        let mut parts = self.waiting.clone();
        parts.extend(parse_parts(&lines));
        assemble(parts)
    }

    async fn run(&mut self, mo: Option<String>, expect: usize, within: Duration, must: bool) -> Vec<Sms> {
        self.runs += 1;
        let digits: String = self.number.chars().filter(char::is_ascii_digit).collect();
        let output = self.dir.join(format!("phone-{digits}-{:03}.out", self.runs));
        let mut cmd = Command::new(&self.fakesmsc);
        let port = self.port.to_string();
        cmd.args(["-H", "127.0.0.1", "-r", &port, "-i", "0.01", "-m", if mo.is_some() { "1" } else { "0" }]);
        cmd.arg(mo.as_deref().unwrap_or("0 0 text not sent"));
        let mut proc = Daemon::spawn("fakesmsc", cmd, &output);
        let start = Instant::now();
        loop {
            if self.received(&output).0.len() >= expect {
                tokio::time::sleep(GRACE).await;
                break;
            }
            if let Some(status) = proc.exited() {
                panic!("fakesmsc exited ({status}):\n{}", tail(&output, 30));
            }
            if start.elapsed() >= within {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        drop(proc);
        let (done, waiting) = self.received(&output);
        if must && done.len() < expect {
            panic!(
                "{} received {} SMS of the {expect} expected within {within:?} after {mo:?}: {done:#?}\n\
                 fakesmsc output:\n{}",
                self.number,
                done.len(),
                tail(&output, 30)
            );
        }
        self.waiting = waiting;
        self.inbox.extend(done.iter().cloned());
        done
    }
}

/// kichhoat's `serve` with `--sms-sender kannel`, wired to a [`Gateway`].
pub struct Rig {
    pub gateway: Gateway,
    pub server: Option<crate::helpers::Proc>,
    pub port: u16,
    pub url: String,
    pub data: PathBuf,
    pub log: PathBuf,
    pub outbox: PathBuf,
    extra: Vec<String>,
    log_level: String,
    /// Declared last: removed after the server is gone.
    _scratch: tempfile::TempDir,
}

/// How Kannel's `sms-service` calls kichhoat for each SMS (both as `docs/carriers.md` configures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// `get-url`, everything in the query.
    Get,
    /// `get-url` with kichhoat's webhook token in the query (kichhoat started with `--webhook-token`).
    GetWithToken(&'static str),
    /// `post-url`: the text as the body, the sender in `X-Kannel-From` (`send-sender`).
    Post,
}

impl Service {
    /// The `sms-service` lines calling `http://127.0.0.1:{port}/sms/kannel`.
    pub fn conf(self, port: u16) -> String {
        match self {
            Service::Get => format!("get-url = \"http://127.0.0.1:{port}/sms/kannel?from=%p&to=%P&text=%a&id=%I\""),
            Service::GetWithToken(token) => {
                format!("get-url = \"http://127.0.0.1:{port}/sms/kannel?token={token}&from=%p&to=%P&text=%a&id=%I\"")
            }
            Service::Post => {
                format!("post-url = \"http://127.0.0.1:{port}/sms/kannel?id=%I\"\nsend-sender = true")
            }
        }
    }
}

impl Rig {
    /// A fresh gateway and a fresh kichhoat (sled in a temp dir, the demo registry, the repo's flows),
    /// `extra` flags appended (e.g. `--sms-charset ucs2`), logging at `log_level`.
    pub async fn start(kannel: &Kannel, extra: &[&str], log_level: &str) -> Rig {
        Rig::start_with(kannel, Service::Get, extra, log_level).await
    }

    /// As [`Rig::start`], Kannel calling kichhoat as `service` says.
    pub async fn start_with(kannel: &Kannel, service: Service, extra: &[&str], log_level: &str) -> Rig {
        let port = free_port();
        let gateway = Gateway::start(kannel, &service.conf(port)).await;
        let scratch = tempfile::tempdir().unwrap();
        let mut rig = Rig {
            gateway,
            server: None,
            port,
            url: format!("http://127.0.0.1:{port}"),
            data: scratch.path().join("data"),
            log: scratch.path().join("kichhoat.log"),
            outbox: scratch.path().join("outbox.jsonl"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            log_level: log_level.to_string(),
            _scratch: scratch,
        };
        rig.start_server().await;
        rig
    }

    async fn start_server(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kichhoat"))
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--sms-outbox")
            .arg(&self.outbox)
            .arg("--registry")
            .arg(repo().join("fixtures/registry.csv"))
            .arg("--flows")
            .arg(repo().join("flows"))
            .args(["--sms-sender", "kannel"])
            .args(["--kannel-url", &self.gateway.sendsms_url()])
            .args(["--kannel-user", SENDSMS_USER, "--kannel-password", SENDSMS_PASSWORD])
            .args(["--sms-from", SMS_FROM])
            .args(&self.extra)
            .env("KICHHOAT_LOG", &self.log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut proc = crate::helpers::Proc { child, url: self.url.clone(), log: None };
        let start = Instant::now();
        loop {
            if let Ok(r) = reqwest::get(format!("{}/healthz", self.url)).await {
                if r.status() == 200 {
                    break;
                }
            }
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!("kichhoat exited ({status}):\n{}", tail(&self.log, 40));
            }
            assert!(start.elapsed() < START_WAIT, "kichhoat did not start:\n{}", tail(&self.log, 40));
            tokio::time::sleep(POLL).await;
        }
        self.server = Some(proc);
    }

    pub fn phone(&self, number: &str) -> FakePhone {
        self.gateway.phone(number)
    }

    /// kichhoat's log so far.
    pub fn server_log(&self) -> String {
        read_lossy(&self.log)
    }

    /// Stops kichhoat with SIGTERM and waits for its clean shutdown (flushes its log and data).
    pub fn terminate(&mut self) {
        if let Some(p) = self.server.take() {
            p.terminate();
        }
    }

    /// One SMS straight to kichhoat's `/sms/kannel`, shaped as smsbox sends it (its user agent, the
    /// query of [`Service::Get`]): `(status, X-Kannel-Coding, body)`.
    pub async fn mo(&self, from: &str, text: &str, id: &str) -> (u16, Option<String>, String) {
        let url = format!(
            "{}/sms/kannel?from={}&to={SHORT_CODE}&text={}&id={}",
            self.url,
            url_encode(from.as_bytes()),
            url_encode(text.as_bytes()),
            url_encode(id.as_bytes())
        );
        let r = reqwest::Client::new().get(url).header("user-agent", "Kannel/1.4.5").send().await.unwrap();
        let status = r.status().as_u16();
        let coding = r.headers().get("x-kannel-coding").map(|v| v.to_str().unwrap_or("?").to_string());
        (status, coding, r.text().await.unwrap())
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- kichhoat log ({})\n{}", self.log.display(), tail(&self.log, 60));
        }
        drop(self.server.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(ls: &[&str]) -> Vec<String> {
        ls.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_text_sms_with_newlines_is_put_back_together() {
        let parts = parse_parts(&lines(&["8188 84912345678 text VNeID", "1. Kich hoat", "", "next"]));
        let (done, waiting) = assemble(parts);
        assert!(waiting.is_empty());
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].text, "VNeID\n1. Kich hoat\n\nnext");
    }

    #[test]
    fn concatenated_parts_are_joined_in_order_and_ucs2_is_recognised() {
        let hi: Vec<u8> = "Chào bạn".encode_utf16().flat_map(u16::to_be_bytes).collect();
        let (a, b) = hi.split_at(6);
        let l = lines(&[
            &format!("8188 +84912345678 udh %05%00%03%07%02%02 data {}", url_encode(b)),
            "8188 +84912345678 udh %05%00%03%09%02%01 data a+b",
            &format!("8188 +84912345678 udh %05%00%03%07%02%01 data {}", url_encode(a)),
        ]);
        let (done, waiting) = assemble(parse_parts(&l));
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].text.as_str(), done[0].ucs2, done[0].parts), ("Chào bạn", true, 2));
        assert_eq!(waiting.len(), 1, "the other SMS waits for its second part");
        let (done, _) =
            assemble([waiting, parse_parts(&lines(&["8188 84912345678 udh %05%00%03%09%02%02 data +c"]))].concat());
        assert_eq!(done[0].text, "a b c");
    }

    #[test]
    fn ucs2_and_data_forms_decode() {
        let (done, _) = assemble(parse_parts(&lines(&[
            "1789 84912345678 ucs-2 %00K%00%ED%00c%00h",
            "1789 84912345678 data OTP+%3A+1",
        ])));
        assert_eq!(done[0].text, "Kích");
        assert!(done[0].ucs2);
        assert_eq!(done[1].text, "OTP : 1");
    }
}
