//! Integration tests of duoseg-models: parameter counts, PyTorch names, forward / gradient agreement with
//! the PyTorch fixtures of `tests/reference/models_losses.py`, input checks, a CPU overfitting run.

mod fixtures;
mod overfit;
mod shapes;
