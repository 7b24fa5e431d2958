//! A serial link simulator: two pseudo-terminals whose slave ends appear at
//! chosen paths, relayed to each other as a real line would carry them.
//!
//! ```text
//!  program A ─► pty A slave ═ master ─► [pace at baud, latency, bit errors, drops] ─► master ═ slave pty B ─► program B
//!            ◄─                      ◄─ [          the same, other direction     ] ◄─
//! ```
//!
//! A pty alone moves bytes as fast as memory; this holds each direction to
//! `baud / 10` bytes per second (8N1: start, 8 data, stop bit), keeps only a
//! small transmit buffer (so a writer feels back-pressure as with a UART), and
//! injects faults from a seeded generator so runs are reproducible. Either end
//! can be unplugged and plugged back, as a USB serial adapter can.
//!
//! ```no_run
//! use signer_linksim::{LinkSim, Options};
//!
//! let sim = LinkSim::start(Options::new("/tmp/a", "/tmp/b").baud(115_200)).unwrap();
//! // open /tmp/a and /tmp/b as serial devices ...
//! println!("{:?}", sim.stats());
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustix::io::Errno;

/// Settings of a simulated link.
#[derive(Debug, Clone)]
pub struct Options {
    /// Path of endpoint A (a symlink to a pty slave is created there).
    pub pty_a: PathBuf,
    /// Path of endpoint B.
    pub pty_b: PathBuf,
    /// Line speed in baud; 0 relays unthrottled.
    pub baud: u32,
    /// One-way latency added to every byte.
    pub latency: Duration,
    /// Probability that any one bit is flipped.
    pub ber: f64,
    /// Probability that any one byte is lost.
    pub drop: f64,
    /// Probability, per byte, that a line break starts there.
    pub breaks: f64,
    /// How long a line break holds the line, in byte times: the bytes sent
    /// meanwhile are lost and the receiver reads one NUL (as a UART without
    /// IGNBRK or BRKINT reports a break).
    pub break_bytes: u32,
    /// Seed of the fault generator.
    pub seed: u64,
    /// Bytes a direction holds before the sender feels back-pressure.
    pub buffer: usize,
}

impl Options {
    /// An unthrottled, error-free link between two paths.
    pub fn new(pty_a: impl Into<PathBuf>, pty_b: impl Into<PathBuf>) -> Self {
        Options {
            pty_a: pty_a.into(),
            pty_b: pty_b.into(),
            baud: 0,
            latency: Duration::ZERO,
            ber: 0.0,
            drop: 0.0,
            breaks: 0.0,
            break_bytes: 24,
            seed: 1,
            buffer: 1024,
        }
    }

    /// Sets the line speed (0: unthrottled).
    pub fn baud(mut self, baud: u32) -> Self {
        self.baud = baud;
        self
    }

    /// Sets the one-way latency.
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Sets the bit error rate.
    pub fn ber(mut self, ber: f64) -> Self {
        self.ber = ber;
        self
    }

    /// Sets the byte drop rate.
    pub fn drop_rate(mut self, drop: f64) -> Self {
        self.drop = drop;
        self
    }

    /// Sets the line-break rate (per byte).
    pub fn breaks(mut self, rate: f64) -> Self {
        self.breaks = rate;
        self
    }

    /// Sets the fault generator's seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// Why the simulator could not start or replug.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Creating a pseudo-terminal failed.
    #[error("cannot create pty: {0}")]
    Pty(#[from] std::io::Error),
    /// Creating the symlink failed.
    #[error("cannot create {path}: {source}")]
    Link {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An option is out of range.
    #[error("invalid option: {0}")]
    Invalid(String),
}

/// Counters of one direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DirectionStats {
    /// Bytes taken from the sender.
    pub bytes_in: u64,
    /// Bytes handed to the receiver.
    pub bytes_out: u64,
    /// Bits flipped.
    pub bits_flipped: u64,
    /// Bytes dropped by the drop rate.
    pub bytes_dropped: u64,
    /// Bytes lost because the receiving end was unplugged.
    pub bytes_lost_unplugged: u64,
    /// Line breaks injected.
    pub breaks: u64,
    /// Bytes lost during line breaks.
    pub bytes_lost_break: u64,
}

#[derive(Default)]
struct AtomicStats {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    bits_flipped: AtomicU64,
    bytes_dropped: AtomicU64,
    bytes_lost: AtomicU64,
    breaks: AtomicU64,
    bytes_lost_break: AtomicU64,
}

impl AtomicStats {
    fn snapshot(&self) -> DirectionStats {
        DirectionStats {
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            bits_flipped: self.bits_flipped.load(Ordering::Relaxed),
            bytes_dropped: self.bytes_dropped.load(Ordering::Relaxed),
            bytes_lost_unplugged: self.bytes_lost.load(Ordering::Relaxed),
            breaks: self.breaks.load(Ordering::Relaxed),
            bytes_lost_break: self.bytes_lost_break.load(Ordering::Relaxed),
        }
    }
}

/// One side of the simulated cable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Endpoint A.
    A,
    /// Endpoint B.
    B,
}

/// A pseudo-terminal pair. Every descriptor is close-on-exec, so programs
/// started while the simulator runs (such as the signer under test) do not
/// inherit them, and unplugging really hangs up the other end.
struct Pty {
    master: OwnedFd,
    // Held open so the master never sees a hang-up while the program on
    // this end closes and reopens its device.
    _slave: OwnedFd,
}

impl Pty {
    fn open() -> Result<(Pty, PathBuf), SimError> {
        use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
            .map_err(std::io::Error::from)?;
        grantpt(&master).map_err(std::io::Error::from)?;
        unlockpt(&master).map_err(std::io::Error::from)?;
        let name = ptsname(&master, Vec::new()).map_err(std::io::Error::from)?;
        let path = PathBuf::from(
            <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(name.into_bytes()),
        );
        let slave = rustix::fs::open(
            &path,
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(std::io::Error::from)?;
        // Raw mode until the program on this end sets its own: no echo, no line editing.
        let mut termios = rustix::termios::tcgetattr(&slave).map_err(std::io::Error::from)?;
        termios.make_raw();
        rustix::termios::tcsetattr(&slave, rustix::termios::OptionalActions::Now, &termios)
            .map_err(std::io::Error::from)?;
        rustix::io::ioctl_fionbio(&master, true).map_err(std::io::Error::from)?;
        Ok((
            Pty {
                master,
                _slave: slave,
            },
            path,
        ))
    }
}

struct Endpoint {
    path: PathBuf,
    generation: AtomicU64,
    pty: Mutex<Option<Pty>>,
}

impl Endpoint {
    fn plug(&self) -> Result<(), SimError> {
        let (pty, slave_path) = Pty::open()?;
        let tmp = self.path.with_extension("linksim-tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&slave_path, &tmp)
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(|source| SimError::Link {
                path: self.path.clone(),
                source,
            })?;
        *self.pty.lock().unwrap_or_else(|p| p.into_inner()) = Some(pty);
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn unplug(&self) {
        let _ = std::fs::remove_file(&self.path);
        self.pty.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// A fresh handle on the current master, with the generation it belongs to.
    fn handle(&self) -> (u64, Option<OwnedFd>) {
        let guard = self.pty.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.generation.load(Ordering::SeqCst);
        let handle = guard
            .as_ref()
            .and_then(|p| rustix::io::fcntl_dupfd_cloexec(&p.master, 0).ok());
        (generation, handle)
    }
}

/// Waits up to `timeout` for `fd` to become readable.
fn wait_readable(fd: impl AsFd, timeout: Duration) {
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let ts = rustix::event::Timespec {
        tv_sec: timeout.as_secs() as _,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    let _ = rustix::event::poll(&mut fds, Some(&ts));
}

/// A running simulator; stops and removes its endpoints when dropped.
pub struct LinkSim {
    ends: [Arc<Endpoint>; 2],
    stats: [Arc<AtomicStats>; 2],
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl LinkSim {
    /// Creates both endpoints and starts relaying.
    pub fn start(options: Options) -> Result<LinkSim, SimError> {
        if [options.ber, options.drop, options.breaks]
            .iter()
            .any(|p| !(0.0..=1.0).contains(p))
        {
            return Err(SimError::Invalid(
                "ber, drop and breaks must be between 0 and 1".into(),
            ));
        }
        let ends = [
            Arc::new(Endpoint {
                path: options.pty_a.clone(),
                generation: AtomicU64::new(0),
                pty: Mutex::new(None),
            }),
            Arc::new(Endpoint {
                path: options.pty_b.clone(),
                generation: AtomicU64::new(0),
                pty: Mutex::new(None),
            }),
        ];
        for end in &ends {
            end.plug()?;
        }
        let stats = [
            Arc::new(AtomicStats::default()),
            Arc::new(AtomicStats::default()),
        ];
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (dir, (from, to)) in [(0usize, 1usize), (1, 0)].into_iter().enumerate() {
            let relay = Relay {
                from: Arc::clone(&ends[from]),
                to: Arc::clone(&ends[to]),
                stats: Arc::clone(&stats[dir]),
                options: options.clone(),
                rng: ChaCha8Rng::seed_from_u64(options.seed.wrapping_add(dir as u64)),
            };
            let stop = Arc::clone(&stop);
            let name = if dir == 0 {
                "linksim-a-to-b"
            } else {
                "linksim-b-to-a"
            };
            let handle = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || relay.run(&stop))
                .map_err(|e| SimError::Invalid(format!("cannot start relay thread: {e}")))?;
            threads.push(handle);
        }
        Ok(LinkSim {
            ends,
            stats,
            stop,
            threads,
        })
    }

    /// Counters: `[A to B, B to A]`.
    pub fn stats(&self) -> [DirectionStats; 2] {
        [self.stats[0].snapshot(), self.stats[1].snapshot()]
    }

    /// The path of an endpoint.
    pub fn path(&self, side: Side) -> &Path {
        &self.ends[side as usize].path
    }

    /// Pulls the plug on one end: its pty vanishes (the program there sees
    /// its device fail) and the path is removed.
    pub fn unplug(&self, side: Side) {
        self.ends[side as usize].unplug();
    }

    /// Plugs an end back in: a new pty appears at the same path.
    pub fn replug(&self, side: Side) -> Result<(), SimError> {
        self.ends[side as usize].plug()
    }
}

impl Drop for LinkSim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for end in &self.ends {
            end.unplug();
        }
    }
}

/// Samples how many trials pass before the next event of probability `p`.
fn gap(rng: &mut ChaCha8Rng, p: f64) -> u64 {
    if p <= 0.0 {
        return u64::MAX;
    }
    if p >= 1.0 {
        return 0;
    }
    let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    (u.ln() / (1.0 - p).ln()).floor().min(u64::MAX as f64) as u64
}

struct Relay {
    from: Arc<Endpoint>,
    to: Arc<Endpoint>,
    stats: Arc<AtomicStats>,
    options: Options,
    rng: ChaCha8Rng,
}

impl Relay {
    fn run(mut self, stop: &AtomicBool) {
        let byte_time = if self.options.baud == 0 {
            Duration::ZERO
        } else {
            Duration::from_nanos(10_000_000_000 / u64::from(self.options.baud))
        };
        let mut queue: VecDeque<(Instant, u8)> = VecDeque::new();
        let mut line_free = Instant::now();
        let mut bits_to_flip = gap(&mut self.rng, self.options.ber);
        let mut bytes_to_drop = gap(&mut self.rng, self.options.drop);
        let mut bytes_to_break = gap(&mut self.rng, self.options.breaks);
        let mut breaking = 0u32;
        let (mut src_gen, mut src) = self.from.handle();
        let (mut dst_gen, mut dst) = self.to.handle();
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            if self.from.generation.load(Ordering::SeqCst) != src_gen {
                (src_gen, src) = self.from.handle();
            }
            if self.to.generation.load(Ordering::SeqCst) != dst_gen {
                (dst_gen, dst) = self.to.handle();
            }
            let now = Instant::now();
            // Read only while the transmit buffer has room: back-pressure.
            let room = self
                .options
                .buffer
                .saturating_sub(queue.len())
                .min(buf.len());
            let wait = queue
                .front()
                .map(|(due, _)| due.saturating_duration_since(now))
                .unwrap_or(Duration::from_millis(5))
                .min(Duration::from_millis(5));
            match src.as_ref() {
                Some(fd) if room > 0 => {
                    wait_readable(fd, wait.max(Duration::from_micros(100)));
                    match rustix::io::read(fd, &mut buf[..room]) {
                        Ok(n) if n > 0 => {
                            self.stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                            let arrived = Instant::now();
                            for &byte in &buf[..n] {
                                if breaking > 0 {
                                    breaking -= 1;
                                    self.stats.bytes_lost_break.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                                if bytes_to_break == 0 {
                                    // The line is held low: this byte and the next
                                    // ones are lost; the receiver reads one NUL.
                                    bytes_to_break = gap(&mut self.rng, self.options.breaks);
                                    breaking = self.options.break_bytes.saturating_sub(1);
                                    self.stats.breaks.fetch_add(1, Ordering::Relaxed);
                                    self.stats.bytes_lost_break.fetch_add(1, Ordering::Relaxed);
                                    line_free = line_free.max(arrived)
                                        + byte_time * self.options.break_bytes;
                                    queue.push_back((line_free + self.options.latency, 0));
                                    continue;
                                }
                                bytes_to_break = bytes_to_break.saturating_sub(1);
                                if bytes_to_drop == 0 {
                                    bytes_to_drop = gap(&mut self.rng, self.options.drop);
                                    self.stats.bytes_dropped.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                                bytes_to_drop = bytes_to_drop.saturating_sub(1);
                                let mut byte = byte;
                                let mut bit = 0u64;
                                while bits_to_flip < 8 - bit {
                                    bit += bits_to_flip;
                                    byte ^= 1 << bit;
                                    bit += 1;
                                    self.stats.bits_flipped.fetch_add(1, Ordering::Relaxed);
                                    bits_to_flip = gap(&mut self.rng, self.options.ber);
                                }
                                bits_to_flip = bits_to_flip.saturating_sub(8 - bit);
                                line_free = line_free.max(arrived) + byte_time;
                                queue.push_back((line_free + self.options.latency, byte));
                            }
                        }
                        Ok(_) | Err(Errno::AGAIN) | Err(Errno::INTR) => {}
                        // EIO: nobody has the slave open right now; keep polling.
                        Err(_) => std::thread::sleep(wait.max(Duration::from_micros(500))),
                    }
                }
                _ => std::thread::sleep(wait.max(Duration::from_micros(200))),
            }
            self.deliver(&mut queue, dst.as_ref());
        }
    }

    fn deliver(&self, queue: &mut VecDeque<(Instant, u8)>, dst: Option<&OwnedFd>) {
        let now = Instant::now();
        let due = queue.iter().take_while(|(t, _)| *t <= now).count();
        if due == 0 {
            return;
        }
        let Some(fd) = dst else {
            queue.drain(..due);
            self.stats
                .bytes_lost
                .fetch_add(due as u64, Ordering::Relaxed);
            return;
        };
        let bytes: Vec<u8> = queue.iter().take(due).map(|(_, b)| *b).collect();
        match rustix::io::write(fd, &bytes) {
            Ok(n) => {
                queue.drain(..n);
                self.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
            }
            // The receiver is not reading: keep the bytes, as a line with flow control would.
            Err(Errno::AGAIN) | Err(Errno::INTR) => {}
            Err(_) => {
                queue.drain(..due);
                self.stats
                    .bytes_lost
                    .fetch_add(due as u64, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serialport::SerialPort;
    use std::io::{ErrorKind, Read, Write};

    #[test]
    fn gap_matches_the_rate() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let p = 0.01;
        let n = 20_000;
        let total: u64 = (0..n).map(|_| gap(&mut rng, p) + 1).sum();
        let mean = total as f64 / n as f64;
        assert!((mean - 1.0 / p).abs() < 5.0, "mean gap {mean}");
        assert_eq!(gap(&mut rng, 0.0), u64::MAX);
    }

    fn open(path: &Path) -> Box<dyn SerialPort> {
        serialport::new(path.to_string_lossy(), 115_200)
            .timeout(Duration::from_millis(50))
            .open()
            .unwrap()
    }

    fn read_n(port: &mut dyn SerialPort, n: usize, limit: Duration) -> Vec<u8> {
        let mut out = Vec::new();
        let until = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        while out.len() < n && Instant::now() < until {
            if let Ok(k) = port.read(&mut buf) {
                out.extend_from_slice(&buf[..k]);
            }
        }
        out
    }

    #[test]
    fn relays_both_ways_and_injects_seeded_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let sim = LinkSim::start(Options::new(&a, &b)).unwrap();
        let (mut pa, mut pb) = (open(&a), open(&b));
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        pa.write_all(&data).unwrap();
        assert_eq!(read_n(&mut *pb, data.len(), Duration::from_secs(5)), data);
        pb.write_all(b"back").unwrap();
        assert_eq!(read_n(&mut *pa, 4, Duration::from_secs(5)), b"back");
        drop(sim);

        let sim = LinkSim::start(Options::new(&a, &b).ber(1e-3).seed(3)).unwrap();
        let (mut pa, mut pb) = (open(&a), open(&b));
        pa.write_all(&data).unwrap();
        let got = read_n(&mut *pb, data.len(), Duration::from_secs(5));
        let flipped: u32 = got
            .iter()
            .zip(&data)
            .map(|(x, y)| (x ^ y).count_ones())
            .sum();
        assert_eq!(u64::from(flipped), sim.stats()[0].bits_flipped);
        assert!(
            flipped > 10 && flipped < 100,
            "{flipped} bits flipped of 40000"
        );
    }

    #[test]
    fn a_line_break_swallows_bytes_and_reads_as_one_nul() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let sim = LinkSim::start(Options::new(&a, &b).breaks(2e-3).seed(5)).unwrap();
        let (mut pa, mut pb) = (open(&a), open(&b));
        // No NUL in the data: every NUL received is a break.
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 255) as u8 + 1).collect();
        pa.write_all(&data).unwrap();
        let stats = loop {
            let s = sim.stats()[0];
            if s.bytes_in == data.len() as u64 {
                break s;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let expected = data.len() - stats.bytes_lost_break as usize + stats.breaks as usize;
        let got = read_n(&mut *pb, expected, Duration::from_secs(5));
        assert_eq!(got.len(), expected);
        assert!(stats.breaks >= 2, "{stats:?}");
        assert_eq!(got.iter().filter(|&&b| b == 0).count() as u64, stats.breaks);
        assert!(stats.bytes_lost_break >= stats.breaks * 20, "{stats:?}");
    }

    #[test]
    fn unplug_and_replug() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let sim = LinkSim::start(Options::new(&a, &b)).unwrap();
        let mut pa = open(&a);
        sim.unplug(Side::A);
        assert!(!a.exists());
        let mut buf = [0u8; 8];
        let failed =
            (0..50).any(|_| matches!(pa.read(&mut buf), Err(e) if e.kind() != ErrorKind::TimedOut));
        assert!(failed, "reading an unplugged device fails");
        sim.replug(Side::A).unwrap();
        let (mut pa, mut pb) = (open(&a), open(&b));
        pa.write_all(b"again").unwrap();
        assert_eq!(read_n(&mut *pb, 5, Duration::from_secs(5)), b"again");
    }
}
