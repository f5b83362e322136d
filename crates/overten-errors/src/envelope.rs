//! The JSON envelope `{"success": false, "error", "message"}`: writing and tolerant reading.

use core::fmt;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeStruct, Serializer};
use std::borrow::Cow;

use crate::code::Code;

/// The envelope to write: `{"success":false,"error":"<code>","message":"<text>"}`, members
/// in that order. Borrowed, so writing it allocates nothing but the output.
///
/// ```
/// use overten_errors::Envelope;
/// let mut buf = Vec::with_capacity(128);
/// Envelope::new("not_found", "No run \"r_1\"").write_json(&mut buf).unwrap();
/// assert_eq!(buf, br#"{"success":false,"error":"not_found","message":"No run \"r_1\""}"#);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The wire code.
    pub error: &'a str,
    /// The public message.
    pub message: &'a str,
}

impl<'a> Envelope<'a> {
    /// An envelope for a code and a public message.
    pub const fn new(error: &'a str, message: &'a str) -> Envelope<'a> {
        Envelope { error, message }
    }

    /// Writes the JSON to `out` (a `Vec<u8>` with room allocates nothing).
    ///
    /// The fixed parts are written as they are; `serde_json` escapes the two strings.
    pub fn write_json<W: std::io::Write>(&self, mut out: W) -> std::io::Result<()> {
        out.write_all(br#"{"success":false,"error":"#)?;
        serde_json::to_writer(&mut out, self.error)?;
        out.write_all(br#","message":"#)?;
        serde_json::to_writer(&mut out, self.message)?;
        out.write_all(b"}")
    }

    /// The JSON as a new byte vector.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.error.len() + self.message.len() + 48);
        // Serializing two strings into a Vec cannot fail.
        match self.write_json(&mut out) {
            Ok(()) => out,
            Err(_) => Vec::new(),
        }
    }
}

impl Serialize for Envelope<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Envelope", 3)?;
        s.serialize_field("success", &false)?;
        s.serialize_field("error", self.error)?;
        s.serialize_field("message", self.message)?;
        s.end()
    }
}

/// An envelope as read from a response body.
///
/// Reading is tolerant where the page's forward-compatibility calls for it: a code this
/// version does not know is kept as [`Code::Unknown`], unknown members are ignored,
/// `run_id` / `task_id` are kept when present as strings, a UTF-8 byte order mark before
/// the JSON is skipped (RFC 8259 section 8.1), and a body whose code is a string keeps it
/// even when its `message` is missing, `null` or not a string ([`ErrorBody::message_issue`]
/// says which). It is strict where a body could not be an error envelope: see
/// [`BodyError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    /// The `error` member: a known or unknown code, never [`Code::Missing`].
    pub code: Code,
    /// The `message` member, unescaped; `None` when it is missing or not a string.
    pub message: Option<String>,
    /// Why `message` is `None`: [`BodyError::Missing`] or [`BodyError::WrongType`].
    pub message_issue: Option<BodyError>,
    /// The `run_id` member, when present.
    pub run_id: Option<String>,
    /// The `task_id` member, when present.
    pub task_id: Option<String>,
}

/// The JSON type of a member that had the wrong one.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonType {
    /// `null`
    Null,
    /// `true` or `false`
    Bool,
    /// a number
    Number,
    /// a string
    String,
    /// an array
    Array,
    /// an object
    Object,
}

impl fmt::Display for JsonType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JsonType::Null => "null",
            JsonType::Bool => "a boolean",
            JsonType::Number => "a number",
            JsonType::String => "a string",
            JsonType::Array => "an array",
            JsonType::Object => "an object",
        })
    }
}

/// Why a body is not an error envelope. Never carries the body's text.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The body is empty or only whitespace.
    #[error("the body is empty")]
    Empty,
    /// The body is not JSON: a syntax error, truncation or bad UTF-8.
    #[error("the body is not valid JSON (line {line}, column {column})")]
    Json {
        /// One-based line of the error.
        line: usize,
        /// One-based column of the error.
        column: usize,
    },
    /// The body is JSON but not an object.
    #[error("the body is {0}, not an object")]
    NotAnObject(JsonType),
    /// A required member is absent.
    #[error("the body has no `{0}` member")]
    Missing(&'static str),
    /// A member has the wrong JSON type.
    #[error("the `{member}` member is {found}, expected {expected}")]
    WrongType {
        /// The member.
        member: &'static str,
        /// What it should be.
        expected: JsonType,
        /// What it was.
        found: JsonType,
    },
    /// `success` is `true`: this is not an error body.
    #[error("the body says success: true")]
    NotAnError,
    /// A known member appears twice, so the body is ambiguous.
    #[error("the `{0}` member appears more than once")]
    Duplicate(&'static str),
    /// Arrays and objects nest deeper than [`MAX_BODY_DEPTH`] levels somewhere in the body.
    #[error("the body nests deeper than {} levels", MAX_BODY_DEPTH)]
    TooDeep,
    /// A string (a member's name or value, anywhere in the body) holds a lone surrogate
    /// escape: `\\uD800` to `\\uDFFF` outside a high-low pair, which is no Unicode text.
    #[error("the body holds a lone surrogate escape")]
    LoneSurrogate,
}

/// The largest body a client reads as an envelope: 64 KiB (65,536 bytes), counting every
/// byte received, a byte order mark included (`docs/retry.md`). A larger body is not an
/// envelope, whatever it holds.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The deepest nesting of arrays and objects a body may have and still be an envelope,
/// the top object counting as level 1 (`docs/retry.md`). Members other than the five an
/// envelope has are skipped whatever they hold, but never past this depth, so that a client
/// with a recursive JSON parser reads every body the same way as one without.
pub const MAX_BODY_DEPTH: usize = 128;

/// Screens a body for what a JSON parser may let through but an envelope may not hold:
/// nesting deeper than [`MAX_BODY_DEPTH`], and a lone surrogate escape (`\\uD800` to
/// `\\uDFFF` not in a high-low pair) in any string, member names included. Brackets and
/// escapes inside strings are told apart from structure. Two cheap counts first spare the
/// exact scan for nearly every body: it needs more than `MAX_BODY_DEPTH` opening brackets
/// to be too deep, and a `\\u` to hold a surrogate.
pub(crate) fn screen(bytes: &[u8]) -> Result<(), BodyError> {
    // A body of at most MAX_BODY_DEPTH bytes cannot nest deeper; the first backslash is
    // found by memchr's SIMD search, so an envelope without escapes costs one short scan.
    let deep = bytes.len() > MAX_BODY_DEPTH
        && bytes.iter().filter(|&&b| b == b'[' || b == b'{').count() > MAX_BODY_DEPTH;
    let has_unicode_escape = memchr::memchr(b'\\', bytes).is_some_and(|at| {
        bytes
            .get(at..)
            .is_some_and(|rest| rest.windows(2).any(|w| w == b"\\u"))
    });
    if !deep && !has_unicode_escape {
        return Ok(());
    }
    let mut depth = 0usize;
    let mut in_string = false;
    // In a string: a high surrogate just read, which the next escape must complete.
    let mut pending_high = false;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        i += 1;
        if !in_string {
            match b {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > MAX_BODY_DEPTH {
                        return Err(BodyError::TooDeep);
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
            continue;
        }
        let unit = match b {
            b'\\' => {
                let escaped = bytes.get(i).copied();
                i += 1;
                if escaped == Some(b'u') {
                    let unit = bytes
                        .get(i..i + 4)
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u16::from_str_radix(h, 16).ok());
                    i += 4;
                    unit
                } else {
                    None
                }
            }
            _ => None,
        };
        let low = unit.is_some_and(|u| (0xDC00..=0xDFFF).contains(&u));
        if pending_high != low {
            return Err(BodyError::LoneSurrogate);
        }
        pending_high = unit.is_some_and(|u| (0xD800..=0xDBFF).contains(&u));
        if b == b'"' {
            in_string = false;
        }
    }
    Ok(())
}

impl From<serde_json::Error> for BodyError {
    fn from(e: serde_json::Error) -> Self {
        BodyError::Json {
            line: e.line(),
            column: e.column(),
        }
    }
}

impl ErrorBody {
    /// Reads an envelope from body bytes.
    ///
    /// ```
    /// use overten_errors::{BodyError, Code, ErrorBody, ErrorCode};
    /// let body = ErrorBody::parse(br#"{"success":false,"error":"gone","message":"Expired","run_id":"run_9","extra":[1]}"#)?;
    /// assert_eq!(body.code, ErrorCode::Gone);
    /// assert_eq!(body.run_id.as_deref(), Some("run_9"));
    ///
    /// let newer = ErrorBody::parse(br#"{"success":false,"error":"quota_frozen","message":"x"}"#)?;
    /// assert_eq!(newer.code, Code::Unknown("quota_frozen".into()));
    ///
    /// assert_eq!(ErrorBody::parse(b"<html>502</html>").unwrap_err(), BodyError::Json { line: 1, column: 1 });
    /// # Ok::<(), BodyError>(())
    /// ```
    pub fn parse(bytes: &[u8]) -> Result<ErrorBody, BodyError> {
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        screen(bytes)?;
        // Fast path: a flat envelope read in one pass (`fast_body`); anything it is not
        // sure of goes to the tolerant reader, which names the problem.
        if let Some(fast) = crate::fast_body::read(bytes) {
            if fast.success {
                return Err(BodyError::NotAnError);
            }
            let code = Code::parse(&fast.error);
            if code != Code::Missing {
                return Ok(ErrorBody {
                    code,
                    message: Some(fast.message.into_owned()),
                    message_issue: None,
                    run_id: fast.run_id.map(Cow::into_owned),
                    task_id: fast.task_id.map(Cow::into_owned),
                });
            }
        }
        ErrorBody::parse_tolerant(bytes)
    }

    /// The tolerant reader alone: every member read whatever its type, then shaped into
    /// an envelope or a precise [`BodyError`].
    fn parse_tolerant(bytes: &[u8]) -> Result<ErrorBody, BodyError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(BodyError::Empty);
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let top = Top::deserialize(&mut de)?;
        de.end()?;
        top.0
    }
}

/// What a member of a given Rust type accepts from JSON.
trait Expect: Sized {
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
    fn from_str(_: &str) -> Option<Self> {
        None
    }
    fn from_string(s: String) -> Option<Self> {
        Self::from_str(&s)
    }
}

impl Expect for bool {
    fn from_bool(b: bool) -> Option<Self> {
        Some(b)
    }
}

impl Expect for Code {
    fn from_str(s: &str) -> Option<Self> {
        Some(Code::parse(s))
    }
}

impl Expect for String {
    fn from_str(s: &str) -> Option<Self> {
        Some(s.to_owned())
    }
    fn from_string(s: String) -> Option<Self> {
        Some(s)
    }
}

/// A member's value if it has the expected type, else the JSON type it has. Reading one
/// never fails on a type mismatch, so the body's other members are still read.
struct Member<T>(Result<T, JsonType>);

struct MemberVisitor<T>(core::marker::PhantomData<T>);

impl<'de, T: Expect> Visitor<'de> for MemberVisitor<T> {
    type Value = Member<T>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Member<T>, E> {
        Ok(Member(T::from_bool(v).ok_or(JsonType::Bool)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Member<T>, E> {
        Ok(Member(T::from_str(v).ok_or(JsonType::String)))
    }
    fn visit_string<E>(self, v: String) -> Result<Member<T>, E> {
        Ok(Member(T::from_string(v).ok_or(JsonType::String)))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Member<T>, E> {
        Ok(Member(Err(JsonType::Number)))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Member<T>, E> {
        Ok(Member(Err(JsonType::Number)))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Member<T>, E> {
        Ok(Member(Err(JsonType::Number)))
    }
    fn visit_unit<E>(self) -> Result<Member<T>, E> {
        Ok(Member(Err(JsonType::Null)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Member<T>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Member(Err(JsonType::Array)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Member<T>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Member(Err(JsonType::Object)))
    }
}

impl<'de, T: Expect> Deserialize<'de> for Member<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MemberVisitor(core::marker::PhantomData))
    }
}

/// The members the envelope knows.
enum Key {
    Success,
    Error,
    Message,
    RunId,
    TaskId,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "success" => Key::Success,
                    "error" => Key::Error,
                    "message" => Key::Message,
                    "run_id" => Key::RunId,
                    "task_id" => Key::TaskId,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

/// The whole body: the outer `Result` is serde's (syntax), the inner one ours (shape).
struct Top(Result<ErrorBody, BodyError>);

impl<'de> Deserialize<'de> for Top {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TopVisitor)
    }
}

struct TopVisitor;

type Slot<T> = Option<Result<T, JsonType>>;

/// Reads the next value into `slot`, noting the first member seen twice.
fn put<'de, T: Expect, A: MapAccess<'de>>(
    map: &mut A,
    slot: &mut Slot<T>,
    name: &'static str,
    dup: &mut Option<&'static str>,
) -> Result<(), A::Error> {
    let Member(value) = map.next_value::<Member<T>>()?;
    if slot.replace(value).is_some() && dup.is_none() {
        *dup = Some(name);
    }
    Ok(())
}

fn required<T>(slot: Slot<T>, member: &'static str, expected: JsonType) -> Result<T, BodyError> {
    match slot {
        None => Err(BodyError::Missing(member)),
        Some(Ok(v)) => Ok(v),
        Some(Err(found)) => Err(BodyError::WrongType {
            member,
            expected,
            found,
        }),
    }
}

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Top;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top, A::Error> {
        let mut success: Slot<bool> = None;
        let mut error: Slot<Code> = None;
        let (mut message, mut run_id, mut task_id): (Slot<String>, Slot<String>, Slot<String>) =
            (None, None, None);
        let mut dup = None;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Success => put(&mut map, &mut success, "success", &mut dup)?,
                Key::Error => put(&mut map, &mut error, "error", &mut dup)?,
                Key::Message => put(&mut map, &mut message, "message", &mut dup)?,
                Key::RunId => put(&mut map, &mut run_id, "run_id", &mut dup)?,
                Key::TaskId => put(&mut map, &mut task_id, "task_id", &mut dup)?,
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let shaped = match dup {
            Some(name) => Err(BodyError::Duplicate(name)),
            None => shape(success, error, message, run_id, task_id),
        };
        Ok(Top(shaped))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Top, E> {
        Ok(Top(Err(BodyError::NotAnObject(JsonType::Bool))))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Top, E> {
        Ok(Top(Err(BodyError::NotAnObject(JsonType::Number))))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Top, E> {
        Ok(Top(Err(BodyError::NotAnObject(JsonType::Number))))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Top, E> {
        Ok(Top(Err(BodyError::NotAnObject(JsonType::Number))))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Top, E> {
        Ok(Top(Err(BodyError::NotAnObject(JsonType::String))))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Top, E> {
        Ok(Top(Err(BodyError::NotAnObject(JsonType::Null))))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Top, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Top(Err(BodyError::NotAnObject(JsonType::Array))))
    }
}

fn shape(
    success: Slot<bool>,
    error: Slot<Code>,
    message: Slot<String>,
    run_id: Slot<String>,
    task_id: Slot<String>,
) -> Result<ErrorBody, BodyError> {
    if required(success, "success", JsonType::Bool)? {
        return Err(BodyError::NotAnError);
    }
    let code = required(error, "error", JsonType::String)?;
    if code == Code::Missing {
        // `"error": ""` names no code.
        return Err(BodyError::Missing("error"));
    }
    // A code that is there is kept, whatever became of the message.
    let (message, message_issue) = match required(message, "message", JsonType::String) {
        Ok(m) => (Some(m), None),
        Err(issue) => (None, Some(issue)),
    };
    Ok(ErrorBody {
        code,
        message,
        message_issue,
        // Ids of the wrong type are dropped: they are for support tickets, not decisions.
        run_id: run_id.and_then(Result::ok),
        task_id: task_id.and_then(Result::ok),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    /// Member names the generated bodies use: the envelope's, an unknown one, and names
    /// that only unescape to (or almost spell) an envelope member.
    const NAMES: &[&str] = &[
        "success",
        "error",
        "message",
        "run_id",
        "task_id",
        "x",
        "succ\\u0065ss",
        "Error",
        "message ",
        "",
    ];
    /// Values: every JSON type, strings with escapes, lone and paired surrogates, a raw
    /// control character, non-ASCII text, and malformed literals and escapes.
    const VALUES: &[&str] = &[
        "false",
        "true",
        "null",
        "1",
        "-0.5e3",
        "01",
        "\"gone\"",
        "\"quota\"",
        "\"a\\\"b\"",
        "\"\\u00e9t\\u00e9\"",
        "\"\\ud83d\\ude00\"",
        "\"\\ud83d\"",
        "\"tab\there\"",
        "\"two\t\ttabs\"",
        "\"\\x\"",
        "\"\\u12\"",
        "\"run_\\/1\"",
        "\"日本\"",
        "[]",
        "{}",
        "[false]",
        "{\"a\":{}}",
        "tru",
        "nul",
        "\"\"",
        "\" gone \"",
    ];
    /// Whitespace, JSON's and not.
    const SPACE: &[&str] = &["", " ", "\n", "\r\n\t", "\u{c}", "\u{a0}"];

    /// `ErrorBody::parse` without its fast path: the byte order mark, the screen, then the
    /// tolerant reader.
    fn without_fast_path(body: &[u8]) -> Result<ErrorBody, BodyError> {
        let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        screen(body)?;
        ErrorBody::parse_tolerant(body)
    }

    proptest::proptest! {
        /// The fast path and the tolerant reader agree on every body.
        #[test]
        fn fast_path_agrees_with_tolerant_reader(
            members in proptest::collection::vec(
                (
                    proptest::sample::select(NAMES),
                    proptest::sample::select(VALUES),
                    proptest::sample::select(SPACE),
                ),
                0..7,
            ),
            wrap in proptest::sample::select(vec!["{}", "[]", " {} ", "\u{feff}{}", "{} x", "{}{}"]),
            separator in proptest::sample::select(vec![",", " , ", ";", ",,"]),
        ) {
            let inner = members
                .iter()
                .map(|(k, v, w)| format!("{w}\"{k}\"{w}:{w}{v}{w}"))
                .collect::<Vec<_>>()
                .join(separator);
            let body = if wrap.trim() == "[]" {
                format!("[{}]", members.iter().map(|(_, v, _)| *v).collect::<Vec<_>>().join(","))
            } else {
                wrap.replace("{}", &format!("{{{inner}}}"))
            };
            proptest::prop_assert_eq!(
                ErrorBody::parse(body.as_bytes()),
                without_fast_path(body.as_bytes()),
                "{}", body
            );
        }

        /// The three members of an envelope, each with a value of any kind, and extra
        /// members, in any order: mostly envelopes the fast path answers for.
        #[test]
        fn fast_path_agrees_on_envelopes_in_any_order(
            message in proptest::sample::select(VALUES),
            code in proptest::sample::select(vec!["\"gone\"", "\"quota_frozen\"", "\"\"", "\"go\\u006ee\"", "null", "7"]),
            success in proptest::sample::select(vec!["false", "true", "null", "\"false\""]),
            extras in proptest::collection::vec(
                (proptest::sample::select(NAMES), proptest::sample::select(VALUES)),
                0..4,
            ),
            order in proptest::sample::subsequence((0..7usize).collect::<Vec<_>>(), 0..=7),
        ) {
            let mut members = vec![
                format!("\"success\":{success}"),
                format!("\"error\":{code}"),
                format!("\"message\":{message}"),
            ];
            members.extend(extras.iter().map(|(k, v)| format!("\"{k}\":{v}")));
            // Rotate by the subsequence's length: a cheap, varied order.
            let turn = order.len() % members.len();
            members.rotate_left(turn);
            let body = format!("{{{}}}", members.join(","));
            let via_fast = crate::fast_body::read(body.as_bytes()).is_some();
            proptest::prop_assert_eq!(
                ErrorBody::parse(body.as_bytes()),
                without_fast_path(body.as_bytes()),
                "{} (fast path answered: {})", body, via_fast
            );
        }

        /// A well-formed envelope with any one byte changed, removed or cut short: the
        /// fast path still agrees with the tolerant reader.
        #[test]
        fn fast_path_agrees_on_damaged_envelopes(
            at in 0usize..96,
            byte in proptest::num::u8::ANY,
            how in 0u8..3,
        ) {
            let good = br#"{"success":false,"error":"gone","message":"No \"r\" here","run_id":"run_1","task_id":null}"#;
            let mut body = good.to_vec();
            let at = at % body.len();
            match how {
                0 => body[at] = byte,
                1 => { body.remove(at); }
                _ => body.truncate(at),
            }
            proptest::prop_assert_eq!(
                ErrorBody::parse(&body),
                without_fast_path(&body),
                "{:?}", String::from_utf8_lossy(&body)
            );
        }
    }

    #[test]
    fn arrays_never_take_the_fast_path() {
        assert_eq!(
            ErrorBody::parse(br#"[false,"gone","m"]"#),
            Err(BodyError::NotAnObject(JsonType::Array))
        );
    }

    #[test]
    fn writes_members_in_order() {
        let json = Envelope::new("gone", "bye").to_json();
        assert_eq!(json, br#"{"success":false,"error":"gone","message":"bye"}"#);
    }

    #[test]
    fn typed_errors_for_bad_shapes() {
        let cases: &[(&[u8], BodyError)] = &[
            (b"", BodyError::Empty),
            (b"  \n", BodyError::Empty),
            (b"[1,2]", BodyError::NotAnObject(JsonType::Array)),
            (b"\"x\"", BodyError::NotAnObject(JsonType::String)),
            (b"null", BodyError::NotAnObject(JsonType::Null)),
            (
                br#"{"error":"gone","message":"m"}"#,
                BodyError::Missing("success"),
            ),
            (
                br#"{"success":true,"error":"gone","message":"m"}"#,
                BodyError::NotAnError,
            ),
            (
                br#"{"success":false,"message":"m"}"#,
                BodyError::Missing("error"),
            ),
            (
                br#"{"success":false,"error":"","message":"m"}"#,
                BodyError::Missing("error"),
            ),
            (
                br#"{"success":"false","error":"gone","message":"m"}"#,
                BodyError::WrongType {
                    member: "success",
                    expected: JsonType::Bool,
                    found: JsonType::String,
                },
            ),
            (
                br#"{"success":false,"error":404,"message":"m"}"#,
                BodyError::WrongType {
                    member: "error",
                    expected: JsonType::String,
                    found: JsonType::Number,
                },
            ),
            (
                br#"{"success":false,"error":"gone","error":"not_found","message":"m"}"#,
                BodyError::Duplicate("error"),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(
                &ErrorBody::parse(body).unwrap_err(),
                want,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn a_code_is_kept_whatever_became_of_the_message() {
        let cases: &[(&[u8], BodyError)] = &[
            (
                br#"{"success":false,"error":"gone"}"#,
                BodyError::Missing("message"),
            ),
            (
                br#"{"success":false,"error":"gone","message":null}"#,
                BodyError::WrongType {
                    member: "message",
                    expected: JsonType::String,
                    found: JsonType::Null,
                },
            ),
            (
                br#"{"success":false,"error":"gone","message":{"a":1}}"#,
                BodyError::WrongType {
                    member: "message",
                    expected: JsonType::String,
                    found: JsonType::Object,
                },
            ),
            (
                br#"{"success":false,"error":"gone","message":7}"#,
                BodyError::WrongType {
                    member: "message",
                    expected: JsonType::String,
                    found: JsonType::Number,
                },
            ),
        ];
        for (body, issue) in cases {
            let parsed = ErrorBody::parse(body).unwrap();
            assert_eq!(parsed.code, ErrorCode::Gone);
            assert_eq!(parsed.message, None);
            assert_eq!(parsed.message_issue.as_ref(), Some(issue));
        }
    }

    #[test]
    fn the_tolerant_reader_keeps_ids_and_reads_success() {
        // A null message sends the body past the fast path: the ids are still read.
        let body = br#"{"success":false,"error":"gone","message":null,"run_id":"run_7","task_id":"task_8"}"#;
        let parsed = ErrorBody::parse(body).unwrap();
        assert_eq!(parsed.run_id.as_deref(), Some("run_7"));
        assert_eq!(parsed.task_id.as_deref(), Some("task_8"));
        assert_eq!(ErrorBody::parse_tolerant(body).unwrap(), parsed);
        // Ids of the wrong type are dropped, not an error.
        let body = br#"{"success":false,"error":"gone","message":null,"run_id":7}"#;
        assert_eq!(ErrorBody::parse(body).unwrap().run_id, None);
        // success: true is not an error body, on either path.
        for body in [
            &br#"{"success":true,"error":"gone","message":null}"#[..],
            br#"{"success":true,"error":"gone","message":"m"}"#,
        ] {
            assert_eq!(ErrorBody::parse(body), Err(BodyError::NotAnError));
        }
    }

    #[test]
    fn body_errors_read_well() {
        let e = BodyError::WrongType {
            member: "message",
            expected: JsonType::String,
            found: JsonType::Array,
        };
        assert_eq!(
            e.to_string(),
            "the `message` member is an array, expected a string"
        );
        let names: Vec<String> = [
            JsonType::Null,
            JsonType::Bool,
            JsonType::Number,
            JsonType::String,
            JsonType::Array,
            JsonType::Object,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            names,
            [
                "null",
                "a boolean",
                "a number",
                "a string",
                "an array",
                "an object"
            ]
        );
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let body = b"\xEF\xBB\xBF{\"success\":false,\"error\":\"gone\",\"message\":\"m\"}";
        let parsed = ErrorBody::parse(body).unwrap();
        assert_eq!(parsed.code, ErrorCode::Gone);
        assert_eq!(parsed.message.as_deref(), Some("m"));
        // Only one, and only at the start.
        assert!(ErrorBody::parse(b"\xEF\xBB\xBF\xEF\xBB\xBF{}").is_err());
        assert_eq!(ErrorBody::parse(b"\xEF\xBB\xBF"), Err(BodyError::Empty));
    }

    #[test]
    fn syntax_errors_carry_no_body_text() {
        for body in [
            &b"{\"success\":false,\"error\":\"go"[..],
            b"\xff\xfe",
            b"{} trailing",
            b"<html>secret</html>",
        ] {
            let err = ErrorBody::parse(body).unwrap_err();
            assert!(matches!(err, BodyError::Json { .. }), "{err:?}");
            assert!(!err.to_string().contains("secret"));
        }
        // Deep nesting neither overflows the stack nor passes as an envelope.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(ErrorBody::parse(deep.as_bytes()), Err(BodyError::TooDeep));
        let deep = format!(
            r#"{{"success":false,"error":"gone","message":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(ErrorBody::parse(deep.as_bytes()), Err(BodyError::TooDeep));
        let unclosed = "{\"a\":".repeat(100_000);
        assert_eq!(
            ErrorBody::parse(unclosed.as_bytes()),
            Err(BodyError::TooDeep)
        );
        let unclosed = "{\"a\":".repeat(100);
        assert!(matches!(
            ErrorBody::parse(unclosed.as_bytes()),
            Err(BodyError::Json { .. })
        ));
    }

    #[test]
    fn escapes_are_read() {
        let body = br#"{"success":false,"error":"invalid_request","message":"bad \"fmt\" \u00e9\n\ud83d\ude00"}"#;
        let parsed = ErrorBody::parse(body).unwrap();
        assert_eq!(parsed.code, ErrorCode::InvalidRequest);
        assert_eq!(parsed.message.as_deref(), Some("bad \"fmt\" é\n😀"));
        let body = br#"{"succ\u0065ss":false,"error":"g\u006fne","message":""}"#;
        assert_eq!(ErrorBody::parse(body).unwrap().code, ErrorCode::Gone);
    }

    /// An envelope whose extra member `x` holds `inner`.
    fn with_x(inner: &str) -> Vec<u8> {
        format!(r#"{{"success":false,"error":"gone","message":"m","x":{inner}}}"#).into_bytes()
    }

    #[test]
    fn nesting_is_bounded_at_128_levels_counting_the_top_object() {
        // The top object is level 1: 127 arrays inside it make 128 levels, one more 129.
        for (arrays, ok) in [(126, true), (127, true), (128, false), (4000, false)] {
            let body = with_x(&format!("{}{}", "[".repeat(arrays), "]".repeat(arrays)));
            let got = ErrorBody::parse(&body);
            assert_eq!(got.is_ok(), ok, "{arrays} arrays: {got:?}");
            if !ok {
                assert_eq!(got.unwrap_err(), BodyError::TooDeep);
            }
        }
        // Objects count as arrays do, and the tolerant reader (a number message) agrees.
        let objects = format!("{}1{}", r#"{"a":"#.repeat(128), "}".repeat(128));
        assert_eq!(ErrorBody::parse(&with_x(&objects)), Err(BodyError::TooDeep));
        let tolerant = format!(
            r#"{{"success":false,"error":"gone","message":1,"x":{}{}}}"#,
            "[".repeat(127),
            "]".repeat(127)
        );
        assert_eq!(
            ErrorBody::parse(tolerant.as_bytes()).unwrap().code,
            ErrorCode::Gone
        );
        // Brackets inside strings, escaped quotes included, are not structure.
        let text = format!(r#""\"{}""#, "[".repeat(300));
        assert_eq!(
            ErrorBody::parse(&with_x(&text)).unwrap().code,
            ErrorCode::Gone
        );
        // At the limit with more than 128 brackets in all, so the exact scan runs: still fine,
        // one level more is not.
        let at_limit = format!(
            "[{}{}{}]",
            "[],".repeat(200),
            "[".repeat(126),
            "]".repeat(126)
        );
        assert_eq!(
            ErrorBody::parse(&with_x(&at_limit)).unwrap().code,
            ErrorCode::Gone
        );
        let over = format!(
            "[{}{}{}]",
            "[],".repeat(200),
            "[".repeat(127),
            "]".repeat(127)
        );
        assert_eq!(ErrorBody::parse(&with_x(&over)), Err(BodyError::TooDeep));
        // The bound `docs/retry.md` states: 64 KiB.
        assert_eq!(MAX_BODY_BYTES, 65_536);
        // Many brackets side by side, never deep: fine.
        let wide = format!("[{}[]]", "[],".repeat(300));
        assert_eq!(
            ErrorBody::parse(&with_x(&wide)).unwrap().code,
            ErrorCode::Gone
        );
    }

    #[test]
    fn a_lone_surrogate_anywhere_is_not_an_envelope() {
        for lone in [
            r#""\ud800""#,
            r#""\uDC00""#,
            r#""\ud800\u0041""#,
            r#""\ud800\ud800""#,
            r#"{"\ud83dkey":1}"#,
            r#"["ok", "\udfff tail"]"#,
        ] {
            assert_eq!(
                ErrorBody::parse(&with_x(lone)),
                Err(BodyError::LoneSurrogate),
                "{lone}"
            );
        }
        let in_message = br#"{"success":false,"error":"gone","message":"a\ud800"}"#;
        assert_eq!(ErrorBody::parse(in_message), Err(BodyError::LoneSurrogate));
        for fine in [
            r#""\ud83d\ude00""#,
            r#""\uD83D\uDE00 \u00e9 \\ud800""#,
            r#""\\\ud83d\ude00\"""#,
        ] {
            assert!(ErrorBody::parse(&with_x(fine)).is_ok(), "{fine}");
        }
    }
}
