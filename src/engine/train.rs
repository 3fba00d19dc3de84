//! The training and evaluation loops: a [`Detector`] (TinyGFL and its parameters) trained on its GFL loss,
//! optionally plus distillation terms from a frozen teacher, and evaluated with COCO metrics.

use super::assign::{assign_batch, levels_for, AtssConfig};
use super::data::{Batch, DataLoader, Dataset, LoaderConfig, Transform};
use super::eval::{
    self as coco_eval, CocoStats, Detection, GflDecodeConfig, GflImage, GflLevel, GroundTruth,
};
use super::model::{TinyGfl, TinyGflConfig};
use super::optim::{Optimizer, OptimizerConfig, Schedule};
use super::teacher_cache::TeacherCache;
use crate::autograd::{Tape, Var};
use crate::distill::gfl::{flatten_head, gfl_loss, GflLossConfig};
use crate::distill::{
    Distiller, FeatureSource, ImageTargets, LossTerm, SampledFeatures, StepContext,
};
use crate::error::{Error, Result};
use crate::nn::{BufferUpdates, ParamStore};
use crate::ops::optim::SgdConfig;
use crate::tensor::{Device, Tensor};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// A TinyGFL and its parameters (plus, during distillation, the methods' own parameters under
/// `distill.`, which checkpoints leave out).
#[derive(Debug)]
pub struct Detector {
    /// The architecture and its layers (handles into `store`).
    pub model: TinyGfl,
    /// Parameter values: the detector's under `backbone.`, `neck.` and `head.`, the methods' under
    /// [`DISTILL_PREFIX`].
    pub store: ParamStore,
}

/// Names under this prefix belong to distillation methods, not to the detector.
pub const DISTILL_PREFIX: &str = "distill.";

impl Detector {
    /// A freshly initialised detector.
    pub fn new(cfg: &TinyGflConfig, seed: u64) -> Result<Detector> {
        let mut store = ParamStore::new();
        let model = TinyGfl::new(&mut store, cfg, seed)?;
        Ok(Detector { model, store })
    }

    /// A detector with `cfg`'s architecture and the weights of a checkpoint (strict: every tensor present
    /// with its shape, nothing unknown).
    pub fn load(cfg: &TinyGflConfig, path: impl AsRef<Path>) -> Result<Detector> {
        let mut d = Detector::new(cfg, 0)?;
        d.store.load_file(path)?;
        Ok(d)
    }

    /// Writes the detector's parameters (not the methods') as safetensors, with `metadata`.
    pub fn save(&self, path: impl AsRef<Path>, metadata: &BTreeMap<String, String>) -> Result<()> {
        let named: Vec<(&str, &Tensor)> = self
            .store
            .named_tensors()
            .into_iter()
            .filter(|(name, _)| !name.starts_with(DISTILL_PREFIX))
            .collect();
        crate::tensor::io::save(path, named, metadata)
    }

    /// Moves every parameter in `store` (the methods' too) to `device`.
    pub fn to_device(&mut self, device: &Device) -> Result<()> {
        self.store.to_device(device)
    }
}

/// Settings of [`train`].
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Passes over the training set (≥ 1).
    pub epochs: usize,
    /// Images per step (≥ 1); each epoch drops its last, partial batch.
    pub batch_size: usize,
    /// Update rule and hyper-parameters; its `lr` is the schedule's peak (warm-up, then cosine to 1%).
    pub optimizer: OptimizerConfig,
    /// Linear warm-up iterations (from 0.001·lr).
    pub warmup_iters: usize,
    /// Clip the total gradient norm (None = no clipping).
    pub grad_clip: Option<f64>,
    /// Resize target `(h, w)` (aspect kept), or None for the images' own size.
    pub image_size: Option<(usize, usize)>,
    /// Probability of a horizontal flip of each training image, in `[0, 1]` (mmdet's `flip_ratio`).
    pub flip_probability: f64,
    /// Square anchors of `anchor_scale · stride` pixels for ATSS (GFL: 8 on 800-px images; TinyGFL's small
    /// images want smaller anchors).
    pub anchor_scale: f64,
    /// Weights and settings of the detection loss (QFL, GIoU, DFL); the default is GFL's.
    pub gfl: GflLossConfig,
    /// Seed of the shuffling, the flips and the distillation methods' per-step draws (the weights are
    /// initialised by whoever builds the [`Detector`]).
    pub seed: u64,
}

impl Default for TrainConfig {
    /// SGD with momentum 0.9 and weight decay 1e-4 (GFL's), lr 0.02, batch 16, 12 epochs, warm-up 100.
    fn default() -> Self {
        TrainConfig {
            epochs: 12,
            batch_size: 16,
            optimizer: OptimizerConfig::Sgd(SgdConfig {
                lr: 0.02,
                momentum: 0.9,
                weight_decay: 1e-4,
                ..Default::default()
            }),
            warmup_iters: 100,
            grad_clip: Some(35.0),
            image_size: None,
            flip_probability: 0.5,
            anchor_scale: 4.0,
            gfl: GflLossConfig::default(),
            seed: 0,
        }
    }
}

/// A frozen teacher and the methods that distil from it.
pub struct Distillation<'a> {
    /// The frozen teacher (evaluation mode, never updated).
    pub teacher: &'a Detector,
    /// The methods; each adds its weighted loss terms to every step.
    pub methods: Vec<Box<dyn Distiller + 'a>>,
    /// Reuse the teacher's per-image outputs across epochs (exact for TinyGFL: GroupNorm only, see
    /// [`TeacherCache`]); `None` runs the teacher on every batch.
    pub cache: Option<TeacherCache>,
}

impl<'a> Distillation<'a> {
    /// `methods` from `teacher`, with a teacher cache of up to 2 GiB.
    pub fn new(teacher: &'a Detector, methods: Vec<Box<dyn Distiller + 'a>>) -> Self {
        Distillation {
            teacher,
            methods,
            cache: Some(TeacherCache::new(2 << 30)),
        }
    }
}

/// One logged training step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepRecord {
    /// Epoch, 0-based.
    pub epoch: usize,
    /// Iteration, 0-based and counted across epochs.
    pub iter: usize,
    /// Iterations of the whole run (full batches per epoch × epochs).
    pub total_iters: usize,
    /// Learning rate of this step.
    pub lr: f64,
    /// Total gradient L2 norm before clipping.
    pub grad_norm: f64,
    /// Total loss: the sum of `terms`.
    pub loss: f64,
    /// Every weighted term (detection and distillation).
    pub terms: Vec<(String, f64)>,
    /// Throughput of this step: its images over its wall time (data loading excluded).
    pub images_per_second: f64,
    /// `false` when the update was skipped because the gradient norm was not finite.
    pub applied: bool,
}

/// The result of [`train`].
#[derive(Clone, Debug, PartialEq)]
pub struct TrainSummary {
    /// Steps taken, skipped ones included.
    pub iterations: usize,
    /// Training images seen (iterations × batch size).
    pub images: usize,
    /// Wall time of the whole loop, in seconds (the methods' per-epoch passes included).
    pub wall_seconds: f64,
    /// Total loss of the last step.
    pub final_loss: f64,
    /// Steps skipped because of a non-finite gradient.
    pub skipped_steps: usize,
}

/// The ground truth of a batch in input pixels (boxes after the transform), for ATSS and the methods.
pub fn batch_targets(batch: &Batch) -> Vec<ImageTargets> {
    batch
        .targets
        .iter()
        .map(|t| ImageTargets {
            boxes: t
                .boxes
                .iter()
                .map(|b| [b[0] as f64, b[1] as f64, b[2] as f64, b[3] as f64])
                .collect(),
            labels: t.labels.clone(),
        })
        .collect()
}

fn padded_size(images: &Tensor) -> Result<(usize, usize)> {
    match images.shape() {
        [_, 3, h, w] => Ok((*h, *w)),
        other => Err(Error::shape("images", "[B, 3, H, W]", other)),
    }
}

/// Trains `student` on `data` with its GFL loss (plus `distill`'s terms) for `cfg.epochs`, calling
/// `on_step` after every iteration (for progress bars and metric logs).
pub fn train(
    student: &mut Detector,
    data: &dyn Dataset,
    cfg: &TrainConfig,
    device: &Device,
    mut distill: Option<&mut Distillation<'_>>,
    on_step: &mut dyn FnMut(&StepRecord) -> Result<()>,
) -> Result<TrainSummary> {
    if cfg.epochs == 0 || cfg.batch_size == 0 {
        return Err(Error::invalid("train", "epochs and batch_size must be ≥ 1"));
    }
    if data.num_classes() != student.model.cfg.num_classes {
        return Err(Error::invalid(
            "data",
            format!(
                "the data set has {} classes, the detector {}",
                data.num_classes(),
                student.model.cfg.num_classes
            ),
        ));
    }
    student.to_device(device)?;
    let loader = DataLoader::new(
        data,
        LoaderConfig {
            batch_size: cfg.batch_size,
            shuffle: true,
            drop_last: true,
            seed: cfg.seed,
        },
        Transform {
            target_size: cfg.image_size,
            size_divisor: 32,
            flip_probability: cfg.flip_probability,
            seed: cfg.seed,
        },
    )?;
    let per_epoch = loader.num_batches();
    if per_epoch == 0 {
        return Err(Error::invalid(
            "data",
            format!(
                "{} images make no full batch of {}",
                data.len(),
                cfg.batch_size
            ),
        ));
    }
    let total_iters = per_epoch * cfg.epochs;
    let mut optimizer = Optimizer::new(
        cfg.optimizer.clone(),
        Schedule {
            base_lr: cfg.optimizer.base_lr(),
            warmup_iters: cfg.warmup_iters.min(total_iters / 2),
            warmup_ratio: 0.001,
            total_iters,
            min_lr_ratio: 0.01,
        },
        cfg.grad_clip,
    )?;
    let start = Instant::now();
    let mut summary = TrainSummary {
        iterations: 0,
        images: 0,
        wall_seconds: 0.0,
        final_loss: f64::NAN,
        skipped_steps: 0,
    };
    for epoch in 0..cfg.epochs {
        if let Some(d) = distill.as_deref_mut() {
            let mut source = FrozenForwards {
                student: &*student,
                teacher: d.teacher,
                data,
                device,
                batch_size: cfg.batch_size,
                image_size: cfg.image_size,
            };
            for method in &mut d.methods {
                method.epoch_start(epoch, &mut source)?;
            }
        }
        for batch in loader.epoch(epoch as u64) {
            let batch = batch?;
            let step_start = Instant::now();
            let iter = summary.iterations;
            let record = train_step(
                student,
                &mut optimizer,
                &batch,
                cfg,
                device,
                distill.as_deref_mut(),
                (epoch, iter, total_iters),
            )?;
            let record = StepRecord {
                images_per_second: batch.len() as f64 / step_start.elapsed().as_secs_f64(),
                ..record
            };
            summary.iterations += 1;
            summary.images += batch.len();
            summary.final_loss = record.loss;
            summary.skipped_steps += usize::from(!record.applied);
            on_step(&record)?;
        }
    }
    summary.wall_seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

fn train_step(
    student: &mut Detector,
    optimizer: &mut Optimizer,
    batch: &Batch,
    cfg: &TrainConfig,
    device: &Device,
    distill: Option<&mut Distillation<'_>>,
    (epoch, iter, total_iters): (usize, usize, usize),
) -> Result<StepRecord> {
    let images = batch.images.to_device(device)?;
    let image_size = padded_size(&images)?;
    let targets = batch_targets(batch);
    let levels = levels_for(image_size, &TinyGflConfig::FPN_STRIDES);
    let assignment = assign_batch(&targets, &levels, cfg.anchor_scale, &AtssConfig::default())?;

    let tape = Tape::new();
    let bound = student.store.bind(&tape);
    let x = tape.constant(images);
    let out = student.model.forward(&bound, x)?;
    let (cls, reg) = flatten_head(&tape, &out)?;
    let gfl = gfl_loss(&tape, cls, reg, &assignment, &cfg.gfl)?;
    let mut terms: Vec<LossTerm> = gfl.terms.clone();
    let mut updates = BufferUpdates::default();
    if let Some(d) = distill {
        let teacher_out = match &mut d.cache {
            Some(cache) => cache.outputs(d.teacher, batch, &*tape.value(x)?, &tape)?,
            None => {
                let teacher_bound = d.teacher.store.bind_frozen(&tape);
                d.teacher.model.forward(&teacher_bound, x)?
            }
        };
        let ctx = StepContext {
            assignment: &assignment,
            student_gfl: Some(&gfl),
            epoch,
            num_epochs: cfg.epochs,
            step_seed: super::data::derive_seed(cfg.seed, iter as u64),
            image_size,
        };
        for method in &d.methods {
            let method_terms = method.loss(
                &bound,
                &student.store,
                &out,
                &teacher_out,
                &ctx,
                &mut updates,
            )?;
            terms.extend(method_terms);
        }
    }
    let total = sum_terms(&tape, &terms)?;
    let mut values = Vec::with_capacity(terms.len());
    for term in &terms {
        values.push((term.name.to_string(), scalar(&tape, term.value)?));
    }
    let loss = scalar(&tape, total)?;
    let mut grads = tape.backward(total)?;
    let grads = bound.gradients(&student.store, &mut grads);
    drop(bound);
    drop(tape);
    let stats = optimizer.step(&mut student.store, grads)?;
    student.store.apply(updates)?;
    Ok(StepRecord {
        epoch,
        iter,
        total_iters,
        lr: stats.lr,
        grad_norm: stats.grad_norm,
        loss,
        terms: values,
        images_per_second: 0.0,
        applied: stats.applied,
    })
}

/// The engine's [`FeatureSource`]: frozen student and teacher forwards over the training set in index
/// order, without augmentation.
struct FrozenForwards<'a> {
    student: &'a Detector,
    teacher: &'a Detector,
    data: &'a dyn Dataset,
    device: &'a Device,
    batch_size: usize,
    image_size: Option<(usize, usize)>,
}

impl FeatureSource for FrozenForwards<'_> {
    fn for_each_batch(
        &mut self,
        max_images: usize,
        each: &mut dyn FnMut(&SampledFeatures) -> Result<()>,
    ) -> Result<()> {
        let loader = DataLoader::new(
            self.data,
            LoaderConfig {
                batch_size: self.batch_size,
                shuffle: false,
                drop_last: false,
                seed: 0,
            },
            Transform {
                target_size: self.image_size,
                size_divisor: 32,
                flip_probability: 0.0,
                seed: 0,
            },
        )?;
        let mut seen = 0;
        for batch in loader.epoch(0) {
            if seen >= max_images {
                break;
            }
            let batch = batch?;
            seen += batch.len();
            let images = batch.images.to_device(self.device)?;
            let tape = Tape::new();
            let x = tape.constant(images);
            let s = self
                .student
                .model
                .forward(&self.student.store.bind_frozen(&tape), x)?;
            let t = self
                .teacher
                .model
                .forward(&self.teacher.store.bind_frozen(&tape), x)?;
            let values = |levels: &[Var]| -> Result<Vec<Tensor>> {
                levels.iter().map(|&v| tape.value(v)?.try_clone()).collect()
            };
            each(&SampledFeatures {
                student_fpn: values(&s.fpn)?,
                teacher_fpn: values(&t.fpn)?,
                fpn_strides: s.fpn_strides.clone(),
                targets: batch_targets(&batch),
            })?;
        }
        Ok(())
    }
}

fn sum_terms(tape: &Tape, terms: &[LossTerm]) -> Result<Var> {
    let (first, rest) = terms
        .split_first()
        .ok_or_else(|| Error::invalid("terms", "no loss terms"))?;
    let mut total = first.value;
    for t in rest {
        total = tape.add(total, t.value)?;
    }
    Ok(total)
}

fn scalar(tape: &Tape, v: Var) -> Result<f64> {
    Ok(tape.value(v)?.to_vec::<f64>()?[0])
}

/// Settings of [`evaluate`].
#[derive(Clone, Debug, PartialEq)]
pub struct EvalConfig {
    /// Images per forward (0 counts as 1); default 16.
    pub batch_size: usize,
    /// Resize target `(h, w)` (aspect kept), as in training; `None` (default) keeps the images' size.
    pub image_size: Option<(usize, usize)>,
    /// Post-processing (score threshold, NMS, detections per image; mmdet's `test_cfg`); its `reg_max` is
    /// replaced by the detector's.
    pub decode: GflDecodeConfig,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            batch_size: 16,
            image_size: None,
            decode: GflDecodeConfig::default(),
        }
    }
}

/// Runs `detector` (frozen) over `data` and scores its detections with COCO metrics (pycocotools'
/// definitions) against the data set's ground truth, in original-image pixels. Category ids are
/// `label + 1`.
pub fn evaluate(
    detector: &Detector,
    data: &dyn Dataset,
    cfg: &EvalConfig,
    device: &Device,
) -> Result<(CocoStats, Vec<Detection>)> {
    let loader = DataLoader::new(
        data,
        LoaderConfig {
            batch_size: cfg.batch_size.max(1),
            shuffle: false,
            drop_last: false,
            seed: 0,
        },
        Transform {
            target_size: cfg.image_size,
            size_divisor: 32,
            flip_probability: 0.0,
            seed: 0,
        },
    )?;
    let num_classes = detector.model.cfg.num_classes;
    let categories: Vec<u64> = (1..=num_classes as u64).collect();
    let decode = GflDecodeConfig {
        reg_max: detector.model.cfg.reg_max,
        ..cfg.decode
    };
    let mut detections = Vec::new();
    let mut image_ids = Vec::new();
    for batch in loader.epoch(0) {
        let batch = batch?;
        let images = batch.images.to_device(device)?;
        let tape = Tape::new();
        let bound = detector.store.bind_frozen(&tape);
        let x = tape.constant(images);
        let out = detector.model.forward(&bound, x)?;
        let mut host_levels = Vec::with_capacity(out.cls.len());
        for (l, (&c, &r)) in out.cls.iter().zip(&out.reg).enumerate() {
            let c = tape.value(c)?;
            let r = tape.value(r)?;
            let [b, nc, h, w] = c.shape()[..] else {
                return Err(Error::shape("cls", "[B, C, H, W]", c.shape()));
            };
            let nr = r.shape()[1];
            host_levels.push((
                c.to_vec::<f32>()?,
                r.to_vec::<f32>()?,
                b,
                nc,
                nr,
                h,
                w,
                out.fpn_strides[l],
            ));
        }
        for (i, meta) in batch.metas.iter().enumerate() {
            let levels: Vec<GflLevel<'_>> = host_levels
                .iter()
                .map(|(c, r, _, nc, nr, h, w, s)| GflLevel {
                    cls_logits: &c[i * nc * h * w..(i + 1) * nc * h * w],
                    box_logits: &r[i * nr * h * w..(i + 1) * nr * h * w],
                    height: *h,
                    width: *w,
                    stride: *s as f32,
                })
                .collect();
            let image = GflImage {
                image_id: meta.image_id,
                height: meta.resized_size.0 as f32,
                width: meta.resized_size.1 as f32,
                scale_factor: Some([meta.scale.0, meta.scale.1]),
            };
            detections.extend(coco_eval::decode_gfl(
                &levels,
                &image,
                &categories,
                &decode,
            )?);
            image_ids.push(meta.image_id);
        }
    }
    let mut gts = Vec::new();
    for index in 0..data.len() {
        let sample = data.get(index)?;
        for ((b, &label), &crowd) in sample.boxes.iter().zip(&sample.labels).zip(&sample.crowd) {
            let (w, h) = ((b[2] - b[0]) as f64, (b[3] - b[1]) as f64);
            gts.push(GroundTruth {
                image_id: sample.image_id,
                category_id: label as u64 + 1,
                bbox: [b[0] as f64, b[1] as f64, w, h],
                area: w * h,
                iscrowd: crowd,
            });
        }
    }
    let stats = coco_eval::evaluate(&gts, &detections, &image_ids, &categories)?;
    Ok((stats, detections))
}
