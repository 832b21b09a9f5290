//! protocol 2.4: the all-gather payload each member sends in its `JoinRequest.gather` (and the leader
//! returns for all members in `MessageFromLeader.gathered`).
//!
//! It is the msgpack array `[bandwidth (f64 or nil), mode (0/1/2), user_bytes (bin)]`, where
//! `user_bytes` is itself the msgpack encoding of the user's object (`nil` when none). The double
//! encoding lets every peer read bandwidths and modes even when the user payload is opaque to it.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How a peer takes part in averaging (protocol 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerMode {
    /// Sends its tensors and reduces a span.
    Node,
    /// Cannot accept connections: sends its tensors, reduces nothing.
    Client,
    /// Helps reduce, contributes no tensors.
    Aux,
}

impl PeerMode {
    /// The wire number (NODE = 0, CLIENT = 1, AUX = 2).
    pub fn code(self) -> u8 {
        match self {
            PeerMode::Node => 0,
            PeerMode::Client => 1,
            PeerMode::Aux => 2,
        }
    }

    /// Parses a wire number.
    ///
    /// # Errors
    /// [`Error::Protocol`] with `PROTOCOL_VIOLATION` for an unknown number.
    pub fn from_code(code: u8) -> Result<Self> {
        match code {
            0 => Ok(PeerMode::Node),
            1 => Ok(PeerMode::Client),
            2 => Ok(PeerMode::Aux),
            other => Err(Error::protocol(
                averager_proto::MessageCode::ProtocolViolation,
                format!("unknown peer mode {other}"),
            )),
        }
    }
}

/// One member's all-gather payload.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GatherPayload {
    /// The member's bandwidth for load balancing (`None`: unspecified).
    pub(crate) bandwidth: Option<f64>,
    /// The member's mode.
    pub(crate) mode: PeerMode,
    /// The msgpack encoding of the user's gather object (`nil` when there is none).
    pub(crate) user_bytes: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Wire(Option<f64>, u8, #[serde(with = "serde_bytes")] Vec<u8>);

/// msgpack `nil`: what `user_bytes` holds when the user gathered nothing.
const NIL: u8 = 0xc0;

impl GatherPayload {
    #[cfg(test)]
    /// A payload carrying `user` (any serde value; `None` for nothing).
    ///
    /// # Errors
    /// [`Error::Config`] when the user object does not serialize to msgpack.
    pub(crate) fn new<T: Serialize>(
        bandwidth: Option<f64>,
        mode: PeerMode,
        user: Option<&T>,
    ) -> Result<Self> {
        let user_bytes = match user {
            Some(value) => rmp_serde::to_vec_named(value)
                .map_err(|e| Error::Config(format!("gather object is not serializable: {e}")))?,
            None => vec![NIL],
        };
        Ok(GatherPayload { bandwidth, mode, user_bytes })
    }

    /// The msgpack bytes that go into `JoinRequest.gather`.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let wire = Wire(self.bandwidth, self.mode.code(), self.user_bytes.clone());
        // A tuple of an optional float, a small integer and bytes always serializes.
        rmp_serde::to_vec(&wire).unwrap_or_default()
    }

    /// Parses a peer's payload.
    ///
    /// # Errors
    /// [`Error::Protocol`] (`PROTOCOL_VIOLATION`) for anything that is not the expected array, an
    /// unknown mode, or a bandwidth that is negative or not finite.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        let violation = |what: String| Error::protocol(averager_proto::MessageCode::ProtocolViolation, what);
        let Wire(bandwidth, mode, user_bytes) =
            rmp_serde::from_slice(bytes).map_err(|e| violation(format!("malformed gather payload: {e}")))?;
        if let Some(b) = bandwidth
            && (!b.is_finite() || b < 0.0)
        {
            return Err(violation(format!("gathered bandwidth {b} is not a finite number >= 0")));
        }
        Ok(GatherPayload { bandwidth, mode: PeerMode::from_code(mode)?, user_bytes })
    }

    /// The user's object, or `None` when the member gathered nothing.
    ///
    /// # Errors
    /// [`Error::Protocol`] (`PROTOCOL_VIOLATION`) when the bytes are not a `T`.
    pub(crate) fn user<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        if self.user_bytes == [NIL] {
            return Ok(None);
        }
        rmp_serde::from_slice(&self.user_bytes).map(Some).map_err(|e| {
            Error::protocol(averager_proto::MessageCode::ProtocolViolation, format!("gathered object: {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Meta {
        batch_size: u32,
        foo: String,
    }

    #[test]
    fn round_trip_with_and_without_user_data() {
        let meta = Meta { batch_size: 123, foo: "bar".into() };
        let p = GatherPayload::new(Some(2.5), PeerMode::Aux, Some(&meta)).unwrap();
        let back = GatherPayload::decode(&p.encode()).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.user::<Meta>().unwrap(), Some(meta));

        let p = GatherPayload::new::<Meta>(None, PeerMode::Client, None).unwrap();
        let back = GatherPayload::decode(&p.encode()).unwrap();
        assert_eq!((back.bandwidth, back.mode), (None, PeerMode::Client));
        assert_eq!(back.user::<Meta>().unwrap(), None);
    }

    #[test]
    fn the_wire_form_is_a_three_element_msgpack_array() {
        let p = GatherPayload::new::<()>(None, PeerMode::Node, None).unwrap();
        // fixarray(3), nil, 0, bin8 of length 1 holding nil.
        assert_eq!(p.encode(), [0x93, 0xc0, 0x00, 0xc4, 0x01, 0xc0]);
    }

    #[test]
    fn hostile_payloads_are_protocol_violations() {
        for bytes in
            [&[][..], &[0x93, 0xc0, 0x07, 0xc4, 0x01, 0xc0], &[0xff, 0x00], &[0x93, 0xc0, 0x00, 0xc4, 0xff]]
        {
            assert!(
                matches!(GatherPayload::decode(bytes), Err(Error::Protocol { .. })),
                "{bytes:?} was accepted"
            );
        }
        let negative = rmp_serde::to_vec(&Wire(Some(-1.0), 0, vec![NIL])).unwrap();
        assert!(GatherPayload::decode(&negative).is_err());
    }
}
