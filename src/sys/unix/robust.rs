//! Process-shared **robust** locks in a [`Mapping`]'s control region: our own futex lock whose
//! every word value is either valid or detected, so that a segment scribbled on by another
//! process gives errors or waits, never a crash.
//!
//! (glibc's robust `pthread_mutex_t` is not usable here: its lock word, kind and list pointers
//! live in the shared slot, and a garbage slot makes glibc abort, e.g. in
//! `__pthread_tpp_change_priority`, or follow garbage robust-list pointers.)
//!
//! # The slot
//!
//! ```text
//! offset 0   owner  u64: 0 = free; else  start (32) | CONTENDED (1) | tid (31)
//! offset 8   seq    u32: futex word, bumped by an unlock that saw CONTENDED
//! ```
//!
//! `tid` is the owning thread's kernel thread id, `start` the low 32 bits of that thread's
//! start time (`/proc/<tid>/stat` field 22, clock ticks since boot): together they name a
//! thread even after its id is reused. `CONTENDED` says that a waiter may sleep on `seq`.
//!
//! # Locking
//!
//! * **Fast path**: compare-exchange `owner` from 0 to our identity.
//! * **Slow path** (the drepper/std futex mutex with a separate wake word): read `seq`, set
//!   `CONTENDED` on the held word, then `FUTEX_WAIT` on `seq` for at most [`TICK`]; an unlock
//!   clears `owner`, and if it saw `CONTENDED` bumps `seq` and wakes one waiter, which takes the
//!   lock with `CONTENDED` set (others may still sleep). A waiter that reads `seq` before the
//!   unlock either fails its compare-exchange (the word changed) or is woken.
//! * **Dead owners**: at each tick a waiter checks that the owner named by the word still
//!   exists (`/proc/<tid>/stat`: gone, a zombie, or started at another time means dead) and, if
//!   not, takes the lock over with one compare-exchange: [`Acquired::OwnerDied`]. So a holder
//!   that dies (any signal, `SIGKILL` included) blocks others for at most one tick. A repairer
//!   that dies is itself a dead owner, so the next locker is told `OwnerDied` again: repairs
//!   must be idempotent (the queue's are).
//!
//! # Every value is valid or detected
//!
//! * `owner` with a `tid` of 0, or naming the calling thread (which never locks twice), is
//!   stale: the caller takes it over as `OwnerDied` at once.
//! * `owner` naming a thread that does not exist (any random value, almost surely) is a dead
//!   owner: taken over at the next tick.
//! * `owner` naming a live thread of some process: the lock is held; timed waits time out.
//! * An unlock that finds another owner than itself reports an error instead of freeing it.
//! * `seq` is only compared with itself: garbage costs at most a spurious wake.
//!
//! Ownership is per *thread*, as with glibc's robust mutexes; a forked child starts with new
//! thread ids, so it never owns its parent's locks (the identity cache is reset by a
//! `pthread_atfork` child handler). Lock holders and waiters must share a pid namespace (they
//! do: the segment travels between related processes). Without `/proc`, dead owners cannot be
//! told apart from live ones: the locks still work, crash repair does not.
//!
//! macOS would use the same word (pid + start time from `proc_pidinfo`) with
//! `os_sync_wait_on_address`.

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};
use std::sync::Once;
use std::time::{Duration, Instant};

use super::futex;
use super::shm::Mapping;

/// Bytes reserved for one lock in the control region (one cache line).
pub(crate) const SLOT: usize = 64;
/// The slot layout's version, stored in the queue header so that a segment made by a build with
/// another lock format is refused.
pub(crate) const FORMAT: u32 = 2;
/// How long a waiter sleeps before it checks that the owner is still alive.
pub(crate) const TICK: Duration = Duration::from_millis(50);

const TID_MASK: u64 = 0x7fff_ffff;
const CONTENDED: u64 = 1 << 31;

/// How a lock was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// The previous owner unlocked it.
    Clean,
    /// The previous owner died holding it (or the word was garbage): repair before unlocking.
    OwnerDied,
}

fn owner(map: &Mapping, off: usize) -> &AtomicU64 {
    map.atomic_u64(off)
}

fn seq(map: &Mapping, off: usize) -> &AtomicU32 {
    map.atomic_u32(off + 8)
}

/// Initialises the slot at `off` as an unlocked lock. Call once, in the creating process,
/// before the segment is shared.
pub(crate) fn init(map: &Mapping, off: usize) {
    owner(map, off).store(0, Relaxed);
    seq(map, off).store(0, Relaxed);
}

// ---------------------------------------------------------------------------------------------
// Identities
// ---------------------------------------------------------------------------------------------

/// Bumped in every forked child, so that a thread's cached identity is recomputed there.
static FORKS: AtomicU32 = AtomicU32::new(0);

extern "C" fn forked_child() {
    // Async-signal-safe: one atomic add, no lock, no allocation.
    FORKS.fetch_add(1, Relaxed);
}

thread_local! {
    /// This thread's identity word and the `FORKS` value it was computed under (0: none yet).
    static ME: Cell<(u32, u64)> = const { Cell::new((0, 0)) };
}

/// Registers the fork handler that invalidates cached identities, once per process.
///
/// Called on a thread's first lock, and by every `Fork` launch before it forks, so that a child
/// never inherits this `Once` half-run from another thread.
pub(crate) fn prepare_fork() {
    static ATFORK: Once = Once::new();
    ATFORK.call_once(|| {
        // SAFETY: registers a handler that only performs an atomic add (async-signal-safe);
        // the function lives for the whole program.
        let _ = unsafe { libc::pthread_atfork(None, None, Some(forked_child)) };
    });
}

/// This thread's identity: `start << 32 | tid` (`start` 0 if `/proc` cannot tell it).
fn me() -> u64 {
    let forks = FORKS.load(Relaxed);
    let (at, word) = ME.get();
    if word != 0 && at == forks {
        return word;
    }
    prepare_fork();
    // The handler is registered before any identity is cached, so every cached identity
    // belongs to the thread (and process) that caches it.
    let forks = FORKS.load(Relaxed);
    let tid = rustix::thread::gettid().as_raw_nonzero().get() as u64 & TID_MASK;
    let start = match thread_stat(tid) {
        Stat::Alive { start, .. } => start,
        _ => 0,
    };
    let word = u64::from(start) << 32 | tid;
    ME.set((forks, word));
    word
}

/// What `/proc/<tid>/stat` says about a thread.
enum Stat {
    /// No such thread.
    Gone,
    /// Exited, not yet reaped; `threads` = its process's thread count (more than 1: the main
    /// thread exited and the process lives on).
    Zombie { threads: u64 },
    /// Running or sleeping; `start` = low 32 bits of its start time (clock ticks).
    Alive { start: u32 },
    /// `/proc` could not tell (not mounted, not permitted).
    Unknown,
}

fn thread_stat(tid: u64) -> Stat {
    use std::io::Read;
    let mut buf = [0u8; 1024];
    let read = std::fs::File::open(format!("/proc/{tid}/stat")).and_then(|mut f| {
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        Ok(n)
    });
    let n = match read {
        Ok(n) => n,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH)) => {
            return Stat::Gone
        }
        Err(_) => return Stat::Unknown,
    };
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so parse after the
    // last ')'. Field 3 is the state, field 20 the thread count, field 22 the start time.
    let text = &buf[..n];
    let Some(close) = text.iter().rposition(|b| *b == b')') else {
        return Stat::Unknown;
    };
    let rest = std::str::from_utf8(&text[close + 1..]).unwrap_or("");
    let fields: Vec<&str> = rest.split_ascii_whitespace().take(20).collect();
    let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match fields.first() {
        Some(&"Z") | Some(&"X") | Some(&"x") => Stat::Zombie {
            threads: number(17).unwrap_or(1),
        },
        Some(_) => number(19).map_or(Stat::Unknown, |start| Stat::Alive {
            start: start as u32,
        }),
        None => Stat::Unknown,
    }
}

/// Whether a thread or process found `Alive` with `start` is the one an identity word named.
/// (An owner always reads its own start time where `/proc` lets a checker read it.)
fn same_start(word: u64, start: u32) -> bool {
    (word >> 32) as u32 == start
}

/// This process's identity, `start << 32 | pid`, for marks that belong to a process rather
/// than a thread (the queue's resumable partial item). Reads `/proc`: for rare events.
pub(crate) fn process_identity() -> u64 {
    let pid = u64::from(std::process::id()) & TID_MASK;
    let start = match thread_stat(pid) {
        Stat::Alive { start } => start,
        _ => 0,
    };
    u64::from(start) << 32 | pid
}

/// Whether the process named by a [`process_identity`] word may still be alive (any word is
/// accepted: garbage names no process).
pub(crate) fn process_alive(word: u64) -> bool {
    let pid = word & TID_MASK;
    if pid == 0 {
        return false;
    }
    match thread_stat(pid) {
        Stat::Gone => false,
        Stat::Zombie { threads } => threads > 1,
        Stat::Alive { start } => same_start(word, start),
        Stat::Unknown => true,
    }
}

/// Whether the thread named by a held `owner` word may still hold it.
fn owner_alive(word: u64) -> bool {
    let tid = word & TID_MASK;
    if tid == 0 || tid == me() & TID_MASK {
        return false;
    }
    match thread_stat(tid) {
        Stat::Gone | Stat::Zombie { .. } => false,
        Stat::Alive { start } => same_start(word, start),
        Stat::Unknown => true,
    }
}

/// A held word that is stale without asking `/proc`: no owner, or the calling thread (which
/// never takes a lock it holds).
fn stale(word: u64) -> bool {
    let tid = word & TID_MASK;
    tid == 0 || tid == me() & TID_MASK
}

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

/// Takes the lock from `from` (0, or a dead owner's word) with one compare-exchange.
fn take(map: &Mapping, off: usize, from: u64, contended: bool) -> Option<Acquired> {
    let new = me() | if contended { CONTENDED } else { 0 };
    owner(map, off)
        .compare_exchange(from, new, Acquire, Relaxed)
        .ok()
        .map(|_| {
            if from == 0 {
                Acquired::Clean
            } else {
                Acquired::OwnerDied
            }
        })
}

/// Locks if nobody holds it (or the word is stale); `None` if somebody may. Cheap: never asks
/// `/proc`.
pub(crate) fn try_lock(map: &Mapping, off: usize) -> Option<Acquired> {
    let w = owner(map, off).load(Relaxed);
    if w == 0 || stale(w) {
        return take(map, off, w, false);
    }
    None
}

/// As [`try_lock`], and if the lock is held, takes it over when its owner is dead (a read of
/// `/proc`).
pub(crate) fn try_lock_or_take_over(map: &Mapping, off: usize) -> Option<Acquired> {
    if let Some(a) = try_lock(map, off) {
        return Some(a);
    }
    let w = owner(map, off).load(Relaxed);
    if w != 0 && !owner_alive(w) {
        return take(map, off, w, false);
    }
    None
}

/// Whether the lock is held by an owner that died (so somebody should repair): a read of the
/// word, and of `/proc` when it is held.
pub(crate) fn owner_died(map: &Mapping, off: usize) -> bool {
    let w = owner(map, off).load(Relaxed);
    w != 0 && !owner_alive(w)
}

/// Locks, waiting until `deadline` (none: no limit).
///
/// # Errors
/// `TimedOut` when the deadline passes first.
pub(crate) fn lock(map: &Mapping, off: usize, deadline: Option<Instant>) -> io::Result<Acquired> {
    let (word, seq) = (owner(map, off), seq(map, off));
    loop {
        let s = seq.load(Acquire);
        let w = word.load(Relaxed);
        if w == 0 || stale(w) {
            match take(map, off, w, true) {
                Some(a) => return Ok(a),
                None => continue,
            }
        }
        if w & CONTENDED == 0
            && word
                .compare_exchange(w, w | CONTENDED, Relaxed, Relaxed)
                .is_err()
        {
            continue;
        }
        let tick = Instant::now() + TICK;
        let until = deadline.map_or(tick, |d| d.min(tick));
        if futex::wait(seq, s, Some(until))? == futex::Woken::TimedOut {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return try_lock_or_take_over(map, off)
                    .ok_or_else(|| io::ErrorKind::TimedOut.into());
            }
            let w = word.load(Relaxed);
            if w != 0 && !owner_alive(w) {
                if let Some(a) = take(map, off, w, true) {
                    return Ok(a);
                }
            }
        }
    }
}

/// Unlocks a lock this thread holds.
///
/// # Errors
/// `PermissionDenied` if the word names another owner (someone wrote over it, or took it over
/// believing us dead): the lock is left as it is.
pub(crate) fn unlock(map: &Mapping, off: usize) -> io::Result<()> {
    let mine = me();
    let was = owner(map, off)
        .fetch_update(Release, Relaxed, |w| (w & !CONTENDED == mine).then_some(0))
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the lock is no longer held by this thread",
            )
        })?;
    if was & CONTENDED != 0 {
        let seq = seq(map, off);
        seq.fetch_add(1, Release);
        futex::wake(seq, 1);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// For the sync primitives (additions: identities of waiters, and a held lock that lends the
// bytes it guards)
// ---------------------------------------------------------------------------------------------

/// The calling thread's identity word (`start << 32 | tid`), as an owner word holds it: for
/// records that name a waiting thread (a Condition or Barrier waiter's slot).
pub(crate) fn thread_identity() -> u64 {
    me()
}

/// Whether the thread named by a [`thread_identity`] word may still be alive; the calling
/// thread is. Any word is accepted: garbage names no live thread (a read of `/proc`).
pub(crate) fn thread_alive(word: u64) -> bool {
    word == me() || owner_alive(word)
}

/// Whether the calling thread holds the lock at `off` (so locking it again would take it over
/// from itself).
pub(crate) fn held_by_me(map: &Mapping, off: usize) -> bool {
    owner(map, off).load(Relaxed) & !CONTENDED == me()
}

/// Polls of a held lock before [`lock_spinning`] sleeps: a holder that releases within a
/// microsecond or two (a short critical section on the other core) costs no system call.
const SPINS: u32 = 100;

/// As [`lock`], for short critical sections contended by other processes: the uncontended
/// fast path (which leaves `CONTENDED` clear, so the unlock makes no system call), then
/// rounds of a short spin and one sleep. A waiter spins again after every wake, so a holder
/// that releases and re-locks at once (a loop) still hands the lock over within a few polls;
/// once it has slept, a waiter takes the lock with `CONTENDED` set (others may sleep). Dead
/// owners and deadlines are handled as in [`lock`].
///
/// # Errors
/// As for [`lock`].
pub(crate) fn lock_spinning(
    map: &Mapping,
    off: usize,
    deadline: Option<Instant>,
) -> io::Result<Acquired> {
    let (word, seq) = (owner(map, off), seq(map, off));
    let mut slept = false;
    loop {
        for _ in 0..SPINS {
            let w = word.load(Relaxed);
            if w == 0 || stale(w) {
                if let Some(a) = take(map, off, w, slept) {
                    return Ok(a);
                }
            }
            std::hint::spin_loop();
        }
        let s = seq.load(Acquire);
        let w = word.load(Relaxed);
        if w == 0 || stale(w) {
            match take(map, off, w, true) {
                Some(a) => return Ok(a),
                None => continue,
            }
        }
        if w & CONTENDED == 0
            && word
                .compare_exchange(w, w | CONTENDED, Relaxed, Relaxed)
                .is_err()
        {
            continue;
        }
        slept = true;
        let tick = Instant::now() + TICK;
        let until = deadline.map_or(tick, |d| d.min(tick));
        if futex::wait(seq, s, Some(until))? == futex::Woken::TimedOut {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return try_lock_or_take_over(map, off)
                    .ok_or_else(|| io::ErrorKind::TimedOut.into());
            }
            let w = word.load(Relaxed);
            if w != 0 && !owner_alive(w) {
                if let Some(a) = take(map, off, w, true) {
                    return Ok(a);
                }
            }
        }
    }
}

/// A lock at `off` that this thread holds and that guards the data range `[data, data + len)`
/// of the same mapping; unlocks on drop. The only way to borrow shared data bytes.
#[derive(Debug)]
pub(crate) struct Held<'a> {
    map: &'a Mapping,
    off: usize,
    data: usize,
    len: usize,
    /// This thread's identity (the owner word while uncontended).
    mine: u64,
}

impl<'a> Held<'a> {
    /// Locks `off` (waiting until `deadline`; `nonblocking`: not at all) for the data range
    /// `[data, data + len)`, which the caller's protocol guards with this lock alone.
    ///
    /// # Errors
    /// `TimedOut` when the deadline passes (or at once when `nonblocking`); `Deadlock` when
    /// this thread holds the lock already.
    pub(crate) fn lock(
        map: &'a Mapping,
        off: usize,
        data: usize,
        len: usize,
        deadline: Option<Instant>,
        nonblocking: bool,
    ) -> io::Result<(Held<'a>, Acquired)> {
        // The fast path: one compare-exchange from free (which never takes over, so a lock
        // this thread holds is refused below rather than taken from itself).
        let mine = me();
        if owner(map, off)
            .compare_exchange(0, mine, Acquire, Relaxed)
            .is_ok()
        {
            return Ok((
                Held {
                    map,
                    off,
                    data,
                    len,
                    mine,
                },
                Acquired::Clean,
            ));
        }
        if held_by_me(map, off) {
            return Err(io::ErrorKind::Deadlock.into());
        }
        let got = if nonblocking {
            try_lock_or_take_over(map, off).ok_or_else(|| io::ErrorKind::TimedOut.into())
        } else {
            lock_spinning(map, off, deadline)
        }?;
        Ok((
            Held {
                map,
                off,
                data,
                len,
                mine,
            },
            got,
        ))
    }

    /// The guarded bytes, to read.
    pub(crate) fn bytes(&self) -> &[u8] {
        let p = self.map.data_ptr(self.data, self.len);
        // SAFETY: as in `bytes_mut`; a shared borrow of `self` excludes the mutable one.
        unsafe { std::slice::from_raw_parts(p, self.len) }
    }

    /// The guarded bytes.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        let p = self.map.data_ptr(self.data, self.len);
        // SAFETY: `p..p+len` is inside the mapping's data region (checked by `data_ptr`) and
        // lives as long as `self.map`. The protocol guards this range with the lock this value
        // holds, so no other thread of any process following it touches the bytes while the
        // borrow (of `self`, mutably) lasts; `lock` refuses a second `Held` in this thread, and
        // other threads wait for the lock. A process that ignores the protocol can only change
        // the values (any bytes are valid for the plain-data types lent out), not their layout.
        unsafe { std::slice::from_raw_parts_mut(p, self.len) }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        // Uncontended: one compare-exchange. Otherwise (CONTENDED set, or the word changed)
        // the full unlock, which fails only if somebody wrote over the owner word.
        if owner(self.map, self.off)
            .compare_exchange(self.mine, 0, Release, Relaxed)
            .is_err()
        {
            let _ = unlock(self.map, self.off);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn segment() -> (std::os::fd::OwnedFd, Mapping) {
        let fd = super::super::shm::create("robust-test", 8192).unwrap();
        let map = Mapping::map(fd.as_fd(), 8192, 4096).unwrap();
        init(&map, 0);
        (fd, map)
    }

    #[test]
    fn lock_unlock_and_contention() {
        let (_fd, map) = segment();
        assert_eq!(try_lock(&map, 0), Some(Acquired::Clean));
        unlock(&map, 0).unwrap();
        assert!(unlock(&map, 0).is_err(), "unlocking a free lock");
        let map = std::sync::Arc::new(map);
        let counter = std::sync::Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (map, counter) = (map.clone(), counter.clone());
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        assert_eq!(lock(&map, 0, None).unwrap(), Acquired::Clean);
                        // Not atomic as a whole: only correct under mutual exclusion.
                        let v = counter.load(Relaxed);
                        counter.store(v + 1, Relaxed);
                        unlock(&map, 0).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(counter.load(Relaxed), 8000);
    }

    #[test]
    fn a_timed_lock_times_out_while_a_live_thread_holds_it() {
        let (_fd, map) = segment();
        let map = std::sync::Arc::new(map);
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let m2 = map.clone();
        let holder = std::thread::spawn(move || {
            lock(&m2, 0, None).unwrap();
            tx.send(()).unwrap();
            done_rx.recv().unwrap();
            unlock(&m2, 0).unwrap();
        });
        rx.recv().unwrap();
        let t = Instant::now();
        let e = lock(&map, 0, Some(Instant::now() + TICK * 3)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(t.elapsed() >= TICK * 3);
        assert!(!owner_died(&map, 0), "a live owner is not dead");
        done_tx.send(()).unwrap();
        holder.join().unwrap();
        assert_eq!(lock(&map, 0, None).unwrap(), Acquired::Clean);
        unlock(&map, 0).unwrap();
    }

    #[test]
    fn garbage_words_are_taken_over_or_waited_for() {
        let (_fd, map) = segment();
        // A thread that has exited: its id names nothing (or a newer thread started later).
        let dead = std::thread::spawn(me).join().unwrap();
        for w in [
            CONTENDED,
            !TID_MASK,
            dead,
            dead | CONTENDED,
            me(),
            0x7fff_fff0,
        ] {
            owner(&map, 0).store(w, Relaxed);
            assert!(owner_died(&map, 0), "{w:#x}");
            let a = lock(&map, 0, Some(Instant::now() + TICK * 20)).unwrap();
            assert_eq!(a, Acquired::OwnerDied, "{w:#x}");
            unlock(&map, 0).unwrap();
        }
        // Somebody else's identity written over ours: unlock refuses and leaves it.
        lock(&map, 0, None).unwrap();
        owner(&map, 0).store(dead, Relaxed);
        assert!(unlock(&map, 0).is_err());
        assert_eq!(owner(&map, 0).load(Relaxed), dead);
        assert_eq!(try_lock_or_take_over(&map, 0), Some(Acquired::OwnerDied));
        unlock(&map, 0).unwrap();
    }

    #[test]
    fn stat_of_this_thread_is_alive_and_identity_is_cached() {
        let word = me();
        assert_eq!(word, me());
        assert_ne!(word & TID_MASK, 0);
        assert!(matches!(thread_stat(word & TID_MASK), Stat::Alive { .. }));
        assert!(matches!(thread_stat(TID_MASK), Stat::Gone));
        let me = process_identity();
        assert!(process_alive(me));
        assert!(!process_alive(0) && !process_alive(TID_MASK));
        assert!(
            !process_alive(me ^ 1 << 40),
            "another start time is another process"
        );
    }
}
