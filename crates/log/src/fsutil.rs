//! Small file-system helpers: atomic replacement with fsync of file and directory.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::{LogError, Result};

/// fsyncs a directory so that entries created, renamed or removed in it survive a power cut.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io(dir, e))
}

/// Replaces `path` with `contents` atomically: write a temporary file, fsync it, rename it
/// over the target, fsync the directory. A crash leaves either the old or the new file.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| LogError::io(&tmp, e))?;
    f.write_all(contents).map_err(|e| LogError::io(&tmp, e))?;
    f.sync_all().map_err(|e| LogError::io(&tmp, e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| LogError::io(path, e))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Appends a CRC-32C trailer line to a text checkpoint.
pub(crate) fn with_crc_line(body: &str) -> String {
    format!("{body}crc {:08x}\n", crc32c::crc32c(body.as_bytes()))
}

/// Splits a text checkpoint written by [`with_crc_line`] and checks its trailer.
pub(crate) fn check_crc_line(text: &str) -> Option<&str> {
    let trimmed = text.strip_suffix('\n')?;
    let idx = trimmed.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let (body, last) = text.split_at(idx);
    let hex = last.trim_end().strip_prefix("crc ")?;
    let crc = u32::from_str_radix(hex, 16).ok()?;
    (crc32c::crc32c(body.as_bytes()) == crc).then_some(body)
}
