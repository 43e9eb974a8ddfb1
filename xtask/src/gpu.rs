//! `cargo xtask gpu-build | gpu-run | gpu-check`: build the `cuda` feature on this CPU-only machine
//! and run the result on the GPU machine (recipe and facts: `../shared/GPU.md`).
//!
//! # The two machines
//! The development machine has no GPU and no CUDA; the GPU machine (one H100, driver 580 = CUDA 13.0,
//! PyTorch cu130 in `/opt/torch/.venv`) has no Rust toolchain and no network. So:
//!
//! 1. `cargo xtask gpu-build` (here) installs NVIDIA's CUDA 13.0 toolkit wheels from PyPI into
//!    `.cuda/wheels` (one `pip install --no-deps --target`, skipped when already complete), makes
//!    `.cuda/lib` (unversioned `lib*.so` links for the linker and a stub `libcuda.so` generated from
//!    `cuda.h`, since `libcuda` ships with the driver), builds the CUDA binaries into `gpu/target`
//!    (a target folder of its own, so it never fights the shared CPU build), and copies them,
//!    stripped, into `gpu/bin/`. Both `.cuda/` and `gpu/` are ignored by git.
//! 2. On the GPU machine, `bash xtask/gpu-run.sh <binary> [args]` runs `gpu/bin/<binary>` with
//!    `LD_LIBRARY_PATH` set to the driver (`/usr/local/nvidia/lib64`) and the CUDA 13 / cuDNN 9
//!    libraries of the PyTorch venv (`site-packages/nvidia/{cu13,cudnn}/lib`).
//!    `cargo xtask gpu-run -- <binary> [args]` prints that invocation (or runs it with `--exec`
//!    where this machine has a GPU).
//! 3. `cargo xtask gpu-check` prints the device call that runs `gpu_check` (the CUDA-vs-CPU op
//!    comparisons of `crates/nn3d/examples/gpu_check.rs`); with `--exec` it runs it here.
//!
//! With the project's device tool the call is: carry `["gpu/bin/gpu_check"]` (the carried paths
//! may hold 64 MiB in all and each binary is about 50 MB, so carry only the one you run), command
//! `bash xtask/gpu-run.sh gpu_check` (add `--bench` for full-size CUDA timings of conv3d and batch
//! norm). For the op benchmark beside PyTorch in the same device call: carry
//! `["gpu/bin/bench_nn3d"]`, command
//! `bash xtask/gpu-run.sh bench_nn3d --device cuda --json > $OUT/rust.json &&
//! /opt/torch/.venv/bin/python3 tests/reference/bench_nn3d_torch.py --device cuda > $OUT/torch.json`,
//! then here `cargo xtask bench nn3d --device cuda --rust-json <rust.json> --torch-json <torch.json>`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::util;

/// The CUDA 13.0 toolkit wheels (nvcc kept at 13.0.x: driver 580 loads PTX ISA <= 9.0 only).
/// Installed in ONE pip call: separate calls into the same target clobber the shared `nvidia/` tree.
pub const WHEELS: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-cccl==13.0.85",
    "nvidia-cuda-nvrtc==13.0.88",
    "nvidia-curand==10.4.0.35",
    "nvidia-cublas==13.1.0.3",
    "nvidia-cudnn-cu13==9.15.1.9",
];

/// Versioned sonames shipped by the wheels that the linker needs as unversioned `lib*.so` links.
const LINK_LIBS: &[&str] = &[
    "libcublas.so.13",
    "libcublasLt.so.13",
    "libcurand.so.10",
    "libnvrtc.so.13",
    "libcudart.so.13",
    "libcudnn.so.9",
];

/// A binary `gpu-build` makes: cargo package, the package's folder, example name (`None` for the
/// package's own binary), and file name in `gpu/bin`.
struct GpuBinary {
    package: &'static str,
    dir: &'static str,
    example: Option<&'static str>,
    name: &'static str,
}

/// The binaries `gpu-build` makes by default (each is about 50 MB stripped).
const BINARIES: &[GpuBinary] = &[
    GpuBinary {
        package: "duoseg-nn3d",
        dir: "crates/nn3d",
        example: Some("gpu_check"),
        name: "gpu_check",
    },
    GpuBinary {
        package: "duoseg-nn3d",
        dir: "crates/nn3d",
        example: Some("bench_nn3d"),
        name: "bench_nn3d",
    },
    GpuBinary {
        package: "duoseg-models",
        dir: "crates/models",
        example: Some("bench_step"),
        name: "bench_step",
    },
    GpuBinary {
        package: "duoseg-train",
        dir: "crates/train",
        example: Some("bench_workload"),
        name: "bench_workload",
    },
    GpuBinary {
        package: "cli",
        dir: "crates/cli",
        example: None,
        name: "duoseg",
    },
];

/// Compute capability the kernels are built for (becomes sm_90a: H100/H200 only).
const COMPUTE_CAP: &str = "90";

const BUILD_USAGE: &str = "usage: cargo xtask gpu-build [--only <name>]...

Installs the CUDA toolkit wheels into .cuda/wheels (once), makes .cuda/lib, builds the CUDA
binaries into gpu/target and copies them stripped into gpu/bin.
Names: gpu_check (CUDA-vs-CPU op check), bench_nn3d (op benchmark), bench_step (one training
step, per phase), bench_workload (the hippocampus step and sliding-window inference through the
method code), duoseg (the CLI).";

fn wheels_dir() -> PathBuf {
    util::root().join(".cuda/wheels")
}

fn toolkit_root() -> PathBuf {
    wheels_dir().join("nvidia/cu13")
}

fn link_dir() -> PathBuf {
    util::root().join(".cuda/lib")
}

/// `cargo xtask gpu-build`.
pub fn build(args: &[String]) -> Result<()> {
    let mut only = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--only" => only.push(it.next().context("--only needs a binary name")?.clone()),
            "-h" | "--help" => {
                println!("{BUILD_USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{BUILD_USAGE}"),
        }
    }
    let selected: Vec<&GpuBinary> = BINARIES
        .iter()
        .filter(|b| only.is_empty() || only.iter().any(|o| o == b.name))
        .collect();
    if selected.is_empty() {
        bail!("no binary named {only:?}; known: gpu_check, bench_nn3d, bench_step, bench_workload, duoseg");
    }

    install_wheels()?;
    make_link_dir()?;
    let bin_dir = util::root().join("gpu/bin");
    fs::create_dir_all(&bin_dir).with_context(|| format!("cannot create {}", bin_dir.display()))?;
    fs::create_dir_all(util::root().join("gpu/target"))?;
    // Build every binary even when one fails (another crate may be mid-change), then report.
    let mut failed = Vec::new();
    for b in selected {
        if let Some(example) = b.example {
            let src = util::root()
                .join(b.dir)
                .join("examples")
                .join(format!("{example}.rs"));
            if !src.exists() {
                eprintln!(
                    "gpu-build: skipping {}: {} does not exist",
                    b.name,
                    src.display()
                );
                continue;
            }
        }
        if let Err(e) = build_one(b, &bin_dir) {
            eprintln!("gpu-build: {} failed: {e:#}", b.name);
            failed.push(b.name);
        }
    }
    if !failed.is_empty() {
        bail!("gpu-build failed for {failed:?}");
    }
    Ok(())
}

/// Builds one binary with [`cuda_cargo`] and copies it, stripped, into `bin_dir`.
fn build_one(b: &GpuBinary, bin_dir: &Path) -> Result<()> {
    let start = Instant::now();
    let mut cmd = cuda_cargo();
    cmd.args(["build", "--release", "--features", "cuda", "-p", b.package]);
    if let Some(example) = b.example {
        cmd.args(["--example", example]);
    }
    util::run(&mut cmd)?;
    let built = match b.example {
        Some(example) => util::root()
            .join("gpu/target/release/examples")
            .join(example),
        None => util::root().join("gpu/target/release").join(b.name),
    };
    let dest = bin_dir.join(b.name);
    copy_stripped(&built, &dest)?;
    let size = fs::metadata(&dest)?.len();
    eprintln!(
        "gpu-build: {} ({:.1} MB stripped, cargo {:.0} s)",
        dest.display(),
        size as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A `cargo` command with the environment of GPU.md: toolkit root, nvcc on PATH, compute
/// capability, the link folder, and the separate `gpu/target` target folder.
fn cuda_cargo() -> Command {
    let root = toolkit_root();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![root.join("bin")];
    paths.extend(std::env::split_paths(&path));
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.env("CUDA_ROOT", &root)
        .env("CUDA_HOME", &root)
        .env("CUDA_PATH", &root)
        .env("NVCC", root.join("bin/nvcc"))
        .env("PATH", std::env::join_paths(paths).unwrap_or(path))
        .env("CUDA_COMPUTE_CAP", COMPUTE_CAP)
        .env("CUDAFORGE_THREADS", threads.to_string())
        .env(
            "RUSTFLAGS",
            format!("-L native={}", link_dir().to_string_lossy()),
        )
        .env("CARGO_TARGET_DIR", util::root().join("gpu/target"));
    cmd
}

/// Installs the wheels in one pip call unless every one of [`WHEELS`] already has its
/// `<name>-<version>.dist-info` folder in `.cuda/wheels`.
fn install_wheels() -> Result<()> {
    let dir = wheels_dir();
    let missing: Vec<&str> = WHEELS
        .iter()
        .copied()
        .filter(|w| !dir.join(dist_info_name(w)).is_dir())
        .collect();
    if missing.is_empty() {
        eprintln!("gpu-build: toolkit wheels present in {}", dir.display());
        return Ok(());
    }
    eprintln!("gpu-build: missing wheels {missing:?}, installing all (about 1 GB)");
    // A partial or different install: start over (pip --target does not merge the shared
    // `nvidia/` tree of several wheels installed in separate calls).
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let mut cmd = Command::new(python);
    cmd.args(["-m", "pip", "install", "--no-deps", "--target"])
        .arg(&dir)
        .args(WHEELS);
    util::run(&mut cmd)
}

/// `nvidia-cuda-nvcc==13.0.88` -> `nvidia_cuda_nvcc-13.0.88.dist-info` (pip's folder name).
fn dist_info_name(wheel: &str) -> String {
    let (name, version) = wheel.split_once("==").unwrap_or((wheel, ""));
    format!("{}-{version}.dist-info", name.replace('-', "_"))
}

/// Makes `.cuda/lib`: `lib*.so` links to the versioned libraries and the stub `libcuda.so`.
fn make_link_dir() -> Result<()> {
    let dir = link_dir();
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let search = [
        toolkit_root().join("lib"),
        wheels_dir().join("nvidia/cudnn/lib"),
    ];
    for soname in LINK_LIBS {
        let target = search
            .iter()
            .map(|d| d.join(soname))
            .find(|p| p.exists())
            .with_context(|| format!("{soname} not found in {search:?}"))?;
        let stem = soname.split(".so").next().unwrap_or(soname);
        let link = dir.join(format!("{stem}.so"));
        if fs::symlink_metadata(&link).is_ok() {
            fs::remove_file(&link).with_context(|| format!("cannot remove {}", link.display()))?;
        }
        std::os::unix::fs::symlink(&target, &link)
            .with_context(|| format!("cannot link {} -> {}", link.display(), target.display()))?;
    }
    make_libcuda_stub(&dir)
}

/// Compiles a stub `libcuda.so` (soname `libcuda.so.1`) that defines every `cu*` function named
/// in the toolkit's `cuda.h`, both as written and after the header's versioning macros
/// (`cuDeviceTotalMem` -> `cuDeviceTotalMem_v2`, per-thread-stream `_ptds`/`_ptsz` variants).
/// It only satisfies the linker: at run time the driver's real `libcuda.so.1` is loaded. Every stub
/// returns CUDA_ERROR_UNKNOWN (999), so a binary that picks it up by mistake fails loudly.
fn make_libcuda_stub(dir: &Path) -> Result<()> {
    let header = toolkit_root().join("include/cuda.h");
    let text =
        fs::read_to_string(&header).with_context(|| format!("cannot read {}", header.display()))?;
    let mut names = cu_function_names(&text);
    for defines in [&[][..], &["-DCUDA_API_PER_THREAD_DEFAULT_STREAM"][..]] {
        let out = Command::new("gcc")
            .args(["-E", "-P", "-x", "c"])
            .args(defines)
            .arg("-I")
            .arg(toolkit_root().join("include"))
            .arg(&header)
            .output()
            .context("cannot run gcc -E on cuda.h")?;
        if !out.status.success() {
            bail!(
                "gcc -E {} failed: {}",
                header.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        names.extend(cu_function_names(&String::from_utf8_lossy(&out.stdout)));
    }
    if names.len() < 100 {
        bail!(
            "found only {} cu* functions in {}: header format changed?",
            names.len(),
            header.display()
        );
    }
    let mut c =
        String::from("/* Generated by `cargo xtask gpu-build` from cuda.h: link-time stub. */\n");
    for name in &names {
        c.push_str(&format!("int {name}(void) {{ return 999; }}\n"));
    }
    let src = dir.join("libcuda_stub.c");
    fs::write(&src, c).with_context(|| format!("cannot write {}", src.display()))?;
    util::run(
        Command::new("gcc")
            .args(["-shared", "-fPIC", "-O0", "-Wl,-soname,libcuda.so.1", "-o"])
            .arg(dir.join("libcuda.so"))
            .arg(&src),
    )?;
    eprintln!("gpu-build: stub libcuda.so with {} symbols", names.len());
    Ok(())
}

/// Identifiers `cu[A-Z]\w*` directly followed (after blanks) by `(`: the driver API's functions.
fn cu_function_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < bytes.len() {
        if !is_ident(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_ident(bytes[i]) {
            i += 1;
        }
        let word = &text[start..i];
        let mut j = i;
        while j < bytes.len() && (bytes[j] == b' ' || bytes[j] == b'\t') {
            j += 1;
        }
        let is_cu_fn = word.len() > 2
            && word.starts_with("cu")
            && word.as_bytes()[2].is_ascii_uppercase()
            && j < bytes.len()
            && bytes[j] == b'(';
        if is_cu_fn {
            names.insert(word.to_string());
        }
    }
    names
}

/// Copies `src` to `dest` and strips it (atomically: temp file + rename).
fn copy_stripped(src: &Path, dest: &Path) -> Result<()> {
    let tmp = dest.with_extension("tmp");
    fs::copy(src, &tmp)
        .with_context(|| format!("cannot copy {} to {}", src.display(), tmp.display()))?;
    util::run(Command::new("strip").arg(&tmp))?;
    fs::rename(&tmp, dest).with_context(|| format!("cannot rename to {}", dest.display()))?;
    Ok(())
}

const RUN_USAGE: &str = "usage: cargo xtask gpu-run [--exec] -- <binary in gpu/bin> [args]

Prints the device-tool call that runs gpu/bin/<binary> on the GPU machine through
xtask/gpu-run.sh (which sets LD_LIBRARY_PATH to the driver and the PyTorch venv's CUDA 13 and
cuDNN 9 libraries). With --exec, runs it on this machine instead (needs a GPU and that venv).";

/// `cargo xtask gpu-run`.
pub fn run(args: &[String]) -> Result<()> {
    let (exec, rest) = parse_exec(args);
    let rest: Vec<&String> = rest.iter().skip_while(|a| a.as_str() == "--").collect();
    let Some((binary, bin_args)) = rest.split_first() else {
        bail!("missing binary name\n{RUN_USAGE}");
    };
    if binary.as_str() == "-h" || binary.as_str() == "--help" {
        println!("{RUN_USAGE}");
        return Ok(());
    }
    let bin_args: Vec<String> = bin_args.iter().map(|a| a.to_string()).collect();
    launch(binary, &bin_args, exec)
}

/// `cargo xtask gpu-check`.
pub fn check(args: &[String]) -> Result<()> {
    let (exec, rest) = parse_exec(args);
    let rest: Vec<String> = rest.into_iter().filter(|a| a != "--").collect();
    launch("gpu_check", &rest, exec)
}

fn parse_exec(args: &[String]) -> (bool, Vec<String>) {
    let exec = args.iter().any(|a| a == "--exec");
    (
        exec,
        args.iter().filter(|a| *a != "--exec").cloned().collect(),
    )
}

/// Prints (or, with `exec`, runs) `bash xtask/gpu-run.sh <binary> [args]`.
fn launch(binary: &str, args: &[String], exec: bool) -> Result<()> {
    if binary.contains('/') || binary.is_empty() {
        bail!("binary {binary:?} must be a file name in gpu/bin");
    }
    let bin = util::root().join("gpu/bin").join(binary);
    if !bin.exists() {
        bail!(
            "{} not found: run `cargo xtask gpu-build` first",
            bin.display()
        );
    }
    let size = fs::metadata(&bin)?.len();
    if exec {
        return util::run(
            Command::new("bash")
                .arg("xtask/gpu-run.sh")
                .arg(binary)
                .args(args),
        );
    }
    let mut command = format!("bash xtask/gpu-run.sh {binary}");
    for a in args {
        command.push(' ');
        command.push_str(&shell_quote(a));
    }
    println!("On the GPU machine (device tool `run`):");
    println!(
        "  carry:   [\"gpu/bin/{binary}\"]   ({:.1} MB of the 64 MiB carry limit)",
        size as f64 / 1e6
    );
    println!("  command: {command}");
    println!(
        "(or, on a GPU machine with this checkout: cargo xtask gpu-run --exec -- {binary} ...)"
    );
    Ok(())
}

fn shell_quote(s: &str) -> String {
    let plain = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,".contains(&b));
    if plain && !s.is_empty() {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

const PACK_USAGE: &str =
    "usage: cargo xtask gpu-pack --data DIR [--train N] [--test N] [--reference DIR]

Fills gpu/carry/ with what xtask/gpu-la-bench.sh needs on the GPU machine, within the device
tool's 64 MiB: every binary of gpu/bin xz-compressed into gpu/carry/bin/, the first N cases of
DIR's train.list and M of its test.list (images + labels, default 8 and 2) as a dataset folder
gpu/carry/la/ (images/, labels/, train.list, test.list), and the PyTorch anchor
(bench_torch.py, vnet_ref.py from --reference, default ../shared/reference) in gpu/carry/ref/.
DIR is an MSD-style folder (imagesTr/<id>[_0000].nii.gz, labelsTr/<id>.nii.gz) with train.list
and test.list, such as ../shared/data/la2018. Then the device call: carry [\"gpu/carry\"],
command `bash xtask/gpu-la-bench.sh gpu/carry $OUT/la 200 && rm -rf $OUT/la`, and here
`python3 xtask/gpu_la_summary.py <unpacked la/>` (the script already wrote la/gpu-la.json).";

/// The device tool carries at most this much per call.
pub(crate) const CARRY_LIMIT: u64 = 64 << 20;

/// `cargo xtask gpu-pack`.
pub fn pack(args: &[String]) -> Result<()> {
    let mut data = None;
    let (mut n_train, mut n_test) = (8usize, 2usize);
    let mut reference = util::root().join("../shared/reference");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--data" => data = Some(PathBuf::from(value()?)),
            "--train" => n_train = value()?.parse().context("--train")?,
            "--test" => n_test = value()?.parse().context("--test")?,
            "--reference" => reference = PathBuf::from(value()?),
            "-h" | "--help" => {
                println!("{PACK_USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{PACK_USAGE}"),
        }
    }
    let data = data.with_context(|| format!("--data is required\n{PACK_USAGE}"))?;
    let carry = util::root().join("gpu/carry");
    if carry.exists() {
        fs::remove_dir_all(&carry).with_context(|| format!("cannot remove {}", carry.display()))?;
    }
    for sub in ["bin", "la/images", "la/labels", "ref"] {
        fs::create_dir_all(carry.join(sub))?;
    }

    let bin_dir = util::root().join("gpu/bin");
    let mut packed = 0;
    for entry in fs::read_dir(&bin_dir).with_context(|| {
        format!(
            "cannot list {} (run cargo xtask gpu-build)",
            bin_dir.display()
        )
    })? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if !path.is_file() || name.ends_with(".tmp") {
            continue;
        }
        let dest = carry.join("bin").join(format!("{name}.xz"));
        let file =
            fs::File::create(&dest).with_context(|| format!("cannot create {}", dest.display()))?;
        let status = Command::new("xz")
            .args(["-6", "-T0", "-c"])
            .arg(&path)
            .stdout(file)
            .status()
            .context("cannot run xz (install the xz-utils package)")?;
        if !status.success() {
            bail!("xz failed on {}", path.display());
        }
        packed += 1;
    }
    if packed == 0 {
        bail!(
            "no binaries in {} (run cargo xtask gpu-build)",
            bin_dir.display()
        );
    }

    let mut lists = Vec::new();
    for (list, n) in [("train.list", n_train), ("test.list", n_test)] {
        let path = data.join(list);
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let ids: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .take(n)
            .collect();
        if ids.len() < n {
            bail!(
                "{} lists {} cases, fewer than the {n} asked for",
                path.display(),
                ids.len()
            );
        }
        for id in &ids {
            let image = ["", "_0000"]
                .iter()
                .map(|suffix| data.join(format!("imagesTr/{id}{suffix}.nii.gz")))
                .find(|p| p.is_file())
                .with_context(|| format!("no imagesTr/{id}[_0000].nii.gz in {}", data.display()))?;
            let label = data.join(format!("labelsTr/{id}.nii.gz"));
            for (src, sub) in [(&image, "images"), (&label, "labels")] {
                let dest = carry.join("la").join(sub).join(format!("{id}.nii.gz"));
                fs::copy(src, &dest).with_context(|| {
                    format!("cannot copy {} to {}", src.display(), dest.display())
                })?;
            }
        }
        fs::write(carry.join("la").join(list), ids.join("\n") + "\n")?;
        lists.push(ids.len());
    }

    for file in ["bench_torch.py", "vnet_ref.py"] {
        let src = reference.join(file);
        if src.is_file() {
            fs::copy(&src, carry.join("ref").join(file))?;
        } else {
            eprintln!(
                "gpu-pack: {} not found: the PyTorch anchor will not run",
                src.display()
            );
        }
    }

    let total = dir_size(&carry)?;
    eprintln!(
        "gpu-pack: {} ({packed} binaries, {} train + {} test cases): {:.1} MiB of the {} MiB a call carries",
        carry.display(),
        lists[0],
        lists[1],
        total as f64 / (1 << 20) as f64,
        CARRY_LIMIT >> 20
    );
    if total > CARRY_LIMIT {
        bail!("gpu/carry is larger than a device call carries: use fewer cases");
    }
    Ok(())
}

/// Total size of the files under `dir`.
pub(crate) fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cu_functions_and_skips_other_words() {
        let text = "CUresult CUDAAPI cuInit(unsigned int Flags);\n\
                    #define cuDeviceTotalMem cuDeviceTotalMem_v2\n\
                    CUresult CUDAAPI cuDeviceTotalMem_v2 (size_t *bytes, CUdevice dev);\n\
                    typedef struct CUctx_st *CUcontext; cudaMalloc(x); cuda(y); cu(z);";
        let names: Vec<_> = cu_function_names(text).into_iter().collect();
        assert_eq!(names, ["cuDeviceTotalMem_v2", "cuInit"]);
    }

    #[test]
    fn dist_info_folder_names_follow_pip() {
        assert_eq!(
            dist_info_name("nvidia-cudnn-cu13==9.15.1.9"),
            "nvidia_cudnn_cu13-9.15.1.9.dist-info"
        );
    }

    /// `xtask/gpu-sweep.sh` against fakes of the binary, the GPU machine's Python and `nvidia-smi`
    /// (its `-l` monitor never exits, as the real one): it runs the jobs, returns each finished
    /// run's small files without checkpoints, reports the failed one, does not wait on the monitor,
    /// and a second call skips what finished.
    #[test]
    fn gpu_sweep_script_runs_jobs_and_returns_their_files() {
        let have = |prog: &str, arg: &str| {
            Command::new(prog)
                .arg(arg)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        if !have("python3", "--version") || !have("tar", "--version") {
            eprintln!("skipping gpu_sweep_script test: needs python3 and tar");
            return;
        }
        let tmp = std::env::temp_dir().join(format!("duoseg-gpu-sweep-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        let write = |rel: &str, text: &str| {
            let p = tmp.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, text).unwrap();
            p
        };
        let fake = write(
            "fake-duoseg",
            "#!/bin/bash\necho \"$*\" >> \"$(dirname \"$0\")/args.txt\"\n\
             while [ $# -gt 0 ]; do [ \"$1\" = --out ] && o=\"$2\"; shift; done\n\
             mkdir -p \"$o/checkpoints\"; echo w > \"$o/checkpoints/iter-1.safetensors\"\n\
             case \"$o\" in *fail*) echo boom; exit 3;; esac\n\
             for f in summary.json config.json log.jsonl; do echo '{}' > \"$o/$f\"; done\n",
        );
        let xz = tmp.join("carry/bin/duoseg.xz");
        fs::create_dir_all(xz.parent().unwrap()).unwrap();
        let ok = Command::new("python3")
            .args([
                "-c",
                "import lzma, sys; open(sys.argv[2], 'wb').write(lzma.compress(open(sys.argv[1], 'rb').read()))",
            ])
            .arg(&fake)
            .arg(&xz)
            .status()
            .unwrap();
        assert!(ok.success());
        write("carry/data/set/dataset.json", "{}");
        write(
            "carry/jobs/1.tsv",
            "# code abc123\nruns/sweep-t/good-s1\t--config\tc.json\t--seed\t1\n\
             runs/sweep-t/fail-s1\t--config\tc.json\t--seed\t1\n",
        );
        write("py/nvidia/__init__.py", "");
        fs::create_dir_all(tmp.join("py/nvidia/cu13/lib")).unwrap();
        let smi = write(
            "path/nvidia-smi",
            "#!/bin/bash\ncase \"$*\" in *-l*) while true; do sleep 1; done;; \
             *name*) echo FakeGPU;; *) echo smi;; esac\n",
        );
        let exe = |p: &Path| {
            Command::new("chmod").arg("+x").arg(p).status().unwrap();
        };
        exe(&smi);
        let path = format!(
            "{}:{}",
            tmp.join("path").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let run = |out: &str| {
            let status = Command::new("timeout")
                .args(["60", "bash"])
                .arg(util::root().join("xtask/gpu-sweep.sh"))
                .arg(tmp.join("carry"))
                .arg(tmp.join(out))
                .args(["2", "60"])
                .env("PATH", &path)
                .env("DUOSEG_GPU_PYTHON", "python3")
                .env("PYTHONPATH", tmp.join("py"))
                .env("DUOSEG_GPU_SWEEP_WORK", tmp.join("work"))
                .env("DUOSEG_GPU_MIN_RUN_S", "5")
                .status()
                .unwrap();
            // 124: the script waited on its monitor until `timeout` stopped it
            assert!(status.success(), "gpu-sweep.sh: {status}");
            fs::read_to_string(tmp.join(out).join("progress.txt")).unwrap()
        };
        let progress = run("out1");
        assert!(progress.contains("done runs/sweep-t/good-s1"), "{progress}");
        assert!(
            progress.contains("FAILED runs/sweep-t/fail-s1 rc 3"),
            "{progress}"
        );
        let failures = fs::read_to_string(tmp.join("out1/failures.txt")).unwrap();
        assert!(failures.contains("boom"), "{failures}");
        let listing = Command::new("tar")
            .arg("tzf")
            .arg(tmp.join("out1/runs.tgz"))
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        for f in [
            "summary.json",
            "config.json",
            "log.jsonl",
            "code-version.txt",
        ] {
            assert!(
                listing.contains(&format!("runs/sweep-t/good-s1/{f}")),
                "{listing}"
            );
        }
        assert!(
            !listing.contains("safetensors") && !listing.contains("fail-s1"),
            "{listing}"
        );
        let version =
            fs::read_to_string(tmp.join("work/runs/sweep-t/good-s1/code-version.txt")).unwrap();
        assert_eq!(version.trim(), "abc123 cuda FakeGPU");
        let args = fs::read_to_string(tmp.join("work/bin/args.txt")).unwrap();
        assert!(
            args.contains("--resume") && args.contains("--device cuda:0"),
            "{args}"
        );
        assert!(
            args.contains("carry/data/set/ --config c.json --seed 1"),
            "{args}"
        );

        let again = run("out2");
        assert!(
            again.contains("done runs/sweep-t/good-s1 earlier"),
            "{again}"
        );
        let _ = fs::remove_dir_all(&tmp);
    }

    #[test]
    fn quotes_only_what_needs_it() {
        assert_eq!(shell_quote("--shapes=3"), "--shapes=3");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
