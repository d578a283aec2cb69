//! `ftp://` through suppaftp: an [`ObjectStore`] over one FTP server, so downloads, uploads,
//! directory listings and publishing treat it like any bucket.
//!
//! - Passive mode (with the NAT workaround: data connections go to the control connection's
//!   address), binary transfers, plain FTP (no TLS).
//! - The URL's path is the path from the server's root, as Funnel reads it:
//!   `ftp://host/data/a.txt` is `/data/a.txt` on the server.
//! - Writes go to a temporary name beside the object and are renamed into place, so nobody
//!   reads a partial object; missing parent directories are made when a `STOR` is refused.
//!   Listings leave such temporary files out.
//! - Every operation takes one of [`FTP_OPERATIONS_MAX`] permits of its store first, and takes
//!   no other while it runs (a copy, which needs two connections, opens both under its one
//!   permit), so operations cannot wait on each other. At most [`FTP_IDLE_CONNECTIONS_MAX`]
//!   connections are kept idle; one idle for a few seconds is checked with `NOOP` before reuse,
//!   and only a connection whose last reply was read whole goes back to the pool.
//! - Every command, login and read of a data connection has a timeout.
//! - Byte ranges, conditional requests and `PutMode::Update` are refused as not implemented;
//!   copies (FTP has none) stream through this node.
//!
//! Replies 530 are `Unauthenticated`, other 5xx `PermissionDenied` (550 on a read is
//! `NotFound`): none of those is retried. Connection errors and 4xx replies are `Generic`,
//! which the transfers retry.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use object_store::path::{Path, PathPart};
use object_store::{
    Attributes, CopyMode, CopyOptions, Error, GetOptions, GetResult, GetResultPayload, ListResult,
    MultipartUpload, ObjectMeta, ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload,
    PutResult, Result, UploadPart,
};
use suppaftp::list::{File as FtpEntry, ListParser};
use suppaftp::tokio::{AsyncFtpStream, AsyncNoTlsStream, TransferStream};
use suppaftp::types::FileType;
use suppaftp::{FtpError, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::limits::{
    CONNECT_TIMEOUT, FTP_DIRECTORY_ENTRIES_MAX, FTP_IDLE_CONNECTIONS_MAX, FTP_OPERATIONS_MAX,
    READ_IDLE_TIMEOUT,
};

const STORE: &str = "FTP";
/// A pooled connection idle longer than this is checked with `NOOP` before reuse (servers
/// close idle connections after minutes).
const TRUSTED_IDLE: Duration = Duration::from_secs(5);
/// Bytes read from a data connection at a time.
const CHUNK_BYTES: usize = 256 * 1024;
/// What names the temporary file of a write in progress.
const PARTIAL_MARK: &str = ".shoal-partial-";

/// Where an FTP store connects and as whom.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct FtpTarget {
    /// A name or an IP address (an IPv6 one without brackets).
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
}

impl fmt::Debug for FtpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password.
        if self.host.contains(':') {
            write!(f, "ftp://{}@[{}]:{}", self.user, self.host, self.port)
        } else {
            write!(f, "ftp://{}@{}:{}", self.user, self.host, self.port)
        }
    }
}

/// One FTP server, as one user, as an object store.
#[derive(Debug, Clone)]
pub(crate) struct FtpStore {
    inner: Arc<Inner>,
}

struct Inner {
    target: FtpTarget,
    idle: Mutex<Vec<Connection>>,
    operations: Arc<Semaphore>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FtpStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// A logged-in control connection.
struct Connection {
    ftp: AsyncFtpStream,
    /// When it was last given back to the pool.
    idle_since: Instant,
}

impl fmt::Display for FtpStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.inner.target)
    }
}

impl FtpStore {
    pub(crate) fn new(target: FtpTarget) -> Self {
        FtpStore {
            inner: Arc::new(Inner {
                target,
                idle: Mutex::new(Vec::new()),
                operations: Arc::new(Semaphore::new(FTP_OPERATIONS_MAX)),
            }),
        }
    }
}

/// `operation` with the command timeout: a silent server is a (retried) error.
async fn timed<T>(operation: impl Future<Output = Result<T, FtpError>>) -> Result<T, FtpError> {
    match tokio::time::timeout(READ_IDLE_TIMEOUT, operation).await {
        Ok(result) => result,
        Err(_) => Err(FtpError::ConnectionError(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {} s", READ_IDLE_TIMEOUT.as_secs()),
        ))),
    }
}

async fn io_timed<T>(operation: impl Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
    tokio::time::timeout(READ_IDLE_TIMEOUT, operation)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// Whether a command's outcome leaves its connection in step with the server (its reply was
/// read whole): only then may the connection serve another command.
fn in_step<T>(result: &Result<T, FtpError>) -> bool {
    result.as_ref().err().is_none_or(answered)
}

/// Whether a failure is the server's answer (read whole), not a lost connection.
fn answered(error: &FtpError) -> bool {
    matches!(error, FtpError::UnexpectedResponse(_))
}

fn status_of(error: &FtpError) -> Option<Status> {
    match error {
        FtpError::UnexpectedResponse(response) => Some(response.status),
        _ => None,
    }
}

/// How a failed FTP command reads to object_store callers; `reading` makes 550 "not found".
fn store_error(path: &str, error: FtpError, reading: bool) -> Error {
    let status = status_of(&error);
    let path = path.to_owned();
    let source = Box::new(error);
    match status {
        Some(Status::FileUnavailable) if reading => Error::NotFound { path, source },
        Some(Status::NotLoggedIn) => Error::Unauthenticated { path, source },
        Some(status) if status.code() >= 500 => Error::PermissionDenied { path, source },
        _ => generic(source),
    }
}

/// The same failure again (object_store errors cannot be cloned): its kind, its message.
fn again(error: &Error) -> Error {
    let source = error.to_string().into();
    match error {
        Error::NotFound { path, .. } => Error::NotFound {
            path: path.clone(),
            source,
        },
        Error::Unauthenticated { path, .. } => Error::Unauthenticated {
            path: path.clone(),
            source,
        },
        Error::PermissionDenied { path, .. } => Error::PermissionDenied {
            path: path.clone(),
            source,
        },
        _ => generic(source),
    }
}

/// A retried failure: a lost connection, a timeout, a message of ours.
fn generic(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::Generic {
        store: STORE,
        source: source.into(),
    }
}

fn not_implemented(operation: &str) -> Error {
    Error::NotImplemented {
        operation: operation.to_owned(),
        implementer: STORE.to_owned(),
    }
}

/// The server path of an object path.
fn server_path(path: &Path) -> String {
    format!("/{path}")
}

/// A name beside `path` no other writer uses.
fn temporary_path(path: &Path) -> String {
    format!(
        "{}{PARTIAL_MARK}{:016x}",
        server_path(path),
        shoal_runtime::random_u64()
    )
}

/// A directory's entry as a path below `dir`; `None` for names no object path can hold.
fn child(dir: &Path, name: &str) -> Option<Path> {
    PathPart::parse(name)
        .ok()
        .map(|part| dir.clone().join(part))
}

/// The entries of a listing worth showing: files and directories, not `.`/`..`, not the
/// current or parent directory of an MLSD answer, not writes in progress.
fn listed_entries(lines: &[String], mlsd: bool) -> Vec<FtpEntry> {
    lines
        .iter()
        .filter(|line| {
            let facts = line.to_ascii_lowercase();
            !(mlsd && (facts.contains("type=cdir") || facts.contains("type=pdir")))
        })
        .filter_map(|line| {
            if mlsd {
                ListParser::parse_mlsd(line).ok()
            } else {
                ListParser::parse_posix(line)
                    .or_else(|_| ListParser::parse_dos(line))
                    .ok()
            }
        })
        .filter(|entry| !matches!(entry.name(), "." | "..") && !entry.name().contains(PARTIAL_MARK))
        .collect()
}

fn meta_of(entry: &FtpEntry, location: Path) -> ObjectMeta {
    ObjectMeta {
        location,
        last_modified: chrono::DateTime::<chrono::Utc>::from(entry.modified()),
        size: entry.size() as u64,
        e_tag: None,
        version: None,
    }
}

impl Inner {
    /// One of the store's operation permits: every operation holds one while it runs.
    async fn operation(&self) -> Result<OwnedSemaphorePermit> {
        self.operations
            .clone()
            .acquire_owned()
            .await
            .map_err(generic)
    }

    /// A logged-in connection: an idle one that still answers, or a new one. Call it only
    /// while holding an operation permit.
    async fn connect(&self, path: &str) -> Result<Connection> {
        loop {
            let pooled = self
                .idle
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .pop();
            let Some(mut connection) = pooled else {
                break;
            };
            if connection.idle_since.elapsed() < TRUSTED_IDLE
                || timed(connection.ftp.noop()).await.is_ok()
            {
                return Ok(connection);
            }
        }
        let ftp = timed(self.login())
            .await
            .map_err(|error| store_error(path, error, false))?;
        Ok(Connection {
            ftp,
            idle_since: Instant::now(),
        })
    }

    async fn login(&self) -> Result<AsyncFtpStream, FtpError> {
        let target = &self.target;
        let address = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(FtpError::ConnectionError)?
            .next()
            .ok_or_else(|| {
                FtpError::ConnectionError(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{} has no address", target.host),
                ))
            })?;
        let mut ftp = AsyncFtpStream::connect_timeout(address, CONNECT_TIMEOUT).await?;
        ftp.set_passive_nat_workaround(true);
        ftp.login(target.user.as_str(), target.password.as_str())
            .await?;
        ftp.transfer_type(FileType::Binary).await?;
        Ok(ftp)
    }

    /// Keeps a connection in step with its server for the next operation.
    fn give_back(&self, mut connection: Connection) {
        connection.idle_since = Instant::now();
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() < FTP_IDLE_CONNECTIONS_MAX {
            idle.push(connection);
        }
    }

    /// Size and modification time of a file; `NotFound` for a directory or nothing.
    async fn head(&self, path: &Path) -> Result<ObjectMeta> {
        let name = server_path(path);
        let mut connection = self.connect(&name).await?;
        let size = match timed(connection.ftp.size(&name)).await {
            Ok(size) => size,
            Err(error) => {
                if answered(&error) {
                    self.give_back(connection);
                }
                return Err(store_error(&name, error, true));
            }
        };
        // MDTM is optional in FTP: without it the time is unknown (the epoch).
        let time = timed(connection.ftp.mdtm(&name)).await;
        if in_step(&time) {
            self.give_back(connection);
        }
        Ok(ObjectMeta {
            location: path.clone(),
            last_modified: time.map(|time| time.and_utc()).unwrap_or_default(),
            size: size as u64,
            e_tag: None,
            version: None,
        })
    }

    /// The entries of one directory; `NotFound` when it is missing.
    async fn entries(&self, dir: &str) -> Result<Vec<FtpEntry>> {
        let mut connection = self.connect(dir).await?;
        // MLSD where the server has it (exact types, sizes and times), else LIST.
        let mut mlsd = true;
        let mut answer = timed(connection.ftp.mlsd(Some(dir))).await;
        if let Err(FtpError::UnexpectedResponse(response)) = &answer
            && matches!(
                response.status,
                Status::BadCommand | Status::NotImplemented | Status::CommandNotImplemented
            )
        {
            mlsd = false;
            answer = timed(connection.ftp.list(Some(dir))).await;
        }
        if in_step(&answer) {
            self.give_back(connection);
        }
        let lines = match answer {
            Ok(lines) => lines,
            // A missing directory: 550, or 501 from servers that check the argument first.
            Err(error)
                if matches!(
                    status_of(&error),
                    Some(Status::FileUnavailable | Status::BadArguments)
                ) =>
            {
                return Err(Error::NotFound {
                    path: dir.to_owned(),
                    source: Box::new(error),
                });
            }
            Err(error) => return Err(store_error(dir, error, true)),
        };
        if lines.len() > FTP_DIRECTORY_ENTRIES_MAX {
            return Err(Error::PermissionDenied {
                path: dir.to_owned(),
                source: format!("more than {FTP_DIRECTORY_ENTRIES_MAX} entries in one directory")
                    .into(),
            });
        }
        Ok(listed_entries(&lines, mlsd))
    }

    /// `STOR` of `partial`; refused (as when its directory is missing), once more after
    /// making the directories above `path`.
    async fn open_upload(
        &self,
        connection: &mut Connection,
        path: &Path,
        partial: &str,
    ) -> Result<TransferStream<AsyncNoTlsStream>, FtpError> {
        match timed(connection.ftp.put_with_stream(partial)).await {
            Err(FtpError::UnexpectedResponse(response)) if response.status.code() >= 500 => {
                let parts: Vec<_> = path.parts().collect();
                let mut dir = String::new();
                for part in parts.iter().take(parts.len().saturating_sub(1)) {
                    dir.push('/');
                    dir.push_str(part.as_ref());
                    // An existing directory answers 550 here; a real problem shows at STOR.
                    match timed(connection.ftp.mkdir(&dir)).await {
                        Err(error) if !answered(&error) => return Err(error),
                        _ => {}
                    }
                }
                timed(connection.ftp.put_with_stream(partial)).await
            }
            result => result,
        }
    }

    /// Ends an upload: the transfer, then (unless `short` says why the source fell short) the
    /// rename of `partial` onto `name`, replacing what is there. On failure the partial file
    /// is removed, best effort.
    async fn finish_upload(
        &self,
        mut connection: Connection,
        upload: TransferStream<AsyncNoTlsStream>,
        partial: &str,
        name: &str,
        short: Option<String>,
    ) -> Result<()> {
        let mut result = timed(upload.finish()).await;
        if result.is_ok()
            && let Some(reason) = short
        {
            result = Err(FtpError::ConnectionError(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                reason,
            )));
        }
        if result.is_ok() {
            result = timed(connection.ftp.rename(partial, name)).await;
            // Servers that refuse to overwrite (ProFTPD without AllowOverwrite, IIS): make room.
            if let Err(error) = &result
                && status_of(error).is_some_and(|s| s.code() >= 500)
                && timed(connection.ftp.rm(name)).await.is_ok()
            {
                result = timed(connection.ftp.rename(partial, name)).await;
            }
        }
        match result {
            Ok(()) => {
                self.give_back(connection);
                Ok(())
            }
            Err(error) => {
                // A partial file left by a lost connection is named as one (listings skip it).
                if answered(&error) && in_step(&timed(connection.ftp.rm(partial)).await) {
                    self.give_back(connection);
                }
                Err(store_error(name, error, false))
            }
        }
    }

    /// Streams `source` into `path` through a temporary name, replacing what is there; with
    /// `expected`, a source that ends short of it replaces nothing.
    async fn store_from<R>(&self, path: &Path, source: &mut R, expected: Option<u64>) -> Result<u64>
    where
        R: tokio::io::AsyncRead + Unpin,
    {
        let name = server_path(path);
        let partial = temporary_path(path);
        let mut connection = self.connect(&name).await?;
        let mut upload = self
            .open_upload(&mut connection, path, &partial)
            .await
            .map_err(|error| store_error(&name, error, false))?;
        let bytes = match copy_timed(source, &mut upload).await {
            Ok(bytes) => bytes,
            Err(error) => {
                // The data connection is dropped unfinished: the connection is not reused.
                drop(upload);
                return Err(generic(error));
            }
        };
        let short = expected
            .filter(|expected| *expected != bytes)
            .map(|expected| format!("copied {bytes} bytes of {expected}"));
        self.finish_upload(connection, upload, &partial, &name, short)
            .await?;
        Ok(bytes)
    }

    /// Deletes a file; one that is not there is no error, as in every object store.
    async fn delete(&self, path: &Path) -> Result<()> {
        let name = server_path(path);
        let mut connection = self.connect(&name).await?;
        let removed = timed(connection.ftp.rm(&name)).await;
        if in_step(&removed) {
            self.give_back(connection);
        }
        match removed {
            Ok(()) => Ok(()),
            // 550 is "no such file" as often as "not allowed": which, the file tells.
            Err(error) if status_of(&error) == Some(Status::FileUnavailable) => {
                match self.head(path).await {
                    Err(Error::NotFound { .. }) => Ok(()),
                    _ => Err(store_error(&name, error, false)),
                }
            }
            Err(error) => Err(store_error(&name, error, false)),
        }
    }
}

/// Copies `source` into `sink`, giving up when either is silent for the read timeout.
async fn copy_timed<R, W>(source: &mut R, sink: &mut W) -> std::io::Result<u64>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; CHUNK_BYTES];
    let mut total = 0u64;
    loop {
        let read = io_timed(source.read(&mut buffer)).await?;
        if read == 0 {
            return Ok(total);
        }
        io_timed(sink.write_all(&buffer[..read])).await?;
        total += read as u64;
    }
}

/// A download in progress: its operation permit, connection and data stream.
struct Download {
    inner: Arc<Inner>,
    _operation: OwnedSemaphorePermit,
    connection: Option<Connection>,
    transfer: Option<TransferStream<AsyncNoTlsStream>>,
    buffer: BytesMut,
    name: String,
}

impl Download {
    async fn next_chunk(&mut self) -> Option<Result<Bytes>> {
        let transfer = self.transfer.as_mut()?;
        if self.buffer.capacity() < CHUNK_BYTES / 4 {
            self.buffer.reserve(CHUNK_BYTES);
        }
        match io_timed(transfer.read_buf(&mut self.buffer)).await {
            Ok(0) => {
                let transfer = self.transfer.take()?;
                match timed(transfer.finish()).await {
                    Ok(()) => {
                        if let Some(connection) = self.connection.take() {
                            self.inner.give_back(connection);
                        }
                        None
                    }
                    Err(error) => Some(Err(store_error(&self.name, error, true))),
                }
            }
            Ok(_) => Some(Ok(self.buffer.split().freeze())),
            Err(error) => {
                self.transfer = None;
                Some(Err(generic(error)))
            }
        }
    }
}

#[async_trait]
impl ObjectStore for FtpStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        if !matches!(opts.mode, PutMode::Overwrite | PutMode::Create) {
            return Err(not_implemented("put with a version condition"));
        }
        let _operation = self.inner.operation().await?;
        // Create is checked, then written: not atomic, as FTP has no conditional write.
        if opts.mode == PutMode::Create && self.inner.head(location).await.is_ok() {
            return Err(Error::AlreadyExists {
                path: location.to_string(),
                source: "an object is there already".into(),
            });
        }
        let bytes: Bytes = payload.into();
        self.inner
            .store_from(location, &mut bytes.as_ref(), None)
            .await?;
        Ok(PutResult {
            e_tag: None,
            version: None,
            extensions: Default::default(),
        })
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        _opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        Ok(Box::new(Upload::start(
            self.inner.clone(),
            location.clone(),
        )))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        if options.range.is_some()
            || options.version.is_some()
            || options.if_match.is_some()
            || options.if_none_match.is_some()
            || options.if_modified_since.is_some()
            || options.if_unmodified_since.is_some()
        {
            return Err(not_implemented("get with a range, version or condition"));
        }
        let operation = self.inner.operation().await?;
        let meta = self.inner.head(location).await?;
        let range = 0..meta.size;
        if options.head {
            return Ok(GetResult {
                payload: GetResultPayload::Stream(stream::empty().boxed()),
                meta,
                range,
                attributes: Attributes::default(),
                extensions: Default::default(),
            });
        }
        let name = server_path(location);
        let mut connection = self.inner.connect(&name).await?;
        let transfer = timed(connection.ftp.retr_as_stream(&name))
            .await
            .map_err(|error| store_error(&name, error, true))?;
        let download = Download {
            inner: self.inner.clone(),
            _operation: operation,
            connection: Some(connection),
            transfer: Some(transfer),
            buffer: BytesMut::new(),
            name,
        };
        let chunks = stream::unfold(download, |mut download| async move {
            download.next_chunk().await.map(|chunk| (chunk, download))
        });
        Ok(GetResult {
            payload: GetResultPayload::Stream(chunks.boxed()),
            meta,
            range,
            attributes: Attributes::default(),
            extensions: Default::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let inner = self.inner.clone();
        locations
            .and_then(move |path| {
                let inner = inner.clone();
                async move {
                    let _operation = inner.operation().await?;
                    inner.delete(&path).await.map(|()| path)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let start = prefix.cloned().unwrap_or_default();
        let walk = Walk {
            inner: self.inner.clone(),
            stack: vec![WalkItem::Directory(start)],
        };
        stream::unfold(walk, |mut walk| async move {
            walk.next().await.map(|item| (item, walk))
        })
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let dir = prefix.cloned().unwrap_or_default();
        let entries = {
            let _operation = self.inner.operation().await?;
            match self.inner.entries(&server_path(&dir)).await {
                Err(Error::NotFound { .. }) => Vec::new(),
                result => result?,
            }
        };
        let mut listed = ListResult {
            common_prefixes: Vec::new(),
            objects: Vec::new(),
            extensions: Default::default(),
        };
        for entry in entries {
            let Some(location) = child(&dir, entry.name()) else {
                continue;
            };
            if entry.is_directory() {
                listed.common_prefixes.push(location);
            } else if entry.is_file() {
                listed.objects.push(meta_of(&entry, location));
            }
        }
        listed.common_prefixes.sort();
        listed.objects.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(listed)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let _operation = self.inner.operation().await?;
        if options.mode == CopyMode::Create && self.inner.head(to).await.is_ok() {
            return Err(Error::AlreadyExists {
                path: to.to_string(),
                source: "an object is there already".into(),
            });
        }
        // FTP cannot copy on the server: the bytes pass through here, from one connection
        // into another, both under this operation's permit. The size read first tells a
        // whole copy from one the server cut short.
        let size = self.inner.head(from).await?.size;
        let name = server_path(from);
        let mut connection = self.inner.connect(&name).await?;
        let mut transfer = timed(connection.ftp.retr_as_stream(&name))
            .await
            .map_err(|error| store_error(&name, error, true))?;
        self.inner.store_from(to, &mut transfer, Some(size)).await?;
        timed(transfer.finish())
            .await
            .map_err(|error| store_error(&name, error, true))?;
        self.inner.give_back(connection);
        Ok(())
    }
}

/// A recursive listing in lexicographic order of paths: each directory's entries sorted by
/// name (a directory as `name/`), a directory's objects listed where it sorts, depth first.
struct Walk {
    inner: Arc<Inner>,
    /// What is still to come, the next last: objects to yield, directories to list.
    stack: Vec<WalkItem>,
}

enum WalkItem {
    Object(ObjectMeta),
    /// A directory to list.
    Directory(Path),
}

impl Walk {
    async fn next(&mut self) -> Option<Result<ObjectMeta>> {
        loop {
            let dir = match self.stack.pop()? {
                WalkItem::Object(meta) => return Some(Ok(meta)),
                WalkItem::Directory(dir) => dir,
            };
            let listed = match self.inner.operation().await {
                Ok(_operation) => self.inner.entries(&server_path(&dir)).await,
                Err(error) => Err(error),
            };
            let entries = match listed {
                Ok(entries) => entries,
                // A prefix with nothing below it lists nothing; a directory removed since
                // its parent was listed holds nothing now.
                Err(Error::NotFound { .. }) => continue,
                Err(error) => {
                    self.stack.clear();
                    return Some(Err(error));
                }
            };
            let mut items: Vec<(String, WalkItem)> = entries
                .into_iter()
                .filter_map(|entry| {
                    let location = child(&dir, entry.name())?;
                    if entry.is_directory() {
                        let key = format!("{}/", entry.name());
                        Some((key, WalkItem::Directory(location)))
                    } else if entry.is_file() {
                        let meta = meta_of(&entry, location);
                        Some((entry.name().to_owned(), WalkItem::Object(meta)))
                    } else {
                        None
                    }
                })
                .collect();
            // Reversed: the stack pops from the end.
            items.sort_by(|a, b| b.0.cmp(&a.0));
            self.stack.extend(items.into_iter().map(|(_, item)| item));
        }
    }
}

/// What a multipart upload's writer task is sent.
enum UploadMessage {
    /// A part, acknowledged once written (or with why it was not).
    Part(Bytes, oneshot::Sender<Result<()>>),
    /// Every part was sent: end the file, rename it into place, answer how that went.
    Complete(oneshot::Sender<Result<()>>),
}

/// A multipart upload: parts are written, in the order given, into one `STOR` of a
/// temporary name by a task of its own, which renames the file into place on `Complete`.
/// Aborted or dropped without it, the task drops the transfer and removes the partial file.
/// Once anything failed, every later part and the completion answer that same failure.
#[derive(Debug)]
struct Upload {
    messages: Option<mpsc::UnboundedSender<UploadMessage>>,
    /// Ends when the writer task has cleaned up.
    ended: Option<oneshot::Receiver<()>>,
}

impl Upload {
    fn start(inner: Arc<Inner>, path: Path) -> Upload {
        let (messages, receiver) = mpsc::unbounded_channel();
        let (ended_sender, ended) = oneshot::channel();
        shoal_runtime::spawn(async move {
            write_parts(inner, path, receiver).await;
            let _ = ended_sender.send(());
        });
        Upload {
            messages: Some(messages),
            ended: Some(ended),
        }
    }

    fn ended() -> Error {
        generic("the upload has ended")
    }
}

/// The writer task of an [`Upload`].
async fn write_parts(
    inner: Arc<Inner>,
    path: Path,
    mut messages: mpsc::UnboundedReceiver<UploadMessage>,
) {
    let name = server_path(&path);
    let partial = temporary_path(&path);
    // The first failure, answered to every message after it.
    let mut failed: Option<Error> = None;
    let mut open: Option<(Connection, TransferStream<AsyncNoTlsStream>)> = None;
    let operation = match inner.operation().await {
        Ok(operation) => Some(operation),
        Err(error) => {
            failed = Some(error);
            None
        }
    };
    while let Some(message) = messages.recv().await {
        match message {
            UploadMessage::Part(part, written) => {
                if failed.is_none() && open.is_none() {
                    match inner.connect(&name).await {
                        Ok(mut connection) => {
                            match inner.open_upload(&mut connection, &path, &partial).await {
                                Ok(upload) => open = Some((connection, upload)),
                                Err(error) => failed = Some(store_error(&name, error, false)),
                            }
                        }
                        Err(error) => failed = Some(error),
                    }
                }
                if let (None, Some((_, upload))) = (&failed, open.as_mut())
                    && let Err(error) = io_timed(upload.write_all(&part)).await
                {
                    failed = Some(generic(error));
                    open = None;
                }
                let _ = written.send(failed.as_ref().map_or(Ok(()), |e| Err(again(e))));
            }
            UploadMessage::Complete(done) => {
                let result = match (failed.take(), open.take()) {
                    (Some(error), _) => Err(error),
                    (None, Some((connection, upload))) => {
                        inner
                            .finish_upload(connection, upload, &partial, &name, None)
                            .await
                    }
                    // No part at all: an empty object.
                    (None, None) => inner
                        .store_from(&path, &mut &b""[..], None)
                        .await
                        .map(|_| ()),
                };
                let _ = done.send(result);
                drop(operation);
                return;
            }
        }
    }
    // Aborted or dropped: nothing is renamed into place; the partial file goes.
    if let Some((connection, upload)) = open {
        drop(upload);
        drop(connection);
        if let Ok(mut connection) = inner.connect(&partial).await {
            let removed = timed(connection.ftp.rm(&partial)).await;
            if in_step(&removed) {
                inner.give_back(connection);
            }
        }
    }
    drop(operation);
}

#[async_trait]
impl MultipartUpload for Upload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let (written, ack) = oneshot::channel();
        let sent = self.messages.as_ref().is_some_and(|messages| {
            messages
                .send(UploadMessage::Part(Bytes::from(data), written))
                .is_ok()
        });
        Box::pin(async move {
            if !sent {
                return Err(Upload::ended());
            }
            ack.await.unwrap_or_else(|_| Err(Upload::ended()))
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let messages = self.messages.take().ok_or_else(Upload::ended)?;
        let (done, answer) = oneshot::channel();
        messages
            .send(UploadMessage::Complete(done))
            .map_err(|_| Upload::ended())?;
        answer.await.unwrap_or_else(|_| Err(Upload::ended()))?;
        Ok(PutResult {
            e_tag: None,
            version: None,
            extensions: Default::default(),
        })
    }

    async fn abort(&mut self) -> Result<()> {
        // Without `Complete` the writer task drops the transfer and removes the partial file.
        self.messages = None;
        if let Some(ended) = self.ended.take() {
            let _ = ended.await;
        }
        Ok(())
    }
}
