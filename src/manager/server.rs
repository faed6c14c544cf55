//! The manager's server: an accept loop and one thread per authenticated connection, over a
//! table of named objects. Each object is a mutex and a condition variable around its state;
//! a blocking operation (a queue `get`, a lock `acquire`) waits on that condition variable in
//! short slices and gives up when its client goes away, so a vanished client never keeps a
//! thread or takes an item it cannot receive.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::protocol::{
    decode_request, encode, Blob, Init, Kind, Op, Owner, Request, Response, Wait, WireError,
    WireKind, VERSION,
};
use super::registry::{Erased, Failure, Registry};
use super::transport::Wire;
use crate::connection::Listener;
use crate::wait::lock;

/// How a server is set up.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Limits {
    /// The largest request accepted (larger ones close that connection).
    pub(crate) max_message: usize,
    /// Connections served at once; more are closed at accept.
    pub(crate) max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: 64 << 20,
            max_connections: 1024,
        }
    }
}

/// How often a blocked operation looks whether its client is still there.
const SLICE: Duration = Duration::from_millis(50);

/// One named object.
struct Object {
    kind: Kind,
    signature: String,
    state: Mutex<State>,
    cv: Condvar,
}

enum State {
    Dict(HashMap<Blob, Blob>),
    List(Vec<Blob>),
    Queue {
        items: VecDeque<Blob>,
        max: Option<u64>,
        unfinished: u64,
    },
    Value(Blob),
    Namespace(BTreeMap<String, Blob>),
    Lock(Holders),
    Event(bool),
    Condition {
        lock: Holders,
        next_ticket: u64,
        waiting: VecDeque<u64>,
        woken: Vec<u64>,
    },
    Barrier {
        parties: u64,
        arrived: u64,
        generation: u64,
        resets: u64,
        broken: bool,
    },
    Custom(Box<dyn Erased>),
}

/// A counting lock that knows who holds it (Lock: 1 permit; RLock: reentrant; Semaphore: n).
struct Holders {
    permits: u64,
    bound: Option<u64>,
    reentrant: bool,
    held: Vec<Hold>,
    owner_died: bool,
}

struct Hold {
    owner: Owner,
    conn: u64,
    count: u64,
}

impl Holders {
    fn new(permits: u64, bound: Option<u64>, reentrant: bool) -> Self {
        Holders {
            permits,
            bound,
            reentrant,
            held: Vec::new(),
            owner_died: false,
        }
    }

    /// Takes the lock if it can now: `Some(owner_died)`.
    fn try_take(&mut self, owner: Owner, conn: u64) -> Option<bool> {
        if self.reentrant {
            if let Some(h) = self.held.iter_mut().find(|h| h.owner == owner) {
                h.count += 1;
                return Some(false);
            }
        }
        if self.permits == 0 {
            return None;
        }
        self.permits -= 1;
        self.held.push(Hold {
            owner,
            conn,
            count: 1,
        });
        Some(std::mem::take(&mut self.owner_died))
    }

    fn release(&mut self, owner: Owner) -> Result<(), WireError> {
        if self.reentrant {
            let Some(i) = self.held.iter().position(|h| h.owner == owner) else {
                return Err(WireError::new(
                    WireKind::Unsupported,
                    "release of an RLock this thread does not hold",
                ));
            };
            self.held[i].count -= 1;
            if self.held[i].count == 0 {
                self.held.remove(i);
                self.permits += 1;
            }
            return Ok(());
        }
        if let Some(b) = self.bound {
            if self.permits >= b {
                return Err(WireError::new(
                    WireKind::Unsupported,
                    "released too many times (a bounded semaphore, or a lock that is not held)",
                ));
            }
        }
        // Our own hold first; otherwise the oldest (a lock may be released by another).
        if let Some(i) = self.held.iter().position(|h| h.owner == owner) {
            self.held.remove(i);
        } else if !self.held.is_empty() {
            self.held.remove(0);
        }
        self.permits += 1;
        Ok(())
    }

    /// Releases everything taken through connection `conn` (its client is gone).
    fn drop_conn(&mut self, conn: u64) -> bool {
        let before = self.held.len();
        self.held.retain(|h| h.conn != conn);
        let freed = (before - self.held.len()) as u64;
        if freed > 0 {
            self.permits += freed;
            self.owner_died = true;
        }
        freed > 0
    }

    /// Fully releases `owner`'s hold (for a condition wait), returning its depth.
    fn release_all(&mut self, owner: Owner) -> Option<u64> {
        let i = self.held.iter().position(|h| h.owner == owner)?;
        let h = self.held.remove(i);
        self.permits += 1;
        Some(h.count)
    }
}

/// Everything the connection threads share.
struct Shared {
    limits: Limits,
    registry: fn(&str) -> Option<Box<dyn Erased>>,
    objects: Mutex<HashMap<String, Arc<Object>>>,
    connections: AtomicUsize,
    next_conn: AtomicU64,
}

/// Serves forever on `listening`.
///
/// The listener authenticates every client before its connection reaches this loop, so
/// nothing from an unauthenticated peer is ever decoded here.
pub(crate) fn serve<R: Registry>(listening: Listener<()>, limits: Limits) {
    let shared = Arc::new(Shared {
        limits,
        registry: R::make,
        objects: Mutex::new(HashMap::new()),
        connections: AtomicUsize::new(0),
        next_conn: AtomicU64::new(1),
    });
    loop {
        let chan = match listening.accept() {
            Ok(c) => c,
            Err(_) => {
                // Out of descriptors or a connection reset before accept: keep serving.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if shared.connections.load(Ordering::Acquire) >= shared.limits.max_connections {
            continue; // dropped: closed at once
        }
        shared.connections.fetch_add(1, Ordering::AcqRel);
        let s = shared.clone();
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name(format!("manager-conn-{id}"))
            .spawn(move || {
                serve_connection(&s, &chan, id);
                s.connections.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// One client: answer requests in order until it leaves or misbehaves.
fn serve_connection(shared: &Shared, chan: &Wire, conn: u64) {
    chan.set_max_message_size(shared.limits.max_message);
    let mut attached: Vec<Arc<Object>> = Vec::new();
    let mut greeted = false;
    // Garbage, a truncated or oversized frame, or end of stream: this connection ends.
    while let Ok(frame) = chan.recv_bytes() {
        let response = match decode_request(&frame) {
            Ok(Request::Hello { version }) => {
                greeted = version == VERSION;
                if greeted {
                    Response::Done
                } else {
                    Response::Failed(WireError::new(
                        WireKind::Unsupported,
                        format!(
                            "manager protocol version {version} is not this server's ({VERSION})"
                        ),
                    ))
                }
            }
            Ok(_) if !greeted => break,
            Ok(Request::Attach {
                kind,
                name,
                signature,
                init,
            }) => match attach(shared, kind, name, signature, init) {
                Ok(obj) => {
                    if attached.len() >= u32::MAX as usize {
                        break;
                    }
                    attached.push(obj);
                    Response::Attached((attached.len() - 1) as u32)
                }
                Err(e) => Response::Failed(e),
            },
            Ok(Request::List) => {
                let objs = lock(&shared.objects);
                let mut names: Vec<(String, Kind)> =
                    objs.iter().map(|(n, o)| (n.clone(), o.kind)).collect();
                names.sort_by(|a, b| a.0.cmp(&b.0));
                Response::Names(names)
            }
            Ok(Request::Call { id, op }) => match attached.get(id as usize) {
                Some(obj) => {
                    let obj = obj.clone();
                    let peer = Peer { chan, conn };
                    match call(&obj, op, &peer) {
                        Ok(r) => r,
                        Err(e) => Response::Failed(e),
                    }
                }
                None => break,
            },
            Err(_) => break,
        };
        let Ok(bytes) = encode(&response) else {
            break;
        };
        if chan.send_bytes(&bytes).is_err() {
            break;
        }
    }
    // Whatever this client held is released, and the next holder is told it died.
    for obj in &attached {
        let mut st = lock(&obj.state);
        let freed = match &mut *st {
            State::Lock(h) => h.drop_conn(conn),
            State::Condition { lock, .. } => lock.drop_conn(conn),
            _ => false,
        };
        if freed {
            obj.cv.notify_all();
        }
    }
}

fn attach(
    shared: &Shared,
    kind: Kind,
    name: String,
    signature: String,
    init: Init,
) -> Result<Arc<Object>, WireError> {
    let mut objs = lock(&shared.objects);
    if let Some(o) = objs.get(&name) {
        if o.kind != kind || o.signature != signature {
            return Err(WireError::new(
                WireKind::Decode,
                format!(
                    "the manager's object `{name}` is a {:?}<{}>, but this proxy is a {kind:?}<{signature}>: \
                     attach with the object's own types",
                    o.kind, o.signature
                ),
            ));
        }
        return Ok(o.clone());
    }
    let state = match (kind, init) {
        (_, Init::Existing) => {
            return Err(WireError::new(
                WireKind::Closed,
                format!("the manager has no object named `{name}`"),
            ))
        }
        (Kind::Dict, _) => State::Dict(HashMap::new()),
        (Kind::List, _) => State::List(Vec::new()),
        (Kind::Queue | Kind::JoinableQueue, Init::Queue(max)) => State::Queue {
            items: VecDeque::new(),
            max,
            unfinished: 0,
        },
        (Kind::Value, Init::Value(v)) => State::Value(v),
        (Kind::Namespace, _) => State::Namespace(BTreeMap::new()),
        (Kind::Lock, _) => State::Lock(Holders::new(1, Some(1), false)),
        (Kind::RLock, _) => State::Lock(Holders::new(1, Some(1), true)),
        (Kind::Semaphore, Init::Semaphore { value, bounded }) => {
            State::Lock(Holders::new(value, bounded.then_some(value), false))
        }
        (Kind::Event, _) => State::Event(false),
        (Kind::Condition, _) => State::Condition {
            lock: Holders::new(1, Some(1), true),
            next_ticket: 0,
            waiting: VecDeque::new(),
            woken: Vec::new(),
        },
        (Kind::Barrier, Init::Barrier(parties)) if parties > 0 => State::Barrier {
            parties,
            arrived: 0,
            generation: 0,
            resets: 0,
            broken: false,
        },
        (Kind::Custom, _) => match (shared.registry)(&signature) {
            Some(obj) => State::Custom(obj),
            None => {
                return Err(WireError::new(
                    WireKind::Unsupported,
                    format!(
                        "`{signature}` is not registered with this manager: register it with \
                         `Manager::builder().register::<T>()` where the server starts"
                    ),
                ))
            }
        },
        (k, i) => {
            return Err(WireError::new(
                WireKind::Protocol,
                format!("cannot create a {k:?} from {i:?}"),
            ))
        }
    };
    let obj = Arc::new(Object {
        kind,
        signature,
        state: Mutex::new(state),
        cv: Condvar::new(),
    });
    objs.insert(name, obj.clone());
    Ok(obj)
}

/// The client a blocked operation is waiting for.
struct Peer<'a> {
    chan: &'a Wire,
    conn: u64,
}

impl Peer<'_> {
    /// A client waits for its answer and sends nothing meanwhile: anything readable (end of
    /// stream above all) means it is gone.
    fn gone(&self) -> bool {
        self.chan.poll(Duration::ZERO).unwrap_or(true)
    }
}

fn deadline(wait: Wait) -> Option<Instant> {
    wait.and_then(|us| Instant::now().checked_add(Duration::from_micros(us)))
}

fn expired(wait: Wait) -> WireError {
    if wait == Some(0) {
        WireError::new(
            WireKind::WouldBlock,
            "the manager's object is not ready now",
        )
    } else {
        WireError::new(
            WireKind::Timeout,
            "the wait in the manager ended before the object was ready",
        )
    }
}

/// Waits until `ready(state)` holds, the deadline passes, or the client goes away.
fn block<'a>(
    obj: &'a Object,
    mut st: MutexGuard<'a, State>,
    wait: Wait,
    peer: &Peer<'_>,
    mut ready: impl FnMut(&mut State) -> bool,
) -> Result<MutexGuard<'a, State>, (MutexGuard<'a, State>, WireError)> {
    let until = deadline(wait);
    loop {
        if ready(&mut st) {
            return Ok(st);
        }
        let now = Instant::now();
        if until.is_some_and(|d| now >= d) {
            return Err((st, expired(wait)));
        }
        let slice = until.map_or(SLICE, |d| (d - now).min(SLICE));
        st = obj
            .cv
            .wait_timeout(st, slice)
            .unwrap_or_else(|p| p.into_inner())
            .0;
        if peer.gone() {
            return Err((st, WireError::new(WireKind::Closed, "the client left")));
        }
    }
}

fn wrong(kind: Kind, op: &Op) -> WireError {
    WireError::new(
        WireKind::Protocol,
        format!("{op:?} is not an operation of a {kind:?}"),
    )
}

fn call(obj: &Object, op: Op, peer: &Peer<'_>) -> Result<Response, WireError> {
    let st = lock(&obj.state);
    match obj.kind {
        Kind::Dict => dict(st, op),
        Kind::List => list(st, op),
        Kind::Queue | Kind::JoinableQueue => queue(obj, st, op, peer),
        Kind::Value => value(st, op),
        Kind::Namespace => namespace(st, op),
        Kind::Lock | Kind::RLock | Kind::Semaphore => locks(obj, st, op, peer),
        Kind::Event => event(obj, st, op, peer),
        Kind::Condition => condition(obj, st, op, peer),
        Kind::Barrier => barrier(obj, st, op, peer),
        Kind::Custom => {
            let mut st = st;
            let State::Custom(c) = &mut *st else {
                unreachable!()
            };
            match op {
                Op::Custom(req) => match c.handle(&req.0) {
                    Ok(b) => Ok(Response::One(Blob(b))),
                    Err(Failure::Decode(m)) => Err(WireError::new(WireKind::Decode, m)),
                    Err(Failure::Handler(m)) => Err(WireError::new(WireKind::Unsupported, m)),
                },
                op => Err(wrong(Kind::Custom, &op)),
            }
        }
    }
}

fn dict(mut st: MutexGuard<'_, State>, op: Op) -> Result<Response, WireError> {
    let State::Dict(m) = &mut *st else {
        unreachable!()
    };
    Ok(match op {
        Op::Get(k) => Response::Maybe(m.get(&k).cloned()),
        Op::Insert(k, v) => Response::Maybe(m.insert(k, v)),
        Op::Remove(k) => Response::Maybe(m.remove(&k)),
        Op::Contains(k) => Response::Flag(m.contains_key(&k)),
        Op::Update(kvs) => {
            m.extend(kvs);
            Response::Done
        }
        Op::GetOrInsert(k, v) => Response::One(m.entry(k).or_insert(v).clone()),
        Op::Keys => Response::Many(m.keys().cloned().collect()),
        Op::Values => Response::Many(m.values().cloned().collect()),
        Op::Items => Response::Pairs(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        Op::Len => Response::Count(m.len() as u64),
        Op::Clear => {
            m.clear();
            Response::Done
        }
        op => return Err(wrong(Kind::Dict, &op)),
    })
}

fn out_of_range(i: u64, len: usize) -> WireError {
    WireError::new(
        WireKind::Unsupported,
        format!("index {i} is out of range for a list of {len}"),
    )
}

fn list(mut st: MutexGuard<'_, State>, op: Op) -> Result<Response, WireError> {
    let State::List(l) = &mut *st else {
        unreachable!()
    };
    let at = |i: u64, len: usize| usize::try_from(i).ok().filter(|&i| i < len);
    Ok(match op {
        Op::Push(v) => {
            l.push(v);
            Response::Done
        }
        Op::Extend(vs) => {
            l.extend(vs);
            Response::Done
        }
        Op::Index(i) => Response::Maybe(at(i, l.len()).map(|i| l[i].clone())),
        Op::SetIndex(i, v) => match at(i, l.len()) {
            Some(i) => Response::One(std::mem::replace(&mut l[i], v)),
            None => return Err(out_of_range(i, l.len())),
        },
        Op::InsertAt(i, v) => match usize::try_from(i).ok().filter(|&i| i <= l.len()) {
            Some(i) => {
                l.insert(i, v);
                Response::Done
            }
            None => return Err(out_of_range(i, l.len())),
        },
        Op::RemoveAt(i) => match at(i, l.len()) {
            Some(i) => Response::One(l.remove(i)),
            None => return Err(out_of_range(i, l.len())),
        },
        Op::Pop => Response::Maybe(l.pop()),
        Op::Values => Response::Many(l.clone()),
        Op::Len => Response::Count(l.len() as u64),
        Op::Clear => {
            l.clear();
            Response::Done
        }
        op => return Err(wrong(Kind::List, &op)),
    })
}

fn queue(
    obj: &Object,
    st: MutexGuard<'_, State>,
    op: Op,
    peer: &Peer<'_>,
) -> Result<Response, WireError> {
    fn parts(st: &mut State) -> (&mut VecDeque<Blob>, Option<u64>, &mut u64) {
        let State::Queue {
            items,
            max,
            unfinished,
        } = st
        else {
            unreachable!()
        };
        (items, *max, unfinished)
    }
    let r = match op {
        Op::Put(item, wait) => {
            let mut st = block(obj, st, wait, peer, |s| {
                let (items, max, _) = parts(s);
                max.is_none_or(|m| (items.len() as u64) < m)
            })
            .map_err(|(_, e)| e)?;
            let (items, _, unfinished) = parts(&mut st);
            items.push_back(item);
            *unfinished += 1;
            Response::Done
        }
        Op::Take(wait) => {
            let mut st =
                block(obj, st, wait, peer, |s| !parts(s).0.is_empty()).map_err(|(_, e)| e)?;
            let item = parts(&mut st).0.pop_front().unwrap_or_default();
            Response::One(item)
        }
        Op::TaskDone => {
            let mut st = st;
            let (_, _, unfinished) = parts(&mut st);
            if *unfinished == 0 {
                return Err(WireError::new(
                    WireKind::Unsupported,
                    "task_done() called more times than there were items",
                ));
            }
            *unfinished -= 1;
            Response::Done
        }
        Op::JoinQueue(wait) => {
            drop(block(obj, st, wait, peer, |s| *parts(s).2 == 0).map_err(|(_, e)| e)?);
            return Ok(Response::Done);
        }
        Op::Len => {
            let mut st = st;
            Response::Count(parts(&mut st).0.len() as u64)
        }
        op => return Err(wrong(Kind::Queue, &op)),
    };
    obj.cv.notify_all();
    Ok(r)
}

fn value(mut st: MutexGuard<'_, State>, op: Op) -> Result<Response, WireError> {
    let State::Value(v) = &mut *st else {
        unreachable!()
    };
    Ok(match op {
        Op::Load => Response::One(v.clone()),
        Op::Store(n) => {
            *v = n;
            Response::Done
        }
        Op::Swap(n) => Response::One(std::mem::replace(v, n)),
        Op::CompareSwap(expected, n) => {
            if *v == expected {
                *v = n;
                Response::Flag(true)
            } else {
                Response::Maybe(Some(v.clone()))
            }
        }
        op => return Err(wrong(Kind::Value, &op)),
    })
}

fn namespace(mut st: MutexGuard<'_, State>, op: Op) -> Result<Response, WireError> {
    let State::Namespace(m) = &mut *st else {
        unreachable!()
    };
    Ok(match op {
        Op::GetAttr(k) => Response::Maybe(m.get(&k).cloned()),
        Op::SetAttr(k, v) => Response::Maybe(m.insert(k, v)),
        Op::DelAttr(k) => Response::Maybe(m.remove(&k)),
        Op::Keys => Response::Many(m.keys().map(|k| Blob(k.as_bytes().to_vec())).collect()),
        Op::Len => Response::Count(m.len() as u64),
        op => return Err(wrong(Kind::Namespace, &op)),
    })
}

fn holders(st: &mut State) -> &mut Holders {
    match st {
        State::Lock(h) => h,
        State::Condition { lock, .. } => lock,
        _ => unreachable!(),
    }
}

fn acquire<'a>(
    obj: &'a Object,
    st: MutexGuard<'a, State>,
    owner: Owner,
    wait: Wait,
    peer: &Peer<'_>,
) -> Result<(MutexGuard<'a, State>, bool), WireError> {
    let mut died = false;
    let st = block(obj, st, wait, peer, |s| {
        match holders(s).try_take(owner, peer.conn) {
            Some(d) => {
                died = d;
                true
            }
            None => false,
        }
    })
    .map_err(|(_, e)| e)?;
    Ok((st, died))
}

fn locks(
    obj: &Object,
    st: MutexGuard<'_, State>,
    op: Op,
    peer: &Peer<'_>,
) -> Result<Response, WireError> {
    match op {
        Op::Acquire(owner, wait) => {
            let (_st, owner_died) = acquire(obj, st, owner, wait, peer)?;
            Ok(Response::Acquired { owner_died })
        }
        Op::Release(owner) => {
            let mut st = st;
            holders(&mut st).release(owner)?;
            obj.cv.notify_all();
            Ok(Response::Done)
        }
        op => Err(wrong(obj.kind, &op)),
    }
}

fn event(
    obj: &Object,
    mut st: MutexGuard<'_, State>,
    op: Op,
    peer: &Peer<'_>,
) -> Result<Response, WireError> {
    let flag = |s: &mut State| match s {
        State::Event(f) => *f,
        _ => unreachable!(),
    };
    match op {
        Op::Set | Op::Unset => {
            *match &mut *st {
                State::Event(f) => f,
                _ => unreachable!(),
            } = matches!(op, Op::Set);
            obj.cv.notify_all();
            Ok(Response::Done)
        }
        Op::IsSet => Ok(Response::Flag(flag(&mut st))),
        Op::WaitEvent(wait) => match block(obj, st, wait, peer, |s| flag(s)) {
            Ok(_) => Ok(Response::Flag(true)),
            Err((_, e)) if e.kind == WireKind::Timeout || e.kind == WireKind::WouldBlock => {
                Ok(Response::Flag(false))
            }
            Err((_, e)) => Err(e),
        },
        op => Err(wrong(Kind::Event, &op)),
    }
}

fn condition(
    obj: &Object,
    st: MutexGuard<'_, State>,
    op: Op,
    peer: &Peer<'_>,
) -> Result<Response, WireError> {
    fn parts(st: &mut State) -> (&mut Holders, &mut u64, &mut VecDeque<u64>, &mut Vec<u64>) {
        let State::Condition {
            lock,
            next_ticket,
            waiting,
            woken,
        } = st
        else {
            unreachable!()
        };
        (lock, next_ticket, waiting, woken)
    }
    let mut st = st;
    match op {
        Op::Acquire(..) | Op::Release(_) => locks(obj, st, op, peer),
        Op::WaitCond(owner, wait) => {
            let (lock, next, waiting, _) = parts(&mut st);
            let Some(depth) = lock.release_all(owner) else {
                return Err(WireError::new(
                    WireKind::Unsupported,
                    "wait on a condition whose lock this thread does not hold",
                ));
            };
            let ticket = *next;
            *next += 1;
            waiting.push_back(ticket);
            obj.cv.notify_all();
            let (st, notified) = match block(obj, st, wait, peer, |s| parts(s).3.contains(&ticket))
            {
                Ok(st) => (st, true),
                Err((st, e)) if e.kind != WireKind::Closed => (st, false),
                Err((mut st, e)) => {
                    let (_, _, waiting, woken) = parts(&mut st);
                    waiting.retain(|&t| t != ticket);
                    woken.retain(|&t| t != ticket);
                    return Err(e);
                }
            };
            let mut st = st;
            {
                let (_, _, waiting, woken) = parts(&mut st);
                waiting.retain(|&t| t != ticket);
                woken.retain(|&t| t != ticket);
            }
            // Take the lock back (as long as it takes), at the depth it was held.
            let (mut st, _) = acquire(obj, st, owner, None, peer)?;
            if let Some(h) = parts(&mut st).0.held.iter_mut().find(|h| h.owner == owner) {
                h.count = depth;
            }
            Ok(Response::Flag(notified))
        }
        Op::Notify(n) => {
            let (_, _, waiting, woken) = parts(&mut st);
            for _ in 0..n {
                match waiting.pop_front() {
                    Some(t) => woken.push(t),
                    None => break,
                }
            }
            obj.cv.notify_all();
            Ok(Response::Done)
        }
        Op::NotifyAll => {
            let (_, _, waiting, woken) = parts(&mut st);
            woken.extend(waiting.drain(..));
            obj.cv.notify_all();
            Ok(Response::Done)
        }
        op => Err(wrong(Kind::Condition, &op)),
    }
}

fn barrier(
    obj: &Object,
    mut st: MutexGuard<'_, State>,
    op: Op,
    peer: &Peer<'_>,
) -> Result<Response, WireError> {
    fn parts(st: &mut State) -> (&mut u64, &mut u64, &mut u64, &mut u64, &mut bool) {
        let State::Barrier {
            parties,
            arrived,
            generation,
            resets,
            broken,
        } = st
        else {
            unreachable!()
        };
        (parties, arrived, generation, resets, broken)
    }
    let broken_err = || WireError::new(WireKind::Broken, "the barrier is broken");
    match op {
        Op::WaitBarrier(wait) => {
            let (parties, arrived, generation, resets, broken) = parts(&mut st);
            if *broken {
                return Err(broken_err());
            }
            let index = *arrived;
            *arrived += 1;
            if *arrived == *parties {
                *arrived = 0;
                *generation += 1;
                obj.cv.notify_all();
                return Ok(Response::Count(index));
            }
            let (gen, res) = (*generation, *resets);
            match block(obj, st, wait, peer, |s| {
                let (_, _, g, r, b) = parts(s);
                *g != gen || *r != res || *b
            }) {
                Ok(mut st) => {
                    let (_, _, g, r, _) = parts(&mut st);
                    if *r == res && *g != gen {
                        Ok(Response::Count(index))
                    } else {
                        Err(broken_err())
                    }
                }
                Err((mut st, e)) => {
                    // A timeout (or a client that left) breaks the barrier, as in Python.
                    *parts(&mut st).4 = true;
                    obj.cv.notify_all();
                    Err(e)
                }
            }
        }
        Op::Abort => {
            *parts(&mut st).4 = true;
            obj.cv.notify_all();
            Ok(Response::Done)
        }
        Op::Reset => {
            let (_, arrived, _, resets, broken) = parts(&mut st);
            *arrived = 0;
            *resets += 1;
            *broken = false;
            obj.cv.notify_all();
            Ok(Response::Done)
        }
        Op::Len => Ok(Response::Count(*parts(&mut st).0)),
        op => Err(wrong(Kind::Barrier, &op)),
    }
}
