//! GKD through its embedding API, on the CPU: a TinyGFL teacher and student (random weights) on random
//! 128 px images; the prototypes are generated from a small "training set" (the step the engine runs
//! before every epoch), then one batch's loss terms and gradients are computed.
//!
//! `cargo run --release --example gkd`

use detkd::autograd::Tape;
use detkd::distill::gkd::{
    box_gap_features, pgm_sample, GkdConfig, GkdDistiller, GkdInputs, GkdPrototypeCollector,
};
use detkd::distill::{DenseAssignment, DetectorShape, ImageTargets, StepContext};
use detkd::engine::assign::{anchors, atss_assign, AnchorLevel, AtssConfig, GFL_ANCHOR_SCALE};
use detkd::engine::model::{TinyGfl, TinyGflConfig};
use detkd::nn::ParamStore;
use detkd::testing::Rng;
use detkd::Tensor;

const CLASSES: usize = 4;
const SIDE: usize = 128;

fn shape(cfg: &TinyGflConfig) -> DetectorShape {
    DetectorShape {
        stage_channels: cfg.stage_channels.to_vec(),
        fpn_channels: cfg.fpn_channels,
        num_classes: cfg.num_classes,
        reg_max: cfg.reg_max,
    }
}

/// A model's FPN levels and class maps for `images` `[B, 3, H, W]`, as plain tensors (no gradient).
fn forward(
    model: &TinyGfl,
    store: &ParamStore,
    images: &Tensor,
) -> detkd::Result<(Vec<Tensor>, Vec<Tensor>)> {
    let tape = Tape::new();
    let b = store.bind_frozen(&tape);
    let out = model.forward(&b, tape.constant(images.try_clone()?))?;
    let values = |v: &[detkd::autograd::Var]| -> detkd::Result<Vec<Tensor>> {
        v.iter().map(|&x| tape.value(x)?.try_clone()).collect()
    };
    Ok((values(&out.fpn)?, values(&out.cls)?))
}

fn random_images(rng: &mut Rng, n: usize) -> detkd::Result<Tensor> {
    let v: Vec<f32> = rng
        .normal_vec(n * 3 * SIDE * SIDE)
        .into_iter()
        .map(|x| x as f32)
        .collect();
    Tensor::from_vec(v, &[n, 3, SIDE, SIDE])
}

fn random_targets(rng: &mut Rng) -> ImageTargets {
    let mut t = ImageTargets::default();
    for _ in 0..1 + rng.below(3) {
        let (w, h) = (rng.uniform(8.0, 64.0), rng.uniform(8.0, 64.0));
        let (x, y) = (
            rng.uniform(0.0, SIDE as f64 - w),
            rng.uniform(0.0, SIDE as f64 - h),
        );
        t.boxes.push([x, y, x + w, y + h]);
        t.labels.push(rng.below(CLASSES));
    }
    t
}

fn main() -> detkd::Result<()> {
    let mut rng = Rng::new(0);
    let (t_cfg, s_cfg) = (
        TinyGflConfig::teacher(CLASSES),
        TinyGflConfig::student(CLASSES),
    );
    let (mut t_store, mut s_store) = (ParamStore::new(), ParamStore::new());
    let teacher = TinyGfl::new(&mut t_store, &t_cfg, 1)?;
    let student = TinyGfl::new(&mut s_store, &s_cfg, 2)?;
    // The adapters (distill.gkd.adapter.<l>) go into the student's store: they train with it.
    let mut gkd = GkdDistiller::new(
        &mut s_store,
        &shape(&s_cfg),
        &shape(&t_cfg),
        3,
        GkdConfig::default(),
        3,
    )?;
    let strides = TinyGflConfig::FPN_STRIDES.to_vec();

    // Before the epoch: the PGM on a sample of the training set (here 12 random images).
    let dataset: Vec<ImageTargets> = (0..12).map(|_| random_targets(&mut rng)).collect();
    let images = random_images(&mut rng, dataset.len())?;
    let sample = pgm_sample(&dataset, CLASSES, &gkd.config().pgm, 7)?;
    let mut collector = GkdPrototypeCollector::new(3);
    for chunk in sample.images.chunks(4) {
        let idx: Vec<usize> = chunk.iter().map(|im| im.index).collect();
        let batch = detkd::ops::shape::index_select(
            &images,
            0,
            &Tensor::from_vec(
                idx.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                &[idx.len()],
            )?,
        )?;
        let (s_fpn, _) = forward(&student, &s_store, &batch)?;
        let (t_fpn, _) = forward(&teacher, &t_store, &batch)?;
        let targets: Vec<ImageTargets> = chunk.iter().map(|im| im.targets.clone()).collect();
        collector.add(
            &s_fpn.iter().collect::<Vec<_>>(),
            &t_fpn.iter().collect::<Vec<_>>(),
            &strides,
            &targets,
        )?;
    }
    let prototypes = collector.build(CLASSES, &gkd.config().pgm)?;
    println!(
        "PGM: {} boxes from {} images -> {} prototypes per level {:?}",
        collector.len(),
        sample.images.len(),
        prototypes.len(),
        prototypes
            .levels
            .iter()
            .map(|l| l.source_rows.len())
            .collect::<Vec<_>>()
    );
    gkd.set_prototypes(prototypes)?;

    // One training batch: the first two images, with their ATSS assignment.
    let batch_targets = &dataset[..2];
    let batch = detkd::ops::shape::narrow(&images, 0, 0, 2)?;
    let (s_fpn, s_cls) = forward(&student, &s_store, &batch)?;
    let (t_fpn, t_cls) = forward(&teacher, &t_store, &batch)?;
    let levels: Vec<AnchorLevel> = s_cls
        .iter()
        .zip(&strides)
        .map(|(c, &stride)| AnchorLevel {
            height: c.shape()[2],
            width: c.shape()[3],
            stride,
        })
        .collect();
    let (anchor_boxes, counts) = anchors(&levels, GFL_ANCHOR_SCALE);
    let a = anchor_boxes.len();
    let mut assign = DenseAssignment {
        batch: 2,
        anchors_per_image: a,
        points: anchor_boxes
            .iter()
            .map(|b| [(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0])
            .collect(),
        strides: levels
            .iter()
            .flat_map(|l| vec![l.stride; l.height * l.width])
            .collect(),
        anchor_boxes: anchor_boxes.clone(),
        images: batch_targets.to_vec(),
        ..Default::default()
    };
    for (img, t) in batch_targets.iter().enumerate() {
        let result = atss_assign(&anchor_boxes, &counts, &t.boxes, &AtssConfig::default())?;
        for (anchor, gt) in result.gt_index.iter().enumerate() {
            if let Some(g) = *gt {
                assign.positives.push(img * a + anchor);
                assign.positive_boxes.push(t.boxes[g]);
                assign.positive_labels.push(t.labels[g]);
            }
        }
        assign.thresholds.push(result.thresholds);
    }
    let ctx = StepContext {
        assignment: &assign,
        student_gfl: None,
        epoch: 3,
        num_epochs: 12,
        step_seed: 0,
        image_size: (SIDE, SIDE),
    };
    let student_in = GkdInputs {
        fpn: s_fpn.iter().collect(),
        fpn_strides: strides.clone(),
        cls: s_cls.iter().collect(),
    };
    let teacher_in = GkdInputs {
        fpn: t_fpn.iter().collect(),
        fpn_strides: strides.clone(),
        cls: t_cls.iter().collect(),
    };
    let robust = gkd.robust_weights_of(&student_in, &teacher_in, &ctx)?;
    println!("robust weights per level (boxes of both images): {robust:.3?}");
    let out = gkd.compute(&s_store, &student_in, &teacher_in, &ctx)?;
    println!("{} positives; loss {:.5}", assign.positives.len(), out.loss);
    for (name, v) in &out.terms {
        println!("  {name:14} {v:.5}");
    }
    for (k, g) in out.student_grads.iter().enumerate() {
        let norm = g.to_vec::<f64>()?.iter().map(|v| v * v).sum::<f64>().sqrt();
        println!("  |grad student input {k}| = {norm:.3e} {:?}", g.shape());
    }
    println!("  {} adapter gradients", out.param_grads.len());
    // The pooled box features behind the weights, for one level.
    let f = box_gap_features(
        &s_fpn[0],
        strides[0],
        &batch_targets
            .iter()
            .map(|t| t.boxes.clone())
            .collect::<Vec<_>>(),
    )?;
    println!("  pooled student features at P3: {:?}", f.shape());
    Ok(())
}
