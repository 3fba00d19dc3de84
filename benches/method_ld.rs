//! LD's loss forward + backward (`LdDistiller::compute`: flattening both heads, gathering the positives and
//! the valuable region, the three KL terms and their gradients to every student tensor) at
//! - TinyGFL sizes on the CPU: 8 images of 128×128 px, FPN P3–P5 (336 anchors each), 8 classes, 17 bins,
//!   4 boxes per image through ATSS;
//! - the paper's sizes on CUDA (when built with `--features cuda` and a device is present): GFLv1's P3–P7
//!   of an 800×1344 input (22 400 anchors per image), 80 classes, 17 bins, 2 images with 12 boxes each, and
//!   DESIGN.md's distribution-KL size, 20 000 positives × 4 sides × 17 bins (plus their 80 class logits),
//!   on one image.
//!
//! The LD repository's configuration (main LD + VLR LD + main KD) and mmdet's (main LD only), f32. The
//! region selection runs on the host each call, as in training.
//!
//! `cargo bench --bench method_ld -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use detkd::distill::ld::{HeadTensors, LdConfig, LdDistiller};
use detkd::distill::{Box4, DenseAssignment, ImageTargets};
use detkd::engine::assign::{assign_batch, AnchorLevel, AtssConfig, GFL_ANCHOR_SCALE};
use detkd::testing::Rng;
use detkd::{DType, Device, Tensor};

struct Problem {
    name: String,
    levels: Vec<(usize, usize, f64)>,
    classes: usize,
    batch: usize,
    assign: DenseAssignment,
}

fn assignment(
    levels: &[(usize, usize, f64)],
    images: &[Vec<Box4>],
    classes: usize,
) -> DenseAssignment {
    let levels: Vec<AnchorLevel> = levels
        .iter()
        .map(|&(height, width, stride)| AnchorLevel {
            height,
            width,
            stride,
        })
        .collect();
    let targets: Vec<ImageTargets> = images
        .iter()
        .map(|gts| ImageTargets {
            boxes: gts.clone(),
            labels: (0..gts.len()).map(|g| g % classes).collect(),
        })
        .collect();
    assign_batch(&targets, &levels, GFL_ANCHOR_SCALE, &AtssConfig::default()).unwrap()
}

fn random_boxes(rng: &mut Rng, n: usize, size: (f64, f64), sides: (f64, f64)) -> Vec<Box4> {
    (0..n)
        .map(|_| {
            let (w, h) = (rng.uniform(sides.0, sides.1), rng.uniform(sides.0, sides.1));
            let (x, y) = (rng.uniform(0.0, size.1 - w), rng.uniform(0.0, size.0 - h));
            [x, y, x + w, y + h]
        })
        .collect()
}

fn problems(rng: &mut Rng, device: &Device) -> Vec<Problem> {
    if device.is_cpu() {
        let levels = vec![(16, 16, 8.0), (8, 8, 16.0), (4, 4, 32.0)];
        let images: Vec<Vec<Box4>> = (0..8)
            .map(|_| random_boxes(rng, 4, (128.0, 128.0), (8.0, 64.0)))
            .collect();
        let assign = assignment(&levels, &images, 8);
        return vec![Problem {
            name: "tiny_gfl_b8".into(),
            levels,
            classes: 8,
            batch: 8,
            assign,
        }];
    }
    let levels = vec![
        (100, 168, 8.0),
        (50, 84, 16.0),
        (25, 42, 32.0),
        (13, 21, 64.0),
        (7, 11, 128.0),
    ];
    let images: Vec<Vec<Box4>> = (0..2)
        .map(|_| random_boxes(rng, 12, (800.0, 1344.0), (24.0, 480.0)))
        .collect();
    let coco = assignment(&levels, &images, 80);
    // 20 000 positives: a synthetic assignment over one image's anchors (the region comes from its boxes).
    let mut dense = assignment(&levels, &images[..1], 80);
    let a = dense.anchors_per_image;
    let mut picked: Vec<usize> = (0..a).collect();
    for i in (1..a).rev() {
        picked.swap(i, rng.below(i + 1));
    }
    picked.truncate(20_000);
    picked.sort_unstable();
    dense.positive_boxes = vec![images[0][0]; picked.len()];
    dense.positive_labels = (0..picked.len()).map(|i| i % 80).collect();
    dense.positives = picked;
    vec![
        Problem {
            name: "coco_b2".into(),
            levels: levels.clone(),
            classes: 80,
            batch: 2,
            assign: coco,
        },
        Problem {
            name: "coco_20000_positives".into(),
            levels,
            classes: 80,
            batch: 1,
            assign: dense,
        },
    ]
}

fn heads(rng: &mut Rng, p: &Problem, device: &Device) -> Vec<Tensor> {
    let mut out = Vec::new();
    for channels in [p.classes, 68] {
        for &(h, w, _) in &p.levels {
            let n = p.batch * channels * h * w;
            let v: Vec<f32> = (0..n).map(|_| (2.5 * rng.normal()) as f32).collect();
            out.push(
                Tensor::from_vec(v, &[p.batch, channels, h, w])
                    .unwrap()
                    .to_device(device)
                    .unwrap(),
            );
        }
    }
    out
}

fn devices() -> Vec<Device> {
    let mut out = vec![Device::Cpu];
    match detkd::cuda::probe() {
        Ok(dev) => out.push(Device::Cuda(dev)),
        Err(e) => eprintln!("method_ld bench: CUDA skipped: {e}"),
    }
    out
}

fn bench(c: &mut Criterion) {
    let mut rng = Rng::new(11);
    for device in devices() {
        let dev_name = if device.is_cpu() { "cpu" } else { "cuda" };
        for p in problems(&mut rng, &device) {
            let student = heads(&mut rng, &p, &device);
            let teacher = heads(&mut rng, &p, &device);
            assert_eq!(student[0].dtype(), DType::F32);
            let (s, t): (Vec<&Tensor>, Vec<&Tensor>) =
                (student.iter().collect(), teacher.iter().collect());
            let l = p.levels.len();
            let (sh, th) = (
                HeadTensors {
                    cls: &s[..l],
                    reg: &s[l..],
                },
                HeadTensors {
                    cls: &t[..l],
                    reg: &t[l..],
                },
            );
            let region =
                detkd::distill::ld::valuable_region(&p.assign, &LdConfig::default()).unwrap();
            eprintln!(
                "method_ld {}/{dev_name}: {} anchors per image, {} positives, {} region anchors",
                p.name,
                p.assign.anchors_per_image,
                p.assign.positives.len(),
                region.anchors.len()
            );
            let mut group = c.benchmark_group(format!("method_ld/{}/{dev_name}", p.name));
            group.sample_size(10);
            // The host part of VLR LD on its own (the same on either device).
            group.bench_function("valuable_region", |b| {
                b.iter(|| {
                    detkd::distill::ld::valuable_region(&p.assign, &LdConfig::default()).unwrap()
                })
            });
            for (cfg_name, cfg) in [
                ("ld_repo", LdConfig::default()),
                ("mmdet", LdConfig::mmdet()),
            ] {
                let ld = LdDistiller::new(cfg).unwrap();
                group.bench_function(BenchmarkId::new("forward_backward", cfg_name), |b| {
                    b.iter(|| {
                        let out = ld.compute(&sh, &th, &p.assign).unwrap();
                        device.synchronize().unwrap();
                        out
                    })
                });
            }
            group.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
