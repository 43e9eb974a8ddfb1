//! `cargo xtask sweep`: train variants of a config on several seeds (the supervised baseline
//! included) and tabulate per-seed results with mean +- std. Writes `bench/sweep-<name>.json` and
//! `bench/sweep-<name>.md`.
//!
//! Usage: `cargo xtask sweep --config FILE --seeds 1,2,3 [--name NAME] [--iters N] [--data DIR]
//! [--set key=value]... [--variant LABEL:key=value,key=value]... [--per-net] [--no-default]`
//! `--set` applies to every run; each `--variant` adds one row (besides `supervised` and `duoseg`,
//! which always run; `--no-default` leaves out the `duoseg` row, for a variant measured against
//! supervised-only alone when the defaults' runs already exist in another sweep). Runs go to `runs/sweep-<name>/<variant>-s<seed>`; a run whose `summary.json`
//! exists is reused, so an interrupted sweep continues where it stopped. Each run records the code
//! version that trained it (`code-version.txt`), and the table lists them, so reused runs name their code.
//! A second table pairs each variant with supervised-only on the same seed and test cases (mean per-case
//! Dice difference, its standard error, cases better / worse), so a seed's win can be told from noise.
//! `--per-net` also scores each subnetwork alone (`duoseg evaluate --run RUN --nets a|b`, written to
//! `RUN/summary-a.json` and `RUN/summary-b.json`) and pairs each with supervised-only's same net: the
//! averaged result can hide that the method helps one net and hurts the other.
//! `--emit-jobs FILE` trains nothing: it writes the `duoseg train` arguments of every run still
//! missing (one tab-separated line each, its run folder first) for `xtask/gpu-sweep.sh`, which runs
//! them side by side on the GPU machine; once their folders are unpacked under `runs/`, the same
//! sweep without `--emit-jobs` reuses them and writes the table.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::util;

struct Variant {
    label: String,
    sets: Vec<String>,
}

/// Mean and population std.
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    (
        m,
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n).sqrt(),
    )
}

/// The headline numbers of a `summary.json`: the "mean" class when present, else class "1".
fn headline(summary: &Value) -> Option<(f64, f64, Option<f64>, Option<f64>)> {
    let s = &summary["summary"];
    let c = if s.get("mean").is_some() {
        &s["mean"]
    } else {
        &s["1"]
    };
    Some((
        c["dice"]["mean"].as_f64()?,
        c["jaccard"]["mean"].as_f64()?,
        c["hd95_vox"]["mean"].as_f64(),
        c["asd_vox"]["mean"].as_f64(),
    ))
}

pub fn run(args: &[String]) -> Result<()> {
    let mut config = None;
    let mut seeds: Vec<u64> = vec![1, 2, 3];
    let mut name = None;
    let mut common: Vec<String> = Vec::new();
    let mut extra: Vec<String> = Vec::new();
    let mut per_net = false;
    let mut with_default = true;
    let mut emit_jobs: Option<PathBuf> = None;
    let mut variants = vec![
        Variant {
            label: "supervised".into(),
            sets: vec!["method=supervised".into()],
        },
        Variant {
            label: "duoseg".into(),
            sets: vec![],
        },
    ];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--config" => config = Some(PathBuf::from(val()?)),
            "--seeds" => seeds = util::parse_list(&val()?, "--seeds")?,
            "--name" => name = Some(val()?),
            "--set" => common.push(val()?),
            "--iters" => extra.extend(["--iters".to_string(), val()?]),
            "--data" => extra.extend(["--data".to_string(), val()?]),
            "--per-net" => per_net = true,
            "--no-default" => with_default = false,
            "--emit-jobs" => emit_jobs = Some(PathBuf::from(val()?)),
            "--variant" => {
                let v = val()?;
                let Some((label, sets)) = v.split_once(':') else {
                    bail!("--variant {v:?}: expected LABEL:key=value,key=value")
                };
                variants.push(Variant {
                    label: label.into(),
                    sets: sets.split(',').map(str::to_string).collect(),
                });
            }
            other => bail!("unknown sweep argument {other:?}"),
        }
    }
    if !with_default {
        // The built-in `duoseg` row, second after `supervised`; a user variant of that label stays.
        variants.remove(1);
    }
    let Some(config) = config else {
        bail!("usage: cargo xtask sweep --config FILE --seeds 1,2,3 [--variant LABEL:k=v,...]... [--per-net] [--no-default] [--emit-jobs FILE]")
    };
    let name = name.unwrap_or_else(|| {
        config
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("sweep")
            .to_string()
    });
    let root = util::root();
    if let Some(file) = emit_jobs {
        return write_jobs(
            &file, &root, &name, &config, &seeds, &common, &extra, &variants,
        );
    }
    util::run(Command::new("cargo").args(["build", "--release", "-p", "cli"]))?;
    let bin = util::release_dir().join("duoseg");
    let code = util::code_version();

    let mut rows = Vec::new();
    for v in &variants {
        let mut per_seed = Vec::new();
        for &seed in &seeds {
            let out = root.join(run_folder(&name, &v.label, seed));
            let summary = out.join("summary.json");
            let version_file = out.join("code-version.txt");
            if !summary.exists() {
                let mut cmd = Command::new(&bin);
                cmd.arg("train")
                    .args(train_args(&config, seed, &extra, &common, &v.sets))
                    .arg("--out")
                    .arg(&out)
                    // a run stopped part-way continues from its checkpoint (and must have the same config)
                    .args(["--no-progress", "--resume"]);
                util::run(&mut cmd)?;
                std::fs::write(&version_file, format!("{code}\n"))
                    .with_context(|| format!("cannot write {}", version_file.display()))?;
            }
            let mut by_net = serde_json::Map::new();
            for net in NETS.iter().filter(|_| per_net) {
                let file = out.join(format!("summary-{net}.json"));
                if !file.exists() {
                    let mut cmd = Command::new(&bin);
                    cmd.arg("evaluate")
                        .arg("--run")
                        .arg(&out)
                        .args(["--nets", net])
                        .arg("--json")
                        .arg(&file);
                    if let Some(i) = extra.iter().position(|a| a == "--data") {
                        cmd.args(&extra[i..i + 2]);
                    }
                    util::run(&mut cmd)?;
                }
                let s: Value = serde_json::from_str(
                    &std::fs::read_to_string(&file)
                        .with_context(|| format!("{}", file.display()))?,
                )?;
                let Some((dice, ..)) = headline(&s) else {
                    bail!("{}: no summary numbers", file.display())
                };
                by_net.insert(format!("dice_{net}"), json!(dice));
            }
            let version = std::fs::read_to_string(&version_file)
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|_| "unrecorded".into());
            let s: Value = serde_json::from_str(
                &std::fs::read_to_string(&summary)
                    .with_context(|| format!("{}", summary.display()))?,
            )?;
            let Some((dice, jac, hd, asd)) = headline(&s) else {
                bail!("{}: no summary numbers", summary.display())
            };
            // the run's resolved schedule, so that a table stays readable after the config's defaults move
            let resolved: Value = std::fs::read_to_string(out.join("config.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or(Value::Null);
            let (s_per_step, train_minutes) = step_times(&out.join("log.jsonl"));
            let mut row = json!({ "seed": seed, "dice": dice, "jaccard": jac, "hd95_vox": hd, "asd_vox": asd, "run": out, "code": version,
                "iterations": resolved["iterations"], "lr_step": resolved["optim"]["lr_step"],
                "s_per_step_median": s_per_step, "train_minutes": train_minutes });
            row.as_object_mut().expect("a JSON object").extend(by_net);
            per_seed.push(row);
        }
        let col = |k: &str| -> Vec<f64> { per_seed.iter().filter_map(|r| r[k].as_f64()).collect() };
        let stats: Value = [
            "dice",
            "jaccard",
            "hd95_vox",
            "asd_vox",
            "s_per_step_median",
            "train_minutes",
        ]
        .iter()
        .map(|k| {
            let (m, sd) = mean_std(&col(k));
            (k.to_string(), json!({ "mean": m, "std": sd }))
        })
        .collect::<serde_json::Map<_, _>>()
        .into();
        rows.push(json!({ "variant": v.label, "sets": common.iter().chain(&v.sets).collect::<Vec<_>>(), "seeds": per_seed, "summary": stats }));
    }
    let paired_both = paired(&rows, "summary.json")?;
    let mut md = format!(
        "{}\n{}\n",
        table(&rows, &seeds),
        paired_table(
            "Paired with supervised-only (same seed, same test cases; per-case Dice difference in points):",
            &paired_both
        )
    );
    let mut out = json!({ "config": config, "seeds": seeds, "extra_args": extra, "variants": rows, "paired_vs_supervised": paired_both });
    if per_net {
        md.push_str(&net_table(&rows, &seeds));
        for (net, title) in NETS.iter().zip(NET_TITLES) {
            let p = paired(&rows, &format!("summary-{net}.json"))?;
            md.push('\n');
            md.push_str(&paired_table(title, &p));
            out[format!("paired_vs_supervised_net_{net}")] = json!(p);
        }
        md.push('\n');
    }
    md.push_str(&provenance(&rows));
    println!("{md}");
    util::write_json(&root.join("bench").join(format!("sweep-{name}.json")), &out)?;
    write_md(&root.join("bench").join(format!("sweep-{name}.md")), &md)?;
    Ok(())
}

/// A run's folder, relative to the repository root.
fn run_folder(name: &str, label: &str, seed: u64) -> String {
    format!("runs/sweep-{name}/{label}-s{seed}")
}

/// The `duoseg train` arguments of one run that the sweep decides (the run folder and the
/// progress and resume flags are the runner's): config, seed, `--iters` / `--data`, then every
/// `--set`, the sweep's before the variant's.
fn train_args(
    config: &Path,
    seed: u64,
    extra: &[String],
    common: &[String],
    sets: &[String],
) -> Vec<String> {
    let mut args = vec![
        "--config".to_string(),
        config.to_string_lossy().into_owned(),
        "--seed".to_string(),
        seed.to_string(),
    ];
    args.extend(extra.iter().cloned());
    for s in common.iter().chain(sets) {
        args.extend(["--set".to_string(), s.clone()]);
    }
    args
}

/// `--emit-jobs`: one line per run without a `summary.json`: its folder (relative to the
/// repository root) and its `duoseg train` arguments, tab-separated; the first line, `# code
/// <version>`, names the code the runs are meant to train with.
#[allow(clippy::too_many_arguments)]
fn write_jobs(
    file: &Path,
    root: &Path,
    name: &str,
    config: &Path,
    seeds: &[u64],
    common: &[String],
    extra: &[String],
    variants: &[Variant],
) -> Result<()> {
    let mut lines = vec![format!("# code {}", util::code_version())];
    // seed-major, so that a GPU call cut short still leaves whole seeds of the table
    for &seed in seeds {
        for v in variants {
            let rel = run_folder(name, &v.label, seed);
            if root.join(&rel).join("summary.json").exists() {
                continue;
            }
            let mut fields = vec![rel];
            fields.extend(train_args(config, seed, extra, common, &v.sets));
            if let Some(bad) = fields.iter().find(|f| f.contains(['\t', '\n'])) {
                bail!("--emit-jobs: argument {bad:?} holds a tab or a newline");
            }
            lines.push(fields.join("\t"));
        }
    }
    let n = lines.len() - 1;
    std::fs::write(file, lines.join("\n") + "\n")
        .with_context(|| format!("cannot write {}", file.display()))?;
    eprintln!("sweep: {n} runs to train written to {}", file.display());
    Ok(())
}

/// A run's median seconds per training step and its training time in minutes (the sum of its
/// steps, evaluation left out), from the iteration lines of its `log.jsonl`; `None` without them.
fn step_times(log: &Path) -> (Option<f64>, Option<f64>) {
    let mut steps: Vec<f64> = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("event").is_none_or(|e| e == "iteration"))
        .filter_map(|v| v["s_per_step"].as_f64())
        .collect();
    if steps.is_empty() {
        return (None, None);
    }
    let total = steps.iter().sum::<f64>() / 60.0;
    steps.sort_by(f64::total_cmp);
    (Some(steps[steps.len() / 2]), Some(total))
}

/// The subnetworks `--per-net` scores, as `duoseg evaluate --nets` names them.
const NETS: [&str; 2] = ["a", "b"];
const NET_TITLES: [&str; 2] = [
    "Net A (V-Net) alone, paired with supervised-only's net A (per-case Dice difference in points):",
    "Net B (ResNet-34 V-Net) alone, paired with supervised-only's net B (per-case Dice difference in points):",
];

/// Each subnetwork's Dice alone, per seed, beside the averaged result.
fn net_table(rows: &[Value], seeds: &[u64]) -> String {
    let mut s = String::from(
        "Each net alone (`duoseg evaluate --run RUN --nets a|b`), Dice:\n\n| variant | net |",
    );
    for seed in seeds {
        s.push_str(&format!(" s{seed} |"));
    }
    s.push_str(" mean ± std |\n|---|---|");
    for _ in seeds {
        s.push_str("---|");
    }
    s.push_str("---|\n");
    for r in rows {
        for (key, net) in [("dice_a", "A"), ("dice_b", "B"), ("dice", "both")] {
            let dice: Vec<f64> = r["seeds"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x[key].as_f64())
                .collect();
            s.push_str(&format!(
                "| {} | {net} |",
                r["variant"].as_str().unwrap_or("?")
            ));
            for d in &dice {
                s.push_str(&format!(" {:.2} |", d * 100.0));
            }
            let (m, sd) = mean_std(&dice);
            s.push_str(&format!(" {:.2} ± {:.2} |\n", m * 100.0, sd * 100.0));
        }
    }
    s
}

fn table(rows: &[Value], seeds: &[u64]) -> String {
    let mut s = String::from("| variant |");
    for seed in seeds {
        s.push_str(&format!(" Dice s{seed} |"));
    }
    s.push_str(" Dice mean ± std | Jaccard | 95HD (vox) | ASD (vox) | s / step | train (min) | beats supervised on every seed |\n|---|");
    for _ in seeds {
        s.push_str("---|");
    }
    s.push_str("---|---|---|---|---|---|---|\n");
    let sup: Vec<f64> = rows
        .first()
        .map(|r| {
            r["seeds"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x["dice"].as_f64())
                .collect()
        })
        .unwrap_or_default();
    for r in rows {
        s.push_str(&format!("| {} |", r["variant"].as_str().unwrap_or("?")));
        let dice: Vec<f64> = r["seeds"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x["dice"].as_f64())
            .collect();
        for d in &dice {
            s.push_str(&format!(" {:.2} |", d * 100.0));
        }
        let f = |k: &str, scale: f64| {
            format!(
                "{:.2} ± {:.2}",
                r["summary"][k]["mean"].as_f64().unwrap_or(f64::NAN) * scale,
                r["summary"][k]["std"].as_f64().unwrap_or(f64::NAN) * scale
            )
        };
        let beats = r["variant"] != "supervised"
            && dice.len() == sup.len()
            && dice.iter().zip(&sup).all(|(a, b)| a > b);
        let mean = |k: &str| r["summary"][k]["mean"].as_f64().unwrap_or(f64::NAN);
        s.push_str(&format!(
            " {} | {} | {} | {} | {:.2} | {:.1} | {} |\n",
            f("dice", 100.0),
            f("jaccard", 100.0),
            f("hd95_vox", 1.0),
            f("asd_vox", 1.0),
            mean("s_per_step_median"),
            mean("train_minutes"),
            if r["variant"] == "supervised" {
                "-"
            } else if beats {
                "yes"
            } else {
                "no"
            }
        ));
    }
    s
}

/// Per-case headline Dice of a run's summary `file` (class "mean" when present, else class "1"), by case name.
fn case_dice(run: &Path, file: &str) -> Result<std::collections::BTreeMap<String, f64>> {
    let path = run.join(file);
    let s: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?,
    )?;
    let Some(cases) = s["cases"].as_object() else {
        bail!("{}: no per-case results", path.display())
    };
    Ok(cases
        .iter()
        .filter_map(|(name, c)| {
            let c = c.get("mean").unwrap_or(&c["1"]);
            Some((name.clone(), c["dice"].as_f64()?))
        })
        .collect())
}

/// Each variant against supervised-only on the same seed and the same test cases: the mean per-case
/// Dice difference, its standard error (sample std / sqrt(n)) and on how many cases the variant is
/// better. Separates a seed's real difference from test-set noise, which the means alone cannot.
fn paired(rows: &[Value], file: &str) -> Result<Vec<Value>> {
    let run_of = |r: &Value, seed: &Value| -> Option<PathBuf> {
        r["seeds"]
            .as_array()?
            .iter()
            .find(|x| &x["seed"] == seed)
            .and_then(|x| x["run"].as_str())
            .map(PathBuf::from)
    };
    let Some(sup) = rows.iter().find(|r| r["variant"] == "supervised") else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for r in rows.iter().filter(|r| r["variant"] != "supervised") {
        for seed in r["seeds"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| &x["seed"])
        {
            let (Some(a), Some(b)) = (run_of(r, seed), run_of(sup, seed)) else {
                continue;
            };
            let (a, b) = (case_dice(&a, file)?, case_dice(&b, file)?);
            let diffs: Vec<f64> = a
                .iter()
                .filter_map(|(k, x)| b.get(k).map(|y| x - y))
                .filter(|d| d.is_finite())
                .collect();
            let n = diffs.len();
            if n < 2 {
                continue;
            }
            let mean = diffs.iter().sum::<f64>() / n as f64;
            let var = diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            out.push(json!({
                "variant": r["variant"],
                "seed": seed,
                "cases": n,
                "dice_diff_mean": mean,
                "dice_diff_se": (var / n as f64).sqrt(),
                "cases_better": diffs.iter().filter(|&&d| d > 0.0).count(),
                "cases_worse": diffs.iter().filter(|&&d| d < 0.0).count(),
            }));
        }
    }
    Ok(out)
}

fn paired_table(title: &str, paired: &[Value]) -> String {
    if paired.is_empty() {
        return String::new();
    }
    let mut s = format!(
        "{title}\n\n\
         | variant | seed | cases | Dice diff | SE | diff / SE | better / worse cases |\n|---|---|---|---|---|---|---|\n",
    );
    for p in paired {
        let m = p["dice_diff_mean"].as_f64().unwrap_or(f64::NAN) * 100.0;
        let se = p["dice_diff_se"].as_f64().unwrap_or(f64::NAN) * 100.0;
        s.push_str(&format!(
            "| {} | {} | {} | {:+.2} | {:.2} | {:+.1} | {} / {} |\n",
            p["variant"].as_str().unwrap_or("?"),
            p["seed"],
            p["cases"],
            m,
            se,
            m / se,
            p["cases_better"],
            p["cases_worse"]
        ));
    }
    s
}

/// One line per variant: its settings and the code versions of its runs.
fn provenance(rows: &[Value]) -> String {
    let mut s = String::from(
        "Variants (`--set` on top of the config) and the code version of each run:\n\n",
    );
    for r in rows {
        let sets: Vec<&str> = r["sets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let mut codes: Vec<&str> = r["seeds"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x["code"].as_str())
            .collect();
        codes.sort_unstable();
        codes.dedup();
        let mut schedules: Vec<String> = r["seeds"]
            .as_array()
            .into_iter()
            .flatten()
            .map(
                |x| match (x["iterations"].as_u64(), x["lr_step"].as_u64()) {
                    (Some(it), Some(step)) => format!("{it} iterations (lr step at {step})"),
                    (Some(it), None) => format!("{it} iterations"),
                    _ => "iterations unrecorded".to_string(),
                },
            )
            .collect();
        schedules.sort_unstable();
        schedules.dedup();
        let sets = if sets.is_empty() {
            "the config's defaults".to_string()
        } else {
            format!("`{}`", sets.join(" "))
        };
        s.push_str(&format!(
            "- {}: {}; {}; code {}\n",
            r["variant"].as_str().unwrap_or("?"),
            sets,
            schedules.join(", "),
            codes.join(", ")
        ));
    }
    s
}

fn write_md(path: &Path, md: &str) -> Result<()> {
    Ok(duoseg_io::fs::write_atomic(path, md.as_bytes())?)
}

#[cfg(test)]
mod step_time_tests {
    use super::*;

    /// Median and total over the iteration lines only, in both log formats; none without a log.
    #[test]
    fn step_times_read_iteration_lines() {
        let dir = std::env::temp_dir().join(format!("duoseg-steptimes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log.jsonl");
        std::fs::write(
            &log,
            "{\"event\":\"start\",\"iter\":0}\n\
             {\"event\":\"iteration\",\"iter\":1,\"s_per_step\":3.0}\n\
             {\"iter\":2,\"lr\":0.1,\"s_per_step\":1.0,\"terms\":{}}\n\
             {\"event\":\"checkpoint\",\"iter\":2,\"s_per_step\":100.0}\n\
             {\"event\":\"iteration\",\"iter\":3,\"s_per_step\":2.0}\n",
        )
        .unwrap();
        let (median, minutes) = step_times(&log);
        assert_eq!(median, Some(2.0));
        assert_eq!(minutes, Some(0.1));
        assert_eq!(step_times(&dir.join("none.jsonl")), (None, None));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `--emit-jobs`: seed-major lines of the runs without a summary, folder first, every `--set`
    /// (common ones before the variant's) as its own pair of fields.
    #[test]
    fn emitted_jobs_list_the_missing_runs() {
        let root = std::env::temp_dir().join(format!("duoseg-emitjobs-{}", std::process::id()));
        let done = root.join("runs/sweep-t/supervised-s1");
        std::fs::create_dir_all(&done).unwrap();
        std::fs::write(done.join("summary.json"), "{}").unwrap();
        let variants = [
            Variant {
                label: "supervised".into(),
                sets: vec!["method=supervised".into()],
            },
            Variant {
                label: "mt".into(),
                sets: vec!["method=mean_teacher".into(), "ema_teacher=null".into()],
            },
        ];
        let file = root.join("jobs.tsv");
        write_jobs(
            &file,
            &root,
            "t",
            Path::new("configs/h.json"),
            &[1, 2],
            &["data.labeled=21".into()],
            &["--iters".into(), "5".into()],
            &variants,
        )
        .unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("# code "), "{text}");
        let set = "--set\tdata.labeled=21\t--set\tmethod=";
        assert_eq!(
            &lines[1..],
            [
                format!("runs/sweep-t/mt-s1\t--config\tconfigs/h.json\t--seed\t1\t--iters\t5\t{set}mean_teacher\t--set\tema_teacher=null"),
                format!("runs/sweep-t/supervised-s2\t--config\tconfigs/h.json\t--seed\t2\t--iters\t5\t{set}supervised"),
                format!("runs/sweep-t/mt-s2\t--config\tconfigs/h.json\t--seed\t2\t--iters\t5\t{set}mean_teacher\t--set\tema_teacher=null"),
            ]
        );
        let bad = [Variant {
            label: "x".into(),
            sets: vec!["a=b\tc".into()],
        }];
        assert!(write_jobs(&file, &root, "t", Path::new("c"), &[1], &[], &[], &bad).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
