//! Build script: with the `cuda` feature, compiles every `kernels/*.cu` to PTX with nvcc and
//! generates `$OUT_DIR/kernels.rs`, one `pub const <STEM>: &str` per file, for the crate to
//! `include!`. Without the feature it does nothing, so a CPU-only build needs no CUDA toolkit.
//!
//! Recipe, pins and the reasons behind them: shared/toolchain.md (sections 1, 2 and 6).

use std::env;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;

/// The five pip packages that together give an nvcc emitting PTX ISA 9.0. `nvcc` alone is not
/// enough: its dependencies are unbounded and cicc (in nvidia-nvvm) decides the PTX version.
const PIP_PINS: &str = "nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
                        nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85";

/// Highest PTX ISA that driver 580 (CUDA 13.0), the one on our GPU machines, can JIT.
const DEFAULT_MAX_PTX_ISA: PtxIsa = PtxIsa { major: 9, minor: 0 };

/// One virtual architecture for every kernel: `compute_80` PTX JITs on A100, H100 and H200.
/// `-lineinfo` only adds `.loc` lines, so ncu and compute-sanitizer can name source lines.
const NVCC_FLAGS: [&str; 5] = ["-ptx", "-arch=compute_80", "-O3", "-lineinfo", "-std=c++17"];

/// Environment the result depends on; changing any of them reruns this script.
const WATCHED_ENV: [&str; 8] = [
    "NVCC",
    "CUDA_HOME",
    "CUDA_PATH",
    "CUDA_ROOT",
    "PYTHON",
    "DETKD_ALLOW_NO_NVCC",
    "DETKD_MAX_PTX_ISA",
    "DETKD_NVCC_FLAGS",
];

/// Repo-local venv that `scripts/install-nvcc.sh` fills with the pinned packages.
const LOCAL_VENV: &str = ".venv-nvcc";

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    // A directory: cargo rescans it, so new or edited .cu/.cuh files rerun the script.
    println!("cargo::rerun-if-changed=kernels");
    for var in WATCHED_ENV {
        println!("cargo::rerun-if-env-changed={var}");
    }

    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }

    if let Err(lines) = build_kernels() {
        // Any `cargo::error` fails the build, shown as clean `error: detkd@…: …` lines. Exiting
        // 0 keeps it at that: a non-zero exit (or a panic) makes cargo repeat the whole stdout.
        // A failed script has no fingerprint, so the next build reruns it.
        for line in lines {
            println!("cargo::error={line}");
        }
    }
}

/// Everything the `cuda` feature needs; `Err` holds the lines to report, one per `cargo::error`.
fn build_kernels() -> Result<(), Vec<String>> {
    let manifest_dir = PathBuf::from(env_required("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env_required("OUT_DIR")?);
    let kernel_dir = manifest_dir.join("kernels");
    let kernels = list_kernels(&kernel_dir)?;
    let max_isa = max_ptx_isa()?;

    match find_nvcc(&manifest_dir) {
        Some(nvcc) => {
            println!("cargo::rerun-if-changed={}", nvcc.path.display());
            println!(
                "cargo::warning=using {} ({})",
                nvcc.path.display(),
                nvcc.release
            );
            compile_all(&nvcc, &kernel_dir, &out_dir, &kernels, max_isa)?;
        }
        None if flag_set("DETKD_ALLOW_NO_NVCC") => {
            println!(
                "cargo::warning=DETKD_ALLOW_NO_NVCC=1 and no nvcc found: embedding EMPTY PTX; \
                 the GPU code type-checks but no kernel can load"
            );
            for kernel in &kernels {
                write_file(&kernel.ptx_path(&out_dir), "")?;
            }
        }
        None => return Err(nvcc_not_found_message()),
    }

    write_file(&out_dir.join("kernels.rs"), &generated_rust(&kernels))
}

/// A `kernels/<stem>.cu` file and the Rust constant its PTX is embedded as.
struct Kernel {
    source: PathBuf,
    stem: String,
    const_name: String,
}

impl Kernel {
    fn ptx_path(&self, out_dir: &Path) -> PathBuf {
        out_dir.join(format!("{}.ptx", self.stem))
    }
}

/// The `.cu` files of `kernels/`, sorted by name so the generated file is stable.
fn list_kernels(kernel_dir: &Path) -> Result<Vec<Kernel>, Vec<String>> {
    let entries = match fs::read_dir(kernel_dir) {
        Ok(entries) => entries,
        // No kernels yet: nothing to embed.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(vec![format!("cannot read {}: {e}", kernel_dir.display())]),
    };

    let mut kernels = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| vec![format!("cannot read {}: {e}", kernel_dir.display())])?
            .path();
        if path.extension() != Some(OsStr::new("cu")) {
            continue;
        }
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            return Err(vec![format!(
                "kernel file name is not UTF-8: {}",
                path.display()
            )]);
        };
        let Some(const_name) = const_name(stem) else {
            return Err(vec![format!(
                "{}: the file stem must be a Rust identifier (ASCII letters, digits, `_`; \
                 no leading digit), it names the PTX constant",
                path.display()
            )]);
        };
        kernels.push(Kernel {
            stem: stem.to_owned(),
            const_name,
            source: path,
        });
    }
    kernels.sort_by(|a, b| a.stem.cmp(&b.stem));
    Ok(kernels)
}

/// `roi_align` → `ROI_ALIGN`; `None` when the stem cannot name a constant.
fn const_name(stem: &str) -> Option<String> {
    let valid = stem.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && stem.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
    valid.then(|| stem.to_ascii_uppercase())
}

/// The `include!`-able Rust that embeds each PTX file.
fn generated_rust(kernels: &[Kernel]) -> String {
    let mut code = String::from("// @generated by build.rs from kernels/*.cu; do not edit.\n");
    for kernel in kernels {
        // Writing into a String cannot fail.
        let _ = write!(
            code,
            "\n/// PTX of `kernels/{stem}.cu` (`nvcc {flags}`).\n\
             pub const {name}: &str = include_str!(concat!(env!(\"OUT_DIR\"), \"/{stem}.ptx\"));\n",
            stem = kernel.stem,
            name = kernel.const_name,
            flags = NVCC_FLAGS.join(" "),
        );
    }
    code
}

/// An nvcc that answered `--version`.
struct Nvcc {
    path: PathBuf,
    /// e.g. `release 13.0, V13.0.88`, for the log and for error messages.
    release: String,
}

/// First nvcc that runs, in the order of toolchain.md section 6, plus the repo-local venv
/// (before the Python probe, so `scripts/install-nvcc.sh` works with no environment set).
fn find_nvcc(manifest_dir: &Path) -> Option<Nvcc> {
    if let Some(path) = env::var_os("NVCC").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        match probe_nvcc(&path) {
            Some(nvcc) => return Some(nvcc),
            // An explicit choice that fails deserves a word before falling back.
            None => println!(
                "cargo::warning=NVCC={} does not run `--version`; searching elsewhere",
                path.display()
            ),
        }
    }

    let toolkit_roots = ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"]
        .into_iter()
        .filter_map(env::var_os)
        .filter(|root| !root.is_empty())
        .map(|root| PathBuf::from(root).join("bin"));
    let path_dirs = env::var_os("PATH")
        .map(|path| env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    let fixed = toolkit_roots
        .chain(path_dirs)
        .chain([PathBuf::from("/usr/local/cuda/bin")])
        .map(|dir| dir.join("nvcc"))
        .chain(local_venv_nvcc(manifest_dir));
    if let Some(nvcc) = fixed.filter(|p| p.is_file()).find_map(|p| probe_nvcc(&p)) {
        return Some(nvcc);
    }

    // Last, because each probe starts an interpreter: pip's nvcc in any reachable Python.
    let pythons = env::var_os("PYTHON")
        .filter(|p| !p.is_empty())
        .into_iter()
        .chain(["python3".into(), "python".into()]);
    pythons
        .flat_map(|python| nvidia_package_dirs(Path::new(&python)))
        .map(|dir| dir.join("cu13").join("bin").join("nvcc"))
        .filter(|p| p.is_file())
        .find_map(|p| probe_nvcc(&p))
}

/// `<repo>/.venv-nvcc/lib/python*/site-packages/nvidia/cu13/bin/nvcc`, sorted for determinism.
fn local_venv_nvcc(manifest_dir: &Path) -> Vec<PathBuf> {
    let lib = manifest_dir.join(LOCAL_VENV).join("lib");
    let Ok(entries) = fs::read_dir(&lib) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("python"))
        .map(|e| e.path().join("site-packages/nvidia/cu13/bin/nvcc"))
        .collect();
    found.sort();
    found
}

/// Directories of the `nvidia` namespace package as seen by `python`; empty if it has none.
fn nvidia_package_dirs(python: &Path) -> Vec<PathBuf> {
    let output = Command::new(python)
        .args(["-c", "import nvidia; [print(p) for p in nvidia.__path__]"])
        .output();
    match output {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(PathBuf::from)
            .collect(),
        _ => Vec::new(),
    }
}

/// Runs `<path> --version`; `Some` if it succeeds.
fn probe_nvcc(path: &Path) -> Option<Nvcc> {
    let out = Command::new(path).arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // "Cuda compilation tools, release 13.0, V13.0.88" → "release 13.0, V13.0.88".
    let release = text
        .lines()
        .find_map(|line| line.find("release ").map(|at| line[at..].trim().to_owned()))
        .unwrap_or_else(|| "unknown release".to_owned());
    Some(Nvcc {
        path: path.to_path_buf(),
        release,
    })
}

fn nvcc_not_found_message() -> Vec<String> {
    vec![
        "feature `cuda` needs nvcc (CUDA 13.0) to compile kernels/*.cu to PTX, and none was found".into(),
        "  searched: $NVCC, $CUDA_HOME|$CUDA_PATH|$CUDA_ROOT/bin, PATH, /usr/local/cuda/bin, ./.venv-nvcc, and pip's nvidia/cu13/bin in $PYTHON, python3, python".into(),
        "  fix (repo-local venv, found automatically):  bash scripts/install-nvcc.sh".into(),
        format!("  or into your own Python environment:        pip install {PIP_PINS}"),
        "  or point at an existing CUDA 13.0 nvcc:      NVCC=/path/to/nvcc cargo build --features cuda".into(),
        "  (only to type-check the GPU code without nvcc: DETKD_ALLOW_NO_NVCC=1; kernels will not load)".into(),
    ]
}

/// Compiles every kernel on its own thread, then checks the PTX ISA versions.
fn compile_all(
    nvcc: &Nvcc,
    kernel_dir: &Path,
    out_dir: &Path,
    kernels: &[Kernel],
    max_isa: PtxIsa,
) -> Result<(), Vec<String>> {
    let extra_flags = env::var("DETKD_NVCC_FLAGS").unwrap_or_default();
    let extra_flags: Vec<&str> = extra_flags.split_whitespace().collect();

    // nvcc spends most of its time in single-threaded cicc/gcc, so one thread per file pays.
    let results: Vec<Result<PtxIsa, Vec<String>>> = thread::scope(|scope| {
        let handles: Vec<_> = kernels
            .iter()
            .map(|kernel| {
                let extra_flags = &extra_flags;
                scope.spawn(move || {
                    let ptx = compile_one(nvcc, kernel_dir, out_dir, kernel, extra_flags)?;
                    assemble_for_hopper(nvcc, kernel, &kernel.ptx_path(out_dir))?;
                    ptx_isa(kernel, &ptx)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("nvcc worker thread panicked"))
            .collect()
    });

    // Report every failing kernel, not only the first.
    let mut errors = Vec::new();
    let mut too_new = Vec::new();
    for (kernel, result) in kernels.iter().zip(results) {
        match result {
            Ok(isa) if isa > max_isa => {
                too_new.push(format!("{} ({isa})", kernel.source.display()));
            }
            Ok(_) => {}
            Err(lines) => errors.extend(lines),
        }
    }
    if !too_new.is_empty() {
        errors.extend(isa_too_new_message(nvcc, &too_new, max_isa));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Assembles the PTX for sm_90 with the ptxas beside nvcc, as the driver's JIT will on an H100/H200: invalid
/// PTX (which `nvcc -ptx` alone never assembles) fails the build here instead of at the first launch.
/// Skipped when that nvcc ships no ptxas.
fn assemble_for_hopper(nvcc: &Nvcc, kernel: &Kernel, ptx_path: &Path) -> Result<(), Vec<String>> {
    let Some(ptxas) = nvcc
        .path
        .parent()
        .map(|dir| dir.join("ptxas"))
        .filter(|p| p.is_file())
    else {
        return Ok(());
    };
    let out = Command::new(&ptxas)
        .args(["-arch=sm_90", "-o", "/dev/null"])
        .arg(ptx_path)
        .output()
        .map_err(|e| vec![format!("cannot run {}: {e}", ptxas.display())])?;
    if out.status.success() {
        return Ok(());
    }
    let mut lines = vec![format!(
        "ptxas -arch=sm_90 rejected the PTX of {}",
        kernel.source.display()
    )];
    let text = String::from_utf8_lossy(&out.stderr);
    lines.extend(
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("  {l}")),
    );
    Err(lines)
}

/// Runs nvcc on one `.cu` file and returns the PTX text.
fn compile_one(
    nvcc: &Nvcc,
    kernel_dir: &Path,
    out_dir: &Path,
    kernel: &Kernel,
    extra_flags: &[&str],
) -> Result<String, Vec<String>> {
    let ptx_path = kernel.ptx_path(out_dir);
    let mut cmd = Command::new(&nvcc.path);
    cmd.args(NVCC_FLAGS)
        .arg("-I")
        .arg(kernel_dir)
        .args(extra_flags)
        .arg("-o")
        .arg(&ptx_path)
        .arg(&kernel.source);

    let out = cmd
        .output()
        .map_err(|e| vec![format!("cannot run {}: {e}", nvcc.path.display())])?;
    if !out.status.success() {
        let mut lines = vec![format!(
            "nvcc failed on {} ({}): {cmd:?}",
            kernel.source.display(),
            out.status
        )];
        for stream in [&out.stdout, &out.stderr] {
            let text = String::from_utf8_lossy(stream);
            let nonblank = text.lines().filter(|l| !l.trim().is_empty());
            lines.extend(nonblank.map(|l| format!("  {l}")));
        }
        return Err(lines);
    }
    fs::read_to_string(&ptx_path).map_err(|e| {
        vec![format!(
            "nvcc wrote no readable {}: {e}",
            ptx_path.display()
        )]
    })
}

/// PTX ISA version, from a `.version X.Y` directive or `DETKD_MAX_PTX_ISA`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct PtxIsa {
    major: u32,
    minor: u32,
}

impl PtxIsa {
    fn parse(text: &str) -> Option<Self> {
        let (major, minor) = text.trim().split_once('.')?;
        Some(Self {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }
}

impl std::fmt::Display for PtxIsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

fn max_ptx_isa() -> Result<PtxIsa, Vec<String>> {
    match env::var("DETKD_MAX_PTX_ISA") {
        Ok(text) if !text.trim().is_empty() => PtxIsa::parse(&text).ok_or_else(|| {
            vec![format!(
                "DETKD_MAX_PTX_ISA={text:?} is not a version like 9.0"
            )]
        }),
        _ => Ok(DEFAULT_MAX_PTX_ISA),
    }
}

/// The `.version X.Y` directive nvcc writes at the top of every PTX file.
fn ptx_isa(kernel: &Kernel, ptx: &str) -> Result<PtxIsa, Vec<String>> {
    ptx.lines()
        .find_map(|line| line.trim().strip_prefix(".version "))
        .and_then(PtxIsa::parse)
        .ok_or_else(|| {
            vec![format!(
                "{}: no `.version X.Y` line in nvcc's PTX",
                kernel.source.display()
            )]
        })
}

/// A driver refuses PTX newer than it knows only at load time, on the GPU machine; so the
/// build stops here instead.
fn isa_too_new_message(nvcc: &Nvcc, too_new: &[String], max: PtxIsa) -> Vec<String> {
    let mut lines = vec![format!(
        "PTX ISA above the allowed {max} (DETKD_MAX_PTX_ISA; default 9.0, the most that driver 580 \
         (CUDA 13.0) on the GPU machines can JIT):"
    )];
    lines.extend(too_new.iter().map(|kernel| format!("  {kernel}")));
    lines.extend([
        format!(
            "nvcc {} ({}) probably has an unpinned nvidia-nvvm (cicc writes the PTX version)",
            nvcc.path.display(),
            nvcc.release
        ),
        format!("  fix: bash scripts/install-nvcc.sh, or pip install {PIP_PINS}"),
        "  and set NVCC=<that nvcc> if this one is still found first".into(),
        "  or, if every target driver is newer: DETKD_MAX_PTX_ISA=<its ISA, e.g. 9.5>".into(),
    ]);
    lines
}

fn env_required(name: &str) -> Result<String, Vec<String>> {
    env::var(name).map_err(|_| vec![format!("cargo did not set {name}")])
}

/// `1`/`true`/`yes` (any case) count as set; `0` or empty do not.
fn flag_set(name: &str) -> bool {
    env::var(name)
        .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
}

fn write_file(path: &Path, contents: &str) -> Result<(), Vec<String>> {
    fs::write(path, contents).map_err(|e| vec![format!("cannot write {}: {e}", path.display())])
}
