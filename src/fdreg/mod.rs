//! The descriptor registry: the one list of live multiproc descriptors in this process.
//!
//! Every descriptor multiproc owns (connection and control sockets, pipes, pidfds, the
//! lifeline, queue segments, the duplicates that travel inside messages, and every descriptor
//! that arrives with one) is a [`RegisteredFd`]. It is put on the list by the function that
//! creates it, *under the registry lock, in the same critical section as the system call*,
//! and taken off again by its `Drop`, which closes it under the same lock. So at every instant
//! the list is exactly the set of open multiproc descriptors.
//!
//! Why: a `Fork` child is a copy of the whole descriptor table. A copy of, say, the write end
//! of another child's stream kept open in a forked sibling hides that stream's end-of-file
//! from its reader for as long as the sibling lives. `spawn/fork.rs` therefore holds
//! [`ForkGuard`] across `fork()`: the list cannot change meanwhile, and in the child every
//! descriptor on it except the child's own is made a dead socket (see
//! [`ForkGuard::into_child`]). `spawn/README.md` has the whole fork-safety protocol.
//!
//! The creators: [`socketpair`], [`pipe`], [`memfd`], [`shm_open`], [`pidfd_open`], [`duplicate`] (and
//! [`RegisteredFd::try_clone`]) and [`recv`] for descriptors that arrive by `recvmsg`. The
//! last one is the subtle one: a received descriptor exists as soon as the kernel installs
//! it, inside the `recvmsg` call. Receivers therefore hold the *fork gate* (a read lock, so
//! they do not serialise each other) across the call, which never blocks under it
//! (`MSG_DONTWAIT`; a receiver that finds nothing waits for readability with the gate
//! released), and register what arrived before releasing it. A fork takes the gate for
//! writing, so it never happens in the middle of a receive.
//!
//! Lock order: the gate, then the list. Nothing is called with either held except the system
//! call it protects and the allocation of the list's words.
//!
//! This module sits directly above `sys` (and the std-only `wait`): everything that holds a
//! descriptor builds on it.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::sys;
use crate::wait::lock;

/// A set of descriptor numbers, one bit each (descriptors are small integers, so this is a
/// few words, with O(1) insertion and removal).
#[derive(Debug)]
struct Set {
    words: Vec<u64>,
    len: usize,
}

impl Set {
    const fn new() -> Self {
        Set {
            words: Vec::new(),
            len: 0,
        }
    }

    fn insert(&mut self, fd: RawFd) {
        let Ok(i) = usize::try_from(fd) else { return };
        let (w, b) = (i / 64, i % 64);
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        if self.words[w] & (1 << b) == 0 {
            self.words[w] |= 1 << b;
            self.len += 1;
        }
    }

    fn remove(&mut self, fd: RawFd) -> bool {
        let Ok(i) = usize::try_from(fd) else {
            return false;
        };
        let (w, b) = (i / 64, i % 64);
        match self.words.get_mut(w) {
            Some(word) if *word & (1 << b) != 0 => {
                *word &= !(1 << b);
                self.len -= 1;
                true
            }
            _ => false,
        }
    }

    #[cfg(test)]
    fn contains(&self, fd: RawFd) -> bool {
        usize::try_from(fd).is_ok_and(|i| {
            self.words
                .get(i / 64)
                .is_some_and(|word| word & (1 << (i % 64)) != 0)
        })
    }

    fn iter(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            (0..64)
                .filter(move |b| word & (1u64 << b) != 0)
                .map(move |b| (w * 64 + b) as RawFd)
        })
    }
}

/// The list. Lock order: [`GATE`] before this.
static LIST: Mutex<Set> = Mutex::new(Set::new());

/// Held for reading across every `recvmsg` that may install descriptors, for writing across
/// `fork()`.
static GATE: RwLock<()> = RwLock::new(());

fn list() -> MutexGuard<'static, Set> {
    lock(&LIST)
}

fn gate_read() -> RwLockReadGuard<'static, ()> {
    GATE.read().unwrap_or_else(|p| p.into_inner())
}

fn gate_write() -> RwLockWriteGuard<'static, ()> {
    GATE.write().unwrap_or_else(|p| p.into_inner())
}

/// An open multiproc descriptor, on the registry's list from its creation to its `Drop`.
///
/// Dropping it takes it off the list and closes it in one critical section, so a concurrent
/// `Fork` sees it either listed or closed. Obtain one only from this module's creators.
pub(crate) struct RegisteredFd {
    /// `Some` until `drop`.
    fd: Option<OwnedFd>,
}

impl RegisteredFd {
    /// Registers `fd`; the caller holds the list (and created `fd` under it).
    fn on(list: &mut Set, fd: OwnedFd) -> RegisteredFd {
        list.insert(fd.as_raw_fd());
        RegisteredFd { fd: Some(fd) }
    }

    fn owned(&self) -> &OwnedFd {
        self.fd
            .as_ref()
            .expect("a registered descriptor lives until drop")
    }

    /// A registered duplicate (close-on-exec) of this descriptor.
    pub(crate) fn try_clone(&self) -> io::Result<RegisteredFd> {
        duplicate(self.as_fd())
    }
}

impl AsFd for RegisteredFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.owned().as_fd()
    }
}

impl AsRawFd for RegisteredFd {
    fn as_raw_fd(&self) -> RawFd {
        self.owned().as_raw_fd()
    }
}

impl fmt::Debug for RegisteredFd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RegisteredFd")
            .field(&self.fd.as_ref().map(|fd| fd.as_raw_fd()))
            .finish()
    }
}

impl Drop for RegisteredFd {
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            let mut l = list();
            l.remove(fd.as_raw_fd());
            drop(fd);
        }
    }
}

/// A connected pair of close-on-exec Unix stream sockets.
pub(crate) fn socketpair() -> io::Result<(RegisteredFd, RegisteredFd)> {
    let mut l = list();
    let (a, b) = sys::socket::socketpair()?;
    Ok((RegisteredFd::on(&mut l, a), RegisteredFd::on(&mut l, b)))
}

/// A close-on-exec pipe `(read, write)`.
pub(crate) fn pipe() -> io::Result<(RegisteredFd, RegisteredFd)> {
    let mut l = list();
    let (r, w) = sys::socket::pipe()?;
    Ok((RegisteredFd::on(&mut l, r), RegisteredFd::on(&mut l, w)))
}

/// An anonymous shared-memory segment of exactly `len` bytes, its size sealed
/// (see `sys::shm::create`).
pub(crate) fn memfd(name: &str, len: u64) -> io::Result<RegisteredFd> {
    let mut l = list();
    let fd = sys::shm::create(name, len)?;
    Ok(RegisteredFd::on(&mut l, fd))
}

/// A named shared-memory segment (`/dev/shm/...`), created exclusively with size `len` or
/// opened (see `sys::shm::open_named`).
pub(crate) fn shm_open(path: &str, create: bool, len: u64) -> io::Result<RegisteredFd> {
    let mut l = list();
    let fd = sys::shm::open_named(path, create, len)?;
    Ok(RegisteredFd::on(&mut l, fd))
}

/// A race-free handle on process `pid` (a pidfd); `Ok(None)` where the kernel has none.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<Option<RegisteredFd>> {
    let mut l = list();
    Ok(sys::process::pidfd_open(pid)?.map(|fd| RegisteredFd::on(&mut l, fd)))
}

/// A registered, close-on-exec duplicate of `fd` (which may be anyone's descriptor: handles
/// duplicate theirs into the side table of a message this way).
pub(crate) fn duplicate(fd: BorrowedFd<'_>) -> io::Result<RegisteredFd> {
    let mut l = list();
    let dup = fd.try_clone_to_owned()?;
    Ok(RegisteredFd::on(&mut l, dup))
}

/// Registers a descriptor that was created without the registry.
///
/// Only for descriptors no concurrent `fork` can have copied unlisted: those a re-executed
/// child inherits and adopts in its constructor (before `main`, with one thread), and test
/// fixtures. Everything else uses a creator above.
pub(crate) fn adopt(fd: OwnedFd) -> RegisteredFd {
    let mut l = list();
    RegisteredFd::on(&mut l, fd)
}

/// Takes a descriptor off the list and closes it although a value still holds its number.
///
/// For a freshly forked child of the single-threaded fork server, which must close the
/// server's stream but never drops (or uses again) the value that owns it.
pub(crate) fn close_forgotten(fd: RawFd) {
    let mut l = list();
    l.remove(fd);
    sys::process::close_raw(fd);
}

/// Reads what is available from socket `fd` into `buf` (blocking until at least one byte or
/// end of stream) and appends, registered, the descriptors that arrived with it. Returns the
/// number of bytes; 0 at end of stream.
///
/// # Errors
///
/// Besides the socket's own errors: descriptors that the kernel had to drop give
/// `InvalidData` when the peer sent more than one frame may carry, `Other` when this process
/// ran out of descriptors (the message says what to do); the bytes read are lost with them
/// (see [`is_truncation`]). Streams use [`recv_keeping_bytes`], which keeps the bytes when
/// this process ran out.
#[cfg(test)] // the crate's streams use `recv_keeping_bytes`
pub(crate) fn recv(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    out: &mut Vec<RegisteredFd>,
) -> io::Result<usize> {
    recv_inner(fd, buf, out, true, false).map(|(n, _)| n)
}

/// Like [`recv`], except that when this process ran out of descriptors the bytes are kept:
/// `Ok((bytes, true))` says the descriptors that came with them were lost (the kernel ends a
/// read right after the bytes that carry descriptors, so the reader knows whose they were).
/// A peer that sent too many is still an error.
pub(crate) fn recv_keeping_bytes(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    out: &mut Vec<RegisteredFd>,
) -> io::Result<(usize, bool)> {
    recv_inner(fd, buf, out, true, true)
}

/// Like [`recv`] but never waits: `WouldBlock` when nothing is there.
pub(crate) fn try_recv(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    out: &mut Vec<RegisteredFd>,
) -> io::Result<usize> {
    recv_inner(fd, buf, out, false, false).map(|(n, _)| n)
}

fn recv_inner(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    out: &mut Vec<RegisteredFd>,
    wait: bool,
    keep_bytes: bool,
) -> io::Result<(usize, bool)> {
    let mut got = Vec::new();
    loop {
        let gate = gate_read();
        let res = sys::socket::recv_with_fds(fd, buf, &mut got);
        if !got.is_empty() {
            let mut l = list();
            out.extend(got.drain(..).map(|f| RegisteredFd::on(&mut l, f)));
        }
        drop(gate);
        match res {
            Ok(r) if r.truncated && r.out_of_fds && keep_bytes => return Ok((r.bytes, true)),
            Ok(r) if r.truncated => return Err(sys::socket::truncation_error(r)),
            Ok(r) => return Ok((r.bytes, false)),
            Err(e) if wait && e.kind() == io::ErrorKind::WouldBlock => {
                // Nothing yet: wait with the gate released (a fork may go ahead meanwhile).
                sys::socket::wait_fd(fd, false, None)?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether `e` (from [`recv`]) reports descriptors the kernel dropped: `Some(true)` when this
/// process ran out of descriptors, `Some(false)` when the peer sent too many.
pub(crate) fn is_truncation(e: &io::Error) -> Option<bool> {
    let ours = e.get_ref().is_some() && e.raw_os_error().is_none();
    match e.kind() {
        io::ErrorKind::Other if ours => Some(true),
        io::ErrorKind::InvalidData if ours => Some(false),
        _ => None,
    }
}

/// The registry's lock, held across `fork()`: while it exists no multiproc descriptor is
/// created, received or closed in this process.
#[derive(Debug)]
pub(crate) struct ForkGuard {
    list: MutexGuard<'static, Set>,
    _gate: RwLockWriteGuard<'static, ()>,
}

/// Takes the registry for a `fork()` (after the global state lock, see `spawn/README.md`).
pub(crate) fn lock_for_fork() -> ForkGuard {
    let gate = gate_write();
    ForkGuard {
        list: list(),
        _gate: gate,
    }
}

impl ForkGuard {
    /// In the child of the fork: every listed descriptor except those in `keep` (the child's
    /// own) becomes a dead socket (reads: end of file, writes: `EPIPE`), keeping its number
    /// taken so the values that still hold it never touch a reused descriptor. The list is
    /// then `keep`: the neutralised numbers belong to values the child never uses or drops.
    ///
    /// # Errors
    ///
    /// Out of descriptors for the one dead socket; the child cannot run safely then.
    pub(crate) fn into_child(mut self, keep: &[RawFd]) -> io::Result<()> {
        let victims: Vec<RawFd> = self.list.iter().filter(|fd| !keep.contains(fd)).collect();
        sys::process::neutralize(&victims)?;
        for fd in victims {
            self.list.remove(fd);
        }
        Ok(())
    }
}

/// Whether `fd` is on the list.
#[cfg(test)]
pub(crate) fn is_registered(fd: RawFd) -> bool {
    list().contains(fd)
}

#[cfg(test)]
mod tests;
