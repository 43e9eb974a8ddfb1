//! Segmentation metrics exactly as `medpy.metric.binary` 0.5 computes them: Dice, Jaccard, HD95, ASD
//! (plus ASSD, HD and normalised surface Dice), in voxel units or millimetres.
//!
//! Architecture invariant: this crate never imports candle; it works on plain boolean masks.
