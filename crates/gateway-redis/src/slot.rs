//! Redis Cluster hash slots, so keys that one script call touches can be put on one slot.
//!
//! A cluster maps each key to one of 16,384 slots by the CRC16 (XMODEM) of its hash tag (the
//! part between the first `{` and the next `}`), and a script may only touch keys of one slot.
//! A user's counters share the user's tag; the restore marker that the reserve script reads
//! with them must then live on the same slot, so there is one marker per slot, tagged with a
//! short number that hashes to that slot ([`tag_for`]). A node that restarts empty loses its
//! slots' markers with its counters, and only those requests wait for a restore.

use std::sync::OnceLock;

/// Slots in a Redis Cluster.
pub const SLOTS: u16 = 16_384;

/// CRC16/XMODEM's table (polynomial 0x1021), built at compile time.
const TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// The slot of a key whose hash tag is `tag`, as Redis computes it.
pub fn of(tag: &[u8]) -> u16 {
    let crc = tag.iter().fold(0u16, |crc, b| (crc << 8) ^ TABLE[usize::from((crc >> 8) as u8 ^ b)]);
    crc % SLOTS
}

/// A number whose decimal form, as a hash tag, puts a key on `slot`.
pub fn tag_for(slot: u16) -> u32 {
    tags()[usize::from(slot % SLOTS)]
}

/// For every slot, the smallest number hashing to it (found once: about 170,000 CRCs of at
/// most six bytes, a millisecond; 64 KiB).
fn tags() -> &'static [u32] {
    static TAGS: OnceLock<Box<[u32]>> = OnceLock::new();
    TAGS.get_or_init(|| {
        let mut tags = vec![u32::MAX; usize::from(SLOTS)];
        let mut missing = usize::from(SLOTS);
        let mut n = 0u32;
        while missing > 0 {
            let slot = usize::from(of(n.to_string().as_bytes()));
            if tags[slot] == u32::MAX {
                tags[slot] = n;
                missing -= 1;
            }
            n += 1;
        }
        tags.into_boxed_slice()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::cluster_routing::Slot;

    #[test]
    fn slots_are_the_ones_redis_computes() {
        // The CRC16/XMODEM check value, and the examples of Redis' cluster specification.
        assert_eq!(of(b"123456789"), 0x31C3 % SLOTS);
        assert_eq!(of(b"foo"), 12_182);
        assert_eq!(of(b"user1000"), of(b"user1000"));
        for key in ["a", "0195f3e2-7c4e-7b51-9a43-2f1d7d4f6b10", "bm:rl:v2"] {
            let tagged = format!("x:{{{key}}}:y");
            assert_eq!(Slot::for_key(&tagged), Slot::for_key(key), "{key}");
            assert_eq!(Slot::new(of(key.as_bytes())), Some(Slot::for_key(key)), "{key}");
        }
    }

    #[test]
    fn every_slot_has_a_tag_that_lands_on_it() {
        for slot in 0..SLOTS {
            assert_eq!(of(tag_for(slot).to_string().as_bytes()), slot);
        }
    }
}
