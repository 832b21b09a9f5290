//! Configuration handed to plugin constructors.

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// A plugin's configuration: any serde value (from TOML, JSON or code); `null` means defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PluginConfig(serde_json::Value);

impl PluginConfig {
    /// A configuration holding `value`.
    pub fn new(value: serde_json::Value) -> Self {
        PluginConfig(value)
    }

    /// A configuration from any serializable settings struct.
    ///
    /// # Errors
    /// [`Error::Config`] when the value does not serialize.
    pub fn from_serde(value: &impl serde::Serialize) -> Result<Self> {
        serde_json::to_value(value).map(PluginConfig).map_err(|e| Error::Config(e.to_string()))
    }

    /// The raw value.
    pub fn value(&self) -> &serde_json::Value {
        &self.0
    }

    /// The settings as `T`; `null` gives `T::default()`.
    ///
    /// # Errors
    /// [`Error::Config`] naming what did not fit.
    pub fn parse<T: DeserializeOwned + Default>(&self) -> Result<T> {
        if self.0.is_null() {
            return Ok(T::default());
        }
        serde_json::from_value(self.0.clone()).map_err(|e| Error::Config(e.to_string()))
    }
}
