//! The reference graph of store paths: closures, topological order (references first, as the
//! daemon registers them), and the set of referrers of a failed path.
//!
//! Nodes are indices into the caller's list of paths; self-references are allowed (a path may
//! name itself) and ignored for ordering. Any other cycle is an error: the store forbids it.

use std::collections::{HashMap, VecDeque};

/// A cycle between distinct paths (impossible in a sane store).
#[derive(Debug, thiserror::Error)]
#[error("reference cycle involving path #{0}")]
pub struct CycleError(pub usize);

/// References of each node, as indices.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    refs: Vec<Vec<usize>>,
    referrers: Vec<Vec<usize>>,
}

impl Graph {
    /// Build from the references of each node (`refs[i]` = what `i` refers to; may include `i`).
    ///
    /// # Panics
    /// When an index is out of range (a caller bug).
    pub fn new(refs: Vec<Vec<usize>>) -> Self {
        let mut referrers = vec![Vec::new(); refs.len()];
        for (i, rs) in refs.iter().enumerate() {
            for &r in rs {
                assert!(r < refs.len(), "reference index out of range");
                if r != i {
                    referrers[r].push(i);
                }
            }
        }
        Graph { refs, referrers }
    }

    /// The graph of nodes named by keys (store paths, say): node `i` is the `i`th of `nodes`,
    /// whose second element lists the keys it refers to; references to keys not among the
    /// nodes are dropped (they lie outside what is being considered).
    pub fn of_keys<'a, K, R>(nodes: impl Iterator<Item = (&'a K, R)> + Clone) -> Self
    where
        K: Eq + std::hash::Hash + 'a,
        R: IntoIterator<Item = &'a K>,
    {
        let index: HashMap<&K, usize> = nodes
            .clone()
            .enumerate()
            .map(|(i, (k, _))| (k, i))
            .collect();
        Graph::new(
            nodes
                .map(|(_, refs)| {
                    refs.into_iter()
                        .filter_map(|r| index.get(r).copied())
                        .collect()
                })
                .collect(),
        )
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.refs.len()
    }

    /// Whether the graph is empty.
    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }

    /// References of `i`.
    pub fn references(&self, i: usize) -> &[usize] {
        &self.refs[i]
    }

    /// Membership mask of the closure of `roots` (the roots and everything they reference).
    pub fn closure(&self, roots: impl IntoIterator<Item = usize>) -> Vec<bool> {
        self.reach(roots, &self.refs)
    }

    /// Membership mask of `bad` and every node that refers to one of them, directly or not.
    pub fn referrers_closure(&self, bad: impl IntoIterator<Item = usize>) -> Vec<bool> {
        self.reach(bad, &self.referrers)
    }

    fn reach(&self, start: impl IntoIterator<Item = usize>, edges: &[Vec<usize>]) -> Vec<bool> {
        let mut seen = vec![false; self.len()];
        let mut stack: Vec<usize> = start.into_iter().collect();
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut seen[i], true) {
                stack.extend(edges[i].iter().copied().filter(|&j| !seen[j]));
            }
        }
        seen
    }

    /// The nodes with `mask[i]` in an order where every node comes after the nodes it refers to
    /// (references outside the mask are ignored). Ties keep index order.
    ///
    /// # Errors
    /// [`CycleError`] when distinct nodes refer to each other.
    pub fn topo_order(&self, mask: &[bool]) -> Result<Vec<usize>, CycleError> {
        let mut pending = vec![0usize; self.len()];
        for i in (0..self.len()).filter(|&i| mask[i]) {
            pending[i] = self.refs[i].iter().filter(|&&r| r != i && mask[r]).count();
        }
        let mut ready: VecDeque<usize> = (0..self.len())
            .filter(|&i| mask[i] && pending[i] == 0)
            .collect();
        let mut order = Vec::with_capacity(ready.len());
        while let Some(i) = ready.pop_front() {
            order.push(i);
            for &p in &self.referrers[i] {
                if mask[p] {
                    pending[p] -= 1;
                    if pending[p] == 0 {
                        ready.push_back(p);
                    }
                }
            }
        }
        match (0..self.len()).find(|&i| mask[i] && pending[i] > 0) {
            Some(i) => Err(CycleError(i)),
            None => Ok(order),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // 0 <- 1 <- 2, 3 -> 0, 4 alone, 2 refers to itself
    fn sample() -> Graph {
        Graph::new(vec![vec![], vec![0], vec![1, 2], vec![0], vec![]])
    }

    #[test]
    fn closure_follows_references() {
        let g = sample();
        assert_eq!(g.closure([2]), vec![true, true, true, false, false]);
        assert_eq!(g.closure([4]), vec![false, false, false, false, true]);
    }

    #[test]
    fn referrers_of_a_failed_path() {
        let g = sample();
        assert_eq!(
            g.referrers_closure([0]),
            vec![true, true, true, true, false]
        );
        assert_eq!(
            g.referrers_closure([1]),
            vec![false, true, true, false, false]
        );
    }

    #[test]
    fn topo_puts_references_first() {
        let g = sample();
        let order = g.topo_order(&[true; 5]).unwrap();
        assert_eq!(order, vec![0, 4, 1, 3, 2]);
        let partial = g.topo_order(&[false, true, true, false, false]).unwrap();
        assert_eq!(partial, vec![1, 2]);
    }

    #[test]
    fn cycle_is_an_error() {
        let g = Graph::new(vec![vec![1], vec![0]]);
        assert!(g.topo_order(&[true, true]).is_err());
    }

    proptest! {
        // Random DAGs (edges only to lower indices, then shuffled labels): order respects edges.
        #[test]
        fn topo_respects_every_edge(n in 1usize..40, edges in proptest::collection::vec((0usize..40, 0usize..40), 0..120)) {
            let mut refs = vec![Vec::new(); n];
            for (a, b) in edges {
                let (a, b) = (a % n, b % n);
                if a > b { refs[a].push(b); } else if a == b { refs[a].push(a); }
            }
            let g = Graph::new(refs.clone());
            let order = g.topo_order(&vec![true; n]).unwrap();
            prop_assert_eq!(order.len(), n);
            let mut pos = vec![0; n];
            for (k, &i) in order.iter().enumerate() { pos[i] = k; }
            for (a, rs) in refs.iter().enumerate() {
                for &b in rs { prop_assert!(a == b || pos[b] < pos[a]); }
            }
        }
    }
}
