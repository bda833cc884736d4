//! Whether the config file can be trusted with what it holds: one that holds
//! a password in clear must not be readable by other users, and one that
//! names a command popsync runs or a secret it sends must not be changeable
//! by them. `load` checks the file it read; `secret` checks a
//! `password_file` by the same rule (`exposure_of`).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use toml::Spanned;

use super::ConfigError;
use super::raw::{RawDeliver, RawSettings};

/// What in a config makes its file's permissions matter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Sensitive {
    /// A `password` in clear: nobody else may read the file (as fetchmail).
    pub(super) password: bool,
    /// A command (`mda`, `filter`, `password_command`) or a secret: nobody
    /// else may change the file, or they choose what popsync runs as this
    /// user and where the password goes.
    pub(super) commands_or_secrets: bool,
}

impl Sensitive {
    pub(super) fn of(s: &RawSettings) -> Sensitive {
        let deliver = s.deliver.as_ref().map(Spanned::get_ref);
        let mda = matches!(deliver, Some(RawDeliver::Mda(_)));
        let (imap_password, imap_secret) = match deliver {
            Some(RawDeliver::Imap(i)) => (
                i.password.is_some(),
                i.password.is_some() || i.password_command.is_some() || i.password_file.is_some(),
            ),
            _ => (false, false),
        };
        Sensitive {
            password: s.password.is_some()
                || imap_password
                || s.oauth
                    .as_ref()
                    .is_some_and(|o| o.get_ref().holds_client_secret()),
            commands_or_secrets: s.password.is_some()
                || s.password_command.is_some()
                || s.password_file.is_some()
                || s.filter.is_some()
                || mda
                || imap_secret
                // Whoever changes the endpoints receives the tokens.
                || s.oauth.is_some(),
        }
    }

    pub(super) fn or(self, other: Sensitive) -> Sensitive {
        Sensitive {
            password: self.password || other.password,
            commands_or_secrets: self.commands_or_secrets || other.commands_or_secrets,
        }
    }
}

pub(super) fn check_permissions(
    path: &Path,
    meta: &std::fs::Metadata,
    sensitive: Sensitive,
) -> Result<(), ConfigError> {
    if !sensitive.commands_or_secrets {
        return Ok(());
    }
    match exposure_of(meta, sensitive.password) {
        None => Ok(()),
        Some(Exposure::Readable { mode }) => Err(ConfigError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        }),
        Some(exposure) => Err(ConfigError::Untrusted {
            path: path.to_owned(),
            exposure,
        }),
    }
}

/// Why a file that names what popsync runs, or holds a secret, cannot be
/// trusted as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// Another user owns it; root may (it can change anything anyway).
    ForeignOwner { owner: u32, me: u32 },
    /// Group or others may write it.
    Writable { mode: u32 },
    /// Group or others may read it.
    Readable { mode: u32 },
}

impl Exposure {
    /// What is wrong, after the file's name: "can be changed by ...".
    pub fn problem(&self) -> String {
        match self {
            Exposure::ForeignOwner { owner, me } => {
                format!("belongs to user {owner}, not to you (user {me})")
            }
            Exposure::Writable { mode } => {
                format!("can be changed by other users (mode {mode:04o})")
            }
            Exposure::Readable { mode } => format!("is readable by other users (mode {mode:04o})"),
        }
    }

    /// What to do about it.
    pub fn fix(&self, path: &Path) -> String {
        match self {
            Exposure::ForeignOwner { me, .. } => format!(
                "run `chown {me} {}` (as root), or use a file of your own",
                path.display()
            ),
            Exposure::Writable { .. } | Exposure::Readable { .. } => {
                format!("run `chmod 600 {}`", path.display())
            }
        }
    }
}

/// What is wrong with a file of this mode and owner for user `me`: its
/// owner first, then who may write it, then, when it holds a secret in
/// clear (`secret_inside`), who may read it.
fn exposure(mode: u32, owner: u32, me: u32, secret_inside: bool) -> Option<Exposure> {
    let mode = mode & 0o7777;
    if owner != me && owner != 0 {
        Some(Exposure::ForeignOwner { owner, me })
    } else if mode & 0o022 != 0 {
        Some(Exposure::Writable { mode })
    } else if secret_inside && mode & 0o044 != 0 {
        Some(Exposure::Readable { mode })
    } else {
        None
    }
}

/// `exposure` of an open file for the user popsync runs as.
pub(crate) fn exposure_of(meta: &std::fs::Metadata, secret_inside: bool) -> Option<Exposure> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    exposure(meta.mode(), meta.uid(), me, secret_inside)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14 item 15: who may own, write and read a config or a
    /// password file.
    #[test]
    fn exposure_table() {
        const ME: u32 = 1000;
        let cases = [
            // (mode, owner, secret inside, expected)
            (0o600, ME, true, None),
            (0o644, ME, false, None),
            (0o644, 0, false, None),
            (0o644, ME, true, Some(Exposure::Readable { mode: 0o644 })),
            (0o640, ME, true, Some(Exposure::Readable { mode: 0o640 })),
            (0o602, ME, false, Some(Exposure::Writable { mode: 0o602 })),
            (0o620, ME, true, Some(Exposure::Writable { mode: 0o620 })),
            (0o100666, ME, true, Some(Exposure::Writable { mode: 0o666 })),
            (
                0o600,
                4242,
                true,
                Some(Exposure::ForeignOwner {
                    owner: 4242,
                    me: ME,
                }),
            ),
        ];
        for (mode, owner, secret, want) in cases {
            assert_eq!(
                exposure(mode, owner, ME, secret),
                want,
                "mode {mode:o} owner {owner}"
            );
        }
        // Root running popsync: only root's own files.
        assert!(exposure(0o600, ME, 0, false).is_some());
    }
}
