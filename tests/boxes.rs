//! Box ops against their peer (mmdet's `bbox_overlaps`, `GIoULoss`, `distance2bbox`, `bbox2distance`
//! written in PyTorch; golden fixtures from scripts/make_fixtures_boxes.py, run through the `detkd parity`
//! runner) and CUDA against the CPU reference. GPU tests print `SKIP` without a driver and fail under
//! `DETKD_REQUIRE_GPU=1`.

use detkd::ops::boxes::{
    bbox2distance, bbox2distance_into, box_iou, box_overlaps, box_overlaps_into, distance2bbox,
    distance2bbox_backward_into, distance2bbox_into, giou_loss, giou_loss_backward_into,
    giou_loss_fused, giou_loss_fused_into, giou_loss_into, iou_aligned, overlaps_aligned_into,
    DiouOverlap, GiouLossConfig, LossWeighting, OverlapConfig, OverlapKind, Reduction,
};
use detkd::tensor::io::{self, NamedTensors};
use detkd::testing::{assert_close_nan, host, vals, Rng};
use detkd::{DType, Device, Tensor};

/// Every fixture, embedded so the test binary runs anywhere (e.g. carried to a GPU machine).
macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_bytes!(concat!("fixtures/boxes/", $name, ".safetensors")).as_slice())),*]
    };
}
const FIXTURES: [(&str, &[u8]); 24] = fixtures![
    "giou_mixed_mean",
    "giou_gfl_weighted_avg_factor",
    "giou_weighted_none",
    "giou_weighted_sum",
    "giou_small_boxes_eps",
    "giou_empty_mean",
    "giou_empty_avg_factor",
    "iou_aligned",
    "giou_aligned",
    "diou_aligned",
    "diou_aligned_first_area",
    "box_iou_atss",
    "box_giou_atss",
    "box_diou_atss",
    "box_diou_first_area",
    "box_iou_random",
    "box_iou_empty_rows",
    "box_diou_empty_cols",
    "distance2bbox_plain",
    "distance2bbox_max_shape",
    "distance2bbox_empty",
    "bbox2distance_gfl",
    "bbox2distance_plain",
    "bbox2distance_empty",
];

fn fixture(name: &str) -> NamedTensors {
    let bytes = FIXTURES.iter().find(|(n, _)| *n == name).unwrap().1;
    io::from_bytes(bytes).unwrap()
}

/// Runs the fixture's op with `dtype` on `device` and compares every result with the peer's
/// `expected.<result>` (the fused entry's `fused_*` results against the same values). Every expected
/// result must be produced.
fn check_fixture(name: &str, bytes: &[u8], dtype: DType, device: &Device, tol: f64) {
    let mut inputs = io::from_bytes(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    inputs.metadata.insert("dtype".into(), dtype.name().into());
    let results = detkd::parity::run(&inputs, device).unwrap_or_else(|e| panic!("{name}: {e}"));
    let expected: Vec<String> = inputs
        .tensors
        .keys()
        .filter_map(|k| k.strip_prefix("expected.").map(str::to_string))
        .collect();
    for key in &expected {
        assert!(
            results.tensors.contains_key(key),
            "{name}: no `{key}` result"
        );
    }
    for (key, got) in &results.tensors {
        let want = inputs
            .get(&format!("expected.{}", key.trim_start_matches("fused_")))
            .unwrap_or_else(|e| panic!("{name}/{key}: {e}"));
        assert_eq!(got.shape(), want.shape(), "{name}/{key}");
        assert_eq!(got.dtype(), dtype, "{name}/{key}");
        assert_close_nan(
            &format!("{name}/{key} ({dtype} on {device})"),
            &vals(got),
            &vals(want),
            tol,
        );
    }
}

#[test]
fn cpu_matches_peer_fixtures() {
    for (name, bytes) in FIXTURES {
        check_fixture(name, bytes, DType::F64, &Device::Cpu, 1e-12);
        check_fixture(name, bytes, DType::F32, &Device::Cpu, 1e-5);
        // Inputs are multiples of 1/4 below 64 (exact in half precision): only the f32 arithmetic and
        // the final rounding to the half dtype separate these from the f64 peer.
        check_fixture(name, bytes, DType::F16, &Device::Cpu, 1e-2);
        check_fixture(name, bytes, DType::BF16, &Device::Cpu, 1e-2);
    }
}

#[test]
fn fixtures_cover_the_required_cases() {
    let rows = |t: &Tensor| -> Vec<[f64; 4]> {
        vals(t)
            .chunks(4)
            .map(|c| [c[0], c[1], c[2], c[3]])
            .collect()
    };
    let mut giou_pairs = Vec::new();
    for (name, _) in FIXTURES
        .iter()
        .filter(|(n, _)| n.starts_with("giou_") && !n.contains("aligned"))
    {
        let f = fixture(name);
        giou_pairs.extend(
            rows(f.get("pred").unwrap())
                .into_iter()
                .zip(rows(f.get("target").unwrap())),
        );
    }
    let overlap = |p: &[f64; 4], g: &[f64; 4]| {
        (
            p[2].min(g[2]) - p[0].max(g[0]),
            p[3].min(g[3]) - p[1].max(g[1]),
        )
    };
    let area = |b: &[f64; 4]| (b[2] - b[0]) * (b[3] - b[1]);
    let any = |f: &dyn Fn(&[f64; 4], &[f64; 4]) -> bool| giou_pairs.iter().any(|(p, g)| f(p, g));
    assert!(any(&|p, g| p == g && area(p) > 0.0), "identical boxes");
    assert!(
        any(&|p, g| p[0] > g[0] && p[1] > g[1] && p[2] < g[2] && p[3] < g[3]),
        "pred nested in target"
    );
    assert!(
        any(&|p, g| p[0] < g[0] && p[1] < g[1] && p[2] > g[2] && p[3] > g[3]),
        "target nested in pred"
    );
    assert!(
        any(&|p, g| overlap(p, g).0 < 0.0 && overlap(p, g).1 < 0.0),
        "disjoint boxes"
    );
    assert!(
        any(&|p, g| overlap(p, g).0 == 0.0 && overlap(p, g).1 > 0.0),
        "touching edges"
    );
    assert!(
        any(&|p, g| (0..4).filter(|&k| p[k] == g[k]).count() == 1),
        "a single shared side"
    );
    assert!(any(&|p, _| area(p) == 0.0), "zero-area predictions");
    assert!(
        any(&|p, g| p == g && area(p) == 0.0),
        "identical zero-area boxes (U = C = 0)"
    );
    assert!(any(&|p, _| p[2] < p[0]), "a reversed prediction");
    let with = |key: &str| {
        FIXTURES
            .iter()
            .any(|(n, _)| fixture(n).metadata.contains_key(key))
    };
    let giou_with = |f: &dyn Fn(&NamedTensors) -> bool| {
        FIXTURES
            .iter()
            .filter(|(n, _)| fixture(n).metadata["op"] == "giou_loss")
            .any(|(n, _)| f(&fixture(n)))
    };
    assert!(
        giou_with(&|f| f.tensors.contains_key("weight")
            && f.metadata.contains_key("avg_factor")
            && f.metadata["reduction"] == "mean"),
        "weights + avg_factor"
    );
    for reduction in ["none", "mean", "sum"] {
        assert!(
            giou_with(&|f| f.metadata["reduction"] == reduction),
            "reduction {reduction}"
        );
    }
    assert!(giou_with(
        &|f| f.get("pred").unwrap().numel() == 0 && !f.metadata.contains_key("avg_factor")
    ));
    assert!(with("max_shape") && with("max_dist"));
    for mode in ["iou", "giou", "diou"] {
        for op in ["overlaps_aligned", "box_overlaps"] {
            assert!(
                FIXTURES.iter().any(|(n, _)| {
                    let m = &fixture(n).metadata;
                    m["op"] == op && m.get("mode").map(String::as_str) == Some(mode)
                }),
                "{op} {mode}"
            );
        }
    }
    assert!(FIXTURES.iter().any(|(n, _)| fixture(n)
        .metadata
        .get("diou_overlap")
        .map(String::as_str)
        == Some("first_area")));
    // distance2bbox: coordinates exactly on 0, W and H.
    let f = fixture("distance2bbox_max_shape");
    let out = vals(f.get("expected.output").unwrap());
    assert!(out.contains(&0.0) && out.contains(&48.0) && out.contains(&40.0));
    let f = fixture("bbox2distance_gfl");
    let out = vals(f.get("expected.output").unwrap());
    assert!(
        out.contains(&0.0) && out.contains(&15.9),
        "both ends of GFL's clamp"
    );
}

#[test]
fn parity_rejects_bad_metadata() {
    let mut inputs = fixture("giou_gfl_weighted_avg_factor");
    for (key, value, expected) in [
        (
            "reduction",
            "batchmean",
            "`reduction`: expected none, mean or sum",
        ),
        ("loss_weight", "two", "`loss_weight`: expected a float"),
        ("eps", "-1", "`eps`: must be finite and > 0"),
        ("op", "bbox_iou", "unknown op `bbox_iou`"),
    ] {
        let old = inputs.metadata.insert(key.into(), value.into());
        let err = detkd::parity::run(&inputs, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{key}={value}: {err}");
        match old {
            Some(v) => inputs.metadata.insert(key.into(), v),
            None => inputs.metadata.remove(key),
        };
    }
    inputs.tensors.remove("target");
    let err = detkd::parity::run(&inputs, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`target`"), "{err}");

    let mut inputs = fixture("box_diou_atss");
    for (key, value, expected) in [
        ("mode", "iof", "`mode`: expected iou, giou or diou"),
        (
            "diou_overlap",
            "anchor",
            "`diou_overlap`: expected union or first_area",
        ),
    ] {
        inputs.metadata.insert(key.into(), value.into());
        let err = detkd::parity::run(&inputs, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{key}={value}: {err}");
        inputs.metadata.remove(key);
    }
    let mut inputs = fixture("distance2bbox_max_shape");
    inputs.metadata.insert("max_shape".into(), "40".into());
    let err = detkd::parity::run(&inputs, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`max_shape`: expected two values H,W"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// CUDA vs CPU

fn wide(t: &Tensor) -> Tensor {
    t.to_dtype(DType::F64).unwrap()
}

/// `n` random boxes: corners anywhere in [-20, 120), sides in [0.5, 60), a few reversed ones.
fn random_boxes(rng: &mut Rng, n: usize) -> Vec<f64> {
    let mut v = Vec::with_capacity(4 * n);
    for _ in 0..n {
        let (x, y) = (rng.uniform(-20.0, 100.0), rng.uniform(-20.0, 100.0));
        let (w, h) = (rng.uniform(0.5, 60.0), rng.uniform(0.5, 60.0));
        if rng.below(50) == 0 {
            v.extend([x + w, y, x, y + h]);
        } else {
            v.extend([x, y, x + w, y + h]);
        }
    }
    v
}

/// Targets near the predictions (so overlaps are common): each jittered by up to ±40 %.
fn jittered(rng: &mut Rng, boxes: &[f64]) -> Vec<f64> {
    boxes
        .chunks(4)
        .flat_map(|b| {
            let (w, h) = ((b[2] - b[0]).abs(), (b[3] - b[1]).abs());
            let s = [w, h, w, h];
            let mut out = [0.0; 4];
            for k in 0..4 {
                out[k] = b[k] + rng.uniform(-0.4, 0.4) * s[k];
            }
            if out[2] < out[0] && b[2] >= b[0] {
                out.swap(0, 2);
            }
            if out[3] < out[1] && b[3] >= b[1] {
                out.swap(1, 3);
            }
            out
        })
        .collect()
}

fn nan_on(shape: &[usize], dtype: DType, gpu: &Device) -> Tensor {
    host(&vec![f64::NAN; shape.iter().product()], shape, dtype)
        .to_device(gpu)
        .unwrap()
}

struct Tol {
    dtype: DType,
    fwd: f64,
    bwd: f64,
}

impl Tol {
    #[track_caller]
    fn close(&self, what: &str, got: &Tensor, want: &Tensor, backward: bool) {
        assert_eq!(got.shape(), want.shape(), "{what}");
        assert_eq!(got.dtype(), self.dtype, "{what}");
        let tol = if backward { self.bwd } else { self.fwd };
        assert_close_nan(what, &vals(got), &vals(want), tol);
    }
}

#[test]
fn cuda_matches_cpu_on_random_shapes() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_matches_cpu_on_random_shapes") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    for seed in 0..12u64 {
        let mut rng = Rng::new(700 + seed);
        // Sizes straddle the 256-thread blocks and the 32 × 32 tiles.
        let n = [1, 31, 33, 255, 257, 1000, 3001][seed as usize % 7] + rng.below(5);
        let m = [1, 5, 30, 32, 33, 70][seed as usize % 6];
        let pred = random_boxes(&mut rng, n);
        let target = jittered(&mut rng, &pred);
        let cols = random_boxes(&mut rng, m);
        let points: Vec<f64> = (0..2 * n).map(|_| rng.uniform(0.0, 100.0)).collect();
        let distances: Vec<f64> = (0..4 * n).map(|_| rng.uniform(0.0, 40.0)).collect();
        let weight: Vec<f64> = (0..n).map(|_| rng.uniform(0.0, 2.0)).collect();
        let up_rows: Vec<f64> = (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let up_boxes: Vec<f64> = (0..4 * n).map(|_| rng.uniform(-1.0, 1.0)).collect();
        let g_value = rng.uniform(0.5, 1.5);
        for (dtype, fwd, bwd) in [
            (DType::F32, 1e-5, 1e-4),
            (DType::F16, 1e-2, 1e-2),
            (DType::BF16, 1e-2, 1e-2),
        ] {
            let tol = Tol { dtype, fwd, bwd };
            let what = |op: &str| format!("seed {seed} N={n} M={m} {dtype} {op}");
            let cpu = |v: &[f64], shape: &[usize]| host(v, shape, dtype);
            let on_gpu = |t: &Tensor| t.to_device(&gpu).unwrap();
            let (p, t, b) = (
                cpu(&pred, &[n, 4]),
                cpu(&target, &[n, 4]),
                cpu(&cols, &[m, 4]),
            );
            let (pts, dist) = (cpu(&points, &[n, 2]), cpu(&distances, &[n, 4]));
            let (w, g_rows, g_boxes) = (
                cpu(&weight, &[n]),
                cpu(&up_rows, &[n]),
                cpu(&up_boxes, &[n, 4]),
            );
            let (gp, gt, gb) = (on_gpu(&p), on_gpu(&t), on_gpu(&b));
            let (gpts, gdist, gw) = (on_gpu(&pts), on_gpu(&dist), on_gpu(&w));

            // distance2bbox / bbox2distance, outputs poisoned with NaN.
            for max_shape in [None, Some((80.0, 90.0))] {
                let mut out = nan_on(&[n, 4], dtype, &gpu);
                distance2bbox_into(&gpts, &gdist, max_shape, &mut out).unwrap();
                let want = distance2bbox(&wide(&pts), &wide(&dist), max_shape).unwrap();
                tol.close(&what("distance2bbox"), &out, &want, false);
                let mut grad = nan_on(&[n, 4], dtype, &gpu);
                distance2bbox_backward_into(&on_gpu(&g_boxes), &gpts, &gdist, max_shape, &mut grad)
                    .unwrap();
                let want = detkd::ops::boxes::distance2bbox_backward(
                    &wide(&g_boxes),
                    &wide(&pts),
                    &wide(&dist),
                    max_shape,
                )
                .unwrap();
                tol.close(&what("distance2bbox backward"), &grad, &want, true);
            }
            for max_dist in [None, Some(16.0)] {
                let mut out = nan_on(&[n, 4], dtype, &gpu);
                bbox2distance_into(&gpts, &gt, max_dist, 0.1, &mut out).unwrap();
                let want = bbox2distance(&wide(&pts), &wide(&t), max_dist, 0.1).unwrap();
                tol.close(&what("bbox2distance"), &out, &want, false);
            }

            // Overlaps, aligned and pairwise, every mode.
            for (kind, overlap) in [
                (OverlapKind::Iou, DiouOverlap::Union),
                (OverlapKind::Giou, DiouOverlap::Union),
                (OverlapKind::Diou, DiouOverlap::Union),
                (OverlapKind::Diou, DiouOverlap::FirstArea),
            ] {
                let cfg = OverlapConfig {
                    diou_overlap: overlap,
                    ..OverlapConfig::default()
                };
                let mut out = nan_on(&[n], dtype, &gpu);
                overlaps_aligned_into(&gp, &gt, kind, &cfg, &mut out).unwrap();
                let want =
                    detkd::ops::boxes::overlaps_aligned(&wide(&p), &wide(&t), kind, &cfg).unwrap();
                tol.close(
                    &what(&format!("aligned {kind:?} {overlap:?}")),
                    &out,
                    &want,
                    false,
                );
                let mut out = nan_on(&[n, m], dtype, &gpu);
                box_overlaps_into(&gp, &gb, kind, &cfg, &mut out).unwrap();
                let want = box_overlaps(&wide(&p), &wide(&b), kind, &cfg).unwrap();
                tol.close(
                    &what(&format!("pairwise {kind:?} {overlap:?}")),
                    &out,
                    &want,
                    false,
                );
            }

            // GIoU loss: forward, backward and fused, every reduction, with and without weights.
            for (reduction, avg) in [
                (Reduction::None, None),
                (Reduction::Sum, None),
                (Reduction::Mean, None),
                (Reduction::Mean, Some(0.3 * n as f64)),
            ] {
                for weighted in [false, true] {
                    let cfg = GiouLossConfig {
                        reduction,
                        loss_weight: 2.0,
                        ..GiouLossConfig::default()
                    };
                    let (ww, wg) = if weighted {
                        (Some(wide(&w)), Some(&gw))
                    } else {
                        (None, None)
                    };
                    let on_cpu = LossWeighting::new(ww.as_ref(), avg);
                    let on_dev = LossWeighting::new(wg, avg);
                    let label = what(&format!(
                        "giou {reduction:?} avg {avg:?} weighted {weighted}"
                    ));
                    let reduced = reduction != Reduction::None;
                    let loss_shape: &[usize] = if reduced { &[] } else { &[n] };
                    let mut loss = nan_on(loss_shape, dtype, &gpu);
                    giou_loss_into(&gp, &gt, on_dev, &cfg, &mut loss).unwrap();
                    let want = giou_loss(&wide(&p), &wide(&t), on_cpu, &cfg).unwrap();
                    tol.close(&format!("{label} loss"), &loss, &want, false);
                    let upstream = if reduced {
                        cpu(&[g_value], &[])
                    } else {
                        g_rows.try_clone().unwrap()
                    };
                    let mut grad = nan_on(&[n, 4], dtype, &gpu);
                    giou_loss_backward_into(&on_gpu(&upstream), &gp, &gt, on_dev, &cfg, &mut grad)
                        .unwrap();
                    let want = detkd::ops::boxes::giou_loss_backward(
                        &wide(&upstream),
                        &wide(&p),
                        &wide(&t),
                        on_cpu,
                        &cfg,
                    )
                    .unwrap();
                    tol.close(&format!("{label} grad"), &grad, &want, true);
                    if reduced {
                        let mut grad = nan_on(&[n, 4], dtype, &gpu);
                        let loss = giou_loss_fused_into(&gp, &gt, on_dev, &cfg, g_value, &mut grad)
                            .unwrap();
                        let want =
                            giou_loss_fused(&wide(&p), &wide(&t), on_cpu, &cfg, g_value).unwrap();
                        tol.close(&format!("{label} fused loss"), &loss, &want.loss, false);
                        tol.close(&format!("{label} fused grad"), &grad, &want.grad, true);
                    }
                }
            }
        }
    }
}

#[test]
fn cuda_reductions_are_bitwise_reproducible() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_reductions_are_bitwise_reproducible") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let n = 160_000; // 625 blocks of partial sums
    let mut rng = Rng::new(41);
    let pred = random_boxes(&mut rng, n);
    let target = jittered(&mut rng, &pred);
    let weight: Vec<f64> = (0..n).map(|_| rng.uniform(0.0, 1.0)).collect();
    let d = |v: &[f64], shape: &[usize]| host(v, shape, DType::F32).to_device(&gpu).unwrap();
    let (p, t, w) = (d(&pred, &[n, 4]), d(&target, &[n, 4]), d(&weight, &[n]));
    let bits = |t: &Tensor| -> Vec<u64> { vals(t).iter().map(|v| v.to_bits()).collect() };
    let cfg = GiouLossConfig::gfl();
    let run = || {
        let r = giou_loss_fused(
            &p,
            &t,
            LossWeighting::new(Some(&w), Some(1234.5)),
            &cfg,
            1.0,
        )
        .unwrap();
        let m = giou_loss(&p, &t, LossWeighting::NONE, &GiouLossConfig::default()).unwrap();
        (bits(&r.loss), bits(&r.grad), bits(&m))
    };
    let first = run();
    for _ in 0..3 {
        assert_eq!(first, run());
    }
}

#[test]
fn cuda_launch_loops_cover_large_inputs() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_launch_loops_cover_large_inputs") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(5);
    let cfg = OverlapConfig::default();
    // More rows than 65 535 row tiles of 32 (the y grid limit), and more columns than 65 535 column tiles.
    for (n, m) in [(65_535 * 32 + 77, 3), (2, 65_535 * 32 + 45)] {
        let a = host(&random_boxes(&mut rng, n), &[n, 4], DType::F32);
        let b = host(&random_boxes(&mut rng, m), &[m, 4], DType::F32);
        let mut out = nan_on(&[n, m], DType::F32, &gpu);
        box_overlaps_into(
            &a.to_device(&gpu).unwrap(),
            &b.to_device(&gpu).unwrap(),
            OverlapKind::Iou,
            &cfg,
            &mut out,
        )
        .unwrap();
        let want = box_iou(&a, &b, &cfg).unwrap();
        assert_close_nan(
            &format!("pairwise {n}x{m}"),
            &vals(&out),
            &vals(&want),
            1e-5,
        );
    }
    // More rows than 65 536 blocks × 256 threads: every thread of the element kernels loops again.
    let n = 65_536 * 256 + 123;
    let a = host(&random_boxes(&mut rng, n), &[n, 4], DType::F32);
    let b = host(&jittered(&mut rng, &vals(&a)), &[n, 4], DType::F32);
    let got = iou_aligned(
        &a.to_device(&gpu).unwrap(),
        &b.to_device(&gpu).unwrap(),
        &cfg,
    )
    .unwrap();
    assert_close_nan(
        "aligned large",
        &vals(&got),
        &vals(&iou_aligned(&a, &b, &cfg).unwrap()),
        1e-5,
    );
}

#[test]
fn cuda_matches_peer_fixtures() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_matches_peer_fixtures") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    for (name, bytes) in FIXTURES {
        check_fixture(name, bytes, DType::F32, &gpu, 1e-5);
        check_fixture(name, bytes, DType::F16, &gpu, 1e-2);
        check_fixture(name, bytes, DType::BF16, &gpu, 1e-2);
    }
}

#[test]
fn cuda_rejects_mixed_devices_and_bad_targets() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_rejects_mixed_devices_and_bad_targets") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let on_host = host(
        &[0.0, 0.0, 2.0, 2.0, 1.0, 1.0, 3.0, 4.0],
        &[2, 4],
        DType::F32,
    );
    let on_dev = on_host.to_device(&gpu).unwrap();
    let cfg = GiouLossConfig::default();
    let err = giou_loss(&on_dev, &on_host, LossWeighting::NONE, &cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`target`") && err.contains("cpu"), "{err}");
    let w = host(&[1.0, 1.0], &[2], DType::F32);
    let err = giou_loss(&on_dev, &on_dev, LossWeighting::new(Some(&w), None), &cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`weight`"), "{err}");
    let err = box_iou(&on_host, &on_dev, &OverlapConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("`b`"), "{err}");
    let pts = host(&[1.0, 1.0, 2.0, 2.0], &[2, 2], DType::F32);
    let err = distance2bbox(&pts, &on_dev, None).unwrap_err().to_string();
    assert!(err.contains("`points`"), "{err}");
    let mut out_host = host(&[0.0; 4], &[2, 2], DType::F32);
    let err = box_overlaps_into(
        &on_dev,
        &on_dev,
        OverlapKind::Iou,
        &OverlapConfig::default(),
        &mut out_host,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("`out`"), "{err}");
    // A non-finite target on the device is found on the host before any launch.
    let bad = host(
        &[0.0, 0.0, 2.0, 2.0, 1.0, f64::NAN, 3.0, 4.0],
        &[2, 4],
        DType::F32,
    )
    .to_device(&gpu)
    .unwrap();
    let err = giou_loss(&on_dev, &bad, LossWeighting::NONE, &cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("row 1, column 1 is NaN"), "{err}");
    // Empty inputs on the device: empty results, the documented reductions, no launch.
    let empty = Tensor::zeros(&[0, 4], DType::F32, &gpu).unwrap();
    assert_eq!(
        box_iou(&empty, &on_dev, &OverlapConfig::default())
            .unwrap()
            .shape(),
        &[0, 2]
    );
    let mean = giou_loss(&empty, &empty, LossWeighting::NONE, &cfg).unwrap();
    assert!(vals(&mean)[0].is_nan());
    let fused = giou_loss_fused(
        &empty,
        &empty,
        LossWeighting::new(None, Some(3.0)),
        &cfg,
        1.0,
    )
    .unwrap();
    assert_eq!(
        (vals(&fused.loss), fused.grad.shape()),
        (vec![0.0], &[0, 4][..])
    );
}
