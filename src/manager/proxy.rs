//! The typed proxies: each is a handle on one named object in a manager's server.
//!
//! Every proxy is `Clone` (clones share its connections), `Send + Sync`, and serde: pass it
//! to a child process (or put it in a message to another host) and it reconnects there.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::link::Link;
use super::protocol::{blob, unblob, Blob, Op, Response, Wait};
use super::registry::SharedObject;
#[allow(unused_imports)] // the docs' links
use crate::error::ErrorKind;
use crate::error::{Error, PutError, Result};
use crate::wait::deadline_after;

macro_rules! proxy {
    ($(#[$doc:meta])* $name:ident < $($t:ident),* >) => {
        $(#[$doc])*
        pub struct $name<$($t),*> {
            pub(crate) link: Arc<Link>,
            _types: PhantomData<fn() -> ($($t,)*)>,
        }

        impl<$($t),*> $name<$($t),*> {
            pub(crate) fn from_link(link: Arc<Link>) -> Self {
                $name { link, _types: PhantomData }
            }

            /// The object's name in its manager.
            pub fn name(&self) -> &str {
                &self.link.name
            }
        }

        impl<$($t),*> Clone for $name<$($t),*> {
            fn clone(&self) -> Self {
                Self::from_link(self.link.clone())
            }
        }

        impl<$($t),*> std::fmt::Debug for $name<$($t),*> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(&*self.link, f)
            }
        }

        /// On the wire: the manager's address and key, the object's name and types. The
        /// receiving process opens its own connection on first use.
        impl<$($t),*> Serialize for $name<$($t),*> {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                self.link.serialize(s)
            }
        }

        impl<'de, $($t),*> Deserialize<'de> for $name<$($t),*> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                Link::deserialize(d).map(|l| Self::from_link(Arc::new(l)))
            }
        }
    };
}

/// The server-side wait for a deadline: microseconds left (`None`: no limit).
fn wait_until(deadline: Option<Instant>) -> Wait {
    deadline.map(|d| {
        u64::try_from(d.saturating_duration_since(Instant::now()).as_micros()).unwrap_or(u64::MAX)
    })
}

/// A `try_` call: the server answers "would block" at once.
const NOW: Wait = Some(0);

fn unexpected(r: Response) -> Error {
    r.error()
}

fn maybe<T: DeserializeOwned>(r: Response) -> Result<Option<T>> {
    match r {
        Response::Maybe(b) => b.as_ref().map(unblob).transpose(),
        r => Err(unexpected(r)),
    }
}

fn one<T: DeserializeOwned>(r: Response) -> Result<T> {
    match r {
        Response::One(b) => unblob(&b),
        r => Err(unexpected(r)),
    }
}

fn flag(r: Response) -> Result<bool> {
    match r {
        Response::Flag(f) => Ok(f),
        r => Err(unexpected(r)),
    }
}

fn count(r: Response) -> Result<u64> {
    match r {
        Response::Count(n) => Ok(n),
        r => Err(unexpected(r)),
    }
}

fn many<T: DeserializeOwned>(r: Response) -> Result<Vec<T>> {
    match r {
        Response::Many(v) => v.iter().map(unblob).collect(),
        r => Err(unexpected(r)),
    }
}

fn done(r: Response) -> Result<()> {
    r.done()
}

fn len(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

// ---------------------------------------------------------------------------------------------
// Dict
// ---------------------------------------------------------------------------------------------

proxy! {
    /// A `HashMap<K, V>` in a manager (Python's `manager.dict()`), from
    /// [`Manager::dict`](crate::Manager::dict).
    ///
    /// Every call is one round trip to the server and is atomic there; a read-modify-write
    /// spanning calls needs a manager [`Lock`] (or use [`get_or_default`](Dict::get_or_default)
    /// and [`update`](Dict::update), which are single calls).
    ///
    /// Keys are compared by their encoding: equal keys must encode to equal bytes, which holds
    /// for integers, strings, tuples, enums and structs of those (not for floats such as `-0.0`
    /// and `0.0`, or for a map used as a key).
    ///
    /// ```
    /// let manager = multiproc::Manager::start()?;
    /// let ages = manager.dict::<String, u32>("ages")?;
    /// ages.insert("ada".into(), 36)?;
    /// assert_eq!(ages.get(&"ada".into())?, Some(36));
    /// assert_eq!(ages.get_or_default("bob".into(), 0)?, 0);
    /// assert_eq!(ages.len()?, 2);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    Dict<K, V>
}

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> Dict<K, V> {
    /// The value for `key`, if any.
    ///
    /// # Errors
    /// [`ErrorKind::Disconnected`] if the manager is gone; [`ErrorKind::Decode`] if a stored
    /// value is not a `V`.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        maybe(self.link.call(Op::Get(blob(key)?), None)?)
    }

    /// Sets `key` to `value`, returning the value it replaced.
    ///
    /// # Errors
    /// As [`get`](Dict::get); [`ErrorKind::Encode`] if serde fails.
    pub fn insert(&self, key: K, value: V) -> Result<Option<V>> {
        maybe(
            self.link
                .call(Op::Insert(blob(&key)?, blob(&value)?), None)?,
        )
    }

    /// Removes `key`, returning its value.
    ///
    /// # Errors
    /// As [`get`](Dict::get).
    pub fn remove(&self, key: &K) -> Result<Option<V>> {
        maybe(self.link.call(Op::Remove(blob(key)?), None)?)
    }

    /// Whether `key` is present.
    ///
    /// # Errors
    /// As [`get`](Dict::get).
    pub fn contains_key(&self, key: &K) -> Result<bool> {
        flag(self.link.call(Op::Contains(blob(key)?), None)?)
    }

    /// The value for `key`, inserting `default` first if it is absent, in one call (Python's
    /// `setdefault`).
    ///
    /// # Errors
    /// As [`get`](Dict::get).
    pub fn get_or_default(&self, key: K, default: V) -> Result<V> {
        one(self
            .link
            .call(Op::GetOrInsert(blob(&key)?, blob(&default)?), None)?)
    }

    /// Inserts every pair, in one call.
    ///
    /// # Errors
    /// As [`insert`](Dict::insert).
    pub fn update(&self, pairs: impl IntoIterator<Item = (K, V)>) -> Result<()> {
        let pairs = pairs
            .into_iter()
            .map(|(k, v)| Ok((blob(&k)?, blob(&v)?)))
            .collect::<Result<Vec<_>>>()?;
        done(self.link.call(Op::Update(pairs), None)?)
    }

    /// The number of entries.
    ///
    /// # Errors
    /// [`ErrorKind::Disconnected`] if the manager is gone.
    pub fn len(&self) -> Result<usize> {
        count(self.link.call(Op::Len, None)?).map(len)
    }

    /// Whether the dict is empty.
    ///
    /// # Errors
    /// As [`len`](Dict::len).
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Every key (a snapshot, in no particular order).
    ///
    /// # Errors
    /// As [`get`](Dict::get).
    pub fn keys(&self) -> Result<Vec<K>> {
        many(self.link.call(Op::Keys, None)?)
    }

    /// Every value (a snapshot).
    ///
    /// # Errors
    /// As [`get`](Dict::get).
    pub fn values(&self) -> Result<Vec<V>> {
        many(self.link.call(Op::Values, None)?)
    }

    /// Every pair (a snapshot).
    ///
    /// # Errors
    /// As [`get`](Dict::get).
    pub fn items(&self) -> Result<Vec<(K, V)>> {
        match self.link.call(Op::Items, None)? {
            Response::Pairs(v) => v
                .iter()
                .map(|(k, v)| Ok((unblob(k)?, unblob(v)?)))
                .collect(),
            r => Err(unexpected(r)),
        }
    }

    /// Removes every entry.
    ///
    /// # Errors
    /// As [`len`](Dict::len).
    pub fn clear(&self) -> Result<()> {
        done(self.link.call(Op::Clear, None)?)
    }
}

// ---------------------------------------------------------------------------------------------
// List
// ---------------------------------------------------------------------------------------------

proxy! {
    /// A `Vec<T>` in a manager (Python's `manager.list()`), from
    /// [`Manager::list`](crate::Manager::list).
    ///
    /// ```
    /// let manager = multiproc::Manager::start()?;
    /// let l = manager.list::<u32>("l")?;
    /// l.extend([1, 2, 3])?;
    /// l.push(4)?;
    /// assert_eq!(l.get(1)?, Some(2));
    /// assert_eq!(l.pop()?, Some(4));
    /// assert_eq!(l.to_vec()?, [1, 2, 3]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    List<T>
}

impl<T: Serialize + DeserializeOwned> List<T> {
    /// Appends `value`.
    ///
    /// # Errors
    /// [`ErrorKind::Disconnected`] if the manager is gone; [`ErrorKind::Encode`] if serde fails.
    pub fn push(&self, value: T) -> Result<()> {
        done(self.link.call(Op::Push(blob(&value)?), None)?)
    }

    /// Appends every value, in one call.
    ///
    /// # Errors
    /// As [`push`](List::push).
    pub fn extend(&self, values: impl IntoIterator<Item = T>) -> Result<()> {
        let v = values
            .into_iter()
            .map(|x| blob(&x))
            .collect::<Result<Vec<Blob>>>()?;
        done(self.link.call(Op::Extend(v), None)?)
    }

    /// The element at `index`, if there is one.
    ///
    /// # Errors
    /// As [`push`](List::push); [`ErrorKind::Decode`] if it is not a `T`.
    pub fn get(&self, index: usize) -> Result<Option<T>> {
        maybe(self.link.call(Op::Index(index as u64), None)?)
    }

    /// Replaces the element at `index`, returning the old one.
    ///
    /// # Errors
    /// [`ErrorKind::Unsupported`] if `index` is out of range; otherwise as [`get`](List::get).
    pub fn set(&self, index: usize, value: T) -> Result<T> {
        one(self
            .link
            .call(Op::SetIndex(index as u64, blob(&value)?), None)?)
    }

    /// Inserts `value` at `index` (`index == len` appends).
    ///
    /// # Errors
    /// [`ErrorKind::Unsupported`] if `index > len`; otherwise as [`push`](List::push).
    pub fn insert(&self, index: usize, value: T) -> Result<()> {
        done(
            self.link
                .call(Op::InsertAt(index as u64, blob(&value)?), None)?,
        )
    }

    /// Removes and returns the element at `index`.
    ///
    /// # Errors
    /// [`ErrorKind::Unsupported`] if `index` is out of range; otherwise as [`get`](List::get).
    pub fn remove(&self, index: usize) -> Result<T> {
        one(self.link.call(Op::RemoveAt(index as u64), None)?)
    }

    /// Removes and returns the last element.
    ///
    /// # Errors
    /// As [`get`](List::get).
    pub fn pop(&self) -> Result<Option<T>> {
        maybe(self.link.call(Op::Pop, None)?)
    }

    /// The number of elements.
    ///
    /// # Errors
    /// [`ErrorKind::Disconnected`] if the manager is gone.
    pub fn len(&self) -> Result<usize> {
        count(self.link.call(Op::Len, None)?).map(len)
    }

    /// Whether the list is empty.
    ///
    /// # Errors
    /// As [`len`](List::len).
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// A copy of the whole list.
    ///
    /// # Errors
    /// As [`get`](List::get).
    pub fn to_vec(&self) -> Result<Vec<T>> {
        many(self.link.call(Op::Values, None)?)
    }

    /// Removes every element.
    ///
    /// # Errors
    /// As [`len`](List::len).
    pub fn clear(&self) -> Result<()> {
        done(self.link.call(Op::Clear, None)?)
    }
}

// ---------------------------------------------------------------------------------------------
// Queues
// ---------------------------------------------------------------------------------------------

proxy! {
    /// A FIFO queue in a manager (Python's `manager.Queue()`), from
    /// [`Manager::queue`](crate::Manager::queue): reachable from other hosts, unlike the
    /// shared-memory [`crate::Queue`] (which is much faster on one machine).
    ///
    /// A blocked `get` or `put` waits in the server; if the waiting client goes away, the
    /// server stops waiting for it and no item is taken on its behalf.
    ///
    /// ```
    /// use std::time::Duration;
    /// let manager = multiproc::Manager::start()?;
    /// let q = manager.queue::<String>("jobs")?;
    /// q.put("a".into())?;
    /// assert_eq!(q.get()?, "a");
    /// assert!(q.get_timeout(Duration::from_millis(10)).unwrap_err().is_timeout());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    Queue<T>
}

proxy! {
    /// A [`Queue`] that counts unfinished items (Python's `manager.JoinableQueue()`), from
    /// [`Manager::joinable_queue`](crate::Manager::joinable_queue): every `put` adds one,
    /// [`task_done`](JoinableQueue::task_done) takes one away, [`join`](JoinableQueue::join)
    /// waits for none.
    JoinableQueue<T>
}

macro_rules! queue_methods {
    ($name:ident) => {
        impl<T: Serialize + DeserializeOwned> $name<T> {
            /// Puts `item`, waiting while the queue is full.
            ///
            /// # Errors
            /// A [`PutError`] that gives `item` back: [`ErrorKind::Disconnected`] if the
            /// manager is gone, [`ErrorKind::Encode`] if serde fails.
            pub fn put(&self, item: T) -> std::result::Result<(), PutError<T>> {
                self.put_wait(item, None)
            }

            /// Puts `item` if there is room now.
            ///
            /// # Errors
            /// [`ErrorKind::WouldBlock`] if full; otherwise as [`put`](Self::put).
            pub fn try_put(&self, item: T) -> std::result::Result<(), PutError<T>> {
                self.put_wait(item, NOW)
            }

            /// Puts `item`, waiting at most `timeout` for room.
            ///
            /// # Errors
            /// As [`put_deadline`](Self::put_deadline).
            pub fn put_timeout(
                &self,
                item: T,
                timeout: Duration,
            ) -> std::result::Result<(), PutError<T>> {
                self.put_wait(item, wait_until(deadline_after(timeout)))
            }

            /// Puts `item`, waiting until `deadline` for room.
            ///
            /// # Errors
            /// [`ErrorKind::Timeout`] if still full then; otherwise as [`put`](Self::put).
            pub fn put_deadline(
                &self,
                item: T,
                deadline: Instant,
            ) -> std::result::Result<(), PutError<T>> {
                self.put_wait(item, wait_until(Some(deadline)))
            }

            fn put_wait(&self, item: T, wait: Wait) -> std::result::Result<(), PutError<T>> {
                let b = match blob(&item) {
                    Ok(b) => b,
                    Err(e) => return Err(PutError::new(item, e)),
                };
                match self.link.call(Op::Put(b, wait), wait).and_then(done) {
                    Ok(()) => Ok(()),
                    Err(e) => Err(PutError::new(item, e)),
                }
            }

            /// Takes the oldest item, waiting for one.
            ///
            /// # Errors
            /// [`ErrorKind::Disconnected`] if the manager is gone; [`ErrorKind::Decode`] if the
            /// item is not a `T`.
            pub fn get(&self) -> Result<T> {
                self.get_wait(None)
            }

            /// Takes the oldest item if there is one now.
            ///
            /// # Errors
            /// [`ErrorKind::WouldBlock`] if empty; otherwise as [`get`](Self::get).
            pub fn try_get(&self) -> Result<T> {
                self.get_wait(NOW)
            }

            /// Takes the oldest item, waiting at most `timeout`.
            ///
            /// # Errors
            /// As [`get_deadline`](Self::get_deadline).
            pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
                self.get_wait(wait_until(deadline_after(timeout)))
            }

            /// Takes the oldest item, waiting until `deadline`.
            ///
            /// # Errors
            /// [`ErrorKind::Timeout`] if none came in time; otherwise as [`get`](Self::get).
            pub fn get_deadline(&self, deadline: Instant) -> Result<T> {
                self.get_wait(wait_until(Some(deadline)))
            }

            fn get_wait(&self, wait: Wait) -> Result<T> {
                one(self.link.call(Op::Take(wait), wait)?)
            }

            /// The number of items now.
            ///
            /// # Errors
            /// [`ErrorKind::Disconnected`] if the manager is gone.
            pub fn len(&self) -> Result<usize> {
                count(self.link.call(Op::Len, None)?).map(len)
            }

            /// Whether the queue is empty now.
            ///
            /// # Errors
            /// As [`len`](Self::len).
            pub fn is_empty(&self) -> Result<bool> {
                Ok(self.len()? == 0)
            }
        }
    };
}

queue_methods!(Queue);
queue_methods!(JoinableQueue);

impl<T: Serialize + DeserializeOwned> JoinableQueue<T> {
    /// Marks one item taken with `get` as processed.
    ///
    /// # Errors
    /// [`ErrorKind::Unsupported`] if called more times than items were put;
    /// [`ErrorKind::Disconnected`] if the manager is gone.
    pub fn task_done(&self) -> Result<()> {
        done(self.link.call(Op::TaskDone, None)?)
    }

    /// Waits until every item put has been marked done.
    ///
    /// # Errors
    /// [`ErrorKind::Disconnected`] if the manager is gone.
    pub fn join(&self) -> Result<()> {
        done(self.link.call(Op::JoinQueue(None), None)?)
    }

    /// [`join`](Self::join), waiting at most `timeout`.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] if items were still unfinished then.
    pub fn join_timeout(&self, timeout: Duration) -> Result<()> {
        self.join_deadline_opt(deadline_after(timeout))
    }

    /// [`join`](Self::join), waiting until `deadline`.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] if items were still unfinished then.
    pub fn join_deadline(&self, deadline: Instant) -> Result<()> {
        self.join_deadline_opt(Some(deadline))
    }

    fn join_deadline_opt(&self, deadline: Option<Instant>) -> Result<()> {
        let w = wait_until(deadline);
        done(self.link.call(Op::JoinQueue(w), w)?)
    }
}

// ---------------------------------------------------------------------------------------------
// Value
// ---------------------------------------------------------------------------------------------

proxy! {
    /// One value in a manager (Python's `manager.Value(typecode, v)`), from
    /// [`Manager::value`](crate::Manager::value).
    ///
    /// [`update`](Value::update) applies a function atomically (compare-and-swap, retried),
    /// so `+= 1` from many processes loses nothing:
    ///
    /// ```
    /// use multiproc::{manager::Value, Process};
    /// let manager = multiproc::Manager::start()?;
    /// let hits = manager.value("hits", 0u64)?;
    /// let p = Process::spawn(hits.clone(), |v: Value<u64>| {
    ///     for _ in 0..100 { v.update(|n| n + 1).unwrap(); }
    /// })?;
    /// for _ in 0..100 { hits.update(|n| n + 1)?; }
    /// p.join()?;
    /// assert_eq!(hits.get()?, 200);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    Value<T>
}

impl<T: Serialize + DeserializeOwned> Value<T> {
    /// The current value.
    ///
    /// # Errors
    /// [`ErrorKind::Disconnected`] if the manager is gone; [`ErrorKind::Decode`] if it is not a `T`.
    pub fn get(&self) -> Result<T> {
        one(self.link.call(Op::Load, None)?)
    }

    /// Replaces the value.
    ///
    /// # Errors
    /// As [`get`](Value::get); [`ErrorKind::Encode`] if serde fails.
    pub fn set(&self, value: T) -> Result<()> {
        done(self.link.call(Op::Store(blob(&value)?), None)?)
    }

    /// Replaces the value, returning the old one.
    ///
    /// # Errors
    /// As [`set`](Value::set).
    pub fn swap(&self, value: T) -> Result<T> {
        one(self.link.call(Op::Swap(blob(&value)?), None)?)
    }

    /// Sets the value to `f(current)` atomically, returning the new value: `f` may run more
    /// than once when other clients change the value in between.
    ///
    /// # Errors
    /// As [`set`](Value::set).
    pub fn update(&self, mut f: impl FnMut(T) -> T) -> Result<T> {
        let mut cur_blob = match self.link.call(Op::Load, None)? {
            Response::One(b) => b,
            r => return Err(unexpected(r)),
        };
        loop {
            let new = f(unblob(&cur_blob)?);
            let new_blob = blob(&new)?;
            match self.link.call(Op::CompareSwap(cur_blob, new_blob), None)? {
                Response::Flag(true) => return Ok(new),
                Response::Maybe(Some(b)) => cur_blob = b,
                r => return Err(unexpected(r)),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Namespace
// ---------------------------------------------------------------------------------------------

proxy! {
    /// Named attributes of any serde type (Python's `manager.Namespace()`), from
    /// [`Manager::namespace`](crate::Manager::namespace).
    ///
    /// ```
    /// let manager = multiproc::Manager::start()?;
    /// let ns = manager.namespace("config")?;
    /// ns.set("rate", &0.5f64)?;
    /// ns.set("name", &"run-7".to_string())?;
    /// assert_eq!(ns.get::<f64>("rate")?, Some(0.5));
    /// assert_eq!(ns.names()?, ["name", "rate"]);
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    Namespace<>
}

impl Namespace {
    /// The attribute `name` as a `T`, if set.
    ///
    /// # Errors
    /// [`ErrorKind::Decode`] if it is not a `T`; [`ErrorKind::Disconnected`] if the manager is gone.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        maybe(self.link.call(Op::GetAttr(name.to_string()), None)?)
    }

    /// Sets the attribute `name`.
    ///
    /// # Errors
    /// [`ErrorKind::Encode`] if serde fails; [`ErrorKind::Disconnected`] if the manager is gone.
    pub fn set<T: Serialize + ?Sized>(&self, name: &str, value: &T) -> Result<()> {
        self.link
            .call(Op::SetAttr(name.to_string(), blob(value)?), None)
            .map(drop)
    }

    /// Removes the attribute `name`; whether it was set.
    ///
    /// # Errors
    /// [`ErrorKind::Disconnected`] if the manager is gone.
    pub fn remove(&self, name: &str) -> Result<bool> {
        match self.link.call(Op::DelAttr(name.to_string()), None)? {
            Response::Maybe(b) => Ok(b.is_some()),
            r => Err(unexpected(r)),
        }
    }

    /// Every attribute name, sorted.
    ///
    /// # Errors
    /// [`ErrorKind::Disconnected`] if the manager is gone.
    pub fn names(&self) -> Result<Vec<String>> {
        match self.link.call(Op::Keys, None)? {
            Response::Many(v) => Ok(v
                .into_iter()
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .collect()),
            r => Err(unexpected(r)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Locks
// ---------------------------------------------------------------------------------------------

/// A lock acquired from a manager. It is not a guard: release with the lock's `release`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "check previous_owner_died: the data the lock protects may be half-updated"]
pub struct Acquired {
    owner_died: bool,
}

impl Acquired {
    /// `true` if the previous holder's process died (or its connection broke) while it held
    /// the lock; the server released it then. What the lock protects may be inconsistent.
    pub fn previous_owner_died(&self) -> bool {
        self.owner_died
    }
}

macro_rules! lock_methods {
    ($name:ident, $what:literal) => {
        impl $name {
            /// Acquires, waiting as long as it takes.
            ///
            /// # Errors
            /// [`ErrorKind::Disconnected`] if the manager is gone.
            pub fn acquire(&self) -> Result<Acquired> {
                self.acquire_wait(None)
            }

            /// Acquires if free now.
            ///
            /// # Errors
            /// [`ErrorKind::WouldBlock`] if taken; otherwise as [`acquire`](Self::acquire).
            pub fn try_acquire(&self) -> Result<Acquired> {
                self.acquire_wait(NOW)
            }

            /// Acquires, waiting at most `timeout`.
            ///
            /// # Errors
            /// [`ErrorKind::Timeout`] if still taken then; otherwise as [`acquire`](Self::acquire).
            pub fn acquire_timeout(&self, timeout: Duration) -> Result<Acquired> {
                self.acquire_wait(wait_until(deadline_after(timeout)))
            }

            /// Acquires, waiting until `deadline`.
            ///
            /// # Errors
            /// [`ErrorKind::Timeout`] if still taken then; otherwise as [`acquire`](Self::acquire).
            pub fn acquire_deadline(&self, deadline: Instant) -> Result<Acquired> {
                self.acquire_wait(wait_until(Some(deadline)))
            }

            fn acquire_wait(&self, wait: Wait) -> Result<Acquired> {
                match self.link.call(Op::Acquire(self.link.owner(), wait), wait)? {
                    Response::Acquired { owner_died } => Ok(Acquired { owner_died }),
                    r => Err(unexpected(r)),
                }
            }

            #[doc = concat!("Releases the ", $what, ".")]
            ///
            /// # Errors
            /// [`ErrorKind::Unsupported`] if it is not held (an `RLock` or `Condition` not held
            /// by this thread; a bounded semaphore released too often);
            /// [`ErrorKind::Disconnected`] if the manager is gone.
            pub fn release(&self) -> Result<()> {
                done(self.link.call(Op::Release(self.link.owner()), None)?)
            }
        }
    };
}

proxy! {
    /// A mutual-exclusion lock in a manager (Python's `manager.Lock()`), usable across hosts.
    ///
    /// If the process holding it dies (even by `SIGKILL`), or its connection breaks, the
    /// server releases it, and the next [`acquire`](Lock::acquire) reports
    /// [`previous_owner_died`](Acquired::previous_owner_died). Like Python's, any holder of the
    /// proxy may release it.
    ///
    /// ```
    /// let manager = multiproc::Manager::start()?;
    /// let lock = manager.lock("l")?;
    /// let a = lock.acquire()?;
    /// assert!(!a.previous_owner_died());
    /// assert!(lock.try_acquire().unwrap_err().is_would_block());
    /// lock.release()?;
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    Lock<>
}
lock_methods!(Lock, "lock");

proxy! {
    /// A reentrant lock in a manager (Python's `manager.RLock()`): the thread that holds it
    /// may acquire it again, and must release it as many times. The owner is the thread and
    /// the proxy instance (a proxy passed to another process is another owner).
    RLock<>
}
lock_methods!(RLock, "lock once");

proxy! {
    /// A counting semaphore in a manager (Python's `manager.Semaphore(n)` and
    /// `BoundedSemaphore(n)`). Permits held by a process that dies are given back.
    Semaphore<>
}
lock_methods!(Semaphore, "semaphore (gives one permit back)");

proxy! {
    /// A condition variable with its own reentrant lock (Python's `manager.Condition()`).
    ///
    /// ```
    /// use std::time::Duration;
    /// let manager = multiproc::Manager::start()?;
    /// let cond = manager.condition("c")?;
    /// let _ = cond.acquire()?;
    /// // Nobody notifies: the wait times out, with the lock held again.
    /// assert!(!cond.wait_timeout(Duration::from_millis(10))?);
    /// cond.release()?;
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    Condition<>
}
lock_methods!(Condition, "condition's lock");

impl Condition {
    /// Releases the lock, waits for a notification, takes the lock back.
    ///
    /// # Errors
    /// [`ErrorKind::Unsupported`] if this thread does not hold the lock.
    pub fn wait(&self) -> Result<()> {
        self.wait_opt(None).map(drop)
    }

    /// [`wait`](Self::wait) for at most `timeout`: `true` if notified, `false` on timeout
    /// (the lock is held again either way).
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
        self.wait_opt(wait_until(deadline_after(timeout)))
    }

    fn wait_opt(&self, wait: Wait) -> Result<bool> {
        flag(
            self.link
                .call(Op::WaitCond(self.link.owner(), wait), wait)?,
        )
    }

    /// Wakes up to `n` waiters.
    ///
    /// # Errors
    /// [`ErrorKind::Disconnected`] if the manager is gone.
    pub fn notify(&self, n: usize) -> Result<()> {
        done(self.link.call(Op::Notify(n as u64), None)?)
    }

    /// Wakes every waiter.
    ///
    /// # Errors
    /// As [`notify`](Self::notify).
    pub fn notify_all(&self) -> Result<()> {
        done(self.link.call(Op::NotifyAll, None)?)
    }
}

proxy! {
    /// A flag that processes wait for (Python's `manager.Event()`).
    Event<>
}

impl Event {
    /// Sets the flag and wakes every waiter.
    ///
    /// # Errors
    /// [`ErrorKind::Disconnected`] if the manager is gone.
    pub fn set(&self) -> Result<()> {
        done(self.link.call(Op::Set, None)?)
    }

    /// Clears the flag.
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub fn clear(&self) -> Result<()> {
        done(self.link.call(Op::Unset, None)?)
    }

    /// Whether the flag is set.
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub fn is_set(&self) -> Result<bool> {
        flag(self.link.call(Op::IsSet, None)?)
    }

    /// Waits until the flag is set.
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub fn wait(&self) -> Result<()> {
        flag(self.link.call(Op::WaitEvent(None), None)?).map(drop)
    }

    /// Waits at most `timeout`: whether the flag is set.
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
        let w = wait_until(deadline_after(timeout));
        flag(self.link.call(Op::WaitEvent(w), w)?)
    }
}

proxy! {
    /// A barrier for a fixed number of parties (Python's `manager.Barrier(n)`).
    ///
    /// A wait that times out breaks the barrier for everyone (as in Python);
    /// [`reset`](Barrier::reset) mends it.
    Barrier<>
}

impl Barrier {
    /// Waits until every party arrived; returns this party's arrival index (`0..parties`).
    ///
    /// # Errors
    /// [`ErrorKind::Closed`] if the barrier is or becomes broken.
    pub fn wait(&self) -> Result<usize> {
        count(self.link.call(Op::WaitBarrier(None), None)?).map(len)
    }

    /// [`wait`](Self::wait) for at most `timeout`.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] (and the barrier breaks) if not every party came in time.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<usize> {
        let w = wait_until(deadline_after(timeout));
        count(self.link.call(Op::WaitBarrier(w), w)?).map(len)
    }

    /// Breaks the barrier: current and later waiters fail until [`reset`](Self::reset).
    ///
    /// # Errors
    /// [`ErrorKind::Disconnected`] if the manager is gone.
    pub fn abort(&self) -> Result<()> {
        done(self.link.call(Op::Abort, None)?)
    }

    /// Returns the barrier to its empty, unbroken state (current waiters fail).
    ///
    /// # Errors
    /// [`ErrorKind::Disconnected`] if the manager is gone.
    pub fn reset(&self) -> Result<()> {
        done(self.link.call(Op::Reset, None)?)
    }

    /// The number of parties.
    ///
    /// # Errors
    /// [`ErrorKind::Disconnected`] if the manager is gone.
    pub fn parties(&self) -> Result<usize> {
        count(self.link.call(Op::Len, None)?).map(len)
    }
}

// ---------------------------------------------------------------------------------------------
// Custom objects
// ---------------------------------------------------------------------------------------------

proxy! {
    /// A handle on a custom [`SharedObject`] living in a manager, from
    /// [`Manager::object`](crate::Manager::object).
    Object<T>
}

impl<T: SharedObject> Object<T> {
    /// Sends `request` to the object and returns its response.
    ///
    /// # Errors
    /// [`ErrorKind::Decode`] if the server could not decode it; [`ErrorKind::Unsupported`]
    /// if the object panicked; [`ErrorKind::Disconnected`] if the manager is gone.
    pub fn call(&self, request: &T::Request) -> Result<T::Response> {
        one(self.link.call(Op::Custom(blob(request)?), None)?)
    }
}
