//! The cap on the action pipeline's requests to Microsoft Graph (device facts and forwards): at
//! most `graph.max_concurrent_requests` in flight, the rest queue for a slot for at most
//! `graph.queue_timeout_seconds`. A slot is held for one request and its answer, never longer.

use prometheus::IntGauge;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default `graph.max_concurrent_requests`.
pub const DEFAULT_MAX_CONCURRENT: usize = 64;
/// Default `graph.queue_timeout_seconds`.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// Nothing was sent: no slot came free in time.
#[derive(Debug, Clone, thiserror::Error)]
#[error("all {max} request slots to Graph stayed busy for {waited:?}; nothing was sent")]
pub struct Busy {
    pub max: usize,
    pub waited: Duration,
}

/// Shared by every clone: one cap per gateway.
#[derive(Clone, Debug)]
pub struct GraphSlots {
    free: Arc<Semaphore>,
    max: usize,
    queue_timeout: Duration,
    /// `passgate_graph_requests_in_flight`, when the gateway's metrics are attached.
    gauge: Option<IntGauge>,
}

/// One request's right to be in flight; the slot frees when this drops.
#[derive(Debug)]
pub struct GraphSlot {
    _permit: OwnedSemaphorePermit,
    gauge: Option<IntGauge>,
}

impl Drop for GraphSlot {
    fn drop(&mut self) {
        if let Some(g) = &self.gauge {
            g.dec();
        }
    }
}

impl GraphSlots {
    /// `max` is at least 1 (config validation refuses 0).
    pub fn new(max: usize, queue_timeout: Duration) -> GraphSlots {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        GraphSlots {
            free: Arc::new(Semaphore::new(max)),
            max,
            queue_timeout,
            gauge: None,
        }
    }

    /// Counts slots in use in `in_flight` (shared across reloads: it sums every live gateway's).
    pub fn with_gauge(mut self, in_flight: IntGauge) -> GraphSlots {
        self.gauge = Some(in_flight);
        self
    }

    /// Waits for a free slot, at most the queue timeout (FIFO: tokio's semaphore is fair).
    pub async fn take(&self) -> Result<GraphSlot, Busy> {
        let busy = Busy {
            max: self.max,
            waited: self.queue_timeout,
        };
        match tokio::time::timeout(self.queue_timeout, self.free.clone().acquire_owned()).await {
            Ok(Ok(permit)) => {
                if let Some(g) = &self.gauge {
                    g.inc();
                }
                Ok(GraphSlot {
                    _permit: permit,
                    gauge: self.gauge.clone(),
                })
            }
            // The semaphore is never closed; a closed one admits nobody, like a full one.
            Ok(Err(_)) | Err(_) => Err(busy),
        }
    }

    /// Slots in use now (production reads `passgate_graph_requests_in_flight` instead).
    #[cfg(test)]
    fn in_use(&self) -> usize {
        self.max - self.free.available_permits()
    }
}

impl Default for GraphSlots {
    fn default() -> GraphSlots {
        GraphSlots::new(DEFAULT_MAX_CONCURRENT, DEFAULT_QUEUE_TIMEOUT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_cap_makes_the_next_request_wait_and_then_refuses_it() {
        let slots = GraphSlots::new(2, Duration::from_millis(50));
        let a = slots.take().await.expect("first slot");
        let _b = slots.take().await.expect("second slot");
        assert_eq!(slots.in_use(), 2);
        let e = slots.take().await.expect_err("no third slot");
        assert_eq!(e.max, 2);
        assert_eq!(e.waited, Duration::from_millis(50));
        drop(a);
        assert_eq!(slots.in_use(), 1);
        let _c = slots.take().await.expect("a freed slot is taken again");
        assert_eq!(slots.in_use(), 2);
    }

    #[tokio::test]
    async fn a_waiter_gets_the_slot_freed_while_it_waits() {
        let slots = GraphSlots::new(1, Duration::from_secs(30));
        let held = slots.take().await.expect("slot");
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take().await.map(|_| ()) }
        });
        // The waiter is queued behind the held slot until it drops.
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(held);
        waiter
            .await
            .expect("task")
            .expect("the freed slot goes to the waiter");
        assert_eq!(slots.in_use(), 0);
    }

    #[tokio::test]
    async fn the_gauge_counts_slots_in_use() {
        let gauge = IntGauge::new("t_in_flight", "test").expect("gauge");
        let slots = GraphSlots::new(2, Duration::from_millis(20)).with_gauge(gauge.clone());
        let a = slots.take().await.expect("slot");
        let b = slots.take().await.expect("slot");
        assert_eq!(gauge.get(), 2);
        assert!(slots.take().await.is_err());
        assert_eq!(gauge.get(), 2, "a refused wait takes nothing");
        drop(a);
        drop(b);
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn zero_is_read_as_one() {
        assert_eq!(GraphSlots::new(0, Duration::from_secs(1)).max, 1);
    }
}
