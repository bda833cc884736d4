//! `popsync auth login --browser`: the authorization code grant with PKCE
//! (RFC 7636, S256) and a loopback redirect on 127.0.0.1 (RFC 8252 7.3), for
//! a machine with a browser. `state` ties the redirect to this login; the
//! verifier ties the code to this process.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ring::rand::{SecureRandom, SystemRandom};

use super::OAuthError;
use super::refresh::Client;
use super::store::Tokens;

/// Set to a command (a test's "click", or a browser) that is run with the
/// authorization URL as its argument.
pub const BROWSER_ENV: &str = "POPSYNC_OAUTH_BROWSER";

/// 32 random bytes, base64url: a 43-character PKCE verifier (RFC 7636 4.1)
/// or `state`.
fn random_token() -> Result<String, OAuthError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| OAuthError::Browser("the system's random number generator failed".into()))?;
    Ok(B64URL.encode(bytes))
}

/// RFC 7636 4.2: BASE64URL(SHA256(verifier)).
fn challenge(verifier: &str) -> String {
    B64URL.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// The authorization URL: the endpoint with the request's parameters added
/// to any query it already has.
fn authorization_url(endpoint: &str, params: &[(&str, &str)]) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let sep = if endpoint.contains('?') { '&' } else { '?' };
    format!("{endpoint}{sep}{query}")
}

/// What the browser brought back to the redirect URI.
#[derive(Debug, PartialEq, Eq)]
enum Redirect {
    Code(String),
    Error {
        error: String,
        description: String,
    },
    /// A redirect whose `state` is not ours: not an answer to this login,
    /// perhaps forged (RFC 6749 10.12).
    BadState,
    /// Not the redirect (a favicon request).
    Other,
}

fn parse_redirect(url: &str, state: &str) -> Redirect {
    let Some((path, query)) = url.split_once('?') else {
        return Redirect::Other;
    };
    if path != "/" {
        return Redirect::Other;
    }
    let mut code = None;
    let mut got_state = None;
    let mut error = None;
    let mut description = String::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "code" => code = Some(v.into_owned()),
            "state" => got_state = Some(v.into_owned()),
            "error" => error = Some(v.into_owned()),
            "error_description" => description = v.into_owned(),
            _ => {}
        }
    }
    if code.is_none() && error.is_none() {
        return Redirect::Other;
    }
    if got_state.as_deref() != Some(state) {
        return Redirect::BadState;
    }
    match (code, error) {
        (_, Some(error)) => Redirect::Error {
            error: crate::sanitize::sanitize(error.as_bytes(), 80),
            description: crate::sanitize::sanitize(description.as_bytes(), 300),
        },
        (Some(code), None) => Redirect::Code(code),
        (None, None) => Redirect::Other,
    }
}

/// Run the code flow; `tell` shows the person the URL to open.
pub(super) fn login(client: &Client<'_>, tell: &dyn Fn(&str)) -> Result<Tokens, OAuthError> {
    let name = &client.account.name;
    let endpoint = client.spec.authorization_endpoint.as_deref().ok_or_else(|| {
        OAuthError::Config(format!(
            "account {name:?}: oauth has no authorization_endpoint; add one, or use `popsync auth login {name}` (the device flow)"
        ))
    })?;
    let listen_err = |e: std::io::Error| {
        OAuthError::Browser(format!("cannot listen on 127.0.0.1 for the redirect: {e}"))
    };
    let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(listen_err)?;
    let port = listener.local_addr().map_err(listen_err)?.port();
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| OAuthError::Browser(format!("cannot serve the redirect: {e}")))?;
    let redirect_uri = format!("http://127.0.0.1:{port}/");
    let state = random_token()?;
    let verifier = random_token()?;
    let scope = client.scope();
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", client.spec.client_id.as_str()),
        ("redirect_uri", redirect_uri.as_str()),
        ("state", state.as_str()),
    ];
    let code_challenge = challenge(&verifier);
    params.push(("code_challenge", &code_challenge));
    params.push(("code_challenge_method", "S256"));
    if !scope.is_empty() {
        params.push(("scope", &scope));
    }
    let url = authorization_url(endpoint, &params);
    tell(&format!(
        "{name}: to log in, open this URL in a browser:\n{url}"
    ));
    let mut browser = match std::env::var(BROWSER_ENV) {
        Ok(cmd) if !cmd.trim().is_empty() => Some(
            std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(format!("{cmd} {}", crate::command::shell_quote(&url)))
                .stdin(std::process::Stdio::null())
                .spawn()
                .map_err(|e| {
                    OAuthError::Browser(format!("cannot start {BROWSER_ENV} command `{cmd}`: {e}"))
                })?,
        ),
        _ => None,
    };
    let timeout = client.account.command_timeout;
    let outcome = wait_for_code(&server, &state, timeout, name);
    if let Some(child) = browser.as_mut() {
        // A launcher returns at once; one that does not is not waited for.
        if let Ok(None) = child.try_wait() {
            std::thread::sleep(Duration::from_millis(200));
            let _ = child.try_wait();
        }
    }
    let code = match outcome? {
        Ok(code) => code,
        Err((error, _)) if error == "state mismatch" => {
            return Err(OAuthError::StateMismatch {
                account: name.clone(),
            });
        }
        Err((error, description)) => {
            return Err(
                client.refused_login(endpoint, super::http::ErrorReply { error, description })
            );
        }
    };
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", redirect_uri.as_str()),
        ("code_verifier", verifier.as_str()),
    ];
    client.identify(&mut form);
    client
        .token_request(&form, None)?
        .map_err(|e| client.refused_login(&client.spec.token_endpoint, e))
}

type CodeOrError = Result<String, (String, String)>;

/// Serve the loopback port until the redirect with our `state` arrives.
fn wait_for_code(
    server: &tiny_http::Server,
    state: &str,
    timeout: Duration,
    account: &str,
) -> Result<CodeOrError, OAuthError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(OAuthError::BrowserTimeout {
                account: account.to_owned(),
                timeout,
            });
        }
        let request = match server.recv_timeout(left) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                return Err(OAuthError::Browser(format!(
                    "the redirect listener on 127.0.0.1 failed: {e}"
                )));
            }
        };
        let (status, page, result) = match parse_redirect(request.url(), state) {
            Redirect::Code(code) => (
                200,
                "popsync: logged in. You can close this window.",
                Some(Ok(code)),
            ),
            Redirect::Error { error, description } => (
                400,
                "popsync: the login was not completed; see the terminal.",
                Some(Err((error, description))),
            ),
            Redirect::BadState => (
                400,
                "popsync: this redirect does not belong to the login in progress.",
                Some(Err(("state mismatch".to_owned(), String::new()))),
            ),
            Redirect::Other => (404, "popsync: not the login redirect.", None),
        };
        let _ = request.respond(tiny_http::Response::from_string(page).with_status_code(status));
        if let Some(r) = result {
            return Ok(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_challenge_matches_rfc_7636_appendix_b() {
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn verifiers_are_43_url_safe_characters_and_differ() {
        let a = random_token().unwrap();
        assert_eq!(a.len(), 43);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(a, random_token().unwrap());
    }

    #[test]
    fn the_authorization_url_encodes_its_parameters() {
        let u = authorization_url(
            "https://a/auth",
            &[("redirect_uri", "http://127.0.0.1:5/"), ("scope", "a b")],
        );
        assert_eq!(
            u,
            "https://a/auth?redirect_uri=http%3A%2F%2F127.0.0.1%3A5%2F&scope=a+b"
        );
        assert!(authorization_url("https://a/auth?x=1", &[("k", "v")]).ends_with("?x=1&k=v"));
    }

    #[test]
    fn only_a_redirect_with_our_state_counts() {
        assert_eq!(
            parse_redirect("/?code=c1&state=s", "s"),
            Redirect::Code("c1".into())
        );
        assert_eq!(parse_redirect("/?code=c1&state=t", "s"), Redirect::BadState);
        assert_eq!(parse_redirect("/?code=c1", "s"), Redirect::BadState);
        assert_eq!(parse_redirect("/?x=1", "s"), Redirect::Other);
        assert_eq!(parse_redirect("/favicon.ico", "s"), Redirect::Other);
        assert_eq!(
            parse_redirect("/?error=access_denied&error_description=no%0D&state=s", "s"),
            Redirect::Error {
                error: "access_denied".into(),
                description: crate::sanitize::sanitize(b"no\r", 300),
            }
        );
    }
}
