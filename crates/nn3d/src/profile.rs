//! Optional wall-time accounting of this crate's CPU kernels, by op: how much of a training step
//! is convolution, batch norm or dropout arithmetic, and (by difference with the step's time) how
//! much is candle's element-wise work and the glue between ops. `cargo xtask bench step` writes it
//! as a bench artifact.
//!
//! Off by default; while off, each kernel pays one relaxed atomic load. Timings are wall time of
//! the op's CPU kernel (its threads included), summed over calls. A kernel that runs inside
//! another (conv-bn-relu computes its batch statistics with the statistics op) counts toward the
//! outer one only, so the ops' times add up to at most the wall time.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static TABLE: Mutex<BTreeMap<&'static str, OpTime>> = Mutex::new(BTreeMap::new());

thread_local! {
    /// How many timers are running on this thread: only the outermost one records.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Calls and summed wall time of one op.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OpTime {
    pub calls: u64,
    pub seconds: f64,
}

/// Turns the accounting on or off (process-wide).
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// The accounts since the last `take`, by op name, and resets them.
pub fn take() -> BTreeMap<&'static str, OpTime> {
    let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    std::mem::take(&mut *table)
}

/// Records the wall time from its creation to its drop under `name`, when accounting is on and no
/// other timer runs on this thread.
pub(crate) struct Timer {
    name: &'static str,
    /// Whether this timer entered the thread's depth count (accounting was on at its start).
    entered: bool,
    /// Its start, when it is the outermost.
    start: Option<Instant>,
}

impl Timer {
    pub(crate) fn start(name: &'static str) -> Self {
        if !ENABLED.load(Ordering::Relaxed) {
            return Timer {
                name,
                entered: false,
                start: None,
            };
        }
        let outermost = DEPTH.with(|d| {
            d.set(d.get() + 1);
            d.get() == 1
        });
        Timer {
            name,
            entered: true,
            start: outermost.then(Instant::now),
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if self.entered {
            DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
        }
        if let Some(start) = self.start {
            let seconds = start.elapsed().as_secs_f64();
            let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
            let entry = table.entry(self.name).or_default();
            entry.calls += 1;
            entry.seconds += seconds;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_count_only_while_enabled() {
        // one test touches the global table, so no other test races it
        drop(take());
        drop(Timer::start("off"));
        enable(true);
        drop(Timer::start("on"));
        {
            let _outer = Timer::start("on");
            drop(Timer::start("inner"));
        }
        enable(false);
        let table = take();
        assert_eq!(table.get("on").map(|t| t.calls), Some(2));
        assert!(!table.contains_key("off"));
        assert!(
            !table.contains_key("inner"),
            "a nested timer counts toward the outer one"
        );
    }
}
