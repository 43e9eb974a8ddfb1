//! Agreement with the PyTorch fixtures of tests/reference/models_losses.py (added below).
