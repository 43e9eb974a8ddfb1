//! Fuzzes the in-memory NIfTI decoders of duoseg-io: the `f32` volume decoder and the direct label
//! decoder on the same bytes (gunzipped first when they start with the gzip magic, as
//! `read_volume` does by content). Every input must give `Ok` or a typed error naming the file,
//! never a panic, a hang or an allocation larger than the input justifies
//! (`duoseg_fuzz::with_allocation_bound`); where both decoders succeed or fail they must
//! agree (the label decoder promises the labels and errors of decode-then-`to_labels`).
#![no_main]

use std::path::Path;

use duoseg_io::{fs, nifti, Error};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: duoseg_fuzz::Tracking = duoseg_fuzz::Tracking;

const PATH: &str = "fuzz.nii";

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
    let unzipped;
    let bytes = if fs::is_gzip(data) {
        match fs::gunzip(data, path) {
            Ok(raw) => {
                unzipped = raw;
                &unzipped[..]
            }
            Err(e) => return check(&e),
        }
    } else {
        data
    };
    let volume = nifti::decode_nifti(bytes, path);
    if let Ok(v) = &volume {
        assert_eq!(v.data.len(), v.shape.iter().product::<usize>());
        assert!(v.data.iter().all(|x| x.is_finite()));
    }
    let direct = nifti::decode_nifti_labels(bytes, path).and_then(|l| {
        if let Ok(v) = &volume {
            assert_eq!(l.shape, v.shape);
        }
        l.labels
    });
    let via_f32 = volume.and_then(|v| v.to_labels());
    match (&direct, &via_f32) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "label decoders disagree"),
        (Err(a), Err(b)) => {
            check(a);
            assert_eq!(a.to_string(), b.to_string(), "label decoders disagree");
        }
        _ => panic!("label decoders disagree: direct {direct:?}, via f32 {via_f32:?}"),
    }
}
