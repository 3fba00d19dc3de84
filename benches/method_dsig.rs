//! Dsig's loss, forward and backward together (the embedding entry `DsigDistiller::compute`: adapters,
//! RoIAlign of every node on both sides, node and edge losses, full-map feature MSE, and every gradient),
//! f32:
//!
//! - `method_dsig/cpu/tiny_gfl`: TinyGFL's sizes — 8 images of 128×128, P3–P5 (16², 8², 4²), student FPN
//!   32 → adapter → teacher 64, 8 classes, 1–6 GT boxes of 6–64 px per image and 3 background boxes per
//!   GT box (the default sampling), mmdet's level rule;
//! - `method_dsig/cuda/paper` (with `--features cuda` and a device): the official R50←R101 sizes — 2 images,
//!   P2–P5 of an 800×1344 input (200×336 … 25×42), 256 channels on both sides (no adapter), 80 classes,
//!   512 nodes per image (32 GT-sized foreground + 480 background), i.e. 1024 nodes × D = 256·7·7 = 12544,
//!   detectron2's level rule.
//!
//! `cargo bench --bench method_dsig -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, Criterion};
use detkd::distill::dsig::{DsigConfig, DsigDistiller, DsigNodes, NodeLevels};
use detkd::distill::{DetectorShape, ImageTargets};
use detkd::nn::ParamStore;
use detkd::ops::roi_align::LevelRule;
use detkd::testing::Rng;
use detkd::{Device, Tensor};

fn shape(width: usize, classes: usize) -> DetectorShape {
    DetectorShape {
        stage_channels: vec![width; 4],
        fpn_channels: width,
        num_classes: classes,
        reg_max: 16,
    }
}

fn normal(rng: &mut Rng, shape: &[usize], shift: f64, device: &Device) -> Tensor {
    let n = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| (rng.normal() + shift) as f32).collect();
    Tensor::from_vec(data, shape)
        .unwrap()
        .to_device(device)
        .unwrap()
}

fn random_boxes(rng: &mut Rng, n: usize, size: (f64, f64), image: (f64, f64)) -> Vec<[f64; 4]> {
    (0..n)
        .map(|_| {
            let (w, h) = (rng.uniform(size.0, size.1), rng.uniform(size.0, size.1));
            let (x, y) = (rng.uniform(0.0, image.1 - w), rng.uniform(0.0, image.0 - h));
            [x, y, x + w, y + h]
        })
        .collect()
}

struct Case {
    store: ParamStore,
    method: DsigDistiller,
    student: Vec<Tensor>,
    teacher: Vec<Tensor>,
    cls: Vec<Tensor>,
    strides: Vec<f64>,
    nodes: Vec<DsigNodes>,
}

fn tiny_gfl(device: &Device) -> Case {
    let mut store = ParamStore::new();
    let method = DsigDistiller::new(
        &mut store,
        &shape(32, 8),
        &shape(64, 8),
        3,
        DsigConfig::default(),
        1,
    )
    .unwrap();
    store.to_device(device).unwrap();
    let mut rng = Rng::new(2);
    let maps = [(16, 16), (8, 8), (4, 4)];
    let level = |rng: &mut Rng, c: usize, shift: f64| -> Vec<Tensor> {
        maps.iter()
            .map(|&(h, w)| normal(rng, &[8, c, h, w], shift, device))
            .collect()
    };
    let (student, teacher, cls) = (
        level(&mut rng, 32, 0.0),
        level(&mut rng, 64, 0.0),
        level(&mut rng, 8, -2.0),
    );
    let targets: Vec<ImageTargets> = (0..8)
        .map(|_| {
            let n = 1 + rng.below(6);
            ImageTargets {
                boxes: random_boxes(&mut rng, n, (6.0, 64.0), (128.0, 128.0)),
                labels: vec![0; n],
            }
        })
        .collect();
    let nodes = method.sample_nodes(&targets, (128, 128), 3);
    Case {
        store,
        method,
        student,
        teacher,
        cls,
        strides: vec![8.0, 16.0, 32.0],
        nodes,
    }
}

fn paper(device: &Device) -> Case {
    let mut store = ParamStore::new();
    let cfg = DsigConfig {
        levels: NodeLevels::Rule(LevelRule::Detectron2),
        ..DsigConfig::default()
    };
    let method =
        DsigDistiller::new(&mut store, &shape(256, 80), &shape(256, 80), 4, cfg, 1).unwrap();
    store.to_device(device).unwrap();
    let mut rng = Rng::new(4);
    let maps = [(200, 336), (100, 168), (50, 84), (25, 42)];
    let level = |rng: &mut Rng, c: usize, shift: f64| -> Vec<Tensor> {
        maps.iter()
            .map(|&(h, w)| normal(rng, &[2, c, h, w], shift, device))
            .collect()
    };
    let (student, teacher, cls) = (
        level(&mut rng, 256, 0.0),
        level(&mut rng, 256, 0.0),
        level(&mut rng, 80, -3.0),
    );
    let nodes = (0..2)
        .map(|_| DsigNodes {
            foreground: random_boxes(&mut rng, 32, (16.0, 400.0), (800.0, 1344.0)),
            background: random_boxes(&mut rng, 480, (16.0, 400.0), (800.0, 1344.0)),
        })
        .collect();
    Case {
        store,
        method,
        student,
        teacher,
        cls,
        strides: vec![4.0, 8.0, 16.0, 32.0],
        nodes,
    }
}

fn bench_case(c: &mut Criterion, name: &str, case: &Case, device: &Device) {
    let mut group = c.benchmark_group(name);
    group.sample_size(10);
    let s: Vec<&Tensor> = case.student.iter().collect();
    let t: Vec<&Tensor> = case.teacher.iter().collect();
    let k: Vec<&Tensor> = case.cls.iter().collect();
    group.bench_function("forward_backward", |b| {
        b.iter(|| {
            let out = case
                .method
                .compute(&case.store, &s, &t, &k, &case.strides, &case.nodes)
                .unwrap();
            device.synchronize().unwrap();
            out
        })
    });
    group.finish();
}

fn dsig(c: &mut Criterion) {
    bench_case(
        c,
        "method_dsig/cpu/tiny_gfl",
        &tiny_gfl(&Device::Cpu),
        &Device::Cpu,
    );
    match detkd::cuda::probe() {
        Ok(dev) => {
            let device = Device::Cuda(dev);
            bench_case(c, "method_dsig/cuda/tiny_gfl", &tiny_gfl(&device), &device);
            bench_case(c, "method_dsig/cuda/paper", &paper(&device), &device);
        }
        Err(e) => eprintln!("method_dsig bench: CUDA skipped: {e}"),
    }
}

criterion_group!(benches, dsig);
criterion_main!(benches);
