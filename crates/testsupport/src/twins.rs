//! Two signers connected as in production: each with its own SoftHSM2 token
//! (a copy of the first, as an HSM backup restored on the twin), repository,
//! serial link and nats-server; the crossover cable is a pair of TCP relays
//! that can be cut.
//!
//! ```text
//! client A ─ pty ─ signer-a ── nats A ◄── relay ◄── signer-b's peer connection
//!                      └─── peer connection ──► relay ──► nats B ── signer-b ─ pty ─ client B
//! ```

use signer_client::Calls;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use signer_client::Client;
use signer_protocol::msg;

use crate::ca::Ceremony;
use crate::{Bench, LinkSpec};

/// Certificates the ceremony records before any test issues one: the
/// intermediate `setup intermediate` made.
pub const CEREMONY_CERTIFICATES: u64 = 1;

/// A port on the loopback interface that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port")
}

/// A `nats-server` process with JetStream and a store of its own.
pub struct NatsServer {
    child: Option<Child>,
    /// Client port on 127.0.0.1.
    pub port: u16,
    conf: PathBuf,
    log: PathBuf,
    /// JetStream's store directory.
    store: PathBuf,
}

impl NatsServer {
    /// Starts a server named `name` with its store under `dir`, open to
    /// every client (benchmarks).
    pub fn start(dir: &Path, name: &str) -> NatsServer {
        let port = free_port();
        let store = dir.join(format!("{name}-jetstream"));
        let text = format!(
            "server_name: {name}\nlisten: 127.0.0.1:{port}\njetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  max_file_store: 2GB\n}}\n",
            store.display()
        );
        NatsServer::start_with(dir, name, port, &text)
    }

    /// Like [`NatsServer::start`], TLS only, with the certificate `cert`
    /// and its key `key` (as `signerd setup nats-tls` makes them).
    pub fn start_tls(dir: &Path, name: &str, cert: &Path, key: &Path) -> NatsServer {
        let port = free_port();
        let store = dir.join(format!("{name}-jetstream"));
        let text = format!(
            "server_name: {name}\nlisten: 127.0.0.1:{port}\njetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  max_file_store: 2GB\n}}\ntls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}\n",
            store.display(),
            cert.display(),
            key.display()
        );
        NatsServer::start_with(dir, name, port, &text)
    }

    /// Starts signer `own`'s server as shipped (configs/nats-server.conf),
    /// on loopback with its store under `dir`: only the nkeys `own_nkey`
    /// (the signer) and `twin_nkey` (its twin `twin`) get in, each with the
    /// permissions the shipped file gives it, and only over TLS with the
    /// certificate and key `dir/<own>.nats.crt` and `.key` (`signerd setup
    /// nats-tls`).
    pub fn start_signer(
        dir: &Path,
        name: &str,
        own: &str,
        twin: &str,
        own_nkey: &str,
        twin_nkey: &str,
    ) -> NatsServer {
        const SHIPPED: &str = include_str!("../../../configs/nats-server.conf");
        const OWN: &str = "UB4VSAG7MCG6AYI3JBVVMT5AZI7CRJBV53A7IZWFEZ665TY46MATMJJQ";
        const TWIN: &str = "UDRSQXWCOSULAMVKQNARGUMKPJWSMNJOUL2RCRQ3LXJQWVE5G6WBAXTT";
        let port = free_port();
        let store = dir.join(format!("{name}-jetstream"));
        let stream = |id: &str| format!("SIGNER_{}", id.to_ascii_uppercase().replace('-', "_"));
        let text = SHIPPED
            .replace("server_name: signer-a", &format!("server_name: {name}"))
            .replace("listen: 0.0.0.0:4222", &format!("listen: 127.0.0.1:{port}"))
            .replace(
                "store_dir: /var/lib/nats/jetstream",
                &format!("store_dir: \"{}\"", store.display()),
            )
            .replace("SIGNER_SIGNER_A", "\u{1}")
            .replace("signer-a", "\u{2}")
            .replace("signer-b", twin)
            .replace('\u{1}', &stream(own))
            .replace('\u{2}', own)
            .replace(OWN, own_nkey)
            .replace(TWIN, twin_nkey)
            .replace("/etc/nats-server/", &format!("{}/", dir.display()));
        assert!(text.contains(own_nkey) && text.contains(twin_nkey));
        NatsServer::start_with(dir, name, port, &text)
    }

    fn start_with(dir: &Path, name: &str, port: u16, text: &str) -> NatsServer {
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(&conf, text).expect("write nats-server config");
        let mut server = NatsServer {
            child: None,
            port,
            conf,
            log: dir.join(format!("{name}.log")),
            store: dir.join(format!("{name}-jetstream")),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open nats-server log");
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server (Debian package nats-server) must be installed");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            let ready = std::fs::File::open(&self.log)
                .map(|f| {
                    BufReader::new(f)
                        .lines()
                        .map_while(Result::ok)
                        .filter(|l| l.contains("Server is ready"))
                        .count()
                })
                .unwrap_or(0);
            let started = self.starts();
            if ready >= started && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nats-server did not start:\n{}", self.log_text());
    }

    fn starts(&self) -> usize {
        self.log_text().matches("Starting nats-server").count()
    }

    /// Process id (0 when stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// The server's log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `nats://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and store (after `kill`).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts it again on the same port with its store lost (a wiped disk):
    /// every stream and consumer on it is gone.
    pub fn restart_empty(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP relay standing in for the crossover cable: it can be cut (open
/// connections are torn down and new ones closed at once) and restored.
pub struct CutProxy {
    /// Listening port on 127.0.0.1.
    pub port: u16,
    up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    threads: Arc<Mutex<Vec<u32>>>,
}

/// The calling thread's id (for `taskset -p`).
fn thread_id() -> Option<u32> {
    std::fs::read_link("/proc/thread-self")
        .ok()?
        .file_name()?
        .to_str()?
        .parse()
        .ok()
}

impl CutProxy {
    /// Relays 127.0.0.1:`port` to 127.0.0.1:`target`.
    pub fn start(target: u16) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let port = listener.local_addr().expect("relay address").port();
        listener.set_nonblocking(true).expect("nonblocking relay");
        let up = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let threads: Arc<Mutex<Vec<u32>>> = Arc::new(Mutex::new(Vec::new()));
        let note = |threads: &Arc<Mutex<Vec<u32>>>| {
            if let (Some(id), Ok(mut list)) = (thread_id(), threads.lock()) {
                list.push(id);
            }
        };
        {
            let (up, stop, conns) = (Arc::clone(&up), Arc::clone(&stop), Arc::clone(&conns));
            let threads = Arc::clone(&threads);
            std::thread::spawn(move || {
                note(&threads);
                while !stop.load(Ordering::SeqCst) {
                    let Ok((inbound, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    if !up.load(Ordering::SeqCst) {
                        let _ = inbound.shutdown(Shutdown::Both);
                        continue;
                    }
                    let _ = inbound.set_nonblocking(false);
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)) else {
                        let _ = inbound.shutdown(Shutdown::Both);
                        continue;
                    };
                    let pairs = [
                        (inbound.try_clone(), outbound.try_clone()),
                        (outbound.try_clone(), inbound.try_clone()),
                    ];
                    if let Ok(mut list) = conns.lock() {
                        list.extend(inbound.try_clone());
                        list.extend(outbound.try_clone());
                    }
                    for pair in pairs {
                        if let (Ok(mut from), Ok(mut to)) = pair {
                            let threads = Arc::clone(&threads);
                            std::thread::spawn(move || {
                                note(&threads);
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = from.shutdown(Shutdown::Both);
                                let _ = to.shutdown(Shutdown::Both);
                            });
                        }
                    }
                }
            });
        }
        CutProxy {
            port,
            up,
            stop,
            conns,
            threads,
        }
    }

    /// The ids of the relay's threads (the acceptor's first; threads it
    /// starts later inherit its CPU affinity).
    pub fn threads(&self) -> Vec<u32> {
        self.threads.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// `nats://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Cuts the cable.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        if let Ok(mut list) = self.conns.lock() {
            for s in list.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Joins it again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

/// Two twin signers. Fields drop in order: daemons first.
pub struct Twins {
    /// Signer `signer-a` (serial prefix 0x21).
    pub a: Bench,
    /// Signer `signer-b` (serial prefix 0x22).
    pub b: Bench,
    /// A's nats-server.
    pub nats_a: NatsServer,
    /// B's nats-server.
    pub nats_b: NatsServer,
    /// A → B's server.
    pub cable_ab: CutProxy,
    /// B → A's server.
    pub cable_ba: CutProxy,
    /// The key ceremony (token, certificates).
    pub ceremony: Ceremony,
    /// The audit keys' verifier keys, A's then B's (empty unless audited).
    pub vkeys: Vec<String>,
    token_b: tempfile::TempDir,
}

/// Health checks by name: (status, detail).
pub type Checks = BTreeMap<String, (msg::HealthStatus, String)>;

/// The checks of a health report.
pub fn checks(client: &Client) -> Checks {
    client
        .health()
        .map(|h| {
            h.checks
                .into_iter()
                .map(|c| (c.name, (c.status, c.detail)))
                .collect()
        })
        .unwrap_or_default()
}

impl Twins {
    /// A ceremony (RSA root, `sub_key` intermediate, `profiles`), its token
    /// copied for the twin, two nats-servers, the cable and both signers.
    pub fn new(sub_key: &str, profiles: &str) -> Twins {
        Twins::with_ceremony(Ceremony::new_as("signer-a", sub_key, profiles))
    }

    /// Twins on a ceremony made by the caller (e.g. with an OpenPGP key).
    pub fn with_ceremony(ceremony: Ceremony) -> Twins {
        Twins::build(ceremony, false, LinkSpec::unthrottled())
    }

    /// Twins on a ceremony made by the caller, each on a link like `link`
    /// (e.g. 115,200 baud).
    pub fn with_ceremony_on(ceremony: Ceremony, link: LinkSpec) -> Twins {
        Twins::build(ceremony, false, link)
    }

    /// Twins whose audit logs sign checkpoints (an Ed25519 audit key on
    /// each token, `ca.audit` with a checkpoint every 4 entries or second)
    /// and witness each other's (`peer_vkey`). Origins:
    /// `signer-a.example/audit`, `signer-b.example/audit`.
    pub fn audited(sub_key: &str, profiles: &str) -> Twins {
        Twins::build(
            Ceremony::new_as("signer-a", sub_key, profiles),
            true,
            LinkSpec::unthrottled(),
        )
    }

    fn build(ceremony: Ceremony, audit: bool, link: LinkSpec) -> Twins {
        let token_b = tempfile::tempdir().expect("temp dir");
        let ok = Command::new("cp")
            .arg("-a")
            .arg(ceremony.dir().join("tokens"))
            .arg(token_b.path())
            .status()
            .expect("cp");
        assert!(ok.success(), "copy the token store");
        let conf_b = token_b.path().join("softhsm2.conf");
        std::fs::write(
            &conf_b,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                token_b.path().join("tokens").display()
            ),
        )
        .expect("write softhsm2.conf");
        let replication = |local: &str,
                           peer: &str,
                           peer_id: &str,
                           peer_key: &Path,
                           own_key: &Path,
                           own_tls: &Path,
                           peer_tls: &Path| {
            format!(
                "  replication:\n    local: {local}\n    peer: {peer}\n    peer_id: {peer_id}\n    key: replication\n    peer_key: {}\n    nats_seed: {}\n    tls_cert: {}\n    peer_tls_cert: {}\n    state_interval_secs: 1\n    held_warning_secs: 3\n",
                peer_key.display(),
                own_key.with_extension("seed").display(),
                own_tls.display(),
                peer_tls.display(),
            )
        };
        let d = ceremony.dir().display().to_string();
        let with_key = |yaml: &str, label: &str| {
            yaml.replacen(
                "    - {name: sub, label: sub-key}\n",
                &format!(
                    "    - {{name: sub, label: sub-key}}\n    - {{name: replication, label: {label}}}\n"
                ),
                1,
            )
        };
        let with_audit_key = |yaml: String, label: &str| {
            if audit {
                yaml.replacen(
                    "    - {name: sub, label: sub-key}\n",
                    &format!("    - {{name: sub, label: sub-key}}\n    - {{name: audit, label: {label}}}\n"),
                    1,
                )
            } else {
                yaml
            }
        };
        let yaml_a = with_audit_key(with_key(&ceremony.ca_yaml, "replication-a"), "audit-a");
        let yaml_b = with_key(
            &ceremony
                .ca_yaml
                .replace(
                    &format!("{d}/repository.redb"),
                    &format!("{}/repository.redb", token_b.path().display()),
                )
                .replace("serial_prefix: 0x21", "serial_prefix: 0x22"),
            "replication-b",
        );
        let yaml_b = with_audit_key(yaml_b, "audit-b");
        // The pair ceremony: each twin makes its own replication key on its
        // own token, and the twins exchange the public halves.
        let pair_a = ceremony.dir().join("pair-signer-a.yaml");
        std::fs::write(
            &pair_a,
            format!("signer_id: signer-a\nlink: {{device: /dev/null}}\n{yaml_a}"),
        )
        .expect("write pair configuration");
        init_repository(token_b.path(), "signer-b", &yaml_b);
        let pair_b = token_b.path().join("init-signer-b.yaml");
        let key_a = ceremony.dir().join("replication-a.pem");
        let key_b = token_b.path().join("replication-b.pem");
        let audit_section = |own: &str| {
            format!("  audit:\n    key: audit\n    origin: {own}.example/audit\n    every_entries: 4\n    every_secs: 1\n")
        };
        let tls_a = ceremony.dir().join("signer-a.nats.crt");
        let mut vkeys = Vec::new();
        let tls_b = token_b.path().join("signer-b.nats.crt");
        let mut nkeys = Vec::new();
        for (config, env, label, out, tls) in [
            (
                &pair_a,
                ceremony.hsm.conf.clone(),
                "replication-a",
                &key_a,
                &tls_a,
            ),
            (&pair_b, conf_b.clone(), "replication-b", &key_b, &tls_b),
        ] {
            let env = [("SOFTHSM2_CONF".to_string(), env)];
            signerd_in(
                &["setup", "generate-key", "--label", label, "--type", "p256"],
                config,
                &env,
            );
            let out = out.display().to_string();
            signerd_in(
                &["setup", "public-key", "--key", "replication", "--out", &out],
                config,
                &env,
            );
            // Each twin's NATS credentials (beside its public key file, so
            // the other's configuration names them by the same stem).
            let seed = Path::new(&out).with_extension("seed");
            let made = signerd_in(
                &["setup", "nats-key", "--out", &seed.display().to_string()],
                config,
                &env,
            );
            let public = made
                .lines()
                .find_map(|l| l.strip_prefix("public key "))
                .expect("nats-key prints the public key")
                .trim()
                .to_string();
            nkeys.push(public);
            if audit {
                let own = if label == "replication-a" {
                    "signer-a"
                } else {
                    "signer-b"
                };
                signerd_in(
                    &[
                        "setup",
                        "generate-key",
                        "--label",
                        &format!("audit-{}", &own[own.len() - 1..]),
                        "--type",
                        "ed25519",
                    ],
                    config,
                    &env,
                );
                let text = std::fs::read_to_string(config).expect("read pair configuration");
                let with = config.with_extension("audit.yaml");
                std::fs::write(&with, format!("{text}{}", audit_section(own)))
                    .expect("write configuration");
                let vkey = signerd_in(&["audit", "vkey"], &with, &env);
                vkeys.push(vkey.trim().to_string());
            }
            // Each twin's nats-server certificate; both signers pin it.
            signerd_in(
                &[
                    "setup",
                    "nats-tls",
                    "--cert",
                    &tls.display().to_string(),
                    "--key",
                    &tls.with_extension("key").display().to_string(),
                    "--host",
                    "127.0.0.1",
                ],
                config,
                &env,
            );
        }
        let nats_a = NatsServer::start_signer(
            ceremony.dir(),
            "nats-a",
            "signer-a",
            "signer-b",
            &nkeys[0],
            &nkeys[1],
        );
        let nats_b = NatsServer::start_signer(
            token_b.path(),
            "nats-b",
            "signer-b",
            "signer-a",
            &nkeys[1],
            &nkeys[0],
        );
        let cable_ab = CutProxy::start(nats_b.port);
        let cable_ba = CutProxy::start(nats_a.port);
        let yaml_a = format!(
            "{yaml_a}{}",
            replication(
                &nats_a.url(),
                &cable_ab.url(),
                "signer-b",
                &key_b,
                &key_a,
                &tls_a,
                &tls_b
            )
        );
        let yaml_b = format!(
            "{yaml_b}{}",
            replication(
                &nats_b.url(),
                &cable_ba.url(),
                "signer-a",
                &key_a,
                &key_b,
                &tls_b,
                &tls_a
            )
        );
        // Each witnesses the other's audit log.
        let (yaml_a, yaml_b) = if audit {
            (
                format!(
                    "{yaml_a}{}    peer_vkey: \"{}\"\n",
                    audit_section("signer-a"),
                    vkeys[1]
                ),
                format!(
                    "{yaml_b}{}    peer_vkey: \"{}\"\n",
                    audit_section("signer-b"),
                    vkeys[0]
                ),
            )
        } else {
            (yaml_a, yaml_b)
        };
        // B's operator commands (repo init after a loss, repo seed) use its
        // whole configuration from now on.
        std::fs::write(
            &pair_b,
            format!("signer_id: signer-b\nlink: {{device: /dev/null}}\n{yaml_b}"),
        )
        .expect("write B's configuration");
        assert_eq!(
            ceremony.signer_id, "signer-a",
            "twins: make the ceremony with Ceremony::new_as(\"signer-a\", …)"
        );
        let a = Bench::start_as("signer-a", link, &yaml_a, ceremony.env());
        let b = Bench::start_as(
            "signer-b",
            link,
            &yaml_b,
            vec![("SOFTHSM2_CONF".into(), conf_b)],
        );
        // Both serving before the test's first request: a client of both
        // (`Failover`) would otherwise be told `starting` by one and be
        // answered by the other.
        a.daemon.wait_started();
        b.daemon.wait_started();
        Twins {
            a,
            b,
            nats_a,
            nats_b,
            cable_ab,
            cable_ba,
            ceremony,
            vkeys,
            token_b,
        }
    }

    /// `signerd repo init` for B (after its repository was lost: the
    /// rebuilt twin's first step).
    pub fn init_b(&self) {
        signerd_ok(&["repo", "init"], &self.dir_b().join("init-signer-b.yaml"));
    }

    /// The replacement twin's ceremony: `signerd repo backup` on the
    /// running A, then `signerd repo seed` for B from that backup (B's
    /// repository must be gone). Returns seed's output.
    pub fn seed_b_from_a(&self) -> String {
        let backup = self.dir_b().join("from-a.backup");
        let _ = std::fs::remove_file(&backup);
        let out = backup.display().to_string();
        signerd_ok(
            &["repo", "backup", "--out", &out],
            &self.a.dir().join("signerd.yaml"),
        );
        signerd_ok(
            &["repo", "seed", "--in", &out],
            &self.dir_b().join("init-signer-b.yaml"),
        )
    }

    /// `signerd repo check` and `signerd audit verify` on both twins while
    /// they serve (every record and every audit chain each holds, its own
    /// and the other's), each required to pass; their outputs.
    pub fn check_repositories(&self) -> (String, String) {
        let check = |config: PathBuf, softhsm: PathBuf| {
            let env = [("SOFTHSM2_CONF".to_string(), softhsm)];
            signerd_in(&["repo", "check"], &config, &env)
                + &signerd_in(&["audit", "verify"], &config, &env)
        };
        (
            check(
                self.a.dir().join("signerd.yaml"),
                self.ceremony.hsm.conf.clone(),
            ),
            check(
                self.b.dir().join("signerd.yaml"),
                self.dir_b().join("softhsm2.conf"),
            ),
        )
    }

    /// B's token store directory (its repository lives there too).
    pub fn dir_b(&self) -> &Path {
        self.token_b.path()
    }

    /// Cuts the crossover cable in both directions.
    pub fn cut(&self) {
        self.cable_ab.cut();
        self.cable_ba.cut();
    }

    /// Restores the crossover cable.
    pub fn restore(&self) {
        self.cable_ab.restore();
        self.cable_ba.restore();
    }

    /// Waits (up to `limit`) until both report "in sync" with `issued`
    /// certificates issued by the test in total (plus the ceremony's
    /// [`CEREMONY_CERTIFICATES`]; any number if `None`); returns both
    /// agreement details.
    pub fn wait_in_sync(
        &self,
        a: &Client,
        b: &Client,
        issued: impl Into<Option<u64>>,
        limit: Duration,
    ) -> Result<(String, String), String> {
        // The ceremony's intermediate is recorded as the root's certificate.
        let issued = issued.into().map(|n| n + CEREMONY_CERTIFICATES);
        let until = Instant::now() + limit;
        let want = issued.map(|n| format!("({n} issued")).unwrap_or_default();
        let mut last = (Checks::new(), Checks::new());
        while Instant::now() < until {
            last = (checks(a), checks(b));
            let agreed = |c: &Checks| {
                c.get("replication:agreement")
                    .is_some_and(|(_, d)| d.starts_with("in sync") && d.contains(&want))
            };
            if agreed(&last.0) && agreed(&last.1) {
                let detail = |c: &Checks| c["replication:agreement"].1.clone();
                return Ok((detail(&last.0), detail(&last.1)));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!(
            "not in sync with {issued:?} issued after {limit:?}:\nA: {:#?}\nB: {:#?}",
            last.0, last.1
        ))
    }
}

/// Runs `signerd repo init` for a signer whose `ca:` section is `ca_yaml`
/// (the pair ceremony's step for the twin); the configuration is kept in
/// `dir` as `init-<signer>.yaml`.
fn init_repository(dir: &Path, signer_id: &str, ca_yaml: &str) {
    let config = dir.join(format!("init-{signer_id}.yaml"));
    std::fs::write(
        &config,
        format!("signer_id: {signer_id}\nlink: {{device: /dev/null}}\n{ca_yaml}"),
    )
    .expect("write init configuration");
    signerd_ok(&["repo", "init"], &config);
}

/// Runs `signerd ARGS --config CONFIG`, asserting success; its output.
fn signerd_ok(args: &[&str], config: &Path) -> String {
    signerd_in(args, config, &[])
}

/// Like [`signerd_ok`] with environment variables (a twin's token).
fn signerd_in(args: &[&str], config: &Path, env: &[(String, PathBuf)]) -> String {
    let out = Command::new(crate::bin("signerd"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("--config")
        .arg(config)
        .output()
        .expect("run signerd");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "signerd {args:?} ({}): {text}",
        config.display()
    );
    text
}
