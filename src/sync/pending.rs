//! Deliveries a killed run left pending, found in the seen-store and
//! resolved before anything is fetched; and the target each account (or
//! pending row) delivers to.

use crate::config::{Account, Delivery};
use crate::deliver::imap::Imap;
use crate::deliver::maildir::Maildir;
use crate::deliver::mbox::Mbox;
use crate::deliver::mda::Mda;
use crate::deliver::{Prepared, Target};
use crate::sanitize::sanitize;
use crate::store::{MessageKey, Store};

use super::{RunOptions, SyncError};

pub(super) fn open_target(
    deliver: &Delivery,
    account: &Account,
    opts: &RunOptions,
) -> Box<dyn Target> {
    match deliver {
        Delivery::Maildir(path) => Box::new(Maildir::new(path.clone())),
        Delivery::Mbox(path) => Box::new(
            Mbox::new(path.clone(), opts.now, account.timeout)
                .journal_in(&opts.state_dir, &account.name),
        ),
        Delivery::Mda(command) => Box::new(Mda::new(
            command.clone(),
            account.user.clone(),
            account.command_timeout,
            opts.state_dir.clone(),
        )),
        Delivery::Imap(spec) => Box::new(Imap::new(
            (**spec).clone(),
            account.timeout,
            account.command_timeout,
            opts.now,
            opts.state_dir.clone(),
        )),
    }
}

/// The target a pending row was recorded for; the config may have changed
/// since.
fn target_of_pending(
    record: &str,
    account: &Account,
    opts: &RunOptions,
) -> Option<Box<dyn Target>> {
    // An IMAP target needs the config's secret: only the account's own
    // target can resolve its pending rows.
    if account.deliver.to_record() == record {
        return Some(open_target(&account.deliver, account, opts));
    }
    Some(open_target(&Delivery::from_record(record)?, account, opts))
}

/// Finish or roll back deliveries that a killed run left pending: a Maildir
/// file that made it into new/ or cur/ is recorded as delivered; a torn mbox
/// append is cut off; anything else is forgotten, so the message is fetched
/// again.
pub(super) fn resolve_pending(
    account: &Account,
    store: &mut Store,
    opts: &RunOptions,
) -> Result<(), SyncError> {
    for row in store.pending(&account.name)? {
        let key = MessageKey::new(row.uidl.clone(), row.copy);
        let Some(mut target) = target_of_pending(&row.target, account, opts) else {
            return Err(SyncError::UnknownPending { target: row.target });
        };
        let prepared = Prepared {
            location: row.location.clone(),
            offset: row.offset,
        };
        let outcome = target.recover(&prepared, row.started_at);
        for w in target.take_warnings() {
            opts.ui.warn(&format!("{}: {w}", account.name));
        }
        let uidl = sanitize(row.uidl.as_bytes(), 80);
        match outcome? {
            Some(location) => {
                let size = std::fs::metadata(&location).map(|m| m.len()).unwrap_or(0);
                store.mark_delivered(&account.name, &key, size, &location, opts.now)?;
                opts.ui.verbose(&format!(
                    "{}: interrupted delivery of {uidl} had completed ({location})",
                    account.name
                ));
            }
            None => {
                store.drop_pending(&account.name, &key)?;
                opts.ui.verbose(&format!(
                    "{}: interrupted delivery of {uidl} rolled back; it will be fetched again",
                    account.name
                ));
            }
        }
    }
    Ok(())
}
