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

/// The libp2p protocol name; the version changes with incompatible message changes.
pub const PROTOCOL: &str = "/shoal/raft/2";

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
    let mut len = [0_u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit of {FRAME_BYTES_MAX}"),
        ));
    }
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
    codec::decode(&body).map_err(|error| {
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
    check_frame_len(len)?;
    let len = u32::try_from(len).map_err(io::Error::other)?;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    io.write_all(&frame).await?;
    io.close().await
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
        // What a node of an older build asks before it is a member (who leads, may I join),
        // answered in the oldest format read: these answers have one shape in every format,
        // so such a node learns it must be upgraded instead of hearing nothing it can read.
        let version = match res {
            Response::Hello(_) | Response::Formats { .. } | Response::Forward(Err(_)) => {
                codec::FORMAT_VERSION_MIN
            }
            _ => codec::write_version(),
        };
        write_frame(io, version, &res).await
    }
}
