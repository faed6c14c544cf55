//! Per-worker state: what the pool's initializer returned, kept in the worker process.

use std::any::Any;
use std::cell::RefCell;

thread_local! {
    /// Tasks run on the worker's main thread, the thread that ran the initializer.
    static STATE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

pub(super) fn set(state: Box<dyn Any>) {
    STATE.with(|c| *c.borrow_mut() = Some(state));
}

/// Gives a pool task access to the value its worker's initializer returned.
///
/// A pool built with [`PoolBuilder::initializer`](crate::PoolBuilder::initializer) runs the
/// initializer once in every worker process (and in every replacement worker) before the
/// worker takes tasks; the value it returns stays in that process. A task calls
/// `with_worker_state` to borrow it mutably: a database connection, a loaded model, a cache,
/// a counter. The state never crosses a process boundary, so it needs no serde traits.
///
/// Returns `None` when the calling thread is not a pool worker's task thread, when the pool
/// has no initializer, or when the state is not an `S`. A nested call from inside `f` also
/// returns `None` (the state is lent out once at a time).
///
/// ```
/// use multiproc::{with_worker_state, Pool};
///
/// // Each worker counts the tasks it ran, starting from the initializer's argument.
/// let pool = Pool::builder()
///     .processes(2)
///     .initializer(|start: u64| start, 100u64)
///     .build()?;
/// let seen: Vec<u64> = pool.map(
///     |_: u32| with_worker_state(|n: &mut u64| { *n += 1; *n }).unwrap(),
///     0..10u32,
/// )?;
/// assert!(seen.iter().all(|&n| n > 100));
/// # Ok::<(), multiproc::Error>(())
/// ```
pub fn with_worker_state<S: 'static, T>(f: impl FnOnce(&mut S) -> T) -> Option<T> {
    let mut boxed = STATE.with(|c| c.borrow_mut().take())?;
    /// Puts the state back even if `f` panics (the worker survives a panicking task).
    struct Restore(Option<Box<dyn Any>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(b) = self.0.take() {
                STATE.with(|c| *c.borrow_mut() = Some(b));
            }
        }
    }
    let result = boxed.downcast_mut::<S>().map(|_| ());
    let mut guard = Restore(Some(boxed));
    result?;
    let s = guard
        .0
        .as_mut()
        .and_then(|b| b.downcast_mut::<S>())
        .expect("checked above");
    Some(f(s))
}
