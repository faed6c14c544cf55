//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use multiproc::{Process, StartMethod};

/// Every start method, so each behaviour is checked under all three.
pub const METHODS: [StartMethod; 3] = [
    StartMethod::ForkServer,
    StartMethod::Spawn,
    StartMethod::Fork,
];

/// The longest any single wait in a test may take before the test fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(30);

/// Joins with the test timeout, failing the test on a hang.
pub fn join<R: serde::de::DeserializeOwned>(p: &Process<R>) -> multiproc::Result<R> {
    match p.join_timeout(WAIT) {
        Err(e) if e.is_timeout() => {
            let _ = p.kill();
            panic!("child {} did not finish within {WAIT:?}", p.pid())
        }
        r => r,
    }
}

/// Whether process `pid` is gone (no such process, or a zombie).
pub fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rfind(')')
            .and_then(|i| s[i + 2..].chars().next())
            .is_some_and(|c| c == 'Z' || c == 'X'),
    }
}
