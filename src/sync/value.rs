//! `Value`, `Array` (plain data behind a robust lock) and `RawValue`, `RawArray` (without one).

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytemuck::Pod;

use super::lock::Lock;
use super::lock_error;
use super::segment::{Elem, Kind, Segment, CONTROL, LOCK};
use crate::error::Result;
use crate::sys::robust;
use crate::wait::deadline_after;

fn create<T: Pod>(kind: Kind, items: &[T]) -> Result<Arc<Segment>> {
    let seg = Segment::create(kind, Elem::of::<T>(), items.len() as u64, 0)?;
    let bytes: &[u8] = bytemuck::cast_slice(items);
    if !bytes.is_empty() {
        seg.map().write(CONTROL, bytes);
    }
    Ok(Arc::new(seg))
}

fn zeroed<T: Pod>(kind: Kind, len: usize) -> Result<Arc<Segment>> {
    // A fresh memfd reads as zeros: nothing to write.
    Ok(Arc::new(Segment::create(
        kind,
        Elem::of::<T>(),
        len as u64,
        0,
    )?))
}

/// Locks a segment's data: the held lock, and whether its previous owner died.
fn lock_data<'a>(
    seg: &'a Segment,
    deadline: Option<Instant>,
    nonblocking: bool,
    what: &str,
) -> Result<(robust::Held<'a>, bool)> {
    let (held, got) = robust::Held::lock(
        seg.map(),
        LOCK,
        CONTROL,
        seg.data_len(),
        deadline,
        nonblocking,
    )
    .map_err(|e| lock_error(e, what, nonblocking))?;
    Ok((held, got == robust::Acquired::OwnerDied))
}

/// Serde for a typed handle of `kinds`: received only as the same element type.
macro_rules! typed_serde {
    ($ty:ident, $kind:expr) => {
        impl<T> serde::Serialize for $ty<T> {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                super::segment::SendFd(&self.seg).serialize(s)
            }
        }

        impl<'de, T: Pod> serde::Deserialize<'de> for $ty<T> {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                Ok($ty {
                    seg: super::segment::receive(d, &[$kind], Elem::of::<T>())?,
                    _t: PhantomData,
                })
            }
        }

        impl<T> Clone for $ty<T> {
            fn clone(&self) -> Self {
                $ty {
                    seg: Arc::clone(&self.seg),
                    _t: PhantomData,
                }
            }
        }
    };
}

/// One value of plain data `T` in shared memory, behind a robust lock, like Python's
/// `multiprocessing.Value`.
///
/// [`lock`](Value::lock) returns a guard that derefs to `T` (read and write it in place): it
/// is Python's `with v.get_lock(): v.value += 1`. [`get`](Value::get) and
/// [`set`](Value::set) lock for one copy. [`get_lock`](Value::get_lock) is the same lock as a
/// [`Lock`] (to build a `Condition` over it, say); its guard gives no access to the value, and
/// while a thread holds it, `lock` in that thread is an error rather than a deadlock. The lock is a `Lock`,
/// not Python's default `RLock`, because its guard lends `&mut T`: locking again in the thread
/// that holds it is an error ([`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState)).
/// A holder that died is reported by the next guard's [`ValueGuard::owner_died`]: the value
/// may be half-updated.
///
/// `T` is a [`bytemuck::Pod`] type (numbers, arrays of them, `#[repr(C)]` structs deriving
/// `Pod`): any bytes are a valid `T`, so whatever another process wrote is safe to read. A
/// received handle must carry the same `T` (size, alignment and type name are checked): a
/// `Value<u64>` cannot be received as a `Value<u32>`.
///
/// ```
/// # fn main() -> multiproc::Result<()> {
/// let v = multiproc::Value::new(41u64)?;
/// *v.lock()? += 1;
/// assert_eq!(v.get()?, 42);
/// # Ok(()) }
/// ```
pub struct Value<T> {
    seg: Arc<Segment>,
    _t: PhantomData<fn() -> T>,
}

/// The locked value of a [`Value`]; unlocks on drop.
#[must_use = "the lock is released when the guard is dropped"]
pub struct ValueGuard<'a, T> {
    held: robust::Held<'a>,
    died: bool,
    _t: PhantomData<&'a mut T>,
}

impl<T: Pod> Value<T> {
    /// A shared value holding `value`.
    ///
    /// # Errors
    /// An `Io` error if the shared memory cannot be created; `Unsupported` for a zero-sized
    /// `T`.
    pub fn new(value: T) -> Result<Value<T>> {
        Ok(Value {
            seg: create(Kind::Value, std::slice::from_ref(&value))?,
            _t: PhantomData,
        })
    }

    fn locked(&self, deadline: Option<Instant>, nonblocking: bool) -> Result<ValueGuard<'_, T>> {
        let (held, died) = lock_data(&self.seg, deadline, nonblocking, "Value's lock")?;
        Ok(ValueGuard {
            held,
            died,
            _t: PhantomData,
        })
    }

    /// Locks the value, waiting as long as it takes.
    ///
    /// # Errors
    /// `InvalidState` if this thread holds the lock already.
    pub fn lock(&self) -> Result<ValueGuard<'_, T>> {
        self.locked(None, false)
    }

    /// Locks the value if nobody (alive) holds the lock.
    ///
    /// # Errors
    /// `WouldBlock` if another thread holds it.
    pub fn try_lock(&self) -> Result<ValueGuard<'_, T>> {
        self.locked(None, true)
    }

    /// Locks the value, waiting at most `timeout`.
    ///
    /// # Errors
    /// `Timeout` if the lock is still held then.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<ValueGuard<'_, T>> {
        self.locked(deadline_after(timeout), false)
    }

    /// Locks the value, waiting until `deadline` at most.
    ///
    /// # Errors
    /// As for [`lock_timeout`](Value::lock_timeout).
    pub fn lock_deadline(&self, deadline: Instant) -> Result<ValueGuard<'_, T>> {
        self.locked(Some(deadline), false)
    }

    /// A copy of the value, read under the lock.
    ///
    /// # Errors
    /// As for [`lock`](Value::lock).
    pub fn get(&self) -> Result<T> {
        Ok(*self.lock()?)
    }

    /// Stores `value` under the lock.
    ///
    /// # Errors
    /// As for [`lock`](Value::lock).
    pub fn set(&self, value: T) -> Result<()> {
        *self.lock()? = value;
        Ok(())
    }

    /// The value's lock as a [`Lock`] handle (the same lock `lock` takes).
    pub fn get_lock(&self) -> Lock {
        Lock::on(Arc::clone(&self.seg))
    }
}

impl<T: Pod> ValueGuard<'_, T> {
    /// Whether the previous holder died holding the lock (the value may be half-updated);
    /// only the guard of the acquisition that took the lock over says so.
    pub fn owner_died(&self) -> bool {
        self.died
    }
}

impl<T: Pod> std::ops::Deref for ValueGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        bytemuck::from_bytes(&self.held.bytes()[..std::mem::size_of::<T>()])
    }
}

impl<T: Pod> std::ops::DerefMut for ValueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        bytemuck::from_bytes_mut(&mut self.held.bytes_mut()[..std::mem::size_of::<T>()])
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for ValueGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValueGuard")
            .field("value", &**self)
            .field("owner_died", &self.died)
            .finish()
    }
}

impl<T> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Value")
            .field("type", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

typed_serde!(Value, Kind::Value);

/// A fixed-length array of plain data `T` in shared memory, behind a robust lock, like
/// Python's `multiprocessing.Array`: [`lock`](Array::lock) returns a guard that derefs to
/// `[T]`. Element type checks, the lock and dead holders as for [`Value`].
///
/// ```
/// # fn main() -> multiproc::Result<()> {
/// let a = multiproc::Array::new(&[1u32, 2, 3])?;
/// a.lock()?[1] = 20;
/// assert_eq!(a.to_vec()?, [1, 20, 3]);
/// # Ok(()) }
/// ```
pub struct Array<T> {
    seg: Arc<Segment>,
    _t: PhantomData<fn() -> T>,
}

/// The locked elements of an [`Array`]; unlocks on drop.
#[must_use = "the lock is released when the guard is dropped"]
pub struct ArrayGuard<'a, T> {
    held: robust::Held<'a>,
    died: bool,
    len: usize,
    _t: PhantomData<&'a mut [T]>,
}

impl<T: Pod> Array<T> {
    /// A shared array holding a copy of `items`.
    ///
    /// # Errors
    /// An `Io` error if the shared memory cannot be created; `Unsupported` for a zero-sized
    /// `T`; `TooLarge` above 1 TiB.
    pub fn new(items: &[T]) -> Result<Array<T>> {
        Ok(Array {
            seg: create(Kind::Array, items)?,
            _t: PhantomData,
        })
    }

    /// A shared array of `len` zeroed elements.
    ///
    /// # Errors
    /// As for [`new`](Array::new).
    pub fn zeroed(len: usize) -> Result<Array<T>> {
        Ok(Array {
            seg: zeroed::<T>(Kind::Array, len)?,
            _t: PhantomData,
        })
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.seg.count() as usize
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn locked(&self, deadline: Option<Instant>, nonblocking: bool) -> Result<ArrayGuard<'_, T>> {
        let (held, died) = lock_data(&self.seg, deadline, nonblocking, "Array's lock")?;
        Ok(ArrayGuard {
            held,
            died,
            len: self.len(),
            _t: PhantomData,
        })
    }

    /// Locks the array, waiting as long as it takes.
    ///
    /// # Errors
    /// `InvalidState` if this thread holds the lock already.
    pub fn lock(&self) -> Result<ArrayGuard<'_, T>> {
        self.locked(None, false)
    }

    /// Locks the array if nobody (alive) holds the lock.
    ///
    /// # Errors
    /// `WouldBlock` if another thread holds it.
    pub fn try_lock(&self) -> Result<ArrayGuard<'_, T>> {
        self.locked(None, true)
    }

    /// Locks the array, waiting at most `timeout`.
    ///
    /// # Errors
    /// `Timeout` if the lock is still held then.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<ArrayGuard<'_, T>> {
        self.locked(deadline_after(timeout), false)
    }

    /// Locks the array, waiting until `deadline` at most.
    ///
    /// # Errors
    /// As for [`lock_timeout`](Array::lock_timeout).
    pub fn lock_deadline(&self, deadline: Instant) -> Result<ArrayGuard<'_, T>> {
        self.locked(Some(deadline), false)
    }

    /// A copy of the elements, read under the lock.
    ///
    /// # Errors
    /// As for [`lock`](Array::lock).
    pub fn to_vec(&self) -> Result<Vec<T>> {
        Ok(self.lock()?.to_vec())
    }

    /// The array's lock as a [`Lock`] handle.
    pub fn get_lock(&self) -> Lock {
        Lock::on(Arc::clone(&self.seg))
    }
}

impl<T: Pod> ArrayGuard<'_, T> {
    /// Whether the previous holder died holding the lock; only the guard of the acquisition
    /// that took the lock over says so.
    pub fn owner_died(&self) -> bool {
        self.died
    }
}

impl<T: Pod> std::ops::Deref for ArrayGuard<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        bytemuck::cast_slice(&self.held.bytes()[..self.len * std::mem::size_of::<T>()])
    }
}

impl<T: Pod> std::ops::DerefMut for ArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        let n = self.len * std::mem::size_of::<T>();
        bytemuck::cast_slice_mut(&mut self.held.bytes_mut()[..n])
    }
}

impl<T: Pod> fmt::Debug for ArrayGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArrayGuard")
            .field("len", &self.len)
            .field("owner_died", &self.died)
            .finish()
    }
}

impl<T> fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Array")
            .field("type", &std::any::type_name::<T>())
            .field("len", &self.seg.count())
            .finish()
    }
}

typed_serde!(Array, Kind::Array);

/// One value of plain data `T` in shared memory **without a lock**, like Python's
/// `multiprocessing.RawValue`.
///
/// [`get`](RawValue::get) and [`set`](RawValue::set) copy the whole value in one
/// `memcpy`; nothing orders them with other processes' copies. That is safe (any bytes are a
/// valid `T`) but not synchronised: a `get` concurrent with a `set` in another process may
/// see a mix of the old and new bytes (a torn value), and a read-modify-write (`set(get() +
/// 1)`) by two processes loses updates. Use it for a value one process writes and others only
/// read when told to (after a `Queue` message or an `Event`), or use a [`Value`].
///
/// ```
/// # fn main() -> multiproc::Result<()> {
/// let v = multiproc::RawValue::new(1.5f64)?;
/// v.set(2.5);
/// assert_eq!(v.get(), 2.5);
/// # Ok(()) }
/// ```
pub struct RawValue<T> {
    seg: Arc<Segment>,
    _t: PhantomData<fn() -> T>,
}

impl<T: Pod> RawValue<T> {
    /// A shared value holding `value`.
    ///
    /// # Errors
    /// As for [`Value::new`].
    pub fn new(value: T) -> Result<RawValue<T>> {
        Ok(RawValue {
            seg: create(Kind::RawValue, std::slice::from_ref(&value))?,
            _t: PhantomData,
        })
    }

    /// A copy of the value (unsynchronised: see the type's docs).
    pub fn get(&self) -> T {
        let mut v = T::zeroed();
        self.seg.map().read(CONTROL, bytemuck::bytes_of_mut(&mut v));
        v
    }

    /// Stores `value` (unsynchronised: see the type's docs).
    pub fn set(&self, value: T) {
        self.seg.map().write(CONTROL, bytemuck::bytes_of(&value));
    }
}

impl<T> fmt::Debug for RawValue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawValue")
            .field("type", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

typed_serde!(RawValue, Kind::RawValue);

/// A fixed-length array of plain data `T` in shared memory **without a lock**, like Python's
/// `multiprocessing.RawArray`. Every access is a copy ([`get`](RawArray::get),
/// [`set`](RawArray::set), [`read`](RawArray::read), [`write`](RawArray::write)), safe and
/// unsynchronised as for [`RawValue`]: give each process its own range (workers filling
/// disjoint slices), or order accesses with another primitive.
///
/// ```
/// # fn main() -> multiproc::Result<()> {
/// let a = multiproc::RawArray::<u16>::zeroed(4)?;
/// a.set(3, 7);
/// assert_eq!(a.to_vec(), [0, 0, 0, 7]);
/// # Ok(()) }
/// ```
pub struct RawArray<T> {
    seg: Arc<Segment>,
    _t: PhantomData<fn() -> T>,
}

impl<T: Pod> RawArray<T> {
    /// A shared array holding a copy of `items`.
    ///
    /// # Errors
    /// As for [`Array::new`].
    pub fn new(items: &[T]) -> Result<RawArray<T>> {
        Ok(RawArray {
            seg: create(Kind::RawArray, items)?,
            _t: PhantomData,
        })
    }

    /// A shared array of `len` zeroed elements.
    ///
    /// # Errors
    /// As for [`Array::new`].
    pub fn zeroed(len: usize) -> Result<RawArray<T>> {
        Ok(RawArray {
            seg: zeroed::<T>(Kind::RawArray, len)?,
            _t: PhantomData,
        })
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.seg.count() as usize
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check(&self, start: usize, n: usize) {
        assert!(
            start.checked_add(n).is_some_and(|end| end <= self.len()),
            "RawArray access {start}..{start}+{n} out of range for length {}",
            self.len()
        );
    }

    /// A copy of element `i`.
    ///
    /// # Panics
    /// If `i >= len()`, as slice indexing does.
    pub fn get(&self, i: usize) -> T {
        let mut v = T::zeroed();
        self.read(i, std::slice::from_mut(&mut v));
        v
    }

    /// Stores `value` at `i`.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn set(&self, i: usize, value: T) {
        self.write(i, std::slice::from_ref(&value));
    }

    /// Copies `out.len()` elements from `start` into `out`.
    ///
    /// # Panics
    /// If the range goes past `len()`.
    pub fn read(&self, start: usize, out: &mut [T]) {
        self.check(start, out.len());
        let size = std::mem::size_of::<T>();
        self.seg
            .map()
            .read(CONTROL + start * size, bytemuck::cast_slice_mut(out));
    }

    /// Copies `items` to the elements from `start`.
    ///
    /// # Panics
    /// If the range goes past `len()`.
    pub fn write(&self, start: usize, items: &[T]) {
        self.check(start, items.len());
        let size = std::mem::size_of::<T>();
        self.seg
            .map()
            .write(CONTROL + start * size, bytemuck::cast_slice(items));
    }

    /// A copy of all elements.
    pub fn to_vec(&self) -> Vec<T> {
        let mut v = vec![T::zeroed(); self.len()];
        self.read(0, &mut v);
        v
    }
}

impl<T> fmt::Debug for RawArray<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawArray")
            .field("type", &std::any::type_name::<T>())
            .field("len", &self.seg.count())
            .finish()
    }
}

typed_serde!(RawArray, Kind::RawArray);
