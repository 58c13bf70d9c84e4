//! A client's promise file, `<log>.view`: the highest view number it promised and the
//! servers of that view, and the rest of [`Promised`] (the process it promised to, and what
//! it recorded of two memberships). A promise must outlive an OS crash: a client that
//! forgot one could promise the same number again, and two promises of one number can
//! elect two primaries.
//!
//! The file is two slots, each at the start of a [`BLOCK_LEN`] block of its own, each one
//! line of text of [`SLOT_LEN`] bytes padded with spaces:
//! `<view> <server>... [node=<hex>] [followed=<record>] [accepted=<record>] gen=<n>
//! sum=<checksum>`, a record being `<view>:<members>:<digest hex>:<1 if a member, else
//! 0>:m` (`:m`: mixed name hashes; older records lack it)
//! (the rest of each block is spaces). The newest slot has the highest view, then the
//! highest `gen`. A new write overwrites, in place, the slot that does not hold the newest
//! one, then `fdatasync`. The file's size and blocks never change,
//! so making a promise durable writes one block and needs no journal commit, no rename and
//! no fsync of the folder. A write torn by a crash fails its checksum; the other slot still
//! holds the previous promise, the newest one the client may have acted on (its `Accept`
//! leaves only once the write is durable). A disk writes a sector at best atomically, and
//! a torn write may garble all of one: with both slots in one sector, one torn write could
//! destroy both, so each has a block (a page, eight sectors) of its own.
//!
//! A missing file, or one of an older layout (one line, `<view> <server>...`; or the two
//! slots, 256 bytes each, in 512 bytes), is written whole beside its name, made durable
//! and renamed over it, the first time the client promises.

use crate::client::Promised;
use crate::proto::{Fingerprint, MemberRecord, NodeId, View};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Room for the view number, two IPv6 addresses with scope and port (about 120 bytes),
/// the node id, two membership records, the generation and the checksum (about 210).
pub const SLOT_LEN: usize = 384;
/// Each slot starts a block of this size: a page, and eight of the largest common sector.
pub const BLOCK_LEN: usize = 4096;
const FILE_LEN: usize = 2 * BLOCK_LEN;
/// A slot in the layout before the blocks, whose lines held no membership records.
const PACKED_SLOT_LEN: usize = 256;
/// The layout before the blocks: the two slots side by side in one sector. (Until
/// session 11 it was read with today's 384-byte slots, so every such file was refused as
/// "not a promise": found in review.)
const PACKED_FILE_LEN: usize = 2 * PACKED_SLOT_LEN;

const _: () = assert!(SLOT_LEN <= BLOCK_LEN);

/// Where slot `k` starts in the file.
fn slot_offset(k: usize) -> u64 {
    (k * BLOCK_LEN) as u64
}

/// Why a file with no intact promise is refused, and what deleting it would risk.
const BOTH_SLOTS_DAMAGED: &str = "no intact promise in either slot. Deleting the file \
would let this client promise a view number twice, which can let two servers act as \
primary at once: delete it only after every server of the cluster was stopped (then start \
a fresh primary, a cold restart)";

/// Where a client keeps its promise: beside its log, as `<log>.view`.
pub fn promise_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".view");
    PathBuf::from(name)
}

#[derive(Debug)]
pub struct PromiseFile {
    path: PathBuf,
    /// The slot holding the newest durable promise; `None`: neither slot holds one.
    /// The next promise goes to the other slot.
    newest: Option<usize>,
    /// The file is missing or has the old one-line layout: the next write creates it.
    create: bool,
    /// The generation of the newest slot: the next write gets one more.
    generation: u64,
    /// The last state staged this turn, not yet durable.
    due: Option<Promised>,
}

impl PromiseFile {
    /// Reads the promise a client made before it stopped (0 if none).
    pub fn open(log: &Path) -> Result<(PromiseFile, Promised), String> {
        let path = promise_path(log);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok((PromiseFile::fresh(path), Promised::default()))
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        PromiseFile::from_bytes(path, &bytes)
    }

    /// What a promise file's bytes say, as `open` reads them (for the fuzzer: any bytes
    /// give a promise or an error, never a panic).
    pub fn parse(bytes: &[u8]) -> Result<Promised, String> {
        PromiseFile::from_bytes(PathBuf::from("<bytes>"), bytes).map(|(_, p)| p)
    }

    fn fresh(path: PathBuf) -> PromiseFile {
        PromiseFile {
            path,
            newest: None,
            create: true,
            generation: 0,
            due: None,
        }
    }

    fn from_bytes(path: PathBuf, bytes: &[u8]) -> Result<(PromiseFile, Promised), String> {
        let mut file = PromiseFile::fresh(path);
        let damaged = |what: &str| format!("{}: {what}", file.path.display());
        let slots = match bytes.len() {
            FILE_LEN => {
                file.create = false;
                let at = |k: usize| &bytes[k * BLOCK_LEN..k * BLOCK_LEN + SLOT_LEN];
                [read_slot(at(0)), read_slot(at(1))]
            }
            // Rewritten whole, in the new layout, at the next promise.
            PACKED_FILE_LEN => [
                read_slot(&bytes[..PACKED_SLOT_LEN]),
                read_slot(&bytes[PACKED_SLOT_LEN..]),
            ],
            _ => {
                let text = std::str::from_utf8(bytes).map_err(|_| damaged("not text"))?;
                let (promised, _) = parse_line(text).ok_or_else(|| damaged("not a promise"))?;
                return Ok((file, promised));
            }
        };
        let newest = (0..2)
            .filter_map(|k| match &slots[k] {
                Slot::Promise(p, generation) => Some((k, p, *generation)),
                _ => None,
            })
            .max_by_key(|(_, p, generation)| (p.view, *generation));
        match newest {
            Some((k, p, generation)) => {
                let promised = p.clone();
                file.generation = generation;
                file.newest = (!file.create).then_some(k);
                Ok((file, promised))
            }
            None if slots.iter().all(|s| matches!(s, Slot::Blank)) => {
                Ok((file, Promised::default()))
            }
            // The first promise is written whole (renamed into place) and a slot is
            // overwritten only while the other holds a promise: no crash leaves a file
            // without an intact one. Reading it as "nothing promised" could promise a
            // number twice.
            None => Err(damaged(BOTH_SLOTS_DAMAGED)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Notes the client's newest state, to be made durable by the next [`write_due`].
    pub fn stage(&mut self, promised: Promised) {
        if self.due.as_ref().is_none_or(|d| d.view <= promised.view) {
            self.due = Some(promised);
        }
    }
}

enum Slot {
    Blank,
    /// With its generation.
    Promise(Promised, u64),
    /// Fails its checksum or does not parse: a write torn by a crash.
    Torn,
}

fn read_slot(bytes: &[u8]) -> Slot {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Slot::Torn;
    };
    let text = text.trim_end();
    if text.is_empty() {
        return Slot::Blank;
    }
    let Some((line, sum)) = text.rsplit_once(" sum=") else {
        return Slot::Torn;
    };
    if u64::from_str_radix(sum, 16) != Ok(checksum(line.as_bytes())) {
        return Slot::Torn;
    }
    parse_line(line).map_or(Slot::Torn, |(p, generation)| Slot::Promise(p, generation))
}

/// `<view> <server>... [node=..] [followed=..] [accepted=..] [gen=..]`, and the generation
/// (0 in the older layouts, which have only the view and the servers).
fn parse_line(line: &str) -> Option<(Promised, u64)> {
    let mut words = line.split_whitespace();
    let mut promised = Promised {
        view: View(words.next()?.parse().ok()?),
        ..Promised::default()
    };
    let mut generation = 0;
    for word in words {
        match word.split_once('=') {
            None => promised.servers.push(word.parse().ok()?),
            Some(("node", hex)) => {
                promised.proposer = Some(NodeId(u64::from_str_radix(hex, 16).ok()?))
            }
            Some(("followed", record)) => promised.followed = Some(parse_record(record)?),
            Some(("accepted", record)) => promised.accepted = Some(parse_record(record)?),
            Some(("gen", n)) => generation = n.parse().ok()?,
            Some(_) => return None,
        }
    }
    Some((promised, generation))
}

/// `<view>:<members>:<digest hex>:<0|1>[:m]`, `:m` when the digest sums mixed name hashes
/// (`Fingerprint::mixed`; records written before session 11 lack it).
fn parse_record(text: &str) -> Option<MemberRecord> {
    let mut parts = text.split(':');
    let view = View(parts.next()?.parse().ok()?);
    let count = parts.next()?.parse().ok()?;
    let digest = u64::from_str_radix(parts.next()?, 16).ok()?;
    let member = match parts.next()? {
        "1" => true,
        "0" => false,
        _ => return None,
    };
    let mixed = match parts.next() {
        None => false,
        Some("m") => true,
        Some(_) => return None,
    };
    parts.next().is_none().then_some(MemberRecord {
        view,
        members: Fingerprint {
            count,
            digest,
            mixed,
        },
        member,
    })
}

fn record_text(r: &MemberRecord) -> String {
    let member = u8::from(r.member);
    let mixed = if r.members.mixed { ":m" } else { "" };
    format!(
        "{}:{}:{:x}:{member}{mixed}",
        r.view, r.members.count, r.members.digest
    )
}

/// FNV-1a: enough to tell a torn write from a whole one (nobody is malicious).
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn slot_image(p: &Promised, generation: u64) -> io::Result<Vec<u8>> {
    let mut line = p.view.0.to_string();
    for addr in &p.servers {
        line.push_str(&format!(" {addr}"));
    }
    if let Some(node) = p.proposer {
        line.push_str(&format!(" node={:x}", node.0));
    }
    if let Some(r) = &p.followed {
        line.push_str(&format!(" followed={}", record_text(r)));
    }
    if let Some(r) = &p.accepted {
        line.push_str(&format!(" accepted={}", record_text(r)));
    }
    line.push_str(&format!(" gen={generation}"));
    let sum = checksum(line.as_bytes());
    line.push_str(&format!(" sum={sum:016x}"));
    if line.len() >= SLOT_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a promise longer than its slot",
        ));
    }
    let mut image = line.into_bytes();
    image.resize(SLOT_LEN - 1, b' ');
    image.push(b'\n');
    Ok(image)
}

/// Makes every staged promise durable, before anything that depends on it (the `Accept`s)
/// is written to a socket. A promise stays staged until it is durable. Errors name the
/// file; the caller must then stop (the host does: its `Accept`s are never sent).
///
/// One file (`pbvote client`): `pwrite`, then `fdatasync`. Several (the bench hosts
/// hundreds of clients on one disk): every `pwrite`, then one `syncfs`. Each `fdatasync`
/// ends with a flush of the disk's cache, so a hundred of them in a row cost a hundred
/// flushes (measured: 100 clients, 35 ms; one `syncfs`, 0.5 ms plus writing back what
/// else is dirty on the file system). `syncfs` reports the write-back errors that happened
/// since its descriptor was opened, so the folders are opened before the writes; it
/// reports none before Linux 5.8, where only the lone client's `fdatasync` is checked.
pub fn write_due<'a>(
    files: impl Iterator<Item = &'a mut PromiseFile>,
) -> Result<(), (PathBuf, io::Error)> {
    let due: Vec<(&mut PromiseFile, Promised)> = files
        .filter_map(|f| {
            let promised = f.due.clone()?;
            Some((f, promised))
        })
        .collect();
    let (created, in_place): (Vec<_>, Vec<_>) = due.into_iter().partition(|(f, _)| f.create);
    write_in_place(in_place)?;
    create_files(created)
}

fn write_in_place(files: Vec<(&mut PromiseFile, Promised)>) -> Result<(), (PathBuf, io::Error)> {
    let folders = match files.len() {
        0 => return Ok(()),
        1 => Vec::new(),
        _ => open_folders(files.iter().map(|(f, _)| f.path.as_path()))?,
    };
    let mut written = Vec::with_capacity(files.len());
    for (file, promised) in files {
        let fail = |e: io::Error| (file.path.clone(), e);
        let image = slot_image(&promised, file.generation + 1).map_err(fail)?;
        let slot = file.newest.map_or(0, |k| 1 - k);
        let handle = OpenOptions::new()
            .write(true)
            .open(&file.path)
            .map_err(fail)?;
        handle
            .write_all_at(&image, slot_offset(slot))
            .map_err(fail)?;
        written.push((file, handle, slot));
    }
    if let [(file, handle, _)] = &written[..] {
        handle.sync_data().map_err(|e| (file.path.clone(), e))?;
    }
    for (dir, handle) in &folders {
        sync_file_system(handle).map_err(|e| (dir.clone(), e))?;
    }
    for (file, _, slot) in written {
        file.newest = Some(slot);
        file.generation += 1;
        file.due = None;
    }
    Ok(())
}

/// Writes each file whole (the promise in the first slot) beside its name, makes it
/// durable, renames it over the old one and makes the rename durable. With several: one
/// `syncfs` for all the files and one for all the renames, not two fsyncs each.
fn create_files(files: Vec<(&mut PromiseFile, Promised)>) -> Result<(), (PathBuf, io::Error)> {
    if files.is_empty() {
        return Ok(());
    }
    let tmp_of = |path: &Path| {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        PathBuf::from(tmp)
    };
    let batch = files.len() > 1;
    let folders = open_folders(files.iter().map(|(f, _)| f.path.as_path()))?;
    for (file, promised) in &files {
        let fail = |e: io::Error| (file.path.clone(), e);
        let mut whole = slot_image(promised, file.generation + 1).map_err(fail)?;
        whole.resize(FILE_LEN - 1, b' ');
        whole[BLOCK_LEN - 1] = b'\n';
        whole.push(b'\n');
        let mut tmp = File::create(tmp_of(&file.path)).map_err(fail)?;
        tmp.write_all(&whole).map_err(fail)?;
        if !batch {
            tmp.sync_all().map_err(fail)?;
        }
    }
    let sync = |how: fn(&File) -> io::Result<()>| -> Result<(), (PathBuf, io::Error)> {
        for (dir, handle) in &folders {
            how(handle).map_err(|e| (dir.clone(), e))?;
        }
        Ok(())
    };
    if batch {
        sync(sync_file_system)?;
    }
    for (file, _) in &files {
        std::fs::rename(tmp_of(&file.path), &file.path).map_err(|e| (file.path.clone(), e))?;
    }
    sync(if batch {
        sync_file_system
    } else {
        File::sync_all
    })?;
    for (file, _) in files {
        file.create = false;
        file.newest = Some(0);
        file.generation += 1;
        file.due = None;
    }
    Ok(())
}

/// The folders the files are in, each opened once. Every promise file of one host lives on
/// one file system in practice; where the folders differ, each is synced.
fn open_folders<'p>(
    files: impl Iterator<Item = &'p Path>,
) -> Result<Vec<(PathBuf, File)>, (PathBuf, io::Error)> {
    let mut dirs: Vec<&Path> = files.map(folder_of).collect();
    dirs.sort_unstable();
    dirs.dedup();
    dirs.into_iter()
        .map(|dir| {
            File::open(dir)
                .map(|handle| (dir.to_path_buf(), handle))
                .map_err(|e| (dir.to_path_buf(), e))
        })
        .collect()
}

/// The folder a file is in (a bare name's parent is "": the current folder).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn sync_file_system(file: &File) -> io::Result<()> {
    // SAFETY: syncfs(2) on a descriptor we own for the duration of the call.
    if unsafe { libc::syncfs(file.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn promised(view: u64, servers: Vec<SocketAddr>) -> Promised {
        Promised {
            view: View(view),
            servers,
            ..Promised::default()
        }
    }

    struct Fixture {
        dir: tempfile::TempDir,
        p: SocketAddr,
        b: SocketAddr,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                dir: tempfile::tempdir().expect("tempdir"),
                p: "127.0.0.1:7000".parse().expect("addr"),
                b: "[::1]:7001".parse().expect("addr"),
            }
        }
        fn log(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
        fn view(&self, n: u64, with_backup: bool) -> Promised {
            let backup = with_backup.then_some(self.b);
            promised(n, std::iter::once(self.p).chain(backup).collect())
        }
        fn open(&self, name: &str) -> (PromiseFile, Promised) {
            PromiseFile::open(&self.log(name)).expect("open")
        }
        fn read(&self, name: &str) -> Result<Promised, String> {
            PromiseFile::open(&self.log(name)).map(|(_, p)| p)
        }
    }

    #[test]
    fn promises_are_written_alone_and_in_a_batch() {
        let f = Fixture::new();
        let (mut a, none) = f.open("a.log");
        assert_eq!(none, promised(0, vec![]));
        // Alone: created whole, then in place.
        a.stage(f.view(3, false));
        write_due(std::iter::once(&mut a)).expect("create");
        assert_eq!(f.read("a.log"), Ok(promised(3, vec![f.p])));
        a.stage(f.view(4, false));
        a.stage(f.view(2, false));
        assert!(a.due.is_some());
        write_due(std::iter::once(&mut a)).expect("in place");
        assert!(a.due.is_none());
        assert_eq!(f.read("a.log"), Ok(promised(4, vec![f.p])));
        // A batch: one in place, one created.
        let (mut b, _) = f.open("b.log");
        a.stage(f.view(7, true));
        b.stage(f.view(7, true));
        write_due([&mut a, &mut b].into_iter()).expect("batch");
        assert_eq!(f.read("a.log"), Ok(promised(7, vec![f.p, f.b])));
        assert_eq!(f.read("b.log"), Ok(promised(7, vec![f.p, f.b])));
        let names: Vec<_> = std::fs::read_dir(f.dir.path())
            .expect("read dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
        let text = std::fs::read_to_string(a.path()).expect("read");
        assert_eq!(text.len(), FILE_LEN);
    }

    /// A crash while a slot is written leaves the promise before it; the slots take turns,
    /// so the newest durable promise is never the one being overwritten.
    #[test]
    fn a_torn_write_leaves_the_previous_promise() {
        let f = Fixture::new();
        let (mut a, _) = f.open("a.log");
        for n in [5, 6, 7] {
            a.stage(f.view(n, false));
            write_due(std::iter::once(&mut a)).expect("write");
        }
        let bytes = std::fs::read(a.path()).expect("read");
        let newest = (0..2)
            .find(|&k| bytes[slot_offset(k) as usize..].starts_with(b"7 "))
            .expect("7 in a slot");
        assert!(bytes[slot_offset(1 - newest) as usize..].starts_with(b"6 "));
        // Tear the newest: half of it is the old bytes.
        let file = OpenOptions::new().write(true).open(a.path()).expect("open");
        file.write_all_at(b"5", slot_offset(newest)).expect("tear");
        assert_eq!(f.read("a.log"), Ok(promised(6, vec![f.p])));
        // The next promise goes where the torn one was, not over 6.
        let (mut a, _) = f.open("a.log");
        a.stage(f.view(8, false));
        write_due(std::iter::once(&mut a)).expect("write");
        assert_eq!(f.read("a.log"), Ok(promised(8, vec![f.p])));
        let bytes = std::fs::read(a.path()).expect("read");
        assert!(bytes[slot_offset(1 - newest) as usize..].starts_with(b"6 "));
        // Both slots damaged, or one damaged and one blank (no crash leaves either):
        // refused, never read as "nothing promised".
        let (mut fresh, _) = f.open("b.log");
        fresh.stage(f.view(1, false));
        write_due(std::iter::once(&mut fresh)).expect("create");
        let other = OpenOptions::new()
            .write(true)
            .open(fresh.path())
            .expect("open");
        other.write_all_at(b"x", 0).expect("damage");
        assert!(f.read("b.log").is_err());
        file.write_all_at(b"x", 0).expect("damage");
        file.write_all_at(b"x", slot_offset(1)).expect("damage");
        assert!(f.read("a.log").is_err());
    }

    /// A promise that could not be made durable stays staged (and the host stops: its
    /// `Accept` is never sent).
    #[test]
    fn a_failed_write_keeps_the_promise_staged() {
        let f = Fixture::new();
        let (mut a, _) = f.open("a.log");
        a.stage(f.view(1, false));
        write_due(std::iter::once(&mut a)).expect("create");
        std::fs::remove_file(a.path()).expect("remove");
        a.stage(f.view(2, false));
        let (path, _) = write_due(std::iter::once(&mut a)).expect_err("no file to write");
        assert_eq!(path, a.path());
        assert!(a.due.is_some());
    }

    #[test]
    fn a_file_from_before_the_slots_is_read_and_replaced() {
        let f = Fixture::new();
        std::fs::write(promise_path(&f.log("c.log")), "5\n").expect("write");
        assert_eq!(f.read("c.log"), Ok(promised(5, vec![])));
        std::fs::write(promise_path(&f.log("d.log")), "5 127.0.0.1:7000\n").expect("write");
        let (mut d, was) = f.open("d.log");
        assert_eq!(was, promised(5, vec![f.p]));
        d.stage(f.view(6, true));
        write_due(std::iter::once(&mut d)).expect("write");
        assert_eq!(f.read("d.log"), Ok(promised(6, vec![f.p, f.b])));
        std::fs::write(promise_path(&f.log("e.log")), "5 nowhere\n").expect("write");
        assert!(f.read("e.log").is_err());
        // The two slots packed in one sector, as that layout wrote them (two lines of 256
        // bytes, the second the promise before): read, then rewritten whole in blocks.
        let slot = |view: u64, generation: u64| {
            let image = slot_image(&f.view(view, false), generation).expect("image");
            let mut line = String::from_utf8(image)
                .expect("text")
                .trim_end()
                .to_string();
            line.push_str(&" ".repeat(PACKED_SLOT_LEN - 1 - line.len()));
            line.push('\n');
            line
        };
        let packed = slot(9, 0) + &slot(8, 0);
        assert_eq!(packed.len(), 512);
        std::fs::write(promise_path(&f.log("g.log")), &packed).expect("write");
        let (mut g, was) = f.open("g.log");
        assert_eq!(was, promised(9, vec![f.p]));
        g.stage(f.view(10, false));
        write_due(std::iter::once(&mut g)).expect("write");
        assert_eq!(f.read("g.log"), Ok(promised(10, vec![f.p])));
        assert_eq!(std::fs::read(g.path()).expect("read").len(), FILE_LEN);
    }

    /// `--log c.log` names a file in the current folder: its rename must be made durable
    /// there, not skipped because the parent path is empty.
    #[test]
    fn a_bare_file_name_lives_in_the_current_folder() {
        assert_eq!(folder_of(Path::new("c.log.view")), Path::new("."));
        assert_eq!(folder_of(Path::new("logs/c.log.view")), Path::new("logs"));
        assert_eq!(folder_of(Path::new("/c.log.view")), Path::new("/"));
    }

    /// A disk writes a 512-byte sector (or a 4 KiB page) as a unit at best: a crash
    /// mid-write may garble all of it. Each slot has a block of its own, so a torn write
    /// of one can never damage the other.
    #[test]
    fn a_garbled_sector_damages_one_slot_at_most() {
        let f = Fixture::new();
        let (mut a, _) = f.open("a.log");
        for n in [5, 6] {
            a.stage(f.view(n, false));
            write_due(std::iter::once(&mut a)).expect("write");
        }
        let file = OpenOptions::new().write(true).open(a.path()).expect("open");
        file.write_all_at(&[b'#'; 512], 0).expect("garble sector 0");
        assert_eq!(f.read("a.log"), Ok(promised(6, vec![f.p])));
        // Both damaged: refused, saying what deleting the file would risk.
        file.write_all_at(&[b'#'; 512], slot_offset(1))
            .expect("garble slot 1");
        let refused = f.read("a.log").expect_err("no intact slot");
        assert!(refused.contains("promise a view number twice"), "{refused}");
    }

    #[test]
    fn the_longest_promise_fits_its_slot() {
        let wide: SocketAddr = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535"
            .parse()
            .expect("addr");
        let record = MemberRecord {
            view: View(u64::MAX),
            members: Fingerprint {
                count: u32::MAX,
                digest: u64::MAX,
                mixed: true,
            },
            member: true,
        };
        let widest = Promised {
            view: View(u64::MAX),
            servers: vec![wide, wide],
            proposer: Some(NodeId(u64::MAX)),
            followed: Some(record),
            accepted: Some(record),
        };
        assert_eq!(slot_image(&widest, u64::MAX).expect("fits").len(), SLOT_LEN);
    }

    /// The membership records and the proposer come back as written; a write that keeps
    /// the view number (a record changed) is still the newest, by its generation.
    #[test]
    fn what_is_kept_with_the_promise_comes_back() {
        let f = Fixture::new();
        let (mut a, _) = f.open("a.log");
        let mut p = f.view(4, true);
        p.proposer = Some(NodeId(0xabc));
        p.accepted = Some(MemberRecord {
            view: View(4),
            members: Fingerprint {
                count: 3,
                digest: 0xfeed,
                // As a record written before session 11: it reads back as it was.
                mixed: false,
            },
            member: true,
        });
        a.stage(p.clone());
        write_due(std::iter::once(&mut a)).expect("write");
        assert_eq!(f.read("a.log"), Ok(p.clone()));
        for members in [2, 3] {
            p.followed = Some(MemberRecord {
                view: View(4),
                members: Fingerprint {
                    count: members,
                    digest: 7,
                    mixed: true,
                },
                member: false,
            });
            a.stage(p.clone());
            write_due(std::iter::once(&mut a)).expect("write");
            assert_eq!(f.read("a.log"), Ok(p.clone()));
        }
    }
}
