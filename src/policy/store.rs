//! The lock-free holder of the policy in force.

use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::CompiledPolicy;

/// Holds the policy in force; requests read it with one atomic load, the
/// refresher swaps it whole. Counters live elsewhere, so a swap resets nothing.
#[derive(Debug, Default)]
pub struct PolicyStore {
    current: ArcSwapOption<CompiledPolicy>,
}

impl PolicyStore {
    /// An empty store: not ready until a first policy is installed.
    pub fn new() -> Self {
        Self::default()
    }

    /// The policy in force, if any: one atomic load and a reference count.
    #[inline]
    pub fn current(&self) -> Option<Arc<CompiledPolicy>> {
        self.current.load_full()
    }

    /// Whether a policy is in force.
    pub fn is_ready(&self) -> bool {
        self.current.load().is_some()
    }

    /// Whether `policy` is the one in force already: the same version from
    /// the same source (the one place this is decided).
    pub fn is_in_force(&self, policy: &CompiledPolicy) -> bool {
        self.current
            .load()
            .as_ref()
            .is_some_and(|p| p.version == policy.version && p.source == policy.source)
    }

    /// Makes `policy` the one in force; returns whether its version differs
    /// from the previous one (the enforced rules changed, not just the source).
    pub fn install(&self, policy: CompiledPolicy) -> bool {
        let changed = self
            .current
            .load()
            .as_ref()
            .is_none_or(|old| old.version != policy.version);
        self.current.store(Some(Arc::new(policy)));
        changed
    }
}
