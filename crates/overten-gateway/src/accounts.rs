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

    /// [`resolve`](Accounts::resolve) without a future, for accounts that never wait
    /// ([`MemoryAccounts`]). `None` (the default) means "ask `resolve`"; `Some` must be
    /// what `resolve` would have answered.
    fn resolve_now(&self, key: &KeyHash) -> Option<Result<Option<Account>, StoreError>> {
        let _ = key;
        None
    }
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

    /// Adds or replaces the account of the key whose hash is `key`.
    pub fn insert_hash(&self, key: KeyHash, account: Account) {
        self.write().insert(key, account);
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

/// The org of a key whose accounts-file line names none: `org_` and the first 16 hex digits
/// of the key's hash, so each such key is an org of its own.
pub fn default_org(key: &KeyHash) -> String {
    let hex = key.hex();
    format!("org_{}", std::str::from_utf8(&hex[..16]).unwrap_or("0"))
}

/// The largest accounts file read: 16 MiB.
pub const MAX_ACCOUNTS_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// One line of an accounts file, read ([`AccountsFile`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AccountLine {
    /// Its line number, from 1.
    pub line: usize,
    /// The key's hash (the key itself is not kept).
    pub key: KeyHash,
    /// The account; `None`: the key is listed as `revoked` (answered 401).
    pub account: Option<Account>,
}

/// Why an accounts file cannot be used. Every variant names the line; none echoes a key.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum AccountsFileError {
    /// The file could not be read.
    #[error("cannot read the accounts file: {0}")]
    Io(#[from] std::io::Error),
    /// Larger than [`MAX_ACCOUNTS_FILE_BYTES`].
    #[error("the accounts file is larger than {MAX_ACCOUNTS_FILE_BYTES} bytes")]
    TooLarge,
    /// Not UTF-8.
    #[error("the accounts file is not UTF-8 text")]
    NotText,
    /// A line that is not `KEY TIER [ORG] [active|suspended|revoked]`.
    #[error("line {line}: {why}")]
    Line {
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A key listed twice.
    #[error("line {line}: the key is listed twice (first on line {first}); list each key once")]
    Duplicate {
        /// The second line.
        line: usize,
        /// The first.
        first: usize,
    },
    /// No key at all: a file meant to list the keys that names none must not open the API
    /// to every key, nor to none without saying so.
    #[error("the accounts file names no key")]
    Empty,
}

/// The accounts file: one key a line, `KEY TIER [ORG] [active|suspended|revoked]`, words
/// separated by spaces or tabs; `#` starts a comment; blank lines are skipped.
///
/// - `KEY`: a live key, `sk_live_` and 1 to 128 letters, digits or `_`;
/// - `TIER`: `free`, `pro` or `enterprise`;
/// - `ORG`: 1 to 128 visible ASCII characters (default: [`default_org`] of the key); a
///   third word that is one of the three statuses is the status, not an org;
/// - the status: `active` (the default), `suspended` (403 `forbidden`) or `revoked` (401
///   `invalid_api_key`).
///
/// A key listed twice, a file that lists none, a bad line: an error naming the line (never
/// the key). `overten-errors mock --keys FILE` reads this format.
///
/// ```
/// use overten_errors::Tier;
/// use overten_gateway::{AccountsFile, MemoryAccounts};
/// let text = "# key              tier  org     status\n\
///             sk_live_alpha      pro   org_a\n\
///             sk_live_beta       free  org_a   suspended\n\
///             sk_live_gamma      free          revoked\n";
/// let lines = AccountsFile::parse(text)?;
/// assert_eq!(lines.len(), 3);
/// assert_eq!(lines[0].account.as_ref().map(|a| a.tier), Some(Tier::Pro));
/// let accounts: MemoryAccounts = AccountsFile::accounts(&lines);
/// assert_eq!(accounts.len(), 2, "the revoked key is not an account");
/// assert!(AccountsFile::parse("sk_live_a pro\nsk_live_a free\n").is_err());
/// # Ok::<(), overten_gateway::AccountsFileError>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct AccountsFile;

impl AccountsFile {
    /// Reads the file at `path` (at most [`MAX_ACCOUNTS_FILE_BYTES`]).
    pub fn read(path: impl AsRef<std::path::Path>) -> Result<Vec<AccountLine>, AccountsFileError> {
        use std::io::Read as _;
        let file = std::fs::File::open(path)?;
        let mut bytes = Vec::new();
        file.take(MAX_ACCOUNTS_FILE_BYTES + 1)
            .read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_ACCOUNTS_FILE_BYTES {
            return Err(AccountsFileError::TooLarge);
        }
        let text = String::from_utf8(bytes).map_err(|_| AccountsFileError::NotText)?;
        AccountsFile::parse(&text)
    }

    /// Reads the file's text.
    pub fn parse(text: &str) -> Result<Vec<AccountLine>, AccountsFileError> {
        let mut out = Vec::new();
        let mut seen: HashMap<KeyHash, usize> = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line_no = n + 1;
            let bad = |why| AccountsFileError::Line { line: line_no, why };
            let content = line.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let words: Vec<&str> = content.split_ascii_whitespace().take(5).collect();
            let (key, tier, rest) = match words.as_slice() {
                [key, tier, rest @ ..] if rest.len() <= 2 => (*key, *tier, rest),
                [_] => {
                    return Err(bad(
                        "expected KEY TIER [ORG] [active|suspended|revoked]: no tier",
                    ));
                }
                _ => {
                    return Err(bad(
                        "expected KEY TIER [ORG] [active|suspended|revoked]: too many words",
                    ));
                }
            };
            if !overten_errors_http::is_live_key(key) {
                return Err(bad("a key is sk_live_ and 1 to 128 letters, digits or _"));
            }
            let tier: overten_errors::Tier = tier
                .parse()
                .map_err(|_| bad("the tier is free, pro or enterprise"))?;
            let status_word = |w: &str| matches!(w, "active" | "suspended" | "revoked");
            let (org, status) = match rest {
                [] => (None, "active"),
                [one] if status_word(one) => (None, *one),
                [org] => (Some(*org), "active"),
                [org, status] if status_word(status) => (Some(*org), *status),
                _ => return Err(bad("the status is active, suspended or revoked")),
            };
            let hash = KeyHash::of(key);
            let org = match org {
                Some(org) if org.len() <= 128 && org.bytes().all(|b| b.is_ascii_graphic()) => {
                    org.to_owned()
                }
                Some(_) => return Err(bad("an org is 1 to 128 visible ASCII characters")),
                None => default_org(&hash),
            };
            if let Some(first) = seen.insert(hash, line_no) {
                return Err(AccountsFileError::Duplicate {
                    line: line_no,
                    first,
                });
            }
            let account = Account::new(org, tier);
            let account = match status {
                "suspended" => Some(account.suspended()),
                "revoked" => None,
                _ => Some(account),
            };
            out.push(AccountLine {
                line: line_no,
                key: hash,
                account,
            });
        }
        if out.is_empty() {
            return Err(AccountsFileError::Empty);
        }
        Ok(out)
    }

    /// The accounts of `lines` (revoked keys left out).
    pub fn accounts(lines: &[AccountLine]) -> MemoryAccounts {
        let accounts = MemoryAccounts::new();
        for line in lines {
            if let Some(account) = &line.account {
                accounts.insert_hash(line.key, account.clone());
            }
        }
        accounts
    }
}

impl Accounts for MemoryAccounts {
    fn resolve<'a>(
        &'a self,
        key: &'a KeyHash,
    ) -> BoxFuture<'a, Result<Option<Account>, StoreError>> {
        Box::pin(std::future::ready(Ok(self.find(key))))
    }

    fn resolve_now(&self, key: &KeyHash) -> Option<Result<Option<Account>, StoreError>> {
        Some(Ok(self.find(key)))
    }
}

impl MemoryAccounts {
    fn find(&self, key: &KeyHash) -> Option<Account> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .cloned()
    }
}

impl<T: Accounts + ?Sized> Accounts for Arc<T> {
    fn resolve<'a>(
        &'a self,
        key: &'a KeyHash,
    ) -> BoxFuture<'a, Result<Option<Account>, StoreError>> {
        (**self).resolve(key)
    }
    fn resolve_now(&self, key: &KeyHash) -> Option<Result<Option<Account>, StoreError>> {
        (**self).resolve_now(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use overten_errors::Tier;
    use overten_errors_http::server::AccountStatus;

    #[test]
    fn resolve_now_answers_as_resolve_does_and_an_arc_forwards_it() {
        let accounts =
            Arc::new(MemoryAccounts::new().with_key("sk_live_a", Account::new("org_a", Tier::Pro)));
        for key in ["sk_live_a", "sk_live_b"] {
            let hash = KeyHash::of(key);
            let now = Accounts::resolve_now(&accounts, &hash).unwrap().unwrap();
            let waited = crate::block_on(accounts.resolve(&hash)).unwrap();
            assert_eq!(now, waited);
            assert_eq!(now.is_some(), key == "sk_live_a");
        }
    }

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

#[cfg(test)]
mod file_tests {
    use super::*;
    use overten_errors::Tier;
    use overten_errors_http::server::AccountStatus;

    fn why(text: &str) -> String {
        AccountsFile::parse(text).unwrap_err().to_string()
    }

    type Seen = (usize, Option<(String, Tier, AccountStatus)>);

    #[test]
    fn lines_read_key_tier_org_and_status() {
        let text = "\n  # comment only\nsk_live_a pro org_1 # trailing comment\nsk_live_b\tfree\tsuspended\nsk_live_c enterprise org_3 suspended\nsk_live_d free revoked\nsk_live_e free org_5 active\n";
        let lines = AccountsFile::parse(text).unwrap();
        let got: Vec<Seen> = lines
            .iter()
            .map(|l| {
                (
                    l.line,
                    l.account
                        .as_ref()
                        .map(|a| (a.org_id.to_string(), a.tier, a.status)),
                )
            })
            .collect();
        let default_b = default_org(&KeyHash::of("sk_live_b"));
        assert!(
            default_b.starts_with("org_") && default_b.len() == 20,
            "{default_b}"
        );
        assert_eq!(
            got,
            vec![
                (3, Some(("org_1".into(), Tier::Pro, AccountStatus::Active))),
                (4, Some((default_b, Tier::Free, AccountStatus::Suspended))),
                (
                    5,
                    Some(("org_3".into(), Tier::Enterprise, AccountStatus::Suspended))
                ),
                (6, None),
                (7, Some(("org_5".into(), Tier::Free, AccountStatus::Active))),
            ]
        );
        assert_eq!(lines[0].key, KeyHash::of("sk_live_a"));
        assert_eq!(AccountsFile::accounts(&lines).len(), 4);
    }

    #[test]
    fn bad_files_name_the_line_and_never_the_key() {
        for (text, expected) in [
            (
                "sk_live_a\n",
                "line 1: expected KEY TIER [ORG] [active|suspended|revoked]: no tier",
            ),
            (
                "\nsk_live_a pro org x y\n",
                "line 2: expected KEY TIER [ORG] [active|suspended|revoked]: too many words",
            ),
            (
                "sk_test_secret pro\n",
                "line 1: a key is sk_live_ and 1 to 128 letters, digits or _",
            ),
            (
                "sk_live_a gold\n",
                "line 1: the tier is free, pro or enterprise",
            ),
            (
                "sk_live_a pro org_1 paused\n",
                "line 1: the status is active, suspended or revoked",
            ),
            (
                "sk_live_a pro\n# x\nsk_live_a free\n",
                "line 3: the key is listed twice (first on line 1); list each key once",
            ),
            ("", "the accounts file names no key"),
            ("# nothing\n\n", "the accounts file names no key"),
        ] {
            let got = why(text);
            assert_eq!(got, expected, "{text:?}");
            assert!(!got.contains("secret"));
        }
        let long_org = format!("sk_live_a pro {}\n", "o".repeat(129));
        assert_eq!(
            why(&long_org),
            "line 1: an org is 1 to 128 visible ASCII characters"
        );
        assert!(AccountsFile::parse(&format!("sk_live_a pro {}\n", "o".repeat(128))).is_ok());
        let long_key = format!("sk_live_{} pro\n", "k".repeat(129));
        assert!(why(&long_key).starts_with("line 1: a key is"));
    }

    #[test]
    fn files_are_read_whole_bounded_and_as_text() {
        let dir = std::env::temp_dir().join(format!("overten-accounts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys");
        std::fs::write(&path, "sk_live_a pro\n").unwrap();
        assert_eq!(AccountsFile::read(&path).unwrap().len(), 1);
        std::fs::write(&path, b"sk_live_a pro \xff\n").unwrap();
        assert!(matches!(
            AccountsFile::read(&path),
            Err(AccountsFileError::NotText)
        ));
        // 16 MiB (the documented bound) is read; a byte more is not.
        let line = "sk_live_a pro\n# ";
        let mut text = line.to_owned();
        text.push_str(&"x".repeat(16 * 1024 * 1024 - line.len()));
        std::fs::write(&path, &text).unwrap();
        assert_eq!(AccountsFile::read(&path).unwrap().len(), 1);
        text.push('x');
        std::fs::write(&path, &text).unwrap();
        assert!(matches!(
            AccountsFile::read(&path),
            Err(AccountsFileError::TooLarge)
        ));
        assert!(matches!(
            AccountsFile::read(dir.join("absent")),
            Err(AccountsFileError::Io(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
