//! Collation of transformed samples into one contiguous batch tensor plus per-image targets and metadata.

use super::transforms::{pad_to, round_up};
use super::{BoxXyxy, ImageMeta, Sample};
use crate::error::{Error, Result};
use crate::Tensor;

/// One image's training targets, in the coordinates of the batch tensor.
///
/// Plain vectors, because a host-side trainer's label assignment indexes them box by box; the `_tensor`
/// methods give `[n, 4]` f32 / `[n]` i64 tensors for code that wants tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// Non-crowd boxes `[x1, y1, x2, y2]`.
    pub boxes: Vec<BoxXyxy>,
    /// Their contiguous labels.
    pub labels: Vec<usize>,
    /// Crowd regions (COCO `iscrowd = 1`), left out of `boxes`; a trainer may ignore anchors on them.
    pub crowd_boxes: Vec<BoxXyxy>,
    /// Labels of the crowd regions.
    pub crowd_labels: Vec<usize>,
}

impl Target {
    /// Splits a sample's annotations into training boxes and crowd regions, keeping their order.
    pub fn from_sample(sample: &Sample) -> Result<Target> {
        let n = sample.boxes.len();
        if sample.labels.len() != n || sample.crowd.len() != n {
            return Err(Error::invalid(
                format!("sample {}", sample.image_id),
                format!(
                    "expected as many labels and crowd flags as boxes ({n}), got {} labels and {} flags",
                    sample.labels.len(),
                    sample.crowd.len()
                ),
            ));
        }
        let mut target = Target {
            boxes: Vec::new(),
            labels: Vec::new(),
            crowd_boxes: Vec::new(),
            crowd_labels: Vec::new(),
        };
        for ((b, &label), &crowd) in sample.boxes.iter().zip(&sample.labels).zip(&sample.crowd) {
            if crowd {
                target.crowd_boxes.push(*b);
                target.crowd_labels.push(label);
            } else {
                target.boxes.push(*b);
                target.labels.push(label);
            }
        }
        Ok(target)
    }

    /// The training boxes as an `[n, 4]` f32 host tensor.
    pub fn boxes_tensor(&self) -> Result<Tensor> {
        Tensor::from_vec(
            self.boxes.iter().flatten().copied().collect::<Vec<f32>>(),
            &[self.boxes.len(), 4],
        )
    }

    /// The training labels as an `[n]` i64 host tensor.
    pub fn labels_tensor(&self) -> Result<Tensor> {
        Tensor::from_vec(
            self.labels.iter().map(|&l| l as i64).collect::<Vec<i64>>(),
            &[self.labels.len()],
        )
    }
}

/// A batch ready for a detector: `images` is `[B, 3, H, W]` f32 on the host, each image at the top left of
/// its slot and zero-padded to the batch's `H × W` (the largest image's sides rounded up to the size
/// divisor); `targets[b]` and `metas[b]` belong to image `b`.
#[derive(Debug)]
pub struct Batch {
    /// `[B, 3, H, W]` f32 host tensor.
    pub images: Tensor,
    /// Per-image targets.
    pub targets: Vec<Target>,
    /// Per-image metadata; each `padded_size` is the batch's `(H, W)`.
    pub metas: Vec<ImageMeta>,
}

impl Batch {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether the batch has no image (never true for a batch from [`collate`]).
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

/// Stacks transformed samples into a [`Batch`], padding each with zeros to the largest height and width
/// rounded up to `size_divisor`. Errors on an empty list or inconsistent annotations.
pub fn collate(samples: Vec<(Sample, ImageMeta)>, size_divisor: usize) -> Result<Batch> {
    if samples.is_empty() {
        return Err(Error::invalid(
            "samples",
            "expected at least one sample, got none",
        ));
    }
    let height = round_up(
        samples
            .iter()
            .map(|(s, _)| s.image.height())
            .max()
            .unwrap_or(0),
        size_divisor,
    )?;
    let width = round_up(
        samples
            .iter()
            .map(|(s, _)| s.image.width())
            .max()
            .unwrap_or(0),
        size_divisor,
    )?;
    let values = height
        .checked_mul(width)
        .and_then(|n| n.checked_mul(3 * samples.len()))
        .ok_or_else(|| {
            Error::invalid(
                "samples",
                format!("{}×3×{height}×{width} values overflow usize", samples.len()),
            )
        })?;
    let mut data = Vec::with_capacity(values);
    let mut targets = Vec::with_capacity(samples.len());
    let mut metas = Vec::with_capacity(samples.len());
    for (sample, mut meta) in samples {
        targets.push(Target::from_sample(&sample)?);
        if sample.image.height() == height && sample.image.width() == width {
            data.extend_from_slice(sample.image.data());
        } else {
            data.extend(pad_to(&sample.image, height, width)?.into_data());
        }
        meta.padded_size = (height, width);
        metas.push(meta);
    }
    let images = Tensor::from_vec(data, &[targets.len(), 3, height, width])?;
    Ok(Batch {
        images,
        targets,
        metas,
    })
}
