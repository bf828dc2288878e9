//! Results made on worker threads and taken in order: slot `i` is filled
//! once item `i` is done; taking it waits until then.

use std::sync::{Condvar, Mutex};

pub struct Slots<T> {
    slots: Mutex<Vec<Option<T>>>,
    cv: Condvar,
}

impl<T> Slots<T> {
    /// `n` empty slots.
    pub fn new(n: usize) -> Slots<T> {
        Slots::full(n, |_| None)
    }

    /// `n` slots, slot `i` holding what `fill(i)` gives (`None`: empty).
    pub fn full(n: usize, fill: impl FnMut(usize) -> Option<T>) -> Slots<T> {
        Slots {
            slots: Mutex::new((0..n).map(fill).collect()),
            cv: Condvar::new(),
        }
    }

    /// Fill slot `i`.
    pub fn put(&self, i: usize, v: T) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots[i] = Some(v);
        self.cv.notify_all();
    }

    /// Wait until slot `i` is filled; take what it holds.
    pub fn wait(&self, i: usize) -> T {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(v) = slots[i].take() {
                return v;
            }
            slots = self.cv.wait(slots).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_taken_in_order_whoever_fills_them_first() {
        let s = Slots::new(3);
        std::thread::scope(|sc| {
            sc.spawn(|| {
                for i in [2, 0, 1] {
                    s.put(i, i * 10);
                }
            });
            assert_eq!((0..3).map(|i| s.wait(i)).collect::<Vec<_>>(), [0, 10, 20]);
        });
        let full = Slots::full(2, |i| Some(i + 1));
        assert_eq!(full.wait(1), 2);
    }
}
