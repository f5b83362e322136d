//! A run permit: held while a run is in progress, given back when its last holder drops it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::key::KeyHash;
use crate::store::{PermitId, Renewal, Store, StoreError};

struct Held {
    store: Arc<dyn Store>,
    key: KeyHash,
    id: PermitId,
    renewal: Option<Renewal>,
    /// The tier's metric label.
    tier: &'static str,
}

impl Drop for Held {
    fn drop(&mut self) {
        // Renewals stop first, so that none lands after the release.
        drop(self.renewal.take());
        self.store.release(&self.key, self.id);
        crate::metrics::runs(self.tier, -1.0);
        tracing::trace!(key = %self.key, "run permit released");
    }
}

/// A run's permit: one of the tier's concurrent runs.
///
/// The gateway puts it in the request's extensions and keeps a clone in the response body,
/// so a sync run holds it until the response body has been sent (or the client went away,
/// or the handler panicked: every path drops it). An async task that outlives its response
/// keeps a clone (`Extension<RunPermit>` in axum) and drops it when the task ends; the
/// permit goes back when its last clone is dropped. In a shared store the permit is a
/// lease that renews itself while any clone is alive ([`Store::keep_renewed`]: the Redis
/// store renews every third of the lease), so a run may last as long as it needs while a
/// replica that dies frees its permits within about one lease
/// ([`GatewayLayer::lease`](super::GatewayLayer::lease)).
#[derive(Clone)]
pub struct RunPermit(Arc<Held>);

impl RunPermit {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        key: KeyHash,
        id: PermitId,
        lease: Duration,
        tier: Option<overten_errors::Tier>,
    ) -> RunPermit {
        let renewal = store.keep_renewed(&key, id, lease);
        let tier = crate::metrics::tier_label(tier);
        crate::metrics::runs(tier, 1.0);
        RunPermit(Arc::new(Held {
            store,
            key,
            id,
            renewal,
            tier,
        }))
    }

    /// The permit's id.
    pub fn id(&self) -> PermitId {
        self.0.id
    }

    /// Extends the lease to `lease` from now. `Ok(false)`: the permit had already expired
    /// (the run should stop, or count itself over the limit).
    pub async fn renew(&self, lease: Duration) -> Result<bool, StoreError> {
        self.0.store.renew(&self.0.key, self.0.id, lease).await
    }
}

impl fmt::Debug for RunPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunPermit")
            .field("key", &self.0.key)
            .field("id", &self.0.id)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Admit, MemoryStore, RunAdmission, RunAsk};

    #[test]
    fn a_permit_names_its_id_and_goes_back_with_its_last_clone() {
        let store = Arc::new(MemoryStore::new());
        let key = KeyHash::of("sk_live_k");
        let id = PermitId::new();
        let ask = Admit::new(&key, 1, 60, 10).with_run(RunAsk::new(id, 1, Duration::from_secs(1)));
        let admitted = crate::block_on(store.admit(ask)).unwrap();
        assert_eq!(admitted.run, RunAdmission::Granted);
        let permit = RunPermit::new(store.clone(), key, id, Duration::from_secs(1), None);
        assert_eq!(permit.id(), id);
        assert!(format!("{permit:?}").contains(&format!("{id:?}")));
        assert!(crate::block_on(permit.renew(Duration::from_secs(1))).unwrap());
        let clone = permit.clone();
        drop(permit);
        assert_eq!(store.runs(&key), 1, "a clone still holds it");
        drop(clone);
        assert_eq!(store.runs(&key), 0);
    }
}
