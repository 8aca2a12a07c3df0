//! A hash map that remembers recency: O(1) lookup, insert, remove, "touch" (make newest) and
//! removal of the oldest entry. The bounded tables of ingest (destinations, reporters,
//! per-reporter rate buckets) evict through it, so a full table never costs a scan.
//!
//! Entries live in a slab (`Vec`) threaded by a doubly linked list in recency order (head =
//! oldest); the index maps keys to slab slots. Each key is stored twice (slab and index).

use std::collections::HashMap;
use std::hash::Hash;

const NIL: usize = usize::MAX;

#[derive(Debug)]
struct Node<K, V> {
    key: K,
    value: V,
    prev: usize,
    next: usize,
}

/// A map with recency order; see the module docs.
#[derive(Debug)]
pub struct LruMap<K, V> {
    index: HashMap<K, usize, foldhash::fast::RandomState>,
    slots: Vec<Option<Node<K, V>>>,
    free: Vec<usize>,
    head: usize,
    tail: usize,
}

impl<K: Hash + Eq + Clone, V> Default for LruMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq + Clone, V> LruMap<K, V> {
    pub fn new() -> Self {
        Self {
            index: HashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.index.contains_key(key)
    }

    fn node(&self, slot: usize) -> &Node<K, V> {
        self.slots[slot].as_ref().expect("linked slot is occupied")
    }

    fn node_mut(&mut self, slot: usize) -> &mut Node<K, V> {
        self.slots[slot].as_mut().expect("linked slot is occupied")
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.index.get(key).map(|&s| &self.node(s).value)
    }

    /// The value, without changing its recency.
    pub fn peek_mut(&mut self, key: &K) -> Option<&mut V> {
        let s = *self.index.get(key)?;
        Some(&mut self.node_mut(s).value)
    }

    /// The value, made the newest entry.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let s = *self.index.get(key)?;
        self.unlink(s);
        self.push_back(s);
        Some(&mut self.node_mut(s).value)
    }

    /// Inserts (or replaces) `key` as the newest entry; returns the value it replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        if let Some(v) = self.get_mut(&key) {
            return Some(std::mem::replace(v, value));
        }
        let node = Node {
            key: key.clone(),
            value,
            prev: NIL,
            next: NIL,
        };
        let s = match self.free.pop() {
            Some(s) => {
                self.slots[s] = Some(node);
                s
            }
            None => {
                self.slots.push(Some(node));
                self.slots.len() - 1
            }
        };
        self.index.insert(key, s);
        self.push_back(s);
        None
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let s = self.index.remove(key)?;
        Some(self.take(s).1)
    }

    /// The oldest entry, without removing it.
    pub fn peek_oldest(&self) -> Option<(&K, &V)> {
        (self.head != NIL).then(|| {
            let n = self.node(self.head);
            (&n.key, &n.value)
        })
    }

    /// Removes and returns the oldest entry.
    pub fn pop_oldest(&mut self) -> Option<(K, V)> {
        if self.head == NIL {
            return None;
        }
        let s = self.head;
        let key = self.node(s).key.clone();
        self.index.remove(&key);
        Some(self.take(s))
    }

    /// Entries, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        let mut s = self.head;
        std::iter::from_fn(move || {
            (s != NIL).then(|| {
                let n = self.node(s);
                s = n.next;
                (&n.key, &n.value)
            })
        })
    }

    /// Entries in slab order (no particular order), values mutable.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> + '_ {
        self.slots
            .iter_mut()
            .flatten()
            .map(|n| (&n.key, &mut n.value))
    }

    /// Values in slab order (no particular order), mutable.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> + '_ {
        self.slots.iter_mut().flatten().map(|n| &mut n.value)
    }

    /// Keys, oldest first.
    pub fn keys(&self) -> impl Iterator<Item = &K> + '_ {
        self.iter().map(|(k, _)| k)
    }

    /// Slab capacity (for memory estimates).
    pub fn slot_capacity(&self) -> usize {
        self.slots.capacity()
    }

    fn take(&mut self, s: usize) -> (K, V) {
        self.unlink(s);
        let n = self.slots[s].take().expect("linked slot is occupied");
        self.free.push(s);
        if self.index.is_empty() {
            // Nothing left: give the slab back instead of keeping its peak size.
            self.slots.clear();
            self.free.clear();
        }
        (n.key, n.value)
    }

    fn unlink(&mut self, s: usize) {
        let (prev, next) = {
            let n = self.node(s);
            (n.prev, n.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.node_mut(prev).next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.node_mut(next).prev = prev;
        }
    }

    fn push_back(&mut self, s: usize) {
        let tail = self.tail;
        {
            let n = self.node_mut(s);
            n.prev = tail;
            n.next = NIL;
        }
        if tail == NIL {
            self.head = s;
        } else {
            self.node_mut(tail).next = s;
        }
        self.tail = s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(m: &LruMap<String, u32>) -> Vec<&str> {
        m.keys().map(String::as_str).collect()
    }

    #[test]
    fn recency_order_follows_inserts_and_touches() {
        let mut m = LruMap::new();
        for (i, k) in ["a", "b", "c"].into_iter().enumerate() {
            assert_eq!(m.insert(k.to_string(), i as u32), None);
        }
        assert_eq!(order(&m), ["a", "b", "c"]);
        *m.get_mut(&"a".to_string()).unwrap() += 10;
        assert_eq!(order(&m), ["b", "c", "a"]);
        *m.peek_mut(&"b".to_string()).unwrap() += 10;
        assert_eq!(order(&m), ["b", "c", "a"], "peek keeps the order");
        assert_eq!(m.insert("c".into(), 7), Some(2));
        assert_eq!(order(&m), ["b", "a", "c"]);
        assert_eq!(m.peek_oldest(), Some((&"b".to_string(), &11)));
        assert_eq!(m.pop_oldest(), Some(("b".to_string(), 11)));
        assert_eq!(m.remove(&"c".to_string()), Some(7));
        assert_eq!(order(&m), ["a"]);
        assert_eq!(m.get(&"a".to_string()), Some(&10));
        assert_eq!(m.len(), 1);
        // Freed slots are reused.
        m.insert("d".into(), 4);
        m.insert("e".into(), 5);
        assert_eq!(order(&m), ["a", "d", "e"]);
        assert!(m.slot_capacity() >= 3);
        while m.pop_oldest().is_some() {}
        assert!(m.is_empty());
        assert_eq!(m.iter().count(), 0);
    }
}
