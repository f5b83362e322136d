//! Accounts: who a bearer key belongs to (org, tier, status), looked up by the key's hash.

use std::collections::HashMap;

use std::sync::{Arc, RwLock};

use overten_errors_http::server::Account;

use crate::key::KeyHash;
use crate::store::{BoxFuture, StoreError};

/// Resolves a key's hash to its account: `Ok(None)` for a key that is unknown or revoked
/// (401 `invalid_api_key`), `Err` when the lookup itself failed (the gateway's store
/// failure policy applies). Implement it on your accounts database; [`MemoryAccounts`] is
/// the in-memory one for tests and the mock.
///
/// A lookup should bound its own time: the gateway waits for it.
pub trait Accounts: Send + Sync + 'static {
    /// The account of the key whose hash is `key`.
    fn resolve<'a>(
        &'a self,
        key: &'a KeyHash,
    ) -> BoxFuture<'a, Result<Option<Account>, StoreError>>;
}

/// Accounts in this process's memory, keyed by the keys' hashes (the keys themselves are
/// not kept).
///
/// ```
/// use overten_errors::Tier;
/// use overten_gateway::{Account, MemoryAccounts};
/// let accounts = MemoryAccounts::new()
///     .with_key("sk_live_free1", Account::new("org_a", Tier::Free))
///     .with_key("sk_live_pro1", Account::new("org_b", Tier::Pro));
/// accounts.revoke("sk_live_free1");
/// assert_eq!(accounts.len(), 1);
/// ```
#[derive(Debug, Default)]
pub struct MemoryAccounts {
    keys: RwLock<HashMap<KeyHash, Account>>,
}

impl MemoryAccounts {
    /// No keys.
    pub fn new() -> MemoryAccounts {
        MemoryAccounts::default()
    }

    /// These accounts plus `key`.
    #[must_use]
    pub fn with_key(self, key: &str, account: Account) -> MemoryAccounts {
        self.insert(key, account);
        self
    }

    /// Adds or replaces `key`'s account.
    pub fn insert(&self, key: &str, account: Account) {
        self.write().insert(KeyHash::of(key), account);
    }

    /// Revokes `key`: from now on it is answered 401 `invalid_api_key`.
    pub fn revoke(&self, key: &str) {
        self.write().remove(&KeyHash::of(key));
    }

    /// Keys known.
    pub fn len(&self) -> usize {
        self.keys
            .read()
            .map_or_else(|e| e.into_inner().len(), |k| k.len())
    }

    /// No keys known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<KeyHash, Account>> {
        self.keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Accounts for MemoryAccounts {
    fn resolve<'a>(
        &'a self,
        key: &'a KeyHash,
    ) -> BoxFuture<'a, Result<Option<Account>, StoreError>> {
        let found = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .cloned();
        Box::pin(std::future::ready(Ok(found)))
    }
}

impl<T: Accounts + ?Sized> Accounts for Arc<T> {
    fn resolve<'a>(
        &'a self,
        key: &'a KeyHash,
    ) -> BoxFuture<'a, Result<Option<Account>, StoreError>> {
        (**self).resolve(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use overten_errors::Tier;
    use overten_errors_http::server::AccountStatus;

    #[test]
    fn hashes_are_sha256_prefixes() {
        // SHA-256("abc") = ba7816bf 8f01cfea 414140de 5dae2223 b00361a3 96177a9c b410ff61 f20015ad
        // (FIPS 180-2, appendix B.1).
        assert_eq!(
            KeyHash::of("abc").to_string(),
            "ba7816bf8f01cfea414140de5dae2223"
        );
        assert_ne!(KeyHash::of("sk_live_a"), KeyHash::of("sk_live_b"));
    }

    #[test]
    fn memory_accounts_resolve_insert_and_revoke() {
        let accounts = MemoryAccounts::new().with_key("k1", Account::new("org_1", Tier::Pro));
        let got = crate::block_on(accounts.resolve(&KeyHash::of("k1")));
        assert_eq!(got.unwrap(), Some(Account::new("org_1", Tier::Pro)));
        let unknown = crate::block_on(accounts.resolve(&KeyHash::of("k2")));
        assert_eq!(unknown.unwrap(), None);
        accounts.insert("k1", Account::new("org_1", Tier::Pro).suspended());
        let got = crate::block_on(accounts.resolve(&KeyHash::of("k1"))).unwrap();
        assert_eq!(got.map(|a| a.status), Some(AccountStatus::Suspended));
        accounts.revoke("k1");
        assert!(accounts.is_empty());
    }
}
