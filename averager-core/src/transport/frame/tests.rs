use averager_proto::{AveragingData, Tensor};
use bytes::Bytes;
use futures::io::Cursor;

use super::*;

fn frame_bytes(chunks: &[Bytes]) -> (u32, Vec<u8>) {
    let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    (u32::from_le_bytes([all[0], all[1], all[2], all[3]]), all[4..].to_vec())
}

fn part(buffer: Vec<u8>) -> AveragingData {
    AveragingData {
        code: 3,
        group_id: b"group".to_vec().into(),
        endpoint: "quic://127.0.0.1:1".into(),
        tensor_part: Some(Tensor {
            buffer: buffer.into(),
            size: vec![2, 3],
            requires_grad: true,
            dtype: "float32".into(),
            compression: 0,
            chunks: 0,
            codec: "none".into(),
        }),
        metadata: b"meta".to_vec().into(),
        weight: 0.5,
    }
}

#[test]
fn a_tensor_buffer_travels_as_its_own_chunk_and_decodes_to_the_same_message() {
    for buffer in [vec![7u8; 24], Vec::new(), (0..=255).cycle().take(70_000).collect()] {
        let message = part(buffer.clone());
        let chunks = encode_frame(message.clone(), usize::MAX).unwrap();
        assert_eq!(chunks.len(), if buffer.is_empty() { 1 } else { 2 });
        if let Some(payload) = chunks.get(1) {
            assert_eq!(payload.as_ptr(), message.tensor_part.as_ref().unwrap().buffer.as_ptr(), "copied");
        }
        let (len, body) = frame_bytes(&chunks);
        assert_eq!(len as usize, body.len());
        assert_eq!(body.len(), prost::Message::encoded_len(&message));
        let decoded: AveragingData = decode(Bytes::from(body), "peer").unwrap();
        assert_eq!(decoded, message);
    }
    let no_tensor = AveragingData { tensor_part: None, ..part(Vec::new()) };
    let (_, body) = frame_bytes(&encode_frame(no_tensor.clone(), usize::MAX).unwrap());
    assert_eq!(decode::<AveragingData>(Bytes::from(body), "peer").unwrap(), no_tensor);
}

#[test]
fn frames_over_the_limit_are_refused() {
    let message = part(vec![0u8; 1000]);
    let size = prost::Message::encoded_len(&message);
    assert!(encode_frame(message.clone(), size).is_ok());
    assert!(matches!(
        encode_frame(message, size - 1),
        Err(Error::MessageTooLarge { size: s, limit }) if s == size && limit == size - 1
    ));
}

#[tokio::test]
async fn frames_round_trip_and_the_end_is_told_from_a_close() {
    let mut wire = IoStream(Cursor::new(Vec::new()));
    let message = part((0..=255).cycle().take(200_000).collect());
    wire.write_chunks(encode_frame(message.clone(), usize::MAX).unwrap(), "p").await.unwrap();
    wire.write_chunks(vec![error_frame(&Error::MessageTooLarge { size: 9, limit: 3 })], "p").await.unwrap();
    let refused = Error::protocol(averager_proto::MessageCode::ProtocolViolation, "not you");
    wire.write_chunks(vec![error_frame(&refused)], "p").await.unwrap();
    wire.write_chunks(vec![end_frame()], "p").await.unwrap();
    let mut read = IoStream(Cursor::new(wire.0.into_inner()));
    match read_frame(&mut read, usize::MAX, true, "p").await {
        Ok(Frame::Message(bytes)) => assert_eq!(decode::<AveragingData>(bytes, "p").unwrap(), message),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        read_frame(&mut read, 10, true, "p").await,
        Ok(Frame::Failure(Error::MessageTooLarge { size: 9, limit: 3 }))
    ));
    match read_frame(&mut read, 10, true, "p").await {
        Ok(Frame::Failure(e)) => {
            assert_eq!(e.message_code(), Some(averager_proto::MessageCode::ProtocolViolation), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(read_frame(&mut read, 10, true, "p").await, Ok(Frame::End)));
    assert!(matches!(read_frame(&mut read, 10, true, "p").await, Ok(Frame::Closed)));
}

#[tokio::test]
async fn an_announced_length_over_the_cap_is_refused_without_reading_on() {
    let mut read = IoStream(Cursor::new(1_000_000u32.to_le_bytes().to_vec()));
    let got = read_frame(&mut read, 1000, false, "p").await;
    assert!(matches!(got, Err(Error::MessageTooLarge { size: 1_000_000, limit: 1000 })), "{got:?}");
}

#[tokio::test]
async fn a_truncated_frame_is_an_error_and_requests_carry_no_error_frames() {
    let mut bytes = 10u32.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"abc");
    assert!(read_frame(&mut IoStream(Cursor::new(bytes)), 100, false, "p").await.is_err());
    let marker = ERROR_MARKER.to_le_bytes().to_vec();
    let got = read_frame(&mut IoStream(Cursor::new(marker)), 100, false, "p").await;
    assert!(matches!(got, Err(Error::MessageTooLarge { .. })), "{got:?}");
}

#[tokio::test]
async fn requests_are_refused_when_late_garbage_or_missing() {
    let first = FirstRequest::from_now(std::time::Duration::from_secs(30));
    let mut garbage = 4u32.to_le_bytes().to_vec();
    garbage.extend_from_slice(&[0xFF; 4]);
    let got =
        read_unary::<AveragingData, _>(&mut IoStream(Cursor::new(garbage.clone())), 100, first, "p").await;
    assert!(matches!(&got, Err(Error::Transport(t)) if t.contains("undecodable")), "{got:?}");
    let got = read_unary::<AveragingData, _>(&mut IoStream(Cursor::new(Vec::new())), 100, first, "p").await;
    assert!(matches!(&got, Err(Error::Transport(t)) if t.contains("sent no request")), "{got:?}");
    let got = read_request(&mut IoStream(Cursor::new(garbage)), 100, &mut Some(first), "p").await;
    assert!(matches!(got, Request::Refused(Error::Transport(_))), "{got:?}");

    // A stream that never sends: the first request times out.
    let late = FirstRequest::from_now(std::time::Duration::from_millis(10));
    let got = read_request(&mut IoStream(Silent), 100, &mut Some(late), "p").await;
    assert!(matches!(got, Request::Refused(Error::Timeout { .. })), "{got:?}");
}

/// A byte stream that never yields a byte, nor ends.
struct Silent;

impl futures::AsyncRead for Silent {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Pending
    }
}

#[test]
fn a_budget_gives_out_what_is_unclaimed_and_takes_back_what_is_dropped() {
    let budget = ReadBudget::new(16);
    let first = budget.claim(10).expect("10 of 16 bytes are free");
    assert!(budget.claim(10).is_none(), "only 6 bytes are left");
    assert!(budget.claim(usize::MAX).is_none());
    drop(first);
    assert!(budget.claim(16).is_some(), "a dropped claim returns its bytes");
}

/// A byte stream whose frames may be claimed from a budget.
struct Budgeted(Cursor<Vec<u8>>, ReadBudget);

impl FrameRead for Budgeted {
    async fn read_into(&mut self, buf: &mut bytes::BytesMut, max: usize, peer: &str) -> crate::Result<usize> {
        IoStream(&mut self.0).read_into(buf, max, peer).await
    }

    fn claim(&self, len: usize) -> Option<Claim> {
        self.1.claim(len)
    }
}

#[tokio::test]
async fn a_frame_within_the_budget_is_read_whole_and_its_claim_returned() {
    let message = part((0..=255).cycle().take(300_000).collect());
    let mut wire = IoStream(Cursor::new(Vec::new()));
    wire.write_chunks(encode_frame(message.clone(), usize::MAX).unwrap(), "p").await.unwrap();
    let bytes = wire.0.into_inner();
    for budget in [1 << 20, 1000] {
        let budget = ReadBudget::new(budget);
        let mut read = Budgeted(Cursor::new(bytes.clone()), budget.clone());
        match read_frame(&mut read, usize::MAX, false, "p").await {
            Ok(Frame::Message(got)) => assert_eq!(decode::<AveragingData>(got, "p").unwrap(), message),
            other => panic!("{other:?}"),
        }
        assert!(budget.claim(1000).is_some(), "the frame's claim was returned");
    }
}
