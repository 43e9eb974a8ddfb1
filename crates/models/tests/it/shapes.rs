//! Parameter counts, names and shape checks at the default configuration.

use std::collections::BTreeSet;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use duoseg_models::*;

fn default_keys() -> serde_json::Value {
    let path = format!(
        "{}/../../tests/fixtures/models/keys_default.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn built(arch: Arch, cfg: NetConfig) -> (VarMap, Box<dyn SegNet>) {
    let varmap = VarMap::new();
    let net = build(
        arch,
        cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    (varmap, net)
}

#[test]
fn parameter_counts_and_names_match_pytorch() {
    let keys = default_keys();
    for (arch, name, count) in [
        (Arch::Vnet, "vnet", 9_448_866usize),
        (Arch::Resnet34, "resnet34", 17_930_354),
    ] {
        let (varmap, _) = built(arch, NetConfig::default());
        let trainable: usize = duoseg_nn3d::trainable_vars(&varmap)
            .iter()
            .map(|v| v.elem_count())
            .sum();
        assert_eq!(trainable, count, "{name}");
        assert_eq!(keys[name]["parameters"].as_u64().unwrap() as usize, count);
        let ours: BTreeSet<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        let theirs: BTreeSet<String> = keys[name]["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            ours, theirs,
            "{name}: requested names != PyTorch state_dict keys"
        );
        // the summary's per-stage counts add up to the same total
        let rows = summary(arch, NetConfig::default(), 2, [112, 112, 80]).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.params).sum::<usize>(),
            count,
            "{name} summary"
        );
        assert_eq!(rows.last().unwrap().output, [2, 2, 112, 112, 80]);
    }
}

#[test]
fn input_not_multiple_of_16_is_a_clear_error() {
    let cfg = NetConfig {
        base_width: 2,
        dropout: false,
        ..NetConfig::default()
    };
    for arch in [Arch::Vnet, Arch::Resnet34] {
        let (_, net) = built(arch, cfg);
        let x = Tensor::zeros((1, 1, 16, 24, 16), DType::F32, &Device::Cpu).unwrap();
        let err = net.forward_t(&x, false).unwrap_err().to_string();
        assert!(
            err.contains("[1, 1, 16, 24, 16]") && err.contains("multiple of 16"),
            "{err}"
        );
        let x = Tensor::zeros((1, 2, 16, 16, 16), DType::F32, &Device::Cpu).unwrap();
        assert!(net
            .forward_t(&x, false)
            .unwrap_err()
            .to_string()
            .contains("expected input [N, 1, D, H, W]"));
        let x = Tensor::zeros((1, 1, 16, 16, 32), DType::F32, &Device::Cpu).unwrap();
        let (logits, features) = net.forward_t(&x, false).unwrap();
        assert_eq!(
            (logits.dims(), features.dims()),
            (&[1, 2, 16, 16, 32][..], &[1, 2, 16, 16, 32][..])
        );
    }
    assert!(summary(Arch::Vnet, NetConfig::default(), 1, [112, 112, 81]).is_err());
    let bad = NetConfig {
        n_classes: 1,
        ..NetConfig::default()
    };
    assert!(VNet::new(
        bad,
        VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu)
    )
    .is_err());
}

#[test]
fn net_config_serde() {
    let cfg: NetConfig = serde_json::from_str(r#"{"n_classes": 3}"#).unwrap();
    assert_eq!(
        cfg,
        NetConfig {
            n_classes: 3,
            ..NetConfig::default()
        }
    );
    assert!(serde_json::from_str::<NetConfig>(r#"{"classes": 3}"#).is_err());
    assert_eq!(
        serde_json::to_string(&Arch::Resnet34).unwrap(),
        "\"resnet34\""
    );
    assert_eq!("vnet".parse::<Arch>().unwrap(), Arch::Vnet);
    assert!("unet".parse::<Arch>().is_err());
}
