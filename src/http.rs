//! The HTTP surface: carrier webhooks and health. Handlers only translate; the [`Service`] does the work.
//!
//! - `POST /ussd/africastalking`: Africa's Talking USSD callback; `text/plain` `CON …` / `END …`.
//! - `POST /ussd/africastalking/events`: AT's end-of-session notification; logged, answered 200.
//! - `GET /healthz`: 200 when the process serves.
//!
//! A request the server cannot understand (wrong content type, missing field, a phone that is not a
//! Vietnamese mobile) gets a 4xx and changes nothing. An operational fault is logged once and the citizen
//! gets a polite END; details never reach the caller. Requests time out before AT's ~10 s deadline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::FormRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tracing::{info, warn};

use crate::app::Web;
use crate::channel::africastalking::{self as at, AtForm};
use crate::service::ServiceError;

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
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, REQUEST_TIMEOUT))
        .layer(TraceLayer::new_for_http())
        .with_state(web)
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

async fn africastalking_event(Form(fields): Form<HashMap<String, String>>) -> StatusCode {
    // `input` may hold the last thing typed (a password): log only the outcome.
    let status = fields.get("status").map(String::as_str).unwrap_or("?");
    let hops = fields.get("hopsCount").map(String::as_str).unwrap_or("?");
    info!(status, hops, "africastalking: session ended");
    StatusCode::OK
}
