//! The method's loss terms: supervised CE + Dice, entropy-filtered pseudo-labels, the L1 consistency
//! term, the prototype contrastive loss, their schedules and the assembly of one iteration's loss.
//!
//! Architecture invariant: pure tensor functions over candle; no model or I/O knowledge.
