//! Process-wide CPU thread settings, for binaries to apply once at start-up.
//!
//! Two thread pools share the cores during a CPU training step: rayon's (this crate's convolution
//! and batch-norm kernels) and candle's own (`candle-bp-*`, candle's element-wise ops, with the
//! calling thread as one more worker). After each candle op its workers spin, by default up to
//! 25 000 times, before they sleep, and the next thing a step does is often one of our
//! convolutions, whose rayon threads then share a core with a spinning candle worker. On the 2-core
//! development VM that spinning was 6 % of the CPU time of a hippocampus training step
//! (`perf record` of `bench_step --crop 32 48 32`).

/// The spin limit [`calm_candle_workers`] gives candle's CPU workers: enough to catch the next op of
/// a chain of element-wise ops, short enough not to compete with a convolution that follows.
///
/// Measured with `bench_step --crop 32 48 32 --iters 6 --warmup 2` (2 cores, five interleaved
/// rounds, median step seconds): 25 000 (candle's default) 2.87 s, 1 000 2.73 s (-4.8 %, faster in
/// 4 of 5 rounds), 0 2.89 s.
pub const CANDLE_WORKER_SPIN_LIMIT: u32 = 1000;

/// Candle's own default, used when the variable is set but not a number.
const CANDLE_DEFAULT_SPIN_LIMIT: u32 = 25_000;

const SPIN_LIMIT_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Sets candle's `CANDLE_BARRIER_POOL_SPIN_LIMIT` to [`CANDLE_WORKER_SPIN_LIMIT`] unless the user set
/// it, and returns the limit candle will use. Only how idle workers wait changes: results are
/// bit-identical.
///
/// Call it at the start of `main`, before any other thread starts and before the first candle CPU
/// op (candle reads the variable once, when it creates its pool).
pub fn calm_candle_workers() -> u32 {
    let user = std::env::var(SPIN_LIMIT_VAR).ok();
    if user.is_none() {
        std::env::set_var(SPIN_LIMIT_VAR, CANDLE_WORKER_SPIN_LIMIT.to_string());
    }
    effective_spin_limit(user.as_deref())
}

/// The limit candle uses given the user's value of the variable (parsed as candle parses it), or
/// ours when there is none.
fn effective_spin_limit(user: Option<&str>) -> u32 {
    match user {
        None => CANDLE_WORKER_SPIN_LIMIT,
        Some(v) => v.parse().unwrap_or(CANDLE_DEFAULT_SPIN_LIMIT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_users_spin_limit_wins_and_ours_fills_in() {
        assert_eq!(effective_spin_limit(None), CANDLE_WORKER_SPIN_LIMIT);
        assert_eq!(effective_spin_limit(Some("0")), 0);
        assert_eq!(effective_spin_limit(Some("250000")), 250_000);
        // candle ignores what u32::from_str rejects and falls back to its own default
        assert_eq!(effective_spin_limit(Some(" 5")), CANDLE_DEFAULT_SPIN_LIMIT);
        assert_eq!(
            effective_spin_limit(Some("fast")),
            CANDLE_DEFAULT_SPIN_LIMIT
        );
    }
}
