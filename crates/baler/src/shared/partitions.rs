//! How a shared capacity is cut into partitions, how many a target needs,
//! and how many an instance may hold when others want them too.

use super::store::Demand;

/// The most partitions a shared capacity may be cut into: each one is a
/// lease to renew, so more would load the store for little precision.
pub const MAX_PARTITIONS: u32 = 500;

/// The partitions of a shared capacity: `count` of them, each worth `factor`
/// except the last, which is worth what is left of `shared`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) reserved: u64,
    pub(crate) shared: u64,
    pub(crate) factor: u64,
    pub(crate) count: u32,
}

impl Plan {
    /// The plan for these figures; `count` may exceed [`MAX_PARTITIONS`],
    /// which the builder refuses.
    pub(crate) fn new(reserved: u64, shared: u64, factor: u64) -> Self {
        let count = shared.div_ceil(factor.max(1));
        Plan {
            reserved,
            shared,
            factor,
            count: u32::try_from(count).unwrap_or(u32::MAX),
        }
    }

    /// What partition `p` is worth.
    pub(crate) fn worth(&self, p: u32) -> u64 {
        if p + 1 < self.count {
            self.factor
        } else {
            self.shared - self.factor * u64::from(self.count.saturating_sub(1))
        }
    }

    /// How many partitions a target needs on top of the reserved capacity.
    pub(crate) fn wanted(&self, target: u64) -> u32 {
        let need = target
            .saturating_sub(self.reserved)
            .div_ceil(self.factor.max(1));
        u32::try_from(need).unwrap_or(u32::MAX).min(self.count)
    }
}

/// The max-min fair share of `me` among `demands` for `count` partitions:
/// owners that want less than an equal share get what they want; the rest
/// split what is left equally, and the remainder goes one each to the first
/// of them by token. Every instance computes the same answer from the same
/// demands, and the shares add up to at most `count`.
pub(crate) fn fair_share(me: &str, demands: &[Demand], count: u32) -> u32 {
    let mut wanting: Vec<(u32, &str)> = demands
        .iter()
        .filter(|d| d.wanted > 0)
        .map(|d| (d.wanted.min(count), d.owner.as_str()))
        .collect();
    wanting.sort_unstable();
    let mut remaining = count;
    for i in 0..wanting.len() {
        let left = u32::try_from(wanting.len() - i).unwrap_or(u32::MAX);
        let share = remaining / left;
        let (wanted, owner) = wanting[i];
        if wanted <= share {
            if owner == me {
                return wanted;
            }
            remaining -= wanted;
            continue;
        }
        // Everyone from here on wants more than the equal share.
        let extra = (remaining % left) as usize;
        let mut rest: Vec<&str> = wanting[i..].iter().map(|w| w.1).collect();
        rest.sort_unstable();
        return rest
            .iter()
            .position(|o| *o == me)
            .map_or(0, |k| share + u32::from(k < extra));
    }
    0
}

/// A random number, from the standard library's randomly keyed hasher (no
/// dependency needed for shuffling partitions and naming owners).
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}

/// `0..count` in a random order: where this instance starts looking, so that
/// instances spread over the partitions instead of all contending for the
/// first ones.
pub(crate) fn shuffled(count: u32, mut seed: u64) -> Vec<u32> {
    let mut order: Vec<u32> = (0..count).collect();
    for i in (1..order.len()).rev() {
        // xorshift64*
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        let r = seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let j = usize::try_from(r % (i as u64 + 1)).unwrap_or(0);
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_partition_is_worth_what_is_left() {
        let plan = Plan::new(0, 2_500, 1_000);
        assert_eq!(plan.count, 3);
        assert_eq!(
            (plan.worth(0), plan.worth(1), plan.worth(2)),
            (1_000, 1_000, 500)
        );
    }

    #[test]
    fn a_target_needs_the_partitions_that_cover_it_above_the_reserved_part() {
        let plan = Plan::new(500, 10_000, 1_000);
        assert_eq!(plan.wanted(0), 0);
        assert_eq!(plan.wanted(500), 0);
        assert_eq!(plan.wanted(501), 1);
        assert_eq!(plan.wanted(2_500), 2);
        assert_eq!(plan.wanted(1_000_000), 10);
    }

    fn demands(list: &[(&str, u32)]) -> Vec<Demand> {
        list.iter().map(|(o, w)| Demand::new(*o, *w)).collect()
    }

    #[test]
    fn owners_that_all_want_everything_split_it_evenly() {
        let d = demands(&[("d", 10), ("b", 10), ("a", 10), ("c", 10)]);
        let shares: Vec<u32> = ["a", "b", "c", "d"]
            .iter()
            .map(|o| fair_share(o, &d, 10))
            .collect();
        assert_eq!(shares, [3, 3, 2, 2]);
    }

    #[test]
    fn what_a_modest_owner_leaves_goes_to_the_others() {
        let d = demands(&[("a", 1), ("b", 10), ("c", 4), ("z", 0)]);
        let shares: Vec<u32> = ["a", "b", "c", "z"]
            .iter()
            .map(|o| fair_share(o, &d, 10))
            .collect();
        assert_eq!(shares, [1, 5, 4, 0]);
        assert_eq!(fair_share("unknown", &d, 10), 0);
    }

    #[test]
    fn shares_never_add_up_to_more_than_there_is() {
        for n in 1..6u32 {
            for count in 1..20u32 {
                let d: Vec<Demand> = (0..n)
                    .map(|i| Demand::new(format!("o{i}"), (i * 7 + count) % 13))
                    .collect();
                let total: u32 = d.iter().map(|x| fair_share(&x.owner, &d, count)).sum();
                let want: u32 = d.iter().map(|x| x.wanted.min(count)).sum();
                assert_eq!(total, want.min(count), "{d:?} of {count}");
            }
        }
    }

    #[test]
    fn shuffling_keeps_every_partition_once() {
        let mut order = shuffled(50, random_u64());
        order.sort_unstable();
        assert_eq!(order, (0..50).collect::<Vec<_>>());
        assert_ne!(shuffled(50, 1), shuffled(50, 2));
    }
}
