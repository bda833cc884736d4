//! The POP3 wire format, without any I/O.
//!
//! Everything that turns values into bytes or bytes into values lives here so
//! that the async session (`session.rs`) only reads and writes, and so that
//! every parser can be unit-tested with plain byte strings, split at any
//! point. Parsers are pure and bounded: a reader that has not seen a whole
//! line gets "need more" instead of an error, no function here panics on
//! server bytes, and nothing buffers an unbounded amount of data.
//!
//! Callers: the session. One file per part of the wire format: `command`,
//! `status` (status lines and line splitting), `multiline`, `listing`
//! (UIDL, LIST, STAT) and `capa`; the error type and limits live here, and so
//! do the unit tests of them all.

use crate::sanitize::sanitize;

use memchr::{memchr, memchr2};

/// Longest status line / listing line we accept (RFC 2449 says 512 octets; we allow more for broken servers).
pub const MAX_LINE: usize = 8192;

/// How much of an offending line an error message quotes: enough to
/// recognise it, short enough not to flood a terminal or a log.
const ERROR_EXCERPT: usize = 100;

/// Longest UID RFC 1939 allows; anything longer is not a UID we can trust.
const MAX_UID: usize = 70;

/// Why a command could not be rendered or a server line could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum CodecError {
    /// A CR, LF or NUL would let a value end the command early and inject another one.
    #[error("refusing to send {what} containing CR, LF or NUL")]
    UnsafeArgument {
        /// Which argument: "user name", "password" or "argument".
        what: &'static str,
    },
    /// The server sent a line longer than we are willing to buffer.
    #[error("line longer than {max} octets")]
    LineTooLong {
        /// The limit that was exceeded.
        max: usize,
    },
    /// A line where "+OK", "-ERR" or "+ " was expected.
    #[error("malformed status line {line:?}")]
    MalformedStatus {
        /// The offending line, sanitised and truncated.
        line: String,
    },
    /// A listing line we refuse to interpret rather than store garbage.
    #[error("malformed {what} line {line:?}")]
    MalformedListing {
        /// Which listing: "UIDL", "LIST" or "STAT".
        what: &'static str,
        /// The offending line, sanitised and truncated.
        line: String,
    },
}

mod capa;
mod command;
mod listing;
mod multiline;
mod status;

pub use capa::*;
pub use command::*;
pub use listing::*;
pub use multiline::*;
pub use status::*;

#[cfg(test)]
mod tests {
    use super::*;

    // ---- status lines ----

    fn status(line: &str) -> StatusLine {
        parse_status(line.as_bytes()).expect("valid status line")
    }

    #[test]
    fn ok_status_keeps_text() {
        let s = status("+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>");
        assert_eq!(s.status, Status::Ok);
        assert_eq!(s.code, None);
        assert_eq!(
            s.text,
            "POP3 server ready <1896.697170952@dbc.mtview.ca.us>"
        );
    }

    #[test]
    fn err_status_keeps_text() {
        let s = status("-ERR no such message");
        assert_eq!(s.status, Status::Err);
        assert_eq!(s.text, "no such message");
    }

    #[test]
    fn lower_case_indicators_are_accepted() {
        assert_eq!(status("+ok fine").status, Status::Ok);
        assert_eq!(status("-err nope").status, Status::Err);
        assert_eq!(status("-Err nope").text, "nope");
    }

    #[test]
    fn ok_without_text_is_fine() {
        let s = status("+OK");
        assert_eq!((s.status, s.code, s.text.as_str()), (Status::Ok, None, ""));
        assert_eq!(status("-ERR").status, Status::Err);
    }

    #[test]
    fn plus_space_is_a_continuation_with_payload() {
        let s = status("+ VXNlcm5hbWU6");
        assert_eq!(s.status, Status::Continue);
        assert_eq!(s.text, "VXNlcm5hbWU6");
    }

    #[test]
    fn bare_plus_is_an_empty_continuation() {
        let s = status("+");
        assert_eq!(s.status, Status::Continue);
        assert_eq!(s.text, "");
        assert_eq!(status("+ ").text, "");
    }

    #[test]
    fn garbage_is_a_malformed_status() {
        for line in [
            "",
            "OK",
            "+OKAY",
            "-ERROR x",
            "* OK imap",
            "+x",
            " +OK",
            "HTTP/1.1 400",
        ] {
            assert!(
                matches!(
                    parse_status(line.as_bytes()),
                    Err(CodecError::MalformedStatus { .. })
                ),
                "{line:?}"
            );
        }
    }

    #[test]
    fn malformed_status_error_is_sanitised_and_short() {
        let mut line = b"\x1b[31mevil".to_vec();
        line.extend(std::iter::repeat_n(b'x', 500));
        let Err(CodecError::MalformedStatus { line }) = parse_status(&line) else {
            panic!("expected MalformedStatus");
        };
        assert!(!line.contains('\x1b'));
        assert!(line.starts_with("\\x1b[31mevil"));
        assert!(line.chars().count() <= ERROR_EXCERPT + 1);
        assert!(line.ends_with('…'));
    }

    #[test]
    fn overlong_status_is_refused() {
        let mut line = b"+OK ".to_vec();
        line.resize(MAX_LINE + 1, b'a');
        assert_eq!(
            parse_status(&line),
            Err(CodecError::LineTooLong { max: MAX_LINE })
        );
    }

    #[test]
    fn status_line_with_invalid_utf8_is_read_lossily() {
        let s = parse_status(b"-ERR caf\xe9").expect("parses");
        assert_eq!(s.text, "caf\u{fffd}");
    }

    #[test]
    fn known_response_codes_are_recognised() {
        let cases = [
            ("-ERR [IN-USE] mailbox locked", RespCode::InUse),
            ("-ERR [LOGIN-DELAY] wait", RespCode::LoginDelay),
            ("-ERR [SYS/TEMP] try later", RespCode::SysTemp),
            ("-ERR [SYS/PERM] go away", RespCode::SysPerm),
            ("-ERR [AUTH] bad password", RespCode::Auth),
            ("-ERR [sys/temp] lower case", RespCode::SysTemp),
        ];
        for (line, code) in cases {
            let s = status(line);
            assert_eq!(s.status, Status::Err);
            assert_eq!(s.code, Some(code), "{line}");
        }
        assert_eq!(
            status("-ERR [IN-USE] mailbox locked").text,
            "mailbox locked"
        );
    }

    #[test]
    fn unknown_sub_level_falls_back_to_its_parent() {
        assert_eq!(status("-ERR [AUTH/EXPIRED] x").code, Some(RespCode::Auth));
        assert_eq!(
            status("-ERR [SYS/TEMP/DISK] x").code,
            Some(RespCode::SysTemp)
        );
    }

    #[test]
    fn unknown_code_is_kept_as_other() {
        let s = status("-ERR [X-QUOTA/FULL] over quota");
        assert_eq!(s.code, Some(RespCode::Other("X-QUOTA/FULL".into())));
        assert_eq!(s.text, "over quota");
        assert_eq!(
            status("-ERR [SYS] x").code,
            Some(RespCode::Other("SYS".into()))
        );
    }

    #[test]
    fn code_without_closing_bracket_is_text() {
        let s = status("-ERR [IN-USE mailbox locked");
        assert_eq!(s.code, None);
        assert_eq!(s.text, "[IN-USE mailbox locked");
    }

    #[test]
    fn bracketed_text_with_spaces_is_not_a_code() {
        let s = status("-ERR [not a code] hello");
        assert_eq!(s.code, None);
        assert_eq!(s.text, "[not a code] hello");
        assert_eq!(status("-ERR [] x").code, None);
        assert_eq!(status("-ERR [SYS//TEMP] x").code, None);
    }

    #[test]
    fn code_on_ok_reply_is_parsed_and_not_on_a_challenge() {
        assert_eq!(status("+OK [IN-USE] odd").code, Some(RespCode::InUse));
        assert_eq!(status("+ [AUTH]").code, None);
    }

    #[test]
    fn temporary_codes_are_exactly_in_use_login_delay_and_sys_temp() {
        assert!(RespCode::InUse.is_temporary());
        assert!(RespCode::LoginDelay.is_temporary());
        assert!(RespCode::SysTemp.is_temporary());
        assert!(!RespCode::SysPerm.is_temporary());
        assert!(!RespCode::Auth.is_temporary());
        assert!(!RespCode::Other("IN-USE-ISH".into()).is_temporary());
    }

    // ---- commands ----

    fn wire(c: Command) -> String {
        String::from_utf8(c.to_wire().expect("renders")).expect("ascii")
    }

    #[test]
    fn every_command_renders_with_crlf() {
        let cases = [
            (Command::Capa, "CAPA\r\n"),
            (Command::Stls, "STLS\r\n"),
            (Command::User("joe".into()), "USER joe\r\n"),
            (Command::Pass("se cret".into()), "PASS se cret\r\n"),
            (
                Command::Apop {
                    user: "mrose".into(),
                    digest: "c4c9334bac560ecc979e58001b3e22fb".into(),
                },
                "APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n",
            ),
            (
                Command::Auth {
                    mechanism: "PLAIN".into(),
                    initial_response: None,
                },
                "AUTH PLAIN\r\n",
            ),
            (
                Command::Auth {
                    mechanism: "PLAIN".into(),
                    initial_response: Some("AGpvZQBzZWNyZXQ=".into()),
                },
                "AUTH PLAIN AGpvZQBzZWNyZXQ=\r\n",
            ),
            (
                Command::Auth {
                    mechanism: "EXTERNAL".into(),
                    initial_response: Some("=".into()),
                },
                "AUTH EXTERNAL =\r\n",
            ),
            (Command::AuthResponse("dGVzdA==".into()), "dGVzdA==\r\n"),
            (Command::AuthResponse("*".into()), "*\r\n"),
            (Command::Stat, "STAT\r\n"),
            (Command::List(None), "LIST\r\n"),
            (Command::List(Some(2)), "LIST 2\r\n"),
            (Command::Uidl(None), "UIDL\r\n"),
            (Command::Uidl(Some(7)), "UIDL 7\r\n"),
            (Command::Retr(1), "RETR 1\r\n"),
            (Command::Top { msg: 3, lines: 0 }, "TOP 3 0\r\n"),
            (Command::Dele(4294967295), "DELE 4294967295\r\n"),
            (Command::Rset, "RSET\r\n"),
            (Command::Noop, "NOOP\r\n"),
            (Command::Quit, "QUIT\r\n"),
        ];
        for (command, expected) in cases {
            assert_eq!(wire(command), expected);
        }
    }

    #[test]
    fn empty_initial_response_is_sent_as_equals_sign() {
        let c = Command::Auth {
            mechanism: "EXTERNAL".into(),
            initial_response: Some(String::new()),
        };
        assert_eq!(wire(c), "AUTH EXTERNAL =\r\n");
    }

    #[test]
    fn cr_lf_and_nul_are_refused_in_every_string_argument() {
        for bad in ["a\rb", "a\nb", "a\0b", "joe\r\nDELE 1"] {
            let unsafe_ = |what| Err(CodecError::UnsafeArgument { what });
            assert_eq!(Command::User(bad.into()).to_wire(), unsafe_("user name"));
            assert_eq!(Command::Pass(bad.into()).to_wire(), unsafe_("password"));
            let apop_user = Command::Apop {
                user: bad.into(),
                digest: "abc".into(),
            };
            assert_eq!(apop_user.to_wire(), unsafe_("user name"));
            let apop_digest = Command::Apop {
                user: "joe".into(),
                digest: bad.into(),
            };
            assert_eq!(apop_digest.to_wire(), unsafe_("argument"));
            let auth_mech = Command::Auth {
                mechanism: bad.into(),
                initial_response: None,
            };
            assert_eq!(auth_mech.to_wire(), unsafe_("argument"));
            let auth_ir = Command::Auth {
                mechanism: "PLAIN".into(),
                initial_response: Some(bad.into()),
            };
            assert_eq!(auth_ir.to_wire(), unsafe_("argument"));
            assert_eq!(
                Command::AuthResponse(bad.into()).to_wire(),
                unsafe_("argument")
            );
        }
    }

    #[test]
    fn redacted_never_contains_the_secret() {
        let secret = "hunter2-sekrit";
        let commands = [
            Command::Pass(secret.into()),
            Command::Apop {
                user: "joe".into(),
                digest: secret.into(),
            },
            Command::Auth {
                mechanism: "PLAIN".into(),
                initial_response: Some(secret.into()),
            },
            Command::AuthResponse(secret.into()),
        ];
        for c in commands {
            let r = c.redacted();
            assert!(!r.contains(secret), "{r}");
            assert!(r.contains(REDACTED), "{r}");
        }
        assert_eq!(Command::Pass(secret.into()).redacted(), "PASS <redacted>");
        let auth = Command::Auth {
            mechanism: "PLAIN".into(),
            initial_response: Some(secret.into()),
        };
        assert_eq!(auth.redacted(), "AUTH PLAIN <redacted>");
        let apop = Command::Apop {
            user: "joe".into(),
            digest: secret.into(),
        };
        assert_eq!(apop.redacted(), "APOP joe <redacted>");
    }

    #[test]
    fn redacted_keeps_user_name_and_plain_commands() {
        assert_eq!(Command::User("joe".into()).redacted(), "USER joe");
        assert_eq!(Command::Retr(5).redacted(), "RETR 5");
        let auth = Command::Auth {
            mechanism: "XOAUTH2".into(),
            initial_response: None,
        };
        assert_eq!(auth.redacted(), "AUTH XOAUTH2");
        assert_eq!(Command::User("a\x1bb".into()).redacted(), "USER a\\x1bb");
    }

    #[test]
    fn names_are_short_and_carry_no_arguments() {
        assert_eq!(Command::Retr(9).name(), "RETR");
        assert_eq!(Command::User("joe".into()).name(), "USER");
        assert_eq!(Command::Pass("x".into()).name(), "PASS");
        assert_eq!(Command::Top { msg: 1, lines: 2 }.name(), "TOP");
        let auth = Command::Auth {
            mechanism: "PLAIN".into(),
            initial_response: Some("x".into()),
        };
        assert_eq!(auth.name(), "AUTH PLAIN");
        assert!(!Command::AuthResponse("x".into()).name().contains('x'));
    }

    #[test]
    fn multiline_commands_are_the_listing_and_fetch_ones() {
        assert!(Command::Capa.is_multiline());
        assert!(Command::List(None).is_multiline());
        assert!(Command::Uidl(None).is_multiline());
        assert!(Command::Retr(1).is_multiline());
        assert!(Command::Top { msg: 1, lines: 0 }.is_multiline());
        assert!(!Command::List(Some(1)).is_multiline());
        assert!(!Command::Uidl(Some(1)).is_multiline());
        assert!(!Command::Stat.is_multiline());
        assert!(!Command::Dele(1).is_multiline());
        assert!(!Command::Quit.is_multiline());
    }

    // ---- split_line ----

    #[test]
    fn split_line_finds_crlf() {
        assert_eq!(split_line(b"+OK hi\r\nmore"), Ok(Some((6, 8))));
    }

    #[test]
    fn split_line_accepts_bare_lf() {
        assert_eq!(split_line(b"+OK hi\nmore"), Ok(Some((6, 7))));
        assert_eq!(split_line(b"\n"), Ok(Some((0, 1))));
        assert_eq!(split_line(b"\r\n"), Ok(Some((0, 2))));
    }

    #[test]
    fn split_line_asks_for_more_without_newline() {
        assert_eq!(split_line(b""), Ok(None));
        assert_eq!(split_line(b"+OK hi"), Ok(None));
        assert_eq!(split_line(b"+OK hi\r"), Ok(None));
    }

    #[test]
    fn split_line_refuses_too_long_lines() {
        let too_long = Err(CodecError::LineTooLong { max: MAX_LINE });
        assert_eq!(split_line(&vec![b'a'; MAX_LINE + 1]), too_long);
        assert_eq!(split_line(&vec![b'a'; MAX_LINE * 4]), too_long);
        let mut long_with_lf = vec![b'a'; MAX_LINE + 1];
        long_with_lf.push(b'\n');
        assert_eq!(split_line(&long_with_lf), too_long);
    }

    #[test]
    fn split_line_accepts_a_line_of_exactly_max_line() {
        let mut buf = vec![b'a'; MAX_LINE];
        assert_eq!(split_line(&buf), Ok(None));
        buf.push(b'\r');
        assert_eq!(split_line(&buf), Ok(None));
        buf.push(b'\n');
        assert_eq!(split_line(&buf), Ok(Some((MAX_LINE, MAX_LINE + 2))));
        buf.truncate(MAX_LINE);
        buf.push(b'\n');
        assert_eq!(split_line(&buf), Ok(Some((MAX_LINE, MAX_LINE + 1))));
    }

    // ---- multi-line decoder ----

    /// Feed `chunks` in order until End; returns the output, the total bytes
    /// consumed and whether the terminator was seen.
    fn decode_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> (Vec<u8>, usize, bool) {
        let mut decoder = MultilineDecoder::new();
        let mut out = Vec::new();
        let mut consumed = 0;
        for chunk in chunks {
            let (n, state) = decoder.decode(chunk, &mut out);
            consumed += n;
            match state {
                Decoded::End => return (out, consumed, true),
                Decoded::NeedMore => assert_eq!(n, chunk.len(), "NeedMore must consume everything"),
            }
        }
        (out, consumed, false)
    }

    fn decode_all(input: &[u8]) -> (Vec<u8>, usize, bool) {
        decode_chunks([input])
    }

    #[test]
    fn decoder_converts_a_simple_message() {
        let (out, consumed, end) = decode_all(b"Subject: hi\r\n\r\nbody\r\n.\r\n");
        assert!(end);
        assert_eq!(out, b"Subject: hi\n\nbody\n");
        assert_eq!(consumed, 24);
    }

    #[test]
    fn decoder_counts_lines() {
        let mut d = MultilineDecoder::new();
        let mut out = Vec::new();
        d.decode(b"1 a\r\n2 b\r\n\r\n.\r\n", &mut out);
        assert_eq!(d.lines(), 3);
    }

    #[test]
    fn stuffed_lone_dot_is_a_dot_line_not_the_end() {
        let (out, _, end) = decode_all(b"a\r\n..\r\nb\r\n.\r\n");
        assert!(end);
        assert_eq!(out, b"a\n.\nb\n");
    }

    #[test]
    fn only_the_first_dot_is_removed() {
        let (out, _, _) = decode_all(b"...x\r\n.x\r\n.\r\n");
        assert_eq!(out, b"..x\nx\n");
    }

    #[test]
    fn dots_inside_a_line_are_data() {
        let (out, _, _) = decode_all(b"a.b\r\nc .\r\n.\r\n");
        assert_eq!(out, b"a.b\nc .\n");
    }

    #[test]
    fn empty_body_ends_at_once() {
        let (out, consumed, end) = decode_all(b".\r\n");
        assert!(end);
        assert!(out.is_empty());
        assert_eq!(consumed, 3);
    }

    #[test]
    fn bare_lf_server_is_understood() {
        let (out, consumed, end) = decode_all(b"a\n..\n.b\n\n.\nNEXT");
        assert!(end);
        assert_eq!(out, b"a\n.\nb\n\n");
        assert_eq!(consumed, 11);
    }

    #[test]
    fn cr_not_followed_by_lf_is_data() {
        let (out, _, _) = decode_all(b"a\rb\r\n\rc\r\n.\rd\r\nx\r\r\n.\r\n");
        assert_eq!(out, b"a\rb\n\rc\n\rd\nx\r\n");
    }

    #[test]
    fn crlf_split_between_cr_and_lf_is_one_line_end() {
        let (out, _, end) = decode_chunks([&b"abc\r"[..], b"\ndef\r", b"\n.\r\n"]);
        assert!(end);
        assert_eq!(out, b"abc\ndef\n");
    }

    #[test]
    fn terminator_split_across_chunks_is_found() {
        let (out, consumed, end) = decode_chunks([&b"abc\r\n"[..], b".", b"\r", b"\nQUIT-REPLY"]);
        assert!(end);
        assert_eq!(out, b"abc\n");
        assert_eq!(consumed, 8);
    }

    #[test]
    fn bytes_after_the_terminator_are_not_consumed() {
        let input = b"x\r\n.\r\n+OK next reply\r\n";
        let mut d = MultilineDecoder::new();
        let mut out = Vec::new();
        let (n, state) = d.decode(input, &mut out);
        assert_eq!(state, Decoded::End);
        assert_eq!(&input[n..], b"+OK next reply\r\n");
        // A finished decoder takes nothing more.
        assert_eq!(d.decode(b"more", &mut out), (0, Decoded::End));
        assert_eq!(out, b"x\n");
    }

    #[test]
    fn every_split_point_and_byte_by_byte_give_the_same_result() {
        let input: &[u8] = b"Received: x\r\n..\r\n...y\r\n.z\r\na\rb\r\n\r\n\r\r\n.\r\r\nbare\nlast\r\n.\r\n+OK tail\r\n";
        let (expected, consumed, end) = decode_all(input);
        assert!(end);
        assert_eq!(&input[consumed..], b"+OK tail\r\n");
        assert_eq!(
            expected,
            b"Received: x\n.\n..y\nz\na\rb\n\n\r\n\r\nbare\nlast\n"
        );
        for split in 0..=input.len() {
            let (a, b) = input.split_at(split);
            assert_eq!(
                decode_chunks([a, b]),
                (expected.clone(), consumed, true),
                "split at {split}"
            );
        }
        let bytes = input.chunks(1);
        assert_eq!(decode_chunks(bytes), (expected, consumed, true));
    }

    #[test]
    fn a_one_megabyte_line_streams_through() {
        let mut input = vec![b'x'; 1 << 20];
        input.extend_from_slice(b"\r\n.\r\n");
        let (out, consumed, end) = decode_chunks(input.chunks(4096));
        assert!(end);
        assert_eq!(consumed, input.len());
        assert_eq!(out.len(), (1 << 20) + 1);
    }

    #[test]
    fn unterminated_body_needs_more() {
        let (out, consumed, end) = decode_all(b"a\r\n.x\r\n");
        assert!(!end);
        assert_eq!(consumed, 7);
        assert_eq!(out, b"a\nx\n");
    }

    // ---- listings ----

    #[test]
    fn uidl_listing_parses() {
        let body = b"1 whqtswO00WBw418f9t5JxYwZ\n2 QhdPYR:00WBw1Ph7x7\n";
        assert_eq!(
            parse_uidl_listing(body),
            Ok(vec![
                (1, "whqtswO00WBw418f9t5JxYwZ".to_owned()),
                (2, "QhdPYR:00WBw1Ph7x7".to_owned())
            ])
        );
        assert_eq!(parse_uidl_listing(b""), Ok(vec![]));
    }

    #[test]
    fn uidl_with_space_is_refused() {
        let err = parse_uidl_listing(b"1 abc def\n").expect_err("space in uid");
        assert_eq!(
            err,
            CodecError::MalformedListing {
                what: "UIDL",
                line: "1 abc def".into()
            }
        );
    }

    #[test]
    fn uidl_of_71_chars_is_refused_and_70_accepted() {
        let uid70 = "u".repeat(70);
        assert_eq!(parse_uidl_single(&format!("3 {uid70}")), Ok((3, uid70)));
        let body = format!("1 {}\n", "u".repeat(71));
        assert!(parse_uidl_listing(body.as_bytes()).is_err());
    }

    #[test]
    fn uidl_with_control_or_non_ascii_bytes_is_refused() {
        assert!(parse_uidl_listing(b"1 ab\x7fc\n").is_err());
        assert!(parse_uidl_listing(b"1 caf\xc3\xa9\n").is_err());
        assert!(parse_uidl_listing(b"1\n").is_err());
    }

    #[test]
    fn non_numeric_message_number_is_refused() {
        for body in [
            &b"x abc\n"[..],
            b"-1 abc\n",
            b"+1 abc\n",
            b"0 abc\n",
            b"4294967296 abc\n",
        ] {
            assert!(parse_uidl_listing(body).is_err(), "{body:?}");
        }
        assert!(parse_list_listing(b"one 120\n").is_err());
    }

    #[test]
    fn uidl_single_parses_status_text() {
        assert_eq!(
            parse_uidl_single("2 QhdPYR:00WBw1Ph7x7"),
            Ok((2, "QhdPYR:00WBw1Ph7x7".into()))
        );
        assert!(parse_uidl_single("2").is_err());
        assert!(parse_uidl_single("").is_err());
    }

    #[test]
    fn list_listing_parses_and_ignores_extra_tokens() {
        let body = b"1 120\r\n2 200 extra stuff\n\n3 0\n";
        assert_eq!(
            parse_list_listing(body),
            Ok(vec![(1, 120), (2, 200), (3, 0)])
        );
    }

    #[test]
    fn list_listing_refuses_a_bad_size() {
        let err = parse_list_listing(b"1 12x\n").expect_err("bad size");
        assert!(matches!(
            err,
            CodecError::MalformedListing { what: "LIST", .. }
        ));
        assert!(parse_list_listing(b"1\n").is_err());
    }

    #[test]
    fn stat_parses_count_and_size() {
        assert_eq!(parse_stat("2 320"), Ok((2, 320)));
        assert_eq!(parse_stat("0 0"), Ok((0, 0)));
        assert_eq!(parse_stat("2 320 messages"), Ok((2, 320)));
        let err = parse_stat("lots").expect_err("not a number");
        assert!(matches!(
            err,
            CodecError::MalformedListing { what: "STAT", .. }
        ));
    }

    // ---- CAPA ----

    const CAPA: &[u8] = b"TOP\nuser\nSASL PLAIN login Xoauth2\nRESP-CODES\nLOGIN-DELAY 900 USER\n\
        PIPELINING\nEXPIRE 31 USER\nUIDL\nIMPLEMENTATION Shlemazle-Plotz-v302\n\n";

    #[test]
    fn capa_flags_are_found_case_insensitively() {
        let caps = Capabilities::parse(CAPA);
        assert!(caps.top() && caps.user() && caps.uidl() && caps.pipelining() && caps.resp_codes());
        assert!(!caps.stls());
        assert!(caps.has("user") && caps.has("Implementation"));
        assert_eq!(
            caps.args("implementation"),
            Some(&["Shlemazle-Plotz-v302".to_owned()][..])
        );
        assert_eq!(caps.args("STLS"), None);
    }

    #[test]
    fn capa_sasl_mechanisms_are_upper_cased() {
        let caps = Capabilities::parse(CAPA);
        assert_eq!(caps.sasl_mechanisms(), ["PLAIN", "LOGIN", "XOAUTH2"]);
        assert!(Capabilities::parse(b"USER\n").sasl_mechanisms().is_empty());
    }

    #[test]
    fn capa_login_delay_and_expire_ignore_the_user_suffix() {
        let caps = Capabilities::parse(CAPA);
        assert_eq!(caps.login_delay(), Some(900));
        assert_eq!(caps.expire(), Some(Expire::Days(31)));
        let never = Capabilities::parse(b"EXPIRE NEVER\nLOGIN-DELAY soon\n");
        assert_eq!(never.expire(), Some(Expire::Never));
        assert_eq!(never.login_delay(), None);
        assert_eq!(Capabilities::parse(b"").expire(), None);
    }

    #[test]
    fn capa_keeps_raw_lines_without_empty_ones() {
        let caps = Capabilities::parse(b"STLS\r\n\r\n  TOP  \n");
        assert_eq!(caps.lines().collect::<Vec<_>>(), ["STLS", "TOP"]);
        assert!(caps.stls());
    }

    // ---- properties ----

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// What a server does to a body: stuff leading dots, end lines with
        /// `eol`, append the terminator.
        fn stuff(lines: &[Vec<u8>], eol: &[u8]) -> Vec<u8> {
            let mut wire = Vec::new();
            for line in lines {
                if line.first() == Some(&b'.') {
                    wire.push(b'.');
                }
                wire.extend_from_slice(line);
                wire.extend_from_slice(eol);
            }
            wire.push(b'.');
            wire.extend_from_slice(eol);
            wire
        }

        fn joined(lines: &[Vec<u8>]) -> Vec<u8> {
            lines
                .iter()
                .flat_map(|l| l.iter().copied().chain([b'\n']))
                .collect()
        }

        fn line_bytes() -> impl Strategy<Value = u8> {
            // Weighted toward the bytes that matter to the decoder.
            prop_oneof![Just(b'.'), Just(b'\r'), Just(b'x'), any::<u8>()]
                .prop_filter("no LF inside a line", |&b| b != b'\n')
        }

        proptest! {
            #[test]
            fn stuffed_crlf_body_unstuffs_to_the_original(
                lines in prop::collection::vec(prop::collection::vec(line_bytes(), 0..12), 0..12),
                split in any::<prop::sample::Index>(),
                tail in prop::collection::vec(any::<u8>(), 0..8),
            ) {
                let mut wire = stuff(&lines, b"\r\n");
                let body_len = wire.len();
                wire.extend_from_slice(&tail);
                let (a, b) = wire.split_at(split.index(wire.len() + 1));
                let (out, consumed, end) = decode_chunks([a, b]);
                prop_assert!(end);
                prop_assert_eq!(consumed, body_len);
                prop_assert_eq!(out, joined(&lines));
            }

            #[test]
            fn stuffed_bare_lf_body_unstuffs_to_the_original(
                lines in prop::collection::vec(
                    prop::collection::vec(line_bytes().prop_filter("no CR", |&b| b != b'\r'), 0..12),
                    0..12,
                ),
            ) {
                let wire = stuff(&lines, b"\n");
                let (out, consumed, end) = decode_chunks(wire.chunks(3));
                prop_assert!(end);
                prop_assert_eq!(consumed, wire.len());
                prop_assert_eq!(out, joined(&lines));
            }

            #[test]
            fn decoder_never_over_consumes_on_arbitrary_input(
                input in prop::collection::vec(prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), any::<u8>()], 0..64),
                chunk in 1usize..8,
            ) {
                let (_, consumed, end) = decode_chunks(input.chunks(chunk));
                prop_assert!(consumed <= input.len());
                prop_assert!(end || consumed == input.len());
            }

            #[test]
            fn parsers_never_panic_on_arbitrary_bytes(input in prop::collection::vec(any::<u8>(), 0..80)) {
                let _ = parse_status(&input);
                let _ = split_line(&input);
                let _ = parse_uidl_listing(&input);
                let _ = parse_list_listing(&input);
                let text = String::from_utf8_lossy(&input);
                let _ = parse_uidl_single(&text);
                let _ = parse_stat(&text);
                let caps = Capabilities::parse(&input);
                let _ = (caps.login_delay(), caps.expire(), caps.sasl_mechanisms());
            }

        }
    }
}
