//! Fuzzes the in-memory HDF5 reader of duoseg-io: the dataset listing, every (root) dataset as a
//! volume (`image` and `label` always tried) and the direct `label` decoder. Every input must give
//! `Ok` or a typed error naming the file, never a panic, a hang or an allocation larger than the input justifies
//! (`duoseg_fuzz::with_allocation_bound`); the
//! direct label decoder must agree with decode-then-`to_labels`.
#![no_main]

use std::path::Path;

use duoseg_io::{decode_h5, decode_h5_dataset_names, decode_h5_labels, Error};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: duoseg_fuzz::Tracking = duoseg_fuzz::Tracking;

const PATH: &str = "fuzz.h5";

/// Every error names the file it is about.
fn check(e: &Error) {
    assert!(
        e.to_string().contains(PATH),
        "error does not name the file: {e}"
    );
}

fuzz_target!(|data: &[u8]| {
    duoseg_fuzz::with_allocation_bound(data.len(), || decode(data));
});

fn decode(data: &[u8]) {
    let path = Path::new(PATH);
    let mut names = vec!["image".to_string(), "label".to_string()];
    match decode_h5_dataset_names(data.to_vec(), path) {
        Ok(found) => names.extend(
            found
                .into_iter()
                .filter(|n| n != "image" && n != "label")
                .take(4),
        ),
        Err(e) => check(&e),
    }
    let mut label_volume = None;
    for name in &names {
        let volume = decode_h5(data.to_vec(), path, name);
        match &volume {
            Ok(v) => {
                assert_eq!(v.data.len(), v.shape.iter().product::<usize>());
                assert!(v.data.iter().all(|x| x.is_finite()));
            }
            Err(e) => check(e),
        }
        if name == "label" {
            label_volume = Some(volume);
        }
    }
    let direct = decode_h5_labels(data.to_vec(), path, None);
    let via_f32 = label_volume
        .expect("label is always tried")
        .and_then(|v| v.to_labels());
    match (&direct, &via_f32) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "label decoders disagree"),
        (Err(a), Err(b)) => {
            check(a);
            assert_eq!(a.to_string(), b.to_string(), "label decoders disagree");
        }
        _ => panic!("label decoders disagree: direct {direct:?}, via f32 {via_f32:?}"),
    }
}
