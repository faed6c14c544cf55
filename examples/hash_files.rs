//! A real workload: SHA-256 of every file under a directory, in worker processes.
//!
//! `cargo run --release --example hash_files [DIR]` (default: this crate's directory, without
//! `target/` and `.git/`). Files are hashed with `imap_unordered` (results stream back as
//! they finish, bounded memory), then once more in this process alone, and the two runs
//! are compared. Point it at a big tree (`/usr/lib`) to see the speed-up of a CPU-bound job.

use std::path::{Path, PathBuf};
use std::time::Instant;

use multiproc::Pool;

fn main() -> multiproc::Result<()> {
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let mut files = Vec::new();
    walk(&root, &mut files);
    let bytes: u64 = files
        .iter()
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "{} files, {:.1} MB under {}",
        files.len(),
        bytes as f64 / 1e6,
        root.display()
    );

    let pool = Pool::new(0)?; // one worker per CPU
    let t = Instant::now();
    let mut parallel: Vec<(String, String)> = pool
        .imap_unordered(hash_file, files.iter().map(|p| p.display().to_string()))
        .chunksize(4)
        .collect::<multiproc::Result<_>>()?;
    let t_pool = t.elapsed();

    let t = Instant::now();
    let mut serial: Vec<(String, String)> = files
        .iter()
        .map(|p| hash_file(p.display().to_string()))
        .collect();
    let t_serial = t.elapsed();

    parallel.sort();
    serial.sort();
    assert_eq!(parallel, serial, "the pool and the serial run disagree");
    for (path, hash) in parallel.iter().take(5) {
        println!("{hash}  {path}");
    }
    println!(
        "{} workers: {:.3} s; serial: {:.3} s ({:.2}x)",
        pool.processes(),
        t_pool.as_secs_f64(),
        t_serial.as_secs_f64(),
        t_serial.as_secs_f64() / t_pool.as_secs_f64()
    );
    Ok(())
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let (path, Ok(kind)) = (e.path(), e.file_type()) else {
            continue;
        };
        let name = e.file_name();
        if kind.is_dir() && name != "target" && name != ".git" {
            walk(&path, out);
        } else if kind.is_file() {
            out.push(path);
        }
    }
}

/// Runs in a worker: the file's SHA-256 as hex (or the read error).
fn hash_file(path: String) -> (String, String) {
    let hex = match std::fs::read(&path) {
        Ok(data) => sha256(&data).iter().map(|b| format!("{b:02x}")).collect(),
        Err(e) => format!("error: {e}"),
    };
    (path, hex)
}

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// SHA-256 (FIPS 180-4), plainly written.
fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&(data.len() as u64 * 8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let [a, b, c, d, e, f, g, hh] = v;
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            v = [
                t1.wrapping_add(s0.wrapping_add(maj)),
                a,
                b,
                c,
                d.wrapping_add(t1),
                e,
                f,
                g,
            ];
        }
        for (x, y) in h.iter_mut().zip(v) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (o, x) in out.chunks_exact_mut(4).zip(h) {
        o.copy_from_slice(&x.to_be_bytes());
    }
    out
}
