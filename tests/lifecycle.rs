//! Whole-program lifecycle checks, each in a separate helper process (this file has its own
//! `main`, so it can be a child subreaper and reap orphans without disturbing other tests):
//!
//! * the parent is SIGKILLed → every child (all start methods, from main and other threads)
//!   and the fork server are gone within a second;
//! * a program that used every start method and pipes exits normally → no descendant is left,
//!   its descriptor count returned to the baseline, and nothing appeared in /dev/shm or /tmp.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{is_gone, METHODS};
use multiproc::{Pipe, Process, StartMethod};

const ROLE: &str = "MULTIPROC_TEST_ROLE";

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Helper role: start children every way, print their pids, then wait to be killed.
fn role_victim() {
    let mut pids = Vec::new();
    let mut keep = Vec::new();
    for m in METHODS {
        let p = Process::builder()
            .start_method(m)
            .spawn(120_000u64, sleep_ms)
            .unwrap();
        pids.push(p.pid());
        keep.push(p);
    }
    // From a thread that ends right away: Linux ties PDEATHSIG to threads, the lifeline not.
    for m in [StartMethod::Spawn, StartMethod::Fork] {
        let p = std::thread::spawn(move || {
            Process::builder()
                .start_method(m)
                .spawn(120_000u64, sleep_ms)
                .unwrap()
        })
        .join()
        .unwrap();
        pids.push(p.pid());
        keep.push(p);
    }
    sleep_ms(300); // the thread-spawned children must survive their thread
    assert!(
        keep.iter().all(|p| p.is_alive()),
        "a child died with the thread that spawned it"
    );
    println!(
        "READY {}",
        pids.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    sleep_ms(60_000);
}

/// Helper role: use everything, then check our own descriptors and exit normally.
fn role_clean() {
    let before = fd_count();
    for m in METHODS {
        let (a, b) = Pipe::new::<u32>().unwrap();
        let p = Process::builder()
            .start_method(m)
            .spawn(b, |c: multiproc::Connection<u32>| {
                c.send(&(c.recv().unwrap() + 1)).unwrap()
            })
            .unwrap();
        a.send(&1).unwrap();
        assert_eq!(a.recv_timeout(Duration::from_secs(30)).unwrap(), 2);
        p.join_timeout(Duration::from_secs(30)).unwrap();
        let q = Process::builder()
            .start_method(m)
            .spawn(1u8, |x| -> u8 { panic!("{x}") })
            .unwrap();
        assert!(q.join_timeout(Duration::from_secs(30)).is_err());
        let d = Process::builder()
            .start_method(m)
            .spawn(1u64, sleep_ms)
            .unwrap();
        drop(d); // dropped unjoined: must still be reaped
    }
    sleep_ms(200);
    let _ = multiproc::active_children();
    // An idle fork server sleeps: its CPU time must not grow while nothing happens.
    let me = std::process::id();
    let kids =
        std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")).unwrap_or_default();
    let kids: Vec<u32> = kids
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    let cpu = |pid: u32| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let f: Vec<&str> = s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
    };
    let before_cpu: Vec<u64> = kids.iter().map(|&p| cpu(p)).collect();
    sleep_ms(500);
    for (p, b) in kids.iter().zip(before_cpu) {
        let used = cpu(*p) - b;
        assert!(
            used <= 5,
            "idle child {p} used {used} clock ticks in 0.5 s: it is spinning"
        );
    }
    assert!(!kids.is_empty(), "the fork server should be running");
    // The fork server (1 socket + nothing else) and the lifeline pipe (2 ends) stay open by
    // design until exit; nothing else may remain.
    let after = fd_count();
    if after > before + 3 {
        for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            eprintln!(
                "fd {:?} -> {:?}",
                e.file_name(),
                std::fs::read_link(e.path())
            );
        }
    }
    assert!(
        after <= before + 3,
        "descriptors leaked: {before} before, {after} after"
    );
    println!("CLEAN fds {before} -> {after} server {}", fork_server_pid());
}

/// The parent pid of `pid`, from `/proc`.
fn ppid(pid: u32) -> u32 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    s.rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// The fork server's pid: the parent of a running fork-server child.
fn fork_server_pid() -> u32 {
    let p = Process::builder()
        .start_method(StartMethod::ForkServer)
        .spawn(60_000u64, sleep_ms)
        .unwrap();
    let server = ppid(p.pid());
    p.kill().unwrap();
    let _ = p.join_timeout(Duration::from_secs(30));
    assert!(server > 1 && server != std::process::id());
    server
}

/// Helper role: the fork server is SIGKILLed under two of its children; both get a final
/// state (Python's 255 for the one whose status died with the server), joins return, and the
/// next spawn starts a new server.
fn role_server_killed() {
    let wait = Duration::from_secs(30);
    let running = Process::builder()
        .start_method(StartMethod::ForkServer)
        .spawn(120_000u64, sleep_ms)
        .unwrap();
    let finished = Process::builder()
        .start_method(StartMethod::ForkServer)
        .spawn((), |()| 5u32)
        .unwrap();
    let server = ppid(running.pid());
    assert!(
        server > 1 && server != std::process::id(),
        "server pid {server}"
    );
    let t0 = Instant::now();
    while finished.is_alive() {
        assert!(t0.elapsed() < wait, "the quick child never exited");
        sleep_ms(2);
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(server as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let t0 = Instant::now();
    while running.exitcode().is_none() {
        assert!(
            t0.elapsed() < wait,
            "exitcode() stayed None after the server died"
        );
        sleep_ms(5);
    }
    assert_eq!(running.exitcode(), Some(255), "status lost with the server");
    let e = running.join_timeout(wait).unwrap_err();
    assert_eq!(e.exit_code(), Some(255), "{e}");
    assert_eq!(finished.join_timeout(wait).unwrap(), 5);
    assert!(finished.exitcode().is_some());
    let again = Process::spawn(1u8, |x| x + 1).unwrap();
    assert_eq!(again.join_timeout(wait).unwrap(), 2);
    println!("SERVER OK");
}

/// Whether signal `sig` is ignored in this process (the `SigIgn` mask of /proc/self/status).
fn ignores(sig: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .unwrap_or(0);
    mask & (1 << (sig - 1)) != 0
}

/// What a child sees of its surroundings: cwd, one variable, SIGINT and SIGHUP ignored.
type Surroundings = (String, Option<String>, bool, bool);

fn surroundings(_: ()) -> Surroundings {
    (
        std::env::current_dir().unwrap().display().to_string(),
        std::env::var("MULTIPROC_TEST_VAR").ok(),
        ignores(2),
        ignores(1),
    )
}

#[allow(unsafe_code)] // signal(2), to set the dispositions the children must inherit
fn set_ignored(sig: i32, ignored: bool) {
    let h = if ignored {
        libc::SIG_IGN
    } else {
        libc::SIG_DFL
    };
    // SAFETY: SIG_IGN and SIG_DFL install no handler code.
    unsafe { libc::signal(sig, h) };
}

/// Helper role: every start method's child runs in the parent's *current* working directory
/// and environment and inherits its SIGINT/SIGHUP dispositions, even when the fork server
/// started before they changed; `ignore_sigint(true)` makes a child ignore SIGINT.
fn role_inherit() {
    let wait = Duration::from_secs(30);
    // Start the fork server first, in the original surroundings.
    let first = Process::spawn((), surroundings).unwrap();
    let (start_dir, _, _, _) = first.join_timeout(wait).unwrap();
    let dir = std::env::temp_dir().join(format!("multiproc-cwd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.canonicalize().unwrap();
    std::env::set_current_dir(&dir).unwrap();
    std::env::set_var("MULTIPROC_TEST_VAR", "changed");
    let check = |ignored: bool| {
        set_ignored(libc::SIGINT, ignored);
        set_ignored(libc::SIGHUP, ignored);
        for m in METHODS {
            let p = Process::builder()
                .start_method(m)
                .spawn((), surroundings)
                .unwrap();
            let got = p.join_timeout(wait).unwrap();
            let want = (
                dir.display().to_string(),
                Some("changed".to_string()),
                ignored,
                ignored,
            );
            assert_eq!(got, want, "{m:?}, parent ignoring SIGINT/SIGHUP: {ignored}");
            let p = Process::builder()
                .start_method(m)
                .ignore_sigint(true)
                .spawn((), surroundings)
                .unwrap();
            let got = p.join_timeout(wait).unwrap();
            assert!(got.2, "{m:?}: ignore_sigint(true) not applied");
            assert_eq!(got.3, ignored, "{m:?}: SIGHUP");
        }
    };
    check(true);
    check(false);
    std::env::remove_var("MULTIPROC_TEST_VAR");
    let p = Process::spawn((), surroundings).unwrap();
    assert_eq!(
        p.join_timeout(wait).unwrap().1,
        None,
        "a removed variable stays removed"
    );
    std::env::set_current_dir(&start_dir).unwrap();
    std::fs::remove_dir(&dir).unwrap();
    println!("INHERIT OK");
}

/// Helper role: children that panic, under every start method; the panics are reported to
/// us as errors. Whether they are also printed is up to MULTIPROC_CHILD_PANIC_OUTPUT.
fn role_panics() {
    for m in METHODS {
        let p = Process::builder()
            .start_method(m)
            .spawn((), |()| -> u8 { panic!("reported-panic-marker") })
            .unwrap();
        let e = p.join_timeout(Duration::from_secs(30)).unwrap_err();
        assert_eq!(e.panic_message(), Some("reported-panic-marker"), "{m:?}");
    }
    // A panic the parent never hears of (another thread of the child) is still printed.
    let p = Process::spawn((), |()| {
        let _ = std::thread::spawn(|| panic!("other-thread-marker")).join();
    })
    .unwrap();
    p.join_timeout(Duration::from_secs(30)).unwrap();
    println!("PANICS OK");
}

/// Helper role: hundreds of processes per start method, each polled and dropped (after
/// `exitcode()`, `is_alive()` or `join`): our descriptor count stays flat; and fork-server
/// children hold the same descriptors whether forked in advance or on demand.
fn role_fds_flat() {
    let wait = Duration::from_secs(30);
    let until_exited = |p: &Process<u8>, how: usize| {
        let t0 = Instant::now();
        loop {
            let done = match how {
                0 => p.exitcode().is_some(),
                1 => !p.is_alive(),
                _ => p.join_timeout(wait).is_ok(),
            };
            if done {
                return;
            }
            assert!(t0.elapsed() < wait, "child never exited");
            std::thread::sleep(Duration::from_micros(200));
        }
    };
    for m in METHODS {
        // Warm up: the fork server, the lifeline pipe, the reaper.
        for how in 0..3 {
            let p = Process::builder()
                .start_method(m)
                .spawn(1u8, |x| x)
                .unwrap();
            until_exited(&p, how);
        }
        let before = fd_count();
        for i in 0..300 {
            let p = Process::builder()
                .start_method(m)
                .spawn(1u8, |x| x)
                .unwrap();
            until_exited(&p, i % 3);
        }
        let after = fd_count();
        assert_eq!(before, after, "{m:?}: descriptors grew over 300 processes");
    }
    // Many at once from several threads: the first takes the spare, most of the others are
    // forked on demand (the server makes no spare while requests wait).
    let fd_count_in_child = |()| {
        std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                (0..8)
                    .map(|_| {
                        Process::builder()
                            .start_method(StartMethod::ForkServer)
                            .spawn((), fd_count_in_child)
                            .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let counts: Vec<usize> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .map(|p| p.join_timeout(wait).unwrap())
        .collect();
    assert!(
        counts.iter().all(|&c| c == counts[0]),
        "fork-server children hold different descriptors: {counts:?}"
    );
    println!("FDS OK {counts:?}");
}

/// Helper role: a dropped child is reaped by the reaper thread alone (nothing else here
/// launches or calls `active_children`), woken by the child's exit rather than by a timer.
fn role_reaper() {
    for m in METHODS {
        let p = Process::builder()
            .start_method(m)
            .spawn(50u64, sleep_ms)
            .unwrap();
        let pid = p.pid();
        drop(p);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::metadata(format!("/proc/{pid}")).is_ok() {
            assert!(Instant::now() < deadline, "{m:?}: child {pid} never reaped");
            sleep_ms(5);
        }
    }
    println!("REAPER OK");
}

/// Helper role: started with SIGCHLD ignored (inherited across exec), every method must still
/// join with the right result and exit code.
fn role_sigchld_ignored() {
    for m in METHODS {
        let p = Process::builder()
            .start_method(m)
            .spawn(20u32, |x| x + 1)
            .unwrap();
        assert_eq!(
            p.join_timeout(Duration::from_secs(30)).unwrap(),
            21,
            "{m:?}"
        );
        let q = Process::builder()
            .start_method(m)
            .spawn((), |()| -> u8 { panic!("x") })
            .unwrap();
        let e = q.join_timeout(Duration::from_secs(30)).unwrap_err();
        assert_eq!(e.kind(), multiproc::ErrorKind::Panicked, "{m:?}: {e}");
    }
    println!("SIGCHLD OK");
}

fn descendants(root: u32) -> Vec<u32> {
    let mut all = vec![root];
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default();
        all.extend(
            children
                .split_whitespace()
                .filter_map(|s| s.parse::<u32>().ok()),
        );
        i += 1;
    }
    all.remove(0);
    all
}

fn reap_zombies() {
    while let Ok(Some(_)) = rustix::process::waitpid(None, rustix::process::WaitOptions::NOHANG) {}
}

fn spawn_role(role: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .env(ROLE, role)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn read_line_with_timeout(child: &mut std::process::Child, timeout: Duration) -> String {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(timeout).unwrap_or_default()
}

fn wait_gone(pids: &[u32], limit: Duration) -> Result<Duration, Vec<u32>> {
    let t0 = Instant::now();
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|&p| !is_gone(p)).collect();
        if alive.is_empty() {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > limit {
            return Err(alive);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn parent_killed_takes_children_along() -> Result<(), String> {
    let mut victim = spawn_role("victim");
    let line = read_line_with_timeout(&mut victim, Duration::from_secs(60));
    let named: Vec<u32> = line
        .strip_prefix("READY ")
        .ok_or(format!("victim said {line:?}"))?
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    let tree = descendants(victim.id());
    for p in &named {
        if !tree.contains(p) {
            return Err(format!(
                "child {p} is not a descendant of the victim: {tree:?}"
            ));
        }
    }
    if tree.len() < named.len() + 1 {
        return Err(format!("expected the fork server among {tree:?}"));
    }
    victim.kill().unwrap();
    victim.wait().unwrap();
    let res = wait_gone(&tree, Duration::from_secs(1));
    // Kill and reap anything left so a failure leaves no process behind.
    for p in &tree {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(*p as i32).unwrap(),
            rustix::process::Signal::KILL,
        );
    }
    sleep_ms(50);
    reap_zombies();
    match res {
        Ok(t) => {
            println!(
                "  {} descendants gone {:.1} ms after the parent was SIGKILLed",
                tree.len(),
                t.as_secs_f64() * 1e3
            );
            Ok(())
        }
        Err(alive) => Err(format!(
            "still alive 1 s after the parent was killed: {alive:?}"
        )),
    }
}

fn normal_exit_leaves_nothing() -> Result<(), String> {
    let shm_before: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let tmp_before: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let mut clean = spawn_role("clean");
    let pid = clean.id();
    let line = read_line_with_timeout(&mut clean, Duration::from_secs(120));
    // Everything it started, while it is still finishing.
    let tree = descendants(pid);
    let status = clean.wait().unwrap();
    if !status.success() || !line.starts_with("CLEAN") {
        return Err(format!("helper failed: {status}, said {line:?}"));
    }
    println!("  {}", line.trim());
    let res = wait_gone(&tree, Duration::from_secs(1));
    // The helper waited for its fork server at exit: it is not even a zombie (an orphan would
    // have been re-parented to us, the subreaper, and linger until we reap it).
    let server: Option<u32> = line
        .split_whitespace()
        .skip_while(|w| *w != "server")
        .nth(1)
        .and_then(|p| p.parse().ok());
    let lingering = server.filter(|p| std::fs::metadata(format!("/proc/{p}")).is_ok());
    reap_zombies();
    if server.is_none() {
        return Err(format!("the helper did not name its fork server: {line:?}"));
    }
    if let Some(p) = lingering {
        return Err(format!("the fork server {p} was not waited for at exit"));
    }
    if let Err(alive) = res {
        return Err(format!("left behind after a normal exit: {alive:?}"));
    }
    let shm_after: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let tmp_after: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let new_shm: Vec<_> = shm_after
        .iter()
        .filter(|f| !shm_before.contains(f))
        .collect();
    let new_tmp: Vec<_> = tmp_after
        .iter()
        .filter(|f| !tmp_before.contains(f) && f.to_string_lossy().contains("multiproc"))
        .collect();
    if !new_shm.is_empty() || !new_tmp.is_empty() {
        return Err(format!(
            "files left behind: /dev/shm {new_shm:?}, tmp {new_tmp:?}"
        ));
    }
    Ok(())
}

#[allow(unsafe_code)] // pre_exec, to start the helper with SIGCHLD ignored
fn sigchld_ignored_still_joins() -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(ROLE, "sigchld").stdout(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only calls `signal`,
    // which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGCHLD, libc::SIG_IGN);
            Ok(())
        })
    };
    let mut child = cmd.spawn().unwrap();
    let line = read_line_with_timeout(&mut child, Duration::from_secs(120));
    let status = child.wait().unwrap();
    reap_zombies();
    if status.success() && line.starts_with("SIGCHLD OK") {
        Ok(())
    } else {
        Err(format!(
            "helper with SIGCHLD ignored: {status}, said {line:?}"
        ))
    }
}

fn server_killed_gives_final_states() -> Result<(), String> {
    let mut child = spawn_role("server_killed");
    let line = read_line_with_timeout(&mut child, Duration::from_secs(120));
    let status = child.wait().unwrap();
    reap_zombies();
    if status.success() && line.starts_with("SERVER OK") {
        Ok(())
    } else {
        Err(format!(
            "helper killing its fork server: {status}, said {line:?}"
        ))
    }
}

fn children_inherit_cwd_env_and_signals() -> Result<(), String> {
    let mut child = spawn_role("inherit");
    let line = read_line_with_timeout(&mut child, Duration::from_secs(120));
    let status = child.wait().unwrap();
    reap_zombies();
    if status.success() && line.starts_with("INHERIT OK") {
        Ok(())
    } else {
        Err(format!(
            "helper checking inheritance: {status}, said {line:?}"
        ))
    }
}

fn reported_panics_are_quiet_unless_asked() -> Result<(), String> {
    for (output, want_printed) in [(None, false), (Some("1"), true)] {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env(ROLE, "panics")
            .env_remove("MULTIPROC_CHILD_PANIC_OUTPUT");
        if let Some(v) = output {
            cmd.env("MULTIPROC_CHILD_PANIC_OUTPUT", v);
        }
        let out = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        reap_zombies();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || !stdout.starts_with("PANICS OK") {
            return Err(format!(
                "helper: {}, said {stdout:?} {stderr:?}",
                out.status
            ));
        }
        let printed = stderr.matches("reported-panic-marker").count();
        if want_printed != (printed == METHODS.len()) || (!want_printed && printed > 0) {
            return Err(format!(
                "MULTIPROC_CHILD_PANIC_OUTPUT={output:?}: reported panics printed {printed} times: {stderr}"
            ));
        }
        if !stderr.contains("other-thread-marker") {
            return Err(format!(
                "a panic outside the task was not printed: {stderr:?}"
            ));
        }
    }
    Ok(())
}

fn descriptors_stay_flat() -> Result<(), String> {
    let mut child = spawn_role("fds");
    let line = read_line_with_timeout(&mut child, Duration::from_secs(300));
    let status = child.wait().unwrap();
    reap_zombies();
    if status.success() && line.starts_with("FDS OK") {
        println!("  {}", line.trim());
        Ok(())
    } else {
        Err(format!(
            "helper counting descriptors: {status}, said {line:?}"
        ))
    }
}

fn dropped_children_are_reaped_by_the_reaper() -> Result<(), String> {
    let mut child = spawn_role("reaper");
    let line = read_line_with_timeout(&mut child, Duration::from_secs(120));
    let status = child.wait().unwrap();
    reap_zombies();
    if status.success() && line.starts_with("REAPER OK") {
        Ok(())
    } else {
        Err(format!("helper dropping children: {status}, said {line:?}"))
    }
}

/// Returns from `main` at once after starting children whose first frames were never read:
/// the exit-time reaper must decode them without the main thread's (destroyed) thread-locals.
fn role_exit_unread() {
    let mut keep = Vec::new();
    for i in 0..4u64 {
        let daemon = i % 2 == 0;
        let p = Process::builder()
            .daemon(daemon)
            .spawn(i, |x: u64| x + 1)
            .expect("spawn");
        keep.push(p);
    }
    // Leak the handles: at exit they are still registered, and nothing has been read yet.
    std::mem::forget(keep);
    println!("started");
}

/// At exit, children whose frames were never read are finished without an abort (the
/// exit-time reaper must not touch the exiting thread's destroyed thread-locals).
fn exit_with_unread_children_is_clean() -> Result<(), String> {
    for round in 0..10 {
        let mut child = spawn_role("exit_unread");
        let line = read_line_with_timeout(&mut child, Duration::from_secs(20));
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("round {round}: the program did not exit"));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        reap_zombies();
        if line.trim() != "started" || !status.success() {
            return Err(format!(
                "round {round}: printed {line:?}, exited with {status} (an abort at exit?)"
            ));
        }
    }
    Ok(())
}

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("reaper") => return role_reaper(),
        Ok("fds") => return role_fds_flat(),
        Ok("inherit") => return role_inherit(),
        Ok("panics") => return role_panics(),
        Ok("server_killed") => return role_server_killed(),
        Ok("victim") => return role_victim(),
        Ok("clean") => return role_clean(),
        Ok("sigchld") => return role_sigchld_ignored(),
        Ok("exit_unread") => return role_exit_unread(),
        _ => {}
    }
    // Orphans of our helpers are re-parented to us, so we can see and reap them.
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
    type Check = fn() -> Result<(), String>;
    let tests: [(&str, Check); 9] = [
        (
            "dropped_children_are_reaped_by_the_reaper",
            dropped_children_are_reaped_by_the_reaper,
        ),
        ("descriptors_stay_flat", descriptors_stay_flat),
        (
            "children_inherit_cwd_env_and_signals",
            children_inherit_cwd_env_and_signals,
        ),
        (
            "reported_panics_are_quiet_unless_asked",
            reported_panics_are_quiet_unless_asked,
        ),
        (
            "server_killed_gives_final_states",
            server_killed_gives_final_states,
        ),
        (
            "parent_killed_takes_children_along",
            parent_killed_takes_children_along,
        ),
        ("normal_exit_leaves_nothing", normal_exit_leaves_nothing),
        ("sigchld_ignored_still_joins", sigchld_ignored_still_joins),
        (
            "exit_with_unread_children_is_clean",
            exit_with_unread_children_is_clean,
        ),
    ];
    let mut failed = 0;
    for (name, t) in tests {
        match t() {
            Ok(()) => println!("test {name} ... ok"),
            Err(e) => {
                failed += 1;
                println!("test {name} ... FAILED\n  {e}");
            }
        }
    }
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    println!("\ntest result: {verdict}. {} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out", tests.len() - failed);
    if failed > 0 {
        std::process::exit(101);
    }
}
