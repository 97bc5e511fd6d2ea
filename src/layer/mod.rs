//! OCI and Docker image layers: tar changesets to layer directories and back.
//!
//! A layer tar lists the files a layer adds or changes. Deletions are
//! empty files named `.wh.NAME`, and a file `.wh..wh..opq` makes its
//! directory opaque (OCI image spec v1.1, `layer.md`, "Whiteouts").
//!
//! - `import`: unpacks a tar (plain or gzip) into a new layer directory,
//!   turning those markers into the overlay format (0/0 character devices
//!   and `trusted.overlay.opaque=y`) unless asked to keep them.
//! - `export`: writes a layer directory as a tar whose bytes depend only on
//!   the layer's content, so its digest is reproducible.
//! - `path`: checks entry names, so nothing lands outside the layer.
//! - `digest`: SHA-256 digests in the OCI `sha256:HEX` form.

pub mod cli;
pub mod digest;
pub mod export;
pub mod import;
mod import_metadata;
mod import_tree;
mod import_whiteout;
pub mod path;

pub use export::{ExportOptions, ExportSummary, export_file};
pub use import::{ImportOptions, ImportSummary, import_file};

/// Prefix of an OCI/AUFS whiteout name: `.wh.NAME` deletes NAME.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";

/// Prefix of AUFS metadata names, which are not whiteouts.
pub const META_PREFIX: &[u8] = b".wh..wh.";

/// The OCI opaque marker: its directory hides the layers below.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// The xattr that marks an overlay directory opaque, and its value.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Xattr prefixes that carry overlay metadata. A layer tar never sets them:
/// they would change how the layer reads, so import drops them.
pub const OVERLAY_XATTR_PREFIXES: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];

/// Magic bytes at the start of a gzip stream (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Magic bytes at the start of a zstd frame (RFC 8878).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Returns true for xattrs that carry overlay metadata.
pub fn is_overlay_xattr(name: &[u8]) -> bool {
    OVERLAY_XATTR_PREFIXES
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

/// Compression of a layer blob, detected from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Detects the compression from the first bytes of a blob.
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&GZIP_MAGIC) {
            Compression::Gzip
        } else if head.starts_with(&ZSTD_MAGIC) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// An invalid layer tar or a failed import or export. Each message names
/// the entry or file involved.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("invalid entry {entry:?} in the layer tar: {reason}")]
    InvalidEntry { entry: String, reason: String },
    #[error("failed to {action} {entry:?}: {source}")]
    Io {
        action: &'static str,
        entry: String,
        source: std::io::Error,
    },
    #[error(
        "{path} is zstd-compressed, which is not supported: decompress it first (zstd -d) and import the tar"
    )]
    Zstd { path: String },
    #[error("{0}")]
    Usage(String),
}

impl LayerError {
    /// Builds an [`LayerError::Io`] for `action` on `entry`.
    pub fn io(
        action: &'static str,
        entry: impl Into<String>,
        source: std::io::Error,
    ) -> LayerError {
        LayerError::Io {
            action,
            entry: entry.into(),
            source,
        }
    }

    /// Builds an [`LayerError::InvalidEntry`].
    pub fn invalid(entry: impl Into<String>, reason: impl Into<String>) -> LayerError {
        LayerError::InvalidEntry {
            entry: entry.into(),
            reason: reason.into(),
        }
    }
}
