//! The dual-stream training loop, schedules, checkpoints, sliding-window inference and evaluation.
//!
//! Architecture invariant: the only crate that ties io, models, losses and metrics together; the CLI
//! is a thin layer over it. Library code never prints: progress goes through an [`Observer`].
//!
//! Layout, by stage: [`config`] (what a run is), [`data`] (the cases it uses), [`nets`] (the two
//! networks), [`method`] (one type per training method), [`learner`] (the loop), [`evaluation`]
//! (inference and metrics), [`pipeline`] (all of it in order), with [`checkpoint`], [`run`] (the run
//! folder), [`sgd`], [`sliding`], [`figures`] and [`phantom`] (the demo's synthetic data) beside them.
//! Every fallible function returns [`TrainError`].

// Voxel loops index several buffers at once; ranges read clearer than zipped iterators there.
#![allow(clippy::needless_range_loop)]

pub mod adam;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod diagnosis;
mod error;
pub mod evaluation;
pub mod figures;
mod inplace;
pub mod learner;
pub mod memory;
pub mod method;
pub mod nets;
pub mod phantom;
pub mod pipeline;
pub mod run;
pub mod sgd;
pub mod sliding;
pub mod weights;

pub use config::{Method, TrainConfig};
pub use error::{Result, TrainError};
pub use evaluation::{evaluate, evaluate_run, predict_case, reevaluate_run, Prediction};
pub use learner::{train, Finish, Observer, Silent, TrainOptions};
pub use method::TrainingMethod;
pub use nets::{Nets, Predictor};
pub use pipeline::{run_training, RunOutcome};
pub use sgd::{OptimConfig, Sgd};
pub use sliding::{Blend, SlidingWindow};
