//! Requests on long-lived streams ([`STREAM_PROTOCOL`]): one outbound stream per peer
//! carries every request this node sends it, and the peer's answers come back on it, tagged
//! with their request's id, in whatever order they are ready.
//!
//! A request/response substream per message (what [`PROTOCOL`](super::protocol::PROTOCOL)
//! does) costs a stream negotiation, two timers on libp2p's timer thread and a round of
//! the swarm task on each side; measured, the timer thread's wake-ups alone were a third of
//! a busy node's futex calls. Here a message costs a frame on a stream that is already open,
//! read and written by tasks of its own: the swarm task sees only the stream's opening.
//!
//! A peer that does not speak the stream protocol (a node of an older build, during a
//! rolling upgrade) gets its requests the old way, and is asked again after
//! [`LEGACY_RECHECK`].
//!
//! Limits: [`QUEUED_MAX`] requests wait for a link, [`AWAITED_MAX`] wait for answers on it;
//! an inbound stream has at most [`ANSWERING_MAX`] requests being answered, each for at most
//! [`ANSWER_TIMEOUT`]; frames are bound by [`FRAME_BYTES_MAX`](super::protocol::FRAME_BYTES_MAX).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::io::{ReadHalf, WriteHalf};
use futures::stream::FuturesUnordered;
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt, StreamExt};
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
use libp2p_stream::{Control, IncomingStreams, OpenStreamError};
use tokio::sync::{mpsc, oneshot};

use super::protocol::{self, Body, Request, Response, STREAM_PROTOCOL};
use super::swarm::NetCommand;
use super::{Inbound, NetError};

/// Requests waiting for a link's stream to take them; beyond this a request fails at once.
const QUEUED_MAX: usize = 1024;
/// Requests one link has sent and not heard answered; beyond this a request fails at once.
/// Answers time out on the peer's side ([`ANSWER_TIMEOUT`]), so these do not pile up.
const AWAITED_MAX: usize = 1024;
/// Requests from one inbound stream being answered at once; the stream is not read further
/// until one is.
const ANSWERING_MAX: usize = super::swarm::STREAMS_PER_CONNECTION_MAX;
/// How long an inbound request may take to be answered; then the asker hears it was
/// dropped (as a substream's request times out).
const ANSWER_TIMEOUT: Duration = super::swarm::REQUEST_TIMEOUT;
/// Requests read from an inbound stream and not yet taken up by its writer.
const READ_AHEAD_MAX: usize = 64;
/// How long opening a stream may take: the swarm's dial (bounded by the connection setup
/// timeout) and the stream's negotiation.
const OPEN_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a peer found not to speak the stream protocol is sent requests the old way.
const LEGACY_RECHECK: Duration = Duration::from_secs(30);
/// Most bytes of frames gathered into one write; a write buffer grown past this (by one big
/// message) is let go after its write.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Where the answer to a request goes.
type Reply = oneshot::Sender<Result<Response, NetError>>;

/// A request on its way to a link, with where its answer goes.
struct Outgoing {
    request: Request,
    reply: Reply,
}

/// How requests to one peer travel.
enum Link {
    /// A task holds (or is opening) the peer's stream and takes requests from this queue.
    Stream(mpsc::Sender<Outgoing>),
    /// The peer does not speak the stream protocol: requests go the old way until then.
    Legacy { until: Instant },
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
}

/// Where a request went: to a link, whose answer comes on the receiver, or nowhere yet, as it
/// goes the old way.
pub(super) enum Route {
    Stream(oneshot::Receiver<Result<Response, NetError>>),
    Legacy(Request),
}

impl Links {
    pub(super) fn new(control: Control, swarm: mpsc::Sender<NetCommand>) -> Links {
        Links {
            control,
            links: Arc::new(Mutex::new(HashMap::new())),
            swarm,
        }
    }

    /// Hands `request` to the peer's link, opening one (towards `addrs`) if it has none, or
    /// gives it back to go the old way.
    pub(super) fn send(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: Request,
    ) -> Result<Route, NetError> {
        let (reply, answer) = oneshot::channel();
        let mut outgoing = Outgoing { request, reply };
        // Twice at most: a link that closed between the lookup and the send is looked up
        // again (it may have found the peer speaks only the old way, or a new one opens).
        for _ in 0..2 {
            let queue = match self.queue(peer, &addrs) {
                Some(queue) => queue,
                None => return Ok(Route::Legacy(outgoing.request)),
            };
            match queue.try_send(outgoing) {
                Ok(()) => return Ok(Route::Stream(answer)),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(NetError::Request {
                        peer,
                        reason: "too many requests queued for the peer".to_string(),
                    });
                }
                Err(mpsc::error::TrySendError::Closed(back)) => outgoing = back,
            }
        }
        Err(NetError::Request {
            peer,
            reason: "the stream to the peer closed".to_string(),
        })
    }

    /// The queue of the peer's link, opened now if there is none; `None` while the peer
    /// speaks only the old way.
    fn queue(&self, peer: PeerId, addrs: &[Multiaddr]) -> Option<mpsc::Sender<Outgoing>> {
        let mut links = lock(&self.links);
        match links.get(&peer) {
            Some(Link::Legacy { until }) if Instant::now() < *until => return None,
            Some(Link::Stream(queue)) if !queue.is_closed() => return Some(queue.clone()),
            _ => {}
        }
        let (queue, requests) = mpsc::channel(QUEUED_MAX);
        links.insert(peer, Link::Stream(queue.clone()));
        let opener = Opener {
            peer,
            addrs: addrs.to_vec(),
            control: self.control.clone(),
            links: Arc::downgrade(&self.links),
            swarm: self.swarm.downgrade(),
        };
        crate::runtime::spawn(opener.run(requests));
        Some(queue)
    }
}

/// A link's task, holding weakly what [`Links`] holds, so links end when it goes.
struct Opener {
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    control: Control,
    links: std::sync::Weak<LinkMap>,
    swarm: mpsc::WeakSender<NetCommand>,
}

impl Opener {
    /// Opens the stream, then sends what comes in on `requests` until the stream fails or
    /// the links are dropped. Requests left waiting then fail, and the next request opens a
    /// new link.
    async fn run(mut self, mut requests: mpsc::Receiver<Outgoing>) {
        let peer = self.peer;
        let stream = match self.open().await {
            Ok(stream) => stream,
            Err(OpenStreamError::UnsupportedProtocol(_)) => {
                tracing::debug!(%peer, "the peer does not speak the stream protocol");
                self.go_legacy(requests).await;
                return;
            }
            Err(error) => {
                fail_queued(peer, requests, format!("cannot open a stream: {error}")).await;
                return;
            }
        };
        let (reader, writer) = stream.split();
        let awaited = Awaited::default();
        let reading = read_answers(peer, reader, awaited.clone());
        let writing = write_requests(peer, writer, &mut requests, &awaited);
        // Either ending ends the link: a stream that cannot be read or written is done.
        let reason = tokio::select! {
            reason = reading => reason,
            reason = writing => reason,
        };
        tracing::debug!(%peer, %reason, "stream to the peer ended");
        awaited.fail_all(|reply| fail(peer, reply, &reason));
        fail_queued(peer, requests, reason).await;
    }

    /// Has the swarm dial the peer (when not connected), then opens the stream on that
    /// connection.
    async fn open(&mut self) -> Result<Stream, OpenStreamError> {
        let gone = || OpenStreamError::Io(std::io::Error::other("the network task has stopped"));
        let swarm = self.swarm.upgrade().ok_or_else(gone)?;
        let (done, dialled) = oneshot::channel();
        let dial = NetCommand::Connect {
            peer: self.peer,
            addrs: std::mem::take(&mut self.addrs),
            done,
        };
        swarm.send(dial).await.map_err(|_| gone())?;
        drop(swarm);
        dialled.await.map_err(|_| gone())?;
        let protocol = StreamProtocol::new(STREAM_PROTOCOL);
        tokio::time::timeout(OPEN_TIMEOUT, self.control.open_stream(self.peer, protocol))
            .await
            .unwrap_or_else(|_| {
                Err(OpenStreamError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("not open within {OPEN_TIMEOUT:?}"),
                )))
            })
    }

    /// Notes that the peer speaks only the old way, and sends what queued meanwhile that
    /// way, as the next requests will go.
    async fn go_legacy(self, mut requests: mpsc::Receiver<Outgoing>) {
        let (Some(links), Some(swarm)) = (self.links.upgrade(), self.swarm.upgrade()) else {
            return;
        };
        let until = Instant::now() + LEGACY_RECHECK;
        lock(&links).insert(self.peer, Link::Legacy { until });
        drop(links);
        requests.close();
        while let Some(Outgoing { request, reply }) = requests.recv().await {
            if reply.is_closed() {
                continue;
            }
            let legacy = NetCommand::Request {
                peer: self.peer,
                addrs: Vec::new(),
                request,
                reply,
            };
            if swarm.send(legacy).await.is_err() {
                return;
            }
        }
    }
}

fn fail(peer: PeerId, reply: Reply, reason: &str) {
    let _ = reply.send(Err(NetError::Request {
        peer,
        reason: reason.to_string(),
    }));
}

/// Closes a link's queue and fails what waits in it.
async fn fail_queued(peer: PeerId, mut requests: mpsc::Receiver<Outgoing>, reason: String) {
    requests.close();
    while let Some(outgoing) = requests.recv().await {
        fail(peer, outgoing.reply, &reason);
    }
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

/// Writes requests from `requests` to the stream, as many as are queued in one write.
/// Returns why it stopped.
async fn write_requests(
    peer: PeerId,
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
                if let Err((reply, reason)) =
                    push_request(&mut buffer, next_id, &request, reply, awaited)
                {
                    fail(peer, reply, &reason);
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

/// Appends request `id` to `buffer`, its reply kept for the answer; or gives the reply back
/// with why, and nothing is sent.
fn push_request(
    buffer: &mut Vec<u8>,
    id: u64,
    request: &Request,
    reply: Reply,
    awaited: &Awaited,
) -> Result<(), (Reply, String)> {
    awaited.insert(id, reply).map_err(|reply| {
        (
            reply,
            "too many requests await the peer's answers".to_string(),
        )
    })?;
    let framed = protocol::push_tagged(buffer, id, Some((crate::codec::write_version(), request)));
    match framed {
        Ok(()) => Ok(()),
        Err(error) => match awaited.take(id) {
            Some(reply) => Err((reply, format!("cannot send the request: {error}"))),
            None => Ok(()),
        },
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
pub(super) fn accept(control: &mut Control, inbound: mpsc::Sender<Inbound>) {
    let incoming = match control.accept(StreamProtocol::new(STREAM_PROTOCOL)) {
        Ok(incoming) => incoming,
        Err(error) => {
            tracing::error!(%error, "cannot accept streams: peers will use substreams");
            return;
        }
    };
    crate::runtime::spawn(serve_incoming(incoming, inbound));
}

async fn serve_incoming(mut incoming: IncomingStreams, inbound: mpsc::Sender<Inbound>) {
    while let Some((peer, stream)) = incoming.next().await {
        crate::runtime::spawn(serve(peer, stream, inbound.clone()));
    }
}

/// Where an inbound request's answer comes from; no answer (dropped, unreadable, too slow) is
/// answered with no body.
type Answer = futures::future::BoxFuture<'static, Option<Response>>;

/// Serves one inbound stream: reads requests and hands each to `inbound`, and writes their
/// answers back as they come, until the stream fails.
async fn serve(peer: PeerId, stream: Stream, inbound: mpsc::Sender<Inbound>) {
    let (reader, writer) = stream.split();
    let (read, answers) = mpsc::channel(READ_AHEAD_MAX);
    // Reading and writing in futures of their own: a read is never cut short by a write.
    let reason = tokio::select! {
        reason = read_requests(peer, reader, inbound, read) => reason,
        reason = write_answers(writer, answers) => reason,
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
