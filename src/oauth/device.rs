//! The device authorization grant (RFC 8628), for `popsync auth login`: it
//! works on a headless server, since the person enters a short code in a
//! browser anywhere while popsync polls the token endpoint.

use std::time::{Duration, Instant};

use serde::Deserialize;

use super::OAuthError;
use super::refresh::Client;
use super::store::Tokens;

/// RFC 8628 3.2: poll every 5 s unless the server says otherwise; 3.5: add
/// 5 s on `slow_down`.
const DEFAULT_INTERVAL: u64 = 5;
const SLOW_DOWN_STEP: u64 = 5;
/// A bound on what a server may ask for, so that a broken one cannot park
/// the command for hours between polls.
const MAX_INTERVAL: u64 = 120;

/// The device authorization answer (RFC 8628 3.2). Google calls the URI
/// `verification_url`.
#[derive(Deserialize)]
struct DeviceAnswer {
    device_code: String,
    user_code: String,
    #[serde(alias = "verification_url")]
    verification_uri: String,
    #[serde(default)]
    verification_uri_complete: Option<String>,
    expires_in: u64,
    #[serde(default)]
    interval: Option<u64>,
}

/// What to do after a token poll was answered with an OAuth2 error.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Poll again after this many seconds.
    Poll(u64),
    /// The code expired.
    Expired,
    /// Stop with this error (access_denied and anything unknown).
    Stop,
}

fn after_error(error: &str, interval: u64) -> Next {
    match error {
        "authorization_pending" => Next::Poll(interval),
        "slow_down" => Next::Poll((interval + SLOW_DOWN_STEP).min(MAX_INTERVAL)),
        "expired_token" => Next::Expired,
        _ => Next::Stop,
    }
}

/// Run the device flow; `tell` shows the person what to open and enter.
pub(super) fn login(client: &Client<'_>, tell: &dyn Fn(&str)) -> Result<Tokens, OAuthError> {
    let name = &client.account.name;
    let endpoint = client.spec.device_authorization_endpoint.as_deref().ok_or_else(|| {
        OAuthError::Config(format!(
            "account {name:?}: oauth has no device_authorization_endpoint; add one, or use `popsync auth login {name} --browser`"
        ))
    })?;
    let scope = client.scope();
    let mut form = Vec::new();
    client.identify(&mut form);
    if !scope.is_empty() {
        form.push(("scope", &scope));
    }
    let answer: DeviceAnswer = client
        .http
        .post_form(endpoint, &form)?
        .map_err(|e| client.refused_login(endpoint, e))?;
    let started = Instant::now();
    let clean = |s: &str| crate::sanitize::sanitize(s.as_bytes(), 300);
    match &answer.verification_uri_complete {
        Some(complete) => tell(&format!(
            "{name}: to log in, open {} (the code {} is filled in) and allow popsync",
            clean(complete),
            clean(&answer.user_code)
        )),
        None => tell(&format!(
            "{name}: to log in, open {} and enter the code {}",
            clean(&answer.verification_uri),
            clean(&answer.user_code)
        )),
    }
    let deadline = started + Duration::from_secs(answer.expires_in);
    let expired = || OAuthError::CodeExpired {
        account: name.clone(),
    };
    let mut interval = answer
        .interval
        .unwrap_or(DEFAULT_INTERVAL)
        .min(MAX_INTERVAL);
    let token_endpoint = &client.spec.token_endpoint;
    let mut form = vec![
        ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
        ("device_code", answer.device_code.as_str()),
    ];
    client.identify(&mut form);
    loop {
        let wake = Instant::now() + Duration::from_secs(interval);
        if wake > deadline {
            return Err(expired());
        }
        std::thread::sleep(wake.saturating_duration_since(Instant::now()));
        let e = match client.token_request(&form, None)? {
            Ok(tokens) => return Ok(tokens),
            Err(e) => e,
        };
        match after_error(&e.error, interval) {
            Next::Poll(next) => interval = next,
            Next::Expired => return Err(expired()),
            Next::Stop => return Err(client.refused_login(token_endpoint, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_keeps_the_interval_and_slow_down_adds_five_seconds() {
        assert_eq!(after_error("authorization_pending", 5), Next::Poll(5));
        assert_eq!(after_error("slow_down", 5), Next::Poll(10));
        assert_eq!(
            after_error("slow_down", MAX_INTERVAL),
            Next::Poll(MAX_INTERVAL)
        );
    }

    #[test]
    fn expiry_denial_and_unknown_errors_stop_polling() {
        assert_eq!(after_error("expired_token", 5), Next::Expired);
        assert_eq!(after_error("access_denied", 5), Next::Stop);
        assert_eq!(after_error("invalid_client", 5), Next::Stop);
    }

    #[test]
    fn googles_verification_url_is_understood() {
        let a: DeviceAnswer = serde_json::from_str(
            r#"{"device_code":"d","user_code":"ABC-DEF","verification_url":"https://www.google.com/device","expires_in":1800,"interval":5}"#,
        )
        .unwrap();
        assert_eq!(a.verification_uri, "https://www.google.com/device");
        assert_eq!(a.interval, Some(5));
    }
}
