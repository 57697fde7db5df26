//! The remote-write 1.0 wire format: the few `prometheus.WriteRequest` messages (from
//! `prompb/remote.proto` and `prompb/types.proto`) as hand-written `prost` structs, and the
//! snappy-compressed body a request carries.
//!
//! Written by hand for the reason `crate::exposition::proto` is: no `protoc` and no build
//! script for four messages whose field numbers protobuf promises never to change. Fields
//! tallyd never sends (exemplars, native histograms, metadata) are left out; a receiver treats
//! absent repeated fields as empty.

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries`: labels sorted by name, `__name__` among them, and samples in
/// timestamp order.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

impl Label {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Label {
        Label {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// `prometheus.Sample`: a value at a Unix time in milliseconds.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// The value Prometheus reads as "this series ended" (`value.StaleNaN`): a NaN with a payload
/// of its own, told apart from any NaN a client could send by its bits.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// True when `value` is the staleness marker (compares bits: every NaN differs from itself).
pub fn is_stale_marker(value: f64) -> bool {
    value.to_bits() == STALE_NAN_BITS
}

/// The request body: the message, protobuf-encoded, then snappy-compressed in the raw block
/// format (not the framed one), as remote-write 1.0 requires. `scratch` keeps the encoding
/// buffer between calls.
pub fn encode(request: &WriteRequest, scratch: &mut Vec<u8>) -> Vec<u8> {
    compress(request, scratch)
}

/// A request body read back (for tests and test receivers); the error says which layer failed.
pub fn decode(body: &[u8]) -> Result<WriteRequest, String> {
    decompress(body)
}

/// Any message as a remote-write body (1.0 and 2.0 compress alike).
pub fn compress(message: &impl prost::Message, scratch: &mut Vec<u8>) -> Vec<u8> {
    scratch.clear();
    // Encoding into a Vec grows it as needed, so it cannot fail.
    message
        .encode(scratch)
        .expect("a Vec grows to hold any message");
    let mut out = vec![0; snap::raw::max_compress_len(scratch.len())];
    let written = snap::raw::Encoder::new()
        .compress(scratch, &mut out)
        .expect("the output holds max_compress_len bytes");
    out.truncate(written);
    out
}

/// A remote-write body read back as `M`; the error names the layer that failed.
pub fn decompress<M: prost::Message + Default>(body: &[u8]) -> Result<M, String> {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| format!("not snappy (raw block format): {e}"))?;
    let name = std::any::type_name::<M>()
        .rsplit("::")
        .next()
        .unwrap_or("message");
    M::decode(raw.as_slice()).map_err(|e| format!("not a {name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(name: &str, value: &str) -> Label {
        Label::new(name, value)
    }

    #[test]
    fn a_request_reads_back_through_snappy_and_protobuf() {
        let request = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![label("__name__", "up_total"), label("job", "a\"b")],
                samples: vec![
                    Sample {
                        value: 1.5,
                        timestamp: 1_700_000_000_123,
                    },
                    Sample {
                        value: f64::from_bits(STALE_NAN_BITS),
                        timestamp: 1_700_000_001_000,
                    },
                ],
            }],
        };
        let body = encode(&request, &mut Vec::new());
        // The raw block format starts with the uncompressed length as a varint, not the framed
        // format's stream identifier chunk.
        assert_ne!(body.first(), Some(&0xff));
        let read = decode(&body).unwrap();
        assert_eq!(read.timeseries[0].labels, request.timeseries[0].labels);
        let samples = &read.timeseries[0].samples;
        assert_eq!(samples[0], request.timeseries[0].samples[0]);
        assert!(is_stale_marker(samples[1].value));
        assert!(!is_stale_marker(f64::NAN));
    }

    #[test]
    fn field_numbers_are_those_of_prompb() {
        use prost::Message;
        // Label{name=1: "a", value=2: "b"}: tag bytes 0x0a and 0x12.
        assert_eq!(
            label("a", "b").encode_to_vec(),
            [0x0a, 1, b'a', 0x12, 1, b'b']
        );
        // Sample{value=1 (fixed64, 0x09), timestamp=2 (varint, 0x10)}.
        let sample = Sample {
            value: 1.0,
            timestamp: 3,
        }
        .encode_to_vec();
        assert_eq!(sample[0], 0x09);
        assert_eq!(&sample[9..], [0x10, 3]);
    }

    #[test]
    fn garbage_is_refused_with_the_layer_named() {
        assert!(decode(b"\xff\xff\xff").unwrap_err().contains("snappy"));
        let not_proto = snap::raw::Encoder::new().compress_vec(b"\x0a\xff").unwrap();
        assert!(decode(&not_proto).unwrap_err().contains("WriteRequest"));
    }
}
