//! protocol 4.6: the weighted mean, with the **\[averager\]** fixes: accumulation in f64 whatever the
//! dtype (integers and f64 keep their precision), and zero total weight means "keep local values"
//! instead of NaN.

use super::{PartAccumulator, PartOutcome, PartSpec, Reducer, ReducerCapabilities};
use crate::error::Result;
use crate::tensor::{Tensor, TensorData, TensorView};

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
        let lanes = spec.lanes()?;
        Ok(Box::new(MeanAccumulator { spec: spec.clone(), sum: vec![0.0; lanes], total_weight: 0.0 }))
    }
}

struct MeanAccumulator {
    spec: PartSpec,
    sum: Vec<f64>,
    total_weight: f64,
}

impl PartAccumulator for MeanAccumulator {
    fn add(&mut self, sender: usize, part: &TensorView<'_>, weight: f64) -> Result<()> {
        self.spec.check(sender, part, weight)?;
        if weight == 0.0 {
            // Contributes nothing; skipping also keeps 0 * inf from turning into NaN.
            return Ok(());
        }
        part.data().add_scaled_to(&mut self.sum, weight)?;
        self.total_weight += weight;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<PartOutcome> {
        if self.total_weight <= 0.0 {
            return Ok(PartOutcome::KeepLocal);
        }
        let inv = 1.0 / self.total_weight;
        let mut mean = self.sum;
        // In place: a part's sum is megabytes, and this runs once per part.
        mean.iter_mut().for_each(|s| *s *= inv);
        let data = TensorData::from_f64(self.spec.dtype, &mean)?;
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
}
