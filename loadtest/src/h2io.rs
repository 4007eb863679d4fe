//! Small async helpers over h2 streams shared by the server and the client:
//! sending with flow control, receiving with window release.

use std::future::poll_fn;
use std::task::Poll;

use bytes::Bytes;
use h2::{RecvStream, SendStream};

/// Sends `data` as the peer's window allows; `end` sets END_STREAM on the
/// last piece.
pub async fn send_data(
    stream: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
) -> Result<(), h2::Error> {
    if data.is_empty() {
        return stream.send_data(data, end);
    }
    stream.reserve_capacity(data.len());
    while !data.is_empty() {
        let room = poll_fn(|cx| {
            let room = stream.capacity();
            if room > 0 {
                return Poll::Ready(Ok(room));
            }
            match stream.poll_capacity(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Ok(_))) => Poll::Ready(Ok(stream.capacity())),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Err(e)),
                Poll::Ready(None) => Poll::Ready(Err(h2::Error::from(h2::Reason::STREAM_CLOSED))),
            }
        })
        .await?;
        if room == 0 {
            continue;
        }
        let piece = data.split_to(room.min(data.len()));
        stream.send_data(piece, end && data.is_empty())?;
    }
    Ok(())
}

/// The next DATA chunk, its window released at once; `None` at the end.
pub async fn recv_data(body: &mut RecvStream) -> Option<Result<Bytes, h2::Error>> {
    let chunk = body.data().await?;
    if let Ok(data) = &chunk {
        let _ = body.flow_control().release_capacity(data.len());
    }
    Some(chunk)
}
