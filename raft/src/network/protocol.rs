//! The wire protocol between nodes: one request/response protocol carrying Raft RPCs,
//! forwarded cluster operations, read-index requests and the bootstrap hello.
//!
//! Frames are a 4-byte big-endian length and a body encoded by `codec`; a frame longer than
//! [`FRAME_BYTES_MAX`] is refused before it is read, so a peer cannot make us allocate more.

use std::io;

use futures::prelude::*;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::cluster::{Op, OpError, OpResult};
use crate::codec;
use crate::job::{DatumKey, ExecutorLog};
use crate::types::{NodeAddr, NodeId, TypeConfig};

/// The libp2p protocol name; the version changes with incompatible message changes. One
/// request and its answer per substream: what nodes of builds before [`STREAM_PROTOCOL`]
/// speak, and still answered for them.
pub const PROTOCOL: &str = "/shoal/raft/2";

/// The same requests and answers on one long-lived stream per peer and direction, each
/// message a tagged frame ([`push_tagged`]): no substream to negotiate, and no timers to
/// arm, per message.
pub const STREAM_PROTOCOL: &str = "/shoal/raft-stream/1";

/// Largest frame either side reads. AppendEntries bigger than this are split by openraft
/// (the network answers `PayloadTooLarge`), snapshot chunks are kept well below it.
pub const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// Who are you, and are you in a cluster? Used by bootstrap.
    Hello,
    /// Carry out a cluster operation; sent to the node believed to be leader.
    Forward(Op),
    /// Confirm leadership and return the log index a linearizable read must wait for.
    ReadIndex,
    /// The executor logs so far of an attempt the node runs (its claim's fence).
    LiveLogs {
        datum: DatumKey,
        fence: u64,
    },
    /// Do you hear from a leader, and how far does your log go? Asked before this node
    /// campaigns (a pre-vote).
    Probe,
    /// Which formats do you read? (Added in format 5: a build that cannot decode this
    /// request reads format 4 only.)
    Formats,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Hello(Hello),
    Forward(Result<OpResult, OpError>),
    ReadIndex(Result<u64, OpError>),
    /// `None` when the node does not run that attempt (any more).
    LiveLogs(Option<Vec<ExecutorLog>>),
    /// `hears_leader`: the node would refuse a vote by its leader lease (see
    /// `Cluster::hears_leader`).
    /// `last_log`: its last log entry, which a candidate's log must match or pass to get its
    /// vote.
    Probe {
        hears_leader: bool,
        last_log: Option<crate::types::LogId>,
    },
    /// The oldest and newest formats the node reads.
    Formats {
        min: u8,
        max: u8,
    },
}

/// A node's answer to [`Request::Hello`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub node_id: NodeId,
    pub addr: NodeAddr,
    /// True once the node holds Raft state (it belongs, or belonged, to a cluster).
    pub initialized: bool,
    /// The leader this node knows of, if any.
    pub leader: Option<(NodeId, NodeAddr)>,
}

/// The request/response codec: length-prefixed frames through `codec`.
#[derive(Debug, Clone, Default)]
pub struct FrameCodec;

async fn read_frame<T, M>(io: &mut T) -> io::Result<M>
where
    T: AsyncRead + Unpin + Send,
    M: DeserializeOwned,
{
    let len = read_len(io).await?;
    decode_body(&read_body(io, len).await?)
}

/// A frame's length, refused over [`FRAME_BYTES_MAX`].
async fn read_len<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<usize> {
    let mut len = [0_u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit of {FRAME_BYTES_MAX}"),
        ));
    }
    Ok(len)
}

async fn read_body<T: AsyncRead + Unpin + Send>(io: &mut T, len: usize) -> io::Result<Vec<u8>> {
    // The buffer grows with what actually arrives, so a peer announcing a large frame and
    // sending nothing costs nothing.
    let mut body = Vec::new();
    io.take(len as u64).read_to_end(&mut body).await?;
    if body.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "frame ended early",
        ));
    }
    Ok(body)
}

fn decode_body<M: DeserializeOwned>(body: &[u8]) -> io::Result<M> {
    codec::decode(body).map_err(|error| {
        // A peer of a newer build whose cluster moved on: say so where an operator looks.
        if let codec::CodecError::Version { found } = error {
            tracing::warn!(
                found,
                "a peer sent a message in a format this build does not read: upgrade this node"
            );
        }
        io::Error::new(io::ErrorKind::InvalidData, error)
    })
}

/// Encodes a message into a frame body, refusing one over the limit.
pub fn encode_frame<M: Serialize>(message: &M) -> io::Result<Vec<u8>> {
    encode_frame_as(codec::write_version(), message)
}

fn encode_frame_as<M: Serialize>(version: u8, message: &M) -> io::Result<Vec<u8>> {
    let body = codec::encode_as(version, message)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    check_frame_len(body.len())?;
    Ok(body)
}

fn check_frame_len(len: usize) -> io::Result<()> {
    if len > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("message of {len} bytes exceeds the limit of {FRAME_BYTES_MAX}"),
        ));
    }
    Ok(())
}

async fn write_frame<T, M>(io: &mut T, version: u8, message: &M) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
    M: Serialize,
{
    // The length first, filled in once the body is encoded behind it: one buffer and one
    // write, so a small message travels in one yamux frame.
    let mut frame = vec![0_u8; 4];
    let len = codec::encode_into(version, message, &mut frame)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    set_len(&mut frame, 0, len)?;
    io.write_all(&frame).await?;
    io.close().await
}

/// Writes `len`, checked against the limit, as the 4-byte length at `frame[at..]`.
fn set_len(frame: &mut [u8], at: usize, len: usize) -> io::Result<()> {
    check_frame_len(len)?;
    let len = u32::try_from(len).map_err(io::Error::other)?;
    frame[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// The format an answer is written in: what a node of an older build asks before it is a
/// member (who leads, may I join) is answered in the oldest format read. These answers have
/// one shape in every format, so such a node learns it must be upgraded instead of hearing
/// nothing it can read.
pub fn response_version(response: &Response) -> u8 {
    match response {
        Response::Hello(_) | Response::Formats { .. } | Response::Forward(Err(_)) => {
            codec::FORMAT_VERSION_MIN
        }
        _ => codec::write_version(),
    }
}

/// On a long-lived stream ([`STREAM_PROTOCOL`]) every message is a tagged frame: the 8-byte
/// big-endian id of the request it is or answers, then a frame as on a substream (a 4-byte
/// length, the body), bound by the same limit. An answer with no body (length 0) says the
/// request was dropped unanswered: the asker hears so at once instead of timing out.
const TAG_BYTES: usize = 8;

/// What a tagged frame carries.
#[derive(Debug)]
pub enum Body<M> {
    Message(M),
    /// No body: the request was dropped unanswered.
    Empty,
    /// A body this build cannot decode (a newer format, say): only its request fails, the
    /// stream goes on.
    Unreadable(io::Error),
}

/// Appends `message` (or no body) as a tagged frame to `buffer`, so several frames go out in
/// one write. On an error `buffer` is as it was.
pub fn push_tagged<M: Serialize>(
    buffer: &mut Vec<u8>,
    id: u64,
    message: Option<(u8, &M)>,
) -> io::Result<()> {
    let at = buffer.len();
    buffer.extend_from_slice(&id.to_be_bytes());
    buffer.extend_from_slice(&[0; 4]);
    let framed = match message {
        Some((version, message)) => codec::encode_into(version, message, buffer)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        None => Ok(0),
    }
    .and_then(|body| set_len(buffer, at + TAG_BYTES, body));
    if framed.is_err() {
        buffer.truncate(at);
    }
    framed
}

/// Reads one tagged frame: its id, and what it carries. An error is the stream's (it cannot
/// be read on); a body that does not decode is not.
pub async fn read_tagged<T, M>(io: &mut T) -> io::Result<(u64, Body<M>)>
where
    T: AsyncRead + Unpin + Send,
    M: DeserializeOwned,
{
    let mut id = [0_u8; TAG_BYTES];
    io.read_exact(&mut id).await?;
    let id = u64::from_be_bytes(id);
    let len = read_len(io).await?;
    if len == 0 {
        return Ok((id, Body::Empty));
    }
    let body = read_body(io, len).await?;
    match decode_body(&body) {
        Ok(message) => Ok((id, Body::Message(message))),
        Err(error) => Ok((id, Body::Unreadable(error))),
    }
}

impl libp2p::request_response::Codec for FrameCodec {
    type Protocol = libp2p::StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &Self::Protocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn read_response<T>(&mut self, _: &Self::Protocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, codec::write_version(), &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let version = response_version(&res);
        write_frame(io, version, &res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_frames_carry_their_id_and_a_bad_body_fails_only_its_own() -> io::Result<()> {
        let mut wire = Vec::new();
        push_tagged(
            &mut wire,
            7,
            Some((codec::write_version(), &Request::Hello)),
        )?;
        push_tagged::<Request>(&mut wire, 8, None)?;
        // A body in a format this build does not read, between two good frames.
        push_tagged(&mut wire, 9, Some((u8::MAX, &Request::Hello)))?;
        push_tagged(
            &mut wire,
            10,
            Some((codec::write_version(), &Request::Probe)),
        )?;
        let mut io = futures::io::Cursor::new(wire);
        let mut read = || {
            futures::executor::block_on(read_tagged::<_, Request>(&mut io)).map(|(id, body)| {
                let body = match body {
                    Body::Message(request) => format!("{request:?}"),
                    Body::Empty => "empty".to_string(),
                    Body::Unreadable(_) => "unreadable".to_string(),
                };
                (id, body)
            })
        };
        assert_eq!(read()?, (7, "Hello".to_string()));
        assert_eq!(read()?, (8, "empty".to_string()));
        assert_eq!(read()?, (9, "unreadable".to_string()));
        assert_eq!(read()?, (10, "Probe".to_string()));
        assert!(read().is_err(), "the stream ended");
        Ok(())
    }

    #[test]
    fn a_tagged_frame_over_the_limit_is_refused_and_leaves_the_buffer_as_it_was() {
        let mut buffer = vec![1, 2, 3];
        let big = vec![0_u8; FRAME_BYTES_MAX + 1];
        assert!(push_tagged(&mut buffer, 1, Some((codec::write_version(), &big))).is_err());
        assert_eq!(buffer, vec![1, 2, 3]);
    }
}
