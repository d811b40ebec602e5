//! Test-only hooks into the writer thread, compiled only for this crate's unit tests. Nothing
//! here may exist in a build that serves requests.

use std::sync::atomic::AtomicU64;
use std::sync::{Condvar, Mutex, PoisonError};

/// Lets a test hold the writer after it took the first job of a batch, so that it can
/// queue many jobs and observe them committed as one group — deterministically.
#[derive(Default)]
pub(crate) struct Hooks {
    pub(crate) enqueued: AtomicU64,
    closed: Mutex<bool>,
    cv: Condvar,
}

impl Hooks {
    pub(crate) fn close_gate(&self) {
        *self.closed.lock().unwrap_or_else(PoisonError::into_inner) = true;
    }
    pub(crate) fn open_gate(&self) {
        *self.closed.lock().unwrap_or_else(PoisonError::into_inner) = false;
        self.cv.notify_all();
    }
    pub(super) fn wait_gate(&self) {
        let mut closed = self.closed.lock().unwrap_or_else(PoisonError::into_inner);
        while *closed {
            closed = self.cv.wait(closed).unwrap_or_else(PoisonError::into_inner);
        }
    }
}
