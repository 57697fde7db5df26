//! The checks that every place a setting can be written shares: one validator per rule, so a
//! bucket list means the same in `[aggregation]`, a `[[metric]]`, a `[[mapping]]` rule and an
//! imported statsd_exporter file. Each returns a message naming the bad value; the caller adds
//! the key and the line.

/// Most bucket bounds one histogram may have (each costs 8 bytes per series and a line per
/// scrape).
pub const MAX_BUCKETS: usize = 1000;

/// Longest TTL, in seconds (about 31 years): longer is "never", which is spelled 0.
pub const MAX_TTL_SECONDS: f64 = 1e9;

/// Histogram bucket upper bounds: 1 to [`MAX_BUCKETS`] of them, finite (`+Inf` is always
/// added), strictly increasing.
pub fn buckets(bounds: &[f64]) -> Result<(), String> {
    if bounds.is_empty() || bounds.len() > MAX_BUCKETS {
        return Err(format!(
            "needs 1 to {MAX_BUCKETS} bucket bounds, got {}",
            bounds.len()
        ));
    }
    if let Some(bad) = bounds.iter().find(|b| !b.is_finite()) {
        return Err(format!(
            "bucket bounds must be finite (+Inf is always added), got {bad}"
        ));
    }
    if let Some(pair) = bounds.windows(2).find(|w| w[0] >= w[1]) {
        return Err(format!(
            "bucket bounds must increase strictly, but {} is followed by {}",
            pair[0], pair[1]
        ));
    }
    Ok(())
}

/// Summary quantiles: each between 0 and 1, none twice. None at all is allowed: the summary
/// then serves only `_sum` and `_count`, as Prometheus clients' summaries do by default.
pub fn quantiles(quantiles: &[f64]) -> Result<(), String> {
    for (i, q) in quantiles.iter().enumerate() {
        if !(0.0..=1.0).contains(q) {
            return Err(format!("quantiles are between 0 and 1, got {q}"));
        }
        if quantiles[..i].contains(q) {
            return Err(format!("quantile {q} is listed twice"));
        }
    }
    Ok(())
}

/// A time-to-live in seconds: 0 (never expires) up to [`MAX_TTL_SECONDS`].
pub fn ttl_seconds(ttl: f64) -> Result<(), String> {
    if (0.0..=MAX_TTL_SECONDS).contains(&ttl) {
        Ok(())
    } else {
        Err(format!(
            "must be a number of seconds, 0 (never expires) or more, got {ttl}"
        ))
    }
}

/// A native histogram bucket factor: 0 (no native buckets) or above 1 (each bucket at most that
/// factor wider than the one before; 1.1 is client_golang's recommendation).
pub fn native_bucket_factor(factor: f64) -> Result<(), String> {
    if factor == 0.0 || (factor.is_finite() && factor > 1.0) {
        Ok(())
    } else {
        Err(format!(
            "must be 0 (no native buckets) or a number above 1 (such as 1.1), got {factor}"
        ))
    }
}

/// The most populated native buckets of one histogram: 1 to
/// [`crate::registry::native::MOST_MAX_BUCKETS`] (memory per series stays bounded).
pub fn native_max_buckets(max: u32) -> Result<(), String> {
    let most = crate::registry::native::MOST_MAX_BUCKETS;
    if (1..=most).contains(&max) {
        Ok(())
    } else {
        Err(format!("must be between 1 and {most} buckets, got {max}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_must_be_finite_increasing_and_not_too_many() {
        assert!(buckets(&[0.1, 1.0]).is_ok());
        assert!(buckets(&[]).unwrap_err().contains("1 to 1000"));
        assert!(
            buckets(&[1.0, f64::INFINITY])
                .unwrap_err()
                .contains("finite")
        );
        let err = buckets(&[1.0, 0.5]).unwrap_err();
        assert!(err.contains("1 is followed by 0.5"), "{err}");
        let many: Vec<f64> = (0..=MAX_BUCKETS).map(|i| i as f64).collect();
        assert!(buckets(&many).is_err());
    }

    #[test]
    fn quantiles_must_be_between_0_and_1_and_listed_once() {
        assert!(quantiles(&[0.5, 0.99, 1.0, 0.0]).is_ok());
        assert!(quantiles(&[]).is_ok());
        assert!(quantiles(&[1.5]).unwrap_err().contains("between 0 and 1"));
        assert!(quantiles(&[f64::NAN]).is_err());
        assert!(quantiles(&[0.5, 0.5]).unwrap_err().contains("twice"));
    }

    #[test]
    fn a_native_factor_is_zero_or_above_one() {
        assert!(native_bucket_factor(0.0).is_ok());
        assert!(native_bucket_factor(1.1).is_ok());
        assert!(native_bucket_factor(65536.0).is_ok());
        for bad in [1.0, 0.5, -1.1, f64::NAN, f64::INFINITY] {
            let err = native_bucket_factor(bad).unwrap_err();
            assert!(err.contains("above 1"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_native_bucket_cap_is_bounded() {
        assert!(native_max_buckets(1).is_ok());
        assert!(native_max_buckets(256).is_ok());
        assert!(
            native_max_buckets(0)
                .unwrap_err()
                .contains("between 1 and 4096")
        );
        assert!(native_max_buckets(4097).is_err());
    }

    #[test]
    fn a_ttl_is_zero_or_a_bounded_number_of_seconds() {
        assert!(ttl_seconds(0.0).is_ok());
        assert!(ttl_seconds(3600.5).is_ok());
        assert!(ttl_seconds(-1.0).is_err());
        assert!(ttl_seconds(f64::NAN).is_err());
        assert!(ttl_seconds(2e9).is_err());
    }
}
