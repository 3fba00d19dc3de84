//! Dsig against PyTorch (golden fixtures from scripts/make_fixtures_dsig.py, run through the `detkd parity`
//! runner) and on CUDA against the CPU reference at TinyGFL's sizes. GPU tests print `SKIP` without a
//! driver and fail under `DETKD_REQUIRE_GPU=1`.

use detkd::distill::dsig::{DsigConfig, DsigDistiller, DsigNodes, NodeLevels};
use detkd::distill::{DetectorShape, ImageTargets, MethodGradients};
use detkd::nn::ParamStore;
use detkd::tensor::io;
use detkd::testing::{assert_close, Rng};
use detkd::{DType, Device, Tensor};

macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_bytes!(concat!("fixtures/methods/", $name, ".safetensors")).as_slice())),*]
    };
}
const FIXTURES: [(&str, &[u8]); 3] = fixtures!["dsig_default", "dsig_canonical", "dsig_retinanet"];

/// Runs the fixture through the parity runner with `dtype` and compares every result with PyTorch's.
fn check_fixture(name: &str, bytes: &[u8], dtype: DType, tol: f64) {
    let mut inputs = io::from_bytes(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    inputs.metadata.insert("dtype".into(), dtype.name().into());
    let results =
        detkd::parity::run(&inputs, &Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
    let expected: Vec<&String> = inputs
        .tensors
        .keys()
        .filter(|k| k.starts_with("expected."))
        .collect();
    let mut got_names: Vec<&String> = results.tensors.keys().collect();
    got_names.sort();
    let mut want_names: Vec<String> = expected
        .iter()
        .map(|k| k["expected.".len()..].to_string())
        .collect();
    want_names.sort();
    assert_eq!(
        got_names.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        want_names.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "{name}: result names"
    );
    for key in expected {
        let result_name = &key["expected.".len()..];
        let got = results.get(result_name).unwrap();
        let want = inputs.get(key).unwrap();
        assert_eq!(got.shape(), want.shape(), "{name}/{result_name}");
        assert_close(
            &format!("{name}/{result_name} ({dtype})"),
            &got.to_vec::<f64>().unwrap(),
            &want.to_vec::<f64>().unwrap(),
            tol,
        );
    }
}

#[test]
fn cpu_matches_pytorch_fixtures() {
    for (name, bytes) in FIXTURES {
        check_fixture(name, bytes, DType::F64, 1e-10);
        check_fixture(name, bytes, DType::F32, 1e-4);
    }
}

#[test]
fn fixtures_cover_the_configurations() {
    let get =
        |name: &str| io::from_bytes(FIXTURES.iter().find(|(n, _)| *n == name).unwrap().1).unwrap();
    let default = get("dsig_default");
    assert_eq!(default.metadata["levels"], "mmdet");
    assert!(default
        .tensors
        .contains_key("param.distill.dsig.adapter.2.bias"));
    assert!(default.tensors.contains_key("expected.term.loss_dsig_edge"));
    let canonical = get("dsig_canonical");
    assert_eq!(canonical.metadata["levels"], "canonical:12");
    // An image without nodes (the third) is part of the batch.
    assert_eq!(canonical.get("student.fpn.0").unwrap().shape()[0], 3);
    let retina = get("dsig_retinanet");
    assert!(!retina.tensors.keys().any(|k| k.starts_with("param.")));
    assert!(!retina.tensors.contains_key("nodes.bg"));
    assert!(!retina
        .tensors
        .contains_key("expected.term.loss_dsig_node_bg"));
}

#[test]
fn parity_rejects_bad_metadata_and_parameters() {
    let (_, bytes) = FIXTURES[0];
    let base = io::from_bytes(bytes).unwrap();
    let run = |inputs: &io::NamedTensors| {
        detkd::parity::run(inputs, &Device::Cpu)
            .unwrap_err()
            .to_string()
    };
    let mut bad = io::from_bytes(bytes).unwrap();
    bad.metadata.insert("levels".into(), "fpn".into());
    assert!(run(&bad).contains("`levels`"), "{}", run(&bad));
    let mut bad = io::from_bytes(bytes).unwrap();
    bad.metadata.insert("edge_weight".into(), "heavy".into());
    assert!(run(&bad).contains("`edge_weight`: expected a float"));
    let mut bad = io::from_bytes(bytes).unwrap();
    bad.tensors.remove("param.distill.dsig.adapter.1.weight");
    assert!(run(&bad).contains("file does not"), "{}", run(&bad));
    let mut bad = io::from_bytes(bytes).unwrap();
    let extra = base
        .get("param.distill.dsig.adapter.0.bias")
        .unwrap()
        .try_clone()
        .unwrap();
    bad.tensors
        .insert("param.distill.dsig.adapter.9.bias".into(), extra);
    assert!(run(&bad).contains("no such parameter"), "{}", run(&bad));
    let mut bad = io::from_bytes(bytes).unwrap();
    let rows = Tensor::from_vec(vec![5.0f64, 1.0, 1.0, 9.0, 9.0], &[1, 5]).unwrap();
    bad.tensors.insert("nodes.fg".into(), rows);
    assert!(run(&bad).contains("image index 5"), "{}", run(&bad));
    let mut bad = io::from_bytes(bytes).unwrap();
    bad.tensors.remove("teacher.cls.1");
    assert!(run(&bad).contains("teacher_cls"), "{}", run(&bad));
}

// ---------------------------------------------------------------------------------------------------------
// CUDA vs CPU

fn shape(width: usize) -> DetectorShape {
    DetectorShape {
        stage_channels: vec![width; 4],
        fpn_channels: width,
        num_classes: 8,
        reg_max: 16,
    }
}

/// TinyGFL's sizes: 4 images of 128×128, P3–P5 (16², 8², 4²), student FPN 32, teacher 64, 8 classes;
/// 1–6 GT boxes of 6–64 px per image, background sampled as in training.
struct Batch {
    student: Vec<Tensor>,
    teacher: Vec<Tensor>,
    cls: Vec<Tensor>,
    nodes: Vec<DsigNodes>,
}

fn tiny_gfl_batch(d: &DsigDistiller, seed: u64) -> Batch {
    let mut rng = Rng::new(seed);
    let maps = [(16, 16), (8, 8), (4, 4)];
    let mut make = |c: usize, scale: f64, shift: f64| -> Vec<Tensor> {
        maps.iter()
            .map(|&(h, w)| {
                let v: Vec<f32> = rng
                    .normal_vec(4 * c * h * w)
                    .into_iter()
                    .map(|x| (x * scale + shift) as f32)
                    .collect();
                Tensor::from_vec(v, &[4, c, h, w]).unwrap()
            })
            .collect()
    };
    let student = make(32, 1.0, 0.0);
    let teacher = make(64, 1.0, 0.0);
    let cls = make(8, 1.5, -2.0);
    let targets: Vec<ImageTargets> = (0..4)
        .map(|_| {
            let n = 1 + rng.below(6);
            let boxes = (0..n)
                .map(|_| {
                    let (w, h) = (rng.uniform(6.0, 64.0), rng.uniform(6.0, 64.0));
                    let (x, y) = (rng.uniform(0.0, 128.0 - w), rng.uniform(0.0, 128.0 - h));
                    [x, y, x + w, y + h]
                })
                .collect();
            ImageTargets {
                boxes,
                labels: vec![0; n],
            }
        })
        .collect();
    let nodes = d.sample_nodes(&targets, (128, 128), seed);
    Batch {
        student,
        teacher,
        cls,
        nodes,
    }
}

fn compute_on(
    d: &DsigDistiller,
    store: &ParamStore,
    batch: &Batch,
    device: &Device,
    dtype: DType,
) -> MethodGradients {
    let move_all = |ts: &[Tensor]| -> Vec<Tensor> {
        ts.iter()
            .map(|t| t.to_dtype(dtype).unwrap().to_device(device).unwrap())
            .collect()
    };
    let (s, t, c) = (
        move_all(&batch.student),
        move_all(&batch.teacher),
        move_all(&batch.cls),
    );
    d.compute(
        store,
        &s.iter().collect::<Vec<_>>(),
        &t.iter().collect::<Vec<_>>(),
        &c.iter().collect::<Vec<_>>(),
        &[8.0, 16.0, 32.0],
        &batch.nodes,
    )
    .unwrap()
}

/// Runs Dsig at TinyGFL's sizes in f32 on `device` and compares it with the f64 CPU reference on the same
/// (f32-rounded) inputs: loss and terms within 1e-5, gradients within 1e-4 (relative to the largest).
fn check_against_f64_cpu(device: &Device) {
    for (case, cfg) in [
        DsigConfig::default(),
        DsigConfig {
            levels: NodeLevels::Canonical(16.0),
            ..DsigConfig::default()
        },
    ]
    .into_iter()
    .enumerate()
    {
        let mut cpu_store = ParamStore::new();
        let d =
            DsigDistiller::new(&mut cpu_store, &shape(32), &shape(64), 3, cfg.clone(), 3).unwrap();
        let batch = tiny_gfl_batch(&d, 100 + case as u64);
        assert!(batch
            .nodes
            .iter()
            .all(|n| !n.foreground.is_empty() && !n.background.is_empty()));
        let mut store = ParamStore::new();
        DsigDistiller::new(&mut store, &shape(32), &shape(64), 3, cfg, 3).unwrap();
        store.to_device(device).unwrap();
        cpu_store.to_dtype(DType::F64).unwrap();

        let want = compute_on(&d, &cpu_store, &batch, &Device::Cpu, DType::F64);
        let got = compute_on(&d, &store, &batch, device, DType::F32);
        let what = |s: &str| format!("case {case} on {device}: {s}");
        assert_close(&what("loss"), &[got.loss], &[want.loss], 1e-5);
        assert_eq!(got.terms.len(), 4);
        for ((name, g), (_, w)) in got.terms.iter().zip(&want.terms) {
            assert!(*w > 0.0, "{name}");
            assert_close(&what(name), &[*g], &[*w], 1e-5);
        }
        for (l, (g, w)) in got
            .student_grads
            .iter()
            .zip(&want.student_grads)
            .enumerate()
        {
            assert_eq!(g.device(), *device);
            assert_close(
                &what(&format!("grad fpn {l}")),
                &g.to_vec::<f64>().unwrap(),
                &w.to_vec::<f64>().unwrap(),
                1e-4,
            );
        }
        assert_eq!(got.param_grads.len(), 6);
        assert_eq!(got.param_grads.len(), want.param_grads.len());
        for ((id, g), (_, w)) in got.param_grads.iter().zip(&want.param_grads) {
            assert_close(
                &what(cpu_store.name(*id)),
                &g.to_vec::<f64>().unwrap(),
                &w.to_vec::<f64>().unwrap(),
                1e-4,
            );
        }
    }
}

#[test]
fn cpu_f32_matches_f64_at_tiny_gfl_sizes() {
    check_against_f64_cpu(&Device::Cpu);
}

#[test]
fn cuda_matches_cpu_at_tiny_gfl_sizes() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_matches_cpu_at_tiny_gfl_sizes") else {
        return;
    };
    check_against_f64_cpu(&Device::Cuda(gpu));
}
