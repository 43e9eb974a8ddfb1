//! The two subnetworks of duoseg: V-Net and ResNet-34 V-Net, with PyTorch-compatible parameter names.
//!
//! Architecture invariant: models use nn3d layers and candle only; no I/O, no training logic.
//!
//! Parameter names are the module paths of the PyTorch reference (`tests/reference/models_losses.py`,
//! identical to `vnet_ref.py`): V-Net `b1.0.weight` (conv), `b1.1.running_var` (BN), `d1.0.weight`,
//! ..., `u5.0.weight` (conv-transpose), `b9.0.weight`, `out.weight`; ResNet-34 V-Net `stem.0.weight`,
//! `layers.{stage}.{block}.{c1,n1,c2,n2}.*`, `layers.{stage}.0.down.{0,1}.*`, then the same decoder names.
//! A PyTorch `state_dict` saved with `safetensors.torch.save_file` loads unchanged. DTC's level-set head
//! ([`SdfHead`]) is `out_sdf.{weight,bias}`.

mod blocks;
mod decoder;
mod discriminator;
mod heads;
mod init;
mod nets;
mod summary;

pub use blocks::Upsampling;
pub use decoder::DROPOUT_P;
pub use discriminator::Discriminator;
pub use duoseg_nn3d::{is_batch_norm_buffer, trainable_vars};
pub use heads::SdfHead;
pub use init::{init_seeded, standard_normal};
pub use nets::{build, check_input, Arch, NetConfig, ResNet34VNet, SegNet, VNet, INPUT_MULTIPLE};
pub use summary::{summary, LayerRow};
