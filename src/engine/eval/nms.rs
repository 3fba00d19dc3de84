//! Greedy non-maximum suppression on the host, with torchvision's `nms` / `batched_nms` semantics.
//!
//! Boxes are `[x1, y1, x2, y2]` with the "+0" convention: `area = (x2 − x1)·(y2 − y1)`,
//! `inter = max(0, min(x2) − max(x1)) · max(0, min(y2) − max(y1))`,
//! `IoU = inter / (area_a + area_b − inter)`, all in the boxes' own precision (f32 or f64) as
//! torchvision's CPU kernel computes them. Boxes are visited in descending score order; a kept box
//! suppresses every later box whose IoU with it is strictly greater than the threshold (the comparison
//! is made in f64, as torchvision compares its `scalar_t` IoU with a `double` threshold). Two boxes of
//! zero area have IoU `0/0 = NaN`, which suppresses nothing — as in torchvision.
//!
//! Equal scores are ordered by input index (a stable sort), so the result is deterministic; torchvision
//! sorts without asking for stability, and its CPU sort agreed with this order on every tie in the
//! fixtures.

use std::collections::HashMap;
use std::fmt::Debug;

use num_traits::Float;

use crate::error::{Error, Result};

/// Box and score precisions NMS accepts: `f32` and `f64`.
pub trait NmsFloat: Float + Into<f64> + Debug + Send + Sync {}
impl NmsFloat for f32 {}
impl NmsFloat for f64 {}

/// IoU of two `[x1, y1, x2, y2]` boxes with the "+0" convention (see the module documentation); NaN when
/// both boxes have zero area and do not overlap.
pub fn box_iou_xyxy<T: NmsFloat>(a: &[T; 4], b: &[T; 4]) -> T {
    iou_with_areas(a, area(a), b, area(b))
}

fn area<T: NmsFloat>(b: &[T; 4]) -> T {
    (b[2] - b[0]) * (b[3] - b[1])
}

fn iou_with_areas<T: NmsFloat>(a: &[T; 4], area_a: T, b: &[T; 4], area_b: T) -> T {
    let zero = T::zero();
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(zero);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(zero);
    let inter = w * h;
    inter / (area_a + area_b - inter)
}

/// Single-class NMS: indices of the kept boxes, by descending score (ties: lower index first).
/// Same rules and errors as [`batched_nms`].
pub fn nms<T: NmsFloat>(boxes: &[[T; 4]], scores: &[T], iou_threshold: f64) -> Result<Vec<usize>> {
    let classes = vec![0usize; boxes.len()];
    batched_nms(boxes, scores, &classes, iou_threshold)
}

/// Class-wise NMS (torchvision's `batched_nms`): boxes only suppress boxes of the same class. Returns
/// the indices of the kept boxes sorted by descending score, ties by ascending index.
///
/// Errors: `scores` or `classes` not as long as `boxes`; a non-finite `iou_threshold`; a box with a
/// non-finite coordinate or with `x2 < x1` or `y2 < y1` (torchvision computes a meaningless negative
/// area there); a non-finite score. Empty input gives an empty result.
pub fn batched_nms<T: NmsFloat>(
    boxes: &[[T; 4]],
    scores: &[T],
    classes: &[usize],
    iou_threshold: f64,
) -> Result<Vec<usize>> {
    let n = boxes.len();
    if scores.len() != n {
        return Err(Error::shape(
            "scores",
            format!("[{n}] (one per box)"),
            &[scores.len()],
        ));
    }
    if classes.len() != n {
        return Err(Error::shape(
            "classes",
            format!("[{n}] (one per box)"),
            &[classes.len()],
        ));
    }
    if !iou_threshold.is_finite() {
        return Err(Error::invalid(
            "iou_threshold",
            format!("expected a finite number, got {iou_threshold}"),
        ));
    }
    for (i, b) in boxes.iter().enumerate() {
        if b.iter().any(|v| !v.is_finite()) || b[2] < b[0] || b[3] < b[1] {
            return Err(Error::invalid(
                format!("boxes[{i}]"),
                format!("expected finite [x1, y1, x2, y2] with x2 >= x1 and y2 >= y1, got {b:?}"),
            ));
        }
    }
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        return Err(Error::invalid(
            format!("scores[{i}]"),
            format!("expected a finite score, got {:?}", scores[i]),
        ));
    }

    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        scores[b]
            .partial_cmp(&scores[a])
            .unwrap_or(std::cmp::Ordering::Equal)
    });

    let mut by_class: HashMap<usize, Vec<usize>> = HashMap::new();
    for &i in &order {
        by_class.entry(classes[i]).or_default().push(i);
    }
    let areas: Vec<T> = boxes.iter().map(area).collect();
    let mut kept = vec![false; n];
    for members in by_class.values() {
        let mut suppressed = vec![false; members.len()];
        for (pos, &i) in members.iter().enumerate() {
            if suppressed[pos] {
                continue;
            }
            kept[i] = true;
            for (later, &j) in members.iter().enumerate().skip(pos + 1) {
                if suppressed[later] {
                    continue;
                }
                let iou: f64 = iou_with_areas(&boxes[i], areas[i], &boxes[j], areas[j]).into();
                if iou > iou_threshold {
                    suppressed[later] = true;
                }
            }
        }
    }
    Ok(order.into_iter().filter(|&i| kept[i]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_plus_zero_convention() {
        let a = [0.0f64, 0.0, 10.0, 10.0];
        let b = [5.0f64, 0.0, 15.0, 10.0];
        assert_eq!(box_iou_xyxy(&a, &b), 50.0 / 150.0);
        assert_eq!(box_iou_xyxy(&a, &[10.0, 0.0, 20.0, 10.0]), 0.0);
        assert!(box_iou_xyxy(&[1.0f32, 1.0, 1.0, 1.0], &[1.0, 1.0, 1.0, 1.0]).is_nan());
    }

    #[test]
    fn suppresses_within_class_only_and_sorts_by_score() {
        // 0 and 1 overlap with IoU 81/119 ≈ 0.68; 2 is a copy of 0 in another class; 3 is far away.
        let boxes = [
            [0.0f32, 0.0, 10.0, 10.0],
            [1.0, 1.0, 11.0, 11.0],
            [0.0, 0.0, 10.0, 10.0],
            [50.0, 50.0, 60.0, 60.0],
        ];
        let scores = [0.5f32, 0.9, 0.7, 0.1];
        let classes = [0, 0, 1, 0];
        assert_eq!(
            batched_nms(&boxes, &scores, &classes, 0.5).unwrap(),
            vec![1, 2, 3]
        );
        // Above the IoU, nothing is suppressed.
        assert_eq!(
            batched_nms(&boxes, &scores, &classes, 0.7).unwrap(),
            vec![1, 2, 0, 3]
        );
        // Single class: 2 is suppressed by 1 too (same IoU as 0).
        assert_eq!(nms(&boxes, &scores, 0.5).unwrap(), vec![1, 3]);
    }

    #[test]
    fn threshold_is_strict_and_ties_keep_index_order() {
        // IoU exactly 0.5: [0,0,2,1] vs [0,0,1,1] → 1 / 2. Not suppressed at 0.5, suppressed below.
        let boxes = [
            [0.0f64, 0.0, 2.0, 1.0],
            [0.0, 0.0, 1.0, 1.0],
            [5.0, 5.0, 6.0, 6.0],
        ];
        let scores = [0.3f64, 0.3, 0.3];
        assert_eq!(nms(&boxes, &scores, 0.5).unwrap(), vec![0, 1, 2]);
        assert_eq!(nms(&boxes, &scores, 0.4999).unwrap(), vec![0, 2]);
    }

    #[test]
    fn empty_and_errors() {
        let none: [[f32; 4]; 0] = [];
        assert!(batched_nms(&none, &[], &[], 0.5).unwrap().is_empty());
        let boxes = [[0.0f32, 0.0, 1.0, 1.0]];
        let err = batched_nms(&boxes, &[0.5, 0.2], &[0], 0.5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("scores"), "{err}");
        let err = batched_nms(&boxes, &[0.5], &[], 0.5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("classes"), "{err}");
        let err = nms(&boxes, &[0.5], f64::NAN).unwrap_err().to_string();
        assert!(err.contains("iou_threshold"), "{err}");
        for bad in [
            [f32::NAN, 0.0, 1.0, 1.0],
            [0.0, 0.0, f32::INFINITY, 1.0],
            [2.0, 0.0, 1.0, 1.0],
            [0.0, 2.0, 1.0, 1.0],
        ] {
            let err = nms(&[boxes[0], bad], &[0.5, 0.4], 0.5)
                .unwrap_err()
                .to_string();
            assert!(err.contains("boxes[1]"), "{err}");
        }
        let err = nms(&boxes, &[f32::NAN], 0.5).unwrap_err().to_string();
        assert!(err.contains("scores[0]"), "{err}");
    }
}
