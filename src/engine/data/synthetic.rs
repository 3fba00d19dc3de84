//! A synthetic shapes detection set, generated procedurally and deterministically from a seed.
//!
//! Each image is rendered in four layers, back to front:
//!
//! 1. **Background**: a random base colour blended towards a second colour along a random direction
//!    (gradient strength 0–0.6), plus two random sinusoidal gratings (amplitude 0.01–0.05, wavelength
//!    3–40 px) as texture.
//! 2. **Clutter** that is not an object: thin anti-aliased line segments (half-width 0.4–1.2 px, opacity
//!    0.3–0.9) and soft Gaussian blobs without a crisp edge (σ 2 px to 8% of the short side, peak opacity
//!    0.15–0.5), `clutter_per_image` of them.
//! 3. **Objects**, `objects_per_image` of them, each of a random class of [`ShapeClass`], drawn in order so
//!    later objects occlude earlier ones. Sizes (the longer side of the shape's box) are log-uniform in
//!    `[min_object_size, max_object_fraction · min(H, W)]`; the whole shape lies inside the image. Each
//!    object has its own random colour, redrawn (up to 32 times, keeping the best) until some channel
//!    differs by at least `min_contrast` from the mean of what lies under its box.
//! 4. **Noise**: i.i.d. Gaussian noise of standard deviation `noise_std` (on the `[0, 1]` scale) per pixel
//!    and channel, then clamping to `[0, 1]` and rounding to 8 bits. The normal draws come from 4096
//!    equiprobable quantiles of the standard normal (rescaled to unit variance), so the noise has no tail
//!    beyond ±3.5σ.
//!
//! Edges are anti-aliased with a one-pixel ramp: a pixel whose centre lies at signed distance `d` from a
//! shape's boundary is covered by `clamp(0.5 − d, 0, 1)` of the shape's colour.
//!
//! **Visibility rule.** A pixel *belongs* to an object when its centre lies inside the shape (`d ≤ 0`, i.e.
//! coverage ≥ ½); the per-pixel owner map records the last-drawn object each pixel belongs to. An object's
//! *full* pixels are those that belong to it ignoring later objects, its *visible* pixels those it owns in
//! the owner map. The object gets a box exactly when `visible ≥ min_visible_fraction · full` and
//! `full > 0` (default ½). A fully covered object therefore never has a box. Clutter is behind every
//! object and never occludes one.
//!
//! **Boxes** are the tight box of the object's *visible* pixels (`[min col, min row, max col + 1,
//! max row + 1]`, pixel-edge coordinates), so they are integers and every visible pixel lies inside. The
//! anti-aliasing fringe (pixels with coverage below ½) lies outside the box, at most one pixel away.

use rayon::prelude::*;

use super::shapes::{segment_distance, Geometry};
use super::{derive_seed, index_error, BoxXyxy, Dataset, Normalization, Sample};
use crate::error::{Error, Result};
use crate::testing::Rng;

/// The shape classes of the synthetic set, chosen to differ in outline, topology and aspect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShapeClass {
    /// A filled disc.
    Circle,
    /// A filled axis-aligned square.
    Square,
    /// A filled upright isosceles triangle (apex up); aspect 0.75–1.
    Triangle,
    /// An annulus whose hole has half the outer radius.
    Ring,
    /// A plus sign whose arms are a third of its size wide.
    Cross,
    /// A filled rhombus with axis-aligned diagonals; aspect 0.75–1.
    Diamond,
    /// A filled axis-aligned ellipse with aspect 0.4–0.65, lying or standing.
    Ellipse,
    /// A filled five-pointed star, point up, inner radius 0.45 of the outer.
    Star,
}

impl ShapeClass {
    /// Every class, in label order of the default configuration.
    pub const ALL: [ShapeClass; 8] = [
        ShapeClass::Circle,
        ShapeClass::Square,
        ShapeClass::Triangle,
        ShapeClass::Ring,
        ShapeClass::Cross,
        ShapeClass::Diamond,
        ShapeClass::Ellipse,
        ShapeClass::Star,
    ];

    /// Lower-case name (the COCO category name the exporter writes).
    pub fn name(self) -> &'static str {
        match self {
            ShapeClass::Circle => "circle",
            ShapeClass::Square => "square",
            ShapeClass::Triangle => "triangle",
            ShapeClass::Ring => "ring",
            ShapeClass::Cross => "cross",
            ShapeClass::Diamond => "diamond",
            ShapeClass::Ellipse => "ellipse",
            ShapeClass::Star => "star",
        }
    }

    /// Width and height of a shape of this class whose longer side is `size`; `coin` and `ratio` are
    /// uniform draws in `[0, 1)` picking orientation and aspect.
    fn box_size(self, size: f32, coin: bool, ratio: f32) -> (f32, f32) {
        let (short_fraction, oriented) = match self {
            ShapeClass::Circle | ShapeClass::Square | ShapeClass::Ring | ShapeClass::Cross => {
                (1.0, false)
            }
            ShapeClass::Triangle | ShapeClass::Diamond => (0.75 + 0.25 * ratio, true),
            ShapeClass::Ellipse => (0.4 + 0.25 * ratio, true),
            // The regular star's own height/width: (1 + cos 36°) / (2 sin 72°).
            ShapeClass::Star => (0.951, false),
        };
        // Very thin small shapes would be a line of a pixel or two; keep the short side ≥ 4 px.
        let short = (size * short_fraction).max(size.min(4.0));
        if oriented && coin {
            (short, size)
        } else {
            (size, short)
        }
    }
}

/// Parameters of the synthetic set (see the [module docs](self) for what each layer does).
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticConfig {
    /// Image height in pixels (8–8192); default 128.
    pub height: usize,
    /// Image width in pixels (8–8192); default 128.
    pub width: usize,
    /// The classes; an object's label is its class's index here. Default [`ShapeClass::ALL`].
    pub classes: Vec<ShapeClass>,
    /// Smallest object size (longer side of its box) in pixels, ≥ 3; default 6.
    pub min_object_size: f32,
    /// Largest object size as a fraction of `min(height, width)`, in `(0, 1]`; default 0.5.
    pub max_object_fraction: f32,
    /// Inclusive range of the number of objects drawn per image; default `(1, 8)`.
    pub objects_per_image: (usize, usize),
    /// Inclusive range of the number of clutter items per image; default `(3, 10)`.
    pub clutter_per_image: (usize, usize),
    /// Standard deviation of the pixel noise on the `[0, 1]` scale, in `[0, 1]`; default 0.03.
    pub noise_std: f32,
    /// Least difference, in some channel, between an object's colour and the mean colour under its box, in
    /// `[0, 0.9]`; default 0.25.
    pub min_contrast: f32,
    /// Least fraction of an object's pixels that must stay visible for it to get a box, in `(0, 1]`;
    /// default 0.5.
    pub min_visible_fraction: f32,
    /// Normalisation of the rendered 8-bit image; default [`Normalization::IMAGENET`].
    pub normalization: Normalization,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            height: 128,
            width: 128,
            classes: ShapeClass::ALL.to_vec(),
            min_object_size: 6.0,
            max_object_fraction: 0.5,
            objects_per_image: (1, 8),
            clutter_per_image: (3, 10),
            noise_std: 0.03,
            min_contrast: 0.25,
            min_visible_fraction: 0.5,
            normalization: Normalization::IMAGENET,
        }
    }
}

fn check_range(arg: &str, value: f32, lo: f32, hi: f32, lo_open: bool) -> Result<()> {
    let above = if lo_open { value > lo } else { value >= lo };
    if value.is_finite() && above && value <= hi {
        Ok(())
    } else {
        let open = if lo_open { "(" } else { "[" };
        Err(Error::invalid(
            arg,
            format!("expected a value in {open}{lo}, {hi}], got {value}"),
        ))
    }
}

fn check_count_range(arg: &str, range: (usize, usize), min_lo: usize) -> Result<()> {
    if range.0 < min_lo || range.0 > range.1 || range.1 > 1024 {
        Err(Error::invalid(
            arg,
            format!(
                "expected an inclusive range (lo, hi) with {min_lo} ≤ lo ≤ hi ≤ 1024, got {range:?}"
            ),
        ))
    } else {
        Ok(())
    }
}

impl SyntheticConfig {
    /// Largest object size in pixels: `max_object_fraction · min(height, width)`.
    pub fn max_object_size(&self) -> f32 {
        self.max_object_fraction * self.height.min(self.width) as f32
    }

    /// Checks every field against its documented range.
    pub fn validate(&self) -> Result<()> {
        for (arg, side) in [("height", self.height), ("width", self.width)] {
            if !(8..=8192).contains(&side) {
                return Err(Error::invalid(
                    arg,
                    format!("expected 8 to 8192 pixels, got {side}"),
                ));
            }
        }
        if self.classes.is_empty() {
            return Err(Error::invalid("classes", "expected at least one class"));
        }
        for (i, class) in self.classes.iter().enumerate() {
            if self.classes[..i].contains(class) {
                return Err(Error::invalid(
                    "classes",
                    format!("{class:?} appears twice in {:?}", self.classes),
                ));
            }
        }
        check_range(
            "max_object_fraction",
            self.max_object_fraction,
            0.0,
            1.0,
            true,
        )?;
        check_range(
            "min_object_size",
            self.min_object_size,
            3.0,
            self.max_object_size(),
            false,
        )?;
        check_count_range("objects_per_image", self.objects_per_image, 1)?;
        check_count_range("clutter_per_image", self.clutter_per_image, 0)?;
        check_range("noise_std", self.noise_std, 0.0, 1.0, false)?;
        check_range("min_contrast", self.min_contrast, 0.0, 0.9, false)?;
        check_range(
            "min_visible_fraction",
            self.min_visible_fraction,
            0.0,
            1.0,
            true,
        )?;
        self.normalization.validate()
    }

    /// Renders `scene` (background, clutter, its objects in order, noise) and applies the visibility rule.
    pub fn render(&self, scene: &Scene) -> Result<RenderedScene> {
        self.validate()?;
        if scene.objects.len() >= NO_OWNER as usize {
            return Err(Error::invalid(
                "scene.objects",
                format!(
                    "expected fewer than {NO_OWNER} objects, got {}",
                    scene.objects.len()
                ),
            ));
        }
        let mut labels = Vec::with_capacity(scene.objects.len());
        for (k, object) in scene.objects.iter().enumerate() {
            labels.push(object.validate(k, &self.classes)?);
        }
        Ok(Renderer::new(self, scene.seed).render(scene, &labels))
    }
}

/// One object to draw: its class, the centre and size of its shape's bounding box, and optionally its
/// colour.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectSpec {
    /// The shape; must be one of the configuration's classes.
    pub class: ShapeClass,
    /// Centre of the shape's bounding box, `(x, y)` in pixels.
    pub center: (f32, f32),
    /// Width and height of the shape's bounding box in pixels (round classes use the smaller side).
    pub size: (f32, f32),
    /// RGB colour on the `[0, 1]` scale; `None` picks a random contrasting one from the scene's seed.
    pub color: Option<[f32; 3]>,
}

impl ObjectSpec {
    /// Checks the spec and returns its label in `classes`.
    fn validate(&self, k: usize, classes: &[ShapeClass]) -> Result<usize> {
        let arg = format!("scene.objects[{k}]");
        let label = classes
            .iter()
            .position(|&c| c == self.class)
            .ok_or_else(|| {
                Error::invalid(
                    &arg,
                    format!("class {:?} is not among {classes:?}", self.class),
                )
            })?;
        let (cx, cy) = self.center;
        let (w, h) = self.size;
        if !(cx.is_finite()
            && cy.is_finite()
            && w.is_finite()
            && h.is_finite()
            && w > 0.0
            && h > 0.0)
        {
            return Err(Error::invalid(
                &arg,
                format!(
                    "expected a finite centre and a finite positive size, got centre {:?} size {:?}",
                    self.center, self.size
                ),
            ));
        }
        if let Some(color) = self.color {
            if !color.iter().all(|v| (0.0..=1.0).contains(v)) {
                return Err(Error::invalid(
                    &arg,
                    format!("expected colour channels in [0, 1], got {color:?}"),
                ));
            }
        }
        Ok(label)
    }
}

/// What to render: the objects in drawing order and the seed of everything else (background, clutter,
/// colours left to chance, noise).
#[derive(Clone, Debug, PartialEq)]
pub struct Scene {
    /// Seed of the background, clutter, random colours and noise.
    pub seed: u64,
    /// Objects, back to front.
    pub objects: Vec<ObjectSpec>,
}

/// What happened to one object of a rendered scene.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectRecord {
    /// The object's class.
    pub class: ShapeClass,
    /// Its label (index of `class` in the configuration's classes).
    pub label: usize,
    /// Pixels inside the image whose centre lies inside the shape, ignoring later objects.
    pub full_pixels: usize,
    /// Of those, the pixels no later object took over.
    pub visible_pixels: usize,
    /// Tight box of the full pixels; `None` when there are none.
    pub full_box: Option<BoxXyxy>,
    /// Tight box of the visible pixels; `None` when there are none.
    pub visible_box: Option<BoxXyxy>,
    /// Whether the visibility rule gives the object a box (then `visible_box` is it).
    pub kept: bool,
}

/// Owner-map value of a pixel that belongs to no object.
pub const NO_OWNER: u16 = u16::MAX;

/// A rendered scene: the 8-bit image, the owner map and the per-object outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedScene {
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Interleaved 8-bit RGB, `[H, W, 3]` row-major.
    pub rgb: Vec<u8>,
    /// Per pixel (`[H, W]` row-major), the index into `objects` of the last-drawn object the pixel belongs
    /// to, or [`NO_OWNER`].
    pub owner: Vec<u16>,
    /// One record per object of the scene, in drawing order.
    pub objects: Vec<ObjectRecord>,
}

impl RenderedScene {
    /// The detection sample: the normalised image and the boxes and labels of the kept objects, in drawing
    /// order (never crowd).
    pub fn to_sample(&self, image_id: u64, normalization: &Normalization) -> Result<Sample> {
        let image = normalization.normalize_rgb8(&self.rgb, self.height, self.width)?;
        let kept: Vec<&ObjectRecord> = self.objects.iter().filter(|o| o.kept).collect();
        Ok(Sample {
            image_id,
            image,
            boxes: kept.iter().filter_map(|o| o.visible_box).collect(),
            labels: kept.iter().map(|o| o.label).collect(),
            crowd: vec![false; kept.len()],
        })
    }
}

/// Number of equiprobable quantiles the pixel noise draws from.
const NOISE_QUANTILES: usize = 4096;

/// `erf(x)` by its Maclaurin series; accurate to ~1e-13 for `|x| ≤ 3`, the range the quantile table needs.
fn erf(x: f64) -> f64 {
    let x2 = x * x;
    let (mut term, mut sum) = (x, x);
    for n in 1..200 {
        term *= -x2 / n as f64;
        let add = term / (2 * n + 1) as f64;
        sum += add;
        if add.abs() < 1e-17 * sum.abs() {
            break;
        }
    }
    sum * std::f64::consts::FRAC_2_SQRT_PI
}

/// The standard normal quantiles at `(i + ½) / N`, `i < N`, found by bisection on the CDF, made exactly
/// antisymmetric and rescaled to unit variance (the lost tails beyond ±3.5 would otherwise shrink it by
/// ~1%). Computed once per process.
fn noise_quantiles() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let n = NOISE_QUANTILES;
        let cdf = |z: f64| 0.5 * (1.0 + erf(z / std::f64::consts::SQRT_2));
        let mut lower: Vec<f64> = (0..n / 2)
            .map(|i| {
                let p = (i as f64 + 0.5) / n as f64;
                let (mut lo, mut hi) = (-4.0f64, 0.0f64);
                for _ in 0..64 {
                    let mid = 0.5 * (lo + hi);
                    if cdf(mid) < p {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                0.5 * (lo + hi)
            })
            .collect();
        let variance = 2.0 * lower.iter().map(|z| z * z).sum::<f64>() / n as f64;
        let scale = variance.sqrt().recip();
        lower.iter_mut().for_each(|z| *z *= scale);
        lower
            .iter()
            .map(|&z| z as f32)
            .chain(lower.iter().rev().map(|&z| -z as f32))
            .collect()
    })
}

/// Standard normal draws by inverse-CDF lookup in [`noise_quantiles`]: five 12-bit indices per 64-bit draw.
/// Image noise needs many cheap samples; the lookup replaces Box–Muller's logarithm and trigonometry, which
/// made noise most of the rendering time, and is indistinguishable after rounding to 8 bits.
struct GaussianSource {
    rng: Rng,
    bits: u64,
    left: u32,
}

impl GaussianSource {
    fn new(seed: u64) -> Self {
        GaussianSource {
            rng: Rng::new(seed),
            bits: 0,
            left: 0,
        }
    }

    fn next(&mut self, table: &[f32]) -> f32 {
        if self.left == 0 {
            self.bits = self.rng.next_u64();
            self.left = 5;
        }
        let index = (self.bits & (NOISE_QUANTILES as u64 - 1)) as usize;
        self.bits >>= 12;
        self.left -= 1;
        table[index]
    }
}

/// Per-pixel rectangle `[x0, x1) × [y0, y1)` of the image that a shape with box `[lo, hi]` plus `margin`
/// can touch.
fn pixel_window(
    lo: (f32, f32),
    hi: (f32, f32),
    margin: f32,
    width: usize,
    height: usize,
) -> (usize, usize, usize, usize) {
    let clampf = |v: f32, n: usize| v.clamp(0.0, n as f32) as usize;
    (
        clampf((lo.0 - margin).floor(), width),
        clampf((hi.0 + margin).ceil(), width),
        clampf((lo.1 - margin).floor(), height),
        clampf((hi.1 + margin).ceil(), height),
    )
}

/// Grows a pixel-edge box to include pixel `(x, y)`.
fn include(bounds: &mut Option<BoxXyxy>, x: usize, y: usize) {
    let (x, y) = (x as f32, y as f32);
    match bounds {
        Some(b) => {
            b[0] = b[0].min(x);
            b[1] = b[1].min(y);
            b[2] = b[2].max(x + 1.0);
            b[3] = b[3].max(y + 1.0);
        }
        None => *bounds = Some([x, y, x + 1.0, y + 1.0]),
    }
}

struct Renderer<'a> {
    config: &'a SyntheticConfig,
    rng: Rng,
    canvas: Vec<[f32; 3]>,
}

impl<'a> Renderer<'a> {
    fn new(config: &'a SyntheticConfig, seed: u64) -> Self {
        Renderer {
            config,
            rng: Rng::new(seed),
            canvas: vec![[0.0; 3]; config.height * config.width],
        }
    }

    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        self.rng.uniform(lo as f64, hi as f64) as f32
    }

    fn color(&mut self, lo: f32, hi: f32) -> [f32; 3] {
        [
            self.uniform(lo, hi),
            self.uniform(lo, hi),
            self.uniform(lo, hi),
        ]
    }

    fn blend(&mut self, p: usize, color: [f32; 3], alpha: f32) {
        let px = &mut self.canvas[p];
        for c in 0..3 {
            px[c] += (color[c] - px[c]) * alpha;
        }
    }

    fn draw_background(&mut self) {
        let (h, w) = (self.config.height, self.config.width);
        let base = self.color(0.05, 0.95);
        let other = self.color(0.05, 0.95);
        let strength = self.uniform(0.0, 0.6);
        let angle = self.uniform(0.0, std::f32::consts::TAU);
        let (dir_x, dir_y) = (angle.cos(), angle.sin());
        let extent = h.max(w) as f32;
        // sin(kx·x + ky·y + φ) = sin(kx·x)·cos(ky·y + φ) + cos(kx·x)·sin(ky·y + φ): per-column and per-row
        // tables instead of a sine per pixel and wave.
        let mut column_terms = vec![[0.0f32; 4]; w];
        let mut row_terms = vec![[0.0f32; 4]; h];
        for wave in 0..2 {
            let amplitude = self.uniform(0.01, 0.05);
            let wavelength = self.uniform(3.0, 40.0);
            let theta = self.uniform(0.0, std::f32::consts::TAU);
            let phase = self.uniform(0.0, std::f32::consts::TAU);
            let k = std::f32::consts::TAU / wavelength;
            for (x, terms) in column_terms.iter_mut().enumerate() {
                let (sin, cos) = (k * theta.cos() * (x as f32 + 0.5)).sin_cos();
                terms[2 * wave] = amplitude * sin;
                terms[2 * wave + 1] = amplitude * cos;
            }
            for (y, terms) in row_terms.iter_mut().enumerate() {
                let (sin, cos) = (k * theta.sin() * (y as f32 + 0.5) + phase).sin_cos();
                terms[2 * wave] = cos;
                terms[2 * wave + 1] = sin;
            }
        }
        for (y, row) in row_terms.iter().enumerate() {
            let fy = y as f32 + 0.5;
            for (x, column) in column_terms.iter().enumerate() {
                let fx = x as f32 + 0.5;
                let t =
                    ((fx - w as f32 / 2.0) * dir_x + (fy - h as f32 / 2.0) * dir_y) / extent + 0.5;
                let texture: f32 = (0..4).map(|i| column[i] * row[i]).sum();
                let px = &mut self.canvas[y * w + x];
                for c in 0..3 {
                    px[c] = base[c] + (other[c] - base[c]) * strength * t + texture;
                }
            }
        }
    }

    fn draw_line(&mut self) {
        let (h, w) = (self.config.height as f32, self.config.width as f32);
        let a = [self.uniform(0.0, w), self.uniform(0.0, h)];
        let angle = self.uniform(0.0, std::f32::consts::TAU);
        let length = self.uniform(8.0, 0.6 * w.max(h));
        let b = [a[0] + length * angle.cos(), a[1] + length * angle.sin()];
        let half_width = self.uniform(0.4, 1.2);
        let color = self.color(0.0, 1.0);
        let opacity = self.uniform(0.3, 0.9);
        let (x0, x1, y0, y1) = pixel_window(
            (a[0].min(b[0]), a[1].min(b[1])),
            (a[0].max(b[0]), a[1].max(b[1])),
            half_width + 1.0,
            self.config.width,
            self.config.height,
        );
        for y in y0..y1 {
            for x in x0..x1 {
                let d = segment_distance(a, b, half_width, x as f32 + 0.5, y as f32 + 0.5);
                if d < 0.5 {
                    let p = y * self.config.width + x;
                    self.blend(p, color, (0.5 - d).min(1.0) * opacity);
                }
            }
        }
    }

    fn draw_blob(&mut self) {
        let (h, w) = (self.config.height as f32, self.config.width as f32);
        let center = (self.uniform(0.0, w), self.uniform(0.0, h));
        let sigma = self.uniform(2.0, 2.0 + 0.08 * w.min(h));
        let peak = self.uniform(0.15, 0.5);
        let color = self.color(0.0, 1.0);
        let reach = 3.0 * sigma;
        let (x0, x1, y0, y1) = pixel_window(
            (center.0 - reach, center.1 - reach),
            (center.0 + reach, center.1 + reach),
            0.0,
            self.config.width,
            self.config.height,
        );
        let inv_two_var = 1.0 / (2.0 * sigma * sigma);
        // The Gaussian is separable: exp(−(dx² + dy²)/2σ²) = exp(−dx²/2σ²) · exp(−dy²/2σ²).
        let falloff = |d: f32| (-d * d * inv_two_var).exp();
        let columns: Vec<f32> = (x0..x1)
            .map(|x| falloff(x as f32 + 0.5 - center.0))
            .collect();
        for y in y0..y1 {
            let row = peak * falloff(y as f32 + 0.5 - center.1);
            for (x, &column) in (x0..x1).zip(&columns) {
                self.blend(y * self.config.width + x, color, row * column);
            }
        }
    }

    /// A random colour whose largest channel difference from `under` is at least `min_contrast`, or the
    /// most contrasting of 32 tries.
    fn contrasting_color(&mut self, under: [f32; 3]) -> [f32; 3] {
        let mut best = ([0.0; 3], -1.0f32);
        for _ in 0..32 {
            let color = self.color(0.0, 1.0);
            let contrast = (0..3)
                .map(|c| (color[c] - under[c]).abs())
                .fold(0.0, f32::max);
            if contrast > best.1 {
                best = (color, contrast);
            }
            if contrast >= self.config.min_contrast {
                break;
            }
        }
        best.0
    }

    /// Draws one object over the canvas, claims the pixels whose centres it covers in `owner`, and returns
    /// its full pixel count and box.
    fn draw_object(
        &mut self,
        index: u16,
        object: &ObjectSpec,
        owner: &mut [u16],
    ) -> (usize, Option<BoxXyxy>) {
        let width = self.config.width;
        let geometry = Geometry::new(object.class, object.size.0, object.size.1);
        let (cx, cy) = object.center;
        let (hw, hh) = (object.size.0 / 2.0, object.size.1 / 2.0);
        let (x0, x1, y0, y1) = pixel_window(
            (cx - hw, cy - hh),
            (cx + hw, cy + hh),
            1.0,
            width,
            self.config.height,
        );
        let color = match object.color {
            Some(color) => color,
            None => {
                let mut mean = [0.0f32; 3];
                let count = ((x1 - x0) * (y1 - y0)).max(1) as f32;
                for y in y0..y1 {
                    for px in &self.canvas[y * width + x0..y * width + x1] {
                        for c in 0..3 {
                            mean[c] += px[c];
                        }
                    }
                }
                self.contrasting_color(mean.map(|v| v / count))
            }
        };
        let mut full_pixels = 0;
        let mut full_box = None;
        for y in y0..y1 {
            for x in x0..x1 {
                let d = geometry.signed_distance(x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                if d < 0.5 {
                    let p = y * width + x;
                    self.blend(p, color, (0.5 - d).min(1.0));
                    if d <= 0.0 {
                        owner[p] = index;
                        full_pixels += 1;
                        include(&mut full_box, x, y);
                    }
                }
            }
        }
        (full_pixels, full_box)
    }

    fn render(mut self, scene: &Scene, labels: &[usize]) -> RenderedScene {
        let (h, w) = (self.config.height, self.config.width);
        self.draw_background();
        let (lo, hi) = self.config.clutter_per_image;
        let clutter = lo + self.rng.below(hi - lo + 1);
        for _ in 0..clutter {
            if self.rng.below(2) == 0 {
                self.draw_line();
            } else {
                self.draw_blob();
            }
        }
        let mut owner = vec![NO_OWNER; h * w];
        let mut full = Vec::with_capacity(scene.objects.len());
        for (k, object) in scene.objects.iter().enumerate() {
            full.push(self.draw_object(k as u16, object, &mut owner));
        }
        let noise_std = self.config.noise_std;
        let mut gaussian = GaussianSource::new(self.rng.next_u64());
        let table = noise_quantiles();
        let mut rgb = Vec::with_capacity(3 * h * w);
        for px in &self.canvas {
            for &v in px {
                let noisy = if noise_std > 0.0 {
                    v + noise_std * gaussian.next(table)
                } else {
                    v
                };
                rgb.push((noisy.clamp(0.0, 1.0) * 255.0).round() as u8);
            }
        }
        let mut visible_pixels = vec![0usize; scene.objects.len()];
        let mut visible_box: Vec<Option<BoxXyxy>> = vec![None; scene.objects.len()];
        for (p, &o) in owner.iter().enumerate() {
            if o != NO_OWNER {
                visible_pixels[o as usize] += 1;
                include(&mut visible_box[o as usize], p % w, p / w);
            }
        }
        let min_visible = self.config.min_visible_fraction as f64;
        let objects = scene
            .objects
            .iter()
            .enumerate()
            .map(|(k, object)| {
                let (full_pixels, full_box) = full[k];
                ObjectRecord {
                    class: object.class,
                    label: labels[k],
                    full_pixels,
                    visible_pixels: visible_pixels[k],
                    full_box,
                    visible_box: visible_box[k],
                    kept: full_pixels > 0
                        && visible_pixels[k] as f64 >= min_visible * full_pixels as f64,
                }
            })
            .collect();
        RenderedScene {
            height: h,
            width: w,
            rgb,
            owner,
            objects,
        }
    }
}

/// A synthetic shapes split: `len` images generated from `seed` with `config`. Image `i` depends only on
/// `(config, seed, i)`, so any subset renders identically in any order and on any number of threads.
/// Image ids are the indices `0..len`.
#[derive(Clone, Debug)]
pub struct SyntheticShapes {
    config: SyntheticConfig,
    seed: u64,
    len: usize,
    class_names: Vec<String>,
}

/// Stream tags of [`SyntheticShapes::splits`] (the ASCII bytes of "train" and "val").
const TRAIN_STREAM: u64 = 0x74_72_61_69_6E;
const VAL_STREAM: u64 = 0x76_61_6C;

impl SyntheticShapes {
    /// A split of `len` images from `seed`; the configuration is validated here.
    pub fn new(config: SyntheticConfig, seed: u64, len: usize) -> Result<SyntheticShapes> {
        config.validate()?;
        let class_names = config
            .classes
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        Ok(SyntheticShapes {
            config,
            seed,
            len,
            class_names,
        })
    }

    /// A train and a validation split drawn from independent seeds derived from `seed`
    /// (`derive_seed(seed, "train")` and `derive_seed(seed, "val")`), so they share no image.
    pub fn splits(
        config: SyntheticConfig,
        seed: u64,
        train_len: usize,
        val_len: usize,
    ) -> Result<(SyntheticShapes, SyntheticShapes)> {
        let train =
            SyntheticShapes::new(config.clone(), derive_seed(seed, TRAIN_STREAM), train_len)?;
        let val = SyntheticShapes::new(config, derive_seed(seed, VAL_STREAM), val_len)?;
        Ok((train, val))
    }

    /// The configuration.
    pub fn config(&self) -> &SyntheticConfig {
        &self.config
    }

    /// The split's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The random scene of image `index`: object count, classes, sizes (log-uniform), aspects and positions
    /// drawn from `derive_seed(seed, index)`; colours are left to the renderer.
    pub fn scene(&self, index: usize) -> Result<Scene> {
        if index >= self.len {
            return Err(index_error("synthetic split", index, self.len));
        }
        let cfg = &self.config;
        let mut rng = Rng::new(derive_seed(self.seed, index as u64));
        let seed = rng.next_u64();
        let (lo, hi) = cfg.objects_per_image;
        let count = lo + rng.below(hi - lo + 1);
        let (log_min, log_max) = (
            (cfg.min_object_size as f64).ln(),
            (cfg.max_object_size() as f64).ln(),
        );
        let objects = (0..count)
            .map(|_| {
                let class = cfg.classes[rng.below(cfg.classes.len())];
                let size = rng.uniform(log_min, log_max).exp() as f32;
                let coin = rng.below(2) == 1;
                let ratio = rng.uniform(0.0, 1.0) as f32;
                let (w, h) = class.box_size(size, coin, ratio);
                let cx = rng.uniform(w as f64 / 2.0, cfg.width as f64 - w as f64 / 2.0) as f32;
                let cy = rng.uniform(h as f64 / 2.0, cfg.height as f64 - h as f64 / 2.0) as f32;
                ObjectSpec {
                    class,
                    center: (cx, cy),
                    size: (w, h),
                    color: None,
                }
            })
            .collect();
        Ok(Scene { seed, objects })
    }

    /// Image `index` rendered, with its owner map and per-object records.
    pub fn render(&self, index: usize) -> Result<RenderedScene> {
        self.config.render(&self.scene(index)?)
    }

    /// Every sample of the split, rendered in parallel (rayon), in index order.
    pub fn generate_all(&self) -> Result<Vec<Sample>> {
        (0..self.len).into_par_iter().map(|i| self.get(i)).collect()
    }
}

impl Dataset for SyntheticShapes {
    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, index: usize) -> Result<Sample> {
        self.render(index)?
            .to_sample(index as u64, &self.config.normalization)
    }

    fn class_names(&self) -> &[String] {
        &self.class_names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        // erf(0.5), erf(1), erf(2), erf(3) to 12 digits.
        for (x, want) in [
            (0.5, 0.520_499_877_813),
            (1.0, 0.842_700_792_950),
            (2.0, 0.995_322_265_019),
            (3.0, 0.999_977_909_503),
        ] {
            assert!((erf(x) - want).abs() < 1e-11, "erf({x}) = {}", erf(x));
            assert_eq!(erf(-x), -erf(x));
        }
    }

    #[test]
    fn noise_is_standard_normal() {
        let table = noise_quantiles();
        assert_eq!(table.len(), NOISE_QUANTILES);
        assert!(table.windows(2).all(|w| w[0] < w[1]), "sorted, distinct");
        assert!((0..NOISE_QUANTILES).all(|i| table[i] == -table[NOISE_QUANTILES - 1 - i]));
        // The median quantile of N(0, 1) at 0.75 is 0.6745; the table's entry is within the rescaling.
        let q75 = table[3 * NOISE_QUANTILES / 4];
        assert!((q75 - 0.6745).abs() < 0.01, "{q75}");
        let mut source = GaussianSource::new(3);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| source.next(table) as f64).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        let within_one = xs.iter().filter(|x| x.abs() < 1.0).count() as f64 / n as f64;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0).abs() < 0.02, "{var}");
        assert!((within_one - 0.6827).abs() < 0.01, "{within_one}");
    }
}
