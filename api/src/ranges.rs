//! The range of every number and duration in the mesh config, in one place.
//!
//! Validation enforces these, the JSON Schema carries the numeric ones
//! (`minimum`/`maximum`), and docs/config.md lists each beside its field. They
//! are chosen so that no accepted value can make the proxy panic or allocate
//! absurdly (hyper allocates `maxHeaders` slots per request, for one), and so
//! that a value past them is a mistake rather than a choice; the reason is
//! beside each. Route timeouts have no range of their own: `0s` turns one
//! off, and any other duration the format can write ([`crate::MAX_DURATION`])
//! is allowed.

use std::fmt;
use std::time::Duration;

/// An inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range<T> {
    pub min: T,
    pub max: T,
}

impl<T: PartialOrd> Range<T> {
    pub fn contains(&self, value: &T) -> bool {
        self.min <= *value && *value <= self.max
    }
}

impl<T: fmt::Display> fmt::Display for Range<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} to {}", self.min, self.max)
    }
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The smallest duration the format can write that is not zero.
const MS: Duration = ms(1);
const MINUTE: Duration = secs(60);
const HOUR: Duration = secs(3600);

/// Any TCP port a connection can use.
pub const PORT: Range<u16> = Range { min: 1, max: 65535 };

/// `http.maxHeaderBytes`: below 1 KiB ordinary requests fail; 1 MiB is well
/// past any honest header block (Envoy's default is 60 KiB).
pub const MAX_HEADER_BYTES: Range<u32> = Range {
    min: 1024,
    max: 1024 * 1024,
};

/// `http.maxHeaders`: hyper reserves this many header slots for every
/// HTTP/1 request it reads, so 4294967295 aborted the proxy on the first
/// one. Envoy's default is 100.
pub const MAX_HEADERS: Range<u32> = Range { min: 1, max: 1000 };

/// Gateway API's weights (`backendRefs[].weight`; 0 sends nothing).
pub const BACKEND_WEIGHT: Range<u32> = Range {
    min: 0,
    max: 1_000_000,
};

/// `endpoints[].weight`: as Gateway API's, but an endpoint is there to be used.
pub const ENDPOINT_WEIGHT: Range<u32> = Range {
    min: 1,
    max: 1_000_000,
};

/// Shares of traffic or of endpoints.
pub const PERCENT: Range<u8> = Range { min: 0, max: 100 };

/// `retry.attempts`: retries after the first attempt. Each multiplies the
/// load on a failing backend; the retry budget caps them too.
pub const RETRY_ATTEMPTS: Range<u32> = Range { min: 0, max: 10 };

/// `retry.backoff`: the base of the backoff, which grows to ten times it.
pub const RETRY_BACKOFF: Range<Duration> = Range {
    min: MS,
    max: MINUTE,
};

/// `retry.codes`: statuses that say something failed.
pub const RETRY_CODE: Range<u16> = Range { min: 400, max: 599 };

/// `healthCheck.interval`: faster than 100 ms, probes become load.
pub const HEALTH_INTERVAL: Range<Duration> = Range {
    min: ms(100),
    max: HOUR,
};

/// `healthCheck.timeout`: at most the interval as well.
pub const HEALTH_TIMEOUT: Range<Duration> = Range { min: MS, max: HOUR };

/// `healthCheck.healthyThreshold` and `unhealthyThreshold`.
pub const HEALTH_THRESHOLD: Range<u32> = Range { min: 1, max: 1000 };

/// `outlierDetection.consecutive*`: 0 turns the trigger off.
pub const OUTLIER_CONSECUTIVE: Range<u32> = Range { min: 0, max: 1000 };

/// `outlierDetection.interval`.
pub const OUTLIER_INTERVAL: Range<Duration> = Range {
    min: ms(100),
    max: HOUR,
};

/// `outlierDetection.baseEjectionTime`.
pub const BASE_EJECTION_TIME: Range<Duration> = Range { min: MS, max: HOUR };

/// `circuitBreaker.*`: below 1 every request fails; a million connections
/// or requests is past what one sidecar's file descriptors allow.
pub const CIRCUIT_BREAKER: Range<u32> = Range {
    min: 1,
    max: 1_000_000,
};

/// `connectTimeout`: the kernel gives up on a SYN after about two minutes.
pub const CONNECT_TIMEOUT: Range<Duration> = Range {
    min: MS,
    max: secs(300),
};

/// `idleTimeout` of pooled connections.
pub const IDLE_TIMEOUT: Range<Duration> = Range {
    min: MS,
    max: secs(24 * 3600),
};

/// `retryBudget.ratio`: retries per request.
pub const RETRY_RATIO: Range<f64> = Range {
    min: 0.0,
    max: 1000.0,
};

/// `retryBudget.minRetriesPerSecond`.
pub const MIN_RETRIES_PER_SECOND: Range<u32> = Range {
    min: 0,
    max: 100_000,
};

/// `retryBudget.ttl`: the window the budget counts over (tower's budget
/// allows 1 to 60 s).
pub const RETRY_BUDGET_TTL: Range<Duration> = Range {
    min: secs(1),
    max: HOUR,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_inclusive_and_print_as_written() {
        assert!(MAX_HEADERS.contains(&1));
        assert!(MAX_HEADERS.contains(&1000));
        assert!(!MAX_HEADERS.contains(&0));
        assert!(!MAX_HEADERS.contains(&1001));
        assert!(!RETRY_RATIO.contains(&f64::NAN));
        assert_eq!(MAX_HEADERS.to_string(), "1 to 1000");
    }
}
