//! The Redis deployments the gateway promises, from Debian's `redis-server` on free loopback
//! ports, stopped by PID: a Redis Cluster of 3 primaries and 3 replicas
//! (`redis-cli --cluster create`), and one primary, one replica and three Sentinels
//! (`redis-server --sentinel`).
#![allow(dead_code, unreachable_pub, reason = "each test file uses a part")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support"
)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::redis_server::{RedisServer, free_port};

/// `redis-cli -p PORT ARGS…`, its stdout; `None` if it failed.
pub fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: not within {secs} s");
}

/// A Redis Cluster: 3 primaries, each with one replica; a node that fails is failed over
/// after 1 s (`cluster-node-timeout 1000`).
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-replica-validity-factor",
                    "0",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = Command::new("redis-cli")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| {
                panic!("redis-cli could not run ({e}): apt-get install -y redis-server")
            });
        assert!(out.success(), "redis-cli --cluster create failed");
        let cluster = RedisCluster { nodes };
        wait_for("every node sees cluster_state:ok", 30, || {
            cluster.nodes.iter().all(|n| {
                cli(n.port(), &["cluster", "info"]).is_some_and(|i| i.contains("cluster_state:ok"))
            })
        });
        // A replica's first sync waits for `repl-diskless-sync-delay` (5 s): a failover
        // before it would promote an empty replica.
        wait_for("every replica is in sync with its primary", 60, || {
            cluster.nodes.iter().all(|n| {
                cli(n.port(), &["info", "replication"]).is_some_and(|i| {
                    i.contains("role:master") || i.contains("master_link_status:up")
                })
            })
        });
        cluster
    }

    /// `redis+cluster://` with two seeds.
    pub fn url(&self) -> String {
        format!(
            "redis+cluster://127.0.0.1:{},127.0.0.1:{}",
            self.nodes[0].port(),
            self.nodes[1].port()
        )
    }

    /// The index of the node that is primary for `slot`.
    pub fn primary_of_slot(&self, slot: u16) -> usize {
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(nodes) = cli(n.port(), &["cluster", "nodes"]) else {
                continue;
            };
            for line in nodes.lines() {
                let fields: Vec<&str> = line.split(' ').collect();
                if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                    continue;
                }
                let serves = fields[8..].iter().any(|range| match range.split_once('-') {
                    Some((a, b)) => {
                        a.parse::<u16>().is_ok_and(|a| a <= slot)
                            && b.parse::<u16>().is_ok_and(|b| slot <= b)
                    }
                    None => range.parse::<u16>() == Ok(slot),
                });
                if serves {
                    let port: u16 = fields[1]
                        .split('@')
                        .next()
                        .and_then(|a| a.rsplit(':').next())
                        .and_then(|p| p.parse().ok())
                        .unwrap();
                    return self.nodes.iter().position(|n| n.port() == port).unwrap();
                }
            }
            let _ = i;
        }
        panic!("no primary for slot {slot}");
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot(&self, key: &str) -> u16 {
        self.nodes
            .iter()
            .find_map(|n| cli(n.port(), &["cluster", "keyslot", key]))
            .and_then(|s| s.trim().parse().ok())
            .unwrap()
    }
}

/// One primary, one replica, three Sentinels watching them as `overten` (quorum 2, the
/// primary down after 1 s).
pub struct RedisSentinels {
    pub primary: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<RedisServer>,
}

/// The service name the Sentinels watch.
pub const SERVICE: &str = "overten";

impl RedisSentinels {
    pub fn start() -> RedisSentinels {
        let primary = RedisServer::start();
        let replica_of = primary.port().to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &replica_of]);
        wait_for("the replica is in sync", 30, || {
            cli(replica.port(), &["info", "replication"])
                .is_some_and(|i| i.contains("master_link_status:up"))
        });
        let sentinels = (0..3)
            .map(|_| {
                let port = free_port();
                let dir = std::env::temp_dir()
                    .join(format!("overten-sentinel-{}-{port}", std::process::id()));
                std::fs::create_dir_all(&dir).unwrap();
                let conf = dir.join("sentinel.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "port {port}\nbind 127.0.0.1\ndir {}\n\
                         sentinel monitor {SERVICE} 127.0.0.1 {} 2\n\
                         sentinel down-after-milliseconds {SERVICE} 1000\n\
                         sentinel failover-timeout {SERVICE} 5000\n\
                         sentinel parallel-syncs {SERVICE} 1\n",
                        dir.display(),
                        primary.port()
                    ),
                )
                .unwrap();
                RedisServer::start_sentinel(port, dir, &conf)
            })
            .collect::<Vec<_>>();
        let set = RedisSentinels {
            primary,
            replica,
            sentinels,
        };
        wait_for(
            "every Sentinel knows the replica and the others",
            30,
            || {
                set.sentinels.iter().all(|s| {
                    let replicas = cli(s.port(), &["sentinel", "replicas", SERVICE]);
                    let others = cli(s.port(), &["sentinel", "sentinels", SERVICE]);
                    replicas.is_some_and(|r| r.contains(&set.replica.port().to_string()))
                        && others.is_some_and(|o| o.matches("name").count() >= 2)
                })
            },
        );
        set
    }

    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect();
        format!("redis+sentinel://{}/{SERVICE}", hosts.join(","))
    }

    /// The port the Sentinels name as primary now.
    pub fn primary_port(&self) -> Option<u16> {
        let out = cli(
            self.sentinels[0].port(),
            &["sentinel", "get-master-addr-by-name", SERVICE],
        )?;
        out.lines().nth(1)?.trim().parse().ok()
    }
}
