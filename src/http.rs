//! The HTTP surface: carrier webhooks, Kannel's delivery reports and health. Handlers only translate; the
//! [`Service`](crate::service::Service) does the work.
//!
//! - `POST /ussd/africastalking`: Africa's Talking USSD callback; `text/plain` `CON …` / `END …`.
//! - `POST /ussd/africastalking/events`: AT's end-of-session notification; `sessionId` and `status`
//!   required (else 400); status, hops and duration logged with the session's pseudonym, never `input`.
//! - `GET /sms/kannel/dlr?id=&to=&status=&sig=`: Kannel's delivery report for an SMS we sent; 403 when
//!   the signature is missing or wrong (nothing recorded), 400 for an unknown report type, else 200 (see
//!   [`crate::sms::dlr`]).
//! - `GET /healthz`: 200 when the process serves.
//!
//! Request spans name the method and the path only, never the query: a delivery report's query holds
//! the full phone number.
//!
//! A request the server cannot understand (wrong content type, missing field, a phone that is not a
//! Vietnamese mobile) gets a 4xx and changes nothing. An operational fault is logged once and the citizen
//! gets a polite END; details never reach the caller. Requests time out before AT's ~10 s deadline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tracing::{error, info, warn};

use crate::app::Web;
use crate::channel::africastalking::{self as at, AfricasTalking, AtForm, SessionEnd};
use crate::channel::Channel;
use crate::service::ServiceError;
use crate::sms::dlr::DlrError;

/// A hop is answered by then, busy or not (Africa's Talking gives up after ~10 s).
const HOP_DEADLINE: Duration = Duration::from_secs(7);
/// The outer safety net for any route.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(9);
/// A USSD callback is a few hundred bytes.
const BODY_LIMIT: usize = 16 * 1024;

pub fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/ussd/africastalking", post(africastalking))
        .route("/ussd/africastalking/events", post(africastalking_event))
        .route("/sms/kannel/dlr", get(kannel_dlr))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, REQUEST_TIMEOUT))
        .layer(TraceLayer::new_for_http().make_span_with(
            |req: &Request<_>| tracing::debug_span!("request", method = %req.method(), path = %req.uri().path()),
        ))
        .with_state(web)
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
    let reply = match tokio::time::timeout(HOP_DEADLINE, service.turn(&web.africastalking, hop)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => service.fault_reply(&e),
        Err(_) => service.fault_reply(&ServiceError::Timeout),
    };
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
