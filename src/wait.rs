//! The one timeout rule and the two waiting helpers every layer uses.
//!
//! - **Timeouts** become deadlines with [`deadline_after`]: a timeout so large that
//!   `Instant::now() + timeout` overflows means *no deadline* (block), as in crossbeam-channel, so
//!   `join_timeout(Duration::MAX)` simply waits. Internally a deadline is always an
//!   `Option<Instant>`, `None` meaning "wait forever".
//! - **Locks** are taken with [`lock`]: a poisoned std mutex is used anyway (every critical section
//!   in the crate keeps its data consistent before anything that can panic).
//! - **Condition waits** go through [`wait_until`], which loops over spurious wake-ups and returns
//!   once the predicate holds or the deadline passes.
//!
//! This module uses only `std`; it sits at the bottom of the crate next to `sys`.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The deadline `timeout` from now, or `None` (no deadline) if that instant is not representable.
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// Time left until `deadline` (`None` = forever); `Some(Duration::ZERO)` once it has passed.
pub(crate) fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

/// Locks `m`, ignoring poisoning.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Locks `m` if no other thread holds it, ignoring poisoning. For locks that a child forked
/// while another thread held them must skip rather than wait for forever.
pub(crate) fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// Waits on `cv` until `done(&mut state)` is true or `deadline` passes.
///
/// Returns the guard and whether `done` held (it is checked once more after the deadline).
pub(crate) fn wait_until<'a, T>(
    cv: &Condvar,
    mut guard: MutexGuard<'a, T>,
    deadline: Option<Instant>,
    mut done: impl FnMut(&mut T) -> bool,
) -> (MutexGuard<'a, T>, bool) {
    loop {
        if done(&mut guard) {
            return (guard, true);
        }
        guard = match deadline {
            None => cv.wait(guard).unwrap_or_else(|p| p.into_inner()),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return (guard, false);
                }
                cv.wait_timeout(guard, d - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn overflowing_timeout_means_no_deadline() {
        assert_eq!(deadline_after(Duration::MAX), None);
        assert!(deadline_after(Duration::from_secs(1)).is_some());
        assert_eq!(remaining(None), None);
        let past = Instant::now();
        assert_eq!(remaining(Some(past)), Some(Duration::ZERO));
    }

    #[test]
    fn try_lock_skips_a_held_lock_and_ignores_poison() {
        let m = Arc::new(Mutex::new(1u32));
        let held = lock(&m);
        assert!(try_lock(&m).is_none());
        drop(held);
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = lock(&m2);
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(try_lock(&m).map(|g| *g), Some(1));
    }

    #[test]
    fn wait_until_returns_at_deadline_or_when_done() {
        let m = Mutex::new(0u32);
        let cv = Condvar::new();
        let t0 = Instant::now();
        let (_g, ok) = wait_until(
            &cv,
            lock(&m),
            deadline_after(Duration::from_millis(30)),
            |v| *v > 0,
        );
        assert!(!ok);
        assert!(t0.elapsed() >= Duration::from_millis(30));

        let pair = Arc::new((Mutex::new(0u32), Condvar::new()));
        let p2 = pair.clone();
        let t = std::thread::spawn(move || {
            *lock(&p2.0) = 1;
            p2.1.notify_all();
        });
        let (g, ok) = wait_until(&pair.1, lock(&pair.0), None, |v| *v == 1);
        assert!(ok && *g == 1);
        drop(g);
        t.join().unwrap();
    }
}
