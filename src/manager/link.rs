//! The client side of one object: its address, and a small set of open connections to the
//! server (one per thread using it at once), each with the object attached.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::protocol::{
    decode_response, encode, Init, Kind, Op, Owner, Request, Response, Wait, VERSION,
};
use super::transport::{connect, recv, Wire};
use crate::connection::Address;
use crate::error::{Error, ErrorKind, Result};
use crate::wait::lock;

/// How long a client waits for the server past the wait it asked for, before it gives up on
/// a server that stopped answering (a frozen or unreachable host).
const GRACE: Duration = Duration::from_secs(30);

/// Where a manager is and how to prove we may talk to it.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Endpoint {
    pub(crate) address: Address,
    pub(crate) authkey: Vec<u8>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: never printed.
        f.debug_struct("Endpoint")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// A fresh authenticated connection that has said hello.
    pub(crate) fn open(&self) -> Result<Wire> {
        let chan = connect(
            &self.address,
            &self.authkey,
            crate::wait::deadline_after(GRACE),
        )?;
        roundtrip(&chan, &Request::Hello { version: VERSION }, None)
            .map_err(|e| self.gone(e))?
            .done()?;
        Ok(chan)
    }

    /// The error a client sees when the server went away.
    pub(crate) fn gone(&self, e: Error) -> Error {
        if e.kind() == ErrorKind::Disconnected {
            Error::msg(
                ErrorKind::Disconnected,
                format!(
                    "the manager at {} went away (its connection closed): start it again; the \
                     next call reconnects",
                    self.address
                ),
            )
        } else {
            e
        }
    }
}

/// Sends `req` and waits for its answer (`deadline`: give up then).
pub(crate) fn roundtrip(chan: &Wire, req: &Request, deadline: Option<Instant>) -> Result<Response> {
    chan.send_bytes(&encode(req)?)?;
    decode_response(&recv(chan, deadline)?)
}

/// What one proxy (and its clones) share.
pub(crate) struct Link {
    pub(crate) endpoint: Endpoint,
    pub(crate) kind: Kind,
    pub(crate) name: String,
    pub(crate) signature: String,
    /// Identifies this proxy instance to the server's locks (with a hash of the thread).
    nonce: u64,
    /// Connections not in use right now, each with the object attached under the id.
    idle: Mutex<Vec<(Wire, u32)>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("manager", &self.endpoint.address)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("types", &self.signature)
            .finish()
    }
}

impl Link {
    /// Attaches to (or creates) `name` on the server, checking its kind and types.
    pub(crate) fn attach(
        endpoint: Endpoint,
        kind: Kind,
        name: &str,
        signature: String,
        init: Init,
    ) -> Result<Arc<Link>> {
        let link = Arc::new(Link {
            endpoint,
            kind,
            name: name.to_string(),
            signature,
            nonce: u64::from_le_bytes(super::transport::random_bytes()),
            idle: Mutex::new(Vec::new()),
        });
        let c = link.open(init)?;
        lock(&link.idle).push(c);
        Ok(link)
    }

    fn open(&self, init: Init) -> Result<(Wire, u32)> {
        let chan = self.endpoint.open()?;
        let req = Request::Attach {
            kind: self.kind,
            name: self.name.clone(),
            signature: self.signature.clone(),
            init,
        };
        match roundtrip(&chan, &req, None).map_err(|e| self.endpoint.gone(e))? {
            Response::Attached(id) => Ok((chan, id)),
            other => Err(other.error()),
        }
    }

    /// The owner token of the calling thread.
    pub(crate) fn owner(&self) -> Owner {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::thread::current().id().hash(&mut h);
        (self.nonce, h.finish())
    }

    /// Runs `op` on the object; `wait` is the server-side wait it involves.
    pub(crate) fn call(&self, op: Op, wait: Wait) -> Result<Response> {
        let (chan, id) = loop {
            let c = lock(&self.idle).pop();
            match c {
                // An idle connection the server closed (it restarted, or left): drop it.
                Some((chan, id)) if !chan.poll(Duration::ZERO).unwrap_or(true) => break (chan, id),
                Some(_) => continue,
                None => break self.open(Init::Existing)?,
            }
        };
        let deadline = match wait {
            None => None,
            Some(us) => Instant::now()
                .checked_add(Duration::from_micros(us))
                .and_then(|t| t.checked_add(GRACE)),
        };
        match roundtrip(&chan, &Request::Call { id, op }, deadline) {
            Ok(r) => {
                lock(&self.idle).push((chan, id));
                match r {
                    Response::Failed(w) => Err(w.into()),
                    r => Ok(r),
                }
            }
            // The connection is dropped: what it would say next is no longer in step.
            Err(e) => Err(self.endpoint.gone(e)),
        }
    }
}

impl Response {
    pub(crate) fn done(self) -> Result<()> {
        match self {
            Response::Done => Ok(()),
            other => Err(other.error()),
        }
    }

    /// The error this response is (or an unexpected-answer error).
    pub(crate) fn error(self) -> Error {
        match self {
            Response::Failed(w) => w.into(),
            other => Error::msg(
                ErrorKind::Protocol,
                format!("unexpected answer from the manager: {other:?}"),
            ),
        }
    }
}

/// A proxy on the wire: where the manager is, which object, and its types (the receiving
/// process reconnects: a connection cannot cross hosts, and two processes sharing one would
/// interleave their messages).
#[derive(Serialize, Deserialize)]
struct WireProxy {
    endpoint: Endpoint,
    kind: Kind,
    name: String,
    signature: String,
}

impl Serialize for Link {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        WireProxy {
            endpoint: self.endpoint.clone(),
            kind: self.kind,
            name: self.name.clone(),
            signature: self.signature.clone(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Link {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let w = WireProxy::deserialize(d)?;
        Ok(Link {
            endpoint: w.endpoint,
            kind: w.kind,
            name: w.name,
            signature: w.signature,
            nonce: u64::from_le_bytes(super::transport::random_bytes()),
            idle: Mutex::new(Vec::new()),
        })
    }
}
