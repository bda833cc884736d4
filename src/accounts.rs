//! `popsync accounts`: one line (or JSON object) per configured account,
//! with every setting resolved, naming where the secret comes from but
//! never the secret itself.

use crate::config::{Account, Credential, SecretSource};

/// The line `accounts` prints for one account.
pub fn line(a: &Account, json: bool) -> String {
    let secret = match &a.credential {
        Credential::Secret(SecretSource::Password(_)) => "password (in the config)".to_owned(),
        Credential::Secret(SecretSource::File(p)) => format!("password_file {}", p.display()),
        Credential::Secret(SecretSource::Command(c)) => format!("password_command {c}"),
        Credential::OAuth(o) => format!("oauth {} (popsync auth login)", o.provider.as_str()),
    };
    let auth = if a.auth.is_empty() {
        "strongest offered".to_owned()
    } else {
        a.auth
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    if json {
        serde_json::json!({
            "account": a.name,
            "host": a.host,
            "port": a.port,
            "tls": a.tls.as_str(),
            "user": a.user,
            "secret": secret,
            "auth": auth,
            "deliver": a.deliver.describe(),
            "retention": a.retention.to_string(),
            "max_size": a.max_size,
            "filter": a.filter,
        })
        .to_string()
    } else {
        format!(
            "{}: {}@{}:{} tls={} auth={} secret={} deliver={} retention={}{}",
            a.name,
            a.user,
            a.host,
            a.port,
            a.tls.as_str(),
            auth,
            secret,
            a.deliver.describe(),
            a.retention,
            a.max_size
                .map(|m| format!(" max_size={m}"))
                .unwrap_or_default()
        )
    }
}
