//! The HTTP surface: carrier webhooks, Kannel's delivery reports and health. Handlers only translate; the
//! [`Service`](crate::service::Service) does the work.
//!
//! - `POST /ussd/africastalking`: Africa's Talking USSD callback; `text/plain` `CON …` / `END …`.
//! - `POST /ussd/africastalking/events`: AT's end-of-session notification; `sessionId` and `status`
//!   required (else 400); status, hops and duration logged with the session's pseudonym, never `input`.
//! - `GET /sms/kannel` (`get-url`, fields in the query) and `POST /sms/kannel` (`post-url`, the text as the
//!   body, `from`/`to` in `X-Kannel-From`/`X-Kannel-To` or the query): one SMS from a citizen; the
//!   response body is the reply SMS, always `200 text/plain; charset=UTF-8` and never empty, with
//!   `X-Kannel-Coding: 2` when it needs UCS-2.
//! - `GET /sms/kannel/dlr?id=&to=&status=&sig=`: Kannel's delivery report for an SMS we sent; 403 when
//!   the signature is missing or wrong (nothing recorded), 400 for an unknown report type, else 200 (see
//!   [`crate::sms::dlr`]).
//! - `GET /healthz`: readiness: `200 ok` while the process serves and its store takes writes, `503
//!   store not writable` after a write fault (the process then exits non-zero for its supervisor to
//!   restart it; see the README's "Operations").
//! - `GET /metrics`: Prometheus text exposition ([`crate::metrics`]); no personal data. Like `/healthz`
//!   it is outside the webhook gate: scrapers do not hold the carriers' token.
//!
//! Request spans name the method and the path only, never the query: a delivery report's query holds
//! the full phone number.
//!
//! A request the server cannot understand (wrong content type, missing field, a phone that is not a
//! Vietnamese mobile) gets a 4xx and changes nothing. An operational fault, or a turn not answered within
//! 7 s, is logged once and the citizen gets a polite "try again later" (an END over USSD, a reply SMS
//! over Kannel: Kannel would otherwise send the citizen its own "could not fetch content"); details never
//! reach the caller. Request logs name the path only: a Kannel query holds the typed text.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Query, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tracing::{error, info, warn};

use crate::app::Web;
use crate::channel::africastalking::{self as at, AfricasTalking, AtForm, SessionEnd};
use crate::channel::kannel::{self, BadSms, Kannel, Mo, Sms};
use crate::channel::Channel;
use crate::engine::{keys, Reply};
use crate::flow::{Charset, Lang};
use crate::metrics::METRICS;
use crate::service::{Service, ServiceError};
use crate::sms::dlr::DlrError;

/// A hop is answered by then, busy or not (Africa's Talking gives up after ~10 s).
const HOP_DEADLINE: Duration = Duration::from_secs(7);
/// The outer safety net for any route.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(9);
/// A USSD callback is a few hundred bytes.
const BODY_LIMIT: usize = 16 * 1024;

pub fn router(web: Arc<Web>) -> Router {
    // Every carrier endpoint is behind the gate (token, address allowlist); health is not.
    let carriers = Router::new()
        .route("/ussd/africastalking", post(africastalking))
        .route("/ussd/africastalking/events", post(africastalking_event))
        .route("/sms/kannel", get(kannel_get).post(kannel_post))
        .route("/sms/kannel/dlr", get(kannel_dlr))
        .route_layer(axum::middleware::from_fn_with_state(web.gate.clone(), crate::gate::guard));
    Router::new()
        .merge(carriers)
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, REQUEST_TIMEOUT))
        // The path only: a Kannel query carries what the citizen typed, a password included.
        .layer(TraceLayer::new_for_http().make_span_with(
            |req: &Request<Body>| tracing::debug_span!("request", method = %req.method(), path = %req.uri().path()),
        ))
        .with_state(web)
}

async fn healthz(State(web): State<Arc<Web>>) -> Response {
    if web.service.health.writable() {
        plain(StatusCode::OK, "ok\n".to_string())
    } else {
        plain(StatusCode::SERVICE_UNAVAILABLE, "store not writable\n".to_string())
    }
}

async fn metrics(State(web): State<Arc<Web>>) -> Response {
    if let Ok(n) = web.service.store.outbox_len().await {
        METRICS.outbox_backlog.set(n as i64);
    }
    let body = METRICS.render();
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// The reply of `turn`, or the polite fallback when it faults or is not done by `deadline` (logged once
/// by [`Service::fault_reply`]): the carrier always gets an answer in time.
async fn within(
    service: &Service,
    channel: &'static str,
    deadline: Duration,
    turn: impl std::future::Future<Output = Result<Reply, ServiceError>>,
) -> Reply {
    let started = std::time::Instant::now();
    let reply = match tokio::time::timeout(deadline, turn).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            if let ServiceError::Busy(_) = e {
                METRICS.overloaded.with_label_values(&[channel]).inc();
            }
            METRICS.hop(channel, "", if matches!(e, ServiceError::Busy(_)) { "busy" } else { "fault" });
            service.fault_reply(&e)
        }
        Err(_) => {
            METRICS.hop(channel, "", "timeout");
            service.fault_reply(&ServiceError::Timeout)
        }
    };
    METRICS.hop_took(channel, started.elapsed());
    reply
}

async fn kannel_dlr(
    State(web): State<Arc<Web>>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let Ok(Query(fields)) = query else {
        warn!("kannel dlr: unreadable query; refused");
        return plain(StatusCode::FORBIDDEN, "forbidden\n".to_string());
    };
    match web.delivery_reports.report(&fields).await {
        Ok(_) => plain(StatusCode::OK, "ok\n".to_string()),
        Err(DlrError::Forbidden) => plain(StatusCode::FORBIDDEN, "forbidden\n".to_string()),
        Err(DlrError::Malformed(why)) => plain(StatusCode::BAD_REQUEST, format!("{why}\n")),
        Err(DlrError::Store(e)) => {
            error!(error = %e, "kannel dlr: could not be recorded");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "not recorded\n".to_string())
        }
    }
}

fn plain(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn africastalking(State(web): State<Arc<Web>>, form: Result<Form<AtForm>, FormRejection>) -> Response {
    let form = match form {
        Ok(Form(f)) => f,
        Err(rejection) => {
            // The rejection text names fields, never values.
            warn!(status = %rejection.status(), "africastalking: unreadable request");
            return plain(rejection.status(), format!("{}\n", rejection.body_text()));
        }
    };
    let hop = match form.parse() {
        Ok(h) => h,
        Err(bad) => {
            warn!(reason = %bad, "africastalking: request refused");
            return plain(StatusCode::BAD_REQUEST, format!("{bad}\n"));
        }
    };
    // Answer in time with a polite END rather than let the carrier time out on us; the citizen's next
    // dial resumes wherever the conversation durably stands.
    let service = &web.service;
    let reply = within(service, AfricasTalking::KIND, HOP_DEADLINE, service.turn(&web.africastalking, hop)).await;
    plain(StatusCode::OK, at::response(&reply, web.ussd_charset))
}

async fn africastalking_event(
    State(web): State<Arc<Web>>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let fields = match form {
        Ok(Form(f)) => f,
        Err(rejection) => {
            warn!(status = %rejection.status(), "africastalking: unreadable session end");
            return plain(rejection.status(), format!("{}\n", rejection.body_text()));
        }
    };
    // Only the fields named are read: `input` may hold the last thing typed (a password).
    let end = match SessionEnd::parse(&fields) {
        Ok(e) => e,
        Err(bad) => {
            warn!(reason = %bad, "africastalking: session end refused");
            return plain(StatusCode::BAD_REQUEST, format!("{bad}\n"));
        }
    };
    let phone = end.phone.as_ref().map(|p| p.masked()).unwrap_or_default();
    let session = web.africastalking.session_pseudonym(end.phone.as_ref(), &end.session_id);
    info!(
        channel = AfricasTalking::KIND,
        phone = %phone,
        session = %session,
        status = %end.status,
        hops = end.hops,
        duration_ms = end.duration_ms,
        "africastalking: session ended"
    );
    plain(StatusCode::OK, "ok\n".to_string())
}

/// `get-url`: every field in the query.
async fn kannel_get(State(web): State<Arc<Web>>, RawQuery(query): RawQuery) -> Response {
    let sms = Mo::from_query(query.as_deref().unwrap_or_default()).and_then(Mo::parse);
    kannel_answer(&web, sms).await
}

/// `post-url`: the text is the body; `from`, `to` and `id` from the query or, for the first two, from
/// the `X-Kannel-From`/`X-Kannel-To` headers (Kannel sends `X-Kannel-From` only with `send-sender`).
async fn kannel_post(
    State(web): State<Arc<Web>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let sms = post_mo(query.as_deref().unwrap_or_default(), &headers, &body).and_then(Mo::parse);
    kannel_answer(&web, sms).await
}

fn post_mo(query: &str, headers: &HeaderMap, body: &[u8]) -> Result<Mo, BadSms> {
    let header = |name: &str| -> Result<Option<String>, BadSms> {
        headers.get(name).map(|v| v.to_str().map(|s| s.trim().to_string()).map_err(|_| BadSms::Encoding)).transpose()
    };
    let mut mo = Mo::from_query(query)?;
    if mo.from.is_none() {
        mo.from = header("x-kannel-from")?;
    }
    if mo.to.is_none() {
        mo.to = header("x-kannel-to")?;
    }
    let content_type = header(header::CONTENT_TYPE.as_str())?;
    mo.text = Some(crate::domain::Secret::new(kannel::decode_body(content_type.as_deref(), body)?));
    Ok(mo)
}

async fn kannel_answer(web: &Web, sms: Result<Sms, BadSms>) -> Response {
    let sms = match sms {
        Ok(s) => s,
        Err(bad) => {
            // The reason names a field, never its value.
            warn!(reason = %bad, "kannel: request refused");
            let status = StatusCode::from_u16(bad.status()).unwrap_or(StatusCode::BAD_REQUEST);
            return plain(status, format!("{bad}\n"));
        }
    };
    let service = &web.service;
    let reply = within(service, Kannel::KIND, HOP_DEADLINE, service.turn(&web.kannel, sms)).await;
    sms_reply(service, &reply, web.sms_charset)
}

/// What Kannel texts back when even the polite fallback's text is missing from the catalogue.
const LAST_RESORT: &str = "He thong dang ban. Vui long thu lai sau.";

/// The reply SMS: always 200 with a body, since Kannel sends nothing for an empty body (`omit-empty`) and
/// its own "could not fetch content" for anything but a 2xx.
fn sms_reply(service: &Service, reply: &Reply, charset: Charset) -> Response {
    let (mut body, mut ucs2) = kannel::response(reply, charset);
    if body.trim().is_empty() {
        error!("kannel: the reply rendered empty; sent the polite fallback");
        let fallback = Reply { text: service.flow.catalog(Lang::Vi).get(keys::END_UNAVAILABLE).to_string(), end: true };
        (body, ucs2) = kannel::response(&fallback, charset);
        if body.trim().is_empty() {
            (body, ucs2) = (LAST_RESORT.to_string(), false);
        }
    }
    let mut response = (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; charset=UTF-8")], body).into_response();
    if ucs2 {
        response.headers_mut().insert(HeaderName::from_static("x-kannel-coding"), HeaderValue::from_static("2"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditLog;
    use crate::clock::{Clock, ManualClock, Millis};
    use crate::crypto::{Crypto, HashCost};
    use crate::flow::Flow;
    use crate::registry::ImportedRegistry;
    use crate::store::memory::MemoryStore;
    use crate::store::Store;

    /// A service, and the folder of its audit trail.
    fn service() -> (Service, tempfile::TempDir) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let crypto = Arc::new(Crypto::from_master(&[2; 32], HashCost::DANGER_TEST_ONLY).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&dir.path().join("audit.jsonl"), 1 << 20, store.clone(), crypto.clone()).unwrap();
        let service = Service::new(
            store.clone(),
            Arc::new(ImportedRegistry(store)),
            Arc::new(Flow::load_from(None).unwrap()),
            crypto,
            Arc::new(ManualClock::new(Millis(1_795_996_800_000))) as Arc<dyn Clock>,
            crate::engine::Policy::default(),
            Arc::new(log),
        );
        (service, dir)
    }

    async fn body_of(r: Response) -> (StatusCode, HeaderMap, String) {
        let (parts, body) = r.into_parts();
        let bytes = axum::body::to_bytes(body, 64 * 1024).await.unwrap();
        (parts.status, parts.headers, String::from_utf8(bytes.to_vec()).unwrap())
    }

    fn unavailable(s: &Service) -> String {
        crate::flow::catalog::to_gsm7(s.flow.catalog(Lang::Vi).get(keys::END_UNAVAILABLE))
    }

    #[tokio::test]
    async fn a_turn_past_its_deadline_is_answered_with_the_polite_sms_not_an_error() {
        let (s, _dir) = service();
        let reply = within(&s, "test", Duration::from_millis(20), std::future::pending()).await;
        assert!(reply.end);
        let (status, headers, body) = body_of(sms_reply(&s, &reply, Charset::Gsm7)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=UTF-8");
        assert_eq!(body, unavailable(&s));
        assert!(!body.is_empty());
    }

    #[tokio::test]
    async fn a_turn_that_faults_is_answered_with_the_polite_sms_not_an_error() {
        let (s, _dir) = service();
        let reply = within(&s, "test", HOP_DEADLINE, async { Err(ServiceError::Contention) }).await;
        let (status, _, body) = body_of(sms_reply(&s, &reply, Charset::Ucs2)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(crate::domain::text::fold_diacritics(&body), unavailable(&s));
    }

    #[tokio::test]
    async fn a_reply_that_renders_empty_still_sends_a_body() {
        let (s, _dir) = service();
        let (status, _, body) = body_of(sms_reply(&s, &Reply { text: " ".into(), end: false }, Charset::Gsm7)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, unavailable(&s));
    }

    #[tokio::test]
    async fn only_a_reply_that_needs_ucs2_says_x_kannel_coding_2() {
        let (s, _dir) = service();
        let r = Reply { text: "Chào bạn".into(), end: false };
        let (_, headers, body) = body_of(sms_reply(&s, &r, Charset::Ucs2)).await;
        assert_eq!(
            (headers.get("x-kannel-coding").map(|v| v.to_str().unwrap()), body.as_str()),
            (Some("2"), "Chào bạn")
        );
        let (_, headers, body) = body_of(sms_reply(&s, &r, Charset::Gsm7)).await;
        assert_eq!((headers.get("x-kannel-coding"), body.as_str()), (None, "Chao ban"));
    }

    #[test]
    fn a_post_takes_from_and_to_from_the_headers_and_the_text_from_the_body() {
        let mut h = HeaderMap::new();
        h.insert("x-kannel-from", HeaderValue::from_static("+84912345678"));
        h.insert("x-kannel-to", HeaderValue::from_static("8088"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=\"UTF-8\""));
        let mo = post_mo("id=m-1", &h, "Phở bò".as_bytes()).unwrap();
        assert_eq!(
            (mo.from.as_deref(), mo.to.as_deref(), mo.id.as_deref()),
            (Some("+84912345678"), Some("8088"), Some("m-1"))
        );
        assert_eq!(mo.text.unwrap().expose(), "Phở bò");
        let mo = post_mo("from=0987654321", &h, b"1").unwrap();
        assert_eq!(mo.from.as_deref(), Some("0987654321"), "the query's from wins");
        assert!(matches!(post_mo("", &h, b"\xff"), Err(BadSms::Encoding)));
    }
}
