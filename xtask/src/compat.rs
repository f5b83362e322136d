//! Wire compatibility: the current catalog against the catalog of the last release.
//!
//! `docs/compat.md` states the policy; `cargo xtask release-snapshot` keeps the released
//! catalog as `docs/compat/catalog-<version>.json`; [`compare`] classifies every difference
//! and [`refused`] lists the ones the workspace version does not allow.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// How much a change breaks, in semantic-versioning terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Text only (`when`, `fix`, descriptions): a patch release.
    Patch,
    /// Something added that old clients can ignore (a code, a status, a tier): a minor
    /// release, since `ErrorCode` is `#[non_exhaustive]` and clients keep unknown codes.
    Minor,
    /// Something a deployed client or server relies on changed or went away: a wire string
    /// renamed or removed, a code's status, category or retry rule changed.
    Major,
}

/// One difference between two catalogs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// How much it breaks.
    pub level: Level,
    /// What changed, for a person.
    pub what: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.level, self.what)
    }
}

fn by_key<'a>(list: &'a Value, key: &str) -> Vec<(String, &'a Value)> {
    list.as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| (item[key].to_string(), item))
                .collect()
        })
        .unwrap_or_default()
}

/// Compares the entries of one list (`codes`, `statuses`, ...) keyed by `key`: a removed
/// entry is major, an added one minor; a changed member is major when it is in `major`,
/// else patch.
fn compare_list(
    old: &Value,
    new: &Value,
    list: &str,
    key: &str,
    major: &[&str],
    out: &mut Vec<Change>,
) {
    let (old_items, new_items) = (by_key(&old[list], key), by_key(&new[list], key));
    for (k, old_item) in &old_items {
        let Some((_, new_item)) = new_items.iter().find(|(nk, _)| nk == k) else {
            out.push(Change {
                level: Level::Major,
                what: format!("{list}: {k} was removed or renamed"),
            });
            continue;
        };
        let members = old_item
            .as_object()
            .map(|m| m.keys().cloned().collect::<Vec<_>>());
        for member in members.unwrap_or_default() {
            if old_item[&member] != new_item[&member] {
                let level = if major.contains(&member.as_str()) {
                    Level::Major
                } else {
                    Level::Patch
                };
                out.push(Change {
                    level,
                    what: format!(
                        "{list}: {k}: {member} changed from {} to {}",
                        old_item[&member], new_item[&member]
                    ),
                });
            }
        }
    }
    for (k, _) in &new_items {
        if !old_items.iter().any(|(ok, _)| ok == k) {
            out.push(Change {
                level: Level::Minor,
                what: format!("{list}: {k} was added"),
            });
        }
    }
}

/// Every difference from the `old` catalog to the `new` one.
pub fn compare(old: &Value, new: &Value) -> Vec<Change> {
    let mut out = Vec::new();
    compare_list(
        old,
        new,
        "codes",
        "code",
        &["status", "category", "retry"],
        &mut out,
    );
    compare_list(old, new, "statuses", "status", &["kind"], &mut out);
    compare_list(
        old,
        new,
        "tiers",
        "tier",
        &["requests_per_minute", "concurrent_runs"],
        &mut out,
    );
    compare_list(old, new, "headers", "name", &[], &mut out);
    if old["fallback"] != new["fallback"] {
        out.push(Change {
            level: Level::Major,
            what: "fallback: the status rule for unknown codes changed".to_owned(),
        });
    }
    out
}

/// A `major.minor.patch` version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u64, pub u64, pub u64);

impl Version {
    /// Parses `1.2.3` (a pre-release or build suffix is ignored).
    pub fn parse(s: &str) -> Option<Version> {
        let core = s.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
        let v = Version(parts.next()??, parts.next()??, parts.next()??);
        parts.next().is_none().then_some(v)
    }

    /// The semantic-versioning level of going from `self` to `to` in Cargo's reading: before 1.0 the
    /// minor number is the breaking one (0.1 -> 0.2 is major, 0.1.0 -> 0.1.1 is minor).
    pub fn bump_to(self, to: Version) -> Option<Level> {
        if to <= self {
            return None;
        }
        let breaking = if self.0 == 0 {
            to.0 > 0 || to.1 > self.1
        } else {
            to.0 > self.0
        };
        Some(if breaking {
            Level::Major
        } else if (self.0, self.1) != (to.0, to.1) || self.0 == 0 {
            Level::Minor
        } else {
            Level::Patch
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// The changes that `current` does not allow since the release `released`: major changes
/// need a breaking version bump. Minor and patch changes are listed by [`compare`] and
/// allowed, since they reach users with the next release whatever its number.
pub fn refused(released: Version, current: Version, changes: &[Change]) -> Vec<Change> {
    let allowed_major = released.bump_to(current) == Some(Level::Major);
    changes
        .iter()
        .filter(|c| c.level == Level::Major && !allowed_major)
        .cloned()
        .collect()
}

/// The folder of released catalogs.
pub fn snapshots_dir(root: &Path) -> PathBuf {
    root.join("docs/compat")
}

/// The newest released catalog under `docs/compat`, with its version.
pub fn latest_snapshot(root: &Path) -> Option<(Version, PathBuf)> {
    std::fs::read_dir(snapshots_dir(root))
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let v = name.strip_prefix("catalog-")?.strip_suffix(".json")?;
            Some((Version::parse(v)?, e.path()))
        })
        .max_by_key(|(v, _)| *v)
}

/// The current catalog, as `docs/catalog.json` writes it (without its `$comment`).
pub fn current_catalog() -> Value {
    serde_json::to_value(overten_errors_schema::catalog()).unwrap_or_default()
}

/// The workspace's version.
pub fn current_version() -> Option<Version> {
    Version::parse(&overten_errors_schema::catalog().version)
}

/// `cargo xtask release-snapshot`: keeps the current catalog as the released one.
pub fn write_snapshot(root: &Path) -> std::io::Result<PathBuf> {
    let version = overten_errors_schema::catalog().version;
    let path = snapshots_dir(root).join(format!("catalog-{version}.json"));
    std::fs::create_dir_all(snapshots_dir(root))?;
    let mut text = serde_json::to_string_pretty(&current_catalog()).unwrap_or_default();
    text.push('\n');
    std::fs::write(&path, text)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_bump_as_cargo_reads_them() {
        let v = |s| Version::parse(s).unwrap();
        assert_eq!(v("0.1.0").bump_to(v("0.2.0")), Some(Level::Major));
        assert_eq!(v("0.1.0").bump_to(v("0.1.1")), Some(Level::Minor));
        assert_eq!(v("0.1.0").bump_to(v("1.0.0")), Some(Level::Major));
        assert_eq!(v("1.2.3").bump_to(v("2.0.0")), Some(Level::Major));
        assert_eq!(v("1.2.3").bump_to(v("1.3.0")), Some(Level::Minor));
        assert_eq!(v("1.2.3").bump_to(v("1.2.4")), Some(Level::Patch));
        assert_eq!(v("1.2.3").bump_to(v("1.2.3")), None);
        assert_eq!(v("1.2.3").bump_to(v("1.2.2")), None);
        assert_eq!(Version::parse("1.2.3-rc.1"), Some(Version(1, 2, 3)));
        assert_eq!(Version::parse("1.2"), None);
        assert_eq!(Version::parse("1.2.3.4"), None);
    }
}
