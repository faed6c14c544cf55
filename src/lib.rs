//! # multiproc
//!
//! Python's `multiprocessing`, in Rust: ordinary functions run in real child processes, with
//! typed arguments and return values, and no setup code in `main` or in tests.
//!
//! ## Processes
//!
//! A task is a function item (or a closure that captures nothing) and its arguments, which can
//! be anything serde can serialise. The return value comes back from [`Process::join`]; a panic
//! comes back as an [`Error`] carrying its message.
//!
//! ```
//! use multiproc::Process;
//!
//! fn count_words(text: String) -> usize {
//!     text.split_whitespace().count()
//! }
//!
//! let p = Process::spawn("to be or not to be".to_string(), count_words)?;
//! assert_eq!(p.join()?, 6);
//! assert_eq!(p.exitcode(), Some(0));
//! # Ok::<(), multiproc::Error>(())
//! ```
//!
//! Everything a task needs comes through its arguments, so a closure that captures its
//! environment does not compile:
//!
//! ```compile_fail
//! let base = 10u32;
//! let p = multiproc::Process::spawn(5u32, move |x| x + base); // captures `base`
//! ```
//!
//! ## Start methods
//!
//! [`StartMethod::ForkServer`] (the default) forks children from a small single-threaded server
//! started on first use, so it is safe in programs with threads (test harnesses, tokio, rayon);
//! [`StartMethod::Spawn`] re-executes the program; [`StartMethod::Fork`] forks the caller (read
//! its contract). A program becomes the child *before `main` runs*, through a constructor that
//! multiproc installs: nothing is needed in `main` or in tests.
//!
//! ```
//! use multiproc::{Process, StartMethod};
//! for m in multiproc::all_start_methods() {
//!     let p = Process::builder().start_method(*m).spawn((), |()| std::process::id())?;
//!     assert_eq!(p.join()?, p.pid());
//! }
//! # Ok::<(), multiproc::Error>(())
//! ```
//!
//! What runs twice: a re-executed child (`Spawn`, and the fork server) runs the program's
//! static constructors again (`#[ctor]` functions and the like, including multiproc's own,
//! which costs one environment lookup in an ordinary start). It never runs `main`, the test
//! harness, or anything only `main` initialises. A `Fork` child runs nothing twice: it
//! continues from the fork with a copy of the parent's memory.
//!
//! ## Pipes
//!
//! [`Pipe::new`] makes a duplex pair of typed [`Connection`]s. Connections are ordinary
//! arguments: pass one to a child and its descriptor goes along.
//!
//! ```
//! use multiproc::{Connection, Pipe, Process};
//!
//! let (here, there) = Pipe::new::<u64>()?;
//! let p = Process::spawn(there, |c: Connection<u64>| {
//!     let mut sum = 0;
//!     while let Ok(x) = c.recv() { sum += x; }
//!     sum
//! })?;
//! for x in 1..=10 { here.send(&x)?; }
//! drop(here); // end of stream: the child's loop ends
//! assert_eq!(p.join()?, 55);
//! # Ok::<(), multiproc::Error>(())
//! ```
//!
//! ## Pools
//!
//! A [`Pool`] of worker processes (one per CPU by default) runs `map`, `imap`, `starmap` and
//! `apply_async` like Python's, but a worker that crashes fails only the task it was running,
//! and is replaced.
//!
//! ```
//! use multiproc::Pool;
//!
//! let pool = Pool::new(2)?;
//! let squares = pool.map(|x: u64| x * x, 0..1000u64)?;
//! assert_eq!(squares[999], 998_001);
//! let first: Vec<u64> = pool.imap(|x: u64| x + 1, 0..).take(3).collect::<Result<_, _>>()?;
//! assert_eq!(first, [1, 2, 3]);
//! let crashed = pool.apply_async(|()| -> u8 { std::process::abort() }, ());
//! assert_eq!(crashed.get().unwrap_err().kind(), multiproc::ErrorKind::WorkerLost);
//! assert_eq!(pool.apply(|x: u32| x + 1, 41)?, 42); // the pool goes on
//! # Ok::<(), multiproc::Error>(())
//! ```
//!
//! ## Queues
//!
//! [`Queue`], [`SimpleQueue`] and [`JoinableQueue`] live in shared memory: many producers and
//! many consumers in any processes, no feeder thread, and a process killed in the middle of
//! `put` or `get` loses at most the item it was handling.
//!
//! ```
//! use multiproc::{Process, Queue};
//!
//! let q: Queue<String> = Queue::bounded(16)?;
//! let writer = Process::spawn(q.clone(), |q: Queue<String>| {
//!     for w in ["a", "b", "c"] {
//!         q.put(w.to_string()).unwrap();
//!     }
//! })?;
//! writer.join()?; // joins at once: the items are already in the queue
//! assert_eq!(q.get()?, "a");
//! assert_eq!(q.len(), 2);
//! # Ok::<(), multiproc::Error>(())
//! ```
//!
//! ## Blocking calls, `try_`, `_timeout` and `_deadline`
//!
//! Every blocking operation comes as one family with one result shape (crossbeam-channel's):
//!
//! | call | returns | when nothing happens in time |
//! |---|---|---|
//! | `op()` | what the operation gives (`recv` → `T`, `join` → `R`, `put` → `()`) | waits |
//! | `try_op()` | the same type | an error with [`ErrorKind::WouldBlock`] ([`Error::is_would_block`]) |
//! | `op_timeout(d)` / `op_deadline(t)` | the same type | an error with [`ErrorKind::Timeout`] ([`Error::is_timeout`]) |
//!
//! A `put` that cannot proceed gives the item back inside [`PutError`], with the same two kinds.
//! Readiness questions that consume nothing (`poll`, `wait`, `ready`, `is_alive`) answer with a
//! `bool`. A timeout too large to add to `Instant::now()` (such as `Duration::MAX`) means no
//! deadline, so `join_timeout(Duration::MAX)` is `join()`. A `*_timeout` call returns within its
//! timeout plus a small bound whatever the peer does.
//!
//! ## Errors
//!
//! Every failure is an [`Error`] with an [`ErrorKind`]: a child's panic (with message and
//! location), the signal that killed it, its exit code, a timeout, a disconnected peer, a
//! malformed or oversized frame. Nothing a peer sends can make the receiver panic, hang without
//! a deadline, or allocate beyond its maximum message size.
//!
//! ## Resources
//!
//! Children never outlive their parent: if the parent dies, even by `SIGKILL`, they are killed
//! within milliseconds. Dropped, unjoined children are reaped in the background. At normal exit,
//! daemon children are terminated and the others waited for, as in Python. Pipes are anonymous
//! socket pairs: nothing is created in the file system.
//!
//! ## Python → Rust
//!
//! | Python | multiproc |
//! |---|---|
//! | `Process(target=f, args=(a,))`, `start()` | [`Process::spawn`]`(a, f)` |
//! | `join()`, `exitcode`, `is_alive()` | [`Process::join`], [`Process::exitcode`], [`Process::is_alive`] |
//! | `terminate()`, `kill()` | [`Process::terminate`], [`Process::kill`] |
//! | `Pipe()`, `Pipe(duplex=False)` | [`Pipe::new`], [`Pipe::simplex`] |
//! | `connection.wait(objs, timeout)` | [`connection::wait`] |
//! | `Pool(n)`, `map`, `imap`, `starmap`, `apply_async` | [`Pool::new`], [`Pool::map`], [`Pool::imap`], [`Pool::starmap`], [`Pool::apply_async`] |
//! | `Queue(maxsize)`, `put`, `get(timeout=)` | [`Queue::bounded`], [`Queue::put`], [`Queue::get_timeout`] |
//! | `SimpleQueue`, `JoinableQueue` | [`SimpleQueue`], [`JoinableQueue`] |
//! | `set_start_method(m)` | [`set_start_method`] |
//! | `current_process()`, `parent_process()`, `active_children()`, `cpu_count()` | same names |
#![deny(unsafe_code)]

mod codec;
pub mod connection;
mod context;
mod error;
mod pool;
mod process;
mod queue;
mod spawn;
#[allow(unsafe_code)] // the platform layer: every unsafe block there has a SAFETY comment
mod sys;
mod task;
#[allow(dead_code)] // adopted layer by layer
mod wait;

pub use connection::{Connection, Pipe};
pub use context::{all_start_methods, cpu_count, get_start_method, set_start_method, StartMethod};
pub use error::{Error, ErrorKind, PutError, Result};
pub use pool::{
    as_completed, with_worker_state, AsCompleted, AsyncResult, IMap, Pool, PoolBuilder,
};
pub use process::{
    active_children, current_process, parent_process, Process, ProcessBuilder, ProcessInfo,
};
pub use queue::{JoinableQueue, Queue, QueueBuilder, SimpleQueue};
