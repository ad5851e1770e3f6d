//! Resilience primitives of a backend: the retry budget, the circuit
//! breaker, and the retry policy (what may be retried, and how long to wait).
//!
//! All three are synchronous cores with no I/O and no timers; the HTTP layer
//! calls them around each request. This module does not pick endpoints
//! (`balance`), apply timeouts, or buffer bodies for replay: it is told
//! whether a body can be sent again.

mod breaker;
mod budget;
mod retry;

pub(crate) use breaker::{BreakerOpen, CircuitBreaker, Permit};
pub(crate) use budget::RetryBudget;
pub(crate) use retry::{backoff, is_retryable, RequestBody};
