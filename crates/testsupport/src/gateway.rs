//! The web host's side in tests: a throwaway PostgreSQL server and running
//! `signer-gateway` processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's PostgreSQL server programs.
fn pg_bin(name: &str) -> PathBuf {
    let base = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(base)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    versions.sort();
    match versions.last() {
        Some(v) => v.join("bin").join(name),
        None => panic!(
            "no PostgreSQL server under {} (apt install postgresql)",
            base.display()
        ),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// A PostgreSQL server of its own, on a Unix socket in a temporary
/// directory (no TCP port), stopped on drop. As root, it runs as the
/// `postgres` user (PostgreSQL refuses to run as root).
pub struct Postgres {
    dir: tempfile::TempDir,
    as_postgres: bool,
}

impl Postgres {
    /// Creates the cluster, starts the server and creates database `queue`.
    pub fn start() -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("pg")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let as_postgres = is_root();
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown the cluster directory to postgres");
        }
        let pg = Postgres { dir, as_postgres };
        let data = pg.dir.path().join("data");
        pg.run(
            &pg_bin("initdb"),
            &[
                "-D",
                &data.to_string_lossy(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        let options = format!(
            "-k {} -c listen_addresses='' -c fsync=off",
            pg.dir.path().display()
        );
        pg.run(
            &pg_bin("pg_ctl"),
            &[
                "-D",
                &data.to_string_lossy(),
                "-l",
                &pg.dir.path().join("log").to_string_lossy(),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
        pg.run(
            &pg_bin("createdb"),
            &[
                "-h",
                &pg.dir.path().to_string_lossy(),
                "-U",
                "postgres",
                "queue",
            ],
        );
        pg
    }

    fn run(&self, program: &Path, args: &[&str]) -> String {
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run a PostgreSQL program");
        assert!(
            out.status.success(),
            "{} {args:?}: {}{}",
            program.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The connection string for database `queue`.
    pub fn params(&self) -> String {
        format!(
            "host={} user=postgres dbname=queue",
            self.dir.path().display()
        )
    }

    /// Runs SQL with psql; its output (unaligned, tuples only).
    pub fn psql(&self, sql: &str) -> String {
        self.run(
            Path::new("psql"),
            &[
                "-h",
                &self.dir.path().to_string_lossy(),
                "-U",
                "postgres",
                "-d",
                "queue",
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-c",
                sql,
            ],
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(pg_bin("pg_ctl"));
            c
        } else {
            Command::new(pg_bin("pg_ctl"))
        };
        let _ = cmd
            .args(["-D", &data.to_string_lossy(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A running `signer-gateway run`, killed on drop.
pub struct Gateway {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
}

impl Gateway {
    /// Writes `yaml` to `dir/NAME.yaml` and starts the gateway on it.
    pub fn start(dir: &Path, name: &str, yaml: &str) -> Gateway {
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(&config, yaml).expect("write gateway config");
        let mut g = Gateway {
            child: None,
            config,
            log: dir.join(format!("{name}.log")),
        };
        g.spawn();
        g
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open gateway log");
        let child = Command::new(crate::bin("signer-gateway"))
            .args(["run", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start signer-gateway");
        self.child = Some(child);
    }

    /// Its process id (0 when stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Its configuration file.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again (after `kill`).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGTERM; waits for its exit status.
    pub fn stop(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Runs `signer-gateway ARGS --config <this config>`: (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (Option<i32>, String, String) {
        crate::output(
            Command::new(crate::bin("signer-gateway"))
                .args(args)
                .arg("--config")
                .arg(&self.config),
        )
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}
