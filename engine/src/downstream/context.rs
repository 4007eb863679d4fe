//! What every call on one core is given besides the config snapshot it
//! starts under: the core's counters, its access log, and the budget that
//! requests held for a retry share.

use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::telemetry::access_log::Logger;
use crate::telemetry::metrics::CoreCounters;
use crate::upstream::retry_budget::Budget;

/// The context of one core's calls.
pub struct CallContext {
    pub(crate) counters: Rc<CoreCounters>,
    pub(crate) access_log: Option<Logger>,
    /// What held requests may pin on this core, in all
    /// (`[upstream] retry_buffer_per_worker`).
    pub(crate) retry_budget: Rc<Budget>,
    /// Set when a connect to an upstream fails: the control side resolves
    /// endpoint names again soon, not only at the next `dns_refresh`.
    pub(crate) connect_failed: Arc<AtomicBool>,
}

impl CallContext {
    /// The context of one core's calls.
    pub fn new(
        counters: Rc<CoreCounters>,
        access_log: Option<Logger>,
        settings: &crate::config::Settings,
        connect_failed: Arc<AtomicBool>,
    ) -> CallContext {
        CallContext {
            counters,
            access_log,
            retry_budget: Budget::new(settings.retry_buffer_per_worker),
            connect_failed,
        }
    }
}
