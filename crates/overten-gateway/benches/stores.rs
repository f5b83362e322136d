//! The memory stores under a flood of new keys (issue 24, item 3): a known key's admission
//! on a store that holds only it, against the same admission on a store full of keys of
//! the current window while every admission is followed by a new key's (refused) one, and
//! the refusal itself. Same for idempotency claims. Baseline and flood in the same run;
//! `docs/performance.md` keeps the ratios.
//!
//! Run: `cargo bench -p overten-gateway --bench stores`.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::wildcard_imports,
    reason = "a benchmark"
)]

use std::hint::black_box;
use std::sync::OnceLock;
use std::time::Duration;

use divan::Bencher;
use overten_gateway::{
    Admit, ClaimToken, Fingerprint, IdempotencyStore, KeyHash, MemoryIdempotencyStore, MemoryStore,
    RecordKey, Store,
};

fn main() {
    divan::main();
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

const WINDOW: u64 = 7;

fn full_store() -> &'static MemoryStore {
    static STORE: OnceLock<MemoryStore> = OnceLock::new();
    STORE.get_or_init(|| {
        let store = MemoryStore::new();
        for i in 0..MemoryStore::MAX_KEYS {
            let key = KeyHash::of(&format!("held-{i}"));
            block_on(store.admit(Admit::new(&key, WINDOW, 60, u32::MAX))).unwrap();
        }
        store
    })
}

mod rate {
    use super::*;

    /// The baseline: a known key on a store that holds only it.
    #[divan::bench]
    fn known_key_alone(b: Bencher<'_, '_>) {
        let store = MemoryStore::new();
        let key = KeyHash::of("known");
        b.bench_local(|| block_on(store.admit(Admit::new(&key, WINDOW, 60, u32::MAX))).unwrap());
    }

    /// A known key on a full store, each admission followed by a new key's refusal.
    #[divan::bench]
    fn known_key_during_a_flood(b: Bencher<'_, '_>) {
        let store = full_store();
        let key = KeyHash::of("held-1");
        let mut i = 0u64;
        b.bench_local(|| {
            i += 1;
            let new = KeyHash::of(&format!("flood-{i}"));
            let refused = block_on(store.admit(Admit::new(&new, WINDOW, 60, u32::MAX)));
            black_box(refused.is_err());
            block_on(store.admit(Admit::new(&key, WINDOW, 60, u32::MAX))).unwrap()
        });
    }

    /// The new key's hash alone: what the flood benchmark adds besides the store.
    #[divan::bench]
    fn hashing_a_new_key(b: Bencher<'_, '_>) {
        let mut i = 0u64;
        b.bench_local(|| {
            i += 1;
            KeyHash::of(&format!("flood-{i}"))
        });
    }
}

mod idempotency {
    use super::*;

    fn full() -> &'static MemoryIdempotencyStore {
        static STORE: OnceLock<MemoryIdempotencyStore> = OnceLock::new();
        STORE.get_or_init(|| {
            let store = MemoryIdempotencyStore::new();
            let fp = Fingerprint::new(&http::Method::POST, "/v1/x", b"{}");
            for i in 0..MemoryIdempotencyStore::MAX_RECORDS {
                let key = RecordKey::new("org", &format!("held-{i}"));
                block_on(store.claim(&key, &fp, ClaimToken::new(), Duration::from_secs(3600)))
                    .unwrap();
            }
            store
        })
    }

    /// The baseline: a known key's claim (answered "in progress") on a store that holds
    /// only it.
    #[divan::bench]
    fn known_key_alone(b: Bencher<'_, '_>) {
        let store = MemoryIdempotencyStore::new();
        let fp = Fingerprint::new(&http::Method::POST, "/v1/x", b"{}");
        let key = RecordKey::new("org", "known");
        let lease = Duration::from_secs(3600);
        block_on(store.claim(&key, &fp, ClaimToken::new(), lease)).unwrap();
        b.bench_local(|| block_on(store.claim(&key, &fp, ClaimToken::new(), lease)).unwrap());
    }

    /// The same on a store full of claims, each followed by a new key's refused claim.
    #[divan::bench]
    fn known_key_during_a_flood(b: Bencher<'_, '_>) {
        let store = full();
        let fp = Fingerprint::new(&http::Method::POST, "/v1/x", b"{}");
        let key = RecordKey::new("org", "held-1");
        let lease = Duration::from_secs(3600);
        let mut i = 0u64;
        b.bench_local(|| {
            i += 1;
            let new = RecordKey::new("org", &format!("flood-{i}"));
            black_box(block_on(store.claim(&new, &fp, ClaimToken::new(), lease)).is_err());
            block_on(store.claim(&key, &fp, ClaimToken::new(), lease)).unwrap()
        });
    }
}
