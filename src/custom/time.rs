//! Instants and steps as the API's clients write them: ISO 8601 with an offset
//! (`2026-02-12T10:30:00Z`, `…+02:00`) or unix seconds (`1770892200`, `1770892200.5`), and
//! steps like `30s`, `1m`, `1h30m`, `1d`. Times are milliseconds since the epoch inside tallyd.

use jiff::Timestamp;

/// The current time in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// Parses an ISO 8601 instant with an offset, or unix seconds.
pub fn parse_instant(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        if !seconds.is_finite() || seconds.abs() > 1e13 {
            return Err(format!("{text:?} is not a time tallyd can store"));
        }
        return Ok((seconds * 1000.0).round() as i64);
    }
    text.parse::<Timestamp>()
        .map(|ts| ts.as_millisecond())
        .map_err(|_| {
            format!(
                "{text:?} is not an ISO 8601 time with an offset (2026-02-12T10:30:00Z) or unix seconds"
            )
        })
}

/// Parses an ISO 8601 instant that must carry an offset (no unix seconds): Deeploy's x values.
pub fn parse_iso8601(text: &str) -> Option<i64> {
    text.trim()
        .parse::<Timestamp>()
        .ok()
        .map(|ts| ts.as_millisecond())
}

/// Writes an instant as RFC 3339 in UTC (`2026-02-12T10:30:00Z`).
pub fn format_instant(ms: i64) -> String {
    Timestamp::from_millisecond(ms)
        .map(|ts| ts.to_string())
        .unwrap_or_else(|_| ms.to_string())
}

/// Parses a step: one or more `<number><unit>` parts (`ms`, `s`, `m`, `h`, `d`, `w`), or a bare
/// number of seconds. At least one millisecond.
pub fn parse_step(text: &str) -> Result<i64, String> {
    let invalid = || format!("{text:?} is not a step like 30s, 1m, 1h or 1d");
    let trimmed = text.trim();
    if let Ok(seconds) = trimmed.parse::<f64>() {
        let ms = seconds * 1000.0;
        return if ms.is_finite() && (1.0..1e15).contains(&ms) {
            Ok(ms.round() as i64)
        } else {
            Err(invalid())
        };
    }
    let mut total: i64 = 0;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid());
        }
        let number: i64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_ms = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            _ => return Err(invalid()),
        };
        rest = &rest[unit_len..];
        total = number
            .checked_mul(unit_ms)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(invalid)?;
    }
    if total < 1 {
        return Err(invalid());
    }
    Ok(total)
}

/// Writes a step back in its shortest unit form (`90000` → `90s`, `3600000` → `1h`).
pub fn format_step(ms: i64) -> String {
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_in_both_spellings() {
        assert_eq!(parse_instant("2026-02-12T10:30:00Z"), Ok(1_770_892_200_000));
        assert_eq!(
            parse_instant("2026-02-12T12:30:00+02:00"),
            Ok(1_770_892_200_000)
        );
        assert_eq!(
            parse_instant("2026-02-12T10:30:00.250Z"),
            Ok(1_770_892_200_250)
        );
        assert_eq!(parse_instant("1770892200"), Ok(1_770_892_200_000));
        assert_eq!(parse_instant("1770892200.5"), Ok(1_770_892_200_500));
        for bad in [
            "2026-02-12T10:30:00",
            "2026-02-12",
            "yesterday",
            "",
            "NaN",
            "1e300",
        ] {
            assert!(parse_instant(bad).is_err(), "{bad}");
        }
        assert_eq!(format_instant(1_770_892_200_000), "2026-02-12T10:30:00Z");
        assert_eq!(
            parse_iso8601("2026-02-12T10:30:00Z"),
            Some(1_770_892_200_000)
        );
        assert_eq!(parse_iso8601("1770892200"), None);
    }

    #[test]
    fn steps() {
        assert_eq!(parse_step("30s"), Ok(30_000));
        assert_eq!(parse_step("1m"), Ok(60_000));
        assert_eq!(parse_step("1h30m"), Ok(5_400_000));
        assert_eq!(parse_step("1d"), Ok(86_400_000));
        assert_eq!(parse_step("250ms"), Ok(250));
        assert_eq!(parse_step("60"), Ok(60_000));
        for bad in [
            "",
            "0s",
            "1x",
            "m",
            "-1m",
            "0",
            "1.5m",
            "99999999999999999999s",
        ] {
            assert!(parse_step(bad).is_err(), "{bad}");
        }
        assert_eq!(format_step(60_000), "1m");
        assert_eq!(format_step(5_400_000), "90m");
        assert_eq!(format_step(86_400_000), "1d");
        assert_eq!(format_step(1_500), "1500ms");
    }
}
