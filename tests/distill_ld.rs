//! LD (src/distill/ld.rs) and GFL's loss (src/distill/gfl.rs) against PyTorch compositions of the official
//! formulas (golden fixtures from scripts/make_fixtures_ld.py, via the `detkd parity` runner), the engine
//! path (`Distiller::loss` with the student's GFL output) against the embedding entry, and CUDA against the
//! CPU reference at TinyGFL and COCO head sizes. GPU tests print `SKIP` without a driver and fail under
//! `DETKD_REQUIRE_GPU=1`.

use detkd::autograd::Tape;
use detkd::distill::gfl::{flatten_head, gfl_loss, GflLossConfig};
use detkd::distill::ld::{ld_terms, HeadTensors, LdConfig, LdDistiller};
use detkd::distill::{
    Box4, DenseAssignment, DetectorOutputs, Distiller, ImageTargets, StepContext,
};
use detkd::engine::assign::{assign_batch, AnchorLevel, AtssConfig, GFL_ANCHOR_SCALE};
use detkd::nn::{BufferUpdates, ParamStore};
use detkd::tensor::io::{self, NamedTensors};
use detkd::testing::{assert_close, Rng};
use detkd::{DType, Device, Tensor};

/// Every fixture, embedded so the test binary runs anywhere (e.g. carried to a GPU machine).
macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_bytes!(concat!("fixtures/methods/", $name, ".safetensors")).as_slice())),*]
    };
}
const LD_FIXTURES: [(&str, &[u8]); 5] = fixtures![
    "ld_repo_default",
    "ld_mmdet_reg_max_16",
    "ld_union_custom",
    "ld_second_image_empty",
    "ld_no_boxes",
];
const GFL_FIXTURES: [(&str, &[u8]); 5] = fixtures![
    "ld_gfl_two_images",
    "ld_gfl_reg_max_16",
    "ld_gfl_low_scores",
    "ld_gfl_second_image_empty",
    "ld_gfl_no_boxes",
];

/// The fixture where one image of two has no positives: mmdet's QFL divides by `Σ_i max(P_i, 1)` there,
/// detkd's `gfl_loss` by `max(Σ_i P_i, 1)`.
const GFL_EMPTY_IMAGE: &str = "ld_gfl_second_image_empty";

/// Runs `bytes` through the parity runner with `dtype`; returns the inputs and the results.
fn run_fixture(name: &str, bytes: &[u8], dtype: DType) -> (NamedTensors, NamedTensors) {
    let mut inputs = io::from_bytes(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    inputs.metadata.insert("dtype".into(), dtype.name().into());
    let results =
        detkd::parity::run(&inputs, &Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
    (inputs, results)
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().unwrap()
}

/// Compares every `expected.*` tensor of the fixture except those `skip` accepts; returns how many.
fn compare(
    name: &str,
    inputs: &NamedTensors,
    results: &NamedTensors,
    tol: f64,
    skip: impl Fn(&str) -> bool,
) -> usize {
    let mut compared = 0;
    for (key, want) in &inputs.tensors {
        let Some(result) = key.strip_prefix("expected.") else {
            continue;
        };
        if skip(result) {
            continue;
        }
        let got = results
            .get(result)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.shape(), want.shape(), "{name}/{result}");
        assert_close(
            &format!("{name}/{result}"),
            &values(got),
            &values(want),
            tol,
        );
        compared += 1;
    }
    compared
}

#[test]
fn ld_matches_the_pytorch_fixtures() {
    for (name, bytes) in LD_FIXTURES {
        for (dtype, tol) in [(DType::F64, 1e-10), (DType::F32, 1e-5)] {
            let (inputs, results) = run_fixture(name, bytes, dtype);
            let n = compare(name, &inputs, &results, tol, |_| false);
            // The loss, its terms and the gradients of 3 cls and 3 reg levels.
            let terms = inputs
                .tensors
                .keys()
                .filter(|k| k.starts_with("expected.loss_"))
                .count();
            assert_eq!(n, 1 + terms + 6, "{name}");
            // Nothing extra: every term detkd reports was checked.
            let reported = results
                .tensors
                .keys()
                .filter(|k| k.starts_with("loss_"))
                .count();
            assert_eq!(reported, terms, "{name}");
        }
    }
}

#[test]
fn the_ld_fixtures_are_not_trivial() {
    // Guards the fixture set itself: nonzero values for every term somewhere, and the two presets.
    let (inputs, _) = run_fixture("ld_repo_default", LD_FIXTURES[0].1, DType::F64);
    for term in ["loss_ld", "loss_ld_vlr", "loss_kd"] {
        let v = values(inputs.get(&format!("expected.{term}")).unwrap())[0];
        assert!(v > 0.0, "{term} = {v}");
    }
    let (inputs, _) = run_fixture("ld_mmdet_reg_max_16", LD_FIXTURES[1].1, DType::F64);
    assert!(inputs.get("expected.loss_ld_vlr").is_err() && inputs.get("expected.loss_kd").is_err());
    let (inputs, _) = run_fixture("ld_no_boxes", LD_FIXTURES[4].1, DType::F64);
    assert_eq!(values(inputs.get("expected.loss").unwrap()), [0.0]);
}

/// `max(Σ P_i, 1)` and `Σ_i max(P_i, 1)` of a fixture's assignment.
fn qfl_normalisers(inputs: &NamedTensors) -> (f64, f64) {
    let batch = inputs.get("cls.0").unwrap().shape()[0];
    let a = inputs.get("anchor_boxes").unwrap().shape()[0];
    let positives = values(inputs.get("positives").unwrap());
    let per_image: Vec<usize> = (0..batch)
        .map(|i| positives.iter().filter(|&&p| (p as usize) / a == i).count())
        .collect();
    let total: usize = per_image.iter().sum();
    (
        (total as f64).max(1.0),
        per_image
            .iter()
            .map(|&p| p.max(1) as f64)
            .sum::<f64>()
            .max(1.0),
    )
}

#[test]
fn gfl_loss_matches_mmdet_fixtures() {
    for (name, bytes) in GFL_FIXTURES {
        for (dtype, tol) in [(DType::F64, 1e-10), (DType::F32, 1e-5)] {
            let (inputs, results) = run_fixture(name, bytes, dtype);
            let n = compare(name, &inputs, &results, tol, |_| false);
            // 3 terms × (value + 6 gradients).
            assert_eq!(n, 21, "{name}");
        }
    }
    // The case with an image without positives tells mmdet's QFL normaliser Σ_i max(P_i, 1) from
    // max(Σ_i P_i, 1).
    let bytes = GFL_FIXTURES
        .iter()
        .find(|(n, _)| *n == GFL_EMPTY_IMAGE)
        .unwrap()
        .1;
    let (inputs, _) = run_fixture(GFL_EMPTY_IMAGE, bytes, DType::F64);
    let (total, mmdet) = qfl_normalisers(&inputs);
    assert!(total < mmdet, "{total} {mmdet}");
}

#[test]
fn the_gfl_fixtures_cover_the_normalisers() {
    // W < 1 (mmdet clamps it at 1) in one case, W > 1 in another; QFL reaches the class logits only, the
    // box terms the box logits only.
    let (inputs, results) = run_fixture("ld_gfl_low_scores", GFL_FIXTURES[2].1, DType::F64);
    let cls = values(inputs.get("cls.0").unwrap());
    assert!(cls.iter().all(|&x| x < -1.0), "scores must be low");
    for (term, input) in [
        ("loss_qfl", "reg"),
        ("loss_bbox", "cls"),
        ("loss_dfl", "cls"),
    ] {
        for l in 0..3 {
            let g = values(results.get(&format!("grad.{term}.{input}.{l}")).unwrap());
            assert!(g.iter().all(|&v| v == 0.0), "{term} reaches {input}.{l}");
        }
    }
}

// -------------------------------------------------------------------------------------------------------
// Random problems at detector sizes

struct Head {
    levels: Vec<(usize, usize, f64)>,
    classes: usize,
    reg_max: usize,
}

impl Head {
    /// TinyGFL: 128×128 px, FPN P3–P5, 8 classes, 17 bins.
    fn tiny_gfl() -> Head {
        Head {
            levels: vec![(16, 16, 8.0), (8, 8, 16.0), (4, 4, 32.0)],
            classes: 8,
            reg_max: 16,
        }
    }

    /// GFLv1 on COCO: P3–P7 of an 800×1344 input, 80 classes, 17 bins (22 400 anchors).
    fn coco() -> Head {
        Head {
            levels: vec![
                (100, 168, 8.0),
                (50, 84, 16.0),
                (25, 42, 32.0),
                (13, 21, 64.0),
                (7, 11, 128.0),
            ],
            classes: 80,
            reg_max: 16,
        }
    }
}

/// ATSS over `head`'s GFL anchors for `images` (boxes, labels).
fn assignment(head: &Head, images: &[(Vec<Box4>, Vec<usize>)]) -> DenseAssignment {
    let levels: Vec<AnchorLevel> = head
        .levels
        .iter()
        .map(|&(height, width, stride)| AnchorLevel {
            height,
            width,
            stride,
        })
        .collect();
    let targets: Vec<ImageTargets> = images
        .iter()
        .map(|(boxes, labels)| ImageTargets {
            boxes: boxes.clone(),
            labels: labels.clone(),
        })
        .collect();
    assign_batch(&targets, &levels, GFL_ANCHOR_SCALE, &AtssConfig::default()).unwrap()
}

/// Random boxes with sides in `[min, max]` px inside a `size` image.
fn random_images(
    rng: &mut Rng,
    batch: usize,
    per_image: usize,
    size: (f64, f64),
    sides: (f64, f64),
    classes: usize,
) -> Vec<(Vec<Box4>, Vec<usize>)> {
    (0..batch)
        .map(|_| {
            let boxes = (0..per_image)
                .map(|_| {
                    let (w, h) = (rng.uniform(sides.0, sides.1), rng.uniform(sides.0, sides.1));
                    let (x, y) = (rng.uniform(0.0, size.1 - w), rng.uniform(0.0, size.0 - h));
                    [x, y, x + w, y + h]
                })
                .collect();
            let labels = (0..per_image).map(|_| rng.below(classes)).collect();
            (boxes, labels)
        })
        .collect()
}

/// Student and teacher head outputs (f64 host tensors): `cls` levels then `reg` levels.
fn random_heads(rng: &mut Rng, head: &Head, batch: usize) -> (Vec<Tensor>, Vec<Tensor>) {
    let mut make = |scale: f64| -> Vec<Tensor> {
        let mut out = Vec::new();
        for channels in [head.classes, 4 * (head.reg_max + 1)] {
            for &(h, w, _) in &head.levels {
                let v: Vec<f64> = rng
                    .normal_vec(batch * channels * h * w)
                    .iter()
                    .map(|x| x * scale)
                    .collect();
                out.push(Tensor::from_vec(v, &[batch, channels, h, w]).unwrap());
            }
        }
        out
    };
    (make(2.5), make(2.5))
}

fn compute_on(
    cfg: &LdConfig,
    student: &[Tensor],
    teacher: &[Tensor],
    assign: &DenseAssignment,
    dtype: DType,
    device: &Device,
) -> detkd::distill::MethodGradients {
    let move_all = |v: &[Tensor]| -> Vec<Tensor> {
        v.iter()
            .map(|t| t.to_dtype(dtype).unwrap().to_device(device).unwrap())
            .collect()
    };
    let (s, t) = (move_all(student), move_all(teacher));
    let (sr, tr): (Vec<&Tensor>, Vec<&Tensor>) = (s.iter().collect(), t.iter().collect());
    let l = sr.len() / 2;
    let out = LdDistiller::new(cfg.clone())
        .unwrap()
        .compute(
            &HeadTensors {
                cls: &sr[..l],
                reg: &sr[l..],
            },
            &HeadTensors {
                cls: &tr[..l],
                reg: &tr[l..],
            },
            assign,
        )
        .unwrap();
    for (g, x) in out.student_grads.iter().zip(&s) {
        assert_eq!(
            (g.shape(), g.dtype(), g.device()),
            (x.shape(), dtype, device.clone())
        );
    }
    out
}

#[test]
fn the_engine_path_with_the_gfl_output_matches_the_embedding_entry() {
    let head = Head::tiny_gfl();
    let mut rng = Rng::new(31);
    let images = random_images(&mut rng, 2, 4, (128.0, 128.0), (12.0, 64.0), head.classes);
    let assign = assignment(&head, &images);
    assert!(!assign.positives.is_empty());
    let (student, teacher) = random_heads(&mut rng, &head, 2);
    let cfg = LdConfig::default();
    let embedded = compute_on(&cfg, &student, &teacher, &assign, DType::F64, &Device::Cpu);

    let tape = Tape::new();
    let store = ParamStore::new();
    let bound = store.bind(&tape);
    let leaves: Vec<_> = student
        .iter()
        .map(|t| tape.leaf(t.try_clone().unwrap()))
        .collect();
    let consts: Vec<_> = teacher
        .iter()
        .map(|t| tape.constant(t.try_clone().unwrap()))
        .collect();
    let outputs = |v: &[detkd::autograd::Var]| DetectorOutputs {
        stages: vec![],
        stage_strides: vec![],
        fpn: vec![],
        fpn_strides: vec![8.0, 16.0, 32.0],
        cls: v[..3].to_vec(),
        reg: v[3..].to_vec(),
    };
    let (s, t) = (outputs(&leaves), outputs(&consts));
    let (cls, reg) = flatten_head(&tape, &s).unwrap();
    let gfl = gfl_loss(&tape, cls, reg, &assign, &GflLossConfig::default()).unwrap();
    let ctx = StepContext {
        assignment: &assign,
        student_gfl: Some(&gfl),
        epoch: 0,
        num_epochs: 12,
        step_seed: 7,
        image_size: (128, 128),
    };
    let ld = LdDistiller::new(cfg.clone()).unwrap();
    let terms = ld
        .loss(&bound, &store, &s, &t, &ctx, &mut BufferUpdates::default())
        .unwrap();
    assert_eq!(ld.name(), "ld");
    let got: Vec<f64> = terms
        .iter()
        .map(|t| values(&tape.value(t.value).unwrap())[0])
        .collect();
    let want: Vec<f64> = embedded.terms.iter().map(|t| t.1).collect();
    assert_close("terms", &got, &want, 1e-13);
    let mut total = terms[0].value;
    for t in &terms[1..] {
        total = tape.add(total, t.value).unwrap();
    }
    let grads = tape.backward(total).unwrap();
    for (i, (&v, want)) in leaves.iter().zip(&embedded.student_grads).enumerate() {
        assert_close(
            &format!("grad {i}"),
            &values(grads.get(v).unwrap()),
            &values(want),
            1e-13,
        );
    }
    // The region is non-trivial at this size, and overlaps the positives (the repository does not exclude them).
    let region = detkd::distill::ld::valuable_region(&assign, &cfg).unwrap();
    assert!(
        region.anchors.len() > assign.positives.len(),
        "{}",
        region.anchors.len()
    );
    assert!(region.anchors.iter().any(|a| assign.positives.contains(a)));
    // ld_terms is the same function.
    let tape = Tape::new();
    let leaves: Vec<_> = student
        .iter()
        .map(|t| tape.leaf(t.try_clone().unwrap()))
        .collect();
    let consts: Vec<_> = teacher
        .iter()
        .map(|t| tape.constant(t.try_clone().unwrap()))
        .collect();
    let again = ld_terms(
        &tape,
        &outputs(&leaves),
        &outputs(&consts),
        &assign,
        None,
        &cfg,
    )
    .unwrap();
    assert_eq!(again.len(), 3);
}

/// CUDA (`dtype` storage) against the f32 CPU reference on the same inputs rounded to `dtype`.
fn check_parity(
    what: &str,
    cfg: &LdConfig,
    student: &[Tensor],
    teacher: &[Tensor],
    assign: &DenseAssignment,
    gpu: &Device,
) {
    for (dtype, fwd_tol, bwd_tol) in [
        (DType::F32, 1e-5, 1e-4),
        (DType::F16, 1e-2, 1e-2),
        (DType::BF16, 1e-2, 1e-2),
    ] {
        let round = |v: &[Tensor]| -> Vec<Tensor> {
            v.iter()
                .map(|t| t.to_dtype(dtype).unwrap().to_dtype(DType::F64).unwrap())
                .collect()
        };
        let (s, t) = (round(student), round(teacher));
        let reference = compute_on(cfg, &s, &t, assign, DType::F32, &Device::Cpu);
        let got = compute_on(cfg, &s, &t, assign, dtype, gpu);
        assert_eq!(got.terms.len(), reference.terms.len());
        for (g, w) in got.terms.iter().zip(&reference.terms) {
            assert_eq!(g.0, w.0);
            assert!(
                w.1 > 0.0,
                "{what}: {} is 0, the check would prove little",
                w.0
            );
            assert_close(&format!("{what} {dtype}: {}", g.0), &[g.1], &[w.1], fwd_tol);
        }
        assert_close(
            &format!("{what} {dtype}: loss"),
            &[got.loss],
            &[reference.loss],
            fwd_tol,
        );
        for (i, (g, w)) in got
            .student_grads
            .iter()
            .zip(&reference.student_grads)
            .enumerate()
        {
            assert_close(
                &format!("{what} {dtype}: grad {i}"),
                &values(g),
                &values(w),
                bwd_tol,
            );
        }
    }
}

#[test]
fn cuda_matches_cpu_at_tiny_gfl_sizes() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_matches_cpu_at_tiny_gfl_sizes") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let head = Head::tiny_gfl();
    let mut rng = Rng::new(41);
    let union = LdConfig {
        vlr_overlap: detkd::ops::boxes::OverlapConfig::default(),
        main_ld: detkd::distill::ld::KlTerm {
            weight: 0.5,
            temperature: 4.0,
        },
        ..LdConfig::default()
    };
    for (case, cfg) in [LdConfig::default(), LdConfig::mmdet(), union]
        .iter()
        .enumerate()
    {
        let batch = 2 + case;
        let images = random_images(
            &mut rng,
            batch,
            3 + case,
            (128.0, 128.0),
            (8.0, 64.0),
            head.classes,
        );
        let assign = assignment(&head, &images);
        assert!(!assign.positives.is_empty());
        let (student, teacher) = random_heads(&mut rng, &head, batch);
        check_parity(
            &format!("TinyGFL case {case}"),
            cfg,
            &student,
            &teacher,
            &assign,
            &gpu,
        );
    }
}

#[test]
fn cuda_matches_cpu_at_coco_sizes() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_matches_cpu_at_coco_sizes") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let head = Head::coco();
    let mut rng = Rng::new(42);
    let images = random_images(
        &mut rng,
        2,
        12,
        (800.0, 1344.0),
        (24.0, 480.0),
        head.classes,
    );
    let assign = assignment(&head, &images);
    let region = detkd::distill::ld::valuable_region(&assign, &LdConfig::default()).unwrap();
    assert!(assign.positives.len() > 50 && region.anchors.len() > 100);
    let (student, teacher) = random_heads(&mut rng, &head, 2);
    check_parity(
        "COCO",
        &LdConfig::default(),
        &student,
        &teacher,
        &assign,
        &gpu,
    );
}

#[test]
fn parity_rejects_bad_keys_and_indices() {
    let bytes = LD_FIXTURES[0].1;
    let run = |edit: &dyn Fn(&mut NamedTensors)| -> String {
        let mut inputs = io::from_bytes(bytes).unwrap();
        edit(&mut inputs);
        detkd::parity::run(&inputs, &Device::Cpu)
            .unwrap_err()
            .to_string()
    };
    let e = run(&|i| {
        i.metadata.insert("preset".into(), "paper".into());
    });
    assert!(e.contains("preset") && e.contains("paper"), "{e}");
    let e = run(&|i| {
        i.metadata.insert("vlr_overlap".into(), "giou".into());
    });
    assert!(e.contains("vlr_overlap"), "{e}");
    let e = run(&|i| {
        let p = i.tensors["positives"].to_vec::<f64>().unwrap();
        let mut p: Vec<f64> = p;
        p[0] += 0.5;
        let n = p.len();
        i.tensors
            .insert("positives".into(), Tensor::from_vec(p, &[n]).unwrap());
    });
    assert!(e.contains("positives") && e.contains("integer"), "{e}");
    let e = run(&|i| {
        i.tensors.remove("teacher.reg.2");
    });
    assert!(e.contains("teacher.reg"), "{e}");
    let e = run(&|i| {
        i.metadata.insert("kd_temperature".into(), "-1".into());
    });
    assert!(e.contains("main_kd.temperature"), "{e}");
}
