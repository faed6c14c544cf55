//! Two processes talking over a `Pipe`, as with `multiprocessing.Pipe()`:
//! the parent sends work, the child answers, and end-of-stream ends the conversation.

use multiproc::{Connection, Pipe, Process};

fn worker(conn: Connection<(String, u32)>) -> u32 {
    let mut handled = 0;
    // `recv` fails with `Disconnected` once the parent has dropped its end.
    while let Ok((word, times)) = conn.recv() {
        conn.send(&(word.repeat(times as usize), times)).unwrap();
        handled += 1;
    }
    handled
}

fn main() -> multiproc::Result<()> {
    let (parent_end, child_end) = Pipe::new::<(String, u32)>()?;
    let p = Process::spawn(child_end, worker)?;
    for (word, n) in [("ab", 3), ("xyz", 2), ("!", 5)] {
        parent_end.send(&(word.to_string(), n))?;
        let (reply, _) = parent_end.recv()?;
        println!("sent {word:?} x{n}, got {reply:?}");
    }
    // Raw bytes travel without serialisation.
    let (r, w) = Pipe::simplex::<()>()?;
    w.send_bytes(b"raw bytes")?;
    println!(
        "one-way pipe carried {:?}",
        String::from_utf8_lossy(&r.recv_bytes()?)
    );
    drop(parent_end);
    println!("child handled {} requests", p.join()?);
    Ok(())
}
