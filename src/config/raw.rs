//! The config file as written: the serde schema of its tables, with the span
//! of every value kept so that an error can name its line and key, and the
//! helpers that turn a span into that line and key. Nothing outside `config`
//! sees it: `Resolver` turns it into settled accounts.

use indexmap::IndexMap;
use serde::Deserialize;
use toml::Spanned;

use super::imap::RawImap;
use super::oauth::RawOAuth;
use super::{AuthMech, ByteSize, Fingerprint, Retention, TlsMode};

/// 1-based line number of a byte offset.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The key assigned on a line (`key = value`), to name it in an error whose
/// message does not (a type error only knows the value).
pub(super) fn key_on_line(text: &str, line: usize) -> Option<String> {
    let l = text.lines().nth(line.checked_sub(1)?)?;
    let (key, _) = l.split_once('=')?;
    let key = key.trim().trim_start_matches('{').trim();
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"'));
    ok.then(|| key.trim_matches('"').to_owned())
}

/// The whole file: `[defaults]`, then `[accounts.NAME]` in file order.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    pub(super) defaults: Option<RawSettings>,
    #[serde(default)]
    pub(super) accounts: IndexMap<String, Spanned<RawSettings>>,
}

/// Every key an account (or `[defaults]`) may hold; spans kept for errors.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSettings {
    pub(super) state_dir: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<u64>>,
    pub(super) command_timeout: Option<Spanned<u64>>,
    pub(super) host: Option<Spanned<String>>,
    pub(super) port: Option<Spanned<u16>>,
    pub(super) tls: Option<Spanned<TlsMode>>,
    pub(super) ca_file: Option<Spanned<String>>,
    pub(super) tls_fingerprint: Option<Spanned<Fingerprint>>,
    pub(super) user: Option<Spanned<String>>,
    pub(super) password: Option<Spanned<String>>,
    pub(super) password_command: Option<Spanned<String>>,
    pub(super) password_file: Option<Spanned<String>>,
    pub(super) auth: Option<Spanned<Vec<AuthMech>>>,
    pub(super) oauth: Option<Spanned<RawOAuth>>,
    pub(super) deliver: Option<Spanned<RawDeliver>>,
    pub(super) retention: Option<Spanned<Retention>>,
    pub(super) max_size: Option<Spanned<ByteSize>>,
    pub(super) received_header: Option<Spanned<bool>>,
    pub(super) filter: Option<Spanned<String>>,
    pub(super) allow_plaintext: Option<Spanned<bool>>,
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub(super) enum RawDeliver {
    Maildir(String),
    Mbox(String),
    Mda(String),
    Imap(Box<RawImap>),
}
