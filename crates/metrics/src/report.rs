//! The evaluation summary: per case and class, then mean / std / n per class and metric, the
//! cases whose surface metrics are undefined, and the definitions used (`duoseg evaluate --json`,
//! and the trainer's `summary.json`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::definition::{EmptyCase, EmptyRule, MetricDefinition};
use crate::labels::ClassMetrics;

/// Mean, population standard deviation (numpy's default `ddof=0`) and count of the defined values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// `None` when no value is defined.
    pub mean: Option<f64>,
    /// `None` when no value is defined.
    pub std: Option<f64>,
    /// How many values were defined.
    pub n: usize,
}

impl Stat {
    /// Statistics of the defined (`Some`) values.
    pub fn of(values: impl IntoIterator<Item = Option<f64>>) -> Stat {
        let defined: Vec<f64> = values.into_iter().flatten().collect();
        let n = defined.len();
        if n == 0 {
            return Stat {
                mean: None,
                std: None,
                n,
            };
        }
        let mean = defined.iter().sum::<f64>() / n as f64;
        let var = defined.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
        Stat {
            mean: Some(mean),
            std: Some(var.sqrt()),
            n,
        }
    }
}

/// A case and class whose prediction or label was empty (surface metrics undefined, or zeroed
/// under [`crate::EmptyRule::ReferenceZeros`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndefinedEntry {
    pub case: String,
    pub class: String,
    /// Which side was empty.
    pub empty: EmptyCase,
}

/// Everything `duoseg evaluate --json` writes. Maps are `BTreeMap`s so keys come out sorted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationReport {
    /// The definitions that produced the numbers.
    pub definition: MetricDefinition,
    /// case -> class -> metrics.
    pub cases: BTreeMap<String, BTreeMap<String, ClassMetrics>>,
    /// class -> metric -> statistics over cases.
    pub summary: BTreeMap<String, BTreeMap<String, Stat>>,
    /// Every case and class with an empty side, in case order.
    pub undefined: Vec<UndefinedEntry>,
}

impl EvaluationReport {
    /// The headline Dice: the mean over classes (`"mean"` row) when there are several, else the one
    /// class's mean over cases; `None` when no case defines it.
    pub fn mean_dice(&self) -> Option<f64> {
        let row = self
            .summary
            .get("mean")
            .or_else(|| self.summary.values().next())?;
        row.get("dice")?.mean
    }
}

/// Builds the report from per-case results (case -> class -> metrics).
pub fn summarize(
    definition: MetricDefinition,
    cases: BTreeMap<String, BTreeMap<String, ClassMetrics>>,
) -> EvaluationReport {
    let mut by_class: BTreeMap<String, Vec<ClassMetrics>> = BTreeMap::new();
    let mut undefined = Vec::new();
    for (case, classes) in &cases {
        for (class, metrics) in classes {
            by_class.entry(class.clone()).or_default().push(*metrics);
            if let Some(empty) = metrics.empty {
                undefined.push(UndefinedEntry {
                    case: case.clone(),
                    class: class.clone(),
                    empty,
                });
            }
        }
    }
    let summary = by_class
        .into_iter()
        .map(|(class, list)| {
            let names = list.first().map(ClassMetrics::values).unwrap_or_default();
            let stats = names
                .iter()
                .enumerate()
                .map(|(m, (name, _))| {
                    let stat = Stat::of(list.iter().map(|c| c.values()[m].1));
                    (name.to_string(), stat)
                })
                .collect();
            (class, stats)
        })
        .collect();
    EvaluationReport {
        definition,
        cases,
        summary,
        undefined,
    }
}

/// Markdown rendering of reports: the paper-style table that `summary.md`, `duoseg train` and the demo
/// print (one renderer for all of them).
fn fmt_stat(s: Option<&Stat>, scale: f64, digits: usize) -> String {
    match s {
        Some(Stat {
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

fn fmt4(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"))
}

/// Plain-text rendering (`duoseg evaluate`): one row per case and class with every metric, then mean,
/// std and n per class, then the undefined cases.
pub fn per_case_table(report: &EvaluationReport) -> String {
    const COLUMNS: [&str; 9] = [
        "dice", "jaccard", "hd95_vox", "asd_vox", "hd95_mm", "asd_mm", "assd_mm", "hd_mm", "nsd",
    ];
    let width = report
        .cases
        .keys()
        .map(String::len)
        .chain([12])
        .max()
        .unwrap_or(12);
    let mut out = format!("{:<width$}  {:>5}", "case", "class");
    for c in COLUMNS {
        out += &format!("  {c:>9}");
    }
    out.push('\n');
    for (case, classes) in &report.cases {
        for (class, metrics) in classes {
            out += &format!("{case:<width$}  {class:>5}");
            for (_, v) in metrics.values() {
                out += &format!("  {:>9}", fmt4(v));
            }
            out.push('\n');
        }
    }
    out.push('\n');
    for (class, stats) in &report.summary {
        for (label, pick) in [("mean", 0), ("std", 1), ("n", 2)] {
            out += &format!("{label:<width$}  {class:>5}");
            for c in COLUMNS {
                let cell = stats.get(c).map_or("-".to_string(), |s| match pick {
                    0 => fmt4(s.mean),
                    1 => fmt4(s.std),
                    _ => s.n.to_string(),
                });
                out += &format!("  {cell:>9}");
            }
            out.push('\n');
        }
    }
    for (class, stats) in &report.summary {
        let mean_std = |m: &str| {
            stats.get(m).map_or("-".to_string(), |s| {
                format!("{} +- {}", fmt4(s.mean), fmt4(s.std))
            })
        };
        out += &format!(
            "class {class}: dice {}, jaccard {}, hd95 {} vox, asd {} vox\n",
            mean_std("dice"),
            mean_std("jaccard"),
            mean_std("hd95_vox"),
            mean_std("asd_vox")
        );
    }
    if report.undefined.is_empty() {
        out += "undefined: none\n";
    } else {
        out += &format!(
            "undefined ({}, HD95/ASD {}):\n",
            report.undefined.len(),
            match report.definition.empty {
                EmptyRule::Medpy => "left out of the means",
                EmptyRule::ReferenceZeros => "scored 0 by --reference-zeros",
            }
        );
        for u in &report.undefined {
            out += &format!("  {} class {}: {}\n", u.case, u.class, u.empty.reason());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(dice: f64, hd95: Option<f64>, empty: Option<EmptyCase>) -> ClassMetrics {
        ClassMetrics {
            dice,
            jaccard: dice,
            hd95_vox: hd95,
            asd_vox: hd95,
            hd95_mm: hd95,
            asd_mm: hd95,
            assd_mm: hd95,
            hd_mm: hd95,
            nsd: Some(1.0),
            empty,
        }
    }

    #[test]
    fn summary_skips_undefined_values_and_lists_them() {
        let mut cases = BTreeMap::new();
        cases.insert(
            "b".to_string(),
            BTreeMap::from([(
                "1".to_string(),
                class(0.0, None, Some(EmptyCase::Prediction)),
            )]),
        );
        cases.insert(
            "a".to_string(),
            BTreeMap::from([("1".to_string(), class(0.8, Some(2.0), None))]),
        );
        let report = summarize(MetricDefinition::default(), cases);
        let dice = report.summary["1"]["dice"];
        assert_eq!(dice.n, 2);
        assert_eq!(dice.mean, Some(0.4));
        assert_eq!(dice.std, Some(0.4));
        let hd = report.summary["1"]["hd95_vox"];
        assert_eq!((hd.mean, hd.std, hd.n), (Some(2.0), Some(0.0), 1));
        assert_eq!(
            report.undefined,
            vec![UndefinedEntry {
                case: "b".into(),
                class: "1".into(),
                empty: EmptyCase::Prediction
            }]
        );
        let json = serde_json::to_value(&report).unwrap();
        assert!(json["cases"]["b"]["1"]["hd95_vox"].is_null());
        assert_eq!(json["cases"]["b"]["1"]["empty"], "prediction");
        assert!(json["cases"]["a"]["1"].get("empty").is_none());
        assert_eq!(json["definition"]["hausdorff"], "medpy_pooled");
        let back: EvaluationReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn renderers_show_the_same_numbers() {
        let mut cases = BTreeMap::new();
        cases.insert(
            "a".to_string(),
            BTreeMap::from([
                ("1".to_string(), class(0.8, Some(2.0), None)),
                ("2".to_string(), class(0.6, Some(4.0), None)),
            ]),
        );
        cases.insert(
            "b".to_string(),
            BTreeMap::from([
                (
                    "1".to_string(),
                    class(0.0, None, Some(EmptyCase::Prediction)),
                ),
                ("2".to_string(), class(0.4, Some(6.0), None)),
            ]),
        );
        let report = summarize(MetricDefinition::default(), cases);
        let rows = table_rows("m", &report);
        // one row per class (a "mean" row comes last when the report has one)
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(
            rows[0].starts_with("| m | 1 | 40.00 ± 40.00 |"),
            "{}",
            rows[0]
        );
        assert!(
            rows[1].starts_with("| m | 2 | 50.00 ± 10.00 |"),
            "{}",
            rows[1]
        );
        let md = summary_markdown("t", &[("m".to_string(), &report)]);
        assert!(md.starts_with("# t\n") && md.contains(TABLE_HEADER));
        assert!(rows.iter().all(|r| md.contains(r.as_str())));
        assert!(
            md.contains("m: 2 test cases; 1 case/class pairs with an empty side"),
            "{md}"
        );
        let text = per_case_table(&report);
        assert!(text.contains("0.8000") && text.contains("0.4000"), "{text}");
        assert!(text.contains("  b class 1: empty prediction"), "{text}");
    }
}
