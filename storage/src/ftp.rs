//! `ftp://` through suppaftp: an [`ObjectStore`] over one FTP server, so downloads, uploads,
//! directory listings and publishing treat it like any bucket.
//!
//! - Passive mode (with the NAT workaround: data connections go to the control connection's
//!   address), binary transfers, plain FTP (no TLS).
//! - The URL's path is the path from the server's root, as Funnel reads it:
//!   `ftp://host/data/a.txt` is `/data/a.txt` on the server.
//! - Writes go to a temporary name beside the object and are renamed into place, so nobody
//!   reads a partial object; missing parent directories are made first.
//! - Connections are pooled per store: at most [`FTP_CONNECTIONS_MAX`] at once, at most
//!   [`FTP_IDLE_CONNECTIONS_MAX`] kept idle, checked with `NOOP` before reuse after a few
//!   idle seconds. Every
//!   command and every read of a data connection has a timeout.
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
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
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
    CONNECT_TIMEOUT, FTP_CONNECTIONS_MAX, FTP_DIRECTORY_ENTRIES_MAX, FTP_IDLE_CONNECTIONS_MAX,
    READ_IDLE_TIMEOUT,
};

const STORE: &str = "FTP";
/// A pooled connection idle longer than this is checked with `NOOP` before reuse (servers
/// close idle connections after minutes).
const TRUSTED_IDLE: Duration = Duration::from_secs(5);
/// Bytes read from a data connection at a time.
const CHUNK_BYTES: usize = 256 * 1024;

/// Where an FTP store connects and as whom.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct FtpTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
}

impl fmt::Debug for FtpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password.
        write!(f, "ftp://{}@{}:{}", self.user, self.host, self.port)
    }
}

/// One FTP server as an object store.
#[derive(Debug, Clone)]
pub(crate) struct FtpStore {
    inner: Arc<Inner>,
}

struct Inner {
    target: FtpTarget,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FtpStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// A logged-in control connection and the permit it holds.
struct Connection {
    ftp: AsyncFtpStream,
    _permit: OwnedSemaphorePermit,
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
                permits: Arc::new(Semaphore::new(FTP_CONNECTIONS_MAX)),
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

/// How a failed FTP command reads to object_store callers; `reading` makes 550 "not found".
fn store_error(path: &str, error: FtpError, reading: bool) -> Error {
    let status = match &error {
        FtpError::UnexpectedResponse(response) => Some(response.status),
        _ => None,
    };
    let path = path.to_owned();
    let source = Box::new(error);
    match status {
        Some(Status::FileUnavailable) if reading => Error::NotFound { path, source },
        Some(Status::NotLoggedIn) => Error::Unauthenticated { path, source },
        Some(status) if status.code() >= 500 => Error::PermissionDenied { path, source },
        _ => Error::Generic {
            store: STORE,
            source,
        },
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
        "{}.shoal-partial-{:016x}",
        server_path(path),
        shoal_runtime::random_u64()
    )
}

fn modified(entry: &FtpEntry) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::<chrono::Utc>::from(entry.modified())
}

impl Inner {
    /// A logged-in connection: an idle one that still answers, or a new one.
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
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|error| Error::Generic {
                store: STORE,
                source: Box::new(error),
            })?;
        let ftp = self
            .login()
            .await
            .map_err(|error| store_error(path, error, false))?;
        Ok(Connection {
            ftp,
            _permit: permit,
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
        timed(ftp.login(target.user.as_str(), target.password.as_str())).await?;
        timed(ftp.transfer_type(FileType::Binary)).await?;
        Ok(ftp)
    }

    /// Keeps a connection whose last command succeeded for the next operation.
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
        let size = timed(connection.ftp.size(&name))
            .await
            .map_err(|error| store_error(&name, error, true))?;
        // MDTM is optional in FTP: without it the time is unknown (the epoch).
        let last_modified = timed(connection.ftp.mdtm(&name))
            .await
            .map(|time| time.and_utc())
            .unwrap_or_default();
        self.give_back(connection);
        Ok(ObjectMeta {
            location: path.clone(),
            last_modified,
            size: size as u64,
            e_tag: None,
            version: None,
        })
    }

    /// The entries of one directory (`.` and `..` left out); `NotFound` when it is missing.
    async fn entries(&self, dir: &str) -> Result<Vec<FtpEntry>> {
        let mut connection = self.connect(dir).await?;
        // MLSD where the server has it (exact types, sizes and times), else LIST.
        let lines = match timed(connection.ftp.mlsd(Some(dir))).await {
            Ok(lines) => lines
                .iter()
                .filter_map(|line| ListParser::parse_mlsd(line).ok())
                .collect::<Vec<_>>(),
            Err(FtpError::UnexpectedResponse(response))
                if matches!(
                    response.status,
                    Status::CommandNotImplemented | Status::BadCommand
                ) =>
            {
                timed(connection.ftp.list(Some(dir)))
                    .await
                    .map_err(|error| store_error(dir, error, true))?
                    .iter()
                    .filter_map(|line| ListParser::parse_posix(line).ok())
                    .collect()
            }
            // A missing directory: 550, or 501 from servers that check the argument first.
            Err(FtpError::UnexpectedResponse(response))
                if matches!(
                    response.status,
                    Status::FileUnavailable | Status::BadArguments
                ) =>
            {
                return Err(Error::NotFound {
                    path: dir.to_owned(),
                    source: Box::new(FtpError::UnexpectedResponse(response)),
                });
            }
            Err(error) => return Err(store_error(dir, error, true)),
        };
        self.give_back(connection);
        if lines.len() > FTP_DIRECTORY_ENTRIES_MAX {
            return Err(Error::PermissionDenied {
                path: dir.to_owned(),
                source: format!("more than {FTP_DIRECTORY_ENTRIES_MAX} entries in one directory")
                    .into(),
            });
        }
        Ok(lines
            .into_iter()
            .filter(|entry| !matches!(entry.name(), "." | ".."))
            .collect())
    }

    /// Makes every missing directory above `path`.
    async fn make_parents(&self, connection: &mut Connection, path: &Path) {
        let parts: Vec<_> = path.parts().collect();
        let mut dir = String::new();
        for part in parts.iter().take(parts.len().saturating_sub(1)) {
            dir.push('/');
            dir.push_str(part.as_ref());
            // An existing directory answers 550 here; a real problem shows at STOR.
            let _ = timed(connection.ftp.mkdir(&dir)).await;
        }
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
                self.make_parents(connection, path).await;
                timed(connection.ftp.put_with_stream(partial)).await
            }
            result => result,
        }
    }

    /// Streams `source` into `path` through the temporary name `partial`, replacing what is
    /// there.
    async fn store_from<R>(&self, path: &Path, partial: &str, source: &mut R) -> Result<u64>
    where
        R: tokio::io::AsyncRead + Unpin,
    {
        let name = server_path(path);
        let mut connection = self.connect(&name).await?;
        let failed = |error| store_error(&name, error, false);
        let mut upload = self
            .open_upload(&mut connection, path, partial)
            .await
            .map_err(failed)?;
        let copied = copy_timed(source, &mut upload).await;
        let finished = match copied {
            Ok(bytes) => timed(upload.finish()).await.map(|()| bytes),
            Err(error) => {
                drop(upload);
                Err(FtpError::ConnectionError(error))
            }
        };
        let result = match finished {
            Ok(bytes) => timed(connection.ftp.rename(partial, &name))
                .await
                .map(|()| bytes),
            Err(error) => Err(error),
        };
        match result {
            Ok(bytes) => {
                self.give_back(connection);
                Ok(bytes)
            }
            Err(error) => {
                // Best effort: a partial file left here is named as one.
                let _ = timed(connection.ftp.rm(partial)).await;
                Err(failed(error))
            }
        }
    }

    async fn delete(&self, path: &Path) -> Result<()> {
        let name = server_path(path);
        let mut connection = self.connect(&name).await?;
        match timed(connection.ftp.rm(&name)).await {
            Ok(()) => {}
            // Deleting what is not there is no error, as in every object store.
            Err(error) => match store_error(&name, error, true) {
                Error::NotFound { .. } => {}
                error => return Err(error),
            },
        }
        self.give_back(connection);
        Ok(())
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

async fn io_timed<T>(operation: impl Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
    tokio::time::timeout(READ_IDLE_TIMEOUT, operation)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// A download in progress: the connection, its data stream, and whether it ended.
struct Download {
    inner: Arc<Inner>,
    connection: Option<Connection>,
    transfer: Option<TransferStream<AsyncNoTlsStream>>,
    name: String,
}

impl Download {
    async fn next_chunk(&mut self) -> Option<Result<Bytes>> {
        let transfer = self.transfer.as_mut()?;
        let mut buffer = vec![0u8; CHUNK_BYTES];
        match io_timed(transfer.read(&mut buffer)).await {
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
            Ok(read) => {
                buffer.truncate(read);
                Some(Ok(Bytes::from(buffer)))
            }
            Err(error) => {
                self.transfer = None;
                Some(Err(Error::Generic {
                    store: STORE,
                    source: Box::new(error),
                }))
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
        if opts.mode == PutMode::Create && self.inner.head(location).await.is_ok() {
            return Err(Error::AlreadyExists {
                path: location.to_string(),
                source: "an object is there already".into(),
            });
        }
        if !matches!(opts.mode, PutMode::Overwrite | PutMode::Create) {
            return Err(not_implemented("put with a version condition"));
        }
        let bytes: Bytes = payload.into();
        let partial = temporary_path(location);
        self.inner
            .store_from(location, &partial, &mut bytes.as_ref())
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
            connection: Some(connection),
            transfer: Some(transfer),
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
                async move { inner.delete(&path).await.map(|()| path) }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let start = prefix.cloned().unwrap_or_default();
        let walk = Walk {
            inner: self.inner.clone(),
            stack: vec![WalkItem::Directory(start, true)],
        };
        stream::unfold(walk, |mut walk| async move {
            walk.next().await.map(|item| (item, walk))
        })
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let dir = prefix.cloned().unwrap_or_default();
        let entries = match self.inner.entries(&server_path(&dir)).await {
            Err(Error::NotFound { .. }) => Vec::new(),
            result => result?,
        };
        let mut listed = ListResult {
            common_prefixes: Vec::new(),
            objects: Vec::new(),
            extensions: Default::default(),
        };
        for entry in entries {
            let location = dir.clone().join(entry.name());
            if entry.is_directory() {
                listed.common_prefixes.push(location);
            } else if entry.is_file() {
                listed.objects.push(ObjectMeta {
                    last_modified: modified(&entry),
                    size: entry.size() as u64,
                    location,
                    e_tag: None,
                    version: None,
                });
            }
        }
        listed.common_prefixes.sort();
        listed.objects.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(listed)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        if options.mode == CopyMode::Create && self.inner.head(to).await.is_ok() {
            return Err(Error::AlreadyExists {
                path: to.to_string(),
                source: "an object is there already".into(),
            });
        }
        // FTP cannot copy on the server: the bytes pass through here, from one connection
        // into another.
        let name = server_path(from);
        let mut connection = self.inner.connect(&name).await?;
        let mut transfer = timed(connection.ftp.retr_as_stream(&name))
            .await
            .map_err(|error| store_error(&name, error, true))?;
        let stored = self
            .inner
            .store_from(to, &temporary_path(to), &mut transfer)
            .await;
        let finished = timed(transfer.finish()).await;
        stored?;
        finished.map_err(|error| store_error(&name, error, true))?;
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
    /// A directory to list; `true` for the listed prefix itself (which may be missing).
    Directory(Path, bool),
}

impl Walk {
    async fn next(&mut self) -> Option<Result<ObjectMeta>> {
        loop {
            let (dir, top) = match self.stack.pop()? {
                WalkItem::Object(meta) => return Some(Ok(meta)),
                WalkItem::Directory(dir, top) => (dir, top),
            };
            let entries = match self.inner.entries(&server_path(&dir)).await {
                Ok(entries) => entries,
                // A prefix with nothing below it lists nothing.
                Err(Error::NotFound { .. }) if top => continue,
                Err(error) => {
                    self.stack.clear();
                    return Some(Err(error));
                }
            };
            let mut items: Vec<(String, WalkItem)> = entries
                .into_iter()
                .filter_map(|entry| {
                    let location = dir.clone().join(entry.name());
                    if entry.is_directory() {
                        let key = format!("{}/", entry.name());
                        Some((key, WalkItem::Directory(location, false)))
                    } else if entry.is_file() {
                        let meta = ObjectMeta {
                            last_modified: modified(&entry),
                            size: entry.size() as u64,
                            location,
                            e_tag: None,
                            version: None,
                        };
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
    /// A part, acknowledged once written.
    Part(Bytes, oneshot::Sender<Result<()>>),
    /// Every part was sent: end the file and rename it into place.
    Complete,
}

/// A multipart upload: parts are written, in the order given, into one `STOR` of a
/// temporary name by a task of its own, which renames the file into place on `Complete`.
/// Dropped or aborted without it, the task stops the transfer and removes the partial file.
#[derive(Debug)]
struct Upload {
    parts: Option<mpsc::UnboundedSender<UploadMessage>>,
    done: Option<oneshot::Receiver<Result<()>>>,
}

impl Upload {
    fn start(inner: Arc<Inner>, path: Path) -> Upload {
        let (parts, receiver) = mpsc::unbounded_channel();
        let (finish, done) = oneshot::channel();
        shoal_runtime::spawn(async move {
            let _ = finish.send(write_parts(inner, path, receiver).await);
        });
        Upload {
            parts: Some(parts),
            done: Some(done),
        }
    }
}

/// The writer task of an [`Upload`].
async fn write_parts(
    inner: Arc<Inner>,
    path: Path,
    mut parts: mpsc::UnboundedReceiver<UploadMessage>,
) -> Result<()> {
    let (mut pipe_writer, mut pipe_reader) = tokio::io::duplex(CHUNK_BYTES);
    let feed = async move {
        while let Some(message) = parts.recv().await {
            match message {
                UploadMessage::Part(part, written) => {
                    let result = pipe_writer.write_all(&part).await;
                    let failed = result.is_err();
                    let _ = written.send(result.map_err(|error| Error::Generic {
                        store: STORE,
                        source: Box::new(error),
                    }));
                    if failed {
                        break;
                    }
                }
                // Dropping the writer ends the file.
                UploadMessage::Complete => return Ok(()),
            }
        }
        Err(Error::Generic {
            store: STORE,
            source: "the upload was aborted".into(),
        })
    };
    let partial = temporary_path(&path);
    let store = inner.store_from(&path, &partial, &mut pipe_reader);
    // An abort fails `feed` while the pipe is still open: the transfer is dropped unfinished
    // and never renamed.
    let result = tokio::try_join!(feed, store).map(|_| ());
    if result.is_err()
        && let Ok(mut connection) = inner.connect(&partial).await
    {
        let _ = timed(connection.ftp.rm(&partial)).await;
        inner.give_back(connection);
    }
    result
}

#[async_trait]
impl MultipartUpload for Upload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let (written, ack) = oneshot::channel();
        let sent = self.parts.as_ref().is_some_and(|parts| {
            parts
                .send(UploadMessage::Part(Bytes::from(data), written))
                .is_ok()
        });
        Box::pin(async move {
            let ended = || Error::Generic {
                store: STORE,
                source: "the upload has ended".into(),
            };
            if !sent {
                return Err(ended());
            }
            ack.await.unwrap_or_else(|_| Err(ended()))
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let ended = || Error::Generic {
            store: STORE,
            source: "the upload has ended".into(),
        };
        let parts = self.parts.take().ok_or_else(ended)?;
        parts.send(UploadMessage::Complete).map_err(|_| ended())?;
        let done = self.done.take().ok_or_else(ended)?;
        done.await.unwrap_or_else(|_| Err(ended()))?;
        Ok(PutResult {
            e_tag: None,
            version: None,
            extensions: Default::default(),
        })
    }

    async fn abort(&mut self) -> Result<()> {
        // Without `Complete` the writer task drops the transfer and removes the partial file.
        self.parts = None;
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
        Ok(())
    }
}
