//! Gradchecks, validation and CPU dtype tests for RoIAlign. Peer fixtures and CUDA parity live in
//! tests/roi_align.rs.

use super::*;
use crate::autograd::{gradcheck, GradcheckOptions};
use crate::testing::{assert_close, Rng};

fn tensor(data: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(data, shape).unwrap()
}

fn cfg(output_size: (usize, usize), sampling_ratio: i32, aligned: bool) -> RoiAlignConfig {
    RoiAlignConfig {
        output_size,
        sampling_ratio,
        aligned,
        deterministic: false,
    }
}

/// Gradcheck of single-level RoIAlign with respect to the features at `rois`.
fn check_single(shape: [usize; 4], rois: Vec<f64>, scale: f64, cfg: &RoiAlignConfig, seed: u64) {
    let rois = tensor(rois.clone(), &[rois.len() / 5, 5]);
    let x = Rng::new(seed).normal_vec(shape.iter().product());
    let forward =
        |x: &[f64]| roi_align(&tensor(x.to_vec(), &shape), &rois, scale, cfg)?.to_vec::<f64>();
    let backward = |_: &[f64], g: &[f64]| {
        let out_shape = [
            rois.shape()[0],
            shape[1],
            cfg.output_size.0,
            cfg.output_size.1,
        ];
        roi_align_backward(&tensor(g.to_vec(), &out_shape), &rois, &shape, scale, cfg)?
            .to_vec::<f64>()
    };
    let report = gradcheck(forward, backward, &x, &GradcheckOptions::default())
        .unwrap_or_else(|e| panic!("{cfg:?}: {e}"));
    assert!(
        report.nonzero_entries > 0,
        "{cfg:?}: all-zero Jacobian proves nothing"
    );
}

#[test]
fn gradcheck_torchvision_reference_case() {
    // torchvision's own RoIAlign backward test: 1x8x5x5, pool 2x2, sampling 1, unaligned.
    let rois = vec![0., 0., 0., 4., 4., 0., 0., 2., 3., 4., 0., 2., 2., 4., 4.];
    for seed in 0..3 {
        check_single(
            [1, 8, 5, 5],
            rois.clone(),
            1.0,
            &cfg((2, 2), 1, false),
            seed,
        );
    }
}

#[test]
fn gradcheck_aligned_adaptive_and_fixed_sampling() {
    // Boxes partly outside, crossing the last row/column, and in the band between -1 and 0.
    let rois = vec![
        0., 1.3, 0.7, 13.9, 9.1, //
        1., -3.1, -2.2, 6.6, 5.4, //
        1., 12.2, 8.3, 23.7, 21.1, //
        0., -1.7, 3.3, 2.1, 7.9,
    ];
    check_single([2, 3, 6, 7], rois.clone(), 0.5, &cfg((3, 2), 0, true), 11);
    check_single([2, 3, 6, 7], rois.clone(), 0.5, &cfg((2, 3), 2, true), 12);
    check_single([2, 3, 6, 7], rois, 0.5, &cfg((3, 3), -1, false), 13);
}

#[test]
fn gradcheck_multilevel() {
    let levels = FpnLevels {
        spatial_scales: vec![1.0 / 16.0, 1.0 / 32.0, 1.0 / 64.0],
        rule: LevelRule::Mmdet,
    };
    let shapes: [[usize; 4]; 3] = [[2, 2, 8, 10], [2, 2, 4, 5], [2, 2, 2, 3]];
    let rois = tensor(
        vec![
            0., 3.1, 2.2, 40.4, 38.3, // ~37 px -> level 0 (below 112)
            1., 5.3, 4.1, 150.2, 130.7, // ~135 px -> level 1 ([112, 224))
            1., 1.5, 2.5, 250.5, 230.5, // ~238 px -> level 2 (>= 224)
            0., 10.2, 8.7, 79.9, 54.4,
        ],
        &[4, 5],
    );
    assert_eq!(assign_levels(&rois, &levels).unwrap(), vec![0, 1, 2, 0]);
    let sizes: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();
    let split = |x: &[f64]| -> Vec<Tensor> {
        let mut offset = 0;
        shapes
            .iter()
            .zip(&sizes)
            .map(|(s, &n)| {
                offset += n;
                tensor(x[offset - n..offset].to_vec(), s)
            })
            .collect()
    };
    let c = cfg((2, 2), 2, true);
    let forward = |x: &[f64]| {
        let f = split(x);
        let refs: Vec<&Tensor> = f.iter().collect();
        roi_align_multilevel(&refs, &rois, &levels, &c)?.to_vec::<f64>()
    };
    let backward = |_: &[f64], g: &[f64]| {
        let shape_refs: Vec<&[usize]> = shapes.iter().map(|s| &s[..]).collect();
        let grads = roi_align_multilevel_backward(
            &tensor(g.to_vec(), &[4, 2, 2, 2]),
            &rois,
            &shape_refs,
            &levels,
            &c,
        )?;
        let mut flat = Vec::new();
        for g in grads {
            flat.extend(g.to_vec::<f64>()?);
        }
        Ok(flat)
    };
    let x = Rng::new(5).normal_vec(sizes.iter().sum());
    let report = gradcheck(forward, backward, &x, &GradcheckOptions::default()).unwrap();
    assert!(report.nonzero_entries > 0);
}

#[test]
fn level_rules_match_their_formulas() {
    let d2 = [0.25, 0.125, 0.0625, 0.03125];
    // detectron2: 224 px is the canonical size of level 4 (= P4, index 2 from P2).
    assert_eq!(LevelRule::Detectron2.level_of([0., 0., 224., 224.], &d2), 2);
    assert_eq!(LevelRule::Detectron2.level_of([0., 0., 111., 111.], &d2), 0);
    assert_eq!(LevelRule::Detectron2.level_of([0., 0., 113., 113.], &d2), 1);
    assert_eq!(
        LevelRule::Detectron2.level_of([0., 0., 2000., 2000.], &d2),
        3
    );
    // mmdet: 56 px is the finest scale; 112 px goes one level up.
    assert_eq!(LevelRule::Mmdet.level_of([0., 0., 55., 55.], &d2), 0);
    assert_eq!(LevelRule::Mmdet.level_of([0., 0., 113., 113.], &d2), 1);
    assert_eq!(LevelRule::Mmdet.level_of([0., 0., 500., 500.], &d2), 3);
    // Degenerate and reversed boxes go to the finest level instead of producing NaN.
    assert_eq!(LevelRule::Mmdet.level_of([5., 5., 5., 9.], &d2), 0);
    assert_eq!(LevelRule::Detectron2.level_of([9., 5., 5., 9.], &d2), 0);
}

#[test]
fn half_storage_matches_f32_compute_on_cpu() {
    let mut rng = Rng::new(21);
    let shape = [2, 4, 9, 11];
    let x = rng.normal_vec(shape.iter().product());
    let rois = tensor(
        vec![0., 1.2, 2.3, 15.1, 13.4, 1., 4.4, 0.3, 20.8, 17.9],
        &[2, 5],
    );
    let c = RoiAlignConfig::default();
    let reference = roi_align(&tensor(x.clone(), &shape), &rois, 0.5, &c)
        .unwrap()
        .to_vec::<f64>()
        .unwrap();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let features = tensor(x.clone(), &shape).to_dtype(dtype).unwrap();
        let out = roi_align(&features, &rois, 0.5, &c).unwrap();
        assert_eq!(out.dtype(), dtype);
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
        assert_close(
            &format!("forward {dtype}"),
            &out.to_vec::<f64>().unwrap(),
            &reference,
            tol,
        );

        let g = Rng::new(22).normal_vec(out.numel());
        let want = roi_align_backward(&tensor(g.clone(), out.shape()), &rois, &shape, 0.5, &c)
            .unwrap()
            .to_vec::<f64>()
            .unwrap();
        let grad_out = tensor(g, out.shape()).to_dtype(dtype).unwrap();
        let got = roi_align_backward(&grad_out, &rois, &shape, 0.5, &c).unwrap();
        assert_eq!(got.dtype(), dtype);
        assert_close(
            &format!("backward {dtype}"),
            &got.to_vec::<f64>().unwrap(),
            &want,
            tol,
        );
    }
}

#[test]
fn empty_rois_give_empty_output_and_zero_gradient() {
    let features = tensor(vec![1.0; 2 * 3 * 4 * 4], &[2, 3, 4, 4]);
    let rois = tensor(vec![], &[0, 5]);
    let c = RoiAlignConfig::default();
    let out = roi_align(&features, &rois, 1.0, &c).unwrap();
    assert_eq!(out.shape(), &[0, 3, 7, 7]);
    let grad = roi_align_backward(&out, &rois, &[2, 3, 4, 4], 1.0, &c).unwrap();
    assert_eq!(grad.shape(), &[2, 3, 4, 4]);
    assert!(grad.to_vec::<f64>().unwrap().iter().all(|&v| v == 0.0));
}

#[test]
fn roi_align_into_checks_the_output_tensor() {
    let features = tensor(vec![1.0; 48], &[1, 3, 4, 4]);
    let rois = tensor(vec![0., 0., 0., 2., 2.], &[1, 5]);
    let c = cfg((2, 2), 2, true);
    let mut out = Tensor::zeros(&[1, 3, 2, 2], DType::F64, &Device::Cpu).unwrap();
    roi_align_into(&features, &rois, 1.0, &c, &mut out).unwrap();
    assert!(out
        .to_vec::<f64>()
        .unwrap()
        .iter()
        .all(|&v| (v - 1.0).abs() < 1e-12));
    let mut wrong_shape = Tensor::zeros(&[1, 3, 2, 3], DType::F64, &Device::Cpu).unwrap();
    let err = roi_align_into(&features, &rois, 1.0, &c, &mut wrong_shape).unwrap_err();
    assert!(err.to_string().contains("`out`"), "{err}");
    let mut wrong_dtype = Tensor::zeros(&[1, 3, 2, 2], DType::F32, &Device::Cpu).unwrap();
    let err = roi_align_into(&features, &rois, 1.0, &c, &mut wrong_dtype).unwrap_err();
    assert!(err.to_string().contains("expected f64"), "{err}");
}

/// Every validation rule, each with the substring its message must contain.
#[test]
fn bad_inputs_are_clear_errors() {
    let features = tensor(vec![0.5; 2 * 3 * 5 * 5], &[2, 3, 5, 5]);
    let good_rois = tensor(vec![1., 0.5, 0.5, 3.5, 3.5], &[1, 5]);
    let c = RoiAlignConfig::default();
    let run = |f: &Tensor, r: &Tensor, scale: f64, c: &RoiAlignConfig| {
        roi_align(f, r, scale, c).unwrap_err().to_string()
    };
    let rois = |v: Vec<f64>| tensor(v.clone(), &[v.len() / 5, 5]);
    let cases: Vec<(String, &str)> = vec![
        (
            run(&features, &rois(vec![2., 0., 0., 1., 1.]), 1.0, &c),
            "batch index must be an integer in [0, 2)",
        ),
        (
            run(&features, &rois(vec![-1., 0., 0., 1., 1.]), 1.0, &c),
            "batch index",
        ),
        (
            run(&features, &rois(vec![0.5, 0., 0., 1., 1.]), 1.0, &c),
            "batch index",
        ),
        (
            run(&features, &rois(vec![f64::NAN, 0., 0., 1., 1.]), 1.0, &c),
            "batch index",
        ),
        (
            run(&features, &rois(vec![0., f64::NAN, 0., 1., 1.]), 1.0, &c),
            "must be finite",
        ),
        (
            run(
                &features,
                &rois(vec![0., 0., f64::INFINITY, 1., 1.]),
                1.0,
                &c,
            ),
            "must be finite",
        ),
        (
            run(&features, &rois(vec![0., 0., 0., 1e30, 1.]), 1.0, &c),
            "exceeds",
        ),
        (
            run(&features, &tensor(vec![0.; 8], &[2, 4]), 1.0, &c),
            "`rois`: expected shape [K, 5]",
        ),
        (
            run(&features, &tensor(vec![0.; 5], &[5]), 1.0, &c),
            "`rois`: expected shape",
        ),
        (
            run(&tensor(vec![0.; 75], &[3, 5, 5]), &good_rois, 1.0, &c),
            "`features`: expected shape [N, C, H, W]",
        ),
        (
            run(&tensor(vec![], &[2, 3, 0, 5]), &good_rois, 1.0, &c),
            "H >= 1 and W >= 1",
        ),
        (run(&features, &good_rois, 0.0, &c), "spatial_scale"),
        (run(&features, &good_rois, f64::NAN, &c), "spatial_scale"),
        (
            run(&features, &good_rois, 1.0, &cfg((0, 7), 0, true)),
            "`output_size`",
        ),
    ];
    for (message, expected) in cases {
        assert!(
            message.contains(expected),
            "`{message}` does not mention `{expected}`"
        );
    }

    // Backward: grad_out shape must match [K, C, PH, PW].
    let err = roi_align_backward(
        &tensor(vec![0.; 3], &[3]),
        &good_rois,
        &[2, 3, 5, 5],
        1.0,
        &c,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("`grad_out`: expected shape [1, 3, 7, 7]"),
        "{err}"
    );

    // Multi-level: level count, scales per level, matching N and C, dtypes.
    let small = tensor(vec![0.5; 2 * 3 * 3 * 3], &[2, 3, 3, 3]);
    let levels = FpnLevels::p2_p5(LevelRule::Mmdet);
    let err = roi_align_multilevel(&[&features, &small], &good_rois, &levels, &c)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("one scale per feature map (2), got 4"),
        "{err}"
    );
    let two = FpnLevels {
        spatial_scales: vec![0.25, 0.125],
        rule: LevelRule::Mmdet,
    };
    let other_c = tensor(vec![0.5; 2 * 4 * 3 * 3], &[2, 4, 3, 3]);
    let err = roi_align_multilevel(&[&features, &other_c], &good_rois, &two, &c)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`features[1]`: expected shape [2, 3, H, W]"),
        "{err}"
    );
    let half = small.to_dtype(DType::F16).unwrap();
    let err = roi_align_multilevel(&[&features, &half], &good_rois, &two, &c)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`features[1]`: expected dtype f64, got f16"),
        "{err}"
    );
    let six: Vec<&Tensor> = vec![&features; 6];
    let six_levels = FpnLevels {
        spatial_scales: vec![1.0; 6],
        rule: LevelRule::Mmdet,
    };
    let err = roi_align_multilevel(&six, &good_rois, &six_levels, &c)
        .unwrap_err()
        .to_string();
    assert!(err.contains("1 to 5 feature maps, got 6"), "{err}");
}

#[test]
fn degenerate_boxes_are_defined_not_nan() {
    // Zero-size, reversed and one-side-reversed boxes: aligned gives no samples (zeros), unaligned clamps
    // to 1x1; nothing is NaN.
    let features = tensor(Rng::new(3).normal_vec(2 * 6 * 6), &[1, 2, 6, 6]);
    let boxes = vec![
        0., 2., 2., 2., 2., // zero area
        0., 3., 1., 3., 4., // zero width
        0., 4., 4., 1., 5., // x2 < x1 only
        0., 4., 4., 1., 1., // both reversed
    ];
    let rois = tensor(boxes, &[4, 5]);
    for aligned in [true, false] {
        for sampling in [0, 2] {
            let out = roi_align(&features, &rois, 1.0, &cfg((2, 2), sampling, aligned)).unwrap();
            let v = out.to_vec::<f64>().unwrap();
            assert!(
                v.iter().all(|x| x.is_finite()),
                "aligned={aligned} sampling={sampling}"
            );
            if aligned && sampling == 0 {
                assert!(
                    v.iter().all(|&x| x == 0.0),
                    "adaptive aligned degenerate boxes have no samples"
                );
            }
            if !aligned {
                assert!(
                    v.iter().any(|&x| x != 0.0),
                    "unaligned boxes are clamped to 1x1 and sample"
                );
            }
        }
    }
}
