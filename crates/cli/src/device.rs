//! `--device` and `--no-tf32`, shared by the commands that run the networks.

use anyhow::{bail, Result};
use candle_core::Device;
use clap::Args;

/// Where the networks run and at which convolution precision.
#[derive(Debug, Clone, Args)]
pub struct DeviceArgs {
    /// Device: cpu or cuda:N.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: String,
    /// Keep CUDA convolutions in plain f32. By default cuDNN may use TF32 tensor cores, as PyTorch
    /// does for convolutions (about 1e-3 relative error, 2.7x faster training steps measured on an
    /// H200). No effect on the CPU.
    #[arg(long)]
    pub no_tf32: bool,
}

impl DeviceArgs {
    /// Opens the device, sets the convolution precision for this process and, on a GPU, makes the
    /// device's memory pool keep freed memory for the next step (as PyTorch's caching allocator).
    pub fn open(&self) -> Result<Device> {
        let device = parse_device(&self.device)?;
        duoseg_nn3d::cuda::set_allow_tf32(!self.no_tf32);
        duoseg_nn3d::cuda::retain_freed_gpu_memory(&device)?;
        Ok(device)
    }
}

/// Parses `cpu` or `cuda:N`.
fn parse_device(s: &str) -> Result<Device> {
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    match s
        .strip_prefix("cuda:")
        .and_then(|n| n.parse::<usize>().ok())
    {
        Some(n) => Ok(Device::new_cuda(n)?),
        None => bail!("unknown device {s:?} (cpu or cuda:N)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse() {
        assert!(matches!(parse_device("cpu"), Ok(Device::Cpu)));
        assert!(parse_device("gpu").is_err());
        assert!(parse_device("cuda:x").is_err());
    }
}
