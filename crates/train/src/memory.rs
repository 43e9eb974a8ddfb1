//! An estimate of a training run's peak host memory, checked against the memory available before
//! training starts, so that a patch or batch too large for the machine is refused with numbers
//! instead of an abort in the allocator.
//!
//! The estimate is the stage outputs of both networks for one batch (from
//! [`duoseg_models::summary`]) times [`BYTES_PER_STAGE_OUTPUT_BYTE`], the weights with their
//! gradients and momentum, the loaded cases, and a fixed [`BASE_BYTES`]. On the CPU it was compared
//! with measured peaks (see [`BYTES_PER_STAGE_OUTPUT_BYTE`]); it is an estimate, so a run is refused
//! only when the estimate exceeds the memory available, and warned about from 80 % of it.

use duoseg_models::{summary, Arch, NetConfig};

use crate::config::{ConfigError, TrainConfig};
use crate::data::TrainData;
use crate::error::{Result, TrainError};

/// Bytes held per byte of stage output during one step: the activations kept for backward inside
/// each stage (several convolutions, batch norms and ReLUs per stage output), their gradients, and
/// the temporaries of the losses. Chosen from peaks of resident memory measured with
/// `/usr/bin/time -v` (one-step estimate / measured peak): `cargo xtask bench step` (both nets, width
/// 16, 2+2 crops of 64x64x48) 3.77 / 3.31 GiB; the demo config 0.60 / 0.49 GiB; hippocampus (2+1 crops
/// of 32x48x32, EMA teachers, with evaluation) 1.16 / 1.62 GiB.
pub const BYTES_PER_STAGE_OUTPUT_BYTE: f64 = 8.0;

/// Bytes per weight: the value, its gradient and its SGD momentum (f32).
const BYTES_PER_PARAMETER: u64 = 12;

/// The binary, its libraries and thread stacks.
pub const BASE_BYTES: u64 = 256 << 20;

/// Estimated peak bytes of one training step of `cfg` (both networks, one batch of labeled and
/// unlabeled crops of `cfg.patch`), without the data.
pub fn training_step_bytes(cfg: &TrainConfig) -> Result<u64> {
    let net = NetConfig {
        in_channels: 1,
        n_classes: cfg.model.n_classes,
        base_width: cfg.model.base_width,
        dropout: cfg.model.dropout,
    };
    let batch = cfg.batch.labeled + cfg.batch.unlabeled;
    let (mut outputs, mut params) = (0u64, 0u64);
    for arch in [Arch::Vnet, Arch::Resnet34] {
        for row in summary(arch, net, batch, cfg.patch).map_err(TrainError::Tensor)? {
            outputs = outputs.saturating_add(row.output.iter().map(|&d| d as u64).product());
            params += row.params as u64;
        }
    }
    let activations = outputs as f64 * 4.0 * BYTES_PER_STAGE_OUTPUT_BYTE;
    Ok((activations.min(u64::MAX as f64) as u64)
        .saturating_add(params * BYTES_PER_PARAMETER)
        .saturating_add(BASE_BYTES))
}

/// Bytes the loaded cases hold (intensities, labels and a resampled case's source
/// label).
pub fn data_bytes(data: &TrainData) -> u64 {
    data.labeled
        .iter()
        .chain(data.unlabeled.iter())
        .chain(data.test.iter())
        .chain(data.validation.iter())
        .map(|c| {
            let labels = [&c.label, &c.source_label];
            (c.image.len() * 4
                + labels
                    .iter()
                    .map(|l| l.as_ref().map_or(0, Vec::len))
                    .sum::<usize>()) as u64
        })
        .sum()
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Compares the estimate for `cfg` and `data` with `available` bytes: an error (a config error: the
/// fix is a smaller patch or batch) when it exceeds them, a warning from 80 % of them.
pub fn check_fits(cfg: &TrainConfig, data: &TrainData, available: u64) -> Result<Option<String>> {
    let step = training_step_bytes(cfg)?;
    let data = data_bytes(data);
    let total = step.saturating_add(data);
    let what = format!(
        "patch {:?} x batch {}+{} (width {}) needs about {} ({} for a training step, {} for the \
         loaded cases), and {} of memory are available",
        cfg.patch,
        cfg.batch.labeled,
        cfg.batch.unlabeled,
        cfg.model.base_width,
        gib(total),
        gib(step),
        gib(data),
        gib(available)
    );
    if total > available {
        return Err(TrainError::Config(ConfigError::Invalid(format!(
            "{what}; lower `patch`, `batch` or `model.base_width`"
        ))));
    }
    Ok((total > available / 10 * 8)
        .then(|| format!("warning: {what}: the run may be slow or killed")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> TrainConfig {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/demo.json");
        TrainConfig::load(std::path::Path::new(path)).unwrap()
    }

    fn empty_data() -> TrainData {
        TrainData {
            labeled: Vec::new().into(),
            unlabeled: Vec::new().into(),
            test: Vec::new(),
            validation: Vec::new(),
            notes: Vec::new(),
        }
    }

    #[test]
    fn the_estimate_grows_with_the_crop_voxels_and_batch() {
        let mut cfg = demo();
        let base = training_step_bytes(&cfg).unwrap();
        cfg.patch = [64, 32, 32];
        let twice = training_step_bytes(&cfg).unwrap();
        cfg.batch.unlabeled += 4; // 2+2 -> 2+6: twice the crops
        let four = training_step_bytes(&cfg).unwrap();
        let fixed = 2 * base - twice; // weights and BASE_BYTES
        assert!(fixed > BASE_BYTES && fixed < base, "{fixed} {base}");
        let act = (base - fixed) as f64;
        assert!(((twice - fixed) as f64 / act - 2.0).abs() < 1e-6);
        assert!(((four - fixed) as f64 / act - 4.0).abs() < 1e-6);
    }

    #[test]
    fn a_batch_too_large_for_the_memory_is_refused_with_numbers() {
        let mut cfg = demo();
        let data = empty_data();
        let need = training_step_bytes(&cfg).unwrap();
        assert_eq!(check_fits(&cfg, &data, 4 * need).unwrap(), None);
        assert!(check_fits(&cfg, &data, need + need / 10)
            .unwrap()
            .is_some_and(|w| w.starts_with("warning")));
        cfg.batch.labeled = 4000;
        let err = check_fits(&cfg, &data, 4 * need).unwrap_err().to_string();
        assert!(
            err.contains("4000+2") && err.contains("GiB of memory are available"),
            "{err}"
        );
    }
}
