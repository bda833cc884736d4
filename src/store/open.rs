//! Opening the seen-store: creating its private directory, switching the
//! file to WAL with full sync, creating the schema in a new file (once, when
//! several processes open it at the same moment), refusing a file of a
//! newer schema, and naming a failure by its cause (damaged, busy, or
//! neither).

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use super::{FILE_NAME, Store, StoreError, is_busy};

/// The schema version this build writes (`PRAGMA user_version`).
pub(super) const SCHEMA_VERSION: i64 = 1;

const SCHEMA_V1: &str = "
CREATE TABLE messages (
    account      TEXT    NOT NULL,
    uidl         TEXT    NOT NULL,
    -- nth copy of a UIDL that a broken server lists more than once (RFC 1939 allows it)
    copy         INTEGER NOT NULL DEFAULT 0,
    size         INTEGER NOT NULL,
    first_seen   TEXT    NOT NULL,
    delivered_at TEXT,
    location     TEXT,
    deleted_at   TEXT,
    PRIMARY KEY (account, uidl, copy)
);
CREATE TABLE pending (
    account    TEXT    NOT NULL,
    uidl       TEXT    NOT NULL,
    copy       INTEGER NOT NULL DEFAULT 0,
    target     TEXT    NOT NULL,
    location   TEXT    NOT NULL,
    offset     INTEGER,
    started_at TEXT    NOT NULL,
    PRIMARY KEY (account, uidl, copy)
);
CREATE TABLE logins (
    account     TEXT PRIMARY KEY,
    last_login  TEXT NOT NULL,
    -- seconds the server asked between logins (RFC 2449 LOGIN-DELAY)
    login_delay INTEGER
);
";

impl Store {
    /// Open (creating when missing) the store of the state directory
    /// `state_dir`.
    pub fn open_in(state_dir: &Path) -> Result<Store, StoreError> {
        Store::open(&state_dir.join(FILE_NAME))
    }

    /// Open (creating when missing) the store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent() {
            create_private_dir(dir)?;
        }
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        let mut store = Store {
            conn,
            path: path.to_owned(),
        };
        store.init()?;
        Ok(store)
    }

    fn init(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        // Only SQLite's own verdict makes a file "damaged"; anything else
        // (busy, permissions, disk) is reported as what it is.
        let corrupt = |path: &Path| {
            let path = path.to_owned();
            move |source: rusqlite::Error| classify(&path, source)
        };
        // Several popsync processes (one per overlapping cron run) may share the
        // file; wait for each other's short transactions rather than fail.
        self.conn
            .busy_timeout(Duration::from_secs(30))
            .map_err(corrupt(&self.path))?;
        // Switching a new file to WAL can answer SQLITE_BUSY at once, without
        // the busy handler, while another process does the same: retry.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mode: String = loop {
            match self
                .conn
                .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            {
                Ok(mode) => break mode,
                Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(classify(&path, e)),
            }
        };
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                source: rusqlite::Error::InvalidQuery,
            });
        }
        // FULL: a commit is on disk before DELE is sent (promise 1).
        self.conn
            .execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
            .map_err(corrupt(&self.path))?;
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(corrupt(&self.path))?;
        match version {
            0 => {
                // Several accounts (or runs) may open a new store at once: take
                // the write lock, then look again before creating the schema.
                let tx = self
                    .conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(corrupt(&self.path))?;
                let again: i64 = tx
                    .query_row("PRAGMA user_version", [], |r| r.get(0))
                    .map_err(corrupt(&self.path))?;
                if again == 0 {
                    tx.execute_batch(SCHEMA_V1).map_err(corrupt(&self.path))?;
                    tx.execute_batch(&format!("PRAGMA user_version={SCHEMA_VERSION}"))
                        .map_err(corrupt(&self.path))?;
                }
                tx.commit().map_err(corrupt(&self.path))?;
            }
            SCHEMA_VERSION => {
                // Cheap check that the tables are what we expect: a foreign or
                // damaged file must not be written to.
                self.conn
                    .query_row("SELECT count(*) FROM messages", [], |r| r.get::<_, i64>(0))
                    .map_err(corrupt(&self.path))?;
            }
            found if found > SCHEMA_VERSION => {
                return Err(StoreError::TooNew {
                    path: self.path.clone(),
                    found,
                });
            }
            _ => {
                return Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    source: rusqlite::Error::InvalidQuery,
                });
            }
        }
        Ok(())
    }
}

/// Name a failure to open the store by its cause.
fn classify(path: &Path, source: rusqlite::Error) -> StoreError {
    let path = path.to_owned();
    match source.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
            StoreError::Corrupt { path, source }
        }
        _ if is_busy(&source) => StoreError::Busy { path },
        _ => StoreError::Open { path, source },
    }
}

/// The state directory holds credentials-adjacent data (what mail someone has):
/// create it private.
pub fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_file_is_reported_as_corrupt_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
        let e = match Store::open(&path) {
            Err(e) => e,
            Ok(_) => panic!("garbage accepted"),
        };
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("move it aside"), "{e}");
    }

    #[test]
    fn stores_opened_concurrently_on_a_new_file_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    Store::open(&path).map(|_| ()).map_err(|e| e.to_string())
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
    }
}
