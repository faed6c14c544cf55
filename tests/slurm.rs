//! The MPI pool under Slurm's own launcher, `srun --mpi=pmix` (feature `mpi`).
//!
//! The test starts a single-node Slurm of its own in a temporary directory: a munge daemon
//! with a fresh key and its own socket, `slurmctld` and `slurmd` in the foreground with a
//! generated `slurm.conf` (this host as the only node, its real CPUs and memory from
//! `slurmd -C`, free ports, every state, spool, log and pid file in the directory). Once
//! the node is idle it runs `srun --mpi=pmix -n 3 --overcommit` on this test binary,
//! running the `#[ignore]`d `inner_slurm`: rank 0 runs it, tasks 1 and 2 become node agents
//! before `main`, seeing only what Slurm sets (`PMIX_RANK`, `SLURM_*`; no `OMPI_*`). At the
//! end it cancels whatever is left in its cluster and stops each daemon it started, by pid,
//! and removes the directory.
//!
//! Skipped, saying why, where Slurm or munge is not installed, where this is not root (the
//! daemons must run as root to start jobs), or where Slurm has no PMIx plugin; with
//! `MULTIPROC_REQUIRE_SLURM` set (`.ci/run` sets it) each of these fails the test instead.
//! Once the tools are there, a daemon that does not start fails the test with its log.
#![cfg(feature = "mpi")]

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use multiproc::Pool;

const APT: &str = "apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge";

/// The Slurm and munge programs the test runs.
const TOOLS: [&str; 7] = [
    "munged",
    "slurmctld",
    "slurmd",
    "srun",
    "sinfo",
    "squeue",
    "scancel",
];

/// Ranks in the job: rank 0 and two agents.
const RANKS: usize = 3;

/// Every wait for a daemon or the job is bounded by this.
const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// The job: what rank 0 runs under srun.

/// Where a task ran: (MPI rank, SLURM_PROCID, SLURM_JOB_ID, OMPI_COMM_WORLD_RANK set, pid,
/// host).
type Where = (u32, String, String, bool, u32, String);

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

fn var(v: &str) -> String {
    std::env::var(v).unwrap_or_default()
}

fn here() -> Where {
    (
        multiproc::mpi::rank().unwrap_or(u32::MAX),
        var("SLURM_PROCID"),
        var("SLURM_JOB_ID"),
        std::env::var_os("OMPI_COMM_WORLD_RANK").is_some(),
        std::process::id(),
        host(),
    )
}

/// [`here`] taking 10 ms: the pool gives a task this slow to each idle worker, one at a
/// time, so a map of them reaches every worker.
fn where_slow(_: u32) -> Where {
    std::thread::sleep(Duration::from_millis(10));
    here()
}

fn square(x: u64) -> u64 {
    x * x
}

#[test]
#[ignore]
fn inner_slurm() {
    // Only as the job's rank 0 (the outer test runs it under srun).
    if std::env::var_os("SLURM_STEP_ID").is_none() {
        return;
    }
    let me = here();
    // Slurm launched this job itself: the rank and size come from PMIx and Slurm, not from
    // an Open MPI launcher.
    assert!(
        !me.3,
        "OMPI_COMM_WORLD_RANK is set: not a direct srun launch"
    );
    assert_eq!(multiproc::mpi::rank(), Some(0));
    assert_eq!(multiproc::mpi::size(), Some(RANKS as u32));
    // The default worker count: this host's cores divided among the job's 3 tasks on it.
    let per = (multiproc::cpu_count() / RANKS).max(1);
    let pool = Pool::builder().mpi().build().unwrap();
    let placed = pool.mpi_ranks();
    assert_eq!(placed, vec![(1, per), (2, per)]);
    let n = 100_000u64;
    let out = pool.map(square, 0..n).unwrap();
    assert!(out
        .iter()
        .enumerate()
        .all(|(i, v)| *v == (i as u64) * (i as u64)));
    let rs: Vec<_> = (0..50u64).map(|i| pool.apply_async(square, i)).collect();
    let sum: u64 = rs.into_iter().map(|r| r.get().unwrap()).sum();
    assert_eq!(sum, (0..50u64).map(square).sum());
    // Tasks ran in worker processes of the agent ranks 1 and 2, inside this Slurm job step,
    // each agent's rank being its Slurm task id.
    let seen = pool.map_chunked(where_slow, 0..40u32, 1).unwrap();
    let workers = pool.pids();
    let mut ranks = BTreeSet::new();
    for (rank, procid, job, ompi, pid, h) in &seen {
        assert!(*rank == 1 || *rank == 2, "{seen:?}");
        assert_eq!(procid, &rank.to_string(), "{seen:?}");
        assert_eq!(job, &me.2, "{seen:?}");
        assert!(!ompi, "{seen:?}");
        assert_ne!(*pid, me.4, "{seen:?}");
        assert!(workers.contains(pid), "{pid} not in {workers:?}");
        // One node: the agents share rank 0's host.
        assert_eq!(h, &me.5, "{seen:?}");
        ranks.insert(*rank);
    }
    assert_eq!(ranks, BTreeSet::from([1, 2]), "{seen:?}");
    pool.close();
    pool.join().unwrap();
    println!(
        "INNER_SLURM_OK job {} ranks {placed:?} worker pids {workers:?}",
        me.2
    );
}

// ---------------------------------------------------------------------------------------
// A Slurm of our own.

/// `name` in `PATH`, or in the system directories a non-login root shell may lack.
fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("Uid:"))?;
            Some(l.split_whitespace().nth(2)? == "0")
        })
        .unwrap_or(false)
}

/// Two TCP ports free on the loopback now (for slurmctld and slurmd).
fn free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

/// A single-node Slurm cluster with its own munge: every daemon a child of this test, every
/// file in `dir`. Dropping it cancels its jobs, stops the daemons and removes `dir`.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    node: String,
    tools: Vec<PathBuf>,
    daemons: Vec<(&'static str, Child)>,
}

impl Cluster {
    fn tool(&self, name: &str) -> &Path {
        let i = TOOLS.iter().position(|t| *t == name).unwrap();
        &self.tools[i]
    }

    /// A command for one of the client tools, talking to this cluster only.
    fn client(&self, name: &str) -> Command {
        let mut c = Command::new(self.tool(name));
        // A test run inside a real Slurm job must not aim at that job's cluster.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SLURM_") {
                c.env_remove(k);
            }
        }
        c.env("SLURM_CONF", &self.conf).stdin(Stdio::null());
        c
    }

    fn daemon(&mut self, name: &'static str, args: &[&str]) {
        let log = std::fs::File::create(self.dir.join(format!("log/{name}.out"))).unwrap();
        let child = Command::new(self.tool(name))
            .args(args)
            .env("SLURM_CONF", &self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} could not be started: {e}"));
        self.daemons.push((name, child));
    }

    /// Everything the daemons logged, for a failure message.
    fn logs(&self) -> String {
        let mut s = String::new();
        let mut files: Vec<_> = std::fs::read_dir(self.dir.join("log"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            s += &format!("--- {}\n", f.display());
            for l in tail.iter().rev() {
                s += l;
                s.push('\n');
            }
        }
        s
    }

    /// Fails the test, with the logs, if a daemon has exited.
    fn check_alive(&mut self) {
        for (name, child) in &mut self.daemons {
            if let Some(st) = child.try_wait().unwrap() {
                let name = *name;
                panic!(
                    "{name} exited ({st}) while the cluster started:\n{}",
                    self.logs()
                );
            }
        }
    }

    /// Waits (bounded) until `done` holds, checking the daemons meanwhile.
    fn wait_for(&mut self, what: &str, mut done: impl FnMut(&Cluster) -> bool) {
        let start = Instant::now();
        while !done(self) {
            self.check_alive();
            if start.elapsed() > WAIT {
                panic!("{what}: not within {WAIT:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts munged, slurmctld and slurmd, and waits until the node is idle. `Err` says why
    /// the test cannot run here.
    fn start() -> Result<Cluster, String> {
        let mut tools = Vec::new();
        for t in TOOLS {
            tools.push(tool(t).ok_or_else(|| format!("`{t}` is not installed ({APT})"))?);
        }
        if !is_root() {
            return Err("not root: slurmd must run as root to start job steps".into());
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("multiproc-slurm-{}-{nanos}", std::process::id()));
        for sub in ["", "state", "spool", "log", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        // munged wants its socket's directory searchable by all, and its key's directory
        // writable by its owner alone.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut c = Cluster {
            conf: dir.join("slurm.conf"),
            dir,
            node: String::new(),
            tools,
            daemons: Vec::new(),
        };
        let d = c.dir.clone();
        let p = |name: &str| d.join(name).to_str().unwrap().to_string();

        // munge: a fresh key, our own socket.
        let mut key = vec![0u8; 1024];
        std::fs::File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut key)
            .unwrap();
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(p("munge.key"))
                .unwrap();
            f.write_all(&key).unwrap();
        }
        let sock = p("munge.sock");
        c.daemon(
            "munged",
            &[
                "--foreground",
                &format!("--socket={sock}"),
                &format!("--key-file={}", p("munge.key")),
                &format!("--pid-file={}", p("munged.pid")),
                &format!("--seed-file={}", p("munged.seed")),
            ],
        );
        c.wait_for("munged's socket", |c| c.dir.join("munge.sock").exists());

        // This host as Slurm sees it: "NodeName=vm CPUs=2 ... RealMemory=24105".
        let out = Command::new(c.tool("slurmd"))
            .arg("-C")
            .output()
            .map_err(|e| format!("`slurmd -C` failed: {e}"))?;
        let line = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("NodeName="))
            .map(str::to_string)
            .ok_or("`slurmd -C` printed no NodeName line")?;
        c.node = line["NodeName=".len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        let (ctld_port, d_port) = free_ports();
        // Job ids (and so PMIx namespaces, Open MPI session directories) of our own, should
        // another such test run on this machine at the same time.
        let first_job = 1000 + std::process::id() % 1_000_000;
        let conf = format!(
            "ClusterName=multiproc\n\
             SlurmctldHost={node}(127.0.0.1)\n\
             SlurmctldPort={ctld_port}\n\
             SlurmdPort={d_port}\n\
             AuthType=auth/munge\n\
             AuthInfo=socket={sock}\n\
             CredType=cred/munge\n\
             SlurmUser=root\n\
             SlurmdUser=root\n\
             StateSaveLocation={state}\n\
             SlurmdSpoolDir={spool}\n\
             SlurmctldPidFile={ctld_pid}\n\
             SlurmdPidFile={d_pid}\n\
             SlurmctldLogFile={ctld_log}\n\
             SlurmdLogFile={d_log}\n\
             PlugStackConfig={plugstack}\n\
             MailProg=/bin/true\n\
             FirstJobId={first_job}\n\
             ProctrackType=proctrack/linuxproc\n\
             TaskPlugin=task/none\n\
             SelectType=select/cons_tres\n\
             SelectTypeParameters=CR_Core\n\
             JobAcctGatherType=jobacct_gather/none\n\
             AccountingStorageType=accounting_storage/none\n\
             JobCompType=jobcomp/none\n\
             MpiDefault=none\n\
             ReturnToService=2\n\
             KillWait=5\n\
             {line} NodeAddr=127.0.0.1 State=UNKNOWN\n\
             PartitionName=multiproc Nodes={node} Default=YES MaxTime=INFINITE State=UP\n",
            node = c.node,
            state = p("state"),
            spool = p("spool"),
            ctld_pid = p("slurmctld.pid"),
            d_pid = p("slurmd.pid"),
            ctld_log = p("log/slurmctld.log"),
            d_log = p("log/slurmd.log"),
            plugstack = p("plugstack.conf"),
        );
        std::fs::write(&c.conf, conf).unwrap();
        std::fs::write(p("plugstack.conf"), "").unwrap();

        let conf = c.conf.to_str().unwrap().to_string();
        c.daemon("slurmctld", &["-D", "-i", "-f", &conf]);
        c.daemon("slurmd", &["-D", "-f", &conf]);
        c.wait_for("the node to be idle", |c| {
            let out = c
                .client("sinfo")
                .args(["-h", "-n", &c.node, "-o", "%T"])
                .stderr(Stdio::null())
                .output();
            out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "idle")
        });
        let list = c.client("srun").arg("--mpi=list").output().unwrap();
        let list = String::from_utf8_lossy(&list.stdout).to_string()
            + &String::from_utf8_lossy(&list.stderr);
        if !list.lines().any(|l| l.trim() == "pmix") {
            return Err(format!(
                "this Slurm has no PMIx plugin (`srun --mpi=list`: {list})"
            ));
        }
        Ok(c)
    }

    /// Live processes whose environment names this cluster's `slurm.conf`: the daemons'
    /// step daemons and the job's tasks (the daemons themselves and `srun` got it too).
    fn started_by_us(&self) -> Vec<u32> {
        let want = format!("SLURM_CONF={}", self.conf.display());
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| *pid != std::process::id())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == want.as_bytes()))
            })
            .collect()
    }

    /// Cancels every job of this cluster and waits (bounded) until none is left.
    fn cancel_all(&mut self) {
        let Some((_, ctld)) = self.daemons.iter_mut().find(|(n, _)| *n == "slurmctld") else {
            return;
        };
        if ctld.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = self
            .client("scancel")
            .args(["--quiet", "--user=root"])
            .status();
        let start = Instant::now();
        while start.elapsed() < WAIT {
            let out = self.client("squeue").args(["-h", "-o", "%i"]).output();
            match out {
                Ok(o) if o.status.success() && o.stdout.trim_ascii().is_empty() => return,
                Err(_) => return,
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        eprintln!("jobs still listed {WAIT:?} after scancel");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.cancel_all();
        // slurmd first (it ends its job steps), then the controller, then munge.
        while let Some((name, mut child)) = self.daemons.pop() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let start = Instant::now();
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if start.elapsed() > Duration::from_secs(20) => {
                        eprintln!("{name} ignored SIGTERM for 20 s: killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        // Whatever the daemons started (step daemons, tasks) carries our SLURM_CONF: wait
        // for it to end, and kill what is still there after 10 s.
        let start = Instant::now();
        loop {
            let left = self.started_by_us();
            if left.is_empty() {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                eprintln!("still running after the daemons stopped, killed: {left:?}");
                for pid in left {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Output and exit status of one srun.
struct Job {
    ok: bool,
    code: Option<i32>,
    out: String,
    err: String,
    took: Duration,
}

/// Runs `srun --mpi=<mpi> -n <ranks> <this binary> --exact <inner> --ignored` in `c`,
/// killing it after `limit`.
fn srun(c: &Cluster, mpi: &str, ranks: usize, inner: &str, limit: Duration) -> Job {
    let exe = std::env::current_exe().unwrap();
    let args = [
        "--exact",
        inner,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ];
    srun_program(c, mpi, ranks, &exe, &args, limit)
}

/// Runs `srun --mpi=<mpi> -n <ranks> <program> <args>` in `c`, killing it after `limit`.
fn srun_program(
    c: &Cluster,
    mpi: &str,
    ranks: usize,
    program: &Path,
    args: &[&str],
    limit: Duration,
) -> Job {
    let mut cmd = c.client("srun");
    cmd.arg(format!("--mpi={mpi}"))
        .args(["-n", &ranks.to_string()])
        // More tasks than this node's CPUs may share them.
        .arg("--overcommit")
        // A task that fails ends the step; the others get 30 s after the first one ends.
        .args(["--kill-on-bad-exit=1", "--wait=30", "--time=5"])
        .arg(program)
        .args(args)
        .env("OMPI_MCA_mpi_yield_when_idle", "1")
        // Open MPI's session directory under our own directory.
        .env("TMPDIR", c.dir.join("tmp"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().expect("srun could not be started");
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
            // The cluster's drop cancels the job step and its tasks.
            let _ = child.kill();
            let s = child.wait().unwrap();
            let (out, err) = (t1.join().unwrap(), t2.join().unwrap());
            panic!("srun did not finish within {limit:?} (status {s}).\nstdout:\n{out}\nstderr:\n{err}\n{}", c.logs());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Job {
        ok: status.success(),
        code: status.code(),
        out: t1.join().unwrap(),
        err: t2.join().unwrap(),
        took: start.elapsed(),
    }
}

/// Builds `examples/mpi_map` in this test binary's profile and gives its path
/// (target/<profile>/deps/<test> -> target/<profile>/examples/mpi_map).
fn build_example() -> PathBuf {
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
    profile.join("examples/mpi_map")
}

fn limit() -> Duration {
    Duration::from_secs(120)
}

#[test]
fn map_across_ranks_under_srun() {
    let start = Instant::now();
    let cluster = match Cluster::start() {
        Ok(c) => c,
        Err(why) if std::env::var_os("MULTIPROC_REQUIRE_SLURM").is_some() => {
            panic!("MULTIPROC_REQUIRE_SLURM is set (as .ci/run does) but Slurm cannot run: {why}")
        }
        Err(why) => {
            println!("skipped: no single-node Slurm here ({why})");
            return;
        }
    };
    let up = start.elapsed();
    let j = srun(&cluster, "pmix", RANKS, "inner_slurm", limit());
    assert!(
        j.ok && j.out.contains("INNER_SLURM_OK"),
        "status {:?}\nstdout:\n{}\nstderr:\n{}\n{}",
        j.code,
        j.out,
        j.err,
        cluster.logs()
    );
    // The README's launch line: the example under srun.
    let example = build_example();
    let ex = srun_program(&cluster, "pmix", RANKS, &example, &[], limit());
    assert!(
        ex.ok && ex.out.contains("computed on ranks [1, 2]"),
        "examples/mpi_map: status {:?}\nstdout:\n{}\nstderr:\n{}",
        ex.code,
        ex.out,
        ex.err
    );
    // Slurm offers PMI-2 as well, but Debian's Open MPI has no PMI-2 client (it was built
    // with PMIx only): every task fails in MPI_Init, and the step ends.
    let p2 = srun(&cluster, "pmi2", 2, "inner_slurm", limit());
    let said = format!("{}{}", p2.out, p2.err);
    assert!(
        !p2.ok && !said.contains("INNER_SLURM_OK") && said.contains("MPI_Init"),
        "--mpi=pmi2: status {:?}\nstdout:\n{}\nstderr:\n{}",
        p2.code,
        p2.out,
        p2.err
    );
    let stopping = Instant::now();
    drop(cluster);
    let stop = stopping.elapsed();
    if let Some(l) = j.out.lines().find(|l| l.contains("INNER_SLURM_OK")) {
        println!("{l}");
    }
    println!(
        "Slurm up (munged, slurmctld, slurmd, node idle) in {up:?}; srun --mpi=pmix job {:?}, \
         examples/mpi_map {:?}; --mpi=pmi2 refused after {:?} (exit {:?}); stopped in {stop:?}, \
         {:?} in all",
        j.took,
        ex.took,
        p2.took,
        p2.code,
        start.elapsed()
    );
}
