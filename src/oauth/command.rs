//! `popsync auth login|status|logout`: what `main` calls. Lines for stdout
//! come back as strings; the login's instructions go to stderr at once.

use std::path::Path;

use super::refresh::Client;
use super::store::TokenFile;
use super::{OAuthError, device, loopback, rfc3339};
use crate::config::{Account, Credential, OAuthSpec};

fn spec(account: &Account) -> Result<&OAuthSpec, OAuthError> {
    match &account.credential {
        Credential::OAuth(spec) => Ok(spec),
        Credential::Secret(_) => Err(OAuthError::Config(format!(
            "account {:?} has no oauth = {{...}}; add oauth = {{ provider = \"google\" | \"microsoft\" | \"custom\", client_id = \"...\" }} and auth = [\"xoauth2\"] to it",
            account.name
        ))),
    }
}

fn token_file(account: &Account, state_dir: &Path) -> Result<TokenFile, OAuthError> {
    let spec = spec(account)?;
    Ok(TokenFile::new(
        state_dir,
        &spec.token_endpoint,
        &spec.client_id,
        &account.user,
    ))
}

/// Log in (the device flow, or with `browser` the code flow with PKCE) and
/// store the tokens; the line to print on success. `tell` shows the person
/// what to open.
pub fn login(
    account: &Account,
    state_dir: &Path,
    browser: bool,
    tell: &dyn Fn(&str),
) -> Result<String, OAuthError> {
    let client = Client::new(account)?;
    let tokens = if browser {
        loopback::login(&client, tell)?
    } else {
        device::login(&client, tell)?
    };
    let file = client.token_file(state_dir);
    // Not in the middle of a refresh by a running fetch.
    let _lock = file.lock()?;
    file.save(&tokens)?;
    Ok(format!(
        "{}: logged in (expires at {})",
        account.name,
        rfc3339(tokens.expires())
    ))
}

/// One line (or JSON object) per account: tokens stored or not, the access
/// token's expiry, the scopes, and whether a refresh token is stored. Never
/// a token.
pub fn status(account: &Account, state_dir: &Path, json: bool) -> Result<String, OAuthError> {
    let tokens = token_file(account, state_dir)?.load(&account.name)?;
    if json {
        return Ok(serde_json::json!({
            "account": account.name,
            "logged_in": tokens.is_some(),
            "expires_at": tokens.as_ref().map(|t| rfc3339(t.expires())),
            "scopes": tokens.as_ref().map(|t| t.scopes.clone()).unwrap_or_default(),
            "has_refresh_token": tokens.as_ref().is_some_and(|t| t.refresh_token.is_some()),
        })
        .to_string());
    }
    Ok(match tokens {
        None => format!(
            "{}: not logged in; run `popsync auth login {}`",
            account.name, account.name
        ),
        Some(t) => format!(
            "{}: logged in; access token expires at {}; scopes: {}; refresh token: {}",
            account.name,
            rfc3339(t.expires()),
            if t.scopes.is_empty() {
                "(none)".to_owned()
            } else {
                t.scopes.join(" ")
            },
            if t.refresh_token.is_some() {
                "stored"
            } else {
                "none"
            }
        ),
    })
}

/// Remove the account's tokens; the line to print.
pub fn logout(account: &Account, state_dir: &Path) -> Result<String, OAuthError> {
    let file = token_file(account, state_dir)?;
    let _lock = file.lock()?;
    Ok(if file.remove()? {
        format!("{}: logged out (tokens removed)", account.name)
    } else {
        format!("{}: no tokens were stored", account.name)
    })
}
