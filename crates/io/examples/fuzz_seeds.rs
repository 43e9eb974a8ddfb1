//! Writes the seed corpora of the fuzz targets in `fuzz/` (run by `cargo xtask fuzz`): small valid
//! files generated here, never real data. NIfTI seeds come from this crate's own writers
//! ([`write_labels`], [`write_probabilities`], [`NiftiHeader::to_bytes`]), plain and gzip; HDF5 seeds
//! from `hdf5-writer` (the crate's tests write their fixtures with it too) in the LA layout
//! (`image` + `label`), contiguous and chunked with the deflate and shuffle filters.
//!
//! Usage: `cargo run --release -p duoseg-io --example fuzz_seeds -- OUT_DIR` writes
//! `OUT_DIR/nifti/seed-*` and `OUT_DIR/hdf5/seed-*` (a few KB in all), reads each back (a seed
//! must be valid) and prints what it wrote.

use std::path::{Path, PathBuf};

use duoseg_io::fs::write_atomic;
use duoseg_io::{
    read_labels, read_volume, write_labels, write_probabilities, DataType, NiftiHeader, Volume,
};
use hdf5_writer::{
    ByteOrder, DatasetBuilder, FilterDescription, Hdf5Builder, Hdf5Writer, WriteOptions,
    FILTER_DEFLATE, FILTER_SHUFFLE,
};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A label value of voxel number `i` in [0, 4].
fn label(i: usize) -> u8 {
    ((i * 7 + i / 5) % 5) as u8
}

/// An intensity of voxel number `i`, with negatives and fractions.
fn intensity(i: usize) -> f32 {
    (i as f32 * 0.37).sin() * 120.0 + 20.0
}

fn nifti_seeds(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    // The writers take their geometry from a source volume.
    for (shape, spacing) in [([5, 4, 3], [0.5, 0.75, 2.0]), ([17, 2, 17], [1.0; 3])] {
        let n: usize = shape.iter().product();
        let like = Volume::from_data(shape, spacing, vec![0.0; n])?;
        let labels: Vec<u8> = (0..n).map(label).collect();
        let probs: Vec<f32> = (0..n).map(|i| f32::from(label(i)) / 4.0).collect();
        let tag = format!("{}x{}x{}", shape[0], shape[1], shape[2]);
        for ext in ["nii", "nii.gz"] {
            let path = dir.join(format!("seed-labels-u8-{tag}.{ext}"));
            write_labels(&path, shape, &labels, &like)?;
            written.push(path);
            let path = dir.join(format!("seed-probs-f32-{tag}.{ext}"));
            write_probabilities(&path, shape, &probs, &like)?;
            written.push(path);
        }
    }
    // Every other data type, scaled, from the crate's header serialiser (Fortran order, LE).
    let shape = [3, 2, 2];
    let n: usize = shape.iter().product();
    let affine = [
        [0.5, 0.0, 0.0, -10.0],
        [0.0, 0.75, 0.0, 4.0],
        [0.0, 0.0, 2.0, 7.5],
        [0.0, 0.0, 0.0, 1.0],
    ];
    for dtype in [
        DataType::I8,
        DataType::I16,
        DataType::U16,
        DataType::I32,
        DataType::U32,
        DataType::I64,
        DataType::U64,
        DataType::F64,
    ] {
        let mut header = NiftiHeader::new_3d(shape, [0.5, 0.75, 2.0], &affine, dtype)?;
        header.scl_slope = 0.5;
        header.scl_inter = 1.0;
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend([0u8; 4]);
        for i in 0..n {
            let v = f64::from(label(i)) * 2.0 - 1.0;
            bytes.extend(match dtype {
                DataType::I8 => (v as i8).to_le_bytes().to_vec(),
                DataType::I16 => (v as i16).to_le_bytes().to_vec(),
                DataType::U16 => (v.max(0.0) as u16).to_le_bytes().to_vec(),
                DataType::I32 => (v as i32).to_le_bytes().to_vec(),
                DataType::U32 => (v.max(0.0) as u32).to_le_bytes().to_vec(),
                DataType::I64 => (v as i64).to_le_bytes().to_vec(),
                DataType::U64 => (v.max(0.0) as u64).to_le_bytes().to_vec(),
                _ => v.to_le_bytes().to_vec(),
            });
        }
        let path = dir.join(format!("seed-{dtype}-scaled.nii"));
        write_atomic(&path, &bytes)?;
        written.push(path);
    }
    Ok(written)
}

fn hdf5_seeds(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let deflate = FilterDescription {
        id: FILTER_DEFLATE,
        name: None,
        client_data: vec![4],
    };
    let shuffle = FilterDescription {
        id: FILTER_SHUFFLE,
        name: None,
        client_data: vec![],
    };
    let shape = [4usize, 3, 2];
    let dims: Vec<u64> = shape.iter().map(|&s| s as u64).collect();
    let chunk: Vec<u64> = shape.iter().map(|&s| (s as u64).div_ceil(2)).collect();
    let n: usize = shape.iter().product();
    let image: Vec<f32> = (0..n).map(intensity).collect();
    let image16: Vec<i16> = (0..n).map(|i| intensity(i) as i16).collect();
    let image64: Vec<f64> = (0..n).map(|i| f64::from(intensity(i))).collect();
    let labels: Vec<u8> = (0..n).map(label).collect();
    let labels16: Vec<u16> = labels.iter().map(|&l| u16::from(l)).collect();
    let write = |name: &str, builder: Hdf5Builder, order: ByteOrder| -> Result<PathBuf> {
        let options = WriteOptions {
            byte_order: order,
            ..WriteOptions::default()
        };
        let bytes = Hdf5Writer::new(std::io::Cursor::new(Vec::new()), options)
            .finish(builder.into_plan()?)?
            .into_inner();
        let path = dir.join(name);
        write_atomic(&path, &bytes)?;
        Ok(path)
    };
    // The LA layout: gzip-chunked float32 image and uint8 label.
    let la = Hdf5Builder::new()
        .dataset(
            DatasetBuilder::typed_data("image", dims.clone(), &image)?
                .chunked(chunk.clone())
                .filter(deflate.clone()),
        )
        .dataset(
            DatasetBuilder::typed_data("label", dims.clone(), &labels)?
                .chunked(chunk.clone())
                .filter(deflate.clone()),
        );
    written.push(write("seed-la-gzip.h5", la, ByteOrder::LittleEndian)?);
    // Contiguous int16 image and uint8 label.
    let contiguous = Hdf5Builder::new()
        .dataset(DatasetBuilder::typed_data("image", dims.clone(), &image16)?)
        .dataset(DatasetBuilder::typed_data("label", dims.clone(), &labels)?);
    written.push(write(
        "seed-contiguous-i16.h5",
        contiguous,
        ByteOrder::LittleEndian,
    )?);
    // Big-endian float64 image and uint16 label, chunked with shuffle + deflate.
    let shuffled = Hdf5Builder::new()
        .dataset(
            DatasetBuilder::typed_with_order::<f64>("image", dims.clone(), ByteOrder::BigEndian)
                .data(&image64)?
                .chunked(chunk.clone())
                .filter(shuffle.clone())
                .filter(deflate.clone()),
        )
        .dataset(
            DatasetBuilder::typed_with_order::<u16>("label", dims, ByteOrder::BigEndian)
                .data(&labels16)?
                .chunked(chunk)
                .filter(shuffle)
                .filter(deflate),
        );
    written.push(write(
        "seed-shuffle-be-f64.h5",
        shuffled,
        ByteOrder::BigEndian,
    )?);
    Ok(written)
}

fn main() -> Result<()> {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        return Err("usage: fuzz_seeds OUT_DIR".into());
    };
    for (target, seeds) in [
        ("nifti", nifti_seeds as fn(&Path) -> Result<Vec<PathBuf>>),
        ("hdf5", hdf5_seeds),
    ] {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir)?;
        let written = seeds(&dir)?;
        // Seeds must be valid files: the fuzzer mutates from inputs that reach the voxels.
        for path in &written {
            read_volume(path)?;
            let name = path.to_string_lossy();
            if target == "hdf5" || name.contains("labels") {
                read_labels(path, None)?;
            }
        }
        let bytes: u64 = written
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum();
        println!(
            "{}: {} seed files, {bytes} bytes",
            dir.display(),
            written.len()
        );
    }
    Ok(())
}
