//! Which AWS answers are worth another attempt, and how long to wait
//! before it: throttling, server errors and failed connections are;
//! a refusal (bad parameters, missing permission, a wrong signature) is
//! not, since asking again gets the same answer.

use std::time::Duration;

/// How long one AWS request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Attempts per AWS request.
pub const ATTEMPTS: u32 = 3;

/// The error codes AWS services answer when a caller calls too often.
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
    "BandwidthLimitExceeded",
];

/// Whether an answer with this status and AWS error code is worth
/// another attempt.
pub fn is_retryable(status: u16, code: &str) -> bool {
    status >= 500 || status == 429 || THROTTLING_CODES.contains(&code)
}

/// How long to wait before attempt `attempt` (0-based; the first waits
/// nothing): 100 ms, then 400 ms, then 1.6 s: throttling and blips, not
/// outages.
pub fn backoff(attempt: u32) -> Duration {
    match attempt {
        0 => Duration::ZERO,
        n => Duration::from_millis(100 * 4u64.pow((n - 1).min(4))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_and_server_errors_are_retried_refusals_are_not() {
        assert!(is_retryable(400, "Throttling"));
        assert!(is_retryable(400, "RequestLimitExceeded"));
        assert!(is_retryable(503, "ServiceUnavailable"));
        assert!(is_retryable(500, ""));
        assert!(!is_retryable(400, "ValidationError"));
        assert!(!is_retryable(403, "AccessDenied"));
        assert!(!is_retryable(403, "SignatureDoesNotMatch"));
        assert_eq!(
            (0..3).map(backoff).collect::<Vec<_>>(),
            [
                Duration::ZERO,
                Duration::from_millis(100),
                Duration::from_millis(400)
            ]
        );
    }
}
