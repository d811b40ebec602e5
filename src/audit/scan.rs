//! Reading the edges of an audit file: its first line (to order rotated files and to age the
//! current one) and its last complete line (the chain head at open). Only reads; it must never
//! write, and never judge a line beyond finding it.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A file's first line, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FirstLine {
    /// The line's bytes without its `\n`.
    pub(crate) bytes: Vec<u8>,
    /// The line ended in `\n` (false: the file holds only part of a line).
    pub(crate) complete: bool,
}

/// The first line of whatever `reader` yields; `None` when it yields nothing. The one reader of a
/// file's first line: the writer (age), the verifier and search (file order) all go through it.
pub(crate) fn read_first_line(reader: impl Read) -> io::Result<Option<FirstLine>> {
    let mut reader = BufReader::new(reader);
    let mut bytes = Vec::new();
    if reader.read_until(b'\n', &mut bytes)? == 0 {
        return Ok(None);
    }
    let complete = bytes.last() == Some(&b'\n');
    if complete {
        bytes.pop();
    }
    Ok(Some(FirstLine { bytes, complete }))
}

/// [`read_first_line`] of the file at `path`.
pub(crate) fn read_first_line_of(path: &Path) -> io::Result<Option<FirstLine>> {
    read_first_line(File::open(path)?)
}

/// Reads a file from offset 0 with positioned reads, leaving the descriptor's offset alone
/// (the writer's descriptor must not be disturbed by a look at its first line).
pub(crate) struct ReadFromStart<'a> {
    file: &'a File,
    pos: u64,
}

impl<'a> ReadFromStart<'a> {
    pub(crate) fn new(file: &'a File) -> ReadFromStart<'a> {
        ReadFromStart { file, pos: 0 }
    }
}

impl Read for ReadFromStart<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let got = self.file.read_at(buf, self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

pub(crate) struct Tail {
    /// Length up to and including the last `\n`.
    pub(crate) complete_len: u64,
    /// The last complete line, without its `\n`.
    pub(crate) last_line: Option<Vec<u8>>,
}

/// Finds the last complete line and where the torn tail (if any) starts, reading backwards so
/// start-up cost does not grow with the file.
pub(crate) fn read_tail(file: &File, len: u64) -> io::Result<Tail> {
    let Some(last_nl) = rfind_newline(file, len)? else {
        return Ok(Tail {
            complete_len: 0,
            last_line: None,
        });
    };
    let start = rfind_newline(file, last_nl)?.map_or(0, |p| p + 1);
    let line_len = usize::try_from(last_nl - start).map_err(io::Error::other)?;
    let mut line = vec![0u8; line_len];
    file.read_exact_at(&mut line, start)?;
    Ok(Tail {
        complete_len: last_nl + 1,
        last_line: Some(line),
    })
}

/// Offset of the last `\n` strictly before `before`.
fn rfind_newline(file: &File, before: u64) -> io::Result<Option<u64>> {
    const CHUNK: u64 = 64 * 1024;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut end = before;
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let n = (end - start) as usize;
        file.read_exact_at(&mut buf[..n], start)?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            return Ok(Some(start + i as u64));
        }
        end = start;
    }
    Ok(None)
}
