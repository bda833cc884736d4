//! The token store: one JSON file per token under `$state_dir/oauth/`, named
//! by a hash of (token endpoint, client id, user), so that two accounts with
//! the same user, client and provider share one token (and one refresh).
//! Files are 0600 in a 0700 directory and replaced atomically (temp file,
//! fsync, rename, fsync of the directory), so a crash leaves the old tokens
//! or the new ones, never half of either. A `.lock` file beside each token
//! serialises refreshes across processes and `--jobs`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::OAuthError;

/// What is stored for one token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// When the access token stops working (UNIX seconds).
    pub expires_at: i64,
    /// The scopes granted (as the provider said, else as asked for).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Who the token is for, to tell a person what a file holds.
    pub token_endpoint: String,
    pub client_id: String,
    pub user: String,
}

impl std::fmt::Debug for Tokens {
    // Tokens are never printed, not even in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("access_token", &"<hidden>")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<hidden>"),
            )
            .field("expires_at", &self.expires_at)
            .field("scopes", &self.scopes)
            .finish()
    }
}

impl Tokens {
    pub fn expires(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.expires_at, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// Whether the access token has less than `margin` left at `now`.
    pub fn expiring(&self, now: DateTime<Utc>, margin: chrono::Duration) -> bool {
        self.expires() - now < margin
    }
}

/// Where one token lives.
#[derive(Debug, Clone)]
pub struct TokenFile {
    dir: PathBuf,
    path: PathBuf,
    lock_path: PathBuf,
}

impl TokenFile {
    pub fn new(state_dir: &Path, token_endpoint: &str, client_id: &str, user: &str) -> TokenFile {
        // NUL separates the parts: none of them can hold one (config checks).
        let key = format!("{token_endpoint}\0{client_id}\0{user}");
        let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let name: String = digest.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let dir = state_dir.join("oauth");
        TokenFile {
            path: dir.join(format!("{name}.json")),
            lock_path: dir.join(format!("{name}.lock")),
            dir,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> OAuthError {
        let path = path.to_owned();
        move |source| OAuthError::Store {
            action,
            path,
            source,
        }
    }

    /// The stored tokens, or `None` when there are none; `account` names the
    /// login to run when the file is damaged.
    pub fn load(&self, account: &str) -> Result<Option<Tokens>, OAuthError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io("read the token file", &self.path)(e)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| OAuthError::Damaged {
                account: account.to_owned(),
                path: self.path.clone(),
                detail: e.to_string(),
            })
    }

    fn ensure_dir(&self) -> Result<(), OAuthError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(self.io("create the token directory", &self.dir))?;
        // An existing directory may have been made with a looser umask.
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .map_err(self.io("restrict the token directory", &self.dir))
    }

    /// Replace the stored tokens atomically.
    pub fn save(&self, tokens: &Tokens) -> Result<(), OAuthError> {
        self.ensure_dir()?;
        // Serialising plain strings and numbers cannot fail.
        let json = serde_json::to_vec_pretty(tokens).unwrap_or_default();
        let mut tmp = tempfile::Builder::new()
            .prefix(".tokens")
            .permissions(fs::Permissions::from_mode(0o600))
            .tempfile_in(&self.dir)
            .map_err(self.io("create a temporary token file in", &self.dir))?;
        let write = |f: &mut tempfile::NamedTempFile| -> std::io::Result<()> {
            f.write_all(&json)?;
            f.as_file().sync_all()
        };
        write(&mut tmp).map_err(self.io("write", tmp.path()))?;
        tmp.persist(&self.path)
            .map_err(|e| self.io("replace the token file", &self.path)(e.error))?;
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<(), OAuthError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(self.io("sync the token directory", &self.dir))
    }

    /// Remove the stored tokens; `false` when there were none.
    pub fn remove(&self) -> Result<bool, OAuthError> {
        match fs::remove_file(&self.path) {
            // The lock file stays: another process may be waiting on it.
            Ok(()) => {
                self.sync_dir()?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.io("remove the token file", &self.path)(e)),
        }
    }

    /// Wait for the exclusive lock of this token; it is held until the
    /// returned file is dropped. Blocking: async callers go through
    /// `command::blocking`.
    pub fn lock(&self) -> Result<File, OAuthError> {
        self.ensure_dir()?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&self.lock_path)
            .map_err(self.io("open the token lock", &self.lock_path))?;
        file.lock()
            .map_err(self.io("lock the token lock", &self.lock_path))?;
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn tokens(access: &str) -> Tokens {
        Tokens {
            access_token: access.into(),
            refresh_token: Some("r".into()),
            expires_at: 1_900_000_000,
            scopes: vec!["s".into()],
            token_endpoint: "https://t".into(),
            client_id: "c".into(),
            user: "u".into(),
        }
    }

    #[test]
    fn same_endpoint_client_and_user_share_a_file_and_others_do_not() {
        let d = Path::new("/st");
        let a = TokenFile::new(d, "https://t", "c", "u");
        assert_eq!(a.path, TokenFile::new(d, "https://t", "c", "u").path);
        assert_ne!(a.path, TokenFile::new(d, "https://t", "c", "v").path);
        assert_ne!(a.path, TokenFile::new(d, "https://t", "c2", "u").path);
        assert_ne!(a.path, TokenFile::new(d, "https://t2", "c", "u").path);
        assert!(a.path.starts_with("/st/oauth"));
    }

    #[test]
    fn saved_tokens_load_back_private_and_are_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let f = TokenFile::new(dir.path(), "https://t", "c", "u");
        assert_eq!(f.load("a").unwrap(), None);
        f.save(&tokens("one")).unwrap();
        f.save(&tokens("two")).unwrap();
        assert_eq!(f.load("a").unwrap(), Some(tokens("two")));
        assert_eq!(fs::metadata(&f.path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&f.dir).unwrap().mode() & 0o777, 0o700);
        // Only the token file itself: no temporary left behind.
        let names: Vec<_> = fs::read_dir(&f.dir).unwrap().collect();
        assert_eq!(names.len(), 1);
        assert!(f.remove().unwrap());
        assert!(!f.remove().unwrap());
        assert_eq!(f.load("a").unwrap(), None);
    }

    #[test]
    fn a_damaged_file_says_to_log_in_again() {
        let dir = tempfile::tempdir().unwrap();
        let f = TokenFile::new(dir.path(), "https://t", "c", "u");
        f.ensure_dir().unwrap();
        fs::write(&f.path, "{").unwrap();
        let e = f.load("work").unwrap_err().to_string();
        assert!(e.contains("popsync auth login work"), "{e}");
    }

    #[test]
    fn debug_output_hides_the_tokens() {
        let s = format!("{:?}", tokens("secret-access"));
        assert!(!s.contains("secret-access") && !s.contains("\"r\""), "{s}");
    }

    #[test]
    fn expiring_means_less_than_the_margin_left() {
        let t = tokens("a");
        let at = |secs: i64| DateTime::from_timestamp(t.expires_at - secs, 0).unwrap();
        let five = chrono::Duration::minutes(5);
        assert!(t.expiring(at(299), five));
        assert!(!t.expiring(at(300), five));
        assert!(t.expiring(at(-10), five));
    }
}
