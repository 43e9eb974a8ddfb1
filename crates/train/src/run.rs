//! The run folder (STYLE item 13): `config.json`, `log.jsonl`, `checkpoints/`, `final.safetensors`,
//! `summary.json`, `summary.md`, `figures/`. Every whole-file output is written atomically.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Paths of one run's outputs.
#[derive(Debug, Clone)]
pub struct RunDir {
    /// The folder.
    pub root: PathBuf,
}

impl RunDir {
    /// Uses (and creates) `root`.
    pub fn create(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(root.join("checkpoints"))?;
        std::fs::create_dir_all(root.join("figures"))?;
        Ok(Self { root })
    }
    /// `config.json`.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }
    /// Takes the folder's lock (released when the guard drops, or when the process dies): two runs
    /// never write into one folder.
    pub fn lock(&self) -> duoseg_io::Result<duoseg_io::fs::FolderLock> {
        duoseg_io::fs::lock_folder(&self.root)
    }

    /// Removes what a killed atomic write left behind (temporary files) in the folder and in
    /// `checkpoints/`; returns how many. Only while holding [`RunDir::lock`].
    pub fn remove_stale_temp_files(&self) -> duoseg_io::Result<usize> {
        Ok(duoseg_io::fs::remove_stale_temp_files(&self.root)?
            + duoseg_io::fs::remove_stale_temp_files(&self.checkpoints())?)
    }

    /// The files of a run that are already in the folder (config, log, weights, checkpoints).
    pub fn run_files(&self) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = [
            self.config(),
            self.log(),
            self.final_weights(),
            self.best_weights(),
        ]
        .into_iter()
        .filter(|p| p.exists())
        .collect();
        found.extend(
            crate::checkpoint::list(&self.checkpoints())
                .into_iter()
                .map(|(_, p)| p),
        );
        found
    }

    /// Deletes every output of a previous run (the files [`RunDir`] names, the checkpoints, the
    /// figures and predictions); nothing else in the folder is touched.
    pub fn clear_outputs(&self) -> std::io::Result<()> {
        for f in [
            self.config(),
            self.split(),
            self.log(),
            self.final_weights(),
            self.best_weights(),
            self.best_json(),
            self.summary_json(),
            self.summary_md(),
        ] {
            if f.is_file() {
                std::fs::remove_file(f)?;
            }
        }
        for (_, p) in crate::checkpoint::list(&self.checkpoints()) {
            std::fs::remove_file(p)?;
        }
        for dir in [self.figures(), self.predictions()] {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_file()) {
                        std::fs::remove_file(e.path())?;
                    }
                }
            }
        }
        Ok(())
    }

    /// `split.json`: which cases were labeled, unlabeled and test.
    pub fn split(&self) -> PathBuf {
        self.root.join("split.json")
    }
    /// `log.jsonl`.
    pub fn log(&self) -> PathBuf {
        self.root.join("log.jsonl")
    }
    /// `checkpoints/`.
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    /// `final.safetensors`.
    pub fn final_weights(&self) -> PathBuf {
        self.root.join("final.safetensors")
    }
    /// `best.safetensors`: the model with the best validation Dice (`eval.checkpoint = best_val`).
    pub fn best_weights(&self) -> PathBuf {
        self.root.join("best.safetensors")
    }
    /// `best.json`: which iteration `best.safetensors` holds and its validation Dice.
    pub fn best_json(&self) -> PathBuf {
        self.root.join("best.json")
    }
    /// `summary.json`.
    pub fn summary_json(&self) -> PathBuf {
        self.root.join("summary.json")
    }
    /// `summary.md`.
    pub fn summary_md(&self) -> PathBuf {
        self.root.join("summary.md")
    }
    /// `figures/`.
    pub fn figures(&self) -> PathBuf {
        self.root.join("figures")
    }
    /// `predictions/`.
    pub fn predictions(&self) -> PathBuf {
        self.root.join("predictions")
    }
}

/// Writes `value` as pretty JSON, atomically (`duoseg_io::fs::write_atomic`, creating the folder).
pub fn write_json(path: &Path, value: &impl Serialize) -> duoseg_io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| duoseg_io::Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    write_atomic(path, (text + "\n").as_bytes())
}

/// Writes `bytes` to `path` atomically (`duoseg_io::fs::write_atomic`), creating the folder first.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> duoseg_io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| duoseg_io::Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    duoseg_io::fs::write_atomic(path, bytes)
}

/// One `log.jsonl` line: the iteration, its timing, learning rate and every loss term.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct LogRecord {
    /// 1-based iteration number (iterations completed).
    pub iter: usize,
    /// Learning rate used by this step.
    pub lr: f64,
    /// Seconds this step took (data, forward, backward, update).
    pub s_per_step: f64,
    /// Crops processed per second this step.
    pub samples_per_s: f64,
    /// Every loss term and diagnostic (total, ce_a, dice_a, ..., threshold, alpha, lambda_u, lambda_c,
    /// teacher_is_a, reliable_fraction, n_disagree), sorted by name.
    pub terms: BTreeMap<String, f64>,
}

/// Appends log lines to `log.jsonl`, truncating lines beyond `resume_from` when resuming.
pub struct LogWriter {
    file: std::fs::File,
}

impl LogWriter {
    /// Opens the log; keeps the records with `iter <= keep_through` (0 for a fresh run).
    pub fn open(path: &Path, keep_through: usize) -> crate::error::Result<Self> {
        let file_err = crate::error::TrainError::file;
        let kept: Vec<String> = if keep_through > 0 && path.exists() {
            std::fs::read_to_string(path)
                .map_err(file_err(path))?
                .lines()
                .filter(|l| {
                    serde_json::from_str::<LogRecord>(l)
                        .map(|r| r.iter <= keep_through)
                        .unwrap_or(false)
                })
                .map(str::to_string)
                .collect()
        } else {
            Vec::new()
        };
        let mut text = kept.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        write_atomic(path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(file_err(path))?;
        Ok(Self { file })
    }

    /// Appends one record as one line. A write that fails part-way (a full disk) is cut back off,
    /// so the log only ever holds whole lines.
    pub fn write(&mut self, rec: &LogRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_string(rec).map_err(std::io::Error::other)?;
        line.push('\n');
        let before = self.file.metadata()?.len();
        if let Err(e) = self.file.write_all(line.as_bytes()) {
            let _ = self.file.set_len(before);
            return Err(e);
        }
        Ok(())
    }
}

/// Reads every record of a `log.jsonl`.
pub fn read_log(path: &Path) -> std::io::Result<Vec<LogRecord>> {
    std::fs::read_to_string(path)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_resume_truncates_later_lines() {
        let dir = std::env::temp_dir().join(format!("duoseg-log-{}", std::process::id()));
        let p = dir.join("log.jsonl");
        std::fs::create_dir_all(&dir).unwrap();
        let rec = |i| LogRecord {
            iter: i,
            lr: 0.01,
            s_per_step: 1.0,
            samples_per_s: 4.0,
            terms: BTreeMap::new(),
        };
        let mut w = LogWriter::open(&p, 0).unwrap();
        for i in 1..=5 {
            w.write(&rec(i)).unwrap();
        }
        drop(w);
        let mut w = LogWriter::open(&p, 3).unwrap();
        w.write(&rec(4)).unwrap();
        let back: Vec<usize> = read_log(&p).unwrap().iter().map(|r| r.iter).collect();
        assert_eq!(back, vec![1, 2, 3, 4]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
