//! The access token a session logs in with, refreshed when it has less than
//! five minutes left or when the server refused it. A refresh happens under
//! the token's lock and re-reads the file after taking it, so that accounts
//! sharing one token (`--jobs`, or two runs at once) refresh it once; a
//! rotated refresh token is saved before the new access token is used.

use std::path::Path;

use serde::Deserialize;

use super::http::{ErrorReply, Http};
use super::store::{TokenFile, Tokens};
use super::{OAuthError, now};
use crate::config::{Account, Credential, OAuthSpec};

/// Refresh when less than this is left (issue 17).
const MARGIN_MINUTES: i64 = 5;

/// An OAuth2 client of one account: its spec, its HTTPS client, its secret.
pub(super) struct Client<'a> {
    pub(super) account: &'a Account,
    pub(super) spec: &'a OAuthSpec,
    pub(super) http: Http,
    client_secret: Option<String>,
}

impl<'a> Client<'a> {
    /// The client of an account with `oauth = {...}`.
    pub(super) fn new(account: &'a Account) -> Result<Client<'a>, OAuthError> {
        let Credential::OAuth(spec) = &account.credential else {
            return Err(OAuthError::Config(format!(
                "account {:?} has no oauth = {{...}}; `popsync auth` works on accounts that have one",
                account.name
            )));
        };
        let client_secret = spec
            .client_secret
            .as_ref()
            .map(|s| s.resolve(account.command_timeout))
            .transpose()
            .map_err(OAuthError::ClientSecret)?;
        Ok(Client {
            account,
            spec,
            http: Http::new(
                spec.ca_file.as_deref(),
                account.timeout,
                account.proxy.as_ref(),
            )?,
            client_secret,
        })
    }

    pub(super) fn token_file(&self, state_dir: &Path) -> TokenFile {
        TokenFile::new(
            state_dir,
            &self.spec.token_endpoint,
            &self.spec.client_id,
            &self.account.user,
        )
    }

    /// `client_id`, and `client_secret` when there is one, for a form.
    pub(super) fn identify<'f>(&'f self, form: &mut Vec<(&'f str, &'f str)>) {
        form.push(("client_id", &self.spec.client_id));
        if let Some(s) = &self.client_secret {
            form.push(("client_secret", s));
        }
    }

    pub(super) fn scope(&self) -> String {
        self.spec.scopes.join(" ")
    }

    /// POST to the token endpoint; a token answer as `Tokens` (keeping
    /// `previous`'s refresh token and scopes where the answer has none).
    pub(super) fn token_request(
        &self,
        form: &[(&str, &str)],
        previous: Option<&Tokens>,
    ) -> Result<Result<Tokens, ErrorReply>, OAuthError> {
        let endpoint = &self.spec.token_endpoint;
        let answer: TokenAnswer = match self.http.post_form(endpoint, form)? {
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        Ok(Ok(tokens_from(
            answer,
            previous,
            self.spec,
            &self.account.user,
            now(),
        )
        .map_err(|detail| OAuthError::BadResponse {
            endpoint: endpoint.clone(),
            detail: detail.to_owned(),
        })?))
    }

    /// An error answer to a login (a device code or an authorization code
    /// exchanged for tokens), as the error a user sees: `invalid_grant` here
    /// is about the code, not a stored refresh token.
    pub(super) fn refused_login(&self, endpoint: &str, e: ErrorReply) -> OAuthError {
        match e.error.as_str() {
            "invalid_grant" => OAuthError::CodeRefused {
                account: self.account.name.clone(),
                endpoint: endpoint.to_owned(),
                description: e.description,
            },
            _ => self.refused(endpoint, e),
        }
    }

    /// Turn an error answer to a refresh into the error a user sees.
    pub(super) fn refused(&self, endpoint: &str, e: ErrorReply) -> OAuthError {
        match e.error.as_str() {
            "invalid_grant" => OAuthError::Revoked {
                account: self.account.name.clone(),
                endpoint: endpoint.to_owned(),
                description: e.description,
            },
            "access_denied" => OAuthError::Denied {
                endpoint: endpoint.to_owned(),
                description: e.description,
            },
            _ => OAuthError::Refused {
                endpoint: endpoint.to_owned(),
                error: e.error,
                description: e.description,
            },
        }
    }
}

/// A token endpoint's success answer (RFC 6749 5.1).
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

/// The tokens a token answer gives, keeping `previous`'s refresh token and
/// scopes where the answer has none (a refresh token is rotated only when a
/// new one comes); what is wrong with the answer otherwise.
fn tokens_from(
    answer: TokenAnswer,
    previous: Option<&Tokens>,
    spec: &OAuthSpec,
    user: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Tokens, &'static str> {
    // The token goes into a SASL line: nothing that could break it.
    if answer.access_token.is_empty()
        || answer
            .access_token
            .chars()
            .any(|c| c.is_control() || c == ' ')
    {
        return Err("the access_token is empty or holds spaces or control characters");
    }
    if answer
        .token_type
        .as_deref()
        .is_some_and(|t| !t.eq_ignore_ascii_case("bearer"))
    {
        return Err("the token_type is not Bearer");
    }
    // RFC 6749 5.1: expires_in is RECOMMENDED; an hour is what the big
    // providers give. Some send it as a string.
    let lifetime = match &answer.expires_in {
        Some(serde_json::Value::Number(n)) => n.as_i64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .unwrap_or(3600)
    .clamp(0, 10 * 365 * 24 * 3600);
    let scopes = match &answer.scope {
        Some(s) => s.split_whitespace().map(str::to_owned).collect(),
        None => previous.map_or_else(|| spec.scopes.clone(), |p| p.scopes.clone()),
    };
    Ok(Tokens {
        access_token: answer.access_token,
        refresh_token: answer
            .refresh_token
            .filter(|r| !r.is_empty())
            .or_else(|| previous.and_then(|p| p.refresh_token.clone())),
        expires_at: now.timestamp() + lifetime,
        scopes,
        token_endpoint: spec.token_endpoint.clone(),
        client_id: spec.client_id.clone(),
        user: user.to_owned(),
    })
}

/// The access token of an account with `oauth`, refreshed first when it has
/// less than five minutes left, or when it is `rejected` (the token the
/// server just refused). Blocking (HTTP, a lock wait): async callers go
/// through `command::blocking`.
pub fn access_token(
    account: &Account,
    state_dir: &Path,
    rejected: Option<&str>,
) -> Result<String, OAuthError> {
    let Credential::OAuth(spec) = &account.credential else {
        return Err(OAuthError::Config(format!(
            "account {:?} has no oauth = {{...}}",
            account.name
        )));
    };
    let file = TokenFile::new(
        state_dir,
        &spec.token_endpoint,
        &spec.client_id,
        &account.user,
    );
    let margin = chrono::Duration::minutes(MARGIN_MINUTES);
    // After a refusal, any other token that has not expired is a newer one
    // (another job refreshed it): try that rather than refreshing again.
    let usable = |t: &Tokens| match rejected {
        Some(r) => r != t.access_token && t.expires() > now(),
        None => !t.expiring(now(), margin),
    };
    let not_logged_in = || OAuthError::NotLoggedIn {
        account: account.name.clone(),
    };
    let seen = match file.load(&account.name)? {
        Some(t) if usable(&t) => return Ok(t.access_token),
        Some(t) => t.access_token,
        None => return Err(not_logged_in()),
    };
    let _lock = file.lock()?;
    // Another job or run may have refreshed while we waited for the lock:
    // its token is taken while it still works, even when the provider gives
    // lifetimes shorter than the margin, so that the token is refreshed once.
    let tokens = file.load(&account.name)?.ok_or_else(not_logged_in)?;
    let refreshed_meanwhile = tokens.access_token != seen
        && rejected.is_none_or(|r| r != tokens.access_token)
        && tokens.expires() > now();
    if usable(&tokens) || refreshed_meanwhile {
        return Ok(tokens.access_token);
    }
    let Some(refresh) = tokens.refresh_token.clone() else {
        return Err(OAuthError::Revoked {
            account: account.name.clone(),
            endpoint: spec.token_endpoint.clone(),
            description: "no refresh token is stored, and the access token has expired".into(),
        });
    };
    let client = Client::new(account)?;
    let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", &refresh)];
    client.identify(&mut form);
    let fresh = client
        .token_request(&form, Some(&tokens))?
        .map_err(|e| client.refused(&spec.token_endpoint, e))?;
    file.save(&fresh)?;
    Ok(fresh.access_token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> OAuthSpec {
        OAuthSpec {
            provider: crate::config::Provider::Custom,
            client_id: "c".into(),
            client_secret: None,
            scopes: vec!["asked".into()],
            authorization_endpoint: None,
            device_authorization_endpoint: None,
            token_endpoint: "https://t/token".into(),
            ca_file: None,
        }
    }

    fn answer(json: &str) -> TokenAnswer {
        serde_json::from_str(json).unwrap()
    }

    fn at(secs: i64) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn a_rotated_refresh_token_replaces_the_old_one_and_a_missing_one_keeps_it() {
        let first = tokens_from(
            answer(r#"{"access_token":"a1","token_type":"Bearer","expires_in":3600,"refresh_token":"r1","scope":"x y"}"#),
            None,
            &spec(),
            "u",
            at(1000),
        )
        .unwrap();
        assert_eq!(first.expires_at, 4600);
        assert_eq!(first.scopes, ["x", "y"]);
        let kept = tokens_from(
            answer(r#"{"access_token":"a2","token_type":"bearer","expires_in":"60"}"#),
            Some(&first),
            &spec(),
            "u",
            at(2000),
        )
        .unwrap();
        assert_eq!(kept.refresh_token.as_deref(), Some("r1"));
        assert_eq!(
            (kept.expires_at, kept.scopes.clone()),
            (2060, first.scopes.clone())
        );
        let rotated = tokens_from(
            answer(r#"{"access_token":"a3","refresh_token":"r2"}"#),
            Some(&kept),
            &spec(),
            "u",
            at(3000),
        )
        .unwrap();
        assert_eq!(rotated.refresh_token.as_deref(), Some("r2"));
        assert_eq!(rotated.expires_at, 3000 + 3600);
    }

    #[test]
    fn unusable_answers_are_refused() {
        for json in [
            r#"{"access_token":""}"#,
            r#"{"access_token":"a\r\nDELE 1"}"#,
            r#"{"access_token":"a","token_type":"mac"}"#,
        ] {
            assert!(
                tokens_from(answer(json), None, &spec(), "u", at(0)).is_err(),
                "{json}"
            );
        }
    }

    #[test]
    fn without_a_scope_in_the_answer_the_asked_ones_are_recorded() {
        let t = tokens_from(answer(r#"{"access_token":"a"}"#), None, &spec(), "u", at(0)).unwrap();
        assert_eq!(t.scopes, ["asked"]);
    }
}
