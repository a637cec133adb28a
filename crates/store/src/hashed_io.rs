//! Files that end in a BLAKE3 checksum of everything before it: written and read through a
//! buffer that is hashed whole.
//!
//! Why a module: snapshot files and the map index are written and read a few bytes at a time
//! (a length, a key, a value). Hashing each piece as it passes costs BLAKE3 its SIMD paths,
//! which need kilobytes at once: on this project's benchmark machine, 115 MB in record-sized
//! pieces took ~370 ms against ~30 ms in 1 MiB pieces, and a snapshot build at a million events
//! hashes its previous file and its new one. Here the bytes are gathered first and hashed in
//! the chunks they are written or read in.

use std::io::{self, Read, Write};

/// How many bytes are gathered before they are hashed and written, or read ahead.
const CHUNK: usize = 1 << 20;

/// A writer that hashes everything written through it; [`HashedWriter::finish`] returns the
/// inner writer and the hash, for the caller to append the checksum unhashed.
pub struct HashedWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
    hasher: blake3::Hasher,
}

impl<W: Write> HashedWriter<W> {
    /// Wraps `out`; no other buffering is needed around it.
    pub fn new(out: W) -> Self {
        HashedWriter {
            out,
            buf: Vec::with_capacity(CHUNK),
            hasher: blake3::Hasher::new(),
        }
    }

    fn drain(&mut self) -> io::Result<()> {
        self.hasher.update(&self.buf);
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    /// Writes what is gathered; returns the inner writer (not flushed) and the hash of every
    /// byte written through this one.
    pub fn finish(mut self) -> io::Result<(W, blake3::Hash)> {
        self.drain()?;
        let hash = self.hasher.finalize();
        Ok((self.out, hash))
    }
}

impl<W: Write> Write for HashedWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.buf.len() + bytes.len() > CHUNK {
            self.drain()?;
        }
        if bytes.len() >= CHUNK {
            // Large enough to hash well on its own.
            self.hasher.update(bytes);
            self.out.write_all(bytes)?;
        } else {
            self.buf.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }

    /// Writes what is gathered and flushes the inner writer.
    fn flush(&mut self) -> io::Result<()> {
        self.drain()?;
        self.out.flush()
    }
}

/// A reader that hashes the bytes its caller consumes, in the chunks it reads ahead.
///
/// [`HashedReader::read_exact`] consumes hashed bytes; [`HashedReader::hash`] is the hash of
/// every byte consumed so far; [`HashedReader::read_trailer`] then consumes bytes that are not
/// hashed (the checksum itself), and [`HashedReader::at_end`] tells whether anything follows.
pub struct HashedReader<R: Read> {
    input: R,
    /// Read-ahead space, allocated (and zeroed) once; only `buf[..end]` holds input.
    buf: Vec<u8>,
    /// End of the input held in `buf`.
    end: usize,
    /// Next unread byte in `buf`.
    pos: usize,
    /// First byte of `buf` not yet given to the hasher (always <= `pos`).
    hashed: usize,
    hasher: blake3::Hasher,
}

impl<R: Read> HashedReader<R> {
    /// Wraps `input`; no other buffering is needed around it.
    pub fn new(input: R) -> Self {
        HashedReader {
            input,
            buf: Vec::new(),
            end: 0,
            pos: 0,
            hashed: 0,
            hasher: blake3::Hasher::new(),
        }
    }

    /// Hashes what was consumed and not hashed yet.
    fn hash_consumed(&mut self) {
        self.hasher.update(&self.buf[self.hashed..self.pos]);
        self.hashed = self.pos;
    }

    /// Makes `n` unread bytes available in `buf` (fewer only at the end of the input),
    /// reading ahead up to a chunk.
    fn fill(&mut self, n: usize) -> io::Result<()> {
        if self.end - self.pos >= n {
            return Ok(());
        }
        // Consumed bytes leave the buffer: hash them first.
        self.hash_consumed();
        self.buf.copy_within(self.pos..self.end, 0);
        self.end -= self.pos;
        self.pos = 0;
        self.hashed = 0;
        let room = n.max(CHUNK);
        if self.buf.len() < room {
            self.buf.resize(room, 0);
        }
        while self.end < n {
            match self.input.read(&mut self.buf[self.end..]) {
                // The end of the input: fewer than `n` bytes are available.
                Ok(0) => break,
                Ok(read) => self.end += read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Consumes exactly `out.len()` hashed bytes; `UnexpectedEof` if the input ends first.
    pub fn read_exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        self.fill(out.len())?;
        let end = self.pos + out.len();
        if end > self.end {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        out.copy_from_slice(&self.buf[self.pos..end]);
        self.pos = end;
        Ok(())
    }

    /// The hash of every byte consumed so far.
    pub fn hash(&mut self) -> blake3::Hash {
        self.hash_consumed();
        self.hasher.finalize()
    }

    /// Consumes exactly `out.len()` bytes without hashing them.
    pub fn read_trailer(&mut self, out: &mut [u8]) -> io::Result<()> {
        self.hash_consumed();
        self.read_exact(out)?;
        self.hashed = self.pos;
        Ok(())
    }

    /// True when nothing follows what was consumed.
    pub fn at_end(&mut self) -> io::Result<bool> {
        self.fill(1)?;
        Ok(self.pos == self.end)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    /// A reader that hands out at most `step` bytes per call, like a socket or a pipe.
    struct Trickle<'a> {
        bytes: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = out.len().min(self.step).min(self.bytes.len());
            out[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    proptest! {
        /// Whatever the pieces, the writer's hash is the hash of the bytes, the bytes arrive
        /// in order, and a reader given them in any trickle gets the same pieces, the same
        /// hash, an unhashed trailer and the end.
        #[test]
        fn pieces_hash_as_a_whole(
            pieces in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..3000), 0..40),
            big in prop::option::of(1usize..3),
            step in 1usize..5000,
        ) {
            let mut pieces = pieces;
            if let Some(k) = big {
                // Pieces of a chunk or more take the direct path.
                pieces.push(vec![k as u8; CHUNK * k + 17]);
            }
            let mut writer = HashedWriter::new(Vec::new());
            for p in &pieces {
                writer.write_all(p).unwrap();
            }
            let (mut file, hash) = writer.finish().unwrap();
            let whole: Vec<u8> = pieces.concat();
            prop_assert_eq!(&file, &whole);
            prop_assert_eq!(hash, blake3::hash(&whole));
            file.extend_from_slice(hash.as_bytes());

            let mut reader = HashedReader::new(Trickle { bytes: &file, step });
            for p in &pieces {
                let mut got = vec![0u8; p.len()];
                reader.read_exact(&mut got).unwrap();
                prop_assert_eq!(&got, p);
            }
            prop_assert_eq!(reader.hash(), hash);
            let mut trailer = [0u8; 32];
            reader.read_trailer(&mut trailer).unwrap();
            prop_assert_eq!(&trailer, hash.as_bytes());
            prop_assert!(reader.at_end().unwrap());
        }
    }

    #[test]
    fn a_short_input_is_unexpected_eof_and_trailing_bytes_are_seen() {
        let mut reader = HashedReader::new(&b"abc"[..]);
        let mut four = [0u8; 4];
        let e = reader.read_exact(&mut four).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);

        let mut reader = HashedReader::new(&b"abcd"[..]);
        let mut two = [0u8; 2];
        reader.read_exact(&mut two).unwrap();
        assert_eq!(reader.hash(), blake3::hash(b"ab"));
        assert!(!reader.at_end().unwrap());
        reader.read_trailer(&mut two).unwrap();
        assert_eq!(&two, b"cd");
        // The trailer is not part of the hash.
        assert_eq!(reader.hash(), blake3::hash(b"ab"));
        assert!(reader.at_end().unwrap());
    }
}
