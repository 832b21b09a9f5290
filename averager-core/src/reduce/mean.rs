//! protocol 4.6: the weighted mean, with the **\[averager\]** fixes: accumulation in f64 for every
//! dtype but f32 (integers and f64 keep their precision), and zero total weight means "keep local
//! values" instead of NaN.
//!
//! f32 parts, the common case, accumulate in f32 as hivemind's torch sums do: each received part
//! is decoded straight into the running sum ([`Compression::decode_add_into`]), with no buffer per
//! sender and no widening pass, and the sum becomes the mean in place.

use super::{PartAccumulator, PartOutcome, PartSpec, Reducer, ReducerCapabilities};
use crate::compression::{Compression, WireTensor, wire_dtype, wire_shape};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor, TensorData, TensorSlice, TensorView};

/// `sum(w * x) / sum(w)` over the senders that contributed, accumulated as parts arrive.
#[derive(Debug, Clone, Copy, Default)]
pub struct MeanReducer;

impl MeanReducer {
    /// The registry name.
    pub const NAME: &'static str = "mean";
}

impl Reducer for MeanReducer {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn capabilities(&self) -> ReducerCapabilities {
        ReducerCapabilities { weighted_mean: true }
    }

    fn begin(&self, spec: &PartSpec) -> Result<Box<dyn PartAccumulator>> {
        let sum = if spec.dtype == DType::F32 {
            // Filled by the first contribution (see `Sum::F32`).
            Sum::F32(Vec::with_capacity(spec.len))
        } else {
            Sum::F64(vec![0.0; spec.lanes()?])
        };
        Ok(Box::new(MeanAccumulator { spec: spec.clone(), sum, total_weight: 0.0 }))
    }

    fn adds_encoded(&self) -> bool {
        true
    }
}

/// The running weighted sum of one part.
enum Sum {
    /// f32 parts: summed in f32, so a received part can be decoded straight into it. Empty until
    /// the first contribution: a local part writes `weight * part` straight in, which spares
    /// zeroing a part-sized buffer only to add to it (the sum's sign of zero may then differ from
    /// `0.0 + weight * part`'s, never its value).
    F32(Vec<f32>),
    /// Every other dtype: summed in f64 lanes (two per complex64 element).
    F64(Vec<f64>),
}

struct MeanAccumulator {
    spec: PartSpec,
    sum: Sum,
    total_weight: f64,
}

impl MeanAccumulator {
    /// The weight as the f32 factor of an f32 sum, when it is one (a weight beyond f32's range
    /// would turn the sum into infinities).
    fn f32_weight(weight: f64) -> Result<f32> {
        let w = weight as f32;
        if w.is_finite() {
            Ok(w)
        } else {
            Err(Error::Reducer(format!("weight {weight} does not fit the f32 sum of an f32 part")))
        }
    }
}

impl PartAccumulator for MeanAccumulator {
    fn add(&mut self, sender: usize, part: &TensorView<'_>, weight: f64) -> Result<()> {
        self.spec.check(sender, part, weight)?;
        if weight == 0.0 {
            // Contributes nothing; skipping also keeps 0 * inf from turning into NaN.
            return Ok(());
        }
        match (&mut self.sum, part.data()) {
            (Sum::F32(sum), TensorSlice::F32(values)) => {
                let w = Self::f32_weight(weight)?;
                if sum.is_empty() {
                    sum.extend(values.iter().map(|&v| w * v));
                } else {
                    // The same arithmetic as `decode_add_into`, so a local part and a received
                    // one contribute alike.
                    crate::compression::add_scaled(sum, values, w);
                }
            }
            (Sum::F64(sum), data) => data.add_scaled_to(sum, weight)?,
            (Sum::F32(_), _) => return Err(Error::Internal("f32 sum for a part of another dtype".into())),
        }
        self.total_weight += weight;
        Ok(())
    }

    fn add_encoded(
        &mut self,
        sender: usize,
        codec: &dyn Compression,
        message: &WireTensor,
        weight: f64,
    ) -> Result<()> {
        let Sum::F32(sum) = &mut self.sum else {
            let part = codec.extract(message)?;
            return self.add(sender, &part.view(), weight);
        };
        if !weight.is_finite() || weight < 0.0 {
            return Err(Error::Reducer(format!("sender {sender}: weight {weight} is not finite and >= 0")));
        }
        let (_, numel) = wire_shape(codec.name(), message)?;
        let dtype = wire_dtype(codec.name(), message)?;
        if dtype != DType::F32 || numel != self.spec.len {
            return Err(Error::Reducer(format!(
                "sender {sender}: part of {numel} x {dtype} where {} x f32 was expected",
                self.spec.len
            )));
        }
        if weight == 0.0 {
            return Ok(());
        }
        let w = Self::f32_weight(weight)?;
        if sum.is_empty() {
            sum.resize(numel, 0.0);
        }
        if let Err(e) = codec.decode_add_into(message, w, sum) {
            if self.total_weight == 0.0 {
                // Nothing was added yet: the sum stays empty, as before this call.
                sum.clear();
            }
            return Err(e);
        }
        self.total_weight += weight;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<PartOutcome> {
        if self.total_weight <= 0.0 {
            return Ok(PartOutcome::KeepLocal);
        }
        let inv = 1.0 / self.total_weight;
        // In place: a part's sum is megabytes, and this runs once per part.
        let data = match self.sum {
            Sum::F32(mut mean) => {
                mean.iter_mut().for_each(|s| *s = (*s as f64 * inv) as f32);
                TensorData::F32(mean)
            }
            Sum::F64(mut mean) => {
                mean.iter_mut().for_each(|s| *s *= inv);
                TensorData::from_f64(self.spec.dtype, &mean)?
            }
        };
        Ok(PartOutcome::Reduced(Tensor::new(vec![self.spec.len], data)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    fn spec(len: usize, dtype: DType) -> PartSpec {
        PartSpec { len, dtype, expected_senders: 2 }
    }

    #[test]
    fn weighted_mean_in_f64() {
        let a = Tensor::from_f64(vec![2], vec![1.0, 1e17]).unwrap();
        let b = Tensor::from_f64(vec![2], vec![3.0, 1e17 + 4.0]).unwrap();
        let mut acc = MeanReducer.begin(&spec(2, DType::F64)).unwrap();
        acc.add(0, &a.view(), 1.0).unwrap();
        acc.add(1, &b.view(), 3.0).unwrap();
        let PartOutcome::Reduced(t) = acc.finish().unwrap() else { panic!("expected a result") };
        assert_eq!(t.as_f64().unwrap(), &[2.5, 1e17 + 3.0]);
    }

    #[test]
    fn integers_average_and_zero_weight_keeps_local() {
        let a = Tensor::from_i64(vec![1], vec![3]).unwrap();
        let b = Tensor::from_i64(vec![1], vec![6]).unwrap();
        let mut acc = MeanReducer.begin(&spec(1, DType::I64)).unwrap();
        acc.add(0, &a.view(), 1.0).unwrap();
        acc.add(1, &b.view(), 2.0).unwrap();
        assert_eq!(acc.finish().unwrap(), PartOutcome::Reduced(Tensor::from_i64(vec![1], vec![5]).unwrap()));

        let mut acc = MeanReducer.begin(&spec(1, DType::I64)).unwrap();
        acc.add(0, &a.view(), 0.0).unwrap();
        assert_eq!(acc.finish().unwrap(), PartOutcome::KeepLocal);
    }

    #[test]
    fn bad_parts_and_weights_are_refused() {
        let a = Tensor::from_f32(vec![2], vec![1.0, 2.0]).unwrap();
        let mut acc = MeanReducer.begin(&spec(3, DType::F32)).unwrap();
        assert!(acc.add(0, &a.view(), 1.0).is_err());
        let mut acc = MeanReducer.begin(&spec(2, DType::F32)).unwrap();
        assert!(acc.add(0, &a.view(), f64::NAN).is_err());
        assert!(acc.add(0, &a.view(), -1.0).is_err());
        assert_eq!(acc.finish().unwrap(), PartOutcome::KeepLocal);
    }

    /// The f32 sum starts empty: whichever contribution comes first (local, received, or one
    /// that fails to decode), the mean is the same.
    #[test]
    fn an_f32_mean_does_not_depend_on_which_contribution_comes_first() {
        use crate::compression::{CompressionInfo, NoCompression};
        let local = Tensor::from_f32(vec![3], vec![1.0, -2.0, 4.0]).unwrap();
        let received = NoCompression
            .compress(
                &Tensor::from_f32(vec![3], vec![3.0, 2.0, -4.0]).unwrap().view(),
                &CompressionInfo::default(),
            )
            .unwrap();
        let mut bad = received.clone();
        bad.buffer = bad.buffer.slice(..8);
        let want = PartOutcome::Reduced(Tensor::from_f32(vec![3], vec![2.5, 1.0, -2.0]).unwrap());
        for order in 0..3 {
            let mut acc = MeanReducer.begin(&spec(3, DType::F32)).unwrap();
            if order == 2 {
                assert!(acc.add_encoded(1, &NoCompression, &bad, 1.0).is_err());
            }
            if order == 0 {
                acc.add(0, &local.view(), 1.0).unwrap();
                acc.add_encoded(1, &NoCompression, &received, 3.0).unwrap();
            } else {
                acc.add_encoded(1, &NoCompression, &received, 3.0).unwrap();
                acc.add(0, &local.view(), 1.0).unwrap();
            }
            assert_eq!(acc.finish().unwrap(), want, "order {order}");
        }
    }
}
