//! Seeds derived from the run's seed, so that every iteration draws the same numbers whether
//! a run goes straight through or is resumed.

/// A seed for item `index` of `stream` under the run seed `seed` (SplitMix64 over the three).
pub fn derive_seed(seed: u64, stream: &str, index: u64) -> u64 {
    let mut z = seed ^ 0x9E37_79B9_7F4A_7C15;
    for byte in stream.bytes() {
        z = mix(z ^ u64::from(byte));
    }
    mix(z ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03))
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) >> 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_differ_by_stream_and_index_and_repeat() {
        assert_eq!(derive_seed(1, "train", 3), derive_seed(1, "train", 3));
        assert_ne!(derive_seed(1, "train", 3), derive_seed(1, "train", 4));
        assert_ne!(derive_seed(1, "train", 3), derive_seed(1, "eval", 3));
        assert_ne!(derive_seed(1, "train", 3), derive_seed(2, "train", 3));
        assert!(
            derive_seed(u64::MAX, "x", u64::MAX) < 1 << 63,
            "fits libtorch's i64 seed"
        );
    }
}
