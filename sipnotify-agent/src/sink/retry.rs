//! Which bridge replies are worth retrying, and how long to wait before the next try.
//!
//! The rules follow what a restarting or overloaded bridge does: 408, 429 and 5xx (except 501
//! Not Implemented, which will not change) can succeed later; any other 4xx is the bridge
//! refusing this request, and retrying it would only repeat the refusal. Delays grow
//! exponentially with full jitter so many agents (or many in-flight requests) that failed
//! together do not come back together.

use std::time::Duration;

use rand::Rng as _;
use reqwest::{StatusCode, header::HeaderMap};

use super::settings::RetrySettings;

/// A `Retry-After` longer than this is treated as this: the notification's max age drops it
/// anyway, and a typo on the bridge side must not park a request for a day.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What a status code means for delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StatusClass {
    /// 2xx: the bridge has it.
    Delivered,
    /// Try again later.
    Retry,
    /// The bridge refused it; retrying will not help.
    Reject,
}

pub(crate) fn classify(status: StatusCode) -> StatusClass {
    match status.as_u16() {
        200..=299 => StatusClass::Delivered,
        408 | 429 => StatusClass::Retry,
        501 => StatusClass::Reject,
        500..=599 => StatusClass::Retry,
        // 1xx never reaches here; 3xx (redirects are not followed: a POST must not silently
        // turn into a GET) and other 4xx are configuration or payload problems.
        _ => StatusClass::Reject,
    }
}

/// The `Retry-After` delay, when given in seconds (the form bridges use for 429/503).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let seconds: u64 = value.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// Exponential backoff with full jitter: the n-th delay is uniform in
/// `[0, min(max, initial × 2ⁿ)]`.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    settings: RetrySettings,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(settings: RetrySettings) -> Self {
        Self {
            settings,
            attempt: 0,
        }
    }

    /// The upper bound of the next delay, before jitter.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.settings
            .initial
            .checked_mul(factor)
            .map_or(self.settings.max, |d| d.min(self.settings.max))
    }

    /// The next delay.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn status_classes_follow_the_retry_rules() {
        let cases = [
            (200, StatusClass::Delivered),
            (202, StatusClass::Delivered),
            (204, StatusClass::Delivered),
            (301, StatusClass::Reject),
            (400, StatusClass::Reject),
            (401, StatusClass::Reject),
            (404, StatusClass::Reject),
            (408, StatusClass::Retry),
            (413, StatusClass::Reject),
            (429, StatusClass::Retry),
            (500, StatusClass::Retry),
            (501, StatusClass::Reject),
            (502, StatusClass::Retry),
            (503, StatusClass::Retry),
            (504, StatusClass::Retry),
        ];
        for (code, class) in cases {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(classify(status), class, "{code}");
        }
    }

    #[test]
    fn retry_after_takes_seconds_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", HeaderValue::from_static(" 3 "));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert("retry-after", HeaderValue::from_static("99999999"));
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        headers.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter_below_the_ceiling() {
        let mut backoff = Backoff::new(RetrySettings {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        });
        let expected = [100, 200, 400, 800, 1000, 1000];
        for ms in expected {
            let ceiling = backoff.ceiling();
            assert_eq!(ceiling, Duration::from_millis(ms));
            assert!(backoff.next_delay() <= ceiling);
        }
        for _ in 0..100 {
            assert!(backoff.next_delay() <= Duration::from_secs(1));
        }
    }
}
