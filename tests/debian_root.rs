//! docs/operations.md's key ceremonies, run as written on Debian: the .deb
//! this build makes is installed with `apt install` into throwaway Debian
//! roots (debootstrap's bookworm, made once by scripts/setup-debian.sh),
//! and every block marked `<!-- debian-test: NAME -->` runs there in a root
//! shell, line by line, on a terminal whose PIN prompts the test answers.
//! The single-signer ceremony ends with a certificate signed; the pair's,
//! on two roots joined by a veth pair with the crossover cable's addresses,
//! with a certificate signed by A and answered by B from its replicated
//! record.
//!
//! The roots have no systemd: a line `systemctl enable --now UNIT…` starts
//! each unit the way its installed unit file says (ExecStart, User, Group,
//! StateDirectory, LoadCredential, drop-ins included). Needs root (chroot,
//! mounts, network namespaces).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use signer_linksim::{LinkSim, Options};
use signer_testsupport::{bin, output};

const SO_PIN: &str = "87654321";
const PIN: &str = "20261201";

/// The block after `<!-- debian-test: NAME -->`, its lines as written.
fn block(doc: &str, name: &str) -> Vec<String> {
    let marker = format!("<!-- debian-test: {name} -->");
    let start = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("no block {name}"));
    let body = &doc[start..];
    let open = body.find("```sh\n").expect("a ```sh block") + 6;
    let close = body[open..].find("```").expect("the block's end") + open;
    body[open..close]
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// B's form of a block: a line that says `# on B: …` is replaced by what
/// follows, as the runbook tells the operator.
fn on_b(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| match l.split_once("# on B: ") {
            Some((_, b)) => b.to_string(),
            None => l.clone(),
        })
        .collect()
}

fn sh(cmd: &str) {
    let (code, out, err) = output(Command::new("sh").arg("-c").arg(cmd));
    assert_eq!(code, Some(0), "{cmd}\n{out}{err}");
}

/// Runs `program` with `args` on a new terminal (its controlling one, in a
/// new session: `setsid --ctty`), answering PIN prompts; returns the exit
/// code and what appeared on the terminal.
fn on_terminal(program: Command, limit: Duration) -> (Option<i32>, String) {
    let mut cmd = Command::new("setsid");
    cmd.arg("--ctty")
        .arg(program.get_program())
        .args(program.get_args());
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let slave: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().unwrap())
        .unwrap()
        .into();
    let io = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
    cmd.stdin(io(&slave)).stdout(io(&slave)).stderr(io(&slave));
    let mut child = cmd.spawn().unwrap();
    drop(slave);
    let mut master = std::fs::File::from(master);
    let flags = rustix::fs::fcntl_getfl(&master).unwrap();
    rustix::fs::fcntl_setfl(&master, flags | rustix::fs::OFlags::NONBLOCK).unwrap();
    let mut seen = String::new();
    let mut answered = 0;
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    let status = loop {
        match master.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            // EIO: every slave descriptor closed; the command is done.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {}
        }
        let tail = &seen[answered..];
        if tail.ends_with("[Y/n] ") {
            // apt's question before it installs: the operator says yes.
            master.write_all(b"y\n").unwrap();
            answered = seen.len();
        } else if tail.ends_with(": ")
            && tail.rsplit('\n').next().is_some_and(|l| l.contains("PIN"))
        {
            // Echo is off before a prompt shows; a moment for tools that
            // switch it after.
            std::thread::sleep(Duration::from_millis(100));
            let pin = if tail.trim_end().ends_with("SO PIN:") {
                SO_PIN
            } else {
                PIN
            };
            master.write_all(format!("{pin}\n").as_bytes()).unwrap();
            answered = seen.len();
        }
        if let Some(status) = child.try_wait().unwrap() {
            // What is still in the terminal's buffer.
            std::thread::sleep(Duration::from_millis(50));
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, seen)
}

/// A Debian root, in its own network namespace, with processes to stop.
struct Host {
    name: &'static str,
    root: PathBuf,
    ns: String,
    _dir: tempfile::TempDir,
    link: Option<LinkSim>,
    links_dir: tempfile::TempDir,
}

impl Host {
    fn new(name: &'static str, tarball: &Path, deb: &Path, usb: &Path) -> Host {
        let dir = tempfile::Builder::new()
            .prefix("debian-root-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let r = root.display();
        // The root directory's own mode as a host has it: a tarball made
        // from a private temporary directory would carry 0700, and no user
        // but root could reach anything.
        sh(&format!(
            "tar -C {r} -xf {} && chmod 0755 {r}",
            tarball.display()
        ));
        // A minimal /dev: the usual nodes, the ptys, nothing else.
        sh(&format!("mount -t proc proc {r}/proc && mount -t tmpfs -o mode=0755 dev {r}/dev && mkdir {r}/dev/pts {r}/dev/shm"));
        for node in ["null", "zero", "full", "random", "urandom", "tty", "ptmx"] {
            sh(&format!(
                "touch {r}/dev/{node} && mount --bind /dev/{node} {r}/dev/{node}"
            ));
        }
        sh(&format!(
            "mount --bind /dev/pts {r}/dev/pts && mkdir -p {r}/media/usb && mount --bind {} {r}/media/usb",
            usb.display()
        ));
        std::fs::copy(deb, root.join("root").join(deb.file_name().unwrap())).unwrap();
        let ns = format!("sls-{name}-{}", std::process::id());
        sh(&format!("ip netns add {ns} && ip -n {ns} link set lo up"));
        Host {
            name,
            root,
            ns,
            _dir: dir,
            link: None,
            links_dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A command run in this root, in its network namespace.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "chroot"])
            .arg(&self.root)
            .args(["/usr/bin/env", "-i"])
            .args([
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME=/root",
                "TERM=dumb",
                "LANG=C.UTF-8",
            ])
            .arg(program);
        cmd
    }

    /// Runs one block of the runbook in a root shell on this host.
    fn run(&self, lines: &[String]) -> String {
        let mut transcript = String::new();
        let mut script = String::new();
        let flush = |script: &mut String, transcript: &mut String| {
            if script.is_empty() {
                return;
            }
            let mut cmd = self.command("/bin/bash");
            cmd.args(["-e", "-x", "-c", script.as_str()]);
            let (code, seen) = on_terminal(cmd, Duration::from_secs(180));
            transcript.push_str(&seen);
            assert_eq!(code, Some(0), "on {}:\n{script}\n---\n{seen}", self.name);
            script.clear();
        };
        for line in lines {
            if let Some(units) = line.trim().strip_prefix("systemctl enable --now ") {
                flush(&mut script, &mut transcript);
                let units = units.split('#').next().unwrap();
                for unit in units.split_whitespace() {
                    self.start_unit(unit);
                }
            } else {
                script.push_str(line);
                script.push('\n');
            }
        }
        flush(&mut script, &mut transcript);
        transcript
    }

    /// Starts `unit` as its installed unit file (and drop-ins) says.
    fn start_unit(&self, unit: &str) {
        let units = self.root.join("lib/systemd/system");
        let mut text = std::fs::read_to_string(units.join(format!("{unit}.service")))
            .unwrap_or_else(|e| panic!("{unit}.service: {e}"));
        if let Ok(dropins) = std::fs::read_dir(units.join(format!("{unit}.service.d"))) {
            for d in dropins {
                text.push_str(&std::fs::read_to_string(d.unwrap().path()).unwrap());
            }
        }
        let value = |key: &str| -> Vec<String> {
            text.lines()
                .filter_map(|l| l.strip_prefix(&format!("{key}=")))
                .map(str::to_string)
                .collect()
        };
        let one = |key: &str| value(key).last().cloned();
        let user = one("User").unwrap_or_else(|| "root".into());
        let group = one("Group").unwrap_or_else(|| user.clone());
        let exec = one("ExecStart").unwrap();
        let mut env = Vec::new();
        for dir in value("StateDirectory") {
            let mode = one("StateDirectoryMode").unwrap_or_else(|| "0755".into());
            let mut cmd = self.command("/bin/sh");
            cmd.arg("-c").arg(format!(
                "install -d -m {mode} -o {user} /var/lib/{dir} && chown {user} /var/lib/{dir}"
            ));
            assert_eq!(output(&mut cmd).0, Some(0), "StateDirectory={dir}");
        }
        let creds = value("LoadCredential");
        if !creds.is_empty() {
            let dir = format!("/run/credentials/{unit}.service");
            let mut script = format!("install -d -m 0500 -o {user} {dir}");
            for c in &creds {
                let (name, path) = c.split_once(':').unwrap();
                script.push_str(&format!(
                    " && install -m 0400 -o {user} {path} {dir}/{name}"
                ));
            }
            let mut cmd = self.command("/bin/sh");
            cmd.arg("-c").arg(&script);
            let (code, out, err) = output(&mut cmd);
            assert_eq!(code, Some(0), "LoadCredential: {out}{err}");
            env.push(format!("CREDENTIALS_DIRECTORY={dir}"));
        }
        let log = self.root.join(format!("var/log/{unit}.log"));
        // systemd adds the user's groups (initgroups) to Group=.
        let (_, groups, _) = output(self.command("/usr/bin/id").args(["-Gn", &user]));
        let mut cmd = self.command("/usr/sbin/runuser");
        cmd.args(["-u", &user, "-g", &group]);
        for g in groups.split_whitespace() {
            cmd.args(["-G", g]);
        }
        cmd.arg("--");
        cmd.arg("/usr/bin/env").args(&env);
        cmd.args(exec.split_whitespace());
        let file = std::fs::File::create(&log).unwrap();
        cmd.stdout(file.try_clone().unwrap()).stderr(file);
        let child: Child = cmd.spawn().unwrap();
        // Stopped with everything else running in the root (Drop).
        std::mem::forget(child);
    }

    /// The unit's output so far.
    fn log(&self, unit: &str) -> String {
        std::fs::read_to_string(self.root.join(format!("var/log/{unit}.log"))).unwrap_or_default()
    }

    /// A serial line: the root's /dev/ttyUSB0 is one end (root:dialout
    /// 0660, as a real adapter's node); the other end, for the web host,
    /// is returned.
    fn serial_line(&mut self) -> PathBuf {
        let d = self.links_dir.path();
        let sim = LinkSim::start(Options::new(d.join("signer.tty"), d.join("client.tty"))).unwrap();
        let slave = std::fs::read_link(d.join("signer.tty")).unwrap();
        sh(&format!("chgrp 20 {0} && chmod 0660 {0}", slave.display()));
        std::os::unix::fs::symlink(&slave, self.root.join("dev/ttyUSB0")).unwrap();
        self.link = Some(sim);
        d.join("client.tty")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Every process whose root is this root.
        let me = std::fs::canonicalize(&self.root).unwrap_or_default();
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                if std::fs::read_link(p.path().join("root")).ok().as_deref() == Some(&me) {
                    let pid = p.file_name().to_string_lossy().to_string();
                    let _ = Command::new("kill")
                        .args(["-9", &pid])
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        let r = self.root.display();
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "umount -l {r}/media/usb {r}/dev/pts; for n in null zero full random urandom tty ptmx; do umount -l {r}/dev/$n; done; umount -l {r}/dev {r}/proc; ip netns del {}",
                self.ns
            ))
            .status();
    }
}

/// The cable between A and B: a veth pair with the runbook's addresses.
fn cable(a: &Host, b: &Host) {
    let id = std::process::id() % 100_000;
    sh(&format!(
        "ip link add sa{id} netns {} type veth peer name sb{id} netns {} && \
         ip -n {0} addr add 192.168.100.1/30 dev sa{id} && ip -n {1} addr add 192.168.100.2/30 dev sb{id} && \
         ip -n {0} link set sa{id} up && ip -n {1} link set sb{id} up",
        a.ns, b.ns
    ));
}

fn tarball() -> PathBuf {
    let path = std::env::var_os("SIGNER_DEBIAN_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap())
                .join(".cache/serial-link-signer/bookworm-minbase.tar")
        });
    assert!(
        path.exists(),
        "{} is missing: scripts/setup-debian.sh makes it (debootstrap)",
        path.display()
    );
    path
}

/// The web host's lines, with the signers' serial devices where the
/// runbook has /dev/ttyUSB0 and /dev/ttyUSB1. A `health` line is repeated
/// until it shows what the runbook says it shows (the twins meet within a
/// few state exchanges).
fn web_host(lines: &[String], dir: &Path, usb0: &Path, usb1: &Path) {
    let client = bin("signer-client");
    for line in lines {
        let line = line
            .replace("/dev/ttyUSB0", &usb0.display().to_string())
            .replace("/dev/ttyUSB1", &usb1.display().to_string())
            .replace("signer-client ", &format!("{} ", client.display()));
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (code, out, err) = output(
                Command::new("bash")
                    .args(["-e", "-c", &line])
                    .current_dir(dir),
            );
            let health = line.contains(" health");
            let agreed = out.contains("replication:peer")
                && out.contains("ok")
                && out
                    .lines()
                    .any(|l| l.contains("replication:agreement") && l.contains("in sync"));
            if code == Some(0) && (!health || agreed) {
                break;
            }
            assert!(Instant::now() < deadline, "{line}\n{out}{err}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

#[test]
fn the_ceremonies_run_as_written_on_debian() {
    let am_root = output(Command::new("id").arg("-u")).1.trim() == "0";
    assert!(am_root, "needs root: chroot, mounts and network namespaces");
    let tarball = tarball();
    let debs = tempfile::tempdir().unwrap();
    let deb = signer_testsupport::package_deb("signer", debs.path());
    let doc = include_str!("../docs/operations.md");
    let install: Vec<String> = block_install(doc);

    // One signer.
    let usb = tempfile::tempdir().unwrap();
    let mut single = Host::new("single", &tarball, &deb, usb.path());
    single.run(&install);
    let device = single.serial_line();
    single.run(&block(doc, "single"));
    let web = tempfile::tempdir().unwrap();
    let first = block(doc, "pair-web");
    // The single signer has no twin: its health and first certificate.
    let (health, sign): (Vec<_>, Vec<_>) = first
        .iter()
        .filter(|l| l.contains("ttyUSB0") || l.starts_with("openssl"))
        .cloned()
        .partition(|l| l.contains(" health"));
    let mut waited = Instant::now();
    loop {
        let (code, out, err) = output(
            Command::new(bin("signer-client"))
                .args(["--link"])
                .arg(&device)
                .arg("health"),
        );
        if code == Some(0) {
            assert!(!out.contains("replication:"), "{out}");
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "{out}{err}\n{}",
            single.log("signerd")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(!health.is_empty());
    web_host(&sign, web.path(), &device, &device);
    assert!(std::fs::read_to_string(web.path().join("www.pem"))
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    drop(single);

    // A pair.
    let usb = tempfile::tempdir().unwrap();
    let mut a = Host::new("a", &tarball, &deb, usb.path());
    let mut b = Host::new("b", &tarball, &deb, usb.path());
    cable(&a, &b);
    a.run(&install);
    b.run(&install);
    let usb0 = a.serial_line();
    let usb1 = b.serial_line();
    a.run(&block(doc, "pair-a"));
    b.run(&block(doc, "pair-b"));
    let own = block(doc, "pair-own");
    a.run(&own);
    b.run(&on_b(&own));
    let start = block(doc, "pair-start");
    a.run(&start);
    b.run(&on_b(&start));
    waited = Instant::now();
    let web = tempfile::tempdir().unwrap();
    let result = std::panic::catch_unwind(|| web_host(&first, web.path(), &usb0, &usb1));
    if let Err(panic) = result {
        eprintln!(
            "after {:?}\nsignerd a:\n{}\nsignerd b:\n{}\nnats a:\n{}",
            waited.elapsed(),
            a.log("signerd"),
            b.log("signerd"),
            a.log("nats-server")
        );
        std::panic::resume_unwind(panic);
    }
    // B answered A's certificate: the same serial, A's prefix.
    let pem = std::fs::read_to_string(web.path().join("www-b.pem")).unwrap();
    assert!(pem.contains("BEGIN CERTIFICATE"));
}

/// The Install section's install line, run in the root where the .deb was
/// copied.
fn block_install(doc: &str) -> Vec<String> {
    let line = doc
        .lines()
        .find(|l| l.starts_with("sudo apt install ./serial-link-signer_*.deb"))
        .expect("the install line");
    let command = line.split("  #").next().unwrap().trim();
    vec![format!(
        "cd /root && {}",
        command.strip_prefix("sudo ").unwrap()
    )]
}
