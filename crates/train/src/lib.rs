//! The dual-stream training loop, schedules, checkpoints, sliding-window inference and evaluation.
//!
//! Architecture invariant: the only crate that ties io, models, losses and metrics together; the CLI
//! is a thin layer over it. Library code never prints: progress goes through an observer callback.

pub mod checkpoint;
pub mod figures;
pub mod phantom;
pub mod run;
pub mod sgd;
pub mod sliding;

pub use sgd::{OptimConfig, Sgd};
pub use sliding::{Blend, SlidingWindow};
