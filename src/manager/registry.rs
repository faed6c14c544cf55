//! Custom shared objects: a user type whose requests and responses are typed, constructed
//! in the server by code the server's executable already has.
//!
//! A manager's registry is a *type*: `ManagerBuilder::register::<T>()` turns a builder of
//! registry `R` into one of `(T, R)`, and the server process runs `server_main::<R>`, a
//! function item monomorphised for exactly those types. So the server can construct a `T`
//! (with `Default`) and decode its requests without any name-to-function table, and a client
//! can only name a type that the code starting the server registered.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A type whose values live in a manager's server and answer typed requests: the analog of
/// Python's `BaseManager.register(typeid, callable)`, with a request enum instead of method
/// names.
///
/// ```
/// use multiproc::manager::SharedObject;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Default)]
/// struct Counter { hits: u64 }
///
/// #[derive(Serialize, Deserialize)]
/// enum CounterOp { Add(u64), Read }
///
/// impl SharedObject for Counter {
///     type Request = CounterOp;
///     type Response = u64;
///     fn handle(&mut self, op: CounterOp) -> u64 {
///         match op {
///             CounterOp::Add(n) => { self.hits += n; self.hits }
///             CounterOp::Read => self.hits,
///         }
///     }
/// }
///
/// let manager = multiproc::Manager::builder().register::<Counter>().start()?;
/// let c = manager.object::<Counter>("hits")?;
/// c.call(&CounterOp::Add(2))?;
/// assert_eq!(c.call(&CounterOp::Read)?, 2);
/// # Ok::<(), multiproc::Error>(())
/// ```
///
/// `handle` runs in the server with the object's lock held, one request at a time; a panic
/// inside it fails that request (the object keeps whatever state the panic left).
pub trait SharedObject: Default + Send + 'static {
    /// What a client asks.
    type Request: Serialize + DeserializeOwned;
    /// What the object answers.
    type Response: Serialize + DeserializeOwned;
    /// Answers one request.
    fn handle(&mut self, request: Self::Request) -> Self::Response;
}

pub(crate) use sealed::{Erased, Failure, Registry};

mod sealed {
    #![allow(unreachable_pub)] // sealed: public in a private module, not nameable outside

    /// A custom object with its types erased, as the server holds it.
    pub trait Erased: Send {
        /// Decodes a request, handles it, encodes the response.
        fn handle(&mut self, request: &[u8]) -> Result<Vec<u8>, Failure>;
    }

    /// Why a custom object's request failed.
    #[derive(Debug)]
    pub enum Failure {
        /// The request did not decode as the type's `Request`.
        Decode(String),
        /// `handle` panicked (with this message), or its response did not encode.
        Handler(String),
    }

    /// The list of custom types a manager's server can construct (built by
    /// [`register`](crate::manager::ManagerBuilder::register)).
    pub trait Registry: 'static {
        /// A new object of the registered type whose signature is `signature`.
        fn make(signature: &str) -> Option<Box<dyn Erased>>;
    }
}

/// The signature a custom type is registered and attached under.
pub(crate) fn signature_of<T: 'static>() -> String {
    std::any::type_name::<T>().to_string()
}

impl Registry for () {
    fn make(_: &str) -> Option<Box<dyn Erased>> {
        None
    }
}

impl<T: SharedObject, R: Registry> Registry for (T, R) {
    fn make(signature: &str) -> Option<Box<dyn Erased>> {
        if signature == std::any::type_name::<T>() {
            Some(Box::new(Holder(T::default())))
        } else {
            R::make(signature)
        }
    }
}

struct Holder<T>(T);

impl<T: SharedObject> Erased for Holder<T> {
    fn handle(&mut self, request: &[u8]) -> Result<Vec<u8>, Failure> {
        let req: T::Request = crate::codec::decode(request, Vec::new())
            .map_err(|e| Failure::Decode(e.to_string()))?;
        let obj = &mut self.0;
        let resp = crate::task::catch_panic(move || obj.handle(req))
            .map_err(|(msg, _)| Failure::Handler(format!("the object panicked: {msg}")))?;
        super::protocol::blob(&resp)
            .map(|b| b.0)
            .map_err(|e| Failure::Handler(e.to_string()))
    }
}
