//! Sticky, consistent bucketing shared by rollouts and flags: a key's bucket is a pure function
//! of its text, computed as flagd's `fractional` does (MurmurHash3 x86_32, seed 0, of the
//! concatenated key; |hash as i32| / i32::MAX × 100), so a user sits in the same bucket for a
//! rollout here, for a flag, and in any flagd-compatible evaluator.

use std::io::Cursor;

/// MurmurHash3 x86_32 of `bytes` with seed 0.
pub fn murmur3(bytes: &[u8]) -> u32 {
    // Reading from a slice cannot fail.
    murmur3::murmur3_32(&mut Cursor::new(bytes), 0).unwrap_or_default()
}

/// The bucket of `prefix` + `key`, in [0, 100] (hashed without building the joined string).
pub fn bucket(prefix: &str, key: &str) -> f64 {
    let hash = if prefix.is_empty() {
        murmur3(key.as_bytes())
    } else {
        let mut joined = Vec::with_capacity(prefix.len() + key.len());
        joined.extend_from_slice(prefix.as_bytes());
        joined.extend_from_slice(key.as_bytes());
        murmur3(&joined)
    };
    f64::from(hash as i32).abs() / f64::from(i32::MAX) * 100.0
}

/// Whether `key` is in the candidate arm of rollout `rollout` at `weight` percent. Raising the
/// weight only ever moves keys from stable to candidate.
pub fn in_candidate(rollout: &str, key: &str, weight: f64) -> bool {
    weight >= 100.0 || (weight > 0.0 && bucket(rollout, key) < weight)
}

/// The variant whose share of the weights holds `bucket` (flagd's `fractional`): weights are
/// relative, ranges are laid out in order. `None` when the weights sum to zero.
pub fn fractional<T>(bucket: f64, weights: &[(T, u64)]) -> Option<&T> {
    let total: u64 = weights.iter().map(|(_, w)| w).sum();
    if total == 0 {
        return None;
    }
    let mut end = 0.0;
    for (variant, w) in weights {
        end += *w as f64 * 100.0 / total as f64;
        if bucket < end {
            return Some(variant);
        }
    }
    // |i32::MIN| / i32::MAX is a hair over 1: that one hash lands past the last range.
    weights.last().map(|(v, _)| v)
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
            let b = bucket("chat-v2", &format!("user-{i}"));
            deciles[((b / 10.0) as usize).min(9)] += 1;
        }
        for d in deciles {
            assert!((9_500..=10_500).contains(&d), "{deciles:?}");
        }
    }

    #[test]
    fn fractional_lays_out_ranges_in_order() {
        let w = [("a", 50), ("b", 25), ("c", 25)];
        assert_eq!(fractional(0.0, &w), Some(&"a"));
        assert_eq!(fractional(49.9, &w), Some(&"a"));
        assert_eq!(fractional(50.0, &w), Some(&"b"));
        assert_eq!(fractional(99.99, &w), Some(&"c"));
        assert_eq!(fractional(100.0, &w), Some(&"c"));
        assert_eq!(fractional::<&str>(10.0, &[]), None);
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
            let b = bucket("r", &key);
            prop_assert!((0.0..=100.0001).contains(&b));
        }
    }
}
