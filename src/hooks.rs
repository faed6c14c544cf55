//! Hooks for the chaos suite (`tests/chaos.rs`), re-exported as `multiproc::__chaos`.
//!
//! Not part of the API: hidden from the docs, no stability promise. They exist so that the
//! suite forges segments and task specs from the library's own layout and encoder, and stays
//! in step with the code instead of copying offsets and structs that drift.

/// The fork server's pid, if this process has started one (and it has not been lost).
pub fn fork_server_pid() -> Option<u32> {
    crate::spawn::fork_server_pid()
}

/// Where things live in a queue segment (`src/queue/ring/layout.rs`), for forgers.
pub mod queue {
    use crate::queue::ring::hooks;

    /// Offset of the producers' robust lock slot.
    pub const PUT_LOCK: u64 = hooks::PUT_LOCK as u64;
    /// Offset of the consumers' robust lock slot.
    pub const GET_LOCK: u64 = hooks::GET_LOCK as u64;
    /// Bytes in a lock slot.
    pub const LOCK_SLOT: u64 = hooks::LOCK_SLOT as u64;
    /// Offset of the producer's `tail` word (bit 0: an item is open).
    pub const TAIL: u64 = hooks::TAIL as u64;
    /// Offset of the consumer's `head` word.
    pub const HEAD: u64 = hooks::HEAD as u64;
    /// Offset of the ring (the control region's length).
    pub const RING: u64 = hooks::RING as u64;
    /// The tag every record header carries in its top 16 bits, already shifted.
    pub const RECORD_TAG: u64 = hooks::TAG << 48;
    /// The record header flag of an item's first chunk (bits 32..48 of the header).
    pub const FIRST: u64 = hooks::FIRST << 32;
}

/// The payload of a task spec as a parent sends it on a child's control socket: this
/// executable's fingerprint, `entry` and `seal` as given (a forger's), default setup.
pub fn task_spec(entry: u64, seal: u64) -> Vec<u8> {
    crate::spawn::protocol::forged_spec(entry, seal)
}

/// The boot variable (name, value) that makes this program, re-executed, a `Spawn` child
/// reading its task from descriptor `control`, with `lifeline` as its parent's lifeline.
/// The key it carries is not this process's: a forged spec cannot be sealed with it.
pub fn spawn_boot(control: i32, lifeline: i32) -> (&'static str, String) {
    let key = crate::spawn::bootstrap::format_key([0x5eed, 0xc4a05]);
    (
        crate::spawn::bootstrap::BOOT_ENV,
        format!("child:{control}:{lifeline}:{key}"),
    )
}

/// What a child's reply frame (`payload`, after the 8-byte header) says: the name of its
/// control message (`BadEntry`, `Mismatch`, ...), or `None` if it is not one.
pub fn child_reply(payload: &[u8]) -> Option<String> {
    crate::spawn::protocol::reply_name(payload)
}
