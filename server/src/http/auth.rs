//! Who may do what, decided in one middleware before any handler runs.
//!
//! - The **admin token** (`--token`, `--token-file`, or generated into `<db>.token`) may do
//!   everything: submit and cancel sweeps, and speak the worker protocol.
//! - The **worker token** (`--worker-token`, `--worker-token-file`, or generated into
//!   `<db>.worker-token`) may only speak the worker protocol (claim, heartbeat, metrics, finish,
//!   release, checkpoints) and read. Every worker host holds it, so it must not submit sweeps;
//!   `--no-shared-worker-token` refuses it altogether.
//! - A **worker credential** (`server worker add NAME`, or minted through an enrollment
//!   credential) has the worker token's rights, under its own name only (the claim checks the
//!   name); revoked, it opens nothing. An **enrollment credential** may only mint worker
//!   credentials (`POST /api/workers/enroll`). The credentials' own routes are the admin's.
//! - Reads are open unless the coordinator is `--private`; then they need either token or a
//!   **session cookie**, which `POST /api/session` sets after the dashboard's user typed the admin
//!   token once. The cookie grants reads only (a cookie rides along with any request the browser
//!   makes, so it never authorises a write).
//! - The dashboard's static files and `/healthz` are always open: they hold no data.
//!
//! Independently of tokens: a `Host` allowlist (DNS rebinding makes a hostile page's origin
//! resolve to a loopback coordinator; the browser still sends the attacker's host name), and
//! `nosniff` plus a CSP without inline scripts on every response.
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::http::error::ApiError;
use crate::secrets::{constant_time_eq, random_hex};
use crate::state::AppState;

pub const SESSION_COOKIE: &str = "sweep_session";
/// Sessions kept in memory (the oldest is dropped past this); a restart forgets them all.
const MAX_SESSIONS: usize = 1024;

/// The two tokens.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub admin: String,
    pub worker: String,
}

/// What a request is allowed, from its credentials (the middleware leaves it in the request's
/// extensions for handlers that decide more finely).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Admin,
    /// The shared worker token.
    Worker,
    /// A worker's own credential: the worker protocol under its name.
    Credential(std::sync::Arc<crate::credentials::Credential>),
    /// An enrollment credential: mints worker credentials, nothing else.
    Enrollment(std::sync::Arc<crate::credentials::Credential>),
    /// The shared worker token where `--no-shared-worker-token` refuses it.
    RefusedSharedToken,
    /// A dashboard session cookie: reads.
    Session,
    Anonymous,
}

/// Read-only dashboard sessions, by random id, each with the time it expires (`--session-hours`).
#[derive(Debug)]
pub struct Sessions {
    live: Mutex<(HashMap<String, i64>, VecDeque<String>)>,
    ttl_ms: i64,
}

impl Sessions {
    pub fn new(ttl: std::time::Duration) -> Self {
        Sessions {
            live: Mutex::default(),
            ttl_ms: ttl.as_millis().try_into().unwrap_or(i64::MAX),
        }
    }

    fn create(&self, now_ms: i64) -> String {
        let id = random_hex(16);
        let mut g = self.live.lock().unwrap_or_else(|p| p.into_inner());
        // The oldest first: expired ones, then (past the cap) the oldest live one.
        while let Some(old) = g.1.front().cloned() {
            let expired = g.0.get(&old).is_none_or(|&at| at <= now_ms);
            if !expired && g.1.len() < MAX_SESSIONS {
                break;
            }
            g.1.pop_front();
            g.0.remove(&old);
        }
        g.0.insert(id.clone(), now_ms.saturating_add(self.ttl_ms));
        g.1.push_back(id.clone());
        id
    }

    fn contains(&self, id: &str, now_ms: i64) -> bool {
        let g = self.live.lock().unwrap_or_else(|p| p.into_inner());
        g.0.get(id).is_some_and(|&at| now_ms < at)
    }

    fn end(&self, id: &str) {
        let mut g = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if g.0.remove(id).is_some() {
            g.1.retain(|s| s != id);
        }
    }
}

/// The worker protocol's routes: the only writes a worker token may make.
fn is_worker_route(method: &Method, path: &str) -> bool {
    // Ask and tell: a trial of an external sweep is a claim and its finish, by whoever runs the loop.
    if let Some(rest) = path.strip_prefix("/api/sweeps/") {
        let action = rest.split_once('/').map(|(_, a)| a).unwrap_or("");
        return method == Method::POST && matches!(action, "ask" | "tell");
    }
    let Some(rest) = path.strip_prefix("/api/jobs/") else {
        return false;
    };
    if rest == "claim" {
        return method == Method::POST;
    }
    let action = rest.split_once('/').map(|(_, a)| a).unwrap_or("");
    match action {
        "heartbeat" | "metrics" | "finish" | "release" | "log" => method == Method::POST,
        "checkpoint" => method == Method::PUT || method == Method::GET,
        _ => false,
    }
}

/// The credentials' own routes: the admin's alone (a listing names every worker), except the
/// enrollment an enrollment credential makes.
fn is_admin_route(path: &str) -> bool {
    path.starts_with(protocol::routes::WORKERS) && path != protocol::routes::ENROLL
}

/// Files that carry no data: served to anyone, so a `--private` dashboard can load and ask for
/// the token.
fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/healthz"
            | "/"
            | "/app.js"
            | "/analysis.js"
            | "/style.css"
            | "/api/session"
            | "/docs"
            | "/docs/rapidoc-min.js"
    )
}

fn access(state: &AppState, req: &Request) -> Access {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        // RFC 7235: the scheme is case-insensitive.
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    if let Some(t) = bearer {
        if constant_time_eq(t.as_bytes(), state.tokens.admin.as_bytes()) {
            return Access::Admin;
        }
        if constant_time_eq(t.as_bytes(), state.tokens.worker.as_bytes()) {
            return match state.shared_worker_token {
                true => Access::Worker,
                false => Access::RefusedSharedToken,
            };
        }
        if let Some(c) = state.credentials.get(t) {
            return match c.kind {
                protocol::credentials::CredentialKind::Worker => Access::Credential(c),
                protocol::credentials::CredentialKind::Enrollment => Access::Enrollment(c),
            };
        }
    }
    if session_cookie(req).is_some_and(|id| state.sessions.contains(id, state.clock.now_ms())) {
        return Access::Session;
    }
    Access::Anonymous
}

fn session_cookie(req: &Request) -> Option<&str> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v)
}

/// The middleware: a request goes on only with the rights its route needs.
pub async fn authorize(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let method = req.method();
    let is_read = method == Method::GET || method == Method::HEAD;
    if is_public(path) {
        return next.run(req).await;
    }
    let who = access(&state, &req);
    let granted = match &who {
        Access::Admin => true,
        _ if is_admin_route(path) => false,
        Access::Worker | Access::Credential(_) => is_read || is_worker_route(method, path),
        Access::Enrollment(_) => method == Method::POST && path == protocol::routes::ENROLL,
        Access::Session => is_read,
        Access::Anonymous | Access::RefusedSharedToken => is_read && !state.private,
    };
    if !granted {
        return refusal(&who, is_read).into_response();
    }
    let mut req = req;
    req.extensions_mut().insert(who);
    next.run(req).await
}

/// Why a request was not granted, for its 401 or 403.
fn refusal(who: &Access, is_read: bool) -> ApiError {
    match who {
        Access::Anonymous => ApiError::Unauthorized,
        Access::Session if !is_read => ApiError::Unauthorized,
        Access::RefusedSharedToken => ApiError::UnauthorizedBecause(
            "the shared worker token is refused here (server serve --no-shared-worker-token): use this worker's own credential (server worker add NAME)".into(),
        ),
        Access::Enrollment(_) => ApiError::Forbidden(
            "an enrollment credential only mints worker credentials (POST /api/workers/enroll)".into(),
        ),
        Access::Worker | Access::Credential(_) | Access::Session => {
            ApiError::Forbidden("this token may only speak the worker protocol".into())
        }
        Access::Admin => ApiError::Forbidden("the admin token may do everything".into()),
    }
}

/// The `X-Lease-Secret` header of a worker write (None when absent or not text).
#[derive(Debug, Clone)]
pub struct LeaseSecret(pub Option<String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for LeaseSecret {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let secret = parts
            .headers
            .get(protocol::LEASE_SECRET_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok(LeaseSecret(secret))
    }
}

#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
pub struct SessionRequest {
    /// The admin token.
    pub token: String,
}

/// Start a read-only dashboard session (for `--private`): the admin token in, an HttpOnly,
/// SameSite=Strict cookie out, which `GET` requests and `/api/events` honour until it expires
/// (`server serve --session-hours`, default 12) or `DELETE /api/session` ends it.
#[utoipa::path(post, path = "/api/session", tag = "operations", request_body = SessionRequest,
    responses((status = 204), (status = 401)))]
pub async fn create_session(
    State(state): State<AppState>,
    crate::http::error::AppJson(req): crate::http::error::AppJson<SessionRequest>,
) -> Result<Response, ApiError> {
    if !constant_time_eq(req.token.trim().as_bytes(), state.tokens.admin.as_bytes()) {
        return Err(ApiError::Unauthorized);
    }
    let id = state.sessions.create(state.clock.now_ms());
    let max_age = state.sessions.ttl_ms / 1000;
    Ok(with_cookie(&format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        secure(&state)
    )))
}

/// End this browser's dashboard session (its cookie no longer opens anything) and clear the
/// cookie. Without a session it does nothing, and says so the same way.
#[utoipa::path(delete, path = "/api/session", tag = "operations", responses((status = 204)))]
pub async fn end_session(State(state): State<AppState>, req: Request) -> Response {
    if let Some(id) = session_cookie(&req) {
        state.sessions.end(id);
    }
    with_cookie(&format!(
        "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        secure(&state)
    ))
}

/// `; Secure` behind a TLS proxy (`serve --secure-cookie`): the browser then never sends the
/// cookie over plain HTTP. Off by default, as the coordinator itself speaks plain HTTP.
fn secure(state: &AppState) -> &'static str {
    match state.secure_cookie {
        true => "; Secure",
        false => "",
    }
}

fn with_cookie(cookie: &str) -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

/// Host names this coordinator answers to (None: any).
pub fn default_allowed_hosts(
    listen: &std::net::SocketAddr,
    given: &[String],
) -> Option<Vec<String>> {
    if !given.is_empty() {
        return Some(given.iter().map(|h| h.to_ascii_lowercase()).collect());
    }
    // Bound to loopback, only loopback names can be meant; bound elsewhere, the operator knows the
    // names (and says them with --allowed-host).
    listen.ip().is_loopback().then(|| {
        ["localhost", "127.0.0.1", "[::1]", "::1"]
            .map(String::from)
            .to_vec()
    })
}

/// The `Host` header without its port.
fn host_name(h: &str) -> &str {
    if h.starts_with('[') {
        return h.find(']').map_or(h, |i| &h[..=i]); // [::1]:8080 -> [::1]
    }
    h.rsplit_once(':').map_or(h, |(name, _)| name)
}

/// Refuses requests whose `Host` is not allowed (421), and adds the security headers to every
/// response.
pub async fn guard_host_and_headers(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(allowed) = state.allowed_hosts.as_deref() {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(|h| host_name(h).to_ascii_lowercase());
        // HTTP/1.0 requests may lack Host; they cannot come from a browser page.
        if let Some(h) = host {
            if !allowed.contains(&h) {
                return (
                    StatusCode::MISDIRECTED_REQUEST,
                    Json(serde_json::json!({"error": format!("host {h:?} is not served here (see --allowed-host)")})),
                )
                    .into_response();
            }
        }
    }
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Scripts only from this origin (the dashboard has no inline script); the charts' inline style
    // attributes are allowed.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

/// Reads a token file, refusing one that is empty or readable by others.
pub fn read_token_file(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("cannot read token file {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "token file {} is readable by group or others (mode {mode:o}); run chmod 600 on it",
            path.display()
        );
    }
    let token = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read token file {}: {e}", path.display()))?
        .trim()
        .to_string();
    if token.is_empty() {
        anyhow::bail!("token file {} is empty", path.display());
    }
    Ok(token)
}

/// A token from the command line, a file, or generated into `default_file` at first start (mode
/// 0600). The flag says it was generated now (to be shown once).
pub fn load_token(
    given: Option<&str>,
    file: Option<&Path>,
    default_file: &Path,
) -> anyhow::Result<(String, bool)> {
    if let Some(t) = given {
        if t.trim().is_empty() {
            anyhow::bail!("the token is empty");
        }
        return Ok((t.trim().to_string(), false));
    }
    if let Some(f) = file {
        return Ok((read_token_file(f)?, false));
    }
    if default_file.exists() {
        return Ok((read_token_file(default_file)?, false));
    }
    Ok((create_token_file(default_file)?, true))
}

fn create_token_file(path: &Path) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let token = random_hex(16);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    writeln!(f, "{token}")?;
    Ok(token)
}

/// `<db>.<suffix>`: where generated tokens live.
pub fn sidecar(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    db.with_file_name(name)
}
