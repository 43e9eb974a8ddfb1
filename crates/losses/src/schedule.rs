//! Loss weight schedules `lambda(t)`.

use serde::{Deserialize, Serialize};

/// Shape of a weight schedule over training progress `s = t / t_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleShape {
    /// `w exp(-5 (1 - s)^2)`: ramp-up, the field's usual consistency schedule. Default.
    #[default]
    RampUp,
    /// `w` throughout.
    Constant,
    /// `w exp(4 (1 - s)^2)`: the formula printed in the paper (starts at `w e^4` and decays to `w`).
    PaperPrinted,
}

/// A loss weight `lambda(t) = weight * shape(t / t_max)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LambdaSchedule {
    /// The weight `w`.
    pub weight: f64,
    /// The shape.
    pub shape: ScheduleShape,
}

impl LambdaSchedule {
    /// The weight at iteration `t` of `t_max` (progress clamped to [0, 1]; `t_max = 0` counts as done).
    pub fn at(&self, iteration: usize, total_iterations: usize) -> f64 {
        let s = if total_iterations == 0 {
            1.0
        } else {
            (iteration as f64 / total_iterations as f64).clamp(0.0, 1.0)
        };
        let r = (1.0 - s) * (1.0 - s);
        match self.shape {
            ScheduleShape::RampUp => self.weight * (-5.0 * r).exp(),
            ScheduleShape::Constant => self.weight,
            ScheduleShape::PaperPrinted => self.weight * (4.0 * r).exp(),
        }
    }
}
