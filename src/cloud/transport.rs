//! What both cloud backends' HTTP layers share: reading `Retry-After` (in
//! seconds or as an HTTP date), jitter, and percent-encoding of ids in
//! paths and of query values.

use std::time::{Duration, SystemTime};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{HeaderMap, RETRY_AFTER};

/// Everything but RFC 3986's unreserved characters is encoded.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// Path segments also keep `=` (the base64 padding Graph ids carry).
const SEGMENT: &AsciiSet = &UNRESERVED.remove(b'=');

/// A path segment (a message, folder or label id), percent-encoded.
pub fn path_segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// A query value, percent-encoded (spaces as `%20`, as OData expects).
pub fn query_value(s: &str) -> String {
    utf8_percent_encode(s, UNRESERVED).to_string()
}

/// The longest `Retry-After` taken as given (a day); longer is capped.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// A `Retry-After` value: delay-seconds (Graph sends fractions, so they
/// are accepted) or an HTTP date (then the time left until it, from
/// `now`; a date in the past is no wait). Capped at a day.
pub fn parse_retry_after_at(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64())));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or_default()
            .min(MAX_RETRY_AFTER),
    )
}

/// [`parse_retry_after_at`] from now.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    parse_retry_after_at(v, SystemTime::now())
}

/// The `Retry-After` header of a response, if it has a usable one.
pub fn retry_after_header(h: &HeaderMap) -> Option<Duration> {
    parse_retry_after(h.get(RETRY_AFTER)?.to_str().ok()?)
}

/// A uniformly distributed fraction in [0, 1), for jitter.
pub fn jitter() -> f64 {
    fastrand::f64()
}

/// `d` scaled by a random factor in [1 - spread, 1 + spread).
pub fn around(d: Duration, spread: f64) -> Duration {
    d.mul_f64(1.0 - spread + 2.0 * spread * jitter())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_and_as_a_date() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        let p = |v| parse_retry_after_at(v, now);
        assert_eq!(p("2.128"), Some(Duration::from_millis(2128)));
        assert_eq!(p(" 10 "), Some(Duration::from_secs(10)));
        assert_eq!(p("-1"), None);
        assert_eq!(p("NaN"), None);
        assert_eq!(p("soon"), None);
        assert_eq!(p("1e9"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            p("Wed, 21 Oct 2015 07:30:00 GMT"),
            Some(Duration::from_secs(120))
        );
        assert_eq!(p("Wed, 21 Oct 2015 07:00:00 GMT"), Some(Duration::ZERO));
        let mut h = HeaderMap::new();
        assert_eq!(retry_after_header(&h), None);
        h.insert(RETRY_AFTER, "2.5".parse().unwrap());
        assert_eq!(retry_after_header(&h), Some(Duration::from_millis(2500)));
    }

    #[test]
    fn ids_and_query_values_are_percent_encoded() {
        assert_eq!(path_segment("AAMk/a+b=="), "AAMk%2Fa%2Bb==");
        assert_eq!(path_segment("c/d"), "c%2Fd");
        assert_eq!(path_segment("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(query_value("Lists & Rust=1"), "Lists%20%26%20Rust%3D1");
        assert_eq!(query_value("é"), "%C3%A9");
        assert_eq!(path_segment("AAkALg-_=="), "AAkALg-_==");
        assert_eq!(path_segment("a/b+c d?"), "a%2Fb%2Bc%20d%3F");
        assert_eq!(
            query_value("displayName eq 'O''Brien'"),
            "displayName%20eq%20%27O%27%27Brien%27"
        );
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
            let d = around(Duration::from_secs(10), 0.2);
            assert!(
                d >= Duration::from_secs(8) && d < Duration::from_secs(12),
                "{d:?}"
            );
        }
    }
}
