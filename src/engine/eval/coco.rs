//! COCO bounding-box evaluation that reproduces pycocotools' `COCOeval` (`iouType="bbox"`, default
//! `Params`) number for number.
//!
//! The protocol, as pycocotools runs it:
//!
//! 1. **Per image and category** (`evaluateImg`): detections are ordered by descending score with a
//!    stable sort (ties keep their input order) and cut to the largest `maxDets` (100). The IoU of a
//!    detection `d` and a ground truth `g` (both `[x, y, w, h]`) is
//!    `inter / (area(d) + area(g) − inter)`, or `inter / area(d)` when `g` is a crowd region, with
//!    `area(b) = w·h` and `inter = max(0, min(x_d+w_d, x_g+w_g) − max(x_d, x_g)) · (same for y)`.
//!    For each area range, a ground truth is *ignored* when it is a crowd or its annotated `area` lies
//!    outside the range (bounds inclusive); ignored ground truths are moved behind the others (stable).
//!    Then, for each IoU threshold `t` and each detection in score order, the detection takes the
//!    ground truth with the highest IoU `≥ t` (a later one wins an exact tie) among those not yet
//!    taken — crowd regions can be taken any number of times — but once it holds a regular ground
//!    truth it never moves to an ignored one. A detection matched to an ignored ground truth is
//!    ignored; an unmatched detection whose own area `w·h` lies outside the range is ignored too.
//! 2. **Accumulation** (`accumulate`), per category, area range and `maxDets` `m`: the first `m`
//!    detections of every image are pooled (images in ascending id order) and stably sorted by
//!    descending score. Ignored detections count neither as true nor as false positives. With `P`
//!    the number of non-ignored ground truths (`P = 0` leaves the entry at −1), cumulative counts give
//!    `recall_i = tp_i / P` and `precision_i = tp_i / (tp_i + fp_i + ε)` (`ε = 2⁻⁵²`, numpy's
//!    `spacing(1)`). Precision is replaced by its monotone envelope (`p_i ← max_{j ≥ i} p_j`) and read
//!    at the 101 recall thresholds `0, 0.01, …, 1` at the first index whose recall reaches the threshold
//!    (0 where none does). The recall entry is the final recall (0 without detections).
//! 3. **Summary** (`summarize`): each of the 12 statistics is the mean of the entries `> −1` of its
//!    slice (−1 when there are none), so categories without ground truth drop out of the mean.
//!
//! The floating-point steps follow numpy's (thresholds built as `np.linspace` builds them, means
//! summed pairwise as `np.mean` sums them), so results agree with pycocotools to the last bit on the
//! fixtures in `tests/fixtures/coco_eval/`.
//!
//! Differences from pycocotools, all on input it would mishandle: duplicate image or category ids,
//! ground truths or detections that name an image or category outside the evaluated sets, and
//! non-finite or negative numbers are errors here (pycocotools drops the out-of-set entries silently or
//! computes with the bad numbers). Matching is by position, so ground-truth ids play no part
//! (pycocotools treats a ground truth with id 0 as unmatched, a quirk not reproduced).

use std::collections::{BTreeMap, HashMap};

use rayon::prelude::*;

use crate::error::{Error, Result};

/// One ground-truth object, as in a COCO annotation file.
#[derive(Clone, Debug, PartialEq)]
pub struct GroundTruth {
    /// Image the object belongs to.
    pub image_id: u64,
    /// Category of the object.
    pub category_id: u64,
    /// Box `[x, y, width, height]` in pixels; width and height must be finite and `≥ 0`.
    pub bbox: [f64; 4],
    /// Area used for the small/medium/large split: the annotation's `area` field (COCO stores the
    /// segmentation area there, which is generally not `width · height`). Finite and `≥ 0`.
    pub area: f64,
    /// Crowd region: never counted as an object to find, matched by `inter / area(detection)`, and any
    /// number of detections may fall into it without being counted as false positives.
    pub iscrowd: bool,
}

/// One detection, as in a COCO results file.
#[derive(Clone, Debug, PartialEq)]
pub struct Detection {
    /// Image the detection belongs to.
    pub image_id: u64,
    /// Predicted category.
    pub category_id: u64,
    /// Box `[x, y, width, height]` in pixels; width and height must be finite and `≥ 0`. Its area
    /// `width · height` decides the area range of an unmatched detection.
    pub bbox: [f64; 4],
    /// Confidence; higher ranks first. Must be finite.
    pub score: f64,
}

/// The 12 standard COCO detection statistics, as `COCOeval.stats` orders them. Each is in `[0, 1]`,
/// or −1 when no category has a ground truth in the slice it averages over.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CocoStats {
    /// AP at IoU .50:.05:.95, all areas, 100 detections per image (the headline "box AP").
    pub ap: f64,
    /// AP at IoU 0.50, all areas, 100 detections.
    pub ap50: f64,
    /// AP at IoU 0.75, all areas, 100 detections.
    pub ap75: f64,
    /// AP at IoU .50:.95 for small objects (area ≤ 32²), 100 detections.
    pub ap_small: f64,
    /// AP at IoU .50:.95 for medium objects (32² ≤ area ≤ 96²), 100 detections.
    pub ap_medium: f64,
    /// AP at IoU .50:.95 for large objects (area ≥ 96²), 100 detections.
    pub ap_large: f64,
    /// AR at IoU .50:.95, all areas, 1 detection per image.
    pub ar1: f64,
    /// AR at IoU .50:.95, all areas, 10 detections per image.
    pub ar10: f64,
    /// AR at IoU .50:.95, all areas, 100 detections per image.
    pub ar100: f64,
    /// AR at IoU .50:.95 for small objects, 100 detections.
    pub ar_small: f64,
    /// AR at IoU .50:.95 for medium objects, 100 detections.
    pub ar_medium: f64,
    /// AR at IoU .50:.95 for large objects, 100 detections.
    pub ar_large: f64,
}

impl CocoStats {
    /// Short names of the statistics, in [`CocoStats::as_array`] order.
    pub const NAMES: [&'static str; 12] = [
        "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
    ];

    /// The statistics in pycocotools' `stats` order: AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100,
    /// ARs, ARm, ARl.
    pub fn as_array(&self) -> [f64; 12] {
        [
            self.ap,
            self.ap50,
            self.ap75,
            self.ap_small,
            self.ap_medium,
            self.ap_large,
            self.ar1,
            self.ar10,
            self.ar100,
            self.ar_small,
            self.ar_medium,
            self.ar_large,
        ]
    }

    /// Inverse of [`CocoStats::as_array`].
    pub fn from_array(stats: [f64; 12]) -> Self {
        let [ap, ap50, ap75, ap_small, ap_medium, ap_large, ar1, ar10, ar100, ar_small, ar_medium, ar_large] =
            stats;
        CocoStats {
            ap,
            ap50,
            ap75,
            ap_small,
            ap_medium,
            ap_large,
            ar1,
            ar10,
            ar100,
            ar_small,
            ar_medium,
            ar_large,
        }
    }
}

impl std::fmt::Display for CocoStats {
    /// The twelve lines pycocotools' `summarize()` prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const ROWS: [(&str, &str, &str, usize); 12] = [
            ("Average Precision  (AP)", "0.50:0.95", "all", 100),
            ("Average Precision  (AP)", "0.50", "all", 100),
            ("Average Precision  (AP)", "0.75", "all", 100),
            ("Average Precision  (AP)", "0.50:0.95", "small", 100),
            ("Average Precision  (AP)", "0.50:0.95", "medium", 100),
            ("Average Precision  (AP)", "0.50:0.95", "large", 100),
            ("Average Recall     (AR)", "0.50:0.95", "all", 1),
            ("Average Recall     (AR)", "0.50:0.95", "all", 10),
            ("Average Recall     (AR)", "0.50:0.95", "all", 100),
            ("Average Recall     (AR)", "0.50:0.95", "small", 100),
            ("Average Recall     (AR)", "0.50:0.95", "medium", 100),
            ("Average Recall     (AR)", "0.50:0.95", "large", 100),
        ];
        for ((title, iou, area, max_dets), value) in ROWS.iter().zip(self.as_array()) {
            writeln!(
                f,
                " {title} @[ IoU={iou:<9} | area={area:>6} | maxDets={max_dets:>3} ] = {value:0.3}"
            )?;
        }
        Ok(())
    }
}

/// Number of IoU thresholds (`T`).
pub const NUM_IOU_THRESHOLDS: usize = 10;
/// Number of recall thresholds (`R`).
pub const NUM_RECALL_THRESHOLDS: usize = 101;
/// Detections-per-image limits (`maxDets`), in the order of the `M` axis.
pub const MAX_DETECTIONS: [usize; 3] = [1, 10, 100];
/// Area ranges `[lo, hi]` (inclusive, in pixels²) in the order of the `A` axis: all, small
/// (0–32²), medium (32²–96²), large (96²–1e5²).
pub const AREA_RANGES: [(f64, f64); 4] =
    [(0.0, 1e10), (0.0, 1024.0), (1024.0, 9216.0), (9216.0, 1e10)];
/// Names of [`AREA_RANGES`].
pub const AREA_RANGE_NAMES: [&str; 4] = ["all", "small", "medium", "large"];

const NUM_AREAS: usize = AREA_RANGES.len();
const NUM_MAX_DETS: usize = MAX_DETECTIONS.len();
/// Index of IoU 0.5 and 0.75 in [`iou_thresholds`].
const IOU_50: usize = 0;
const IOU_75: usize = 5;
/// numpy's `spacing(1)`, added to the precision denominator by pycocotools.
const PRECISION_EPS: f64 = f64::EPSILON;

/// `np.linspace(start, stop, N)`: `i · ((stop − start)/(N − 1)) + start`, with the last entry set to
/// `stop`. Built the same way so the thresholds are bit-identical to pycocotools' (0.9 is
/// 0.8999999999999999 there, and so here).
fn linspace<const N: usize>(start: f64, stop: f64) -> [f64; N] {
    let step = (stop - start) / (N - 1) as f64;
    let mut out = [0.0; N];
    for (i, v) in out.iter_mut().enumerate() {
        *v = i as f64 * step + start;
    }
    out[N - 1] = stop;
    out
}

/// IoU thresholds `0.50, 0.55, …, 0.95`, bit-identical to pycocotools' `Params.iouThrs`.
pub fn iou_thresholds() -> [f64; NUM_IOU_THRESHOLDS] {
    linspace(0.5, 0.95)
}

/// Recall thresholds `0, 0.01, …, 1`, bit-identical to pycocotools' `Params.recThrs`.
pub fn recall_thresholds() -> [f64; NUM_RECALL_THRESHOLDS] {
    linspace(0.0, 1.0)
}

/// IoU of a detection and a ground truth box, both `[x, y, w, h]`, as pycocotools' `bbIou` computes
/// it: `inter / (area_d + area_g − inter)`, or `inter / area_d` for a crowd ground truth; 0 when the
/// boxes do not overlap with positive width and height.
pub fn coco_box_iou(detection: &[f64; 4], ground_truth: &[f64; 4], crowd: bool) -> f64 {
    let (d, g) = (detection, ground_truth);
    let w = (d[2] + d[0]).min(g[2] + g[0]) - d[0].max(g[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (d[3] + d[1]).min(g[3] + g[1]) - d[1].max(g[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let inter = w * h;
    let det_area = d[2] * d[3];
    let union = if crowd {
        det_area
    } else {
        det_area + g[2] * g[3] - inter
    };
    inter / union
}

/// numpy's pairwise summation of a contiguous float64 array (`np.add.reduce`), which `np.mean` uses:
/// blocks of up to 128 are summed with eight interleaved accumulators, longer runs are split in two
/// at a multiple of 8. Reproducing it keeps the means bit-identical.
fn numpy_pairwise_sum(values: &[f64]) -> f64 {
    let n = values.len();
    if n < 8 {
        let mut sum = -0.0;
        for v in values {
            sum += v;
        }
        sum
    } else if n <= 128 {
        let mut acc = [0.0f64; 8];
        acc.copy_from_slice(&values[..8]);
        let whole = n - n % 8;
        let mut i = 8;
        while i < whole {
            for (lane, a) in acc.iter_mut().enumerate() {
                *a += values[i + lane];
            }
            i += 8;
        }
        let mut sum =
            ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        for v in &values[whole..] {
            sum += v;
        }
        sum
    } else {
        let mut half = n / 2;
        half -= half % 8;
        numpy_pairwise_sum(&values[..half]) + numpy_pairwise_sum(&values[half..])
    }
}

/// Mean of the entries `> −1`, or −1 when there are none (pycocotools' `_summarize`).
fn mean_of_present(values: impl Iterator<Item = f64>) -> f64 {
    let present: Vec<f64> = values.filter(|&v| v > -1.0).collect();
    if present.is_empty() {
        -1.0
    } else {
        numpy_pairwise_sum(&present) / present.len() as f64
    }
}

/// Everything `COCOeval.accumulate` produces, plus the summary.
#[derive(Clone, Debug, PartialEq)]
pub struct CocoEvaluation {
    /// The 12 summary statistics.
    pub stats: CocoStats,
    /// Evaluated image ids, ascending (the order pycocotools uses).
    pub image_ids: Vec<u64>,
    /// Evaluated category ids, ascending: the `K` axis of [`CocoEvaluation::precision`].
    pub category_ids: Vec<u64>,
    /// Interpolated precision, `[T, R, K, A, M]` row-major (IoU threshold, recall threshold, category,
    /// area range, maxDets); −1 where the category has no non-ignored ground truth.
    pub precision: Vec<f64>,
    /// Final recall, `[T, K, A, M]` row-major; −1 where the category has no non-ignored ground truth.
    pub recall: Vec<f64>,
}

impl CocoEvaluation {
    fn precision_index(&self, t: usize, r: usize, k: usize, a: usize, m: usize) -> usize {
        let num_categories = self.category_ids.len();
        (((t * NUM_RECALL_THRESHOLDS + r) * num_categories + k) * NUM_AREAS + a) * NUM_MAX_DETS + m
    }

    fn recall_index(&self, t: usize, k: usize, a: usize, m: usize) -> usize {
        ((t * self.category_ids.len() + k) * NUM_AREAS + a) * NUM_MAX_DETS + m
    }

    /// Per-category AP at IoU .50:.95, all areas, 100 detections (mmdetection's `classwise` table):
    /// `(category_id, AP)` in [`CocoEvaluation::category_ids`] order, `None` for a category without
    /// non-ignored ground truth.
    pub fn per_category_ap(&self) -> Vec<(u64, Option<f64>)> {
        self.category_ids
            .iter()
            .enumerate()
            .map(|(k, &id)| {
                let ap = mean_of_present((0..NUM_IOU_THRESHOLDS).flat_map(|t| {
                    (0..NUM_RECALL_THRESHOLDS).map(move |r| {
                        self.precision[self.precision_index(t, r, k, 0, NUM_MAX_DETS - 1)]
                    })
                }));
                (id, (ap > -1.0).then_some(ap))
            })
            .collect()
    }

    /// pycocotools' `summarize`.
    fn summary(&self) -> CocoStats {
        let num_categories = self.category_ids.len();
        let last = NUM_MAX_DETS - 1;
        let ap = |thresholds: &[usize], a: usize| {
            mean_of_present(thresholds.iter().flat_map(|&t| {
                (0..NUM_RECALL_THRESHOLDS).flat_map(move |r| {
                    (0..num_categories)
                        .map(move |k| self.precision[self.precision_index(t, r, k, a, last)])
                })
            }))
        };
        let ar = |a: usize, m: usize| {
            mean_of_present((0..NUM_IOU_THRESHOLDS).flat_map(|t| {
                (0..num_categories).map(move |k| self.recall[self.recall_index(t, k, a, m)])
            }))
        };
        let all: Vec<usize> = (0..NUM_IOU_THRESHOLDS).collect();
        CocoStats {
            ap: ap(&all, 0),
            ap50: ap(&[IOU_50], 0),
            ap75: ap(&[IOU_75], 0),
            ap_small: ap(&all, 1),
            ap_medium: ap(&all, 2),
            ap_large: ap(&all, 3),
            ar1: ar(0, 0),
            ar10: ar(0, 1),
            ar100: ar(0, last),
            ar_small: ar(1, last),
            ar_medium: ar(2, last),
            ar_large: ar(3, last),
        }
    }
}

/// Evaluates `detections` against `ground_truths` over the given images and categories and returns the
/// 12 COCO statistics (see the module documentation for the protocol).
///
/// Errors (never a panic): a duplicate id in `image_ids` or `category_ids`; a ground truth or detection
/// whose image or category is not in those lists (filter first to evaluate a subset); a non-finite
/// coordinate, a negative width or height, a non-finite or negative ground-truth `area`, a non-finite
/// score. Empty inputs are fine: no ground truth at all gives −1 everywhere, no detections gives 0 for
/// every category that has ground truth.
pub fn evaluate(
    ground_truths: &[GroundTruth],
    detections: &[Detection],
    image_ids: &[u64],
    category_ids: &[u64],
) -> Result<CocoStats> {
    Ok(evaluate_detailed(ground_truths, detections, image_ids, category_ids)?.stats)
}

/// As [`evaluate`], but also returns the precision and recall arrays pycocotools' `accumulate` builds,
/// from which per-category numbers can be read ([`CocoEvaluation::per_category_ap`]).
pub fn evaluate_detailed(
    ground_truths: &[GroundTruth],
    detections: &[Detection],
    image_ids: &[u64],
    category_ids: &[u64],
) -> Result<CocoEvaluation> {
    let images = sorted_unique(image_ids, "image_ids")?;
    let categories = sorted_unique(category_ids, "category_ids")?;
    let image_index: HashMap<u64, usize> =
        images.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let category_index: HashMap<u64, usize> = categories
        .iter()
        .enumerate()
        .map(|(k, &id)| (id, k))
        .collect();
    let num_categories = categories.len();

    // Only non-empty (category, image) cells are stored: on COCO most of the 80 × 5000 pairs are
    // empty. Each cell lists its ground truths and detections in input order; the map's key order is
    // (category, image) ascending, the order pycocotools accumulates in.
    let mut cells: BTreeMap<(usize, usize), Cell> = BTreeMap::new();
    for (n, gt) in ground_truths.iter().enumerate() {
        let arg = || format!("ground_truths[{n}]");
        check_box(&gt.bbox, &arg)?;
        if !gt.area.is_finite() || gt.area < 0.0 {
            return Err(Error::invalid(
                arg(),
                format!("expected a finite area >= 0, got {}", gt.area),
            ));
        }
        let key = cell_of(
            gt.image_id,
            gt.category_id,
            &image_index,
            &category_index,
            &arg,
        )?;
        cells.entry(key).or_default().ground_truths.push(gt);
    }
    for (n, det) in detections.iter().enumerate() {
        let arg = || format!("detections[{n}]");
        check_box(&det.bbox, &arg)?;
        if !det.score.is_finite() {
            return Err(Error::invalid(
                arg(),
                format!("expected a finite score, got {}", det.score),
            ));
        }
        let key = cell_of(
            det.image_id,
            det.category_id,
            &image_index,
            &category_index,
            &arg,
        )?;
        cells.entry(key).or_default().detections.push(det);
    }

    let mut by_category: Vec<Vec<&Cell>> = vec![Vec::new(); num_categories];
    for (&(k, _), cell) in &cells {
        by_category[k].push(cell);
    }
    let iou_thrs = iou_thresholds();
    // Per category, per non-empty image (ascending id), the matching result for each area range.
    let per_category: Vec<Vec<[ImageResult; NUM_AREAS]>> = by_category
        .par_iter()
        .map(|cells| {
            cells
                .iter()
                .map(|cell| evaluate_cell(cell, &iou_thrs))
                .collect()
        })
        .collect();

    let (precision, recall) = accumulate(&per_category);
    let mut evaluation = CocoEvaluation {
        stats: CocoStats::from_array([-1.0; 12]),
        image_ids: images,
        category_ids: categories,
        precision,
        recall,
    };
    evaluation.stats = evaluation.summary();
    Ok(evaluation)
}

/// The ground truths and detections of one category in one image, in input order.
#[derive(Default)]
struct Cell<'a> {
    ground_truths: Vec<&'a GroundTruth>,
    detections: Vec<&'a Detection>,
}

fn sorted_unique(ids: &[u64], arg: &str) -> Result<Vec<u64>> {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    if let Some(pair) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::invalid(
            arg,
            format!("expected distinct ids, got {} more than once", pair[0]),
        ));
    }
    Ok(sorted)
}

fn check_box(bbox: &[f64; 4], arg: &dyn Fn() -> String) -> Result<()> {
    if bbox.iter().any(|v| !v.is_finite()) || bbox[2] < 0.0 || bbox[3] < 0.0 {
        return Err(Error::invalid(
            format!("{}.bbox", arg()),
            format!("expected finite [x, y, width, height] with width, height >= 0, got {bbox:?}"),
        ));
    }
    Ok(())
}

fn cell_of(
    image_id: u64,
    category_id: u64,
    image_index: &HashMap<u64, usize>,
    category_index: &HashMap<u64, usize>,
    arg: &dyn Fn() -> String,
) -> Result<(usize, usize)> {
    let i = *image_index.get(&image_id).ok_or_else(|| {
        Error::invalid(
            format!("{}.image_id", arg()),
            format!("expected one of the evaluated image ids, got {image_id}"),
        )
    })?;
    let k = *category_index.get(&category_id).ok_or_else(|| {
        Error::invalid(
            format!("{}.category_id", arg()),
            format!("expected one of the evaluated category ids, got {category_id}"),
        )
    })?;
    Ok((k, i))
}

/// Matching result of one (category, area range, image): pycocotools' `evalImgs` entry.
#[derive(Clone, Debug)]
struct ImageResult {
    /// Scores of the kept detections, descending.
    scores: Vec<f64>,
    /// `[T, D]`: detection matched to a ground truth at threshold t.
    matched: Vec<bool>,
    /// `[T, D]`: detection ignored at threshold t.
    ignored: Vec<bool>,
    /// Ground truths that count (not crowd, area in range).
    positives: usize,
}

/// pycocotools' `computeIoU` and `evaluateImg` for one cell, for every area range.
fn evaluate_cell(
    cell: &Cell<'_>,
    iou_thrs: &[f64; NUM_IOU_THRESHOLDS],
) -> [ImageResult; NUM_AREAS] {
    let gts = &cell.ground_truths;
    let dets = &cell.detections;
    let mut det_order: Vec<usize> = (0..dets.len()).collect();
    det_order.sort_by(|&a, &b| {
        dets[b]
            .score
            .partial_cmp(&dets[a].score)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    det_order.truncate(MAX_DETECTIONS[NUM_MAX_DETS - 1]);
    let dets: Vec<&Detection> = det_order.iter().map(|&d| dets[d]).collect();
    let num_gts = gts.len();
    // [D, G] with ground truths in input order.
    let ious: Vec<f64> = dets
        .iter()
        .flat_map(|d| {
            gts.iter()
                .map(move |g| coco_box_iou(&d.bbox, &g.bbox, g.iscrowd))
        })
        .collect();
    std::array::from_fn(|a| {
        let (area_lo, area_hi) = AREA_RANGES[a];
        let outside = |area: f64| area < area_lo || area > area_hi;
        let gt_ignored: Vec<bool> = gts.iter().map(|g| g.iscrowd || outside(g.area)).collect();
        // Ignored ground truths last, stable.
        let mut gt_order: Vec<usize> = (0..num_gts).collect();
        gt_order.sort_by_key(|&g| gt_ignored[g]);

        let num_dets = dets.len();
        let mut matched = vec![false; NUM_IOU_THRESHOLDS * num_dets];
        let mut ignored = vec![false; NUM_IOU_THRESHOLDS * num_dets];
        for (t, &threshold) in iou_thrs.iter().enumerate() {
            let mut gt_taken = vec![false; num_gts];
            for d in 0..num_dets {
                let mut best_iou = threshold.min(1.0 - 1e-10);
                let mut best: Option<usize> = None;
                for &g in &gt_order {
                    if gt_taken[g] && !gts[g].iscrowd {
                        continue;
                    }
                    // Holding a regular ground truth, never trade it for an ignored one.
                    if let Some(b) = best {
                        if !gt_ignored[b] && gt_ignored[g] {
                            break;
                        }
                    }
                    let iou = ious[d * num_gts + g];
                    if iou < best_iou {
                        continue;
                    }
                    best_iou = iou;
                    best = Some(g);
                }
                if let Some(b) = best {
                    ignored[t * num_dets + d] = gt_ignored[b];
                    matched[t * num_dets + d] = true;
                    gt_taken[b] = true;
                }
            }
        }
        for (d, det) in dets.iter().enumerate() {
            if outside(det.bbox[2] * det.bbox[3]) {
                for t in 0..NUM_IOU_THRESHOLDS {
                    if !matched[t * num_dets + d] {
                        ignored[t * num_dets + d] = true;
                    }
                }
            }
        }
        ImageResult {
            scores: dets.iter().map(|d| d.score).collect(),
            matched,
            ignored,
            positives: gt_ignored.iter().filter(|&&ig| !ig).count(),
        }
    })
}

/// pycocotools' `accumulate`: returns `(precision [T,R,K,A,M], recall [T,K,A,M])`.
fn accumulate(per_category: &[Vec<[ImageResult; NUM_AREAS]>]) -> (Vec<f64>, Vec<f64>) {
    let num_categories = per_category.len();
    let rec_thrs = recall_thresholds();
    let mut precision =
        vec![
            -1.0;
            NUM_IOU_THRESHOLDS * NUM_RECALL_THRESHOLDS * num_categories * NUM_AREAS * NUM_MAX_DETS
        ];
    let mut recall = vec![-1.0; NUM_IOU_THRESHOLDS * num_categories * NUM_AREAS * NUM_MAX_DETS];
    for (k, results) in per_category.iter().enumerate() {
        for a in 0..NUM_AREAS {
            let images: Vec<&ImageResult> = results.iter().map(|per_area| &per_area[a]).collect();
            if images.is_empty() {
                continue;
            }
            let positives: usize = images.iter().map(|r| r.positives).sum();
            if positives == 0 {
                continue;
            }
            for (m, &max_dets) in MAX_DETECTIONS.iter().enumerate() {
                // (image, detection) pairs in pooled order: images ascending, then a stable sort by
                // descending score, as numpy's mergesort on the concatenated scores.
                let mut pooled: Vec<(usize, usize)> = images
                    .iter()
                    .enumerate()
                    .flat_map(|(img, r)| (0..r.scores.len().min(max_dets)).map(move |d| (img, d)))
                    .collect();
                pooled.sort_by(|&(ia, da), &(ib, db)| {
                    images[ib].scores[db]
                        .partial_cmp(&images[ia].scores[da])
                        .unwrap_or(std::cmp::Ordering::Equal)
                });
                let num_pooled = pooled.len();
                for t in 0..NUM_IOU_THRESHOLDS {
                    let mut tp = 0usize;
                    let mut fp = 0usize;
                    let mut rc = Vec::with_capacity(num_pooled);
                    let mut pr = Vec::with_capacity(num_pooled);
                    for &(img, d) in &pooled {
                        let r = images[img];
                        let at = t * r.scores.len() + d;
                        if !r.ignored[at] {
                            if r.matched[at] {
                                tp += 1;
                            } else {
                                fp += 1;
                            }
                        }
                        rc.push(tp as f64 / positives as f64);
                        pr.push(tp as f64 / (fp as f64 + tp as f64 + PRECISION_EPS));
                    }
                    let recall_at = ((t * num_categories + k) * NUM_AREAS + a) * NUM_MAX_DETS + m;
                    recall[recall_at] = rc.last().copied().unwrap_or(0.0);
                    for i in (1..num_pooled).rev() {
                        if pr[i] > pr[i - 1] {
                            pr[i - 1] = pr[i];
                        }
                    }
                    for (r, &threshold) in rec_thrs.iter().enumerate() {
                        let first = rc.partition_point(|&v| v < threshold);
                        let at = (((t * NUM_RECALL_THRESHOLDS + r) * num_categories + k)
                            * NUM_AREAS
                            + a)
                            * NUM_MAX_DETS
                            + m;
                        precision[at] = if first < num_pooled { pr[first] } else { 0.0 };
                    }
                }
            }
        }
    }
    (precision, recall)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gt(image_id: u64, category_id: u64, bbox: [f64; 4]) -> GroundTruth {
        GroundTruth {
            image_id,
            category_id,
            bbox,
            area: bbox[2] * bbox[3],
            iscrowd: false,
        }
    }

    fn det(image_id: u64, category_id: u64, bbox: [f64; 4], score: f64) -> Detection {
        Detection {
            image_id,
            category_id,
            bbox,
            score,
        }
    }

    #[test]
    fn thresholds_match_numpy_linspace() {
        // Reprs printed by numpy 2.4 for np.linspace(.5, .95, 10) and np.linspace(0, 1, 101).
        let iou = iou_thresholds();
        assert_eq!(
            iou,
            [
                0.5,
                0.55,
                0.6,
                0.65,
                0.7,
                0.75,
                0.8,
                0.85,
                0.8999999999999999,
                0.95
            ]
        );
        let rec = recall_thresholds();
        assert_eq!(rec[35], 0.35000000000000003);
        assert_eq!(rec[1], 0.01);
        assert_eq!(rec[100], 1.0);
        assert_eq!(rec[0], 0.0);
    }

    #[test]
    fn pairwise_sum_matches_plain_sum_for_exact_values() {
        // Integers are summed exactly in any order; checks the block/split bookkeeping covers every
        // element once for lengths around each boundary.
        for n in [
            0usize, 1, 7, 8, 9, 15, 16, 17, 127, 128, 129, 255, 256, 1000, 10100,
        ] {
            let values: Vec<f64> = (0..n).map(|i| (i % 13) as f64).collect();
            let want: f64 = values.iter().sum();
            assert_eq!(numpy_pairwise_sum(&values), want, "n = {n}");
        }
    }

    #[test]
    fn pairwise_sum_reproduces_numpy_rounding() {
        // Values printed by numpy 2.4's np.sum for these arrays; a left-to-right sum gives 6.0 and 8.0.
        let short = [1e16, 1.0, -1e16, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        assert_eq!(numpy_pairwise_sum(&short), 5.0);
        let mut long = vec![1.0; 7];
        long.push(1e16);
        long.extend(std::iter::repeat(1.0).take(200));
        long.push(-1e16);
        assert_eq!(numpy_pairwise_sum(&long), 194.0);
    }

    #[test]
    fn iou_regular_and_crowd() {
        let d = [0.0, 0.0, 10.0, 10.0];
        let g = [5.0, 0.0, 10.0, 10.0];
        assert_eq!(coco_box_iou(&d, &g, false), 50.0 / 150.0);
        assert_eq!(coco_box_iou(&d, &g, true), 50.0 / 100.0);
        // Touching edges and zero-size boxes do not overlap.
        assert_eq!(coco_box_iou(&d, &[10.0, 0.0, 5.0, 5.0], false), 0.0);
        assert_eq!(coco_box_iou(&[1.0, 1.0, 0.0, 5.0], &d, true), 0.0);
    }

    #[test]
    fn perfect_detections_score_one() {
        let gts = vec![
            gt(1, 1, [10.0, 10.0, 50.0, 50.0]),
            gt(2, 1, [0.0, 0.0, 200.0, 100.0]),
        ];
        let dets = vec![
            det(1, 1, [10.0, 10.0, 50.0, 50.0], 0.9),
            det(2, 1, [0.0, 0.0, 200.0, 100.0], 0.8),
        ];
        let stats = evaluate(&gts, &dets, &[1, 2], &[1]).unwrap();
        // Pooled: tp = [1, 2], fp = [0, 0]; precision [1/(1+ε), 2/(2+ε)] and 2 + ε rounds to 2, so the
        // envelope is 1 everywhere.
        assert_eq!(stats.ap, 1.0);
        assert_eq!(stats.ar100, 1.0);
        assert_eq!(stats.ar1, 1.0);
        // No small objects anywhere: −1. One medium (2500) and one large (20000) object.
        assert_eq!(stats.ap_small, -1.0);
        assert_eq!(stats.ar_small, -1.0);
        assert_eq!(stats.ar_medium, 1.0);
        assert_eq!(stats.ar_large, 1.0);
    }

    #[test]
    fn hand_computed_precision_recall() {
        // One category, one image, 2 ground truths; detections (score order): hit, miss, hit.
        // At every IoU threshold: tp = [1, 1, 2], fp = [0, 1, 1], recall = [.5, .5, 1],
        // precision = [1/(1+ε), 1/(2+ε), 2/(3+ε)] → envelope [1/(1+ε), 2/(3+ε), 2/(3+ε)].
        // Recall thresholds 0..=0.5 (51 of them) read 1/(1+ε); 0.51..=1 (50) read 2/(3+ε).
        let gts = vec![
            gt(7, 3, [0.0, 0.0, 40.0, 40.0]),
            gt(7, 3, [100.0, 100.0, 40.0, 40.0]),
        ];
        let dets = vec![
            det(7, 3, [0.0, 0.0, 40.0, 40.0], 0.9),
            det(7, 3, [300.0, 300.0, 40.0, 40.0], 0.8),
            det(7, 3, [100.0, 100.0, 40.0, 40.0], 0.7),
        ];
        let eval = evaluate_detailed(&gts, &dets, &[7], &[3]).unwrap();
        let p1 = 1.0 / (1.0 + PRECISION_EPS);
        let p3 = 2.0 / (3.0 + PRECISION_EPS);
        let mut row = vec![p1; 51];
        row.extend(std::iter::repeat(p3).take(50));
        let want_ap = numpy_pairwise_sum(&row.repeat(NUM_IOU_THRESHOLDS))
            / (row.len() * NUM_IOU_THRESHOLDS) as f64;
        assert_eq!(eval.stats.ap, want_ap);
        assert_eq!(eval.stats.ap50, numpy_pairwise_sum(&row) / 101.0);
        assert_eq!(eval.stats.ar100, 1.0);
        // maxDets 1 keeps only the first detection: recall 0.5.
        assert_eq!(eval.stats.ar1, 0.5);
        assert_eq!(eval.per_category_ap(), vec![(3, Some(want_ap))]);
    }

    #[test]
    fn crowd_absorbs_detections_and_is_not_counted() {
        // A crowd region plus one regular object. Two detections inside the crowd are ignored (not
        // false positives), the regular object is found: AP = 1/(1+ε) at every threshold and
        // recall 1.
        let mut crowd = gt(1, 1, [0.0, 0.0, 100.0, 100.0]);
        crowd.iscrowd = true;
        let gts = vec![crowd, gt(1, 1, [200.0, 200.0, 50.0, 50.0])];
        let dets = vec![
            det(1, 1, [10.0, 10.0, 20.0, 20.0], 0.95),
            det(1, 1, [50.0, 50.0, 20.0, 20.0], 0.9),
            det(1, 1, [200.0, 200.0, 50.0, 50.0], 0.5),
        ];
        let stats = evaluate(&gts, &dets, &[1], &[1]).unwrap();
        assert_eq!(stats.ap, 1.0 / (1.0 + PRECISION_EPS));
        assert_eq!(stats.ar100, 1.0);
    }

    #[test]
    fn absent_category_is_left_out_of_the_mean() {
        // Category 2 has detections only, category 3 nothing: both −1, the mean is category 1's.
        let gts = vec![gt(1, 1, [0.0, 0.0, 40.0, 40.0])];
        let dets = vec![
            det(1, 1, [0.0, 0.0, 40.0, 40.0], 0.9),
            det(1, 2, [0.0, 0.0, 40.0, 40.0], 0.9),
        ];
        let eval = evaluate_detailed(&gts, &dets, &[1], &[1, 2, 3]).unwrap();
        assert_eq!(eval.stats.ap, 1.0 / (1.0 + PRECISION_EPS));
        assert_eq!(eval.per_category_ap()[1..], [(2, None), (3, None)]);
    }

    #[test]
    fn empty_inputs() {
        let stats = evaluate(&[], &[], &[1, 2], &[1]).unwrap();
        assert_eq!(stats.as_array(), [-1.0; 12]);
        let stats = evaluate(&[], &[], &[], &[]).unwrap();
        assert_eq!(stats.as_array(), [-1.0; 12]);
        let gts = vec![gt(1, 1, [0.0, 0.0, 40.0, 40.0])];
        let stats = evaluate(&gts, &[], &[1], &[1]).unwrap();
        assert_eq!(stats.ap, 0.0);
        assert_eq!(stats.ar100, 0.0);
        assert_eq!(stats.ap_small, -1.0);
    }

    #[test]
    fn stats_array_roundtrip_and_display() {
        let values: [f64; 12] = std::array::from_fn(|i| i as f64 / 12.0);
        let stats = CocoStats::from_array(values);
        assert_eq!(stats.as_array(), values);
        assert_eq!(stats.ap75, 2.0 / 12.0);
        let text = stats.to_string();
        assert_eq!(text.lines().count(), 12);
        assert!(text.starts_with(
            " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.000"
        ));
    }

    #[test]
    fn rejects_bad_input() {
        let good_gt = gt(1, 1, [0.0, 0.0, 10.0, 10.0]);
        let good_det = det(1, 1, [0.0, 0.0, 10.0, 10.0], 0.5);
        let run = |gts: Vec<GroundTruth>, dets: Vec<Detection>, images: &[u64], cats: &[u64]| {
            evaluate(&gts, &dets, images, cats).unwrap_err().to_string()
        };
        let err = run(vec![], vec![], &[1, 2, 1], &[1]);
        assert!(
            err.contains("image_ids") && err.contains("1 more than once"),
            "{err}"
        );
        let err = run(vec![], vec![], &[1], &[4, 4]);
        assert!(
            err.contains("category_ids") && err.contains("4 more than once"),
            "{err}"
        );
        for bad in [
            [f64::NAN, 0.0, 1.0, 1.0],
            [0.0, f64::INFINITY, 1.0, 1.0],
            [0.0, 0.0, -1.0, 1.0],
            [0.0, 0.0, 1.0, -0.5],
        ] {
            let err = run(
                vec![GroundTruth {
                    bbox: bad,
                    ..good_gt.clone()
                }],
                vec![],
                &[1],
                &[1],
            );
            assert!(err.contains("ground_truths[0].bbox"), "{err}");
            let err = run(
                vec![],
                vec![
                    good_det.clone(),
                    Detection {
                        bbox: bad,
                        ..good_det.clone()
                    },
                ],
                &[1],
                &[1],
            );
            assert!(err.contains("detections[1].bbox"), "{err}");
        }
        for area in [f64::NAN, -1.0, f64::INFINITY] {
            let err = run(
                vec![GroundTruth {
                    area,
                    ..good_gt.clone()
                }],
                vec![],
                &[1],
                &[1],
            );
            assert!(
                err.contains("ground_truths[0]") && err.contains("area"),
                "{err}"
            );
        }
        for score in [f64::NAN, f64::NEG_INFINITY] {
            let err = run(
                vec![],
                vec![Detection {
                    score,
                    ..good_det.clone()
                }],
                &[1],
                &[1],
            );
            assert!(
                err.contains("detections[0]") && err.contains("score"),
                "{err}"
            );
        }
        let err = run(
            vec![GroundTruth {
                image_id: 9,
                ..good_gt.clone()
            }],
            vec![],
            &[1],
            &[1],
        );
        assert!(
            err.contains("ground_truths[0].image_id") && err.contains("9"),
            "{err}"
        );
        let err = run(
            vec![GroundTruth {
                category_id: 9,
                ..good_gt.clone()
            }],
            vec![],
            &[1],
            &[1],
        );
        assert!(err.contains("ground_truths[0].category_id"), "{err}");
        let err = run(
            vec![],
            vec![Detection {
                image_id: 3,
                ..good_det.clone()
            }],
            &[1],
            &[1],
        );
        assert!(err.contains("detections[0].image_id"), "{err}");
        let err = run(
            vec![],
            vec![Detection {
                category_id: 3,
                ..good_det.clone()
            }],
            &[1],
            &[1],
        );
        assert!(err.contains("detections[0].category_id"), "{err}");
    }
}
