//! Geometric transforms applied to an image and its boxes together, and the [`ImageMeta`] that undoes them.
//!
//! [`Transform::apply`] runs, in order: resize keeping the aspect ratio to fit `target_size`, a horizontal
//! flip with probability `flip_probability` (decided by a seeded draw per sample and key), and zero
//! padding on the right and bottom to a multiple of `size_divisor`. Flipping happens before padding, so the
//! mirror axis is the resized image's centre and padding stays at the right.

use super::{derive_seed, BoxXyxy, Image, Sample};
use crate::error::{Error, Result};
use crate::testing::Rng;

/// Bilinear resize of `image` to `new_height × new_width` with half-pixel centres (source coordinate
/// `(x + ½) · w / new_w − ½`, clamped to the image, as `align_corners = false` in PyTorch), and the boxes
/// scaled by `sx = new_w / w`, `sy = new_h / h` and clipped to the new size. Returns the image, the boxes and
/// `(sx, sy)`.
pub fn resize(
    image: &Image,
    boxes: &[BoxXyxy],
    new_height: usize,
    new_width: usize,
) -> Result<(Image, Vec<BoxXyxy>, (f32, f32))> {
    let (h, w) = (image.height(), image.width());
    if h == 0 || w == 0 || new_height == 0 || new_width == 0 {
        return Err(Error::invalid(
            "resize",
            format!("expected non-empty sizes, got {h}×{w} → {new_height}×{new_width}"),
        ));
    }
    let values = new_height
        .checked_mul(new_width)
        .and_then(|n| n.checked_mul(3))
        .ok_or_else(|| {
            Error::invalid(
                "resize",
                format!("3×{new_height}×{new_width} values overflow usize"),
            )
        })?;
    let sx = new_width as f32 / w as f32;
    let sy = new_height as f32 / h as f32;
    // Source index pairs and weights per output column / row, computed once.
    let taps = |out: usize, scale: f32, len: usize| -> Vec<(usize, usize, f32)> {
        (0..out)
            .map(|i| {
                let src = ((i as f32 + 0.5) / scale - 0.5).clamp(0.0, (len - 1) as f32);
                let lo = src.floor() as usize;
                let hi = (lo + 1).min(len - 1);
                (lo, hi, src - lo as f32)
            })
            .collect()
    };
    let columns = taps(new_width, sx, w);
    let rows = taps(new_height, sy, h);
    let mut data = Vec::with_capacity(values);
    for c in 0..3 {
        let plane = image.channel(c);
        for &(y0, y1, fy) in &rows {
            let (row0, row1) = (&plane[y0 * w..(y0 + 1) * w], &plane[y1 * w..(y1 + 1) * w]);
            for &(x0, x1, fx) in &columns {
                let top = row0[x0] + (row0[x1] - row0[x0]) * fx;
                let bottom = row1[x0] + (row1[x1] - row1[x0]) * fx;
                data.push(top + (bottom - top) * fy);
            }
        }
    }
    let (fw, fh) = (new_width as f32, new_height as f32);
    let boxes = boxes
        .iter()
        .map(|b| {
            [
                (b[0] * sx).clamp(0.0, fw),
                (b[1] * sy).clamp(0.0, fh),
                (b[2] * sx).clamp(0.0, fw),
                (b[3] * sy).clamp(0.0, fh),
            ]
        })
        .collect();
    Ok((Image::new(new_height, new_width, data)?, boxes, (sx, sy)))
}

/// Size that fits `height × width` inside `target = (max_height, max_width)` keeping the aspect ratio:
/// `s = min(max_h / h, max_w / w)`, each side `round(side · s)` and at least 1 (up- or downscaling).
pub fn fit_size(height: usize, width: usize, target: (usize, usize)) -> Result<(usize, usize)> {
    if height == 0 || width == 0 || target.0 == 0 || target.1 == 0 {
        return Err(Error::invalid(
            "target_size",
            format!("expected non-empty sizes, got image {height}×{width} and target {target:?}"),
        ));
    }
    let scale = (target.0 as f64 / height as f64).min(target.1 as f64 / width as f64);
    let side = |v: usize, max: usize| ((v as f64 * scale).round() as usize).clamp(1, max);
    Ok((side(height, target.0), side(width, target.1)))
}

/// [`resize`] to [`fit_size`] of `target`.
pub fn resize_to_fit(
    image: &Image,
    boxes: &[BoxXyxy],
    target: (usize, usize),
) -> Result<(Image, Vec<BoxXyxy>, (f32, f32))> {
    let (new_height, new_width) = fit_size(image.height(), image.width(), target)?;
    resize(image, boxes, new_height, new_width)
}

/// Mirrors `image` left–right and maps each box `[x1, y1, x2, y2]` to `[W − x2, y1, W − x1, y2]`.
pub fn flip_horizontal(image: &Image, boxes: &[BoxXyxy]) -> Result<(Image, Vec<BoxXyxy>)> {
    let (h, w) = (image.height(), image.width());
    let mut data = Vec::with_capacity(image.data().len());
    for row in image.data().chunks_exact(w.max(1)) {
        data.extend(row.iter().rev());
    }
    let fw = w as f32;
    let boxes = boxes
        .iter()
        .map(|b| [fw - b[2], b[1], fw - b[0], b[3]])
        .collect();
    Ok((Image::new(h, w, data)?, boxes))
}

/// Pads `image` with zeros on the right and bottom to `height × width` (each ≥ the image's). Boxes are
/// unchanged by padding.
pub fn pad_to(image: &Image, height: usize, width: usize) -> Result<Image> {
    let (h, w) = (image.height(), image.width());
    if height < h || width < w {
        return Err(Error::invalid(
            "pad size",
            format!("expected at least the image's {h}×{w}, got {height}×{width}"),
        ));
    }
    let mut padded = Image::zeros(height, width)?.into_data();
    for c in 0..3 {
        let plane = image.channel(c);
        for y in 0..h {
            let dst = c * height * width + y * width;
            padded[dst..dst + w].copy_from_slice(&plane[y * w..(y + 1) * w]);
        }
    }
    Image::new(height, width, padded)
}

/// `value` rounded up to a multiple of `divisor` (≥ 1).
pub fn round_up(value: usize, divisor: usize) -> Result<usize> {
    if divisor == 0 {
        return Err(Error::invalid("size_divisor", "expected ≥ 1, got 0"));
    }
    value.div_ceil(divisor).checked_mul(divisor).ok_or_else(|| {
        Error::invalid(
            "size_divisor",
            format!("{value} rounded up to a multiple of {divisor} overflows"),
        )
    })
}

/// Pads `image` with zeros on the right and bottom to the next multiples of `divisor` in each dimension.
pub fn pad_to_multiple(image: &Image, divisor: usize) -> Result<Image> {
    pad_to(
        image,
        round_up(image.height(), divisor)?,
        round_up(image.width(), divisor)?,
    )
}

/// How a network input relates to the original image, enough to map detections back for evaluation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImageMeta {
    /// The sample's image id.
    pub image_id: u64,
    /// Original `(height, width)`.
    pub original_size: (usize, usize),
    /// `(height, width)` after resizing, before padding: the valid region at the top left of the input.
    pub resized_size: (usize, usize),
    /// `(sx, sy)` = resized / original width and height.
    pub scale: (f32, f32),
    /// Whether the image was mirrored left–right (after resizing).
    pub flipped: bool,
    /// `(height, width)` of the padded input: the sample's own after [`Transform::apply`], the batch's after
    /// [`collate`](super::collate). The padding is `padded_size − resized_size`, at the bottom and right.
    pub padded_size: (usize, usize),
}

impl ImageMeta {
    /// Zero padding `(bottom rows, right columns)`: `padded_size − resized_size`.
    pub fn padding(&self) -> (usize, usize) {
        (
            self.padded_size.0.saturating_sub(self.resized_size.0),
            self.padded_size.1.saturating_sub(self.resized_size.1),
        )
    }

    /// Maps a box in input coordinates back to the original image: undoes the flip (about the resized
    /// width), divides by the scale and clips to the original size.
    pub fn box_to_original(&self, b: BoxXyxy) -> BoxXyxy {
        let (mut x1, mut x2) = (b[0], b[2]);
        if self.flipped {
            let w = self.resized_size.1 as f32;
            (x1, x2) = (w - b[2], w - b[0]);
        }
        let (oh, ow) = (self.original_size.0 as f32, self.original_size.1 as f32);
        [
            (x1 / self.scale.0).clamp(0.0, ow),
            (b[1] / self.scale.1).clamp(0.0, oh),
            (x2 / self.scale.0).clamp(0.0, ow),
            (b[3] / self.scale.1).clamp(0.0, oh),
        ]
    }
}

/// The per-sample transform: resize to fit, seeded horizontal flip, pad to a stride multiple.
#[derive(Clone, Debug, PartialEq)]
pub struct Transform {
    /// `(max_height, max_width)` to fit the image into keeping its aspect ratio; `None` keeps its size.
    pub target_size: Option<(usize, usize)>,
    /// Pad height and width up to a multiple of this (the network's largest stride), ≥ 1; default 32.
    pub size_divisor: usize,
    /// Probability of a horizontal flip, in `[0, 1]`; default 0.
    pub flip_probability: f64,
    /// Seed of the flip draws.
    pub seed: u64,
}

impl Default for Transform {
    fn default() -> Self {
        Transform {
            target_size: None,
            size_divisor: 32,
            flip_probability: 0.0,
            seed: 0,
        }
    }
}

impl Transform {
    /// Checks `size_divisor ≥ 1`, `flip_probability ∈ [0, 1]` and a non-empty target.
    pub fn validate(&self) -> Result<()> {
        if self.size_divisor == 0 {
            return Err(Error::invalid("size_divisor", "expected ≥ 1, got 0"));
        }
        if !(0.0..=1.0).contains(&self.flip_probability) {
            return Err(Error::invalid(
                "flip_probability",
                format!("expected a value in [0, 1], got {}", self.flip_probability),
            ));
        }
        if let Some(target) = self.target_size {
            if target.0 == 0 || target.1 == 0 {
                return Err(Error::invalid(
                    "target_size",
                    format!("expected positive sides, got {target:?}"),
                ));
            }
        }
        Ok(())
    }

    /// Whether the sample drawn under `key` is flipped: a uniform draw from
    /// `derive_seed(seed, key)` below `flip_probability`. The [`DataLoader`](super::DataLoader) uses
    /// `key = derive_seed(epoch, index)`, so the decision depends on neither batch nor thread.
    pub fn flips(&self, key: u64) -> bool {
        self.flip_probability > 0.0
            && Rng::new(derive_seed(self.seed, key)).uniform(0.0, 1.0) < self.flip_probability
    }

    /// Applies resize, flip and pad to `sample` (boxes, labels and crowd flags follow the image) and
    /// returns the new sample with its [`ImageMeta`].
    pub fn apply(&self, sample: Sample, key: u64) -> Result<(Sample, ImageMeta)> {
        self.validate()?;
        let original_size = (sample.image.height(), sample.image.width());
        let (mut image, mut boxes, scale) = match self.target_size {
            Some(target) => resize_to_fit(&sample.image, &sample.boxes, target)?,
            None => (sample.image, sample.boxes, (1.0, 1.0)),
        };
        let resized_size = (image.height(), image.width());
        let flipped = self.flips(key);
        if flipped {
            (image, boxes) = flip_horizontal(&image, &boxes)?;
        }
        let image = pad_to_multiple(&image, self.size_divisor)?;
        let meta = ImageMeta {
            image_id: sample.image_id,
            original_size,
            resized_size,
            scale,
            flipped,
            padded_size: (image.height(), image.width()),
        };
        Ok((
            Sample {
                image_id: sample.image_id,
                image,
                boxes,
                labels: sample.labels,
                crowd: sample.crowd,
            },
            meta,
        ))
    }
}
