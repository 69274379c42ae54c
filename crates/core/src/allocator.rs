//! Port choice: which gateway ports an allocation may try, in what order. Pure; the KV compare-and-set that
//! makes a choice exclusive lives in the claim protocol ([`crate::claims`]), over the [`crate::store::Store`] trait.
//!
//! The search starts at a random point of the range and wraps, so concurrent workers rarely try the same
//! port first, and ports freed by one allocation are not handed straight to the next.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

/// What the allocator knows about one Gateway's ports.
#[derive(Debug, Clone, Default)]
pub struct PortView {
    /// Ports excluded by config.
    pub excluded: BTreeSet<u16>,
    /// Ports of listeners the worker does not own (the operator's placeholder among them).
    pub foreign: BTreeSet<u16>,
    /// Ports known to be held by some allocation (a hint: the KV create is what decides).
    pub taken: BTreeSet<u16>,
}

impl PortView {
    /// Whether a port may never be handed out.
    pub fn forbidden(&self, port: u16) -> bool {
        self.excluded.contains(&port) || self.foreign.contains(&port)
    }
}

/// Candidate ports in search order: every allowed, not-known-taken port of `range`, starting at offset
/// `start` (taken modulo the range's length) and wrapping around.
pub fn candidates(
    range: RangeInclusive<u16>,
    view: &PortView,
    start: u32,
) -> impl Iterator<Item = u16> + Clone + '_ {
    let lo = u32::from(*range.start());
    let len = u32::from(*range.end()).saturating_sub(lo) + 1;
    let len = if range.is_empty() { 0 } else { len };
    let offset = if len == 0 { 0 } else { start % len };
    (0..len)
        .filter_map(move |i| u16::try_from(lo + (offset + i) % len).ok())
        .filter(move |p| !view.forbidden(*p) && !view.taken.contains(p))
}

/// For each proxy in order, the port it prefers (the one its listener already stands on, say) when that
/// port may be kept: in `range`, not forbidden, not known taken, and not kept by an earlier proxy. `None`
/// where there is no preference or it may not be kept: that proxy's port comes from the search.
pub fn keepable(
    range: RangeInclusive<u16>,
    view: &PortView,
    preferred: &[Option<u16>],
) -> Vec<Option<u16>> {
    let mut kept: Vec<Option<u16>> = Vec::with_capacity(preferred.len());
    for p in preferred {
        let k = p.filter(|p| {
            range.contains(p)
                && !view.forbidden(*p)
                && !view.taken.contains(p)
                && !kept.contains(&Some(*p))
        });
        kept.push(k);
    }
    kept
}

/// How many ports of `range` could ever be handed out.
pub fn capacity(range: RangeInclusive<u16>, view: &PortView) -> usize {
    range.filter(|p| !view.forbidden(*p)).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn search_wraps_from_the_start_offset() {
        let v = PortView::default();
        let got: Vec<u16> = candidates(40000..=40003, &v, 2).collect();
        assert_eq!(got, vec![40002, 40003, 40000, 40001]);
    }

    #[test]
    fn foreign_excluded_and_taken_ports_are_skipped() {
        let v = PortView {
            excluded: [40001].into(),
            foreign: [40002].into(),
            taken: [40003].into(),
        };
        let got: Vec<u16> = candidates(40000..=40004, &v, 0).collect();
        assert_eq!(got, vec![40000, 40004]);
        assert_eq!(capacity(40000..=40004, &v), 3);
    }

    #[test]
    fn a_one_port_range_is_usable() {
        let got: Vec<u16> = candidates(65535..=65535, &PortView::default(), 7).collect();
        assert_eq!(got, vec![65535]);
    }

    #[test]
    fn a_preferred_port_is_kept_only_where_it_may_be_handed_out() {
        let v = PortView {
            excluded: [40001].into(),
            foreign: [40002].into(),
            taken: [40003].into(),
        };
        let preferred = [
            Some(40000),
            Some(40001),
            Some(40002),
            Some(40003),
            Some(40009),
            None,
            Some(40000),
            Some(40004),
        ];
        assert_eq!(
            keepable(40000..=40004, &v, &preferred),
            vec![Some(40000), None, None, None, None, None, None, Some(40004)],
            "excluded, foreign, taken, out of range, none, already kept by another proxy"
        );
    }

    proptest! {
        #[test]
        fn kept_ports_are_the_preferred_ones_each_allowed_and_distinct(
            lo in 1025u16..65000, width in 0u16..50,
            excluded in proptest::collection::btree_set(1025u16..65100, 0..20),
            foreign in proptest::collection::btree_set(1025u16..65100, 0..20),
            taken in proptest::collection::btree_set(1025u16..65100, 0..20),
            preferred in proptest::collection::vec(proptest::option::of(1025u16..65100), 0..8),
        ) {
            let hi = lo.saturating_add(width);
            let v = PortView { excluded, foreign, taken };
            let kept = keepable(lo..=hi, &v, &preferred);
            prop_assert_eq!(kept.len(), preferred.len());
            let mut seen = BTreeSet::new();
            for (k, p) in kept.iter().zip(&preferred) {
                if let Some(k) = k {
                    prop_assert_eq!(Some(*k), *p);
                    prop_assert!((lo..=hi).contains(k) && !v.forbidden(*k) && !v.taken.contains(k));
                    prop_assert!(seen.insert(*k), "kept twice: {}", k);
                } else if let Some(p) = p {
                    // A preference is dropped only for a reason.
                    prop_assert!(
                        !(lo..=hi).contains(p) || v.forbidden(*p) || v.taken.contains(p) || seen.contains(p)
                    );
                }
            }
        }

        #[test]
        fn candidates_are_each_allowed_port_exactly_once(
            lo in 1025u16..65000, width in 0u16..200, start in any::<u32>(),
            excluded in proptest::collection::btree_set(1025u16..65535, 0..20),
            foreign in proptest::collection::btree_set(1025u16..65535, 0..20),
        ) {
            let hi = lo.saturating_add(width);
            let v = PortView { excluded, foreign, taken: BTreeSet::new() };
            let got: Vec<u16> = candidates(lo..=hi, &v, start).collect();
            let set: BTreeSet<u16> = got.iter().copied().collect();
            prop_assert_eq!(set.len(), got.len());
            let want: BTreeSet<u16> = (lo..=hi).filter(|p| !v.forbidden(*p)).collect();
            prop_assert_eq!(set, want);
        }
    }
}
