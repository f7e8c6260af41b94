//! How a latency histogram travels in a JSON result: hdrhistogram V2 +
//! deflate, base64. Written by `report`, read back by `merge`; recording
//! values is `stats`' job.
#![forbid(unsafe_code)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};

use super::error::Error;
use super::stats::new_histogram;

/// V2 + deflate, base64.
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut bytes)
        .expect("serialising into a Vec cannot fail");
    STANDARD.encode(bytes)
}

pub fn decode_histogram(s: &str) -> Result<Histogram<u64>, Error> {
    let bytes = STANDARD
        .decode(s)
        .map_err(|e| Error::Merge(format!("histogram is not base64: {e}")))?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| Error::Merge(format!("histogram does not decode: {e:?}")))?;
    // Re-home the counts in our own bounds so sums never overflow a narrower one.
    let mut out = new_histogram();
    out.add(&h)
        .map_err(|e| Error::Merge(format!("histogram out of range: {e:?}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_survives_encoding() {
        let mut h = new_histogram();
        for v in [1, 10, 100, 1000, 123_456] {
            h.record(v).unwrap();
        }
        let back = decode_histogram(&encode_histogram(&h)).unwrap();
        assert_eq!(back, h);
    }
}
