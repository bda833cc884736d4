//! The streaming multi-line decoder (dot-unstuffing, terminator, CRLF -> LF)
//! fed in chunks whose sizes come from the input, compared with decoding the
//! same bytes in one call (differential), plus a round trip: what it decoded,
//! stuffed again the way a server would, decodes to the same bytes.
//!
//! Input layout: byte 0 says how many of the following bytes (1-4) are chunk
//! sizes (each taken mod 32; 0 means 1), cycled over the rest, the payload.

use popsync::pop3::codec::{Decoded, MultilineDecoder};

struct Run {
    out: Vec<u8>,
    consumed: usize,
    end: bool,
    lines: u64,
}

fn decode_in(payload: &[u8], sizes: &[usize]) -> Run {
    let mut d = MultilineDecoder::new();
    let mut out = Vec::new();
    let mut consumed = 0;
    let mut end = false;
    let mut sizes = sizes.iter().cycle();
    let mut rest = payload;
    while !rest.is_empty() {
        let size = (*sizes.next().expect("non-empty")).min(rest.len());
        let (chunk, after) = rest.split_at(size);
        let (n, state) = d.decode(chunk, &mut out);
        assert!(
            n <= chunk.len(),
            "consumed {n} of a {}-byte chunk",
            chunk.len()
        );
        consumed += n;
        match state {
            Decoded::NeedMore => assert_eq!(n, chunk.len(), "NeedMore must consume everything"),
            Decoded::End => {
                end = true;
                // A finished decoder takes nothing more.
                let before = out.len();
                assert_eq!(d.decode(after, &mut out), (0, Decoded::End));
                assert_eq!(d.decode(b".\r\n", &mut out), (0, Decoded::End));
                assert_eq!(out.len(), before);
                break;
            }
        }
        rest = after;
    }
    Run {
        out,
        consumed,
        end,
        lines: d.lines(),
    }
}

/// What a server sends for `body` (LF-terminated lines): stuffed, CRLF, ".".
fn stuff(body: &[u8]) -> Vec<u8> {
    let mut wire = Vec::with_capacity(body.len() * 2 + 3);
    for line in body.split_inclusive(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\n").expect("every line ends in LF");
        if line.first() == Some(&b'.') {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b".\r\n");
    wire
}

/// Runs every check of this target on one input; panics on a failure.
pub fn check(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let n = (usize::from(first) % 4 + 1).min(rest.len());
    let (head, payload) = rest.split_at(n);
    let mut sizes: Vec<usize> = head.iter().map(|&b| usize::from(b % 32).max(1)).collect();
    if sizes.is_empty() {
        sizes.push(1);
    }

    let whole = decode_in(payload, &[usize::MAX]);
    let chunked = decode_in(payload, &sizes);
    assert_eq!(
        whole.out, chunked.out,
        "output differs when chunked {sizes:?}"
    );
    assert_eq!(
        whole.consumed, chunked.consumed,
        "consumed differs when chunked"
    );
    assert_eq!(whole.end, chunked.end);
    assert_eq!(whole.lines, chunked.lines);

    assert!(whole.consumed <= payload.len());
    if !whole.end {
        assert_eq!(whole.consumed, payload.len());
    }
    let lfs = whole.out.iter().filter(|&&b| b == b'\n').count() as u64;
    assert_eq!(whole.lines, lfs, "lines() must count emitted lines");
    // Decoding never makes data: at most one output byte per input byte.
    assert!(whole.out.len() <= whole.consumed);

    if whole.end {
        // The terminator is a line of its own, so the body ends in LF.
        assert!(whole.out.is_empty() || whole.out.ends_with(b"\n"));
        let wire = stuff(&whole.out);
        let again = decode_in(&wire, &sizes);
        assert!(again.end, "re-stuffed body did not end");
        assert_eq!(again.consumed, wire.len());
        assert_eq!(again.out, whole.out, "re-stuffed body decodes differently");
    }
}
