//! Checkpoints: one safetensors file holding both nets, the optimiser's momentum buffers and, in the
//! safetensors metadata, the iteration, the run's RNG seed, the resolved config and the loop state.
//!
//! Tensor names: `net_a.<pytorch name>` (V-Net), `net_b.<pytorch name>` (ResNet-34 V-Net), and
//! `momentum.net_a.<name>` / `momentum.net_b.<name>`. Strip the `net_a.` prefix to get a PyTorch
//! `state_dict` of subnet A. Files are written to a temporary name and renamed (atomic).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Prefix of subnet A (V-Net) tensors.
pub const NET_A: &str = "net_a";
/// Prefix of subnet B (ResNet-34 V-Net) tensors.
pub const NET_B: &str = "net_b";
/// Prefix of the smoothed (EMA) teacher copy of subnet A, when the run keeps one.
pub const EMA_A: &str = "ema_a";
/// Prefix of the smoothed (EMA) teacher copy of subnet B, when the run keeps one.
pub const EMA_B: &str = "ema_b";
/// Prefix of optimiser momentum buffers.
pub const MOMENTUM: &str = "momentum";
const FORMAT: &str = "duoseg-checkpoint-1";

/// The non-tensor part of a checkpoint, stored as safetensors metadata strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Number of completed iterations.
    pub iteration: usize,
    /// The run's seed; with `iteration` it fixes every random stream of the loop.
    pub seed: u64,
    /// The resolved training config, as JSON.
    pub config: serde_json::Value,
    /// Loop state that is not a tensor (e.g. the EMA of the self-adaptive threshold), as JSON.
    pub state: serde_json::Value,
    /// The spacing in mm (x, y, z) the nets were trained at: `data.spacing`, else the median of the
    /// training cases' spacings; inference warns about scans far from it. `None` in checkpoints
    /// written before it was recorded.
    pub spacing: Option<[f64; 3]>,
}

/// Locks a var map's table of variables.
pub(crate) fn lock_vars(
    vm: &VarMap,
) -> Result<std::sync::MutexGuard<'_, HashMap<String, candle_core::Var>>> {
    vm.data()
        .lock()
        .map_err(|_| TrainError::Tensor(candle_core::Error::Msg("var map lock poisoned".into())))
}

/// Named tensors of a var map (sorted), as a plain map.
pub fn varmap_tensors(prefix: &str, vm: &VarMap) -> Result<BTreeMap<String, Tensor>> {
    Ok(lock_vars(vm)?
        .iter()
        .map(|(n, v)| (format!("{prefix}.{n}"), v.as_tensor().clone()))
        .collect())
}

/// Writes `tensors` and `meta` to `path` atomically (temp file in the same folder + rename).
pub fn save(path: &Path, tensors: &BTreeMap<String, Tensor>, meta: &CheckpointMeta) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(TrainError::file(dir))?;
    }
    let mut info = HashMap::new();
    info.insert("format".to_string(), FORMAT.to_string());
    info.insert("iteration".to_string(), meta.iteration.to_string());
    info.insert("seed".to_string(), meta.seed.to_string());
    info.insert("config".to_string(), meta.config.to_string());
    info.insert("state".to_string(), meta.state.to_string());
    if let Some(s) = meta.spacing {
        info.insert("spacing".to_string(), serde_json::json!(s).to_string());
    }
    let contiguous: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.contiguous()?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(contiguous, Some(info))
        .map_err(|e| TrainError::checkpoint(path, e))?;
    duoseg_io::fs::write_atomic(path, &bytes)?;
    Ok(())
}

/// The duoseg metadata of a safetensors header (`path` names the file in errors).
fn parse_meta(info: Option<&HashMap<String, String>>, path: &Path) -> Result<CheckpointMeta> {
    let bad = |reason: String| TrainError::checkpoint(path, reason);
    let Some(info) = info else {
        return Err(bad("not a duoseg checkpoint (no metadata)".into()));
    };
    if info.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(bad(format!(
            "not a duoseg checkpoint (format {:?})",
            info.get("format")
        )));
    }
    let field = |k: &str| -> Result<&String> {
        info.get(k)
            .ok_or_else(|| bad(format!("metadata lacks {k}")))
    };
    let parse_json = |k: &str| -> Result<serde_json::Value> {
        serde_json::from_str(field(k)?).map_err(|e| bad(format!("bad {k}: {e}")))
    };
    Ok(CheckpointMeta {
        iteration: field("iteration")?
            .parse()
            .map_err(|_| bad("bad iteration".into()))?,
        seed: field("seed")?.parse().map_err(|_| bad("bad seed".into()))?,
        config: parse_json("config")?,
        state: parse_json("state")?,
        spacing: info
            .get("spacing")
            .map(|t| {
                serde_json::from_str::<[f64; 3]>(t)
                    .ok()
                    .filter(|s| s.iter().all(|v| v.is_finite() && *v > 0.0))
                    .ok_or_else(|| bad(format!("bad spacing {t:?}")))
            })
            .transpose()?,
    })
}

/// Reads a checkpoint written by [`save`]: its tensors on `device` and its metadata.
pub fn load(path: &Path, device: &Device) -> Result<(BTreeMap<String, Tensor>, CheckpointMeta)> {
    let bad = |reason: String| TrainError::checkpoint(path, reason);
    let bytes = std::fs::read(path).map_err(TrainError::file(path))?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let meta = parse_meta(header.metadata().as_ref(), path)?;
    let tensors =
        candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| bad(e.to_string()))?;
    Ok((tensors.into_iter().collect(), meta))
}

/// Reads only the metadata of a checkpoint written by [`save`] (its header, not its tensors).
pub fn load_meta(path: &Path) -> Result<CheckpointMeta> {
    use std::io::Read;
    let bad = |reason: String| TrainError::checkpoint(path, reason);
    let mut file = std::fs::File::open(path).map_err(TrainError::file(path))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(TrainError::file(path))?;
    let n = u64::from_le_bytes(len);
    let size = file.metadata().map_err(TrainError::file(path))?.len();
    if n > size.saturating_sub(8) {
        return Err(bad(format!("header of {n} bytes in a {size}-byte file")));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header)
        .map_err(TrainError::file(path))?;
    #[derive(serde::Deserialize)]
    struct Header {
        #[serde(rename = "__metadata__")]
        metadata: Option<HashMap<String, String>>,
    }
    let header: Header =
        serde_json::from_slice(&header).map_err(|e| bad(format!("bad header: {e}")))?;
    parse_meta(header.metadata.as_ref(), path)
}

/// Sets every variable of `vm` from `tensors[prefix.name]` (read from the checkpoint `path`, which
/// errors name); every variable must be present with its shape.
pub fn restore_varmap(
    path: &Path,
    prefix: &str,
    vm: &VarMap,
    tensors: &BTreeMap<String, Tensor>,
) -> Result<()> {
    for (name, var) in lock_vars(vm)?.iter() {
        let key = format!("{prefix}.{name}");
        let Some(t) = tensors.get(&key) else {
            return Err(TrainError::checkpoint(path, format!("lacks {key}")));
        };
        if t.dims() != var.dims() {
            return Err(TrainError::checkpoint(
                path,
                format!("{key} has shape {:?}, the model {:?}", t.dims(), var.dims()),
            ));
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    Ok(())
}

/// `dir/iter-<n>.safetensors` files, sorted by `n`.
pub fn list(dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut out: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name
                .strip_prefix("iter-")?
                .strip_suffix(".safetensors")?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// The path of the checkpoint after `iteration` iterations inside `dir`.
pub fn iter_path(dir: &Path, iteration: usize) -> PathBuf {
    dir.join(format!("iter-{iteration}.safetensors"))
}

/// Deletes all but the newest `keep` iteration checkpoints in `dir` (`keep = 0` keeps all).
pub fn prune(dir: &Path, keep: usize) -> Result<()> {
    if keep == 0 {
        return Ok(());
    }
    let all = list(dir);
    for (_, p) in all.iter().take(all.len().saturating_sub(keep)) {
        std::fs::remove_file(p).map_err(TrainError::file(p))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use candle_nn::Init;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("duoseg-ckpt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn round_trip_and_restore() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        vm.get(
            (2, 3),
            "block_one.conv.0.weight",
            Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
            DType::F32,
            &dev,
        )?;
        vm.get(
            4,
            "block_one.conv.1.running_var",
            Init::Const(1.0),
            DType::F32,
            &dev,
        )?;
        let mut tensors = varmap_tensors(NET_A, &vm)?;
        tensors.insert(
            "momentum.net_a.block_one.conv.0.weight".into(),
            Tensor::ones((2, 3), DType::F32, &dev)?,
        );
        let meta = CheckpointMeta {
            iteration: 7,
            seed: 42,
            config: serde_json::json!({"a": 1}),
            state: serde_json::json!({"t_ema": 0.5}),
            spacing: Some([0.625, 0.625, 2.5]),
        };
        let dir = tmpdir("rt");
        let path = iter_path(&dir, 7);
        save(&path, &tensors, &meta)?;
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("iter-7.safetensors")]);
        let (back, meta2) = load(&path, &dev)?;
        assert_eq!(meta, meta2);
        // the header alone gives the same metadata; a header longer than the file is an error
        assert_eq!(load_meta(&path)?, meta);
        // without a recorded spacing (older checkpoints) it reads as None
        let old = dir.join("old.safetensors");
        let unrecorded = CheckpointMeta {
            spacing: None,
            ..meta.clone()
        };
        save(&old, &tensors, &unrecorded)?;
        assert_eq!(load_meta(&old)?.spacing, None);
        std::fs::remove_file(&old).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.join("cut.safetensors");
        std::fs::write(&cut, &bytes[..40]).unwrap();
        assert!(load_meta(&cut).is_err());
        std::fs::remove_file(&cut).unwrap();
        assert_eq!(
            back.keys().collect::<Vec<_>>(),
            tensors.keys().collect::<Vec<_>>()
        );
        // restoring into a fresh var map reproduces the values
        let vm2 = VarMap::new();
        vm2.get(
            (2, 3),
            "block_one.conv.0.weight",
            Init::Const(0.0),
            DType::F32,
            &dev,
        )?;
        vm2.get(
            4,
            "block_one.conv.1.running_var",
            Init::Const(0.0),
            DType::F32,
            &dev,
        )?;
        restore_varmap(&path, NET_A, &vm2, &back)?;
        let a = varmap_tensors(NET_A, &vm)?;
        let b = varmap_tensors(NET_A, &vm2)?;
        for (k, t) in &a {
            assert_eq!(
                t.flatten_all()?.to_vec1::<f32>()?,
                b[k].flatten_all()?.to_vec1::<f32>()?
            );
        }
        // a shape mismatch or missing tensor is an error
        let vm3 = VarMap::new();
        vm3.get(
            (3, 3),
            "block_one.conv.0.weight",
            Init::Const(0.0),
            DType::F32,
            &dev,
        )?;
        assert!(restore_varmap(&path, NET_A, &vm3, &back).is_err());
        assert!(restore_varmap(&path, NET_B, &vm2, &back).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        Ok(())
    }

    #[test]
    fn prune_keeps_newest() -> Result<()> {
        let dir = tmpdir("prune");
        std::fs::create_dir_all(&dir).unwrap();
        for n in [5, 10, 15, 20] {
            std::fs::write(iter_path(&dir, n), b"x").unwrap();
        }
        prune(&dir, 2)?;
        let left: Vec<usize> = list(&dir).into_iter().map(|(n, _)| n).collect();
        assert_eq!(left, vec![15, 20]);
        std::fs::remove_dir_all(&dir).unwrap();
        Ok(())
    }

    #[test]
    fn rejects_foreign_files() {
        let dir = tmpdir("foreign");
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.safetensors");
        std::fs::write(&p, b"not a safetensors file").unwrap();
        assert!(load(&p, &Device::Cpu).is_err());
        assert!(load(&dir.join("missing.safetensors"), &Device::Cpu).is_err());
        assert!(load_meta(&p).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
