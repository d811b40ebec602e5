//! Console sessions and sign-ins in progress in Redis, shared by every replica: keys under the
//! hash tag `{prefix:console}` (one cluster slot), each with a TTL, replacement by one Lua
//! compare-and-set. It stores opaque JSON under hashed keys and must never interpret it.

use super::RedisStore;
use crate::console::store::SessionStore;
use crate::policy::limiter::StoreFuture;
use std::time::Duration;

/// KEYS: entry. ARGV: old json, new json, ttl ms. Returns 1 if replaced.
const REPLACE_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"#;

static REPLACE: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(REPLACE_LUA));

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisStore {
    fn console_key(&self, key: &str) -> String {
        format!("{{{}:console}}:{key}", self.prefix)
    }
}

impl SessionStore for RedisStore {
    fn put_new<'a>(&'a self, key: &'a str, json: &'a str, ttl: Duration) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let k = self.console_key(key);
            let set: Option<String> = self
                .with_conn(|mut c| async move {
                    redis::cmd("SET")
                        .arg(k)
                        .arg(json)
                        .arg("PX")
                        .arg(ms(ttl))
                        .arg("NX")
                        .query_async(&mut c)
                        .await
                })
                .await?;
            Ok(set.is_some())
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            let k = self.console_key(key);
            self.with_conn(
                |mut c| async move { redis::cmd("GET").arg(k).query_async(&mut c).await },
            )
            .await
        })
    }

    fn replace<'a>(
        &'a self,
        key: &'a str,
        old: &'a str,
        new: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut inv = REPLACE.prepare_invoke();
            inv.key(self.console_key(key))
                .arg(old)
                .arg(new)
                .arg(ms(ttl));
            let done: i64 = self
                .with_conn(|mut c| async move { inv.invoke_async(&mut c).await })
                .await?;
            Ok(done == 1)
        })
    }

    fn take<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            let k = self.console_key(key);
            self.with_conn(
                |mut c| async move { redis::cmd("GETDEL").arg(k).query_async(&mut c).await },
            )
            .await
        })
    }

    fn remove<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let k = self.console_key(key);
            let _: i64 = self
                .with_conn(
                    |mut c| async move { redis::cmd("DEL").arg(k).query_async(&mut c).await },
                )
                .await?;
            Ok(())
        })
    }
}
