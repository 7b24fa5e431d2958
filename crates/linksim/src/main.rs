//! `signer-linksim`: relay two pty endpoints at a given baud rate with faults.
//!
//! Runs until SIGINT/SIGTERM, then prints what it relayed. SIGUSR1 unplugs
//! endpoint A for `--unplug-ms` and plugs it back, as a USB serial adapter
//! pulled out and put back would.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use signer_linksim::{LinkSim, Options, Side};

/// Serial link simulator for the signer.
#[derive(Parser)]
#[command(name = "signer-linksim", version, about)]
struct Cli {
    /// Path of endpoint A (becomes a symlink to a pty).
    #[arg(long)]
    pty_a: PathBuf,
    /// Path of endpoint B.
    #[arg(long)]
    pty_b: PathBuf,
    /// Line speed in baud (8N1); 0 relays unthrottled.
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
    /// One-way latency in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Bit error rate (probability per bit).
    #[arg(long, default_value_t = 0.0)]
    ber: f64,
    /// Probability that a byte is dropped.
    #[arg(long, default_value_t = 0.0)]
    drop: f64,
    /// Probability, per byte, that a line break (24 byte times, read as one NUL) starts there.
    #[arg(long, default_value_t = 0.0)]
    break_rate: f64,
    /// Seed of the fault generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How long SIGUSR1 unplugs endpoint A, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    unplug_ms: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let options = Options::new(&cli.pty_a, &cli.pty_b)
        .baud(cli.baud)
        .latency(Duration::from_millis(cli.latency_ms))
        .ber(cli.ber)
        .drop_rate(cli.drop)
        .breaks(cli.break_rate)
        .seed(cli.seed);
    let sim = match LinkSim::start(options) {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("signer-linksim: {e}");
            return ExitCode::from(1);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let unplug = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("signer-linksim: cannot install signal handler: {e}");
            return ExitCode::from(1);
        }
    }
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&unplug)) {
        eprintln!("signer-linksim: cannot install signal handler: {e}");
        return ExitCode::from(1);
    }
    println!(
        "signer-linksim: {} <-> {} at {} baud (latency {} ms, ber {}, drop {}, breaks {}, seed {})",
        cli.pty_a.display(),
        cli.pty_b.display(),
        if cli.baud == 0 {
            "unthrottled".to_string()
        } else {
            cli.baud.to_string()
        },
        cli.latency_ms,
        cli.ber,
        cli.drop,
        cli.break_rate,
        cli.seed
    );
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
        if unplug.swap(false, Ordering::SeqCst) {
            println!(
                "signer-linksim: unplugging {} for {} ms",
                cli.pty_a.display(),
                cli.unplug_ms
            );
            sim.unplug(Side::A);
            std::thread::sleep(Duration::from_millis(cli.unplug_ms));
            if let Err(e) = sim.replug(Side::A) {
                eprintln!("signer-linksim: replug failed: {e}");
                return ExitCode::from(1);
            }
            println!("signer-linksim: {} plugged back in", cli.pty_a.display());
        }
    }
    let [ab, ba] = sim.stats();
    println!(
        "signer-linksim: A->B {} bytes ({} bits flipped, {} dropped, {} breaks); B->A {} bytes ({} bits flipped, {} dropped, {} breaks)",
        ab.bytes_out, ab.bits_flipped, ab.bytes_dropped, ab.breaks, ba.bytes_out, ba.bits_flipped, ba.bytes_dropped, ba.breaks
    );
    ExitCode::SUCCESS
}
