//! Policy sources: where the pool document comes from, and the refresher that
//! keeps the policy in force fresh without ever replacing it with a bad one.

pub mod authing;
pub mod file;
pub mod refresh;
pub mod snapshot;

use crate::policy::{PoolDetail, WhitelistEntries};

/// A pool document and its whitelist entries, as fetched.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fetched {
    /// The pool detail.
    pub pool: PoolDetail,
    /// The whitelist entries.
    pub whitelist: WhitelistEntries,
}

/// Why a fetch failed. `reason()` is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file could not be read.
    #[error("cannot read {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        message: String,
    },
    /// The API did not answer in time.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// The API could not be reached.
    #[error("cannot reach the management API: {0}")]
    Connect(String),
    /// The API answered with an unexpected HTTP status.
    #[error("{what} answered HTTP {status}")]
    Status {
        /// Which call.
        what: &'static str,
        /// The HTTP status.
        status: u16,
    },
    /// The credentials were refused.
    #[error("the management API refused the credentials: {0}")]
    Unauthorized(String),
    /// The answer was not the expected document.
    #[error("{what}: {message}")]
    Parse {
        /// Which document.
        what: String,
        /// What is wrong with it.
        message: String,
    },
    /// The API answered with an error code.
    #[error("{what}: Authing code {code}: {message}")]
    Api {
        /// Which call.
        what: &'static str,
        /// Authing's code.
        code: i64,
        /// Authing's message.
        message: String,
    },
}

impl SourceError {
    /// A short label for `poolgate_policy_fetch_failures_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            SourceError::Io { .. } => "io",
            SourceError::Timeout(_) => "timeout",
            SourceError::Connect(_) => "connect",
            SourceError::Status { .. } => "http_status",
            SourceError::Unauthorized(_) => "unauthorized",
            SourceError::Parse { .. } => "parse",
            SourceError::Api { .. } => "api_error",
        }
    }
}

/// A configured policy source.
pub enum Source {
    /// Local files.
    File(file::FileSource),
    /// Authing's management API.
    Authing(Box<authing::AuthingSource>),
}

impl Source {
    /// The source's name, for labels and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Source::File(_) => "file",
            Source::Authing(_) => "authing",
        }
    }

    /// Fetches the document.
    pub async fn fetch(&mut self) -> Result<Fetched, SourceError> {
        match self {
            Source::File(f) => f.fetch().await,
            Source::Authing(a) => a.fetch().await,
        }
    }

    /// For sources that can tell cheaply: whether the document may have changed
    /// since the last fetch. `None` means "cannot tell; wait for the interval".
    pub async fn maybe_changed(&mut self) -> Option<bool> {
        match self {
            Source::File(f) => Some(f.changed().await),
            Source::Authing(_) => None,
        }
    }
}
