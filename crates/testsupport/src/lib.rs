//! Shared test support: the workspace's real binaries, a simulated serial
//! link and a running `signerd`, each cleaned up on drop.
//!
//! ```no_run
//! use signer_client::Calls;
//! use signer_testsupport::{Bench, LinkSpec};
//!
//! let bench = Bench::start(LinkSpec::unthrottled());
//! let client = bench.client();
//! assert_eq!(client.health().unwrap().signer_id, "test-signer");
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod ca;
pub mod gateway;
pub mod gpg;
pub mod twins;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use signer_client::{Client, LinkOptions};
use signer_linksim::{LinkSim, Options};

/// Builds a Debian package (`kind`: `signer` or `gateway`) from this
/// build's binaries with scripts/package-deb.sh into `out`; its path.
pub fn package_deb(kind: &str, out: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin_dir = bin("signerd")
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let made = Command::new(root.join("scripts/package-deb.sh"))
        .arg(kind)
        .env("BIN_DIR", &bin_dir)
        .env("OUT_DIR", out)
        .output()
        .expect("run scripts/package-deb.sh");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let deb = PathBuf::from(String::from_utf8_lossy(&made.stdout).trim());
    assert!(deb.exists(), "{}", deb.display());
    deb
}

/// Path of one of the workspace's binaries, built (once per test process)
/// with the same profile as the running test, so it is never stale.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        // target/<profile>/deps/<test> or target/<profile>/<bench> → target/<profile>
        let mut dir = exe
            .parent()
            .ok_or("executable has no directory")?
            .to_path_buf();
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir.pop();
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "--bin",
            "signerd",
            "--bin",
            "signer-client",
            "--bin",
            "signer-linksim",
            "--bin",
            "signer-gateway",
        ]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err(format!("building the binaries failed: {status}"));
        }
        Ok(dir)
    });
    match dir {
        Ok(dir) => dir.join(name),
        Err(e) => panic!("{e}"),
    }
}

/// Runs a command to its end: (exit code, standard output, standard error).
pub fn output(cmd: &mut Command) -> (Option<i32>, String, String) {
    let out = cmd.output().expect("run the command");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Path of the fault-injection PKCS#11 module (`crates/faulthsm`), built
/// once per test process with the test's profile.
pub fn fault_module() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let dir = bin("signerd")
            .parent()
            .ok_or("binary has no directory")?
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "signer-faulthsm"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err(format!("building the fault module failed: {status}"));
        }
        Ok(dir.join("libsigner_faulthsm.so"))
    });
    match built {
        Ok(path) => path.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// How the simulated link between signer and client behaves.
#[derive(Debug, Clone, Copy)]
pub struct LinkSpec {
    /// Baud rate, 0 for unthrottled.
    pub baud: u32,
    /// Bit error rate.
    pub ber: f64,
    /// Byte drop rate.
    pub drop: f64,
    /// Line-break rate (per byte).
    pub breaks: f64,
    /// Seed of the fault generator.
    pub seed: u64,
}

impl LinkSpec {
    /// A clean link as fast as the pty allows.
    pub fn unthrottled() -> Self {
        LinkSpec {
            baud: 0,
            ber: 0.0,
            drop: 0.0,
            breaks: 0.0,
            seed: 1,
        }
    }

    /// A clean link at `baud`.
    pub fn baud(baud: u32) -> Self {
        LinkSpec {
            baud,
            ..LinkSpec::unthrottled()
        }
    }

    /// Adds line breaks (the line held low for 24 byte times, read as one NUL).
    pub fn breaks(mut self, rate: f64) -> Self {
        self.breaks = rate;
        self
    }

    /// Adds bit errors and dropped bytes.
    pub fn noisy(mut self, ber: f64, drop: f64, seed: u64) -> Self {
        self.ber = ber;
        self.drop = drop;
        self.seed = seed;
        self
    }
}

/// A running `signerd` process; killed on drop.
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
    config: PathBuf,
    env: Vec<(String, PathBuf)>,
}

impl Daemon {
    /// Writes `config_yaml` into `dir` and starts `signerd run` on it.
    pub fn start(dir: &Path, config_yaml: &str) -> Daemon {
        Daemon::start_with_env(dir, config_yaml, Vec::new())
    }

    /// Like [`Daemon::start`] with extra environment variables (e.g. `SOFTHSM2_CONF`).
    pub fn start_with_env(dir: &Path, config_yaml: &str, env: Vec<(String, PathBuf)>) -> Daemon {
        let config = dir.join("signerd.yaml");
        let log = dir.join("signerd.log");
        std::fs::write(&config, config_yaml).expect("write config");
        let child = spawn_daemon(&config, &log, &env);
        Daemon {
            child: Some(child),
            log,
            config,
            env,
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to 20 s) until its log says it has started: its services
    /// ready, so a request is no longer answered `starting`. Reads only
    /// the log: the link stays free for the test's own clients.
    pub fn wait_started(&self) {
        let until = Instant::now() + Duration::from_secs(20);
        while !self.log().contains("signerd started") {
            assert!(
                Instant::now() < until,
                "signerd did not start within 20 s\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its configuration file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Sends a signal by name (e.g. `TERM`, `KILL`).
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status();
    }

    /// Waits up to `limit` for the process to exit; returns its exit code.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return status.code();
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// `kill -9` and wait.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for a clean exit (status 0).
    pub fn stop_cleanly(&mut self) {
        self.signal("TERM");
        assert_eq!(
            self.wait(Duration::from_secs(20)),
            Some(0),
            "{}",
            self.log()
        );
    }

    /// Starts the daemon again with these variables added to its
    /// environment (e.g. libfaketime's), on the same configuration.
    pub fn restart_with_env(&mut self, extra: Vec<(String, PathBuf)>) {
        self.kill();
        let mut env = self.env.clone();
        env.extend(extra);
        self.child = Some(spawn_daemon(&self.config, &self.log, &env));
    }

    /// Starts the daemon again on the same configuration (after `kill`).
    pub fn restart(&mut self) {
        self.kill();
        self.child = Some(spawn_daemon(&self.config, &self.log, &self.env));
    }
}

/// Where every certificate and CRL the tests' signers made is collected
/// when set (scripts/test.sh sets it): each daemon, when dropped, copies
/// what its repository holds there, and the suite lints the lot with
/// pkilint at its end (tests/python/lint_corpus.py).
pub const LINT_CORPUS: &str = "SIGNER_LINT_CORPUS";

impl Daemon {
    /// A copy of this daemon's repository, opened as its configuration
    /// names it (signer id, CA certificates); None if it cannot be.
    fn open_repository(&self) -> Option<(signer_repository::Repository, tempfile::NamedTempFile)> {
        let text = std::fs::read_to_string(&self.config).ok()?;
        let config: serde_yaml::Value = serde_yaml::from_str(&text).ok()?;
        let base = self.config.parent()?;
        let signer_id = config.get("signer_id")?.as_str()?;
        let ca = config.get("ca")?;
        let mut expected = signer_repository::Expected::signer(signer_id);
        for entry in ca.get("cas")?.as_sequence()? {
            let name = entry.get("name")?.as_str()?;
            let cert = base.join(entry.get("certificate")?.as_str()?);
            if let Some(fingerprint) = std::fs::read(&cert)
                .ok()
                .and_then(|b| signer_x509::cert_der(&b).ok())
                .and_then(|der| signer_x509::spki_sha256(&der).ok())
            {
                expected.cas.insert(name.to_string(), fingerprint);
            }
        }
        let path = base.join(ca.get("repository")?.as_str()?);
        // A copy: a daemon killed mid-write leaves a file to repair, and the
        // test's own file stays as the test left it.
        let copy = tempfile::NamedTempFile::new().ok()?;
        std::fs::copy(&path, copy.path()).ok()?;
        let repo = signer_repository::Repository::open(
            copy.path(),
            &expected,
            &signer_repository::OpenOptions::default(),
        )
        .map_err(|e| eprintln!("lint corpus: {} not read: {e}", path.display()))
        .ok()?;
        Some((repo, copy))
    }

    /// Copies the certificates and latest CRLs of this daemon's repository
    /// into `corpus` (`cert-HASH.der`, `crl-HASH.der`; a twin's copy of the
    /// same certificate is the same file). A repository a test left
    /// unreadable, or a record that fails its check, is skipped: its test
    /// judges it.
    fn add_to_lint_corpus(&self, corpus: &Path) {
        let Some((repo, _copy)) = self.open_repository() else {
            return;
        };
        let _ = std::fs::create_dir_all(corpus);
        let write = |kind: &str, der: &[u8]| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            der.hash(&mut h);
            let _ = std::fs::write(corpus.join(format!("{kind}-{:016x}.der", h.finish())), der);
        };
        let _ = repo.for_each_certificate(|r| {
            if let Ok(cert) = r {
                write("cert", &cert.der);
            }
        });
        let _ = repo.for_each_latest_crl(|r| {
            if let Ok(crl) = r {
                write("crl", &crl.der);
            }
        });
    }
}

/// The variable naming the log filter of the daemons started here (debug,
/// for tests, when unset; the benchmarks set the shipped `info`, so what
/// they measure is what runs).
pub const DAEMON_LOG: &str = "SIGNER_DAEMON_LOG";

fn spawn_daemon(config: &Path, log: &Path, env: &[(String, PathBuf)]) -> Child {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open daemon log");
    Command::new(bin("signerd"))
        .arg("run")
        .arg("--config")
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var(DAEMON_LOG).unwrap_or_else(|_| "debug,async_nats=info".into()),
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("start signerd")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        if let Some(corpus) = std::env::var_os(LINT_CORPUS) {
            self.add_to_lint_corpus(Path::new(&corpus));
        }
        if std::thread::panicking() {
            eprintln!("--- signerd log ---\n{}", self.log());
        }
    }
}

/// A temp dir, a simulated link and a daemon on its end A; clients use end B.
pub struct Bench {
    /// The daemon (declared first: stopped before the link vanishes).
    pub daemon: Daemon,
    /// The link simulator.
    pub sim: LinkSim,
    /// Baud rate of the link (0: unthrottled).
    pub baud: u32,
    dir: tempfile::TempDir,
}

impl Bench {
    /// Starts a link and a daemon with the default test configuration.
    pub fn start(link: LinkSpec) -> Bench {
        Bench::start_with(link, "")
    }

    /// Like [`Bench::start`], appending `extra_yaml` (top-level keys) to the configuration.
    pub fn start_with(link: LinkSpec, extra_yaml: &str) -> Bench {
        Bench::start_with_env(link, extra_yaml, Vec::new())
    }

    /// Like [`Bench::start_with`], with extra environment variables for the daemon.
    pub fn start_with_env(link: LinkSpec, extra_yaml: &str, env: Vec<(String, PathBuf)>) -> Bench {
        Bench::start_as("test-signer", link, extra_yaml, env)
    }

    /// Like [`Bench::start_with_env`] for a signer named `signer_id`.
    pub fn start_as(
        signer_id: &str,
        link: LinkSpec,
        extra_yaml: &str,
        env: Vec<(String, PathBuf)>,
    ) -> Bench {
        let dir = tempfile::tempdir().expect("temp dir");
        let sim = LinkSim::start(
            Options::new(dir.path().join("signer.tty"), dir.path().join("client.tty"))
                .baud(link.baud)
                .ber(link.ber)
                .drop_rate(link.drop)
                .breaks(link.breaks)
                .seed(link.seed),
        )
        .expect("start link simulator");
        let config = format!(
            "signer_id: {signer_id}\nlink:\n  device: signer.tty\n  baud: {}\n  reopen_min_ms: 20\n  reopen_max_ms: 200\n{extra_yaml}",
            if link.baud == 0 { 115_200 } else { link.baud }
        );
        let daemon = Daemon::start_with_env(dir.path(), &config, env);
        Bench {
            daemon,
            sim,
            baud: link.baud,
            dir,
        }
    }

    /// The working directory (config, log, devices).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The client's device path.
    pub fn client_device(&self) -> PathBuf {
        self.dir.path().join("client.tty")
    }

    /// Link options for a client of this bench.
    pub fn link_options(&self) -> LinkOptions {
        let mut options = LinkOptions::new(self.client_device());
        options.baud = if self.baud == 0 { 4_000_000 } else { self.baud };
        options.timeout = Duration::from_secs(60);
        options
    }

    /// A client that has said hello, waiting (up to 20 s) for the daemon to serve.
    pub fn client(&self) -> Client {
        self.client_with(self.link_options())
    }

    /// Like [`Bench::client`] with explicit options.
    pub fn client_with(&self, options: LinkOptions) -> Client {
        self.client_within(options, Duration::from_secs(20))
    }

    /// Like [`Bench::client_with`], waiting up to `wait` for the daemon to
    /// serve (a repository of millions of records is checked page by page
    /// before it does).
    pub fn client_within(&self, mut options: LinkOptions, wait: Duration) -> Client {
        let until = Instant::now() + wait;
        let timeout = options.timeout;
        options.timeout = Duration::from_secs(2);
        loop {
            match Client::open(&options) {
                // Answering, but still starting (its repository checked,
                // the HSM logged in): every request but hello and health
                // would be answered `starting`.
                Ok(client) if still_starting(&client) && Instant::now() < until => {
                    drop(client);
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(client) => {
                    drop(client);
                    options.timeout = timeout;
                    // The probe's reader thread lets go of the device's lock
                    // a moment after it is dropped.
                    let until = Instant::now() + Duration::from_secs(10);
                    loop {
                        match Client::open(&options) {
                            Ok(client) => return client,
                            Err(e) if Instant::now() > until => {
                                panic!("client after the daemon answered: {e}")
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(50)),
                        }
                    }
                }
                Err(e) if Instant::now() > until => {
                    panic!(
                        "signerd did not answer within {wait:?}: {e}\n{}",
                        self.daemon.log()
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// Whether the signer's health still has the check `starting`.
pub fn still_starting(client: &Client) -> bool {
    use signer_client::Calls as _;
    client
        .health()
        .map_or(true, |h| h.checks.iter().any(|c| c.name == "starting"))
}

/// The SoftHSM2 PKCS#11 module installed by Debian's `softhsm2` package.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A private SoftHSM2 token store with one initialized token; removed on drop.
///
/// SoftHSM2 reads its configuration from `SOFTHSM2_CONF` when the module is
/// initialized, so a process uses one store: give the path to a daemon
/// through [`SoftHsm::env`], or set it once per test process before loading
/// the module in-process.
pub struct SoftHsm {
    dir: tempfile::TempDir,
    /// The softhsm2.conf of this store.
    pub conf: PathBuf,
    /// The token label.
    pub label: String,
    /// The user PIN.
    pub pin: String,
}

impl SoftHsm {
    /// Creates a store with one token labelled `label` (user PIN 1234).
    pub fn new(label: &str) -> SoftHsm {
        let dir = tempfile::tempdir().expect("temp dir");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir_all(&tokens).expect("token dir");
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .expect("write softhsm2.conf");
        let hsm = SoftHsm {
            dir,
            conf,
            label: label.to_string(),
            pin: "1234".into(),
        };
        hsm.init_token(label);
        hsm
    }

    /// Initializes another token in the same store.
    pub fn init_token(&self, label: &str) {
        let out = Command::new("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                &self.pin,
                "--so-pin",
                "5678",
            ])
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .expect("softhsm2-util (Debian package softhsm2) must be installed");
        assert!(
            out.status.success(),
            "softhsm2-util: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `(name, value)` of the environment variable that selects this store.
    pub fn env(&self) -> (&'static str, &Path) {
        ("SOFTHSM2_CONF", &self.conf)
    }

    /// Writes the PIN to a file readable only by its owner and returns the path.
    pub fn pin_file(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join("user.pin");
        std::fs::write(&path, format!("{}\n", self.pin)).expect("write pin");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod pin");
        path
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Environment that runs a process under libfaketime with its clock moved
/// by `offset` (e.g. `-365d`, `+30d`); Debian's `faketime` package
/// (scripts/setup-debian.sh installs it).
pub fn faketime(offset: &str) -> Vec<(String, PathBuf)> {
    let lib = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("libfaketime (Debian package faketime; scripts/setup-debian.sh installs it)");
    vec![
        ("LD_PRELOAD".into(), lib.into()),
        ("FAKETIME".into(), offset.into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

/// The lines of the block marked `<!-- runbook-test: NAME -->` in a
/// document (the next ```sh fence), as a test runs them: comments after two
/// spaces and `#` dropped, comment lines and empty lines left out.
pub fn runbook_block(doc: &str, name: &str) -> Vec<String> {
    let marker = format!("<!-- runbook-test: {name} -->");
    let start = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("no block {name}"));
    let body = &doc[start..];
    let open = body
        .find("```sh\n")
        .expect("a ```sh block after the marker")
        + 6;
    let close = body[open..].find("```").expect("the block's end") + open;
    body[open..close]
        .lines()
        .map(|l| l.split("  #").next().unwrap_or(l).trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}
