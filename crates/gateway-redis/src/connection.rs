//! One multiplexed Redis connection shared by every call, reconnected after a failure; to a
//! single Redis or to a Redis Cluster.
//!
//! A pool would hand out a connection per call and, to check it, send a `PING` first: a
//! second round trip on the hot path. A multiplexed connection pipelines concurrent commands
//! over one socket instead, so each limiter call is exactly one round trip. In a cluster the
//! connection holds one such socket per master and sends each command to the master of its
//! keys' slot (redis-rs' cluster client, which follows `MOVED` and `ASK` and splits `MGET`,
//! `MSET` and `DEL` by slot). Subscriptions need a connection of their own (a subscribed
//! connection takes no other command); they are made by [`RedisConn::subscriber`], in a
//! cluster to any one node (a cluster forwards every `PUBLISH` to every node).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection, PubSub};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

/// The gateway's Redis: cheap to clone, every clone shares the one connection.
#[derive(Clone)]
pub struct RedisConn {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    slot: Mutex<Option<Conn>>,
    /// One connection attempt at a time; the others wait for its result.
    connecting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection info may hold a password: never printed.
        f.debug_struct("RedisConn").finish_non_exhaustive()
    }
}

/// What the connection goes to.
enum Target {
    Single(redis::Client),
    Cluster {
        client: Box<ClusterClient>,
        /// Each seed node on its own, for subscriptions; tried in turn.
        nodes: Vec<redis::Client>,
        next: AtomicUsize,
    },
}

/// The shared connection: cheap to clone (every clone pipelines over the same sockets).
#[derive(Clone)]
pub enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Single(_) => "Conn::Single",
            Conn::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Why Redis could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisError {
    #[error("redis failed")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis answered PING with {0:?}")]
    Unexpected(String),
    #[error("invalid redis URL: {0}")]
    Url(&'static str),
}

impl RedisConn {
    /// Parses `url` and connects on first use, so a Redis that is down at start is reached
    /// once it is up. A single Redis is `redis://[:password@]host:port[/db]` (or `rediss://`);
    /// a cluster is `redis+cluster://[:password@]host:port[,host:port...]` (or
    /// `rediss+cluster://`), or a comma-separated list of `redis://` URLs, one per seed node
    /// (any of its nodes will do: the others are found from them).
    pub fn open(url: &str) -> Result<Self, RedisError> {
        match cluster_nodes(url) {
            Some(nodes) if nodes.is_empty() => {
                Err(RedisError::Unexpected("a cluster URL names no node".to_owned()))
            }
            Some(nodes) => {
                let client = ClusterClient::builder(nodes.iter().map(String::as_str))
                    // The caller's timeout bounds each call; the client's own retries are for
                    // slots that move, not for dead nodes.
                    .retries(2)
                    .build()?;
                let nodes = nodes
                    .iter()
                    .map(|n| redis::Client::open(n.as_str()))
                    .collect::<Result<_, _>>()?;
                Ok(Self::with(Target::Cluster {
                    client: Box::new(client),
                    nodes,
                    next: AtomicUsize::new(0),
                }))
            }
            None => Ok(Self::from_client(redis::Client::open(url)?)),
        }
    }

    pub fn from_client(client: redis::Client) -> Self {
        Self::with(Target::Single(client))
    }

    fn with(target: Target) -> Self {
        Self {
            inner: Arc::new(Inner {
                target,
                slot: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Whether this is a Redis Cluster: then one script call may only touch keys of one slot.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.target, Target::Cluster { .. })
    }

    fn current(&self) -> Option<Conn> {
        self.inner.slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The shared connection, connecting first if there is none.
    pub async fn get(&self) -> redis::RedisResult<Conn> {
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let _one_at_a_time = self.inner.connecting.lock().await;
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let conn = match &self.inner.target {
            Target::Single(client) => {
                Conn::Single(client.get_multiplexed_async_connection().await?)
            }
            Target::Cluster { client, .. } => Conn::Cluster(client.get_async_connection().await?),
        };
        *self.inner.slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(conn.clone());
        Ok(conn)
    }

    /// Drops the connection after an error that may have broken it; the next call reconnects.
    pub fn reset(&self) {
        *self.inner.slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// Drops the connection if `e` may have broken it.
    pub fn check(&self, e: &redis::RedisError) {
        if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
            self.reset();
        }
    }

    /// Runs `cmd` on the shared connection within `timeout`.
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        timeout: Duration,
    ) -> Result<T, RedisError> {
        let run = async {
            let mut conn = self.get().await?;
            cmd.query_async::<T>(&mut conn).await
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.check(&e);
                Err(e.into())
            }
            Err(_) => {
                self.reset();
                Err(RedisError::Timeout(timeout))
            }
        }
    }

    /// `PING`, for readiness: Ok when Redis answers `PONG` within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<(), RedisError> {
        let pong: String = self.query(&redis::cmd("PING"), timeout).await?;
        if pong == "PONG" { Ok(()) } else { Err(RedisError::Unexpected(pong)) }
    }

    /// A connection of its own for subscriptions, within `timeout`; in a cluster, to the next
    /// seed node in turn (each attempt tries another, so a dead node is skipped).
    pub async fn subscriber(&self, timeout: Duration) -> Result<PubSub, RedisError> {
        let client = match &self.inner.target {
            Target::Single(client) => client,
            Target::Cluster { nodes, next, .. } => {
                let i = next.fetch_add(1, Ordering::Relaxed);
                &nodes[i % nodes.len()]
            }
        };
        tokio::time::timeout(timeout, client.get_async_pubsub())
            .await
            .map_err(|_| RedisError::Timeout(timeout))?
            .map_err(Into::into)
    }
}

/// The seed nodes' URLs when `url` names a cluster: `redis+cluster://auth@h1:p1,h2:p2/` (the
/// credentials apply to every node) or `redis://h1:p1,redis://h2:p2`.
fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    for (scheme, plain) in [("redis+cluster://", "redis://"), ("rediss+cluster://", "rediss://")] {
        if let Some(rest) = url.strip_prefix(scheme) {
            let rest = rest.trim_end_matches('/');
            let (auth, hosts) = match rest.rsplit_once('@') {
                Some((auth, hosts)) => (format!("{auth}@"), hosts),
                None => (String::new(), rest),
            };
            let nodes = hosts
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(|h| format!("{plain}{auth}{h}"))
                .collect();
            return Some(nodes);
        }
    }
    url.contains(',').then(|| url.split(',').map(|u| u.trim().to_owned()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_every_seed_node_with_the_credentials() {
        assert_eq!(
            cluster_nodes("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001/"),
            Some(vec![
                "redis://:pw@10.0.0.1:7000".to_owned(),
                "redis://:pw@10.0.0.2:7001".to_owned()
            ])
        );
        assert_eq!(
            cluster_nodes("rediss+cluster://h:7000"),
            Some(vec!["rediss://h:7000".to_owned()])
        );
        assert_eq!(
            cluster_nodes("redis://a:1, redis://b:2"),
            Some(vec!["redis://a:1".to_owned(), "redis://b:2".to_owned()])
        );
        assert_eq!(cluster_nodes("redis://:pw@h:6379/2"), None);
        assert!(
            RedisConn::open("redis+cluster://127.0.0.1:7000,127.0.0.1:7001").unwrap().is_cluster()
        );
        assert!(!RedisConn::open("redis://127.0.0.1:6379").unwrap().is_cluster());
    }
}
