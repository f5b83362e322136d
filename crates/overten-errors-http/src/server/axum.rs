//! axum 0.8 (feature `axum`): an error type handlers return, and extractors whose
//! rejections are envelopes.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use overten_errors::{ApiError, ErrorCode, JsonPointer};
use serde::de::DeserializeOwned;

/// The error an axum handler returns: `Result<T, HandlerError>`.
///
/// `?` converts both an [`ApiError`] (sent as it is) and any other error (sent as a 500
/// `internal_error` whose public message is the page's text; the error is kept as the
/// cause, for logs only, and never reaches the body or a header). Like `anyhow::Error`, it
/// does not implement `std::error::Error` itself, which is what lets one `From` take both.
///
/// The response carries the `ApiError` in its extensions, so that
/// `EnvelopeLayer` (feature `tower`) can log it, with its cause chain, once.
///
/// ```
/// use overten_errors::{ApiError, ErrorCode};
/// use overten_errors_http::HandlerError;
///
/// async fn get_run(id: u64) -> Result<String, HandlerError> {
///     if id == 0 {
///         return Err(ApiError::from(ErrorCode::NotFound).into());
///     }
///     let n: u32 = "not a number".parse()?; // any error: a 500 internal_error
///     Ok(format!("run {id}: {n}"))
/// }
/// # let _ = get_run;
/// ```
#[derive(Debug)]
pub struct HandlerError(Box<ApiError>);

impl<E> From<E> for HandlerError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(error: E) -> Self {
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(error);
        match boxed.downcast::<ApiError>() {
            Ok(api) => HandlerError(api),
            Err(other) => HandlerError::new(ApiError::internal(other)),
        }
    }
}

impl HandlerError {
    /// The error to send.
    pub fn new(error: ApiError) -> HandlerError {
        HandlerError(Box::new(error))
    }

    /// The error that will be sent.
    pub fn api_error(&self) -> &ApiError {
        &self.0
    }
}

impl IntoResponse for HandlerError {
    fn into_response(self) -> Response {
        super::response::answer(*self.0, axum::body::Body::from)
    }
}

impl From<HandlerError> for ApiError {
    fn from(e: HandlerError) -> ApiError {
        *e.0
    }
}

/// A JSON body, like `axum::Json`, whose rejections are envelopes:
///
/// - a `Content-Type` other than `application/json` (or `application/*+json`), or none:
///   400 `invalid_request`;
/// - a body over the router's limit: 413 `payload_too_large`;
/// - malformed JSON: 400 `invalid_request`;
/// - a missing required field, or a value that names no variant of an enum: 400
///   `invalid_request` (the page: "Missing required field or bad enum value");
/// - any other value of the wrong shape (a string for a number, an unknown field under
///   `deny_unknown_fields`, ...): 422 `validation_error`.
///
/// Every field-level rejection's message carries the JSON pointer of the field
/// (`ApiError::field_pointer` reads it back), found by `serde_path_to_error`; a detail too
/// long for the message bound is cut, never the pointer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

fn is_json(req: &Request) -> bool {
    let Some(value) = req.headers().get(http::header::CONTENT_TYPE) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let mut parts = essence.splitn(2, '/');
    let (kind, sub) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json")
            || sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case("+json"))
}

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = HandlerError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(&req) {
            return Err(HandlerError::new(ApiError::new(
                ErrorCode::InvalidRequest,
                "Expected a request body with Content-Type: application/json",
            )));
        }
        // Behind the gateway, the limit is the tier's, and the 413 says so as the gateway's
        // own does.
        #[cfg(feature = "tower")]
        let limit = {
            let tier = req
                .extensions()
                .get::<crate::server::Account>()
                .map(|a| a.tier);
            req.extensions()
                .get::<crate::server::TierLimits>()
                .map(|l| (tier, l.upload_bytes))
        };
        #[cfg(not(feature = "tower"))]
        let limit: Option<(Option<overten_errors::Tier>, u64)> = None;
        let bytes = match axum::body::Bytes::from_request(req, state).await {
            Ok(bytes) => bytes,
            Err(rejection) if rejection.status() == http::StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(HandlerError::new(match limit {
                    Some((tier, bytes)) => ApiError::upload_too_large(tier, bytes),
                    None => ApiError::new(
                        ErrorCode::PayloadTooLarge,
                        "The request body exceeds the limit",
                    ),
                }));
            }
            Err(_) => {
                return Err(HandlerError::new(ApiError::new(
                    ErrorCode::InvalidRequest,
                    "The request body could not be read",
                )));
            }
        };
        from_json_bytes(&bytes).map(Json)
    }
}

/// Reads `T` from JSON bytes with the rejections of [`Json`].
pub fn from_json_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, HandlerError> {
    let not_json = || {
        HandlerError::new(ApiError::new(
            ErrorCode::InvalidRequest,
            "The request body is not valid JSON",
        ))
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(v) => {
            // Trailing bytes after the value are malformed JSON too.
            de.end().map_err(|_| not_json())?;
            Ok(v)
        }
        Err(e) => {
            let inner = e.inner();
            if inner.is_syntax() || inner.is_eof() || inner.is_io() {
                return Err(not_json());
            }
            let mut pointer = pointer_of(e.path());
            let detail = detail_of(inner);
            // The page's 400 `invalid_request` is "Missing required field or bad enum
            // value"; every other field-level rejection is its 422 `validation_error`.
            // Both carry the field's pointer.
            let code = if let Some(field) = missing_field(&detail) {
                pointer = pointer.push(field);
                ErrorCode::InvalidRequest
            } else if detail.starts_with("unknown variant ") {
                ErrorCode::InvalidRequest
            } else {
                ErrorCode::ValidationError
            };
            Err(HandlerError::new(ApiError::at_field(
                code, &pointer, &detail,
            )))
        }
    }
}

/// The JSON pointer of a `serde_path_to_error` path.
fn pointer_of(path: &serde_path_to_error::Path) -> JsonPointer {
    use serde_path_to_error::Segment;
    path.iter().fold(JsonPointer::root(), |p, seg| match seg {
        Segment::Seq { index } => p.push(&index.to_string()),
        Segment::Map { key } => p.push(key),
        Segment::Enum { variant } => p.push(variant),
        Segment::Unknown => p,
    })
}

/// serde's message without the " at line L column C" suffix `serde_json` adds.
fn detail_of(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// The field of serde's "missing field `name`".
fn missing_field(detail: &str) -> Option<&str> {
    detail
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
}

/// A path parameter, like `axum::extract::Path`, whose rejection is a 400
/// `invalid_request` envelope.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = HandlerError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(|_| {
                HandlerError::new(ApiError::new(
                    ErrorCode::InvalidRequest,
                    "A path parameter is missing or malformed",
                ))
            })
    }
}

/// A query string, like `axum::extract::Query`, whose rejection is a 400
/// `invalid_request` envelope.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = HandlerError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|_| {
                HandlerError::new(ApiError::new(
                    ErrorCode::InvalidRequest,
                    "The query string is missing a parameter or has a malformed one",
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code, reason = "read by serde only")]
    struct Sheet {
        name: String,
        rows: Vec<u32>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code, reason = "read by serde only")]
    struct Job {
        sheets: Vec<Sheet>,
    }

    #[test]
    fn any_error_becomes_internal_and_api_errors_pass_through() {
        let api: HandlerError = ApiError::from(ErrorCode::Gone).into();
        assert_eq!(api.api_error().code(), &ErrorCode::Gone);
        let other: HandlerError = "x".parse::<u32>().unwrap_err().into();
        assert_eq!(other.api_error().code(), &ErrorCode::InternalError);
        assert!(std::error::Error::source(other.api_error()).is_some());
        assert!(!other.api_error().message().contains("digit"));
    }

    #[test]
    fn json_errors_point_at_the_field() {
        let e = from_json_bytes::<Job>(
            br#"{"sheets":[{"name":"a","rows":[1]},{"name":"b","rows":[1,"x"]}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.api_error().code(), &ErrorCode::ValidationError);
        let at = JsonPointer::root()
            .push("sheets")
            .push("1")
            .push("rows")
            .push("1");
        assert_eq!(e.api_error().field_pointer(), Some(at));
        let e = from_json_bytes::<Job>(br#"{"sheets":[{"rows":[]}]}"#).unwrap_err();
        let at = JsonPointer::root().push("sheets").push("0").push("name");
        assert_eq!(
            e.api_error().code(),
            &ErrorCode::InvalidRequest,
            "missing field"
        );
        assert_eq!(e.api_error().status(), 400);
        assert!(e.api_error().message().contains("name"));
        assert_eq!(e.api_error().field_pointer(), Some(at));
        for bad in [
            &b"{"[..],
            b"{\"sheets\":[}",
            b"",
            br#"{"name":"a","sheets":[]} {}"#,
        ] {
            let e = from_json_bytes::<Job>(bad).unwrap_err();
            assert_eq!(e.api_error().code(), &ErrorCode::InvalidRequest, "{bad:?}");
        }
    }

    #[test]
    fn content_types() {
        let req = |ct: Option<&str>| {
            let mut b = http::Request::post("/");
            if let Some(ct) = ct {
                b = b.header("content-type", ct);
            }
            b.body(axum::body::Body::empty()).unwrap()
        };
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/problem+json",
        ] {
            assert!(is_json(&req(Some(ok))), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/jsonx",
            "json",
            "application/+json",
        ] {
            assert!(!is_json(&req(Some(bad))), "{bad}");
        }
        assert!(!is_json(&req(None)));
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    #[allow(dead_code, reason = "read by serde only")]
    enum Format {
        Xlsx,
        Csv,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "read by serde only")]
    struct Export {
        format: Format,
        pages: u32,
    }

    #[test]
    fn bad_enum_values_are_400_and_shapes_422_each_with_its_pointer() {
        let at = |f: &str| Some(JsonPointer::root().push(f));
        let e = from_json_bytes::<Export>(br#"{"format":"pdf","pages":1}"#).unwrap_err();
        assert_eq!(e.api_error().status(), 400);
        assert_eq!(e.api_error().code(), &ErrorCode::InvalidRequest);
        assert_eq!(e.api_error().field_pointer(), at("format"));
        let e = from_json_bytes::<Export>(br#"{"format":"csv","pages":"x"}"#).unwrap_err();
        assert_eq!(e.api_error().status(), 422);
        assert_eq!(e.api_error().code(), &ErrorCode::ValidationError);
        assert_eq!(e.api_error().field_pointer(), at("pages"));
        let e = from_json_bytes::<Export>(br#"{"format":"csv","pages":1,"x":0}"#).unwrap_err();
        assert_eq!(
            e.api_error().code(),
            &ErrorCode::ValidationError,
            "unknown field"
        );
        let e = from_json_bytes::<Export>(br#"{"format":"csv"}"#).unwrap_err();
        assert_eq!(
            e.api_error().code(),
            &ErrorCode::InvalidRequest,
            "missing field"
        );
        assert_eq!(e.api_error().field_pointer(), at("pages"));
        // A long enum value: the detail is cut, the pointer kept.
        let body = format!(r#"{{"format":"{}","pages":1}}"#, "p".repeat(20_000));
        let e = from_json_bytes::<Export>(body.as_bytes()).unwrap_err();
        assert_eq!(e.api_error().code(), &ErrorCode::InvalidRequest);
        assert!(e.api_error().message().len() <= overten_errors::MAX_MESSAGE_BYTES);
        assert_eq!(e.api_error().field_pointer(), at("format"));
    }
}
