//! Bucketing many values against the quantile codec's 255 sorted borders with a lookup table
//! instead of an 8-step binary search per value: the top 16 bits of a value's order key (sign,
//! exponent, 7 mantissa bits) select a table entry that says how many borders lie below that key
//! range and how many inside it; the few inside are compared directly.

use crate::codebook::BINS;

/// Table entries: one per 16-bit key prefix, plus one past the end.
const ENTRIES: usize = (1 << 16) + 1;

/// A u32 that orders like the f32 for non-NaN values with -0 folded into +0 (callers add 0.0).
#[inline(always)]
fn key(x: f32) -> u32 {
    let bits = x.to_bits();
    bits ^ (((bits as i32 >> 31) as u32) | 0x8000_0000)
}

/// The lookup table for one set of borders.
pub(crate) struct BucketTable<'a> {
    borders: &'a [f32; BINS],
    /// `below[t]`: how many of the 255 inner borders have a key prefix below `t`.
    below: Vec<u8>,
}

impl<'a> BucketTable<'a> {
    /// The table for `borders` (255 sorted inner borders, then +inf); `None` when a border is
    /// NaN, which breaks the order the table relies on (the binary search handles that case).
    pub(crate) fn new(borders: &'a [f32; BINS]) -> Option<Self> {
        let inner = &borders[..BINS - 1];
        if inner.iter().any(|b| b.is_nan()) {
            return None;
        }
        let mut below = vec![0u8; ENTRIES];
        let mut count = 0usize;
        let mut prefixes = inner.iter().map(|&b| (key(b + 0.0) >> 16) as usize).peekable();
        for (t, entry) in below.iter_mut().enumerate() {
            while prefixes.peek().is_some_and(|&p| p < t) {
                prefixes.next();
                count += 1;
            }
            // At most 255 borders, so the count fits.
            *entry = count as u8;
        }
        Some(BucketTable { borders, below })
    }

    /// The number of inner borders below `x` (NaN: 0), as the binary search counts them.
    #[inline(always)]
    pub(crate) fn bucket(&self, x: f32) -> u8 {
        if x.is_nan() {
            return 0;
        }
        let t = (key(x + 0.0) >> 16) as usize;
        let (lo, hi) = (usize::from(self.below[t]), usize::from(self.below[t + 1]));
        // Borders before `lo` have smaller key prefixes, so they are below x; those from `hi` on
        // have larger ones, so they are not. Only the ones sharing x's prefix are compared.
        let mut pos = lo;
        while pos < hi && self.borders[pos] < x {
            pos += 1;
        }
        pos as u8
    }

    /// `dst[i] = bucket(src[i])`.
    pub(crate) fn bucketize(&self, src: &[f32], dst: &mut [u8]) {
        for (d, &x) in dst.iter_mut().zip(src) {
            *d = self.bucket(x);
        }
    }
}
