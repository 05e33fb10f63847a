//! Comparison rules of the parity format (see `tests/fixtures/parity/README.md`).

use candle_core::{DType, Tensor};

use super::{Case, Tensors};

/// The outcome of one case.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pass { max_err: f64 },
    Fail { tensor: String, detail: String },
}

impl Verdict {
    pub(crate) fn error(detail: String) -> Self {
        Verdict::Fail {
            tensor: "-".into(),
            detail: format!("error: {detail}"),
        }
    }
}

/// Checks every `out.*` tensor of the case (and each `dbg.*` that has a `per_tensor` entry).
pub fn compare_case(case: &Case, expected: &Tensors, got: &Tensors) -> Verdict {
    let mut names: Vec<&String> = expected
        .keys()
        .filter(|k| {
            k.starts_with("out.")
                || (k.starts_with("dbg.") && case.tolerance.per_tensor.contains_key(*k))
        })
        .collect();
    names.sort();
    if names.is_empty() {
        return Verdict::error("case has no out.* tensors to check".into());
    }
    let mut max_err = 0f64;
    for name in names {
        match compare_tensor(case, name, &expected[name], got.get(name), expected) {
            Ok(err) => max_err = max_err.max(err),
            Err(detail) => {
                return Verdict::Fail {
                    tensor: name.clone(),
                    detail,
                }
            }
        }
    }
    Verdict::Pass { max_err }
}

fn to_f64(t: &Tensor) -> Result<Vec<f64>, String> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .map_err(|e| format!("cannot read values: {e}"))
}

fn compare_tensor(
    case: &Case,
    name: &str,
    expected: &Tensor,
    got: Option<&Tensor>,
    all: &Tensors,
) -> Result<f64, String> {
    let got = got.ok_or_else(|| "not produced by the engine".to_string())?;
    let want = to_f64(expected)?;
    let mut have = to_f64(got)?;
    if let Some(dec) = case.decimate.get(name) {
        if got.dims() != dec.full_shape.as_slice() {
            return Err(format!(
                "shape {:?}, expected full shape {:?}",
                got.dims(),
                dec.full_shape
            ));
        }
        let last = *dec.full_shape.last().unwrap_or(&1);
        have = have
            .chunks(last.max(1))
            .flat_map(|row| row.iter().step_by(dec.stride.max(1)).copied())
            .collect();
        if have.len() != want.len() {
            return Err(format!(
                "decimated length {} does not match the stored {:?}",
                have.len(),
                expected.dims()
            ));
        }
    } else if got.dims() != expected.dims() {
        return Err(format!(
            "shape {:?}, expected {:?}",
            got.dims(),
            expected.dims()
        ));
    }

    let tol = case.tolerance.per_tensor.get(name);
    let (atol, rtol) = tol.map_or((case.tolerance.atol, case.tolerance.rtol), |t| {
        (t.atol, t.rtol)
    });
    let integer = !expected.dtype().is_float();
    let exempt = match tol.and_then(|t| t.fragile_key.as_deref()) {
        Some(key) => {
            let mask = all
                .get(key)
                .ok_or_else(|| format!("fragile mask {key} is missing"))?;
            let mask = to_f64(mask)?;
            if mask.len() != want.len() {
                return Err(format!(
                    "fragile mask {key} has {} elements, tensor {}",
                    mask.len(),
                    want.len()
                ));
            }
            mask.into_iter().map(|m| m != 0.0).collect()
        }
        None => vec![false; want.len()],
    };

    let mut max_err = 0f64;
    for (i, (&g, &e)) in have.iter().zip(&want).enumerate() {
        if exempt[i] {
            continue;
        }
        let mismatch = |what: &str| {
            format!(
                "{what} at {:?}: got {g}, expected {e}",
                unravel(
                    i,
                    expected.dims(),
                    case.decimate.get(name).map(|d| d.stride)
                )
            )
        };
        if integer {
            if g != e {
                return Err(mismatch("integer mismatch"));
            }
            continue;
        }
        if !e.is_finite() {
            if !(g == e || (g.is_nan() && e.is_nan())) {
                return Err(mismatch("non-finite mismatch"));
            }
            continue;
        }
        let err = (g - e).abs();
        if err.is_nan() || err > atol + rtol * e.abs() {
            return Err(format!(
                "{} > atol {atol:e} (rtol {rtol:e}); {}",
                fmt_err(err),
                mismatch("first")
            ));
        }
        max_err = max_err.max(err);
    }
    Ok(max_err)
}

fn fmt_err(err: f64) -> String {
    format!("max_err {err:.3e}")
}

/// Multi-index of flat position `i` in `dims` (last axis scaled back by the decimation stride).
fn unravel(mut i: usize, dims: &[usize], stride: Option<usize>) -> Vec<usize> {
    let mut idx = vec![0; dims.len()];
    for (k, &d) in dims.iter().enumerate().rev() {
        idx[k] = i % d.max(1);
        i /= d.max(1);
    }
    if let (Some(s), Some(last)) = (stride, idx.last_mut()) {
        *last *= s;
    }
    idx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parity::{Decimate, TensorTolerance, Tolerance};
    use candle_core::Device;
    use std::collections::HashMap;

    fn case(atol: f64) -> Case {
        Case {
            name: "c".into(),
            unit: "u".into(),
            file: "c.safetensors".into(),
            params: serde_json::Value::Null,
            tolerance: Tolerance {
                atol,
                rtol: 0.0,
                per_tensor: HashMap::new(),
            },
            decimate: HashMap::new(),
        }
    }

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    fn map(pairs: &[(&str, Tensor)]) -> Tensors {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn float_tolerance_and_infinities() {
        let exp = map(&[("out.x", t(&[1.0, f32::NEG_INFINITY]))]);
        let ok = map(&[("out.x", t(&[1.0005, f32::NEG_INFINITY]))]);
        assert!(matches!(
            compare_case(&case(1e-3), &exp, &ok),
            Verdict::Pass { .. }
        ));
        assert!(matches!(
            compare_case(&case(1e-4), &exp, &ok),
            Verdict::Fail { .. }
        ));
        let inf_lost = map(&[("out.x", t(&[1.0, -1e30]))]);
        assert!(matches!(
            compare_case(&case(1.0), &exp, &inf_lost),
            Verdict::Fail { .. }
        ));
        assert!(matches!(
            compare_case(&case(1.0), &exp, &map(&[])),
            Verdict::Fail { .. }
        ));
    }

    #[test]
    fn integers_exact_except_fragile() {
        let codes = |v: &[i64]| Tensor::new(v, &Device::Cpu).unwrap();
        let mut c = case(0.0);
        let exp = map(&[
            ("out.codes", codes(&[1, 2, 3])),
            ("dbg.fragile", codes(&[0, 1, 0])),
        ]);
        let got = map(&[("out.codes", codes(&[1, 9, 3]))]);
        assert!(matches!(compare_case(&c, &exp, &got), Verdict::Fail { .. }));
        c.tolerance.per_tensor.insert(
            "out.codes".into(),
            TensorTolerance {
                fragile_key: Some("dbg.fragile".into()),
                ..Default::default()
            },
        );
        assert!(matches!(compare_case(&c, &exp, &got), Verdict::Pass { .. }));
        let got = map(&[("out.codes", codes(&[0, 9, 3]))]);
        assert!(matches!(compare_case(&c, &exp, &got), Verdict::Fail { .. }));
    }

    #[test]
    fn decimated_outputs_check_full_shape() {
        let mut c = case(0.0);
        c.decimate.insert(
            "out.audio".into(),
            Decimate {
                stride: 2,
                full_shape: vec![1, 5],
            },
        );
        let exp = map(&[("out.audio", t(&[0.0, 2.0, 4.0]).reshape((1, 3)).unwrap())]);
        let got = map(&[(
            "out.audio",
            t(&[0.0, 1.0, 2.0, 3.0, 4.0]).reshape((1, 5)).unwrap(),
        )]);
        assert!(matches!(compare_case(&c, &exp, &got), Verdict::Pass { .. }));
        let short = map(&[(
            "out.audio",
            t(&[0.0, 1.0, 2.0, 3.0]).reshape((1, 4)).unwrap(),
        )]);
        assert!(matches!(
            compare_case(&c, &exp, &short),
            Verdict::Fail { .. }
        ));
    }
}
