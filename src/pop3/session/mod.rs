//! The async POP3 client over any `AsyncRead + AsyncWrite` stream.
//!
//! Protocol states are types: `Greeted` (AUTHORIZATION state) can only log in or
//! upgrade to TLS; only `Transaction` can RETR or DELE. The async code here only
//! moves bytes and applies timeouts; parsing is `codec`'s. Server replies are
//! matched to commands by position alone. Pipelining (several commands sent
//! before their replies are read) follows RFC 2449: only in `Transaction`,
//! and only when the server lists PIPELINING; before login every command
//! waits for its reply. The CAPA after login goes out with STAT, UIDL and
//! LIST when the CAPA before login listed PIPELINING (which RFC 2449 does
//! not let change at login); from then on the CAPA after login decides.
//!
//! The files, one job each: `error` (how a session fails), `connection`
//! (bytes to and from one server, with deadlines), `authorization` (the
//! greeting, CAPA, STLS, UTF8 and login), `transaction` (listing, RETR, TOP,
//! DELE, RSET, QUIT). The limits on what a server may send are kept together
//! below, where all of them can see them.

mod authorization;
mod connection;
mod error;
mod transaction;

pub use authorization::Greeted;
pub use connection::{Bound, Connection, Reply, Settings, Trace};
pub use error::{BodyError, SessionError};
pub use transaction::{Listed, Transaction};

/// Most bytes of a listing (UIDL, LIST, CAPA) kept in memory: bounds what a
/// hostile server can make us allocate. 64 MiB is about a million messages.
const MAX_LISTING: u64 = 64 << 20;

/// Most octets of a CAPA reply.
const MAX_CAPA: u64 = 64 << 10;

/// Octets a listing line may take per message: "4294967295 " plus a
/// 70-character UIDL (RFC 1939) and the line end, rounded up; LIST's lines
/// are shorter.
const LISTING_LINE: u64 = 128;

/// The slowest a multi-line reply may arrive, on top of the timeout: a
/// server that trickles (or never ends) a reply cannot hold the account's
/// lock for ever. 1 KiB/s is slower than any link mail travels over.
const MIN_RATE: u64 = 1024;

/// How far a message may run past the size LIST announced before the RETR
/// is stopped: LIST counts CRLF line ends, so the decoded message is
/// smaller; a server that sends more than twice as much (plus slack for
/// servers that rewrite a message) is broken or hostile.
fn retr_limit(listed: u64) -> u64 {
    listed.saturating_mul(2).saturating_add(1 << 20)
}

#[cfg(test)]
mod tests;
