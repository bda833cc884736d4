//! The plan of a session: a pure function of (server listing, seen-store rows,
//! now, account settings) that says, for each message on the server, whether
//! to fetch, skip, delete or keep it, and why.
//!
//! `sync` only executes plans and `--dry-run` prints them, so what a dry run
//! shows is exactly what a real run would do.

use std::collections::{HashMap, HashSet};
use std::fmt;

use chrono::{DateTime, Duration, Utc};

use crate::config::Retention;
use crate::filter::{FilterError, Verdict};
use crate::pop3::session::Listed;
use crate::store::{MessageKey, SeenRow};

/// The settings the plan depends on.
#[derive(Debug, Clone, Copy)]
pub struct PlanSettings {
    pub retention: Retention,
    pub max_size: Option<u64>,
    pub accept_uidl_reset: bool,
}

/// What to do with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Download and deliver; with `then_delete`, DELE once committed (`0d`).
    Fetch { then_delete: bool },
    /// Leave on the server, not downloaded, not marked seen.
    Skip(SkipReason),
    /// DELE now, without downloading (again).
    Delete(DeleteReason),
    /// Already delivered; leave on the server.
    Keep { until: Option<DateTime<Utc>> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    TooBig {
        limit: u64,
    },
    /// The header filter said "not now" (exit 2).
    Filter,
    /// The header filter failed; the message stays for the next run.
    FilterFailed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    /// Delivered, and retention has run out.
    Retention { first_seen: DateTime<Utc> },
    /// Never downloaded: the header filter said delete (exit 1).
    Filter,
}

/// The header filter's answers for new messages, by key.
pub type Verdicts = HashMap<MessageKey, Result<Verdict, FilterError>>;

/// One message and its action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub listed: Listed,
    /// Which copy of a UIDL the server lists more than once (0 for the first).
    pub copy: u32,
    pub action: Action,
}

impl Planned {
    pub fn key(&self) -> MessageKey {
        MessageKey::new(self.listed.uidl.clone(), self.copy)
    }

    /// Not delivered before.
    pub fn is_new(&self) -> bool {
        matches!(
            self.action,
            Action::Fetch { .. } | Action::Skip(_) | Action::Delete(DeleteReason::Filter)
        )
    }
}

/// The plan of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub messages: Vec<Planned>,
    /// Every UIDL on the server is unknown though the store knows many for
    /// this account: the server probably renumbered them. Nothing is fetched.
    pub uidl_reset: Option<UidlReset>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidlReset {
    pub on_server: usize,
    pub known: usize,
}

/// The store must know at least this many messages (still expected on the
/// server) before "all unknown" is read as a UIDL reset rather than a mailbox
/// emptied by another client and refilled.
const RESET_MIN_KNOWN: usize = 5;

impl Plan {
    /// Messages not yet seen (fetch, skip and filter deletes count,
    /// DESIGN.md `new`).
    pub fn new_count(&self) -> usize {
        self.messages.iter().filter(|p| p.is_new()).count()
    }

    /// The messages to download, in server order.
    pub fn to_fetch(&self) -> Vec<&Planned> {
        self.messages
            .iter()
            .filter(|p| matches!(p.action, Action::Fetch { .. }))
            .collect()
    }

    /// Every (UIDL, copy) on the server, for pruning the store.
    pub fn keys(&self) -> HashSet<MessageKey> {
        self.messages.iter().map(Planned::key).collect()
    }
}

/// Whether the row of a message missing from an empty listing is kept. An
/// empty listing may be a server's passing fault (an index being rebuilt),
/// after which the same mail comes back and must not be downloaded again;
/// but mail popsync deleted, or that retention would have it delete by now
/// (a run killed between QUIT and recording the deletion), is done with:
/// kept, its rows would make the next new mail look like a UIDL reset.
pub fn kept_when_absent(row: &SeenRow, now: DateTime<Utc>, retention: Retention) -> bool {
    if row.deleted_at.is_some() || row.delivered_at.is_none() {
        return false;
    }
    match retention {
        Retention::Forever => true,
        Retention::Days(days) => row
            .first_seen
            .checked_add_signed(Duration::days(i64::from(days)))
            .is_none_or(|due| now < due),
    }
}

/// Decide the session. Pure: same inputs, same plan.
pub fn plan(
    listing: &[Listed],
    seen: &HashMap<MessageKey, SeenRow>,
    now: DateTime<Utc>,
    settings: PlanSettings,
    verdicts: &Verdicts,
) -> Plan {
    let mut copies: HashMap<&str, u32> = HashMap::new();
    let mut messages = Vec::with_capacity(listing.len());
    for listed in listing {
        let n = copies.entry(listed.uidl.as_str()).or_insert(0);
        let copy = *n;
        *n += 1;
        let key = MessageKey::new(listed.uidl.clone(), copy);
        // A row whose message was DELEted does not describe a message now on
        // the server: the UIDL was given to a new one (RFC 1939 promises
        // uniqueness only among the messages present), which is new mail.
        let row = seen
            .get(&key)
            .filter(|r| r.delivered_at.is_some() && r.deleted_at.is_none());
        let action = match row {
            None => match settings.max_size {
                Some(limit) if listed.size > limit => Action::Skip(SkipReason::TooBig { limit }),
                _ => match verdicts.get(&key) {
                    None | Some(Ok(Verdict::Fetch)) => Action::Fetch {
                        then_delete: settings.retention == Retention::Days(0),
                    },
                    Some(Ok(Verdict::Delete)) => Action::Delete(DeleteReason::Filter),
                    Some(Ok(Verdict::Skip)) => Action::Skip(SkipReason::Filter),
                    Some(Err(e)) => Action::Skip(SkipReason::FilterFailed(e.to_string())),
                },
            },
            Some(row) => match settings.retention {
                Retention::Forever => Action::Keep { until: None },
                Retention::Days(days) => {
                    // The config bounds `days`; a due date past the end of
                    // the calendar is "never", not a panic.
                    match row
                        .first_seen
                        .checked_add_signed(Duration::days(i64::from(days)))
                    {
                        Some(due) if now >= due => Action::Delete(DeleteReason::Retention {
                            first_seen: row.first_seen,
                        }),
                        due => Action::Keep { until: due },
                    }
                }
            },
        };
        messages.push(Planned {
            listed: listed.clone(),
            copy,
            action,
        });
    }

    let known = seen
        .values()
        .filter(|r| r.delivered_at.is_some() && r.deleted_at.is_none())
        .count();
    let all_unknown = messages.iter().all(Planned::is_new);
    let uidl_reset = (!settings.accept_uidl_reset
        && !messages.is_empty()
        && all_unknown
        && known >= RESET_MIN_KNOWN
        && messages.len() * 2 >= known)
        .then_some(UidlReset {
            on_server: messages.len(),
            known,
        });
    Plan {
        messages,
        uidl_reset,
    }
}

impl fmt::Display for Planned {
    /// The `--dry-run` line: `ACTION UIDL SIZE REASON`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (action, reason) = match &self.action {
            Action::Fetch { then_delete: false } => ("fetch", "new".to_owned()),
            Action::Fetch { then_delete: true } => (
                "fetch",
                "new; deleted after delivery (retention 0d)".to_owned(),
            ),
            Action::Skip(SkipReason::TooBig { limit }) => {
                ("skip", format!("larger than max_size ({limit} bytes)"))
            }
            Action::Skip(SkipReason::Filter) => ("skip", "filter: exit 2 (not now)".to_owned()),
            Action::Skip(SkipReason::FilterFailed(e)) => ("skip", format!("filter failed: {e}")),
            Action::Delete(DeleteReason::Retention { first_seen }) => (
                "delete",
                format!(
                    "retention: first downloaded {}",
                    crate::timestamp::utc_seconds(first_seen)
                ),
            ),
            Action::Delete(DeleteReason::Filter) => ("delete", "filter: exit 1".to_owned()),
            Action::Keep { until: None } => ("keep", "retention forever".to_owned()),
            Action::Keep { until: Some(t) } => (
                "keep",
                format!(
                    "retention: delete after {}",
                    crate::timestamp::utc_seconds(t)
                ),
            ),
        };
        write!(
            f,
            "{action} {} {} {reason}",
            self.listed.uidl, self.listed.size
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 15, 12, 0, 0).unwrap()
    }

    /// The plan without a header filter.
    fn plan(
        listing: &[Listed],
        seen: &HashMap<MessageKey, SeenRow>,
        now: DateTime<Utc>,
        settings: PlanSettings,
    ) -> Plan {
        super::plan(listing, seen, now, settings, &Verdicts::new())
    }

    fn listed(msg: u32, uidl: &str, size: u64) -> Listed {
        Listed {
            msg,
            uidl: uidl.into(),
            size,
        }
    }

    fn delivered(uidl: &str, copy: u32, days_ago: i64) -> (MessageKey, SeenRow) {
        let t = now() - Duration::days(days_ago);
        (
            MessageKey::new(uidl, copy),
            SeenRow {
                uidl: uidl.into(),
                copy,
                size: 10,
                first_seen: t,
                delivered_at: Some(t),
                location: Some("x".into()),
                deleted_at: None,
            },
        )
    }

    fn settings(retention: Retention, max_size: Option<u64>) -> PlanSettings {
        PlanSettings {
            retention,
            max_size,
            accept_uidl_reset: false,
        }
    }

    fn actions(p: &Plan) -> Vec<&Action> {
        p.messages.iter().map(|m| &m.action).collect()
    }

    #[test]
    fn an_empty_listing_keeps_only_rows_of_mail_still_kept_on_the_server() {
        let day = |d: i64| now() - Duration::days(20 - d);
        let row = |deleted: Option<DateTime<Utc>>| SeenRow {
            uidl: "u".into(),
            copy: 0,
            size: 1,
            first_seen: day(10),
            delivered_at: Some(day(10)),
            location: None,
            deleted_at: deleted,
        };
        let now = day(20);
        assert!(kept_when_absent(&row(None), now, Retention::Forever));
        assert!(kept_when_absent(&row(None), now, Retention::Days(14)));
        assert!(!kept_when_absent(&row(None), now, Retention::Days(0)));
        assert!(!kept_when_absent(&row(None), now, Retention::Days(7)));
        assert!(!kept_when_absent(
            &row(Some(day(11))),
            now,
            Retention::Forever
        ));
    }

    #[test]
    fn retention_boundary_table() {
        // (retention, days since first download, expected)
        let cases = [
            (Retention::Forever, 1000, "keep"),
            (Retention::Days(14), 13, "keep"),
            (Retention::Days(14), 14, "delete"),
            (Retention::Days(14), 15, "delete"),
            (Retention::Days(0), 0, "delete"),
        ];
        for (retention, age, want) in cases {
            let seen = [delivered("a", 0, age)].into_iter().collect();
            let p = plan(
                &[listed(1, "a", 10)],
                &seen,
                now(),
                settings(retention, None),
            );
            let got = p.messages[0].to_string();
            assert!(got.starts_with(want), "{retention} age {age}: {got}");
        }
    }

    /// Issue 14 item 4: a UIDL seen again after its message was DELEted
    /// names a new message; with 0d it must be fetched, never DELEted unread.
    #[test]
    fn a_reused_uidl_of_a_deleted_message_is_new() {
        let (key, mut row) = delivered("a", 0, 3);
        row.deleted_at = Some(now() - Duration::days(2));
        let seen = [(key, row)].into_iter().collect();
        let p = plan(
            &[listed(1, "a", 10)],
            &seen,
            now(),
            settings(Retention::Days(0), None),
        );
        assert_eq!(actions(&p), [&Action::Fetch { then_delete: true }]);
        assert_eq!(p.new_count(), 1);
    }

    /// Issue 14 item 11: a retention reaching past the end of the calendar
    /// keeps the message instead of overflowing.
    #[test]
    fn a_retention_past_the_end_of_the_calendar_keeps_without_panicking() {
        let seen = [delivered("a", 0, 1)].into_iter().collect();
        let p = plan(
            &[listed(1, "a", 10)],
            &seen,
            now(),
            settings(Retention::Days(u32::MAX), None),
        );
        assert_eq!(actions(&p), [&Action::Keep { until: None }]);
    }

    #[test]
    fn new_messages_are_fetched_and_zero_days_deletes_after_delivery() {
        let seen = HashMap::new();
        let p = plan(
            &[listed(1, "a", 10)],
            &seen,
            now(),
            settings(Retention::Days(0), None),
        );
        assert_eq!(actions(&p), [&Action::Fetch { then_delete: true }]);
        let p = plan(
            &[listed(1, "a", 10)],
            &seen,
            now(),
            settings(Retention::Days(3), None),
        );
        assert_eq!(actions(&p), [&Action::Fetch { then_delete: false }]);
    }

    #[test]
    fn max_size_boundary_table() {
        let seen = HashMap::new();
        for (size, want_skip) in [(99, false), (100, false), (101, true)] {
            let p = plan(
                &[listed(1, "a", size)],
                &seen,
                now(),
                settings(Retention::Forever, Some(100)),
            );
            assert_eq!(
                matches!(p.messages[0].action, Action::Skip(_)),
                want_skip,
                "size {size}"
            );
        }
    }

    #[test]
    fn never_fetched_messages_are_never_deleted_by_retention() {
        let seen = HashMap::new();
        let p = plan(
            &[listed(1, "a", 500)],
            &seen,
            now(),
            settings(Retention::Days(0), Some(100)),
        );
        assert!(matches!(p.messages[0].action, Action::Skip(_)));
    }

    #[test]
    fn duplicated_uidls_are_separate_copies_each_fetched_once() {
        let seen = [delivered("dup", 0, 1)].into_iter().collect();
        let p = plan(
            &[
                listed(1, "dup", 10),
                listed(2, "dup", 10),
                listed(3, "x", 10),
            ],
            &seen,
            now(),
            settings(Retention::Forever, None),
        );
        assert_eq!(
            actions(&p),
            [
                &Action::Keep { until: None },
                &Action::Fetch { then_delete: false },
                &Action::Fetch { then_delete: false }
            ]
        );
        assert_eq!(p.messages[1].copy, 1);
        assert_eq!(p.keys().len(), 3);
    }

    #[test]
    fn all_unknown_uidls_with_a_full_store_is_a_reset() {
        let seen: HashMap<_, _> = (0..10)
            .map(|i| delivered(&format!("old{i}"), 0, 1))
            .collect();
        let listing: Vec<_> = (1..=10)
            .map(|i| listed(i, &format!("new{i}"), 10))
            .collect();
        let p = plan(&listing, &seen, now(), settings(Retention::Forever, None));
        assert_eq!(
            p.uidl_reset,
            Some(UidlReset {
                on_server: 10,
                known: 10
            })
        );
        let mut s = settings(Retention::Forever, None);
        s.accept_uidl_reset = true;
        assert_eq!(plan(&listing, &seen, now(), s).uidl_reset, None);
    }

    #[test]
    fn a_few_new_messages_after_a_mailbox_was_emptied_elsewhere_is_not_a_reset() {
        let seen: HashMap<_, _> = (0..10)
            .map(|i| delivered(&format!("old{i}"), 0, 1))
            .collect();
        let p = plan(
            &[listed(1, "fresh", 10)],
            &seen,
            now(),
            settings(Retention::Forever, None),
        );
        assert_eq!(p.uidl_reset, None);
        let empty = plan(
            &[listed(1, "x", 1)],
            &HashMap::new(),
            now(),
            settings(Retention::Forever, None),
        );
        assert_eq!(empty.uidl_reset, None);
    }

    #[test]
    fn filter_verdicts_apply_to_new_messages_only() {
        let seen = [delivered("old", 0, 1)].into_iter().collect();
        let listing = [
            listed(1, "old", 10),
            listed(2, "spam", 10),
            listed(3, "later", 10),
            listed(4, "ok", 10),
            listed(5, "broken", 10),
        ];
        let mut verdicts = Verdicts::new();
        verdicts.insert(MessageKey::new("old", 0), Ok(Verdict::Delete));
        verdicts.insert(MessageKey::new("spam", 0), Ok(Verdict::Delete));
        verdicts.insert(MessageKey::new("later", 0), Ok(Verdict::Skip));
        verdicts.insert(MessageKey::new("ok", 0), Ok(Verdict::Fetch));
        verdicts.insert(
            MessageKey::new("broken", 0),
            Err(FilterError::Temporary {
                command: "f".into(),
                stderr: String::new(),
            }),
        );
        let p = super::plan(
            &listing,
            &seen,
            now(),
            settings(Retention::Forever, None),
            &verdicts,
        );
        let lines: Vec<String> = p.messages.iter().map(|m| m.to_string()).collect();
        assert_eq!(lines[0], "keep old 10 retention forever");
        assert_eq!(lines[1], "delete spam 10 filter: exit 1");
        assert_eq!(lines[2], "skip later 10 filter: exit 2 (not now)");
        assert_eq!(lines[3], "fetch ok 10 new");
        assert!(
            lines[4].starts_with("skip broken 10 filter failed"),
            "{}",
            lines[4]
        );
        assert_eq!(p.new_count(), 4);
    }

    proptest::proptest! {
        /// Whatever the listing, store and settings: a DELE is planned only
        /// for a message the store says was delivered, or one the filter
        /// condemned; never for one merely skipped or unknown.
        #[test]
        fn the_plan_never_deletes_an_undelivered_message(
            listing in proptest::collection::vec((0u8..6, 0u64..300), 0..12),
            rows in proptest::collection::vec((0u8..6, 0u32..2, 0i64..40, proptest::bool::ANY), 0..12),
            retention in proptest::option::of(0u32..30),
            max_size in proptest::option::of(0u64..300),
        ) {
            let listing: Vec<_> = listing
                .iter()
                .enumerate()
                .map(|(i, (u, size))| listed(i as u32 + 1, &format!("u{u}"), *size))
                .collect();
            let seen: HashMap<_, _> = rows
                .iter()
                .map(|(u, copy, age, done)| {
                    let (key, mut row) = delivered(&format!("u{u}"), *copy, *age);
                    if !done {
                        row.delivered_at = None;
                    }
                    (key, row)
                })
                .collect();
            let retention = retention.map_or(Retention::Forever, Retention::Days);
            let p = plan(&listing, &seen, now(), settings(retention, max_size));
            for m in &p.messages {
                if let Action::Delete(_) = m.action {
                    let row = seen.get(&m.key());
                    proptest::prop_assert!(
                        row.is_some_and(|r| r.delivered_at.is_some()),
                        "planned DELE of undelivered {:?}", m
                    );
                }
            }
        }
    }

    #[test]
    fn dry_run_lines_have_action_uidl_size_reason() {
        let p = plan(
            &[listed(1, "abc", 42)],
            &HashMap::new(),
            now(),
            settings(Retention::Forever, None),
        );
        assert_eq!(p.messages[0].to_string(), "fetch abc 42 new");
    }
}
