#![doc = include_str!("../README.md")]

/// The generated messages and enums of `averaging.proto` and `runtime.proto`.
///
/// Both files declare no protobuf package (the user's file has none, and adding one would change
/// the gRPC method paths), so everything lands in one module.
#[allow(missing_docs, unreachable_pub, clippy::all, rust_2018_idioms, nonstandard_style)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

pub use generated::*;

/// The gRPC client of `DecentralizedAveraging` (tonic), with the `grpc` feature.
#[cfg(feature = "grpc")]
pub mod client {
    pub use crate::generated::decentralized_averaging_client::DecentralizedAveragingClient;
}

/// The gRPC server of `DecentralizedAveraging` (tonic), with the `grpc` feature.
#[cfg(feature = "grpc")]
pub mod server {
    pub use crate::generated::decentralized_averaging_server::{
        DecentralizedAveraging, DecentralizedAveragingServer,
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn user_fields_keep_their_numbers_and_additions_use_new_ones() {
        let req = JoinRequest {
            endpoint: "mem://a".into(),
            schema_hash: vec![1, 2].into(),
            expiration: 1.5,
            gather: vec![3].into(),
            client_mode: true,
            group_key: "run.0b01".into(),
        };
        let bytes = req.encode_to_vec();
        // Field 1 (endpoint) is a length-delimited string: tag byte (1 << 3) | 2 = 0x0a.
        assert_eq!(bytes[0], 0x0a);
        // The added group_key is field 6: tag byte (6 << 3) | 2 = 0x32, and it is last.
        let tail = b"run.0b01";
        assert_eq!(&bytes[bytes.len() - tail.len() - 2..][..2], &[0x32, tail.len() as u8]);
        assert_eq!(JoinRequest::decode(bytes.as_slice()).unwrap(), req);
        assert_eq!(MessageCode::BadGroupKey as i32, 18);
        assert_eq!(MessageCode::PartPending as i32, 19);
        assert_eq!(MessageCode::GroupDisbanded as i32, 17);
    }

    #[test]
    fn averaging_data_weight_is_field_six_and_tensor_codec_is_field_seven() {
        let msg = AveragingData { weight: 2.0, ..Default::default() };
        // A double field 6: tag (6 << 3) | 1 = 0x31, then 8 little-endian bytes.
        assert_eq!(msg.encode_to_vec(), [&[0x31][..], &2.0f64.to_le_bytes()].concat());
        let t = Tensor { codec: "x".into(), ..Default::default() };
        assert_eq!(t.encode_to_vec(), vec![(7 << 3) | 2, 1, b'x']);
    }
}
