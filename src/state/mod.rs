//! Rate-limit state backends behind `policy::limiter::WindowStore`: this process's memory (the
//! default) or Redis shared by every replica, plus the metrics wrapper both go through. Stores
//! only keep and count admissions; they never decide policy or make a `Permit`.

pub mod memory;
pub mod redis;
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod test_support;

#[cfg(test)]
mod conformance;
#[cfg(test)]
pub(crate) use conformance::redis_config as conformance_config;

use crate::policy::limiter::{StoreError, StoreFuture, WindowSpec, WindowStore, WindowVerdict};
use prometheus::{HistogramVec, IntCounterVec};
use std::sync::Arc;
use std::time::Instant;

/// Times every call of a store and counts its errors by kind.
pub struct Instrumented {
    inner: Arc<dyn WindowStore>,
    latency: HistogramVec,
    errors: IntCounterVec,
}

impl Instrumented {
    pub fn new(
        inner: Arc<dyn WindowStore>,
        latency: HistogramVec,
        errors: IntCounterVec,
    ) -> Instrumented {
        Instrumented {
            inner,
            latency,
            errors,
        }
    }

    async fn observe<T>(&self, op: &str, f: StoreFuture<'_, T>) -> Result<T, StoreError> {
        let t = Instant::now();
        let out = f.await;
        let backend = self.inner.backend();
        self.latency
            .with_label_values(&[backend, op])
            .observe(t.elapsed().as_secs_f64());
        if let Err(e) = &out {
            self.errors
                .with_label_values(&[backend, e.kind.as_str()])
                .inc();
        }
        out
    }
}

impl WindowStore for Instrumented {
    fn check_and_consume<'a>(
        &'a self,
        windows: &'a [WindowSpec],
        id: &'a str,
    ) -> StoreFuture<'a, WindowVerdict> {
        Box::pin(self.observe("admit", self.inner.check_and_consume(windows, id)))
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(self.observe("ping", self.inner.ping()))
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}
