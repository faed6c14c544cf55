//! Small tools for the chaos suite: a seeded generator, process-tree inspection, descriptor and
//! memory figures, raw socket writes (a hostile peer) and the role runner.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// The environment variable that selects a role in a re-executed test binary.
pub const ROLE: &str = "MULTIPROC_CHAOS_ROLE";
/// The environment variable carrying the seed to a role.
pub const SEED: &str = "MULTIPROC_CHAOS_SEED";
/// The environment variable that asks for the long run.
pub const LONG: &str = "MULTIPROC_CHAOS_LONG";

/// Whether the long run was asked for.
pub fn long() -> bool {
    std::env::var_os(LONG).is_some_and(|v| !v.is_empty() && v != "0")
}

/// `ci` in an ordinary run, `long` behind `MULTIPROC_CHAOS_LONG=1`.
pub fn scale(ci: u64, long_run: u64) -> u64 {
    if long() {
        long_run
    } else {
        ci
    }
}

/// The seed given to this role (or a fixed default).
pub fn seed() -> u64 {
    std::env::var(SEED)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_C4A0_5000_0001)
}

/// A small deterministic generator (splitmix64): the same seed gives the same cases.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// True with probability `p` (0..=1).
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// One element of `v`.
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// Open descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count().saturating_sub(1)) // the directory handle itself
        .unwrap_or(0)
}

/// What each open descriptor of this process points to (for failure messages).
pub fn fd_listing() -> String {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .map(|e| {
                    format!(
                        "{}->{}",
                        e.file_name().to_string_lossy(),
                        std::fs::read_link(e.path())
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.join(" ")
}

/// A field of /proc/self/status in KiB (`VmRSS`, `VmSize`, ...).
pub fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(':')?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Resident memory of this process, KiB.
pub fn rss_kib() -> u64 {
    status_kib("VmRSS")
}

/// Whether process `pid` is gone (no such process, or a zombie).
pub fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rfind(')')
            .and_then(|i| s.get(i + 2..)?.chars().next())
            .is_some_and(|c| c == 'Z' || c == 'X'),
    }
}

/// The process state letter of `pid` (`R`, `S`, `T`, `Z`, ...), if it exists.
pub fn proc_state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.get(s.rfind(')')? + 2..)?.chars().next()
}

/// Direct children of `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let s = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Every descendant of `root` (not `root` itself), living or zombie.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut all = vec![root];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        for c in children(p) {
            if !all.contains(&c) {
                all.push(c);
            }
        }
        i += 1;
    }
    all.remove(0);
    all
}

/// Live (non-zombie) descendants of this process.
pub fn live_descendants() -> Vec<u32> {
    descendants(std::process::id())
        .into_iter()
        .filter(|&p| !is_gone(p))
        .collect()
}

/// The fork server among this process's children (found by its boot variable), if it runs.
pub fn fork_server() -> Option<u32> {
    multiproc::__chaos::fork_server_pid().filter(|&p| !is_gone(p))
}

/// Sends `sig` to `pid`, ignoring a process that is already gone.
pub fn signal(pid: u32, sig: Signal) {
    if let Some(p) = Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Reaps every exited child of this process that nobody else waits for.
pub fn reap_zombies() {
    while let Ok(Some(_)) = rustix::process::waitpid(None, rustix::process::WaitOptions::NOHANG) {}
}

/// Waits until every pid in `pids` is gone; `Err(alive)` once `limit` passed.
pub fn wait_gone(pids: &[u32], limit: Duration) -> Result<Duration, Vec<u32>> {
    let t0 = Instant::now();
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|&p| !is_gone(p)).collect();
        if alive.is_empty() {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > limit {
            return Err(alive);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Polls `cond` every few milliseconds until it holds or `limit` passes.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if t0.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Writes raw bytes into a socket, without blocking: what a hostile peer sends.
/// Returns how many bytes went in (a full buffer stops the write).
pub fn raw_send(fd: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> usize {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut sent = 0;
    if !fds.is_empty() && !bytes.is_empty() {
        let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(8))];
        let mut anc = SendAncillaryBuffer::new(&mut space);
        let _ = anc.push(SendAncillaryMessage::ScmRights(&fds[..fds.len().min(8)]));
        match rustix::net::sendmsg(
            fd,
            &[std::io::IoSlice::new(&bytes[..1])],
            &mut anc,
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        ) {
            Ok(n) => sent = n,
            Err(_) => return 0,
        }
    }
    while sent < bytes.len() {
        let r = rustix::net::send(
            fd,
            &bytes[sent..],
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        );
        match r {
            Ok(0) => break,
            Ok(n) => sent += n,
            // Not a socket (a pipe): plain write.
            Err(rustix::io::Errno::NOTSOCK) => {
                return sent + write_pipe(fd, &bytes[sent..]);
            }
            Err(_) => break,
        }
    }
    sent
}

fn write_pipe(fd: BorrowedFd<'_>, bytes: &[u8]) -> usize {
    // A pipe end from `Pipe::simplex` may block: make this write non-blocking first.
    let _ = rustix::io::ioctl_fionbio(fd, true);
    let mut sent = 0;
    while sent < bytes.len() {
        match rustix::io::write(fd, &bytes[sent..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => sent += n,
        }
    }
    let _ = rustix::io::ioctl_fionbio(fd, false);
    sent
}

/// A multiproc frame: header (magic, version, descriptor count, length) and payload.
pub fn frame(nfds: u16, len: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0xA7, 1];
    v.extend_from_slice(&nfds.to_le_bytes());
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// A descriptor to attach to forged frames: one end of a fresh socket pair.
pub fn spare_fd() -> OwnedFd {
    let (a, _b) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair");
    a
}

/// The running executable's fingerprint, as the library computes it (`build-id:` + the ELF
/// `NT_GNU_BUILD_ID` note), so forged task specs can pass the first check.
pub fn fingerprint() -> Vec<u8> {
    let b = std::fs::read("/proc/self/exe").expect("read /proc/self/exe");
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(ph) != 4 {
            continue;
        }
        let (off, size) = (u64_at(ph + 8), u64_at(ph + 32));
        let mut pos = off;
        while pos + 12 <= off + size {
            let (namesz, descsz, ty) = (u32_at(pos), u32_at(pos + 4), u32_at(pos + 8));
            let name = pos + 12;
            let desc = name + namesz.div_ceil(4) * 4;
            if ty == 3 && &b[name..name + namesz] == b"GNU\0" {
                let mut v = b"build-id:".to_vec();
                v.extend_from_slice(&b[desc..desc + descsz]);
                return v;
            }
            pos = desc + descsz.div_ceil(4) * 4;
        }
    }
    panic!("the test binary has no build-id note");
}

/// The outcome of running a role in a child process.
#[derive(Debug)]
pub struct RoleRun {
    /// Lines the role printed on stdout.
    pub lines: Vec<String>,
    /// The tail of what it printed on stderr.
    pub stderr_tail: String,
    /// Its exit status (`None`: it hung and was killed).
    pub status: Option<std::process::ExitStatus>,
    /// How long it ran.
    pub elapsed: Duration,
}

/// Starts this test binary as `role` with `envs`, stdout piped, stderr captured.
pub fn start_role(role: &str, envs: &[(&str, String)]) -> Child {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.env(ROLE, role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().expect("starting a role")
}

/// Runs `role` to completion, killing it (and everything it started) after `limit`.
pub fn run_role(role: &str, envs: &[(&str, String)], limit: Duration) -> RoleRun {
    let t0 = Instant::now();
    let mut child = start_role(role, envs);
    let pid = child.id();
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel::<Option<String>>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(Some(line));
        }
        let _ = tx.send(None);
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = BufReader::new(err).read_to_end(&mut s);
        let s = String::from_utf8_lossy(&s).into_owned();
        // Backtrace frames hide the panic message: keep the other lines.
        let frame = |l: &str| {
            let t = l.trim_start();
            t.starts_with("at ")
                || t.split_once(':')
                    .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        };
        let lines: Vec<&str> = s.lines().filter(|l| !frame(l)).collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    });
    let mut lines = Vec::new();
    let mut hung = false;
    loop {
        let left = limit.saturating_sub(t0.elapsed());
        match rx.recv_timeout(left) {
            Ok(Some(l)) => lines.push(l),
            Ok(None) => break,
            Err(_) => {
                hung = true;
                break;
            }
        }
    }
    if hung {
        // Freeze the whole tree first so nothing respawns, then kill it.
        let tree = descendants(pid);
        signal(pid, Signal::KILL);
        for p in tree {
            signal(p, Signal::KILL);
        }
    }
    let status = child.wait().ok();
    let stderr_tail = if hung {
        // The stderr pipe may be held open by surviving grandchildren: do not wait for it.
        String::from("(role killed after its time limit)")
    } else {
        err_reader.join().unwrap_or_default()
    };
    RoleRun {
        lines,
        stderr_tail,
        status: if hung { None } else { status },
        elapsed: t0.elapsed(),
    }
}

/// Kills and reaps every descendant of this process left behind; returns them.
pub fn sweep_leftovers(grace: Duration) -> Vec<u32> {
    let left = live_descendants();
    if left.is_empty() {
        reap_zombies();
        return left;
    }
    let still = match wait_gone(&left, grace) {
        Ok(_) => Vec::new(),
        Err(alive) => alive,
    };
    for &p in &still {
        signal(p, Signal::KILL);
    }
    let _ = wait_gone(&still, Duration::from_secs(2));
    reap_zombies();
    still
}

/// Prints one row of a figures table (collected and printed as Markdown by the runner).
pub fn row(table: &str, cells: &[(&str, String)]) {
    let mut s = format!("ROW {table}");
    for (k, v) in cells {
        s.push('|');
        s.push_str(k);
        s.push('=');
        s.push_str(&v.replace('|', "/"));
    }
    println!("{s}");
}

/// Records a broken promise (the check fails, the role goes on measuring).
pub fn fail(msg: impl std::fmt::Display) {
    println!("FAIL {}", msg.to_string().replace('\n', " / "));
}

/// Records a broken promise when `cond` is false.
pub fn check(cond: bool, msg: impl FnOnce() -> String) -> bool {
    if !cond {
        fail(msg());
    }
    cond
}

/// Runs `f` on a thread and waits at most `limit` for it; `None` if it did not return (the
/// thread is left behind: the role exits soon after and takes it along).
pub fn bounded<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

impl Rng {
    /// Fewer than `max` random bytes.
    pub fn bytes_below(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max) as usize;
        self.bytes(n)
    }
}

/// An error as a table cell: kind, message and the chain of sources.
pub fn describe(e: &multiproc::Error) -> String {
    let mut s = format!("{:?}: {e}", e.kind());
    let mut src = std::error::Error::source(e);
    while let Some(x) = src {
        s.push_str(&format!(" <- {x}"));
        src = x.source();
    }
    s
}

/// Locks `m`, ignoring poison (a panicked check thread must not hide the figures).
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
