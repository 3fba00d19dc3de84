//! GKD's loss, forward and backward through the embedding entry (`GkdDistiller::compute`: robustness
//! weights from the prototypes, adapters, masks, decoupled feature imitation, soft labels at the
//! positives, and all gradients), in f32:
//!
//! - paper size (CUDA only, when built with `--features cuda` and a device is present): Faster R-CNN's
//!   FPN of an 800×1344 input, 256 channels on P2–P6 (200×336 … 13×21), batch 2 (`samples_per_gpu=2`),
//!   Conv3×3 256→256 adapters, 80 classes, 7 GT boxes and 128 positives per image, 10 prototypes per
//!   class and level;
//! - TinyGFL size (CPU, and CUDA too): 128 px images, P3–P5 (16×16, 8×8, 4×4), student FPN 32 →
//!   teacher 64, 8 classes, batch 4.
//!
//! `cargo bench --bench method_gkd -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use detkd::distill::gkd::{GkdConfig, GkdDistiller, GkdInputs, GkdPrototypes, LevelPrototypes};
use detkd::distill::{DenseAssignment, DetectorShape, ImageTargets, StepContext};
use detkd::nn::ParamStore;
use detkd::testing::Rng;
use detkd::{Device, Tensor};

struct Shape {
    label: &'static str,
    batch: usize,
    side: (usize, usize),
    strides: Vec<f64>,
    student_width: usize,
    teacher_width: usize,
    classes: usize,
    boxes_per_image: usize,
    positives_per_image: usize,
}

fn paper() -> Shape {
    Shape {
        label: "paper_b2_fpn256_p2p6_800x1344",
        batch: 2,
        side: (800, 1344),
        strides: vec![4.0, 8.0, 16.0, 32.0, 64.0],
        student_width: 256,
        teacher_width: 256,
        classes: 80,
        boxes_per_image: 7,
        positives_per_image: 128,
    }
}

fn tiny(batch: usize) -> Shape {
    Shape {
        label: if batch == 4 {
            "tiny_gfl_b4_128px"
        } else {
            "tiny_gfl_b8_128px"
        },
        batch,
        side: (128, 128),
        strides: vec![8.0, 16.0, 32.0],
        student_width: 32,
        teacher_width: 64,
        classes: 8,
        boxes_per_image: 3,
        positives_per_image: 12,
    }
}

struct Problem {
    store: ParamStore,
    distiller: GkdDistiller,
    student: Vec<Tensor>,
    teacher: Vec<Tensor>,
    assign: DenseAssignment,
    strides: Vec<f64>,
}

fn uniform(rng: &mut Rng, shape: &[usize], device: &Device) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
    Tensor::from_vec(v, shape)
        .unwrap()
        .to_device(device)
        .unwrap()
}

fn problem(s: &Shape, device: &Device) -> Problem {
    let mut rng = Rng::new(1);
    // Map sizes as mmdet's FPN: ceil(side / stride) (P6 of 800 px is 13 rows).
    let sizes: Vec<(usize, usize)> = s
        .strides
        .iter()
        .map(|&st| {
            let st = st as usize;
            (s.side.0.div_ceil(st), s.side.1.div_ceil(st))
        })
        .collect();
    let (mut student, mut teacher) = (Vec::new(), Vec::new());
    for &(h, w) in &sizes {
        student.push(uniform(&mut rng, &[s.batch, s.student_width, h, w], device));
        teacher.push(uniform(&mut rng, &[s.batch, s.teacher_width, h, w], device));
    }
    for &(h, w) in &sizes {
        student.push(uniform(&mut rng, &[s.batch, s.classes, h, w], device));
        teacher.push(uniform(&mut rng, &[s.batch, s.classes, h, w], device));
    }
    let anchors: usize = sizes.iter().map(|(h, w)| h * w).sum();
    let (hh, ww) = (s.side.0 as f64, s.side.1 as f64);
    let mut images = Vec::new();
    let mut positives = Vec::new();
    for img in 0..s.batch {
        let mut t = ImageTargets::default();
        for _ in 0..s.boxes_per_image {
            let (bw, bh) = (rng.uniform(0.05, 0.5) * ww, rng.uniform(0.05, 0.5) * hh);
            let (x, y) = (rng.uniform(0.0, ww - bw), rng.uniform(0.0, hh - bh));
            t.boxes.push([x, y, x + bw, y + bh]);
            t.labels.push(rng.below(s.classes));
        }
        for _ in 0..s.positives_per_image {
            let g = rng.below(t.boxes.len());
            positives.push((img * anchors + rng.below(anchors), t.boxes[g], t.labels[g]));
        }
        images.push(t);
    }
    positives.sort_by_key(|p| p.0);
    positives.dedup_by_key(|p| p.0);
    let mut points = Vec::new();
    let mut strides = Vec::new();
    for (&(h, w), &st) in sizes.iter().zip(&s.strides) {
        for y in 0..h {
            for x in 0..w {
                points.push([(x as f64 + 0.5) * st, (y as f64 + 0.5) * st]);
                strides.push(st);
            }
        }
    }
    let assign = DenseAssignment {
        batch: s.batch,
        anchors_per_image: anchors,
        anchor_boxes: points
            .iter()
            .map(|p| [p[0] - 16.0, p[1] - 16.0, p[0] + 16.0, p[1] + 16.0])
            .collect(),
        points,
        strides,
        positives: positives.iter().map(|p| p.0).collect(),
        positive_boxes: positives.iter().map(|p| p.1).collect(),
        positive_labels: positives.iter().map(|p| p.2).collect(),
        thresholds: images.iter().map(|t| vec![0.2; t.boxes.len()]).collect(),
        images,
    };
    let shape = |c| DetectorShape {
        stage_channels: vec![],
        fpn_channels: c,
        num_classes: s.classes,
        reg_max: 16,
    };
    let mut store = ParamStore::new();
    let mut distiller = GkdDistiller::new(
        &mut store,
        &shape(s.student_width),
        &shape(s.teacher_width),
        s.strides.len(),
        GkdConfig::default(),
        2,
    )
    .unwrap();
    let levels = (0..s.strides.len())
        .map(|_| {
            let labels: Vec<i64> = (0..s.classes as i64).flat_map(|c| [c; 10]).collect();
            let k = labels.len();
            LevelPrototypes {
                student: Tensor::from_vec(
                    rng.normal_vec(k * s.student_width),
                    &[k, s.student_width],
                )
                .unwrap(),
                teacher: Tensor::from_vec(
                    rng.normal_vec(k * s.teacher_width),
                    &[k, s.teacher_width],
                )
                .unwrap(),
                labels: Tensor::from_vec(labels, &[k]).unwrap(),
                source_rows: (0..k).collect(),
            }
        })
        .collect();
    distiller
        .set_prototypes(GkdPrototypes {
            levels,
            num_classes: s.classes,
        })
        .unwrap();
    store.to_device(device).unwrap();
    Problem {
        store,
        distiller,
        student,
        teacher,
        assign,
        strides: s.strides.clone(),
    }
}

fn inputs<'a>(v: &'a [Tensor], strides: &[f64]) -> GkdInputs<'a> {
    let l = strides.len();
    GkdInputs {
        fpn: v[..l].iter().collect(),
        fpn_strides: strides.to_vec(),
        cls: v[l..].iter().collect(),
    }
}

fn bench(c: &mut Criterion) {
    let mut runs: Vec<(Device, Shape)> = vec![(Device::Cpu, tiny(4))];
    match detkd::cuda::probe() {
        Ok(dev) => {
            runs.push((Device::Cuda(dev.clone()), tiny(8)));
            runs.push((Device::Cuda(dev), paper()));
        }
        Err(e) => eprintln!("method_gkd bench: CUDA skipped: {e}"),
    }
    for (device, shape) in runs {
        let name = if device.is_cpu() { "cpu" } else { "cuda" };
        let mut group = c.benchmark_group(format!("gkd/{name}"));
        group.sample_size(10);
        let p = problem(&shape, &device);
        let ctx = StepContext {
            assignment: &p.assign,
            student_gfl: None,
            epoch: 0,
            num_epochs: 24,
            step_seed: 0,
            image_size: shape.side,
        };
        let (s, t) = (
            inputs(&p.student, &p.strides),
            inputs(&p.teacher, &p.strides),
        );
        group.bench_function(
            BenchmarkId::new("loss_forward_backward", shape.label),
            |b| {
                b.iter(|| {
                    let out = p.distiller.compute(&p.store, &s, &t, &ctx).unwrap();
                    device.synchronize().unwrap();
                    out.loss
                })
            },
        );
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
