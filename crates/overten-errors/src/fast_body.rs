//! The fast path of [`crate::ErrorBody::parse`]: one pass over a flat JSON object whose
//! values are strings, `true`, `false` or `null`, as every error envelope is.
//!
//! It answers only where it is sure: any other shape (a number, an array or object value, a
//! member name with an escape, a duplicate envelope member, a missing or `null` message,
//! text that is not UTF-8, a control character in a string) gives `None`, and the tolerant
//! reader, which names every problem, reads the body instead. Where it answers, it answers
//! what the tolerant reader would (a property test in `envelope.rs` holds it to that).
//! String escapes are decoded by `serde_json` itself, so they mean exactly what they mean to
//! the tolerant reader.

use std::borrow::Cow;

/// What the fast path read: the envelope's members, each as found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Fast<'a> {
    pub(crate) success: bool,
    pub(crate) error: Cow<'a, str>,
    pub(crate) message: Cow<'a, str>,
    pub(crate) run_id: Option<Cow<'a, str>>,
    pub(crate) task_id: Option<Cow<'a, str>>,
}

/// A value of a member, as the fast path reads it.
enum Value<'a> {
    Str(Cow<'a, str>),
    Bool(bool),
    Null,
}

/// JSON's whitespace (RFC 8259 section 2): nothing else, not even a form feed.
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn skip_ws(&mut self) {
        while self.text.as_bytes().get(self.at).is_some_and(|&b| is_ws(b)) {
            self.at += 1;
        }
    }

    /// The next byte after whitespace, consumed.
    fn next_token(&mut self) -> Option<u8> {
        self.skip_ws();
        let b = *self.text.as_bytes().get(self.at)?;
        self.at += 1;
        Some(b)
    }

    /// A string whose opening quote was just consumed: its text (escapes decoded), and
    /// whether it held an escape.
    fn string(&mut self) -> Option<(Cow<'a, str>, bool)> {
        let start = self.at;
        let bytes = self.text.as_bytes();
        let mut escaped = false;
        let end = loop {
            let rest = bytes.get(self.at..)?;
            let found = self.at + memchr::memchr2(b'"', b'\\', rest)?;
            if bytes.get(found) == Some(&b'"') {
                break found;
            }
            // A backslash escapes the next byte; serde_json decodes and checks the whole
            // string below.
            escaped = true;
            self.at = found + 2;
        };
        self.at = end + 1;
        let raw = self.text.get(start..end)?;
        // A control character may not stand in a string (RFC 8259 section 7).
        // Every byte looked at, no early exit: the loop vectorizes.
        if raw.bytes().fold(0u8, |any, b| any | u8::from(b < 0x20)) != 0 {
            return None;
        }
        if !escaped {
            return Some((Cow::Borrowed(raw), false));
        }
        let quoted = self.text.get(start - 1..=end)?;
        let decoded: String = serde_json::from_str(quoted).ok()?;
        Some((Cow::Owned(decoded), true))
    }

    /// The literal `word` whose first byte was just consumed.
    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let rest = word.get(1..)?;
        let have = self.text.as_bytes().get(self.at..self.at + rest.len())?;
        (have == rest).then(|| self.at += rest.len())
    }

    fn value(&mut self) -> Option<Value<'a>> {
        match self.next_token()? {
            b'"' => self.string().map(|(s, _)| Value::Str(s)),
            b't' => self.literal(b"true").map(|()| Value::Bool(true)),
            b'f' => self.literal(b"false").map(|()| Value::Bool(false)),
            b'n' => self.literal(b"null").map(|()| Value::Null),
            _ => None,
        }
    }
}

/// Puts `value` in `slot`; `None` (so: not sure) when the member came twice.
fn fill<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

/// Reads `bytes` (its byte order mark already removed) as a flat envelope, or `None`.
pub(crate) fn read(bytes: &[u8]) -> Option<Fast<'_>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut c = Cursor { text, at: 0 };
    if c.next_token()? != b'{' {
        return None;
    }
    let mut success = None;
    let mut error = None;
    let mut message = None;
    let mut run_id: Option<Option<Cow<'_, str>>> = None;
    let mut task_id: Option<Option<Cow<'_, str>>> = None;
    // Every member starts with its name (`{}` has no `success`: the fast path is not for it).
    loop {
        if c.next_token()? != b'"' {
            return None;
        }
        let (name, escaped) = c.string()?;
        if escaped || c.next_token()? != b':' {
            return None;
        }
        let value = c.value()?;
        match (&*name, value) {
            ("success", Value::Bool(b)) => fill(&mut success, b)?,
            ("error", Value::Str(s)) => fill(&mut error, s)?,
            ("message", Value::Str(s)) => fill(&mut message, s)?,
            ("run_id", Value::Str(s)) => fill(&mut run_id, Some(s))?,
            ("run_id", Value::Null) => fill(&mut run_id, None)?,
            ("task_id", Value::Str(s)) => fill(&mut task_id, Some(s))?,
            ("task_id", Value::Null) => fill(&mut task_id, None)?,
            ("success" | "error" | "message" | "run_id" | "task_id", _) => return None,
            _ => {}
        }
        match c.next_token()? {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
    }
    c.skip_ws();
    if c.at != text.len() {
        return None;
    }
    Some(Fast {
        success: success?,
        error: error?,
        message: message?,
        run_id: run_id.flatten(),
        task_id: task_id.flatten(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast(s: &str) -> Option<Fast<'_>> {
        read(s.as_bytes())
    }

    #[test]
    fn reads_an_envelope_and_its_ids() {
        let f = fast(
            " {\"success\" : false,\n\"error\":\"gone\",\t\"message\":\"Expired \\\"r\\\" \\u00e9\",\"run_id\":\"run_1\",\"task_id\":null,\"x\":true}\r\n",
        )
        .unwrap();
        assert!(!f.success);
        assert_eq!(f.error, "gone");
        assert_eq!(f.message, "Expired \"r\" é");
        assert_eq!(f.run_id.as_deref(), Some("run_1"));
        assert_eq!(f.task_id, None);
    }

    #[test]
    fn members_come_in_any_order() {
        let f = fast(r#"{"task_id":"t_1","message":"m","x":null,"error":"quota_frozen","success":false,"run_id":null}"#).unwrap();
        assert_eq!((&*f.error, &*f.message), ("quota_frozen", "m"));
        assert_eq!((f.run_id, f.task_id.as_deref()), (None, Some("t_1")));
        assert!(fast(r#"{"success":true,"error":"","message":""}"#).is_some_and(|f| f.success));
    }

    #[test]
    fn is_not_sure_of_anything_else() {
        for body in [
            "",
            "{}",
            "[]",
            "{\"success\":false,\"error\":\"gone\"}",
            "{\"success\":false,\"error\":\"gone\",\"message\":null}",
            "{\"success\":false,\"error\":\"gone\",\"message\":\"m\",\"n\":1}",
            "{\"success\":false,\"error\":\"gone\",\"message\":\"m\",\"n\":[]}",
            "{\"success\":false,\"error\":\"gone\",\"message\":\"m\",\"error\":\"x\"}",
            "{\"succ\\u0065ss\":false,\"error\":\"gone\",\"message\":\"m\"}",
            "{\"success\":\"false\",\"error\":\"gone\",\"message\":\"m\"}",
            "{\"success\":false,\"error\":\"gone\",\"message\":\"a\nb\"}",
            "{\"success\":false,\"error\":\"gone\",\"message\":\"a\t\tb\"}",
            "{\"success\":false,\"error\":\"gone\",\"message\":\"\u{0}\u{1f}\u{1}\"}",
            "{\"success\":false,\"error\":\"gone\",\"message\":\"m\"} x",
            "{\"success\":false,\"error\":\"gone\",\"message\":\"m\",}",
            "{\"success\":false,\"error\":\"gone\",\"message\":\"m\"",
            "{\"success\":false,\"error\":\"gone\",\"message\":\"m\\",
            "{\"success\":false,\"error\":\"gone\",\"message\":\"\\x\"}",
            "{\"success\":fals,\"error\":\"gone\",\"message\":\"m\"}",
            "\u{c}{\"success\":false,\"error\":\"gone\",\"message\":\"m\"}",
            "{\"success\":false,\"error\":\"gone\",\"message\":\"m\",\"run_id\":5}",
        ] {
            assert_eq!(fast(body), None, "{body:?}");
        }
        assert_eq!(
            read(b"{\"success\":false,\"error\":\"\xff\",\"message\":\"m\"}"),
            None
        );
    }
}
