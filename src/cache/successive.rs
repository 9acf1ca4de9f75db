//! Trees of successive snapshots. Snapshots of one store list their paths in the order the
//! daemon registered them (`ValidPaths.id`), so the next generation's list is the previous
//! one with some paths gone and new ones added: mostly the same trees in the same order.
//! Commands that look up every snapshot's trees in the index (`verify`, `gc`) need to look up
//! only those the snapshot handled before lacks: at 100,000 paths and 20 snapshots, two
//! million lookups in a table that no longer fits the CPU caches shrink to the changed paths'.
//!
//! The walk keeps the previous list (32 bytes a path) and a cursor into it: a tree found at
//! the cursor or a few entries after it is skipped and the cursor moves past it; any other is
//! passed on. After a run of misses (a run of deleted paths longer than the window) it looks
//! further ahead, at exponentially spaced misses, so that a long deletion costs a few linear
//! scans, never one per path; and the scans of one walk compare at most four times the
//! previous list's length in all. Whatever the lists hold (reordered, hostile), a tree is skipped
//! only when it equals a tree of the previous list.

use super::TreeId;

/// Entries after the cursor compared before a tree counts as unseen.
const WINDOW: usize = 8;

/// Misses in a row after which the walk first looks further ahead (then at twice as many,
/// four times, ...).
const RESYNC_AFTER: usize = 16;

/// Told, for each tree of a walk (its place in the list walked, and itself), where the
/// previous list holds it, or `None`.
type Found<'f, E> = dyn FnMut(usize, &TreeId, Option<usize>) -> Result<(), E> + 'f;

/// The trees of the snapshot handled before (see the module documentation).
#[derive(Default)]
pub(crate) struct PreviousTrees(Vec<TreeId>);

impl PreviousTrees {
    /// Call `unseen` with each tree of `trees` (in order) not found in the previous list,
    /// then make `trees` the previous list. Every tree not passed to `unseen` equals a tree
    /// of the previous list.
    #[cfg(test)]
    pub(crate) fn walk(&mut self, trees: Vec<TreeId>, unseen: &mut dyn FnMut(TreeId)) {
        let Ok(_) = self.filter(&trees, &mut |t| {
            unseen(t);
            Ok::<(), std::convert::Infallible>(())
        });
        self.set(trees);
    }

    /// [`PreviousTrees::walk`] with a fallible `unseen`, without replacing the previous list
    /// (the caller sets it when the snapshot is kept). Returns the entries the
    /// scans ahead compared (at most four times the previous list's length, and 1,024).
    ///
    /// # Errors
    /// The first error of `unseen`.
    pub(crate) fn filter<E>(
        &self,
        trees: &[TreeId],
        unseen: &mut dyn FnMut(TreeId) -> Result<(), E>,
    ) -> Result<usize, E> {
        self.scan(trees, &mut |_, t, found| match found {
            Some(_) => Ok(()),
            None => unseen(*t),
        })
    }

    /// Tell `each`, for every tree of `trees` (its place there, and itself), where the
    /// previous list holds it (`Some` of its place there), or that it is unseen (`None`), as
    /// [`PreviousTrees::filter`] finds them; then make `trees` the previous list.
    pub(crate) fn walk_matched(
        &mut self,
        trees: Vec<TreeId>,
        each: &mut dyn FnMut(usize, &TreeId, Option<usize>),
    ) {
        let Ok(_) = self.scan(&trees, &mut |i, t, found| {
            each(i, t, found);
            Ok::<(), std::convert::Infallible>(())
        });
        self.set(trees);
    }

    /// The walk of [`PreviousTrees::filter`], telling `each` where each tree was found.
    fn scan<E>(&self, trees: &[TreeId], each: &mut Found<'_, E>) -> Result<usize, E> {
        let prev = &self.0;
        let mut at = 0usize;
        let mut misses = 0usize;
        // Entries the scans ahead may compare in all, so that lists that share a few trees
        // here and there (each find resetting the misses) cost no scan of the whole list
        // every few paths: past it, misses are passed on without scanning.
        let budget = 4 * prev.len() + 1024;
        let mut scan_budget = budget;
        for (i, t) in trees.iter().enumerate() {
            let near = &prev[at.min(prev.len())..(at + WINDOW).min(prev.len())];
            if let Some(d) = near.iter().position(|p| p == t) {
                each(i, t, Some(at + d))?;
                at += d + 1;
                misses = 0;
                continue;
            }
            misses += 1;
            if misses >= RESYNC_AFTER && misses.is_power_of_two() && scan_budget > 0 {
                let rest = prev.get(at..).unwrap_or_default();
                let rest = &rest[..rest.len().min(scan_budget)];
                let found = rest.iter().position(|p| p == t);
                scan_budget -= found.map_or(rest.len(), |d| d + 1);
                if let Some(d) = found {
                    each(i, t, Some(at + d))?;
                    at += d + 1;
                    misses = 0;
                    continue;
                }
            }
            each(i, t, None)?;
        }
        Ok(budget - scan_budget)
    }

    /// Make `trees` the previous list.
    pub(crate) fn set(&mut self, trees: Vec<TreeId>) {
        self.0 = trees;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(i: u32) -> TreeId {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&i.to_be_bytes());
        TreeId(b)
    }

    fn unseen(prev: &mut PreviousTrees, trees: &[u32]) -> Vec<u32> {
        let mut out = Vec::new();
        prev.walk(trees.iter().map(|&i| t(i)).collect(), &mut |x| {
            out.push(u32::from_be_bytes(x.0[..4].try_into().unwrap()))
        });
        out
    }

    #[test]
    fn a_first_walk_passes_every_tree_on() {
        let mut p = PreviousTrees::default();
        assert_eq!(unseen(&mut p, &[1, 2, 3]), vec![1, 2, 3]);
    }

    #[test]
    fn deleted_changed_and_appended_paths_cost_only_the_new_trees() {
        let mut p = PreviousTrees::default();
        let v1: Vec<u32> = (0..1000).collect();
        unseen(&mut p, &v1);
        // 3 deleted here and there, one changed in place, a run of 100 deleted (longer than
        // the window), and new ones appended.
        let mut v2: Vec<u32> = (0..1000)
            .filter(|i| ![10, 11, 500].contains(i) && !(600..700).contains(i))
            .map(|i| if i == 250 { 5000 } else { i })
            .collect();
        v2.extend([7000, 7001]);
        let got = unseen(&mut p, &v2);
        // The new trees, and the few after the long deletion before the walk finds its place.
        assert!(got.starts_with(&[5000]), "{got:?}");
        assert!(got.ends_with(&[7000, 7001]), "{got:?}");
        assert!(
            got.len() <= 3 + RESYNC_AFTER,
            "{} passed on: {got:?}",
            got.len()
        );
    }

    #[test]
    fn an_error_leaves_the_previous_list() {
        let mut p = PreviousTrees::default();
        unseen(&mut p, &[1, 2]);
        assert!(p.filter(&[t(9)], &mut |_| Err::<(), _>("stop")).is_err());
        assert_eq!(unseen(&mut p, &[1, 2]), Vec::<u32>::new());
    }

    #[test]
    fn lists_sharing_a_tree_here_and_there_cost_a_bounded_scan() {
        // A previous list of one tree repeated, and a list where it follows every run of 16
        // new ones: each run's 16th miss scans the rest of the list in vain, then the shared
        // tree, found at the cursor, resets the misses (quadratic without a budget).
        let n = 20_000u32;
        let a: Vec<u32> = vec![1; n as usize];
        let b: Vec<u32> = (0..n)
            .map(|i| if i % 17 == 16 { 1 } else { i + n })
            .collect();
        let mut p = PreviousTrees::default();
        p.set(a.iter().map(|&i| t(i)).collect());
        let mut passed = 0usize;
        let trees: Vec<TreeId> = b.iter().map(|&i| t(i)).collect();
        let scanned = p
            .filter::<()>(&trees, &mut |_| {
                passed += 1;
                Ok(())
            })
            .unwrap();
        assert!(
            scanned <= 4 * n as usize + 1024,
            "{scanned} entries scanned"
        );
        // Every tree of b but the shared one is new.
        assert_eq!(passed, b.iter().filter(|&&i| i != 1).count());
    }

    proptest! {
        /// Whatever the two lists, every tree of the second that is not in the first is
        /// passed on (a skipped tree is always one the previous list holds).
        #[test]
        fn only_trees_of_the_previous_list_are_skipped(
            a in proptest::collection::vec(0u32..64, 0..200),
            b in proptest::collection::vec(0u32..64, 0..200),
        ) {
            let mut p = PreviousTrees::default();
            unseen(&mut p, &a);
            let got = unseen(&mut p, &b);
            for x in &b {
                if !a.contains(x) {
                    prop_assert!(got.contains(x));
                }
            }
            for x in &got {
                prop_assert!(b.contains(x));
            }
        }

        /// `walk_matched` says of each tree where the previous list holds it (and that place
        /// holds the same tree), or that it is unseen, and the unseen ones are those
        /// `filter` passes on.
        #[test]
        fn walk_matched_finds_each_seen_tree_at_its_place_in_the_previous_list(
            a in proptest::collection::vec(0u32..64, 0..200),
            b in proptest::collection::vec(0u32..64, 0..200),
        ) {
            let (ta, tb): (Vec<TreeId>, Vec<TreeId>) =
                (a.iter().map(|&i| t(i)).collect(), b.iter().map(|&i| t(i)).collect());
            let mut p = PreviousTrees::default();
            p.set(ta.clone());
            let mut filtered = Vec::new();
            p.filter(&tb, &mut |x| {
                filtered.push(x);
                Ok::<(), ()>(())
            })
            .unwrap();
            let mut told = vec![false; tb.len()];
            let mut unseen = Vec::new();
            p.walk_matched(tb.clone(), &mut |i, x, found| {
                told[i] = true;
                assert_eq!(*x, tb[i]);
                match found {
                    Some(j) => assert_eq!(ta[j], tb[i]),
                    None => unseen.push(*x),
                }
            });
            prop_assert!(told.iter().all(|&t| t));
            prop_assert_eq!(unseen, filtered);
        }
    }
}
