//! The journal's record format: one batch of recorded points, its series already resolved, as
//! one compact binary body (a row of the engine's `journal` table).
//!
//! A batch is journaled, made durable and acknowledged before its points reach the points
//! table; this format is what a restart reads back to apply them. Layout, all integers LEB128
//! varints (signed ones zigzag-encoded):
//!
//! ```text
//! FORMAT (1 byte) · metric · first_seq · count · count × (series Δ · ts Δ · value f64 LE)
//! ```
//!
//! The deltas are against the previous point (the first against 0): series ids repeat and
//! timestamps of one batch sit close together, so a point costs 11–13 bytes instead of 24.
//! Sequence numbers run from `first_seq` one by one, in body order.

/// The only format this build writes and reads; another is refused, not guessed at.
const FORMAT: u8 = 1;

/// One point waiting in the journal: where it goes in the points table, and its value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pending {
    pub metric: i64,
    pub series: i64,
    pub ts_ms: i64,
    pub seq: i64,
    pub value: f64,
}

/// Appends the body of `metric`'s points `(series, ts_ms, value)`, numbered from `first_seq`,
/// to `out`.
pub fn encode(metric: i64, first_seq: i64, points: &[(i64, i64, f64)], out: &mut Vec<u8>) {
    out.reserve(16 + points.len() * 13);
    out.push(FORMAT);
    put_signed(out, metric);
    put_signed(out, first_seq);
    put_unsigned(out, points.len() as u64);
    let (mut series, mut ts) = (0i64, 0i64);
    for &(s, t, value) in points {
        put_signed(out, s.wrapping_sub(series));
        put_signed(out, t.wrapping_sub(ts));
        out.extend_from_slice(&value.to_le_bytes());
        (series, ts) = (s, t);
    }
}

/// Appends the points of `body` to `out`; on an error `out` is as it was.
pub fn decode(body: &[u8], out: &mut Vec<Pending>) -> Result<(), &'static str> {
    let before = out.len();
    let result = decode_into(body, out);
    if result.is_err() {
        out.truncate(before);
    }
    result
}

fn decode_into(body: &[u8], out: &mut Vec<Pending>) -> Result<(), &'static str> {
    let mut reader = Reader { body, at: 0 };
    if reader.byte()? != FORMAT {
        return Err("unknown journal format");
    }
    let metric = reader.signed()?;
    let first_seq = reader.signed()?;
    let count = reader.unsigned()?;
    // A point takes at least 10 bytes, so a count the body cannot hold is corruption, and the
    // reservation below stays bounded by the body's size.
    if count > (body.len() / 10) as u64 {
        return Err("journal count larger than its body");
    }
    out.reserve(count as usize);
    let (mut series, mut ts) = (0i64, 0i64);
    for i in 0..count as i64 {
        series = series.wrapping_add(reader.signed()?);
        ts = ts.wrapping_add(reader.signed()?);
        let value = f64::from_le_bytes(reader.take::<8>()?);
        out.push(Pending {
            metric,
            series,
            ts_ms: ts,
            seq: first_seq + i,
            value,
        });
    }
    if reader.at != body.len() {
        return Err("journal body longer than its points");
    }
    Ok(())
}

pub(super) fn put_unsigned(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// How many bytes [`put_unsigned`] writes for `value`.
pub(super) fn varint_len(value: u64) -> usize {
    ((64 - value.leading_zeros()).div_ceil(7)).max(1) as usize
}

fn put_signed(out: &mut Vec<u8>, value: i64) {
    put_unsigned(out, ((value << 1) ^ (value >> 63)) as u64);
}

pub(super) struct Reader<'a> {
    pub(super) body: &'a [u8],
    pub(super) at: usize,
}

impl Reader<'_> {
    #[inline]
    pub(super) fn byte(&mut self) -> Result<u8, &'static str> {
        let byte = *self.body.get(self.at).ok_or("journal body cut short")?;
        self.at += 1;
        Ok(byte)
    }

    /// The next `len` (1 to 8) bytes as a big-endian integer.
    #[inline]
    pub(super) fn big_endian(&mut self, len: usize) -> Result<u64, &'static str> {
        debug_assert!((1..=8).contains(&len));
        let value = match self.body.get(self.at..self.at + 8) {
            // One load where 8 bytes are left (almost always), not a copy of `len` bytes.
            Some(eight) => u64::from_be_bytes(eight.try_into().expect("8 bytes")) >> (64 - 8 * len),
            None => {
                let bytes =
                    (self.body.get(self.at..self.at + len)).ok_or("journal body cut short")?;
                bytes.iter().fold(0, |value, &b| value << 8 | u64::from(b))
            }
        };
        self.at += len;
        Ok(value)
    }

    pub(super) fn take<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let bytes = self
            .body
            .get(self.at..self.at + N)
            .ok_or("journal body cut short")?;
        self.at += N;
        Ok(bytes.try_into().expect("N bytes"))
    }

    #[inline]
    pub(super) fn unsigned(&mut self) -> Result<u64, &'static str> {
        // One byte, most of the time (counts, deltas and slot gaps are small).
        if let Some(&byte) = self.body.get(self.at)
            && byte & 0x80 == 0
        {
            self.at += 1;
            return Ok(u64::from(byte));
        }
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("journal varint too long")
    }

    fn signed(&mut self) -> Result<i64, &'static str> {
        let raw = self.unsigned()?;
        Ok((raw >> 1) as i64 ^ -((raw & 1) as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_comes_back_as_it_went_in() {
        let points = [
            (7, 1_765_000_000_000, 1.5),
            (3, 1_765_000_000_001, -2.0),
            (7, 1_764_999_999_000, f64::MAX),
            (i64::MAX, i64::MIN, 0.0),
            (0, 0, f64::NEG_INFINITY),
        ];
        let mut body = Vec::new();
        encode(42, 1_000, &points, &mut body);
        let mut out = Vec::new();
        decode(&body, &mut out).unwrap();
        let expected: Vec<Pending> = points
            .iter()
            .enumerate()
            .map(|(i, &(series, ts_ms, value))| Pending {
                metric: 42,
                series,
                ts_ms,
                seq: 1_000 + i as i64,
                value,
            })
            .collect();
        assert_eq!(out, expected);
    }

    #[test]
    fn close_points_are_small() {
        let points: Vec<(i64, i64, f64)> = (0..1000)
            .map(|i| (100 + i % 100, 1_765_000_000_000 + i, i as f64))
            .collect();
        let mut body = Vec::new();
        encode(1, 5, &points, &mut body);
        assert!(body.len() <= 1000 * 12, "{} bytes", body.len());
    }

    #[test]
    fn damaged_bodies_are_refused_and_leave_the_output_alone() {
        let mut body = Vec::new();
        encode(1, 1, &[(1, 10, 1.0), (2, 20, 2.0)], &mut body);
        let mut out = vec![Pending {
            metric: 9,
            series: 9,
            ts_ms: 9,
            seq: 9,
            value: 9.0,
        }];
        let kept = out.clone();
        for cut in 0..body.len() {
            assert!(decode(&body[..cut], &mut out).is_err(), "cut at {cut}");
            assert_eq!(out, kept);
        }
        let mut longer = body.clone();
        longer.push(0);
        assert!(decode(&longer, &mut out).is_err());
        let mut other_format = body.clone();
        other_format[0] = 2;
        assert!(decode(&other_format, &mut out).is_err());
        // A count no body of this size can hold.
        let mut huge = vec![FORMAT, 2, 2];
        put_unsigned(&mut huge, u64::MAX / 2);
        assert!(decode(&huge, &mut out).is_err());
        assert_eq!(out, kept);
    }
}
