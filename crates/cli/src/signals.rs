//! SIGINT (Ctrl-C) and SIGTERM: the first sets the stop flag the trainer polls after each iteration
//! (it then writes a checkpoint and returns), and records which signal came, so that the process exits
//! with 128 + its number (130, 143) as shells expect. A second SIGINT while stopping exits at once with
//! 130, without a checkpoint. SIGPIPE ends the process quietly (`duoseg inspect ... | head`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};

/// The stop flag and the signal that set it.
#[derive(Clone)]
pub struct Stop {
    /// Set by SIGINT or SIGTERM; the trainer stops after the current iteration.
    pub flag: Arc<AtomicBool>,
    /// 128 + the number of the signal that came first (0: none yet).
    code: Arc<AtomicUsize>,
}

impl Stop {
    /// The exit code of a run stopped by a signal: 130 after SIGINT, 143 after SIGTERM.
    pub fn exit_code(&self) -> u8 {
        match self.code.load(Ordering::SeqCst) {
            0 => 130,
            c => u8::try_from(c).unwrap_or(130),
        }
    }
}

/// Installs the handlers once per process and returns the shared stop state.
pub fn install() -> Result<Stop> {
    static STOP: OnceLock<Stop> = OnceLock::new();
    if let Some(s) = STOP.get() {
        return Ok(s.clone());
    }
    let stop = Stop {
        flag: Arc::new(AtomicBool::new(false)),
        code: Arc::new(AtomicUsize::new(0)),
    };
    // Registered first, so that it sees the flag as the previous signal left it: a SIGINT that
    // finds the flag already set exits at once.
    signal_hook::flag::register_conditional_shutdown(SIGINT, 130, Arc::clone(&stop.flag))
        .context("cannot install the SIGINT handler")?;
    for (signal, code) in [(SIGINT, 130), (SIGTERM, 143)] {
        signal_hook::flag::register_usize(signal, Arc::clone(&stop.code), code)
            .with_context(|| format!("cannot install the handler of signal {signal}"))?;
        signal_hook::flag::register(signal, Arc::clone(&stop.flag))
            .with_context(|| format!("cannot install the handler of signal {signal}"))?;
    }
    Ok(STOP.get_or_init(|| stop).clone())
}

/// Restores the default action of SIGPIPE (Rust ignores it, which turns a closed pipe into a panic
/// in `println!`): a reader that goes away ends the process quietly, as for other Unix tools.
pub fn quiet_broken_pipe() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to SIG_DFL at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
