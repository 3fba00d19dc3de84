//! The `detkd` command line.

use clap::{Parser, Subcommand, ValueEnum};
use detkd::tensor::io;
use detkd::{Device, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "detkd",
    version,
    about = "CUDA kernels for knowledge distillation of object detectors"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
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
