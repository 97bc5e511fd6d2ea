//! SHA-256 digests in the OCI form `sha256:` followed by 64 lowercase hex
//! digits, and readers and writers that hash what passes through them.

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

/// Length of a SHA-256 digest in hex digits.
const SHA256_HEX_LEN: usize = 64;

/// Formats a finished hash as `sha256:HEX`.
pub fn format(hash: Sha256) -> String {
    let bytes = hash.finalize();
    let mut text = String::with_capacity(7 + SHA256_HEX_LEN);
    text.push_str("sha256:");
    for byte in bytes.iter() {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// Returns the `sha256:HEX` digest of `data`.
pub fn of_bytes(data: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(data);
    format(hash)
}

/// Splits a digest into its hex part after checking that it is
/// `sha256:` with 64 lowercase hex digits, so the hex can name a file.
pub fn sha256_hex(digest: &str) -> Result<&str, String> {
    let Some(hex) = digest.strip_prefix("sha256:") else {
        return Err(format!(
            "unsupported digest {digest:?}: only sha256:HEX digests are supported"
        ));
    };
    let valid = hex.len() == SHA256_HEX_LEN
        && hex
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
    if !valid {
        return Err(format!(
            "invalid digest {digest:?}: expected sha256: and 64 lowercase hex digits"
        ));
    }
    Ok(hex)
}

/// A reader that hashes and counts every byte read through it.
pub struct HashingReader<R> {
    inner: R,
    hash: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hash: Sha256::new(),
            count: 0,
        }
    }

    /// Reads the rest of the stream, so the digest covers all of it, and
    /// returns the digest and the byte count.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((format(self.hash), self.count))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.hash.update(&buf[..read]);
        self.count += read as u64;
        Ok(read)
    }
}

/// A writer that hashes and counts every byte written through it.
pub struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hash: Sha256::new(),
            count: 0,
        }
    }

    /// Returns the inner writer, the digest and the byte count.
    pub fn finish(self) -> (W, String, u64) {
        (self.inner, format(self.hash), self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hash.update(&buf[..written]);
        self.count += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_empty_input() {
        assert_eq!(
            of_bytes(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn hex_checks() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert_eq!(sha256_hex(&good), Ok("a".repeat(64).as_str()));
        let bad = [
            format!("sha512:{}", "a".repeat(64)),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            "sha256:../../etc/passwd".to_string(),
            "sha256:".to_string(),
        ];
        for digest in bad {
            assert!(sha256_hex(&digest).is_err(), "{digest} was accepted");
        }
    }

    #[test]
    fn hashing_reader_counts_all() {
        let reader = HashingReader::new(&b"abc"[..]);
        let (digest, count) = reader.finish().unwrap();
        assert_eq!(count, 3);
        assert_eq!(digest, of_bytes(b"abc"));
    }
}
