//! Fewer, fuller writes under yamux.
//!
//! yamux flushes its connection after every frame it queues, and noise turns each flush into
//! one encrypted message and one `send` on the socket. A request-response exchange is about
//! eight frames (open, length, body, close, each way, and the acknowledgement of the new
//! stream), most of them a dozen bytes, so the nodes spent more CPU on loopback sends and
//! the wake-ups they cause than on anything else. [`Coalesced`] sits between noise and yamux
//! and holds a flush back while yamux is still writing: a flush asked for right after a write
//! only schedules itself (the task is woken at once) and yamux goes on queuing whatever else
//! is ready; the next flush with nothing written since is passed on. Everything written in
//! one pass over yamux's queue then leaves in one message. The wire format does not change:
//! the upgrade still negotiates `/yamux/1.0.0`, so nodes with and without it talk as before.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::yamux;

/// A connection whose flushes wait until its writer has nothing more to write at once.
#[derive(Debug)]
pub struct Coalesced<C> {
    inner: C,
    /// Bytes were written since the last flush was asked for.
    written: bool,
}

impl<C> Coalesced<C> {
    pub fn new(inner: C) -> Self {
        Coalesced {
            inner,
            written: false,
        }
    }
}

impl<C: AsyncRead + Unpin> AsyncRead for Coalesced<C> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Coalesced<C> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.written |= n > 0;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.written {
            // Held back once: the writer may have more frames ready. Woken at once, so the
            // flush happens on its next pass, when it has queued what it had.
            self.written = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.written = false;
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// yamux over a [`Coalesced`] connection, negotiated exactly as plain yamux.
#[derive(Debug, Clone, Default)]
pub struct CoalescedYamux(pub yamux::Config);

impl UpgradeInfo for CoalescedYamux {
    type Info = <yamux::Config as UpgradeInfo>::Info;
    type InfoIter = <yamux::Config as UpgradeInfo>::InfoIter;

    fn protocol_info(&self) -> Self::InfoIter {
        self.0.protocol_info()
    }
}

impl<C> InboundConnectionUpgrade<C> for CoalescedYamux
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = <yamux::Config as InboundConnectionUpgrade<Coalesced<C>>>::Output;
    type Error = <yamux::Config as InboundConnectionUpgrade<Coalesced<C>>>::Error;
    type Future = <yamux::Config as InboundConnectionUpgrade<Coalesced<C>>>::Future;

    fn upgrade_inbound(self, io: C, info: Self::Info) -> Self::Future {
        self.0.upgrade_inbound(Coalesced::new(io), info)
    }
}

impl<C> OutboundConnectionUpgrade<C> for CoalescedYamux
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = <yamux::Config as OutboundConnectionUpgrade<Coalesced<C>>>::Output;
    type Error = <yamux::Config as OutboundConnectionUpgrade<Coalesced<C>>>::Error;
    type Future = <yamux::Config as OutboundConnectionUpgrade<Coalesced<C>>>::Future;

    fn upgrade_outbound(self, io: C, info: Self::Info) -> Self::Future {
        self.0.upgrade_outbound(Coalesced::new(io), info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::task::ArcWake;
    use libp2p::core::muxing::{StreamMuxerBox, StreamMuxerExt, SubstreamBox};

    struct Wakes(AtomicUsize);

    impl ArcWake for Wakes {
        fn wake_by_ref(arc: &Arc<Self>) {
            arc.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Counts the flushes that reach it.
    #[derive(Default)]
    struct Sink {
        bytes: Vec<u8>,
        flushes: usize,
    }

    impl AsyncWrite for Sink {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.bytes.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// One direction of an in-memory connection.
    #[derive(Default)]
    struct Pipe {
        bytes: std::collections::VecDeque<u8>,
        closed: bool,
        reader: Option<std::task::Waker>,
    }

    /// One end of an in-memory connection, counting the flushes that reach it.
    struct End {
        read: Arc<std::sync::Mutex<Pipe>>,
        write: Arc<std::sync::Mutex<Pipe>>,
        flushes: Arc<AtomicUsize>,
    }

    fn connection() -> (End, End) {
        let (there, back) = (Arc::default(), Arc::default());
        let end = |read: &Arc<_>, write: &Arc<_>| End {
            read: Arc::clone(read),
            write: Arc::clone(write),
            flushes: Arc::default(),
        };
        (end(&back, &there), end(&there, &back))
    }

    impl AsyncRead for End {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let mut pipe = self.read.lock().expect("pipe");
            if pipe.bytes.is_empty() && !pipe.closed {
                pipe.reader = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let n = buf.len().min(pipe.bytes.len());
            for (slot, byte) in buf.iter_mut().zip(pipe.bytes.drain(..n)) {
                *slot = byte;
            }
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for End {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let mut pipe = self.write.lock().expect("pipe");
            pipe.bytes.extend(buf);
            if let Some(reader) = pipe.reader.take() {
                reader.wake();
            }
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes.fetch_add(1, Ordering::SeqCst);
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            let mut pipe = self.write.lock().expect("pipe");
            pipe.closed = true;
            if let Some(reader) = pipe.reader.take() {
                reader.wake();
            }
            Poll::Ready(Ok(()))
        }
    }

    /// Polls a muxer until it fails, handing on the streams the peer opens.
    async fn drive(
        muxer: &mut StreamMuxerBox,
        opened: futures::channel::mpsc::UnboundedSender<SubstreamBox>,
    ) -> io::Error {
        futures::future::poll_fn(|cx| {
            loop {
                match muxer.poll_inbound_unpin(cx) {
                    Poll::Ready(Ok(stream)) => {
                        let _ = opened.unbounded_send(stream);
                        continue;
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(error),
                    Poll::Pending => {}
                }
                match muxer.poll_unpin(cx) {
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(error)) => return Poll::Ready(error),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await
    }

    /// One request and its answer over yamux on an in-memory connection, each side closing
    /// its stream after writing, as the request-response protocol does: the bytes each side
    /// received, and how many flushes reached the client's end of the connection.
    async fn exchange(coalesced: bool) -> (Vec<u8>, Vec<u8>, usize) {
        use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};

        let (client_end, server_end) = connection();
        let flushes = Arc::clone(&client_end.flushes);
        let info = "/yamux/1.0.0";
        let (mut client, mut server) = if coalesced {
            let upgrade = CoalescedYamux::default();
            let client = upgrade.clone().upgrade_outbound(client_end, info);
            let server = upgrade.upgrade_inbound(server_end, info);
            let (client, server) = (client.await, server.await);
            (
                StreamMuxerBox::new(client.expect("client")),
                StreamMuxerBox::new(server.expect("server")),
            )
        } else {
            let upgrade = yamux::Config::default();
            let client = upgrade.clone().upgrade_outbound(client_end, info);
            let server = upgrade.upgrade_inbound(server_end, info);
            let (client, server) = (client.await, server.await);
            (
                StreamMuxerBox::new(client.expect("client")),
                StreamMuxerBox::new(server.expect("server")),
            )
        };
        let mut outbound = futures::future::poll_fn(|cx| client.poll_outbound_unpin(cx))
            .await
            .expect("a stream");
        let (opened, mut inbound) = futures::channel::mpsc::unbounded::<SubstreamBox>();
        let asking = async {
            outbound.write_all(b"request").await?;
            outbound.close().await?;
            let mut answer = Vec::new();
            outbound.read_to_end(&mut answer).await?;
            Ok::<_, io::Error>(answer)
        };
        let answering = async {
            let mut stream = inbound.next().await.expect("the client's stream");
            let mut request = Vec::new();
            stream.read_to_end(&mut request).await?;
            stream.write_all(b"response").await?;
            stream.close().await?;
            Ok::<_, io::Error>(request)
        };
        let both = async {
            tokio::select! {
                biased;
                both = async { futures::join!(asking, answering) } => both,
                error = drive(&mut client, opened.clone()) => panic!("the client failed: {error}"),
                error = drive(&mut server, opened) => panic!("the server failed: {error}"),
            }
        };
        // A flush held back and never done would leave this waiting: bounded, to fail.
        let (answer, request) = tokio::time::timeout(std::time::Duration::from_secs(10), both)
            .await
            .expect("the exchange ends");
        (
            request.expect("the request"),
            answer.expect("the answer"),
            flushes.load(Ordering::SeqCst),
        )
    }

    #[tokio::test]
    async fn yamux_over_a_coalesced_connection_delivers_everything_in_fewer_flushes() {
        let (request, answer, coalesced) = exchange(true).await;
        assert_eq!(request, b"request");
        assert_eq!(answer, b"response");
        let (request, answer, plain) = exchange(false).await;
        assert_eq!(
            (request.as_slice(), answer.as_slice()),
            (&b"request"[..], &b"response"[..])
        );
        assert!(
            coalesced < plain,
            "{coalesced} flushes coalesced against {plain} without"
        );
    }

    #[test]
    fn a_flush_right_after_a_write_waits_for_the_next_pass_and_then_carries_every_write() {
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = futures::task::waker(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut conn = Coalesced::new(Sink::default());
        let mut conn = Pin::new(&mut conn);
        // One pass: three frames, each followed by a flush, as yamux does.
        for frame in [&b"one"[..], b"two", b"three"] {
            assert!(conn.as_mut().poll_write(&mut cx, frame).is_ready());
            assert!(conn.as_mut().poll_flush(&mut cx).is_pending());
        }
        assert_eq!(conn.inner.flushes, 0);
        // Each held-back flush woke the writer, so its next pass comes.
        assert_eq!(wakes.0.load(Ordering::SeqCst), 3);
        // The next pass: nothing written since the last flush was asked for.
        assert!(matches!(
            conn.as_mut().poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(conn.inner.flushes, 1);
        assert_eq!(conn.inner.bytes, b"onetwothree");
        // Idle: every flush goes through.
        assert!(conn.as_mut().poll_flush(&mut cx).is_ready());
        assert_eq!(conn.inner.flushes, 2);
    }
}
