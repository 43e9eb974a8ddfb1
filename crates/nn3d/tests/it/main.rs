//! Integration tests of duoseg-nn3d (one binary, see STYLE.md): one module per layer family.

mod batch_norm;
mod bn_act;
mod conv_bn;
