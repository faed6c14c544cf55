//! The seed's first program: run a function in a child process, as with
//! `multiprocessing.Process(target=f, args=("test",))`.

use multiproc::{current_process, parent_process, Process};

fn info(title: &str) {
    let me = current_process();
    println!("{title}");
    println!("  process name: {}", me.name);
    println!("  parent process: {:?}", parent_process().map(|p| p.pid));
    println!("  process id: {}", me.pid);
}

fn greet(name: String) -> usize {
    info("function greet");
    println!("  hello, {name}");
    name.len()
}

fn main() -> multiproc::Result<()> {
    info("main line");
    let p = Process::spawn("bob".to_string(), greet)?;
    let n = p.join()?;
    println!(
        "child {} returned {n}, exit code {:?}",
        p.pid(),
        p.exitcode()
    );
    Ok(())
}
