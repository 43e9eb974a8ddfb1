//! The run configuration (`configs/*.json`): every option of SPEC sections 2-4, serde with
//! `deny_unknown_fields` so that a typo is an error, and defaults equal to the paper's LA setting.

use std::path::{Path, PathBuf};

use duoseg_losses::LossConfig;
use serde::{Deserialize, Serialize};

use crate::phantom::PhantomConfig;
use crate::sgd::OptimConfig;
use crate::sliding::{Blend, SlidingWindow};

/// Which objective is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The paper's method (SPEC section 2) with `loss` as configured. Default.
    #[default]
    Duoseg,
    /// Both nets trained on the labeled crops only (the lower bound every table needs).
    Supervised,
    /// Ablation: `loss` without the consistency term `L_reg`.
    NoReg,
    /// Ablation: `loss` without the contrastive term `L_c`.
    NoContrastive,
    /// The published reference code's effective objective (`LossConfig::reference_code`).
    ReferenceCode,
    /// Mean Teacher (Tarvainen & Valpola 2017) on a V-Net, as UA-MT's LA code runs it without the
    /// uncertainty mask (docs/methods.md section 1); options in `baseline`.
    MeanTeacher,
    /// UA-MT (Yu et al. 2019): Mean Teacher whose consistency counts only voxels where T noisy
    /// teacher passes agree (docs/methods.md section 2); options in `baseline`.
    UaMt,
    /// MCF (Wang et al. 2023): the V-Net and the ResNet-34 V-Net, the one with the lower Dice loss
    /// teaching the other with sharpened pseudo-labels, plus a review of the labeled voxels where
    /// they disagree (docs/methods.md section 6); options in `baseline`.
    Mcf,
    /// DTC (Luo et al. 2021): a V-Net with a level-set head regressing the signed distance map, and
    /// a consistency between the segmentation and the level set mapped back to a mask
    /// (docs/methods.md section 4); options in `baseline`.
    Dtc,
    /// MC-Net (Wu et al. 2021): a V-Net with a second decoder that up-samples trilinearly, each
    /// decoder pulled toward the other's sharpened prediction (docs/methods.md section 5); options
    /// in `baseline`.
    McNet,
    /// SASSNet (Li et al. 2020): DTC's V-Net with a level-set head, plus a discriminator (Adam)
    /// that the segmenter learns to fool with its unlabeled crops' level sets (docs/methods.md
    /// section 3); options in `baseline`.
    Sassnet,
}

/// The students' strong view of the unlabeled crops (`strong_view`, duoseg with EMA teachers): the
/// teachers label the crop as it is, the students learn those labels on a photometrically perturbed
/// copy (FixMatch's weak-to-strong consistency; intensities only, so every voxel keeps its place).
/// Per crop: `x' = c x + b + n` with `c` uniform in `[1 - contrast, 1 + contrast]`, `b` uniform in
/// `[-brightness, brightness]` and `n ~ N(0, noise_std^2)` per voxel (z-scored intensities).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StrongView {
    /// Half-width of the contrast factor's range.
    pub contrast: f64,
    /// Half-width of the brightness shift's range.
    pub brightness: f64,
    /// Standard deviation of the per-voxel Gaussian noise.
    pub noise_std: f64,
}

impl Default for StrongView {
    fn default() -> Self {
        StrongView {
            contrast: 0.25,
            brightness: 0.25,
            noise_std: 0.1,
        }
    }
}

/// The options of the comparison methods (`mean_teacher`, `ua_mt`, `mcf`); every default is the
/// value of the method's public LA code (docs/methods.md). A method refuses a changed option it
/// does not read.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaselineConfig {
    /// Weight of the consistency term at the end of its ramp; `null` (default): the method's public
    /// value (mean_teacher, ua_mt, mcf 0.1; dtc, mc_net 1.0; sassnet 0.01).
    pub consistency: Option<f64>,
    /// Length of the ramp `exp(-5 (1 - e / L)^2)` in "epochs" of `epoch_iterations` (40).
    pub rampup_epochs: f64,
    /// Iterations per "epoch" of the ramp (150: the code's `iter_num // 150`).
    pub epoch_iterations: usize,
    /// EMA decay of the teacher, `min(1 - 1 / (t + 1), ema_decay)` (Mean Teacher, UA-MT: 0.99).
    pub ema_decay: f64,
    /// Standard deviation of the Gaussian noise added to the teacher's input (0.1).
    pub noise_std: f64,
    /// The noise is clipped to `[-noise_clip, noise_clip]` (0.2).
    pub noise_clip: f64,
    /// UA-MT's Monte-Carlo teacher passes T (8; an even number: the code runs T/2 passes of the
    /// unlabeled batch repeated twice).
    pub mc_passes: usize,
    /// The sharpening temperature of MCF's pseudo-labels and of MC-Net's targets (0.1).
    pub temperature: f64,
    /// MCF's weight of the review term on labeled voxels where the nets disagree (0.5).
    pub review_weight: f64,
    /// DTC's transform constant k of `sigmoid(-k sdf)` (1500).
    pub transform_k: f64,
    /// DTC's and SASSNet's weight of the level-set regression in the supervised loss (beta, 0.3).
    pub sdf_weight: f64,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig {
            consistency: None,
            rampup_epochs: 40.0,
            epoch_iterations: 150,
            ema_decay: 0.99,
            noise_std: 0.1,
            noise_clip: 0.2,
            mc_passes: 8,
            temperature: 0.1,
            review_weight: 0.5,
            transform_k: 1500.0,
            sdf_weight: 0.3,
        }
    }
}

impl BaselineConfig {
    fn is_default(&self) -> bool {
        *self == BaselineConfig::default()
    }

    /// The options `method` reads (the others must keep their defaults).
    fn used_by(method: Method) -> &'static [&'static str] {
        const RAMP: [&str; 3] = ["consistency", "rampup_epochs", "epoch_iterations"];
        match method {
            Method::MeanTeacher => &[
                RAMP[0],
                RAMP[1],
                RAMP[2],
                "ema_decay",
                "noise_std",
                "noise_clip",
            ],
            Method::UaMt => &[
                RAMP[0],
                RAMP[1],
                RAMP[2],
                "ema_decay",
                "noise_std",
                "noise_clip",
                "mc_passes",
            ],
            Method::Mcf => &[RAMP[0], RAMP[1], RAMP[2], "temperature", "review_weight"],
            Method::Dtc => &[RAMP[0], RAMP[1], RAMP[2], "transform_k", "sdf_weight"],
            Method::McNet => &[RAMP[0], RAMP[1], RAMP[2], "temperature"],
            Method::Sassnet => &[RAMP[0], RAMP[1], RAMP[2], "sdf_weight"],
            _ => &[],
        }
    }

    /// The options that differ from their defaults, by their config names (the serialised fields,
    /// so a new option is covered without being listed here).
    fn changed(&self) -> Vec<String> {
        let fields = |c: &BaselineConfig| match serde_json::to_value(c) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        let default = fields(&BaselineConfig::default());
        fields(self)
            .into_iter()
            .filter(|(name, value)| default.get(name) != Some(value))
            .map(|(name, _)| name)
            .collect()
    }

    /// The consistency weight `method` uses: the configured one, else its public code's.
    pub fn consistency_for(&self, method: Method) -> f64 {
        self.consistency.unwrap_or(match method {
            Method::Dtc | Method::McNet => 1.0,
            Method::Sassnet => 0.01,
            _ => 0.1,
        })
    }

    /// Ranges, and no changed option `method` does not read.
    fn validate(&self, method: Method) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if let Some(name) = self
            .changed()
            .into_iter()
            .find(|n| !Self::used_by(method).contains(&n.as_str()))
        {
            return bad(format!(
                "baseline.{name} is not an option of method {}{}",
                method.name(),
                match Self::used_by(method) {
                    [] => " (the baseline section belongs to mean_teacher, ua_mt, mcf, dtc, mc_net and sassnet)"
                        .to_string(),
                    used => format!(" (it reads baseline.{})", used.join(", baseline.")),
                }
            ));
        }
        let finite_non_negative = |x: f64| x.is_finite() && x >= 0.0;
        for (name, v) in [
            ("consistency", self.consistency.unwrap_or(0.0)),
            ("rampup_epochs", self.rampup_epochs),
            ("transform_k", self.transform_k),
            ("sdf_weight", self.sdf_weight),
            ("noise_std", self.noise_std),
            ("noise_clip", self.noise_clip),
            ("review_weight", self.review_weight),
        ] {
            if !finite_non_negative(v) {
                return bad(format!("baseline.{name} {v} must be finite and >= 0"));
            }
        }
        if self.epoch_iterations == 0 {
            return bad("baseline.epoch_iterations must be positive".into());
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad(format!(
                "baseline.ema_decay {} must lie in [0, 1)",
                self.ema_decay
            ));
        }
        if self.mc_passes < 2 || self.mc_passes % 2 != 0 {
            return bad(format!(
                "baseline.mc_passes {} must be an even number >= 2",
                self.mc_passes
            ));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad(format!(
                "baseline.temperature {} must be positive",
                self.temperature
            ));
        }
        if method == Method::McNet && self.temperature < 0.01 {
            // MC-Net's sharpening p^(1/T) / (p^(1/T) + (1 - p)^(1/T)) underflows in f32 below
            return bad(format!(
                "baseline.temperature {} must be at least 0.01 for mc_net",
                self.temperature
            ));
        }
        Ok(())
    }
}

/// The networks a method trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Networks {
    /// Subnet A (V-Net) and subnet B (ResNet-34 V-Net).
    Pair,
    /// Subnet A (V-Net) alone.
    VNet,
    /// Subnet A (V-Net) with a level-set head (`models::SdfHead`, `out_sdf`).
    VNetSdf,
    /// Subnet A (V-Net) with MC-Net's second, trilinear decoder (`dec2`).
    VNetTwoDecoders,
}

impl Method {
    /// The networks the method trains (its papers' backbones).
    pub fn networks(self) -> Networks {
        match self {
            Method::Duoseg
            | Method::Supervised
            | Method::NoReg
            | Method::NoContrastive
            | Method::ReferenceCode
            | Method::Mcf => Networks::Pair,
            Method::MeanTeacher | Method::UaMt => Networks::VNet,
            Method::Dtc | Method::Sassnet => Networks::VNetSdf,
            Method::McNet => Networks::VNetTwoDecoders,
        }
    }

    /// Whether the method is one of the comparison methods (options in `baseline`, not `loss`).
    pub fn is_baseline(self) -> bool {
        matches!(
            self,
            Method::MeanTeacher
                | Method::UaMt
                | Method::Mcf
                | Method::Dtc
                | Method::McNet
                | Method::Sassnet
        )
    }

    /// All methods, for `--help` and sweeps.
    pub const ALL: [Method; 11] = [
        Method::Duoseg,
        Method::Supervised,
        Method::NoReg,
        Method::NoContrastive,
        Method::ReferenceCode,
        Method::MeanTeacher,
        Method::UaMt,
        Method::Mcf,
        Method::Dtc,
        Method::McNet,
        Method::Sassnet,
    ];

    /// The snake_case name used in configs and reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::Duoseg => "duoseg",
            Method::Supervised => "supervised",
            Method::NoReg => "no_reg",
            Method::NoContrastive => "no_contrastive",
            Method::ReferenceCode => "reference_code",
            Method::MeanTeacher => "mean_teacher",
            Method::UaMt => "ua_mt",
            Method::Mcf => "mcf",
            Method::Dtc => "dtc",
            Method::McNet => "mc_net",
            Method::Sassnet => "sassnet",
        }
    }

    /// The duoseg loss actually assembled for this method from the configured one; `None` for
    /// supervised-only and the comparison methods, which do not read `loss`.
    pub fn effective_loss(self, loss: &LossConfig) -> Option<LossConfig> {
        match self {
            Method::Duoseg => Some(loss.clone()),
            Method::Supervised
            | Method::MeanTeacher
            | Method::UaMt
            | Method::Mcf
            | Method::Dtc
            | Method::McNet
            | Method::Sassnet => None,
            Method::NoReg => Some(LossConfig {
                use_reg: false,
                ..loss.clone()
            }),
            Method::NoContrastive => Some(LossConfig {
                use_contrastive: false,
                ..loss.clone()
            }),
            Method::ReferenceCode => Some(LossConfig::reference_code()),
        }
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown method {s:?} (one of {})",
                    Method::ALL.map(Method::name).join(", ")
                )
            })
    }
}

/// How cases are split into labeled, unlabeled and test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Split {
    /// `dataset.json` has `train` and `test` lists of case ids (LA): labeled = the first `labeled`
    /// train cases that have a label, unlabeled = the rest, test = the test list.
    Lists,
    /// Fold `fold` of `folds.json` (`folds[i].train` / `.test`), labeled = first `labeled` of train.
    Fold {
        /// Fold index.
        fold: usize,
    },
    /// The labelled cases in id order; the last `test` are held out, the first `labeled` of the rest
    /// are labeled, the others unlabeled (for datasets without an official split, e.g. hippocampus).
    Holdout {
        /// Number of held-out test cases.
        test: usize,
    },
}

pub use duoseg_io::Normalize;

/// Which training cases are labeled: a count (the first N of the training list that have a label,
/// the literature's convention) or a file listing case ids, one per line. In JSON a number or a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LabeledCases {
    /// The first N training cases that have a label.
    Count(usize),
    /// The cases named in this file (relative paths: from the dataset folder, else the current one).
    List(PathBuf),
}

impl LabeledCases {
    /// The count, when the config gives one.
    pub fn count(&self) -> Option<usize> {
        match self {
            LabeledCases::Count(n) => Some(*n),
            LabeledCases::List(_) => None,
        }
    }
}

/// Where the data comes from and how it is prepared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Dataset folder (MSD layout: `dataset.json`, `imagesTr/`, `labelsTr/`); `--data` overrides it.
    /// Relative paths are taken from the current directory.
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// Generate procedural phantoms instead of reading files (the demo).
    #[serde(default)]
    pub synthetic: Option<PhantomConfig>,
    /// Labeled / unlabeled / test split.
    pub split: Split,
    /// Which training cases keep their labels: a count or a list file (`--labeled N` overrides it).
    /// Every other training case, and every image without a label, is unlabeled.
    pub labeled: LabeledCases,
    /// Intensity normalisation.
    #[serde(default)]
    pub normalize: Normalize,
    /// Pad every volume (zeros, centred) so each side is a multiple of this (1 = no padding).
    #[serde(default = "one")]
    pub pad_to_multiple: usize,
    /// Random rot90 in the axial plane + random flip of training crops (UA-MT / MC-Net; MCF: off).
    #[serde(default)]
    pub augment: bool,
    /// Cut every case that has a label (the unlabeled training cases included, before their label
    /// is hidden) to the label's box plus a margin, before normalisation: the pancreas protocol
    /// (`{"margin": [25, 25, null], "min_size": [96, 96, 96]}`). Predictions are written in the
    /// whole volume. `null` (default): whole volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop_to_label: Option<duoseg_io::LabelCrop>,
    /// Training spacing in mm, `[x, y, z]` in the volumes' own axis order (the NIfTI file's i, j, k;
    /// the order of `patch`), or one number for all three. Every image is resampled to it
    /// (trilinear) and every label (nearest neighbour) after the label crop and before
    /// normalisation; predictions are taken back to each source grid (class probabilities
    /// trilinear, then argmax). `null` (default): no resampling.
    #[serde(default, deserialize_with = "spacing_key")]
    pub spacing: Option<[f64; 3]>,
    /// Spacing in mm (`[x, y, z]` or one number) of volumes whose files carry none: the LA `.h5`
    /// files (0.625 mm isotropic). Used for their mm metrics and for `spacing`; files with a
    /// spacing of their own (NIfTI) keep it. `null` (default): such files are taken as 1 mm, and
    /// the run says so.
    #[serde(default, deserialize_with = "spacing_mm_key")]
    pub spacing_mm: Option<[f64; 3]>,
}

fn one() -> usize {
    1
}

/// A spacing in mm from JSON: `null`, one number (isotropic) or three (x, y, z); `key` names the
/// field in the error.
fn spacing_value<'de, D: serde::Deserializer<'de>>(
    d: D,
    key: &str,
) -> Result<Option<[f64; 3]>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Spacing {
        One(f64),
        Many(Vec<f64>),
    }
    match Option::<Spacing>::deserialize(d).map_err(|_| {
        serde::de::Error::custom(format!(
            "{key}: expected a spacing in mm, one number or three [x, y, z]"
        ))
    })? {
        None => Ok(None),
        Some(Spacing::One(v)) => Ok(Some([v; 3])),
        Some(Spacing::Many(v)) => <[f64; 3]>::try_from(v.as_slice()).map(Some).map_err(|_| {
            serde::de::Error::custom(format!(
                "{key}: expected 3 values [x, y, z] in mm (or one number), got {}: {v:?}",
                v.len()
            ))
        }),
    }
}

fn spacing_key<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<[f64; 3]>, D::Error> {
    spacing_value(d, "data.spacing")
}

fn spacing_mm_key<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<[f64; 3]>, D::Error> {
    spacing_value(d, "data.spacing_mm")
}

/// Refuses a spacing that is not three positive, finite millimetre values, naming `key`.
fn check_spacing(key: &str, spacing: Option<[f64; 3]>) -> Result<(), ConfigError> {
    match spacing {
        Some(s) if !s.iter().all(|v| v.is_finite() && *v > 0.0) => Err(ConfigError::Invalid(
            format!("{key} {s:?}: every value must be a positive, finite spacing in mm"),
        )),
        _ => Ok(()),
    }
}

/// The two subnetworks (their architecture is fixed by SPEC section 1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Number of classes including background.
    pub n_classes: usize,
    /// Channels of the first stage (the paper: 16); every stage scales with it.
    #[serde(default = "sixteen")]
    pub base_width: usize,
    /// Dropout3d(0.5) after block five and block nine (V-Net / MCF: on).
    #[serde(default = "yes")]
    pub dropout: bool,
}

fn sixteen() -> usize {
    16
}
fn yes() -> bool {
    true
}

/// Batch composition per iteration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Labeled crops per iteration.
    pub labeled: usize,
    /// Unlabeled crops per iteration (ignored by the supervised method).
    pub unlabeled: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            labeled: 2,
            unlabeled: 2,
        }
    }
}

/// Which net(s) predict at evaluation and inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalNets {
    /// Average both nets' softmax (reference code). Default.
    #[default]
    Both,
    /// Subnet A (V-Net) only.
    A,
    /// Subnet B (ResNet-34 V-Net) only.
    B,
}

/// End-of-training evaluation and inference settings (SPEC section 4).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Sliding-window stride (LA 18x18x4, Pancreas 16^3); the window is the training patch.
    pub stride: [usize; 3],
    /// Windows per forward pass.
    #[serde(default = "four")]
    pub sw_batch: usize,
    /// Blending of overlapping windows.
    #[serde(default)]
    pub blend: Blend,
    /// Which net(s) predict.
    #[serde(default)]
    pub nets: EvalNets,
    /// Keep only the largest connected foreground component (per class).
    #[serde(default)]
    pub largest_component: bool,
    /// Number of test cases shown in `figures/` (image, ground truth, prediction slices).
    #[serde(default = "three")]
    pub figure_cases: usize,
    /// The model the test cases score: `last` (default; the seed / MCF protocol) or `best_val`, the
    /// model with the best mean Dice on validation cases carved from the labeled training cases
    /// (never the test cases).
    #[serde(default, skip_serializing_if = "CheckpointChoice::is_last")]
    pub checkpoint: CheckpointChoice,
    /// `best_val`: this many labeled cases (the last of the labeled list) become validation cases
    /// and are not trained on.
    #[serde(default = "two", skip_serializing_if = "is_two")]
    pub validation_cases: usize,
    /// `best_val`: score the validation cases every this many iterations (and after the last).
    #[serde(default = "two_hundred", skip_serializing_if = "is_two_hundred")]
    pub validate_every: usize,
}

/// Which model a run's evaluation uses (`eval.checkpoint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointChoice {
    /// The model after the last iteration.
    #[default]
    Last,
    /// The model that scored the best mean Dice on the validation cases.
    BestVal,
}

impl CheckpointChoice {
    fn is_last(&self) -> bool {
        *self == CheckpointChoice::Last
    }
}

fn two() -> usize {
    2
}
fn is_two(n: &usize) -> bool {
    *n == 2
}
fn two_hundred() -> usize {
    200
}
fn is_two_hundred(n: &usize) -> bool {
    *n == 200
}

fn four() -> usize {
    4
}
fn three() -> usize {
    3
}

/// Checkpointing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Write `checkpoints/iter-<n>.safetensors` every this many iterations (0 = only at the end).
    pub every: usize,
    /// Keep the newest this many (0 = all).
    pub keep_last: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            every: 500,
            keep_last: 3,
        }
    }
}

/// A whole training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Short name of the setting, used in reports.
    pub name: String,
    /// Data source, split and preparation.
    pub data: DataConfig,
    /// The two nets.
    pub model: ModelConfig,
    /// Training crop and sliding-window size (x, y, z).
    pub patch: [usize; 3],
    /// Crops per iteration.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Total iterations t_max.
    pub iterations: usize,
    /// SGD and the learning-rate schedule.
    #[serde(default)]
    pub optim: OptimConfig,
    /// Seed of every random stream (crops, augmentation, voxel sampling, initialisation).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Objective.
    #[serde(default)]
    pub method: Method,
    /// Loss terms and schedules (SPEC section 2).
    #[serde(default)]
    pub loss: LossConfig,
    /// Momentum of exponential-moving-average copies of both nets that give the pseudo-labels (the teacher
    /// rule still picks which net's copy teaches); `null` (default): the live nets teach, as SPEC section 2.
    /// Mean Teacher's remedy for confirmation bias, a SPEC section 6 candidate.
    #[serde(default)]
    pub ema_teacher: Option<f64>,
    /// Copy-paste of labeled into unlabeled crops (as BCP does), duoseg methods only: each unlabeled
    /// crop gets a cuboid cut from a labeled crop of the batch, this fraction of the crop along every
    /// axis, at a random place; under it the pasted labels are the targets (always reliable), elsewhere
    /// the pseudo-labels. `null` (default): no pasting.
    #[serde(default)]
    pub copy_paste: Option<f64>,
    /// A strong view of the unlabeled crops for the students ([`StrongView`]); needs `ema_teacher`,
    /// whose copies label the crops as they are. `null` (default): students and teachers see one view.
    #[serde(default)]
    pub strong_view: Option<StrongView>,
    /// Options of the comparison methods (`mean_teacher`, `ua_mt`, `mcf`); written only when changed.
    #[serde(default, skip_serializing_if = "BaselineConfig::is_default")]
    pub baseline: BaselineConfig,
    /// Evaluation and inference.
    pub eval: EvalConfig,
    /// Checkpoints.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// Write a plain progress line every this many iterations when stderr is not a terminal.
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// Every this many iterations, log how good the pseudo-labels are against the unlabeled crops'
    /// hidden labels (`pl_*` keys of `log.jsonl`, the diagnosis figure): the benchmark data sets
    /// label their "unlabeled" cases too. Used when every unlabeled case has a label and the
    /// method makes pseudo-labels; 0 switches it off.
    #[serde(default = "default_diagnose_every")]
    pub diagnose_every: usize,
}

fn default_seed() -> u64 {
    1337
}
fn default_log_every() -> usize {
    50
}
fn default_diagnose_every() -> usize {
    20
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        error: std::io::Error,
    },
    /// The JSON does not describe a config.
    #[error("{path}: {error}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        error: serde_json::Error,
    },
    /// A `--set key=value` override cannot be applied.
    #[error("--set {assignment}: {reason}")]
    Override {
        /// The `key=value` text.
        assignment: String,
        /// Why it cannot be applied.
        reason: String,
    },
    /// A value is out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl TrainConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.into(),
            error,
        })?;
        let cfg: TrainConfig = serde_json::from_str(&text).map_err(|error| ConfigError::Parse {
            path: path.into(),
            error,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what a trained model's config must satisfy to predict (the networks and the sliding
    /// window): run on every checkpoint's config when it is loaded, so that a damaged or hand-edited
    /// one (a stride of 0 would never end) is refused instead of used.
    pub fn validate_model(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.patch.iter().any(|&p| p == 0 || p % 16 != 0) {
            return bad(format!(
                "patch {:?}: every side must be a positive multiple of 16 (four 2x downsamplings)",
                self.patch
            ));
        }
        if self.eval.stride.contains(&0) {
            return bad(format!(
                "eval.stride {:?} must be positive",
                self.eval.stride
            ));
        }
        if self.model.n_classes < 2 || self.model.n_classes > 255 {
            return bad(format!(
                "model.n_classes {} must be in 2..=255",
                self.model.n_classes
            ));
        }
        if self.model.base_width == 0 {
            return bad("model.base_width must be positive".into());
        }
        if self.eval.sw_batch == 0 {
            return bad("eval.sw_batch must be positive".into());
        }
        check_spacing("data.spacing", self.data.spacing)?;
        if let Some(a) = (0..3).find(|&a| self.eval.stride[a] > self.patch[a]) {
            return bad(format!(
                "eval.stride {:?} exceeds the window (patch {:?}) on axis {a}: voxels between windows \
                 would never be predicted",
                self.eval.stride, self.patch
            ));
        }
        Ok(())
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        self.validate_model()?;
        if self.iterations == 0 {
            return bad("iterations must be positive".into());
        }
        if self.batch.labeled == 0
            || (self.method != Method::Supervised && self.batch.unlabeled == 0)
        {
            return bad(format!(
                "batch {:?}: the method needs labeled and unlabeled crops",
                self.batch
            ));
        }
        self.baseline.validate(self.method)?;
        if self.method.is_baseline() && self.ema_teacher.is_some() {
            return bad(format!(
                "ema_teacher is an option of the duoseg method; {} does not read it{} (unset it with --set ema_teacher=null)",
                self.method.name(),
                if matches!(self.method, Method::MeanTeacher | Method::UaMt) {
                    ", its teacher's decay is baseline.ema_decay"
                } else {
                    ""
                }
            ));
        }
        if self.method.networks() != Networks::Pair && self.eval.nets == EvalNets::B {
            return bad(format!(
                "eval.nets = \"b\": {} trains the V-Net (subnet A) only",
                self.method.name()
            ));
        }
        if let Some(f) = self.copy_paste {
            if self.method.is_baseline() || self.method == Method::Supervised {
                return bad(format!(
                    "copy_paste is an option of the duoseg method; {} does not read it (unset it with --set copy_paste=null)",
                    self.method.name()
                ));
            }
            if !(f > 0.0 && f <= 1.0) {
                return bad(format!(
                    "copy_paste {f}: the pasted cuboid's share of each axis must lie in (0, 1]"
                ));
            }
        }
        if let Some(v) = self.strong_view {
            if self.method.is_baseline() || self.method == Method::Supervised {
                return bad(format!(
                    "strong_view is an option of the duoseg method; {} does not read it (unset it with --set strong_view=null)",
                    self.method.name()
                ));
            }
            if self.ema_teacher.is_none() {
                return bad("strong_view needs ema_teacher: the moving-average teachers label the unperturbed crops".into());
            }
            for (name, x) in [
                ("contrast", v.contrast),
                ("brightness", v.brightness),
                ("noise_std", v.noise_std),
            ] {
                if !(x.is_finite() && x >= 0.0) || (name == "contrast" && x >= 1.0) {
                    return bad(format!(
                        "strong_view.{name} {x}: must be finite and >= 0{}",
                        if name == "contrast" { " and < 1" } else { "" }
                    ));
                }
            }
        }
        if let Some(m) = self.ema_teacher {
            if !(0.0..1.0).contains(&m) {
                return bad(format!("ema_teacher {m}: the momentum must lie in [0, 1)"));
            }
        }
        if self.data.labeled == LabeledCases::Count(0) {
            return bad("data.labeled must be positive".into());
        }
        if self.data.root.is_none() && self.data.synthetic.is_none() {
            return bad("data needs a root folder (or --data) or a synthetic generator".into());
        }
        check_spacing("data.spacing_mm", self.data.spacing_mm)?;
        if self.data.pad_to_multiple == 0 {
            return bad("data.pad_to_multiple must be at least 1".into());
        }
        if self.eval.checkpoint == CheckpointChoice::BestVal
            && (self.eval.validation_cases == 0 || self.eval.validate_every == 0)
        {
            return bad(format!(
                "eval.checkpoint = \"best_val\" needs eval.validation_cases >= 1 (got {}) and \
                 eval.validate_every >= 1 (got {})",
                self.eval.validation_cases, self.eval.validate_every
            ));
        }
        let o = &self.optim;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return bad(format!(
                "optim.lr must be positive and finite, got {}",
                o.lr
            ));
        }
        if !(0.0..1.0).contains(&o.momentum) {
            return bad(format!(
                "optim.momentum must lie in [0, 1), got {}",
                o.momentum
            ));
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return bad(format!(
                "optim.weight_decay must be finite and >= 0, got {}",
                o.weight_decay
            ));
        }
        if !(o.lr_decay.is_finite() && o.lr_decay > 0.0) {
            return bad(format!(
                "optim.lr_decay must be positive, got {}",
                o.lr_decay
            ));
        }
        if let Some(loss) = self.method.effective_loss(&self.loss) {
            loss.validate(self.model.n_classes)
                .map_err(ConfigError::Invalid)?;
        }
        if let Some(s) = &self.data.synthetic {
            if self.data.labeled.count() != Some(s.labeled) {
                return bad(format!(
                    "data.labeled {:?} differs from data.synthetic.labeled {}",
                    self.data.labeled, s.labeled
                ));
            }
        }
        Ok(())
    }

    /// This config with a dotted `key=value` set (`loss.alpha0=0.1`, `method=no_reg`); the value is
    /// parsed as JSON when it is valid JSON, else taken as a string. Ranges are not checked here, so
    /// that several overrides may pass through an invalid state: call [`TrainConfig::validate`] after
    /// the last one.
    pub fn with_override(&self, assignment: &str) -> Result<TrainConfig, ConfigError> {
        let fail = |reason: String| ConfigError::Override {
            assignment: assignment.to_string(),
            reason,
        };
        let Some((key, value)) = assignment.split_once('=') else {
            return Err(fail("expected key=value".into()));
        };
        let mut v = serde_json::to_value(self).map_err(|e| fail(e.to_string()))?;
        // sections written only when changed are still there to be set
        if let Some(o) = v.as_object_mut() {
            let baseline = serde_json::to_value(self.baseline).map_err(|e| fail(e.to_string()))?;
            o.entry("baseline").or_insert(baseline);
        }
        let mut node = &mut v;
        for part in key.split('.') {
            node = node
                .as_object_mut()
                .and_then(|o| o.get_mut(part))
                .ok_or_else(|| fail(format!("no such config field {part:?}")))?;
        }
        *node = serde_json::from_str(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
        serde_json::from_value(v).map_err(|e| fail(e.to_string()))
    }

    /// The sliding window of evaluation and inference (window = training patch).
    pub fn sliding_window(&self) -> SlidingWindow {
        SlidingWindow {
            roi: self.patch,
            stride: self.eval.stride,
            sw_batch: self.eval.sw_batch,
            blend: self.eval.blend,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_set_nested_fields_and_are_validated() {
        let cfg = TrainConfig::load(&configs_dir().join("demo.json")).unwrap();
        let c = cfg.with_override("loss.alpha0=0.1").unwrap();
        assert_eq!(c.loss.alpha0, 0.1);
        let c = c.with_override("method=no_reg").unwrap();
        assert_eq!(c.method, Method::NoReg);
        let c = c
            .with_override(r#"data.split={"fold":{"fold":2}}"#)
            .unwrap();
        assert_eq!(c.data.split, Split::Fold { fold: 2 });
        assert!(c.with_override("loss.alpha_zero=0.1").is_err());
        assert!(c.with_override("iterations").is_err());
        assert!(c.with_override("model=3").is_err());
        // ranges are checked once, after all overrides: an invalid step on the way is fine
        let c2 = c.with_override("patch=[30,32,32]").unwrap();
        assert!(c2.validate().is_err());
        let c3 = c2.with_override("patch=[32,32,32]").unwrap();
        c3.validate().unwrap();
    }

    #[test]
    fn ranges_are_checked_naming_the_field() {
        let cfg = TrainConfig::load(&configs_dir().join("demo.json")).unwrap();
        for (set, field) in [
            ("optim.lr=-0.01", "optim.lr"),
            ("optim.lr=0", "optim.lr"),
            ("optim.momentum=1.5", "optim.momentum"),
            ("optim.weight_decay=-1", "optim.weight_decay"),
            (
                r#"loss.threshold={"kind":"fixed","value":2}"#,
                "loss.threshold.value",
            ),
            ("loss.alpha0=1.5", "loss.alpha0"),
            ("loss.contrastive.tau=0", "contrastive.tau"),
            ("eval.stride=[64,64,64]", "eval.stride"),
        ] {
            let err = cfg
                .with_override(set)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{set}: {err}");
        }
    }

    #[test]
    fn spacings_parse_one_or_three_values_and_bad_ones_are_config_errors() {
        let cfg = TrainConfig::load(&configs_dir().join("demo.json")).unwrap();
        assert_eq!((cfg.data.spacing, cfg.data.spacing_mm), (None, None));
        let c = cfg.with_override("data.spacing=[0.8,0.8,2.5]").unwrap();
        assert_eq!(c.data.spacing, Some([0.8, 0.8, 2.5]));
        c.validate().unwrap();
        let c = cfg.with_override("data.spacing_mm=0.625").unwrap();
        assert_eq!(c.data.spacing_mm, Some([0.625; 3]));
        c.validate().unwrap();
        // written back as three values, read again the same
        let back: TrainConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        for key in ["data.spacing", "data.spacing_mm"] {
            for bad in ["0", "[1,0,1]", "[1,-0.5,1]", "-1"] {
                let err = cfg
                    .with_override(&format!("{key}={bad}"))
                    .unwrap()
                    .validate()
                    .unwrap_err();
                assert!(matches!(err, ConfigError::Invalid(_)), "{key}={bad}: {err}");
                let err = err.to_string();
                assert!(err.contains(key) && err.contains("positive"), "{err}");
            }
            for bad in ["[1,1]", "[1,1,1,1]", "\"x\"", "[1,\"a\",1]"] {
                let err = cfg
                    .with_override(&format!("{key}={bad}"))
                    .unwrap_err()
                    .to_string();
                assert!(err.contains(key), "{key}={bad}: {err}");
            }
            let err = cfg
                .with_override(&format!("{key}=[1,1]"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("expected 3 values") && err.contains("got 2"),
                "{err}"
            );
            // NaN cannot be written in JSON; set in code, it is refused too
            let mut c = cfg.clone();
            c.data.spacing = Some([1.0, f64::NAN, 1.0]);
            c.data.spacing_mm = Some([1.0, f64::NAN, 1.0]);
            assert!(c
                .validate()
                .unwrap_err()
                .to_string()
                .contains("data.spacing"));
            c.data.spacing = None;
            assert!(c
                .validate()
                .unwrap_err()
                .to_string()
                .contains("data.spacing_mm"));
        }
        // a trained model's config with a bad spacing cannot predict
        let mut c = cfg.clone();
        c.data.spacing = Some([0.0, 1.0, 1.0]);
        assert!(c.validate_model().is_err());
        // in a config file the error names the file and the key
        let dir = std::env::temp_dir().join(format!("duoseg-cfg-sp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(configs_dir().join("demo.json")).unwrap(),
        )
        .unwrap();
        json["data"]["spacing"] = serde_json::json!([1.0, 2.0]);
        let p = dir.join("bad.json");
        std::fs::write(&p, json.to_string()).unwrap();
        let err = TrainConfig::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("bad.json") && err.contains("data.spacing"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn configs_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
    }

    #[test]
    fn every_shipped_config_loads() {
        let mut n = 0;
        for e in std::fs::read_dir(configs_dir()).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "json") {
                let cfg = TrainConfig::load(&p).unwrap_or_else(|e| panic!("{e}"));
                // round trip through JSON is lossless
                let back: TrainConfig =
                    serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
                assert_eq!(back, cfg);
                n += 1;
            }
        }
        assert!(
            n >= 4,
            "expected la, pancreas, hippocampus, demo configs, found {n}"
        );
    }

    #[test]
    fn la_config_is_the_papers_setting() {
        let cfg = TrainConfig::load(&configs_dir().join("la.json")).unwrap();
        assert_eq!(cfg.patch, [112, 112, 80]);
        assert_eq!(cfg.eval.stride, [18, 18, 4]);
        assert_eq!(
            (cfg.iterations, cfg.data.labeled.clone()),
            (6000, LabeledCases::Count(16))
        );
        assert_eq!(cfg.optim, OptimConfig::default());
        assert_eq!((cfg.batch.labeled, cfg.batch.unlabeled), (2, 2));
        assert_eq!(cfg.method, Method::Duoseg);
        assert_eq!(cfg.loss, LossConfig::default());
        // the challenge's spacing, for the h5 distribution, which carries none; the NIfTI crops
        // carry it themselves; the protocol does not resample
        assert_eq!(cfg.data.spacing_mm, Some([0.625; 3]));
        assert_eq!(cfg.data.spacing, None);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_errors() {
        let dir = std::env::temp_dir().join(format!("duoseg-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(configs_dir().join("la.json")).unwrap())
                .unwrap();
        let mut typo = base.clone();
        typo["iteratons"] = 5.into();
        let p = dir.join("typo.json");
        std::fs::write(&p, typo.to_string()).unwrap();
        assert!(matches!(
            TrainConfig::load(&p),
            Err(ConfigError::Parse { .. })
        ));
        let mut bad = base.clone();
        bad["patch"] = serde_json::json!([112, 112, 81]);
        std::fs::write(&p, bad.to_string()).unwrap();
        assert!(matches!(
            TrainConfig::load(&p),
            Err(ConfigError::Invalid(_))
        ));
        let mut nested = base;
        nested["loss"] = serde_json::json!({"alpha_zero": 0.2});
        std::fs::write(&p, nested.to_string()).unwrap();
        assert!(TrainConfig::load(&p).is_err());
        assert!(matches!(
            TrainConfig::load(&dir.join("none.json")),
            Err(ConfigError::Read { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn methods_resolve_their_loss() {
        let l = LossConfig::default();
        assert!(Method::Supervised.effective_loss(&l).is_none());
        assert!(!Method::NoReg.effective_loss(&l).unwrap().use_reg);
        assert!(
            !Method::NoContrastive
                .effective_loss(&l)
                .unwrap()
                .use_contrastive
        );
        assert_eq!(
            Method::ReferenceCode.effective_loss(&l).unwrap(),
            LossConfig::reference_code()
        );
        assert_eq!("no_reg".parse::<Method>().unwrap(), Method::NoReg);
        assert!("nope".parse::<Method>().is_err());
    }
}
