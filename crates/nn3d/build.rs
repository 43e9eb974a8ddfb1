//! With the `cuda` feature: compiles `src/cuda/batch_norm.cu` to PTX (`$OUT_DIR/batch_norm.ptx`)
//! with `nvcc` (`$NVCC`, else `$CUDA_ROOT/bin/nvcc`, else `nvcc` on `PATH`), for the virtual
//! architecture `compute_$CUDA_COMPUTE_CAP` (default 75); the driver JIT-compiles it for the GPU
//! at hand. Without the feature it does nothing. `cargo xtask gpu-build` sets that environment.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() -> Result<(), String> {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return Ok(());
    }
    let src = "src/cuda/batch_norm.cu";
    println!("cargo:rerun-if-changed={src}");
    for var in ["NVCC", "CUDA_ROOT", "CUDA_COMPUTE_CAP"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let nvcc = match (env::var_os("NVCC"), env::var_os("CUDA_ROOT")) {
        (Some(nvcc), _) => PathBuf::from(nvcc),
        (None, Some(root)) => PathBuf::from(root).join("bin/nvcc"),
        (None, None) => PathBuf::from("nvcc"),
    };
    let cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "75".into());
    if cap.is_empty() || !cap.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "CUDA_COMPUTE_CAP must be digits like 90, got {cap:?}"
        ));
    }
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?)
        .join("batch_norm.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", &format!("-arch=compute_{cap}"), "-o"])
        .arg(&out)
        .arg(src)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
    if !status.success() {
        return Err(format!("{} failed on {src} with {status}", nvcc.display()));
    }
    Ok(())
}
