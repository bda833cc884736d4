//! The HTTPS client of the OAuth2 endpoints: ureq (sync, small, rustls),
//! trusting what the POP3 side trusts (system roots plus `ca_file`), HTTPS
//! only, no redirects. A form POST comes back as the parsed success body or
//! the provider's OAuth2 error (RFC 6749 5.2); everything else becomes an
//! `OAuthError` with the exit code DESIGN.md gives it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use ureq::tls::{Certificate, RootCerts, TlsConfig};

use super::OAuthError;
use crate::config::Proxy;
use crate::sanitize::sanitize;

/// The most popsync reads of an endpoint's answer: token answers are small.
const MAX_BODY: u64 = 256 * 1024;

/// An OAuth2 error answer: `error` and `error_description`, sanitised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ErrorReply {
    pub(super) error: String,
    pub(super) description: String,
}

#[derive(Deserialize)]
struct RawError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

pub(super) struct Http {
    agent: ureq::Agent,
    /// The account's proxy as errors name it (`Proxy::describe`).
    proxy: Option<String>,
}

impl Http {
    /// A client trusting the system roots plus `ca_file`, going through
    /// the account's SOCKS5 `proxy` when it has one, as its POP3 and IMAP
    /// connections do.
    pub(super) fn new(
        ca_file: Option<&Path>,
        timeout: Duration,
        proxy: Option<&Proxy>,
    ) -> Result<Http, OAuthError> {
        let certs: Vec<Certificate<'static>> = crate::net::trust_anchor_certs(ca_file)
            .map_err(OAuthError::CaFile)?
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::Specific(Arc::new(certs)))
            .build();
        let mut config = ureq::Agent::config_builder();
        if let Some(proxy) = proxy {
            config = config.proxy(Some(socks(proxy)?));
        }
        let agent = config
            .tls_config(tls)
            .https_only(true)
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .user_agent(concat!("popsync/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(Http {
            agent,
            proxy: proxy.map(Proxy::describe),
        })
    }

    /// POST `form` to `url`; the success body as `T`, or the OAuth2 error.
    pub(super) fn post_form<T: DeserializeOwned>(
        &self,
        url: &str,
        form: &[(&str, &str)],
    ) -> Result<Result<T, ErrorReply>, OAuthError> {
        let endpoint = match &self.proxy {
            Some(proxy) => format!("{url} through proxy {proxy}"),
            None => url.to_owned(),
        };
        let mut response = self
            .agent
            .post(url)
            .header("Accept", "application/json")
            .send_form(form.iter().copied())
            .map_err(|e| classify(&endpoint, e))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| classify(&endpoint, e))?;
        if status >= 500 {
            return Err(OAuthError::ServerError { endpoint, status });
        }
        let bad = |detail: String| OAuthError::BadResponse {
            endpoint: endpoint.clone(),
            detail,
        };
        if (200..300).contains(&status) {
            return serde_json::from_str(&body).map(Ok).map_err(|e| {
                bad(format!(
                    "HTTP {status} with a body that is not the expected JSON ({e})"
                ))
            });
        }
        match serde_json::from_str::<RawError>(&body) {
            Ok(e) => Ok(Err(ErrorReply {
                error: sanitize(e.error.as_bytes(), 80),
                description: sanitize(e.error_description.unwrap_or_default().as_bytes(), 300),
            })),
            // 429 without an OAuth2 error: come back later, as after a 5xx.
            Err(_) if status == 429 => Err(OAuthError::ServerError { endpoint, status }),
            Err(_) => Err(bad(format!(
                "HTTP {status} without an OAuth2 error: {}",
                sanitize(body.as_bytes(), 200)
            ))),
        }
    }
}

/// The account's proxy for ureq: `socks5h://` lets the proxy resolve the
/// endpoint's name, as for the mail servers.
fn socks(proxy: &Proxy) -> Result<ureq::Proxy, OAuthError> {
    let protocol = if proxy.remote_dns {
        ureq::ProxyProtocol::Socks5h
    } else {
        ureq::ProxyProtocol::Socks5
    };
    let mut builder = ureq::Proxy::builder(protocol)
        .host(&proxy.host)
        .port(proxy.port);
    if let Some((user, password)) = &proxy.auth {
        builder = builder.username(user).password(password);
    }
    builder.build().map_err(|e| OAuthError::Unreachable {
        endpoint: format!("proxy {}", proxy.describe()),
        detail: e.to_string(),
    })
}

/// Transport failures: certificate problems are 77, everything else about
/// reaching the endpoint is temporary (75).
fn classify(endpoint: &str, e: ureq::Error) -> OAuthError {
    let endpoint = endpoint.to_owned();
    let tls_problem = match &e {
        ureq::Error::Rustls(r) => Some(r.to_string()),
        ureq::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>())
            .map(|r| r.to_string()),
        _ => None,
    };
    match tls_problem {
        Some(detail) if detail.contains("certificate") => {
            OAuthError::Certificate { endpoint, detail }
        }
        _ => OAuthError::Unreachable {
            endpoint,
            detail: e.to_string(),
        },
    }
}
