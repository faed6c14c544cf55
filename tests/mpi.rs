//! The MPI pool under a real `mpirun` (feature `mpi`).
//!
//! Each test starts `mpirun -n 3` on this test binary, running one `#[ignore]`d `inner_*`
//! test: rank 0 runs it, ranks 1 and 2 become node agents before `main`. The outer test
//! checks the job's exit status and what rank 0 printed, with a bounded wait.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use multiproc::{ErrorKind, Pool};

const APT: &str = "apt-get install -y libopenmpi-dev openmpi-bin libclang-dev pkg-config";

/// Output and exit status of one `mpirun` job.
struct Job {
    ok: bool,
    code: Option<i32>,
    out: String,
    err: String,
    took: Duration,
}

/// Runs `mpirun <flags> -n 3 <this binary> --exact <inner> --ignored`, killing it after
/// `limit`. Extra MPMD parts (`: -n 1 other`) go in `tail`.
fn mpirun(inner: &str, head: &[&str], ranks: u32, tail: &[&str], limit: Duration) -> Job {
    mpirun_in(&[], inner, head, ranks, tail, limit)
}

/// [`mpirun`], started through `wrap` (e.g. `ip netns exec NS`).
fn mpirun_in(
    wrap: &[&str],
    inner: &str,
    head: &[&str],
    ranks: u32,
    tail: &[&str],
    limit: Duration,
) -> Job {
    mpirun_with(wrap, inner, head, ranks, tail, limit, true)
}

/// [`mpirun_in`]; `nocapture: false` runs the inner test with its output captured by the
/// test harness (as a user's `cargo test` would), so only what bypasses the capture shows.
fn mpirun_with(
    wrap: &[&str],
    inner: &str,
    head: &[&str],
    ranks: u32,
    tail: &[&str],
    limit: Duration,
    nocapture: bool,
) -> Job {
    let exe = std::env::current_exe().unwrap();
    // Every process of the job inherits this, so what it leaves behind can be found.
    static JOBS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let token = format!(
        "{}-{}",
        std::process::id(),
        JOBS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut cmd = match wrap.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg("mpirun");
            c
        }
        None => Command::new("mpirun"),
    };
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_mpi_yield_when_idle", "1")
        .args(["--oversubscribe", "--bind-to", "none"])
        .args(head)
        .args(["-n", &ranks.to_string()])
        .arg(&exe)
        .args(["--exact", inner, "--ignored", "--test-threads=1"])
        .args(nocapture.then_some("--nocapture"))
        .args(tail)
        .env(JOB_ENV, &token)
        // mpirun forwards its stdin to rank 0; with an inherited one (a terminal, a pipe) a
        // rank stopped by SIGSTOP was seen to stall the whole job.
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!(
            "the `mpi` feature is on but `mpirun` could not be started ({e}); install MPI: {APT}"
        ),
    };
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t2 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let s = child.wait().unwrap();
            // What mpirun leaves holds its output pipes open: end it, or the reads below
            // wait for it.
            let left = kill_job(&token);
            let (out, err) = (t1.join().unwrap(), t2.join().unwrap());
            panic!("mpirun did not finish within {limit:?} (status {s}; killed then: {left:?}).\nstdout:\n{out}\nstderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = start.elapsed();
    // No job may leave a process behind, whatever happened in it (checked before reading
    // the output to its end: what is left holds the pipes open).
    let left = leftovers(&token);
    let (out, err) = (t1.join().unwrap(), t2.join().unwrap());
    assert!(
        left.is_empty(),
        "the job (status {status}) left processes {left:?} running after mpirun exited \
         (killed now).\nstdout:\n{out}\nstderr:\n{err}"
    );
    Job {
        ok: status.success(),
        code: status.code(),
        out,
        err,
        took,
    }
}

/// Marks every process of one `mpirun` job (set in `mpirun`'s environment, inherited by the
/// ranks, their fork servers and workers).
const JOB_ENV: &str = "MULTIPROC_TEST_MPI_JOB";

/// Pids of processes whose environment holds `JOB_ENV=token`.
fn job_processes(token: &str) -> Vec<u32> {
    let want = format!("{JOB_ENV}={token}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == want.as_bytes()))
        })
        // A zombie still shows its environment only to its parent's wait; skip them.
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    !s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(false)
        })
        .collect()
}

/// SIGKILLs every process of the job now; returns their pids.
fn kill_job(token: &str) -> Vec<u32> {
    let left = job_processes(token);
    for pid in &left {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    left
}

/// The job's processes still running 10 s after `mpirun` exited (a worker notices its agent
/// is gone within moments); those are killed, so no test leaves anything behind.
fn leftovers(token: &str) -> Vec<u32> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let left = job_processes(token);
        if left.is_empty() {
            return left;
        }
        if Instant::now() > until {
            kill_job(token);
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn under_mpirun() -> bool {
    multiproc::mpi::size().unwrap_or(1) > 1
}

fn square(x: u64) -> u64 {
    x * x
}

fn my_rank(_: u32) -> u32 {
    multiproc::mpi::rank().unwrap_or(0)
}

/// [`my_rank`] taking 10 ms: the pool gives a task this slow to each idle worker, one at a
/// time, so a map of them reaches every worker.
fn my_rank_slow(x: u32) -> u32 {
    std::thread::sleep(Duration::from_millis(10));
    my_rank(x)
}

fn limit() -> Duration {
    Duration::from_secs(90)
}

// ---------------------------------------------------------------------------------------
// Map correctness at scale, imap, imap_unordered, apply_async, chunking.

#[test]
#[ignore]
fn inner_map() {
    if !under_mpirun() {
        return;
    }
    let pool = Pool::builder().mpi().processes(1).build().unwrap();
    assert_eq!(pool.mpi_ranks(), vec![(1, 1), (2, 1)]);
    assert_eq!(pool.processes(), 2);
    let n = 200_000u64;
    let out = pool.map(square, 0..n).unwrap();
    assert!(out
        .iter()
        .enumerate()
        .all(|(i, v)| *v == (i as u64) * (i as u64)));
    assert_eq!(
        pool.map_chunked(square, 0..500u64, 1).unwrap(),
        (0..500u64).map(square).collect::<Vec<_>>()
    );
    let im: Vec<u64> = pool.imap(square, 0..1000u64).map(|r| r.unwrap()).collect();
    assert_eq!(im, (0..1000u64).map(square).collect::<Vec<_>>());
    let mut un: Vec<u64> = pool
        .imap_unordered(square, 0..1000u64)
        .map(|r| r.unwrap())
        .collect();
    un.sort_unstable();
    assert_eq!(un, (0..1000u64).map(square).collect::<Vec<_>>());
    let rs: Vec<_> = (0..100u64).map(|i| pool.apply_async(square, i)).collect();
    let sum: u64 = rs.into_iter().map(|r| r.get().unwrap()).sum();
    assert_eq!(sum, (0..100u64).map(square).sum());
    // Tasks really ran on the agent ranks, both of them.
    let mut ranks = pool.map_chunked(my_rank_slow, 0..40u32, 1).unwrap();
    ranks.sort_unstable();
    ranks.dedup();
    assert_eq!(ranks, vec![1, 2]);
    pool.close();
    pool.join().unwrap();
    println!("INNER_MAP_OK");
}

#[test]
fn map_across_ranks() {
    let j = mpirun("inner_map", &[], 3, &[], limit());
    assert!(
        j.ok && j.out.contains("INNER_MAP_OK"),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        j.code,
        j.out,
        j.err
    );
}

// ---------------------------------------------------------------------------------------
// A crashing task fails alone; a task over its timeout fails with Timeout.

fn crash_on_7(x: u32) -> u32 {
    if x == 7 {
        std::process::abort();
    }
    x
}

#[test]
#[ignore]
fn inner_faults() {
    if !under_mpirun() {
        return;
    }
    let pool = Pool::builder()
        .mpi()
        .processes(1)
        .task_timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    let rs: Vec<_> = (0..20u32)
        .map(|i| pool.apply_async(crash_on_7, i))
        .collect();
    for (i, r) in rs.into_iter().enumerate() {
        match r.get() {
            Ok(v) => assert_eq!(v as usize, i),
            Err(e) => {
                assert_eq!(i, 7, "{e}");
                assert_eq!(e.kind(), ErrorKind::WorkerLost, "{e}");
                assert!(e.to_string().contains("SIGABRT"), "{e}");
            }
        }
    }
    let slow = pool.apply_async(|s: u64| std::thread::sleep(Duration::from_secs(s)), 30);
    let e = slow.get().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    // The job goes on, on both ranks, with replaced workers.
    assert_eq!(pool.map(square, 0..1000u64).unwrap().len(), 1000);
    let mut ranks = pool.map_chunked(my_rank_slow, 0..40u32, 1).unwrap();
    ranks.sort_unstable();
    ranks.dedup();
    assert_eq!(ranks, vec![1, 2]);
    pool.close();
    pool.join().unwrap();
    println!("INNER_FAULTS_OK");
}

#[test]
fn crashing_task_and_timeout() {
    let j = mpirun("inner_faults", &[], 3, &[], limit());
    assert!(
        j.ok && j.out.contains("INNER_FAULTS_OK"),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        j.code,
        j.out,
        j.err
    );
}

// ---------------------------------------------------------------------------------------
// An agent rank that stops answering (SIGSTOP) is declared lost; its tasks run elsewhere.

/// Freezes its own agent when it runs on rank 2, then answers. Each item takes 20 ms, so
/// rank 1 cannot finish the map alone before rank 2 has taken a task.
fn freeze_rank_2(x: u32) -> u32 {
    std::thread::sleep(Duration::from_millis(20));
    if multiproc::mpi::rank() == Some(2) {
        if let Ok(pid) = std::env::var("MULTIPROC_MPI_AGENT_PID") {
            let _ = Command::new("kill").args(["-STOP", &pid]).status();
        }
    }
    x
}

#[test]
#[ignore]
fn inner_frozen_rank() {
    if !under_mpirun() {
        return;
    }
    let pool = Pool::builder()
        .mpi()
        .processes(1)
        .mpi_rank_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let start = Instant::now();
    // Every task answers: the ones that rank 2 held when it froze run again on rank 1.
    let out = pool.map_chunked(freeze_rank_2, 0..50u32, 1).unwrap();
    assert_eq!(out, (0..50u32).collect::<Vec<_>>());
    println!("FROZEN_MAP_OK after {:?}", start.elapsed());
    // Only rank 1 serves now, with the lost rank's share of workers.
    let ranks = pool.map_chunked(my_rank, 0..50u32, 1).unwrap();
    assert!(ranks.iter().all(|r| *r == 1), "{ranks:?}");
    println!("INNER_FROZEN_OK");
    pool.terminate();
}

#[test]
fn frozen_rank_is_lost_and_its_tasks_rerun() {
    // By default and under --enable-recovery (where rank 0 SIGKILLs the stopped agent at
    // exit: nothing else would end it, and mpirun would wait for it forever).
    for head in [&[][..], RECOVERY] {
        let j = mpirun("inner_frozen_rank", head, 3, &[], limit());
        // Rank 0 finished its work; MPI_Finalize cannot include the frozen rank, so rank 0
        // leaves without it, and the job ends within a bounded time.
        assert!(
            j.out.contains("INNER_FROZEN_OK"),
            "{head:?}: status {:?}\nstdout:\n{}\nstderr:\n{}",
            j.code,
            j.out,
            j.err
        );
        assert!(j.err.contains("MPI rank 2"), "{}", j.err);
        assert!(j.err.contains("is lost: it sent nothing"), "{}", j.err);
        println!(
            "frozen-rank job {head:?} ended after {:?} with {:?}",
            j.took, j.code
        );
    }
}

// ---------------------------------------------------------------------------------------
// An agent rank killed outright, default launch: Open MPI aborts the whole job (measured,
// bounded). Under --enable-recovery the job goes on: see the end of this file.

fn kill_rank_2(x: u32) -> u32 {
    if multiproc::mpi::rank() == Some(2) {
        if let Ok(pid) = std::env::var("MULTIPROC_MPI_AGENT_PID") {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    }
    x
}

#[test]
#[ignore]
fn inner_killed_rank() {
    if !under_mpirun() {
        return;
    }
    let pool = Pool::builder()
        .mpi()
        .processes(1)
        .mpi_rank_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    println!("INNER_KILLED_STARTED");
    let r = pool.map_chunked(kill_rank_2, 0..50u32, 1);
    // By default Open MPI never lets rank 0 reach this line: the launcher kills it too
    // (under --enable-recovery it does reach it, with every result).
    println!("INNER_KILLED_SURVIVED {:?}", r.map(|v| v.len()));
}

#[test]
fn killed_rank_ends_the_job_without_hanging() {
    let j = mpirun("inner_killed_rank", &[], 3, &[], limit());
    assert!(
        j.out.contains("INNER_KILLED_STARTED"),
        "stdout:\n{}\nstderr:\n{}",
        j.out,
        j.err
    );
    if !j.out.contains("INNER_KILLED_SURVIVED") {
        // Open MPI: the job is aborted, and says which rank died.
        assert!(!j.ok, "stdout:\n{}\nstderr:\n{}", j.out, j.err);
        assert!(
            j.err.contains("signal 9") || j.err.contains("Killed"),
            "{}",
            j.err
        );
    }
    println!("killed-rank job ended after {:?} with {:?}", j.took, j.code);
}

// ---------------------------------------------------------------------------------------
// Two MPI pools of one process, at once: each pool numbers its workers from 1, and the
// hub and agents must still tell them apart. And a Fork child of rank 0 exits at once.

#[test]
#[ignore]
fn inner_two_pools() {
    if !under_mpirun() {
        return;
    }
    let a = Pool::builder().mpi().processes(1).build().unwrap();
    let first = a.apply_async(square, 3);
    assert_eq!(first.get_timeout(Duration::from_secs(20)).unwrap(), 9);
    let b = Pool::builder().mpi().processes(1).build().unwrap();
    let r = b.apply_async(square, 4);
    assert_eq!(r.get_timeout(Duration::from_secs(20)).unwrap(), 16);
    // The first pool still works once the second one has workers of the same ids.
    let r = a.apply_async(square, 5);
    assert_eq!(r.get_timeout(Duration::from_secs(20)).unwrap(), 25);
    // Both at once, from two threads, with every result checked.
    std::thread::scope(|s| {
        let ta = s.spawn(|| a.map_async(square, 0..2_000u64));
        let tb = s.spawn(|| b.map_async(square, 2_000..4_000u64));
        let va = ta
            .join()
            .unwrap()
            .get_timeout(Duration::from_secs(30))
            .unwrap();
        let vb = tb
            .join()
            .unwrap()
            .get_timeout(Duration::from_secs(30))
            .unwrap();
        assert_eq!(va, (0..2_000u64).map(|x| x * x).collect::<Vec<_>>());
        assert_eq!(vb, (2_000..4_000u64).map(|x| x * x).collect::<Vec<_>>());
    });
    // A `Fork` child of rank 0 inherits the hub's exit handler; it must not run it (it
    // waited up to 10 s for the parent's MPI thread, and woke it).
    let p = multiproc::Process::builder()
        .start_method(multiproc::StartMethod::Fork)
        .spawn(6u64, square)
        .unwrap();
    assert_eq!(p.join_timeout(Duration::from_secs(5)).unwrap(), 36);
    a.terminate();
    b.terminate();
    println!("INNER_TWO_POOLS_OK");
}

#[test]
fn two_mpi_pools_at_once_keep_their_workers_apart() {
    let j = mpirun("inner_two_pools", &[], 3, &[], limit());
    assert!(
        j.ok && j.out.contains("INNER_TWO_POOLS_OK"),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        j.code,
        j.out,
        j.err
    );
}

// ---------------------------------------------------------------------------------------
// A rank running another binary is refused.

#[test]
#[ignore]
fn inner_mismatch() {
    if !under_mpirun() {
        return;
    }
    let e = Pool::builder().mpi().processes(1).build().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ExecutableMismatch, "{e}");
    assert!(e.to_string().contains("rank 2"), "{e}");
    assert!(e.to_string().contains("different binary"), "{e}");
    // Build-ids as `readelf -n` prints them: the label, then the id in hex (not the label's
    // own bytes in hex).
    assert!(e.to_string().contains("rank 0 has build-id:"), "{e}");
    assert!(!e.to_string().contains("6275696c642d6964"), "{e}");
    println!("INNER_MISMATCH_OK: {e}");
}

#[test]
fn mismatched_binary_is_refused() {
    // Another program built with the feature: the example, in this test binary's profile
    // (target/<profile>/deps/<test> -> target/<profile>/examples/mpi_map).
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().unwrap().parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(&cargo);
    build.args(["build", "--quiet", "--all-features", "--example", "mpi_map"]);
    if profile.ends_with("release") {
        build.arg("--release");
    }
    assert!(
        build.status().unwrap().success(),
        "building examples/mpi_map failed"
    );
    let other = profile.join("examples/mpi_map");
    let other = other.to_str().unwrap();
    let j = mpirun("inner_mismatch", &[], 2, &[":", "-n", "1", other], limit());
    assert!(
        j.ok && j.out.contains("INNER_MISMATCH_OK"),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        j.code,
        j.out,
        j.err
    );
}

// ---------------------------------------------------------------------------------------
// Several hosts: ranks in network namespaces of their own, joined by a veth pair, launched
// through an rsh agent that enters the namespace, over TCP only.

/// Network namespaces standing for hosts, each with an address of its own (10.213.7.1, .2,
/// ... inside them only), joined by a bridge in one more namespace (the switch), and the
/// rsh agent script; all removed on drop. Each host also gets a boot id of its own, so that
/// rank 0 sees its agents as on other machines (it cannot watch their pids, and the
/// heartbeats decide, as on a real cluster).
struct Hosts {
    names: Vec<String>,
    /// The switch's namespace, holding the bridge and the host ends of the links.
    switch: String,
    agent: std::path::PathBuf,
    tmp: std::path::PathBuf,
}

/// The network interface of every host, inside its namespace.
const HOST_IF: &str = "eth0";

/// Runs `ip ARGS`; its error output on failure.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("`ip` cannot be run ({e})"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Hosts {
    fn create(n: usize) -> Result<Hosts, String> {
        // Tests run on several threads of one process: each set of hosts has its own names.
        static SETS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let set = SETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{}{}", std::process::id(), set);
        let names: Vec<String> = (0..n)
            .map(|i| format!("mpct{id}{}", (b'a' + i as u8) as char))
            .collect();
        let switch = format!("mpct{id}s");
        let agent = std::env::temp_dir().join(format!("multiproc-rsh-{id}.sh"));
        let tmp = std::env::temp_dir().join(format!("multiproc-hosts-{id}"));
        // From here on, whatever was made is removed on drop, also on failure.
        let mut hosts = Hosts {
            names: Vec::new(),
            switch: switch.clone(),
            agent: agent.clone(),
            tmp: tmp.clone(),
        };
        ip(&["netns", "add", &switch])?;
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        for (i, h) in names.iter().enumerate() {
            ip(&["netns", "add", h])?;
            hosts.names.push(h.clone());
            let port = format!("p{i}");
            ip(&[
                "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", HOST_IF,
                "netns", h,
            ])?;
            ip(&["-n", &switch, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &switch, "link", "set", &port, "up"])?;
            let addr = format!("10.213.7.{}/24", i + 1);
            ip(&["-n", h, "addr", "add", &addr, "dev", HOST_IF])?;
            ip(&["-n", h, "link", "set", HOST_IF, "up"])?;
            ip(&["-n", h, "link", "set", "lo", "up"])?;
        }
        // mpirun calls `agent HOST COMMAND...`; the host name is the namespace's. Each host
        // gets its own temporary directory, as separate machines would: Open MPI's daemons
        // on one file system with one host name otherwise race for the same session
        // directory ("File exists"). Its boot id is its own too (bound over the kernel's
        // in the mount namespace that `ip netns exec` makes).
        for h in &names {
            let dir = tmp.join(h);
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            std::fs::write(dir.join("boot_id"), format!("host-{h}\n"))
                .map_err(|e| e.to_string())?;
        }
        std::fs::write(
            &agent,
            format!(
                "#!/bin/sh\nhost=\"$1\"; shift\n\
                 TMPDIR={t}/$host exec ip netns exec \"$host\" sh -c \
                 \"mount --bind {t}/$host/boot_id /proc/sys/kernel/random/boot_id && $*\"\n",
                t = tmp.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        Ok(hosts)
    }

    /// Bytes through host `i`'s interface (sent + received).
    fn link_bytes(&self, i: usize) -> u64 {
        ["tx_bytes", "rx_bytes"]
            .iter()
            .map(|f| {
                let out = Command::new("ip")
                    .args(["netns", "exec", &self.names[i], "cat"])
                    .arg(format!("/sys/class/net/{HOST_IF}/statistics/{f}"))
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0)
            })
            .sum()
    }

    /// `mpirun` flags that start the job's ranks on these hosts, `slots[i]` ranks on host
    /// `i` (in rank order), through the rsh agent, over TCP on the hosts' own network only.
    fn mpirun_flags(&self, slots: &[u32]) -> Vec<String> {
        let list: Vec<String> = self
            .names
            .iter()
            .zip(slots)
            .map(|(h, n)| format!("{h}:{n}"))
            .collect();
        [
            "--mca",
            "plm_rsh_agent",
            self.agent.to_str().unwrap(),
            "--host",
            &list.join(","),
            "--mca",
            "btl",
            "tcp,self",
            "--mca",
            "oob_tcp_if_include",
            "10.213.7.0/24",
            "--mca",
            "btl_tcp_if_include",
            "10.213.7.0/24",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// The wrapper that runs `mpirun` on the first host.
    fn on_first(&self) -> [&str; 4] {
        ["ip", "netns", "exec", self.names[0].as_str()]
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and so the pair.
        for n in self.names.iter().chain([&self.switch]) {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        let _ = std::fs::remove_file(&self.agent);
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

#[test]
fn map_across_hosts_in_network_namespaces() {
    let hosts = match Hosts::create(2) {
        Ok(h) => h,
        Err(why) => {
            println!("skipped: network namespaces cannot be made here ({why})");
            return;
        }
    };
    let before = hosts.link_bytes(0);
    let head = hosts.mpirun_flags(&[1, 2]);
    let head: Vec<&str> = head.iter().map(|s| s.as_str()).collect();
    // mpirun itself runs in the first namespace: rank 0 there, ranks 1 and 2 in the second.
    let j = mpirun_in(&hosts.on_first(), "inner_map", &head, 3, &[], limit());
    assert!(
        j.ok && j.out.contains("INNER_MAP_OK"),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        j.code,
        j.out,
        j.err
    );
    let crossed = hosts.link_bytes(0) - before;
    // 200,000 results and their tasks, at least, went over the link.
    assert!(
        crossed > 1_000_000,
        "only {crossed} bytes crossed the link between the hosts"
    );
    println!("{crossed} bytes crossed the link between the two hosts");
}

// ---------------------------------------------------------------------------------------
// A cut network link: three hosts, the one of rank 2 cut off mid-map.

/// The marker file a task on rank 2 creates once it runs, holding its agent's pid; the test
/// then cuts the link and creates the same path with `.cut` appended.
const CUT_ENV: &str = "MULTIPROC_TEST_CUT_MARKER";

/// Returns `x` after 20 ms. On rank 2, first says (once) that it runs and waits until the
/// test has cut its host off (at most 20 s), so its answer is sent over a dead link.
fn cut_on_rank_2(x: u32) -> u32 {
    std::thread::sleep(Duration::from_millis(20));
    if multiproc::mpi::rank() == Some(2) {
        if let Ok(path) = std::env::var(CUT_ENV) {
            // Once: the file holds this rank's agent pid.
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(format!("{path}.tmp"))
            {
                use std::io::Write;
                let pid = std::env::var("MULTIPROC_MPI_AGENT_PID").unwrap_or_default();
                let _ = f.write_all(pid.as_bytes());
                let _ = std::fs::rename(format!("{path}.tmp"), &path);
            }
            let cut = format!("{path}.cut");
            let until = Instant::now() + Duration::from_secs(20);
            while !std::path::Path::new(&cut).exists() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    x
}

#[test]
#[ignore]
fn inner_cut_link() {
    if !under_mpirun() {
        return;
    }
    let pool = Pool::builder()
        .mpi()
        .processes(1)
        .mpi_rank_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    assert_eq!(pool.mpi_ranks(), vec![(1, 1), (2, 1)]);
    let start = Instant::now();
    // Every task answers: the one rank 2 held when its link was cut runs again on rank 1.
    let out = pool.map_chunked(cut_on_rank_2, 0..60u32, 1);
    marker(&format!(
        "CUT_MAP_DONE after {:?}: {:?}",
        start.elapsed(),
        out.as_ref().map(|v| v.len())
    ));
    assert_eq!(out.unwrap(), (0..60u32).collect::<Vec<_>>());
    let ranks = pool.map_chunked(my_rank, 0..20u32, 1).unwrap();
    assert!(ranks.iter().all(|r| *r == 1), "{ranks:?}");
    pool.terminate();
    marker("INNER_CUT_OK");
}

/// What the cutter saw.
struct Cut {
    /// When the link went down.
    at: Instant,
    /// When the agent on the cut host was seen gone.
    agent_left: Option<Instant>,
    /// Its parent (mpirun's daemon on that host) still ran then.
    daemon_ran: bool,
}

/// Whether process `pid` runs (exists and is no zombie).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// The parent of process `pid`.
fn parent_of(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `mpirun --timeout` for the cut-link jobs: a run without the cut takes about 3 s here.
/// Open MPI's launcher cannot end by itself once a host is cut off (see the crate docs,
/// "What a failure does"); its own time limit is what the docs tell users to set.
const CUT_JOB_TIMEOUT: &str = "8";

#[test]
fn cut_link_neither_hangs_nor_loses_results() {
    // By default and under --enable-recovery.
    for head in [&[][..], RECOVERY] {
        let hosts = match Hosts::create(3) {
            Ok(h) => h,
            Err(why) => {
                println!("skipped: network namespaces cannot be made here ({why})");
                return;
            }
        };
        // The cut host's own TCP gives up on its peers after about 6 s instead of Linux's
        // ~15 min (tcp_retries2=15), so that mpirun's daemon there notices the cut and
        // exits within the leftover check's 10 s, as it would, later, on a real host.
        ip(&[
            "netns",
            "exec",
            &hosts.names[2],
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.tcp_retries2=4",
        ])
        .unwrap();
        let marker_path = hosts.tmp.join("rank2-runs");
        let mut flags = hosts.mpirun_flags(&[1, 1, 1]);
        flags.extend(["--timeout", CUT_JOB_TIMEOUT].map(String::from));
        flags.extend(head.iter().map(|s| s.to_string()));
        let flags: Vec<&str> = flags.iter().map(|s| s.as_str()).collect();
        // The cutter: once a task runs on rank 2, that host's link goes down (its end of
        // the veth pair, inside its namespace: the bridge then drops whatever is sent to
        // it, and nothing it sends leaves).
        let cut_host = hosts.names[2].clone();
        let watched = marker_path.clone();
        let cutter = std::thread::spawn(move || -> Option<Cut> {
            let until = Instant::now() + limit();
            let agent = loop {
                if let Some(pid) = std::fs::read_to_string(&watched)
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok())
                {
                    break pid;
                }
                if Instant::now() > until {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            // The agent's parent: mpirun's daemon on that host.
            let daemon = parent_of(agent);
            ip(&["-n", &cut_host, "link", "set", HOST_IF, "down"]).unwrap();
            let at = Instant::now();
            let mut done = watched.into_os_string();
            done.push(".cut");
            std::fs::write(done, b"").unwrap();
            // The agent must leave by itself (rank 0 went silent): seen while the daemon,
            // which would kill it on its own way out, still runs.
            while running(agent) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            Some(Cut {
                at,
                agent_left: (!running(agent)).then(Instant::now),
                daemon_ran: daemon.is_some_and(running),
            })
        });
        let env = format!("{CUT_ENV}={}", marker_path.display());
        let mut wrap = hosts.on_first().to_vec();
        wrap.extend(["env", env.as_str()]);
        let start = Instant::now();
        // Bounded (and nothing may be left running: checked inside).
        let j = mpirun_in(&wrap, "inner_cut_link", &flags, 3, &[], limit());
        let cut = cutter.join().unwrap();
        let cut = cut.unwrap_or_else(|| {
            panic!(
                "{head:?}: rank 2 never ran a task\nstdout:\n{}\nstderr:\n{}",
                j.out, j.err
            )
        });
        // Rank 0 got every result (the task rank 2 held ran again on rank 1), only rank 1
        // served afterwards, and rank 0's `main` ended.
        assert!(
            j.out.contains("INNER_CUT_OK"),
            "{head:?}: status {:?}\nstdout:\n{}\nstderr:\n{}",
            j.code,
            j.out,
            j.err
        );
        // Found by its silence (its heartbeats), as on another machine: not by a pidfd.
        assert!(
            j.err.contains("MPI rank 2") && j.err.contains("is lost: it sent nothing for 2s"),
            "{head:?}: {}",
            j.err
        );
        assert!(j.err.contains("leaves without MPI_Finalize"), "{}", j.err);
        // The agent on the cut host left by itself, its daemon still running then.
        let left = cut
            .agent_left
            .expect("the agent on the cut host never left");
        assert!(
            cut.daemon_ran,
            "{head:?}: the agent on the cut host ended only with its daemon"
        );
        let map = j
            .out
            .lines()
            .find_map(|l| l.split_once("CUT_MAP_DONE"))
            .map(|(_, m)| format!("map done{m}"))
            .unwrap_or_default();
        println!(
            "cut link {head:?}: {map}; the cut host's agent left {:?} after the cut; mpirun \
             ended {:?} after the cut ({:?} after its start, status {:?}, timed out: {})",
            left.duration_since(cut.at),
            (start + j.took).saturating_duration_since(cut.at),
            j.took,
            j.code,
            j.err
                .contains("time limit for job execution has been reached")
        );
    }
}

// ---------------------------------------------------------------------------------------
// Open MPI's `mpirun --enable-recovery`: the job goes on when an agent rank is killed.

/// `mpirun` flags that let a job outlive one of its ranks (Open MPI).
const RECOVERY: &[&str] = &["--enable-recovery"];

/// Writes a marker line to standard output past the test harness's capture.
fn marker(line: &str) {
    use std::io::Write;
    let mut o = std::io::stdout();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

/// `(rank, x)`: returns `x` after 10 ms, SIGKILLing its own agent first when it runs on
/// `rank` (the worker's answer then never reaches rank 0: the task must run again).
fn kill_agent_on(arg: (u32, u32)) -> u32 {
    let (rank, x) = arg;
    std::thread::sleep(Duration::from_millis(10));
    if multiproc::mpi::rank() == Some(rank) {
        if let Ok(pid) = std::env::var("MULTIPROC_MPI_AGENT_PID") {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    }
    x
}

#[test]
#[ignore]
fn inner_killed_ranks_recovered() {
    if !under_mpirun() {
        return;
    }
    let pool = Pool::builder()
        .mpi()
        .processes(1)
        .mpi_rank_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    assert_eq!(pool.mpi_ranks(), vec![(1, 1), (2, 1), (3, 1), (4, 1)]);
    // A map: rank 2 dies holding a task; every result comes back, in order.
    let out = pool
        .map_chunked(kill_agent_on, (0..30u32).map(|i| (2, i)), 1)
        .unwrap();
    assert_eq!(out, (0..30u32).collect::<Vec<_>>());
    marker("RECOVERED_MAP_OK");
    // An imap being consumed: rank 3 dies mid-stream; the iterator still yields every
    // result, in order.
    let im: Vec<u32> = pool
        .imap(kill_agent_on, (0..30u32).map(|i| (3, i)))
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(im, (0..30u32).collect::<Vec<_>>());
    marker("RECOVERED_IMAP_OK");
    // Pending apply_async results: rank 4 dies running one of them; each caller still gets
    // its own result (the lost task ran again on rank 1).
    let rs: Vec<_> = (0..20u32)
        .map(|i| pool.apply_async(kill_agent_on, (4, i)))
        .collect();
    for (i, r) in rs.iter().enumerate() {
        assert_eq!(r.get_timeout(Duration::from_secs(30)).unwrap(), i as u32);
    }
    marker("RECOVERED_APPLY_ASYNC_OK");
    // Only rank 1 is left, with every worker.
    let ranks = pool.map_chunked(my_rank, 0..20u32, 1).unwrap();
    assert!(ranks.iter().all(|r| *r == 1), "{ranks:?}");
    // The pool says so too: the lost ranks are gone from its list.
    let listed = pool.mpi_ranks();
    assert!(
        listed.len() == 1 && listed[0].0 == 1 && listed[0].1 >= 1,
        "{listed:?}"
    );
    // An apply_async whose task kills the last agent: the caller gets a clear error, not
    // a hang (there is no rank left to run it again).
    let r = pool.apply_async(kill_agent_on, (1, 7));
    let e = r.get_timeout(Duration::from_secs(30)).unwrap_err();
    marker(&format!("RECOVERED_LAST_RANK_ERR {:?}: {e}", e.kind()));
    // The pool says what happened in its kind too: its workers are lost, not an OS error.
    assert_eq!(e.kind(), ErrorKind::WorkerLost, "{e}");
    assert!(e.to_string().contains("every agent rank"), "{e}");
    pool.terminate();
    marker("INNER_RECOVERED_OK");
}

#[test]
fn killed_ranks_under_enable_recovery_rerun_their_tasks() {
    // Output captured (no --nocapture), as the job's exit path once hung only then.
    let j = mpirun_with(
        &[],
        "inner_killed_ranks_recovered",
        RECOVERY,
        5,
        &[],
        limit(),
        false,
    );
    assert!(
        j.ok && j.out.contains("INNER_RECOVERED_OK"),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        j.code,
        j.out,
        j.err
    );
    // Each rank is reported lost as soon as its process exits (rank 0 watches agents on its
    // own host through pidfds), not after mpi_rank_timeout of silence.
    for r in [1, 2, 3, 4] {
        let line = j
            .err
            .lines()
            .find(|l| l.contains(&format!("MPI rank {r} (host")))
            .unwrap_or_else(|| panic!("rank {r} not reported lost:\n{}", j.err));
        assert!(
            line.contains("is lost: its process has exited"),
            "rank {r}: {line}"
        );
    }
    assert!(j.err.contains("leaves without MPI_Finalize"), "{}", j.err);
    println!("recovered job ended after {:?}", j.took);
}

/// Rank 0 killed under `--enable-recovery`: nothing ends the agents but themselves.
#[test]
#[ignore]
fn inner_root_killed() {
    if !under_mpirun() {
        return;
    }
    let pool = Pool::builder()
        .mpi()
        .processes(1)
        .mpi_rank_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    assert_eq!(pool.map(square, 0..100u64).unwrap().len(), 100);
    marker("INNER_ROOT_KILLING");
    let _ = Command::new("kill")
        .args(["-KILL", &std::process::id().to_string()])
        .status();
    std::thread::sleep(Duration::from_secs(30));
    marker("INNER_ROOT_NOT_KILLED");
}

#[test]
fn killed_rank_0_under_enable_recovery_ends_the_agents() {
    let j = mpirun("inner_root_killed", RECOVERY, 3, &[], limit());
    assert!(
        j.out.contains("INNER_ROOT_KILLING") && !j.out.contains("INNER_ROOT_NOT_KILLED"),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        j.code,
        j.out,
        j.err
    );
    // Each agent noticed that rank 0 went silent, ended its workers and left (`mpirun`
    // then ends; nothing is left running: checked by `mpirun`).
    for r in [1, 2] {
        assert!(
            j.err.contains(&format!("MPI agent rank {r} "))
                && j.err.contains("rank 0 sent nothing"),
            "rank {r} did not leave:\n{}",
            j.err
        );
    }
    println!(
        "job without rank 0 ended after {:?} with {:?}",
        j.took, j.code
    );
}

/// A program that never builds an MPI pool, with agent rank 2 stopped before `main` ends.
#[test]
#[ignore]
fn inner_no_pool_stopped_agent() {
    if !under_mpirun() {
        return;
    }
    let token = std::env::var(JOB_ENV).unwrap();
    let rank2 = job_processes(&token).into_iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
            env.split(|b| *b == 0)
                .any(|kv| kv == b"OMPI_COMM_WORLD_RANK=2")
        })
    });
    let pid = rank2.expect("agent rank 2 is not running");
    assert!(Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    marker("INNER_STOPPED_AGENT");
}

#[test]
fn job_without_a_pool_and_a_stopped_agent_still_ends() {
    // Rank 0's exit releases the agents through MPI, which waits for every rank: bounded, so
    // the stopped rank cannot hold rank 0's exit; mpirun then ends the job as failed.
    let j = mpirun("inner_no_pool_stopped_agent", &[], 3, &[], limit());
    assert!(
        j.out.contains("INNER_STOPPED_AGENT"),
        "stdout:\n{}\nstderr:\n{}",
        j.out,
        j.err
    );
    assert!(
        j.err.contains("did not let rank 0 release its node agents"),
        "stderr:\n{}",
        j.err
    );
    assert!(
        !j.ok,
        "a job with a stopped rank cannot end cleanly: {:?}",
        j.code
    );
    println!(
        "no-pool job with a stopped agent ended after {:?} with {:?}",
        j.took, j.code
    );
}

/// A program that never builds an MPI pool.
#[test]
#[ignore]
fn inner_no_pool() {
    if !under_mpirun() {
        return;
    }
    marker("INNER_NO_POOL_OK");
}

#[test]
fn job_that_builds_no_pool_ends_cleanly() {
    // By default and under --enable-recovery: rank 0 releases the waiting agents at exit.
    for head in [&[][..], RECOVERY] {
        let j = mpirun("inner_no_pool", head, 3, &[], limit());
        assert!(
            j.ok && j.out.contains("INNER_NO_POOL_OK"),
            "{head:?}: status {:?}\nstdout:\n{}\nstderr:\n{}",
            j.code,
            j.out,
            j.err
        );
    }
}

/// Rank 0 ends with exit code 3 after using the pool.
#[test]
#[ignore]
fn inner_exit_3() {
    if !under_mpirun() {
        return;
    }
    let pool = Pool::builder().mpi().processes(1).build().unwrap();
    assert_eq!(pool.map(square, 0..100u64).unwrap().len(), 100);
    pool.close();
    pool.join().unwrap();
    marker("INNER_EXIT_3");
    std::process::exit(3);
}

#[test]
fn enable_recovery_hides_rank_0s_exit_status() {
    // Measured with Open MPI 4.1: by default mpirun passes rank 0's exit status on; under
    // --enable-recovery it exits 0 whatever the ranks' statuses (the crate docs say so).
    let j = mpirun("inner_exit_3", &[], 3, &[], limit());
    assert!(j.out.contains("INNER_EXIT_3"), "{}\n{}", j.out, j.err);
    assert_eq!(j.code, Some(3), "default launch:\n{}\n{}", j.out, j.err);
    let j = mpirun("inner_exit_3", RECOVERY, 3, &[], limit());
    assert!(j.out.contains("INNER_EXIT_3"), "{}\n{}", j.out, j.err);
    assert_eq!(j.code, Some(0), "--enable-recovery:\n{}\n{}", j.out, j.err);
}
