//! A scripted OAuth2 authorization server for the black-box tests of
//! `popsync auth login|status|logout` and of the token refresh in `fetch`.
//!
//! It serves HTTPS on 127.0.0.1 with a CA made for it (the fault server's
//! `TestTls`; `ca_pem_path` is popsync's `oauth.ca_file`) and three
//! endpoints: `/device` (RFC 8628 device authorization), `/authorize` (the
//! code grant's authorization endpoint, which "logs the user in" at once and
//! redirects with a code, RFC 6749 4.1 and PKCE, RFC 7636) and `/token`
//! (device_code, authorization_code with the S256 verifier checked, and
//! refresh_token, with or without rotation). The HTTP side is a tiny
//! HTTP/1.1 reader: one request per connection, form-encoded bodies,
//! `Connection: close`; answers are JSON from serde_json.
//!
//! What a test scripts: the answers to device polls (`Poll`), the lifetime
//! of the access tokens it issues (`set_expires_in`), rotation of refresh
//! tokens, failures of the token endpoint (`fail_token`), a revoked grant
//! (`revoke_refresh_tokens`), a verifier that cannot match
//! (`tamper_challenge`), a slow token endpoint (`token_delay`). What it
//! tells: every request (`requests`), the token requests per grant type
//! (`token_requests`), every secret it issued (`issued_secrets`), and
//! whether an access token is the current one (`accepts`, which
//! `bearer_check` hands to the POP3 fault server).
//!
//! ```ignore
//! mod fault;
//! mod oauth;
//! let oauth = oauth::OAuthServer::builder().polls(&[Poll::Pending, Poll::Grant]).start();
//! let pop = fault::FaultServer::builder().bearer(oauth.bearer_check()).start();
//! ```
//!
//! Each test file says `mod oauth;` and uses what it needs; hence `dead_code`.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;

use crate::fault::{BearerCheck, TestTls};

/// The longest request head or body the server reads.
const MAX_REQUEST: usize = 64 * 1024;

/// The client popsync is configured with (`client_id`).
pub const CLIENT_ID: &str = "popsync-test-client";

/// The user code the device endpoint hands out.
pub const USER_CODE: &str = "WDJB-MJHT";

/// The verification URI the device endpoint hands out.
pub const VERIFICATION_URI: &str = "https://login.example.org/device";

/// The scopes the tests ask for (and the server grants).
pub const SCOPES: [&str; 2] = ["https://mail.example.org/pop", "offline_access"];

/// The answer to one device-code poll of the token endpoint (RFC 8628 3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// `authorization_pending`.
    Pending,
    /// `slow_down`: the client must add 5 s to its interval.
    SlowDown,
    /// The user approved: tokens.
    Grant,
    /// `access_denied`.
    Denied,
    /// `expired_token`.
    Expired,
}

/// A failure of the token endpoint for refresh_token requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFault {
    /// HTTP 500 with an HTML body, as a load balancer sends it.
    Http500,
    /// 400 `invalid_grant` (the grant was revoked).
    InvalidGrant,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Request {
    /// When the request was complete, by the test's clock.
    pub at: Instant,
    pub method: String,
    /// Without the query.
    pub path: String,
    pub query: Vec<(String, String)>,
    /// The form-encoded body, decoded.
    pub form: Vec<(String, String)>,
    /// HTTP Basic credentials, decoded (client_secret_basic).
    pub basic: Option<(String, String)>,
    /// The status of the answer.
    pub status: u16,
    /// The `error` of the answer, if it was an OAuth error.
    pub error: Option<String>,
}

impl Request {
    /// The value of a form field.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of a query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `grant_type` of a token request.
    pub fn grant_type(&self) -> Option<&str> {
        self.field("grant_type")
    }
}

/// The `grant_type` values.
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
pub const CODE_GRANT: &str = "authorization_code";
pub const REFRESH_GRANT: &str = "refresh_token";

/// A code handed out by `/authorize`, waiting for the token request.
#[derive(Debug)]
struct CodeGrant {
    challenge: String,
    redirect_uri: String,
}

#[derive(Debug)]
struct State {
    client_secret: Option<String>,
    polls: VecDeque<Poll>,
    /// device_code -> when it was issued.
    device_codes: HashMap<String, Instant>,
    device_expires_in: u64,
    /// Answer `expired_token` once a device code is older than its
    /// `expires_in` (false: `authorization_pending` for ever).
    device_expiry: bool,
    interval: u64,
    codes: HashMap<String, CodeGrant>,
    tamper_challenge: bool,
    expires_in: u64,
    rotate: bool,
    /// Refresh tokens that are still good.
    refresh_tokens: Vec<String>,
    /// The current access token and when it stops being accepted.
    access: Option<(String, Instant)>,
    /// Every token and code issued, in order.
    issued: Vec<String>,
    faults: Vec<(TokenFault, Option<u32>)>,
    token_delay: Option<Duration>,
    requests: Vec<Request>,
    counter: u64,
}

impl State {
    fn next(&mut self, kind: &str) -> String {
        self.counter += 1;
        // Distinct, recognisable and long enough never to match by chance.
        let secret = format!("{kind}-{}-{:08x}", self.counter, rand_u32());
        self.issued.push(secret.clone());
        secret
    }

    /// New tokens: a new current access token, a refresh token (a new one
    /// unless `keep` is the refresh token being used without rotation).
    fn grant(&mut self, keep: Option<String>) -> serde_json::Value {
        let access = self.next("at");
        let lifetime = Duration::from_secs(self.expires_in);
        self.access = Some((access.clone(), Instant::now() + lifetime));
        let mut body = serde_json::json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": SCOPES.join(" "),
        });
        match keep {
            Some(_) if !self.rotate => {}
            old => {
                let refresh = self.next("rt");
                if let Some(old) = old {
                    self.refresh_tokens.retain(|t| *t != old);
                }
                self.refresh_tokens.push(refresh.clone());
                body["refresh_token"] = refresh.into();
            }
        }
        body
    }

    fn fire(&mut self) -> Option<TokenFault> {
        let (fault, remaining) = self
            .faults
            .iter_mut()
            .find(|(_, remaining)| *remaining != Some(0))?;
        if let Some(n) = remaining {
            *n -= 1;
        }
        Some(*fault)
    }
}

/// A random-ish number for token names, from the clock and the address of
/// a stack value: tokens differ between servers and runs.
fn rand_u32() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let local = 0u8;
    nanos ^ (std::ptr::addr_of!(local) as usize as u32).rotate_left(13)
}

/// Sets up an `OAuthServer`. Defaults: device polls answered `Grant` at
/// once, a poll interval of 1 s, device codes valid 600 s, access tokens
/// valid 3600 s, refresh tokens rotated, no client secret.
pub struct Builder {
    polls: Vec<Poll>,
    device_expires_in: u64,
    device_expiry: bool,
    interval: u64,
    expires_in: u64,
    rotate: bool,
    client_secret: Option<String>,
}

impl Builder {
    /// The answers to the device-code polls, in order; after the last one,
    /// `authorization_pending` until the device code expires, then
    /// `expired_token`.
    pub fn polls(mut self, polls: &[Poll]) -> Self {
        self.polls = polls.to_vec();
        self
    }

    /// The `expires_in` of device codes, in seconds.
    pub fn device_expires_in(mut self, secs: u64) -> Self {
        self.device_expires_in = secs;
        self
    }

    /// Answer `authorization_pending` for ever, also after the device
    /// code's `expires_in`: only the client can end the wait.
    pub fn pending_forever(mut self) -> Self {
        self.polls.clear();
        self.device_expiry = false;
        self
    }

    /// The `expires_in` of access tokens, in seconds (see `set_expires_in`).
    pub fn expires_in(mut self, secs: u64) -> Self {
        self.expires_in = secs;
        self
    }

    /// Keep the refresh token on refresh (answer without `refresh_token`)
    /// instead of rotating it.
    pub fn no_rotation(mut self) -> Self {
        self.rotate = false;
        self
    }

    /// A confidential client: token requests must carry this secret (form
    /// field or HTTP Basic); device requests that carry one must match.
    pub fn client_secret(mut self, secret: &str) -> Self {
        self.client_secret = Some(secret.to_owned());
        self
    }

    /// Bind 127.0.0.1 on a free port and serve HTTPS on a thread of its own.
    pub fn start(self) -> OAuthServer {
        let state = Arc::new(Mutex::new(State {
            client_secret: self.client_secret,
            polls: self.polls.into(),
            device_codes: HashMap::new(),
            device_expires_in: self.device_expires_in,
            device_expiry: self.device_expiry,
            interval: self.interval,
            codes: HashMap::new(),
            tamper_challenge: false,
            expires_in: self.expires_in,
            rotate: self.rotate,
            refresh_tokens: Vec::new(),
            access: None,
            issued: Vec::new(),
            faults: Vec::new(),
            token_delay: None,
            requests: Vec::new(),
            counter: 0,
        }));
        let tls = TestTls::new();
        let acceptor = tls.acceptor.clone();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local address").port();
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = state.clone();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("test runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                tokio::select! {
                    _ = accept_loop(listener, served, acceptor) => {}
                    _ = stopped => {}
                }
            });
            runtime.shutdown_timeout(Duration::from_millis(200));
        });
        OAuthServer {
            port,
            state,
            tls,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

/// A running scripted authorization server; stops when dropped (or
/// `stop`ped, after which its port refuses connections).
pub struct OAuthServer {
    port: u16,
    state: Arc<Mutex<State>>,
    tls: TestTls,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl OAuthServer {
    pub fn builder() -> Builder {
        Builder {
            polls: vec![Poll::Grant],
            device_expires_in: 600,
            device_expiry: true,
            interval: 1,
            expires_in: 3600,
            rotate: true,
            client_secret: None,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `https://127.0.0.1:PORT/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}/{path}", self.port)
    }

    /// The PEM file of the CA of the server's certificate.
    pub fn ca_pem_path(&self) -> &Path {
        &self.tls.ca_path
    }

    /// The `oauth = { ... }` inline table of a custom provider on this
    /// server (client id `CLIENT_ID`, `SCOPES`), with `extra` keys
    /// (`", client_secret = \"...\""`); its `ca_file` is this server's CA
    /// unless `ca_file` is false (then the account's applies).
    pub fn oauth_toml(&self, ca_file: bool, extra: &str) -> String {
        let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        let scopes: Vec<String> = SCOPES.iter().map(|s| quote(s)).collect();
        let ca = if ca_file {
            format!(
                ", ca_file = {}",
                quote(&self.ca_pem_path().to_string_lossy())
            )
        } else {
            String::new()
        };
        format!(
            "{{ provider = \"custom\", client_id = {id}, authorization_endpoint = {auth}, \
             device_authorization_endpoint = {device}, token_endpoint = {token}, \
             scopes = [{scopes}]{ca}{extra} }}",
            id = quote(CLIENT_ID),
            auth = quote(&self.url("authorize")),
            device = quote(&self.url("device")),
            token = quote(&self.url("token")),
            scopes = scopes.join(", "),
        )
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.state().requests.clone()
    }

    /// The requests to the token endpoint with this `grant_type`.
    pub fn token_requests(&self, grant_type: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == "/token" && r.grant_type() == Some(grant_type))
            .collect()
    }

    /// Every access token, refresh token, device code and authorization
    /// code handed out so far: none may ever be printed.
    pub fn issued_secrets(&self) -> Vec<String> {
        self.state().issued.clone()
    }

    /// The access token the POP3 server accepts now, if any.
    pub fn current_access_token(&self) -> Option<String> {
        self.state().access.as_ref().map(|(t, _)| t.clone())
    }

    /// The refresh tokens still good.
    pub fn refresh_tokens(&self) -> Vec<String> {
        self.state().refresh_tokens.clone()
    }

    /// Is `token` the current access token, not expired?
    pub fn accepts(&self, token: &str) -> bool {
        accepts(&self.state, token)
    }

    /// `accepts`, for `fault::Builder::bearer`.
    pub fn bearer_check(&self) -> BearerCheck {
        let state = self.state.clone();
        Arc::new(move |token| accepts(&state, token))
    }

    /// The `expires_in` of the access tokens issued from now on.
    pub fn set_expires_in(&self, secs: u64) {
        self.state().expires_in = secs;
    }

    /// Rotate refresh tokens from now on, or not.
    pub fn set_rotation(&self, rotate: bool) {
        self.state().rotate = rotate;
    }

    /// The current access token is no longer accepted (revoked, or the
    /// server forgot it), though its `expires_in` is not over.
    pub fn revoke_access_token(&self) {
        self.state().access = None;
    }

    /// Every refresh token is revoked: refreshing is `invalid_grant`.
    pub fn revoke_refresh_tokens(&self) {
        self.state().refresh_tokens.clear();
    }

    /// Refresh requests fail with `fault`, `times` times (`None`: always).
    pub fn fail_token(&self, fault: TokenFault, times: Option<u32>) {
        self.state().faults.push((fault, times));
    }

    /// Answer token requests only after `d` (a slow provider).
    pub fn token_delay(&self, d: Duration) {
        self.state().token_delay = Some(d);
    }

    /// Bind the next authorization code to another code challenge than the
    /// one the client sent, so the client's verifier cannot match.
    pub fn tamper_challenge(&self) {
        self.state().tamper_challenge = true;
    }

    /// Stop serving: the port refuses connections from now on.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock is a bug in this module; the state is
    // still worth reading to explain a failing test.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn accepts(state: &Mutex<State>, token: &str) -> bool {
    matches!(&lock(state).access, Some((t, until)) if t == token && Instant::now() < *until)
}

/// The S256 code challenge of a verifier (RFC 7636 4.2).
pub fn s256(verifier: &str) -> String {
    use base64::Engine as _;
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    state: Arc<Mutex<State>>,
    acceptor: TlsAcceptor,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let accepted =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await;
            if let Ok(Ok(stream)) = accepted {
                let _ = serve(stream, state).await;
            }
        });
    }
}

/// A parsed request: method, target, headers (lower-case names), body.
struct Http {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Http {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Read one request: the head up to CRLF CRLF, then Content-Length octets.
async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Option<Http>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if buf.len() > MAX_REQUEST {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_owned();
    let target = first.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    if length > MAX_REQUEST {
        return Ok(None);
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(Some(Http {
        method,
        target,
        headers,
        body,
    }))
}

/// An answer: status, extra headers, JSON (or other) body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    content_type: &'static str,
    error: Option<String>,
}

impl Answer {
    fn json(status: u16, body: serde_json::Value) -> Answer {
        let error = body
            .get("error")
            .and_then(|e| e.as_str())
            .map(str::to_owned);
        Answer {
            status,
            headers: Vec::new(),
            body: body.to_string(),
            content_type: "application/json",
            error,
        }
    }

    fn error(status: u16, error: &str) -> Answer {
        Answer::json(
            status,
            serde_json::json!({ "error": error, "error_description": format!("scripted {error}") }),
        )
    }

    fn redirect(location: String) -> Answer {
        Answer {
            status: 302,
            headers: vec![("Location".into(), location)],
            body: String::new(),
            content_type: "text/plain",
            error: None,
        }
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    state: Arc<Mutex<State>>,
) -> std::io::Result<()> {
    let Some(http) = read_request(&mut stream).await? else {
        return Ok(());
    };
    let (path, query) = match http.target.split_once('?') {
        Some((p, q)) => (p.to_owned(), form_decode(q)),
        None => (http.target.clone(), Vec::new()),
    };
    let form = if http.method == "POST" {
        form_decode(&String::from_utf8_lossy(&http.body))
    } else {
        Vec::new()
    };
    let basic = http.header("authorization").and_then(basic_credentials);
    let mut request = Request {
        at: Instant::now(),
        method: http.method.clone(),
        path,
        query,
        form,
        basic,
        status: 0,
        error: None,
    };
    let delay = (request.path == "/token")
        .then(|| lock(&state).token_delay)
        .flatten();
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let answer = {
        let mut s = lock(&state);
        let answer = answer(&mut s, &request);
        request.status = answer.status;
        request.error = answer.error.clone();
        s.requests.push(request);
        answer
    };
    let reason = match answer.status {
        200 => "OK",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n",
        answer.status,
        answer.content_type,
        answer.body.len()
    );
    for (k, v) in &answer.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&answer.body);
    stream.write_all(out.as_bytes()).await?;
    stream.flush().await?;
    stream.shutdown().await
}

/// The honest answer to a request, bent by the script.
fn answer(s: &mut State, r: &Request) -> Answer {
    match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/device") => device(s, r),
        ("GET", "/authorize") => authorize(s, r),
        ("POST", "/token") => token(s, r),
        _ => Answer::error(404, "not_found"),
    }
}

fn client_ok(s: &State, r: &Request, secret_required: bool) -> bool {
    let (id, secret) = match &r.basic {
        Some((id, secret)) => (Some(id.as_str()), Some(secret.as_str())),
        None => (r.field("client_id"), r.field("client_secret")),
    };
    if id != Some(CLIENT_ID) {
        return false;
    }
    match (&s.client_secret, secret) {
        (Some(want), Some(got)) => want == got,
        (Some(_), None) => !secret_required,
        (None, _) => true,
    }
}

fn device(s: &mut State, r: &Request) -> Answer {
    if !client_ok(s, r, false) {
        return Answer::error(401, "invalid_client");
    }
    let device_code = s.next("dc");
    s.device_codes.insert(device_code.clone(), Instant::now());
    Answer::json(
        200,
        serde_json::json!({
            "device_code": device_code,
            "user_code": USER_CODE,
            "verification_uri": VERIFICATION_URI,
            "expires_in": s.device_expires_in,
            "interval": s.interval,
        }),
    )
}

fn authorize(s: &mut State, r: &Request) -> Answer {
    let (Some(redirect), Some(challenge)) = (r.param("redirect_uri"), r.param("code_challenge"))
    else {
        return Answer::error(400, "invalid_request");
    };
    if r.param("client_id") != Some(CLIENT_ID)
        || r.param("response_type") != Some("code")
        || r.param("code_challenge_method") != Some("S256")
    {
        return Answer::error(400, "invalid_request");
    }
    let code = s.next("code");
    let challenge = if std::mem::take(&mut s.tamper_challenge) {
        s256("a verifier the client never had")
    } else {
        challenge.to_owned()
    };
    s.codes.insert(
        code.clone(),
        CodeGrant {
            challenge,
            redirect_uri: redirect.to_owned(),
        },
    );
    let sep = if redirect.contains('?') { '&' } else { '?' };
    let mut location = format!("{redirect}{sep}code={}", pct_encode(&code));
    if let Some(state) = r.param("state") {
        location.push_str(&format!("&state={}", pct_encode(state)));
    }
    Answer::redirect(location)
}

fn token(s: &mut State, r: &Request) -> Answer {
    if !client_ok(s, r, true) {
        return Answer::error(401, "invalid_client");
    }
    match r.grant_type() {
        Some(DEVICE_GRANT) => {
            let Some(issued) = r.field("device_code").and_then(|c| s.device_codes.get(c)) else {
                return Answer::error(400, "invalid_grant");
            };
            let expired =
                s.device_expiry && issued.elapsed() >= Duration::from_secs(s.device_expires_in);
            let poll = match s.polls.pop_front() {
                _ if expired => Poll::Expired,
                Some(poll) => poll,
                None => Poll::Pending,
            };
            match poll {
                Poll::Pending => Answer::error(400, "authorization_pending"),
                Poll::SlowDown => Answer::error(400, "slow_down"),
                Poll::Denied => Answer::error(400, "access_denied"),
                Poll::Expired => Answer::error(400, "expired_token"),
                Poll::Grant => {
                    if let Some(code) = r.field("device_code") {
                        s.device_codes.remove(code);
                    }
                    Answer::json(200, s.grant(None))
                }
            }
        }
        Some(CODE_GRANT) => {
            let Some(grant) = r.field("code").and_then(|c| s.codes.remove(c)) else {
                return Answer::error(400, "invalid_grant");
            };
            let verifier_ok = r
                .field("code_verifier")
                .is_some_and(|v| s256(v) == grant.challenge);
            if !verifier_ok || r.field("redirect_uri") != Some(grant.redirect_uri.as_str()) {
                return Answer::error(400, "invalid_grant");
            }
            Answer::json(200, s.grant(None))
        }
        Some(REFRESH_GRANT) => {
            match s.fire() {
                Some(TokenFault::Http500) => {
                    return Answer {
                        status: 500,
                        headers: Vec::new(),
                        body: "<html><body>Internal Server Error</body></html>".into(),
                        content_type: "text/html",
                        error: None,
                    };
                }
                Some(TokenFault::InvalidGrant) => return Answer::error(400, "invalid_grant"),
                None => {}
            }
            let Some(refresh) = r
                .field("refresh_token")
                .filter(|t| s.refresh_tokens.iter().any(|k| k == t))
                .map(str::to_owned)
            else {
                return Answer::error(400, "invalid_grant");
            };
            Answer::json(200, s.grant(Some(refresh)))
        }
        _ => Answer::error(400, "unsupported_grant_type"),
    }
}

/// `application/x-www-form-urlencoded` (and a query string) to pairs.
pub fn form_decode(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect()
}

fn pct_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encode everything but RFC 3986 unreserved characters.
pub fn pct_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `Basic BASE64(id:secret)`, each part form-decoded (RFC 6749 2.3.1).
fn basic_credentials(header: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    let b64 = header.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((pct_decode(id), pct_decode(secret)))
}
