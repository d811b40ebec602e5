//! Per-connection guards hyper does not provide: a deadline for the first request and for idle
//! connections (enforced in the socket reads, so it also covers hyper-util's protocol sniffing and
//! HTTP/2, which have no header timeout), and a time-bounded request body. They only ever close a
//! connection that has no request in flight; they never cut a request the pipeline is handling.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

#[derive(Debug)]
struct State {
    in_flight: usize,
    served_any: bool,
    /// When the connection last became free of requests (or was opened).
    idle_since: Instant,
    /// The reader to wake when the last request finishes, so the idle deadline gets armed.
    reader: Option<Waker>,
}

/// Request accounting shared by a connection's socket wrapper and its service.
#[derive(Debug, Clone)]
pub struct Activity {
    state: Arc<Mutex<State>>,
    first_request_within: Duration,
    idle_timeout: Duration,
    /// Past this instant the connection closes at its next idle moment.
    retire_at: Option<Instant>,
}

/// Held while a request is being handled; dropping it marks the request finished.
pub struct InFlight(Activity);

impl Activity {
    pub fn new(first_request_within: Duration, idle_timeout: Duration) -> Activity {
        Activity {
            state: Arc::new(Mutex::new(State {
                in_flight: 0,
                served_any: false,
                idle_since: Instant::now(),
                reader: None,
            })),
            first_request_within,
            idle_timeout,
            retire_at: None,
        }
    }

    /// Closes the connection at its first idle moment after `max_age` (a maximum lifetime).
    pub fn with_max_age(mut self, max_age: Duration) -> Activity {
        self.retire_at = Instant::now().checked_add(max_age);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a few integers updated in one step each; a poisoned lock is still coherent.
        match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    pub fn begin(&self) -> InFlight {
        let mut s = self.lock();
        s.in_flight += 1;
        s.served_any = true;
        InFlight(self.clone())
    }

    /// When the connection must be closed if nothing happens, or `None` while a request runs.
    fn deadline(&self, reader: &Waker) -> Option<Instant> {
        let mut s = self.lock();
        if s.in_flight > 0 {
            s.reader = Some(reader.clone());
            return None;
        }
        s.reader = None;
        let within = if s.served_any {
            self.idle_timeout
        } else {
            self.first_request_within
        };
        let idle = s.idle_since + within;
        Some(match self.retire_at {
            Some(r) if r < idle => r,
            _ => idle,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let waker = {
            let mut s = self.0.lock();
            s.in_flight = s.in_flight.saturating_sub(1);
            if s.in_flight == 0 {
                s.idle_since = Instant::now();
                s.reader.take()
            } else {
                None
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A socket whose reads fail with `TimedOut` once the connection has been without a request for
/// too long (or has outlived its maximum age), and whose writes fail with `TimedOut` once one has
/// made no progress for the write timeout: a client that never reads its answers cannot hold a
/// connection. hyper then drops the connection.
pub struct TimedIo<S> {
    inner: S,
    activity: Activity,
    sleep: Pin<Box<Sleep>>,
    write_timeout: Option<Duration>,
    /// Armed while a write is blocked; reset whenever a write makes progress.
    write_sleep: Pin<Box<Sleep>>,
    write_blocked: bool,
}

impl<S> TimedIo<S> {
    pub fn new(inner: S, activity: Activity) -> TimedIo<S> {
        TimedIo {
            inner,
            activity,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            write_timeout: None,
            write_sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            write_blocked: false,
        }
    }

    /// Fails a write (and so closes the connection) that makes no progress for `d`.
    pub fn with_write_timeout(mut self, d: Duration) -> TimedIo<S> {
        self.write_timeout = Some(d);
        self
    }

    /// Progress or a blocked write: arms the stall deadline on the first `Pending`, clears it on
    /// progress, and turns a stall past the deadline into `TimedOut`.
    fn write_outcome<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        let Some(limit) = self.write_timeout else {
            return r;
        };
        if r.is_ready() {
            self.write_blocked = false;
            return r;
        }
        if !self.write_blocked {
            self.write_blocked = true;
            self.write_sleep.as_mut().reset(Instant::now() + limit);
        }
        if self.write_sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client did not read the response within the write timeout",
            )));
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TimedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(deadline) = this.activity.deadline(cx.waker()) {
            if this.sleep.deadline() != deadline {
                this.sleep.as_mut().reset(deadline);
            }
            if this.sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no request within the connection's idle or first-request deadline",
                )));
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.write_outcome(cx, r)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.write_outcome(cx, r)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.write_outcome(cx, r)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

pub use crate::error::BodyError;

/// The request body as the pipeline sees it: failing after `within`, or at once when the request
/// used `Transfer-Encoding` (the action takes no body, and a chunked body beside a Content-Length
/// is the classic request-smuggling shape; refusing it beats choosing an interpretation).
pub struct TimedBody<B> {
    inner: B,
    within: Duration,
    sleep: Pin<Box<Sleep>>,
    refuse: bool,
}

impl<B> TimedBody<B> {
    pub fn new(inner: B, within: Duration, refuse: bool) -> TimedBody<B> {
        TimedBody {
            inner,
            within,
            sleep: Box::pin(tokio::time::sleep(within)),
            refuse,
        }
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.refuse {
            return Poll::Ready(Some(Err(BodyError::TransferEncoding)));
        }
        if let Poll::Ready(r) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(r.map(|f| f.map_err(|e| BodyError::Inner(e.to_string()))));
        }
        if this.sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(BodyError::Timeout(this.within))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        !self.refuse && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::AsyncReadExt;

    // Real (short) time: the deadlines are what is under test.
    #[tokio::test]
    async fn an_idle_socket_times_out_but_not_while_a_request_runs() {
        let ms = Duration::from_millis;
        let (client, server) = tokio::io::duplex(64);
        let activity = Activity::new(ms(100), ms(300));
        let mut io = TimedIo::new(server, activity.clone());
        let mut buf = [0u8; 8];
        let started = Instant::now();
        let e = io.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= ms(100));

        let (client2, server2) = tokio::io::duplex(64);
        let activity = Activity::new(ms(100), ms(300));
        let mut io = TimedIo::new(server2, activity.clone());
        let req = activity.begin();
        let r = tokio::time::timeout(ms(500), io.read(&mut buf)).await;
        assert!(r.is_err(), "no deadline while a request is in flight");
        drop(req);
        let started = Instant::now();
        let e = io.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        let t = started.elapsed();
        assert!(
            t >= ms(250) && t < ms(3000),
            "idle timeout after a request: {t:?}"
        );
        drop((client, client2));
    }

    /// Finding 1: a client that never reads its answers cannot hold the connection: the stalled
    /// write fails after the write timeout. And a connection past its maximum age is closed at
    /// its next idle moment, however short its idle gaps.
    #[tokio::test]
    async fn stalled_writes_and_old_connections_are_cut() {
        use tokio::io::AsyncWriteExt;
        let ms = Duration::from_millis;
        let (client, server) = tokio::io::duplex(64);
        let activity = Activity::new(ms(10_000), ms(10_000));
        let mut io = TimedIo::new(server, activity).with_write_timeout(ms(200));
        let started = Instant::now();
        let r = tokio::time::timeout(ms(5_000), io.write_all(&[0u8; 4096])).await;
        let e = r.expect("the stalled write ends").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= ms(200));

        let (client2, server2) = tokio::io::duplex(64);
        let activity = Activity::new(ms(10_000), ms(10_000)).with_max_age(ms(300));
        let mut io = TimedIo::new(server2, activity.clone());
        drop(activity.begin());
        let mut buf = [0u8; 8];
        let started = Instant::now();
        let r = tokio::time::timeout(ms(5_000), io.read(&mut buf)).await;
        let e = r.expect("an old connection is closed").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() < ms(3_000));
        drop((client, client2));
    }

    /// A body whose sender never sends.
    struct Never;
    impl Body for Never {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn bodies_are_time_bounded_and_chunked_ones_refused() {
        let r = TimedBody::new(Never, Duration::from_millis(50), false)
            .collect()
            .await;
        assert!(matches!(r, Err(BodyError::Timeout(_))));
        let r = TimedBody::new(
            http_body_util::Empty::<Bytes>::new(),
            Duration::from_secs(2),
            true,
        )
        .collect()
        .await;
        assert!(matches!(r, Err(BodyError::TransferEncoding)));
        let r = TimedBody::new(
            http_body_util::Empty::<Bytes>::new(),
            Duration::from_secs(2),
            false,
        )
        .collect()
        .await;
        assert!(r.unwrap().to_bytes().is_empty());
    }
}
