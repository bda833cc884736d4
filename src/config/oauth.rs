//! `oauth = {...}`: where an account gets its OAuth2 access token when
//! popsync obtains and refreshes it itself (`popsync auth login`), with the
//! Google and Microsoft presets resolved here, once, so that `oauth` only
//! ever sees complete endpoints.

use std::path::PathBuf;

use serde::Deserialize;

use super::SecretSource;

/// Which provider's endpoints and scopes to start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Google,
    Microsoft,
    /// Every endpoint named in the table.
    Custom,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Google => "google",
            Provider::Microsoft => "microsoft",
            Provider::Custom => "custom",
        }
    }
}

/// An account's OAuth2 client, every endpoint resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthSpec {
    pub provider: Provider,
    pub client_id: String,
    /// `client_secret` or `client_secret_command`, for providers that want one.
    pub client_secret: Option<SecretSource>,
    /// Sent space-separated; empty: no `scope` parameter.
    pub scopes: Vec<String>,
    /// For `auth login --browser`.
    pub authorization_endpoint: Option<String>,
    /// For `auth login` (the device flow).
    pub device_authorization_endpoint: Option<String>,
    pub token_endpoint: String,
    /// Extra trust anchors for the endpoints; default: the account's `ca_file`.
    pub ca_file: Option<PathBuf>,
}

/// The oauth table as written.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOAuth {
    provider: Provider,
    client_id: String,
    client_secret: Option<String>,
    client_secret_command: Option<String>,
    tenant: Option<String>,
    scopes: Option<Vec<String>>,
    authorization_endpoint: Option<String>,
    device_authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    ca_file: Option<String>,
}

impl RawOAuth {
    /// A client secret written in the file: like a password, it makes the
    /// file's read permissions matter.
    pub(super) fn holds_client_secret(&self) -> bool {
        self.client_secret.is_some()
    }
}

/// What is wrong with an oauth table: the key (under `oauth`) and why.
pub(super) type Invalid = (&'static str, String);

/// A provider's endpoints and scopes.
struct Preset {
    authorization: String,
    device: String,
    token: String,
    scopes: &'static [&'static str],
}

fn preset(provider: Provider, tenant: &str) -> Option<Preset> {
    match provider {
        Provider::Google => Some(Preset {
            authorization: "https://accounts.google.com/o/oauth2/v2/auth".into(),
            device: "https://oauth2.googleapis.com/device/code".into(),
            token: "https://oauth2.googleapis.com/token".into(),
            scopes: &["https://mail.google.com/"],
        }),
        Provider::Microsoft => {
            let base = format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0");
            Some(Preset {
                authorization: format!("{base}/authorize"),
                device: format!("{base}/devicecode"),
                token: format!("{base}/token"),
                scopes: &[
                    "https://outlook.office.com/POP.AccessAsUser.All",
                    "offline_access",
                ],
            })
        }
        Provider::Custom => None,
    }
}

/// An endpoint popsync may send a client secret or a refresh token to: HTTPS
/// only, so that they never travel in clear text (DESIGN.md promise 3).
fn check_endpoint(key: &'static str, url: &str) -> Result<(), Invalid> {
    let rest = url
        .get(..8)
        .filter(|s| s.eq_ignore_ascii_case("https://"))
        .map(|_| &url[8..]);
    let Some(rest) = rest else {
        return Err((
            key,
            format!("{url:?} is not an https:// URL; popsync sends tokens only over HTTPS"),
        ));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err((key, format!("{url:?} is not a valid https:// URL")));
    }
    Ok(())
}

impl RawOAuth {
    /// Check and resolve the table; `expand` expands `~` and `$VARS` in a
    /// path; `account_ca` is the account's own `ca_file`.
    pub(super) fn resolve(
        &self,
        expand: impl Fn(&str, &'static str) -> Result<PathBuf, Invalid>,
        account_ca: Option<&PathBuf>,
    ) -> Result<OAuthSpec, Invalid> {
        let clean = |s: &str| !s.is_empty() && !s.chars().any(|c| c.is_control());
        if !clean(&self.client_id) {
            return Err((
                "client_id",
                "client_id must not be empty or contain control characters; copy it from the provider's app registration".into(),
            ));
        }
        if self.tenant.is_some() && self.provider != Provider::Microsoft {
            return Err((
                "tenant",
                "tenant is only for provider = \"microsoft\"; remove it".into(),
            ));
        }
        let tenant = self.tenant.as_deref().unwrap_or("common");
        if !tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
            || tenant.is_empty()
        {
            return Err((
                "tenant",
                format!(
                    "{tenant:?} is not a tenant: use \"common\", \"organizations\", \"consumers\", a domain or a directory (tenant) ID"
                ),
            ));
        }
        let client_secret = match (&self.client_secret, &self.client_secret_command) {
            (Some(s), None) => Some(SecretSource::Password(s.clone())),
            (None, Some(c)) => Some(SecretSource::Command(c.clone())),
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err((
                    "client_secret_command",
                    "both client_secret and client_secret_command are set; keep one".into(),
                ));
            }
        };
        let preset = preset(self.provider, tenant);
        let token_endpoint = match (&self.token_endpoint, &preset) {
            (Some(t), _) => t.clone(),
            (None, Some(p)) => p.token.clone(),
            (None, None) => {
                return Err((
                    "token_endpoint",
                    "provider = \"custom\" needs token_endpoint = \"https://...\" (and device_authorization_endpoint for `auth login`, authorization_endpoint for `auth login --browser`)".into(),
                ));
            }
        };
        let authorization_endpoint = self
            .authorization_endpoint
            .clone()
            .or_else(|| preset.as_ref().map(|p| p.authorization.clone()));
        let device_authorization_endpoint = self
            .device_authorization_endpoint
            .clone()
            .or_else(|| preset.as_ref().map(|p| p.device.clone()));
        check_endpoint("token_endpoint", &token_endpoint)?;
        if let Some(u) = &authorization_endpoint {
            check_endpoint("authorization_endpoint", u)?;
        }
        if let Some(u) = &device_authorization_endpoint {
            check_endpoint("device_authorization_endpoint", u)?;
        }
        let scopes = match &self.scopes {
            Some(s) => s.clone(),
            None => preset
                .as_ref()
                .map(|p| p.scopes.iter().map(|s| s.to_string()).collect())
                .unwrap_or_default(),
        };
        if let Some(bad) = scopes
            .iter()
            .find(|s| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err((
                "scopes",
                format!("{bad:?} is not a scope: one scope per string, without spaces"),
            ));
        }
        let ca_file = match &self.ca_file {
            Some(p) => Some(expand(p, "ca_file")?),
            None => account_ca.cloned(),
        };
        Ok(OAuthSpec {
            provider: self.provider,
            client_id: self.client_id.clone(),
            client_secret,
            scopes,
            authorization_endpoint,
            device_authorization_endpoint,
            token_endpoint,
            ca_file,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> RawOAuth {
        toml::from_str(text).unwrap()
    }

    fn resolve(text: &str) -> Result<OAuthSpec, Invalid> {
        raw(text).resolve(|s, _| Ok(PathBuf::from(s)), None)
    }

    #[test]
    fn microsoft_preset_uses_the_tenant_and_pop_scopes() {
        let s = resolve("provider = \"microsoft\"\nclient_id = \"c\"\ntenant = \"contoso.com\"")
            .unwrap();
        assert_eq!(
            s.token_endpoint,
            "https://login.microsoftonline.com/contoso.com/oauth2/v2.0/token"
        );
        assert_eq!(
            s.device_authorization_endpoint.as_deref(),
            Some("https://login.microsoftonline.com/contoso.com/oauth2/v2.0/devicecode")
        );
        assert_eq!(
            s.scopes,
            [
                "https://outlook.office.com/POP.AccessAsUser.All",
                "offline_access"
            ]
        );
        let s = resolve("provider = \"microsoft\"\nclient_id = \"c\"").unwrap();
        assert!(
            s.token_endpoint.contains("/common/"),
            "{}",
            s.token_endpoint
        );
    }

    #[test]
    fn google_preset_and_overrides() {
        let s = resolve(
            "provider = \"google\"\nclient_id = \"c\"\nclient_secret = \"s\"\nscopes = [\"x\"]\ntoken_endpoint = \"https://127.0.0.1:8443/t\"",
        )
        .unwrap();
        assert_eq!(s.token_endpoint, "https://127.0.0.1:8443/t");
        assert_eq!(
            s.authorization_endpoint.as_deref(),
            Some("https://accounts.google.com/o/oauth2/v2/auth")
        );
        assert_eq!(s.scopes, ["x"]);
        assert_eq!(s.client_secret, Some(SecretSource::Password("s".into())));
    }

    #[test]
    fn custom_needs_a_token_endpoint() {
        let (key, why) = resolve("provider = \"custom\"\nclient_id = \"c\"").unwrap_err();
        assert_eq!(key, "token_endpoint");
        assert!(why.contains("custom"), "{why}");
    }

    #[test]
    fn http_endpoints_are_refused() {
        for key in [
            "token_endpoint",
            "authorization_endpoint",
            "device_authorization_endpoint",
        ] {
            let (k, why) = resolve(&format!(
                "provider = \"google\"\nclient_id = \"c\"\n{key} = \"http://127.0.0.1:80/x\""
            ))
            .unwrap_err();
            assert_eq!(k, key);
            assert!(why.contains("https://"), "{why}");
        }
    }

    #[test]
    fn tenant_only_for_microsoft_and_one_client_secret() {
        let (k, _) =
            resolve("provider = \"google\"\nclient_id = \"c\"\ntenant = \"t\"").unwrap_err();
        assert_eq!(k, "tenant");
        let (k, _) = resolve(
            "provider = \"google\"\nclient_id = \"c\"\nclient_secret = \"a\"\nclient_secret_command = \"b\"",
        )
        .unwrap_err();
        assert_eq!(k, "client_secret_command");
    }

    #[test]
    fn ca_file_defaults_to_the_accounts() {
        let ca = PathBuf::from("/ca.pem");
        let s = raw("provider = \"google\"\nclient_id = \"c\"")
            .resolve(|s, _| Ok(PathBuf::from(s)), Some(&ca))
            .unwrap();
        assert_eq!(s.ca_file, Some(ca));
    }
}
