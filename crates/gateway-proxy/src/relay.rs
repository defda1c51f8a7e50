//! The streaming response body: upstream SSE relayed chunk by chunk through the [`SseTap`],
//! bounded by idle time between chunks, ended with an error event when upstream fails or goes
//! quiet, never with a silent clean end. Dropping it (client gone, shutdown) drops the upstream
//! body, which closes the upstream connection, so no upstream stream is orphaned.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_balancer::{Outcome, Selected};
use gateway_core::Usage;
use http_body::{Body, Frame, SizeHint};

use crate::client::{BoxError, UpstreamBody};
use crate::sse::SseTap;

/// How a relayed stream ended, handed to the `on_end` callback exactly once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEnd {
    /// Usage from upstream's final chunk, if it sent one.
    pub usage: Option<Usage>,
    /// Completion tokens counted from the relayed content (when usage is missing).
    pub counted_completion_tokens: u64,
    /// The client went away (or the connection was cut) before the end.
    pub client_disconnected: bool,
    /// Why the stream ended early, if it did.
    pub error: Option<String>,
    pub elapsed: Duration,
    /// When the first bytes went to the client (the time to first token, from `elapsed`'s
    /// start); `None` if nothing did.
    pub first_chunk: Option<Instant>,
}

type OnEnd = Box<dyn FnOnce(StreamEnd) + Send>;

/// The body of a streamed response.
pub struct RelayBody {
    upstream: UpstreamBody,
    tap: SseTap,
    pick: Option<Selected>,
    idle: Duration,
    idle_timer: Pin<Box<tokio::time::Sleep>>,
    started: Instant,
    first_chunk: Option<Instant>,
    /// A last frame to send before ending (an error event or a partial event).
    last: Option<Bytes>,
    state: State,
    on_end: Option<OnEnd>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Relaying,
    Ending,
    Done,
}

impl std::fmt::Debug for RelayBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayBody").field("state", &self.state).finish_non_exhaustive()
    }
}

impl RelayBody {
    pub fn new(upstream: UpstreamBody, tap: SseTap, pick: Selected, idle: Duration) -> Self {
        Self {
            upstream,
            tap,
            pick: Some(pick),
            idle,
            idle_timer: Box::pin(tokio::time::sleep(idle)),
            started: Instant::now(),
            first_chunk: None,
            last: None,
            state: State::Relaying,
            on_end: None,
        }
    }

    /// Called once with how the stream ended.
    #[must_use]
    pub fn on_end(mut self, f: impl FnOnce(StreamEnd) + Send + 'static) -> Self {
        self.on_end = Some(Box::new(f));
        self
    }

    fn end(&mut self, outcome: Outcome, error: Option<String>, client_disconnected: bool) {
        if let Some(pick) = self.pick.take() {
            pick.finish(outcome);
        }
        if let Some(f) = self.on_end.take() {
            f(StreamEnd {
                usage: self.tap.usage(),
                counted_completion_tokens: self.tap.counted_completion_tokens(),
                client_disconnected,
                error,
                elapsed: self.started.elapsed(),
                first_chunk: self.first_chunk,
            });
        }
    }

    /// Concludes a complete stream (once; later calls do nothing).
    fn succeed(&mut self) {
        let latency_ms = self.started.elapsed().as_millis() as u64;
        self.end(Outcome::Success { latency_ms }, None, false);
    }

    fn fail(&mut self, message: &str, code: &str) {
        tracing::warn!(error = message, "stream ended early");
        let mut last = self.tap.finish().map(|b| b.to_vec()).unwrap_or_default();
        last.extend_from_slice(&self.tap.error_event(message, code));
        self.last = Some(Bytes::from(last));
        self.state = State::Ending;
        self.end(Outcome::Failure, Some(message.to_owned()), false);
    }
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match this.state {
                State::Done => return Poll::Ready(None),
                State::Ending => {
                    this.state = State::Done;
                    return Poll::Ready(this.last.take().map(|b| Ok(Frame::data(b))));
                }
                State::Relaying => {}
            }
            match Pin::new(&mut this.upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let deadline = tokio::time::Instant::now() + this.idle;
                    this.idle_timer.as_mut().reset(deadline);
                    if let Some(out) = frame.into_data().ok().and_then(|data| this.tap.feed(data)) {
                        this.first_chunk.get_or_insert_with(Instant::now);
                        if this.tap.saw_done() {
                            // The stream is complete for the client once it reads `[DONE]`:
                            // the request is concluded (its usage recorded) before that.
                            this.succeed();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
                Poll::Ready(Some(Err(_)) | None) if this.tap.saw_done() => {
                    // After `[DONE]` nothing is owed: what the upstream does next is moot.
                    this.last = this.tap.finish();
                    this.state = State::Ending;
                    this.succeed();
                }
                Poll::Ready(Some(Err(e))) => {
                    this.fail(&format!("The upstream failed mid-stream: {e}"), "upstream_error");
                }
                Poll::Ready(None) => {
                    this.fail(
                        "The upstream ended the stream before its end event.",
                        "upstream_error",
                    );
                }
                Poll::Pending => {
                    if this.idle_timer.as_mut().poll(cx).is_ready() {
                        if this.tap.saw_done() {
                            this.last = this.tap.finish();
                            this.state = State::Ending;
                            continue;
                        }
                        let msg =
                            format!("The upstream sent nothing for {} s.", this.idle.as_secs());
                        this.fail(&msg, "upstream_timeout");
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for RelayBody {
    fn drop(&mut self) {
        if self.state == State::Relaying {
            // The client went away (or shutdown cut the connection) mid-stream. Dropping
            // `upstream` closes the upstream connection; the server is not to blame.
            self.end(Outcome::Neutral, Some("client disconnected".into()), true);
        }
    }
}
