//! A writer for the `newc` cpio format, the one the kernel unpacks as an initramfs.
//!
//! Only what an initramfs needs: directories, regular files, symlinks and device nodes, all
//! owned by root with mtime 0. The archive is uncompressed (every kernel accepts that).

use std::io::{self, Write};

/// `S_IF*` file type bits.
const DIR: u32 = 0o040_000;
const REGULAR: u32 = 0o100_000;
const SYMLINK: u32 = 0o120_000;
const CHAR_DEV: u32 = 0o020_000;

/// Writes a `newc` archive entry by entry; [`finish`](Self::finish) adds the trailer.
pub(super) struct Writer<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
}

impl<W: Write> Writer<W> {
    pub(super) fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            next_ino: 1,
        }
    }

    /// A directory (`path` without a leading `/`, e.g. `bin`).
    pub(super) fn dir(&mut self, path: &str) -> io::Result<()> {
        self.entry(path, DIR | 0o755, 2, (0, 0), &[])
    }

    /// A regular file with `mode`'s permission bits.
    pub(super) fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, REGULAR | (mode & 0o7777), 1, (0, 0), data)
    }

    /// A symlink at `path` pointing at `target`.
    pub(super) fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, SYMLINK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// A character device node (e.g. `dev/console`, 5:1).
    pub(super) fn char_dev(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        self.entry(path, CHAR_DEV | (mode & 0o7777), 1, (major, minor), &[])
    }

    /// Writes the trailer and returns the inner writer.
    pub(super) fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 0, 0, 1, (0, 0))?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file over 4 GiB"))?;
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(path, ino, mode, size, nlink, rdev)?;
        self.write(data)?;
        self.pad()
    }

    /// The 110-byte header, the name with its NUL, and padding to 4 bytes.
    fn header(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        filesize: u32,
        nlink: u32,
        (rdev_major, rdev_minor): (u32, u32),
    ) -> io::Result<()> {
        let name_size = name.len() + 1;
        let fields = [
            ino, mode, 0, 0, nlink, 0, filesize, 0, 0, rdev_major, rdev_minor,
        ];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for field in fields {
            header.push_str(&format!("{field:08x}"));
        }
        header.push_str(&format!("{name_size:08x}{:08x}", 0));
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = (self.written % 4) as usize;
        if rem != 0 {
            self.write(&[0; 3][..4 - rem])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, mode, rdev major, rdev minor, data) of every entry, read back.
    fn parse(mut archive: &[u8]) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
        let total = archive.len();
        let mut entries = Vec::new();
        loop {
            let at = total - archive.len();
            assert_eq!(at % 4, 0, "entry at {at} is not aligned");
            let header = std::str::from_utf8(&archive[..110]).expect("ascii header");
            assert_eq!(&header[..6], "070701");
            let field = |i: usize| {
                u32::from_str_radix(&header[6 + 8 * i..14 + 8 * i], 16).expect("hex field")
            };
            let (mode, size, major, minor, name_size) =
                (field(1), field(6), field(9), field(10), field(11));
            let name_end = 110 + name_size as usize;
            let name = std::str::from_utf8(&archive[110..name_end - 1]).expect("name");
            assert_eq!(archive[name_end - 1], 0);
            let data_at = (at + name_end).next_multiple_of(4) - at;
            let data = archive[data_at..data_at + size as usize].to_vec();
            let next = (at + data_at + size as usize).next_multiple_of(4) - at;
            archive = &archive[next..];
            if name == "TRAILER!!!" {
                assert!(archive.is_empty(), "bytes after the trailer");
                return entries;
            }
            entries.push((name.to_owned(), mode, major, minor, data));
        }
    }

    #[test]
    fn entries_read_back_as_newc() {
        let mut w = Writer::new(Vec::new());
        w.dir("bin").expect("dir");
        w.file("bin/x", 0o755, b"hello").expect("file");
        w.symlink("bin/sh", "busybox").expect("symlink");
        w.char_dev("dev/console", 0o600, 5, 1).expect("dev");
        w.file("init", 0o755, b"#!/bin/sh\n").expect("file");
        let out = w.finish().expect("finish");
        assert_eq!(out.len() % 4, 0);
        let entries = parse(&out);
        let want: Vec<(String, u32, u32, u32, Vec<u8>)> = vec![
            ("bin".into(), 0o040_755, 0, 0, vec![]),
            ("bin/x".into(), 0o100_755, 0, 0, b"hello".to_vec()),
            ("bin/sh".into(), 0o120_777, 0, 0, b"busybox".to_vec()),
            ("dev/console".into(), 0o020_600, 5, 1, vec![]),
            ("init".into(), 0o100_755, 0, 0, b"#!/bin/sh\n".to_vec()),
        ];
        assert_eq!(entries, want);
    }
}
