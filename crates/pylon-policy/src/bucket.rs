//! Sticky, consistent bucketing shared by rollouts and flags, computed as flagd's `fractional`
//! does: MurmurHash3 x86_32 (seed 0) of the flag key (here: the rollout's name) followed by the
//! targeting key, scaled to the total weight as `(hash × total) >> 32`, with variants taking
//! consecutive ranges in order. A rollout at w % is the split `[candidate w, stable 100 − w]`
//! in hundredths of a percent, so a user sits in the same place for a rollout here, for a flag,
//! and in any flagd-compatible evaluator.

use std::io::Cursor;

/// MurmurHash3 x86_32 of `bytes` with seed 0.
pub fn murmur3(bytes: &[u8]) -> u32 {
    // Reading from a slice cannot fail.
    murmur3::murmur3_32(&mut Cursor::new(bytes), 0).unwrap_or_default()
}

/// The hash of `prefix` followed by `key`.
fn hash(prefix: &str, key: &str) -> u32 {
    let mut joined = Vec::with_capacity(prefix.len() + key.len());
    joined.extend_from_slice(prefix.as_bytes());
    joined.extend_from_slice(key.as_bytes());
    murmur3(&joined)
}

/// The bucket of `prefix` + `key` among `total` (0 ≤ bucket < total).
pub fn bucket(prefix: &str, key: &str, total: u64) -> u64 {
    (u64::from(hash(prefix, key)) * total) >> 32
}

/// Whether `key` is in the candidate arm of rollout `rollout` at `weight` percent. Raising the
/// weight only ever moves keys from stable to candidate.
pub fn in_candidate(rollout: &str, key: &str, weight: f64) -> bool {
    let hundredths = (weight.clamp(0.0, 100.0) * 100.0).round() as u64;
    hundredths > 0 && bucket(rollout, key, 10_000) < hundredths
}

/// The variant whose range holds `bucket` when `weights` (relative, in order) share `total`.
pub fn fractional<T>(bucket: u64, weights: &[(T, u64)]) -> Option<&T> {
    let mut end = 0;
    for (variant, w) in weights {
        end += w;
        if bucket < end {
            return Some(variant);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn murmur3_matches_the_reference_vectors() {
        assert_eq!(murmur3(b""), 0);
        assert_eq!(murmur3(b"hello"), 0x248b_fa47);
        assert_eq!(
            murmur3(b"The quick brown fox jumps over the lazy dog"),
            0x2e4f_f723
        );
    }

    #[test]
    fn buckets_are_spread_evenly() {
        let mut deciles = [0u32; 10];
        for i in 0..100_000 {
            deciles[bucket("chat-v2", &format!("user-{i}"), 10) as usize] += 1;
        }
        for d in deciles {
            assert!((9_500..=10_500).contains(&d), "{deciles:?}");
        }
    }

    #[test]
    fn fractional_lays_out_ranges_in_order() {
        let w = [("a", 50), ("b", 25), ("c", 25)];
        assert_eq!(fractional(0, &w), Some(&"a"));
        assert_eq!(fractional(49, &w), Some(&"a"));
        assert_eq!(fractional(50, &w), Some(&"b"));
        assert_eq!(fractional(99, &w), Some(&"c"));
        assert_eq!(fractional::<&str>(10, &[]), None);
    }

    #[test]
    fn a_rollout_is_the_flag_split_candidate_first() {
        for i in 0..1000 {
            let key = format!("user-{i}");
            let b = bucket("chat-v2", &key, 10_000);
            let split = fractional(b, &[("candidate", 500), ("stable", 9_500)]);
            assert_eq!(
                in_candidate("chat-v2", &key, 5.0),
                split == Some(&"candidate")
            );
        }
    }

    proptest! {
        /// Raising a rollout's weight never moves anyone back to stable.
        #[test]
        fn raising_the_weight_only_adds_candidates(key in ".{0,40}", a in 0.0f64..=100.0, b in 0.0f64..=100.0) {
            let (low, high) = if a <= b { (a, b) } else { (b, a) };
            if in_candidate("r", &key, low) {
                prop_assert!(in_candidate("r", &key, high));
            }
        }

        /// The same key gets the same answer every time, and the bucket stays in range.
        #[test]
        fn assignment_is_a_pure_function(key in ".{0,40}", w in 0.0f64..=100.0) {
            prop_assert_eq!(in_candidate("r", &key, w), in_candidate("r", &key, w));
            prop_assert!(bucket("r", &key, 100) < 100);
        }
    }
}
