//! The shared [`WindowStore`] on Redis: every replica checks and consumes a candidate's windows
//! in one Lua script, timed by the server's clock, so limits hold across replicas and restarts.
//! Every call is bounded by `timeout_ms`; any failure is an error (never a fall-back to memory).
//! The password is a [`Secret`]: it must never reach a log line, an error or Debug output.

use crate::config::{RedisConfig, Secret, SecretError};
use crate::policy::limiter::{
    StoreError, StoreErrorKind, StoreFuture, WindowBlock, WindowSpec, WindowStore, WindowUse,
    WindowVerdict,
};
use crate::policy::LimitScope;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Client, IntoConnectionInfo, RedisError, TlsCertificates};
use std::time::Duration;

/// One script, all windows: prune each sorted set to `(now - W, now]`, check every window, and
/// only if all have room add this admission (member = request id, score = server time in µs) to
/// each and let the key expire after its window. `TIME` is the server's: replicas' clocks never
/// matter. Redis 7 replicates scripts by effects, so reading TIME in a writing script is allowed.
///
/// KEYS[i]: window i. ARGV[1]: member id; ARGV[2i], ARGV[2i+1]: limit and window (µs) of window i.
/// Returns {1, used_1, oldest_age_us_1, ...} when admitted, {0, i, frees_in_us, ...} when blocked.
pub const ADMIT_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local blocked = {}
for i = 1, n do
  local limit = tonumber(ARGV[2 * i])
  local win = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - win)
  local count = redis.call('ZCARD', KEYS[i])
  if count >= limit then
    local s = redis.call('ZRANGE', KEYS[i], count - limit, count - limit, 'WITHSCORES')
    local frees = tonumber(s[2]) + win - now
    if frees < 0 then frees = 0 end
    table.insert(blocked, i - 1)
    table.insert(blocked, frees)
  end
end
if #blocked > 0 then
  table.insert(blocked, 1, 0)
  return blocked
end
local out = {1}
for i = 1, n do
  local win = tonumber(ARGV[2 * i + 1])
  redis.call('ZADD', KEYS[i], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[i], math.ceil(win / 1000))
  local used = redis.call('ZCARD', KEYS[i])
  local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
  table.insert(out, used)
  table.insert(out, now - tonumber(oldest[2]))
end
return out
"#;

/// Why the Redis store could not be built or reached at start.
#[derive(Debug, thiserror::Error)]
pub enum RedisStartError {
    #[error("state.redis.password: {0}")]
    Password(#[source] SecretError),
    #[error("state.redis.ca_file: {path}: {source}")]
    CaFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("state.redis: {0}")]
    Client(String),
    #[error("state.redis: {0}")]
    Unreachable(StoreError),
}

enum Conn {
    Direct(ConnectionManager),
    Sentinel(Box<SentinelConn>),
}

struct SentinelConn {
    client: tokio::sync::Mutex<SentinelClient>,
    /// The primary's connection; dropped on a connection error so the next call asks the
    /// Sentinels again (a failover moved the primary).
    current: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    config: redis::AsyncConnectionConfig,
}

pub struct RedisStore {
    conn: Conn,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
    min_replicas_ack: u32,
    /// Where we connect, for messages (no credentials: the URL has none).
    target: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", &self.target)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Builds the client (no I/O yet; connections are made on first use and re-made after a
    /// failure). Must run inside a tokio runtime.
    pub fn build(cfg: &RedisConfig) -> Result<RedisStore, RedisStartError> {
        let password: Option<Secret> = cfg
            .password
            .as_ref()
            .map(|p| p.resolve())
            .transpose()
            .map_err(RedisStartError::Password)?;
        let ca = cfg
            .ca_file
            .as_ref()
            .map(|path| {
                std::fs::read(path).map_err(|source| RedisStartError::CaFile {
                    path: path.clone(),
                    source,
                })
            })
            .transpose()?;
        let timeout = Duration::from_millis(cfg.timeout_ms);
        // Messages from the client library never contain our password (it is not in any URL);
        // strip them to the kind anyway when they come from configuration.
        let client_err = |e: RedisError| RedisStartError::Client(describe(&e, password.as_ref()));
        let settings = |info: &redis::ConnectionInfo| {
            let mut r = info.redis_settings().clone();
            if let Some(u) = &cfg.username {
                r = r.set_username(u);
            }
            if let Some(p) = &password {
                r = r.set_password(p.expose());
            }
            r
        };
        let (conn, target) = if let Some(s) = &cfg.sentinel {
            let nodes: Vec<redis::ConnectionInfo> = s
                .nodes
                .iter()
                .map(|n| n.as_str().into_connection_info())
                .collect::<Result<_, _>>()
                .map_err(client_err)?;
            let tls = s.nodes.iter().any(|n| n.starts_with("rediss:"));
            let first = nodes
                .first()
                .ok_or_else(|| RedisStartError::Client("no Sentinel nodes".into()))?;
            let mut node_info =
                SentinelNodeConnectionInfo::default().set_redis_connection_info(settings(first));
            if tls {
                node_info = node_info.set_tls_mode(redis::TlsMode::Secure);
            }
            let client = SentinelClient::build(
                nodes,
                s.master_name.clone(),
                Some(node_info),
                SentinelServerType::Master,
            )
            .map_err(client_err)?;
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout));
            (
                Conn::Sentinel(Box::new(SentinelConn {
                    client: tokio::sync::Mutex::new(client),
                    current: tokio::sync::Mutex::new(None),
                    config,
                })),
                format!("sentinel {} via {}", s.master_name, s.nodes.join(",")),
            )
        } else {
            let url = cfg.url.clone().unwrap_or_default();
            let info = url.as_str().into_connection_info().map_err(client_err)?;
            let r = settings(&info);
            let info = info.set_redis_settings(r);
            let client = match ca {
                Some(pem) if url.starts_with("rediss:") => Client::build_with_tls(
                    info,
                    TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                ),
                _ => Client::open(info),
            }
            .map_err(client_err)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            let manager =
                ConnectionManager::new_lazy_with_config(client, config).map_err(client_err)?;
            (Conn::Direct(manager), url)
        };
        Ok(RedisStore {
            conn,
            script: redis::Script::new(ADMIT_LUA),
            prefix: cfg.key_prefix.clone(),
            timeout,
            min_replicas_ack: cfg.min_replicas_ack,
            target,
        })
    }

    /// Builds the store and checks that Redis answers (PING, and loads the script). A wrong
    /// password or a TLS failure is a start-up error; Redis merely down is not (the gateway
    /// serves `503 limits_unavailable` until it is back) and comes back as `Ok` with the error.
    pub async fn connect(
        cfg: &RedisConfig,
    ) -> Result<(RedisStore, Option<StoreError>), RedisStartError> {
        let store = RedisStore::build(cfg)?;
        match store.ping_inner().await {
            Ok(()) => Ok((store, None)),
            Err(e) if matches!(e.kind, StoreErrorKind::Connection | StoreErrorKind::Timeout) => {
                Ok((store, Some(e)))
            }
            Err(e) => Err(RedisStartError::Unreachable(e)),
        }
    }

    /// The Redis key of a window. All keys of one policy share the hash tag `{prefix:policy}`, so
    /// one script's keys live in one cluster slot.
    pub fn key(&self, spec: &WindowSpec) -> String {
        let k = &spec.key;
        let scope = match k.scope {
            LimitScope::PerOperator => "op",
            LimitScope::PerDevice => "dev",
            LimitScope::Global => "global",
        };
        if k.subject.is_empty() {
            format!("{{{}:{}}}:rl:{scope}", self.prefix, k.policy)
        } else {
            format!("{{{}:{}}}:rl:{scope}:{}", self.prefix, k.policy, k.subject)
        }
    }

    /// Runs `f` on a connection, bounded by the timeout; a connection error through Sentinel
    /// forgets the primary.
    async fn with_conn<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnRef) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let run = async {
            match &self.conn {
                Conn::Direct(m) => f(ConnRef::Manager(m.clone()))
                    .await
                    .map_err(|e| self.classify(&e)),
                Conn::Sentinel(sc) => {
                    let SentinelConn {
                        client,
                        current,
                        config,
                    } = &**sc;
                    let mut slot = current.lock().await;
                    let c = match slot.as_ref() {
                        Some(c) => c.clone(),
                        None => {
                            let mut cl = client.lock().await;
                            let c = cl
                                .get_async_connection_with_config(config)
                                .await
                                .map_err(|e| self.classify(&e))?;
                            *slot = Some(c.clone());
                            c
                        }
                    };
                    drop(slot);
                    let out = f(ConnRef::Multiplexed(c)).await;
                    if let Err(e) = &out {
                        if e.is_io_error()
                            || e.is_connection_dropped()
                            || e.is_connection_refusal()
                            || matches!(
                                e.kind(),
                                redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
                            )
                        {
                            *current.lock().await = None;
                        }
                    }
                    out.map_err(|e| self.classify(&e))
                }
            }
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(StoreError {
                kind: StoreErrorKind::Timeout,
                message: format!(
                    "no answer from Redis ({}) within {} ms",
                    self.target,
                    self.timeout.as_millis()
                ),
            }),
        }
    }

    fn classify(&self, e: &RedisError) -> StoreError {
        let kind = kind_of(e);
        StoreError {
            kind,
            message: format!("Redis ({}): {}", self.target, safe_message(e, kind)),
        }
    }

    async fn ping_inner(&self) -> Result<(), StoreError> {
        let pong: String = self
            .with_conn(|mut c| async move { redis::cmd("PING").query_async(&mut c).await })
            .await?;
        if pong != "PONG" {
            return Err(StoreError {
                kind: StoreErrorKind::Other,
                message: format!("Redis ({}) answered PING with something else", self.target),
            });
        }
        Ok(())
    }

    async fn admit(&self, specs: &[WindowSpec], id: &str) -> Result<WindowVerdict, StoreError> {
        let mut inv = self.script.prepare_invoke();
        inv.arg(id);
        for s in specs {
            inv.key(self.key(s));
            inv.arg(s.limit);
            inv.arg(u64::try_from(s.window.as_micros()).unwrap_or(u64::MAX));
        }
        let reply: Vec<i64> = self
            .with_conn(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        let verdict = parse_reply(&reply, specs.len()).ok_or_else(|| StoreError {
            kind: StoreErrorKind::Script,
            message: format!(
                "Redis ({}): the admission script answered an unexpected shape",
                self.target
            ),
        })?;
        if self.min_replicas_ack > 0 && matches!(verdict, WindowVerdict::Admitted(_)) {
            // The server gives up waiting at half the bound, so its answer (how many replicas
            // acknowledged) arrives before our own timeout does.
            let wait_ms = (u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX) / 2).max(1);
            let n = self.min_replicas_ack;
            let acked: i64 = self
                .with_conn(|mut c| async move {
                    redis::cmd("WAIT")
                        .arg(n)
                        .arg(wait_ms)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            if acked < i64::from(n) {
                return Err(StoreError {
                    kind: StoreErrorKind::Replication,
                    message: format!(
                        "Redis ({}): the admission reached {acked} of the {n} replicas required by min_replicas_ack",
                        self.target
                    ),
                });
            }
        }
        Ok(verdict)
    }
}

/// A connection handle for one call.
enum ConnRef {
    Manager(ConnectionManager),
    Multiplexed(MultiplexedConnection),
}

impl redis::aio::ConnectionLike for ConnRef {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            ConnRef::Manager(c) => c.req_packed_command(cmd),
            ConnRef::Multiplexed(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            ConnRef::Manager(c) => c.req_packed_commands(cmd, offset, count),
            ConnRef::Multiplexed(c) => c.req_packed_commands(cmd, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            ConnRef::Manager(c) => c.get_db(),
            ConnRef::Multiplexed(c) => c.get_db(),
        }
    }
}

fn parse_reply(r: &[i64], n: usize) -> Option<WindowVerdict> {
    let (&flag, rest) = r.split_first()?;
    if rest.len() % 2 != 0 {
        return None;
    }
    let pairs = rest.chunks_exact(2);
    let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
    match flag {
        1 if rest.len() == 2 * n => Some(WindowVerdict::Admitted(
            pairs
                .map(|p| WindowUse {
                    used: u32::try_from(p[0]).unwrap_or(u32::MAX),
                    oldest_age: us(p[1]),
                })
                .collect(),
        )),
        0 if !rest.is_empty() => {
            let blocks: Option<Vec<WindowBlock>> = pairs
                .map(|p| {
                    let index = usize::try_from(p[0]).ok().filter(|i| *i < n)?;
                    Some(WindowBlock {
                        index,
                        frees_in: us(p[1]),
                    })
                })
                .collect();
            blocks.map(WindowVerdict::Blocked)
        }
        _ => None,
    }
}

fn kind_of(e: &RedisError) -> StoreErrorKind {
    use redis::ErrorKind as K;
    use redis::ServerErrorKind as S;
    if e.is_timeout() {
        return StoreErrorKind::Timeout;
    }
    let code = e.code().unwrap_or("");
    if matches!(code, "WRONGPASS" | "NOAUTH" | "NOPERM") {
        return StoreErrorKind::Auth;
    }
    match e.kind() {
        K::AuthenticationFailed | K::Server(S::NoPerm) => StoreErrorKind::Auth,
        K::Io => {
            let text = e.to_string().to_ascii_lowercase();
            if text.contains("certificate") || text.contains("tls") || text.contains("handshake") {
                StoreErrorKind::Tls
            } else {
                StoreErrorKind::Connection
            }
        }
        K::Server(S::NoScript | S::ResponseError) if code != "BUSY" => StoreErrorKind::Script,
        K::Server(S::MasterDown | S::ReadOnly | S::BusyLoading | S::TryAgain | S::ClusterDown) => {
            StoreErrorKind::Connection
        }
        K::Parse | K::UnexpectedReturnType => StoreErrorKind::Script,
        _ if e.is_connection_dropped() || e.is_connection_refusal() || e.is_io_error() => {
            StoreErrorKind::Connection
        }
        _ => StoreErrorKind::Other,
    }
}

/// The library's message for an error: it names the server's error code and text (e.g.
/// `WRONGPASS invalid username-password pair`), never our password, which is only ever sent in
/// AUTH and which Redis does not echo.
fn safe_message(e: &RedisError, kind: StoreErrorKind) -> String {
    let m = e.to_string();
    match kind {
        StoreErrorKind::Auth => {
            format!("authentication failed (check state.redis.username and password): {m}")
        }
        StoreErrorKind::Tls => {
            format!("TLS failed (check the rediss:// host name and state.redis.ca_file): {m}")
        }
        _ => m,
    }
}

fn describe(e: &RedisError, password: Option<&Secret>) -> String {
    let m = e.to_string();
    // Belt and braces: a library message must never carry the password.
    match password {
        Some(p) => m.replace(p.expose(), "<redacted>"),
        None => m,
    }
}

impl WindowStore for RedisStore {
    fn check_and_consume<'a>(
        &'a self,
        windows: &'a [WindowSpec],
        id: &'a str,
    ) -> StoreFuture<'a, WindowVerdict> {
        Box::pin(self.admit(windows, id))
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(self.ping_inner())
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}

#[path = "redis_approvals.rs"]
mod approvals;
#[path = "redis_sessions.rs"]
mod sessions;
