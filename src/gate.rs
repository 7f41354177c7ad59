//! The carrier gate: who may call the webhooks. Africa's Talking and Kannel sign nothing, so without a
//! gate anyone who can reach the port can post any `phoneNumber` (and take over an activation a citizen
//! has just verified). With `--webhook-token` every carrier endpoint (USSD, SMS, delivery reports,
//! session ends) requires the token, as `Authorization: Bearer …` or a `token` query parameter (Africa's
//! Talking and Kannel can only put it in their callback URL); `--webhook-allow` adds an address
//! allowlist. A refused call gets 401 (token) or 403 (address) with no detail, changes nothing, is logged
//! with the peer address and audited as `webhook_rejected` (at most one record a second; the count of
//! those not recorded goes into the next one, so a flood cannot fill the disk), the record written to the
//! audit trail file before the refusal is answered (a failure there is logged; the sweeper writes it later).
//!
//! Comparison is constant-time over fixed-length digests (OWASP ASVS 5.0 V11: no timing oracle on
//! secrets).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::{error, warn};

use crate::audit::AuditLog;
use crate::clock::Clock;
use crate::domain::Secret;
use crate::engine::AuditEvent;
use crate::store::{AuditRecord, Store};

/// Who may call the carrier endpoints.
pub struct Gate {
    /// SHA-256 of the token, compared in constant time; `None`: no token asked.
    token: Option<[u8; 32]>,
    allow: Vec<IpNet>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    audit: RejectionAudit,
    /// Drained after a refusal is recorded; `None` (unit tests): left to the next drain elsewhere.
    audit_log: Option<Arc<AuditLog>>,
}

#[derive(Default)]
struct RejectionAudit {
    unrecorded: AtomicU64,
    last: Mutex<Option<Instant>>,
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its address is not in `--webhook-allow`.
    Address,
    /// No token, or the wrong one.
    Token,
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl Gate {
    pub fn new(
        token: Option<&Secret>,
        allow: Vec<IpNet>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        audit_log: Option<Arc<AuditLog>>,
    ) -> Gate {
        Gate {
            token: token.map(|t| digest(t.expose())),
            allow,
            store,
            clock,
            audit: RejectionAudit::default(),
            audit_log,
        }
    }

    /// Whether the gate asks anything of a caller.
    pub fn is_open(&self) -> bool {
        self.token.is_none() && self.allow.is_empty()
    }

    /// Checks a call: its peer address, its `Authorization` header and its query string.
    pub fn check(
        &self,
        peer: Option<IpAddr>,
        authorization: Option<&HeaderValue>,
        query: Option<&str>,
    ) -> Result<(), Refusal> {
        if !self.allow.is_empty() && !peer.is_some_and(|ip| self.allow.iter().any(|net| net.contains(&ip))) {
            return Err(Refusal::Address);
        }
        let Some(want) = &self.token else { return Ok(()) };
        let bearer = authorization.and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
        let in_query = query.and_then(|q| {
            form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned())
        });
        let given = [bearer.map(str::to_string), in_query];
        // Both are compared whatever the first gives, so the time does not depend on where it was.
        let mut ok = subtle::Choice::from(0u8);
        for g in given.iter().flatten() {
            ok |= digest(g).ct_eq(want);
        }
        if bool::from(ok) {
            Ok(())
        } else {
            Err(Refusal::Token)
        }
    }

    /// Logs and (rate-limited) audits a refusal.
    async fn refused(&self, why: Refusal, peer: Option<SocketAddr>, path: &str) {
        let peer_text = peer.map(|p| p.ip().to_string()).unwrap_or_else(|| "?".into());
        warn!(peer = %peer_text, path, why = ?why, "webhook call refused at the gate");
        let due = match self.audit.last.lock() {
            Ok(mut last) => {
                let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
                if due {
                    *last = Some(Instant::now());
                }
                due
            }
            Err(_) => false,
        };
        if !due {
            self.audit.unrecorded.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let before = self.audit.unrecorded.swap(0, Ordering::Relaxed);
        let reason = match why {
            Refusal::Address => "address",
            Refusal::Token => "token",
        };
        let mut detail = format!("{reason} from {peer_text} on {path}");
        if before > 0 {
            detail.push_str(&format!("; {before} more refused since the last record"));
        }
        let record = AuditRecord {
            at: self.clock.now(),
            caller: None,
            channel: None,
            event: AuditEvent {
                event: "webhook_rejected".into(),
                national_id: None,
                phone: None,
                detail: Some(detail),
            },
        };
        if let Err(e) = self.store.append_audit(&[record]).await {
            error!(error = %e, "webhook refusal could not be audited");
            return;
        }
        if let Some(log) = &self.audit_log {
            if let Err(e) = log.drain().await {
                error!(error = %e, "audit trail not written after a webhook refusal; the next drain writes it");
            }
        }
    }
}

/// The middleware in front of the carrier routes.
pub async fn guard(State(gate): State<Arc<Gate>>, req: Request, next: Next) -> Response {
    if gate.is_open() {
        return next.run(req).await;
    }
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let verdict = gate.check(peer.map(|p| p.ip()), req.headers().get(header::AUTHORIZATION), req.uri().query());
    match verdict {
        Ok(()) => next.run(req).await,
        Err(why) => {
            gate.refused(why, peer, req.uri().path()).await;
            match why {
                Refusal::Token => {
                    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "unauthorized\n").into_response()
                }
                Refusal::Address => (StatusCode::FORBIDDEN, "forbidden\n").into_response(),
            }
        }
    }
}

/// Parses `--webhook-allow`: comma-separated CIDRs or single addresses.
pub fn parse_allow(list: &str) -> Result<Vec<IpNet>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("--webhook-allow: {s:?} is neither a CIDR (10.0.0.0/8) nor an address"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, Millis};
    use crate::store::memory::MemoryStore;

    fn gate(token: Option<&str>, allow: &str) -> Gate {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(Millis(0)));
        Gate::new(token.map(Secret::new).as_ref(), parse_allow(allow).unwrap(), store, clock, None)
    }

    #[test]
    fn the_token_is_taken_from_the_bearer_header_or_the_query_and_nothing_else() {
        let g = gate(Some("s3cret-T0ken"), "");
        let bearer = HeaderValue::from_static("Bearer s3cret-T0ken");
        assert_eq!(g.check(None, Some(&bearer), None), Ok(()));
        assert_eq!(g.check(None, None, Some("from=84912345678&token=s3cret-T0ken&text=1")), Ok(()));
        assert_eq!(g.check(None, None, Some("token=s3cret-T0ke")), Err(Refusal::Token));
        assert_eq!(g.check(None, None, None), Err(Refusal::Token));
        let wrong = HeaderValue::from_static("Bearer nope");
        assert_eq!(g.check(None, Some(&wrong), Some("text=s3cret-T0ken")), Err(Refusal::Token));
        assert_eq!(g.check(None, Some(&HeaderValue::from_static("s3cret-T0ken")), None), Err(Refusal::Token));
    }

    #[test]
    fn an_allowlist_refuses_other_addresses_before_the_token_is_looked_at() {
        let g = gate(None, "10.1.0.0/16, 192.0.2.7");
        assert_eq!(g.check(Some("10.1.2.3".parse().unwrap()), None, None), Ok(()));
        assert_eq!(g.check(Some("192.0.2.7".parse().unwrap()), None, None), Ok(()));
        assert_eq!(g.check(Some("10.2.0.1".parse().unwrap()), None, None), Err(Refusal::Address));
        assert_eq!(g.check(None, None, None), Err(Refusal::Address));
        assert!(parse_allow("10.0.0.0/33").is_err());
    }

    #[test]
    fn with_neither_the_gate_is_open() {
        assert!(gate(None, "").is_open());
        assert!(!gate(Some("t"), "").is_open());
    }
}
