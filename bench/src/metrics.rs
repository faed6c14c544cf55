//! The rows of the table: what each metric is, its unit, which direction is
//! better, and the goal multiproc must meet.

use crate::config::Config;
use crate::harness::Who;

/// A group of metrics whose jobs are interleaved with each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Group {
    Start,
    Pipe,
    Bandwidth,
    Queue,
    Pool,
    Cpu,
    Memory,
    Crawl,
    Idle,
    Bytes,
    Net,
    Manager,
    Sync,
}

impl Group {
    /// Name used by `--only`.
    pub fn name(self) -> &'static str {
        match self {
            Group::Start => "start",
            Group::Pipe => "pipe",
            Group::Bandwidth => "bandwidth",
            Group::Queue => "queue",
            Group::Pool => "pool",
            Group::Cpu => "cpu",
            Group::Memory => "memory",
            Group::Crawl => "crawl",
            Group::Idle => "idle",
            Group::Bytes => "bytes",
            Group::Net => "net",
            Group::Manager => "manager",
            Group::Sync => "sync",
        }
    }

    /// Rounds for this group: peak memory is not noisy and is measured once; the idle
    /// rows sleep for seconds per round, 3 rounds are enough.
    pub fn rounds(self, rounds: usize) -> usize {
        match self {
            Group::Memory => 1,
            Group::Idle => rounds.min(3),
            _ => rounds,
        }
    }
}

/// One row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    SpawnDefault,
    SpawnFork,
    SpawnSpawn,
    SpawnForkserver,
    SpawnResult,
    PipeRtt,
    SocketRtt,
    BulkPipe,
    BulkSocket,
    BulkShm,
    Queue11,
    Queue22,
    QueueLatency,
    PoolCreate,
    PoolChunk1,
    PoolImapChunk1,
    PoolMapAuto,
    ApplyAsyncRtt,
    CpuScaling,
    ImapRssParent,
    ImapRssWorkers,
    CrawlWall,
    CrawlCpu,
    IdleSmall,
    IdleLarge,
    BytesVecResult,
    BytesBufResult,
    BytesVecArg,
    BytesBufArg,
    BytesVecProcess,
    BytesBufProcess,
    NetConnect,
    NetTcpRtt,
    NetUnixRtt,
    MgrUnixOp,
    MgrTcpOp,
    MgrConcurrent,
    SyncLock,
    SyncLockHandoff,
    SyncEventPingPong,
    SyncValueAdd,
    SyncBarrier,
}

/// Which direction is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
}

/// How a cell is summarised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Show {
    /// `best / median` (best = min time or max rate).
    BestMedian,
    /// `p50 / p99` of individual latencies.
    P50P99,
}

/// A comparison in a goal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    AtLeast,
    AtMost,
}

/// One condition of a goal: `multiproc <cmp> factor × peer`, or
/// `multiproc <cmp> factor` when `peer` is `None`.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub peer: Option<Who>,
    pub cmp: Cmp,
    pub factor: f64,
}

/// A goal: the text shown and the conditions that must all hold.
#[derive(Clone, Debug)]
pub struct Goal {
    pub text: &'static str,
    pub targets: Vec<Target>,
}

/// Static description of a row.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub unit: &'static str,
    pub better: Better,
    pub show: Show,
    pub goal: Option<Goal>,
}

fn at_most(peer: Who, factor: f64) -> Target {
    Target {
        peer: Some(peer),
        cmp: Cmp::AtMost,
        factor,
    }
}

fn at_least(peer: Option<Who>, factor: f64) -> Target {
    Target {
        peer,
        cmp: Cmp::AtLeast,
        factor,
    }
}

impl Metric {
    /// Every row, in table order.
    pub const ALL: [Metric; 42] = [
        Metric::SpawnDefault,
        Metric::SpawnFork,
        Metric::SpawnSpawn,
        Metric::SpawnForkserver,
        Metric::SpawnResult,
        Metric::PipeRtt,
        Metric::SocketRtt,
        Metric::BulkPipe,
        Metric::BulkSocket,
        Metric::BulkShm,
        Metric::Queue11,
        Metric::Queue22,
        Metric::QueueLatency,
        Metric::PoolCreate,
        Metric::PoolChunk1,
        Metric::PoolImapChunk1,
        Metric::PoolMapAuto,
        Metric::ApplyAsyncRtt,
        Metric::CpuScaling,
        Metric::ImapRssParent,
        Metric::ImapRssWorkers,
        Metric::CrawlWall,
        Metric::CrawlCpu,
        Metric::IdleSmall,
        Metric::IdleLarge,
        Metric::BytesVecResult,
        Metric::BytesBufResult,
        Metric::BytesVecArg,
        Metric::BytesBufArg,
        Metric::BytesVecProcess,
        Metric::BytesBufProcess,
        Metric::NetConnect,
        Metric::NetTcpRtt,
        Metric::NetUnixRtt,
        Metric::MgrUnixOp,
        Metric::MgrTcpOp,
        Metric::MgrConcurrent,
        Metric::SyncLock,
        Metric::SyncLockHandoff,
        Metric::SyncEventPingPong,
        Metric::SyncValueAdd,
        Metric::SyncBarrier,
    ];

    /// Short stable id (used in progress lines and notes).
    pub fn id(self) -> &'static str {
        match self {
            Metric::SpawnDefault => "spawn-default",
            Metric::SpawnFork => "spawn-fork",
            Metric::SpawnSpawn => "spawn-spawn",
            Metric::SpawnForkserver => "spawn-forkserver",
            Metric::SpawnResult => "spawn-result",
            Metric::PipeRtt => "pipe-rtt",
            Metric::SocketRtt => "socket-rtt",
            Metric::BulkPipe => "bulk-pipe",
            Metric::BulkSocket => "bulk-socket",
            Metric::BulkShm => "bulk-shm",
            Metric::Queue11 => "queue-1to1",
            Metric::Queue22 => "queue-2to2",
            Metric::QueueLatency => "queue-latency",
            Metric::PoolCreate => "pool-create",
            Metric::PoolChunk1 => "pool-chunk1",
            Metric::PoolImapChunk1 => "pool-imap-chunk1",
            Metric::PoolMapAuto => "pool-map-auto",
            Metric::ApplyAsyncRtt => "apply-async-rtt",
            Metric::CpuScaling => "cpu-scaling",
            Metric::ImapRssParent => "imap-rss-parent",
            Metric::ImapRssWorkers => "imap-rss-workers",
            Metric::CrawlWall => "crawl-wall",
            Metric::CrawlCpu => "crawl-cpu",
            Metric::IdleSmall => "idle-small",
            Metric::IdleLarge => "idle-large",
            Metric::BytesVecResult => "bytes-vec-result",
            Metric::BytesBufResult => "bytes-buf-result",
            Metric::BytesVecArg => "bytes-vec-arg",
            Metric::BytesBufArg => "bytes-buf-arg",
            Metric::BytesVecProcess => "bytes-vec-process",
            Metric::BytesBufProcess => "bytes-buf-process",
            Metric::NetConnect => "net-connect",
            Metric::NetTcpRtt => "net-tcp-rtt",
            Metric::NetUnixRtt => "net-unix-rtt",
            Metric::MgrUnixOp => "manager-unix-op",
            Metric::MgrTcpOp => "manager-tcp-op",
            Metric::MgrConcurrent => "manager-8-clients",
            Metric::SyncLock => "sync-lock",
            Metric::SyncLockHandoff => "sync-lock-handoff",
            Metric::SyncEventPingPong => "sync-event-ping-pong",
            Metric::SyncValueAdd => "sync-value-add",
            Metric::SyncBarrier => "sync-barrier",
        }
    }

    /// The interleaving group of the row.
    pub fn group(self) -> Group {
        use Metric::*;
        match self {
            SpawnDefault | SpawnFork | SpawnSpawn | SpawnForkserver | SpawnResult => Group::Start,
            PipeRtt | SocketRtt => Group::Pipe,
            BulkPipe | BulkSocket | BulkShm => Group::Bandwidth,
            Queue11 | Queue22 | QueueLatency => Group::Queue,
            PoolCreate | PoolChunk1 | PoolImapChunk1 | PoolMapAuto | ApplyAsyncRtt => Group::Pool,
            CpuScaling => Group::Cpu,
            ImapRssParent | ImapRssWorkers => Group::Memory,
            CrawlWall | CrawlCpu => Group::Crawl,
            IdleSmall | IdleLarge => Group::Idle,
            BytesVecResult | BytesBufResult | BytesVecArg | BytesBufArg | BytesVecProcess
            | BytesBufProcess => Group::Bytes,
            NetConnect | NetTcpRtt | NetUnixRtt => Group::Net,
            MgrUnixOp | MgrTcpOp | MgrConcurrent => Group::Manager,
            SyncLock | SyncLockHandoff | SyncEventPingPong | SyncValueAdd | SyncBarrier => {
                Group::Sync
            }
        }
    }

    /// Name, unit, direction and goal of the row (names carry the sizes of
    /// this run).
    pub fn spec(self, cfg: &Config) -> Spec {
        use Better::*;
        use Metric::*;
        let mib = cfg.bulk_mib();
        let spec = |name: String, unit, better, goal| Spec {
            name,
            unit,
            better,
            show: Show::BestMedian,
            goal,
        };
        match self {
            SpawnDefault => spec(
                "process spawn+join, default start method".into(),
                "ms",
                Lower,
                Some(Goal {
                    text: "≤ 2× floor",
                    targets: vec![at_most(Who::Floor, 2.0)],
                }),
            ),
            SpawnFork => spec("process spawn+join, fork".into(), "ms", Lower, None),
            SpawnSpawn => spec("process spawn+join, spawn (exec)".into(), "ms", Lower, None),
            SpawnForkserver => spec("process spawn+join, forkserver".into(), "ms", Lower, None),
            SpawnResult => spec(
                "process spawn+join returning a u64".into(),
                "ms",
                Lower,
                None,
            ),
            PipeRtt => spec(
                "pipe round trip (u64 ping-pong)".into(),
                "µs",
                Lower,
                Some(Goal {
                    text: "≤ 1.5× floor",
                    targets: vec![at_most(Who::Floor, 1.5)],
                }),
            ),
            SocketRtt => spec("duplex (socketpair) round trip".into(), "µs", Lower, None),
            BulkPipe => spec(
                format!("{mib} MiB through a Connection (pipe)"),
                "GB/s",
                Higher,
                Some(Goal {
                    text: "≥ 90% of floor",
                    targets: vec![at_least(Some(Who::Floor), 0.9)],
                }),
            ),
            BulkSocket => spec(
                format!("{mib} MiB through a duplex Connection (socketpair)"),
                "GB/s",
                Higher,
                None,
            ),
            BulkShm => spec(
                format!("{mib} MiB via shared memory (1 copy)"),
                "GB/s",
                Higher,
                Some(Goal {
                    text: "≥ 50% of memcpy",
                    targets: vec![at_least(Some(Who::Floor), 0.5)],
                }),
            ),
            Queue11 => spec(
                "Queue 1→1 u64 throughput".into(),
                "msgs/s",
                Higher,
                Some(Goal {
                    text: "≥ 20× python mp",
                    targets: vec![at_least(Some(Who::PythonMp), 20.0)],
                }),
            ),
            Queue22 => spec("Queue 2→2 u64 throughput".into(), "msgs/s", Higher, None),
            QueueLatency => Spec {
                show: Show::P50P99,
                ..spec("Queue put→get latency".into(), "µs", Lower, None)
            },
            PoolCreate => spec(
                "Pool(2) create + 1 task + close + join".into(),
                "ms",
                Lower,
                None,
            ),
            PoolChunk1 => spec(
                "Pool one task per message (chunksize=1)".into(),
                "tasks/s",
                Higher,
                Some(Goal {
                    text: "≥ 1 M/s, ≥ 20× python mp, ≥ 50× procspawn",
                    targets: vec![
                        at_least(None, 1e6),
                        at_least(Some(Who::PythonMp), 20.0),
                        at_least(Some(Who::Procspawn), 50.0),
                    ],
                }),
            ),
            PoolImapChunk1 => spec(
                "Pool imap_unordered chunksize=1".into(),
                "tasks/s",
                Higher,
                None,
            ),
            PoolMapAuto => spec(
                format!("Pool.map auto chunks, {} trivial items", cfg.map_items),
                "tasks/s",
                Higher,
                Some(Goal {
                    text: "≥ 3× python mp",
                    targets: vec![at_least(Some(Who::PythonMp), 3.0)],
                }),
            ),
            ApplyAsyncRtt => spec(
                "apply_async round trip".into(),
                "µs",
                Lower,
                Some(Goal {
                    text: "≤ 3× floor",
                    targets: vec![at_most(Who::Floor, 3.0)],
                }),
            ),
            CpuScaling => spec(
                format!(
                    "CPU-bound map, {} items × ~{} ms, 2 workers",
                    cfg.cpu_items, cfg.cpu_item_ms
                ),
                "× serial",
                Higher,
                Some(Goal {
                    text: "≥ 1.95×",
                    targets: vec![at_least(None, 1.95)],
                }),
            ),
            ImapRssParent => spec(
                format!(
                    "imap {} items (chunksize {}): peak RSS parent",
                    cfg.imap_items, cfg.imap_chunksize
                ),
                "MiB",
                Lower,
                None,
            ),
            ImapRssWorkers => spec(
                format!(
                    "imap {} items (chunksize {}): peak RSS workers (sum)",
                    cfg.imap_items, cfg.imap_chunksize
                ),
                "MiB",
                Lower,
                None,
            ),
            CrawlWall => spec(
                format!(
                    "crawl {} pages, Pool({}) + keep-alive HTTP: wall",
                    cfg.crawl_pages, cfg.crawl_workers
                ),
                "s",
                Lower,
                None,
            ),
            CrawlCpu => spec(
                format!(
                    "crawl {} pages, Pool({}): CPU of parent + workers",
                    cfg.crawl_pages, cfg.crawl_workers
                ),
                "CPU s",
                Lower,
                None,
            ),
            IdleSmall | IdleLarge => {
                let n = cfg.idle_workers[usize::from(self == IdleLarge)];
                spec(
                    format!(
                        "CPU of {n} workers while their tasks sleep {} s",
                        cfg.idle_secs
                    ),
                    "CPU s",
                    Lower,
                    None,
                )
            }
            BytesVecResult => spec(
                format!("{} MB `Vec<u8>` result, Pool.apply", cfg.bytes_mb),
                "ms",
                Lower,
                None,
            ),
            BytesBufResult => spec(
                format!(
                    "{} MB `serde_bytes::ByteBuf` result, Pool.apply",
                    cfg.bytes_mb
                ),
                "ms",
                Lower,
                None,
            ),
            BytesVecArg => spec(
                format!("{} MB `Vec<u8>` argument, Pool.apply", cfg.bytes_mb),
                "ms",
                Lower,
                None,
            ),
            BytesBufArg => spec(
                format!("{} MB `ByteBuf` argument, Pool.apply", cfg.bytes_mb),
                "ms",
                Lower,
                None,
            ),
            BytesVecProcess => spec(
                format!("{} MB `Vec<u8>` result, Process spawn+join", cfg.bytes_mb),
                "ms",
                Lower,
                None,
            ),
            BytesBufProcess => spec(
                format!("{} MB `ByteBuf` result, Process spawn+join", cfg.bytes_mb),
                "ms",
                Lower,
                None,
            ),
            NetConnect => spec(
                "Listener/Client connect + authkey, TCP loopback".into(),
                "ms",
                Lower,
                Some(Goal {
                    text: "≤ 2 ms",
                    targets: vec![Target {
                        peer: None,
                        cmp: Cmp::AtMost,
                        factor: 2.0,
                    }],
                }),
            ),
            NetTcpRtt => spec(
                "Listener/Client u64 round trip, TCP loopback".into(),
                "µs",
                Lower,
                None,
            ),
            NetUnixRtt => spec(
                "Listener/Client u64 round trip, Unix socket".into(),
                "µs",
                Lower,
                None,
            ),
            MgrUnixOp => spec(
                "Manager dict insert/get, Unix socket".into(),
                "µs",
                Lower,
                Some(Goal {
                    text: "≤ 2× socket RTT",
                    targets: vec![at_most(Who::Floor, 2.0)],
                }),
            ),
            MgrTcpOp => spec(
                "Manager dict insert/get, TCP loopback".into(),
                "µs",
                Lower,
                Some(Goal {
                    text: "≤ python mp",
                    targets: vec![at_most(Who::PythonMp, 1.0)],
                }),
            ),
            MgrConcurrent => spec(
                format!(
                    "Manager dict ops, {} concurrent clients",
                    crate::manager::CLIENTS
                ),
                "ops/s",
                Higher,
                Some(Goal {
                    text: "≥ python mp",
                    targets: vec![at_least(Some(Who::PythonMp), 1.0)],
                }),
            ),
            SyncLock | SyncLockHandoff | SyncEventPingPong | SyncValueAdd | SyncBarrier => {
                crate::sync_rows::spec(self)
            }
        }
    }
}
