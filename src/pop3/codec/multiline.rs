//! The streaming decoder of multi-line bodies: dot-unstuffing, the
//! terminator, CRLF to LF, at any chunk boundary.

use super::*;

/// What the decoder knows about the stream it is in the middle of. Only a
/// few bytes of state, never a line, so lines of any length stream through.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum DecodeState {
    /// At the first byte of a line (the body begins here).
    #[default]
    LineStart,
    /// Inside a line; copying spans.
    InLine,
    /// Saw a '\r' inside a line; whether it is data depends on the next byte.
    Cr,
    /// The line began with '.', which was dropped (unstuffing or terminator).
    Dot,
    /// Saw ".\r" at a line start: the terminator unless the next byte is not '\n'.
    DotCr,
    /// The terminator was consumed.
    Done,
}

/// Streaming decoder for the body of a multi-line response (everything after the +OK status line).
/// Dot-unstuffing, the ".\r\n" terminator (also ".\n" from bare-LF servers), CRLF -> LF, bare LF kept as LF,
/// a CR not followed by LF kept as data. Works across arbitrary chunk boundaries (a chunk may end in the middle of
/// "\r\n.\r\n"); never buffers a whole line: it holds only a few bytes of state, so lines of any length stream through.
#[derive(Debug, Default)]
pub struct MultilineDecoder {
    state: DecodeState,
    lines: u64,
}

/// How far a call to [`MultilineDecoder::decode`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// The terminator has not been seen yet; all input was consumed.
    NeedMore,
    /// The terminator was seen; bytes after it were left unconsumed.
    End,
}

impl MultilineDecoder {
    /// A decoder positioned at the start of a body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decode from `input`, appending decoded bytes (LF line ends) to `out`. Returns (consumed, Decoded).
    /// When End is returned, `consumed` stops right after the terminator so the caller keeps the following bytes
    /// (pipelining!). When NeedMore is returned, all of `input` was consumed.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Decoded) {
        let mut pos = 0;
        while let Some(rest) = input.get(pos..).filter(|r| !r.is_empty()) {
            if self.state == DecodeState::Done {
                break;
            }
            if self.state == DecodeState::InLine {
                // The fast path: ordinary text is copied span by span.
                match memchr2(b'\r', b'\n', rest) {
                    None => {
                        out.extend_from_slice(rest);
                        pos = input.len();
                    }
                    Some(at) => {
                        out.extend_from_slice(rest.get(..at).unwrap_or_default());
                        if rest.get(at) == Some(&b'\n') {
                            self.end_line(out);
                        } else {
                            self.state = DecodeState::Cr;
                        }
                        pos += at + 1;
                    }
                }
                continue;
            }
            let Some(&byte) = rest.first() else { break };
            // `consume` is false where the byte belongs to the next state,
            // which sees it again on the next turn of the loop.
            let consume = match (self.state, byte) {
                (DecodeState::LineStart, b'.') => {
                    self.state = DecodeState::Dot;
                    true
                }
                (DecodeState::LineStart | DecodeState::Cr, b'\n') => {
                    self.end_line(out);
                    true
                }
                (DecodeState::LineStart, b'\r') => {
                    self.state = DecodeState::Cr;
                    true
                }
                (DecodeState::Dot, b'\r') => {
                    self.state = DecodeState::DotCr;
                    true
                }
                (DecodeState::Dot | DecodeState::DotCr, b'\n') => {
                    self.state = DecodeState::Done;
                    true
                }
                (DecodeState::Cr | DecodeState::DotCr, _) => {
                    // That '\r' was not part of a line end, so it is data.
                    out.push(b'\r');
                    self.state = DecodeState::InLine;
                    false
                }
                (DecodeState::LineStart | DecodeState::Dot, _) => {
                    self.state = DecodeState::InLine;
                    false
                }
                (DecodeState::InLine | DecodeState::Done, _) => false,
            };
            if consume {
                pos += 1;
            }
        }
        let status = if self.state == DecodeState::Done {
            Decoded::End
        } else {
            Decoded::NeedMore
        };
        (pos, status)
    }

    /// Number of decoded lines emitted so far (used to bound listings).
    pub fn lines(&self) -> u64 {
        self.lines
    }

    fn end_line(&mut self, out: &mut Vec<u8>) {
        out.push(b'\n');
        self.lines = self.lines.saturating_add(1);
        self.state = DecodeState::LineStart;
    }
}
