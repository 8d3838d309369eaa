//! Sets of `msg_id`s: the store's set of recorded ids, and the writer's per-batch lookups.
//!
//! [`KnownIds`] keeps a keyed 128-bit fingerprint per id ([`Fingerprints`]) instead of the id itself: about 20
//! bytes per recorded task instead of about 100, and no copy of the id on the caller's
//! thread per `add`. The two 64-bit halves are SipHash with two independent random keys,
//! so ids chosen by a client cannot be made to collide; by chance, two of a billion ids
//! collide with probability about 10⁻²¹.
//!
//! [`BatchHasher`] hashes ids for maps that live for one batch (at most `batch_size`
//! entries): cheap, and not keyed — a client crafting colliding ids slows one batch's
//! lookups, bounded by the batch size.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

/// Computes the keyed fingerprints of ids (its keys are drawn when it is made).
#[derive(Debug)]
pub(crate) struct Fingerprints(RandomState, RandomState);

impl Fingerprints {
    /// New random keys.
    pub(crate) fn new() -> Self {
        Self(RandomState::new(), RandomState::new())
    }

    /// The fingerprint of `msg_id`.
    pub(crate) fn of(&self, msg_id: &str) -> u128 {
        let high = self.0.hash_one(msg_id);
        let low = self.1.hash_one(msg_id);
        (u128::from(high) << 64) | u128::from(low)
    }
}

/// The recorded ids' fingerprints.
pub(crate) type KnownIds = HashSet<u128, BuildHasherDefault<FingerprintHasher>>;

/// Hashes a fingerprint (already uniformly random) by taking its low 64 bits.
#[derive(Debug, Default)]
pub(crate) struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is used; mix anything else rather than drop it.
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u128(&mut self, value: u128) {
        // The low half of a fingerprint is one SipHash output; the truncation is the point.
        self.0 = value as u64;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A fast, unkeyed hasher for ids in per-batch maps (the Fx hash, 8 bytes at a time).
#[derive(Debug, Default)]
pub(crate) struct BatchHasher(u64);

impl BatchHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for BatchHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, value: u8) {
        self.add(u64::from(value));
    }

    fn finish(&self) -> u64 {
        // Spread the last multiplication's high bits down: hashbrown uses the top 7 bits
        // for its control bytes and the low bits for the bucket.
        self.0 ^ (self.0 >> 32)
    }
}

/// Builds [`BatchHasher`]s.
pub(crate) type BuildBatchHasher = BuildHasherDefault<BatchHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn fingerprints_tell_ids_apart() {
        let keys = Fingerprints::new();
        let mut ids = KnownIds::default();
        assert!(ids.insert(keys.of("a_1_1")));
        assert!(!ids.insert(keys.of("a_1_1")));
        assert!(ids.insert(keys.of("a_1_10")));
        assert!(!ids.contains(&keys.of("a_1_100")));
        ids.remove(&keys.of("a_1_1"));
        assert!(!ids.contains(&keys.of("a_1_1")));
        for i in 0..100_000 {
            assert!(ids.insert(keys.of(&format!("5f3c2a9e-8d41_4242_{i}"))));
        }
        assert_eq!(ids.len(), 100_001);
        // Other keys, other fingerprints.
        assert_ne!(Fingerprints::new().of("a_1_10"), keys.of("a_1_10"));
    }

    #[test]
    fn batch_maps_find_every_id() {
        let mut map: HashMap<String, usize, BuildBatchHasher> = HashMap::default();
        for i in 0..10_000 {
            map.insert(format!("session_1_{i}"), i);
        }
        for i in 0..10_000 {
            assert_eq!(map.get(&format!("session_1_{i}")), Some(&i));
        }
        assert_eq!(map.get("session_1_10000"), None);
    }
}
