//! PNG figures of a run: loss curves (one labelled panel per term) and, for test cases, slices of
//! image, ground truth and prediction overlaid (like the paper's Fig. 3). Plain RGB rasters written
//! with the `png` crate; labels use a built-in 3x5 pixel font.

use std::path::Path;

use crate::run::{write_atomic, LogRecord};

/// An RGB raster.
struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize, bg: [u8; 3]) -> Self {
        let mut px = Vec::with_capacity(w * h * 3);
        for _ in 0..w * h {
            px.extend_from_slice(&bg);
        }
        Self { w, h, px }
    }

    fn set(&mut self, x: usize, y: usize, c: [u8; 3]) {
        if x < self.w && y < self.h {
            let o = (y * self.w + x) * 3;
            self.px[o..o + 3].copy_from_slice(&c);
        }
    }

    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3]) {
        if ![x0, y0, x1, y1].iter().all(|v| v.is_finite()) {
            return;
        }
        // at most one step per pixel of the canvas, whatever the end points
        let steps = (x1 - x0).abs().max((y1 - y0).abs()).ceil();
        let n = (steps.min((self.w + self.h) as f64) as usize).max(1);
        for i in 0..=n {
            let t = i as f64 / n as f64;
            let (x, y) = (x0 + t * (x1 - x0), y0 + t * (y1 - y0));
            if x >= 0.0 && y >= 0.0 {
                self.set(x.round() as usize, y.round() as usize, c);
            }
        }
    }

    fn text(&mut self, x: usize, y: usize, s: &str, scale: usize, c: [u8; 3]) {
        for (i, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for row in 0..5 {
                for col in 0..3 {
                    if g[row] >> (2 - col) & 1 == 1 {
                        for dy in 0..scale {
                            for dx in 0..scale {
                                self.set(x + (i * 4 + col) * scale + dx, y + row * scale + dy, c);
                            }
                        }
                    }
                }
            }
        }
    }

    fn save(&self, path: &Path) -> crate::error::Result<()> {
        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, self.w as u32, self.h as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let png_err = |e: png::EncodingError| crate::error::TrainError::File {
                path: path.to_path_buf(),
                error: std::io::Error::other(e),
            };
            let mut wr = enc.write_header().map_err(png_err)?;
            wr.write_image_data(&self.px).map_err(png_err)?;
        }
        Ok(write_atomic(path, &bytes)?)
    }
}

/// 3x5 glyphs, one row per entry, bit 2 = left column.
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_uppercase() {
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [3, 4, 4, 4, 3],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [3, 4, 5, 5, 3],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'J' => [1, 1, 1, 5, 2],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [2, 5, 5, 5, 2],
        'P' => [6, 5, 6, 4, 4],
        'Q' => [2, 5, 5, 6, 3],
        'R' => [6, 5, 6, 5, 5],
        'S' => [3, 4, 2, 1, 6],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [6, 1, 2, 4, 7],
        '3' => [6, 1, 2, 1, 6],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 6, 1, 6],
        '6' => [3, 4, 7, 5, 7],
        '7' => [7, 1, 2, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 6],
        '_' => [0, 0, 0, 0, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        ':' => [0, 2, 0, 2, 0],
        '/' => [1, 1, 2, 4, 4],
        _ => [0; 5],
    }
}

const PALETTE: [[u8; 3]; 6] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [148, 103, 189],
    [255, 127, 14],
    [23, 190, 207],
];

/// Loss curves: one panel per group of terms (name shown), x = iteration, y from 0 to the max.
pub fn loss_curves(records: &[LogRecord], path: &Path) -> crate::error::Result<()> {
    let groups: [(&str, &[&str]); 6] = [
        ("total", &["total"]),
        ("supervised ce a/b", &["ce_a", "ce_b"]),
        ("supervised dice a/b", &["dice_a", "dice_b"]),
        ("unsup / reg", &["unsup", "reg"]),
        (
            "contrast pull/push a b",
            &["pull_a", "push_a", "pull_b", "push_b"],
        ),
        ("lr", &["lr"]),
    ];
    let (pw, ph, m) = (480usize, 140usize, 24usize);
    let mut c = Canvas::new(pw + 2 * m, groups.len() * (ph + m) + m, [255, 255, 255]);
    let n = records.len().max(2);
    let last = records.last().map(|r| r.iter).unwrap_or(1).max(1) as f64;
    for (gi, (label, keys)) in groups.iter().enumerate() {
        let y0 = m + gi * (ph + m);
        let series: Vec<Vec<(f64, f64)>> = keys
            .iter()
            .map(|k| {
                records
                    .iter()
                    .filter_map(|r| {
                        let v = if *k == "lr" {
                            Some(r.lr)
                        } else {
                            r.terms.get(*k).copied()
                        };
                        v.filter(|v| v.is_finite()).map(|v| (r.iter as f64, v))
                    })
                    .collect()
            })
            .collect();
        // the plot spans [min(0, lowest), highest]: a series with no positive value (all zero,
        // all negative) still gets a finite, non-zero span
        let (bottom, max) = series
            .iter()
            .flatten()
            .map(|p| p.1)
            .fold((0f64, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
        let max = if max.is_finite() { max } else { 0.0 };
        let span = (max - bottom).max(1e-12 * max.abs().max(bottom.abs()).max(1.0));
        // frame
        for x in m..m + pw {
            c.set(x, y0, [180; 3]);
            c.set(x, y0 + ph, [120; 3]);
        }
        for y in y0..=y0 + ph {
            c.set(m, y, [120; 3]);
            c.set(m + pw, y, [180; 3]);
        }
        c.text(
            m + 4,
            y0 + 4,
            &format!("{label}  max {max:.4}  iter {}", last as usize),
            2,
            [0; 3],
        );
        for (si, s) in series.iter().enumerate() {
            // light smoothing for long logs: moving average over ~1 % of the points
            let win = (n / 100).max(1);
            let pts: Vec<(f64, f64)> = s
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let lo = i.saturating_sub(win - 1);
                    let mean = s[lo..=i].iter().map(|q| q.1).sum::<f64>() / (i - lo + 1) as f64;
                    (
                        m as f64 + p.0 / last * pw as f64,
                        (y0 + ph) as f64 - (mean - bottom) / span * (ph - 20) as f64,
                    )
                })
                .collect();
            for w in pts.windows(2) {
                c.line(w[0], w[1], PALETTE[si % PALETTE.len()]);
            }
        }
    }
    c.save(path)
}

/// Image, ground truth and prediction at the axial slice (last axis) with the most foreground in the
/// ground truth: three panels, labels tinted per class (1 red, 2 green, 3 blue, ...).
pub fn overlay_slices(
    image: &[f32],
    gt: &[u8],
    pred: &[u8],
    shape: [usize; 3],
    title: &str,
    path: &Path,
) -> crate::error::Result<()> {
    let [nx, ny, nz] = shape;
    let z = (0..nz)
        .max_by_key(|&z| (0..nx * ny).filter(|&ij| gt[ij * nz + z] > 0).count())
        .unwrap_or(0);
    let (lo, hi) = {
        let mut v: Vec<f32> = (0..nx * ny).map(|ij| image[ij * nz + z]).collect();
        v.sort_by(f32::total_cmp);
        (v[v.len() / 100], v[v.len() - 1 - v.len() / 100])
    };
    let scale = (256 / nx.max(ny)).clamp(1, 8);
    let (pw, ph) = (ny * scale, nx * scale);
    let top = 18;
    let mut c = Canvas::new(3 * pw + 4 * 8, ph + top + 8, [255, 255, 255]);
    c.text(8, 4, &format!("{title} z {z}"), 2, [0; 3]);
    let tint = |l: u8| -> [f32; 3] {
        match l {
            1 => [1.0, 0.2, 0.2],
            2 => [0.2, 1.0, 0.2],
            3 => [0.3, 0.3, 1.0],
            _ => [1.0, 1.0, 0.2],
        }
    };
    for (panel, labels) in [None, Some(gt), Some(pred)].into_iter().enumerate() {
        let x0 = 8 + panel * (pw + 8);
        for i in 0..nx {
            for j in 0..ny {
                let v = (i * ny + j) * nz + z;
                let g = ((image[v] - lo) / (hi - lo).max(1e-6)).clamp(0.0, 1.0);
                let mut rgb = [g; 3];
                if let Some(l) = labels {
                    if l[v] > 0 {
                        let t = tint(l[v]);
                        rgb = [
                            0.5 * g + 0.5 * t[0],
                            0.5 * g + 0.5 * t[1],
                            0.5 * g + 0.5 * t[2],
                        ];
                    }
                }
                let px = rgb.map(|x| (x * 255.0).round() as u8);
                for dy in 0..scale {
                    for dx in 0..scale {
                        c.set(x0 + j * scale + dx, top + i * scale + dy, px);
                    }
                }
            }
        }
    }
    c.save(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Series with no positive value (all zero, negative, NaN, one point) draw and return: a curve
    /// scaled by its maximum must not loop or divide by zero.
    #[test]
    fn series_without_positive_values_draw_and_return() {
        let dir = std::env::temp_dir().join(format!("duoseg-fig0-{}", std::process::id()));
        for values in [
            vec![0.0; 5],
            vec![-1.0, -2.0, -0.5],
            vec![f64::NAN; 3],
            vec![0.0],
        ] {
            let recs: Vec<LogRecord> = values
                .iter()
                .enumerate()
                .map(|(i, &v)| LogRecord {
                    iter: i + 1,
                    lr: 0.0,
                    s_per_step: 1.0,
                    samples_per_s: 4.0,
                    terms: BTreeMap::from([("total".to_string(), v), ("unsup".to_string(), v)]),
                })
                .collect();
            loss_curves(&recs, &dir.join("losses.png")).unwrap();
        }
        loss_curves(&[], &dir.join("empty.png")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writes_valid_pngs() {
        let dir = std::env::temp_dir().join(format!("duoseg-fig-{}", std::process::id()));
        let recs: Vec<LogRecord> = (1..=30)
            .map(|i| LogRecord {
                iter: i,
                lr: 0.01,
                s_per_step: 1.0,
                samples_per_s: 4.0,
                terms: BTreeMap::from([
                    ("total".to_string(), 1.0 / i as f64),
                    ("ce_a".to_string(), 0.5),
                ]),
            })
            .collect();
        let p = dir.join("losses.png");
        loss_curves(&recs, &p).unwrap();
        let shape = [8, 10, 6];
        let n = 480;
        let img: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let gt: Vec<u8> = (0..n).map(|i| u8::from(i % 5 == 0)).collect();
        let q = dir.join("case.png");
        overlay_slices(&img, &gt, &gt, shape, "case", &q).unwrap();
        for f in [p, q] {
            let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&f).unwrap()));
            let reader = dec.read_info().unwrap();
            assert!(reader.info().width > 0);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
