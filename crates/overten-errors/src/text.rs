//! The bounds on text that crosses the wire, shared by servers and clients: ids and
//! messages. A server built on this crate never writes what its own client would drop.

use core::fmt;
use std::borrow::Cow;

/// The longest id kept or written (`X-Request-Id`, `run_id`, `task_id`): 256 bytes. A
/// longer id is refused, not truncated, since a truncated id points at the wrong trace.
pub const MAX_ID_BYTES: usize = 256;

/// The longest public message kept or written: 4096 bytes of UTF-8. A longer message is
/// cut at the last character boundary before the bound and ends with `…` (the cut counts
/// the ellipsis), on the server before it writes and on the client when it reads, so both
/// sides hold the same text. Escaped as JSON, such a message stays far below the client's
/// body cap (a control character escapes to 6 bytes: 24 KiB at most).
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// Why an id (request, run or task) is refused.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id is empty.
    #[error("the id is empty")]
    Empty,
    /// The id is longer than [`MAX_ID_BYTES`].
    #[error("the id is longer than {} bytes", MAX_ID_BYTES)]
    TooLong,
    /// The id holds a byte outside visible ASCII (`!` to `~`): a space, a control
    /// character or non-ASCII text.
    #[error("the id holds a character other than visible ASCII")]
    NotVisibleAscii,
}

/// Checks an id against the one rule both sides apply: 1 to [`MAX_ID_BYTES`] bytes, each
/// visible ASCII (`0x21..=0x7E`). Nothing is trimmed here; header readers trim the
/// optional whitespace around a header value first.
///
/// ```
/// use overten_errors::{IdError, check_id};
/// assert_eq!(check_id("req_4f1c9a0b"), Ok("req_4f1c9a0b"));
/// assert_eq!(check_id("req 1"), Err(IdError::NotVisibleAscii));
/// assert_eq!(check_id(""), Err(IdError::Empty));
/// ```
pub fn check_id(id: &str) -> Result<&str, IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_ID_BYTES {
        return Err(IdError::TooLong);
    }
    // Every byte looked at, no early exit: the loop vectorizes (an id is at most 256 bytes).
    if !id.bytes().fold(true, |ok, b| ok & b.is_ascii_graphic()) {
        return Err(IdError::NotVisibleAscii);
    }
    Ok(id)
}

/// `s` without the spaces (U+0020) and horizontal tabs (U+0009) at either end: what
/// "trimmed" means everywhere in `docs/retry.md`, for header values and for the ids read
/// from a body alike. No other character is trimmed (no line break, no Unicode space).
///
/// ```
/// use overten_errors::trim_ows;
/// assert_eq!(trim_ows(" \trun_1\t "), "run_1");
/// assert_eq!(trim_ows("\nrun_1"), "\nrun_1");
/// ```
#[must_use]
pub fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// An id read from a body, trimmed; the string itself when nothing is trimmed.
pub(crate) fn trimmed_id(id: String) -> String {
    match trim_ows(&id) {
        t if t.len() == id.len() => id,
        t => t.to_owned(),
    }
}

/// A message cut to [`MAX_MESSAGE_BYTES`] (borrowed through when it fits).
pub(crate) fn bound_message(message: Cow<'static, str>) -> Cow<'static, str> {
    const ELLIPSIS: &str = "…";
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let mut end = MAX_MESSAGE_BYTES - ELLIPSIS.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let mut cut = String::with_capacity(end + ELLIPSIS.len());
    cut.push_str(&message[..end]);
    cut.push_str(ELLIPSIS);
    Cow::Owned(cut)
}

/// Writes text for a log line or a terminal: control characters (C0, DEL, C1), line and
/// paragraph separators and bidirectional overrides are written as `\u{..}` escapes, so a
/// message or id cannot forge a log line or reorder what a reader sees.
pub(crate) struct LogSafe<'a>(pub(crate) &'a str);

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

impl fmt::Display for LogSafe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some((i, c)) = rest.char_indices().find(|&(_, c)| needs_escape(c)) {
            f.write_str(&rest[..i])?;
            write!(f, "\\u{{{:x}}}", u32::from(c))?;
            rest = &rest[i + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_one_rule() {
        assert_eq!(check_id("a"), Ok("a"));
        assert_eq!(check_id(&"a".repeat(MAX_ID_BYTES)).map(str::len), Ok(256));
        assert_eq!(
            check_id(&"a".repeat(MAX_ID_BYTES + 1)),
            Err(IdError::TooLong)
        );
        for bad in ["a\nb", "a\tb", "a b", "é", "a\u{7f}", "\u{0}"] {
            assert_eq!(check_id(bad), Err(IdError::NotVisibleAscii), "{bad:?}");
        }
        assert_eq!(check_id("!~"), Ok("!~"));
    }

    #[test]
    fn messages_are_cut_at_a_char_boundary() {
        let short = Cow::Borrowed("fits");
        assert!(matches!(bound_message(short), Cow::Borrowed("fits")));
        let exact = "a".repeat(MAX_MESSAGE_BYTES);
        assert_eq!(bound_message(Cow::Owned(exact.clone())), exact);
        for filler in ["a", "é", "😀", "ab😀"] {
            let long = filler.repeat(MAX_MESSAGE_BYTES + 1);
            let cut = bound_message(Cow::Owned(long.clone()));
            assert!(cut.len() <= MAX_MESSAGE_BYTES, "{filler}");
            assert!(cut.len() > MAX_MESSAGE_BYTES - 8, "{filler}");
            assert!(cut.ends_with('…'));
            assert!(long.starts_with(cut.trim_end_matches('…')));
            // Cutting is idempotent: a client re-reading it keeps it whole.
            assert_eq!(bound_message(cut.clone()), cut);
        }
    }

    #[test]
    fn log_safe_escapes_what_could_forge_a_line() {
        let shown = LogSafe("ok\r\nFAKE\u{1b}[31m\u{202e}x\u{85}é").to_string();
        assert_eq!(shown, "ok\\u{d}\\u{a}FAKE\\u{1b}[31m\\u{202e}x\\u{85}é");
        assert_eq!(LogSafe("plain text").to_string(), "plain text");
    }
}
