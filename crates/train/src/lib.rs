//! The dual-stream training loop, schedules, checkpoints, sliding-window inference and evaluation.
//!
//! Architecture invariant: the only crate that ties io, models, losses and metrics together; the CLI
//! is a thin layer over it.
