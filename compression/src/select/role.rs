//! protocol 7.3 RoleAdaptive: a codec per tensor role.

use std::sync::Arc;

use averager_core::Result;
use averager_core::averager::CodecSpec;
use averager_core::compression::{Compression, CompressionInfo, TensorRole};
use averager_core::registry::PluginConfig;
use serde::{Deserialize, Serialize};

use super::{build, selector_compression};

/// Settings of `role-adaptive`: `{ "parameter": "float16", "gradient": { "name": "size-adaptive",
/// "settings": {...} }, "optimizer": "none", "default": "none" }`.
///
/// Every role is optional; roles without a codec, and UNSPECIFIED, use `default` (NONE when
/// absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoleAdaptiveSettings {
    /// The codec of activations.
    pub activation: Option<CodecSpec>,
    /// The codec of parameters.
    pub parameter: Option<CodecSpec>,
    /// The codec of gradients.
    pub gradient: Option<CodecSpec>,
    /// The codec of optimizer statistics.
    pub optimizer: Option<CodecSpec>,
    /// The codec of every other tensor.
    pub default: CodecSpec,
}

impl Default for RoleAdaptiveSettings {
    fn default() -> Self {
        RoleAdaptiveSettings {
            activation: None,
            parameter: None,
            gradient: None,
            optimizer: None,
            default: CodecSpec::Name("none".into()),
        }
    }
}

/// Chooses by `info.role`: the role's codec when one is set, else the default.
#[derive(Debug, Clone)]
pub struct RoleAdaptive {
    activation: Option<Arc<dyn Compression>>,
    parameter: Option<Arc<dyn Compression>>,
    gradient: Option<Arc<dyn Compression>>,
    optimizer: Option<Arc<dyn Compression>>,
    default: Arc<dyn Compression>,
}

impl RoleAdaptive {
    /// The registry name.
    pub const NAME: &'static str = "role-adaptive";

    /// A selector that gives every tensor `default` until roles get codecs of their own.
    pub fn new(default: Arc<dyn Compression>) -> Self {
        RoleAdaptive { activation: None, parameter: None, gradient: None, optimizer: None, default }
    }

    /// Gives tensors of `role` the codec `codec`; for UNSPECIFIED this replaces the default.
    pub fn with_role(mut self, role: TensorRole, codec: Arc<dyn Compression>) -> Self {
        match role {
            TensorRole::Activation => self.activation = Some(codec),
            TensorRole::Parameter => self.parameter = Some(codec),
            TensorRole::Gradient => self.gradient = Some(codec),
            TensorRole::Optimizer => self.optimizer = Some(codec),
            TensorRole::Unspecified => self.default = codec,
        }
        self
    }

    /// Builds the codecs `settings` names.
    ///
    /// # Errors
    /// The registry's error for a codec it cannot build.
    pub fn from_settings(settings: &RoleAdaptiveSettings) -> Result<Self> {
        let optional = |spec: &Option<CodecSpec>| spec.as_ref().map(build).transpose();
        Ok(RoleAdaptive {
            activation: optional(&settings.activation)?,
            parameter: optional(&settings.parameter)?,
            gradient: optional(&settings.gradient)?,
            optimizer: optional(&settings.optimizer)?,
            default: build(&settings.default)?,
        })
    }

    /// The codec for the tensor `info` describes.
    ///
    /// # Errors
    /// Never; the signature is every selector's.
    pub fn select(&self, info: &CompressionInfo) -> Result<&Arc<dyn Compression>> {
        let by_role = match info.role {
            TensorRole::Activation => &self.activation,
            TensorRole::Parameter => &self.parameter,
            TensorRole::Gradient => &self.gradient,
            TensorRole::Optimizer => &self.optimizer,
            TensorRole::Unspecified => &None,
        };
        Ok(by_role.as_ref().unwrap_or(&self.default))
    }

    fn choices(&self) -> impl Iterator<Item = &Arc<dyn Compression>> {
        [&self.activation, &self.parameter, &self.gradient, &self.optimizer]
            .into_iter()
            .flatten()
            .chain(std::iter::once(&self.default))
    }

    fn build(config: &PluginConfig) -> Result<Arc<dyn Compression>> {
        Ok(Arc::new(Self::from_settings(&config.parse()?)?))
    }
}

selector_compression!(RoleAdaptive);

averager_core::register_codec!(
    RoleAdaptive::NAME,
    "chooses a codec by the tensor's role (protocol 7.3 RoleAdaptive)",
    RoleAdaptive::build
);

#[cfg(test)]
mod tests {
    use averager_core::compression::NoCompression;
    use averager_core::tensor::{DType, Tensor};

    use super::*;
    use crate::{Float16, Uniform8Bit};

    #[test]
    fn roles_without_a_codec_and_unspecified_use_the_default() {
        let s = RoleAdaptive::new(Arc::new(NoCompression))
            .with_role(TensorRole::Parameter, Arc::new(Float16))
            .with_role(TensorRole::Gradient, Arc::new(Uniform8Bit));
        let t = Tensor::zeros(vec![3], DType::F32).unwrap();
        let name = |role| {
            let info = CompressionInfo::for_tensor(0, &t.view()).with_role(role);
            s.compress(&t.view(), &info).unwrap().codec
        };
        assert_eq!(name(TensorRole::Parameter), "float16");
        assert_eq!(name(TensorRole::Gradient), "uniform8");
        assert_eq!(name(TensorRole::Optimizer), "none");
        assert_eq!(name(TensorRole::Activation), "none");
        assert_eq!(name(TensorRole::Unspecified), "none");

        let s = s.with_role(TensorRole::Unspecified, Arc::new(Float16));
        assert_eq!(s.select(&CompressionInfo::default()).unwrap().name(), "float16");
        assert_eq!(
            s.select(&CompressionInfo::default().with_role(TensorRole::Optimizer)).unwrap().name(),
            "float16"
        );
    }
}
