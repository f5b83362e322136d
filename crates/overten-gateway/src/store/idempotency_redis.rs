//! Idempotency records on Redis (feature `redis`): the gateway's `RedisStore` keeps them too.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;

use super::redis::millis;
use super::{
    BoxFuture, Claim, ClaimToken, Fingerprint, IdempotencyStore, RecordKey, RedisStore, StoreError,
    StoredResponse,
};

/// KEYS: the record. ARGV: fingerprint (64 hex), token (32 hex), lease ms. Sets the claim
/// `P<fingerprint><token>` if the record is absent and answers `C`; else answers the record.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], 'P' .. ARGV[1] .. ARGV[2], 'PX', ARGV[3])
  return 'C'
end
return v
",
    )
});

/// KEYS: the record. ARGV: fingerprint, token, the new record, retention ms. Only the
/// claim's holder completes it.
static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == 'P' .. ARGV[1] .. ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  return 1
end
return 0
",
    )
});

/// KEYS: the record. ARGV: token. Deletes the claim if this token holds it.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 1) == 'P' and string.sub(v, -32) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

impl RedisStore {
    fn record_key(&self, key: &RecordKey) -> String {
        format!("{}idem:{}", self.prefix, key.hex())
    }

    /// Deletes a claim still held by `token`, within the store's timeout.
    async fn release_record(&self, record: String, token: ClaimToken) {
        let mut invocation = RELEASE.prepare_invoke();
        invocation.key(record).arg(token.hex());
        let released: Result<i64, _> = self
            .bounded(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await;
        if let Err(error) = released {
            // At debug: an outage is logged once by the layers that saw it.
            tracing::debug!(%error, "idempotency claim not released: it expires with its lease");
        }
    }
}

/// Reads a record: `P`, `D` or `L`, the fingerprint, then the claim's token, the encoded
/// response, or nothing. Anything else is a record this version cannot read: answered as
/// "another request", so it is never replayed nor run over.
fn read(record: &[u8], fingerprint: &Fingerprint) -> Claim {
    let fp = fingerprint.hex();
    let same_request = record.get(1..65) == Some(fp.as_bytes());
    match record.first() {
        Some(b'P') => Claim::InProgress { same_request },
        Some(b'D') => match record.get(65..).and_then(StoredResponse::decode) {
            Some(response) => Claim::Done {
                same_request,
                response: Some(Arc::new(response)),
            },
            None => Claim::Done {
                same_request: false,
                response: None,
            },
        },
        Some(b'L') => Claim::Done {
            same_request,
            response: None,
        },
        _ => Claim::Done {
            same_request: false,
            response: None,
        },
    }
}

impl IdempotencyStore for RedisStore {
    fn claim<'a>(
        &'a self,
        key: &'a RecordKey,
        fingerprint: &'a Fingerprint,
        token: ClaimToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(async move {
            let mut invocation = CLAIM.prepare_invoke();
            invocation
                .key(self.record_key(key))
                .arg(fingerprint.hex())
                .arg(token.hex())
                .arg(millis(lease));
            let answer: Vec<u8> = self
                .bounded(|mut conn| async move { invocation.invoke_async(&mut conn).await })
                .await?;
            Ok(if answer == b"C" {
                Claim::Claimed
            } else {
                read(&answer, fingerprint)
            })
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a RecordKey,
        fingerprint: &'a Fingerprint,
        token: ClaimToken,
        response: Option<&'a StoredResponse>,
        retention: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let fp = fingerprint.hex();
            let mut record = Vec::with_capacity(65 + response.map_or(0, StoredResponse::size));
            record.push(if response.is_some() { b'D' } else { b'L' });
            record.extend_from_slice(fp.as_bytes());
            if let Some(r) = response {
                record.extend_from_slice(&r.encode());
            }
            let mut invocation = COMPLETE.prepare_invoke();
            invocation
                .key(self.record_key(key))
                .arg(fp)
                .arg(token.hex())
                .arg(record)
                .arg(millis(retention));
            let _: i64 = self
                .bounded(|mut conn| async move { invocation.invoke_async(&mut conn).await })
                .await?;
            Ok(())
        })
    }

    fn release(&self, key: &RecordKey, token: ClaimToken) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.clone();
        let record = self.record_key(key);
        handle.spawn(async move { store.release_record(record, token).await });
    }

    fn give_back<'a>(&'a self, key: &'a RecordKey, token: ClaimToken) -> BoxFuture<'a, ()> {
        Box::pin(self.release_record(self.record_key(key), token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_and_garbage_is_never_replayed() {
        let fp = Fingerprint::new(&http::Method::POST, "/a", b"");
        let other = Fingerprint::new(&http::Method::POST, "/b", b"");
        let mut pending = b"P".to_vec();
        pending.extend_from_slice(fp.hex().as_bytes());
        pending.extend_from_slice(ClaimToken::new().hex().as_bytes());
        assert!(matches!(
            read(&pending, &fp),
            Claim::InProgress { same_request: true }
        ));
        assert!(matches!(
            read(&pending, &other),
            Claim::InProgress {
                same_request: false
            }
        ));
        let r = StoredResponse {
            status: http::StatusCode::CREATED,
            headers: Vec::new(),
            body: bytes::Bytes::from_static(b"{}"),
        };
        let mut done = b"D".to_vec();
        done.extend_from_slice(fp.hex().as_bytes());
        done.extend_from_slice(&r.encode());
        match read(&done, &fp) {
            Claim::Done {
                same_request: true,
                response: Some(got),
            } => assert_eq!(*got, r),
            other => panic!("{other:?}"),
        }
        let mut large = b"L".to_vec();
        large.extend_from_slice(fp.hex().as_bytes());
        assert!(matches!(
            read(&large, &fp),
            Claim::Done {
                same_request: true,
                response: None
            }
        ));
        for garbage in [&b""[..], b"X", b"D", b"Dxyz"] {
            assert!(
                matches!(
                    read(garbage, &fp),
                    Claim::Done {
                        same_request: false,
                        response: None
                    }
                ),
                "{garbage:?}"
            );
        }
    }
}
