//! The methods every flavour shares, written once.
//!
//! Each flavour is a `struct { h: Handle, _item }`; these macros give it the blocking family
//! of `put` and `get` (`op`, `try_op`, `op_timeout`, `op_deadline`, with the one result shape of
//! the crate docs) and the state questions, all forwarding to [`Handle`](super::Handle). The
//! docs are written for [`Queue`](crate::Queue) and hold for every flavour.

/// `put`, `try_put`, `put_timeout`, `put_deadline` for a flavour (needs `T: Serialize`).
macro_rules! put_methods {
    ($ty:ident) => {
        impl<T: serde::Serialize> $ty<T> {
            /// Puts an item, blocking while the queue is full (its `maxsize` items, or its
            /// byte ring, are taken).
            ///
            /// Returns once the item is in shared memory: from then on it does not depend on
            /// this process staying alive.
            ///
            /// # Errors
            /// The item comes back in the [`PutError`](crate::PutError):
            /// [`ErrorKind::Closed`](crate::ErrorKind::Closed) if this handle was closed,
            /// [`ErrorKind::Encode`](crate::ErrorKind::Encode) if serde fails or the item holds
            /// a handle (send those through a [`Connection`](crate::Connection) instead),
            /// [`ErrorKind::Protocol`](crate::ErrorKind::Protocol) if the queue's shared memory
            /// was found corrupt.
            pub fn put(&self, item: T) -> std::result::Result<(), $crate::error::PutError<T>> {
                self.h.put(item, None, false)
            }

            /// Puts an item if there is room right now (`put_nowait()`).
            ///
            /// "Right now" includes a brief wait for the producers' lock, which is only ever
            /// held for the time of one copy.
            ///
            /// # Errors
            /// [`ErrorKind::WouldBlock`](crate::ErrorKind::WouldBlock) when full (or while
            /// another producer holds the lock); otherwise as `put`.
            pub fn try_put(&self, item: T) -> std::result::Result<(), $crate::error::PutError<T>> {
                self.h.put(item, Some(std::time::Instant::now()), true)
            }

            /// Puts an item, waiting at most `timeout` for room (`put(timeout=)`). A timeout
            /// too large to add to `Instant::now()` (`Duration::MAX`) means no limit.
            ///
            /// # Errors
            /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) if the queue stayed full;
            /// otherwise as `put`.
            pub fn put_timeout(
                &self,
                item: T,
                timeout: std::time::Duration,
            ) -> std::result::Result<(), $crate::error::PutError<T>> {
                self.h
                    .put(item, $crate::wait::deadline_after(timeout), false)
            }

            /// Puts an item, waiting until `deadline` for room.
            ///
            /// If a large item times out after some of its chunks went in, those are withdrawn
            /// (the consumer reading them drops them) and the item comes back whole in the
            /// error.
            ///
            /// # Errors
            /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) if the queue stayed full;
            /// otherwise as `put`.
            pub fn put_deadline(
                &self,
                item: T,
                deadline: std::time::Instant,
            ) -> std::result::Result<(), $crate::error::PutError<T>> {
                self.h.put(item, Some(deadline), false)
            }
        }
    };
}

/// `get`, `try_get`, `get_timeout`, `get_deadline` for a flavour (needs `T: DeserializeOwned`).
macro_rules! get_methods {
    ($ty:ident) => {
        impl<T: serde::de::DeserializeOwned> $ty<T> {
            /// Takes the next item, blocking until there is one.
            ///
            /// # Errors
            /// [`ErrorKind::Closed`](crate::ErrorKind::Closed) if this handle was closed;
            /// [`ErrorKind::Decode`](crate::ErrorKind::Decode) if the bytes are not a `T` (the
            /// item is consumed); [`ErrorKind::TooLarge`](crate::ErrorKind::TooLarge) if an
            /// item does not fit in this process's memory (it is dropped);
            /// [`ErrorKind::Protocol`](crate::ErrorKind::Protocol) if the queue's shared memory
            /// was found corrupt.
            pub fn get(&self) -> $crate::error::Result<T> {
                self.h.get(None, false)
            }

            /// Takes the next item if there is one now (`get_nowait()`).
            ///
            /// # Errors
            /// [`ErrorKind::WouldBlock`](crate::ErrorKind::WouldBlock) if the queue is empty,
            /// and also while another consumer is inside `get` on an empty queue (it holds the
            /// consumers' lock while it waits), as with Python; otherwise as `get`.
            pub fn try_get(&self) -> $crate::error::Result<T> {
                self.h.get(Some(std::time::Instant::now()), true)
            }

            /// Takes the next item, waiting at most `timeout` (`get(timeout=)`). A timeout too
            /// large to add to `Instant::now()` (`Duration::MAX`) means no limit.
            ///
            /// # Errors
            /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) if no whole item came;
            /// otherwise as `get`.
            pub fn get_timeout(&self, timeout: std::time::Duration) -> $crate::error::Result<T> {
                self.h.get($crate::wait::deadline_after(timeout), false)
            }

            /// Takes the next item, waiting until `deadline`.
            ///
            /// The deadline holds whatever other processes do, also in the middle of a large
            /// item whose producer stalls: then the part received so far is kept in this
            /// process and the next `get` here resumes the item where it stopped, so nothing
            /// is lost (until then other processes' gets wait for it, as they would wait for a
            /// consumer inside `get`).
            ///
            /// # Errors
            /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) if no whole item came;
            /// otherwise as `get`.
            pub fn get_deadline(&self, deadline: std::time::Instant) -> $crate::error::Result<T> {
                self.h.get(Some(deadline), false)
            }
        }
    };
}

/// `len`, `is_empty`, `is_full`, `maxsize`, `close`, `is_closed` for a flavour.
macro_rules! state_methods {
    ($ty:ident) => {
        impl<T> $ty<T> {
            /// The number of items queued (`qsize()`); approximate while others use the queue.
            pub fn len(&self) -> usize {
                self.h.len()
            }

            /// Whether no item is queued (`empty()`); approximate while others use the queue.
            pub fn is_empty(&self) -> bool {
                self.h.len() == 0
            }

            /// Whether `maxsize` items are queued (`full()`); always `false` for an unbounded
            /// queue. Approximate while others use the queue.
            pub fn is_full(&self) -> bool {
                self.h.is_full()
            }

            /// The item limit, `None` when unbounded.
            pub fn maxsize(&self) -> Option<usize> {
                self.h.maxsize()
            }

            /// Closes this handle (Python's `close()`): its `put` and `get` then fail with
            /// [`ErrorKind::Closed`](crate::ErrorKind::Closed) (the item is given back). Other
            /// handles, clones included, and other processes are not affected; the items stay
            /// queued.
            pub fn close(&self) {
                self.h.close()
            }

            /// Whether `close` was called on this handle.
            pub fn is_closed(&self) -> bool {
                self.h.is_closed()
            }
        }

        impl<T> Clone for $ty<T> {
            /// Another handle on the same queue (open even if this one was closed).
            fn clone(&self) -> Self {
                $ty {
                    h: self.h.clone(),
                    _item: std::marker::PhantomData,
                }
            }
        }

        impl<T> std::fmt::Debug for $ty<T> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.h.debug(stringify!($ty), f)
            }
        }
    };
}

pub(super) use {get_methods, put_methods, state_methods};
