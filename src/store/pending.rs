//! The crash journal of the seen-store: a `pending` row is written, durably,
//! before a delivery starts, and removed in the same transaction that records
//! the delivery, so that the next run can finish or roll back a delivery a
//! killed run left in the middle (DESIGN.md, Promise 2). Only `sync` writes
//! these rows; its crash recovery reads them.

use chrono::{DateTime, Utc};
use rusqlite::params;

use super::{MessageKey, Store, StoreError, parse_ts, ts};

/// A delivery that was started but not recorded as finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRow {
    pub uidl: String,
    pub copy: u32,
    /// The delivery target as configured ("maildir:/path", "mbox:/path", "mda:cmd").
    pub target: String,
    /// Maildir: the unique file name prefix; mbox: the mbox path, then `#`,
    /// the batch's id and the message's index in it, which name what the
    /// mbox's write-ahead journal recorded (rows of older versions: the
    /// bare path).
    pub location: String,
    /// mbox: the file length before the append began.
    pub offset: Option<u64>,
    /// When the run that began the delivery started (its clock).
    pub started_at: DateTime<Utc>,
}

impl Store {
    /// Record, durably and in one transaction, that deliveries of these
    /// messages are about to start, so that a run killed mid-delivery can be
    /// finished or rolled back by the next one.
    pub fn begin_pending(&mut self, account: &str, rows: &[PendingRow]) -> Result<(), StoreError> {
        self.write(|tx| {
        {
            let mut stmt = tx.prepare_cached(
                    "INSERT OR REPLACE INTO pending (account, uidl, copy, target, location, offset, started_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                ?;
            for row in rows {
                stmt.execute(params![
                    account,
                    row.uidl,
                    row.copy,
                    row.target,
                    row.location,
                    row.offset.map(|o| o as i64),
                    ts(row.started_at)
                ])
                ?;
            }
        }
            Ok(())
        })
    }

    /// Rewrite pending rows' locations in one transaction: a target that
    /// learns, after the message arrived, how to find it again after a crash
    /// (IMAP) records that before it delivers.
    pub fn update_pending(
        &mut self,
        account: &str,
        locations: &[(MessageKey, String)],
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut stmt = tx.prepare_cached(
                "UPDATE pending SET location = ?4 WHERE account = ?1 AND uidl = ?2 AND copy = ?3",
            )?;
            for (key, location) in locations {
                stmt.execute(params![account, key.uidl, key.copy, location])?;
            }
            Ok(())
        })
    }

    /// End a batch in one transaction: record the durable deliveries
    /// ((UIDL, copy), size, location) and forget the pending rows of messages
    /// the batch did not get to. Only after this returns may they be DELEted.
    pub fn finish_batch(
        &mut self,
        account: &str,
        delivered: &[(MessageKey, u64, &str)],
        abandoned: &[MessageKey],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
        {
            let mut insert = tx.prepare_cached(
                    "INSERT INTO messages (account, uidl, copy, size, first_seen, delivered_at, location)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)
                     ON CONFLICT (account, uidl, copy) DO UPDATE SET
                        first_seen = excluded.first_seen,
                        size = excluded.size, delivered_at = excluded.delivered_at,
                        location = excluded.location, deleted_at = NULL",
                )
                ?;
            let mut unpend = tx.prepare_cached(
                    "DELETE FROM pending WHERE account = ?1 AND uidl = ?2 AND copy = ?3",
                )
                ?;
            for (key, size, location) in delivered {
                insert
                    .execute(params![
                        account,
                        key.uidl,
                        key.copy,
                        *size as i64,
                        ts(now),
                        location
                    ])
                    ?;
                unpend
                    .execute(params![account, key.uidl, key.copy])
                    ?;
            }
            for key in abandoned {
                unpend
                    .execute(params![account, key.uidl, key.copy])
                    ?;
            }
        }
            Ok(())
        })
    }

    /// Deliveries begun but never recorded as finished, for `account`.
    pub fn pending(&self, account: &str) -> Result<Vec<PendingRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT uidl, copy, target, location, offset, started_at FROM pending
                 WHERE account = ?1 ORDER BY started_at",
            )
            .map_err(self.sql())?;
        let rows = stmt
            .query_map(params![account], |r| {
                Ok(PendingRow {
                    uidl: r.get(0)?,
                    copy: r.get(1)?,
                    target: r.get(2)?,
                    location: r.get(3)?,
                    offset: r.get::<_, Option<i64>>(4)?.map(|o| o.max(0) as u64),
                    started_at: parse_ts(&r.get::<_, String>(5)?)
                        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
                })
            })
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// Forget a pending delivery that did not happen (it will be fetched again).
    pub fn drop_pending(&mut self, account: &str, key: &MessageKey) -> Result<(), StoreError> {
        self.conn
            .execute(
                "DELETE FROM pending WHERE account = ?1 AND uidl = ?2 AND copy = ?3",
                params![account, key.uidl, key.copy],
            )
            .map_err(self.sql())?;
        Ok(())
    }

    /// Record one finished, durable delivery (found by crash recovery) and
    /// clear its pending row.
    pub fn mark_delivered(
        &mut self,
        account: &str,
        key: &MessageKey,
        size: u64,
        location: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.finish_batch(account, &[(key.clone(), size, location)], &[], now)
    }
}
