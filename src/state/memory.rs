//! The in-process [`WindowStore`]: exact sliding windows in a mutex-guarded map, the default when
//! no `state:` is configured. State is per process and lost on restart. It reads the monotonic
//! clock itself (injectable for tests); it must never do I/O.

use crate::policy::limiter::{
    StoreFuture, WindowBlock, WindowKey, WindowSpec, WindowStore, WindowUse, WindowVerdict,
};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the store reads "now" (the real monotonic clock, or a test's hand).
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

#[derive(Debug)]
struct Window {
    /// The window last used for this key, so a sweep can prune it without the config.
    length: Duration,
    /// Admission times, oldest first.
    stamps: VecDeque<Instant>,
}

impl Window {
    /// Drops admissions outside `(now - length, now]`.
    fn prune(&mut self, now: Instant) {
        while let Some(&t) = self.stamps.front() {
            // t is outside the window iff t + length <= now.
            if t + self.length <= now {
                self.stamps.pop_front();
            } else {
                break;
            }
        }
    }
}

/// Sweep every key once this many admits have happened since the last sweep, so keys that are
/// never touched again (one-off devices) do not pile up.
pub const SWEEP_EVERY: u64 = 1024;

#[derive(Debug, Default)]
struct State {
    windows: HashMap<WindowKey, Window>,
    calls_since_sweep: u64,
}

pub struct MemoryStore {
    state: Mutex<State>,
    clock: Clock,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::with_clock(Arc::new(Instant::now))
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    pub fn with_clock(clock: Clock) -> MemoryStore {
        MemoryStore {
            state: Mutex::default(),
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked mid-update; the timestamps are
        // still a consistent set, so keep enforcing rather than failing every request.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The synchronous check-and-consume (the trait method wraps it in a ready future).
    pub fn admit_now(&self, specs: &[WindowSpec]) -> WindowVerdict {
        let now = (self.clock)();
        let mut state = self.lock();
        state.calls_since_sweep += 1;
        if state.calls_since_sweep >= SWEEP_EVERY {
            sweep(&mut state, now);
        }
        // Phase 1: check every window; nothing is recorded yet.
        let mut blocks = Vec::new();
        for (index, spec) in specs.iter().enumerate() {
            let Some(w) = state.windows.get_mut(&spec.key) else {
                continue;
            };
            w.length = spec.window;
            w.prune(now);
            let count = w.stamps.len();
            if count >= spec.limit as usize {
                // Room returns when enough of the oldest admissions have left the window that
                // fewer than N remain: the (count - N + 1)-th oldest must expire.
                let idx = count - spec.limit as usize;
                let frees_at = w.stamps[idx] + spec.window;
                blocks.push(WindowBlock {
                    index,
                    frees_in: frees_at.saturating_duration_since(now),
                });
            }
        }
        if !blocks.is_empty() {
            for spec in specs {
                if state
                    .windows
                    .get(&spec.key)
                    .is_some_and(|w| w.stamps.is_empty())
                {
                    state.windows.remove(&spec.key);
                }
            }
            return WindowVerdict::Blocked(blocks);
        }
        // Phase 2: consume all.
        let uses = specs
            .iter()
            .map(|spec| {
                let w = state
                    .windows
                    .entry(spec.key.clone())
                    .or_insert_with(|| Window {
                        length: spec.window,
                        stamps: VecDeque::new(),
                    });
                w.stamps.push_back(now);
                let oldest = w.stamps.front().copied().unwrap_or(now);
                WindowUse {
                    used: w.stamps.len() as u32,
                    oldest_age: now.saturating_duration_since(oldest),
                }
            })
            .collect();
        WindowVerdict::Admitted(uses)
    }

    /// Prunes every key and drops the empty ones.
    pub fn sweep(&self) {
        let now = (self.clock)();
        sweep(&mut self.lock(), now);
    }

    /// How many keys hold state (for the memory-bound tests).
    pub fn key_count(&self) -> usize {
        self.lock().windows.len()
    }
}

fn sweep(state: &mut State, now: Instant) {
    state.windows.retain(|_, w| {
        w.prune(now);
        !w.stamps.is_empty()
    });
    state.calls_since_sweep = 0;
}

impl WindowStore for MemoryStore {
    fn check_and_consume<'a>(
        &'a self,
        windows: &'a [WindowSpec],
        _id: &'a str,
    ) -> StoreFuture<'a, WindowVerdict> {
        let verdict = self.admit_now(windows);
        Box::pin(std::future::ready(Ok(verdict)))
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}
