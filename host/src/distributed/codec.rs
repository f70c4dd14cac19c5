//! Named tensors as bytes, to pass between ranks: for each tensor its name, element type,
//! shape and contiguous data (little-endian lengths).

use anyhow::{anyhow, bail, Result};
use tch::{Device, Kind, Tensor};

/// The element types that cross, with their codes.
const KINDS: &[(Kind, u8)] = &[
    (Kind::Float, 0),
    (Kind::Double, 1),
    (Kind::Half, 2),
    (Kind::BFloat16, 3),
    (Kind::Int64, 4),
    (Kind::Int, 5),
    (Kind::Int16, 6),
    (Kind::Int8, 7),
    (Kind::Uint8, 8),
    (Kind::Bool, 9),
];

/// `named` as bytes (tensors are copied to the CPU).
pub fn encode(named: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    put(&mut out, named.len() as u64);
    for (name, tensor) in named {
        let t = tensor.to_device(Device::Cpu).contiguous();
        let code = KINDS
            .iter()
            .find(|(k, _)| *k == t.kind())
            .map(|(_, c)| *c)
            .ok_or_else(|| {
                anyhow!(
                    "tensor `{name}` has an element type that cannot pass between ranks: {:?}",
                    t.kind()
                )
            })?;
        put(&mut out, name.len() as u64);
        out.extend_from_slice(name.as_bytes());
        out.push(code);
        let shape = t.size();
        put(&mut out, shape.len() as u64);
        for d in &shape {
            put(&mut out, *d as u64);
        }
        let numel = t.numel();
        let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.copy_data_u8(&mut data, numel);
        put(&mut out, data.len() as u64);
        out.extend_from_slice(&data);
    }
    Ok(out)
}

/// The named tensors [`encode`] wrote.
pub fn decode(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let mut reader = Reader { bytes, at: 0 };
    let count = reader.u64()?;
    let mut named = Vec::new();
    for _ in 0..count {
        let len = reader.u64()? as usize;
        let name = String::from_utf8(reader.take(len)?.to_vec())?;
        let code = reader.take(1)?[0];
        let kind = KINDS
            .iter()
            .find(|(_, c)| *c == code)
            .map(|(k, _)| *k)
            .ok_or_else(|| anyhow!("unknown element type code {code}"))?;
        let dims = reader.u64()? as usize;
        let shape = (0..dims)
            .map(|_| reader.u64().map(|d| d as i64))
            .collect::<Result<Vec<_>>>()?;
        let len = reader.u64()? as usize;
        let data = reader.take(len)?;
        let expected = shape.iter().product::<i64>() as usize * kind.elt_size_in_bytes();
        if expected != len {
            bail!("tensor `{name}`: {len} bytes for shape {shape:?}");
        }
        named.push((name, Tensor::from_data_size(data, &shape, kind)));
    }
    Ok(named)
}

fn put(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| anyhow!("a message between ranks ended early"))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("eight bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_tensors_round_trip() {
        let named = vec![
            (
                "a".to_string(),
                Tensor::from_slice(&[1.5f32, -2.0, 3.25]).reshape([3, 1]),
            ),
            ("mask".to_string(), Tensor::from_slice(&[true, false])),
            (
                "i".to_string(),
                Tensor::from_slice(&[7i64, 8, 9, 10]).reshape([2, 2]),
            ),
            (
                "empty".to_string(),
                Tensor::zeros([0, 4], (Kind::Double, Device::Cpu)),
            ),
        ];
        let back = decode(&encode(&named).unwrap()).unwrap();
        assert_eq!(back.len(), named.len());
        for ((n1, t1), (n2, t2)) in named.iter().zip(&back) {
            assert_eq!(n1, n2);
            assert_eq!(t1.kind(), t2.kind());
            assert_eq!(t1.size(), t2.size());
            assert!(t1.equal(t2), "{n1}");
        }
        assert!(decode(&encode(&named).unwrap()[..20]).is_err());
    }
}
