//! PNG figures of a run, drawn with plotters (its bitmap backend and a built-in font, no system
//! library): the loss curves (`figures/losses.png`), the pseudo-label diagnosis
//! (`figures/diagnosis.png`) and, for test cases, an axial slice of image, ground truth and
//! prediction in radiological orientation (like the paper's Fig. 3). Every file is encoded in
//! memory and written atomically.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Once;

use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Result, TrainError};
use crate::run::{write_atomic, LogRecord};

/// The font family every figure uses; [`register_font`] gives it the built-in typeface.
const FONT: &str = "sans-serif";
const NET_A: RGBColor = RGBColor(31, 119, 180);
const NET_B: RGBColor = RGBColor(255, 127, 14);
/// Colours of further curves of one panel.
const PALETTE: [RGBColor; 6] = [
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];
const PANEL: (u32, u32) = (560, 280);

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // a font that does not parse would fail every text below with a drawing error
        let _ = plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            epaint_default_fonts::HACK_REGULAR,
        );
    });
}

fn draw_error(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::file(path)(std::io::Error::other(format!("drawing the figure: {e}")))
}

/// Draws into an RGB buffer of `size` with `draw`, then writes it as a PNG at `path`.
fn render(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> std::result::Result<(), String>,
) -> Result<()> {
    register_font();
    let mut rgb = vec![255u8; size.0 as usize * size.1 as usize * 3];
    {
        let backend = BitMapBackend::with_buffer_and_format(&mut rgb, size)
            .map_err(|e| draw_error(path, e))?;
        let root = backend.into_drawing_area();
        draw(&root).map_err(|e| draw_error(path, e))?;
        root.present().map_err(|e| draw_error(path, e))?;
    }
    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, size.0, size.1);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| draw_error(path, e))?;
        w.write_image_data(&rgb).map_err(|e| draw_error(path, e))?;
    }
    write_atomic(path, &png_bytes)?;
    Ok(())
}

/// One curve of a panel: the log key it plots, its legend entry and its look.
struct Curve {
    key: String,
    label: String,
    color: RGBColor,
    dashed: bool,
}

impl Curve {
    fn new(key: impl Into<String>, label: impl Into<String>, color: RGBColor) -> Self {
        Curve {
            key: key.into(),
            label: label.into(),
            color,
            dashed: false,
        }
    }
    fn dashed(self) -> Self {
        Curve {
            dashed: true,
            ..self
        }
    }
}

/// One panel: a title, the y axis's name and its curves.
struct Panel {
    title: String,
    y_desc: &'static str,
    curves: Vec<Curve>,
    /// Moving average over about 1 % of the points (for per-iteration losses).
    smooth: bool,
}

/// The value of `key` in a record (`lr` and `s_per_step` are fields, the rest terms).
fn value(r: &LogRecord, key: &str) -> Option<f64> {
    match key {
        "lr" => Some(r.lr),
        "s_per_step" => Some(r.s_per_step),
        _ => r.terms.get(key).copied(),
    }
    .filter(|v| v.is_finite())
}

/// `(iteration, value)` of `key` over the records, smoothed when asked.
fn series(records: &[LogRecord], key: &str, smooth: bool) -> Vec<(f64, f64)> {
    let raw: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| value(r, key).map(|v| (r.iter as f64, v)))
        .collect();
    let win = if smooth { (raw.len() / 100).max(1) } else { 1 };
    if win == 1 {
        return raw;
    }
    let mut sum = 0.0;
    raw.iter()
        .enumerate()
        .map(|(i, &(x, v))| {
            sum += v;
            if i >= win {
                sum -= raw[i - win].1;
            }
            (x, sum / (i + 1).min(win) as f64)
        })
        .collect()
}

/// The y range of the data: log scale when every value is positive and they span two decades or
/// more, else linear from `min(0, lowest)`; never empty.
fn y_range(data: &[Vec<(f64, f64)>]) -> (f64, f64, bool) {
    let (lo, hi) = data
        .iter()
        .flatten()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    if !lo.is_finite() {
        return (0.0, 1.0, false);
    }
    if lo > 0.0 && hi / lo >= 100.0 {
        return (lo / 1.5, hi * 1.5, true);
    }
    let lo = lo.min(0.0);
    let span = (hi - lo).max(1e-9 * hi.abs().max(1.0));
    (lo, hi + 0.08 * span, false)
}

/// Draws `panel` on `area`: axes with ticks and names, its curves and their legend.
fn draw_panel(
    area: &DrawingArea<BitMapBackend, Shift>,
    panel: &Panel,
    records: &[LogRecord],
    x_max: f64,
) -> std::result::Result<(), String> {
    let data: Vec<Vec<(f64, f64)>> = panel
        .curves
        .iter()
        .map(|c| series(records, &c.key, panel.smooth))
        .collect();
    let (lo, hi, log) = y_range(&data);
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(&panel.title, (FONT, 18))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(62);
    let x = 0f64..x_max.max(1.0);
    if log {
        let mut chart = builder
            .build_cartesian_2d(x, (lo..hi).log_scale())
            .map_err(|e| e.to_string())?;
        draw_curves(&mut chart, panel, &data)
    } else {
        let mut chart = builder
            .build_cartesian_2d(x, lo..hi)
            .map_err(|e| e.to_string())?;
        draw_curves(&mut chart, panel, &data)
    }
}

fn draw_curves<'a, Y>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    panel: &Panel,
    data: &[Vec<(f64, f64)>],
) -> std::result::Result<(), String>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc("iteration")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc(panel.y_desc)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(210, 210, 210))
        .draw()
        .map_err(|e| e.to_string())?;
    for (c, points) in panel.curves.iter().zip(data) {
        if points.is_empty() {
            continue;
        }
        let style = c.color.stroke_width(2);
        let drawn = if c.dashed {
            chart.draw_series(DashedLineSeries::new(points.iter().copied(), 7, 5, style))
        } else {
            chart.draw_series(LineSeries::new(points.iter().copied(), style))
        }
        .map_err(|e| e.to_string())?;
        // the key: two strokes, with a gap between them for a dashed curve
        let gap = if c.dashed { 5 } else { 0 };
        drawn.label(c.label.as_str()).legend(move |(x, y)| {
            EmptyElement::at((x, y))
                + PathElement::new(vec![(0, 0), (8, 0)], style)
                + PathElement::new(vec![(8 + gap, 0), (20, 0)], style)
        });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.7))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(|e| e.to_string())
}

/// Draws the panels that have data on a grid of two columns; a figure without any shows one
/// empty panel naming what is missing.
fn draw_panels(
    records: &[LogRecord],
    panels: Vec<Panel>,
    empty_title: &str,
    path: &Path,
) -> Result<()> {
    let mut panels: Vec<Panel> = panels
        .into_iter()
        .filter(|p| {
            p.curves
                .iter()
                .any(|c| records.iter().any(|r| value(r, &c.key).is_some()))
        })
        .collect();
    if panels.is_empty() {
        panels.push(Panel {
            title: empty_title.to_string(),
            y_desc: "",
            curves: Vec::new(),
            smooth: false,
        });
    }
    let cols = panels.len().min(2);
    let rows = panels.len().div_ceil(cols);
    let x_max = records.last().map_or(1, |r| r.iter) as f64;
    let size = (PANEL.0 * cols as u32, PANEL.1 * rows as u32);
    render(path, size, |root| {
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        for (area, panel) in root.split_evenly((rows, cols)).iter().zip(&panels) {
            draw_panel(area, panel, records, x_max)?;
        }
        Ok(())
    })
}

/// The loss curves of a run: total loss, each net's supervised CE and Dice loss (net A and net B
/// in the legend), the unlabeled terms, the contrastive terms, the schedules (log scale where they
/// span decades), the validation Dice and the time per step. Panels without data are left out.
pub fn loss_curves(records: &[LogRecord], path: &Path) -> Result<()> {
    let nets = |title: &str, y: &'static str, a: &str, b: &str| Panel {
        title: title.into(),
        y_desc: y,
        curves: vec![Curve::new(a, "net A", NET_A), Curve::new(b, "net B", NET_B)],
        smooth: true,
    };
    let panels = vec![
        Panel {
            title: "Total loss".into(),
            y_desc: "loss",
            curves: vec![Curve::new("total", "total", BLACK)],
            smooth: true,
        },
        nets("Supervised cross-entropy", "CE", "ce_a", "ce_b"),
        nets("Supervised Dice loss", "1 - Dice", "dice_a", "dice_b"),
        Panel {
            title: "Unlabeled terms".into(),
            y_desc: "loss",
            curves: [
                ("unsup", "L_u (pseudo-labels)"),
                ("reg", "L_reg (consistency)"),
                ("consistency", "consistency"),
                ("adversarial", "adversarial"),
                ("sdf_mse", "level-set MSE"),
            ]
            .into_iter()
            .zip(PALETTE)
            .map(|((k, l), c)| Curve::new(k, l, c))
            .collect(),
            smooth: true,
        },
        Panel {
            title: "Prototype contrastive terms".into(),
            y_desc: "loss",
            curves: vec![
                Curve::new("pull_a", "pull, net A", NET_A),
                Curve::new("push_a", "push, net A", NET_A).dashed(),
                Curve::new("pull_b", "pull, net B", NET_B),
                Curve::new("push_b", "push, net B", NET_B).dashed(),
            ],
            smooth: true,
        },
        Panel {
            title: "Schedules".into(),
            y_desc: "value",
            curves: [
                ("lr", "learning rate"),
                ("lambda_u", "lambda_u"),
                ("lambda_c", "lambda_c"),
                ("threshold", "T (consistency)"),
                ("alpha", "alpha (unreliable share)"),
            ]
            .into_iter()
            .zip(PALETTE)
            .map(|((k, l), c)| Curve::new(k, l, c))
            .collect(),
            smooth: false,
        },
        Panel {
            title: "Validation".into(),
            y_desc: "mean Dice",
            curves: vec![Curve::new("val_dice", "validation Dice", BLACK)],
            smooth: false,
        },
        Panel {
            title: "Time per step".into(),
            y_desc: "seconds",
            curves: vec![Curve::new("s_per_step", "s / step", BLACK)],
            smooth: true,
        },
    ];
    draw_panels(records, panels, "Loss curves: no iteration logged", path)
}

/// The classes the `pl_*` keys of the log name (`pl_precision_2` -> 2), background excluded.
fn diagnosed_classes(records: &[LogRecord]) -> Vec<usize> {
    let mut classes = BTreeSet::new();
    for r in records {
        for k in r.terms.keys() {
            if let Some(c) = k
                .strip_prefix("true_share_")
                .and_then(|c| c.parse::<usize>().ok())
            {
                classes.insert(c);
            }
        }
    }
    classes.into_iter().filter(|&c| c > 0).collect()
}

/// Whether the log holds a pseudo-label diagnosis (`diagnose_every`).
pub fn has_diagnosis(records: &[LogRecord]) -> bool {
    records
        .iter()
        .any(|r| r.terms.contains_key("pl_reliable_fraction"))
}

/// The pseudo-label diagnosis over training (see [`crate::diagnosis`]): per foreground class the
/// precision and recall of the pseudo-labels among reliable voxels, the coverage of the true
/// class, the pseudo-label and true class shares; the reliable fraction with the accuracy on
/// reliable and unreliable voxels; the size of the consistency mask.
pub fn diagnosis_curves(records: &[LogRecord], path: &Path) -> Result<()> {
    let classes = diagnosed_classes(records);
    let color = |i: usize| PALETTE[i % PALETTE.len()];
    let per_class = |title: &str, y: &'static str, key: &str| Panel {
        title: title.into(),
        y_desc: y,
        curves: classes
            .iter()
            .enumerate()
            .map(|(i, c)| Curve::new(format!("{key}_{c}"), format!("class {c}"), color(i)))
            .collect(),
        smooth: false,
    };
    let mut shares = Vec::new();
    for (i, c) in classes.iter().enumerate() {
        shares.push(Curve::new(
            format!("pl_share_{c}"),
            format!("pseudo, class {c}"),
            color(i),
        ));
        shares.push(
            Curve::new(
                format!("true_share_{c}"),
                format!("true, class {c}"),
                color(i),
            )
            .dashed(),
        );
    }
    let panels = vec![
        per_class(
            "Pseudo-label precision (reliable voxels)",
            "precision",
            "pl_precision",
        ),
        per_class(
            "Pseudo-label recall (reliable voxels)",
            "recall",
            "pl_recall",
        ),
        per_class(
            "Coverage: reliable and right, of the true class",
            "share",
            "pl_coverage",
        ),
        Panel {
            title: "Class shares: pseudo-labels (reliable) vs truth".into(),
            y_desc: "share of voxels",
            curves: shares,
            smooth: false,
        },
        Panel {
            title: "Reliable voxels".into(),
            y_desc: "share",
            curves: vec![
                Curve::new("pl_reliable_fraction", "reliable fraction", BLACK),
                Curve::new("pl_accuracy_reliable", "accuracy, reliable", PALETTE[0]),
                Curve::new("pl_accuracy_unreliable", "accuracy, unreliable", PALETTE[1]).dashed(),
            ],
            smooth: false,
        },
        Panel {
            title: "Consistency mask M_diff".into(),
            y_desc: "share of unlabeled voxels",
            curves: vec![Curve::new(
                "pl_disagree_fraction",
                "|M_diff| / voxels",
                BLACK,
            )],
            smooth: false,
        },
    ];
    draw_panels(
        records,
        panels,
        "Pseudo-label diagnosis: nothing logged",
        path,
    )
}

/// Draws a run's training curves from its `log.jsonl`: `figures/losses.png`, and
/// `figures/diagnosis.png` when the log holds a pseudo-label diagnosis. Returns the files written.
/// Runs while training goes on too (the log only ever holds whole lines).
pub fn plot_log(run: &crate::run::RunDir) -> Result<Vec<std::path::PathBuf>> {
    let records = crate::run::read_log(&run.log()).map_err(TrainError::file(run.log()))?;
    let mut written = vec![run.figures().join("losses.png")];
    loss_curves(&records, &written[0])?;
    if has_diagnosis(&records) {
        let p = run.figures().join("diagnosis.png");
        diagnosis_curves(&records, &p)?;
        written.push(p);
    }
    Ok(written)
}

/// How an axial slice is shown in radiological convention: the patient's right on the image's
/// left, anterior at the top. Voxel axes are matched to world axes (RAS+) by the affine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AxialView {
    /// The voxel axis across axial slices (nearest the S/I world axis).
    slice: usize,
    /// The voxel axis along image rows, top to bottom (nearest A/P), and whether it runs reversed.
    rows: (usize, bool),
    /// The voxel axis along image columns, left to right (nearest R/L), and whether it runs reversed.
    cols: (usize, bool),
}

impl AxialView {
    /// From the 3x3 part of a voxel-to-RAS+ affine: the assignment of voxel axes to world axes with
    /// the largest direction cosines; the image's left is the patient's right (world x decreasing
    /// from left to right), the top is anterior (world y decreasing from top to bottom).
    fn from_affine(affine: &[[f64; 4]; 4]) -> Self {
        const PERMS: [[usize; 3]; 6] = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        // p[w] = the voxel axis that world axis w follows
        let p = PERMS
            .iter()
            .copied()
            .max_by(|a, b| {
                let score = |p: &[usize; 3]| (0..3).map(|w| affine[w][p[w]].abs()).sum::<f64>();
                score(a).total_cmp(&score(b))
            })
            .unwrap_or([0, 1, 2]);
        AxialView {
            slice: p[2],
            cols: (p[0], affine[0][p[0]] > 0.0),
            rows: (p[1], affine[1][p[1]] > 0.0),
        }
    }
}

/// The affine of a volume without geometry: voxel axes taken as R, A, S.
const IDENTITY: [[f64; 4]; 4] = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0],
];

/// The colour of class `l` in overlays and keys.
fn class_color(l: u8) -> RGBColor {
    match l {
        1 => RGBColor(255, 50, 50),
        2 => RGBColor(50, 220, 50),
        3 => RGBColor(70, 110, 255),
        4 => RGBColor(255, 220, 40),
        5 => RGBColor(200, 80, 255),
        _ => RGBColor(40, 220, 230),
    }
}

/// Image, ground truth and prediction at the axial slice with the most ground-truth foreground,
/// in radiological orientation (`affine`: the volume's voxel-to-RAS+ matrix; `None` takes the
/// voxel axes as R, A, S and says so): three titled panels with orientation letters, labels tinted
/// per class, and a class key.
pub fn overlay_slices(
    image: &[f32],
    gt: &[u8],
    pred: &[u8],
    shape: [usize; 3],
    affine: Option<&[[f64; 4]; 4]>,
    title: &str,
    path: &Path,
) -> Result<()> {
    let n: usize = shape.iter().product();
    if image.len() != n || gt.len() != n || pred.len() != n || n == 0 {
        return Err(draw_error(
            path,
            format!(
                "image {}, ground truth {} and prediction {} voxels for shape {shape:?}",
                image.len(),
                gt.len(),
                pred.len()
            ),
        ));
    }
    let view = AxialView::from_affine(affine.unwrap_or(&IDENTITY));
    let index = |v: [usize; 3]| (v[0] * shape[1] + v[1]) * shape[2] + v[2];
    let (n_rows, n_cols) = (shape[view.rows.0], shape[view.cols.0]);
    let voxel = |s: usize, r: usize, c: usize| {
        let mut v = [0; 3];
        v[view.slice] = s;
        v[view.rows.0] = if view.rows.1 { n_rows - 1 - r } else { r };
        v[view.cols.0] = if view.cols.1 { n_cols - 1 - c } else { c };
        index(v)
    };
    let slice = (0..shape[view.slice])
        .max_by_key(|&s| {
            (0..n_rows * n_cols)
                .filter(|&rc| gt[voxel(s, rc / n_cols, rc % n_cols)] > 0)
                .count()
        })
        .unwrap_or(0);
    let (lo, hi) = {
        let mut v: Vec<f32> = (0..n_rows * n_cols)
            .map(|rc| image[voxel(slice, rc / n_cols, rc % n_cols)])
            .filter(|v| v.is_finite())
            .collect();
        v.sort_by(f32::total_cmp);
        match v.len() {
            0 => (0.0, 1.0),
            len => (v[len / 100], v[len - 1 - len / 100]),
        }
    };
    let scale = (320 / n_rows.max(n_cols)).clamp(1, 8) as i32;
    let (pw, ph) = (n_cols as i32 * scale, n_rows as i32 * scale);
    let (gap, top, bottom) = (36, 72, 44);
    let width = 3 * pw + 4 * gap;
    let height = top + ph + bottom;
    let mut classes: BTreeSet<u8> = gt.iter().chain(pred).copied().collect();
    classes.remove(&0);
    let slice_axis = ["i", "j", "k"][view.slice];
    let heading = match affine {
        Some(_) => format!("{title}: axial slice {slice_axis} = {slice}, radiological view"),
        None => format!(
            "{title}: slice {slice_axis} = {slice} (no geometry: voxel axes taken as R, A, S)"
        ),
    };
    render(path, (width as u32, height as u32), |root| {
        let err = |e: DrawingAreaErrorKind<_>| e.to_string();
        root.fill(&WHITE).map_err(err)?;
        root.draw_text(&heading, &(FONT, 19).into_font().color(&BLACK), (gap, 8))
            .map_err(err)?;
        let letter = (FONT, 15).into_font().color(&RGBColor(90, 90, 90));
        for (panel, (name, labels)) in [
            ("image", None),
            ("ground truth", Some(gt)),
            ("prediction", Some(pred)),
        ]
        .into_iter()
        .enumerate()
        {
            let x0 = gap + panel as i32 * (pw + gap);
            root.draw_text(name, &(FONT, 16).into_font().color(&BLACK), (x0, top - 42))
                .map_err(err)?;
            for r in 0..n_rows {
                for c in 0..n_cols {
                    let v = voxel(slice, r, c);
                    let g = ((image[v] - lo) / (hi - lo).max(1e-6)).clamp(0.0, 1.0) as f64;
                    let mut rgb = [g * 255.0; 3];
                    if let Some(l) = labels.map(|l| l[v]).filter(|&l| l > 0) {
                        let t = class_color(l);
                        rgb = [
                            0.5 * rgb[0] + 0.5 * f64::from(t.0),
                            0.5 * rgb[1] + 0.5 * f64::from(t.1),
                            0.5 * rgb[2] + 0.5 * f64::from(t.2),
                        ];
                    }
                    let color = RGBColor(rgb[0] as u8, rgb[1] as u8, rgb[2] as u8);
                    let (px, py) = (x0 + c as i32 * scale, top + r as i32 * scale);
                    root.draw(&Rectangle::new(
                        [(px, py), (px + scale, py + scale)],
                        color.filled(),
                    ))
                    .map_err(err)?;
                }
            }
            // orientation letters: right and left at the sides, anterior above, posterior below
            root.draw_text("R", &letter, (x0 - 14, top + ph / 2 - 8))
                .map_err(err)?;
            root.draw_text("L", &letter, (x0 + pw + 4, top + ph / 2 - 8))
                .map_err(err)?;
            root.draw_text("A", &letter, (x0 + pw / 2 - 5, top - 17))
                .map_err(err)?;
            root.draw_text("P", &letter, (x0 + pw / 2 - 5, top + ph + 2))
                .map_err(err)?;
        }
        // the class key
        let mut x = gap;
        let y = top + ph + 22;
        for l in classes {
            root.draw(&Rectangle::new(
                [(x, y), (x + 14, y + 14)],
                class_color(l).filled(),
            ))
            .map_err(err)?;
            root.draw_text(
                &format!("class {l}"),
                &(FONT, 14).into_font().color(&BLACK),
                (x + 20, y),
            )
            .map_err(err)?;
            x += 110;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    fn rec(i: usize, terms: &[(&str, f64)]) -> LogRecord {
        LogRecord {
            iter: i,
            lr: 0.01 * 0.1f64.powi((i / 20) as i32),
            s_per_step: 1.0,
            samples_per_s: 4.0,
            terms: terms.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    /// Series with no positive value (all zero, negative, NaN, one point, none) draw and return.
    #[test]
    fn degenerate_series_draw_and_return() {
        let dir = std::env::temp_dir().join(format!("duoseg-fig0-{}", std::process::id()));
        for values in [
            vec![0.0; 5],
            vec![-1.0, -2.0, -0.5],
            vec![f64::NAN; 3],
            vec![0.0],
            vec![1e-9, 1e3],
        ] {
            let recs: Vec<LogRecord> = values
                .iter()
                .enumerate()
                .map(|(i, &v)| rec(i + 1, &[("total", v), ("unsup", v)]))
                .collect();
            loss_curves(&recs, &dir.join("losses.png")).unwrap();
            diagnosis_curves(&recs, &dir.join("diagnosis.png")).unwrap();
        }
        loss_curves(&[], &dir.join("empty.png")).unwrap();
        assert!(decode(&dir.join("empty.png")).0 > 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Panels appear for the terms the log has: a dual-stream log fills a grid of two columns
    /// (net A blue, net B orange drawn), a supervised-only log fewer rows.
    #[test]
    fn loss_figure_has_a_panel_per_group_of_logged_terms() {
        let dir = std::env::temp_dir().join(format!("duoseg-fig1-{}", std::process::id()));
        let dual: Vec<LogRecord> = (1..=60)
            .map(|i| {
                let v = 1.0 / i as f64;
                rec(
                    i,
                    &[
                        ("total", v),
                        ("ce_a", v),
                        ("ce_b", 0.8 * v),
                        ("dice_a", v),
                        ("dice_b", v),
                        ("unsup", v),
                        ("reg", v),
                        ("pull_a", v),
                        ("push_a", v),
                        ("pull_b", v),
                        ("push_b", v),
                        ("lambda_u", 0.1),
                    ],
                )
            })
            .collect();
        let sup: Vec<LogRecord> = dual
            .iter()
            .map(|r| LogRecord {
                terms: r
                    .terms
                    .iter()
                    .filter(|(k, _)| {
                        k.starts_with("ce_") || k.starts_with("dice_") || *k == "total"
                    })
                    .map(|(k, v)| (k.clone(), *v))
                    .collect(),
                ..r.clone()
            })
            .collect();
        let (p, q) = (dir.join("dual.png"), dir.join("sup.png"));
        loss_curves(&dual, &p).unwrap();
        loss_curves(&sup, &q).unwrap();
        let (w, h, px) = decode(&p);
        // total, CE, Dice, unlabeled, contrastive, schedules, time: 7 panels in 4 rows
        assert_eq!((w, h), (2 * PANEL.0, 4 * PANEL.1));
        let (_, h_sup, _) = decode(&q);
        // total, CE, Dice, schedules (lr), time: 3 rows
        assert_eq!(h_sup, 3 * PANEL.1);
        let has = |c: RGBColor| px.chunks(3).any(|p| p == [c.0, c.1, c.2]);
        assert!(has(NET_A) && has(NET_B), "both nets' colours drawn");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The diagnosis figure finds its classes in the log keys.
    #[test]
    fn diagnosis_figure_reads_its_classes_from_the_log() {
        let dir = std::env::temp_dir().join(format!("duoseg-fig2-{}", std::process::id()));
        let recs: Vec<LogRecord> = (1..=10)
            .map(|i| {
                let mut r = rec(i * 20, &[]);
                r.terms = BTreeMap::from([
                    ("pl_reliable_fraction".into(), 0.8),
                    ("pl_precision_1".into(), 0.5 + 0.04 * i as f64),
                    ("pl_precision_2".into(), 0.4),
                    ("true_share_0".into(), 0.9),
                    ("true_share_1".into(), 0.06),
                    ("true_share_2".into(), 0.04),
                ]);
                r
            })
            .collect();
        assert_eq!(diagnosed_classes(&recs), vec![1, 2]);
        assert!(has_diagnosis(&recs));
        let p = dir.join("diagnosis.png");
        diagnosis_curves(&recs, &p).unwrap();
        // precision, shares, reliable: 3 panels in 2 rows
        assert_eq!(decode(&p).1, 2 * PANEL.1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Radiological view: with an RAS+ identity affine, voxel axis 0 (x, toward the patient's
    /// right) runs reversed across the image columns and axis 1 (y, anterior) reversed down the
    /// rows; an LPS-like affine (x and y negated, as a DICOM-derived file without flip) runs forward.
    #[test]
    fn axial_view_follows_the_affine() {
        let v = AxialView::from_affine(&IDENTITY);
        assert_eq!((v.slice, v.cols, v.rows), (2, (0, true), (1, true)));
        let mut lps = IDENTITY;
        lps[0][0] = -0.7;
        lps[1][1] = -0.7;
        let v = AxialView::from_affine(&lps);
        assert_eq!((v.cols, v.rows), ((0, false), (1, false)));
        // a volume stored with the S/I axis first (a sagittal or coronal acquisition order)
        let mut perm = [[0.0; 4]; 4];
        perm[2][0] = 2.0;
        perm[0][1] = 1.0;
        perm[1][2] = -1.0;
        let v = AxialView::from_affine(&perm);
        assert_eq!((v.slice, v.cols, v.rows), (0, (1, true), (2, false)));
    }

    /// The overlay puts the patient's right on the image's left: a label on the right side of the
    /// patient (high x in RAS+) shows in the left half of the ground-truth panel.
    #[test]
    fn overlay_draws_the_patients_right_on_the_left() {
        let dir = std::env::temp_dir().join(format!("duoseg-fig3-{}", std::process::id()));
        let shape = [20, 16, 6];
        let n = 20 * 16 * 6;
        let img: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
        // class 1 where x >= 15 (the patient's right in RAS+)
        let gt: Vec<u8> = (0..n).map(|i| u8::from(i / (16 * 6) >= 15)).collect();
        let p = dir.join("case.png");
        overlay_slices(&img, &gt, &gt, shape, Some(&IDENTITY), "case", &p).unwrap();
        let (w, h, px) = decode(&p);
        let scale = (320 / 20usize).clamp(1, 8);
        let (gap, top) = (36usize, 72usize);
        let (pw, x0) = (20 * scale, 2 * gap + 20 * scale);
        assert!(w as usize >= 3 * pw + 4 * gap && h as usize > top + 16 * scale);
        let at = |x: usize, y: usize| {
            let o = (y * w as usize + x) * 3;
            [px[o], px[o + 1], px[o + 2]]
        };
        let reddish = |p: [u8; 3]| p[0] > p[1].saturating_add(60);
        let y = top + 8 * scale;
        assert!(reddish(at(x0 + scale / 2, y)), "label at the image's left");
        assert!(
            !reddish(at(x0 + pw - scale / 2, y)),
            "none at the image's right"
        );
        assert!(overlay_slices(&img, &gt[1..], &gt, shape, None, "bad", &p).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
