//! The dual-stream training loop, schedules, checkpoints, sliding-window inference and evaluation.
//!
//! Architecture invariant: the only crate that ties io, models, losses and metrics together; the CLI
//! is a thin layer over it. Library code never prints: progress goes through an observer callback.

// Voxel loops index several buffers at once; ranges read clearer than zipped iterators there.
#![allow(clippy::needless_range_loop)]

pub mod checkpoint;
pub mod sgd;
pub mod sliding;

pub use sgd::{OptimConfig, Sgd};
pub use sliding::{Blend, SlidingWindow};
pub mod config;
pub mod phantom;

pub use config::{Method, TrainConfig};
pub mod data;
pub mod figures;
pub mod run;
pub mod trainer;
