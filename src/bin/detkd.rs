//! The `detkd` command line: `demo` (the main job), `train`, `distill`, `eval` and `parity`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use detkd::engine::jobs as cli;
use detkd::tensor::io;
use detkd::{Device, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "detkd",
    version,
    about = "Knowledge distillation of object detectors: CUDA kernels, CPU references and a teacher-student engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job: synthetic data, a teacher, and a student trained without and with each distillation
    /// method; prints a table and writes report.json and report.png.
    Demo {
        /// A ~2-minute smoke version of the same pipeline.
        #[arg(long)]
        quick: bool,
        /// Output folder.
        #[arg(long, default_value = "demo-out")]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, value_enum, default_value_t = AutoDevice::Auto)]
        device: AutoDevice,
    },
    /// Train a student with distillation from a frozen teacher checkpoint.
    Distill(DistillArgs),
    /// Train a TinyGFL detector from scratch and write a safetensors checkpoint.
    Train(TrainArgs),
    /// Evaluate a checkpoint with COCO metrics.
    Eval(EvalArgs),
    /// Run one op on the tensors of a safetensors file (op and config in its metadata) and write the output
    /// and the input gradients, to compare detkd with a reference implementation.
    Parity {
        /// Input safetensors file (see README: "Checking detkd against your PyTorch code").
        input: PathBuf,
        /// Where to write the results.
        #[arg(short, long)]
        output: PathBuf,
        /// Device to run on.
        #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
        device: DeviceArg,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, ValueEnum)]
enum AutoDevice {
    /// CUDA when a usable device is present, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

impl AutoDevice {
    fn resolve(self) -> Result<Device> {
        Ok(match self {
            AutoDevice::Auto => detkd::cuda::default_device(),
            AutoDevice::Cpu => Device::Cpu,
            AutoDevice::Cuda => Device::Cuda(detkd::cuda::probe()?),
        })
    }
}

/// Where the images come from.
#[derive(Args, Clone)]
struct DataArgs {
    /// COCO-format annotation file (with --images); without it, the synthetic shapes set is used.
    #[arg(long, requires = "images")]
    annotations: Option<PathBuf>,
    /// Image folder of --annotations.
    #[arg(long)]
    images: Option<PathBuf>,
    /// COCO-format validation annotation file (with --val-images).
    #[arg(long, requires = "val_images")]
    val_annotations: Option<PathBuf>,
    #[arg(long)]
    val_images: Option<PathBuf>,
    /// Synthetic set: training images.
    #[arg(long, default_value_t = 1200)]
    train_size: usize,
    /// Synthetic set: validation images.
    #[arg(long, default_value_t = 300)]
    val_size: usize,
    /// Synthetic set: seed of the images (the split seeds derive from it).
    #[arg(long, default_value_t = 2024)]
    data_seed: u64,
}

#[derive(Args)]
struct TrainArgs {
    /// Architecture preset.
    #[arg(long, value_enum, default_value_t = cli::Preset::Student)]
    preset: cli::Preset,
    /// JSON file overriding any training or model setting (see README, `detkd train`).
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
}

/// What `train` and `distill` share: the data, the schedule overrides, the device and the outputs.
#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    data: DataArgs,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, value_enum, default_value_t = AutoDevice::Auto)]
    device: AutoDevice,
    /// Checkpoint to write.
    #[arg(short, long)]
    output: PathBuf,
    /// Metrics, one JSON object per step (and a final evaluation line).
    #[arg(long)]
    metrics: Option<PathBuf>,
}

impl RunArgs {
    fn overrides(&self) -> cli::TrainOverrides {
        cli::TrainOverrides {
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            seed: self.seed,
        }
    }
}

#[derive(Args)]
struct DistillArgs {
    /// Teacher checkpoint (frozen, evaluation mode).
    #[arg(long)]
    teacher: PathBuf,
    /// Student checkpoint to start from (otherwise a fresh --student-preset).
    #[arg(long, conflicts_with = "student_preset")]
    student: Option<PathBuf>,
    #[arg(long, value_enum)]
    student_preset: Option<cli::Preset>,
    /// Comma-separated methods: ld, dsig, gkd, drkd, hgd (any combination).
    #[arg(long, value_delimiter = ',', required = true)]
    methods: Vec<String>,
    /// JSON file: `train` settings, `model` (fresh student), and `weights`: {method: {term: factor}}.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct EvalArgs {
    /// Checkpoint to evaluate (its architecture is read from its metadata).
    checkpoint: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    #[arg(long, value_enum, default_value_t = AutoDevice::Auto)]
    device: AutoDevice,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn data_source(d: &DataArgs) -> cli::DataSource {
    match (&d.annotations, &d.images) {
        (Some(a), Some(i)) => cli::DataSource::Coco {
            train: (a.clone(), i.clone()),
            val: d.val_annotations.clone().zip(d.val_images.clone()),
        },
        _ => cli::DataSource::Synthetic {
            train_size: d.train_size,
            val_size: d.val_size,
            seed: d.data_seed,
        },
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo {
            quick,
            out,
            seed,
            device,
        } => {
            let device = device.resolve()?;
            let cfg = if quick {
                detkd::engine::demo::DemoConfig::quick(out, seed)
            } else {
                detkd::engine::demo::DemoConfig::full(out, seed)
            };
            detkd::engine::demo::run_demo(&cfg, &device).map(|_| ())
        }
        Command::Distill(args) => {
            let run = &args.run;
            let device = run.device.resolve()?;
            let (train_set, val_set) = cli::load_data(&data_source(&run.data))?;
            let overrides = run.overrides();
            let job = cli::DistillJob {
                teacher: &args.teacher,
                student: args.student.as_deref(),
                student_preset: args.student_preset.unwrap_or(cli::Preset::Student),
                methods: &args.methods,
                config: args.config.as_deref(),
                overrides,
            };
            let mut metrics = cli::MetricsLog::create(run.metrics.as_deref())?;
            let outcome = job.run(
                train_set.as_ref(),
                val_set.as_ref(),
                &device,
                &run.output,
                &mut metrics,
            )?;
            println!(
                "distilled {} steps in {:.1} s; wrote {}",
                outcome.summary.iterations,
                outcome.summary.wall_seconds,
                run.output.display()
            );
            cli::print_stats(&outcome.stats);
            Ok(())
        }
        Command::Train(args) => {
            let run = &args.run;
            let device = run.device.resolve()?;
            let (train_set, val_set) = cli::load_data(&data_source(&run.data))?;
            let overrides = run.overrides();
            let (model, settings) = cli::job_settings(
                args.preset,
                train_set.num_classes(),
                args.config.as_deref(),
                &overrides,
            )?;
            let mut metrics = cli::MetricsLog::create(run.metrics.as_deref())?;
            eprintln!(
                "training {:?} on {} images ({} epochs, batch {}) on {device}",
                args.preset,
                train_set.len(),
                settings.epochs,
                settings.batch_size
            );
            let (_, outcome) = cli::run_training(
                "train",
                &model,
                &settings,
                train_set.as_ref(),
                val_set.as_ref(),
                &device,
                None,
                None,
                Some(&run.output),
                &mut metrics,
            )?;
            println!(
                "trained {} steps in {:.1} s ({:.1} img/s); wrote {}",
                outcome.summary.iterations,
                outcome.summary.wall_seconds,
                outcome.summary.images as f64 / outcome.summary.wall_seconds,
                run.output.display()
            );
            cli::print_stats(&outcome.stats);
            Ok(())
        }
        Command::Eval(args) => {
            let device = args.device.resolve()?;
            let detector = cli::load_checkpoint(&args.checkpoint)?;
            let (_, val_set) = cli::load_data(&data_source(&args.data))?;
            let (stats, _) = detkd::engine::train::evaluate(
                &detector,
                val_set.as_ref(),
                &Default::default(),
                &device,
            )?;
            cli::print_stats(&stats);
            Ok(())
        }
        Command::Parity {
            input,
            output,
            device,
        } => {
            let device = match device {
                DeviceArg::Cpu => Device::Cpu,
                DeviceArg::Cuda => Device::Cuda(detkd::cuda::probe()?),
            };
            let inputs = io::load(&input)?;
            let results = detkd::parity::run(&inputs, &device)?;
            let named: Vec<(&str, &detkd::Tensor)> = results
                .tensors
                .iter()
                .map(|(n, t)| (n.as_str(), t))
                .collect();
            io::save(&output, named, &results.metadata)?;
            for (name, t) in &results.tensors {
                println!("{name}: {:?} {}", t.shape(), t.dtype());
            }
            println!("wrote {}", output.display());
            Ok(())
        }
    }
}
