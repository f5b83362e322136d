//! Where idempotency records live: the [`IdempotencyStore`] trait and the per-process
//! [`MemoryIdempotencyStore`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use sha2::{Digest, Sha256};

use super::{BoxFuture, PermitId, StoreError};

/// A record's key: the first 128 bits of SHA-256 over the caller's org id and the
/// `Idempotency-Key` value, so two orgs never share a record and the key is never stored in
/// clear.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct RecordKey(pub(crate) [u8; 16]);

impl RecordKey {
    /// The record of `idempotency_key` for `org`.
    pub fn new(org: &str, idempotency_key: &str) -> RecordKey {
        let mut h = Sha256::new();
        h.update((org.len() as u64).to_be_bytes());
        h.update(org.as_bytes());
        h.update(idempotency_key.as_bytes());
        let mut out = [0; 16];
        out.copy_from_slice(&h.finalize()[..16]);
        RecordKey(out)
    }

    /// 32 hex digits.
    pub fn hex(&self) -> String {
        crate::key::hex(&self.0)
    }
}

/// What makes two requests "the same request": SHA-256 over the method, the path and query,
/// and the body.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Fingerprint(pub(crate) [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a request.
    pub fn new(method: &http::Method, path_and_query: &str, body: &[u8]) -> Fingerprint {
        let mut h = Sha256::new();
        h.update(method.as_str().as_bytes());
        h.update([0]);
        h.update((path_and_query.len() as u64).to_be_bytes());
        h.update(path_and_query.as_bytes());
        h.update(body);
        Fingerprint(h.finalize().into())
    }

    /// 64 hex digits.
    pub fn hex(&self) -> String {
        crate::key::hex(&self.0)
    }
}

/// A response kept for replay: status, the headers worth replaying, the whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers (without the per-response ones: request id, rate limits, length).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body.
    pub body: Bytes,
}

impl StoredResponse {
    /// Bytes held: the body and the headers.
    pub fn size(&self) -> usize {
        self.body.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len())
                .sum::<usize>()
    }

    /// A compact binary form (for a shared store): `v1`, status, header count, each header
    /// as length-prefixed name and value, then the body.
    pub fn encode(&self) -> Vec<u8> {
        // Every header whose lengths fit the form (all that `http` lets through: names are
        // under 64 KiB), at most 65,535 of them.
        let headers: Vec<(u16, &[u8], u32, &[u8])> = self
            .headers
            .iter()
            .filter_map(|(name, value)| {
                let (name, value) = (name.as_str().as_bytes(), value.as_bytes());
                Some((
                    u16::try_from(name.len()).ok()?,
                    name,
                    u32::try_from(value.len()).ok()?,
                    value,
                ))
            })
            .take(usize::from(u16::MAX))
            .collect();
        let mut out = Vec::with_capacity(self.size() + 6 + 6 * headers.len());
        out.extend_from_slice(b"v1");
        out.extend_from_slice(&self.status.as_u16().to_be_bytes());
        out.extend_from_slice(
            &u16::try_from(headers.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        for (name_len, name, value_len, value) in headers {
            out.extend_from_slice(&name_len.to_be_bytes());
            out.extend_from_slice(name);
            out.extend_from_slice(&value_len.to_be_bytes());
            out.extend_from_slice(value);
        }
        out.extend_from_slice(&self.body);
        out
    }

    /// Reads [`StoredResponse::encode`]'s form; `None` for anything else (a corrupt or
    /// foreign record is never replayed).
    pub fn decode(bytes: &[u8]) -> Option<StoredResponse> {
        let mut r = Reader(bytes);
        if r.take(2)? != b"v1" {
            return None;
        }
        let status = StatusCode::from_u16(u16::from_be_bytes(r.take(2)?.try_into().ok()?)).ok()?;
        let n = u16::from_be_bytes(r.take(2)?.try_into().ok()?);
        let mut headers = Vec::with_capacity(usize::from(n.min(64)));
        for _ in 0..n {
            let len = u16::from_be_bytes(r.take(2)?.try_into().ok()?);
            let name = HeaderName::from_bytes(r.take(usize::from(len))?).ok()?;
            let len = u32::from_be_bytes(r.take(4)?.try_into().ok()?);
            let value = HeaderValue::from_bytes(r.take(usize::try_from(len).ok()?)?).ok()?;
            headers.push((name, value));
        }
        Some(StoredResponse {
            status,
            headers,
            body: Bytes::copy_from_slice(r.0),
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
}

/// A claim's token: only its holder completes or releases it.
pub type ClaimToken = PermitId;

/// What a claim found.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum Claim {
    /// This request holds the key now: run it, then complete or release.
    Claimed,
    /// Another request with this key is in progress.
    InProgress {
        /// Whether it is the same request (method, path, body).
        same_request: bool,
    },
    /// A request with this key completed.
    Done {
        /// Whether it is the same request.
        same_request: bool,
        /// Its response, or `None` when it was too large to keep.
        response: Option<Arc<StoredResponse>>,
    },
}

/// Where idempotency records live. Claims are atomic: of any number of concurrent claims of
/// one key (from any replica), exactly one is [`Claim::Claimed`]. A claim in progress
/// expires after its lease (so a replica that died cannot hold a key for ever); a completed
/// record after the retention.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims `key` for a request with `fingerprint`, or reports what holds it.
    fn claim<'a>(
        &'a self,
        key: &'a RecordKey,
        fingerprint: &'a Fingerprint,
        token: ClaimToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>>;

    /// Completes a claim with its response (`None`: too large to keep; replays of the key
    /// are then refused), kept for `retention`. A claim no longer held is left alone.
    fn complete<'a>(
        &'a self,
        key: &'a RecordKey,
        fingerprint: &'a Fingerprint,
        token: ClaimToken,
        response: Option<&'a StoredResponse>,
        retention: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Gives a claim back (the request failed with a 5xx, was cancelled, or panicked), so a
    /// retry runs. Never blocks; if it fails, the claim expires with its lease.
    fn release(&self, key: &RecordKey, token: ClaimToken);

    /// Gives a claim back and resolves once the store has it back (or failed to: the claim
    /// then expires with its lease), within the store's own timeout. The idempotency layer
    /// awaits it before it answers a response it does not keep (a 5xx, a 408), so the
    /// client's retry, sent the moment the answer arrives, finds the key free on every
    /// replica. The default calls [`release`](Self::release): right for a store whose release
    /// is done when it returns (the per-process one); a store whose release goes over the
    /// network overrides it.
    fn give_back<'a>(&'a self, key: &'a RecordKey, token: ClaimToken) -> BoxFuture<'a, ()> {
        self.release(key, token);
        Box::pin(std::future::ready(()))
    }
}

#[derive(Debug)]
enum State {
    Pending {
        token: ClaimToken,
        until: Instant,
    },
    Done {
        response: Option<Arc<StoredResponse>>,
        until: Instant,
    },
}

#[derive(Debug)]
struct Record {
    fingerprint: Fingerprint,
    state: State,
}

impl Record {
    fn until(&self) -> Instant {
        match self.state {
            State::Pending { until, .. } | State::Done { until, .. } => until,
        }
    }

    fn bytes(&self) -> usize {
        match &self.state {
            State::Done {
                response: Some(r), ..
            } => r.size(),
            _ => 0,
        }
    }
}

/// Records in this process's memory, bounded: at most [`MemoryIdempotencyStore::MAX_RECORDS`]
/// records and [`MemoryIdempotencyStore::MAX_BYTES`] of stored responses. Past either bound
/// the completed records go first, oldest first (they expire in that order); if only claims
/// in progress remain, a new claim fails with [`StoreError::Full`].
#[derive(Debug, Default)]
pub struct MemoryIdempotencyStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<RecordKey, Record>,
    /// Completed records by expiry, soonest first (some since replaced or gone: an item
    /// counts only while its record is done with that expiry). O(log n) a push or a pop.
    done: BinaryHeap<Reverse<(Instant, RecordKey)>>,
    /// Claims by lease end, soonest first (likewise).
    pending: BinaryHeap<Reverse<(Instant, RecordKey)>>,
    bytes: usize,
    /// The most queue items one call has looked at (tests read it).
    #[cfg(test)]
    max_looked: usize,
}

/// Queue items every call looks at, expired or not.
const SWEEP_EACH: usize = 2;
/// Queue items a call that needs room looks at before it answers [`StoreError::Full`].
const SWEEP_WHEN_FULL: usize = 64;

impl Inner {
    fn fits(&self, adding: usize) -> bool {
        self.map.len() < MemoryIdempotencyStore::MAX_RECORDS
            && self.bytes.saturating_add(adding) <= MemoryIdempotencyStore::MAX_BYTES
    }

    fn remove(&mut self, key: &RecordKey) {
        if let Some(r) = self.map.remove(key) {
            self.bytes = self.bytes.saturating_sub(r.bytes());
        }
    }

    /// Pops the soonest item of `done` (`pending` with `claims`) if it is expired at `now`,
    /// or if `evict` (done records only: the soonest to expire goes first); removes its
    /// record if the item still names it. False when there was nothing to pop.
    fn pop(&mut self, claims: bool, now: Instant, evict: bool) -> bool {
        let queue = if claims {
            &mut self.pending
        } else {
            &mut self.done
        };
        let Some(&Reverse((until, key))) = queue.peek() else {
            return false;
        };
        if until > now && !evict {
            return false;
        }
        queue.pop();
        let current = self.map.get(&key).is_some_and(|r| {
            r.until() == until && matches!(r.state, State::Pending { .. }) == claims
        });
        if current {
            self.remove(&key);
        }
        true
    }

    /// Drops up to [`SWEEP_EACH`] expired records of each kind: the queues drain as fast as
    /// they fill.
    fn sweep(&mut self, now: Instant) {
        for claims in [false, true] {
            for _ in 0..SWEEP_EACH {
                if !self.pop(claims, now, false) {
                    break;
                }
            }
        }
    }

    /// Makes room for one more record of `adding` bytes, looking at no more than
    /// [`SWEEP_WHEN_FULL`] queue items: completed records go first, the soonest to expire
    /// first (with one retention, the oldest), then claims whose lease ended. False if it
    /// cannot.
    fn make_room(&mut self, adding: usize, now: Instant) -> bool {
        let mut looked = 0;
        while !self.fits(adding) && looked < SWEEP_WHEN_FULL {
            looked += 1;
            if !self.pop(false, now, true) && !self.pop(true, now, false) {
                break;
            }
        }
        #[cfg(test)]
        {
            self.max_looked = self.max_looked.max(looked);
        }
        self.fits(adding)
    }
}

impl MemoryIdempotencyStore {
    /// The most records held.
    pub const MAX_RECORDS: usize = 100_000;
    /// The most response bytes held (64 MiB).
    pub const MAX_BYTES: usize = 64 * 1024 * 1024;

    /// An empty store.
    pub fn new() -> MemoryIdempotencyStore {
        MemoryIdempotencyStore::default()
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// No records held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Response bytes held.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl IdempotencyStore for MemoryIdempotencyStore {
    fn claim<'a>(
        &'a self,
        key: &'a RecordKey,
        fingerprint: &'a Fingerprint,
        token: ClaimToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.sweep(now);
        let live = inner.map.get(key).filter(|r| r.until() > now);
        let answer = if let Some(r) = live {
            Ok(match &r.state {
                State::Pending { .. } => Claim::InProgress {
                    same_request: r.fingerprint == *fingerprint,
                },
                State::Done { response, .. } => Claim::Done {
                    same_request: r.fingerprint == *fingerprint,
                    response: response.clone(),
                },
            })
        } else {
            inner.remove(key);
            if inner.make_room(0, now) {
                let until = now + lease;
                inner.map.insert(
                    *key,
                    Record {
                        fingerprint: *fingerprint,
                        state: State::Pending { token, until },
                    },
                );
                inner.pending.push(Reverse((until, *key)));
                Ok(Claim::Claimed)
            } else {
                Err(StoreError::Full)
            }
        };
        Box::pin(std::future::ready(answer))
    }

    fn complete<'a>(
        &'a self,
        key: &'a RecordKey,
        fingerprint: &'a Fingerprint,
        token: ClaimToken,
        response: Option<&'a StoredResponse>,
        retention: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.sweep(now);
        let held = inner.map.get(key).is_some_and(|r| {
            r.fingerprint == *fingerprint
                && matches!(r.state, State::Pending { token: t, .. } if t == token)
        });
        if held {
            inner.remove(key);
            let size = response.map_or(0, StoredResponse::size);
            // A response that cannot be kept within the bounds is kept as "too large".
            let response = response
                .filter(|_| size <= Self::MAX_BYTES && inner.make_room(size, now))
                .map(|r| Arc::new(r.clone()));
            inner.bytes += response.as_ref().map_or(0, |r| r.size());
            let until = now + retention;
            inner.map.insert(
                *key,
                Record {
                    fingerprint: *fingerprint,
                    state: State::Done { response, until },
                },
            );
            inner.done.push(Reverse((until, *key)));
            // Items of records since gone stay queued until popped; the sweeps pop them as
            // they expire. Should the queue still outgrow twice the bound (retentions of
            // varying lengths), its oldest items go, one or two a call.
            for _ in 0..SWEEP_EACH {
                if inner.done.len() <= 2 * Self::MAX_RECORDS {
                    break;
                }
                inner.pop(false, now, true);
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn release(&self, key: &RecordKey, token: ClaimToken) {
        let mut inner = self.lock();
        if inner
            .map
            .get(key)
            .is_some_and(|r| matches!(r.state, State::Pending { token: t, .. } if t == token))
        {
            inner.remove(key);
        }
    }
}

impl<S: IdempotencyStore + ?Sized> IdempotencyStore for Arc<S> {
    fn claim<'a>(
        &'a self,
        key: &'a RecordKey,
        fingerprint: &'a Fingerprint,
        token: ClaimToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        (**self).claim(key, fingerprint, token, lease)
    }
    fn complete<'a>(
        &'a self,
        key: &'a RecordKey,
        fingerprint: &'a Fingerprint,
        token: ClaimToken,
        response: Option<&'a StoredResponse>,
        retention: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        (**self).complete(key, fingerprint, token, response, retention)
    }
    fn release(&self, key: &RecordKey, token: ClaimToken) {
        (**self).release(key, token);
    }
    fn give_back<'a>(&'a self, key: &'a RecordKey, token: ClaimToken) -> BoxFuture<'a, ()> {
        (**self).give_back(key, token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(body: &str) -> StoredResponse {
        StoredResponse {
            status: StatusCode::ACCEPTED,
            headers: vec![(
                HeaderName::from_static("content-type"),
                HeaderValue::from_static("application/json"),
            )],
            body: Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    #[test]
    fn records_encode_and_decode_and_refuse_garbage() {
        let r = resp(r#"{"task_id":"task_1"}"#);
        assert_eq!(StoredResponse::decode(&r.encode()), Some(r.clone()));
        for bad in [
            &b""[..],
            b"v2",
            b"v1\x00",
            b"v1\x00\xc8\x00\x05",
            b"v1\x00\x63\x00\x00",
        ] {
            assert_eq!(StoredResponse::decode(bad), None, "{bad:?}");
        }
        let mut cut = r.encode();
        cut.truncate(12);
        assert_eq!(StoredResponse::decode(&cut), None);
    }

    #[test]
    fn keys_are_scoped_by_org_and_fingerprints_by_request() {
        assert_ne!(RecordKey::new("org_a", "k"), RecordKey::new("org_b", "k"));
        assert_ne!(RecordKey::new("org_a", "bk"), RecordKey::new("org_ab", "k"));
        let m = http::Method::POST;
        assert_ne!(
            Fingerprint::new(&m, "/a", b"1"),
            Fingerprint::new(&m, "/a", b"2")
        );
        assert_ne!(
            Fingerprint::new(&m, "/a", b"1"),
            Fingerprint::new(&m, "/b", b"1")
        );
        assert_ne!(
            Fingerprint::new(&m, "/a", b"1"),
            Fingerprint::new(&http::Method::PUT, "/a", b"1")
        );
        assert_eq!(
            Fingerprint::new(&m, "/a", b"1"),
            Fingerprint::new(&m, "/a", b"1")
        );
    }

    #[test]
    fn claim_complete_release() {
        let s = MemoryIdempotencyStore::new();
        let (k, fp, other) = (
            RecordKey::new("o", "k"),
            Fingerprint::new(&http::Method::POST, "/a", b"1"),
            Fingerprint::new(&http::Method::POST, "/a", b"2"),
        );
        let lease = Duration::from_secs(60);
        let t1 = ClaimToken::new();
        let claim = |fp, t| crate::block_on(s.claim(&k, fp, t, lease)).unwrap();
        assert!(matches!(claim(&fp, t1), Claim::Claimed));
        assert!(matches!(
            claim(&fp, ClaimToken::new()),
            Claim::InProgress { same_request: true }
        ));
        assert!(matches!(
            claim(&other, ClaimToken::new()),
            Claim::InProgress {
                same_request: false
            }
        ));
        // Only the holder releases.
        s.release(&k, ClaimToken::new());
        assert!(matches!(
            claim(&fp, ClaimToken::new()),
            Claim::InProgress { .. }
        ));
        s.release(&k, t1);
        let t2 = ClaimToken::new();
        assert!(matches!(claim(&fp, t2), Claim::Claimed));
        let r = resp("x");
        crate::block_on(s.complete(&k, &fp, t2, Some(&r), lease)).unwrap();
        match claim(&fp, ClaimToken::new()) {
            Claim::Done {
                same_request: true,
                response: Some(got),
            } => assert_eq!(*got, r),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            claim(&other, ClaimToken::new()),
            Claim::Done {
                same_request: false,
                ..
            }
        ));
        // Counted by hand: the body "x" (1), "content-type" (12), "application/json" (16).
        assert_eq!(r.size(), 29);
        assert_eq!(s.bytes(), 29);
    }

    #[test]
    fn expired_claims_and_records_free_their_key() {
        let s = MemoryIdempotencyStore::new();
        let k = RecordKey::new("o", "k");
        let fp = Fingerprint::new(&http::Method::POST, "/a", b"");
        let t = ClaimToken::new();
        let short = Duration::from_millis(1);
        assert!(matches!(
            crate::block_on(s.claim(&k, &fp, t, short)).unwrap(),
            Claim::Claimed
        ));
        std::thread::sleep(Duration::from_millis(5));
        let again = crate::block_on(s.claim(&k, &fp, ClaimToken::new(), short)).unwrap();
        assert!(
            matches!(again, Claim::Claimed),
            "a dead claim's lease ended"
        );
    }

    fn key(i: u32) -> RecordKey {
        let mut k = [0; 16];
        k[..4].copy_from_slice(&i.to_be_bytes());
        RecordKey(k)
    }

    fn body_of(n: usize) -> StoredResponse {
        StoredResponse {
            status: StatusCode::OK,
            headers: Vec::new(),
            body: Bytes::from(vec![b'x'; n]),
        }
    }

    const DAY: Duration = Duration::from_secs(86_400);

    fn keep(s: &MemoryIdempotencyStore, i: u32, r: Option<&StoredResponse>) -> Claim {
        let fp = Fingerprint([1; 32]);
        let t = ClaimToken::new();
        let claimed = crate::block_on(s.claim(&key(i), &fp, t, DAY)).unwrap();
        if matches!(claimed, Claim::Claimed) {
            crate::block_on(s.complete(&key(i), &fp, t, r, DAY)).unwrap();
        }
        claimed
    }

    #[test]
    fn the_record_bound_is_exact_and_the_oldest_go_first() {
        let s = MemoryIdempotencyStore::new();
        assert!(s.is_empty());
        let max = u32::try_from(MemoryIdempotencyStore::MAX_RECORDS).unwrap();
        for i in 0..max {
            keep(&s, i, Some(&body_of(0)));
        }
        assert_eq!(s.len(), MemoryIdempotencyStore::MAX_RECORDS);
        assert!(!s.is_empty());
        keep(&s, max, Some(&body_of(0)));
        assert_eq!(
            s.len(),
            MemoryIdempotencyStore::MAX_RECORDS,
            "never over the bound"
        );
        // The oldest made room; the newest and the second oldest are kept.
        assert!(matches!(keep(&s, 0, None), Claim::Claimed), "evicted");
        assert!(matches!(keep(&s, max, None), Claim::Done { .. }));
        assert!(matches!(keep(&s, 2, None), Claim::Done { .. }));
    }

    #[test]
    fn the_byte_bound_is_exact() {
        let s = MemoryIdempotencyStore::new();
        let mib = 1024 * 1024;
        for i in 0..64 {
            keep(&s, i, Some(&body_of(mib)));
        }
        assert_eq!(s.bytes(), 64 * mib, "64 MiB fit exactly");
        assert_eq!(s.len(), 64);
        keep(&s, 64, Some(&body_of(mib)));
        assert_eq!(s.bytes(), 64 * mib, "one went for the new one");
        assert!(matches!(keep(&s, 0, None), Claim::Claimed), "the oldest");
        // A response larger than the whole bound is recorded as too large, not kept.
        let t = ClaimToken::new();
        let fp = Fingerprint([1; 32]);
        assert!(matches!(
            crate::block_on(s.claim(&key(99), &fp, t, DAY)).unwrap(),
            Claim::Claimed
        ));
        crate::block_on(s.complete(&key(99), &fp, t, Some(&body_of(64 * mib + 1)), DAY)).unwrap();
        let got = crate::block_on(s.claim(&key(99), &fp, ClaimToken::new(), DAY)).unwrap();
        assert!(
            matches!(
                got,
                Claim::Done {
                    same_request: true,
                    response: None
                }
            ),
            "{got:?}"
        );
    }

    #[test]
    fn claims_in_progress_are_never_evicted_until_their_lease_ends() {
        let s = MemoryIdempotencyStore::new();
        let fp = Fingerprint([1; 32]);
        let max = u32::try_from(MemoryIdempotencyStore::MAX_RECORDS).unwrap();
        // The fill's leases outlast any machine's fill; the last claim's is short and is
        // taken just before the check, so how long the fill took does not matter.
        let long = Duration::from_secs(3600);
        let short = Duration::from_secs(1);
        for i in 0..max - 1 {
            let got = crate::block_on(s.claim(&key(i), &fp, ClaimToken::new(), long)).unwrap();
            assert!(matches!(got, Claim::Claimed));
        }
        let last = crate::block_on(s.claim(&key(max - 1), &fp, ClaimToken::new(), short));
        let claimed_at = Instant::now();
        assert!(matches!(last.unwrap(), Claim::Claimed));
        let full = crate::block_on(s.claim(&key(max), &fp, ClaimToken::new(), short));
        assert!(matches!(full, Err(StoreError::Full)));
        // Polled to a deadline: room is made when the short lease ends, not before.
        let deadline = claimed_at + Duration::from_secs(60);
        loop {
            let got = crate::block_on(s.claim(&key(max), &fp, ClaimToken::new(), short));
            if let Ok(got) = got {
                assert!(matches!(got, Claim::Claimed));
                break;
            }
            assert!(Instant::now() < deadline, "the ended lease never made room");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            claimed_at.elapsed() >= short,
            "evicted before its lease ended"
        );
        // Only the ended claim went: the others' leases run on.
        assert_eq!(s.len(), MemoryIdempotencyStore::MAX_RECORDS);
    }

    /// The flood of issue 24: a store full of claims in progress (nothing completed to
    /// evict), then 10,000 new claims. Each is refused after a fixed number of steps (the
    /// old store scanned every record under its lock, for each); a claim that ended makes
    /// room at once, whatever its place among the others.
    #[test]
    fn a_flood_of_claims_into_a_store_full_of_claims_costs_each_a_bounded_step() {
        let s = MemoryIdempotencyStore::new();
        let fp = Fingerprint([1; 32]);
        let max = u32::try_from(MemoryIdempotencyStore::MAX_RECORDS).unwrap();
        let long = Duration::from_secs(3600);
        for i in 0..max {
            crate::block_on(s.claim(&key(i), &fp, ClaimToken::new(), long)).unwrap();
        }
        for i in 0..10_000 {
            let got = crate::block_on(s.claim(&key(max + i), &fp, ClaimToken::new(), long));
            assert!(matches!(got, Err(StoreError::Full)));
        }
        let looked = s.lock().max_looked;
        assert!(looked <= SWEEP_WHEN_FULL, "{looked}");
        // A known key is answered as before.
        let got = crate::block_on(s.claim(&key(7), &fp, ClaimToken::new(), long)).unwrap();
        assert!(matches!(got, Claim::InProgress { same_request: true }));
    }

    /// A response that needs several older ones to go makes them all go (oldest first),
    /// within the step budget, and is kept.
    #[test]
    fn a_large_response_evicts_as_many_old_ones_as_it_needs() {
        let s = MemoryIdempotencyStore::new();
        let mib = 1024 * 1024;
        for i in 0..4 {
            keep(&s, i, Some(&body_of(16 * mib)));
        }
        assert_eq!(s.bytes(), 64 * mib);
        keep(&s, 10, Some(&body_of(40 * mib)));
        assert_eq!(s.bytes(), 56 * mib, "three went: 16 + 40");
        let fp = Fingerprint([1; 32]);
        let got = crate::block_on(s.claim(&key(10), &fp, ClaimToken::new(), DAY)).unwrap();
        assert!(
            matches!(
                got,
                Claim::Done {
                    same_request: true,
                    response: Some(_)
                }
            ),
            "kept: {got:?}"
        );
        assert!(
            matches!(keep(&s, 3, None), Claim::Done { .. }),
            "the newest old one stays"
        );
    }

    /// Each call drops a couple of expired records, so a store that never fills still
    /// lets its expired records go.
    #[test]
    fn each_call_sweeps_expired_records() {
        let s = MemoryIdempotencyStore::new();
        let fp = Fingerprint([1; 32]);
        let r = body_of(2);
        let tiny = Duration::from_millis(1);
        for i in 0..10 {
            let t = ClaimToken::new();
            crate::block_on(s.claim(&key(i), &fp, t, DAY)).unwrap();
            crate::block_on(s.complete(&key(i), &fp, t, Some(&r), tiny)).unwrap();
        }
        for i in 100..103 {
            crate::block_on(s.claim(&key(i), &fp, ClaimToken::new(), tiny)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(s.len(), 13);
        // Two done records and two claims a call.
        crate::block_on(s.claim(&key(200), &fp, ClaimToken::new(), DAY)).unwrap();
        assert_eq!(s.len(), 13 - 4 + 1);
        crate::block_on(s.claim(&key(201), &fp, ClaimToken::new(), DAY)).unwrap();
        assert_eq!(s.len(), 10 - 3 + 1);
    }

    /// A queue item left by a record since replaced removes nothing when it comes up: the
    /// newer record stays.
    #[test]
    fn a_stale_item_never_removes_a_newer_record() {
        let s = MemoryIdempotencyStore::new();
        let fp = Fingerprint([1; 32]);
        let r = body_of(2);
        let short = Duration::from_millis(50);
        // Four records, then K's, all expiring soon; K's item is the latest of them.
        for i in [1, 2, 3, 4, 9] {
            let t = ClaimToken::new();
            crate::block_on(s.claim(&key(i), &fp, t, DAY)).unwrap();
            crate::block_on(s.complete(&key(i), &fp, t, Some(&r), short)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
        // K claimed again: this call's sweep takes the two soonest (1 and 2); K's record is
        // replaced while its old item is still queued.
        let t = ClaimToken::new();
        assert!(matches!(
            crate::block_on(s.claim(&key(9), &fp, t, DAY)).unwrap(),
            Claim::Claimed
        ));
        // Completed, to keep (this call's sweep takes 3 and 4); the next call's sweep takes
        // K's old item, while K's record is the new one.
        crate::block_on(s.complete(&key(9), &fp, t, Some(&r), DAY)).unwrap();
        let got = crate::block_on(s.claim(&key(9), &fp, ClaimToken::new(), DAY)).unwrap();
        assert!(
            matches!(
                got,
                Claim::Done {
                    same_request: true,
                    response: Some(_)
                }
            ),
            "the newer record stays: {got:?}"
        );
        assert_eq!(s.len(), 1);
    }

    /// The store behind an `Arc` is the same store: what it answers, and what it gives back.
    #[test]
    fn an_arc_of_a_store_forwards_every_call() {
        let s = Arc::new(MemoryIdempotencyStore::new());
        let fp = Fingerprint([1; 32]);
        let t = ClaimToken::new();
        let claimed = crate::block_on(IdempotencyStore::claim(&s, &key(1), &fp, t, DAY));
        assert!(matches!(claimed.unwrap(), Claim::Claimed));
        IdempotencyStore::release(&s, &key(1), t);
        assert!(s.is_empty(), "released through the Arc");
        let t = ClaimToken::new();
        crate::block_on(IdempotencyStore::claim(&s, &key(1), &fp, t, DAY)).unwrap();
        crate::block_on(IdempotencyStore::complete(
            &s,
            &key(1),
            &fp,
            t,
            Some(&body_of(2)),
            DAY,
        ))
        .unwrap();
        let got = crate::block_on(IdempotencyStore::claim(
            &s,
            &key(1),
            &fp,
            ClaimToken::new(),
            DAY,
        ));
        assert!(matches!(
            got.unwrap(),
            Claim::Done {
                response: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn record_keys_show_as_hex() {
        let k = RecordKey::new("org", "key-1");
        assert_eq!(k.hex().len(), 32);
        assert!(k.hex().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(k.hex(), RecordKey::new("org", "key-2").hex());
    }

    #[test]
    fn only_the_holder_completes_and_only_the_same_request() {
        let s = MemoryIdempotencyStore::new();
        let (fp, other) = (Fingerprint([1; 32]), Fingerprint([2; 32]));
        let t = ClaimToken::new();
        assert!(matches!(
            crate::block_on(s.claim(&key(1), &fp, t, DAY)).unwrap(),
            Claim::Claimed
        ));
        let r = body_of(3);
        crate::block_on(s.complete(&key(1), &fp, ClaimToken::new(), Some(&r), DAY)).unwrap();
        crate::block_on(s.complete(&key(1), &other, t, Some(&r), DAY)).unwrap();
        let got = crate::block_on(s.claim(&key(1), &fp, ClaimToken::new(), DAY)).unwrap();
        assert!(
            matches!(got, Claim::InProgress { same_request: true }),
            "{got:?}"
        );
        assert_eq!(s.bytes(), 0);
        crate::block_on(s.complete(&key(1), &fp, t, Some(&r), DAY)).unwrap();
        assert_eq!(s.bytes(), 3);
        assert_eq!(StoredResponse::size(&body_of(7)), 7);
    }
}
