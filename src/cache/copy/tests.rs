//! Copies between local cache directories: round trips, incremental copies, a damaged source,
//! an interrupted copy run again, signatures.

use std::collections::BTreeSet;
use std::io;
use std::path::Path;

use super::*;
use crate::cache::{LocalDir, ObjectWriter, Storage, StorageError};
use crate::cache::{ObjectKind, TreeId};
use crate::progress::NoProgress;
use crate::save::{self, SaveOptions};
use crate::store::layout::{Flavor, Layout};

fn save_into(root: &Path, cache: &Cache, generation: u32, key: &str) -> String {
    let layout = Layout::new(Flavor::Guix, root, None, None).unwrap();
    crate::sample::build(&layout, generation).unwrap();
    let opts = SaveOptions {
        roots: Vec::new(),
        skip_corrupt: false,
        level: 3,
        key: key.into(),
        gc_roots: false,
        verify_source: false,
        base_keys: Default::default(),
    };
    save::save(&layout, cache, &opts, &NoProgress)
        .unwrap()
        .snapshot
}

fn names(dir: &Path, sub: &str) -> BTreeSet<String> {
    match std::fs::read_dir(dir.join(sub)) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

fn verified(cache: &Cache) {
    let r = crate::verify::verify(cache, &NoProgress).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
}

fn run(from: &Cache, to: &Cache, select: &Select) -> Result<CopyReport, CacheError> {
    copy(from, to, select, false, &NoProgress)
}

#[test]
fn a_copy_reads_back_identically_and_sends_only_what_the_target_lacks() {
    let t = tempfile::tempdir().unwrap();
    let a_dir = t.path().join("a");
    let a = Cache::open_dir(&a_dir).unwrap();
    let first = save_into(&t.path().join("root"), &a, 1, "guix-1");
    let b_dir = t.path().join("b");
    let b = Cache::open_dir(&b_dir).unwrap();
    // A dry run writes nothing.
    let dry = copy(&a, &b, &Select::Newest, true, &NoProgress).unwrap();
    assert_eq!(dry.snapshots[0].status, "copy");
    assert!(names(&b_dir, "packs").is_empty() && names(&b_dir, "snapshots").is_empty());
    let r = run(&a, &b, &Select::Newest).unwrap();
    let s = &r.snapshots[0];
    assert_eq!((s.status, s.id.as_str()), ("copied", first.as_str()));
    assert_eq!(s.target_id, s.id, "a v2 snapshot keeps its id");
    assert_eq!(s.objects_present, 0);
    assert!(s.packs_written > 0 && s.bytes_written > 0);
    // Packs needed whole are copied byte for byte (same names).
    assert_eq!(s.packs_whole, s.packs_written);
    assert_eq!(names(&b_dir, "packs"), names(&a_dir, "packs"));
    let b = Cache::open_dir(&b_dir).unwrap();
    verified(&b);
    let (id, snap) = b.find_snapshot(None).unwrap();
    assert_eq!(id.hex(), first);
    assert_eq!(snap.paths, a.find_snapshot(None).unwrap().1.paths);
    // Again: the target has it.
    let again = run(&a, &b, &Select::Newest).unwrap();
    assert_eq!(again.snapshots[0].status, "present");
    // A newer generation: only its new objects travel.
    let second = save_into(&t.path().join("root"), &a, 2, "guix-2");
    let a = Cache::open_dir(&a_dir).unwrap();
    let r = run(&a, &b, &Select::Id(second[..10].into())).unwrap();
    let s = &r.snapshots[0];
    assert_eq!(s.status, "copied");
    assert!(s.objects_present > 0, "{s:?}");
    assert!(s.objects_present < s.objects, "{s:?}");
    let b = Cache::open_dir(&b_dir).unwrap();
    verified(&b);
    assert_eq!(b.snapshot_ids().unwrap().len(), 2);
    // The copied snapshot names one index, which locates every object it needs.
    let snap = b.find_snapshot(Some(&second)).unwrap().1;
    assert_eq!(snap.indexes.len(), 1);
}

#[test]
fn every_snapshot_and_its_signatures_travel_with_all() {
    let t = tempfile::tempdir().unwrap();
    let a = Cache::open_dir(&t.path().join("a")).unwrap();
    let one = save_into(&t.path().join("root"), &a, 1, "k-1");
    let two = save_into(&t.path().join("root"), &a, 2, "k-2");
    let (secret, public) = crate::trust::generate("ci-1").unwrap();
    let two_id = SnapshotId::parse(&two).unwrap();
    a.add_signature(&two_id, secret.sign_snapshot(&two_id.0))
        .unwrap();
    let b = Cache::open_dir(&t.path().join("b")).unwrap();
    let r = run(&a, &b, &Select::All).unwrap();
    let ids: Vec<&str> = r.snapshots.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, vec![one.as_str(), two.as_str()], "oldest first");
    assert_eq!(r.snapshots[1].signatures, 1);
    // The second reused what the first brought.
    assert!(r.snapshots[1].objects_present > 0);
    let mut keys = crate::trust::TrustedKeys::new();
    keys.add(public);
    assert_eq!(b.check_signature(&two_id, &keys).unwrap(), "ci-1");
    assert!(b
        .check_signature(&SnapshotId::parse(&one).unwrap(), &keys)
        .is_err());
    // By key: the restore-key prefix finds the newest.
    let c = Cache::open_dir(&t.path().join("c")).unwrap();
    let select = Select::Key {
        key: "nope".into(),
        restore_keys: vec!["k-".into()],
    };
    assert_eq!(run(&a, &c, &select).unwrap().snapshots[0].id, two);
}

/// A snapshot signed after it was copied (`save --sign-key` of an unchanged store signs the
/// snapshot it finds; `storesync` has no other way to add one later): copying it again found
/// the target holding it and skipped it, signatures included, reporting success, so the target
/// never trusted it and a restore with that key refused it. The new signature travels; a copy
/// with nothing new to carry writes nothing.
#[test]
fn a_signature_added_after_a_copy_travels_when_copied_again() {
    let t = tempfile::tempdir().unwrap();
    let a = Cache::open_dir(&t.path().join("a")).unwrap();
    let id = SnapshotId::parse(&save_into(&t.path().join("root"), &a, 1, "k")).unwrap();
    let b_dir = t.path().join("b");
    let b = Cache::open_dir(&b_dir).unwrap();
    assert_eq!(
        run(&a, &b, &Select::Newest).unwrap().snapshots[0].status,
        "copied"
    );
    let (secret, public) = crate::trust::generate("ci-1").unwrap();
    a.add_signature(&id, secret.sign_snapshot(&id.0)).unwrap();
    let r = run(&a, &b, &Select::Newest).unwrap();
    assert_eq!(r.snapshots[0].status, "present");
    assert_eq!(r.snapshots[0].signatures, 1);
    let mut keys = crate::trust::TrustedKeys::new();
    keys.add(public);
    assert_eq!(b.check_signature(&id, &keys).unwrap(), "ci-1");
    // Nothing new: the target's signature file is not written again.
    let sig = b_dir.join(crate::trust::signature_key(&id.0));
    let before = std::fs::metadata(&sig).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let r = run(&a, &b, &Select::Newest).unwrap();
    assert_eq!(r.snapshots[0].signatures, 0);
    assert_eq!(std::fs::metadata(&sig).unwrap().modified().unwrap(), before);
}

#[test]
fn a_damaged_source_object_is_refused_and_nothing_names_it() {
    let t = tempfile::tempdir().unwrap();
    let a_dir = t.path().join("a");
    let a = Cache::open_dir(&a_dir).unwrap();
    save_into(&t.path().join("root"), &a, 1, "");
    // Flip a byte in the middle of a frame of file contents (trees stay sound, so the
    // damage is met while frames are copied).
    let packs = a.packs();
    let (_, loc) = a
        .objects()
        .into_iter()
        .find(|(_, l)| l.kind == ObjectKind::Blob && l.frame_len > 64)
        .unwrap();
    let p = a_dir
        .join("packs")
        .join(format!("{}.pack", packs[loc.pack as usize].hex()));
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[(loc.frame_offset + loc.frame_len / 2) as usize] ^= 0x40;
    std::fs::write(&p, bytes).unwrap();
    let b_dir = t.path().join("b");
    let b = Cache::open_dir(&b_dir).unwrap();
    let e = run(&Cache::open_dir(&a_dir).unwrap(), &b, &Select::Newest)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cache is damaged") && e.contains("/packs/"),
        "{e}"
    );
    assert!(names(&b_dir, "snapshots").is_empty());
    assert!(names(&b_dir, "index").is_empty());
}

/// How a [`Faulty`] target fails.
enum Fault {
    /// Its index writes fail: a copy is interrupted after its packs landed.
    IndexWrites,
    /// Its disk fills up after this many bytes of a new object.
    FullAfter(u64),
}

/// A local target that fails as its [`Fault`] says.
struct Faulty(LocalDir, Fault);

/// A new object's writer that fails past its room, as a full disk does.
struct FullWriter<'a> {
    inner: Box<dyn ObjectWriter + 'a>,
    room: u64,
}

impl io::Write for FullWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.room {
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
        self.room -= buf.len() as u64;
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl ObjectWriter for FullWriter<'_> {
    fn commit(self: Box<Self>, key: &str) -> Result<(), StorageError> {
        self.inner.commit(key)
    }
}

impl Storage for Faulty {
    fn get(&self, key: &str, max: u64) -> Result<Vec<u8>, StorageError> {
        self.0.get(key, max)
    }
    fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn io::Read + Send + '_>, StorageError> {
        self.0.get_range(key, offset, len)
    }
    fn put_if_absent(&self, key: &str, data: &[u8]) -> Result<bool, StorageError> {
        if matches!(self.1, Fault::IndexWrites) && key.starts_with("index/") {
            return Err(StorageError(key.into(), io::Error::other("interrupted")));
        }
        self.0.put_if_absent(key, data)
    }
    fn put(&self, key: &str, data: &[u8]) -> Result<(), StorageError> {
        self.0.put(key, data)
    }
    fn writer(&self) -> Result<Box<dyn ObjectWriter + '_>, StorageError> {
        let inner = self.0.writer()?;
        Ok(match self.1 {
            Fault::FullAfter(room) => Box::new(FullWriter { inner, room }),
            Fault::IndexWrites => inner,
        })
    }
    fn sync(&self) -> Result<(), StorageError> {
        self.0.sync()
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.0.list(prefix)
    }
    fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        self.0.size(key)
    }
    fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.0.delete(key)
    }
    fn describe(&self, key: &str) -> String {
        self.0.describe(key)
    }
}

#[test]
fn an_interrupted_copy_run_again_sends_no_pack_that_landed() {
    use std::os::unix::fs::MetadataExt;
    let t = tempfile::tempdir().unwrap();
    let a_dir = t.path().join("a");
    let a = Cache::open_dir(&a_dir).unwrap();
    save_into(&t.path().join("root"), &a, 1, "");
    save_into(&t.path().join("root"), &a, 2, "");
    let b_dir = t.path().join("b");
    let broken = Cache::open(Box::new(Faulty(
        LocalDir::open(&b_dir).unwrap(),
        Fault::IndexWrites,
    )));
    let e = run(&a, &broken, &Select::Newest).unwrap_err().to_string();
    assert!(e.contains("interrupted"), "{e}");
    drop(broken);
    let landed = names(&b_dir, "packs");
    assert!(!landed.is_empty());
    assert!(
        names(&b_dir, "snapshots").is_empty(),
        "no snapshot without its index"
    );
    let inode = |n: &str| {
        std::fs::metadata(b_dir.join("packs").join(n))
            .unwrap()
            .ino()
    };
    let before: Vec<u64> = landed.iter().map(|n| inode(n)).collect();
    let b = Cache::open_dir(&b_dir).unwrap();
    let r = run(&a, &b, &Select::Newest).unwrap();
    let s = &r.snapshots[0];
    assert_eq!(s.status, "copied");
    assert_eq!((s.packs_written, s.bytes_written), (0, 0), "{s:?}");
    assert_eq!(s.packs_present as usize, landed.len());
    let after: Vec<u64> = landed.iter().map(|n| inode(n)).collect();
    assert_eq!(before, after, "no pack written again");
    verified(&Cache::open_dir(&b_dir).unwrap());
}

/// A source cache in `a_dir` whose snapshot has a tree of 1.6 MB (a path of 20,000 files):
/// a save gives it frames of its own. Returns the snapshot's id, the tree and its bytes.
fn source_with_a_large_tree(a_dir: &Path, root: &Path) -> (SnapshotId, TreeId, Vec<u8>) {
    use crate::cache::{BlobId, Entry, Node, Packer, SOLO_THRESHOLD};
    let a = Cache::open_dir(a_dir).unwrap();
    save_into(root, &a, 1, "");
    let (_, mut snap) = a.find_snapshot(None).unwrap();
    let (blob, loc) = a
        .objects()
        .into_iter()
        .find(|(_, l)| l.kind == ObjectKind::Blob)
        .unwrap();
    let entries: Vec<Entry> = (0..20_000)
        .map(|i| Entry {
            name: format!("file-{i:06}").into_bytes(),
            node: Node::Regular {
                executable: false,
                size: loc.len,
                blob: BlobId(blob.0),
                file_nar_hash: [0; 32],
            },
        })
        .collect();
    let (tree, bytes) = Node::Directory(entries).encode();
    assert!(bytes.len() as u64 >= SOLO_THRESHOLD, "{}", bytes.len());
    let p = Packer::new(&a, 3);
    assert!(p.claim(tree));
    p.add(ObjectKind::Tree, tree, &bytes).unwrap();
    p.finish().unwrap();
    snap.paths[0].tree = tree;
    snap.indexes = a.index_files_and_written();
    (a.write_snapshot(&snap).unwrap(), tree, bytes)
}

#[test]
fn a_snapshot_with_a_tree_in_frames_of_its_own_is_copied() {
    // The copy checks such a tree streamed, under the tree contexts (it refused every such
    // tree).
    use crate::cache::Node;
    let t = tempfile::tempdir().unwrap();
    let a_dir = t.path().join("a");
    let (id, tree, bytes) = source_with_a_large_tree(&a_dir, &t.path().join("root"));
    let a = Cache::open_dir(&a_dir).unwrap();
    let b_dir = t.path().join("b");
    let b = Cache::open_dir(&b_dir).unwrap();
    run(&a, &b, &Select::Id(id.hex())).unwrap();
    let b = Cache::open_dir(&b_dir).unwrap();
    assert_eq!(
        b.read_tree(&tree).unwrap(),
        Node::decode(&tree, &bytes).unwrap()
    );
}

#[test]
fn a_full_target_disk_is_said_as_such_not_as_damage_of_the_source() {
    // The large tree's frames are streamed from the source into the new pack: a write that
    // fails there reached the decoder as a read error, and was reported as a damaged source.
    let t = tempfile::tempdir().unwrap();
    let a_dir = t.path().join("a");
    let (id, ..) = source_with_a_large_tree(&a_dir, &t.path().join("root"));
    let a = Cache::open_dir(&a_dir).unwrap();
    let b_dir = t.path().join("b");
    let full = Cache::open(Box::new(Faulty(
        LocalDir::open(&b_dir).unwrap(),
        Fault::FullAfter(64 << 10),
    )));
    let e = run(&a, &full, &Select::Id(id.hex())).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, CacheError::Storage(_)), "{msg}");
    assert!(!msg.contains("damaged"), "{msg}");
    assert!(msg.contains("no storage space"), "{msg}");
    drop(full);
    assert!(names(&b_dir, "snapshots").is_empty());
}

#[test]
fn a_large_blob_in_a_shared_frame_is_refused_not_copied_unreadable() {
    // A hostile source puts a 256 KiB+ blob and a small one in one frame, each at its
    // offset: both check out as a batch, but a reader reads the large one as frames of its
    // own from their first byte. The copy must refuse it, not name it in the target.
    use crate::cache::format::{header, HEADER_LEN};
    use crate::cache::{pack_key, BlobId, PACK_MAGIC, SOLO_THRESHOLD};
    let t = tempfile::tempdir().unwrap();
    let a_dir = t.path().join("a");
    let a = Cache::open_dir(&a_dir).unwrap();
    save_into(&t.path().join("root"), &a, 1, "");
    let (snap_id, snap) = a.find_snapshot(None).unwrap();
    let objs = a.objects();
    let (large, _) = *objs
        .iter()
        .find(|(_, l)| l.kind == ObjectKind::Blob && l.len >= SOLO_THRESHOLD)
        .expect("a large blob");
    let (small, _) = *objs
        .iter()
        .find(|(_, l)| l.kind == ObjectKind::Blob && l.len < SOLO_THRESHOLD && l.len > 0)
        .unwrap();
    let content = |id: ObjectId| {
        let mut v = Vec::new();
        a.stream(&BlobId(id.0), &mut |b| {
            v.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        v
    };
    let (lb, sb) = (content(large), content(small));
    let mut data = lb.clone();
    data.extend_from_slice(&sb);
    let frame = zstd::bulk::compress(&data, 3).unwrap();
    let mut pack = header(PACK_MAGIC).to_vec();
    pack.extend_from_slice(&frame);
    let pack_id = PackId(*blake3::hash(&pack).as_bytes());
    a.storage()
        .put_if_absent(&pack_key(&pack_id), &pack)
        .unwrap();
    let mut index = IndexFile {
        packs: a.packs(),
        entries: Vec::new(),
    };
    let no = index.packs.len() as u32;
    index.packs.push(pack_id);
    for (id, loc) in objs.iter().copied() {
        let loc = if id == large || id == small {
            Location {
                kind: ObjectKind::Blob,
                pack: no,
                frame_offset: HEADER_LEN as u64,
                frame_len: frame.len() as u64,
                offset: if id == large { 0 } else { lb.len() as u64 },
                len: if id == large { lb.len() } else { sb.len() } as u64,
            }
        } else {
            loc
        };
        index.entries.push((id, loc));
    }
    let (sum, bytes) = seal_encoded(INDEX_MAGIC, FORMAT_VERSION, &index);
    let index_id = IndexId(sum);
    for n in names(&a_dir, "index") {
        std::fs::remove_file(a_dir.join("index").join(n)).unwrap();
    }
    for n in names(&a_dir, "snapshots") {
        std::fs::remove_file(a_dir.join("snapshots").join(n)).unwrap();
    }
    a.storage()
        .put_if_absent(&index_key(&index_id), &bytes)
        .unwrap();
    let mut snap = snap;
    snap.indexes = vec![index_id];
    assert_eq!(a.write_snapshot(&snap).unwrap(), snap_id);
    drop(a);
    let a = Cache::open_dir(&a_dir).unwrap();
    let b_dir = t.path().join("b");
    let b = Cache::open_dir(&b_dir).unwrap();
    let err = run(&a, &b, &Select::Newest).unwrap_err().to_string();
    assert!(
        err.contains("in a frame shared or not at its start"),
        "{err}"
    );
    let b = Cache::open_dir(&b_dir).unwrap();
    assert!(!b.contains(large), "the target names the large blob");
}

/// A source's signature by a key name the target's signature file holds replaced the target's
/// line: a source written by someone without the key (or one signed by a retired key of the
/// same name) turned a snapshot the target trusted into one whose signature does not verify,
/// refused by every restore with the key. The target's line of a name is kept; only names it
/// lacks are added.
#[test]
fn a_source_signature_never_replaces_the_targets_by_the_same_name() {
    let t = tempfile::tempdir().unwrap();
    let a = Cache::open_dir(&t.path().join("a")).unwrap();
    let id = SnapshotId::parse(&save_into(&t.path().join("root"), &a, 1, "k")).unwrap();
    let (secret, public) = crate::trust::generate("ci-1").unwrap();
    a.add_signature(&id, secret.sign_snapshot(&id.0)).unwrap();
    let b = Cache::open_dir(&t.path().join("b")).unwrap();
    assert_eq!(
        run(&a, &b, &Select::Newest).unwrap().snapshots[0].signatures,
        1
    );
    let mut keys = crate::trust::TrustedKeys::new();
    keys.add(public);
    assert_eq!(b.check_signature(&id, &keys).unwrap(), "ci-1");
    // The source's file now holds another key's signature under the same name, and one by a
    // name the target lacks.
    let (mallory, _) = crate::trust::generate("ci-1").unwrap();
    let (other, _) = crate::trust::generate("ci-2").unwrap();
    a.storage()
        .put(
            &crate::trust::signature_key(&id.0),
            &crate::trust::encode_signatures(&[
                mallory.sign_snapshot(&id.0),
                other.sign_snapshot(&id.0),
            ]),
        )
        .unwrap();
    let r = run(&a, &b, &Select::Newest).unwrap();
    assert_eq!(r.snapshots[0].status, "present");
    assert_eq!(r.snapshots[0].signatures, 1, "{:?}", r.snapshots[0]);
    assert_eq!(b.check_signature(&id, &keys).unwrap(), "ci-1");
    let lines = crate::trust::decode_signatures(&b.read_signatures(&id).unwrap().unwrap()).unwrap();
    assert_eq!(
        lines,
        vec![secret.sign_snapshot(&id.0), other.sign_snapshot(&id.0)]
    );
}
