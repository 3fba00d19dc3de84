//! Gradchecks, closed-form values, reductions, tie conventions, validation and CPU dtype tests for the box
//! ops. Peer fixtures and CUDA parity live in tests/boxes.rs.

use super::*;
use crate::autograd::{gradcheck, GradcheckOptions};
use crate::testing::{assert_close, Rng};

fn tensor(data: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(data, shape).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().unwrap()
}

fn boxes(rows: &[[f64; 4]]) -> Tensor {
    tensor(rows.iter().flatten().copied().collect(), &[rows.len(), 4])
}

/// Bitwise equality, reporting the first difference only.
#[track_caller]
fn assert_same(what: &str, got: &Tensor, want: &Tensor) {
    let (g, w) = (values(got), values(want));
    assert_eq!(g.len(), w.len(), "{what}: lengths");
    if let Some(i) = (0..g.len()).find(|&i| g[i].to_bits() != w[i].to_bits()) {
        panic!("{what}: element {i} is {} vs {}", g[i], w[i]);
    }
}

fn err(r: Result<impl std::fmt::Debug>) -> String {
    r.unwrap_err().to_string()
}

/// A box with corners away from integers: centre in [10, 50), sides in [4, 24).
fn random_box(rng: &mut Rng) -> [f64; 4] {
    let (cx, cy) = (rng.uniform(10.0, 50.0), rng.uniform(10.0, 50.0));
    let (w, h) = (rng.uniform(4.0, 24.0), rng.uniform(4.0, 24.0));
    [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]
}

/// True when every max/min/clamp decision of GIoU(p, g) is at least `margin` away from its kink, so central
/// differences with step 1e-6 never cross one.
fn away_from_kinks(p: &[f64; 4], g: &[f64; 4], margin: f64) -> bool {
    let sides_apart = (0..4).all(|k| (p[k] - g[k]).abs() > margin);
    let dx = p[2].min(g[2]) - p[0].max(g[0]);
    let dy = p[3].min(g[3]) - p[1].max(g[1]);
    sides_apart && dx.abs() > margin && dy.abs() > margin
}

/// Pairs covering partial overlap, no overlap (in x, in y, in both), nesting either way, all away from kinks.
fn gradcheck_pairs(seed: u64, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut rng = Rng::new(seed);
    let (mut pred, mut target) = (Vec::new(), Vec::new());
    while pred.len() < 4 * n {
        let g = random_box(&mut rng);
        let p = match pred.len() / 4 % 4 {
            0 => random_box(&mut rng), // mostly partial overlap or disjoint
            1 => {
                // nested inside the target
                let s = rng.uniform(0.2, 0.4);
                let (w, h) = (g[2] - g[0], g[3] - g[1]);
                [g[0] + s * w, g[1] + 0.3 * h, g[2] - 0.25 * w, g[3] - s * h]
            }
            2 => {
                // containing the target
                let s = rng.uniform(1.0, 3.0);
                [g[0] - s, g[1] - 2.0 * s, g[2] + 0.5 * s, g[3] + 1.5 * s]
            }
            _ => {
                // disjoint, shifted right
                let s = rng.uniform(2.0, 6.0);
                [g[2] + s, g[1] + 1.3, g[2] + 2.0 * s + 3.0, g[3] - 0.7]
            }
        };
        if away_from_kinks(&p, &g, 1e-3) {
            pred.extend(p);
            target.extend(g);
        }
    }
    (pred, target)
}

fn giou_cfg(reduction: Reduction, loss_weight: f64) -> GiouLossConfig {
    GiouLossConfig {
        reduction,
        loss_weight,
        ..GiouLossConfig::default()
    }
}

fn upstream_shape(reduction: Reduction, rows: usize) -> Vec<usize> {
    match reduction {
        Reduction::None => vec![rows],
        _ => vec![],
    }
}

fn check_giou_gradient(
    what: &str,
    pred: &[f64],
    target: &Tensor,
    weighting: LossWeighting<'_>,
    cfg: &GiouLossConfig,
) {
    let rows = pred.len() / 4;
    let forward = |x: &[f64]| {
        giou_loss(&tensor(x.to_vec(), &[rows, 4]), target, weighting, cfg)?.to_vec::<f64>()
    };
    let backward = |x: &[f64], g: &[f64]| {
        let g = tensor(g.to_vec(), &upstream_shape(cfg.reduction, rows));
        giou_loss_backward(&g, &tensor(x.to_vec(), &[rows, 4]), target, weighting, cfg)?
            .to_vec::<f64>()
    };
    let report = gradcheck(forward, backward, pred, &GradcheckOptions::default())
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(report.nonzero_entries > 0, "{what}: all-zero Jacobian");
}

#[test]
fn gradcheck_giou_loss_every_reduction() {
    let rows = 12;
    let weight = tensor((0..rows).map(|i| 0.25 + 0.2 * i as f64).collect(), &[rows]);
    let mut seed = 0;
    for (reduction, avg_factor) in [
        (Reduction::None, None),
        (Reduction::Sum, None),
        (Reduction::Mean, None),
        (Reduction::Mean, Some(3.5)),
    ] {
        for weighted in [false, true] {
            seed += 1;
            let (pred, target) = gradcheck_pairs(seed, rows);
            let target = tensor(target, &[rows, 4]);
            let w = weighted.then_some(&weight);
            let cfg = giou_cfg(reduction, [1.0, 2.0][weighted as usize]);
            check_giou_gradient(
                &format!("{reduction:?} avg {avg_factor:?} weighted {weighted}"),
                &pred,
                &target,
                LossWeighting::new(w, avg_factor),
                &cfg,
            );
        }
    }
}

/// Where `pred` and `target` share a side exactly, PyTorch splits the gradient of that max/min in half,
/// which is the average of the two one-sided derivatives: central differences see exactly that, so the
/// gradcheck passes at identical boxes and at boxes sharing single sides (but no touching edges: there the
/// clamp at 0 gives no gradient, which is not the average; see the fixtures).
#[test]
fn tie_convention_is_the_half_split_of_torch_max() {
    let target = boxes(&[
        [2.0, 3.0, 12.0, 9.5],
        [2.0, 3.0, 12.0, 9.5],
        [0.0, 0.0, 8.0, 8.0],
        [1.0, 1.0, 5.0, 7.0],
    ]);
    let pred = vec![
        2.0, 3.0, 12.0, 9.5, // identical
        2.0, 1.5, 10.0, 9.5, // shares x1 and y2
        0.0, 2.0, 6.0, 8.0, // nested, sharing x1 and y2
        1.0, 3.0, 9.0, 5.0, // shares x1 only, sticks out right
    ];
    for reduction in [Reduction::None, Reduction::Sum] {
        check_giou_gradient(
            &format!("ties {reduction:?}"),
            &pred,
            &target,
            LossWeighting::NONE,
            &giou_cfg(reduction, 1.0),
        );
    }
    // Identical boxes are the minimum: L = 0 and, with the half split, the gradient is exactly 0 (the
    // average of the one-sided derivatives, which have opposite signs).
    let p = boxes(&[[2.0, 3.0, 12.0, 9.5]]);
    let cfg = giou_cfg(Reduction::Sum, 1.0);
    let r = giou_loss_fused(&p, &p, LossWeighting::NONE, &cfg, 1.0).unwrap();
    assert_eq!(values(&r.loss), vec![0.0]);
    assert_eq!(values(&r.grad), vec![0.0; 4]);
}

#[test]
fn touching_and_disjoint_boxes_get_no_overlap_gradient() {
    // Touching at x = 10: the clamped overlap width is exactly 0, so only the union/enclosure terms act.
    let p = boxes(&[[0.0, 0.0, 10.0, 10.0]]);
    let t = boxes(&[[10.0, 0.0, 20.0, 10.0]]);
    let cfg = giou_cfg(Reduction::Sum, 1.0);
    let r = giou_loss_fused(&p, &t, LossWeighting::NONE, &cfg, 1.0).unwrap();
    // I = 0, U = 200, C = 200: GIoU = 0 - 0 = 0, L = 1.
    assert!((values(&r.loss)[0] - 1.0).abs() < 1e-15);
    // dL/dx2 = dL/dU · dA_p/dx2 = (I/U² − 1/C) · h = −10/200: the enclosure's x2 is the target's
    // (20 > 10), and the overlap width, clamped at exactly 0, passes no gradient.
    let g = values(&r.grad);
    assert!((g[2] + 10.0 / 200.0).abs() < 1e-15, "{g:?}");
}

#[test]
fn gradcheck_distance2bbox_with_and_without_image_clamp() {
    let rows = 10;
    let mut rng = Rng::new(77);
    let points: Vec<f64> = (0..2 * rows).map(|_| rng.uniform(2.0, 60.0)).collect();
    let points = tensor(points, &[rows, 2]);
    let p = values(&points);
    for max_shape in [None, Some((40.0, 50.0))] {
        // Distances keep every coordinate at least 0.01 away from 0, W and H.
        let mut d = Vec::new();
        for i in 0..rows {
            loop {
                let cand: Vec<f64> = (0..4).map(|_| rng.uniform(0.5, 30.0)).collect();
                let b = [
                    p[2 * i] - cand[0],
                    p[2 * i + 1] - cand[1],
                    p[2 * i] + cand[2],
                    p[2 * i + 1] + cand[3],
                ];
                let ok = b.iter().enumerate().all(|(k, &v)| {
                    let hi = if k % 2 == 0 { 50.0 } else { 40.0 };
                    v.abs() > 0.01 && (v - hi).abs() > 0.01
                });
                if ok {
                    d.extend(cand);
                    break;
                }
            }
        }
        let forward = |x: &[f64]| {
            distance2bbox(&points, &tensor(x.to_vec(), &[rows, 4]), max_shape)?.to_vec::<f64>()
        };
        let backward = |x: &[f64], g: &[f64]| {
            distance2bbox_backward(
                &tensor(g.to_vec(), &[rows, 4]),
                &points,
                &tensor(x.to_vec(), &[rows, 4]),
                max_shape,
            )?
            .to_vec::<f64>()
        };
        let report = gradcheck(forward, backward, &d, &GradcheckOptions::default())
            .unwrap_or_else(|e| panic!("{max_shape:?}: {e}"));
        assert!(report.nonzero_entries > 0);
        if max_shape.is_some() {
            // Some coordinates were clamped (zero rows of the Jacobian) and some were not.
            let boxes = forward(&d).unwrap();
            assert!(boxes.iter().any(|&v| v == 0.0 || v == 50.0 || v == 40.0));
            assert!(report.nonzero_entries < 4 * rows);
        }
    }
}

#[test]
fn distance2bbox_boundary_convention() {
    // x1 = 4 - 4 = 0 and x2 = 4 + 6 = 10 = W land exactly on the boundary; y1 = 3 - 1 = 2 is inside;
    // y2 = 3 + 9 = 12 > H = 8 is clamped.
    let points = tensor(vec![4.0, 3.0], &[1, 2]);
    let d = tensor(vec![4.0, 1.0, 6.0, 9.0], &[1, 4]);
    let out = distance2bbox(&points, &d, Some((8.0, 10.0))).unwrap();
    assert_eq!(values(&out), vec![0.0, 2.0, 10.0, 8.0]);
    let g = tensor(vec![1.0, 1.0, 1.0, 1.0], &[1, 4]);
    let grad = distance2bbox_backward(&g, &points, &d, Some((8.0, 10.0))).unwrap();
    assert_eq!(values(&grad), vec![0.0, -1.0, 0.0, 0.0]);
    let free = distance2bbox_backward(&g, &points, &d, None).unwrap();
    assert_eq!(values(&free), vec![-1.0, -1.0, 1.0, 1.0]);
}

#[test]
fn overlaps_match_the_closed_forms() {
    let a = boxes(&[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 4.0, 4.0]]);
    let b = boxes(&[[5.0, 5.0, 15.0, 15.0], [6.0, 0.0, 8.0, 4.0]]);
    let cfg = OverlapConfig::default();
    let iou = values(&iou_aligned(&a, &b, &cfg).unwrap());
    let giou = values(&giou_aligned(&a, &b, &cfg).unwrap());
    let diou = values(&diou_aligned(&a, &b, &cfg).unwrap());
    let ld = values(&diou_aligned(&a, &b, &OverlapConfig::ld_repo()).unwrap());
    // Pair 0: I = 25, U = 175, C = 225, rho² = 5² + 5² = 50, c² = 15² + 15² = 450.
    // Pair 1: disjoint, I = 0, U = 24, C = 8·4 = 32, rho² = 5² = 25, c² = 64 + 16 = 80.
    let want_iou = [25.0 / 175.0, 0.0];
    let want_giou = [25.0 / 175.0 - 50.0 / 225.0, -(32.0 - 24.0) / 32.0];
    let want_diou = [25.0 / 175.0 - 50.0 / 450.0, -25.0 / 80.0];
    let want_ld = [25.0 / 100.0 - 50.0 / 450.0, -25.0 / 80.0];
    for (got, want, what) in [
        (&iou, want_iou, "iou"),
        (&giou, want_giou, "giou"),
        (&diou, want_diou, "diou"),
        (&ld, want_ld, "ld diou"),
    ] {
        for k in 0..2 {
            assert!(
                (got[k] - want[k]).abs() < 1e-15,
                "{what}[{k}]: {got:?} vs {want:?}"
            );
        }
    }
    // The pairwise matrix holds the aligned values on its diagonal, and is consistent off it.
    for kind in [OverlapKind::Iou, OverlapKind::Giou, OverlapKind::Diou] {
        let m = values(&box_overlaps(&a, &b, kind, &cfg).unwrap());
        let aligned = values(&overlaps_aligned(&a, &b, kind, &cfg).unwrap());
        assert_eq!((m[0], m[3]), (aligned[0], aligned[1]), "{kind:?}");
        let swapped = boxes(&[[6.0, 0.0, 8.0, 4.0], [5.0, 5.0, 15.0, 15.0]]);
        let aligned2 = values(&overlaps_aligned(&a, &swapped, kind, &cfg).unwrap());
        assert_eq!((m[1], m[2]), (aligned2[0], aligned2[1]), "{kind:?}");
    }
    // 1 - GIoU is the unweighted GIoU loss.
    let loss =
        values(&giou_loss(&a, &b, LossWeighting::NONE, &giou_cfg(Reduction::None, 1.0)).unwrap());
    for k in 0..2 {
        assert!((loss[k] - (1.0 - giou[k])).abs() < 1e-15);
    }
}

#[test]
fn eps_clamps_the_union_and_enclosure_not_offsets_them() {
    // Two identical zero-area boxes: U = 0 -> eps, C = 0 -> eps: IoU = 0, GIoU = 0 - (eps - eps)/eps = 0.
    let a = boxes(&[[3.0, 3.0, 3.0, 7.0]]);
    let cfg = OverlapConfig::default();
    assert_eq!(values(&iou_aligned(&a, &a, &cfg).unwrap()), vec![0.0]);
    assert_eq!(values(&giou_aligned(&a, &a, &cfg).unwrap()), vec![0.0]);
    // A regular pair is unaffected by eps (a clamp, not an offset): IoU is exactly I/U.
    let p = boxes(&[[0.0, 0.0, 2.0, 2.0]]);
    let q = boxes(&[[1.0, 0.0, 3.0, 2.0]]);
    assert_eq!(values(&iou_aligned(&p, &q, &cfg).unwrap()), vec![2.0 / 6.0]);
}

#[test]
fn giou_reductions_weights_and_avg_factor() {
    let (pred, target) = gradcheck_pairs(5, 9);
    let (pred, target) = (tensor(pred, &[9, 4]), tensor(target, &[9, 4]));
    let w: Vec<f64> = (0..9).map(|i| i as f64 * 0.3).collect();
    let weight = tensor(w.clone(), &[9]);
    let plain = values(
        &giou_loss(
            &pred,
            &target,
            LossWeighting::NONE,
            &giou_cfg(Reduction::None, 1.0),
        )
        .unwrap(),
    );
    let weighted = |reduction, avg, lw| {
        values(
            &giou_loss(
                &pred,
                &target,
                LossWeighting::new(Some(&weight), avg),
                &giou_cfg(reduction, lw),
            )
            .unwrap(),
        )
    };
    let none = weighted(Reduction::None, None, 2.0);
    for i in 0..9 {
        assert!((none[i] - 2.0 * w[i] * plain[i]).abs() < 1e-14);
    }
    let sum: f64 = (0..9).map(|i| w[i] * plain[i]).sum();
    assert!((weighted(Reduction::Sum, None, 1.0)[0] - sum).abs() < 1e-13);
    // Mean divides by N (not Σw), or by avg_factor + f32 eps.
    assert!((weighted(Reduction::Mean, None, 1.0)[0] - sum / 9.0).abs() < 1e-13);
    let avg = weighted(Reduction::Mean, Some(2.5), 2.0)[0];
    assert!((avg - 2.0 * sum / (2.5 + AVG_FACTOR_EPS)).abs() < 1e-13);
    // avg_factor is ignored by `none`, as mmdet.
    assert_eq!(weighted(Reduction::None, Some(2.5), 2.0), none);
}

/// The fused entries reproduce forward + backward exactly on the CPU (same sums, same products).
#[test]
fn fused_equals_forward_and_backward() {
    let rows = 5000; // two reduction chunks
    let (p, t) = gradcheck_pairs(11, rows);
    let mut rng = Rng::new(3);
    let w: Vec<f64> = (0..rows).map(|_| rng.uniform(0.0, 2.0)).collect();
    for dtype in [DType::F64, DType::F32, DType::BF16] {
        let cast = |v: &[f64], shape: &[usize]| tensor(v.to_vec(), shape).to_dtype(dtype).unwrap();
        let (pred, target, weight) = (
            cast(&p, &[rows, 4]),
            cast(&t, &[rows, 4]),
            cast(&w, &[rows]),
        );
        for (reduction, avg) in [
            (Reduction::Sum, None),
            (Reduction::Mean, None),
            (Reduction::Mean, Some(40.0)),
        ] {
            let cfg = giou_cfg(reduction, 2.0);
            let weighting = LossWeighting::new(Some(&weight), avg);
            let g = 0.375; // exact in every dtype: the backward reads it from a tensor of `dtype`
            let fused = giou_loss_fused(&pred, &target, weighting, &cfg, g).unwrap();
            let loss = giou_loss(&pred, &target, weighting, &cfg).unwrap();
            let grad =
                giou_loss_backward(&cast(&[g], &[]), &pred, &target, weighting, &cfg).unwrap();
            assert_same(&format!("{dtype} {reduction:?} loss"), &fused.loss, &loss);
            assert_same(&format!("{dtype} {reduction:?} grad"), &fused.grad, &grad);
            assert_eq!((fused.loss.dtype(), fused.grad.dtype()), (dtype, dtype));
        }
    }
}

#[test]
fn transforms_round_trip_and_gfl_clamp() {
    let mut rng = Rng::new(8);
    let rows = 50;
    let points: Vec<f64> = (0..2 * rows).map(|_| rng.uniform(0.0, 100.0)).collect();
    let d: Vec<f64> = (0..4 * rows).map(|_| rng.uniform(0.0, 15.0)).collect();
    let points = tensor(points, &[rows, 2]);
    let boxes = distance2bbox(&points, &tensor(d.clone(), &[rows, 4]), None).unwrap();
    let back = bbox2distance(&points, &boxes, Some(16.0), BBOX2DISTANCE_EPS).unwrap();
    assert_close("round trip", &values(&back), &d, 1e-13);
    // GFL's targets: clamped to [0, 15.9], computed in the compute precision (15.9 rounded to f32 for f32).
    let p = tensor(vec![10.0, 10.0], &[1, 2]);
    let b = boxes_from(&[[12.0, -20.0, 9.0, 40.0]]);
    for dtype in [DType::F64, DType::F32] {
        let t = bbox2distance(
            &p.to_dtype(dtype).unwrap(),
            &b.to_dtype(dtype).unwrap(),
            Some(16.0),
            0.1,
        )
        .unwrap();
        let hi = if dtype == DType::F64 {
            15.9
        } else {
            15.9f32 as f64
        };
        assert_eq!(values(&t), vec![0.0, hi, 0.0, hi], "{dtype}");
        assert!(values(&t)[1] < 16.0);
    }
    let unclamped = bbox2distance(&p, &b, None, 0.1).unwrap();
    assert_eq!(values(&unclamped), vec![-2.0, 30.0, -1.0, 30.0]);
}

fn boxes_from(rows: &[[f64; 4]]) -> Tensor {
    boxes(rows)
}

#[test]
fn nan_predictions_propagate_and_targets_are_rejected() {
    let good = boxes(&[[0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 5.0, 6.0]]);
    for k in 0..4 {
        let mut p = vec![0.0, 0.0, 4.0, 4.0, 1.0, 1.0, 5.0, 6.0];
        p[4 + k] = f64::NAN;
        for dtype in [DType::F64, DType::F32] {
            let pred = tensor(p.clone(), &[2, 4]).to_dtype(dtype).unwrap();
            let target = good.to_dtype(dtype).unwrap();
            let cfg = giou_cfg(Reduction::None, 1.0);
            let loss = values(&giou_loss(&pred, &target, LossWeighting::NONE, &cfg).unwrap());
            assert!(
                loss[0].is_finite() && loss[1].is_nan(),
                "coord {k} {dtype}: {loss:?}"
            );
            let iou = values(&box_iou(&pred, &target, &OverlapConfig::default()).unwrap());
            assert!(iou[..2].iter().all(|v| v.is_finite()) && iou[2..].iter().all(|v| v.is_nan()));
            let diou = values(&diou_aligned(&pred, &target, &OverlapConfig::default()).unwrap());
            assert!(diou[1].is_nan(), "{diou:?}");
        }
    }
    let mut t = vec![0.0, 0.0, 4.0, 4.0, 1.0, 1.0, 5.0, 6.0];
    t[6] = f64::INFINITY;
    let bad = tensor(t, &[2, 4]);
    let cfg = GiouLossConfig::default();
    let e = err(giou_loss(&good, &bad, LossWeighting::NONE, &cfg));
    assert!(
        e.contains("`target`") && e.contains("row 1, column 2 is inf"),
        "{e}"
    );
    let e = err(box_iou(&good, &bad, &OverlapConfig::default()));
    assert!(e.contains("`b`") && e.contains("row 1, column 2"), "{e}");
    let e = err(iou_aligned(&good, &bad, &OverlapConfig::default()));
    assert!(e.contains("`b`"), "{e}");
    let e = err(bbox2distance(
        &tensor(vec![1.0; 4], &[2, 2]),
        &bad,
        None,
        0.1,
    ));
    assert!(e.contains("`boxes`"), "{e}");
    let bad_points = tensor(vec![1.0, f64::NAN, 2.0, 2.0], &[2, 2]);
    let e = err(distance2bbox(&bad_points, &good, None));
    assert!(
        e.contains("`points`") && e.contains("row 0, column 1 is NaN"),
        "{e}"
    );
    let e = err(bbox2distance(&bad_points, &good, None, 0.1));
    assert!(e.contains("`points`"), "{e}");
    // NaN distances are predictions: they propagate.
    let d = tensor(vec![f64::NAN, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], &[2, 4]);
    let out =
        values(&distance2bbox(&tensor(vec![5.0; 4], &[2, 2]), &d, Some((10.0, 10.0))).unwrap());
    assert!(
        out[0].is_nan() && out[1..].iter().all(|v| v.is_finite()),
        "{out:?}"
    );
}

#[test]
fn empty_inputs_give_empty_results_and_documented_reductions() {
    let e4 = tensor(vec![], &[0, 4]);
    let e2 = tensor(vec![], &[0, 2]);
    let some = boxes(&[[0.0, 0.0, 1.0, 1.0]]);
    let cfg = OverlapConfig::default();
    assert_eq!(distance2bbox(&e2, &e4, None).unwrap().shape(), &[0, 4]);
    let g = distance2bbox_backward(&e4.try_clone().unwrap(), &e2, &e4, Some((1.0, 1.0))).unwrap();
    assert_eq!(g.shape(), &[0, 4]);
    assert_eq!(
        bbox2distance(&e2, &e4, Some(16.0), 0.1).unwrap().shape(),
        &[0, 4]
    );
    assert_eq!(iou_aligned(&e4, &e4, &cfg).unwrap().shape(), &[0]);
    assert_eq!(box_iou(&e4, &some, &cfg).unwrap().shape(), &[0, 1]);
    assert_eq!(box_diou(&some, &e4, &cfg).unwrap().shape(), &[1, 0]);
    assert_eq!(box_giou(&e4, &e4, &cfg).unwrap().shape(), &[0, 0]);
    let loss = |reduction, avg| {
        let w = LossWeighting::new(None, avg);
        giou_loss(&e4, &e4, w, &giou_cfg(reduction, 2.0)).unwrap()
    };
    assert_eq!(loss(Reduction::None, None).shape(), &[0]);
    assert_eq!(values(&loss(Reduction::Sum, None)), vec![0.0]);
    assert!(
        values(&loss(Reduction::Mean, None))[0].is_nan(),
        "torch.mean of nothing"
    );
    assert_eq!(values(&loss(Reduction::Mean, Some(0.0))), vec![0.0]);
    let fused = giou_loss_fused(
        &e4,
        &e4,
        LossWeighting::NONE,
        &giou_cfg(Reduction::Mean, 1.0),
        1.0,
    )
    .unwrap();
    assert!(values(&fused.loss)[0].is_nan());
    assert_eq!(fused.grad.shape(), &[0, 4]);
    let grad = giou_loss_backward(
        &tensor(vec![1.0], &[]),
        &e4,
        &e4,
        LossWeighting::NONE,
        &GiouLossConfig::default(),
    )
    .unwrap();
    assert_eq!(grad.shape(), &[0, 4]);
}

#[test]
fn bad_shapes_dtypes_and_parameters_are_clear_errors() {
    let b2 = boxes(&[[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 3.0, 3.0]]);
    let b3 = boxes(&[
        [0.0, 0.0, 1.0, 1.0],
        [1.0, 1.0, 3.0, 3.0],
        [0.0, 0.0, 2.0, 2.0],
    ]);
    let five = tensor(vec![0.0; 10], &[2, 5]);
    let flat = tensor(vec![0.0; 8], &[8]);
    let p2 = tensor(vec![1.0; 4], &[2, 2]);
    let ints = Tensor::from_vec(vec![0i64; 8], &[2, 4]).unwrap();
    let f32_boxes = b2.to_dtype(DType::F32).unwrap();
    let cfg = OverlapConfig::default();
    let lcfg = GiouLossConfig::default();
    let none = LossWeighting::NONE;
    let cases: Vec<(String, &str)> = vec![
        (
            err(giou_loss(&five, &b2, none, &lcfg)),
            "`pred`: expected shape [N, 4]",
        ),
        (
            err(giou_loss(&flat, &b2, none, &lcfg)),
            "`pred`: expected shape [N, 4]",
        ),
        (
            err(giou_loss(&b2, &b3, none, &lcfg)),
            "`target`: expected shape [2, 4] (one row per row of `pred`)",
        ),
        (err(giou_loss(&b2, &five, none, &lcfg)), "`target`"),
        (
            err(giou_loss(&ints, &b2, none, &lcfg)),
            "`pred`: expected dtype a float",
        ),
        (
            err(giou_loss(&b2, &f32_boxes, none, &lcfg)),
            "`target`: expected dtype f64, got f32",
        ),
        (
            err(iou_aligned(&b2, &b3, &cfg)),
            "`b`: expected shape [2, 4]",
        ),
        (err(box_iou(&b2, &five, &cfg)), "`b`: expected shape [M, 4]"),
        (err(box_iou(&flat, &b2, &cfg)), "`a`: expected shape [N, 4]"),
        (
            err(box_diou(&b2, &f32_boxes, &cfg)),
            "`b`: expected dtype f64, got f32",
        ),
        (
            err(distance2bbox(&p2, &five, None)),
            "`distances`: expected shape [N, 4]",
        ),
        (
            err(distance2bbox(&b2, &b2, None)),
            "`points`: expected shape [2, 2]",
        ),
        (
            err(distance2bbox(&tensor(vec![1.0; 6], &[3, 2]), &b2, None)),
            "`points`: expected shape [2, 2]",
        ),
        (
            err(distance2bbox(&p2.to_dtype(DType::F32).unwrap(), &b2, None)),
            "`points`: expected dtype f64",
        ),
        (
            err(bbox2distance(&p2, &flat, None, 0.1)),
            "`boxes`: expected shape [N, 4]",
        ),
        (
            err(bbox2distance(
                &tensor(vec![1.0; 2], &[1, 2]),
                &b2,
                None,
                0.1,
            )),
            "`points`: expected shape [2, 2]",
        ),
    ];
    for (got, want) in cases {
        assert!(got.contains(want), "expected `{want}` in `{got}`");
    }

    // Parameters.
    let bad_eps = OverlapConfig {
        eps: 0.0,
        ..OverlapConfig::default()
    };
    assert!(err(box_iou(&b2, &b2, &bad_eps)).contains("`eps`: must be finite and > 0, got 0"));
    let nan_eps = GiouLossConfig {
        eps: f64::NAN,
        ..GiouLossConfig::default()
    };
    assert!(err(giou_loss(&b2, &b2, none, &nan_eps)).contains("`eps`"));
    let bad_weight = GiouLossConfig {
        loss_weight: f64::INFINITY,
        ..GiouLossConfig::default()
    };
    assert!(err(giou_loss(&b2, &b2, none, &bad_weight)).contains("`loss_weight`"));
    let neg_avg = LossWeighting::new(None, Some(-1.0));
    assert!(
        err(giou_loss(&b2, &b2, neg_avg, &lcfg)).contains("`avg_factor`: must be finite and >= 0")
    );
    let sum = giou_cfg(Reduction::Sum, 1.0);
    assert!(err(giou_loss(
        &b2,
        &b2,
        LossWeighting::new(None, Some(2.0)),
        &sum
    ))
    .contains("reduction `sum`"));
    let plain = giou_cfg(Reduction::None, 1.0);
    assert!(err(giou_loss_fused(&b2, &b2, none, &plain, 1.0)).contains("`reduction`"));
    assert!(err(giou_loss_fused(&b2, &b2, none, &lcfg, f64::NAN)).contains("`grad_scale`"));
    let e = err(distance2bbox(&p2, &b2, Some((-1.0, 5.0))));
    assert!(e.contains("`max_shape`") && e.contains("(-1, 5)"), "{e}");
    assert!(err(distance2bbox(&p2, &b2, Some((1.0, f64::NAN)))).contains("`max_shape`"));
    assert!(err(bbox2distance(&p2, &b2, Some(0.05), 0.1)).contains("`max_dist`"));
    assert!(err(bbox2distance(&p2, &b2, Some(f64::INFINITY), 0.1)).contains("`max_dist`"));
    assert!(err(bbox2distance(&p2, &b2, None, -0.1)).contains("`eps`"));

    // Weights.
    let w3 = tensor(vec![1.0; 3], &[3]);
    let e = err(giou_loss(
        &b2,
        &b2,
        LossWeighting::new(Some(&w3), None),
        &lcfg,
    ));
    assert!(
        e.contains("`weight`: expected shape [2] (one weight per row of `pred`)"),
        "{e}"
    );
    let w_f32 = tensor(vec![1.0; 2], &[2]).to_dtype(DType::F32).unwrap();
    let e = err(giou_loss(
        &b2,
        &b2,
        LossWeighting::new(Some(&w_f32), None),
        &lcfg,
    ));
    assert!(e.contains("`weight`: expected dtype f64, got f32"), "{e}");

    // Upstream gradients.
    let e = err(giou_loss_backward(
        &tensor(vec![1.0; 2], &[2]),
        &b2,
        &b2,
        none,
        &lcfg,
    ));
    assert!(e.contains("`grad_out`: expected shape [] or [1]"), "{e}");
    let e = err(giou_loss_backward(
        &tensor(vec![1.0], &[]),
        &b2,
        &b2,
        none,
        &plain,
    ));
    assert!(
        e.contains("`grad_out`: expected shape [2] (one per row"),
        "{e}"
    );
    let g32 = tensor(vec![1.0], &[]).to_dtype(DType::F32).unwrap();
    assert!(err(giou_loss_backward(&g32, &b2, &b2, none, &lcfg))
        .contains("`grad_out`: expected dtype f64"));
    let e = err(distance2bbox_backward(
        &tensor(vec![1.0; 4], &[1, 4]),
        &p2,
        &b2,
        None,
    ));
    assert!(e.contains("`grad_out`: expected shape [2, 4]"), "{e}");
    let e = err(distance2bbox_backward(&f32_boxes, &p2, &b2, None));
    assert!(e.contains("`grad_out`: expected dtype f64"), "{e}");

    // Outputs of the `_into` entries.
    let mut wrong = tensor(vec![0.0; 3], &[3]);
    assert!(err(iou_aligned_into_helper(&b2, &mut wrong)).contains("`out`: expected shape [2]"));
    let mut wrong_dtype = tensor(vec![0.0; 4], &[2, 2]).to_dtype(DType::F32).unwrap();
    let e = err(box_overlaps_into(
        &b2,
        &b2,
        OverlapKind::Iou,
        &cfg,
        &mut wrong_dtype,
    ));
    assert!(e.contains("`out`: expected f64 on cpu"), "{e}");
    let mut grad = tensor(vec![0.0; 4], &[1, 4]);
    let e = err(giou_loss_fused_into(&b2, &b2, none, &lcfg, 1.0, &mut grad));
    assert!(e.contains("`grad`: expected shape [2, 4]"), "{e}");
}

fn iou_aligned_into_helper(b: &Tensor, out: &mut Tensor) -> Result<()> {
    overlaps_aligned_into(b, b, OverlapKind::Iou, &OverlapConfig::default(), out)
}

/// Half storage computes in f32 and rounds once: it equals the f32 result rounded to the storage dtype.
#[test]
fn half_storage_matches_f32_compute_on_cpu() {
    let rows = 64;
    let (p, t) = gradcheck_pairs(21, rows);
    let mut rng = Rng::new(2);
    let points: Vec<f64> = (0..2 * rows).map(|_| rng.uniform(0.0, 60.0)).collect();
    let d: Vec<f64> = (0..4 * rows).map(|_| rng.uniform(0.0, 20.0)).collect();
    for dtype in [DType::F16, DType::BF16] {
        // Inputs rounded to the half dtype once, then widened to f32 for the reference.
        let cast = |v: &[f64], shape: &[usize]| tensor(v.to_vec(), shape).to_dtype(dtype).unwrap();
        let wide = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let round = |t: Tensor| values(&t.to_dtype(dtype).unwrap());
        let (pred, target) = (cast(&p, &[rows, 4]), cast(&t, &[rows, 4]));
        let (pts, dist) = (cast(&points, &[rows, 2]), cast(&d, &[rows, 4]));
        let cfg = OverlapConfig::default();
        for kind in [OverlapKind::Iou, OverlapKind::Giou, OverlapKind::Diou] {
            let half = box_overlaps(&pred, &target, kind, &cfg).unwrap();
            assert_eq!(half.dtype(), dtype);
            let full = box_overlaps(&wide(&pred), &wide(&target), kind, &cfg).unwrap();
            assert_eq!(values(&half), round(full), "{dtype} {kind:?}");
        }
        let lcfg = giou_cfg(Reduction::None, 2.0);
        let half = giou_loss(&pred, &target, LossWeighting::NONE, &lcfg).unwrap();
        let full = giou_loss(&wide(&pred), &wide(&target), LossWeighting::NONE, &lcfg).unwrap();
        assert_eq!(values(&half), round(full), "{dtype} giou");
        let fused = giou_loss_fused(
            &pred,
            &target,
            LossWeighting::NONE,
            &GiouLossConfig::gfl(),
            1.0,
        )
        .unwrap();
        let full = giou_loss_fused(
            &wide(&pred),
            &wide(&target),
            LossWeighting::NONE,
            &GiouLossConfig::gfl(),
            1.0,
        )
        .unwrap();
        assert_eq!(values(&fused.grad), round(full.grad), "{dtype} giou grad");
        let half = distance2bbox(&pts, &dist, Some((50.0, 55.0))).unwrap();
        let full = distance2bbox(&wide(&pts), &wide(&dist), Some((50.0, 55.0))).unwrap();
        assert_eq!(values(&half), round(full), "{dtype} distance2bbox");
    }
}

#[test]
fn into_variants_write_the_same_values() {
    let rows = 7;
    let (p, t) = gradcheck_pairs(31, rows);
    let (pred, target) = (tensor(p, &[rows, 4]), tensor(t, &[rows, 4]));
    let cfg = OverlapConfig::default();
    let nan = |shape: &[usize]| tensor(vec![f64::NAN; shape.iter().product()], shape);
    let mut out = nan(&[rows, rows]);
    box_overlaps_into(&pred, &target, OverlapKind::Diou, &cfg, &mut out).unwrap();
    assert_eq!(
        values(&out),
        values(&box_diou(&pred, &target, &cfg).unwrap())
    );
    let mut out = nan(&[rows]);
    overlaps_aligned_into(&pred, &target, OverlapKind::Giou, &cfg, &mut out).unwrap();
    assert_eq!(
        values(&out),
        values(&giou_aligned(&pred, &target, &cfg).unwrap())
    );
    let lcfg = giou_cfg(Reduction::None, 1.0);
    let mut out = nan(&[rows]);
    giou_loss_into(&pred, &target, LossWeighting::NONE, &lcfg, &mut out).unwrap();
    assert_eq!(
        values(&out),
        values(&giou_loss(&pred, &target, LossWeighting::NONE, &lcfg).unwrap())
    );
    let g = tensor(vec![0.5; rows], &[rows]);
    let mut out = nan(&[rows, 4]);
    giou_loss_backward_into(&g, &pred, &target, LossWeighting::NONE, &lcfg, &mut out).unwrap();
    assert_eq!(
        values(&out),
        values(&giou_loss_backward(&g, &pred, &target, LossWeighting::NONE, &lcfg).unwrap())
    );
    let points = tensor((0..2 * rows).map(|i| i as f64).collect(), &[rows, 2]);
    let mut out = nan(&[rows, 4]);
    distance2bbox_into(&points, &pred, Some((5.0, 6.0)), &mut out).unwrap();
    assert_eq!(
        values(&out),
        values(&distance2bbox(&points, &pred, Some((5.0, 6.0))).unwrap())
    );
    let mut out = nan(&[rows, 4]);
    distance2bbox_backward_into(&target, &points, &pred, None, &mut out).unwrap();
    assert_eq!(
        values(&out),
        values(&distance2bbox_backward(&target, &points, &pred, None).unwrap())
    );
    let mut out = nan(&[rows, 4]);
    bbox2distance_into(&points, &target, Some(16.0), 0.1, &mut out).unwrap();
    assert_eq!(
        values(&out),
        values(&bbox2distance(&points, &target, Some(16.0), 0.1).unwrap())
    );
}

#[test]
fn config_defaults_are_the_official_values() {
    assert_eq!(GiouLossConfig::default().eps, 1e-6);
    assert_eq!(GiouLossConfig::default().reduction, Reduction::Mean);
    assert_eq!(GiouLossConfig::default().loss_weight, 1.0);
    assert_eq!(GiouLossConfig::gfl().loss_weight, 2.0);
    assert_eq!(OverlapConfig::default().eps, 1e-6);
    assert_eq!(OverlapConfig::default().diou_overlap, DiouOverlap::Union);
    assert_eq!(
        OverlapConfig::ld_repo().diou_overlap,
        DiouOverlap::FirstArea
    );
    assert_eq!(BBOX2DISTANCE_EPS, 0.1);
    for kind in [OverlapKind::Iou, OverlapKind::Giou, OverlapKind::Diou] {
        assert_eq!(OverlapKind::from_name(kind.name()), Some(kind));
    }
    for d in [DiouOverlap::Union, DiouOverlap::FirstArea] {
        assert_eq!(DiouOverlap::from_name(d.name()), Some(d));
    }
    assert_eq!(OverlapKind::from_name("iof"), None);
}
