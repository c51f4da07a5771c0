//! Word-at-a-time search for the two MLLP control bytes.
//!
//! The framer spends nearly all its time looking for `0x0B` or `0x1C` in
//! payload bytes; this module finds the first of either eight bytes at a time
//! (SWAR). It only reads the slice it is given.

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Marks (high bit set) the bytes of `word` equal to `byte`. Bits above the
/// first true match may be false positives; the lowest set bit never is.
#[inline]
fn matches(word: u64, byte: u8) -> u64 {
    let x = word ^ (LO * u64::from(byte));
    x.wrapping_sub(LO) & !x & HI
}

/// Index of the first `a` or `b` in `bytes`, if any.
#[inline]
pub(crate) fn find2(bytes: &[u8], a: u8, b: u8) -> Option<usize> {
    let mut chunks = bytes.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let mut word_bytes = [0u8; 8];
        word_bytes.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word_bytes);
        let hits = matches(word, a) | matches(word, b);
        if hits != 0 {
            return Some(base + (hits.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    let rest = chunks.remainder();
    rest.iter()
        .position(|&c| c == a || c == b)
        .map(|i| base + i)
}

#[cfg(test)]
mod tests {
    use super::find2;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn find2_agrees_with_naive_search(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let naive = bytes.iter().position(|&c| c == 0x0B || c == 0x1C);
            prop_assert_eq!(find2(&bytes, 0x0B, 0x1C), naive);
        }
    }

    #[test]
    fn find2_sees_match_after_a_zero_byte() {
        // A zero byte next to a match is where the borrow trick can misfire.
        let bytes = [0x00, 0x01, 0x0C, 0x1C, 0, 0, 0, 0, 0x0B];
        assert_eq!(find2(&bytes, 0x0B, 0x1C), Some(3));
    }
}
