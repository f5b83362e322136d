//! RFC 6901 JSON pointers, for `validation_error` messages.

use core::fmt;
use std::borrow::Cow;

/// An RFC 6901 JSON pointer such as `/items/0/name`, always well-formed.
///
/// ```
/// use overten_errors::JsonPointer;
/// let p = JsonPointer::root().push("items").push("0").push("a/b~c");
/// assert_eq!(p.as_str(), "/items/0/a~1b~0c");
/// assert_eq!(p.tokens().last().as_deref(), Some("a/b~c"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct JsonPointer(String);

/// The string is not an RFC 6901 JSON pointer.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PointerError {
    /// A non-empty pointer must start with `/` (or `#/` in fragment form).
    #[error("a JSON pointer must be empty or start with '/'")]
    MissingSlash,
    /// `~` must be followed by `0` or `1`.
    #[error("'~' in a JSON pointer must be followed by '0' or '1'")]
    BadEscape,
    /// A fragment's percent-encoding is malformed or not UTF-8.
    #[error("malformed percent-encoding in a JSON pointer fragment")]
    BadPercent,
}

impl JsonPointer {
    /// The empty pointer: the whole document.
    pub const fn root() -> JsonPointer {
        JsonPointer(String::new())
    }

    /// This pointer with one more reference token, escaped as RFC 6901 says.
    #[must_use]
    pub fn push(mut self, token: &str) -> JsonPointer {
        self.0.reserve(token.len() + 1);
        self.0.push('/');
        for c in token.chars() {
            match c {
                '~' => self.0.push_str("~0"),
                '/' => self.0.push_str("~1"),
                c => self.0.push(c),
            }
        }
        self
    }

    /// Parses the string form (`/a/b`).
    pub fn parse(s: &str) -> Result<JsonPointer, PointerError> {
        if !s.is_empty() && !s.starts_with('/') {
            return Err(PointerError::MissingSlash);
        }
        let mut bytes = s.bytes();
        while let Some(b) = bytes.next() {
            if b == b'~' && !matches!(bytes.next(), Some(b'0' | b'1')) {
                return Err(PointerError::BadEscape);
            }
        }
        Ok(JsonPointer(s.to_owned()))
    }

    /// The string form, e.g. `/items/0/a~1b`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The unescaped reference tokens.
    pub fn tokens(&self) -> impl Iterator<Item = Cow<'_, str>> {
        self.0.split('/').skip(1).map(|t| {
            if t.contains('~') {
                Cow::Owned(t.replace("~1", "/").replace("~0", "~"))
            } else {
                Cow::Borrowed(t)
            }
        })
    }

    /// The URI fragment form (RFC 6901 section 6), e.g. `#/a%20b`. Every byte other than
    /// unreserved characters and `/` is percent-encoded, so the form has no spaces or
    /// brackets and can be found again inside a sentence.
    pub fn to_fragment(&self) -> String {
        let mut out = String::with_capacity(self.0.len() + 1);
        out.push('#');
        for b in self.0.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
                out.push(char::from(b));
            } else {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 15)]));
            }
        }
        out
    }

    /// Parses the URI fragment form (`#/a%20b`).
    pub fn from_fragment(s: &str) -> Result<JsonPointer, PointerError> {
        let s = s.strip_prefix('#').ok_or(PointerError::MissingSlash)?;
        let mut out = Vec::with_capacity(s.len());
        let mut bytes = s.bytes();
        while let Some(b) = bytes.next() {
            if b == b'%' {
                let hi = bytes.next().and_then(hex).ok_or(PointerError::BadPercent)?;
                let lo = bytes.next().and_then(hex).ok_or(PointerError::BadPercent)?;
                out.push(hi << 4 | lo);
            } else {
                out.push(b);
            }
        }
        let s = String::from_utf8(out).map_err(|_| PointerError::BadPercent)?;
        JsonPointer::parse(&s)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for JsonPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a pointer stands in a `validation_error` message: `"<detail> (at #/path)"`.
pub(crate) const MARKER: &str = " (at ";

/// The message `"<detail> (at #<pointer>)"` within [`crate::MAX_MESSAGE_BYTES`]: the detail is
/// cut (ending in `…`) so that the pointer is kept whole. A pointer whose own suffix cannot
/// fit is shortened a token at a time to the nearest ancestor that fits (the root always
/// does), so the message still points at the field's enclosing value.
pub(crate) fn message_at(pointer: &JsonPointer, detail: &str) -> String {
    const ELLIPSIS: &str = "…";
    let max = crate::MAX_MESSAGE_BYTES;
    let mut fragment = pointer.to_fragment();
    // The suffix must leave room for at least the ellipsis of a cut detail.
    while MARKER.len() + fragment.len() + 1 + ELLIPSIS.len() > max {
        match fragment.rfind('/') {
            Some(at) => fragment.truncate(at),
            None => fragment.truncate(1),
        }
    }
    let suffix_len = MARKER.len() + fragment.len() + 1;
    let mut out = String::with_capacity((detail.len() + suffix_len).min(max));
    if detail.len() + suffix_len <= max {
        out.push_str(detail);
    } else {
        let mut end = max - suffix_len - ELLIPSIS.len();
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        out.push_str(&detail[..end]);
        out.push_str(ELLIPSIS);
    }
    out.push_str(MARKER);
    out.push_str(&fragment);
    out.push(')');
    out
}

/// Finds the pointer a `validation_error` message carries, if any.
pub(crate) fn find_in_message(message: &str) -> Option<JsonPointer> {
    let inner = message.strip_suffix(')')?;
    let at = inner.rfind(MARKER)?;
    JsonPointer::from_fragment(inner.get(at + MARKER.len()..)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6901_examples_escape() {
        // RFC 6901 section 5: "/a~1b" names "a/b", "/m~0n" names "m~n".
        assert_eq!(JsonPointer::root().push("a/b").as_str(), "/a~1b");
        assert_eq!(JsonPointer::root().push("m~n").as_str(), "/m~0n");
        assert_eq!(JsonPointer::root().push("").as_str(), "/");
        // "~01" must read back as "~1", not "/".
        let p = JsonPointer::parse("/~01").unwrap();
        assert_eq!(p.tokens().next().as_deref(), Some("~1"));
    }

    #[test]
    fn parse_rejects_malformed() {
        assert_eq!(JsonPointer::parse("a"), Err(PointerError::MissingSlash));
        assert_eq!(JsonPointer::parse("/a~"), Err(PointerError::BadEscape));
        assert_eq!(JsonPointer::parse("/a~2"), Err(PointerError::BadEscape));
        assert_eq!(
            JsonPointer::from_fragment("#/%zz"),
            Err(PointerError::BadPercent)
        );
        assert_eq!(
            JsonPointer::from_fragment("#/%ff"),
            Err(PointerError::BadPercent)
        );
        assert_eq!(
            JsonPointer::from_fragment("/a"),
            Err(PointerError::MissingSlash)
        );
    }

    #[test]
    fn fragment_round_trip_and_rfc_example() {
        // RFC 6901 section 6: "#/c%25d" is the fragment for "/c%d".
        assert_eq!(JsonPointer::root().push("c%d").to_fragment(), "#/c%25d");
        let p = JsonPointer::root().push("a b").push("(x)").push("é/~");
        assert_eq!(JsonPointer::from_fragment(&p.to_fragment()), Ok(p));
    }

    #[test]
    fn percent_escapes_in_either_case() {
        // RFC 3986: hex digits in percent-encoding are case-insensitive; this crate writes
        // uppercase, and reads both.
        let cafe = JsonPointer::root().push("café").push("a b");
        assert_eq!(cafe.to_fragment(), "#/caf%C3%A9/a%20b");
        assert_eq!(
            JsonPointer::from_fragment("#/caf%c3%a9/a%20b"),
            Ok(cafe.clone())
        );
        assert_eq!(JsonPointer::from_fragment("#/caf%C3%a9/a%20b"), Ok(cafe));
        // Every hex digit, in both nibbles: %7e is '~' (then "0": "~0" names "~").
        assert_eq!(
            JsonPointer::from_fragment("#/%7e0%7E0%41%61%39"),
            Ok(JsonPointer::root().push("~~Aa9"))
        );
        for bad in ["#/%g0", "#/%0g", "#/%", "#/%4", "#/%ff"] {
            assert_eq!(
                JsonPointer::from_fragment(bad),
                Err(PointerError::BadPercent),
                "{bad}"
            );
        }
    }

    #[test]
    fn found_in_messages() {
        let p = JsonPointer::root()
            .push("rows")
            .push("3")
            .push("price (USD)");
        let msg = format!("must be positive (at x){MARKER}{})", p.to_fragment());
        assert_eq!(find_in_message(&msg), Some(p));
        assert_eq!(find_in_message("no pointer here"), None);
        assert_eq!(find_in_message("broken (at #/%z)"), None);
    }

    #[test]
    fn long_details_are_cut_and_the_pointer_kept() {
        let max = crate::MAX_MESSAGE_BYTES;
        let at = JsonPointer::root().push("sheets").push("7").push("format");
        // Every length around the bound, with a multi-byte character at the cut.
        for n in (max - 40)..(max + 40) {
            let detail = "é".repeat(n / 2);
            let msg = message_at(&at, &detail);
            assert!(msg.len() <= max, "{n}: {}", msg.len());
            assert_eq!(find_in_message(&msg), Some(at.clone()), "{n}");
            if detail.len() + " (at #/sheets/7/format)".len() <= max {
                assert!(msg.starts_with(&detail), "{n}: cut though it fit");
            } else {
                assert!(msg.ends_with("… (at #/sheets/7/format)"), "{n}");
            }
        }
        // A pointer too long to fit alone: its nearest ancestor that fits.
        let deep = JsonPointer::root().push("a").push(&"k".repeat(max));
        let msg = message_at(&deep, "bad");
        assert!(msg.len() <= max);
        assert_eq!(find_in_message(&msg), Some(JsonPointer::root().push("a")));
        let huge = JsonPointer::root().push(&"k".repeat(max * 2));
        assert_eq!(
            find_in_message(&message_at(&huge, "bad")),
            Some(JsonPointer::root())
        );
    }
}
