//! A throw-away `redis-server` for tests (this crate's and `tests/`): started on a free loopback
//! port with a temporary directory and no persistence, killed with its handle. Hidden from the
//! docs and never used by production code; panics on any error, as a test should.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a server may take to say it is ready.
const READY_BOUND: Duration = Duration::from_secs(15);

/// Options for one server.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// An ACL user `(name, password)` with every right; the `default` user is then disabled.
    pub user: Option<(String, String)>,
    /// Serve TLS only: `(cert, key, ca)` PEM files.
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    opts: RedisOptions,
}

/// Whether `redis-server` can be run. Without it tests skip, unless `PASSGATE_REQUIRE_TOOLS` is
/// set (CI), where its absence fails.
pub fn available() -> bool {
    let ok = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("PASSGATE_REQUIRE_TOOLS").is_err(),
            "redis-server missing: apt-get install redis-server"
        );
        eprintln!("SKIPPED: redis-server not installed (apt-get install redis-server)");
    }
    ok
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("local addr").port()
}

impl RedisServer {
    pub fn start(opts: RedisOptions) -> RedisServer {
        let dir = std::env::temp_dir().join(format!(
            "passgate-redis-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let mut s = RedisServer {
            child: None,
            port: 0,
            dir,
            opts,
        };
        // The port is free when picked; another process may take it before redis binds it.
        for _ in 0..5 {
            s.port = free_port();
            if s.spawn() {
                return s;
            }
        }
        panic!("redis-server did not start on a free port (5 attempts)");
    }

    fn conf(&self) -> PathBuf {
        let mut c = format!(
            "bind 127.0.0.1\nprotected-mode no\nsave \"\"\nappendonly no\ndir {}\nlogfile \"\"\ndaemonize no\n",
            self.dir.as_path().display()
        );
        match &self.opts.tls {
            Some((cert, key, ca)) => c.push_str(&format!(
                "port 0\ntls-port {}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients no\n",
                self.port,
                cert.display(),
                key.display(),
                ca.display()
            )),
            None => c.push_str(&format!("port {}\n", self.port)),
        }
        if let Some((user, pass)) = &self.opts.user {
            c.push_str(&format!(
                "user default off\nuser {user} on >{pass} ~* &* +@all\n"
            ));
        }
        let path = self.dir.as_path().join("redis.conf");
        std::fs::write(&path, c).expect("redis.conf written");
        path
    }

    /// Starts the process and waits (bounded) for "Ready to accept connections"; false if it
    /// exited first (e.g. the port was taken).
    fn spawn(&mut self) -> bool {
        let conf = self.conf();
        let mut child = Command::new("redis-server")
            .arg(&conf)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + READY_BOUND;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains("Ready to accept connections") => {
                    self.child = Some(child);
                    return true;
                }
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("redis-server not ready within {READY_BOUND:?}");
                }
            }
        }
    }

    /// `redis://127.0.0.1:PORT/0` (or `rediss://localhost:PORT/0` for a TLS server).
    pub fn url(&self) -> String {
        if self.opts.tls.is_some() {
            format!("rediss://localhost:{}/0", self.port)
        } else {
            format!("redis://127.0.0.1:{}/0", self.port)
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_path()
    }

    /// Kills the server (SIGKILL: an outage, not a shutdown) and waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server: a Redis that accepts but never answers.
    pub fn freeze(&self, frozen: bool) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let sig = if frozen { "-STOP" } else { "-CONT" };
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    }

    /// Starts it again on the same port, empty (no persistence).
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + READY_BOUND;
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
