//! protocol 1 and 3.9: group keys (`<prefix>.0b<bits>`) and the Moshpit rule that moves every member
//! of a group to a different bucket after each round.

use super::python_random::PythonRandom;
use crate::error::{Error, Result};

/// Checks that `prefix` can name an averaging run (protocol 1: no `.`, not empty).
///
/// # Errors
/// [`Error::Config`] otherwise.
pub(crate) fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() || prefix.contains('.') {
        return Err(Error::Config(format!("prefix {prefix:?} must be non-empty and contain no '.'")));
    }
    Ok(())
}

/// Checks that `bits` is a string of `0` and `1` (possibly empty).
///
/// # Errors
/// [`Error::Config`] otherwise.
pub(crate) fn validate_bits(bits: &str) -> Result<()> {
    if let Some(bad) = bits.chars().find(|c| *c != '0' && *c != '1') {
        return Err(Error::Config(format!(
            "group bits {bits:?} contain {bad:?}; only '0' and '1' are allowed"
        )));
    }
    Ok(())
}

/// The DHT key a peer with `bits` declares itself under: `"<prefix>.0b<bits>"`.
pub fn group_key(prefix: &str, bits: &str) -> String {
    format!("{prefix}.0b{bits}")
}

/// The key of state-donor declarations: `"<prefix>.all_averagers"` (protocol 2.3).
pub fn donors_key(prefix: &str) -> String {
    format!("{prefix}.all_averagers")
}

/// The bits a member at `position` of a freshly formed group of `group_size` moves to (protocol 3.9).
///
/// Every member draws the same permutation of buckets from the group id, so members land in
/// distinct buckets; the key keeps its length and the oldest bits fall off the left.
///
/// # Errors
/// [`Error::Config`] when `position` is not in the group, the group is larger than the bucket
/// count allows, or the bits are invalid.
pub(crate) fn next_group_bits(
    bits: &str,
    target_group_size: Option<usize>,
    group_size: usize,
    position: usize,
    group_id: &[u8],
) -> Result<String> {
    validate_bits(bits)?;
    if position >= group_size {
        return Err(Error::Config(format!("position {position} is outside a group of {group_size}")));
    }
    let num_buckets = target_group_size.unwrap_or_else(|| group_size.next_power_of_two()).max(1);
    if group_size > num_buckets || num_buckets >= u32::MAX as usize {
        return Err(Error::Config(format!("a group of {group_size} does not fit {num_buckets} buckets")));
    }
    if bits.is_empty() {
        return Ok(String::new());
    }
    let nbits = num_buckets.next_power_of_two().trailing_zeros() as usize;
    let perm = PythonRandom::from_bytes(group_id).sample(num_buckets, group_size);
    let new_bits = if nbits == 0 { String::new() } else { format!("{:0nbits$b}", perm[position]) };
    let joined = format!("{bits}{new_bits}");
    Ok(joined[joined.len() - bits.len()..].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_validation() {
        assert_eq!(group_key("mygroup", "0110"), "mygroup.0b0110");
        assert_eq!(group_key("mygroup", ""), "mygroup.0b");
        assert_eq!(donors_key("run"), "run.all_averagers");
        assert!(validate_prefix("a.b").is_err());
        assert!(validate_prefix("").is_err());
        assert!(validate_bits("0120").is_err());
        validate_bits("").unwrap();
    }

    #[test]
    fn appendix_a_bucket_moves() {
        let id: Vec<u8> = (0u8..20).collect();
        let moved: Vec<String> =
            (0..4).map(|p| next_group_bits("0110", Some(4), 4, p, &id).unwrap()).collect();
        assert_eq!(moved, ["1000", "1001", "1011", "1010"]);
        let moved: Vec<String> = (0..2).map(|p| next_group_bits("01", Some(2), 2, p, &id).unwrap()).collect();
        assert_eq!(moved, ["10", "11"]);
        let moved: Vec<String> =
            (0..2).map(|p| next_group_bits("00000", Some(32), 2, p, &id).unwrap()).collect();
        assert_eq!(moved, ["00100", "10001"]);
        let moved: Vec<String> =
            (0..3).map(|p| next_group_bits("1111", None, 3, p, &[0; 20]).unwrap()).collect();
        assert_eq!(moved, ["1101", "1110", "1111"]);
    }

    #[test]
    fn empty_bits_stay_empty_and_bad_positions_are_errors() {
        assert_eq!(next_group_bits("", Some(2), 2, 1, &[1]).unwrap(), "");
        assert!(next_group_bits("01", Some(2), 2, 2, &[1]).is_err());
        assert!(next_group_bits("01", Some(2), 3, 0, &[1]).is_err());
    }
}
