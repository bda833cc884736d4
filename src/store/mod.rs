//! The seen-store: one SQLite file (`$state_dir/seen.sqlite3`, WAL) that records,
//! per account and UIDL, what popsync delivered and deleted.
//!
//! It is the only state popsync keeps. Rows are written in the order that keeps
//! DESIGN.md's promises: a `pending` row before a delivery starts, the
//! `messages` row (and removal of the pending row) in one transaction once the
//! delivery is durable, and `deleted_at` only after the server committed DELE.
//! Only `sync` calls the writing methods.
//!
//! This file holds the rows and the statements that read and write them;
//! opening the file (schema, WAL, what a failure to open means) is in `open`,
//! the crash journal of pending deliveries in `pending`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use crate::timestamp::{parse_store as parse_ts, store_micros as ts};

mod open;
mod pending;
use open::SCHEMA_VERSION;
pub use open::create_private_dir;
pub use pending::PendingRow;

/// A seen-store failure (exit 74). Names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create state directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open seen-store {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "seen-store {} is damaged or not a popsync store ({source}); move it aside (mv {} {}.bad) — the next run then treats all mail on the server as new",
        path.display(), path.display(), path.display()
    )]
    Corrupt {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "seen-store {} is locked by another process for more than 30 s; try again later",
        path.display()
    )]
    Busy { path: PathBuf },
    #[error(
        "seen-store {} has schema version {found}, newer than this popsync understands ({SCHEMA_VERSION}); upgrade popsync",
        path.display()
    )]
    TooNew { path: PathBuf, found: i64 },
    #[error("seen-store {}: {source}", path.display())]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

impl StoreError {
    /// A store held too long by another process is temporary (75); every
    /// other store problem is a local I/O error (74).
    pub fn exit_code(&self) -> crate::exit::ExitCode {
        match self {
            StoreError::Busy { .. } => crate::exit::ExitCode::TempFail,
            _ => crate::exit::ExitCode::IoError,
        }
    }
}

/// What the store knows about one message of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRow {
    pub uidl: String,
    pub copy: u32,
    pub size: u64,
    pub first_seen: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub location: Option<String>,
    pub deleted_at: Option<DateTime<Utc>>,
}

/// The last successful login of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastLogin {
    pub at: DateTime<Utc>,
    /// The LOGIN-DELAY (seconds) the server announced then.
    pub login_delay: Option<u64>,
}

/// Key of a message within an account: its UIDL and which copy of it (RFC
/// 1939 lets a server list one UIDL more than once; 0 for the first).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageKey {
    pub uidl: String,
    pub copy: u32,
}

impl MessageKey {
    pub fn new(uidl: impl Into<String>, copy: u32) -> MessageKey {
        MessageKey {
            uidl: uidl.into(),
            copy,
        }
    }
}

/// An open seen-store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// The seen-store's file name inside the state directory.
pub const FILE_NAME: &str = "seen.sqlite3";

impl Store {
    fn sql(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| sql_error(&self.path, source)
    }

    /// Run `work` in one write transaction, committed when it returns Ok.
    fn write<T>(
        &mut self,
        work: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let path = &self.path;
        let sql = |source| sql_error(path, source);
        let tx = self.conn.transaction().map_err(sql)?;
        let out = work(&tx).map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(out)
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every row the store holds for `account`, keyed by (UIDL, copy).
    pub fn rows(&self, account: &str) -> Result<HashMap<MessageKey, SeenRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT uidl, copy, size, first_seen, delivered_at, location, deleted_at
                 FROM messages WHERE account = ?1",
            )
            .map_err(self.sql())?;
        let rows = stmt
            .query_map(params![account], |r| {
                let first: String = r.get(3)?;
                let delivered: Option<String> = r.get(4)?;
                let deleted: Option<String> = r.get(6)?;
                Ok(SeenRow {
                    uidl: r.get(0)?,
                    copy: r.get(1)?,
                    size: r.get::<_, i64>(2)?.max(0) as u64,
                    first_seen: parse_ts(&first).unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
                    delivered_at: delivered.as_deref().and_then(parse_ts),
                    location: r.get(5)?,
                    deleted_at: deleted.as_deref().and_then(parse_ts),
                })
            })
            .map_err(self.sql())?;
        let mut out = HashMap::new();
        for row in rows {
            let row = row.map_err(self.sql())?;
            out.insert(MessageKey::new(row.uidl.clone(), row.copy), row);
        }
        Ok(out)
    }

    /// Record that the server committed the DELE of these messages (after QUIT).
    pub fn mark_deleted(
        &mut self,
        account: &str,
        keys: &[MessageKey],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
        {
            let mut stmt = tx.prepare_cached(
                    "UPDATE messages SET deleted_at = ?4 WHERE account = ?1 AND uidl = ?2 AND copy = ?3",
                )
                ?;
            for key in keys {
                stmt.execute(params![account, key.uidl, key.copy, ts(now)])
                    ?;
            }
        }
            Ok(())
        })
    }

    /// Record messages the header filter had deleted on the server without
    /// their being downloaded (after QUIT committed the DELEs).
    pub fn record_filtered(
        &mut self,
        account: &str,
        keys: &[(MessageKey, u64)],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
        {
            let mut stmt = tx.prepare_cached(
                    "INSERT INTO messages (account, uidl, copy, size, first_seen, location, deleted_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, 'deleted by filter', ?5)
                     ON CONFLICT (account, uidl, copy) DO UPDATE SET deleted_at = excluded.deleted_at",
                )
                ?;
            for (MessageKey { uidl, copy }, size) in keys {
                stmt.execute(params![account, uidl, copy, *size as i64, ts(now)])
                    ?;
            }
        }
            Ok(())
        })
    }

    /// Remove rows of messages no longer on the server (after a successful
    /// session). Returns how many were removed.
    pub fn prune(
        &mut self,
        account: &str,
        on_server: &std::collections::HashSet<MessageKey>,
    ) -> Result<usize, StoreError> {
        let stale: Vec<MessageKey> = self
            .rows(account)?
            .into_keys()
            .filter(|k| !on_server.contains(k))
            .collect();
        self.write(|tx| {
            {
                let mut stmt = tx.prepare_cached(
                    "DELETE FROM messages WHERE account = ?1 AND uidl = ?2 AND copy = ?3",
                )?;
                for key in &stale {
                    stmt.execute(params![account, key.uidl, key.copy])?;
                }
            }
            Ok(())
        })?;
        Ok(stale.len())
    }

    /// Forget messages of an account (all of them when `uidls` is empty), so
    /// that the next run treats them as new. Returns how many rows went.
    pub fn forget(&mut self, account: &str, uidls: &[String]) -> Result<usize, StoreError> {
        self.write(|tx| {
            if uidls.is_empty() {
                tx.execute("DELETE FROM pending WHERE account = ?1", params![account])?;
                return tx.execute("DELETE FROM messages WHERE account = ?1", params![account]);
            }
            let mut removed = 0;
            for uidl in uidls {
                let key = params![account, uidl];
                removed +=
                    tx.execute("DELETE FROM messages WHERE account = ?1 AND uidl = ?2", key)?;
                tx.execute("DELETE FROM pending WHERE account = ?1 AND uidl = ?2", key)?;
            }
            Ok(removed)
        })
    }

    /// Record UIDLs another fetcher already downloaded, as delivered by it, so
    /// the next run does not download them again. Returns (taken, already
    /// known).
    pub fn import(
        &mut self,
        account: &str,
        uidls: &[String],
        source: &str,
        now: DateTime<Utc>,
    ) -> Result<(usize, usize), StoreError> {
        let taken = self.write(|tx| {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO messages (account, uidl, copy, size, first_seen, delivered_at, location)
                 VALUES (?1, ?2, 0, 0, ?3, ?3, ?4)
                 ON CONFLICT (account, uidl, copy) DO NOTHING",
            )?;
            let location = format!("imported from {source}");
            let mut taken = 0;
            for uidl in uidls {
                taken += stmt.execute(params![account, uidl, ts(now), location])?;
            }
            Ok(taken)
        })?;
        Ok((taken, uidls.len() - taken))
    }

    /// When this account last logged in, and the LOGIN-DELAY the server
    /// announced then.
    pub fn last_login(&self, account: &str) -> Result<Option<LastLogin>, StoreError> {
        let row: Option<(String, Option<i64>)> = self
            .conn
            .query_row(
                "SELECT last_login, login_delay FROM logins WHERE account = ?1",
                params![account],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.sql())?;
        Ok(row.and_then(|(t, d)| {
            Some(LastLogin {
                at: parse_ts(&t)?,
                login_delay: d.map(|d| d.max(0) as u64),
            })
        }))
    }

    /// Remember a successful login and the server's LOGIN-DELAY.
    pub fn record_login(
        &mut self,
        account: &str,
        now: DateTime<Utc>,
        login_delay: Option<u64>,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO logins (account, last_login, login_delay) VALUES (?1, ?2, ?3)
                 ON CONFLICT (account) DO UPDATE SET
                    last_login = excluded.last_login, login_delay = excluded.login_delay",
                params![account, ts(now), login_delay.map(|d| d as i64)],
            )
            .map_err(self.sql())?;
        Ok(())
    }
}

/// A failed statement: busy (another process holds the store past the busy
/// timeout) is temporary; anything else is an I/O error.
fn sql_error(path: &Path, source: rusqlite::Error) -> StoreError {
    if is_busy(&source) {
        StoreError::Busy {
            path: path.to_owned(),
        }
    } else {
        StoreError::Sql {
            path: path.to_owned(),
            source,
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
    }

    fn key(u: &str) -> MessageKey {
        MessageKey::new(u, 0)
    }

    #[test]
    fn delivered_rows_survive_reopen_and_clear_pending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/seen.sqlite3");
        {
            let mut s = Store::open(&path).unwrap();
            let p = PendingRow {
                uidl: "u1".into(),
                copy: 0,
                target: "maildir:/m".into(),
                location: "123.M1P2Q3.host".into(),
                offset: None,
                started_at: now(),
            };
            s.begin_pending("a", std::slice::from_ref(&p)).unwrap();
            assert_eq!(s.pending("a").unwrap(), vec![p]);
            s.mark_delivered("a", &key("u1"), 42, "/m/new/x", now())
                .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert!(s.pending("a").unwrap().is_empty());
        let rows = s.rows("a").unwrap();
        let r = &rows[&key("u1")];
        assert_eq!(
            (r.size, r.first_seen, r.delivered_at),
            (42, now(), Some(now()))
        );
        assert!(s.rows("other").unwrap().is_empty());
    }

    #[test]
    fn prune_removes_only_vanished_uidls() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("s.db")).unwrap();
        for u in ["a", "b", "c"] {
            s.mark_delivered("acct", &key(u), 1, "x", now()).unwrap();
        }
        let present = [key("b")].into_iter().collect();
        assert_eq!(s.prune("acct", &present).unwrap(), 2);
        let left: Vec<_> = s.rows("acct").unwrap().into_keys().collect();
        assert_eq!(left, vec![key("b")]);
    }

    #[test]
    fn imported_uidls_count_as_delivered_and_forget_removes_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("s.db")).unwrap();
        s.mark_delivered("a", &key("x"), 1, "loc", now()).unwrap();
        let uidls = vec!["x".to_owned(), "y".to_owned(), "z".to_owned()];
        assert_eq!(s.import("a", &uidls, "mpop", now()).unwrap(), (2, 1));
        let rows = s.rows("a").unwrap();
        assert_eq!(rows.len(), 3);
        assert!(rows.values().all(|r| r.delivered_at.is_some()));
        assert_eq!(
            s.forget("a", &["y".to_owned(), "nope".to_owned()]).unwrap(),
            1
        );
        assert_eq!(s.forget("a", &[]).unwrap(), 2);
        assert!(s.rows("a").unwrap().is_empty());
    }

    #[test]
    fn login_time_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("s.db")).unwrap();
        assert_eq!(s.last_login("a").unwrap(), None);
        s.record_login("a", now(), Some(900)).unwrap();
        assert_eq!(
            s.last_login("a").unwrap(),
            Some(LastLogin {
                at: now(),
                login_delay: Some(900)
            })
        );
    }
}
