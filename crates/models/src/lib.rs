//! The two subnetworks of duoseg: V-Net and ResNet-34 V-Net, with PyTorch-compatible parameter names.
//!
//! Architecture invariant: models use nn3d layers and candle only; no I/O, no training logic.
