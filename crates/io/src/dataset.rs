//! Datasets: one [`Dataset`] over the MSD / nnU-Net layout, the UA-MT h5 layout and a plain folder
//! of image / label pairs, plus splits (lists, `folds.json`, seeded K folds, labeled / unlabeled).
//!
//! A dataset is not a batcher: [`Dataset::load`] does CPU I/O and returns a [`Sample`]; stacking
//! samples into device tensors is the trainer's job.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::{read_labels, read_volume};
use crate::h5::read_h5_image_labels;
use crate::volume::{diag_affine, Volume};

/// Folder name of the UA-MT LA distribution.
pub const LA_H5_DIR: &str = "2018LA_Seg_Training Set";
/// File name of one UA-MT LA case.
pub const LA_H5_FILE: &str = "mri_norm2.h5";

/// How a dataset folder is organised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// `dataset.json` + `imagesTr/` + `labelsTr/` (MSD, nnU-Net; `_0000` channel suffix accepted).
    Msd,
    /// `2018LA_Seg_Training Set/<ID>/mri_norm2.h5` + `train.list` / `test.list` (UA-MT).
    H5,
    /// `images/` + `labels/` with matching file names (a label may be missing: unlabeled case).
    Pairs,
}

/// One case: where its image and label live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    pub id: String,
    /// NIfTI image, or the h5 file holding both `image` and `label`.
    pub image: PathBuf,
    /// NIfTI label (`None` for an unlabeled case; for h5 the label is inside `image`).
    pub label: Option<PathBuf>,
}

/// A decoded case: intensities and (when present) labels, checked to share one geometry.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub id: String,
    pub image: Volume,
    pub label: Option<Vec<u8>>,
}

/// A train / test split of case ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    pub train: Vec<String>,
    pub test: Vec<String>,
}

/// Training cases divided into labeled and unlabeled ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabeledSplit {
    pub labeled: Vec<String>,
    pub unlabeled: Vec<String>,
}

/// A dataset folder of any [`Layout`].
#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    pub layout: Layout,
    /// Cases sorted by id.
    pub cases: Vec<Case>,
    /// Label names -> values, when the dataset says (`dataset.json` `labels`).
    pub label_names: BTreeMap<String, u8>,
    /// The dataset's own train / test split (`train.list` / `test.list`, or `dataset.json`'s
    /// `train` / `test` id lists), when it has one.
    pub split: Option<Split>,
    /// Spacing in mm (x, y, z) given to volumes whose files carry none (HDF5: the LA `.h5` files),
    /// with the affine `diag(spacing)`; `None`: the readers' 1 mm. Set with
    /// [`Dataset::with_spacing_for_h5`].
    pub h5_spacing: Option<[f64; 3]>,
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn ds_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Dataset {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    serde_json::from_str(&text).map_err(|e| ds_err(path, format!("invalid json: {e}")))
}

/// Reads a case list (`train.list`): one id per line, blank lines ignored. UA-MT lists sometimes
/// hold paths (`.../<ID>/mri_norm2.h5`); those are reduced to the `<ID>`. A case listed twice is an
/// error naming both lines.
pub fn read_list(path: impl AsRef<Path>) -> Result<Vec<String>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    let mut seen = std::collections::BTreeMap::new();
    let mut ids = Vec::new();
    for (line, l) in text.lines().enumerate() {
        let l = l.trim();
        if l.is_empty() {
            continue;
        }
        let l = l
            .strip_suffix(LA_H5_FILE)
            .unwrap_or(l)
            .trim_end_matches('/');
        let id = l.rsplit('/').next().unwrap_or(l).to_string();
        if let Some(first) = seen.insert(id.clone(), line + 1) {
            return Err(Error::Dataset {
                path: path.to_path_buf(),
                reason: format!("case {id} is listed twice (lines {first} and {})", line + 1),
            });
        }
        ids.push(id);
    }
    Ok(ids)
}

/// Reads `folds.json` (`{"folds": [{"fold": 0, "train": [...], "test": [...]}, ...]}`), in fold order.
pub fn read_folds(path: impl AsRef<Path>) -> Result<Vec<Split>> {
    #[derive(Deserialize)]
    struct Fold {
        fold: usize,
        train: Vec<String>,
        #[serde(alias = "val")]
        test: Vec<String>,
    }
    #[derive(Deserialize)]
    struct Folds {
        folds: Vec<Fold>,
    }
    let path = path.as_ref();
    let v = read_json(path)?;
    let mut folds: Folds =
        serde_json::from_value(v).map_err(|e| ds_err(path, format!("not a folds file: {e}")))?;
    folds.folds.sort_by_key(|f| f.fold);
    for (i, f) in folds.folds.iter().enumerate() {
        if f.fold != i {
            return Err(ds_err(
                path,
                format!("folds must be numbered 0..n, found fold {}", f.fold),
            ));
        }
    }
    Ok(folds
        .folds
        .into_iter()
        .map(|f| Split {
            train: f.train,
            test: f.test,
        })
        .collect())
}

/// Writes `folds` as `folds.json` (the format [`read_folds`] reads, with `k` and `seed` recorded)
/// to `path`, atomically.
pub fn write_folds(path: impl AsRef<Path>, folds: &[Split], seed: u64) -> Result<()> {
    let json = serde_json::json!({
        "k": folds.len(),
        "seed": seed,
        "folds": folds
            .iter()
            .enumerate()
            .map(|(i, f)| serde_json::json!({ "fold": i, "train": f.train, "test": f.test }))
            .collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&json).map_err(|e| Error::Invalid(e.to_string()))?;
    crate::fs::write_atomic(path.as_ref(), (text + "\n").as_bytes())
}

/// `k` folds of `ids` from a seed: the ids are shuffled (ChaCha8, stable across platforms) and dealt
/// into `k` near-equal test sets; each fold trains on the others.
pub fn k_folds(ids: &[String], k: usize, seed: u64) -> Result<Vec<Split>> {
    if k < 2 || k > ids.len() {
        return Err(Error::Invalid(format!(
            "k_folds: k = {k} must be in 2..={}",
            ids.len()
        )));
    }
    let mut shuffled = ids.to_vec();
    shuffled.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    Ok((0..k)
        .map(|f| {
            let (lo, hi) = (f * ids.len() / k, (f + 1) * ids.len() / k);
            Split {
                train: shuffled[..lo]
                    .iter()
                    .chain(&shuffled[hi..])
                    .cloned()
                    .collect(),
                test: shuffled[lo..hi].to_vec(),
            }
        })
        .collect())
}

/// The literature's convention: the first `n` cases of the train list are labeled, the rest not.
pub fn split_labeled_by_count(train: &[String], n: usize) -> Result<LabeledSplit> {
    if n == 0 || n > train.len() {
        return Err(Error::Invalid(format!(
            "labeled count {n} must be in 1..={}",
            train.len()
        )));
    }
    Ok(LabeledSplit {
        labeled: train[..n].to_vec(),
        unlabeled: train[n..].to_vec(),
    })
}

/// Labeled = the ids of `labeled` (each must be in `train`), unlabeled = the rest of `train`.
pub fn split_labeled_by_list(train: &[String], labeled: &[String]) -> Result<LabeledSplit> {
    let in_train: BTreeSet<&String> = train.iter().collect();
    if let Some(missing) = labeled.iter().find(|id| !in_train.contains(id)) {
        return Err(Error::Invalid(format!(
            "labeled case {missing:?} is not in the train list"
        )));
    }
    let chosen: BTreeSet<&String> = labeled.iter().collect();
    Ok(LabeledSplit {
        labeled: labeled.to_vec(),
        unlabeled: train
            .iter()
            .filter(|id| !chosen.contains(id))
            .cloned()
            .collect(),
    })
}

/// The images of an MSD / nnU-Net folder that have no label: those of `imagesTr/` whose case has no
/// entry in `labelled`, and every image of `imagesUnlabeled/` (whose ids must not repeat a labelled
/// case). Names are `<id>_0000<ending>` (nnU-Net) or `<id><ending>`; other channels of a case (`_0001`
/// beside its `_0000`) and hidden files are skipped. Sorted by id.
fn unlabeled_images(root: &Path, ending: &str, labelled: &[Case]) -> Result<Vec<Case>> {
    let known: BTreeSet<&str> = labelled.iter().map(|c| c.id.as_str()).collect();
    let mut found: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (folder, extra_only) in [("imagesTr", false), ("imagesUnlabeled", true)] {
        let dir = root.join(folder);
        if !dir.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(&dir).map_err(|e| io_err(&dir, e))? {
            let path = entry.map_err(|e| io_err(&dir, e))?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Some(stem) = name.strip_suffix(ending).filter(|_| !name.starts_with('.')) else {
                continue;
            };
            let id = match stem.rsplit_once('_') {
                Some((id, "0000")) => id,
                // another channel of a multi-channel case (its `_0000` file stands beside it)
                Some((id, ch))
                    if ch.len() == 4
                        && ch.bytes().all(|b| b.is_ascii_digit())
                        && dir.join(format!("{id}_0000{ending}")).is_file() =>
                {
                    continue;
                }
                _ => stem,
            };
            if known.contains(id) {
                if extra_only {
                    return Err(ds_err(
                        &path,
                        format!("case {id:?} is labelled in labelsTr/ and also in {folder}/"),
                    ));
                }
                continue;
            }
            if let Some(previous) = found.insert(id.to_string(), path.clone()) {
                return Err(ds_err(
                    &path,
                    format!("case {id:?} also stands at {}", previous.display()),
                ));
            }
        }
    }
    Ok(found
        .into_iter()
        .map(|(id, image)| Case {
            id,
            image,
            label: None,
        })
        .collect())
}

/// Whether `path` is an HDF5 file (by its extension), whose volumes carry no spacing.
fn is_h5(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("h5"))
}

fn exists_or_missing(manifest: &Path, p: PathBuf) -> Result<PathBuf> {
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::MissingFile {
            manifest: manifest.to_path_buf(),
            missing: p,
        })
    }
}

/// `name` without a NIfTI / h5 extension.
fn strip_ext(name: &str) -> &str {
    for ext in [".nii.gz", ".nii", ".h5"] {
        if let Some(s) = name.strip_suffix(ext) {
            return s;
        }
    }
    name
}

/// An MSD image path, accepting nnU-Net's `_0000` channel suffix when the plain name is absent.
fn msd_image(root: &Path, rel: &str) -> PathBuf {
    let plain = root.join(rel.trim_start_matches("./"));
    if plain.is_file() {
        return plain;
    }
    let name = plain
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = strip_ext(&name);
    let ext = &name[stem.len()..];
    let channel = plain.with_file_name(format!("{stem}_0000{ext}"));
    if channel.is_file() {
        channel
    } else {
        plain
    }
}

fn id_list(v: &serde_json::Value, key: &str, path: &Path) -> Result<Option<Vec<String>>> {
    match v.get(key) {
        None => Ok(None),
        Some(serde_json::Value::Array(items)) => {
            let ids: Option<Vec<String>> = items
                .iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect();
            let ids =
                ids.ok_or_else(|| ds_err(path, format!("{key:?} must be a list of strings")))?;
            // MSD's "test" lists image paths of unlabeled test images, not case ids: not a split.
            if ids.iter().any(|s| s.contains('/')) {
                return Ok(None);
            }
            Ok(Some(ids))
        }
        Some(_) => Err(ds_err(path, format!("{key:?} must be a list"))),
    }
}

impl Dataset {
    /// Opens a dataset folder, recognising its layout: `dataset.json` (MSD), `2018LA_Seg_Training Set`
    /// (h5), or `images/` + `labels/` (pairs).
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        if root.join("dataset.json").is_file() {
            Self::open_msd(root)
        } else if root.join(LA_H5_DIR).is_dir() {
            Self::open_h5(root)
        } else if root.join("images").is_dir() {
            Self::open_pairs(root)
        } else {
            Err(ds_err(
                root,
                format!("not a dataset: expected dataset.json, {LA_H5_DIR}/ or images/ + labels/"),
            ))
        }
    }

    /// MSD / nnU-Net: cases from `dataset.json`'s `training` list, or (nnU-Net v2, no list) from the
    /// files in `labelsTr/` with `file_ending`. Every named file must exist.
    pub fn open_msd(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        let manifest = root.join("dataset.json");
        let v = read_json(&manifest)?;
        let ending = v
            .get("file_ending")
            .and_then(|e| e.as_str())
            .unwrap_or(".nii.gz")
            .to_string();
        let mut cases = Vec::new();
        match v.get("training") {
            Some(serde_json::Value::Array(items)) => {
                for item in items {
                    let (Some(img), Some(lab)) = (
                        item.get("image").and_then(|x| x.as_str()),
                        item.get("label").and_then(|x| x.as_str()),
                    ) else {
                        return Err(ds_err(
                            &manifest,
                            "\"training\" entries need \"image\" and \"label\" strings",
                        ));
                    };
                    let label =
                        exists_or_missing(&manifest, root.join(lab.trim_start_matches("./")))?;
                    let image = exists_or_missing(&manifest, msd_image(root, img))?;
                    let name = label
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    cases.push(Case {
                        id: strip_ext(&name).to_string(),
                        image,
                        label: Some(label),
                    });
                }
            }
            Some(_) => return Err(ds_err(&manifest, "\"training\" must be a list")),
            None => {
                let dir = root.join("labelsTr");
                for entry in std::fs::read_dir(&dir).map_err(|e| io_err(&dir, e))? {
                    let path = entry.map_err(|e| io_err(&dir, e))?.path();
                    let name = path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let Some(id) = name.strip_suffix(ending.as_str()) else {
                        continue;
                    };
                    let image = exists_or_missing(
                        &manifest,
                        root.join(format!("imagesTr/{id}_0000{ending}")),
                    )?;
                    cases.push(Case {
                        id: id.to_string(),
                        image,
                        label: Some(path),
                    });
                }
            }
        }
        if cases.is_empty() {
            return Err(ds_err(&manifest, "no training cases"));
        }
        cases.extend(unlabeled_images(root, &ending, &cases)?);
        let mut label_names = BTreeMap::new();
        if let Some(serde_json::Value::Object(map)) = v.get("labels") {
            for (k, val) in map {
                // MSD writes {"0": "background"}, nnU-Net v2 {"background": 0}.
                if let Some(n) = val.as_u64() {
                    label_names.insert(k.clone(), n as u8);
                } else if let (Some(name), Ok(n)) = (val.as_str(), k.parse::<u8>()) {
                    label_names.insert(name.to_string(), n);
                }
            }
        }
        let split = match (
            id_list(&v, "train", &manifest)?,
            id_list(&v, "test", &manifest)?,
        ) {
            (Some(train), Some(test)) => Some(Split { train, test }),
            _ => Self::list_split(root)?,
        };
        Self::finish(root, Layout::Msd, cases, label_names, split)
    }

    /// UA-MT h5: every `<root>/2018LA_Seg_Training Set/<ID>/mri_norm2.h5`; split from
    /// `train.list` / `test.list` in `root` when present.
    pub fn open_h5(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        let dir = root.join(LA_H5_DIR);
        let mut cases = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| io_err(&dir, e))? {
            let path = entry.map_err(|e| io_err(&dir, e))?.path();
            let file = path.join(LA_H5_FILE);
            if file.is_file() {
                cases.push(Case {
                    id: path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    image: file,
                    label: None,
                });
            }
        }
        if cases.is_empty() {
            return Err(ds_err(&dir, format!("no <ID>/{LA_H5_FILE} files")));
        }
        let split = Self::list_split(root)?;
        Self::finish(root, Layout::H5, cases, BTreeMap::new(), split)
    }

    /// Plain pairs: each image in `<root>/images/` with the same-named file (if any) in `<root>/labels/`.
    pub fn open_pairs(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        let dir = root.join("images");
        let mut cases = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| io_err(&dir, e))? {
            let image = entry.map_err(|e| io_err(&dir, e))?.path();
            let name = image
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let id = strip_ext(&name);
            if id.len() == name.len() || name.starts_with('.') {
                continue; // not a volume
            }
            let label = root.join("labels").join(&name);
            cases.push(Case {
                id: id.to_string(),
                label: label.is_file().then_some(label),
                image,
            });
        }
        if cases.is_empty() {
            return Err(ds_err(&dir, "no .nii / .nii.gz / .h5 images"));
        }
        let split = Self::list_split(root)?;
        Self::finish(root, Layout::Pairs, cases, BTreeMap::new(), split)
    }

    fn list_split(root: &Path) -> Result<Option<Split>> {
        let (train, test) = (root.join("train.list"), root.join("test.list"));
        if train.is_file() && test.is_file() {
            Ok(Some(Split {
                train: read_list(&train)?,
                test: read_list(&test)?,
            }))
        } else {
            Ok(None)
        }
    }

    fn finish(
        root: &Path,
        layout: Layout,
        mut cases: Vec<Case>,
        label_names: BTreeMap<String, u8>,
        split: Option<Split>,
    ) -> Result<Self> {
        cases.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(w) = cases.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(ds_err(root, format!("case id {:?} appears twice", w[0].id)));
        }
        let ds = Self {
            root: root.to_path_buf(),
            layout,
            cases,
            label_names,
            split,
            h5_spacing: None,
        };
        if let Some(split) = &ds.split {
            ds.check_split(split)?;
        }
        Ok(ds)
    }

    /// This dataset with `spacing` (mm, x y z) for the volumes whose files carry no spacing (the
    /// `.h5` files), instead of 1 mm; errors on a spacing that is not positive and finite.
    pub fn with_spacing_for_h5(mut self, spacing: [f64; 3]) -> Result<Self> {
        if !spacing.iter().all(|s| s.is_finite() && *s > 0.0) {
            return Err(ds_err(
                &self.root,
                format!("spacing {spacing:?} mm for the h5 files must be positive and finite"),
            ));
        }
        self.h5_spacing = Some(spacing);
        Ok(self)
    }

    /// Number of cases whose image file carries no spacing (`.h5`): they get
    /// [`Dataset::h5_spacing`], or 1 mm.
    pub fn cases_without_spacing(&self) -> usize {
        self.cases.iter().filter(|c| is_h5(&c.image)).count()
    }

    /// Whether case `id` has a label (h5 cases always do).
    pub fn is_labelled(&self, id: &str) -> bool {
        self.layout == Layout::H5 || self.case(id).is_ok_and(|c| c.label.is_some())
    }

    /// Ids of the cases with a label, sorted.
    pub fn labelled_ids(&self) -> Vec<String> {
        self.cases
            .iter()
            .filter(|c| self.layout == Layout::H5 || c.label.is_some())
            .map(|c| c.id.clone())
            .collect()
    }

    /// Ids of the cases without a label (images only), sorted.
    pub fn unlabelled_ids(&self) -> Vec<String> {
        self.cases
            .iter()
            .filter(|c| self.layout != Layout::H5 && c.label.is_none())
            .map(|c| c.id.clone())
            .collect()
    }

    /// All case ids, sorted.
    pub fn ids(&self) -> Vec<String> {
        self.cases.iter().map(|c| c.id.clone()).collect()
    }

    /// The case with this id.
    pub fn case(&self, id: &str) -> Result<&Case> {
        self.cases
            .binary_search_by(|c| c.id.as_str().cmp(id))
            .map(|i| &self.cases[i])
            .map_err(|_| ds_err(&self.root, format!("no case {id:?}")))
    }

    /// Checks that every id of `split` is a case of this dataset.
    pub fn check_split(&self, split: &Split) -> Result<()> {
        for id in split.train.iter().chain(&split.test) {
            if self.case(id).is_err() {
                return Err(Error::MissingFile {
                    manifest: self.root.clone(),
                    missing: PathBuf::from(id),
                });
            }
        }
        Ok(())
    }

    /// `k` seeded folds of this dataset ([`k_folds`] over the labelled cases): each labelled case is
    /// tested in exactly one fold; the unlabelled cases (images without a label) join every fold's
    /// training cases, after the labelled ones, as unlabeled data.
    pub fn make_folds(&self, k: usize, seed: u64) -> Result<Vec<Split>> {
        let unlabelled = self.unlabelled_ids();
        let mut folds = k_folds(&self.labelled_ids(), k, seed)?;
        for f in &mut folds {
            f.train.extend(unlabelled.iter().cloned());
        }
        Ok(folds)
    }

    /// The 5 folds of `<root>/folds.json` (checked against the cases).
    pub fn folds(&self) -> Result<Vec<Split>> {
        let folds = read_folds(self.root.join("folds.json"))?;
        for f in &folds {
            self.check_split(f)?;
        }
        Ok(folds)
    }

    /// Decodes one case; the label (if any) is checked to be integer in [0, 255] and to share the
    /// image's shape and geometry.
    pub fn load(&self, id: &str) -> Result<Sample> {
        let case = self.case(id)?;
        let (mut image, label) = if self.layout == Layout::H5 {
            let (image, label) = read_h5_image_labels(&case.image)?;
            (image, Some(label))
        } else {
            let image = read_volume(&case.image)?;
            let label = match &case.label {
                Some(p) => Some(read_labels(p, Some(&image))?),
                None => None,
            };
            (image, label)
        };
        // after the label's geometry check, which compares two 1 mm h5 grids
        if let (Some(spacing), true) = (self.h5_spacing, is_h5(&case.image)) {
            image.spacing = spacing;
            image.affine = diag_affine(spacing);
        }
        Ok(Sample {
            id: id.to_string(),
            image,
            label,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{scratch, write_h5_cases};
    use crate::{write_labels, write_probabilities};

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Writes a tiny labeled NIfTI pair (labels `i % 3`) under `dir` with the given file names.
    fn write_pair(img: &Path, lab: &Path) {
        let shape = [4, 3, 2];
        let image =
            Volume::from_data(shape, [1.0, 1.0, 2.0], (0..24).map(|i| i as f32).collect()).unwrap();
        write_probabilities(img, shape, &image.data, &image).unwrap();
        let labels: Vec<u8> = (0..24).map(|i| (i % 3) as u8).collect();
        write_labels(lab, shape, &labels, &image).unwrap();
    }

    #[test]
    fn images_without_labels_are_unlabelled_cases() {
        let root = scratch("msd-unlabelled");
        for d in ["imagesTr", "labelsTr", "imagesUnlabeled"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("dataset.json"), r#"{"file_ending": ".nii.gz"}"#).unwrap();
        let scratch_label = root.join("scratch.nii.gz");
        write_pair(
            &root.join("imagesTr/case_0001_0000.nii.gz"),
            &root.join("labelsTr/case_0001.nii.gz"),
        );
        // an image without label, with a second channel that is not a case of its own
        write_pair(&root.join("imagesTr/u1_0000.nii.gz"), &scratch_label);
        write_pair(&root.join("imagesTr/u1_0001.nii.gz"), &scratch_label);
        // a plain name whose last part looks like a channel but has no _0000 beside it
        write_pair(&root.join("imagesTr/scan_0002.nii.gz"), &scratch_label);
        write_pair(&root.join("imagesTr/.hidden_0000.nii.gz"), &scratch_label);
        write_pair(&root.join("imagesUnlabeled/u2.nii.gz"), &scratch_label);
        let ds = Dataset::open(&root).unwrap();
        assert_eq!(ds.ids(), ids(&["case_0001", "scan_0002", "u1", "u2"]));
        assert_eq!(ds.labelled_ids(), ids(&["case_0001"]));
        assert_eq!(ds.unlabelled_ids(), ids(&["scan_0002", "u1", "u2"]));
        assert!(ds.is_labelled("case_0001") && !ds.is_labelled("u2"));
        let u1 = ds.load("u1").unwrap();
        assert!(u1.label.is_none() && u1.image.data.len() == 24);
        // a labelled case may not also stand in imagesUnlabeled/
        write_pair(
            &root.join("imagesUnlabeled/case_0001.nii.gz"),
            &scratch_label,
        );
        let e = Dataset::open(&root).unwrap_err();
        assert!(e.to_string().contains("imagesUnlabeled"), "{e}");
    }

    #[test]
    fn msd_layout_with_channel_suffix_and_missing_files() {
        let root = scratch("msd");
        std::fs::create_dir_all(root.join("imagesTr")).unwrap();
        std::fs::create_dir_all(root.join("labelsTr")).unwrap();
        write_pair(
            &root.join("imagesTr/a_0000.nii.gz"),
            &root.join("labelsTr/a.nii.gz"),
        );
        write_pair(
            &root.join("imagesTr/b.nii.gz"),
            &root.join("labelsTr/b.nii.gz"),
        );
        let json = r#"{"labels": {"0": "background", "1": "x", "2": "y"}, "training": [
            {"image": "./imagesTr/b.nii.gz", "label": "./labelsTr/b.nii.gz"},
            {"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}],
            "test": ["./imagesTs/c.nii.gz"]}"#;
        std::fs::write(root.join("dataset.json"), json).unwrap();
        let ds = Dataset::open(&root).unwrap();
        assert_eq!(ds.layout, Layout::Msd);
        assert_eq!(ds.ids(), ids(&["a", "b"]));
        assert_eq!(ds.label_names["y"], 2);
        assert!(ds.split.is_none());
        assert!(ds.case("a").unwrap().image.ends_with("a_0000.nii.gz"));
        let s = ds.load("a").unwrap();
        assert_eq!(s.label.unwrap()[5], 2);
        assert_eq!(s.image.data[5], 5.0);
        // nnU-Net v2 (no "training" list): cases come from labelsTr.
        std::fs::write(root.join("dataset.json"), r#"{"file_ending": ".nii.gz"}"#).unwrap();
        std::fs::rename(
            root.join("imagesTr/b.nii.gz"),
            root.join("imagesTr/b_0000.nii.gz"),
        )
        .unwrap();
        assert_eq!(Dataset::open(&root).unwrap().ids(), ids(&["a", "b"]));
        std::fs::rename(
            root.join("imagesTr/b_0000.nii.gz"),
            root.join("imagesTr/b.nii.gz"),
        )
        .unwrap();
        assert!(matches!(
            Dataset::open(&root),
            Err(Error::MissingFile { .. })
        ));
        // A missing label named in dataset.json.
        std::fs::write(
            root.join("dataset.json"),
            json.replace("labelsTr/b.nii.gz", "labelsTr/zz.nii.gz"),
        )
        .unwrap();
        let e = Dataset::open(&root).unwrap_err();
        assert!(
            matches!(&e, Error::MissingFile { .. }) && e.to_string().contains("zz.nii.gz"),
            "{e}"
        );
        std::fs::write(root.join("dataset.json"), "{not json").unwrap();
        assert!(matches!(Dataset::open(&root), Err(Error::Dataset { .. })));
    }

    #[test]
    fn a_case_listed_twice_is_refused_naming_both_lines() {
        let dir = std::env::temp_dir().join(format!("duoseg-list-twice-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let list = dir.join("labeled.txt");
        std::fs::write(&list, "a\nb/mri_norm2.h5\n\nc\n").unwrap();
        assert_eq!(read_list(&list).unwrap(), ["a", "b", "c"]);
        std::fs::write(&list, "a\nb\n\nx/a/mri_norm2.h5\n").unwrap();
        let e = read_list(&list).unwrap_err().to_string();
        assert!(
            e.contains("labeled.txt") && e.contains("case a is listed twice (lines 1 and 4)"),
            "{e}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn mismatched_label_geometry_is_refused() {
        let root = scratch("pairs");
        std::fs::create_dir_all(root.join("images")).unwrap();
        std::fs::create_dir_all(root.join("labels")).unwrap();
        write_pair(&root.join("images/p.nii"), &root.join("labels/p.nii"));
        write_pair(&root.join("images/q.nii"), &root.join("labels/other.nii"));
        let other = Volume::from_data([4, 3, 2], [1.0, 1.0, 3.0], vec![0.0; 24]).unwrap();
        write_labels(root.join("labels/r.nii"), [4, 3, 2], &[0; 24], &other).unwrap();
        write_pair(&root.join("images/r.nii"), &root.join("scratch.nii"));
        std::fs::write(root.join("train.list"), "p\nq\n").unwrap();
        std::fs::write(root.join("test.list"), "r\n").unwrap();
        let ds = Dataset::open(&root).unwrap();
        assert_eq!(ds.layout, Layout::Pairs);
        assert_eq!(ds.ids(), ids(&["p", "q", "r"]));
        assert!(ds.load("p").unwrap().label.is_some());
        assert!(ds.load("q").unwrap().label.is_none());
        assert!(matches!(ds.load("r"), Err(Error::GeometryMismatch { .. })));
        assert_eq!(ds.split.clone().unwrap().test, ids(&["r"]));
        std::fs::write(root.join("test.list"), "nope\n").unwrap();
        assert!(matches!(
            Dataset::open(&root),
            Err(Error::MissingFile { .. })
        ));
    }

    #[test]
    fn h5_layout_from_synthetic_files() {
        let root = scratch("h5layout");
        write_h5_cases(&root, &["X1", "X2"]);
        std::fs::write(root.join("train.list"), "X2\n").unwrap();
        std::fs::write(
            root.join("test.list"),
            "../data/2018LA_Seg_Training Set/X1/mri_norm2.h5\n",
        )
        .unwrap();
        let ds = Dataset::open(&root).unwrap();
        assert_eq!(ds.layout, Layout::H5);
        assert_eq!(
            ds.split.clone().unwrap(),
            Split {
                train: ids(&["X2"]),
                test: ids(&["X1"])
            }
        );
        let s = ds.load("X1").unwrap();
        assert_eq!(s.image.shape, [4, 4, 3]);
        assert_eq!(s.image.spacing, [1.0; 3], "no spacing in the file: 1 mm");
        assert_eq!(s.label.unwrap().len(), 48);
        assert_eq!(ds.cases_without_spacing(), 2);
        // the config's spacing for files without one: the image's spacing and affine
        let ds = ds.with_spacing_for_h5([0.625; 3]).unwrap();
        let s = ds.load("X1").unwrap();
        assert_eq!(s.image.spacing, [0.625; 3]);
        assert_eq!(s.image.affine, diag_affine([0.625; 3]));
        assert_eq!(s.label.unwrap().len(), 48);
        for bad in [[0.0, 1.0, 1.0], [1.0, -0.5, 1.0], [f64::NAN, 1.0, 1.0]] {
            let e = ds.clone().with_spacing_for_h5(bad).unwrap_err();
            assert!(e.to_string().contains("positive"), "{e}");
        }
    }

    #[test]
    fn k_folds_partition_and_are_seeded() {
        let all: Vec<String> = (0..23).map(|i| format!("c{i}")).collect();
        let folds = k_folds(&all, 5, 7).unwrap();
        let mut tests: Vec<String> = folds.iter().flat_map(|f| f.test.clone()).collect();
        tests.sort();
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(tests, sorted);
        for f in &folds {
            assert_eq!(f.train.len() + f.test.len(), 23);
            assert!((4..=5).contains(&f.test.len()));
            assert!(f.test.iter().all(|t| !f.train.contains(t)));
        }
        assert_eq!(folds, k_folds(&all, 5, 7).unwrap());
        assert_ne!(folds, k_folds(&all, 5, 8).unwrap());
        assert!(k_folds(&all, 1, 0).is_err());
        assert!(k_folds(&all, 24, 0).is_err());
    }

    #[test]
    fn labeled_splits_by_count_and_by_list() {
        let train = ids(&["a", "b", "c", "d"]);
        let s = split_labeled_by_count(&train, 1).unwrap();
        assert_eq!(
            (s.labeled, s.unlabeled),
            (ids(&["a"]), ids(&["b", "c", "d"]))
        );
        assert!(split_labeled_by_count(&train, 5).is_err());
        assert!(split_labeled_by_count(&train, 0).is_err());
        let s = split_labeled_by_list(&train, &ids(&["c"])).unwrap();
        assert_eq!(s.unlabeled, ids(&["a", "b", "d"]));
        assert!(split_labeled_by_list(&train, &ids(&["z"])).is_err());
    }
}
