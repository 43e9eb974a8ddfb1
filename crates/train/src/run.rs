//! The run folder (STYLE item 13): `config.json`, `log.jsonl`, `checkpoints/`, `final.safetensors`,
//! `summary.json`, `summary.md`, `figures/`. Every whole-file output is written atomically.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use duoseg_metrics::EvaluationReport;
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

/// Writes `bytes` to `path` atomically (temporary file beside it, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Writes `value` as pretty JSON, atomically.
pub fn write_json(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    write_atomic(path, (text + "\n").as_bytes())
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
    pub fn open(path: &Path, keep_through: usize) -> std::io::Result<Self> {
        let kept: Vec<String> = if keep_through > 0 && path.exists() {
            std::fs::read_to_string(path)?
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
        let file = std::fs::OpenOptions::new().append(true).open(path)?;
        Ok(Self { file })
    }

    /// Appends one record and flushes.
    pub fn write(&mut self, rec: &LogRecord) -> std::io::Result<()> {
        let line = serde_json::to_string(rec).map_err(std::io::Error::other)?;
        writeln!(self.file, "{line}")?;
        self.file.flush()
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

fn fmt_stat(s: Option<&duoseg_metrics::Stat>, scale: f64, digits: usize) -> String {
    match s {
        Some(duoseg_metrics::Stat {
            mean: Some(m),
            std: Some(sd),
            ..
        }) => {
            format!("{:.*} ± {:.*}", digits, m * scale, digits, sd * scale)
        }
        _ => "n/a".to_string(),
    }
}

/// The rows of a paper-style table (Dice % / Jaccard % / 95HD / ASD in voxels, mean ± std), one per
/// class of `report` ("mean" last when present), labelled `method`.
pub fn table_rows(method: &str, report: &EvaluationReport) -> Vec<String> {
    let mut classes: Vec<&String> = report
        .summary
        .keys()
        .filter(|k| k.as_str() != "mean")
        .collect();
    if report.summary.contains_key("mean") {
        classes.push(
            report
                .summary
                .keys()
                .find(|k| k.as_str() == "mean")
                .expect("present"),
        );
    }
    classes
        .into_iter()
        .map(|c| {
            let s = &report.summary[c];
            format!(
                "| {method} | {c} | {} | {} | {} | {} |",
                fmt_stat(s.get("dice"), 100.0, 2),
                fmt_stat(s.get("jaccard"), 100.0, 2),
                fmt_stat(s.get("hd95_vox"), 1.0, 2),
                fmt_stat(s.get("asd_vox"), 1.0, 2)
            )
        })
        .collect()
}

/// Header of the paper-style table.
pub const TABLE_HEADER: &str =
    "| method | class | Dice (%) | Jaccard (%) | 95HD (vox) | ASD (vox) |\n|---|---|---|---|---|---|";

/// `summary.md`: the table, the number of test cases and the cases with undefined surface metrics.
pub fn summary_markdown(title: &str, rows: &[(String, &EvaluationReport)]) -> String {
    let mut s = format!("# {title}\n\nMean ± std over test cases (medpy definitions, voxel units).\n\n{TABLE_HEADER}\n");
    for (m, r) in rows {
        for row in table_rows(m, r) {
            s.push_str(&row);
            s.push('\n');
        }
    }
    for (m, r) in rows {
        s.push_str(&format!("\n{m}: {} test cases", r.cases.len()));
        if !r.undefined.is_empty() {
            s.push_str(&format!(
                "; {} case/class pairs with an empty side (HD95/ASD undefined):",
                r.undefined.len()
            ));
            for u in &r.undefined {
                s.push_str(&format!(" {}/{} ({})", u.case, u.class, u.empty.reason()));
            }
        }
        s.push('\n');
    }
    s
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
