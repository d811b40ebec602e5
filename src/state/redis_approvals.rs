//! Approval requests in Redis, shared by every replica: each transition is one Lua
//! compare-and-set, so two replicas can never both open a request for one key or both use one
//! approval. All keys share the hash tag `{prefix:approvals}` (one cluster slot). It stores
//! opaque JSON and must never interpret a request.

use super::RedisStore;
use crate::approval::store::{ApprovalStore, Stored, MAX_REQUESTS, RETENTION};
use crate::policy::limiter::StoreFuture;

/// KEYS: key pointer, request, index. ARGV: expected id ('' = none), id, json, created ms,
/// ttl ms, index cutoff ms, index bound. Returns 1 if created, 0 if the pointer moved.
const CREATE_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur == false then cur = '' end
if cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[5])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[6])
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[7]) + 1))
return 1
"#;

/// KEYS: request. ARGV: old json, new json. Returns 1 if replaced.
const REPLACE_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
"#;

static CREATE: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(CREATE_LUA));
static REPLACE: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(REPLACE_LUA));

impl RedisStore {
    fn approvals_tag(&self) -> String {
        format!("{{{}:approvals}}", self.prefix)
    }
    fn approval_key(&self, key: &str) -> String {
        format!("{}:key:{key}", self.approvals_tag())
    }
    fn approval_request(&self, id: &str) -> String {
        format!("{}:req:{id}", self.approvals_tag())
    }
    fn approval_index(&self) -> String {
        format!("{}:index", self.approvals_tag())
    }
}

impl ApprovalStore for RedisStore {
    fn current<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Stored>> {
        Box::pin(async move {
            let ptr = self.approval_key(key);
            let id: Option<String> = self
                .with_conn(
                    |mut c| async move { redis::cmd("GET").arg(ptr).query_async(&mut c).await },
                )
                .await?;
            let Some(id) = id else { return Ok(None) };
            let json = self.get(&id).await?;
            Ok(json.map(|j| (id, j)))
        })
    }

    fn create<'a>(
        &'a self,
        key: &'a str,
        expected: Option<&'a str>,
        id: &'a str,
        json: &'a str,
        created_ms: i64,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let ttl_ms = RETENTION.as_millis() as i64;
            let mut inv = CREATE.prepare_invoke();
            inv.key(self.approval_key(key))
                .key(self.approval_request(id))
                .key(self.approval_index())
                .arg(expected.unwrap_or(""))
                .arg(id)
                .arg(json)
                .arg(created_ms)
                .arg(ttl_ms)
                .arg(created_ms - ttl_ms)
                .arg(MAX_REQUESTS);
            let done: i64 = self
                .with_conn(|mut c| async move { inv.invoke_async(&mut c).await })
                .await?;
            Ok(done == 1)
        })
    }

    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            let k = self.approval_request(id);
            self.with_conn(
                |mut c| async move { redis::cmd("GET").arg(k).query_async(&mut c).await },
            )
            .await
        })
    }

    fn replace<'a>(&'a self, id: &'a str, old: &'a str, new: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut inv = REPLACE.prepare_invoke();
            inv.key(self.approval_request(id)).arg(old).arg(new);
            let done: i64 = self
                .with_conn(|mut c| async move { inv.invoke_async(&mut c).await })
                .await?;
            Ok(done == 1)
        })
    }

    fn recent(&self, limit: usize) -> StoreFuture<'_, Vec<String>> {
        Box::pin(async move {
            if limit == 0 {
                return Ok(Vec::new());
            }
            let index = self.approval_index();
            let stop = i64::try_from(limit).unwrap_or(i64::MAX) - 1;
            let ids: Vec<String> = self
                .with_conn(|mut c| async move {
                    redis::cmd("ZREVRANGE")
                        .arg(index)
                        .arg(0)
                        .arg(stop)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let keys: Vec<String> = ids.iter().map(|id| self.approval_request(id)).collect();
            let values: Vec<Option<String>> = self
                .with_conn(
                    |mut c| async move { redis::cmd("MGET").arg(keys).query_async(&mut c).await },
                )
                .await?;
            Ok(values.into_iter().flatten().collect())
        })
    }
}
