//! Managers: typed shared objects (dicts, lists, queues, values, locks, a namespace, and
//! your own types) held by a server process and used through proxies, on this machine or
//! from other hosts (Python's `multiprocessing.Manager` and `BaseManager`).
//!
//! [`Manager::start`] runs the server in a child process (it dies with this one);
//! [`Manager::serve`] does the same on an address other hosts can reach, and
//! [`Manager::connect`] reaches one. Each `manager.dict(name)` (and the others) names an
//! object in the server, creating it on first use; every proxy of that name, in any process,
//! reaches the same object. Proxies are ordinary task arguments:
//!
//! ```
//! use multiproc::{manager::Dict, Manager, Process};
//!
//! let manager = Manager::start()?;
//! let scores = manager.dict::<String, u32>("scores")?;
//! let p = Process::spawn(scores.clone(), |d: Dict<String, u32>| {
//!     d.insert("child".to_string(), 7).unwrap();
//! })?;
//! p.join()?;
//! assert_eq!(scores.get(&"child".to_string())?, Some(7));
//! # Ok::<(), multiproc::Error>(())
//! ```
//!
//! Element types are part of an object's identity: attaching to `"scores"` as a
//! `Dict<u32, String>` fails with [`ErrorKind::Decode`] and a message naming both types.
//!
//! # What crosses the wire
//!
//! Requests are a closed enum decoded with postcard; stored values are the bytes their
//! proxies encoded (the server never decodes them, except for a [`SharedObject`]'s requests,
//! decoded by the code registered for that type). No code is ever named or run from received
//! bytes. `src/manager/README.md` is the protocol.
//!
//! # Security
//!
//! Connections are made by [`Listener`](crate::connection::Listener) and
//! [`Client`](crate::connection::Client): the authkey authenticates both sides (a mutual
//! HMAC challenge-response) before the manager decodes anything, and a wrong key is
//! [`ErrorKind::AuthenticationFailed`]. It does not encrypt, and managers do not use the
//! listener's TLS yet: on an untrusted network, reach the port through a tunnel. A proxy
//! carries its manager's address and key (so a child can reconnect), so a proxy is as
//! secret as the key.

mod link;
mod protocol;
mod proxy;
mod registry;
mod server;
mod transport;

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::connection::Address;
use crate::error::{Error, ErrorKind, Result};
use crate::{Pipe, Process};
use link::{roundtrip, Endpoint, Link};
use protocol::{blob, Init, Kind, Request, Response};
use registry::{signature_of, Registry};
use server::Limits;

pub use proxy::{
    Acquired, Barrier, Condition, Dict, Event, JoinableQueue, List, Lock, Namespace, Object, Queue,
    RLock, Semaphore, Value,
};
pub use registry::SharedObject;

/// How long `start`/`serve` wait for the server process to report that it listens.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A manager: a handle on a server process that holds shared objects.
///
/// Dropping a `Manager` that started its server ([`start`](Manager::start),
/// [`serve`](Manager::serve)) stops the server (as leaving Python's `with Manager()` block
/// does): proxies still in use then fail with [`ErrorKind::Disconnected`]. A `Manager` from
/// [`connect`](Manager::connect) leaves the server running.
#[derive(Debug)]
pub struct Manager {
    endpoint: Endpoint,
    server: Option<Process<()>>,
}

/// Sets up a manager: registers custom object types and limits, then
/// [`start`](ManagerBuilder::start)s or [`serve`](ManagerBuilder::serve)s it.
///
/// The type parameter lists the registered [`SharedObject`] types.
#[derive(Debug)]
pub struct ManagerBuilder<R = ()> {
    limits: Limits,
    _registry: PhantomData<fn() -> R>,
}

impl Default for ManagerBuilder<()> {
    fn default() -> Self {
        ManagerBuilder {
            limits: Limits::default(),
            _registry: PhantomData,
        }
    }
}

impl<R: Registry> ManagerBuilder<R> {
    /// Lets the server construct `T` (with `Default`) for [`Manager::object`]: the analog of
    /// `BaseManager.register`.
    pub fn register<T: SharedObject>(self) -> ManagerBuilder<(T, R)> {
        ManagerBuilder {
            limits: self.limits,
            _registry: PhantomData,
        }
    }

    /// The largest request the server accepts (default 64 MiB); a larger one closes the
    /// client's connection.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.limits.max_message = bytes;
        self
    }

    /// How many clients the server serves at once (default 1024); more are refused.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.limits.max_connections = n.max(1);
        self
    }

    /// Starts a private server in a child process, reachable only from this machine (a Unix
    /// socket in the abstract namespace, with a random authkey).
    ///
    /// # Errors
    /// [`ErrorKind::Io`] and the spawn errors of [`Process::spawn`].
    pub fn start(self) -> Result<Manager> {
        let name = format!(
            "multiproc-manager-{}-{:016x}",
            std::process::id(),
            u64::from_le_bytes(transport::random_bytes())
        );
        let key: [u8; 32] = transport::random_bytes();
        self.serve(&Address::Abstract(name.into_bytes()), &key)
    }

    /// Starts a server in a child process listening on `address` with `authkey` (port 0
    /// picks a free port: [`Manager::address`] says which).
    ///
    /// # Errors
    /// [`ErrorKind::Io`] if the address cannot be bound (in use, no permission).
    pub fn serve(self, address: &Address, authkey: &[u8]) -> Result<Manager> {
        let (ready, child_end): (Ready, Ready) = Pipe::new()?;
        let server = Process::builder()
            .name("multiproc-manager")
            .daemon(true)
            .spawn(
                (address.clone(), authkey.to_vec(), self.limits, child_end),
                server_main::<R>,
            )?;
        let bound = match ready.recv_timeout(START_TIMEOUT) {
            Ok(Ok(a)) => a,
            Ok(Err((unsupported, msg))) => {
                let _ = server.join();
                let kind = if unsupported {
                    ErrorKind::Unsupported
                } else {
                    ErrorKind::Io
                };
                return Err(Error::msg(kind, msg));
            }
            Err(e) => {
                let _ = server.kill();
                return Err(e.context("waiting for the manager's server to start"));
            }
        };
        Ok(Manager {
            endpoint: Endpoint {
                address: bound,
                authkey: authkey.to_vec(),
            },
            server: Some(server),
        })
    }
}

/// How the server reports that it listens (its address), or why it cannot (whether the
/// error was `Unsupported`, and its message).
type Ready = crate::Connection<std::result::Result<Address, (bool, String)>>;

/// The server process: bind, report, serve until killed.
fn server_main<R: Registry>((address, authkey, limits, ready): (Address, Vec<u8>, Limits, Ready)) {
    match transport::bind(&address, &authkey, limits.max_message) {
        Ok(listener) => {
            if ready.send(&Ok(listener.local_addr().clone())).is_err() {
                return;
            }
            drop(ready);
            server::serve::<R>(listener, limits);
        }
        Err(e) => {
            let unsupported = e.kind() == ErrorKind::Unsupported;
            let _ = ready.send(&Err((unsupported, e.to_string())));
        }
    }
}

impl Manager {
    /// Starts a manager whose server runs in a child process (Python's `Manager()`).
    ///
    /// # Errors
    /// As [`ManagerBuilder::start`].
    pub fn start() -> Result<Manager> {
        Self::builder().start()
    }

    /// A builder, to register custom types or set limits.
    pub fn builder() -> ManagerBuilder<()> {
        ManagerBuilder::default()
    }

    /// Starts a manager server on `address` for other hosts, in a child process of this one
    /// (it stops when this `Manager` is dropped or this process exits).
    ///
    /// ```
    /// use multiproc::Manager;
    /// let server = Manager::serve(&"127.0.0.1:0".parse()?, b"secret")?;
    /// let client = Manager::connect(server.address(), b"secret")?;
    /// client.queue::<u32>("tasks")?.put(5)?;
    /// assert_eq!(server.queue::<u32>("tasks")?.get()?, 5);
    /// assert!(Manager::connect(server.address(), b"wrong").is_err());
    /// # Ok::<(), multiproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`ManagerBuilder::serve`].
    pub fn serve(address: &Address, authkey: &[u8]) -> Result<Manager> {
        Self::builder().serve(address, authkey)
    }

    /// Connects to a manager served at `address` (Python's `BaseManager(address,
    /// authkey).connect()`), checking that it answers and accepts the key.
    ///
    /// # Errors
    /// [`ErrorKind::Disconnected`] if nothing listens there;
    /// [`ErrorKind::AuthenticationFailed`] if the key is refused.
    pub fn connect(address: &Address, authkey: &[u8]) -> Result<Manager> {
        let endpoint = Endpoint {
            address: address.clone(),
            authkey: authkey.to_vec(),
        };
        drop(endpoint.open()?);
        Ok(Manager {
            endpoint,
            server: None,
        })
    }

    /// Where the server listens.
    pub fn address(&self) -> &Address {
        &self.endpoint.address
    }

    /// The server's process, if this manager started it.
    pub fn server(&self) -> Option<&Process<()>> {
        self.server.as_ref()
    }

    /// Stops the server this manager started (and waits for it to exit); nothing for a
    /// connected one.
    ///
    /// # Errors
    /// [`ErrorKind::Io`] if the server could not be signalled.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        if let Some(p) = self.server.take() {
            p.kill()?;
            let _ = p.join();
        }
        Ok(())
    }

    fn attach<P>(
        &self,
        kind: Kind,
        name: &str,
        signature: String,
        init: Init,
        make: fn(Arc<Link>) -> P,
    ) -> Result<P> {
        Link::attach(self.endpoint.clone(), kind, name, signature, init).map(make)
    }

    /// The names and kinds of every object the server holds, sorted by name.
    ///
    /// # Errors
    /// [`ErrorKind::Disconnected`] if the server is gone.
    pub fn names(&self) -> Result<Vec<(String, String)>> {
        let chan = self.endpoint.open()?;
        match roundtrip(&chan, &Request::List, None).map_err(|e| self.endpoint.gone(e))? {
            Response::Names(v) => Ok(v.into_iter().map(|(n, k)| (n, format!("{k:?}"))).collect()),
            r => Err(r.error()),
        }
    }

    /// The dict `name` (created empty on first use).
    ///
    /// # Errors
    /// [`ErrorKind::Decode`] if `name` exists with other types or another kind;
    /// [`ErrorKind::Disconnected`] if the server is gone.
    pub fn dict<K, V>(&self, name: &str) -> Result<Dict<K, V>>
    where
        K: Serialize + DeserializeOwned + 'static,
        V: Serialize + DeserializeOwned + 'static,
    {
        let sig = format!("{}, {}", signature_of::<K>(), signature_of::<V>());
        self.attach(Kind::Dict, name, sig, Init::Empty, Dict::from_link)
    }

    /// The list `name` (created empty on first use).
    ///
    /// # Errors
    /// As [`dict`](Manager::dict).
    pub fn list<T: Serialize + DeserializeOwned + 'static>(&self, name: &str) -> Result<List<T>> {
        self.attach(
            Kind::List,
            name,
            signature_of::<T>(),
            Init::Empty,
            List::from_link,
        )
    }

    /// The unbounded queue `name` (created on first use).
    ///
    /// # Errors
    /// As [`dict`](Manager::dict).
    pub fn queue<T: Serialize + DeserializeOwned + 'static>(&self, name: &str) -> Result<Queue<T>> {
        self.attach_queue(name, None)
    }

    /// The queue `name` holding at most `maxsize` items (when it is created here).
    ///
    /// # Errors
    /// As [`dict`](Manager::dict).
    pub fn bounded_queue<T: Serialize + DeserializeOwned + 'static>(
        &self,
        name: &str,
        maxsize: usize,
    ) -> Result<Queue<T>> {
        self.attach_queue(name, Some(maxsize as u64))
    }

    /// [`queue`](Manager::queue) and [`bounded_queue`](Manager::bounded_queue).
    fn attach_queue<T: Serialize + DeserializeOwned + 'static>(
        &self,
        name: &str,
        maxsize: Option<u64>,
    ) -> Result<Queue<T>> {
        self.attach(
            Kind::Queue,
            name,
            signature_of::<T>(),
            Init::Queue(maxsize),
            Queue::from_link,
        )
    }

    /// The joinable queue `name` (created unbounded on first use).
    ///
    /// # Errors
    /// As [`dict`](Manager::dict).
    pub fn joinable_queue<T: Serialize + DeserializeOwned + 'static>(
        &self,
        name: &str,
    ) -> Result<JoinableQueue<T>> {
        let init = Init::Queue(None);
        let sig = signature_of::<T>();
        self.attach(
            Kind::JoinableQueue,
            name,
            sig,
            init,
            JoinableQueue::from_link,
        )
    }

    /// The value `name`, set to `initial` if it is created here.
    ///
    /// # Errors
    /// As [`dict`](Manager::dict); [`ErrorKind::Encode`] if serde fails.
    pub fn value<T: Serialize + DeserializeOwned + 'static>(
        &self,
        name: &str,
        initial: T,
    ) -> Result<Value<T>> {
        let init = Init::Value(blob(&initial)?);
        self.attach(
            Kind::Value,
            name,
            signature_of::<T>(),
            init,
            Value::from_link,
        )
    }

    /// The namespace `name` (created empty on first use).
    ///
    /// # Errors
    /// As [`dict`](Manager::dict).
    pub fn namespace(&self, name: &str) -> Result<Namespace> {
        self.attach(
            Kind::Namespace,
            name,
            String::new(),
            Init::Empty,
            Namespace::from_link,
        )
    }

    /// The lock `name`.
    ///
    /// # Errors
    /// As [`dict`](Manager::dict).
    pub fn lock(&self, name: &str) -> Result<Lock> {
        self.attach(
            Kind::Lock,
            name,
            String::new(),
            Init::Empty,
            Lock::from_link,
        )
    }

    /// The reentrant lock `name`.
    ///
    /// # Errors
    /// As [`dict`](Manager::dict).
    pub fn rlock(&self, name: &str) -> Result<RLock> {
        self.attach(
            Kind::RLock,
            name,
            String::new(),
            Init::Empty,
            RLock::from_link,
        )
    }

    /// The semaphore `name`, with `value` permits if it is created here.
    ///
    /// # Errors
    /// As [`dict`](Manager::dict).
    pub fn semaphore(&self, name: &str, value: usize) -> Result<Semaphore> {
        let init = Init::Semaphore {
            value: value as u64,
            bounded: false,
        };
        self.attach(
            Kind::Semaphore,
            name,
            "unbounded".into(),
            init,
            Semaphore::from_link,
        )
    }

    /// The bounded semaphore `name`: releasing more than `value` permits is an error.
    ///
    /// # Errors
    /// As [`dict`](Manager::dict).
    pub fn bounded_semaphore(&self, name: &str, value: usize) -> Result<Semaphore> {
        let init = Init::Semaphore {
            value: value as u64,
            bounded: true,
        };
        self.attach(
            Kind::Semaphore,
            name,
            "bounded".into(),
            init,
            Semaphore::from_link,
        )
    }

    /// The event `name` (created clear).
    ///
    /// # Errors
    /// As [`dict`](Manager::dict).
    pub fn event(&self, name: &str) -> Result<Event> {
        self.attach(
            Kind::Event,
            name,
            String::new(),
            Init::Empty,
            Event::from_link,
        )
    }

    /// The condition `name` (with its own reentrant lock).
    ///
    /// # Errors
    /// As [`dict`](Manager::dict).
    pub fn condition(&self, name: &str) -> Result<Condition> {
        self.attach(
            Kind::Condition,
            name,
            String::new(),
            Init::Empty,
            Condition::from_link,
        )
    }

    /// The barrier `name` for `parties` parties (when it is created here).
    ///
    /// # Errors
    /// As [`dict`](Manager::dict); [`ErrorKind::Protocol`] for 0 parties.
    pub fn barrier(&self, name: &str, parties: usize) -> Result<Barrier> {
        let init = Init::Barrier(parties as u64);
        self.attach(Kind::Barrier, name, String::new(), init, Barrier::from_link)
    }

    /// The custom object `name` of type `T`, constructed with `T::default()` in the server
    /// on first use. `T` must be [registered](ManagerBuilder::register) where the server
    /// started.
    ///
    /// # Errors
    /// [`ErrorKind::Unsupported`] if `T` is not registered; as [`dict`](Manager::dict).
    pub fn object<T: SharedObject>(&self, name: &str) -> Result<Object<T>> {
        self.attach(
            Kind::Custom,
            name,
            signature_of::<T>(),
            Init::Empty,
            Object::from_link,
        )
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests;
