//! When the daemon acts: pure functions of the configuration, the node's
//! certificate, a jitter seed and an attempt count. Nothing here reads a
//! clock or sleeps, so the timing is tested by calling them, and the daemon
//! (`daemon`) only adds their results to its own notion of "now".

use std::time::Duration;

/// The first wait after a refused enrollment; it doubles on each refusal.
pub const ENROLL_BACKOFF_START: Duration = Duration::from_secs(5);
/// The longest wait between two enrollment attempts.
pub const ENROLL_BACKOFF_CAP: Duration = Duration::from_secs(300);
/// The highest attempt number a retry's backoff grows to.
pub const MAX_ATTEMPT: u32 = 16;
/// How far away "never" is for a timer that has nothing to wait for (no
/// certificate to renew): a day, after which it is worked out again.
pub const FAR: Duration = Duration::from_secs(24 * 3600);
/// When nothing is queued, the delivery timer is set this long after the
/// next run, which always comes first.
pub const NOTHING_QUEUED: Duration = Duration::from_secs(3600);

/// The delay before retry `attempt` (0-based): a random point in
/// `[0, min(cap, base * 2^attempt)]` ("full jitter"), drawn from `seed`.
pub fn backoff_delay(attempt: u32, seed: u64) -> Duration {
    const BASE_MS: u64 = 500;
    const CAP_MS: u64 = 15_000;
    let ceiling = BASE_MS.saturating_mul(1u64 << attempt.min(16)).min(CAP_MS);
    Duration::from_millis(mix(seed, u64::from(attempt)) % (ceiling + 1))
}

/// SplitMix64 of (seed, n): cheap, and different for every n.
fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(n + 1));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Different on every node and every run, without a random number crate.
pub fn jitter_seed() -> u64 {
    crate::clock::unix_nanos() ^ (u64::from(std::process::id()) << 32)
}

/// Another seed drawn from `seed`, for the `n`th of a series of waits that
/// each want their own jitter.
pub fn reseed(seed: u64, n: u64) -> u64 {
    mix(seed ^ 0x5EED, n)
}

/// The same delay for a node on every run, different across nodes, so a
/// fleet spreads its runs over the splay without any coordination. Drawn
/// from the node's certificate (empty before enrollment).
pub fn splay(certificate_pem: &str, splay: Duration) -> Duration {
    if splay.is_zero() {
        return Duration::ZERO;
    }
    let digest = cms_roles::digest::sha256(certificate_pem.as_bytes());
    let number = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    Duration::from_millis(number % splay.as_millis().max(1) as u64)
}

/// The time from the end of one scheduled run to the start of the next.
pub fn between_runs(interval: Duration, certificate_pem: &str, max_splay: Duration) -> Duration {
    interval + splay(certificate_pem, max_splay)
}

/// How long to wait after a refused enrollment: at least half the current
/// backoff, at most all of it, jittered so a fleet refused at once does not
/// come back at once.
pub fn enroll_retry_wait(backoff: Duration, attempt: u32, seed: u64) -> Duration {
    backoff / 2 + backoff_delay(attempt, seed).min(backoff / 2)
}

/// The backoff after one more refusal.
pub fn next_enroll_backoff(backoff: Duration) -> Duration {
    (backoff * 2).min(ENROLL_BACKOFF_CAP)
}

/// How long after the last attempt queued reports are offered again.
pub fn delivery_retry_wait(attempt: u32, seed: u64) -> Duration {
    Duration::from_secs(1) + backoff_delay(attempt, seed)
}

/// How long to pause after a failed renewal before anything else.
pub fn renewal_retry_wait(seed: u64) -> Duration {
    backoff_delay(3, seed) + Duration::from_secs(1)
}

/// How long until a renewal due at `due_unix` (Unix seconds), now being
/// `now_unix`; zero when it is overdue.
pub fn renewal_wait(due_unix: i64, now_unix: i64) -> Duration {
    Duration::from_secs((due_unix - now_unix).max(0) as u64)
}

/// Whether a certificate valid until `not_after` (Unix seconds) has ended.
pub fn expired(not_after: i64, now_unix: i64) -> bool {
    not_after <= now_unix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_cap_and_jitter_spreads_nodes() {
        for attempt in 0..10 {
            let ceiling = (500u64 << attempt).min(15_000);
            for seed in 0..200u64 {
                assert!(
                    backoff_delay(attempt, seed.wrapping_mul(7919))
                        <= Duration::from_millis(ceiling)
                );
            }
        }
        // Many nodes retrying at once do not pick the same moment.
        let delays: std::collections::BTreeSet<Duration> = (0..100u64)
            .map(|node| backoff_delay(3, node * 104_729))
            .collect();
        assert!(delays.len() > 90, "{} distinct delays of 100", delays.len());
        // The same node and attempt always get the same delay.
        assert_eq!(backoff_delay(2, 42), backoff_delay(2, 42));
    }

    #[test]
    fn a_node_keeps_its_splay_and_nodes_spread_over_it() {
        let max = Duration::from_secs(300);
        assert_eq!(splay("node-a", max), splay("node-a", max));
        let spread: std::collections::BTreeSet<Duration> = (0..100)
            .map(|n| splay(&format!("certificate {n}"), max))
            .collect();
        assert!(spread.len() > 90, "{} distinct splays of 100", spread.len());
        assert!(spread.iter().all(|s| *s < max));
        assert_eq!(splay("node-a", Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn enrollment_waits_between_half_and_all_of_a_doubling_backoff() {
        let mut backoff = ENROLL_BACKOFF_START;
        for attempt in 0..10 {
            let wait = enroll_retry_wait(backoff, attempt, 7);
            assert!(
                wait >= backoff / 2 && wait <= backoff,
                "{wait:?} for {backoff:?}"
            );
            backoff = next_enroll_backoff(backoff);
        }
        assert_eq!(backoff, ENROLL_BACKOFF_CAP);
    }

    #[test]
    fn a_renewal_in_the_past_is_due_now() {
        assert_eq!(renewal_wait(100, 40), Duration::from_secs(60));
        assert_eq!(renewal_wait(100, 400), Duration::ZERO);
        assert!(expired(100, 100));
        assert!(!expired(101, 100));
    }
}
