//! The jobs behind the `detkd` command line (`train`, `eval`, and the teacher–student jobs): settings from
//! presets, JSON config files and flags; data sources; progress bars and JSONL metrics; checkpoints whose
//! metadata records the architecture, so `eval` needs nothing but the file.

use super::data::{CocoDataset, Dataset, SyntheticConfig, SyntheticShapes};
use super::eval::CocoStats;
use super::model::TinyGflConfig;
use super::optim::OptimizerConfig;
use super::train::{evaluate, train, Detector, EvalConfig, StepRecord, TrainConfig};

use crate::error::{Error, Result};
use crate::ops::optim::{AdamWConfig, SgdConfig};
use crate::tensor::Device;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Checkpoint metadata key holding the architecture as JSON.
pub const MODEL_KEY: &str = "detkd.model";
/// Checkpoint metadata key holding the class names as a JSON list.
pub const CLASSES_KEY: &str = "detkd.classes";

/// Architecture presets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    // Plain text, no doc links: clap shows these lines in `--help`.
    /// 2.3 M parameters: stage widths 32–256, FPN and head width 64, two convs per head branch
    /// (`TinyGflConfig::teacher`).
    Teacher,
    /// 0.57 M parameters: half the teacher's widths, one conv per head branch, 4.2× fewer multiply-adds
    /// (`TinyGflConfig::student`).
    Student,
}

impl Preset {
    /// The architecture of this preset for a data set of `num_classes` classes.
    pub fn config(self, num_classes: usize) -> TinyGflConfig {
        match self {
            Preset::Teacher => TinyGflConfig::teacher(num_classes),
            Preset::Student => TinyGflConfig::student(num_classes),
        }
    }
}

/// The training settings a config file or the flags can set (a flat, serialisable view of
/// [`TrainConfig`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSettings {
    /// Passes over the training set (≥ 1).
    pub epochs: usize,
    /// Images per step (≥ 1); each epoch drops its last, partial batch.
    pub batch_size: usize,
    /// `sgd` or `adamw`.
    pub optimizer: String,
    /// Peak learning rate of the linear warm-up + cosine schedule (the `--lr` flag).
    pub lr: f64,
    /// SGD momentum (ignored by AdamW).
    pub momentum: f64,
    /// Weight decay: coupled L2 for SGD (PyTorch `SGD(weight_decay=…)`), decoupled for AdamW.
    pub weight_decay: f64,
    /// Linear warm-up iterations from 0.001·lr (capped at half the run's iterations).
    pub warmup_iters: usize,
    /// Maximum total gradient L2 norm (mmdet's `grad_clip=dict(max_norm=…)`), > 0; `None` disables
    /// clipping.
    pub grad_clip: Option<f64>,
    /// Resize target (square side), or none.
    pub image_size: Option<usize>,
    /// Probability of a horizontal flip of each training image, in `[0, 1]` (mmdet's `flip_ratio`).
    pub flip_probability: f64,
    /// ATSS anchors are squares of `anchor_scale · stride` pixels (GFL's 8 suits 800-px images).
    pub anchor_scale: f64,
    /// Seed of a fresh detector's weights, the shuffling and flips, and the distillation methods.
    pub seed: u64,
}

impl Default for TrainSettings {
    /// The demo's schedule on the synthetic set: AdamW, lr 2e-3, batch 16, 8 epochs.
    fn default() -> Self {
        TrainSettings {
            epochs: 8,
            batch_size: 16,
            optimizer: "adamw".into(),
            lr: 2e-3,
            momentum: 0.9,
            weight_decay: 0.05,
            warmup_iters: 50,
            grad_clip: Some(10.0),
            image_size: None,
            flip_probability: 0.5,
            anchor_scale: 4.0,
            seed: 0,
        }
    }
}

impl TrainSettings {
    /// The [`TrainConfig`] of these settings (square `image_size` as `(s, s)`, GFL loss defaults); fails
    /// on an `optimizer` other than `sgd` or `adamw`.
    pub fn to_config(&self) -> Result<TrainConfig> {
        let optimizer = match self.optimizer.as_str() {
            "sgd" => OptimizerConfig::Sgd(SgdConfig {
                lr: self.lr,
                momentum: self.momentum,
                weight_decay: self.weight_decay,
                ..Default::default()
            }),
            "adamw" => OptimizerConfig::AdamW(AdamWConfig {
                lr: self.lr,
                weight_decay: self.weight_decay,
                ..Default::default()
            }),
            other => {
                return Err(Error::invalid(
                    "optimizer",
                    format!("expected `sgd` or `adamw`, got `{other}`"),
                ))
            }
        };
        Ok(TrainConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            optimizer,
            warmup_iters: self.warmup_iters,
            grad_clip: self.grad_clip,
            image_size: self.image_size.map(|s| (s, s)),
            flip_probability: self.flip_probability,
            anchor_scale: self.anchor_scale,
            seed: self.seed,
            ..TrainConfig::default()
        })
    }
}

/// Overlays the keys of `patch` (a JSON object) on `base`, rejecting keys `base` does not have.
fn overlay<T: Serialize + for<'de> Deserialize<'de>>(
    base: &T,
    patch: &serde_json::Value,
    what: &str,
) -> Result<T> {
    let mut value = serde_json::to_value(base)
        .map_err(|e| Error::invalid(what, format!("cannot serialise: {e}")))?;
    let (Some(target), Some(fields)) = (value.as_object_mut(), patch.as_object()) else {
        return Err(Error::invalid(what, "expected a JSON object"));
    };
    for (k, v) in fields {
        if !target.contains_key(k) {
            let known: Vec<&String> = target.keys().collect();
            return Err(Error::invalid(
                what,
                format!("unknown key `{k}` (known: {known:?})"),
            ));
        }
        target.insert(k.clone(), v.clone());
    }
    serde_json::from_value(value).map_err(|e| Error::invalid(what, e.to_string()))
}

/// Reads a JSON config file `{ "model": {…}, "train": {…} }` (both optional) over the given defaults.
pub fn read_config(
    path: &Path,
    model: &TinyGflConfig,
    train: &TrainSettings,
) -> Result<(TinyGflConfig, TrainSettings)> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::invalid(path.display().to_string(), e.to_string()))?;
    let obj = value
        .as_object()
        .ok_or_else(|| Error::invalid(path.display().to_string(), "expected a JSON object"))?;
    if let Some(k) = obj
        .keys()
        .find(|k| !["model", "train", "weights"].contains(&k.as_str()))
    {
        return Err(Error::invalid(
            path.display().to_string(),
            format!("unknown key `{k}` (expected `model`, `train` and/or `weights`)"),
        ));
    }
    let where_ = |section: &str| format!("{}: {section}", path.display());
    let model = match obj.get("model") {
        Some(m) => overlay(model, m, &where_("model"))?,
        None => model.clone(),
    };
    let train = match obj.get("train") {
        Some(t) => overlay(train, t, &where_("train"))?,
        None => train.clone(),
    };
    Ok((model, train))
}

/// Where training and validation images come from.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSource {
    /// The synthetic shapes set ([`SyntheticShapes`]) with its default settings (128 × 128 images).
    Synthetic {
        /// Training images.
        train_size: usize,
        /// Validation images.
        val_size: usize,
        /// Seed of the images; the two splits derive independent seeds from it, so they share no image.
        seed: u64,
    },
    /// COCO-format data ([`CocoDataset`]), normalised with ImageNet statistics.
    Coco {
        /// `(annotation file, image folder)` of the training set.
        train: (PathBuf, PathBuf),
        /// `(annotation file, image folder)` of the validation set; `None` evaluates on the training set.
        val: Option<(PathBuf, PathBuf)>,
    },
}

/// The training and validation sets of `source`.
pub fn load_data(source: &DataSource) -> Result<(Box<dyn Dataset>, Box<dyn Dataset>)> {
    match source {
        DataSource::Synthetic {
            train_size,
            val_size,
            seed,
        } => {
            let (train, val) =
                SyntheticShapes::splits(SyntheticConfig::default(), *seed, *train_size, *val_size)?;
            Ok((Box::new(train), Box::new(val)))
        }
        DataSource::Coco { train, val } => {
            let t = CocoDataset::load(&train.0, &train.1)?;
            let v = match val {
                Some((a, i)) => CocoDataset::load(a, i)?,
                None => CocoDataset::load(&train.0, &train.1)?,
            };
            Ok((Box::new(t), Box::new(v)))
        }
    }
}

/// Appends JSON lines to a metrics file.
pub struct MetricsLog {
    file: Option<std::fs::File>,
    path: PathBuf,
}

impl MetricsLog {
    /// A log writing to `path` (truncated, parent folders created), or one that discards every line
    /// when `path` is `None`.
    pub fn create(path: Option<&Path>) -> Result<MetricsLog> {
        let file = path
            .map(|p| {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                        path: dir.to_path_buf(),
                        source,
                    })?;
                }
                std::fs::File::create(p).map_err(|source| Error::Io {
                    path: p.to_path_buf(),
                    source,
                })
            })
            .transpose()?;
        Ok(MetricsLog {
            file,
            path: path.map(Path::to_path_buf).unwrap_or_default(),
        })
    }

    /// Appends `value` as one line of JSON (nothing when the log has no file).
    pub fn write(&mut self, value: &serde_json::Value) -> Result<()> {
        if let Some(f) = &mut self.file {
            writeln!(f, "{value}").map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

/// The GFL terms of a step (`loss_qfl + loss_bbox + loss_dfl`).
pub fn detection_loss(r: &StepRecord) -> f64 {
    r.terms
        .iter()
        .filter(|(n, _)| matches!(n.as_str(), "loss_qfl" | "loss_bbox" | "loss_dfl"))
        .map(|(_, v)| v)
        .sum()
}

/// The JSON line of one step.
pub fn step_json(run: &str, r: &StepRecord) -> serde_json::Value {
    let mut obj = serde_json::json!({
        "run": run,
        "epoch": r.epoch,
        "iter": r.iter,
        "lr": r.lr,
        "loss": r.loss,
        "grad_norm": r.grad_norm,
        "images_per_s": r.images_per_second,
        "applied": r.applied,
    });
    for (name, v) in &r.terms {
        obj[name] = serde_json::json!(v);
    }
    obj
}

/// The COCO stats as a JSON object.
pub fn stats_json(s: &CocoStats) -> serde_json::Value {
    let names = CocoStats::NAMES;
    let values = s.as_array();
    let mut obj = serde_json::Map::new();
    for (n, v) in names.iter().zip(values) {
        obj.insert(n.to_string(), serde_json::json!(v));
    }
    serde_json::Value::Object(obj)
}

/// A progress bar over `total` steps showing the loss and the throughput (hidden when stderr is not a
/// terminal).
pub fn progress_bar(total: usize, label: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total as u64);
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:>10} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(label.to_string());
    bar
}

/// Checkpoint metadata: the architecture and the class names.
pub fn checkpoint_metadata(
    model: &TinyGflConfig,
    classes: &[String],
) -> Result<BTreeMap<String, String>> {
    let mut meta = BTreeMap::new();
    meta.insert(
        MODEL_KEY.into(),
        serde_json::to_string(model).map_err(|e| Error::invalid("model", e.to_string()))?,
    );
    meta.insert(
        CLASSES_KEY.into(),
        serde_json::to_string(classes).map_err(|e| Error::invalid("classes", e.to_string()))?,
    );
    Ok(meta)
}

/// The architecture recorded in a checkpoint, and the checkpoint's detector.
pub fn load_checkpoint(path: &Path) -> Result<Detector> {
    let file = crate::tensor::io::load(path)?;
    let raw = file.metadata.get(MODEL_KEY).ok_or_else(|| {
        Error::invalid(
            path.display().to_string(),
            format!("has no `{MODEL_KEY}` metadata (not written by detkd train/distill)"),
        )
    })?;
    let cfg: TinyGflConfig = serde_json::from_str(raw).map_err(|e| {
        Error::invalid(
            path.display().to_string(),
            format!("bad `{MODEL_KEY}`: {e}"),
        )
    })?;
    let mut d = Detector::new(&cfg, 0)?;
    d.store
        .load_strict(&file)
        .map_err(|e| Error::invalid(path.display().to_string(), e.to_string()))?;
    Ok(d)
}

/// Prints the 12 COCO stats.
pub fn print_stats(stats: &CocoStats) {
    println!("{stats}");
}

/// Flag overrides of [`TrainSettings`] (applied after the config file).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TrainOverrides {
    /// `--epochs`: replaces [`TrainSettings::epochs`].
    pub epochs: Option<usize>,
    /// `--batch-size`: replaces [`TrainSettings::batch_size`].
    pub batch_size: Option<usize>,
    /// `--lr`: replaces [`TrainSettings::lr`].
    pub lr: Option<f64>,
    /// `--seed`: replaces [`TrainSettings::seed`].
    pub seed: Option<u64>,
}

impl TrainOverrides {
    /// Replaces the fields of `t` whose flag was given; the others keep their config-file value.
    pub fn apply(&self, t: &mut TrainSettings) {
        if let Some(v) = self.epochs {
            t.epochs = v;
        }
        if let Some(v) = self.batch_size {
            t.batch_size = v;
        }
        if let Some(v) = self.lr {
            t.lr = v;
        }
        if let Some(v) = self.seed {
            t.seed = v;
        }
    }
}

/// The architecture and schedule of a training job: the preset for the data set's classes, then the config
/// file, then the flags.
pub fn job_settings(
    preset: Preset,
    num_classes: usize,
    config: Option<&Path>,
    overrides: &TrainOverrides,
) -> Result<(TinyGflConfig, TrainSettings)> {
    let model = preset.config(num_classes);
    let train = TrainSettings::default();
    let (model, mut train) = match config {
        Some(path) => read_config(path, &model, &train)?,
        None => (model, train),
    };
    if model.num_classes != num_classes {
        return Err(Error::invalid(
            "model.num_classes",
            format!(
                "the data set has {num_classes} classes, the config says {}",
                model.num_classes
            ),
        ));
    }
    overrides.apply(&mut train);
    Ok((model, train))
}

/// What a finished training job reports.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    /// COCO metrics of the trained detector on the validation set.
    pub stats: CocoStats,
    /// Iterations, images, wall time and final loss of the training loop.
    pub summary: super::train::TrainSummary,
    /// Per step: (iteration, detection loss = QFL + GIoU + DFL), comparable across methods whose own terms
    /// differ in scale.
    pub losses: Vec<(usize, f64)>,
}

/// Trains a fresh detector of `model` with `settings` on `train_set` (optionally distilling from a teacher),
/// writes the checkpoint to `output` (when given) and metrics to `metrics`, and evaluates on `val_set`.
#[allow(clippy::too_many_arguments)]
pub fn run_training(
    label: &str,
    model: &TinyGflConfig,
    settings: &TrainSettings,
    train_set: &dyn Dataset,
    val_set: &dyn Dataset,
    device: &Device,
    distill: Option<&mut super::train::Distillation<'_>>,
    student_init: Option<Detector>,
    output: Option<&Path>,
    metrics: &mut MetricsLog,
) -> Result<(Detector, TrainOutcome)> {
    let cfg = settings.to_config()?;
    let mut detector = match student_init {
        Some(d) => d,
        None => Detector::new(model, settings.seed)?,
    };
    let per_epoch = train_set.len() / settings.batch_size.max(1);
    let bar = progress_bar(per_epoch * settings.epochs, label);
    let mut losses = Vec::new();
    let summary = train(
        &mut detector,
        train_set,
        &cfg,
        device,
        distill,
        &mut |r: &StepRecord| {
            bar.inc(1);
            bar.set_message(format!(
                "loss {:.4}  {:.1} img/s",
                r.loss, r.images_per_second
            ));
            losses.push((r.iter, detection_loss(r)));
            metrics.write(&step_json(label, r))
        },
    )?;
    bar.finish_and_clear();
    if let Some(path) = output {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        detector.save(path, &checkpoint_metadata(model, train_set.class_names())?)?;
    }
    let (stats, _) = evaluate(
        &detector,
        val_set,
        &EvalConfig {
            image_size: cfg.image_size,
            ..EvalConfig::default()
        },
        device,
    )?;
    metrics.write(&serde_json::json!({
        "run": label,
        "eval": stats_json(&stats),
        "wall_seconds": summary.wall_seconds,
        "iterations": summary.iterations,
        "skipped_steps": summary.skipped_steps,
    }))?;
    Ok((
        detector,
        TrainOutcome {
            stats,
            summary,
            losses,
        },
    ))
}

/// `detkd distill`: a frozen teacher checkpoint, a student (checkpoint or fresh preset), any combination of
/// methods with the official weights (optionally multiplied per term from the config file's `weights`).
pub struct DistillJob<'a> {
    /// Teacher checkpoint written by `detkd train`; its architecture comes from the metadata and its
    /// class count must match the data set's.
    pub teacher: &'a Path,
    /// Student checkpoint to start from (its architecture wins over `student_preset` and the config's
    /// `model`); `None` trains a fresh student.
    pub student: Option<&'a Path>,
    /// Architecture of a fresh student (ignored when `student` is given).
    pub student_preset: Preset,
    /// Method names from [`METHODS`](super::methods::METHODS) (`ld`, `dsig`, `gkd`, `drkd`, `hgd`), in
    /// any combination.
    pub methods: &'a [String],
    /// JSON config file with optional `model`, `train` and `weights` sections (see [`read_config`]).
    pub config: Option<&'a Path>,
    /// Flag overrides, applied after the config file.
    pub overrides: TrainOverrides,
}

impl DistillJob<'_> {
    /// Trains the student with the methods distilling from the frozen teacher on `device`, writes the
    /// student's checkpoint to `output` and per-step metrics to `metrics`, and evaluates on `val_set`.
    pub fn run(
        &self,
        train_set: &dyn Dataset,
        val_set: &dyn Dataset,
        device: &Device,
        output: &Path,
        metrics: &mut MetricsLog,
    ) -> Result<TrainOutcome> {
        let mut teacher = load_checkpoint(self.teacher)?;
        let classes = train_set.num_classes();
        if teacher.model.cfg.num_classes != classes {
            return Err(Error::invalid(
                "teacher",
                format!(
                    "{} has {} classes, the data set {classes}",
                    self.teacher.display(),
                    teacher.model.cfg.num_classes
                ),
            ));
        }
        teacher.to_device(device)?;
        let weights = match self.config {
            Some(path) => read_weights(path)?,
            None => BTreeMap::new(),
        };
        let (model, settings) = match self.student {
            Some(path) => {
                let d = load_checkpoint(path)?;
                let (_, settings) =
                    job_settings(self.student_preset, classes, self.config, &self.overrides)?;
                (d.model.cfg.clone(), settings)
            }
            None => job_settings(self.student_preset, classes, self.config, &self.overrides)?,
        };
        let mut student = match self.student {
            Some(path) => load_checkpoint(path)?,
            None => Detector::new(&model, settings.seed)?,
        };
        let methods = super::methods::build_methods(
            self.methods,
            &mut student,
            &teacher,
            settings.seed,
            &weights,
        )?;
        let mut distill = super::train::Distillation::new(&teacher, methods);
        let (_, outcome) = run_training(
            "distill",
            &model,
            &settings,
            train_set,
            val_set,
            device,
            Some(&mut distill),
            Some(student),
            Some(output),
            metrics,
        )?;
        Ok(outcome)
    }
}

/// The `weights` section of a config file: `{method: {term: factor}}`.
fn read_weights(path: &Path) -> Result<BTreeMap<String, BTreeMap<String, f64>>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::invalid(path.display().to_string(), e.to_string()))?;
    match value.get("weights") {
        None => Ok(BTreeMap::new()),
        Some(w) => serde_json::from_value(w.clone()).map_err(|e| {
            Error::invalid(
                format!("{}: weights", path.display()),
                format!("expected {{method: {{term: factor}}}}: {e}"),
            )
        }),
    }
}
