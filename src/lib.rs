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
//! ```compile_fail,E0080
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
//! Choose one for the whole program with [`set_start_method`] (Python's
//! `set_start_method`), or for one process or one pool with its builder (Python's
//! `get_context(method)`):
//!
//! ```
//! use multiproc::{Pool, Process, StartMethod};
//!
//! fn pid(_: ()) -> u32 {
//!     std::process::id()
//! }
//!
//! multiproc::set_start_method(StartMethod::Spawn); // the program's default from now on
//! assert_eq!(multiproc::get_start_method(), StartMethod::Spawn);
//! let p = Process::builder().start_method(StartMethod::Fork).spawn((), pid)?;
//! assert_eq!(p.join()?, p.pid());
//! let pool = Pool::builder().processes(2).start_method(StartMethod::ForkServer).build()?;
//! assert_eq!(pool.start_method(), StartMethod::ForkServer);
//! assert_ne!(pool.apply(pid, ())?, std::process::id());
//! for m in multiproc::all_start_methods() {
//!     let p = Process::builder().start_method(*m).spawn((), pid)?;
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
//! ## Pipes and connections
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
//! A receive can wait with a limit, and raw bytes skip serialisation altogether
//! (`send_bytes`, `recv_bytes`, `recv_bytes_into`, as in Python):
//!
//! ```
//! use std::time::Duration;
//! use multiproc::{Connection, ErrorKind, Pipe, Process};
//!
//! let (here, there) = Pipe::new::<String>()?;
//! let echo = Process::spawn(there, |c: Connection<String>| {
//!     while let Ok(b) = c.recv_bytes() {
//!         c.send(&format!("{} bytes", b.len())).unwrap();
//!     }
//! })?;
//! // Nothing was sent yet: the wait ends with a `Timeout` error, and the connection stays usable.
//! let e = here.recv_timeout(Duration::from_millis(10)).unwrap_err();
//! assert_eq!(e.kind(), ErrorKind::Timeout);
//! here.send_bytes(b"abc")?;
//! assert_eq!(here.recv_timeout(Duration::from_secs(30))?, "3 bytes");
//! drop(here);
//! echo.join()?;
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
//! `examples/crawler.rs` is a larger pool program: a breadth-first web crawl whose frontier
//! grows as pages come back, one keep-alive HTTP connection per worker.
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
//! What survives a `SIGKILL` of the process that created it:
//!
//! | resource | after a `SIGKILL` |
//! |---|---|
//! | children, pool workers, the fork server, a manager's server | killed within milliseconds |
//! | queues, anonymous [`SharedMemory`], [`SharedVec`], pipes | freed with their last holder (the kernel closes a dead process's descriptors); nothing has a name |
//! | a named [`SharedMemory`] | its name is removed by the creator's watcher, moments later |
//! | a named [`SharedMemory`] that was [`persist`](SharedMemory::persist)ed | **stays in `/dev/shm`** until someone unlinks it: that is what `persist` is for |
//! | a Unix-socket [`Listener`](connection::Listener)'s socket file | stays (an abstract `unix:@name` address leaves nothing); the next `bind` to the path replaces a stale file |
//!
//! The [`shm`] module docs have the details.
//!
//! ## Logging in children
//!
//! A child started by [`StartMethod::ForkServer`] (the default) or [`StartMethod::Spawn`], and
//! every pool worker started by them, never runs `main`: a logger that `main` set up (a global
//! such as `log::set_logger`, `env_logger::init()` or a `tracing` subscriber) is not set up
//! there, and the child's log calls go nowhere. Set it up where the child starts: at the top of
//! the task function for a [`Process`], and in the pool's
//! [`initializer`](PoolBuilder::initializer), which every worker (and every replacement
//! worker) runs before its first task. A [`StartMethod::Fork`] child has a copy of the parent's
//! logger, but not its threads: a logger that writes from a background thread stops writing.
//!
//! ```
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use multiproc::{Pool, Process, StartMethod};
//!
//! // Stands in for a real logger's global state (`env_logger::Builder::...init()`).
//! static LOGGER: AtomicBool = AtomicBool::new(false);
//!
//! fn init_logging(_filter: String) {
//!     LOGGER.store(true, Ordering::SeqCst);
//! }
//!
//! fn logger_is_set(_: ()) -> bool {
//!     LOGGER.load(Ordering::SeqCst)
//! }
//!
//! init_logging("info".to_string()); // in main
//! assert!(!Process::spawn((), logger_is_set)?.join()?); // a fork-server child: not set
//! let forked = Process::builder().start_method(StartMethod::Fork).spawn((), logger_is_set)?;
//! assert!(forked.join()?); // a copy of the parent: set
//!
//! // Every worker runs the initializer first, so every task finds the logger set.
//! let pool = Pool::builder()
//!     .processes(2)
//!     .initializer(init_logging, "info".to_string())
//!     .build()?;
//! assert!(pool.map(logger_is_set, vec![(); 8])?.into_iter().all(|set| set));
//! # Ok::<(), multiproc::Error>(())
//! ```
//!
//! ## Output from several processes
//!
//! Children inherit the parent's standard output and error (fork-server children: those the
//! parent had when the server started), so their lines mix. What keeps a line whole is writing
//! it with **one** `write(2)`: a single write of at most `PIPE_BUF` bytes (4096 on Linux) to a
//! pipe is atomic, never interleaved with another process's write (POSIX promises this for
//! pipes only). `println!` goes through std's line-buffered stdout and writes each line of up
//! to 1 KiB at once; `eprintln!` writes to the unbuffered stderr **piece by piece** (one write
//! per formatted argument), so two processes' `eprintln!` lines can tear into each other. For
//! diagnostics from many processes, format the line first and write it once:
//!
//! ```
//! use std::io::Write;
//!
//! fn log_line(msg: &str) {
//!     let line = format!("[{}] {msg}\n", multiproc::current_process().name);
//!     let _ = std::io::stderr().write_all(line.as_bytes()); // one write(2) per line
//! }
//!
//! let p = multiproc::Process::spawn((), |()| log_line("hello from the child"))?;
//! p.join()?;
//! log_line("hello from the parent");
//! # Ok::<(), multiproc::Error>(())
//! ```
//!
//! A child flushes its standard output before it exits.
//!
//! ## Byte buffers
//!
//! serde sees a `Vec<u8>` as a sequence of numbers and (de)serialises it element by element.
//! For large binary arguments and results wrap the buffer in `serde_bytes::ByteBuf`, or mark
//! the field `#[serde(with = "serde_bytes")]`: it then crosses as one block of bytes. In the
//! benchmark (`BENCHMARKS.md`, "Byte buffers"), a 200 MB result through `Pool::apply` took
//! 270 ms as a `ByteBuf` against 425 ms as a `Vec<u8>` (1.6× faster; 3× at 20 MB), and
//! Python's `bytes` 594 ms.
//!
//! ```ignore
//! // Cargo.toml: serde_bytes = "0.11"
//! use serde_bytes::ByteBuf;
//!
//! fn render(n: usize) -> ByteBuf {
//!     ByteBuf::from(vec![0u8; n])
//! }
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Image {
//!     width: u32,
//!     #[serde(with = "serde_bytes")]
//!     pixels: Vec<u8>,
//! }
//!
//! let frame: ByteBuf = pool.apply(render, 200_000_000)?;
//! ```
//!
//! ## Python → Rust
//!
//! | Python | multiproc |
//! |---|---|
//! | `p = Process(target=f, args=(a,))`, `p.start()` | `let p = Process::spawn(a, f)?;` (`f`: a fn item, or a closure that captures nothing) |
//! | `p.join()`, then `p.exitcode` | `p.join()?` gives `f`'s return value, or its panic as an error; joining again gives the same outcome again; `p.exitcode()` (negative: the signal that killed it; 255 if the fork server died) |
//! | `p.join(timeout)`, `p.is_alive()` | `p.join_timeout(d)`, `p.join_deadline(t)`: the value, or an error of kind `Timeout` while it runs; `p.try_join()` (`WouldBlock`); `p.is_alive()` → `bool` |
//! | `p.terminate()`, `p.kill()`, `p.pid`, `p.name`, `p.daemon` | the same names, as methods |
//! | `set_start_method("spawn")`, `get_context("fork").Process(...)` | `set_start_method(StartMethod::Spawn)`, `Process::builder().start_method(StartMethod::Fork).spawn(a, f)?` |
//! | `a, b = Pipe()`, `Pipe(duplex=False)` | `let (a, b) = Pipe::new::<T>()?;`, `Pipe::simplex::<T>()?` (typed ends; pass them to children as arguments) |
//! | `Listener(("127.0.0.1", 0), authkey=k)`, `l.accept()`, `Client(addr, authkey=k)` | `Listener::<T>::bind(&"127.0.0.1:0".parse()?, k)?`, `l.accept()?`, `Client::connect::<T>(&addr, k)?` (in `multiproc::connection`; also `unix:/path` and `unix:@name`; TLS with the `tls` feature) |
//! | `conn.send(obj)`, `conn.recv()` | `conn.send(&v)?`, `conn.recv()?` (serde, not pickle) |
//! | `conn.poll(timeout)` | `conn.poll(d)?` → `bool`; or receive with a limit: `conn.recv_timeout(d)` (`Timeout`), `conn.try_recv()` (`WouldBlock`); sends too: `conn.send_timeout(&v, d)` |
//! | `conn.send_bytes(b)`, `recv_bytes()`, `recv_bytes_into(buf)` | the same names |
//! | `multiprocessing.connection.wait(objects, timeout)` | `connection::wait(&[&a, &b], Some(d))?`: the indexes of the ready ones |
//! | `Pool(4)`, `Pool(4, initializer=f, initargs=(a,), maxtasksperchild=k)` | `Pool::new(4)?`, `Pool::builder().processes(4).initializer(f, a).max_tasks_per_child(k).build()?` |
//! | `pool.map(f, xs)`, `pool.map(f, xs, chunksize)`, `pool.starmap(f, pairs)` | `pool.map(f, xs)?`, `pool.map_chunked(f, xs, n)?`, `pool.starmap(f, pairs)?` |
//! | `pool.imap(f, xs)`, `pool.imap_unordered(f, xs)` | `for r in pool.imap(f, xs) { let v = r?; }` (lazy: an endless input works), `pool.imap_unordered(f, xs)` |
//! | `pool.apply(f, args)` | `pool.apply(f, a)?` |
//! | `r = pool.apply_async(f, args)`, `r.get()`, `r.get(timeout)`, `r.ready()`, `r.wait(timeout)` | `let r = pool.apply_async(f, a);`, `r.get()?`, `r.get_timeout(d)` (`Timeout`), `r.ready()` → `bool`, `r.wait_timeout(d)` → `bool`; `r.await` (it is a `Future`) |
//! | `pool.apply_async(f, args, callback=ok, error_callback=err)` | `pool.apply_async_with(f, a, ok, err)`, or `r.then(ok, err)` |
//! | `pool.map_async(f, xs)`, `pool.starmap_async(f, pairs)` | `pool.map_async(f, xs)`, `pool.starmap_async(f, pairs)`: one `AsyncResult<Vec<R>>` |
//! | `concurrent.futures.as_completed(futures)` | `for r in as_completed(results) { ... }`; `AsCompleted::new()` and `push` for a set that grows (`examples/crawler.rs`) |
//! | `pool.close()`, `pool.join()`, `pool.terminate()`, `with Pool() as pool:` | the same names; dropping a `Pool` terminates it, as leaving the `with` block does |
//! | `Queue()`, `Queue(maxsize)` | `Queue::new()?`, `Queue::bounded(n)?` (cloneable: pass clones to children) |
//! | `q.put(x)`, `q.get()` | `q.put(x)?`, `q.get()?` |
//! | `q.get(timeout=t)`, `q.get_nowait()` (raise `queue.Empty`) | `q.get_timeout(d)` (`Timeout`), `q.try_get()` (`WouldBlock`) |
//! | `q.put(x, timeout=t)`, `q.put_nowait(x)` (raise `queue.Full`) | `q.put_timeout(x, d)`, `q.try_put(x)`: a `PutError` that gives `x` back |
//! | `SimpleQueue()`, `JoinableQueue()` with `task_done()` and `join()` | `SimpleQueue::new()?`, `JoinableQueue::new()?` with the same methods |
//! | `current_process()`, `parent_process()`, `active_children()`, `cpu_count()` | the same names |
//! | a logger configured in `main` | configure it in the task, or in the pool's `initializer` (see "Logging in children") |
//! | `lock = Lock()`, `with lock:`, `lock.acquire(timeout=t)` | `let lock = Lock::new()?;`, `let _g = lock.acquire()?;` (released when the guard drops), `lock.acquire_timeout(d)` (`Timeout`), `try_acquire()` (`WouldBlock`); `RLock` the same, re-entrant; a guard taken over from a killed holder says `owner_died()` |
//! | `Semaphore(n)`, `BoundedSemaphore(n)` | `Semaphore::new(n)?`, `BoundedSemaphore::new(n)?` (releasing past the bound is an error); a killed holder's units are not given back |
//! | `Event()`: `set`, `clear`, `is_set`, `wait(timeout)` | `Event::new()?`: the same names; `wait_timeout(d)` → `bool` |
//! | `Condition(lock)`: `wait`, `wait_for`, `notify(n)`, `notify_all` | `Condition::new()?` (or over a given `Lock`/`RLock`); `let mut g = cond.acquire()?;` then `g.wait()?`, `g.wait_for(pred)?`, `g.notify(n)`, `g.notify_all()` |
//! | `Barrier(n)`: `wait`, `abort`, `reset`, `n_waiting`, `broken` | `Barrier::new(n)?`: the same names; `wait()?` gives the arrival index; a killed party breaks it for the others (`BrokenBarrier`) |
//! | `Value('q', 0)`, `with v.get_lock(): v.value += 1`, `Array('d', xs)`, `RawValue`, `RawArray` | `Value::new(0u64)?`, `*v.lock()? += 1`, `Array::new(&xs)?` (`lock()` → `&mut [T]`), `RawValue`, `RawArray` (`T: bytemuck::Pod`; the type is checked when a handle is received) |
//! | `mpiexec -n N python -m mpi4py.futures app.py` | `mpirun -n N app`, and in `main` `Pool::builder().mpi().build()?` (feature `mpi`): the other ranks serve tasks in local workers, never running `main` |
//! | `shared_memory.SharedMemory(create=True, size=n)`, `SharedMemory(name=...)`, `unlink()` | `SharedMemory::new(n)?` (anonymous: freed with its last holder, even after `SIGKILL`), `SharedMemory::create_named(name, n)?`, `open_named(name)?`, `unlink()`; views `as_slice()`, `as_slice_of::<T>()` (in `multiproc::shm`) |
//! | a large array handed to a worker | `SharedVec::from_slice(&v)?` or `SharedVec::zeroed(n)?` as the argument or result: the receiver maps it instead of copying it through a pipe |
//! | `m = Manager()`, `with Manager() as m:` | `let m = Manager::start()?;` (the server is a child process; dropping `m` stops it) |
//! | `m.dict()`, `m.list()`, `m.Namespace()` | `m.dict::<K, V>("name")?`, `m.list::<T>("name")?`, `m.namespace("name")?` (named and typed: a proxy with other element types is refused) |
//! | `m.Queue()`, `m.JoinableQueue()`, `m.Value(t, v)` | `m.queue::<T>("q")?`, `m.joinable_queue::<T>("q")?`, `m.value("v", x)?` (`v.update(\|n\| n + 1)?` is atomic) |
//! | `m.Lock()`, `RLock`, `Semaphore(n)`, `BoundedSemaphore(n)`, `Event`, `Condition`, `Barrier(n)` | `m.lock("l")?`, `rlock`, `semaphore("s", n)`, `bounded_semaphore`, `event`, `condition`, `barrier("b", n)`; `acquire()?` tells `previous_owner_died()` when a holder was killed |
//! | `BaseManager.register("T", T)`, `m.T()` | `Manager::builder().register::<T>().start()?`, `m.object::<T>("name")?.call(&request)?` (`T: SharedObject`: typed requests, no method names) |
//! | `BaseManager(("", 5000), authkey=k).get_server().serve_forever()`, `.connect()` | `Manager::serve(&"0.0.0.0:5000".parse()?, k)?` (the server runs in a child), `Manager::connect(&addr, k)?` |
//! | passing a proxy to `Process(args=(d,))` | pass it as an argument; it reconnects in the child (locally or on another host) |
//! | `Future.cancel()` on a pending task | `r.cancel()` → `bool` (dropping an `AsyncResult` never cancels: the task runs, its result is discarded) |
//! | workers that finish their task on Ctrl-C (`signal(SIGINT, SIG_IGN)` in the initializer) | `Pool::builder().ignore_sigint(true)`; `Process::builder().ignore_sigint(true)`; an ignored SIGINT/SIGHUP in the parent stays ignored in every child |
//! | a message over the size limit | `ErrorKind::TooLarge`; raise it with `max_message_size(n)` on `ProcessBuilder`/`PoolBuilder`, `set_max_message_size` on a `Connection` |
//!
//! Differences on purpose:
//!
//! - `Queue::bounded(0)` is refused (`Unsupported`): Python's `Queue(0)` means unbounded, which is
//!   `Queue::new()` here, and a zero-capacity rendezvous queue is not offered.
//! - `max_tasks_per_child(0)` means "never replace" (Python rejects `maxtasksperchild=0`).
//! - `join()` may be called again and returns the same outcome (as Python's); the value is decoded
//!   again each time. `AlreadyJoined` remains only for an `AsyncResult` whose value was taken.
//! - `try_`/`_timeout` calls report "not now" as errors (`WouldBlock`/`Timeout`), not `None`,
//!   like Python's `queue.Empty`/`TimeoutError` exceptions.
//!
//! Not yet in multiproc:
//!
//! - `ShareableList` (use a `Manager` list, or `Array` of plain data);
//! - `Process.interrupt()`, `set_executable()`, and a `ThreadPool`;
//! - TLS for a `Manager` (its `Listener` has it; use a tunnel meanwhile);
//! - macOS and Windows backends (Linux only today).
#![deny(unsafe_code)]

#[doc(hidden)]
#[path = "hooks.rs"]
pub mod __chaos;
mod codec;
pub mod connection;
mod context;
mod error;
mod fdreg;
pub mod manager;
#[cfg(feature = "mpi")]
pub mod mpi;
mod pool;
mod process;
mod queue;
pub mod shm;
mod spawn;
pub mod sync;
#[allow(unsafe_code)] // the platform layer: every unsafe block there has a SAFETY comment
mod sys;
mod task;
mod wait;

pub use connection::{Connection, Pipe};
pub use context::{all_start_methods, cpu_count, get_start_method, set_start_method, StartMethod};
pub use error::{Error, ErrorKind, PutError, Result};
pub use manager::{Manager, ManagerBuilder};
pub use pool::{
    as_completed, with_worker_state, AsCompleted, AsyncResult, IMap, Pool, PoolBuilder,
};
pub use process::{
    active_children, current_process, parent_process, Process, ProcessBuilder, ProcessInfo,
};
pub use queue::{JoinableQueue, Queue, QueueBuilder, SimpleQueue};
pub use shm::{SharedBytes, SharedMemory, SharedVec};
pub use sync::{
    Array, Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, RawArray, RawValue, Semaphore,
    Value,
};
pub use task::{TaskArg, TaskResult};
