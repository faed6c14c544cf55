//! Message encoding: serde values to bytes (postcard) plus a side table of file descriptors.
//!
//! Handles that own a descriptor (a [`Connection`](crate::Connection), a queue, ...) serialise
//! as an index into the side table of the message being encoded: [`serialize_fd`] moves a
//! duplicate of the descriptor into the table and writes its index; the frame then carries the
//! table with SCM_RIGHTS. On the receiving side [`deserialize_fd`] takes descriptor `i` out of
//! the table of the frame being decoded. A handle serialised anywhere else (to JSON, say) is an
//! error, and so is an index that is out of range or used twice: bytes alone can never conjure
//! a descriptor.

pub(crate) mod frame;
mod keep;

use std::cell::RefCell;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, ErrorKind};
use crate::fdreg::{self, RegisteredFd};

thread_local! {
    /// The text of the last `custom` error on this thread while an encode or decode runs
    /// (postcard drops it; see `keep.rs`).
    static LAST_CUSTOM: RefCell<Option<String>> = const { RefCell::new(None) };
    /// The side table of the message being encoded on this thread (see [`serialize_fd`]).
    static OUTGOING: RefCell<Option<Vec<RegisteredFd>>> = const { RefCell::new(None) };
    /// The side table of the frame being decoded on this thread (see [`deserialize_fd`]).
    static INCOMING: RefCell<Option<Vec<Option<RegisteredFd>>>> = const { RefCell::new(None) };
}

/// Restores the previous side table when an encode/decode scope ends (even by panic).
struct Scope<'a, T: 'static> {
    key: &'static std::thread::LocalKey<RefCell<Option<T>>>,
    saved: Option<T>,
    _p: std::marker::PhantomData<&'a ()>,
}

impl<T: 'static> Scope<'_, T> {
    fn enter(key: &'static std::thread::LocalKey<RefCell<Option<T>>>, table: T) -> Self {
        let saved = key.with(|c| c.borrow_mut().replace(table));
        Scope {
            key,
            saved,
            _p: std::marker::PhantomData,
        }
    }
    fn finish(mut self) -> Option<T> {
        let saved = self.saved.take();
        self.key
            .with(|c| std::mem::replace(&mut *c.borrow_mut(), saved))
    }
}

impl<T: 'static> Drop for Scope<'_, T> {
    fn drop(&mut self) {
        if let Some(saved) = self.saved.take() {
            self.key.with(|c| *c.borrow_mut() = Some(saved));
        }
    }
}

/// Serialises `value` by appending to `out`; descriptors of handles inside it go to `fds`.
///
/// A failure carries the message of the `Serialize` code that failed (the value's own, or a
/// handle's), which postcard alone would drop: when postcard reports a message it dropped,
/// the value is encoded once more through `keep.rs`'s wrapper, which keeps it. (Plain
/// postcard first, because the wrapper costs a few nanoseconds per element, which is a
/// quarter of a pool's time per trivial task.)
pub(crate) fn encode<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
    fds: &mut Vec<RegisteredFd>,
) -> Result<(), Error> {
    let (start, had) = (out.len(), fds.len());
    let scope = Scope::enter(&OUTGOING, std::mem::take(fds));
    let mut res = postcard::to_io(value, &mut *out).map(drop);
    if matches!(res, Err(postcard::Error::SerdeSerCustom)) {
        out.truncate(start);
        // The first try's duplicates go; the caller's own entries stay.
        OUTGOING.with(|c| c.borrow_mut().as_mut().map(|t| t.truncate(had)));
        keep::clear();
        res = postcard::to_io(&keep::Keep(value), &mut *out).map(drop);
    }
    *fds = scope.finish().unwrap_or_default();
    match res {
        Ok(_) => {
            if fds.len() > crate::sys::socket::MAX_FDS_PER_FRAME {
                return Err(Error::msg(
                    ErrorKind::Encode,
                    format!(
                        "a message may carry at most {} handles, this one has {}",
                        crate::sys::socket::MAX_FDS_PER_FRAME,
                        fds.len()
                    ),
                ));
            }
            Ok(())
        }
        Err(e) => Err(Error::msg(ErrorKind::Encode, explain(e))),
    }
}

/// The message of a failed encode or decode: the one a `custom` call gave, when there was
/// one (see `keep.rs`), else postcard's own.
fn explain(e: postcard::Error) -> String {
    match e {
        postcard::Error::SerdeSerCustom | postcard::Error::SerdeDeCustom => {
            keep::take().unwrap_or_else(|| e.to_string())
        }
        _ => e.to_string(),
    }
}

/// Fails a (de)serialisation with `msg`. Handle types use it for their validation errors;
/// the message reaches the caller like any `custom` error's (see `keep.rs`).
pub(crate) fn custom<E: std::fmt::Display, T>(
    msg: String,
    make: impl FnOnce(String) -> E,
) -> Result<T, E> {
    Err(make(msg))
}

/// Deserialises a `T` from exactly `bytes`, with `fds` as the side table.
///
/// Descriptors the value does not claim are closed. A failure carries the message of the
/// `Deserialize` code that failed (serde's "invalid value: ...", the type's own), which
/// postcard alone would drop: a frame without descriptors is decoded with plain postcard and,
/// if postcard reports a message it dropped, once more through `keep.rs`'s wrapper; a frame
/// with descriptors goes through the wrapper at once (a first try would have consumed them).
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    fds: Vec<RegisteredFd>,
) -> Result<T, Error> {
    let plain_first = fds.is_empty();
    let table: Vec<Option<RegisteredFd>> = fds.into_iter().map(Some).collect();
    let scope = Scope::enter(&INCOMING, table);
    let mut res = if plain_first {
        postcard::take_from_bytes::<T>(bytes)
    } else {
        Err(postcard::Error::SerdeDeCustom)
    };
    if matches!(res, Err(postcard::Error::SerdeDeCustom)) {
        keep::clear();
        let mut de = postcard::Deserializer::from_bytes(bytes);
        res = serde::de::DeserializeSeed::deserialize(
            keep::Seed(std::marker::PhantomData::<T>),
            &mut de,
        )
        .and_then(|v| Ok((v, de.finalize()?)));
    }
    drop(scope.finish());
    match res {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(Error::msg(
            ErrorKind::Decode,
            format!("{} unexpected trailing bytes after the value", rest.len()),
        )),
        Err(e) => Err(Error::msg(ErrorKind::Decode, explain(e))),
    }
}

/// Serialises a descriptor-owning handle: a duplicate goes into the side table, its index
/// into the bytes. Fails outside a multiproc encode.
pub(crate) fn serialize_fd<S: Serializer>(
    fd: std::os::fd::BorrowedFd<'_>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let index = OUTGOING.with(|c| -> Result<u32, String> {
        let mut table = c.borrow_mut();
        let table = table.as_mut().ok_or_else(|| {
            "multiproc handles can only be serialised by multiproc itself (as Process/Pool \
             arguments or inside Connection messages)"
                .to_string()
        })?;
        let dup = fdreg::duplicate(fd).map_err(|e| format!("duplicating a handle: {e}"))?;
        table.push(dup);
        Ok((table.len() - 1) as u32)
    });
    match index {
        Ok(i) => s.serialize_u32(i),
        Err(msg) => custom(msg, <S::Error as serde::ser::Error>::custom),
    }
}

/// Takes the descriptor a handle refers to out of the side table of the frame being decoded.
pub(crate) fn deserialize_fd<'de, D: Deserializer<'de>>(d: D) -> Result<RegisteredFd, D::Error> {
    let index = u32::deserialize(d)? as usize;
    let taken = INCOMING.with(|c| {
        let mut table = c.borrow_mut();
        let Some(table) = table.as_mut() else {
            return Err(
                "multiproc handles can only be deserialised by multiproc itself".to_string(),
            );
        };
        match table.get_mut(index) {
            Some(slot) => slot
                .take()
                .ok_or_else(|| format!("handle {index} is referenced twice in one message")),
            None => Err(format!(
                "handle {index} refers to a descriptor that did not arrive with the message \
                 (forged or foreign bytes)"
            )),
        }
    });
    match taken {
        Ok(fd) => Ok(fd),
        Err(msg) => custom(msg, <D::Error as serde::de::Error>::custom),
    }
}

/// Helper so `Vec<u8>` payloads travel as one byte string rather than element by element.
pub(crate) mod bytes {
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

#[cfg(test)]
mod tests;
