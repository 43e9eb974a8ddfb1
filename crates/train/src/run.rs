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

/// The fixed keys of an iteration line of `log.jsonl`; every other numeric key is a term.
const RECORD_KEYS: [&str; 6] = ["event", "time", "iter", "lr", "s_per_step", "samples_per_s"];

/// One iteration of `log.jsonl`: its timing, learning rate and every loss term.
///
/// On disk it is one flat JSON object, `{"event": "iteration", "time": "<RFC 3339 UTC>", "iter": ..,
/// "lr": .., "s_per_step": .., "samples_per_s": .., "<term>": .., ...}`, so that
/// `pandas.read_json(path, lines=True)` reads the log as a table. Other lines are events
/// ([`LogWriter::event`]: `start`, `checkpoint`, `validation`, `evaluation`), which carry `event`,
/// `time` and `iter` too. Logs of earlier versions (terms nested under `"terms"`) still read.
#[derive(Debug, Clone, PartialEq)]
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
    /// teacher_is_a, reliable_fraction, n_disagree, the `pl_*` pseudo-label diagnosis), sorted by name.
    pub terms: BTreeMap<String, f64>,
}

impl LogRecord {
    /// The record as the flat JSON object of one log line, stamped with `time`.
    fn to_json(&self, time: &str) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("event".into(), "iteration".into());
        m.insert("time".into(), time.into());
        m.insert("iter".into(), self.iter.into());
        m.insert("lr".into(), self.lr.into());
        m.insert("s_per_step".into(), self.s_per_step.into());
        m.insert("samples_per_s".into(), self.samples_per_s.into());
        for (k, v) in &self.terms {
            // a term never replaces a fixed key
            if !RECORD_KEYS.contains(&k.as_str()) {
                m.insert(k.clone(), (*v).into());
            }
        }
        m
    }

    /// Reads one log line: `Ok(None)` for an event line, an error for a line that is neither.
    pub fn parse_line(line: &str) -> Result<Option<LogRecord>, String> {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let serde_json::Value::Object(m) = v else {
            return Err("a log line must be a JSON object".into());
        };
        match m.get("event").and_then(|e| e.as_str()) {
            None | Some("iteration") => {}
            Some(_) => return Ok(None),
        }
        let num = |k: &str| -> Result<f64, String> {
            m.get(k)
                .and_then(serde_json::Value::as_f64)
                .ok_or_else(|| format!("a log line without a numeric {k:?}"))
        };
        let iter = m
            .get("iter")
            .and_then(serde_json::Value::as_u64)
            .ok_or("a log line without an iteration number")? as usize;
        let terms = match m.get("terms") {
            // the format of earlier versions
            Some(serde_json::Value::Object(t)) => t
                .iter()
                .filter_map(|(k, v)| v.as_f64().map(|v| (k.clone(), v)))
                .collect(),
            _ => m
                .iter()
                .filter(|(k, _)| !RECORD_KEYS.contains(&k.as_str()))
                .filter_map(|(k, v)| v.as_f64().map(|v| (k.clone(), v)))
                .collect(),
        };
        Ok(Some(LogRecord {
            iter,
            lr: num("lr")?,
            s_per_step: num("s_per_step")?,
            samples_per_s: num("samples_per_s")?,
            terms,
        }))
    }
}

/// The present time as RFC 3339 UTC with milliseconds (`2026-12-03T21:40:00.123Z`).
fn timestamp() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Appends lines to `log.jsonl`; on resume, drops the lines of iterations after the checkpoint.
pub struct LogWriter {
    file: std::fs::File,
}

impl LogWriter {
    /// Opens the log; keeps the lines (iterations and events) with `iter <= keep_through` (none
    /// for a fresh run).
    pub fn open(path: &Path, keep_through: usize) -> crate::error::Result<Self> {
        let file_err = crate::error::TrainError::file;
        let kept: Vec<String> = if keep_through > 0 && path.exists() {
            std::fs::read_to_string(path)
                .map_err(file_err(path))?
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v.get("iter").and_then(serde_json::Value::as_u64))
                        .is_some_and(|i| i as usize <= keep_through)
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
        Self::append_to(path)
    }

    /// Opens an existing log (or a new one) to append to it, keeping what it holds.
    pub fn append_to(path: &Path) -> crate::error::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(crate::error::TrainError::file(path))?;
        Ok(Self { file })
    }

    /// Appends one iteration's record as one line.
    pub fn write(&mut self, rec: &LogRecord) -> std::io::Result<()> {
        self.write_line(&serde_json::Value::Object(rec.to_json(&timestamp())))
    }

    /// Appends an event line `{"event": name, "time": .., "iter": iter, ...fields}` (the fields
    /// never replace those three).
    pub fn event(
        &mut self,
        name: &str,
        iter: usize,
        fields: serde_json::Value,
    ) -> std::io::Result<()> {
        let mut m = serde_json::Map::new();
        m.insert("event".into(), name.into());
        m.insert("time".into(), timestamp().into());
        m.insert("iter".into(), iter.into());
        if let serde_json::Value::Object(f) = fields {
            for (k, v) in f {
                m.entry(k).or_insert(v);
            }
        }
        self.write_line(&serde_json::Value::Object(m))
    }

    /// A write that fails part-way (a full disk) is cut back off, so the log only ever holds
    /// whole lines.
    fn write_line(&mut self, value: &serde_json::Value) -> std::io::Result<()> {
        let mut line = serde_json::to_string(value).map_err(std::io::Error::other)?;
        line.push('\n');
        let before = self.file.metadata()?.len();
        if let Err(e) = self.file.write_all(line.as_bytes()) {
            let _ = self.file.set_len(before);
            return Err(e);
        }
        Ok(())
    }
}

/// Reads the iteration records of a `log.jsonl` (event lines are skipped).
pub fn read_log(path: &Path) -> std::io::Result<Vec<LogRecord>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let rec = LogRecord::parse_line(line).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} line {}: {e}", path.display(), i + 1),
            )
        })?;
        out.extend(rec);
    }
    Ok(out)
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

    /// Every line is one flat object with `event`, `time` and `iter` (a table for pandas); events
    /// are kept through a resume like the iterations they follow, and skipped by `read_log`.
    #[test]
    fn log_lines_are_flat_and_events_survive_resume() {
        let dir = std::env::temp_dir().join(format!("duoseg-logflat-{}", std::process::id()));
        let p = dir.join("log.jsonl");
        std::fs::create_dir_all(&dir).unwrap();
        let rec = |i: usize| LogRecord {
            iter: i,
            lr: 0.01,
            s_per_step: 0.5,
            samples_per_s: 6.0,
            terms: BTreeMap::from([("total".into(), 1.0 / i as f64), ("lr".into(), 7.0)]),
        };
        let mut w = LogWriter::open(&p, 0).unwrap();
        w.event("start", 0, serde_json::json!({"labeled": 2, "iter": 99}))
            .unwrap();
        for i in 1..=4 {
            w.write(&rec(i)).unwrap();
            if i % 2 == 0 {
                w.event(
                    "checkpoint",
                    i,
                    serde_json::json!({"file": format!("iter_{i}")}),
                )
                .unwrap();
            }
        }
        drop(w);
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 7);
        for l in &lines {
            let o = l.as_object().unwrap();
            assert!(o.values().all(|v| !v.is_object() && !v.is_array()), "{l}");
            let t = o["time"].as_str().unwrap();
            assert!(
                t.len() == 24 && t.ends_with('Z') && t.as_bytes()[10] == b'T',
                "{t}"
            );
        }
        assert_eq!(lines[0]["event"], "start");
        assert_eq!(lines[0]["iter"], 0, "a field never replaces iter");
        assert_eq!(lines[1]["event"], "iteration");
        assert_eq!(lines[1]["total"], 1.0);
        assert_eq!(lines[1]["lr"], 0.01, "a term never replaces lr");
        assert_eq!(lines[3]["event"], "checkpoint");
        let back = read_log(&p).unwrap();
        assert_eq!(back.len(), 4);
        assert_eq!(back[1].terms["total"], 0.5);
        LogWriter::open(&p, 2).unwrap();
        let kept: Vec<String> = std::fs::read_to_string(&p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].to_string())
            .collect();
        assert_eq!(
            kept,
            [
                "\"start\"",
                "\"iteration\"",
                "\"iteration\"",
                "\"checkpoint\""
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Logs written before the flat format (terms nested under "terms") still read.
    #[test]
    fn nested_terms_of_earlier_logs_read() {
        let line = r#"{"iter":3,"lr":0.03,"s_per_step":2.5,"samples_per_s":1.2,"terms":{"total":0.7,"ce_a":0.2}}"#;
        let r = LogRecord::parse_line(line).unwrap().unwrap();
        assert_eq!((r.iter, r.lr), (3, 0.03));
        assert_eq!(r.terms.len(), 2);
        assert_eq!(r.terms["ce_a"], 0.2);
        assert!(LogRecord::parse_line(r#"{"event":"checkpoint","iter":3}"#)
            .unwrap()
            .is_none());
        assert!(LogRecord::parse_line(r#"{"iter":3}"#).is_err());
        assert!(LogRecord::parse_line("[1]").is_err());
    }
}
