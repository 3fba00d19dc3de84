//! DRKD's loss, forward and backward together (the embedding entry `DrkdDistiller::compute`: GloRe units
//! on both sides of every level with training-mode BatchNorm, the instance relation modules, the 1×1
//! adapters, every gradient and the running-statistics updates), f32:
//!
//! - `method_drkd/cpu/tiny_gfl`: TinyGFL's sizes — 8 images of 128×128, P3–P5 (16², 8², 4²), student FPN 32,
//!   teacher 64 (GloRe mids 8/8/32 and 16/16/64), 1–6 GT boxes of 6–64 px per image;
//! - `method_drkd/cuda/paper` (with `--features cuda` and a device): the official sizes — 2 images, P2–P6
//!   of an 800×1344 input (200×336 … 13×21), 256 channels on both sides, GloRe `G(256, 64)` on P2, P3 and
//!   `G(256, 256)` on P4–P6, 10 GT boxes per image (relation modules of d = 2304);
//! - `method_drkd/cuda/glore_p2`: the pixel term of P2 alone (GloRe C = 256, 64 nodes, 128 states, L =
//!   200×336, batch 2, both sides).
//!
//! `cargo bench --bench method_drkd -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, Criterion};
use detkd::distill::drkd::{DrkdConfig, DrkdDistiller};
use detkd::distill::{Box4, DetectorShape};
use detkd::nn::{BufferUpdates, ParamStore};
use detkd::testing::Rng;
use detkd::{Device, Tensor};

fn shape(width: usize) -> DetectorShape {
    DetectorShape {
        stage_channels: vec![width; 4],
        fpn_channels: width,
        num_classes: 80,
        reg_max: 16,
    }
}

fn normal(rng: &mut Rng, shape: &[usize], device: &Device) -> Tensor {
    let n = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    Tensor::from_vec(data, shape)
        .unwrap()
        .to_device(device)
        .unwrap()
}

fn random_boxes(rng: &mut Rng, n: usize, size: (f64, f64), image: (f64, f64)) -> Vec<Box4> {
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
    method: DrkdDistiller,
    student: Vec<Tensor>,
    teacher: Vec<Tensor>,
    strides: Vec<f64>,
    boxes: Vec<Vec<Box4>>,
}

#[allow(clippy::too_many_arguments)]
fn case(
    device: &Device,
    cfg: DrkdConfig,
    widths: (usize, usize),
    batch: usize,
    maps: &[(usize, usize)],
    strides: &[f64],
    boxes: impl Fn(&mut Rng) -> Vec<Box4>,
) -> Case {
    let mut store = ParamStore::new();
    let method = DrkdDistiller::new(
        &mut store,
        &shape(widths.0),
        &shape(widths.1),
        maps.len(),
        cfg,
        1,
    )
    .unwrap();
    store.to_device(device).unwrap();
    let mut rng = Rng::new(2);
    let mut level = |c: usize| -> Vec<Tensor> {
        maps.iter()
            .map(|&(h, w)| normal(&mut rng, &[batch, c, h, w], device))
            .collect()
    };
    let (student, teacher) = (level(widths.0), level(widths.1));
    let boxes = (0..batch).map(|_| boxes(&mut rng)).collect();
    Case {
        store,
        method,
        student,
        teacher,
        strides: strides.to_vec(),
        boxes,
    }
}

fn bench_case(c: &mut Criterion, name: &str, case: &Case, device: &Device) {
    let mut group = c.benchmark_group(name);
    group.sample_size(10);
    let s: Vec<&Tensor> = case.student.iter().collect();
    let t: Vec<&Tensor> = case.teacher.iter().collect();
    group.bench_function("forward_backward", |b| {
        b.iter(|| {
            let mut updates = BufferUpdates::default();
            let out = case
                .method
                .compute(
                    &case.store,
                    &s,
                    &t,
                    &case.strides,
                    &case.boxes,
                    7,
                    &mut updates,
                )
                .unwrap();
            device.synchronize().unwrap();
            (out, updates)
        })
    });
    group.finish();
}

fn tiny_gfl(device: &Device) -> Case {
    case(
        device,
        DrkdConfig::default(),
        (32, 64),
        8,
        &[(16, 16), (8, 8), (4, 4)],
        &[8.0, 16.0, 32.0],
        |rng| {
            let n = 1 + rng.below(6);
            random_boxes(rng, n, (6.0, 64.0), (128.0, 128.0))
        },
    )
}

fn drkd(c: &mut Criterion) {
    bench_case(
        c,
        "method_drkd/cpu/tiny_gfl",
        &tiny_gfl(&Device::Cpu),
        &Device::Cpu,
    );
    let dev = match detkd::cuda::probe() {
        Ok(dev) => Device::Cuda(dev),
        Err(e) => {
            eprintln!("method_drkd bench: CUDA skipped: {e}");
            return;
        }
    };
    bench_case(c, "method_drkd/cuda/tiny_gfl", &tiny_gfl(&dev), &dev);
    let paper_maps = [(200, 336), (100, 168), (50, 84), (25, 42), (13, 21)];
    let paper = case(
        &dev,
        DrkdConfig::default(),
        (256, 256),
        2,
        &paper_maps,
        &[4.0, 8.0, 16.0, 32.0, 64.0],
        |rng| random_boxes(rng, 10, (16.0, 400.0), (800.0, 1344.0)),
    );
    bench_case(c, "method_drkd/cuda/paper", &paper, &dev);
    let glore_p2 = case(
        &dev,
        DrkdConfig {
            relation_weight: 0.0,
            foreground_weight: 0.0,
            ..DrkdConfig::default()
        },
        (256, 256),
        2,
        &paper_maps[..1],
        &[4.0],
        |_| Vec::new(),
    );
    bench_case(c, "method_drkd/cuda/glore_p2", &glore_p2, &dev);
}

criterion_group!(benches, drkd);
criterion_main!(benches);
