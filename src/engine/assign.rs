//! Anchors and ATSS label assignment for the GFL detector, as mmdet's `AnchorGenerator` (GFL settings) and
//! `ATSSAssigner(topk=9)`, on the host.
//!
//! **Anchors.** One square anchor per feature-map location and level: centre `(x·s, y·s)` for stride `s`
//! (mmdet's `center_offset = 0`), side `octave_base_scale · s` (8·s for GFL). Locations are flattened level
//! by level, row-major within a level — the order the head's outputs are flattened in.
//!
//! **ATSS** (Zhang et al., CVPR'20; mmdet `ATSSAssigner.assign`). For every ground-truth box `g`:
//! 1. per level, the `topk` anchors whose centres are closest (Euclidean) to the centre of `g` are candidates
//!    (fewer when the level has fewer anchors);
//! 2. the IoU threshold of `g` is `mean + std` of its candidates' IoUs (`std` with Bessel's correction, as
//!    `torch.std`);
//! 3. a candidate is positive for `g` when its IoU is ≥ the threshold **and** its centre lies inside `g` by
//!    more than 0.01 on every side;
//! 4. an anchor positive for several boxes goes to the one it overlaps most (first box on ties).
//!
//! IoU is mmdet's `bbox_overlaps` without the `+1` convention, the union clamped at `1e-6`. Everything is
//! computed in f64; ground-truth boxes are validated (finite, `x1 ≤ x2`, `y1 ≤ y2`).

use crate::error::{Error, Result};

/// The square anchors of one FPN level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AnchorLevel {
    /// Feature-map height, in cells.
    pub height: usize,
    /// Feature-map width, in cells.
    pub width: usize,
    /// Pixels per feature-map cell.
    pub stride: f64,
}

pub use crate::distill::Box4;

/// mmdet GFL's `octave_base_scale`: anchors are `8·stride` squares.
pub const GFL_ANCHOR_SCALE: f64 = 8.0;

/// Anchor boxes of every level, flattened level by level (row-major within a level), and the number of
/// anchors per level.
pub fn anchors(levels: &[AnchorLevel], anchor_scale: f64) -> (Vec<Box4>, Vec<usize>) {
    let mut boxes = Vec::new();
    let mut counts = Vec::with_capacity(levels.len());
    for level in levels {
        let half = anchor_scale * level.stride / 2.0;
        for y in 0..level.height {
            for x in 0..level.width {
                let (cx, cy) = (x as f64 * level.stride, y as f64 * level.stride);
                boxes.push([cx - half, cy - half, cx + half, cy + half]);
            }
        }
        counts.push(level.height * level.width);
    }
    (boxes, counts)
}

/// Settings of [`atss_assign`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AtssConfig {
    /// Candidates per level and box; mmdet's GFL uses 9.
    pub topk: usize,
}

impl Default for AtssConfig {
    fn default() -> Self {
        AtssConfig { topk: 9 }
    }
}

/// The result of [`atss_assign`] for one image.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    /// For every anchor, the index of the ground-truth box it is positive for, or `None` (background).
    pub gt_index: Vec<Option<usize>>,
    /// The IoU matrix `[anchors][gts]`, row-major, which the LD valuable-region selection reuses.
    pub ious: Vec<f64>,
    /// Number of ground-truth boxes (the column count of `ious`).
    pub num_gts: usize,
    /// Per box, the ATSS threshold `mean + std` of its candidates' IoUs (NaN for a single candidate); LD's
    /// valuable localisation region is defined relative to it.
    pub thresholds: Vec<f64>,
}

impl Assignment {
    /// Indices of the positive anchors, ascending.
    pub fn positives(&self) -> Vec<usize> {
        (0..self.gt_index.len())
            .filter(|&a| self.gt_index[a].is_some())
            .collect()
    }
}

/// mmdet's `bbox_overlaps(a, b, mode='iou')` for one pair: no `+1`, union clamped at 1e-6.
pub fn iou(a: &Box4, b: &Box4) -> f64 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: &Box4| (r[2] - r[0]) * (r[3] - r[1]);
    let union = (area(a) + area(b) - inter).max(1e-6);
    inter / union
}

/// Validates ground-truth boxes: finite, non-reversed.
pub fn check_gt_boxes(gts: &[Box4], arg: &str) -> Result<()> {
    for (i, g) in gts.iter().enumerate() {
        if g.iter().any(|v| !v.is_finite()) {
            return Err(Error::invalid(
                arg,
                format!("box {i} has a non-finite coordinate: {g:?}"),
            ));
        }
        if g[2] < g[0] || g[3] < g[1] {
            return Err(Error::invalid(
                arg,
                format!("box {i} is reversed (x2 < x1 or y2 < y1): {g:?}"),
            ));
        }
    }
    Ok(())
}

/// ATSS assignment of `anchors` (flattened levels, `level_counts` anchors each) to `gts` (see the module
/// docs). An image without boxes assigns every anchor to the background.
pub fn atss_assign(
    anchors: &[Box4],
    level_counts: &[usize],
    gts: &[Box4],
    cfg: &AtssConfig,
) -> Result<Assignment> {
    check_gt_boxes(gts, "gt_boxes")?;
    if level_counts.iter().sum::<usize>() != anchors.len() {
        return Err(Error::invalid(
            "level_counts",
            format!(
                "the counts sum to {}, but there are {} anchors",
                level_counts.iter().sum::<usize>(),
                anchors.len()
            ),
        ));
    }
    if cfg.topk == 0 {
        return Err(Error::invalid(
            "topk",
            "expected at least 1 candidate per level",
        ));
    }
    let (n, k) = (anchors.len(), gts.len());
    let mut ious = vec![0.0; n * k];
    for (a, anchor) in anchors.iter().enumerate() {
        for (g, gt) in gts.iter().enumerate() {
            ious[a * k + g] = iou(anchor, gt);
        }
    }
    let mut gt_index = vec![None; n];
    let mut best = vec![f64::NEG_INFINITY; n];
    let mut thresholds = vec![f64::NAN; k];
    let centre = |b: &Box4| [(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0];
    for (g, gt) in gts.iter().enumerate() {
        let gc = centre(gt);
        let mut candidates = Vec::new();
        let mut start = 0;
        for &count in level_counts {
            let mut by_distance: Vec<(f64, usize)> = (start..start + count)
                .map(|a| {
                    let ac = centre(&anchors[a]);
                    (
                        ((ac[0] - gc[0]).powi(2) + (ac[1] - gc[1]).powi(2)).sqrt(),
                        a,
                    )
                })
                .collect();
            // Stable: equal distances keep anchor order.
            by_distance.sort_by(|x, y| x.0.total_cmp(&y.0));
            candidates.extend(by_distance.iter().take(cfg.topk).map(|&(_, a)| a));
            start += count;
        }
        if candidates.is_empty() {
            continue;
        }
        let values: Vec<f64> = candidates.iter().map(|&a| ious[a * k + g]).collect();
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        // torch.std: Bessel-corrected; NaN for a single candidate, which makes every comparison false.
        let var =
            values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (values.len() as f64 - 1.0);
        let threshold = mean + var.sqrt();
        thresholds[g] = threshold;
        for (&a, &v) in candidates.iter().zip(&values) {
            let ac = centre(&anchors[a]);
            let inside = [ac[0] - gt[0], ac[1] - gt[1], gt[2] - ac[0], gt[3] - ac[1]]
                .iter()
                .fold(f64::INFINITY, |m, &d| m.min(d))
                > 0.01;
            // Strictly greater: on equal IoU the earlier box keeps the anchor (torch.max's first index).
            if v >= threshold && inside && v > best[a] {
                best[a] = v;
                gt_index[a] = Some(g);
            }
        }
    }
    Ok(Assignment {
        gt_index,
        ious,
        num_gts: k,
        thresholds,
    })
}

/// The anchor levels of a padded input of `(height, width)` pixels for FPN `strides` (maps of
/// `⌈H/s⌉ × ⌈W/s⌉`, as the stride-2 convolutions with padding produce).
pub fn levels_for(image_size: (usize, usize), strides: &[f64]) -> Vec<AnchorLevel> {
    strides
        .iter()
        .map(|&s| AnchorLevel {
            height: (image_size.0 as f64 / s).ceil() as usize,
            width: (image_size.1 as f64 / s).ceil() as usize,
            stride: s,
        })
        .collect()
}

/// ATSS over a whole batch: one [`crate::distill::DenseAssignment`] over the flattened anchors
/// (`image · A + anchor`), with every image's boxes and thresholds.
pub fn assign_batch(
    images: &[crate::distill::ImageTargets],
    levels: &[AnchorLevel],
    anchor_scale: f64,
    cfg: &AtssConfig,
) -> Result<crate::distill::DenseAssignment> {
    let (boxes, counts) = anchors(levels, anchor_scale);
    let a = boxes.len();
    let mut strides = Vec::with_capacity(a);
    for (level, &count) in levels.iter().zip(&counts) {
        strides.extend(std::iter::repeat(level.stride).take(count));
    }
    let points: Vec<[f64; 2]> = boxes
        .iter()
        .map(|b| [(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0])
        .collect();
    let mut out = crate::distill::DenseAssignment {
        batch: images.len(),
        anchors_per_image: a,
        points,
        strides,
        anchor_boxes: boxes.clone(),
        ..Default::default()
    };
    for (b, image) in images.iter().enumerate() {
        if image.boxes.len() != image.labels.len() {
            return Err(Error::invalid(
                "targets",
                format!(
                    "image {b} has {} boxes but {} labels",
                    image.boxes.len(),
                    image.labels.len()
                ),
            ));
        }
        let assignment = atss_assign(&boxes, &counts, &image.boxes, cfg)
            .map_err(|e| Error::invalid("targets", format!("image {b}: {e}")))?;
        for (anchor, gt) in assignment.gt_index.iter().enumerate() {
            if let Some(g) = *gt {
                out.positives.push(b * a + anchor);
                out.positive_boxes.push(image.boxes[g]);
                out.positive_labels.push(image.labels[g]);
            }
        }
        out.images.push(image.clone());
        out.thresholds.push(assignment.thresholds);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_follow_mmdet_layout() {
        let (boxes, counts) = anchors(
            &[
                AnchorLevel {
                    height: 2,
                    width: 3,
                    stride: 8.0,
                },
                AnchorLevel {
                    height: 1,
                    width: 2,
                    stride: 16.0,
                },
            ],
            GFL_ANCHOR_SCALE,
        );
        assert_eq!(counts, vec![6, 2]);
        assert_eq!(boxes[0], [-32.0, -32.0, 32.0, 32.0]);
        assert_eq!(boxes[4], [8.0 - 32.0, 8.0 - 32.0, 8.0 + 32.0, 8.0 + 32.0]);
        assert_eq!(boxes[7], [16.0 - 64.0, -64.0, 16.0 + 64.0, 64.0]);
    }

    #[test]
    fn a_box_gets_its_closest_well_overlapping_anchors() {
        let levels = [AnchorLevel {
            height: 8,
            width: 8,
            stride: 8.0,
        }];
        let (boxes, counts) = anchors(&levels, 4.0);
        let gt = [[20.0, 20.0, 44.0, 44.0]];
        let a = atss_assign(&boxes, &counts, &gt, &AtssConfig::default()).unwrap();
        let pos = a.positives();
        assert!(!pos.is_empty());
        for &p in &pos {
            let b = boxes[p];
            let c = [(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0];
            assert!(c[0] > 20.0 && c[0] < 44.0 && c[1] > 20.0 && c[1] < 44.0);
        }
        // The anchor centred at (32, 32) matches the box exactly in centre and size 32 ~ 24: positive.
        assert!(pos.contains(&(4 * 8 + 4)));
    }

    #[test]
    fn no_boxes_means_all_background_and_bad_boxes_are_errors() {
        let (boxes, counts) = anchors(
            &[AnchorLevel {
                height: 2,
                width: 2,
                stride: 8.0,
            }],
            8.0,
        );
        let a = atss_assign(&boxes, &counts, &[], &AtssConfig::default()).unwrap();
        assert!(a.positives().is_empty());
        let e = atss_assign(
            &boxes,
            &counts,
            &[[0.0, f64::NAN, 1.0, 1.0]],
            &AtssConfig::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("non-finite"), "{e}");
        let e = atss_assign(
            &boxes,
            &counts,
            &[[5.0, 0.0, 1.0, 1.0]],
            &AtssConfig::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("reversed"), "{e}");
        assert!(atss_assign(&boxes, &[3], &[], &AtssConfig::default()).is_err());
    }
}
