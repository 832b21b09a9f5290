//! protocol Appendix A: CPython's `random.Random(group_id).sample(range(n), k)`, bit for bit.
//!
//! The next-group-bits rule (protocol 3.9) needs every member of a group to draw the same random
//! permutation from the group id. Any deterministic generator would do among averager peers;
//! reproducing CPython's Mersenne Twister and `sample` also keeps the buckets identical to
//! hivemind's, at the cost of ~100 lines, and gives exact test vectors.

use sha2::{Digest, Sha512};

const N: usize = 624;
const M: usize = 397;

/// MT19937 seeded the way CPython seeds `random.Random(bytes)`.
pub(crate) struct PythonRandom {
    state: [u32; N],
    index: usize,
}

impl PythonRandom {
    /// `random.Random(seed)` for a `bytes` seed: the integer `seed || SHA512(seed)` (big-endian)
    /// split into 32-bit words, least significant first, fed to `init_by_array`.
    pub(crate) fn from_bytes(seed: &[u8]) -> Self {
        let mut big = seed.to_vec();
        big.extend_from_slice(&Sha512::digest(seed));
        // Python drops leading zero bytes of the integer, so its word count follows the value.
        let significant = &big[big.iter().position(|&b| b != 0).unwrap_or(big.len())..];
        let mut key: Vec<u32> =
            significant.rchunks(4).map(|c| c.iter().fold(0u32, |acc, &b| (acc << 8) | b as u32)).collect();
        if key.is_empty() {
            key.push(0);
        }
        let mut rng = PythonRandom { state: [0; N], index: N };
        rng.init_by_array(&key);
        rng
    }

    fn init_genrand(&mut self, seed: u32) {
        self.state[0] = seed;
        for i in 1..N {
            let prev = self.state[i - 1];
            self.state[i] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19_650_218);
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = self.state[i - 1];
            self.state[i] = (self.state[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                self.state[0] = self.state[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = self.state[i - 1];
            self.state[i] =
                (self.state[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                self.state[0] = self.state[N - 1];
                i = 1;
            }
        }
        self.state[0] = 0x8000_0000;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            for k in 0..N {
                let y = (self.state[k] & 0x8000_0000) | (self.state[(k + 1) % N] & 0x7fff_ffff);
                let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
                self.state[k] = self.state[(k + M) % N] ^ (y >> 1) ^ mag;
            }
            self.index = 0;
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `getrandbits(k)` for `1 <= k <= 32`.
    fn getrandbits(&mut self, k: u32) -> u32 {
        self.next_u32() >> (32 - k)
    }

    /// `_randbelow(n)` for `1 <= n < 2^32`: rejection sampling on `bit_length(n)` bits.
    fn randbelow(&mut self, n: u32) -> u32 {
        let k = 32 - n.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < n {
                return r;
            }
        }
    }

    /// `sample(range(n), k)`: `k` distinct values of `0..n` (requires `k <= n < 2^32`).
    pub(crate) fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        debug_assert!(k <= n && n < u32::MAX as usize);
        let mut setsize = 21usize;
        if k > 5 {
            setsize += 4usize.pow(((k * 3) as f64).log(4.0).ceil() as u32);
        }
        let mut out = Vec::with_capacity(k);
        if n <= setsize {
            let mut pool: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = self.randbelow((n - i) as u32) as usize;
                out.push(pool[j]);
                pool[j] = pool[n - i - 1];
            }
        } else {
            let mut selected = std::collections::HashSet::with_capacity(k);
            for _ in 0..k {
                let mut j = self.randbelow(n as u32) as usize;
                while !selected.insert(j) {
                    j = self.randbelow(n as u32) as usize;
                }
                out.push(j);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Vec<u8> {
        (0u8..20).collect()
    }

    #[test]
    fn appendix_a_vectors() {
        let mut r = PythonRandom::from_bytes(&ids());
        assert_eq!([r.next_u32(), r.next_u32(), r.next_u32()], [4242546393, 2533012690, 2317261166]);
        assert_eq!(PythonRandom::from_bytes(&ids()).sample(4, 4), [0, 1, 3, 2]);
        assert_eq!(PythonRandom::from_bytes(&ids()).sample(2, 2), [0, 1]);
        assert_eq!(PythonRandom::from_bytes(&ids()).sample(32, 2), [4, 17]);
        assert_eq!(PythonRandom::from_bytes(&[0; 20]).sample(4, 3), [1, 2, 3]);
    }

    /// Vectors from CPython 3.11 on this machine, covering both branches of `sample` and an empty
    /// seed.
    #[test]
    fn cpython_vectors_for_both_sample_branches() {
        assert_eq!(
            PythonRandom::from_bytes(&ids()).sample(64, 16),
            [9, 17, 34, 13, 30, 8, 47, 27, 4, 6, 0, 16, 1, 61, 60, 24]
        );
        assert_eq!(PythonRandom::from_bytes(&ids()).sample(1024, 4), [147, 563, 444, 969]);
        assert_eq!(PythonRandom::from_bytes(&ids()).sample(100, 6), [75, 69, 9, 35, 27, 60]);
        assert_eq!(PythonRandom::from_bytes(b"").sample(8, 8), [7, 4, 1, 3, 5, 6, 0, 2]);
    }
}
