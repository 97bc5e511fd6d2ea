//! The `unionfs layer` subcommands.

use std::path::PathBuf;

use clap::Subcommand;

use super::{ExportOptions, ImportOptions, LayerError, export_file, import_file};

/// Environment variable that sets the default mtime clamp of an export
/// (reproducible-builds.org's convention).
pub const SOURCE_DATE_EPOCH: &str = "SOURCE_DATE_EPOCH";

#[derive(Subcommand, Debug)]
pub enum LayerCommand {
    /// Unpack a layer tar (plain or gzip) into a new layer directory; OCI
    /// whiteouts become 0/0 devices and trusted.overlay.opaque=y
    Import {
        /// Layer tar, such as an OCI image blob or `docker save` layer.tar
        tarball: PathBuf,
        /// New (or empty) directory for the layer
        dir: PathBuf,
        /// Keep .wh.NAME and .wh..wh..opq files as they are (AUFS format)
        #[arg(long)]
        keep_aufs: bool,
    },
    /// Write a layer directory as an OCI layer tar with the same bytes for
    /// the same content; prints its digest, diff_id and size
    Export {
        /// Layer directory, such as a container layer
        dir: PathBuf,
        /// Tar file to write; a name ending in .gz or .tgz is compressed
        tarball: PathBuf,
        /// Compress with gzip whatever the file name
        #[arg(long)]
        gzip: bool,
        /// Latest modification time to write, in seconds since the epoch
        /// (default: $SOURCE_DATE_EPOCH, else no clamp)
        #[arg(long, value_name = "SECONDS")]
        clamp_mtime: Option<u64>,
    },
}

/// Runs a `unionfs layer` subcommand and returns its exit status: 0 on
/// success, 1 on failure, 2 on invalid arguments.
pub fn main(command: LayerCommand) -> i32 {
    crate::logging::to_stderr(crate::logging::level(0));
    let result = match command {
        LayerCommand::Import {
            tarball,
            dir,
            keep_aufs,
        } => import_file(&tarball, &dir, ImportOptions { keep_aufs }).map(|summary| {
            eprintln!(
                "unionfs layer import: {} entries ({} whiteouts, {} opaque directories) into {}",
                summary.entries,
                summary.whiteouts,
                summary.opaque_dirs,
                dir.display()
            );
            if summary.dropped > 0 {
                eprintln!(
                    "unionfs layer import: dropped {} overlay xattrs and AUFS metadata entries",
                    summary.dropped
                );
            }
        }),
        LayerCommand::Export {
            dir,
            tarball,
            gzip,
            clamp_mtime,
        } => export(dir, tarball, gzip, clamp_mtime),
    };
    match result {
        Ok(()) => 0,
        Err(LayerError::Usage(message)) => {
            eprintln!("unionfs layer: {message}");
            2
        }
        Err(err) => {
            eprintln!("unionfs layer: {err}");
            1
        }
    }
}

fn export(
    dir: PathBuf,
    tarball: PathBuf,
    gzip: bool,
    clamp_mtime: Option<u64>,
) -> Result<(), LayerError> {
    let clamp_mtime = match clamp_mtime {
        Some(seconds) => Some(seconds),
        None => source_date_epoch()?,
    };
    let name = tarball.to_string_lossy();
    if let Some(suffix) = [".zst", ".zstd", ".xz", ".bz2", ".lz4"]
        .into_iter()
        .find(|suffix| name.ends_with(suffix))
    {
        return Err(LayerError::Usage(format!(
            "{name}: export writes plain or gzip tars, not {suffix}; name the file .tar, .tar.gz or .tgz"
        )));
    }
    let gzip = gzip || name.ends_with(".gz") || name.ends_with(".tgz");
    if !dir.is_dir() {
        return Err(LayerError::Usage(format!(
            "layer directory {} not found or not a directory",
            dir.display()
        )));
    }
    let summary = export_file(&dir, &tarball, ExportOptions { clamp_mtime, gzip })?;
    println!("digest: {}", summary.digest);
    println!("diff_id: {}", summary.diff_id);
    println!("size: {}", summary.size);
    Ok(())
}

/// Reads `SOURCE_DATE_EPOCH`: unset or empty means no clamp.
fn source_date_epoch() -> Result<Option<u64>, LayerError> {
    match std::env::var(SOURCE_DATE_EPOCH) {
        Ok(text) if text.is_empty() => Ok(None),
        Ok(text) => text.parse().map(Some).map_err(|_| {
            LayerError::Usage(format!(
                "invalid {SOURCE_DATE_EPOCH} {text:?}: expected whole seconds since 1970-01-01 UTC"
            ))
        }),
        Err(_) => Ok(None),
    }
}
