//! The packed body of a compacted history bucket: every [`Cell`] one series has in one time
//! bucket of one tier, in one row of `tier_samples` (see [`super::tiers`] for where that row
//! sits and [`super::compact`] for when it is written). This module owns only the encoding.
//!
//! Layout (integers are LEB128 varints, signed ones zigzag-encoded):
//!
//! ```text
//! PACKED (tag 5) · count · mode · payload
//! payload = count × slot gap · count × cell
//! ```
//!
//! - The cells' interval starts are implicit: slot `s` starts at bucket start + `s` ×
//!   resolution. A slot gap is `slot − previous slot − 1` (the first against −1), so a bucket
//!   without holes is `count` zero bytes.
//! - A cell is its tag ([`Cell::encode`]'s: single, scalar, histogram, summary), then its
//!   fields, each against the same field of the cell before it (a column): integers (`n`,
//!   counts, histogram buckets) as signed deltas; numbers (sum, min, max, last, quantiles) as one
//!   control byte and maybe a few bytes after it: `0` the same as before; `1 + 8·lz + tz`
//!   the XOR with the one before, without its `lz` leading and `tz` trailing zero bytes, big
//!   endian (Gorilla's idea, byte-aligned); `65` then a signed varint, or `66 + d` (d < 190),
//!   the zigzag difference `d` of two whole numbers (counter increases, bucket-like gauges).
//!   The shorter form is written.
//! - `mode` 0: the payload as it is; 1: raw DEFLATE of it (written with flate2, read with
//!   libdeflate: [`Inflater`] says why), used when smaller. The columns make repeated control
//!   bytes and zero gaps, which DEFLATE takes down further (`benches/history_disk.rs` measures
//!   both).
//!
//! A body that does not read back whole (cut short, bad counts, an unknown tag, trailing
//! bytes, a payload that inflates past [`MAX_PAYLOAD`]) is an error, never a panic.

use std::cell::Cell as ThreadCell;
use std::io::Write as _;
use std::ptr::NonNull;

use super::journal::{Reader, put_unsigned, varint_len};
use super::tiers::{Cell, SLOTS_PER_BUCKET};

/// The body tag of a packed bucket (after [`Cell::encode`]'s four).
pub const PACKED: u8 = 5;

/// Cell tags, as [`Cell::encode`] writes them.
const SINGLE: u8 = 1;
const SCALAR: u8 = 2;
const HISTOGRAM: u8 = 3;
const SUMMARY: u8 = 4;

const RAW: u8 = 0;
const DEFLATE: u8 = 1;

/// Largest payload a packed body may inflate to: far above any real bucket (360 cells of a
/// few hundred buckets each), low enough that a corrupt body cannot take the memory.
pub const MAX_PAYLOAD: u64 = 64 << 20;

/// The previous cell's fields, per column.
struct Columns {
    numbers: Vec<f64>,
    integers: Vec<u64>,
}

impl Columns {
    /// Room for a scalar's four numbers and a histogram's count from the start: only buckets
    /// and quantiles grow it, off the hot path.
    fn new() -> Columns {
        Columns {
            numbers: vec![0.0; 4],
            integers: vec![0; 1],
        }
    }

    #[inline(always)]
    fn number(&mut self, column: usize) -> &mut f64 {
        if self.numbers.len() <= column {
            grow(&mut self.numbers, column);
        }
        &mut self.numbers[column]
    }

    #[inline(always)]
    fn integer(&mut self, column: usize) -> &mut u64 {
        if self.integers.len() <= column {
            grow(&mut self.integers, column);
        }
        &mut self.integers[column]
    }

    fn put_number(&mut self, out: &mut Vec<u8>, column: usize, value: f64) {
        let before = std::mem::replace(self.number(column), value);
        let xor = value.to_bits() ^ before.to_bits();
        if xor == 0 {
            out.push(0);
            return;
        }
        let (lz, tz) = (xor.leading_zeros() / 8, xor.trailing_zeros() / 8);
        let xor_len = 8 - lz - tz;
        if let (Some(a), Some(b)) = (whole(before), whole(value)) {
            let zz = zigzag(b.wrapping_sub(a));
            let whole_len = if zz < 190 { 0 } else { varint_len(zz) as u32 };
            if whole_len < xor_len {
                if zz < 190 {
                    out.push(66 + zz as u8);
                } else {
                    out.push(65);
                    put_unsigned(out, zz);
                }
                return;
            }
        }
        out.push((1 + lz * 8 + tz) as u8);
        let bytes = (xor >> (tz * 8)).to_be_bytes();
        out.extend_from_slice(&bytes[8 - xor_len as usize..]);
    }

    /// Inlined: it runs four times per scalar cell, and a call cost more than its work.
    #[inline(always)]
    fn number_from(&mut self, r: &mut Reader<'_>, column: usize) -> Result<f64, &'static str> {
        let slot = self.number(column);
        let before = *slot;
        let value = match r.byte()? {
            0 => before,
            control @ 1..=64 => {
                let (lz, tz) = (u32::from(control - 1) / 8, u32::from(control - 1) % 8);
                if lz + tz > 7 {
                    return Err("packed bucket: bad number");
                }
                let len = 8 - lz - tz;
                let xor = r.big_endian(len as usize)?;
                f64::from_bits(before.to_bits() ^ (xor << (tz * 8)))
            }
            control => {
                let zz = if control == 65 {
                    r.unsigned()?
                } else {
                    u64::from(control - 66)
                };
                let base = whole(before).ok_or("packed bucket: a whole delta from a fraction")?;
                base.wrapping_add(unzigzag(zz)) as f64
            }
        };
        *slot = value;
        Ok(value)
    }

    fn put_integer(&mut self, out: &mut Vec<u8>, column: usize, value: u64) {
        let before = std::mem::replace(self.integer(column), value);
        put_unsigned(out, zigzag(value.wrapping_sub(before) as i64));
    }

    fn integer_from(&mut self, r: &mut Reader<'_>, column: usize) -> Result<u64, &'static str> {
        let slot = self.integer(column);
        *slot = slot.wrapping_add(unzigzag(r.unsigned()?) as u64);
        Ok(*slot)
    }
}

/// Makes room for `column` (zeros).
#[cold]
fn grow<T: Default + Clone>(values: &mut Vec<T>, column: usize) {
    values.resize(column + 1, T::default());
}

/// The integer a whole number is, when it is one exactly (not −0, within 2^53).
fn whole(value: f64) -> Option<i64> {
    const LIMIT: f64 = (1u64 << 53) as f64;
    (value.fract() == 0.0 && value.abs() < LIMIT)
        .then_some(value as i64)
        .filter(|&i| (i as f64).to_bits() == value.to_bits())
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(raw: u64) -> i64 {
    (raw >> 1) as i64 ^ -((raw & 1) as i64)
}

/// Column numbers: a scalar's four numbers; a histogram's and a summary's count and sum share
/// the first; a summary's quantile `k` is the pair after them.
const SUM: usize = 0;
const COUNT: usize = 0;

/// Appends the packed body of `cells` (`(slot, cell)`, slots increasing and below
/// [`SLOTS_PER_BUCKET`]) to `out`.
pub fn pack(cells: &[(u32, Cell)], out: &mut Vec<u8>) {
    pack_with(cells, out, true)
}

/// The bodies of `cells` packed in as few pieces as keep each at most `limit` bytes (a single
/// cell's body may be longer): consecutive runs of the cells, in order.
pub fn pack_chunks(cells: &[(u32, Cell)], limit: usize) -> Vec<Vec<u8>> {
    let mut body = Vec::new();
    pack(cells, &mut body);
    if body.len() <= limit || cells.len() <= 1 {
        return vec![body];
    }
    let pieces = body.len().div_ceil(limit).min(cells.len());
    let per = cells.len().div_ceil(pieces);
    cells
        .chunks(per)
        .flat_map(|run| pack_chunks(run, limit))
        .collect()
}

/// [`pack`], DEFLATE tried or not (the bench compares).
pub fn pack_with(cells: &[(u32, Cell)], out: &mut Vec<u8>, deflate: bool) {
    let mut payload = Vec::with_capacity(cells.len() * 4);
    let mut previous: i64 = -1;
    for (slot, _) in cells {
        put_unsigned(&mut payload, (i64::from(*slot) - previous - 1) as u64);
        previous = i64::from(*slot);
    }
    let mut columns = Columns::new();
    for (_, cell) in cells {
        put_cell(&mut payload, &mut columns, cell);
    }
    out.push(PACKED);
    put_unsigned(out, cells.len() as u64);
    let deflated = deflate
        .then(|| {
            let mut encoder = flate2::write::DeflateEncoder::new(
                Vec::with_capacity(payload.len()),
                flate2::Compression::best(),
            );
            encoder
                .write_all(&payload)
                .and_then(|()| encoder.finish())
                .ok()
        })
        .flatten()
        .filter(|d| d.len() < payload.len());
    match deflated {
        Some(deflated) => {
            out.push(DEFLATE);
            out.extend_from_slice(&deflated);
        }
        None => {
            out.push(RAW);
            out.extend_from_slice(&payload);
        }
    }
}

fn put_cell(out: &mut Vec<u8>, columns: &mut Columns, cell: &Cell) {
    if let Some(value) = cell.single() {
        out.push(SINGLE);
        columns.put_number(out, SUM, value);
        return;
    }
    match cell {
        Cell::Scalar {
            n,
            sum,
            min,
            max,
            last,
        } => {
            out.push(SCALAR);
            put_unsigned(out, *n);
            for (column, value) in [sum, min, max, last].into_iter().enumerate() {
                columns.put_number(out, column, *value);
            }
        }
        Cell::Histogram {
            count,
            sum,
            buckets,
        } => {
            out.push(HISTOGRAM);
            columns.put_integer(out, COUNT, *count);
            columns.put_number(out, SUM, *sum);
            put_unsigned(out, buckets.len() as u64);
            for (k, bucket) in buckets.iter().enumerate() {
                columns.put_integer(out, 1 + k, *bucket);
            }
        }
        Cell::Summary {
            n,
            count,
            sum,
            quantiles,
        } => {
            out.push(SUMMARY);
            put_unsigned(out, *n);
            columns.put_integer(out, COUNT, *count);
            columns.put_number(out, SUM, *sum);
            put_unsigned(out, quantiles.len() as u64);
            for (k, (q, v)) in quantiles.iter().enumerate() {
                columns.put_number(out, 4 + 2 * k, *q);
                columns.put_number(out, 5 + 2 * k, *v);
            }
        }
    }
}

/// One libdeflate decompressor and the buffer it inflates into.
///
/// libdeflate, not flate2's streaming inflater: a query inflates thousands of bodies of under
/// 1 KiB each, where building each body's Huffman tables dominated flate2's (miniz_oxide's)
/// time; libdeflate inflates a whole buffer in one call at about twice the speed (14,455 bodies
/// of the history bench's day: 213 → 98 ms). It is libdeflate-sys's raw `_ex` call, not the
/// `libdeflater` wrapper, because only `_ex` says how much input the stream used, which is how
/// bytes after the payload are caught.
struct Inflater {
    decompressor: NonNull<libdeflate_sys::libdeflate_decompressor>,
    /// Output room: its whole length is offered to libdeflate, and it doubles (to one byte past
    /// [`MAX_PAYLOAD`]) when that is too little.
    out: Vec<u8>,
}

/// The output room an inflater starts with, and keeps between bodies.
const INFLATE_ROOM: usize = 64 << 10;

impl Inflater {
    fn new() -> Inflater {
        // SAFETY: no arguments; the result is checked for null before use.
        let raw = unsafe { libdeflate_sys::libdeflate_alloc_decompressor() };
        Inflater {
            decompressor: NonNull::new(raw).expect("libdeflate could not allocate a decompressor"),
            out: vec![0; INFLATE_ROOM],
        }
    }

    /// Inflates a raw DEFLATE `payload` that must end exactly where `payload` does.
    fn inflate(&mut self, payload: &[u8]) -> Result<&[u8], &'static str> {
        if self.out.len() > INFLATE_ROOM {
            // A large body before: not kept for every later one.
            self.out.truncate(INFLATE_ROOM);
            self.out.shrink_to_fit();
        }
        loop {
            let (mut read, mut wrote) = (0usize, 0usize);
            // SAFETY: the decompressor is live and used by this thread only; `payload` and
            // `out` are valid for the lengths given, and libdeflate writes at most `out.len()`
            // bytes and the two counts.
            let result = unsafe {
                libdeflate_sys::libdeflate_deflate_decompress_ex(
                    self.decompressor.as_ptr(),
                    payload.as_ptr().cast(),
                    payload.len(),
                    self.out.as_mut_ptr().cast(),
                    self.out.len(),
                    &mut read,
                    &mut wrote,
                )
            };
            match result {
                libdeflate_sys::libdeflate_result_LIBDEFLATE_SUCCESS => {
                    if wrote as u64 > MAX_PAYLOAD {
                        return Err(PAST_LIMIT);
                    }
                    if read != payload.len() {
                        return Err("packed bucket: bytes after the payload");
                    }
                    return Ok(&self.out[..wrote]);
                }
                libdeflate_sys::libdeflate_result_LIBDEFLATE_INSUFFICIENT_SPACE => {
                    if self.out.len() as u64 > MAX_PAYLOAD {
                        return Err(PAST_LIMIT);
                    }
                    let room = (self.out.len() * 2).min(MAX_PAYLOAD as usize + 1);
                    self.out.resize(room, 0);
                }
                _ => return Err("packed bucket: the payload does not inflate"),
            }
        }
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: allocated by `libdeflate_alloc_decompressor`, freed once, here.
        unsafe { libdeflate_sys::libdeflate_free_decompressor(self.decompressor.as_ptr()) }
    }
}

const PAST_LIMIT: &str = "packed bucket: the payload inflates past its limit";

thread_local! {
    /// One inflater per thread: a query inflates thousands of small bodies.
    static INFLATER: ThreadCell<Option<Inflater>> = const { ThreadCell::new(None) };
}

/// The cells of a body [`pack`] wrote, with their slots.
pub fn unpack(body: &[u8]) -> Result<Vec<(u32, Cell)>, &'static str> {
    let mut cells = Vec::new();
    unpack_each(body, |slot, cell| cells.push((slot, cell)))?;
    Ok(cells)
}

/// Calls `visit(slot, cell)` for each cell of a body [`pack`] wrote, in slot order, without
/// collecting them. On an error some cells may have been visited already.
pub fn unpack_each(body: &[u8], mut visit: impl FnMut(u32, Cell)) -> Result<(), &'static str> {
    let mut r = Reader { body, at: 0 };
    if r.byte()? != PACKED {
        return Err("packed bucket: not a packed body");
    }
    let count = r.unsigned()?;
    if count > SLOTS_PER_BUCKET as u64 {
        return Err("packed bucket: more cells than a bucket has slots");
    }
    let mode = r.byte()?;
    let rest = &body[r.at..];
    match mode {
        RAW => cells_of(rest, count as usize, &mut visit),
        DEFLATE => {
            // Taken out while in use, so a `visit` that unpacks too gets an inflater of its own.
            let mut inflater = INFLATER.take().unwrap_or_else(Inflater::new);
            let read = inflater
                .inflate(rest)
                .and_then(|payload| cells_of(payload, count as usize, &mut visit));
            INFLATER.set(Some(inflater));
            read
        }
        _ => Err("packed bucket: unknown mode"),
    }
}

/// Reads `count` slot gaps and then `count` cells from `payload`, which they must fill.
fn cells_of(
    payload: &[u8],
    count: usize,
    visit: &mut impl FnMut(u32, Cell),
) -> Result<(), &'static str> {
    let mut r = Reader {
        body: payload,
        at: 0,
    };
    let mut slots = [0u32; SLOTS_PER_BUCKET as usize];
    let mut previous: i64 = -1;
    for slot in &mut slots[..count] {
        let at = previous
            .saturating_add(1)
            .saturating_add_unsigned(r.unsigned()?);
        if at >= SLOTS_PER_BUCKET {
            return Err("packed bucket: a slot past the bucket's end");
        }
        *slot = at as u32;
        previous = at;
    }
    let mut columns = Columns::new();
    for &slot in &slots[..count] {
        visit(slot, cell_from(&mut r, &mut columns)?);
    }
    if r.at != payload.len() {
        return Err("packed bucket: body longer than its cells");
    }
    Ok(())
}

fn cell_from(r: &mut Reader<'_>, columns: &mut Columns) -> Result<Cell, &'static str> {
    // A bucket or quantile takes at least a byte: a larger count is corruption.
    let left = |r: &Reader<'_>| (r.body.len() - r.at) as u64;
    Ok(match r.byte()? {
        SINGLE => Cell::scalar(columns.number_from(r, SUM)?),
        SCALAR => {
            let n = r.unsigned()?;
            let mut values = [0.0; 4];
            for (column, value) in values.iter_mut().enumerate() {
                *value = columns.number_from(r, column)?;
            }
            let [sum, min, max, last] = values;
            Cell::Scalar {
                n,
                sum,
                min,
                max,
                last,
            }
        }
        HISTOGRAM => {
            let count = columns.integer_from(r, COUNT)?;
            let sum = columns.number_from(r, SUM)?;
            let len = r.unsigned()?;
            if len > left(r) {
                return Err("packed bucket: bucket count larger than its body");
            }
            let buckets = (0..len as usize)
                .map(|k| columns.integer_from(r, 1 + k))
                .collect::<Result<_, _>>()?;
            Cell::Histogram {
                count,
                sum,
                buckets,
            }
        }
        SUMMARY => {
            let n = r.unsigned()?;
            let count = columns.integer_from(r, COUNT)?;
            let sum = columns.number_from(r, SUM)?;
            let len = r.unsigned()?;
            if len > left(r) {
                return Err("packed bucket: quantile count larger than its body");
            }
            let quantiles = (0..len as usize)
                .map(|k| {
                    Ok((
                        columns.number_from(r, 4 + 2 * k)?,
                        columns.number_from(r, 5 + 2 * k)?,
                    ))
                })
                .collect::<Result<_, &'static str>>()?;
            Cell::Summary {
                n,
                count,
                sum,
                quantiles,
            }
        }
        _ => return Err("packed bucket: unknown cell tag"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cells of every shape, with the values that are hard to keep: fractions, negatives,
    /// −0, infinities, NaN, large whole numbers.
    fn every_shape() -> Vec<(u32, Cell)> {
        let mut cells = Vec::new();
        let mut slot = 0;
        let mut at = |cell: Cell, cells: &mut Vec<(u32, Cell)>| {
            cells.push((slot, cell));
            // Gaps of 0, 1 and 2 slots.
            slot += 1 + slot % 3;
        };
        for v in [
            0.0,
            1.0,
            3.0,
            2.5,
            -0.0,
            -7.0,
            1e300,
            f64::INFINITY,
            f64::NAN,
            9e15,
            42.0,
        ] {
            at(Cell::scalar(v), &mut cells);
        }
        at(
            Cell::Scalar {
                n: 6,
                sum: 10.5,
                min: -1.0,
                max: 4.0,
                last: 1.0,
            },
            &mut cells,
        );
        at(Cell::scalar(5.0), &mut cells);
        for k in 0..4u64 {
            at(
                Cell::Histogram {
                    count: 9 + k,
                    sum: 1.75 * k as f64,
                    buckets: vec![1, k, 8 - k],
                },
                &mut cells,
            );
        }
        at(
            Cell::Histogram {
                count: 0,
                sum: 0.0,
                buckets: vec![],
            },
            &mut cells,
        );
        for v in [1.5, f64::NAN, 2.0] {
            at(
                Cell::Summary {
                    n: 2,
                    count: 4,
                    sum: 9.0,
                    quantiles: vec![(0.5, v), (0.99, f64::NAN)],
                },
                &mut cells,
            );
        }
        cells
    }

    /// Compares by encoding (NaN != NaN).
    fn same(a: &[(u32, Cell)], b: &[(u32, Cell)]) -> bool {
        let bodies = |cells: &[(u32, Cell)]| -> Vec<(u32, Vec<u8>)> {
            (cells.iter())
                .map(|(slot, cell)| {
                    let mut body = Vec::new();
                    cell.encode(&mut body);
                    (*slot, body)
                })
                .collect()
        };
        bodies(a) == bodies(b)
    }

    #[test]
    fn every_cell_shape_reads_back_at_its_slot() {
        let cells = every_shape();
        let mut body = Vec::new();
        pack(&cells, &mut body);
        assert!(same(&unpack(&body).unwrap(), &cells));
        // −0 keeps its sign.
        let zero = unpack(&body).unwrap()[4].1.clone();
        assert!(matches!(zero, Cell::Scalar { sum, .. } if sum.is_sign_negative()));
        // A bucket full to its last slot, and an empty one.
        let full: Vec<(u32, Cell)> = (0..SLOTS_PER_BUCKET as u32)
            .map(|s| (s, Cell::scalar(f64::from(s) * 0.1)))
            .collect();
        body.clear();
        pack(&full, &mut body);
        assert!(same(&unpack(&body).unwrap(), &full));
        body.clear();
        pack(&[], &mut body);
        assert!(unpack(&body).unwrap().is_empty());
    }

    #[test]
    fn long_buckets_are_packed_in_pieces_under_the_limit() {
        let noisy: Vec<(u32, Cell)> = (0..SLOTS_PER_BUCKET as u32)
            .map(|s| (s, Cell::scalar((f64::from(s) * 1.7).sin() * 1e3)))
            .collect();
        let pieces = pack_chunks(&noisy, 500);
        assert!(pieces.len() > 2, "{}", pieces.len());
        let mut back = Vec::new();
        for piece in &pieces {
            assert!(piece.len() <= 500, "{}", piece.len());
            back.extend(unpack(piece).unwrap());
        }
        assert!(same(&back, &noisy));
        assert_eq!(pack_chunks(&noisy, 1 << 20).len(), 1);
    }

    #[test]
    fn counter_increases_of_a_whole_bucket_cost_about_a_byte_each() {
        let increases: Vec<(u32, Cell)> = (0..SLOTS_PER_BUCKET as u32)
            .map(|s| (s, Cell::scalar(f64::from(100 + (s * 37) % 50))))
            .collect();
        let mut body = Vec::new();
        pack(&increases, &mut body);
        assert!(body.len() < 360, "{} bytes", body.len());
        assert!(same(&unpack(&body).unwrap(), &increases));
    }

    #[test]
    fn a_payload_larger_than_the_inflaters_room_reads_back_and_the_room_shrinks_again() {
        // 360 histograms of 400 buckets: a payload past the first 64 KiB of room.
        let cells: Vec<(u32, Cell)> = (0..SLOTS_PER_BUCKET as u32)
            .map(|s| {
                let buckets: Vec<u64> = (0..400u64).map(|k| k * u64::from(s) % 997 + k).collect();
                let count = buckets.iter().sum();
                let sum = f64::from(s) * 0.5;
                (
                    s,
                    Cell::Histogram {
                        count,
                        sum,
                        buckets,
                    },
                )
            })
            .collect();
        let mut body = Vec::new();
        pack(&cells, &mut body);
        assert_eq!(body[3], DEFLATE);
        assert!(same(&unpack(&body).unwrap(), &cells));
        let room = || {
            INFLATER.with(|i| {
                let inflater = i.take().expect("an inflater");
                let room = inflater.out.len();
                i.set(Some(inflater));
                room
            })
        };
        assert!(room() > INFLATE_ROOM);
        // The next body gets the usual room back.
        let small: Vec<(u32, Cell)> = (0..100).map(|s| (s, Cell::scalar(1.0))).collect();
        let mut body = Vec::new();
        pack(&small, &mut body);
        assert_eq!(body[2], DEFLATE);
        assert!(same(&unpack(&body).unwrap(), &small));
        assert_eq!(room(), INFLATE_ROOM);
    }

    #[test]
    fn a_corrupt_body_is_an_error_not_a_panic() {
        for compressible in [true, false] {
            let cells: Vec<(u32, Cell)> = if compressible {
                every_shape()
            } else {
                vec![(3, Cell::scalar(0.123))]
            };
            let mut body = Vec::new();
            pack(&cells, &mut body);
            assert_eq!(body[2], if compressible { DEFLATE } else { RAW });
            for cut in 0..body.len() {
                assert!(unpack(&body[..cut]).is_err(), "cut at {cut}");
            }
            let mut longer = body.clone();
            longer.push(0);
            assert!(unpack(&longer).is_err());
            // Any byte changed: an answer or an error, never a panic.
            for at in 0..body.len() {
                for flip in [0x01, 0x80, 0xff] {
                    let mut bad = body.clone();
                    bad[at] ^= flip;
                    let _ = unpack(&bad);
                }
            }
        }
        assert!(unpack(&[PACKED, 200, 3, 0]).is_err());
        assert!(unpack(&[PACKED, 1, RAW, 0xE8, 0x02, SINGLE, 0]).is_err());
        assert!(unpack(&[PACKED, 1, RAW, 0, 9]).is_err());
        assert!(unpack(&[PACKED, 1, RAW, 0, HISTOGRAM, 0, 0, 100]).is_err());
        assert!(unpack(&[SINGLE, 2]).is_err());
    }

    #[test]
    fn a_payload_inflating_past_the_limit_is_refused() {
        // A DEFLATE bomb: a few KiB that would inflate to just over the limit.
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        encoder
            .write_all(&vec![0u8; MAX_PAYLOAD as usize + 1])
            .unwrap();
        let mut body = vec![PACKED, 1, DEFLATE];
        body.extend(encoder.finish().unwrap());
        assert_eq!(
            unpack(&body).err(),
            Some("packed bucket: the payload inflates past its limit")
        );
    }
}
