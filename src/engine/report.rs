//! The demo's report figure: training-loss curves of every run and their AP bars, as a PNG drawn with
//! plotters' bitmap backend. Text uses the public-domain 8×8 bitmap font of `font8x8`, drawn into the pixel
//! buffer, so no system font is needed.

use crate::error::{Error, Result};
use plotters::prelude::*;
use std::path::Path;

/// One run's curve and scores.
#[derive(Clone, Debug, PartialEq)]
pub struct RunCurve {
    /// Run name, shown in the curves' legend and under the run's bar.
    pub name: String,
    /// `(iteration, loss)`.
    pub losses: Vec<(usize, f64)>,
    /// AP@[.5:.95] (0–1): the solid bar, also printed under it.
    pub ap: f64,
    /// AP at IoU 0.5 (0–1): the light bar behind the solid one.
    pub ap50: f64,
}

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 560;

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

fn plot_error(e: impl std::fmt::Display) -> Error {
    Error::invalid("report", format!("drawing failed: {e}"))
}

/// Moving average over `window` points (the raw per-step loss is noisy).
fn smooth(values: &[(usize, f64)], window: usize) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(values.len());
    let mut sum = 0.0;
    for (i, &(x, y)) in values.iter().enumerate() {
        sum += y;
        if i >= window {
            sum -= values[i - window].1;
        }
        out.push((x as f64, sum / (i + 1).min(window) as f64));
    }
    out
}

/// Draws `text` with its top-left corner at `(x, y)`, each font pixel `scale × scale`.
fn draw_text(buf: &mut [u8], x: i64, y: i64, text: &str, scale: i64, color: RGBColor) {
    use font8x8::UnicodeFonts;
    let mut cx = x;
    for ch in text.chars() {
        let glyph = font8x8::BASIC_FONTS.get(ch).unwrap_or([0; 8]);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits >> col & 1 == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let px = cx + col * scale + dx;
                        let py = y + row as i64 * scale + dy;
                        if px >= 0 && py >= 0 && (px as u32) < WIDTH && (py as u32) < HEIGHT {
                            let i = 3 * (py as usize * WIDTH as usize + px as usize);
                            buf[i] = color.0;
                            buf[i + 1] = color.1;
                            buf[i + 2] = color.2;
                        }
                    }
                }
            }
        }
        cx += 8 * scale;
    }
}

/// Writes the figure for `runs` to `path`.
pub fn write_png(path: &Path, title: &str, runs: &[RunCurve]) -> Result<()> {
    if runs.is_empty() {
        return Err(Error::invalid("runs", "nothing to plot"));
    }
    let mut buf = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    // Plot areas in pixels.
    let (loss_x0, loss_x1, top, bottom) = (70i32, 700i32, 60i32, 500i32);
    let (bar_x0, bar_x1) = (780i32, 1250i32);
    let max_iter = runs
        .iter()
        .flat_map(|r| r.losses.iter().map(|&(i, _)| i))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let curves: Vec<Vec<(f64, f64)>> = runs.iter().map(|r| smooth(&r.losses, 20)).collect();
    let finite = curves
        .iter()
        .flatten()
        .map(|p| p.1)
        .filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo, hi)
    } else {
        (0.0, 1.0)
    };
    let max_ap = runs
        .iter()
        .map(|r| r.ap50.max(r.ap))
        .fold(0.0f64, f64::max)
        .max(0.05);
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        let axis = BLACK.stroke_width(1);
        let to_px = |x: f64, y: f64| {
            (
                loss_x0 + ((x / max_iter) * (loss_x1 - loss_x0) as f64) as i32,
                bottom - (((y - lo) / (hi - lo)) * (bottom - top) as f64) as i32,
            )
        };
        root.draw(&PathElement::new(
            vec![(loss_x0, top), (loss_x0, bottom), (loss_x1, bottom)],
            axis,
        ))
        .map_err(plot_error)?;
        for (k, curve) in curves.iter().enumerate() {
            let color = PALETTE[k % PALETTE.len()];
            let points: Vec<(i32, i32)> = curve.iter().map(|&(x, y)| to_px(x, y)).collect();
            root.draw(&PathElement::new(points, color.stroke_width(2)))
                .map_err(plot_error)?;
        }
        root.draw(&PathElement::new(
            vec![(bar_x0, top), (bar_x0, bottom), (bar_x1, bottom)],
            axis,
        ))
        .map_err(plot_error)?;
        let slot = (bar_x1 - bar_x0) / runs.len() as i32;
        for (k, run) in runs.iter().enumerate() {
            let color = PALETTE[k % PALETTE.len()];
            let x = bar_x0 + k as i32 * slot + slot / 6;
            let w = slot * 2 / 3;
            let h50 = ((run.ap50 / max_ap) * (bottom - top) as f64) as i32;
            let h = ((run.ap / max_ap) * (bottom - top) as f64) as i32;
            root.draw(&Rectangle::new(
                [(x, bottom - h50), (x + w, bottom)],
                color.mix(0.35).filled(),
            ))
            .map_err(plot_error)?;
            root.draw(&Rectangle::new(
                [(x, bottom - h), (x + w, bottom)],
                color.filled(),
            ))
            .map_err(plot_error)?;
        }
        root.present().map_err(plot_error)?;
    }
    let black = RGBColor(0, 0, 0);
    draw_text(&mut buf, 20, 14, title, 2, black);
    draw_text(
        &mut buf,
        loss_x0 as i64,
        (top - 22) as i64,
        "detection loss QFL+GIoU+DFL (moving avg)",
        2,
        black,
    );
    draw_text(&mut buf, 4, top as i64, &format!("{hi:.2}"), 1, black);
    draw_text(
        &mut buf,
        4,
        (bottom - 8) as i64,
        &format!("{lo:.2}"),
        1,
        black,
    );
    draw_text(
        &mut buf,
        (loss_x1 - 90) as i64,
        (bottom + 8) as i64,
        &format!("iter {}", max_iter as usize),
        1,
        black,
    );
    draw_text(
        &mut buf,
        bar_x0 as i64,
        (top - 22) as i64,
        "AP (solid) and AP50 (light)",
        2,
        black,
    );
    draw_text(
        &mut buf,
        (bar_x0 - 60) as i64,
        top as i64,
        &format!("{:.1}", 100.0 * max_ap),
        1,
        black,
    );
    let slot = (bar_x1 - bar_x0) / runs.len() as i32;
    for (k, run) in runs.iter().enumerate() {
        let color = PALETTE[k % PALETTE.len()];
        let x = (bar_x0 + k as i32 * slot + slot / 6) as i64;
        draw_text(&mut buf, x, (bottom + 8) as i64, &run.name, 1, color);
        draw_text(
            &mut buf,
            x,
            (bottom + 20) as i64,
            &format!("{:.1}", 100.0 * run.ap),
            1,
            black,
        );
        // Legend for the curves.
        draw_text(
            &mut buf,
            (loss_x0 + 10) as i64,
            (top + 8 + 12 * k as i32) as i64,
            &run.name,
            1,
            color,
        );
    }
    image::save_buffer(path, &buf, WIDTH, HEIGHT, image::ExtendedColorType::Rgb8).map_err(|e| {
        Error::invalid(
            path.display().to_string(),
            format!("cannot write the PNG: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png_with_curves_and_bars() {
        let runs: Vec<RunCurve> = (0..3)
            .map(|k| RunCurve {
                name: format!("run{k}"),
                losses: (0..100)
                    .map(|i| (i, 3.0 / (1.0 + i as f64 * 0.1) + k as f64 * 0.1))
                    .collect(),
                ap: 0.1 + 0.05 * k as f64,
                ap50: 0.3 + 0.05 * k as f64,
            })
            .collect();
        let dir = std::env::temp_dir().join(format!("detkd-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("report.png");
        write_png(&path, "test", &runs).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        // Some pixels carry each run's colour (curves and bars were drawn).
        for c in &PALETTE[..3] {
            assert!(
                img.pixels().any(|p| p.0 == [c.0, c.1, c.2]),
                "{c:?} missing"
            );
        }
        assert!(write_png(&path, "empty", &[]).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
