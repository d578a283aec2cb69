//! Requests on long-lived streams ([`STREAM_PROTOCOL`]): one outbound stream per peer
//! carries the requests this node sends it, and the peer's answers come back on it, tagged
//! with their request's id, in whatever order they are ready.
//!
//! A request/response substream per message (what [`PROTOCOL`](super::protocol::PROTOCOL)
//! does) costs a stream negotiation, two timers on libp2p's timer thread and a round of
//! the swarm task on each side; measured, the timer thread's wake-ups alone were a third of
//! a busy node's futex calls. Here a message costs a frame on a stream that is already open,
//! read and written by tasks of its own: the swarm task sees only the stream's opening.
//!
//! The stream is a fast path, never a gate: a request goes the old way, on a substream of
//! its own, whenever the peer's stream is not open — while it opens (in the background,
//! started by the first request), for [`REOPEN_AFTER`] after it failed to open, and for
//! [`LEGACY_RECHECK`] when the peer does not speak the stream protocol (a node of an older
//! build, during a rolling upgrade). A stream ends when it fails or when a connection to
//! its peer closes (the swarm task tells [`Closings`]: yamux does not end the streams of a
//! connection this node closes itself, such as one found silent). Requests the
//! stream had not sent then go the old way too; those it had sent fail at once, as a
//! substream's do when its connection closes. So a request never waits for a stream to
//! open, nor on a dead one, longer than a substream would. A request whose frame is over
//! [`STREAM_FRAME_MAX`] (a big append, a snapshot chunk) also goes the old way, so it holds up
//! no heartbeat queued behind it; answers have no such bound (the big ones, an attempt's
//! logs so far, are rare).
//!
//! Limits: [`QUEUED_MAX`] requests wait for a link's writer, [`AWAITED_MAX`] wait for answers
//! on it; an inbound stream has at most [`ANSWERING_MAX`] requests being answered, each for
//! at most [`ANSWER_TIMEOUT`]; frames are bound by
//! [`FRAME_BYTES_MAX`](super::protocol::FRAME_BYTES_MAX).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::io::{ReadHalf, WriteHalf};
use futures::stream::FuturesUnordered;
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt, StreamExt};
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
use libp2p_stream::{Control, IncomingStreams, OpenStreamError};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::protocol::{self, Body, Request, Response, STREAM_PROTOCOL};
use super::swarm::NetCommand;
use super::{Inbound, NetError};

/// Requests waiting for a link's writer; beyond this a request fails at once.
const QUEUED_MAX: usize = 1024;
/// Requests one link has sent and not heard answered; beyond this a request goes the old
/// way. Answers time out on the peer's side ([`ANSWER_TIMEOUT`]), and the link ends with its
/// connection, so these do not pile up.
const AWAITED_MAX: usize = 1024;
/// Requests from one inbound stream being answered at once; beyond this (and
/// [`READ_AHEAD_MAX`] more read) the stream is not read further until one is.
const ANSWERING_MAX: usize = super::swarm::STREAMS_PER_CONNECTION_MAX;
/// How long an inbound request may take to be answered; then the asker hears it was
/// dropped (as a substream's request times out).
const ANSWER_TIMEOUT: Duration = super::swarm::REQUEST_TIMEOUT;
/// Requests read from an inbound stream and not yet taken up by its writer.
const READ_AHEAD_MAX: usize = 64;
/// How long opening a stream may take: the swarm's dial (bounded by the connection setup
/// timeout) and the stream's negotiation.
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long requests go the old way after a stream failed to open, before another is tried.
const REOPEN_AFTER: Duration = Duration::from_secs(1);
/// How long a peer found not to speak the stream protocol is sent requests the old way.
const LEGACY_RECHECK: Duration = Duration::from_secs(30);
/// Most bytes of frames gathered into one write; a write buffer grown past this (by one big
/// message) is let go after its write.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// A request framed bigger than this goes the old way, on a substream of its own, instead of
/// holding up the stream's smaller requests (heartbeats among them) while it is sent.
const STREAM_FRAME_MAX: usize = 64 * 1024;

/// Where the answer to a request goes.
type Reply = oneshot::Sender<Result<Response, NetError>>;

/// A request on its way to a link, with where its answer goes.
struct Outgoing {
    request: Request,
    reply: Reply,
}

/// How requests to one peer travel.
enum Link {
    /// A task opens the peer's stream; requests go the old way meanwhile.
    Opening,
    /// The stream is open: its task takes requests from this queue (closed once it ends).
    Open(mpsc::Sender<Outgoing>),
    /// Requests go the old way until then: the stream did not open, or the peer does not
    /// speak the stream protocol.
    Old { until: Instant },
}

type LinkMap = Mutex<HashMap<PeerId, Link>>;

fn lock(links: &LinkMap) -> std::sync::MutexGuard<'_, HashMap<PeerId, Link>> {
    links
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The links of this node to its peers. Cheap to clone.
#[derive(Clone)]
pub(super) struct Links {
    control: Control,
    links: Arc<LinkMap>,
    /// The swarm task: it dials a peer whose stream is to open, and sends the requests that
    /// go the old way.
    swarm: mpsc::Sender<NetCommand>,
    closings: Closings,
}

/// Where a request went: to a link, whose answer comes on the receiver, or nowhere yet, as it
/// goes the old way.
pub(super) enum Route {
    Stream(oneshot::Receiver<Result<Response, NetError>>),
    Legacy(Request),
}

impl Links {
    pub(super) fn new(
        control: Control,
        swarm: mpsc::Sender<NetCommand>,
        closings: Closings,
    ) -> Links {
        Links {
            control,
            links: Arc::new(Mutex::new(HashMap::new())),
            swarm,
            closings,
        }
    }

    /// Hands `request` to the peer's open stream, or gives it back to go the old way (and
    /// starts opening a stream, towards `addrs`, if none is open or opening).
    pub(super) fn send(
        &self,
        peer: PeerId,
        addrs: &[Multiaddr],
        request: Request,
    ) -> Result<Route, NetError> {
        let Some(queue) = self.queue(peer, addrs) else {
            return Ok(Route::Legacy(request));
        };
        let (reply, answer) = oneshot::channel();
        match queue.try_send(Outgoing { request, reply }) {
            Ok(()) => Ok(Route::Stream(answer)),
            Err(mpsc::error::TrySendError::Full(_)) => Err(NetError::Request {
                peer,
                reason: "too many requests queued for the peer".to_string(),
            }),
            // The stream ended between the lookup and the send; the next request opens one.
            Err(mpsc::error::TrySendError::Closed(back)) => Ok(Route::Legacy(back.request)),
        }
    }

    /// The queue of the peer's open stream; `None` while there is none, after starting to
    /// open one unless that is under way or not due yet.
    fn queue(&self, peer: PeerId, addrs: &[Multiaddr]) -> Option<mpsc::Sender<Outgoing>> {
        let mut links = lock(&self.links);
        match links.get(&peer) {
            Some(Link::Open(queue)) if !queue.is_closed() => return Some(queue.clone()),
            Some(Link::Opening) => return None,
            Some(Link::Old { until }) if Instant::now() < *until => return None,
            _ => {}
        }
        links.insert(peer, Link::Opening);
        let opener = Opener {
            control: self.control.clone(),
            links: Arc::downgrade(&self.links),
            closing: self.closings.watch(peer),
            old_way: OldWay {
                peer,
                addrs: addrs.to_vec(),
                swarm: self.swarm.downgrade(),
            },
        };
        crate::runtime::spawn(opener.run());
        None
    }
}

/// A link's task, holding weakly what [`Links`] holds, so links end when it goes.
struct Opener {
    control: Control,
    links: std::sync::Weak<LinkMap>,
    /// Changes when a connection to the peer closes (watched from before the stream opens).
    closing: watch::Receiver<u64>,
    old_way: OldWay,
}

impl Opener {
    /// Opens the stream, then sends what comes in on its queue until the stream fails, a
    /// connection to the peer closes or the links are dropped. Requests it sent and was not
    /// answered then fail; those it had not sent go the old way. The next request starts a
    /// new stream.
    async fn run(mut self) {
        let peer = self.old_way.peer;
        let opened = self.open().await;
        let Some(links) = self.links.upgrade() else {
            return;
        };
        let stream = match opened {
            Ok(stream) => stream,
            Err(error) => {
                let wait = match error {
                    OpenStreamError::UnsupportedProtocol(_) => LEGACY_RECHECK,
                    _ => REOPEN_AFTER,
                };
                tracing::debug!(%peer, %error, ?wait, "no stream to the peer; requests go on substreams");
                let until = Instant::now() + wait;
                lock(&links).insert(peer, Link::Old { until });
                return;
            }
        };
        let (queue, mut requests) = mpsc::channel(QUEUED_MAX);
        lock(&links).insert(peer, Link::Open(queue));
        drop(links);
        let (reader, writer) = stream.split();
        let awaited = Awaited::default();
        let reading = read_answers(peer, reader, awaited.clone());
        let writing = write_requests(&self.old_way, writer, &mut requests, &awaited);
        // Any of these ends the link: a stream that cannot be read or written is done, and
        // one whose connection this node closed is never told so.
        let reason = tokio::select! {
            reason = reading => reason,
            reason = writing => reason,
            _ = self.closing.changed() => "a connection to the peer closed".to_string(),
        };
        tracing::debug!(%peer, %reason, "stream to the peer ended");
        awaited.fail_all(|reply| fail(peer, reply, &reason));
        requests.close();
        while let Some(Outgoing { request, reply }) = requests.recv().await {
            self.old_way.send(request, reply).await;
        }
    }

    /// Has the swarm dial the peer (when not connected), then opens the stream on that
    /// connection.
    async fn open(&mut self) -> Result<Stream, OpenStreamError> {
        let gone = || OpenStreamError::Io(std::io::Error::other("the network task has stopped"));
        let peer = self.old_way.peer;
        let swarm = self.old_way.swarm.upgrade().ok_or_else(gone)?;
        let (done, dialled) = oneshot::channel();
        let dial = NetCommand::Connect {
            peer,
            addrs: self.old_way.addrs.clone(),
            done,
        };
        swarm.send(dial).await.map_err(|_| gone())?;
        drop(swarm);
        dialled.await.map_err(|_| gone())?;
        let protocol = StreamProtocol::new(STREAM_PROTOCOL);
        tokio::time::timeout(OPEN_TIMEOUT, self.control.open_stream(peer, protocol))
            .await
            .unwrap_or_else(|_| {
                Err(OpenStreamError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("not open within {OPEN_TIMEOUT:?}"),
                )))
            })
    }
}

/// How a link's requests go the old way: through the swarm task, a substream each.
#[derive(Clone)]
struct OldWay {
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    swarm: mpsc::WeakSender<NetCommand>,
}

impl OldWay {
    /// Sends `request` on a substream of its own; its answer goes to `reply`.
    async fn send(&self, request: Request, reply: Reply) {
        if reply.is_closed() {
            return;
        }
        let Some(swarm) = self.swarm.upgrade() else {
            return fail(self.peer, reply, "the network task has stopped");
        };
        let old = NetCommand::Request {
            peer: self.peer,
            addrs: self.addrs.clone(),
            request,
            reply,
        };
        if let Err(mpsc::error::SendError(NetCommand::Request { reply, .. })) =
            swarm.send(old).await
        {
            fail(self.peer, reply, "the network task has stopped");
        }
    }
}

/// Tells the streams to a peer that a connection to it closed: yamux leaves the streams of a
/// connection closed from this side (found silent, or not answering pings) neither readable
/// nor failed, so they are ended from outside. Cheap to clone.
#[derive(Clone, Default)]
pub(super) struct Closings {
    peers: Arc<Mutex<HashMap<PeerId, watch::Sender<u64>>>>,
}

impl Closings {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, watch::Sender<u64>>> {
        self.peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What changes when a connection to `peer` closes from now on.
    fn watch(&self, peer: PeerId) -> watch::Receiver<u64> {
        let mut peers = self.lock();
        // Peers whose streams all ended are let go (one entry per peer otherwise).
        peers.retain(|_, closed| closed.receiver_count() > 0);
        peers
            .entry(peer)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// A connection to `peer` closed, or this node closes it: every stream to it ends (the
    /// next request starts a new one).
    pub(super) fn closed(&self, peer: PeerId) {
        if let Some(closed) = self.lock().get(&peer) {
            closed.send_modify(|count| *count = count.wrapping_add(1));
        }
    }
}

fn fail(peer: PeerId, reply: Reply, reason: &str) {
    let _ = reply.send(Err(NetError::Request {
        peer,
        reason: reason.to_string(),
    }));
}

/// Answers a link waits for, by request id.
#[derive(Clone, Default)]
struct Awaited {
    replies: Arc<Mutex<HashMap<u64, Reply>>>,
}

impl Awaited {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Reply>> {
        self.replies
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps `reply` for the answer to request `id`, unless too many are awaited already
    /// (their askers still waiting): then `reply` is given back.
    fn insert(&self, id: u64, reply: Reply) -> Result<(), Reply> {
        let mut replies = self.lock();
        if replies.len() >= AWAITED_MAX {
            // Askers that gave up (timed out) wait for nothing.
            replies.retain(|_, reply| !reply.is_closed());
            if replies.len() >= AWAITED_MAX {
                return Err(reply);
            }
        }
        replies.insert(id, reply);
        Ok(())
    }

    fn take(&self, id: u64) -> Option<Reply> {
        self.lock().remove(&id)
    }

    fn fail_all(&self, fail: impl Fn(Reply)) {
        let replies = std::mem::take(&mut *self.lock());
        replies.into_values().for_each(fail);
    }
}

/// Writes requests from `requests` to the stream, as many as are queued in one write; a
/// request too big for the stream goes the old way. Returns why it stopped.
async fn write_requests(
    old_way: &OldWay,
    mut writer: WriteHalf<Stream>,
    requests: &mut mpsc::Receiver<Outgoing>,
    awaited: &Awaited,
) -> String {
    let mut next_id: u64 = 0;
    let mut buffer = Vec::new();
    while let Some(first) = requests.recv().await {
        let mut outgoing = Some(first);
        while let Some(Outgoing { request, reply }) = outgoing.take() {
            // An asker that gave up (timed out) is not sent for.
            if !reply.is_closed() {
                next_id += 1;
                match push_request(&mut buffer, next_id, &request, reply, awaited) {
                    Pushed::Framed => {}
                    // In a task of its own, so the request is not lost if the link ends
                    // (and drops this future) meanwhile.
                    Pushed::OldWay(reply) => {
                        let old_way = old_way.clone();
                        crate::runtime::spawn(async move { old_way.send(request, reply).await });
                    }
                    Pushed::Failed(reply, reason) => fail(old_way.peer, reply, &reason),
                }
            }
            if buffer.len() < WRITE_BATCH_BYTES {
                outgoing = requests.try_recv().ok();
            }
        }
        if buffer.is_empty() {
            continue;
        }
        if let Err(error) = write_all(&mut writer, &mut buffer).await {
            return format!("cannot write to the stream: {error}");
        }
    }
    "the link was dropped".to_string()
}

/// What became of a request pushed to a write buffer.
enum Pushed {
    /// Framed in the buffer, its reply kept for the answer.
    Framed,
    /// To go the old way: framed bigger than [`STREAM_FRAME_MAX`] (and taken out again), or
    /// too many answers awaited on the stream already.
    OldWay(Reply),
    /// Not sent, and why.
    Failed(Reply, String),
}

/// Appends request `id` to `buffer`, its reply kept for the answer, unless it cannot or
/// should not go on the stream.
fn push_request(
    buffer: &mut Vec<u8>,
    id: u64,
    request: &Request,
    reply: Reply,
    awaited: &Awaited,
) -> Pushed {
    if let Err(reply) = awaited.insert(id, reply) {
        return Pushed::OldWay(reply);
    }
    let at = buffer.len();
    let framed = protocol::push_tagged(buffer, id, Some((crate::codec::write_version(), request)));
    let too_big = buffer.len() - at > STREAM_FRAME_MAX;
    if framed.is_ok() && !too_big {
        return Pushed::Framed;
    }
    buffer.truncate(at);
    // Taken back from the awaited answers: nothing else takes it before it is sent, so it is
    // there (and if not, its asker is answered already and nothing is left to do).
    let Some(reply) = awaited.take(id) else {
        return Pushed::Framed;
    };
    match framed {
        Err(error) => Pushed::Failed(reply, format!("cannot send the request: {error}")),
        Ok(()) => Pushed::OldWay(reply),
    }
}

/// Writes `buffer` and flushes, then empties it (letting it go if one big message grew it).
async fn write_all(writer: &mut WriteHalf<Stream>, buffer: &mut Vec<u8>) -> std::io::Result<()> {
    writer.write_all(buffer).await?;
    writer.flush().await?;
    buffer.clear();
    if buffer.capacity() > WRITE_BATCH_BYTES * 2 {
        *buffer = Vec::new();
    }
    Ok(())
}

/// Reads answers from the stream and hands each to its asker. Returns why it stopped.
async fn read_answers(peer: PeerId, mut reader: ReadHalf<Stream>, awaited: Awaited) -> String {
    loop {
        let (id, body) = match protocol::read_tagged::<_, Response>(&mut reader).await {
            Ok(frame) => frame,
            Err(error) => return format!("cannot read from the stream: {error}"),
        };
        let Some(reply) = awaited.take(id) else {
            continue;
        };
        let _ = reply.send(match body {
            Body::Message(response) => Ok(response),
            Body::Empty => Err(NetError::Request {
                peer,
                reason: "the peer dropped the request unanswered".to_string(),
            }),
            Body::Unreadable(error) => Err(NetError::Request {
                peer,
                reason: format!("cannot read the answer: {error}"),
            }),
        });
    }
}

/// Accepts the inbound streams of [`STREAM_PROTOCOL`] and serves each in a task of its own:
/// its requests go to `inbound`, like those that come the old way.
pub(super) fn accept(control: &mut Control, inbound: mpsc::Sender<Inbound>, closings: Closings) {
    let incoming = match control.accept(StreamProtocol::new(STREAM_PROTOCOL)) {
        Ok(incoming) => incoming,
        Err(error) => {
            tracing::error!(%error, "cannot accept streams: peers will use substreams");
            return;
        }
    };
    crate::runtime::spawn(serve_incoming(incoming, inbound, closings));
}

async fn serve_incoming(
    mut incoming: IncomingStreams,
    inbound: mpsc::Sender<Inbound>,
    closings: Closings,
) {
    while let Some((peer, stream)) = incoming.next().await {
        let closing = closings.watch(peer);
        crate::runtime::spawn(serve(peer, stream, inbound.clone(), closing));
    }
}

/// Where an inbound request's answer comes from; no answer (dropped, unreadable, too slow) is
/// answered with no body.
type Answer = futures::future::BoxFuture<'static, Option<Response>>;

/// Serves one inbound stream: reads requests and hands each to `inbound`, and writes their
/// answers back as they come, until the stream fails or a connection to the peer closes
/// (`closing` changes).
async fn serve(
    peer: PeerId,
    stream: Stream,
    inbound: mpsc::Sender<Inbound>,
    mut closing: watch::Receiver<u64>,
) {
    let (reader, writer) = stream.split();
    let (read, answers) = mpsc::channel(READ_AHEAD_MAX);
    // Reading and writing in futures of their own: a read is never cut short by a write.
    let reason = tokio::select! {
        reason = read_requests(peer, reader, inbound, read) => reason,
        reason = write_answers(writer, answers) => reason,
        _ = closing.changed() => "a connection to the peer closed".to_string(),
    };
    tracing::debug!(%peer, %reason, "inbound stream ended");
}

async fn read_requests(
    peer: PeerId,
    mut reader: ReadHalf<Stream>,
    inbound: mpsc::Sender<Inbound>,
    read: mpsc::Sender<(u64, Answer)>,
) -> String {
    loop {
        let (id, body) = match protocol::read_tagged::<_, Request>(&mut reader).await {
            Ok(frame) => frame,
            Err(error) => return format!("cannot read from the stream: {error}"),
        };
        let answer: Answer = match body {
            Body::Message(request) => {
                let (reply, answer) = oneshot::channel();
                match inbound.try_send(Inbound {
                    peer,
                    request,
                    reply,
                }) {
                    Ok(()) => tokio::time::timeout(ANSWER_TIMEOUT, answer)
                        .map(|answered| answered.ok().and_then(Result::ok))
                        .boxed(),
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::warn!(%peer, "inbound queue full; dropping a request");
                        futures::future::ready(None).boxed()
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        return "this node is stopping".to_string();
                    }
                }
            }
            Body::Empty => return "a request without a body".to_string(),
            Body::Unreadable(error) => {
                tracing::warn!(%peer, %error, "cannot read a request; answering it with nothing");
                futures::future::ready(None).boxed()
            }
        };
        if read.send((id, answer)).await.is_err() {
            return "the writer stopped".to_string();
        }
    }
}

/// Writes answers as they come, as many as are ready in one write; takes up no more requests
/// while [`ANSWERING_MAX`] are being answered.
async fn write_answers(
    mut writer: WriteHalf<Stream>,
    mut answers: mpsc::Receiver<(u64, Answer)>,
) -> String {
    let mut answering = FuturesUnordered::new();
    let mut buffer = Vec::new();
    loop {
        let room = answering.len() < ANSWERING_MAX;
        tokio::select! {
            read = answers.recv(), if room => match read {
                Some((id, answer)) => answering.push(answer.map(move |answer| (id, answer))),
                None => return "the reader stopped".to_string(),
            },
            Some((id, answer)) = answering.next(), if !answering.is_empty() => {
                let mut ready = Some((id, answer));
                while let Some((id, answer)) = ready.take() {
                    push_answer(&mut buffer, id, answer.as_ref());
                    if buffer.len() < WRITE_BATCH_BYTES {
                        ready = answering.next().now_or_never().flatten();
                    }
                }
                if let Err(error) = write_all(&mut writer, &mut buffer).await {
                    return format!("cannot write to the stream: {error}");
                }
            }
        }
    }
}

/// Appends the frame answering request `id`: the answer, or no body when there is none or
/// it cannot be sent.
fn push_answer(buffer: &mut Vec<u8>, id: u64, answer: Option<&Response>) {
    let framed = match answer {
        Some(answer) => {
            let version = protocol::response_version(answer);
            protocol::push_tagged(buffer, id, Some((version, answer)))
        }
        None => protocol::push_tagged::<Response>(buffer, id, None),
    };
    if let Err(error) = framed {
        tracing::warn!(%error, "cannot send an answer; the peer hears it was dropped");
        let _ = protocol::push_tagged::<Response>(buffer, id, None);
    }
}

#[cfg(test)]
mod tests {
    use openraft::raft::InstallSnapshotRequest;

    use super::*;

    #[test]
    fn a_request_framed_over_the_stream_limit_is_taken_back_to_go_on_a_substream() {
        let awaited = Awaited::default();
        let mut buffer = vec![7];
        let (reply, _answer) = oneshot::channel();
        let pushed = push_request(&mut buffer, 1, &Request::Probe, reply, &awaited);
        assert!(matches!(pushed, Pushed::Framed));
        let framed = buffer.clone();
        let big = Request::InstallSnapshot(InstallSnapshotRequest {
            vote: Default::default(),
            meta: Default::default(),
            offset: 0,
            data: vec![0; STREAM_FRAME_MAX],
            done: false,
        });
        let (reply, _answer) = oneshot::channel();
        let pushed = push_request(&mut buffer, 2, &big, reply, &awaited);
        assert!(matches!(pushed, Pushed::OldWay(_)));
        assert_eq!(buffer, framed, "nothing of the big request is left to send");
        assert!(
            awaited.take(2).is_none(),
            "its answer is not awaited on the stream"
        );
        assert!(awaited.take(1).is_some(), "the small one's still is");
    }

    /// Whether the swarm was asked to connect for a stream (and says the dial is under way).
    fn asked_to_connect(commands: &mut mpsc::Receiver<NetCommand>) -> bool {
        match commands.try_recv() {
            Ok(NetCommand::Connect { done, .. }) => done.send(()).is_ok(),
            _ => false,
        }
    }

    #[tokio::test]
    async fn a_closed_connection_ends_the_streams_to_its_peer_only() {
        let closings = Closings::default();
        let (peer, other) = (PeerId::random(), PeerId::random());
        let mut closing = closings.watch(peer);
        let unrelated = closings.watch(other);
        closings.closed(peer);
        assert!(closing.changed().await.is_ok(), "the peer's streams end");
        assert!(
            !unrelated.has_changed().unwrap_or(true),
            "the other's go on"
        );
        closings.closed(peer);
        assert!(
            closing.has_changed().unwrap_or(false),
            "and again on the next close"
        );
        drop(closing);
        let _later = closings.watch(other);
        assert_eq!(
            closings.lock().len(),
            1,
            "a peer with no stream left is let go"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_go_on_substreams_while_a_stream_opens_and_a_while_after_it_failed_to() {
        // A stream behaviour no swarm drives: its streams never open.
        let behaviour = libp2p_stream::Behaviour::new();
        let (swarm, mut commands) = mpsc::channel(8);
        let links = Links::new(behaviour.new_control(), swarm, Closings::default());
        let peer = PeerId::random();
        let route = |links: &Links| links.send(peer, &[], Request::Probe);

        assert!(matches!(route(&links), Ok(Route::Legacy(Request::Probe))));
        tokio::task::yield_now().await;
        assert!(
            asked_to_connect(&mut commands),
            "the first request starts a stream"
        );
        assert!(matches!(route(&links), Ok(Route::Legacy(_))));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            !asked_to_connect(&mut commands),
            "one stream opens at a time"
        );

        tokio::time::sleep(OPEN_TIMEOUT).await;
        assert!(matches!(route(&links), Ok(Route::Legacy(_))));
        tokio::task::yield_now().await;
        assert!(
            !asked_to_connect(&mut commands),
            "no new stream right after a failed one"
        );

        tokio::time::sleep(REOPEN_AFTER).await;
        assert!(matches!(route(&links), Ok(Route::Legacy(_))));
        tokio::task::yield_now().await;
        assert!(
            asked_to_connect(&mut commands),
            "then a new stream is tried"
        );
        drop(behaviour);
    }
}
