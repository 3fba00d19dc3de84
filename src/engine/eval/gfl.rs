//! GFL (Generalized Focal Loss v1) post-processing on the host: head outputs of one image → COCO
//! [`Detection`]s, as mmdetection's `GFLHead.get_bboxes` with GFL's `test_cfg`.
//!
//! Per FPN level with stride `s` and an `H × W` map (all arithmetic in f32, as the peer):
//! - **Anchor points.** Location `(x, y)` has its point at `(x·s, y·s)`. GFL's anchor generator
//!   (`AnchorGenerator`, `octave_base_scale=8`, `scales_per_octave=1`, ratio 1) uses mmdetection's default
//!   `center_offset=0`: base anchors are centred on 0 and shifted by `x·s`, and `GFLHead.anchor_center`
//!   takes the centre of that anchor, so there is no half-stride offset (mmdetection 2.x
//!   `anchor_generator.py`, `gfl_head.py`; the LD code base decodes with the same `anchor_center` and
//!   `distance2bbox`).
//! - **Scores.** `σ(cls_logit)` per class.
//! - **Distances.** For each side `e ∈ (l, t, r, b)`, the `reg_max + 1` box logits of that side are turned
//!   into a distribution by a softmax and integrated: `d_e = s · Σ_{k=0..reg_max} k·softmax(z_e)_k`.
//! - **Boxes.** `(x·s − d_l, y·s − d_t, x·s + d_r, y·s + d_b)`, each coordinate clamped to
//!   `[0, width]` / `[0, height]` of the network input (`img_shape`, before padding).
//! - **Pre-NMS selection**, [`PreNmsSelection`]: by default (GFL's and LD's official code, mmdetection
//!   before 2.18) the `nms_pre = 1000` locations with the highest max-over-classes score are kept when the
//!   level has more, and then every (location, class) pair with score `> score_thr` (0.05) becomes a
//!   candidate. mmdetection ≥ 2.18 (`filter_scores_and_topk`) instead thresholds the pairs first and keeps
//!   the 1000 highest-scoring pairs; [`PreNmsSelection::TopScoredPairs`] does that.
//!
//! Then, over all levels: optional rescale (coordinates divided by the resize factors, mmdetection's
//! `rescale=True`), class-wise NMS at IoU 0.6 ([`batched_nms`], "+0" IoU), the first `max_per_img = 100`
//! survivors in descending score order, and conversion to `[x, y, w, h]` in f64
//! (`w = f64(x2) − f64(x1)`, as mmdetection's `xyxy2xywh` does on Python floats).
//!
//! Ties are broken deterministically: equal max scores by lower location index, equal pair scores by
//! candidate order (level, then location, then class). The peer's `topk`/`sort` make no promise there.

use super::coco::Detection;
use super::nms::batched_nms;
use crate::error::{Error, Result};

/// One FPN level of one image's GFL head output, as host f32 slices in the head's own layout.
#[derive(Clone, Copy, Debug)]
pub struct GflLevel<'a> {
    /// Classification logits `[C, H, W]` row-major (C = number of classes, sigmoid scores).
    pub cls_logits: &'a [f32],
    /// Box-distribution logits `[4·(reg_max + 1), H, W]` row-major; channel `e·(reg_max + 1) + k` is bin
    /// `k` of side `e` in the order left, top, right, bottom.
    pub box_logits: &'a [f32],
    /// Map height `H`.
    pub height: usize,
    /// Map width `W`.
    pub width: usize,
    /// Stride of the level in input pixels (8, 16, 32, 64, 128 for P3–P7).
    pub stride: f32,
}

/// The image the head ran on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GflImage {
    /// Id written into every [`Detection`].
    pub image_id: u64,
    /// Height of the network input before padding (mmdetection's `img_shape[0]`); boxes are clipped to it.
    pub height: f32,
    /// Width of the network input before padding (`img_shape[1]`).
    pub width: f32,
    /// `(w_scale, h_scale)` of the resize from the original image to the input; when given, box
    /// coordinates are divided by it to return to original-image pixels (mmdetection's `rescale=True`).
    pub scale_factor: Option<[f32; 2]>,
}

/// How candidates are picked on each level before NMS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PreNmsSelection {
    /// Keep the `nms_pre` locations with the highest max-over-classes score (when the level has more),
    /// then every (location, class) pair with score `> score_thr`. GFL's and LD's official code and
    /// mmdetection < 2.18.
    #[default]
    TopLocationsByMaxScore,
    /// Keep every (location, class) pair with score `> score_thr`, then the `nms_pre` highest-scoring
    /// pairs. mmdetection ≥ 2.18 and 3.x (`filter_scores_and_topk`).
    TopScoredPairs,
}

/// GFL post-processing settings; the defaults are GFL's COCO `test_cfg` (`nms_pre=1000`,
/// `score_thr=0.05`, `nms=dict(type='nms', iou_threshold=0.6)`, `max_per_img=100`) and `reg_max=16`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GflDecodeConfig {
    /// Largest bin of the distance distribution; each side has `reg_max + 1` bins `0..=reg_max`.
    pub reg_max: usize,
    /// Candidates kept per level before NMS (see [`PreNmsSelection`]); `None` keeps all.
    pub nms_pre: Option<usize>,
    /// Pairs need a score strictly above this (compared in f32, as the peer compares an f32 tensor
    /// with a Python float).
    pub score_thr: f32,
    /// Class-wise NMS suppresses IoU strictly above this.
    pub iou_threshold: f64,
    /// Detections kept per image after NMS; `None` keeps all.
    pub max_per_img: Option<usize>,
    /// Pre-NMS candidate rule.
    pub selection: PreNmsSelection,
}

impl Default for GflDecodeConfig {
    fn default() -> Self {
        GflDecodeConfig {
            reg_max: 16,
            nms_pre: Some(1000),
            score_thr: 0.05,
            iou_threshold: 0.6,
            max_per_img: Some(100),
            selection: PreNmsSelection::TopLocationsByMaxScore,
        }
    }
}

/// `1 / (1 + e^(−x))` in f32.
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `Σ_k k · softmax(logits)_k`: the expected bin of a distance distribution (mmdetection's `Integral`).
pub fn integral_distance(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&z| (z - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter()
        .enumerate()
        .map(|(k, &e)| k as f32 * (e / sum))
        .sum()
}

/// A pre-NMS candidate: box in input pixels, score, class.
struct Candidate {
    bbox: [f32; 4],
    score: f32,
    class: usize,
}

/// Decodes one image's GFL head outputs into at most `max_per_img` detections in descending score order
/// (see the module documentation for every step). `class_to_category[c]` is the COCO category id of class
/// channel `c`, so its length is the number of classes `C`.
///
/// Errors (checked before any work): no classes; a level whose `cls_logits` is not `C·H·W` long or whose
/// `box_logits` is not `4·(reg_max+1)·H·W` long (or whose sizes overflow); a stride that is not finite and
/// positive; a non-finite logit; an image size or scale factor that is not finite and positive; a
/// non-finite `score_thr` or `iou_threshold`; `nms_pre` or `max_per_img` of `Some(0)` (use `None` for no
/// limit). A level with `H·W = 0` and an empty `levels` contribute nothing.
pub fn decode_gfl(
    levels: &[GflLevel<'_>],
    image: &GflImage,
    class_to_category: &[u64],
    config: &GflDecodeConfig,
) -> Result<Vec<Detection>> {
    let num_classes = class_to_category.len();
    if num_classes == 0 {
        return Err(Error::invalid(
            "class_to_category",
            "expected at least one class, got none",
        ));
    }
    validate_config(config)?;
    validate_image(image)?;
    let bins = config.reg_max.checked_add(1).ok_or_else(|| {
        Error::invalid("config.reg_max", format!("too large: {}", config.reg_max))
    })?;
    for (l, level) in levels.iter().enumerate() {
        validate_level(l, level, num_classes, bins)?;
    }

    let mut candidates = Vec::new();
    for level in levels {
        collect_level(level, image, num_classes, bins, config, &mut candidates);
    }

    let mut boxes: Vec<[f32; 4]> = candidates.iter().map(|c| c.bbox).collect();
    if let Some([w_scale, h_scale]) = image.scale_factor {
        for b in &mut boxes {
            *b = [
                b[0] / w_scale,
                b[1] / h_scale,
                b[2] / w_scale,
                b[3] / h_scale,
            ];
        }
    }
    let scores: Vec<f32> = candidates.iter().map(|c| c.score).collect();
    let classes: Vec<usize> = candidates.iter().map(|c| c.class).collect();
    let mut keep = batched_nms(&boxes, &scores, &classes, config.iou_threshold)?;
    if let Some(max) = config.max_per_img {
        keep.truncate(max);
    }
    Ok(keep
        .into_iter()
        .map(|i| {
            let [x1, y1, x2, y2] = boxes[i].map(f64::from);
            Detection {
                image_id: image.image_id,
                category_id: class_to_category[classes[i]],
                bbox: [x1, y1, x2 - x1, y2 - y1],
                score: f64::from(scores[i]),
            }
        })
        .collect())
}

fn validate_config(config: &GflDecodeConfig) -> Result<()> {
    if !config.score_thr.is_finite() {
        return Err(Error::invalid(
            "config.score_thr",
            format!("expected a finite number, got {}", config.score_thr),
        ));
    }
    if !config.iou_threshold.is_finite() {
        return Err(Error::invalid(
            "config.iou_threshold",
            format!("expected a finite number, got {}", config.iou_threshold),
        ));
    }
    if config.nms_pre == Some(0) {
        return Err(Error::invalid(
            "config.nms_pre",
            "expected None (no limit) or a positive count, got Some(0)",
        ));
    }
    if config.max_per_img == Some(0) {
        return Err(Error::invalid(
            "config.max_per_img",
            "expected None (no limit) or a positive count, got Some(0)",
        ));
    }
    Ok(())
}

fn validate_image(image: &GflImage) -> Result<()> {
    for (name, v) in [("image.height", image.height), ("image.width", image.width)] {
        if !(v.is_finite() && v > 0.0) {
            return Err(Error::invalid(
                name,
                format!("expected a finite size > 0, got {v}"),
            ));
        }
    }
    if let Some(factors) = image.scale_factor {
        if factors.iter().any(|&f| !(f.is_finite() && f > 0.0)) {
            return Err(Error::invalid(
                "image.scale_factor",
                format!("expected finite factors > 0, got {factors:?}"),
            ));
        }
    }
    Ok(())
}

fn validate_level(l: usize, level: &GflLevel<'_>, num_classes: usize, bins: usize) -> Result<()> {
    let overflow = || Error::invalid(format!("levels[{l}]"), "map size overflows usize");
    let locations = level.height.checked_mul(level.width).ok_or_else(overflow)?;
    let cls_len = num_classes.checked_mul(locations).ok_or_else(overflow)?;
    let box_len = bins
        .checked_mul(4)
        .and_then(|c| c.checked_mul(locations))
        .ok_or_else(overflow)?;
    if level.cls_logits.len() != cls_len {
        return Err(Error::shape(
            format!("levels[{l}].cls_logits"),
            format!(
                "[C, H, W] = [{num_classes}, {}, {}], {cls_len} values",
                level.height, level.width
            ),
            &[level.cls_logits.len()],
        ));
    }
    if level.box_logits.len() != box_len {
        return Err(Error::shape(
            format!("levels[{l}].box_logits"),
            format!(
                "[4·(reg_max+1), H, W] = [{}, {}, {}], {box_len} values",
                4 * bins,
                level.height,
                level.width
            ),
            &[level.box_logits.len()],
        ));
    }
    if !(level.stride.is_finite() && level.stride > 0.0) {
        return Err(Error::invalid(
            format!("levels[{l}].stride"),
            format!("expected a finite stride > 0, got {}", level.stride),
        ));
    }
    for (name, values) in [
        ("cls_logits", level.cls_logits),
        ("box_logits", level.box_logits),
    ] {
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(
                format!("levels[{l}].{name}[{i}]"),
                format!("expected a finite logit, got {}", values[i]),
            ));
        }
    }
    Ok(())
}

/// Decoded, clipped box of location `loc` of a level.
fn decode_box(level: &GflLevel<'_>, image: &GflImage, bins: usize, loc: usize) -> [f32; 4] {
    let locations = level.height * level.width;
    let x = (loc % level.width) as f32 * level.stride;
    let y = (loc / level.width) as f32 * level.stride;
    let mut side_logits = vec![0.0f32; bins];
    let mut distance = [0.0f32; 4];
    for (side, d) in distance.iter_mut().enumerate() {
        for (k, z) in side_logits.iter_mut().enumerate() {
            *z = level.box_logits[(side * bins + k) * locations + loc];
        }
        *d = integral_distance(&side_logits) * level.stride;
    }
    [
        (x - distance[0]).clamp(0.0, image.width),
        (y - distance[1]).clamp(0.0, image.height),
        (x + distance[2]).clamp(0.0, image.width),
        (y + distance[3]).clamp(0.0, image.height),
    ]
}

fn collect_level(
    level: &GflLevel<'_>,
    image: &GflImage,
    num_classes: usize,
    bins: usize,
    config: &GflDecodeConfig,
    out: &mut Vec<Candidate>,
) {
    let locations = level.height * level.width;
    // Scores location-major, class-minor: the peer's `permute(1, 2, 0).reshape(-1, C)`.
    let mut scores = vec![0.0f32; locations * num_classes];
    for c in 0..num_classes {
        for loc in 0..locations {
            scores[loc * num_classes + c] = sigmoid(level.cls_logits[c * locations + loc]);
        }
    }
    let descending = |a: f32, b: f32| b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal);
    match config.selection {
        PreNmsSelection::TopLocationsByMaxScore => {
            let mut selected: Vec<usize> = (0..locations).collect();
            if let Some(limit) = config.nms_pre {
                if locations > limit {
                    let max_score = |loc: usize| {
                        scores[loc * num_classes..(loc + 1) * num_classes]
                            .iter()
                            .copied()
                            .fold(f32::NEG_INFINITY, f32::max)
                    };
                    let maxima: Vec<f32> = (0..locations).map(max_score).collect();
                    selected.sort_by(|&a, &b| descending(maxima[a], maxima[b]));
                    selected.truncate(limit);
                }
            }
            for loc in selected {
                let row = &scores[loc * num_classes..(loc + 1) * num_classes];
                if !row.iter().any(|&s| s > config.score_thr) {
                    continue;
                }
                let bbox = decode_box(level, image, bins, loc);
                for (class, &score) in row.iter().enumerate() {
                    if score > config.score_thr {
                        out.push(Candidate { bbox, score, class });
                    }
                }
            }
        }
        PreNmsSelection::TopScoredPairs => {
            let mut pairs: Vec<usize> = (0..scores.len())
                .filter(|&p| scores[p] > config.score_thr)
                .collect();
            pairs.sort_by(|&a, &b| descending(scores[a], scores[b]));
            if let Some(limit) = config.nms_pre {
                pairs.truncate(limit);
            }
            for pair in pairs {
                let loc = pair / num_classes;
                out.push(Candidate {
                    bbox: decode_box(level, image, bins, loc),
                    score: scores[pair],
                    class: pair % num_classes,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Box logits for one location whose four distances are the integer bins `d` (one-hot by a
    /// margin of 50, so the softmax puts all but ~e⁻⁵⁰ of the mass on that bin).
    fn one_hot_box_logits(bins: usize, locations: usize, per_location: &[[usize; 4]]) -> Vec<f32> {
        let mut logits = vec![0.0f32; 4 * bins * locations];
        for (loc, sides) in per_location.iter().enumerate() {
            for (side, &bin) in sides.iter().enumerate() {
                logits[(side * bins + bin) * locations + loc] = 50.0;
            }
        }
        logits
    }

    fn image() -> GflImage {
        GflImage {
            image_id: 42,
            height: 100.0,
            width: 120.0,
            scale_factor: None,
        }
    }

    /// Logit whose sigmoid is `p`.
    fn logit(p: f32) -> f32 {
        (p / (1.0 - p)).ln()
    }

    #[test]
    fn integral_of_uniform_and_peaked_distributions() {
        assert!((integral_distance(&[0.0; 17]) - 8.0).abs() < 1e-5);
        let mut peaked = [0.0f32; 17];
        peaked[3] = 50.0;
        assert_eq!(integral_distance(&peaked), 3.0);
        // Two equal bins 2 and 4 (others −50): expectation 3.
        let mut two = [-50.0f32; 17];
        two[2] = 0.0;
        two[4] = 0.0;
        assert!((integral_distance(&two) - 3.0).abs() < 1e-6);
        // Softmax is shift-invariant: large logits do not overflow.
        let shifted: Vec<f32> = two.iter().map(|z| z + 80.0).collect();
        assert!((integral_distance(&shifted) - 3.0).abs() < 1e-6);
    }

    #[test]
    fn decodes_points_distances_and_clipping() {
        // 1×2 map, stride 8, reg_max 4 (5 bins), one class. Points at (0, 0) and (8, 0).
        let bins = 5;
        let cls = vec![0.0f32, logit(0.9)]; // scores 0.5 and 0.9
        let boxes = one_hot_box_logits(bins, 2, &[[1, 0, 2, 3], [1, 2, 3, 4]]);
        let level = GflLevel {
            cls_logits: &cls,
            box_logits: &boxes,
            height: 1,
            width: 2,
            stride: 8.0,
        };
        let config = GflDecodeConfig {
            reg_max: 4,
            ..Default::default()
        };
        let dets = decode_gfl(&[level], &image(), &[7], &config).unwrap();
        assert_eq!(dets.len(), 2);
        // Location 1: point (8, 0); distances (8, 16, 24, 32) → (0, −16 → 0, 32, 32).
        assert_eq!(dets[0].bbox, [0.0, 0.0, 32.0, 32.0]);
        assert!((dets[0].score - 0.9).abs() < 1e-6);
        assert_eq!(dets[0].category_id, 7);
        assert_eq!(dets[0].image_id, 42);
        // Location 0: point (0, 0); distances (8, 0, 16, 24) → (−8 → 0, 0, 16, 24).
        assert_eq!(dets[1].bbox, [0.0, 0.0, 16.0, 24.0]);
        assert_eq!(dets[1].score, 0.5);
    }

    #[test]
    fn clips_to_the_far_edges_and_rescales() {
        // One location at (16·3, 16·2) = (48, 32) of a 3×4 map (stride 16), distances 4 bins = 64.
        let bins = 17;
        let locations = 12;
        let loc = 2 * 4 + 3;
        let mut cls = vec![-10.0f32; locations];
        cls[loc] = 0.0;
        let mut per_location = vec![[0usize; 4]; locations];
        per_location[loc] = [4, 4, 4, 4];
        let boxes = one_hot_box_logits(bins, locations, &per_location);
        let level = GflLevel {
            cls_logits: &cls,
            box_logits: &boxes,
            height: 3,
            width: 4,
            stride: 16.0,
        };
        let img = GflImage {
            image_id: 1,
            height: 80.0,
            width: 100.0,
            scale_factor: Some([2.0, 0.5]),
        };
        let dets = decode_gfl(&[level], &img, &[3], &GflDecodeConfig::default()).unwrap();
        // (48−64, 32−64, 48+64, 32+64) → clip to (0, 0, 100, 80) → rescale (0, 0, 50, 160).
        assert_eq!(dets.len(), 1);
        assert_eq!(dets[0].bbox, [0.0, 0.0, 50.0, 160.0]);
        // sigmoid(−10) ≈ 4.5e-5 is under score_thr: only one candidate.
    }

    #[test]
    fn threshold_nms_and_max_per_image() {
        // 1×3 map, stride 8, two classes. All three locations predict nearly the same box.
        let bins = 17;
        let p = [0.8f32, 0.7, 0.6];
        // Class 0 logits for locations 0..3, then class 1.
        let cls = vec![
            logit(p[0]),
            logit(p[1]),
            logit(p[2]),
            logit(0.3),
            logit(0.04),
            logit(0.051),
        ];
        // Points (0,0), (8,0), (16,0); distances chosen so boxes are (0,0,40,40), (0,0,40,40), (0,0,40,48).
        let boxes = one_hot_box_logits(bins, 3, &[[0, 0, 5, 5], [1, 0, 4, 5], [2, 0, 3, 6]]);
        let level = GflLevel {
            cls_logits: &cls,
            box_logits: &boxes,
            height: 1,
            width: 3,
            stride: 8.0,
        };
        let dets = decode_gfl(&[level], &image(), &[10, 20], &GflDecodeConfig::default()).unwrap();
        // Class 0: the 0.8 box suppresses the others (IoU 1 and 1600/1920 > 0.6). Class 1: 0.3 is kept,
        // 0.04 is under the threshold, 0.051 is suppressed by the 0.3 box.
        assert_eq!(dets.len(), 2);
        assert_eq!(dets[0].category_id, 10);
        assert!((dets[0].score - 0.8).abs() < 1e-6);
        assert_eq!(dets[0].bbox, [0.0, 0.0, 40.0, 40.0]);
        assert_eq!(dets[1].category_id, 20);
        assert!((dets[1].score - 0.3).abs() < 1e-6);

        let one = GflDecodeConfig {
            max_per_img: Some(1),
            ..Default::default()
        };
        let dets = decode_gfl(&[level], &image(), &[10, 20], &one).unwrap();
        assert_eq!(dets.len(), 1);
        assert_eq!(dets[0].category_id, 10);

        let no_nms = GflDecodeConfig {
            iou_threshold: 1.0,
            ..Default::default()
        };
        let dets = decode_gfl(&[level], &image(), &[10, 20], &no_nms).unwrap();
        let scores: Vec<f64> = dets.iter().map(|d| d.score).collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
        assert_eq!(dets.len(), 5);
    }

    #[test]
    fn pre_nms_selection_rules_differ_as_documented() {
        // Two locations, two classes, nms_pre = 1. Location 0 scores (0.9, 0.8), location 1 (0.85, 0.1).
        // Boxes far apart so NMS keeps everything.
        let bins = 17;
        let cls = vec![logit(0.9), logit(0.85), logit(0.8), logit(0.1)];
        let boxes = one_hot_box_logits(bins, 2, &[[0, 0, 1, 1], [0, 0, 1, 1]]);
        let level = GflLevel {
            cls_logits: &cls,
            box_logits: &boxes,
            height: 1,
            width: 2,
            stride: 64.0,
        };
        let img = GflImage {
            image_id: 1,
            height: 1000.0,
            width: 1000.0,
            scale_factor: None,
        };
        let legacy = GflDecodeConfig {
            nms_pre: Some(1),
            ..Default::default()
        };
        let dets = decode_gfl(&[level], &img, &[1, 2], &legacy).unwrap();
        // Top-1 location by max score is location 0: both of its pairs survive.
        let got: Vec<(u64, f64)> = dets.iter().map(|d| (d.category_id, d.bbox[0])).collect();
        assert_eq!(got, vec![(1, 0.0), (2, 0.0)]);
        let pairs = GflDecodeConfig {
            selection: PreNmsSelection::TopScoredPairs,
            ..legacy
        };
        let dets = decode_gfl(&[level], &img, &[1, 2], &pairs).unwrap();
        // Top-1 pair is (location 0, class 0) only.
        assert_eq!(dets.len(), 1);
        assert_eq!((dets[0].category_id, dets[0].bbox[0]), (1, 0.0));
        // With nms_pre = 2 the pair rule takes (0, c0) 0.9 and (1, c0) 0.85.
        let dets = decode_gfl(
            &[level],
            &img,
            &[1, 2],
            &GflDecodeConfig {
                nms_pre: Some(2),
                ..pairs
            },
        )
        .unwrap();
        let got: Vec<(u64, f64)> = dets.iter().map(|d| (d.category_id, d.bbox[0])).collect();
        assert_eq!(got, vec![(1, 0.0), (1, 64.0)]);
    }

    #[test]
    fn multiple_levels_and_empty_inputs() {
        let bins = 17;
        let cls_a = vec![logit(0.6)];
        let box_a = one_hot_box_logits(bins, 1, &[[0, 0, 2, 2]]);
        let cls_b = vec![logit(0.7)];
        let box_b = one_hot_box_logits(bins, 1, &[[0, 0, 1, 1]]);
        let a = GflLevel {
            cls_logits: &cls_a,
            box_logits: &box_a,
            height: 1,
            width: 1,
            stride: 8.0,
        };
        let b = GflLevel {
            cls_logits: &cls_b,
            box_logits: &box_b,
            height: 1,
            width: 1,
            stride: 32.0,
        };
        // Level a: (0,0,16,16); level b: (0,0,32,32): IoU 0.25 < 0.6, both kept, b first.
        let dets = decode_gfl(&[a, b], &image(), &[5], &GflDecodeConfig::default()).unwrap();
        assert_eq!(dets.len(), 2);
        assert_eq!(dets[0].bbox, [0.0, 0.0, 32.0, 32.0]);
        assert_eq!(dets[1].bbox, [0.0, 0.0, 16.0, 16.0]);

        assert!(decode_gfl(&[], &image(), &[5], &GflDecodeConfig::default())
            .unwrap()
            .is_empty());
        let empty = GflLevel {
            cls_logits: &[],
            box_logits: &[],
            height: 0,
            width: 7,
            stride: 8.0,
        };
        assert!(
            decode_gfl(&[empty], &image(), &[5], &GflDecodeConfig::default())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn rejects_bad_input() {
        let cls = vec![0.0f32; 2];
        let boxes = vec![0.0f32; 4 * 17 * 2];
        let level = GflLevel {
            cls_logits: &cls,
            box_logits: &boxes,
            height: 1,
            width: 2,
            stride: 8.0,
        };
        let cfg = GflDecodeConfig::default();
        let err =
            |levels: &[GflLevel<'_>], img: &GflImage, classes: &[u64], cfg: &GflDecodeConfig| {
                decode_gfl(levels, img, classes, cfg)
                    .unwrap_err()
                    .to_string()
            };
        assert!(err(&[level], &image(), &[], &cfg).contains("class_to_category"));
        // Two classes claimed but one channel given.
        assert!(err(&[level], &image(), &[1, 2], &cfg).contains("levels[0].cls_logits"));
        let short = GflLevel {
            box_logits: &boxes[1..],
            ..level
        };
        assert!(err(&[level, short], &image(), &[1], &cfg).contains("levels[1].box_logits"));
        let wrong_reg_max = GflDecodeConfig { reg_max: 7, ..cfg };
        assert!(err(&[level], &image(), &[1], &wrong_reg_max).contains("levels[0].box_logits"));
        for stride in [0.0f32, -8.0, f32::NAN, f32::INFINITY] {
            assert!(err(&[GflLevel { stride, ..level }], &image(), &[1], &cfg)
                .contains("levels[0].stride"));
        }
        let mut bad_cls = cls.clone();
        bad_cls[1] = f32::NAN;
        let msg = err(
            &[GflLevel {
                cls_logits: &bad_cls,
                ..level
            }],
            &image(),
            &[1],
            &cfg,
        );
        assert!(msg.contains("levels[0].cls_logits[1]"), "{msg}");
        let mut bad_box = boxes.clone();
        bad_box[100] = f32::NEG_INFINITY;
        let msg = err(
            &[GflLevel {
                box_logits: &bad_box,
                ..level
            }],
            &image(),
            &[1],
            &cfg,
        );
        assert!(msg.contains("levels[0].box_logits[100]"), "{msg}");
        let huge = GflLevel {
            height: usize::MAX,
            width: 2,
            ..level
        };
        assert!(err(&[huge], &image(), &[1], &cfg).contains("overflows"));
        for (h, w) in [(0.0f32, 10.0f32), (10.0, f32::NAN), (-1.0, 10.0)] {
            let img = GflImage {
                height: h,
                width: w,
                ..image()
            };
            assert!(err(&[level], &img, &[1], &cfg).contains("image."));
        }
        let img = GflImage {
            scale_factor: Some([1.0, 0.0]),
            ..image()
        };
        assert!(err(&[level], &img, &[1], &cfg).contains("image.scale_factor"));
        let bad = GflDecodeConfig {
            score_thr: f32::NAN,
            ..cfg
        };
        assert!(err(&[level], &image(), &[1], &bad).contains("config.score_thr"));
        let bad = GflDecodeConfig {
            iou_threshold: f64::INFINITY,
            ..cfg
        };
        assert!(err(&[level], &image(), &[1], &bad).contains("config.iou_threshold"));
        let bad = GflDecodeConfig {
            nms_pre: Some(0),
            ..cfg
        };
        assert!(err(&[level], &image(), &[1], &bad).contains("config.nms_pre"));
        let bad = GflDecodeConfig {
            max_per_img: Some(0),
            ..cfg
        };
        assert!(err(&[level], &image(), &[1], &bad).contains("config.max_per_img"));
        let bad = GflDecodeConfig {
            reg_max: usize::MAX,
            ..cfg
        };
        assert!(err(&[level], &image(), &[1], &bad).contains("reg_max"));
    }
}
