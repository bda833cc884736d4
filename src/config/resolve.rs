//! From the raw file to settled accounts: each account's keys merged over
//! `[defaults]`, paths expanded, defaults filled in, and every rule that
//! spans keys checked (one secret source, TLS or `allow_plaintext`, ...),
//! with each error naming the line and key it is about. It also gathers what
//! in the file makes its permissions matter (`Sensitive`).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::permissions::Sensitive;
use super::raw::{RawDeliver, RawFile, RawSettings, line_of};
use super::{
    Account, AuthMech, Config, ConfigError, Credential, Delivery, Parsed, Retention, SecretSource,
    TlsMode,
};

/// The file's name and text, to name the line and key of an error.
pub(super) struct Resolver<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

/// Take the account's value, else the default's.
fn pick<T: Clone>(acct: &Option<Spanned<T>>, dflt: &Option<Spanned<T>>) -> Option<Spanned<T>> {
    acct.clone().or_else(|| dflt.clone())
}

impl Resolver<'_> {
    fn error(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            line: line_of(self.text, span.start),
            key: Some(key.to_owned()),
            message: message.into(),
        }
    }

    /// Settle the raw file: `[defaults]` merged into each account, paths
    /// expanded, every value checked.
    pub(super) fn resolve(&self, raw: RawFile) -> Result<Parsed, ConfigError> {
        let dflt = raw.defaults.unwrap_or_default();
        let mut sensitive = Sensitive::of(&dflt);
        let state_dir = match &dflt.state_dir {
            Some(s) => self.expand(s, "state_dir")?,
            None => default_state_dir().ok_or_else(|| ConfigError::Invalid {
                path: self.path.to_owned(),
                line: 1,
                key: Some("state_dir".into()),
                message: "neither $XDG_STATE_HOME nor $HOME is set; set state_dir in [defaults]"
                    .into(),
            })?,
        };
        let mut accounts = Vec::with_capacity(raw.accounts.len());
        for (name, acct) in &raw.accounts {
            sensitive = sensitive.or(Sensitive::of(acct.get_ref()));
            accounts.push(self.account(name, acct, &dflt)?);
        }
        Ok(Parsed {
            config: Config {
                path: self.path.to_owned(),
                state_dir,
                accounts,
            },
            sensitive,
        })
    }

    fn account(
        &self,
        name: &str,
        spanned: &Spanned<RawSettings>,
        d: &RawSettings,
    ) -> Result<Account, ConfigError> {
        let a = spanned.get_ref();
        let header = spanned.span();
        let missing = |key: &str, hint: &str| {
            self.error(
                header.clone(),
                key,
                format!("account {name:?} has no `{key}`; {hint}"),
            )
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
        {
            return Err(self.error(
                header.clone(),
                "accounts",
                format!(
                    "account name {name:?} may only hold letters, digits, '-', '_', '.' and '@'"
                ),
            ));
        }
        if let Some(s) = &a.state_dir {
            return Err(self.error(
                s.span(),
                "state_dir",
                "state_dir belongs in [defaults]: one seen-store serves every account",
            ));
        }

        let host = pick(&a.host, &d.host)
            .ok_or_else(|| missing("host", "add host = \"pop.example.com\""))?;
        if host.get_ref().trim().is_empty() || host.get_ref().contains(char::is_whitespace) {
            return Err(self.error(host.span(), "host", "host must be a host name or address"));
        }
        let user = pick(&a.user, &d.user)
            .ok_or_else(|| missing("user", "add user = \"you@example.com\""))?;
        if user.get_ref().is_empty() || user.get_ref().contains(['\r', '\n', '\0']) {
            return Err(self.error(
                user.span(),
                "user",
                "user must not be empty or contain CR, LF or NUL characters",
            ));
        }
        let tls = pick(&a.tls, &d.tls);
        let tls_mode = tls.as_ref().map_or(TlsMode::Implicit, |t| *t.get_ref());
        let allow_plaintext = pick(&a.allow_plaintext, &d.allow_plaintext)
            .map(|s| *s.get_ref())
            .unwrap_or(false);
        if tls_mode == TlsMode::None && !allow_plaintext {
            let span = tls.as_ref().map_or(header.clone(), |t| t.span());
            return Err(self.error(
                span,
                "allow_plaintext",
                format!(
                    "account {name:?} has tls = \"none\", which sends the password in clear text; add allow_plaintext = true to accept that, or use tls = \"implicit\" or \"starttls\""
                ),
            ));
        }

        let secrets: Vec<(&str, Spanned<String>)> = [
            ("password", pick(&a.password, &d.password)),
            (
                "password_command",
                pick(&a.password_command, &d.password_command),
            ),
            ("password_file", pick(&a.password_file, &d.password_file)),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        let oauth = pick(&a.oauth, &d.oauth);
        let secret = match (secrets.as_slice(), &oauth) {
            ([], Some(_)) => None,
            ([(key, value), ..], Some(_)) => {
                return Err(self.error(
                    value.span(),
                    key,
                    format!(
                        "account {name:?} has oauth = {{...}}, which supplies the access token; remove {key}"
                    ),
                ));
            }
            ([], None) => {
                return Err(missing(
                    "password",
                    "add password_command = \"pass show mail/NAME\", password_file = \"...\" or password = \"...\"",
                ));
            }
            ([(key, value)], None) => Some(match *key {
                "password" => SecretSource::Password(value.get_ref().clone()),
                "password_command" => SecretSource::Command(value.get_ref().clone()),
                _ => SecretSource::File(self.expand(value, key)?),
            }),
            ([_, (key, value), ..], None) => {
                return Err(self.error(
                    value.span(),
                    key,
                    format!(
                        "account {name:?} has more than one of password, password_command and password_file; keep one"
                    ),
                ));
            }
        };

        let deliver_raw = pick(&a.deliver, &d.deliver).ok_or_else(|| {
            missing(
                "deliver",
                "add deliver = { maildir = \"~/Mail/NAME\" } (or mbox = \"...\", mda = \"procmail\", or imap = { host = \"...\", ... })",
            )
        })?;
        let deliver = match deliver_raw.get_ref() {
            RawDeliver::Maildir(p) => {
                Delivery::Maildir(self.expand_str(p, &deliver_raw, "deliver")?)
            }
            RawDeliver::Mbox(p) => Delivery::Mbox(self.expand_str(p, &deliver_raw, "deliver")?),
            RawDeliver::Mda(c) if c.trim().is_empty() => {
                return Err(self.error(deliver_raw.span(), "deliver", "mda command is empty"));
            }
            RawDeliver::Mda(c) => Delivery::Mda(c.clone()),
            RawDeliver::Imap(raw) => {
                let expand = |s: &str, key: &'static str| {
                    self.expand_str(s, &deliver_raw, key)
                        .map_err(|e| (key, e.to_string()))
                };
                let spec = raw.resolve(expand).map_err(|(key, why)| {
                    self.error(deliver_raw.span(), &format!("deliver.imap.{key}"), why)
                })?;
                Delivery::Imap(Box::new(spec))
            }
        };

        let auth = pick(&a.auth, &d.auth);
        if let Some(list) = &auth
            && list.get_ref().is_empty()
        {
            return Err(self.error(
                list.span(),
                "auth",
                "auth is an empty list; remove it to use the strongest mechanism the server offers",
            ));
        }

        let credential = match (secret, oauth) {
            (Some(secret), _) => Credential::Secret(secret),
            (None, Some(raw)) => {
                let oauth_only = auth.as_ref().is_some_and(|list| {
                    list.get_ref()
                        .iter()
                        .all(|m| matches!(m, AuthMech::Xoauth2 | AuthMech::OauthBearer))
                });
                if !oauth_only {
                    return Err(self.error(
                        auth.as_ref().map_or(raw.span(), |l| l.span()),
                        "auth",
                        format!(
                            "account {name:?} has oauth = {{...}}, which logs in with an access token: set auth = [\"xoauth2\"] (Microsoft, Google) or [\"oauthbearer\"]"
                        ),
                    ));
                }
                let ca = pick(&a.ca_file, &d.ca_file)
                    .map(|p| self.expand(&p, "ca_file"))
                    .transpose()?;
                let expand = |s: &str, key: &'static str| {
                    self.expand_str(s, &raw, key)
                        .map_err(|e| (key, e.to_string()))
                };
                let spec = raw
                    .get_ref()
                    .resolve(expand, ca.as_ref())
                    .map_err(|(key, why)| self.error(raw.span(), &format!("oauth.{key}"), why))?;
                Credential::OAuth(Box::new(spec))
            }
            // `secrets` was empty without oauth: refused above.
            (None, None) => {
                return Err(missing("password", "add password_command = \"...\""));
            }
        };

        let seconds = |v: Option<Spanned<u64>>, key: &str, default: u64| match v {
            Some(s) if *s.get_ref() == 0 => {
                Err(self.error(s.span(), key, format!("{key} must be at least 1 second")))
            }
            Some(s) => Ok(Duration::from_secs(*s.get_ref())),
            None => Ok(Duration::from_secs(default)),
        };

        let ca_file = match pick(&a.ca_file, &d.ca_file) {
            Some(p) => Some(self.expand(&p, "ca_file")?),
            None => None,
        };
        let port = pick(&a.port, &d.port)
            .map(|p| *p.get_ref())
            .unwrap_or_else(|| tls_mode.default_port());
        if port == 0 {
            return Err(self.error(header.clone(), "port", "port 0 is not a valid port"));
        }

        let proxy = match pick(&a.proxy, &d.proxy) {
            Some(p) => Some(
                super::Proxy::parse(p.get_ref())
                    .map_err(|why| self.error(p.span(), "proxy", why))?,
            ),
            None => None,
        };

        let mut deliver = deliver;
        if let Delivery::Imap(spec) = &mut deliver {
            spec.proxy.clone_from(&proxy);
        }

        Ok(Account {
            name: name.to_owned(),
            host: host.into_inner(),
            port,
            tls: tls_mode,
            ca_file,
            tls_fingerprint: pick(&a.tls_fingerprint, &d.tls_fingerprint).map(|s| *s.get_ref()),
            user: user.into_inner(),
            credential,
            auth: auth.map(|s| s.into_inner()).unwrap_or_default(),
            deliver,
            retention: pick(&a.retention, &d.retention)
                .map_or(Retention::Forever, |s| *s.get_ref()),
            max_size: pick(&a.max_size, &d.max_size).map(|s| s.get_ref().0),
            received_header: pick(&a.received_header, &d.received_header)
                .is_none_or(|s| *s.get_ref()),
            filter: pick(&a.filter, &d.filter).map(|s| s.into_inner()),
            on_new_mail: pick(&a.on_new_mail, &d.on_new_mail).map(|s| s.into_inner()),
            on_new_mail_always: pick(&a.on_new_mail_always, &d.on_new_mail_always)
                .is_some_and(|s| *s.get_ref()),
            proxy,
            allow_plaintext,
            timeout: seconds(pick(&a.timeout, &d.timeout), "timeout", 60)?,
            command_timeout: seconds(
                pick(&a.command_timeout, &d.command_timeout),
                "command_timeout",
                300,
            )?,
        })
    }

    fn expand(&self, value: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
        self.expand_str(value.get_ref(), value, key)
    }

    /// `~` and `$VARS` in paths; an unset variable is an error, not an empty string.
    fn expand_str<T>(&self, s: &str, at: &Spanned<T>, key: &str) -> Result<PathBuf, ConfigError> {
        if s.trim().is_empty() {
            return Err(self.error(at.span(), key, "path is empty"));
        }
        shellexpand::full(s)
            .map(|p| PathBuf::from(p.as_ref()))
            .map_err(|e| self.error(at.span(), key, format!("cannot expand {s:?}: {e}")))
    }
}

fn default_state_dir() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    env("XDG_STATE_HOME")
        .map(|x| PathBuf::from(x).join("popsync"))
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".local/state/popsync")))
}
