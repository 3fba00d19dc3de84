//! `detkd demo`, the main job: make the synthetic shapes set, train the teacher preset, then train the
//! student preset without distillation and with each method (and one combination) under the same seed and
//! schedule, evaluate all, and write a table, `report.json` and `report.png`.

use super::data::{Dataset, SyntheticConfig, SyntheticShapes};
use super::eval::CocoStats;
use super::jobs::{run_training, MetricsLog, Preset, TrainSettings};
use super::methods::build_methods;
use super::report::{write_png, RunCurve};
use super::train::{Detector, Distillation};
use crate::error::{Error, Result};
use crate::tensor::Device;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What the demo runs.
#[derive(Clone, Debug, PartialEq)]
pub struct DemoConfig {
    /// Folder for the checkpoints, `metrics.jsonl`, `report.json` and `report.png` (created if missing).
    pub out_dir: PathBuf,
    /// Seed of the synthetic set and of the methods; [`DemoConfig::full`] and [`DemoConfig::quick`] copy
    /// it into both schedules.
    pub seed: u64,
    /// Side of the square synthetic images, in pixels (objects from 6 px to half of it).
    pub image_size: usize,
    /// Synthetic training images.
    pub train_size: usize,
    /// Synthetic validation images.
    pub val_size: usize,
    /// Schedule of the teacher preset.
    pub teacher: TrainSettings,
    /// Schedule shared by every student run, plain and distilled, so they compare.
    pub student: TrainSettings,
    /// `(run name, methods)`; the first run should be the plain student.
    pub runs: Vec<(String, Vec<String>)>,
}

fn runs() -> Vec<(String, Vec<String>)> {
    let mut r = vec![("student".to_string(), vec![])];
    for m in super::methods::METHODS {
        r.push((format!("+{m}"), vec![m.to_string()]));
    }
    r.push(("+ld+gkd".into(), vec!["ld".into(), "gkd".into()]));
    r
}

impl DemoConfig {
    /// The default run (≈ 13 minutes on a 2-core CPU). 96-pixel images: on a 2-core budget, more
    /// iterations at a lower resolution train a much better teacher than fewer at 128 pixels.
    pub fn full(out_dir: PathBuf, seed: u64) -> DemoConfig {
        DemoConfig {
            out_dir,
            seed,
            image_size: 96,
            train_size: 960,
            val_size: 250,
            teacher: TrainSettings {
                epochs: 10,
                seed,
                ..TrainSettings::default()
            },
            student: TrainSettings {
                epochs: 7,
                seed,
                ..TrainSettings::default()
            },
            runs: runs(),
        }
    }

    /// A smoke version (≈ 2 minutes on a 2-core CPU): the same pipeline on a handful of images.
    pub fn quick(out_dir: PathBuf, seed: u64) -> DemoConfig {
        DemoConfig {
            out_dir,
            seed,
            image_size: 96,
            train_size: 240,
            val_size: 80,
            teacher: TrainSettings {
                epochs: 4,
                seed,
                ..TrainSettings::default()
            },
            student: TrainSettings {
                epochs: 2,
                seed,
                ..TrainSettings::default()
            },
            runs: runs(),
        }
    }
}

/// One row of the demo's table.
#[derive(Clone, Debug)]
pub struct DemoRun {
    /// Run name: `teacher`, `student`, or the methods as `+ld`, `+ld+gkd`, …
    pub name: String,
    /// Distillation methods of the run (empty for the teacher and the plain student).
    pub methods: Vec<String>,
    /// COCO metrics on the validation split.
    pub stats: CocoStats,
    /// Wall time of the run (training and evaluation), in seconds.
    pub wall_seconds: f64,
    /// Per step: `(iteration, detection loss = QFL + GIoU + DFL)`, the report's curves.
    pub losses: Vec<(usize, f64)>,
}

/// Runs the demo on `device`, printing progress and the table, writing every artefact to `cfg.out_dir`.
pub fn run_demo(cfg: &DemoConfig, device: &Device) -> Result<Vec<DemoRun>> {
    let out = &cfg.out_dir;
    std::fs::create_dir_all(out).map_err(|source| Error::Io {
        path: out.clone(),
        source,
    })?;
    let start = Instant::now();
    let synthetic = SyntheticConfig {
        height: cfg.image_size,
        width: cfg.image_size,
        ..SyntheticConfig::default()
    };
    let (train_set, val_set) =
        SyntheticShapes::splits(synthetic, cfg.seed, cfg.train_size, cfg.val_size)?;
    let classes = train_set.num_classes();
    eprintln!(
        "detkd demo: {} training / {} validation images of {} classes, on {device}",
        train_set.len(),
        val_set.len(),
        classes
    );
    let mut metrics = MetricsLog::create(Some(&out.join("metrics.jsonl")))?;

    let teacher_model = Preset::Teacher.config(classes);
    let t0 = Instant::now();
    let (teacher, teacher_outcome) = run_training(
        "teacher",
        &teacher_model,
        &cfg.teacher,
        &train_set,
        &val_set,
        device,
        None,
        None,
        Some(&out.join("teacher.safetensors")),
        &mut metrics,
    )?;
    let teacher_run = DemoRun {
        name: "teacher".into(),
        methods: vec![],
        stats: teacher_outcome.stats,
        wall_seconds: t0.elapsed().as_secs_f64(),
        losses: teacher_outcome.losses,
    };
    eprintln!("{}", row(&teacher_run));

    let student_model = Preset::Student.config(classes);
    let mut results = vec![teacher_run];
    for (name, methods) in &cfg.runs {
        let t0 = Instant::now();
        let mut student = Detector::new(&student_model, cfg.student.seed)?;
        let outcome = if methods.is_empty() {
            run_training(
                name,
                &student_model,
                &cfg.student,
                &train_set,
                &val_set,
                device,
                None,
                Some(student),
                Some(&out.join(checkpoint_file(name))),
                &mut metrics,
            )?
            .1
        } else {
            let built = build_methods(methods, &mut student, &teacher, cfg.seed, &BTreeMap::new())?;
            let mut distill = Distillation::new(&teacher, built);
            run_training(
                name,
                &student_model,
                &cfg.student,
                &train_set,
                &val_set,
                device,
                Some(&mut distill),
                Some(student),
                Some(&out.join(checkpoint_file(name))),
                &mut metrics,
            )?
            .1
        };
        let run = DemoRun {
            name: name.clone(),
            methods: methods.clone(),
            stats: outcome.stats,
            wall_seconds: t0.elapsed().as_secs_f64(),
            losses: outcome.losses,
        };
        eprintln!("{}", row(&run));
        results.push(run);
    }
    let table = table(&results);
    println!("{table}");
    write_report(out, cfg, device, &results, start.elapsed().as_secs_f64())?;
    println!(
        "total {:.0} s; report in {}",
        start.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(results)
}

/// `student.safetensors` for the plain student, `student_ld_gkd.safetensors` for `+ld+gkd`.
fn checkpoint_file(run: &str) -> String {
    match run.strip_prefix('+') {
        Some(methods) => format!("student_{}.safetensors", methods.replace('+', "_")),
        None => format!("{run}.safetensors"),
    }
}

fn row(r: &DemoRun) -> String {
    format!(
        "{:<12} AP {:5.1}  AP50 {:5.1}  AP75 {:5.1}  {:7.1} s",
        r.name,
        100.0 * r.stats.ap,
        100.0 * r.stats.ap50,
        100.0 * r.stats.ap75,
        r.wall_seconds
    )
}

/// The demo's table in Markdown.
pub fn table(results: &[DemoRun]) -> String {
    let baseline = results
        .iter()
        .find(|r| r.name == "student")
        .map(|r| r.stats.ap);
    let mut s = String::from("| run | AP | AP50 | AP75 | ΔAP vs student | wall time |\n| --- | --- | --- | --- | --- | --- |\n");
    for r in results {
        let delta = match baseline {
            Some(b) if r.name != "teacher" && r.name != "student" => {
                format!("{:+.1}", 100.0 * (r.stats.ap - b))
            }
            _ => "".into(),
        };
        s.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.1} | {} | {:.0} s |\n",
            r.name,
            100.0 * r.stats.ap,
            100.0 * r.stats.ap50,
            100.0 * r.stats.ap75,
            delta,
            r.wall_seconds
        ));
    }
    s
}

fn write_report(
    out: &Path,
    cfg: &DemoConfig,
    device: &Device,
    results: &[DemoRun],
    total_seconds: f64,
) -> Result<()> {
    let runs: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name,
                "methods": r.methods,
                "stats": super::jobs::stats_json(&r.stats),
                "wall_seconds": r.wall_seconds,
            })
        })
        .collect();
    let report = serde_json::json!({
        "device": device.to_string(),
        "seed": cfg.seed,
        "image_size": cfg.image_size,
        "train_images": cfg.train_size,
        "val_images": cfg.val_size,
        "teacher_schedule": cfg.teacher,
        "student_schedule": cfg.student,
        "total_seconds": total_seconds,
        "runs": runs,
    });
    let path = out.join("report.json");
    let text = serde_json::to_string_pretty(&report)
        .map_err(|e| Error::invalid("report", e.to_string()))?;
    std::fs::write(&path, text + "\n").map_err(|source| Error::Io { path, source })?;
    let curves: Vec<RunCurve> = results
        .iter()
        .map(|r| RunCurve {
            name: r.name.clone(),
            losses: r.losses.clone(),
            ap: r.stats.ap,
            ap50: r.stats.ap50,
        })
        .collect();
    write_png(
        &out.join("report.png"),
        &format!(
            "detkd demo: TinyGFL student distilled from a TinyGFL teacher (seed {})",
            cfg.seed
        ),
        &curves,
    )
}
