//! Process-shared **robust** mutexes: glibc `pthread_mutex_t` with `PTHREAD_PROCESS_SHARED`
//! and `PTHREAD_MUTEX_ROBUST`, living in a 64-byte slot of a shared [`Mapping`]'s control
//! region.
//!
//! Robustness is the kernel's: glibc links every robust mutex a thread holds into that thread's
//! robust list (registered with `set_robust_list`), and when the thread dies, however it dies
//! (SIGKILL included), the kernel walks the list, marks each mutex `FUTEX_OWNER_DIED` and wakes
//! a waiter. The next locker gets [`Acquired::OwnerDied`] instead of blocking forever; it must
//! repair the protected state and call [`mark_consistent`] before unlocking, or the mutex
//! becomes permanently unusable (`ENOTRECOVERABLE`). If the repairer dies too, the next
//! locker is told `OwnerDied` again, so repairs must be idempotent.
//!
//! glibc re-registers an empty robust list in a forked child, so a forked copy never "owns"
//! its parent's mutexes. The owner is recorded by thread id in the shared word, so pid reuse
//! cannot confuse it: the kernel marks the word at the moment of death.
//!
//! macOS has no robust mutexes: a replacement would store the owner's pid (plus its start time,
//! against pid reuse) in the lock word and let waiters sleep in slices, checking the owner's
//! liveness between them.
//!
//! Contract of every function here: the slot at `off` holds a mutex set up by [`init`] (the
//! queue checks its header's magic and version before touching a slot) and the processes that
//! share the segment do not write to the slot except through these functions.

use std::io;
use std::mem::{align_of, size_of, MaybeUninit};
use std::time::{Duration, Instant};

use super::shm::Mapping;

/// Bytes reserved for one mutex in the control region (one cache line).
pub(crate) const SLOT: usize = 64;
const _: () = assert!(size_of::<libc::pthread_mutex_t>() <= SLOT);

/// How a lock was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// The previous owner unlocked it.
    Clean,
    /// The previous owner died holding it: repair, then [`mark_consistent`].
    OwnerDied,
}

fn slot(map: &Mapping, off: usize) -> *mut libc::pthread_mutex_t {
    map.control_ptr(
        off,
        size_of::<libc::pthread_mutex_t>(),
        align_of::<libc::pthread_mutex_t>(),
    )
    .cast()
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Initialises the slot at `off` as an unlocked, process-shared, robust mutex. Call once, in
/// the creating process, before the segment is shared.
pub(crate) fn init(map: &Mapping, off: usize) -> io::Result<()> {
    let m = slot(map, off);
    let mut attr = MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
    // SAFETY: `attr` is initialised by `pthread_mutexattr_init` before any other use and
    // destroyed once; `m` points to an in-bounds, aligned slot that nobody else uses yet.
    unsafe {
        check(libc::pthread_mutexattr_init(attr.as_mut_ptr()))?;
        let res = (|| {
            check(libc::pthread_mutexattr_setpshared(
                attr.as_mut_ptr(),
                libc::PTHREAD_PROCESS_SHARED,
            ))?;
            check(libc::pthread_mutexattr_setrobust(
                attr.as_mut_ptr(),
                libc::PTHREAD_MUTEX_ROBUST,
            ))?;
            check(libc::pthread_mutex_init(m, attr.as_ptr()))
        })();
        libc::pthread_mutexattr_destroy(attr.as_mut_ptr());
        res
    }
}

fn acquired(rc: libc::c_int) -> io::Result<Acquired> {
    match rc {
        0 => Ok(Acquired::Clean),
        libc::EOWNERDEAD => Ok(Acquired::OwnerDied),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Locks, waiting until `deadline` (none: no limit).
///
/// # Errors
/// `TimedOut` when the deadline passes; `ENOTRECOVERABLE` if an earlier owner unlocked
/// without repairing; `EDEADLK` if this thread already holds it.
pub(crate) fn lock(map: &Mapping, off: usize, deadline: Option<Instant>) -> io::Result<Acquired> {
    let m = slot(map, off);
    let Some(deadline) = deadline else {
        // SAFETY: `m` is a valid, initialised process-shared mutex (module contract).
        return acquired(unsafe { libc::pthread_mutex_lock(m) });
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return match try_lock(map, off)? {
                Some(a) => Ok(a),
                None => Err(io::ErrorKind::TimedOut.into()),
            };
        }
        // pthread_mutex_timedlock measures against CLOCK_REALTIME (pthread_mutex_clocklock
        // needs glibc 2.30): wait in slices of at most a second and re-check the monotonic
        // deadline, so a wall-clock jump can stretch a wait by a second at most.
        let abs = realtime_after(left.min(Duration::from_secs(1)));
        // SAFETY: as above; `abs` is a valid timespec.
        let rc = unsafe { libc::pthread_mutex_timedlock(m, &abs) };
        if rc != libc::ETIMEDOUT {
            return acquired(rc);
        }
    }
}

fn realtime_after(d: Duration) -> libc::timespec {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    let mut sec = now.tv_sec.saturating_add(d.as_secs() as i64);
    let mut nsec = now.tv_nsec + i64::from(d.subsec_nanos());
    if nsec >= 1_000_000_000 {
        nsec -= 1_000_000_000;
        sec = sec.saturating_add(1);
    }
    libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec as _,
    }
}

/// Locks if nobody holds it; `Ok(None)` if somebody does.
///
/// # Errors
/// As [`lock`].
pub(crate) fn try_lock(map: &Mapping, off: usize) -> io::Result<Option<Acquired>> {
    let m = slot(map, off);
    // SAFETY: `m` is a valid, initialised process-shared mutex (module contract).
    match unsafe { libc::pthread_mutex_trylock(m) } {
        libc::EBUSY => Ok(None),
        rc => acquired(rc).map(Some),
    }
}

/// Whether the owner of the mutex may have died without anybody repairing yet: a plain read
/// of the lock word, for callers that want to repair early without contending for the lock.
/// May err towards `true`, never towards `false` while the mark is set.
pub(crate) fn maybe_owner_died(map: &Mapping, off: usize) -> bool {
    if cfg!(target_env = "gnu") {
        // glibc: `__lock`, the first `int` of every pthread_mutex_t, is the futex word in
        // which the kernel sets FUTEX_OWNER_DIED when the owner dies.
        let word = map.control_ptr(off, 4, 4);
        // SAFETY: in bounds and aligned (checked); glibc and the kernel only change this word
        // atomically, and we only load it.
        let word = unsafe { std::sync::atomic::AtomicU32::from_ptr(word.cast()) };
        word.load(std::sync::atomic::Ordering::Relaxed) & libc::FUTEX_OWNER_DIED != 0
    } else {
        true
    }
}

/// Declares the state the mutex protects repaired after [`Acquired::OwnerDied`].
pub(crate) fn mark_consistent(map: &Mapping, off: usize) -> io::Result<()> {
    let m = slot(map, off);
    // SAFETY: `m` is a valid, initialised mutex that this thread holds.
    check(unsafe { libc::pthread_mutex_consistent(m) })
}

/// Unlocks a mutex this thread holds.
pub(crate) fn unlock(map: &Mapping, off: usize) -> io::Result<()> {
    let m = slot(map, off);
    // SAFETY: `m` is a valid, initialised mutex; a robust mutex rejects (EPERM) an unlock by a
    // thread that does not own it instead of corrupting it.
    check(unsafe { libc::pthread_mutex_unlock(m) })
}
