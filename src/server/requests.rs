//! The cap on one listener's request tasks (`server.limits.max_requests_in_flight`). Each
//! request runs in a task of its own that outlives its client, so neither `max_connections` nor
//! the HTTP/2 stream limit bounds them (a client that resets its streams frees their slots while
//! the work goes on); this does. It never queues or blocks: over the cap the caller answers at
//! once, without a task.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Request tasks running on one listener.
#[derive(Debug, Default)]
pub struct RequestSlots {
    in_use: AtomicUsize,
}

/// One request task's place, held by the task until it ends; freed on drop (panics included).
#[derive(Debug)]
pub struct RequestSlot(Arc<RequestSlots>);

impl RequestSlots {
    /// A slot if fewer than `max` are taken. `max` is read from the settings in force for each
    /// request, so a reload applies to the next one; lowering it never cancels running tasks.
    pub fn try_take(self: &Arc<Self>, max: usize) -> Option<RequestSlot> {
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| RequestSlot(self.clone()))
    }

    #[cfg(test)]
    fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }
}

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_refused_at_the_cap_and_freed_on_drop() {
        let slots = Arc::new(RequestSlots::default());
        let a = slots.try_take(2).expect("first");
        let b = slots.try_take(2).expect("second");
        assert!(slots.try_take(2).is_none(), "the third is over the cap");
        assert_eq!(slots.in_use(), 2, "a refused take holds nothing");
        drop(a);
        let c = slots.try_take(2).expect("a freed slot is taken again");
        // A lower cap (a reload) refuses new requests until enough have ended.
        assert!(slots.try_take(1).is_none());
        drop(b);
        drop(c);
        assert_eq!(slots.in_use(), 0);
        assert!(slots.try_take(1).is_some());
    }

    #[test]
    fn a_slot_held_by_a_panicking_task_is_still_freed() {
        let slots = Arc::new(RequestSlots::default());
        let slot = slots.try_take(1).expect("slot");
        let r = std::thread::spawn(move || {
            let _held = slot;
            panic!("the request task failed");
        })
        .join();
        assert!(r.is_err());
        assert_eq!(slots.in_use(), 0);
        assert!(slots.try_take(1).is_some());
    }
}
