//! mboxrd delivery: a `From <sender> <asctime>` separator, one more `>` on
//! every line matching `^>*From `, a blank line after each message, LF line
//! ends, fsync before the delivery counts.
//!
//! A batch of messages (`batch`, one `sink` a message, quoted by `quoting`)
//! is appended under both the locks mutt and procmail expect (`lock`), held
//! from `prepare_batch` until the batch is committed or rolled back, and
//! journaled so that the next run can tell exactly which bytes a killed run
//! wrote (`journal`): recovery (`recovery`) keeps the whole messages, cuts
//! off a torn one, and never touches what another program appended.
//! Only `sync` (and the fuzz target) use it, through `Target` (`target`).

mod batch;
mod journal;
mod lock;
mod quoting;
mod recovery;
mod sink;
mod target;

pub use target::Mbox;
