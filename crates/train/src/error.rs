//! The one error type of `duoseg-train`. Each variant names what failed: the file, the case or the
//! iteration. Display strings carry their cause in one line; no variant repeats its cause as a
//! `source`, so printing the chain (`{:#}`) never says a message twice.

use std::path::PathBuf;

/// Everything training, evaluation and inference can fail with.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A tensor operation failed (shape mismatch, device error, out of memory).
    #[error("{0}")]
    Tensor(candle_core::Error),
    /// Reading or decoding a volume or dataset failed (the message names the file).
    #[error("{0}")]
    Data(duoseg_io::Error),
    /// A file of the run folder (log, config, summary, figure, prediction) could not be read or written.
    #[error("{}: {error}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// A checkpoint cannot be written, read or used.
    #[error("{}: {reason}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The training config is invalid (after every override).
    #[error("{0}")]
    Config(crate::config::ConfigError),
    /// A dataset, split or case does not fit the run.
    #[error("{0}")]
    Dataset(String),
    /// One case cannot be used.
    #[error("case {case}: {reason}")]
    Case {
        /// The case id.
        case: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A loss or a network output stopped being finite.
    #[error("non-finite loss at iteration {iteration}: {name} = {value}; stopping ({})", last_checkpoint_text(*.last_checkpoint))]
    NonFinite {
        /// The 1-based iteration.
        iteration: usize,
        /// Which value (a loss term or a net's logits).
        name: String,
        /// The value seen.
        value: f64,
        /// The newest checkpoint on disk, when there is one.
        last_checkpoint: Option<usize>,
    },
    /// A weight or batch-norm buffer stopped being finite after an SGD step.
    #[error("non-finite state at iteration {iteration}: {tensor} holds NaN or infinity; stopping ({})", last_checkpoint_text(*.last_checkpoint))]
    NonFiniteState {
        /// The 1-based iteration whose update made it non-finite.
        iteration: usize,
        /// The tensor's checkpoint name (`net_a.<name>` / `net_b.<name>`).
        tensor: String,
        /// The newest checkpoint on disk, when there is one.
        last_checkpoint: Option<usize>,
    },
    /// The run folder cannot be used as asked (another run's files, a checkpoint of another run).
    #[error("{0}")]
    RunFolder(String),
    /// The background batch loader ended before the run did.
    #[error("the batch loader stopped at iteration {iteration}")]
    LoaderStopped {
        /// The 1-based iteration that found no batch.
        iteration: usize,
    },
}

fn last_checkpoint_text(n: Option<usize>) -> String {
    match n {
        Some(n) => format!("the last good checkpoint is iteration {n}"),
        None => "no checkpoint was written".into(),
    }
}

impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        TrainError::Tensor(e)
    }
}

impl From<crate::config::ConfigError> for TrainError {
    fn from(e: crate::config::ConfigError) -> Self {
        TrainError::Config(e)
    }
}

impl From<duoseg_io::Error> for TrainError {
    fn from(e: duoseg_io::Error) -> Self {
        TrainError::Data(e)
    }
}

impl TrainError {
    /// A file error, naming the file.
    pub fn file(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrainError {
        let path = path.into();
        move |error| TrainError::File { path, error }
    }

    /// A checkpoint error, naming the checkpoint.
    pub fn checkpoint(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> TrainError {
        TrainError::Checkpoint {
            path: path.into(),
            reason: reason.to_string(),
        }
    }

    /// A case error, naming the case.
    pub fn case(case: impl Into<String>, reason: impl std::fmt::Display) -> TrainError {
        TrainError::Case {
            case: case.into(),
            reason: reason.to_string(),
        }
    }
}

/// `Result` with [`TrainError`].
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
