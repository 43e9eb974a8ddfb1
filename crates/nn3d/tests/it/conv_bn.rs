//! `conv3d_bn_relu` (one node) against the two-node composition `conv3d` + fused batch norm + ReLU:
//! values and every gradient, training and eval statistics, and the layer's running statistics.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{Module, VarBuilder, VarMap};
use duoseg_nn3d::ops::{
    batch_norm_act_eval, batch_norm_act_train, conv3d, conv3d_bn_relu, Conv3dParams, Epilogue,
};
use duoseg_nn3d::{batch_norm3d, conv3d as conv_layer, BatchNorm3dConfig, Conv3dConfig};

use super::batch_norm::{flat, Rng};

const EPS: f64 = 1e-5;

fn var(rng: &mut Rng, shape: &[usize], loc: f64, scale: f64) -> Result<Var> {
    let n = shape.iter().product();
    Var::from_tensor(&Tensor::from_vec(
        rng.normals(n, loc, scale),
        shape.to_vec(),
        &Device::Cpu,
    )?)
}

#[test]
fn one_node_matches_the_two_node_composition() -> Result<()> {
    let mut rng = Rng(33);
    // (x shape, c_out, kernel, stride, padding, bias)
    let cases = [
        ([2usize, 3, 6, 5, 4], 4usize, 3usize, 1usize, 1usize, true),
        ([2, 3, 6, 6, 4], 5, 2, 2, 0, false),
        ([1, 2, 5, 7, 6], 3, 3, 2, 1, true),
    ];
    for (shape, c_out, k, stride, pad, with_bias) in cases {
        let c_in = shape[1];
        let x = var(&mut rng, &shape, 0.1, 1.0)?;
        let w = var(&mut rng, &[c_out, c_in, k, k, k], 0.0, 0.3)?;
        let b = var(&mut rng, &[c_out], 0.0, 0.5)?;
        let gamma = var(&mut rng, &[c_out], 0.5, 1.0)?;
        let beta = var(&mut rng, &[c_out], 0.0, 0.5)?;
        let mean = Tensor::from_vec(rng.normals(c_out, 0.0, 0.3), c_out, &Device::Cpu)?;
        let varc = Tensor::from_vec(rng.normals(c_out, 2.0, 0.3), c_out, &Device::Cpu)?.abs()?;
        let p = Conv3dParams::uniform(stride, pad, 1);
        let bias = with_bias.then(|| b.as_tensor());
        for train in [true, false] {
            let running = (!train).then_some((&mean, &varc));
            let (y1, s1) = conv3d_bn_relu(
                x.as_tensor(),
                w.as_tensor(),
                bias,
                p,
                gamma.as_tensor(),
                beta.as_tensor(),
                running,
                EPS,
            )?;
            let z = conv3d(x.as_tensor(), w.as_tensor(), bias, p)?;
            let (y2, s2) = if train {
                let (y, s) = batch_norm_act_train(
                    &z,
                    gamma.as_tensor(),
                    beta.as_tensor(),
                    EPS,
                    Epilogue::Relu,
                )?;
                (y, Some(s))
            } else {
                let y = batch_norm_act_eval(
                    &z,
                    &mean,
                    &varc,
                    gamma.as_tensor(),
                    beta.as_tensor(),
                    EPS,
                    Epilogue::Relu,
                )?;
                (y, None)
            };
            let what = format!("{shape:?} k{k} s{stride} bias {with_bias} train {train}");
            assert_eq!(flat(&y1)?, flat(&y2)?, "{what}: y");
            assert_eq!(s1.is_some(), train, "{what}");
            if let (Some(s1), Some(s2)) = (s1, s2) {
                assert_eq!(flat(&s1.mean)?, flat(&s2.mean)?, "{what}");
                assert_eq!(flat(&s1.var)?, flat(&s2.var)?, "{what}");
                assert_eq!(s1.count, s2.count, "{what}");
            }
            let dy = Tensor::from_vec(
                rng.normals(y1.elem_count(), 0.0, 1.0),
                y1.shape(),
                &Device::Cpu,
            )?;
            let g1 = (&y1 * &dy)?.sum_all()?.backward()?;
            let g2 = (&y2 * &dy)?.sum_all()?.backward()?;
            for (name, v) in [
                ("x", &x),
                ("w", &w),
                ("bias", &b),
                ("gamma", &gamma),
                ("beta", &beta),
            ] {
                let (a, c) = (g1.get(v.as_tensor()), g2.get(v.as_tensor()));
                assert_eq!(a.is_some(), c.is_some(), "{what}: {name} gradient presence");
                if let (Some(a), Some(c)) = (a, c) {
                    let (a, c) = (flat(a)?, flat(c)?);
                    let scale = c.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                    let err = a
                        .iter()
                        .zip(&c)
                        .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
                    assert!(
                        err <= 1e-6 * scale,
                        "{what}: d{name} differs by {err} (scale {scale})"
                    );
                }
            }
            assert_eq!(g1.get(b.as_tensor()).is_some(), with_bias, "{what}");
        }
    }
    Ok(())
}

#[test]
fn layer_forward_matches_conv_then_fused_batch_norm() -> Result<()> {
    let dev = Device::Cpu;
    let mut rng = Rng(4);
    let x = Tensor::from_vec(
        rng.normals(2 * 2 * 4 * 4 * 4, 0.0, 1.0),
        (2, 2, 4, 4, 4),
        &dev,
    )?;
    let (map_a, map_b) = (VarMap::new(), VarMap::new());
    let cfg = Conv3dConfig {
        padding: 1,
        ..Default::default()
    };
    let mut layers = Vec::new();
    for map in [&map_a, &map_b] {
        let vb = VarBuilder::from_varmap(map, DType::F32, &dev);
        layers.push((
            conv_layer(2, 3, 3, cfg, vb.pp("c"))?,
            batch_norm3d(3, BatchNorm3dConfig::default(), vb.pp("n"))?,
        ));
    }
    // same weights in both maps
    for (name, v) in map_a.data().lock().unwrap().iter() {
        map_b.data().lock().unwrap()[name].set(v.as_tensor())?;
    }
    let ((ca, na), (cb, nb)) = (&layers[0], &layers[1]);
    for train in [true, true, false] {
        let fused = na.forward_conv_relu_t(ca, &x, train)?;
        let plain = nb.forward_act_t(&cb.forward(&x)?, Epilogue::Relu, train)?;
        assert_eq!(flat(&fused)?, flat(&plain)?, "train {train}");
    }
    assert_eq!(flat(na.running_mean())?, flat(nb.running_mean())?);
    assert_eq!(flat(na.running_var())?, flat(nb.running_var())?);
    assert_eq!(na.num_batches_tracked().to_scalar::<i64>()?, 2);
    // wrong channel counts are errors, not panics
    let bad = Tensor::zeros((2, 5, 4, 4, 4), DType::F32, &dev)?;
    assert!(na.forward_conv_relu_t(ca, &bad, true).is_err());
    Ok(())
}
