//! A `redis-server` (Debian's package) of a test's own, on a free loopback port.
#![allow(dead_code, unreachable_pub, reason = "each test file uses a part")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support"
)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` of this test's own, killed (by PID) when dropped.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
}

/// A free loopback port (bound, then let go).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A free loopback port whose cluster bus port (`port + 10000`) is free too.
pub fn free_cluster_port() -> u16 {
    for _ in 0..100 {
        let port = free_port();
        if port <= 55_535 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port with a free cluster bus port in 100 tries");
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// A server with these arguments added (`--cluster-enabled yes`, `--replicaof …`).
    ///
    /// A free port can be taken between the moment it is found and the server's bind (and a
    /// cluster node also binds `port + 10000`, its bus): a server that exits, or does not
    /// answer, is started again on another port, at most five times.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let cluster = extra.contains(&"--cluster-enabled");
        for _ in 0..5 {
            let port = if cluster {
                free_cluster_port()
            } else {
                free_port()
            };
            let dir =
                std::env::temp_dir().join(format!("overten-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut server = RedisServer {
                child: None,
                port,
                dir,
                extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            };
            server.launch();
            if server.answers(Duration::from_secs(10)) {
                return server;
            }
            // Dropped: killed by PID, its files removed; the next try takes another port.
        }
        panic!("redis-server did not start on five free ports in a row");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Starts (or restarts) the server on its port and waits for its PING.
    pub fn spawn(&mut self) {
        self.launch();
        self.wait_for_ping();
    }

    fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(&self.extra)
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server could not start ({e}): apt-get install -y redis-server")
            });
        self.child = Some(child);
    }

    /// Whether the server answers PING within `within` (false at once if it exited).
    fn answers(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if ping(self.port) {
                return true;
            }
            if let Some(child) = self.child.as_mut() {
                if child.try_wait().ok().flatten().is_some() {
                    return false;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn wait_for_ping(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if ping(self.port) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} did not answer PING within 10 s",
            self.port
        );
    }

    /// `redis-server CONF --sentinel` on `port`, its files in `dir`.
    pub fn start_sentinel(port: u16, dir: PathBuf, conf: &std::path::Path) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            extra: Vec::new(),
        };
        let child = Command::new("redis-server")
            .arg(conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server could not start ({e}): apt-get install -y redis-server")
            });
        server.child = Some(child);
        server.wait_for_ping();
        server
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0; 16];
    s.write_all(b"PING\r\n").is_ok()
        && s.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
}
