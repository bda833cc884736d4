//! Reading the TOML config (DESIGN.md "Config") into settled, typed accounts.
//!
//! The raw file is deserialised with spans kept on every value, so that any
//! error — a syntax error, an unknown key, a bad value, a missing key found only
//! after `[defaults]` are merged — names the file, the line and the key. After
//! `load` nothing else in popsync looks at the raw TOML.
//!
//! This file holds the settled types and the ways in (`default_path`, `load`,
//! `parse_str`). The steps live beside it: `raw` is the file as written,
//! `resolve` settles it into accounts, `permissions` says whether the file can
//! be trusted with what it holds; `values` and `secret` are the typed values
//! of single keys.

mod imap;
mod oauth;
mod permissions;
mod proxy;
mod raw;
mod resolve;
mod secret;
mod values;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use imap::{ImapAuth, ImapSpec};
pub use oauth::{OAuthSpec, Provider};
pub use permissions::Exposure;
pub use proxy::Proxy;
pub use secret::{SecretError, SecretSource};
pub use values::{AuthMech, ByteSize, Fingerprint, Retention, TlsMode};

use crate::exit::ExitCode;
use permissions::{Sensitive, check_permissions};
use raw::{RawFile, key_on_line, line_of};
use resolve::Resolver;

/// A config that could not be loaded. Each variant says which file, and where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "config file {} not found; create it (see `man popsync`) or pass --config FILE",
        path.display()
    )]
    NotFound { path: PathBuf },
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}, line {line}{}: {message}", path.display(), key_part(key))]
    Invalid {
        path: PathBuf,
        line: usize,
        key: Option<String>,
        message: String,
    },
    #[error(
        "{} holds a password (or a client_secret, or a proxy password) but is readable by others (mode {mode:04o}); run `chmod 600 {}`, or take it from a command (password_command, client_secret_command)",
        path.display(), path.display()
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },
    #[error(
        "{} {}, and it names commands popsync runs or the secret it sends: whoever can change it decides those; {}",
        path.display(), exposure.problem(), exposure.fix(path)
    )]
    Untrusted { path: PathBuf, exposure: Exposure },
    #[error("no config path: set --config, $POPSYNC_CONFIG, $XDG_CONFIG_HOME or $HOME")]
    NoPath,
}

fn key_part(key: &Option<String>) -> String {
    key.as_ref()
        .map(|k| format!(", key `{k}`"))
        .unwrap_or_default()
}

impl ConfigError {
    /// DESIGN.md: a missing config is 66, anything else about it 78.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            ConfigError::NotFound { .. } => ExitCode::NoInput,
            _ => ExitCode::Config,
        }
    }
}

/// Where delivered mail goes (`deliver = {...}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Maildir(PathBuf),
    Mbox(PathBuf),
    /// A shell command run with `/bin/sh -c`, the message on stdin.
    Mda(String),
    /// APPEND into a mailbox on an IMAP server.
    Imap(Box<ImapSpec>),
}

impl Delivery {
    /// Short human description, for `accounts` and messages.
    pub fn describe(&self) -> String {
        match self {
            Delivery::Maildir(p) => format!("maildir {}", p.display()),
            Delivery::Mbox(p) => format!("mbox {}", p.display()),
            Delivery::Mda(c) => format!("mda {c}"),
            // Never the secret.
            Delivery::Imap(i) => format!("imap {}@{} mailbox {}", i.user, i.server(), i.mailbox),
        }
    }
}

/// Where an account's login secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// `password`, `password_file` or `password_command` (for XOAUTH2 and
    /// OAUTHBEARER: a token helper's access token).
    Secret(SecretSource),
    /// `oauth = {...}`: the access token popsync stores and refreshes itself.
    OAuth(Box<OAuthSpec>),
}

/// One account with every setting resolved (defaults merged, paths expanded).
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub ca_file: Option<PathBuf>,
    pub tls_fingerprint: Option<Fingerprint>,
    pub user: String,
    pub credential: Credential,
    /// Mechanisms to try, in order; empty means "strongest the server offers".
    pub auth: Vec<AuthMech>,
    pub deliver: Delivery,
    pub retention: Retention,
    pub max_size: Option<u64>,
    pub received_header: bool,
    pub filter: Option<String>,
    /// Run after a run that delivered mail (or after every run, with
    /// `on_new_mail_always`).
    pub on_new_mail: Option<String>,
    pub on_new_mail_always: bool,
    /// The SOCKS5 proxy the POP3 connection goes through.
    pub proxy: Option<Proxy>,
    pub allow_plaintext: bool,
    pub timeout: Duration,
    pub command_timeout: Duration,
}

impl Account {
    /// `auth` as the session's mechanisms, in the configured order.
    pub fn mechanisms(&self) -> Vec<crate::pop3::auth::Mechanism> {
        self.auth.iter().map(|&m| m.into()).collect()
    }
}

/// The whole settled config.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub state_dir: PathBuf,
    /// In file order: exit codes are merged in this order.
    pub accounts: Vec<Account>,
}

/// A command named an account the config does not have.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("no account {name:?} in {}; accounts there: {}", path.display(), if known.is_empty() { "(none)".to_owned() } else { known.join(", ") })]
pub struct UnknownAccount {
    pub name: String,
    pub path: PathBuf,
    /// The accounts the config has, in file order.
    pub known: Vec<String>,
}

impl Config {
    /// The accounts a command selected: all of them, or the named ones in the
    /// order given. An unknown name is an error listing the known ones.
    pub fn select(&self, names: &[String], all: bool) -> Result<Vec<&Account>, UnknownAccount> {
        if all {
            return Ok(self.accounts.iter().collect());
        }
        names
            .iter()
            .map(|n| {
                self.accounts
                    .iter()
                    .find(|a| &a.name == n)
                    .ok_or_else(|| UnknownAccount {
                        name: n.clone(),
                        path: self.path.clone(),
                        known: self.accounts.iter().map(|a| a.name.clone()).collect(),
                    })
            })
            .collect()
    }
}

/// The config path: `--config`, else `$POPSYNC_CONFIG`, else
/// `$XDG_CONFIG_HOME/popsync/config.toml`, else `~/.config/popsync/config.toml`.
pub fn default_path(explicit: Option<&Path>) -> Result<PathBuf, ConfigError> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(p) = env("POPSYNC_CONFIG") {
        return Ok(PathBuf::from(p));
    }
    if let Some(x) = env("XDG_CONFIG_HOME") {
        return Ok(PathBuf::from(x).join("popsync/config.toml"));
    }
    env("HOME")
        .map(|h| PathBuf::from(h).join(".config/popsync/config.toml"))
        .ok_or(ConfigError::NoPath)
}

/// Read, check and resolve the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let read_error = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ConfigError::NotFound {
                path: path.to_owned(),
            }
        } else {
            ConfigError::Read {
                path: path.to_owned(),
                source,
            }
        }
    };
    // The permissions checked are those of the file read, not of whatever
    // the name points to a moment later.
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(read_error)?;
    let parsed = parse(path, &text)?;
    check_permissions(path, &meta, parsed.sensitive)?;
    Ok(parsed.config)
}

/// Parse config text as `load` does after reading the file, without the
/// permission check; `path` only names the file in errors. For the fuzzer.
pub fn parse_str(path: &Path, text: &str) -> Result<Config, ConfigError> {
    parse(path, text).map(|parsed| parsed.config)
}

/// A parsed config, and what in it makes the file's permissions matter
/// (which `load` checks against the file it read).
#[derive(Debug)]
struct Parsed {
    config: Config,
    sensitive: Sensitive,
}

/// Parse config text; also says what in it makes the file's permissions
/// matter.
fn parse(path: &Path, text: &str) -> Result<Parsed, ConfigError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let line = line_of(text, span.start);
        ConfigError::Invalid {
            path: path.to_owned(),
            line,
            key: key_on_line(text, line),
            message: e.message().trim().to_owned(),
        }
    })?;
    Resolver { path, text }.resolve(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Config {
        match parse(Path::new("c.toml"), text) {
            Ok(parsed) => parsed.config,
            Err(e) => panic!("{e}"),
        }
    }

    fn parse_err(text: &str) -> String {
        match parse(Path::new("c.toml"), text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    const GOOD: &str = r#"
[defaults]
state_dir = "/tmp/st"
retention = "14d"

[accounts.work]
host = "pop.example.com"
user = "me"
password = "pw"
deliver = { maildir = "/tmp/mail" }

[accounts.home]
host = "pop.home"
tls = "starttls"
user = "me"
password_command = "pass show x"
deliver = { mbox = "/tmp/m.mbox" }
retention = "forever"
max_size = "25MB"
"#;

    #[test]
    fn accounts_keep_file_order_and_inherit_defaults() {
        let c = parse_ok(GOOD);
        let names: Vec<_> = c.accounts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["work", "home"]);
        let work = &c.accounts[0];
        assert_eq!(work.port, 995);
        assert_eq!(work.retention, Retention::Days(14));
        assert!(work.received_header);
        let home = &c.accounts[1];
        assert_eq!(home.port, 110);
        assert_eq!(home.retention, Retention::Forever);
        assert_eq!(home.max_size, Some(25_000_000));
        assert_eq!(c.state_dir, PathBuf::from("/tmp/st"));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = parse_err("[accounts.a]\nhost = \"h\"\nhots = \"x\"\n");
        assert!(e.starts_with("c.toml, line 3"), "{e}");
        assert!(e.contains("hots"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key_and_line() {
        let base = "[accounts.a]\nhost = \"h\"\nuser = \"u\"\npassword = \"p\"\ndeliver = { maildir = \"/m\" }\n";
        for (extra, key) in [
            ("retention = \"14x\"", "retention"),
            ("port = \"abc\"", "port"),
            ("tls = \"ssl\"", "tls"),
            ("max_size = \"9 parsecs\"", "max_size"),
            ("auth = [\"md4\"]", "auth"),
            ("tls_fingerprint = \"sha256:00\"", "tls_fingerprint"),
            ("timeout = 0", "timeout"),
        ] {
            let e = parse_err(&format!("{base}{extra}\n"));
            assert!(e.contains("line 6"), "{extra}: {e}");
            assert!(e.contains(key), "{extra}: {e}");
        }
    }

    #[test]
    fn missing_keys_are_named_at_the_account_header() {
        let e = parse_err(
            "[accounts.a]\nuser = \"u\"\npassword = \"p\"\ndeliver = { maildir = \"/m\" }\n",
        );
        assert!(e.contains("`host`") && e.contains("\"a\""), "{e}");
        let e =
            parse_err("[accounts.a]\nhost = \"h\"\nuser = \"u\"\ndeliver = { maildir = \"/m\" }\n");
        assert!(e.contains("password"), "{e}");
    }

    #[test]
    fn plaintext_requires_allow_plaintext() {
        let base = "[accounts.a]\nhost = \"h\"\nuser = \"u\"\npassword = \"p\"\ndeliver = { maildir = \"/m\" }\ntls = \"none\"\n";
        let e = parse_err(base);
        assert!(e.contains("allow_plaintext") && e.contains("line 6"), "{e}");
        let c = parse_ok(&format!("{base}allow_plaintext = true\n"));
        assert_eq!(c.accounts[0].port, 110);
    }

    #[test]
    fn two_secret_sources_are_refused() {
        let e = parse_err(
            "[accounts.a]\nhost = \"h\"\nuser = \"u\"\npassword = \"p\"\npassword_file = \"/f\"\ndeliver = { maildir = \"/m\" }\n",
        );
        assert!(e.contains("more than one"), "{e}");
    }

    #[test]
    fn state_dir_inside_an_account_is_refused() {
        let e = parse_err(
            "[accounts.a]\nhost = \"h\"\nuser = \"u\"\npassword = \"p\"\ndeliver = { maildir = \"/m\" }\nstate_dir = \"/s\"\n",
        );
        assert!(e.contains("state_dir") && e.contains("[defaults]"), "{e}");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = parse_err("[accounts.a]\nhost = \"h\nuser = \"u\"\n");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn a_config_naming_a_command_or_secret_is_sensitive() {
        let s = parse(Path::new("c.toml"), GOOD).unwrap().sensitive;
        assert_eq!(
            s,
            Sensitive {
                password: true,
                commands_or_secrets: true
            }
        );
        let s = parse(
            Path::new("c.toml"),
            "[accounts.a]\nhost = \"h\"\nuser = \"u\"\npassword_file = \"/pw\"\ndeliver = { maildir = \"/m\" }\n",
        )
        .unwrap()
        .sensitive;
        assert_eq!(
            s,
            Sensitive {
                password: false,
                commands_or_secrets: true
            }
        );
        let s = parse(Path::new("c.toml"), "[defaults]\nstate_dir = \"/s\"\n")
            .unwrap()
            .sensitive;
        assert_eq!(s, Sensitive::default());
    }

    const OAUTH: &str = "[accounts.a]\nhost = \"h\"\nuser = \"u\"\ndeliver = { maildir = \"/m\" }\noauth = { provider = \"microsoft\", client_id = \"c\" }\n";

    #[test]
    fn oauth_needs_no_password_and_refuses_one_naming_it() {
        let c = parse_ok(&format!("{OAUTH}auth = [\"xoauth2\"]\n"));
        let Credential::OAuth(spec) = &c.accounts[0].credential else {
            panic!("no oauth: {:?}", c.accounts[0].credential);
        };
        assert_eq!(spec.provider, Provider::Microsoft);
        let e = parse_err(&format!(
            "{OAUTH}auth = [\"xoauth2\"]\npassword_command = \"x\"\n"
        ));
        assert!(
            e.contains("line 7") && e.contains("password_command"),
            "{e}"
        );
    }

    #[test]
    fn oauth_without_an_oauth_mechanism_is_refused() {
        for auth in [
            "",
            "auth = [\"plain\"]\n",
            "auth = [\"xoauth2\", \"plain\"]\n",
        ] {
            let e = parse_err(&format!("{OAUTH}{auth}"));
            assert!(e.contains("`auth`") && e.contains("xoauth2"), "{auth}: {e}");
        }
        let e = parse_err(&format!(
            "{OAUTH}auth = [\"oauthbearer\"]\n[accounts.b]\nhost = \"h\"\nuser = \"u\"\ndeliver = {{ maildir = \"/m\" }}\nauth = [\"xoauth2\"]\noauth = {{ provider = \"custom\", client_id = \"c\", token_endpoint = \"http://127.0.0.1/t\" }}\n"
        ));
        assert!(
            e.contains("oauth.token_endpoint") && e.contains("https://"),
            "{e}"
        );
    }

    #[test]
    fn an_oauth_table_makes_the_file_sensitive() {
        let s = parse(
            Path::new("c.toml"),
            &format!("{OAUTH}auth = [\"xoauth2\"]\n"),
        )
        .unwrap()
        .sensitive;
        assert!(s.commands_or_secrets && !s.password);
    }

    #[test]
    fn selecting_an_unknown_account_lists_the_known_ones() {
        let c = parse_ok(GOOD);
        let e = c.select(&["nope".into()], false).unwrap_err();
        assert_eq!(e.known, ["work", "home"]);
        assert!(e.to_string().contains("work, home"), "{e}");
        assert_eq!(c.select(&["home".into()], false).unwrap()[0].name, "home");
    }
}
