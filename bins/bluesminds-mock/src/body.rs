//! The SSE body: chunks written one by one, optionally spaced in time, with the stream's end
//! (or its abortion by the client) counted.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::MockStats;

/// Why a stream ended early on purpose.
#[derive(Debug)]
pub struct InjectedFailure;

impl std::fmt::Display for InjectedFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mock: injected mid-stream failure")
    }
}

impl std::error::Error for InjectedFailure {}

/// A response body: whole, or a stream of SSE events.
pub enum MockBody {
    Full(Option<Bytes>),
    Sse(SseBody),
}

pub struct SseBody {
    events: std::vec::IntoIter<Bytes>,
    delay: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// After this many events the stream fails (mid-stream failure injection).
    fail_after: Option<usize>,
    sent: usize,
    stats: Arc<MockStats>,
    finished: bool,
}

impl SseBody {
    pub fn new(
        events: Vec<Bytes>,
        delay: Duration,
        fail_after: Option<usize>,
        stats: Arc<MockStats>,
    ) -> Self {
        stats.open_streams.fetch_add(1, Ordering::Relaxed);
        Self {
            events: events.into_iter(),
            delay,
            sleep: None,
            fail_after,
            sent: 0,
            stats,
            finished: false,
        }
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        self.stats.open_streams.fetch_sub(1, Ordering::Relaxed);
        let counter =
            if self.finished { &self.stats.completed_streams } else { &self.stats.aborted_streams };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = InjectedFailure;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, InjectedFailure>>> {
        match self.get_mut() {
            MockBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Sse(sse) => sse.poll_event(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, MockBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            MockBody::Full(None) => SizeHint::with_exact(0),
            MockBody::Sse(_) => SizeHint::default(),
        }
    }
}

impl SseBody {
    fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, InjectedFailure>>> {
        if self.fail_after == Some(self.sent) {
            return Poll::Ready(Some(Err(InjectedFailure)));
        }
        if self.sent > 0 && !self.delay.is_zero() {
            let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(self.delay)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        match self.events.next() {
            Some(event) => {
                self.sent += 1;
                Poll::Ready(Some(Ok(Frame::data(event))))
            }
            None => {
                self.finished = true;
                Poll::Ready(None)
            }
        }
    }
}
