//! One expensive fixture (a testbed, its package repository, a baked image,
//! a booted instance) shared by the tests of one test binary, so that each
//! behaviour can be its own test without each test paying for the setup.
//!
//! libtest has no hook at the end of a binary, and a `static` is never
//! dropped, so a fixture kept in a `static` would leave its instances and
//! bridge behind when the process exits. Here the `static` holds only a
//! `Weak`: every test holds an `Arc` while it runs, the fixture is built by
//! the first test that finds none alive, and it is torn down by its drop
//! guards when the last test holding it ends. Tests that run one after the
//! other on a single test thread each build it again: correct, only slower.

use std::sync::{Arc, Mutex, Weak};

use anyhow::Result;

/// A fixture of type `T`, built on demand and shared while any test uses it.
pub struct SharedFixture<T> {
    current: Mutex<Weak<T>>,
}

impl<T> SharedFixture<T> {
    pub const fn new() -> SharedFixture<T> {
        SharedFixture {
            current: Mutex::new(Weak::new()),
        }
    }

    /// The live fixture, or a new one made by `start`. Tests that ask while
    /// another test builds it wait for that one instead of building two.
    pub fn get_or_start(&self, start: impl FnOnce() -> Result<T>) -> Result<Arc<T>> {
        // A test that panicked while building leaves nothing half-made
        // behind the lock: the `Weak` is only replaced once `start` succeeds.
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(fixture) = current.upgrade() {
            return Ok(fixture);
        }
        let fixture = Arc::new(start()?);
        *current = Arc::downgrade(&fixture);
        Ok(fixture)
    }
}

impl<T> Default for SharedFixture<T> {
    fn default() -> SharedFixture<T> {
        SharedFixture::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tests_that_overlap_share_one_fixture_and_a_later_test_builds_a_new_one() {
        let fixture = SharedFixture::new();
        let mut built = 0;
        let first = fixture
            .get_or_start(|| {
                built += 1;
                Ok(built)
            })
            .unwrap();
        let second = fixture.get_or_start(|| Ok(99)).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        drop((first, second));
        let third = fixture.get_or_start(|| Ok(3)).unwrap();
        assert_eq!(*third, 3, "the last user's drop tore the first one down");
    }
}
