//! Decoded multi-line bodies: a CAPA reply (`Capabilities::parse`, then
//! every accessor) and the UIDL and LIST listings. Besides "no panic":
//! accepted UIDs are what RFC 1939 allows, message numbers start at 1,
//! SASL mechanisms come out upper-cased, raw CAPA lines are trimmed and
//! never empty. A TOP reply's header block goes through the same kind of
//! path (`headers::field`, `headers::display` for `peek` and the filter), so
//! it is fed here too: display text is bounded and free of control characters.

use popsync::headers;
use popsync::pop3::codec::{
    Capabilities, CodecError, Expire, parse_list_listing, parse_uidl_listing,
};

const NAMES: &[&str] = &[
    "STLS",
    "PIPELINING",
    "TOP",
    "UIDL",
    "USER",
    "RESP-CODES",
    "SASL",
    "LOGIN-DELAY",
    "EXPIRE",
    "IMPLEMENTATION",
    "",
    "sasl",
];

fn check_error(e: &CodecError) {
    if let CodecError::MalformedListing { line, .. } = e {
        assert!(line.chars().count() <= 101, "{line:?}");
        assert!(!line.chars().any(char::is_control), "{line:?}");
    }
}

/// Runs every check of this target on one input; panics on a failure.
pub fn check(data: &[u8]) {
    let caps = Capabilities::parse(data);
    let _ = (
        caps.stls(),
        caps.pipelining(),
        caps.top(),
        caps.uidl(),
        caps.user(),
        caps.resp_codes(),
    );
    for m in caps.sasl_mechanisms() {
        assert_eq!(m, m.to_ascii_uppercase());
        assert!(!m.is_empty());
    }
    let _ = caps.login_delay();
    if let Some(Expire::Days(_) | Expire::Never) = caps.expire() {
        assert!(caps.has("expire"));
    }
    let mut raw = 0;
    for line in caps.lines() {
        raw += 1;
        assert!(!line.is_empty());
        assert_eq!(line.trim_ascii(), line);
        // Every announced name is found again, whatever its case.
        if let Some(name) = line.split_ascii_whitespace().next() {
            assert!(caps.has(name), "{name:?} not found");
            assert!(caps.has(&name.to_ascii_lowercase()));
            assert!(caps.args(name).is_some());
        }
    }
    assert!(raw <= data.iter().filter(|&&b| b == b'\n').count() + 1);
    for name in NAMES {
        let _ = (caps.has(name), caps.args(name));
    }

    for name in ["Subject", "From", "Return-Path"] {
        if let Some(value) = headers::field(data, name) {
            let shown = headers::display(&value, 60);
            assert!(shown.chars().count() <= 61, "{shown:?}");
            assert!(!shown.chars().any(char::is_control), "{shown:?}");
        }
    }
    let _ = popsync::deliver::envelope_sender(data);

    match parse_uidl_listing(data) {
        Ok(entries) => {
            for (n, uid) in entries {
                assert!(n >= 1);
                assert!((1..=70).contains(&uid.len()), "uid {uid:?}");
                assert!(
                    uid.bytes().all(|b| (0x21..=0x7e).contains(&b)),
                    "uid {uid:?}"
                );
            }
        }
        Err(e) => check_error(&e),
    }
    match parse_list_listing(data) {
        Ok(entries) => {
            for (n, _size) in entries {
                assert!(n >= 1);
            }
        }
        Err(e) => check_error(&e),
    }
}
