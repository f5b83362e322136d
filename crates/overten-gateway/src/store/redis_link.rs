//! How a `RedisStore` reaches Redis: one node, a Redis Cluster, or the primary that a set of
//! Sentinels names. One URL says which:
//!
//! - `redis://HOST:PORT[/DB]` (and every other form the `redis` crate reads: `rediss://`,
//!   `unix://`): one node, through `redis::aio::ConnectionManager`, which reconnects by
//!   itself;
//! - `redis+cluster://[USER:PASS@]HOST:PORT[,HOST:PORT…]`: a Redis Cluster, from any
//!   reachable seed nodes, through the `redis` crate's cluster client (it follows `MOVED`
//!   and `ASK`, and reloads the slot map after a failover);
//! - `redis+sentinel://[USER:PASS@]HOST:PORT[,HOST:PORT…]/SERVICE[/DB]`: the primary of
//!   `SERVICE` as the Sentinels at those addresses name it (the credentials and the
//!   database are the primary's). The primary is asked for again after a failure that says
//!   it is gone or no longer primary (a refused or dropped connection, a timeout,
//!   `READONLY`), so a failover is followed within one store timeout of the promotion.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, Cmd, ConnectionAddr, Pipeline, RedisError, RedisFuture, Value};

/// The most seed nodes or Sentinels one URL may name.
const MAX_ADDRESSES: usize = 64;

/// A URL that names no Redis deployment this store can reach.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// `redis+cluster://` or `redis+sentinel://` with no `HOST:PORT`.
    #[error("{scheme} names no HOST:PORT")]
    NoAddress {
        /// The URL's scheme.
        scheme: &'static str,
    },
    /// One of the addresses is not `HOST:PORT` with a port from 1 to 65535.
    #[error("{address:?} is not HOST:PORT")]
    BadAddress {
        /// The address as written (at most 64 characters of it).
        address: String,
    },
    /// More than 64 addresses.
    #[error("more than {MAX_ADDRESSES} addresses")]
    TooManyAddresses,
    /// `redis+sentinel://` without `/SERVICE`, or a service name that is not 1 to 64
    /// letters, digits, `.`, `_` or `-`.
    #[error("redis+sentinel:// needs /SERVICE (1 to 64 letters, digits, '.', '_' or '-')")]
    BadService,
    /// A database that is not a number.
    #[error("the database is not a number")]
    BadDatabase,
}

/// Where the store's connections go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// One node: a URL for the `redis` crate.
    Node(String),
    /// A cluster, from these seed nodes (`redis://HOST:PORT`).
    Cluster {
        nodes: Vec<String>,
        user: Option<String>,
        password: Option<String>,
    },
    /// The primary of `service`, as these Sentinels name it.
    Sentinel {
        sentinels: Vec<(String, u16)>,
        service: String,
        user: Option<String>,
        password: Option<String>,
        db: i64,
    },
}

impl Target {
    /// Reads `url`.
    pub(crate) fn parse(url: &str) -> Result<Target, UrlError> {
        if let Some(rest) = url.strip_prefix("redis+cluster://") {
            let (user, password, rest) = credentials(rest);
            let hosts = rest.strip_suffix('/').unwrap_or(rest);
            let nodes = addresses(hosts, "redis+cluster://")?
                .into_iter()
                .map(|(host, port)| format!("redis://{}:{port}/", bracket(&host)))
                .collect();
            return Ok(Target::Cluster {
                nodes,
                user,
                password,
            });
        }
        if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            let (user, password, rest) = credentials(rest);
            let (hosts, path) = rest.split_once('/').ok_or(UrlError::BadService)?;
            let sentinels = addresses(hosts, "redis+sentinel://")?;
            let path = path.strip_suffix('/').unwrap_or(path);
            let (service, db) = match path.split_once('/') {
                Some((service, db)) => (
                    service,
                    db.parse::<i64>().map_err(|_| UrlError::BadDatabase)?,
                ),
                None => (path, 0),
            };
            let valid = (1..=64).contains(&service.len())
                && service
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !valid {
                return Err(UrlError::BadService);
            }
            return Ok(Target::Sentinel {
                sentinels,
                service: service.to_owned(),
                user,
                password,
                db,
            });
        }
        Ok(Target::Node(url.to_owned()))
    }

    /// `"node"`, `"cluster"` or `"sentinel"`: for logs and `Debug`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Target::Node(_) => "node",
            Target::Cluster { .. } => "cluster",
            Target::Sentinel { .. } => "sentinel",
        }
    }

    /// Connects, each connection and each answer bounded by `timeout`.
    pub(crate) async fn connect(&self, timeout: Duration) -> Result<Link, RedisError> {
        match self {
            Target::Node(url) => {
                let client = redis::Client::open(url.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(20))
                    .set_max_delay(Duration::from_millis(200));
                let conn = ConnectionManager::new_with_config(client, config).await?;
                Ok(Link::Node(conn))
            }
            Target::Cluster {
                nodes,
                user,
                password,
            } => {
                let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(2)
                    .min_retry_wait(10)
                    .max_retry_wait(100);
                if let Some(user) = user {
                    builder = builder.username(user.clone());
                }
                if let Some(password) = password {
                    builder = builder.password(password.clone());
                }
                let conn = builder.build()?.get_async_connection().await?;
                Ok(Link::Cluster(conn))
            }
            Target::Sentinel {
                sentinels,
                service,
                user,
                password,
                db,
            } => {
                let addrs = sentinels
                    .iter()
                    .map(|(host, port)| ConnectionAddr::Tcp(host.clone(), *port));
                let mut builder =
                    SentinelClientBuilder::new(addrs, service, SentinelServerType::Master)?
                        .set_client_to_redis_db(*db);
                if let Some(user) = user {
                    builder = builder.set_client_to_redis_username(user.clone());
                }
                if let Some(password) = password {
                    builder = builder.set_client_to_redis_password(password.clone());
                }
                let primary = Arc::new(Primary {
                    sentinels: tokio::sync::Mutex::new(builder.build()?),
                    current: RwLock::new(None),
                    generations: AtomicU64::new(0),
                    config: AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(timeout))
                        .set_response_timeout(Some(timeout)),
                });
                // The first connection now, so a wrong URL fails at start.
                primary.conn().await?;
                Ok(Link::Sentinel(primary))
            }
        }
    }
}

/// `USER:PASS@` at the start of `rest`, if any.
fn credentials(rest: &str) -> (Option<String>, Option<String>, &str) {
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => {
            let auth = &rest[..at];
            let (user, password) = match auth.split_once(':') {
                Some((u, p)) => (u, Some(p.to_owned())),
                None => ("", Some(auth.to_owned())),
            };
            let user = (!user.is_empty()).then(|| user.to_owned());
            let password = password.filter(|p| !p.is_empty());
            (user, password, &rest[at + 1..])
        }
        None => (None, None, rest),
    }
}

/// `HOST:PORT[,HOST:PORT…]`; IPv6 hosts in brackets.
fn addresses(list: &str, scheme: &'static str) -> Result<Vec<(String, u16)>, UrlError> {
    let mut out = Vec::new();
    for address in list.split(',').filter(|a| !a.is_empty()) {
        if out.len() == MAX_ADDRESSES {
            return Err(UrlError::TooManyAddresses);
        }
        let bad = || UrlError::BadAddress {
            address: address.chars().take(64).collect(),
        };
        let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port: u16 = port.parse().map_err(|_| bad())?;
        // A DNS name is at most 253 characters; an IPv6 address far less.
        let host_ok = (1..=253).contains(&host.len())
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b));
        if port == 0 || !host_ok {
            return Err(bad());
        }
        out.push((host.to_owned(), port));
    }
    if out.is_empty() {
        return Err(UrlError::NoAddress { scheme });
    }
    Ok(out)
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// The connections of a store: cloned for every call (each is a handle on one multiplexed
/// connection or a pool of them).
#[derive(Clone)]
pub(crate) enum Link {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<Primary>),
}

impl Link {
    /// A connection for one call, and the generation it belongs to (for [`Link::failed`]).
    pub(crate) async fn conn(&self) -> Result<(Conn, u64), RedisError> {
        Ok(match self {
            Link::Node(c) => (Conn::Node(c.clone()), 0),
            Link::Cluster(c) => (Conn::Cluster(c.clone()), 0),
            Link::Sentinel(p) => {
                let (conn, generation) = p.conn().await?;
                (Conn::Primary(conn), generation)
            }
        })
    }

    /// A call on generation `generation` failed with `error` (`None`: it timed out). With
    /// Sentinel, an error that says the primary is gone or demoted makes the next call ask
    /// the Sentinels again.
    pub(crate) fn failed(&self, generation: u64, error: Option<&RedisError>) {
        if let Link::Sentinel(p) = self {
            if primary_gone(error) {
                p.forget(generation);
            }
        }
    }
}

/// Whether a call's failure (`None`: it timed out) says the primary it went to is gone or
/// no longer primary: the connection refused, dropped or broken, no answer in time, or
/// `READONLY` (a demoted primary that came back as a replica). Any other error (a script's,
/// the server's) is the call's own.
fn primary_gone(error: Option<&RedisError>) -> bool {
    error.is_none_or(|e| {
        e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
    })
}

/// The primary a Sentinel set names, connected once and asked for again when it fails.
pub(crate) struct Primary {
    sentinels: tokio::sync::Mutex<SentinelClient>,
    current: RwLock<Option<(u64, MultiplexedConnection)>>,
    generations: AtomicU64,
    config: AsyncConnectionConfig,
}

impl Primary {
    async fn conn(&self) -> Result<(MultiplexedConnection, u64), RedisError> {
        if let Some((generation, conn)) = self.cached() {
            return Ok((conn, generation));
        }
        // One caller asks the Sentinels; the others wait for its answer.
        let mut sentinels = self.sentinels.lock().await;
        if let Some((generation, conn)) = self.cached() {
            return Ok((conn, generation));
        }
        let client = sentinels.async_get_client().await?;
        let conn = client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) =
            Some((generation, conn.clone()));
        Ok((conn, generation))
    }

    fn cached(&self) -> Option<(u64, MultiplexedConnection)> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn forget(&self, generation: u64) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        // A late failure of an older connection must not forget a newer one.
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            *current = None;
        }
    }
}

/// One call's connection.
#[derive(Clone)]
pub(crate) enum Conn {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
    Primary(MultiplexedConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Primary(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Primary(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Primary(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_node_a_cluster_or_a_sentinel_set() {
        assert_eq!(
            Target::parse("redis://127.0.0.1:6379/0"),
            Ok(Target::Node("redis://127.0.0.1:6379/0".into()))
        );
        assert_eq!(
            Target::parse("redis+cluster://10.0.0.1:7000,10.0.0.2:7001/"),
            Ok(Target::Cluster {
                nodes: vec![
                    "redis://10.0.0.1:7000/".into(),
                    "redis://10.0.0.2:7001/".into()
                ],
                user: None,
                password: None,
            })
        );
        assert_eq!(
            Target::parse("redis+cluster://app:s3cret@[::1]:7000"),
            Ok(Target::Cluster {
                nodes: vec!["redis://[::1]:7000/".into()],
                user: Some("app".into()),
                password: Some("s3cret".into()),
            })
        );
        assert_eq!(
            Target::parse("redis+sentinel://:pw@s1:26379,s2:26380/mymaster/2"),
            Ok(Target::Sentinel {
                sentinels: vec![("s1".into(), 26379), ("s2".into(), 26380)],
                service: "mymaster".into(),
                user: None,
                password: Some("pw".into()),
                db: 2,
            })
        );
    }

    #[test]
    fn a_primary_is_asked_for_again_only_when_it_is_gone() {
        let io = |kind| RedisError::from(std::io::Error::from(kind));
        assert!(primary_gone(None), "a timeout");
        assert!(primary_gone(Some(&io(
            std::io::ErrorKind::ConnectionRefused
        ))));
        assert!(primary_gone(Some(&io(std::io::ErrorKind::BrokenPipe))));
        assert!(primary_gone(Some(&io(std::io::ErrorKind::ConnectionReset))));
        let readonly = RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
            "You can't write against a read only replica.",
        ));
        assert!(primary_gone(Some(&readonly)));
        for kind in [
            redis::ErrorKind::UnexpectedReturnType,
            redis::ErrorKind::Parse,
            redis::ErrorKind::Server(redis::ServerErrorKind::NoScript),
        ] {
            assert!(
                !primary_gone(Some(&RedisError::from((kind, "x")))),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn each_target_names_its_kind() {
        let kinds: Vec<&str> = [
            "redis://h:1",
            "redis+cluster://h:1",
            "redis+sentinel://h:1/m",
        ]
        .iter()
        .map(|u| Target::parse(u).unwrap().kind())
        .collect();
        assert_eq!(kinds, ["node", "cluster", "sentinel"]);
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        assert_eq!(
            Target::parse("redis+cluster://"),
            Err(UrlError::NoAddress {
                scheme: "redis+cluster://"
            })
        );
        assert!(matches!(
            Target::parse("redis+cluster://host"),
            Err(UrlError::BadAddress { .. })
        ));
        assert!(matches!(
            Target::parse("redis+cluster://host:0"),
            Err(UrlError::BadAddress { .. })
        ));
        assert!(matches!(
            Target::parse("redis+cluster://host:70000"),
            Err(UrlError::BadAddress { .. })
        ));
        assert!(matches!(
            Target::parse("redis+cluster://ho st:1"),
            Err(UrlError::BadAddress { .. })
        ));
        assert_eq!(
            Target::parse("redis+sentinel://s1:26379"),
            Err(UrlError::BadService)
        );
        assert_eq!(
            Target::parse("redis+sentinel://s1:26379/"),
            Err(UrlError::BadService)
        );
        assert_eq!(
            Target::parse("redis+sentinel://s1:26379/a b"),
            Err(UrlError::BadService)
        );
        assert_eq!(
            Target::parse("redis+sentinel://s1:26379/m/x"),
            Err(UrlError::BadDatabase)
        );
        let many = vec!["h:1"; MAX_ADDRESSES + 1].join(",");
        assert_eq!(
            Target::parse(&format!("redis+cluster://{many}")),
            Err(UrlError::TooManyAddresses)
        );
        let long_host = format!("redis+cluster://{}:7000", "h".repeat(254));
        assert!(matches!(
            Target::parse(&long_host),
            Err(UrlError::BadAddress { .. })
        ));
        assert!(Target::parse(&format!("redis+cluster://{}:7000", "h".repeat(253))).is_ok());
        let long = format!("redis+cluster://{}", "x".repeat(10_000));
        match Target::parse(&long) {
            Err(UrlError::BadAddress { address }) => assert_eq!(address.len(), 64),
            other => panic!("{other:?}"),
        }
    }
}
