//! `kichhoat bench`: a load tool for a running `kichhoat serve`, over HTTP on loopback only.
//!
//! One run measures the server's own `GET /healthz` rate first (the ceiling: the same listener,
//! middleware and connections, no work), then drives one or more loads at once for a duration, and prints
//! per hop kind: hops/s, p50/p99/p999 and errors, with the ratio of durable hops to the ceiling. A
//! progress line on stderr says how far it is. Loads (`--load NAME:CONNECTIONS`, repeatable):
//!
//! - `first`: a first hop (a new carrier session) for a random one of `--phones` phones;
//! - `menu`: a first hop, then the menu choice `1` (two hops);
//! - `lookup`: dial, `1`, an ID nobody has, `1` (this phone): a lookup that ends (4 hops, no SMS);
//! - `login`: dial, `2`, a registered ID, a wrong password (one argon2id verification per run);
//! - `activate`: a whole activation of one citizen of `kichhoat bench registry` (13 hops in two dials,
//!   six argon2id hashes or verifications, two SMS), reading the OTP from the server's outbox file.
//!
//! `--prefill` first gives every phone a stored conversation (one first hop each), so hops run against
//! `--phones` stored conversations.
//!
//! Several instances (on one shared store): `--url` lists them separated by commas and each connection
//! sends its successive hops to the next one in turn, as a load balancer without session affinity would,
//! so one phone's hops alternate between the instances; `--outbox` lists their outbox files likewise (the
//! OTP may land in any of them). The /healthz ceiling and the RSS are the first instance's. The k-th load (from 0) dials from phones `k×N … (k+1)×N−1` (except
//! `activate`, which dials from each citizen's own phone), so loads never share a caller. Loops are bounded by `--duration` (and the prefill by its count);
//! targets other than loopback are refused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub action: BenchAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum BenchAction {
    /// Print a registry CSV of N citizens whose phones are the bench's phones 0..N (for `serve
    /// --registry`; `activate` and `login` use them).
    Registry { citizens: usize },
    /// Drive load against a running server and print what it sustained.
    Run(RunArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The server (loopback only); several instances of one store: URLs separated by commas, each
    /// connection's hops going to the next one in turn (the /healthz ceiling is the first one's).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:8080")]
    pub url: Vec<String>,
    /// Loads as NAME:CONNECTIONS (first, menu, lookup, login, activate); repeat to run several at once.
    #[arg(long = "load", default_value = "first:32")]
    pub loads: Vec<String>,
    /// Phones the loads pick from (first, menu, lookup); `activate` and `login` use citizens 0..N.
    #[arg(long, default_value_t = 100_000)]
    pub phones: usize,
    /// Seconds of load (after the /healthz ceiling).
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Seconds of /healthz measured first, at the connections of the first load (0: skip).
    #[arg(long, default_value_t = 10)]
    pub healthz: u64,
    /// First give every phone a stored conversation (one first hop each), with this many connections.
    #[arg(long)]
    pub prefill: Option<usize>,
    /// The server's SMS outbox file (`activate` reads OTPs from it); several instances: their files
    /// separated by commas.
    #[arg(long, value_delimiter = ',')]
    pub outbox: Vec<std::path::PathBuf>,
    /// The server's webhook token, if it has one.
    #[arg(long, env = "KICHHOAT_WEBHOOK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Citizens of `activate` start at this index (a second run activates others).
    #[arg(long, default_value_t = 0)]
    pub first_citizen: usize,
}

/// The bench's phone number `i` (10 digits, MobiFone's 093 prefix).
pub fn phone(i: usize) -> String {
    format!("093{:07}", i % 10_000_000)
}

/// The ID number of citizen `i`: province 001, a man born 2001–2010, a six-digit sequence.
pub fn citizen_id(i: usize) -> String {
    format!("0012{:02}{:06}", 1 + (i / 1_000_000) % 10, i % 1_000_000)
}

/// An ID number nobody in a bench registry has (born 1999).
fn unknown_id(i: usize) -> String {
    format!("001099{:06}", i % 1_000_000)
}

fn intl(phone: &str) -> String {
    format!("+84{}", &phone[1..])
}

pub async fn run(args: BenchArgs) -> Result<(), String> {
    match args.action {
        BenchAction::Registry { citizens } => {
            use std::io::Write;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let mut write = || -> std::io::Result<()> {
                writeln!(out, "national_id,phone,full_name,status")?;
                for i in 0..citizens {
                    writeln!(out, "{},{},Bench Citizen {i},approved", citizen_id(i), phone(i))?;
                }
                out.flush()
            };
            write().map_err(|e| e.to_string())
        }
        BenchAction::Run(args) => run_loads(args).await,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    First,
    Menu,
    Lookup,
    Login,
    Activate,
}

impl Load {
    fn parse(s: &str) -> Result<(Load, usize), String> {
        let (name, n) = s.split_once(':').unwrap_or((s, "32"));
        let n: usize = n.parse().map_err(|_| format!("--load {s}: connections must be a number"))?;
        let load = match name {
            "first" => Load::First,
            "menu" => Load::Menu,
            "lookup" => Load::Lookup,
            "login" => Load::Login,
            "activate" => Load::Activate,
            _ => return Err(format!("--load {s}: unknown load (first, menu, lookup, login, activate)")),
        };
        Ok((load, n.max(1)))
    }
}

/// Where one hop's latency is filed: a kind of hop, reported on its own line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Healthz,
    First,
    Menu,
    Id,
    End,
    Password,
    Otp,
    Credential,
    Other,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Healthz => "healthz",
            Kind::First => "first hop",
            Kind::Menu => "menu choice",
            Kind::Id => "ID entered",
            Kind::End => "lookup end",
            Kind::Password => "password (argon2id)",
            Kind::Otp => "OTP",
            Kind::Credential => "credential (argon2id)",
            Kind::Other => "other",
        }
    }
    /// Durable hops that hash nothing: what the ratio to /healthz is about.
    fn light(self) -> bool {
        matches!(self, Kind::First | Kind::Menu | Kind::Id | Kind::End | Kind::Otp | Kind::Other)
    }
}

/// Latencies (µs) and errors of one worker, merged at the end.
#[derive(Default)]
struct Record {
    hops: HashMap<Kind, Vec<u32>>,
    errors: HashMap<Kind, u64>,
    busy: u64,
}

struct Shared {
    hops: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
    next: AtomicUsize,
    otps: Mutex<HashMap<String, String>>,
}

/// A kept-alive HTTP/1.1 connection: the smallest client that keeps the tool's own cost per hop low.
struct Conn {
    addr: String,
    host: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
}

impl Conn {
    fn new(addr: &str) -> Conn {
        Conn { addr: addr.to_string(), host: addr.to_string(), stream: None, buf: Vec::with_capacity(4096) }
    }

    async fn request(&mut self, method: &str, path: &str, body: &str) -> Result<Answer, String> {
        for attempt in 0..2 {
            if self.stream.is_none() {
                let s = TcpStream::connect(&self.addr).await.map_err(|e| format!("connect: {e}"))?;
                let _ = s.set_nodelay(true);
                self.stream = Some(s);
            }
            match self.exchange(method, path, body).await {
                Ok(a) => return Ok(a),
                Err(e) => {
                    self.stream = None;
                    if attempt == 1 {
                        return Err(e);
                    }
                }
            }
        }
        Err("unreachable".into())
    }

    async fn exchange(&mut self, method: &str, path: &str, body: &str) -> Result<Answer, String> {
        let Some(stream) = self.stream.as_mut() else { return Err("no connection".into()) };
        let head = if method == "POST" {
            format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
                self.host,
                body.len()
            )
        } else {
            format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host)
        };
        let mut out = head.into_bytes();
        out.extend_from_slice(body.as_bytes());
        stream.write_all(&out).await.map_err(|e| format!("write: {e}"))?;
        self.buf.clear();
        let (end, status, length, close) = loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let status = head.get(9..12).and_then(|s| s.parse::<u16>().ok()).ok_or("bad status line")?;
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                let close = head.lines().any(|l| l.starts_with("connection:") && l.contains("close"));
                break (end + 4, status, length, close);
            }
            if self.buf.len() > 64 * 1024 {
                return Err("response head too long".into());
            }
        };
        while self.buf.len() < end + length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed mid-body".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&self.buf[end..end + length]).into_owned();
        if close {
            self.stream = None;
        }
        Ok(Answer { status, body })
    }
}

/// One kept-alive connection per instance; each request goes to the next instance in turn.
struct Conns {
    conns: Vec<Conn>,
    next: usize,
}

impl Conns {
    /// `start`: the instance the first request goes to (spread over a run's connections).
    fn new(addrs: &[String], start: usize) -> Conns {
        Conns { conns: addrs.iter().map(|a| Conn::new(a)).collect(), next: start }
    }

    /// The index of the instance the next request goes to, moving the turn on.
    fn turn(&mut self) -> usize {
        let i = self.next % self.conns.len().max(1);
        self.next = i + 1;
        i
    }

    async fn request(&mut self, method: &str, path: &str, body: &str) -> Result<Answer, String> {
        let i = self.turn();
        match self.conns.get_mut(i) {
            Some(c) => c.request(method, path, body).await,
            None => Err("no server".into()),
        }
    }
}

/// One virtual phone's USSD dialogue on a connection.
struct Dialer<'a> {
    conn: &'a mut Conns,
    path: &'a str,
    record: &'a mut Record,
    shared: &'a Shared,
    phone: String,
    session: String,
    typed: Vec<String>,
}

impl Dialer<'_> {
    /// Sends what was typed so far plus `input` (`None`: the first hop); `None` back on an error.
    async fn hop(&mut self, kind: Kind, input: Option<&str>) -> Option<String> {
        if let Some(i) = input {
            self.typed.push(i.to_string());
        }
        let text = self.typed.join("*");
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("sessionId", &self.session)
            .append_pair("serviceCode", "*384#")
            .append_pair("phoneNumber", &self.phone)
            .append_pair("networkCode", "45201")
            .append_pair("text", &text)
            .finish();
        let t = Instant::now();
        let answer = self.conn.request("POST", self.path, &body).await;
        let us = t.elapsed().as_micros().min(u32::MAX as u128) as u32;
        match answer {
            Ok(a) if a.status == 200 && (a.body.starts_with("CON ") || a.body.starts_with("END ")) => {
                self.record.hops.entry(kind).or_default().push(us);
                self.shared.hops.fetch_add(1, Ordering::Relaxed);
                if a.body.starts_with("END ") && is_busy(&a.body) {
                    self.record.busy += 1;
                }
                Some(a.body)
            }
            _ => {
                *self.record.errors.entry(kind).or_default() += 1;
                self.shared.errors.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

/// The server's "busy, try again" and "unavailable" replies (GSM-7: no diacritics).
fn is_busy(body: &str) -> bool {
    let b = body.to_lowercase();
    b.contains("dang ban") || b.contains("is busy")
}

async fn otp_for(shared: &Shared, to: &str, deadline: Instant) -> Option<String> {
    while Instant::now() < deadline && !shared.stop.load(Ordering::Relaxed) {
        if let Some(otp) = shared.otps.lock().ok().and_then(|mut m| m.remove(to)) {
            return Some(otp);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// Follows the outbox file and files each OTP by the phone it went to.
async fn tail_outbox(path: std::path::PathBuf, shared: Arc<Shared>) {
    let mut offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let mut partial = String::new();
    while !shared.stop.load(Ordering::Relaxed) {
        if let Ok(mut f) = std::fs::File::open(&path) {
            use std::io::{Read, Seek, SeekFrom};
            let mut text = String::new();
            if f.seek(SeekFrom::Start(offset)).is_ok() && f.read_to_string(&mut text).is_ok() {
                offset += text.len() as u64;
                partial.push_str(&text);
                while let Some(nl) = partial.find('\n') {
                    let line: String = partial.drain(..=nl).collect();
                    if let Ok(l) = serde_json::from_str::<crate::sms::file::OutboxLine>(&line) {
                        if let Some(code) = l.text.split("VNeID: ").nth(1) {
                            let code: String = code.chars().take(6).collect();
                            if let Ok(mut m) = shared.otps.lock() {
                                m.insert(l.to, code);
                            }
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn run_once(load: Load, d: &mut Dialer<'_>, i: usize, rng: &mut rand::rngs::StdRng) {
    match load {
        Load::First => {
            d.hop(Kind::First, None).await;
        }
        Load::Menu => {
            if d.hop(Kind::First, None).await.is_some() {
                d.hop(Kind::Menu, Some("1")).await;
            }
        }
        Load::Lookup => {
            let id = unknown_id(rng.gen_range(0..1_000_000));
            if d.hop(Kind::First, None).await.is_none() || d.hop(Kind::Menu, Some("1")).await.is_none() {
                return;
            }
            if d.hop(Kind::Id, Some(&id)).await.is_some() {
                d.hop(Kind::End, Some("1")).await;
            }
        }
        Load::Login => {
            if d.hop(Kind::First, None).await.is_none() || d.hop(Kind::Menu, Some("2")).await.is_none() {
                return;
            }
            if d.hop(Kind::Id, Some(&citizen_id(i))).await.is_some() {
                d.hop(Kind::Password, Some("Wrong*pw9x")).await;
            }
        }
        Load::Activate => {
            if d.hop(Kind::First, None).await.is_none() || d.hop(Kind::Menu, Some("1")).await.is_none() {
                return;
            }
            if d.hop(Kind::Id, Some(&citizen_id(i))).await.is_none() || d.hop(Kind::Other, Some("1")).await.is_none() {
                return;
            }
            let Some(otp) = otp_for(d.shared, &d.phone, Instant::now() + Duration::from_secs(10)).await else {
                // A wait cut by the end of the run is no error: its code may be on its way.
                if !d.shared.stop.load(Ordering::Relaxed) {
                    *d.record.errors.entry(Kind::Otp).or_default() += 1;
                    d.shared.errors.fetch_add(1, Ordering::Relaxed);
                }
                return;
            };
            d.session.push_str("-2");
            d.typed.clear();
            if d.hop(Kind::First, None).await.is_none() || d.hop(Kind::Otp, Some(&otp)).await.is_none() {
                return;
            }
            for input in ["Load*9xQ", "Load*9xQ", "258147", "258147"] {
                if d.hop(Kind::Credential, Some(input)).await.is_none() {
                    return;
                }
            }
            if d.hop(Kind::Other, Some("1")).await.is_none()
                || d.hop(Kind::Credential, Some("Kim Dong")).await.is_none()
            {
                return;
            }
            if d.hop(Kind::Other, Some("4")).await.is_some() {
                d.hop(Kind::Credential, Some("Pho")).await;
            }
        }
    }
}

/// The instances a run drives (one or more, all loopback) and the paths it requests.
struct Target {
    addrs: Vec<String>,
    ussd: String,
    healthz: String,
    metrics: String,
}

impl Target {
    /// The first instance: the /healthz ceiling's and the RSS's.
    fn first(&self) -> &str {
        self.addrs.first().map(String::as_str).unwrap_or("127.0.0.1:8080")
    }
}

/// One `http://HOST:PORT` URL as a socket address, refused unless it is a loopback address (a literal
/// address, or `localhost`: no name is resolved, so no name can lead off the machine).
fn loopback_addr(url: &str) -> Result<String, String> {
    let refused = || format!("--url {url}: only loopback targets (127.0.0.0/8, localhost, [::1]) as http://HOST:PORT");
    let rest = url.trim().trim_end_matches('/').strip_prefix("http://").ok_or_else(refused)?;
    let rest = match rest.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}"),
        None => rest.to_string(),
    };
    match rest.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_loopback() => Ok(a.to_string()),
        _ => Err(refused()),
    }
}

fn target(urls: &[String], token: Option<&str>) -> Result<Target, String> {
    let addrs =
        urls.iter().filter(|u| !u.trim().is_empty()).map(|u| loopback_addr(u)).collect::<Result<Vec<_>, _>>()?;
    if addrs.is_empty() {
        return Err("--url: no server given".into());
    }
    let ussd = match token {
        Some(t) => format!("/ussd/africastalking?token={t}"),
        None => "/ussd/africastalking".to_string(),
    };
    Ok(Target { addrs, ussd, healthz: "/healthz".into(), metrics: "/metrics".into() })
}

/// `offset`: where this load's callers start, so two loads never dial from one phone at once (a phone's
/// turns are serialized: a log-in waiting for its hash would hold up another load's hop on that phone).
async fn worker(
    load: Load,
    t: Arc<Target>,
    shared: Arc<Shared>,
    phones: usize,
    seed: u64,
    base: usize,
    offset: usize,
) -> Record {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut conn = Conns::new(&t.addrs, seed as usize);
    let mut record = Record::default();
    let mut seq = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let i = match load {
            Load::Activate => base + shared.next.fetch_add(1, Ordering::Relaxed),
            _ => rng.gen_range(0..phones.max(1)),
        };
        if load == Load::Activate && i >= base + phones {
            break;
        }
        seq += 1;
        let mut d = Dialer {
            conn: &mut conn,
            path: &t.ussd,
            record: &mut record,
            shared: &shared,
            phone: intl(&phone(if load == Load::Activate { i } else { i + offset })),
            session: format!("bench-{}-{seed}-{seq}", std::process::id()),
            typed: Vec::new(),
        };
        run_once(load, &mut d, i, &mut rng).await;
    }
    record
}

async fn healthz_worker(t: Arc<Target>, shared: Arc<Shared>) -> Record {
    let mut conn = Conn::new(t.first());
    let mut record = Record::default();
    while !shared.stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        match conn.request("GET", &t.healthz, "").await {
            Ok(a) if a.status == 200 => {
                record.hops.entry(Kind::Healthz).or_default().push(start.elapsed().as_micros() as u32);
                shared.hops.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                *record.errors.entry(Kind::Healthz).or_default() += 1;
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    record
}

fn shared() -> Arc<Shared> {
    Arc::new(Shared {
        hops: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        next: AtomicUsize::new(0),
        otps: Mutex::new(HashMap::new()),
    })
}

/// The server's resident memory from its /metrics, in MiB (when it serves them).
async fn server_rss(t: &Target) -> Option<f64> {
    let mut conn = Conn::new(t.first());
    let a = conn.request("GET", &t.metrics, "").await.ok()?;
    a.body
        .lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|b| b / (1024.0 * 1024.0))
}

/// Runs `spawn`ed workers for `secs`, printing a progress line each second; returns the merged records,
/// the seconds it ran and the peak server RSS seen.
async fn phase(
    label: &str,
    secs: u64,
    t: &Arc<Target>,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<Record>>,
) -> (Record, f64, Option<f64>) {
    let started = Instant::now();
    let mut last = 0u64;
    let mut peak: Option<f64> = None;
    let total = Duration::from_secs(secs);
    while started.elapsed() < total && !tasks.iter().all(|t| t.is_finished()) {
        tokio::time::sleep(Duration::from_secs(1).min(total.saturating_sub(started.elapsed()))).await;
        let hops = shared.hops.load(Ordering::Relaxed);
        if let Some(rss) = server_rss(t).await {
            peak = Some(peak.map_or(rss, |p: f64| p.max(rss)));
        }
        eprint!(
            "\r{label}: {:>4.0}s/{secs}s  {hops} hops  {}/s  errors {}  server RSS {}      ",
            started.elapsed().as_secs_f64(),
            hops - last,
            shared.errors.load(Ordering::Relaxed),
            peak.map(|p| format!("{p:.0} MiB")).unwrap_or_else(|| "?".into()),
        );
        last = hops;
    }
    shared.stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let mut merged = Record::default();
    for task in tasks {
        if let Ok(r) = task.await {
            for (k, v) in r.hops {
                merged.hops.entry(k).or_default().extend(v);
            }
            for (k, v) in r.errors {
                *merged.errors.entry(k).or_default() += v;
            }
            merged.busy += r.busy;
        }
    }
    eprintln!();
    (merged, elapsed, peak)
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

fn report(record: &mut Record, secs: f64) -> (f64, f64) {
    println!(
        "  {:<24} {:>9} {:>10} {:>9} {:>9} {:>9} {:>7}",
        "hop", "hops", "hops/s", "p50 ms", "p99 ms", "p999 ms", "errors"
    );
    let mut kinds: Vec<Kind> = record.hops.keys().chain(record.errors.keys()).copied().collect();
    kinds.sort();
    kinds.dedup();
    let mut light: Vec<u32> = Vec::new();
    for k in kinds {
        let v = record.hops.entry(k).or_default();
        v.sort_unstable();
        if k.light() {
            light.extend_from_slice(v);
        }
        println!(
            "  {:<24} {:>9} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>7}",
            k.name(),
            v.len(),
            v.len() as f64 / secs,
            pct(v, 0.5),
            pct(v, 0.99),
            pct(v, 0.999),
            record.errors.get(&k).copied().unwrap_or(0)
        );
    }
    light.sort_unstable();
    let rate = light.len() as f64 / secs;
    if !light.is_empty() {
        println!(
            "  {:<24} {:>9} {:>10.0} {:>9.2} {:>9.2} {:>9.2}",
            "all non-hashing hops",
            light.len(),
            rate,
            pct(&light, 0.5),
            pct(&light, 0.99),
            pct(&light, 0.999)
        );
    }
    (rate, pct(&light, 0.99))
}

async fn run_loads(args: RunArgs) -> Result<(), String> {
    let t = Arc::new(target(&args.url, args.token.as_deref())?);
    let loads: Vec<(Load, usize)> = args.loads.iter().map(|s| Load::parse(s)).collect::<Result<_, _>>()?;
    if loads.iter().any(|(l, _)| *l == Load::Activate) && args.outbox.is_empty() {
        return Err("--load activate needs --outbox (the servers' SMS outbox files)".into());
    }
    let first_conns = loads.first().map(|(_, n)| *n).unwrap_or(32);
    println!(
        "kichhoat bench: {} loads [{}], {} phones, {} s; {} {}",
        loads.len(),
        args.loads.join(" "),
        args.phones,
        args.duration,
        if t.addrs.len() > 1 { "servers (hops in turn)" } else { "server" },
        t.addrs.join(", ")
    );

    if let Some(conns) = args.prefill {
        let shared = shared();
        let started = Instant::now();
        let tasks: Vec<_> = (0..conns.max(1))
            .map(|w| {
                let (t, shared, phones) = (t.clone(), shared.clone(), args.phones);
                tokio::spawn(async move {
                    let mut conn = Conns::new(&t.addrs, w);
                    let mut record = Record::default();
                    loop {
                        let i = shared.next.fetch_add(1, Ordering::Relaxed);
                        if i >= phones || shared.stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let mut d = Dialer {
                            conn: &mut conn,
                            path: &t.ussd,
                            record: &mut record,
                            shared: &shared,
                            phone: intl(&phone(i)),
                            session: format!("prefill-{}-{w}-{i}", std::process::id()),
                            typed: Vec::new(),
                        };
                        d.hop(Kind::First, None).await;
                    }
                    record
                })
            })
            .collect();
        // Bounded: a prefill slower than 100 phones/s is given up.
        let secs = (args.phones as u64 / 100).max(60);
        let (mut r, s, _) = phase("prefill", secs, &t, shared, tasks).await;
        println!("prefill: {} phones in {:.1}s", r.hops.entry(Kind::First).or_default().len(), s);
        let _ = started;
    }

    let mut ceiling = None;
    if args.healthz > 0 {
        let shared = shared();
        let tasks = (0..first_conns).map(|_| tokio::spawn(healthz_worker(t.clone(), shared.clone()))).collect();
        let (mut r, secs, _) = phase("healthz", args.healthz, &t, shared, tasks).await;
        println!("ceiling: GET /healthz of {}, {first_conns} connections, {secs:.1} s", t.first());
        report(&mut r, secs);
        ceiling = Some(r.hops.get(&Kind::Healthz).map(|v| v.len()).unwrap_or(0) as f64 / secs);
    }

    let shared = shared();
    let tails: Vec<_> = args.outbox.iter().map(|p| tokio::spawn(tail_outbox(p.clone(), shared.clone()))).collect();
    let mut tasks = Vec::new();
    let mut seed = 1u64;
    for (k, (load, n)) in loads.iter().enumerate() {
        for _ in 0..*n {
            seed += 1;
            let offset = k * args.phones;
            let w = worker(*load, t.clone(), shared.clone(), args.phones, seed, args.first_citizen, offset);
            tasks.push(tokio::spawn(w));
        }
    }
    let (mut r, secs, peak) = phase("load", args.duration, &t, shared, tasks).await;
    for tail in tails {
        tail.abort();
    }
    println!("load: [{}], {secs:.1} s", args.loads.join(" "));
    let (rate, p99) = report(&mut r, secs);
    if r.busy > 0 {
        println!("  busy/unavailable replies: {}", r.busy);
    }
    if let Some(p) = peak {
        println!("  server peak RSS: {p:.0} MiB{}", if t.addrs.len() > 1 { " (the first instance)" } else { "" });
    }
    if let Some(c) = ceiling.filter(|c| *c > 0.0) {
        println!(
            "ratio: non-hashing durable hops {rate:.0}/s ÷ /healthz {c:.0}/s = {:.2}×  (p99 {p99:.2} ms)",
            rate / c
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_numbers_parse_as_the_service_parses_them() {
        for i in [0, 1, 999_999, 1_000_000, 9_999_999] {
            assert!(crate::domain::Msisdn::parse(&phone(i)).is_ok(), "{}", phone(i));
            assert!(crate::domain::NationalId::parse(&citizen_id(i), 2026).is_ok(), "{}", citizen_id(i));
        }
        assert_ne!(citizen_id(1), citizen_id(1_000_001));
        assert!(crate::domain::NationalId::parse(&unknown_id(5), 2026).is_ok());
    }

    fn urls(s: &[&str]) -> Vec<String> {
        s.iter().map(|u| u.to_string()).collect()
    }

    #[test]
    fn only_loopback_targets() {
        assert!(target(&urls(&["http://127.0.0.1:8080"]), None).is_ok());
        assert!(target(&urls(&["http://localhost:8080/"]), Some("t")).unwrap().ussd.ends_with("?token=t"));
        assert_eq!(target(&urls(&["http://[::1]:8080"]), None).unwrap().addrs, ["[::1]:8080"]);
        for bad in [
            "http://10.0.0.1:8080",
            "http://example.com",
            "http://127.evil.example:80",
            "http://localhost.evil.example:80",
            "http://127.0.0.1:8080/ussd",
            "https://127.0.0.1:8080",
            "http://127.0.0.1",
        ] {
            assert!(target(&urls(&[bad]), None).is_err(), "{bad}");
        }
        assert!(target(&urls(&[]), None).is_err());
        // One URL off the machine refuses the whole list.
        assert!(target(&urls(&["http://127.0.0.1:1", "http://10.0.0.1:2"]), None).is_err());
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn several_urls_and_outboxes_split_on_commas() {
        use clap::Parser;
        let cli = Cli::parse_from([
            "bench",
            "--url",
            "http://127.0.0.1:27183,http://localhost:27184/",
            "--outbox",
            "/tmp/b-a/outbox.jsonl,/tmp/b-b/outbox.jsonl",
        ]);
        let t = target(&cli.run.url, None).unwrap();
        assert_eq!(t.addrs, ["127.0.0.1:27183", "127.0.0.1:27184"]);
        assert_eq!(t.first(), "127.0.0.1:27183");
        assert_eq!(cli.run.outbox.len(), 2);
        let one = Cli::parse_from(["bench"]);
        assert_eq!(target(&one.run.url, None).unwrap().addrs, ["127.0.0.1:8080"]);
        assert!(one.run.outbox.is_empty());
    }

    #[test]
    fn successive_hops_go_to_the_next_instance_in_turn() {
        let addrs = urls(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        let mut c = Conns::new(&addrs, 4);
        let turns: Vec<usize> = (0..7).map(|_| c.turn()).collect();
        assert_eq!(turns, [1, 2, 0, 1, 2, 0, 1]);
        // One instance: every hop to it.
        let mut one = Conns::new(&addrs[..1], 9);
        assert!((0..5).all(|_| one.turn() == 0));
    }

    #[test]
    fn percentiles_take_the_upper_rank() {
        let v: Vec<u32> = (1..=1000).map(|i| i * 1000).collect();
        assert_eq!(pct(&v, 0.5), 500.0);
        assert_eq!(pct(&v, 0.99), 990.0);
        assert_eq!(pct(&v, 0.999), 999.0);
    }
}
