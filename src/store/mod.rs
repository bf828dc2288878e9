//! The content-addressed store: immutable step outputs under their keys.
//!
//! Owns every write under `$MIMG_STORE`. Layout (format version 1):
//!
//! ```text
//! $MIMG_STORE/v1/
//!   steps/<key>/          one finished step, never changed once renamed here
//!     meta.json           version 2: kind, label, inputs, files (name -> sha256,
//!                         size), trees (name -> sha256 of its listing), duration
//!     <outputs>           the step's files (rootfs.tar, layer.tar, disk.qcow2, root/ ...)
//!     <dir>.tree          the listing of each output directory (root/ of the tools
//!                         step): one line per entry, sorted by path, with its type,
//!                         mode, owner, and file sha256 or link target
//!   tmp/<key>.<pid>.<n>/  a step being built; renamed into steps/ when complete
//!   locks/<key>.lock      held while a step is built, so two builds do not race
//!   locks/store.lock      held shared by every process that uses the store
//!                         (build, lock, store fetch/add), exclusive by gc
//!   blobs/<sha256>        fetched files by content (tarballs, binaries, wheels)
//!   history/<recipe>.json the keys of the last builds of each recipe, and which
//!                         steps each built (for `mimg why`; see `history`)
//!   checked/<key>.<dir>   a cache: each file of that output directory as last
//!                         checked clean, with its stat signature (device, inode,
//!                         size, mtime, ctime) and sha256; a build's check re-hashes
//!                         only files whose signature moved (any write moves ctime),
//!                         `store verify` re-hashes everything; removing it costs
//!                         one full check
//! ```
//!
//! A step directory appears by `rename(2)` only after its outputs and
//! `meta.json` are written and synced, so a build killed at any point leaves
//! either no entry or a complete one; leftovers in `tmp/` are never read and
//! are removed by the next build that takes that key's lock.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::plan::{Step, StepKey};

mod history;
pub use history::{Build, BuiltStep};

/// Store layout version, part of every path.
pub const LAYOUT: &str = "v1";

/// The version of `meta.json` this mimg writes and reads; an entry with
/// another is not used (it is rebuilt).
pub const META_VERSION: u32 = 2;

/// What the store knows about one finished step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub version: u32,
    pub kind: String,
    pub label: String,
    pub key: StepKey,
    pub inputs: BTreeMap<String, serde_json::Value>,
    /// Output files (relative path -> sha256 and size); directories are not listed.
    pub files: BTreeMap<String, FileSum>,
    /// Output directories (name -> sha256 of its listing, `NAME.tree`, which
    /// holds every path, mode, owner, link target and file sha256 below it).
    #[serde(default)]
    pub trees: BTreeMap<String, String>,
    pub seconds: f64,
    /// What the step's hashed inputs cover (`Step::detail`): the leaves
    /// `mimg why` compares with a later build's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub detail: BTreeMap<String, BTreeMap<String, String>>,
    /// Step-specific facts (installed packages, ...).
    #[serde(default)]
    pub extra: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileSum {
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store at {}: {what}: {source}", root.display())]
    Io {
        root: PathBuf,
        what: String,
        source: io::Error,
    },
    #[error("store entry {key} is damaged: {what}\nhint: remove {path} and build again")]
    Damaged {
        key: String,
        what: String,
        path: PathBuf,
    },
}

/// A check of a step's output running on another thread (the sha256 of a
/// file read by [`Store::read_output`], or the listing of a tree by
/// [`Store::check_tree`]): wait for it before keeping anything made from it.
pub struct Check {
    key: String,
    entry: PathBuf,
    /// `None` when intact, else what is damaged.
    checking: std::thread::JoinHandle<Option<String>>,
}

impl Check {
    /// Wait for the check: an error naming what is damaged.
    pub fn wait(self) -> Result<(), StoreError> {
        match self.checking.join().expect("checks do not panic") {
            None => Ok(()),
            Some(what) => Err(StoreError::Damaged {
                key: self.key,
                what,
                path: self.entry,
            }),
        }
    }
}

/// A handle on the store directory. One opened with [`Store::open`] holds
/// the store-wide lock shared as long as any clone of it lives, so `store
/// gc` (which takes it exclusive) never removes what a running build holds
/// or is about to read.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    _in_use: Option<std::sync::Arc<File>>,
}

/// A held lock on one key; released on drop.
pub struct KeyLock {
    _file: File,
}

/// A step being built: write outputs into [`dir`](Self::dir), then commit.
pub struct Pending {
    dir: PathBuf,
    final_dir: PathBuf,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// The store named by `$MIMG_STORE`, else `$XDG_CACHE_HOME/mimg`, else `~/.cache/mimg`.
    pub fn default_root() -> PathBuf {
        if let Some(p) = std::env::var_os("MIMG_STORE").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        if let Some(p) = std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
            return PathBuf::from(p).join("mimg");
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        home.join(".cache").join("mimg")
    }

    /// Open (and create) the store at `root`, holding its store-wide lock
    /// shared (waiting while a gc runs).
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let mut s = Store::at(root);
        s.create_dirs()?;
        let f = s.store_lock_file()?;
        if f.try_lock_shared().is_err() {
            eprintln!("waiting for `mimg store gc` to finish with the store");
            f.lock_shared()
                .map_err(|e| s.io("take the store lock", e))?;
        }
        s._in_use = Some(std::sync::Arc::new(f));
        Ok(s)
    }

    /// The store's directories, of mode 0755 whatever the caller's umask:
    /// a rootless build's apt reads blobs through them as another uid.
    fn create_dirs(&self) -> Result<(), StoreError> {
        use std::os::unix::fs::PermissionsExt;
        let fresh = !self.root.exists();
        let mut dirs = vec![self.base()];
        dirs.extend(["steps", "tmp", "locks", "blobs"].map(|d| self.base().join(d)));
        if fresh {
            dirs.insert(0, self.root.clone());
        }
        for d in dirs {
            if !d.is_dir() {
                fs::create_dir_all(&d)
                    .map_err(|e| self.io(format!("create {}", d.display()), e))?;
                fs::set_permissions(&d, fs::Permissions::from_mode(0o755))
                    .map_err(|e| self.io(format!("set the mode of {}", d.display()), e))?;
            }
        }
        Ok(())
    }

    fn store_lock_file(&self) -> Result<File, StoreError> {
        let p = self.base().join("locks").join("store.lock");
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| self.io(format!("open {}", p.display()), e))
    }

    /// Take the store-wide lock exclusive (for gc): waits until no other
    /// process uses the store, and keeps them out while the guard lives.
    /// Call on a handle from [`Store::at`], which holds no shared lock.
    pub fn exclusive(&self) -> Result<File, StoreError> {
        self.create_dirs()?;
        let f = self.store_lock_file()?;
        if f.try_lock().is_err() {
            eprintln!("waiting for the builds using the store to finish");
            f.lock().map_err(|e| self.io("take the store lock", e))?;
        }
        Ok(f)
    }

    /// Every entry of `tmp/`: with the store-wide lock exclusive, each is
    /// a leftover of a process that died (every writer holds it shared).
    pub fn tmp_entries(&self) -> Result<Vec<PathBuf>, StoreError> {
        let dir = self.tmp_dir();
        let mut v: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(|e| self.io(format!("list {}", dir.display()), e))?
            .flatten()
            .map(|e| e.path())
            .collect();
        v.sort();
        Ok(v)
    }

    /// Remove a leftover of `tmp/` (see [`Store::tmp_entries`]).
    pub fn remove_tmp(&self, p: &Path) {
        remove_all(p);
    }

    /// A handle on the store at `root` that creates nothing: for readers
    /// such as `mimg plan`, which must leave the store as it found it.
    pub fn at(root: &Path) -> Store {
        Store {
            root: root.to_path_buf(),
            _in_use: None,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn base(&self) -> PathBuf {
        self.root.join(LAYOUT)
    }

    fn io(&self, what: impl Into<String>, source: io::Error) -> StoreError {
        StoreError::Io {
            root: self.root.clone(),
            what: what.into(),
            source,
        }
    }

    /// The directory of a finished step.
    pub fn path(&self, key: &StepKey) -> PathBuf {
        self.base().join("steps").join(key.as_str())
    }

    /// Whether a finished step with this key is in the store, with a
    /// `meta.json` of this mimg's version (else it is built again).
    pub fn has(&self, key: &StepKey) -> bool {
        self.meta(key).is_ok()
    }

    /// The metadata of a finished step; an error when it does not parse or
    /// is of another version.
    pub fn meta(&self, key: &StepKey) -> Result<Meta, StoreError> {
        let p = self.path(key).join("meta.json");
        let text = fs::read(&p).map_err(|e| self.io(format!("read {}", p.display()), e))?;
        let damaged = |what: String| StoreError::Damaged {
            key: key.to_string(),
            what,
            path: self.path(key),
        };
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let v: Version =
            serde_json::from_slice(&text).map_err(|e| damaged(format!("meta.json: {e}")))?;
        if v.version != META_VERSION {
            return Err(damaged(format!(
                "meta.json is of version {}; this mimg reads version {META_VERSION}",
                v.version
            )));
        }
        serde_json::from_slice(&text).map_err(|e| damaged(format!("meta.json: {e}")))
    }

    /// Check the tree `name` of step `key` against its recorded listing, on
    /// another thread.
    pub fn check_tree(&self, key: &StepKey, name: &str) -> Check {
        let (store, k, name) = (self.clone(), key.clone(), name.to_string());
        Check {
            key: key.to_string(),
            entry: self.path(key),
            checking: std::thread::spawn(move || store.tree_damage(&k, &name, true)),
        }
    }

    /// What is wrong with the tree `name` of step `key`, if anything: its
    /// listing file against the meta, then the tree against the listing.
    /// With `cached`, files whose stat signature is the one recorded when
    /// they were last checked clean are not hashed again.
    fn tree_damage(&self, key: &StepKey, name: &str, cached: bool) -> Option<String> {
        let meta = match self.meta(key) {
            Ok(m) => m,
            Err(e) => return Some(e.to_string()),
        };
        let Some(want) = meta.trees.get(name) else {
            return Some(format!("its meta.json records no tree {name}/"));
        };
        let list = self.path(key).join(format!("{name}.tree"));
        let recorded = match fs::read_to_string(&list) {
            Ok(t) => t,
            Err(e) => return Some(format!("{name}.tree: {e}")),
        };
        let got = hex::encode(Sha256::digest(recorded.as_bytes()));
        if &got != want {
            return Some(format!("{name}.tree has sha256 {got}, recorded {want}"));
        }
        let cache_file = self.base().join("checked").join(format!("{key}.{name}"));
        let known = if cached {
            fs::read_to_string(&cache_file)
                .map(|t| Signatures::parse(&t))
                .unwrap_or_default()
        } else {
            Signatures::default()
        };
        let (now, seen) = match tree_listing_with(&self.path(key).join(name), &known) {
            Ok(t) => t,
            Err(e) => return Some(format!("{name}/: {e}")),
        };
        if now != recorded {
            let _ = fs::remove_file(&cache_file);
            return Some(listing_difference(name, &recorded, &now));
        }
        if seen != known {
            // Clean: remember it (a cache; failing to write it costs speed only).
            let _ =
                fs::create_dir_all(cache_file.parent().expect("under checked/")).and_then(|_| {
                    crate::paths::atomic_write(&cache_file, seen.text().as_bytes())
                        .map_err(io::Error::other)
                });
        }
        None
    }

    /// Every finished step's key.
    pub fn keys(&self) -> Result<Vec<StepKey>, StoreError> {
        let mut out = Vec::new();
        let dir = self.base().join("steps");
        for e in fs::read_dir(&dir).map_err(|e| self.io("list steps/", e))? {
            let e = e.map_err(|e| self.io("list steps/", e))?;
            if let Some(k) = e.file_name().to_str().and_then(|n| n.parse().ok()) {
                out.push(k);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Take the build lock of `key`, waiting for another build that holds it.
    pub fn lock(&self, key: &StepKey) -> Result<KeyLock, StoreError> {
        self.lock_named(key.as_str())
    }

    /// Take the lock `locks/NAME.lock`, waiting for whoever holds it.
    fn lock_named(&self, name: &str) -> Result<KeyLock, StoreError> {
        let p = self.base().join("locks").join(format!("{name}.lock"));
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| self.io("open lock", e))?;
        f.lock().map_err(|e| self.io("take lock", e))?;
        Ok(KeyLock { _file: f })
    }

    /// Start building `key` (hold its lock first). Clears leftovers of
    /// killed builds of the same key.
    pub fn begin(&self, key: &StepKey) -> Result<Pending, StoreError> {
        let tmp = self.base().join("tmp");
        if let Ok(rd) = fs::read_dir(&tmp) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(key.as_str()) {
                    remove_all(&e.path());
                }
            }
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = tmp.join(format!("{key}.{}.{n}", std::process::id()));
        fs::create_dir_all(&dir).map_err(|e| self.io("create tmp dir", e))?;
        Ok(Pending {
            dir,
            final_dir: self.path(key),
        })
    }

    /// Finish a step: hash its files, write `meta.json`, sync, rename into place.
    pub fn commit(
        &self,
        pending: Pending,
        step: &Step,
        seconds: f64,
        extra: serde_json::Value,
    ) -> Result<Meta, StoreError> {
        let t0 = std::time::Instant::now();
        // The outputs go to the disk while they are hashed (the kernel
        // writes, this thread reads): `commit_checked`'s sync then finds
        // them written. A failure here is found again by that sync.
        let (trees, files) = std::thread::scope(|s| {
            s.spawn(|| sync_tree(&pending.dir));
            let trees = list_trees(&pending.dir).map_err(|e| self.io("list output trees", e))?;
            let mut files = BTreeMap::new();
            sum_tree(&pending.dir, &pending.dir, &mut files)
                .map_err(|e| self.io("hash outputs", e))?;
            Ok::<_, StoreError>((trees, files))
        })?;
        let hashed = t0.elapsed().as_secs_f64();
        let meta = Meta {
            version: META_VERSION,
            kind: step.kind.name().into(),
            label: step.label.clone(),
            key: step.key.clone(),
            inputs: step.inputs.clone(),
            files,
            trees,
            seconds,
            detail: step.detail.clone(),
            extra,
        };
        tracing::debug!("commit {}: outputs hashed in {hashed:.2}s", step.label);
        let r = self.commit_checked(pending, meta);
        tracing::debug!(
            "commit {}: synced and in place at {:.2}s",
            step.label,
            t0.elapsed().as_secs_f64()
        );
        r
    }

    /// Finish a step whose outputs were already checked against `meta`
    /// (substituted from a cache, each file hashed as it arrived): write
    /// `meta.json`, sync, rename into place.
    pub fn commit_checked(&self, pending: Pending, meta: Meta) -> Result<Meta, StoreError> {
        let mp = pending.dir.join("meta.json");
        let mut text = serde_json::to_vec_pretty(&meta).expect("meta serialises");
        text.push(b'\n');
        fs::write(&mp, &text).map_err(|e| self.io("write meta.json", e))?;
        sync_tree(&pending.dir).map_err(|e| self.io("sync outputs", e))?;
        if pending.final_dir.exists() {
            // A concurrent build without our lock cannot happen; a damaged
            // entry (no meta.json) is replaced.
            remove_all(&pending.final_dir);
        }
        fs::rename(&pending.dir, &pending.final_dir)
            .map_err(|e| self.io("rename into steps/", e))?;
        if let Some(parent) = pending.final_dir.parent() {
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(|e| self.io("sync steps/", e))?;
        }
        Ok(meta)
    }
}

impl Store {
    /// A blob's bytes, re-hashed before use: `None` when the store does not
    /// have it; an error naming both sums when its content does not match.
    pub fn read_blob(&self, sha256: &str, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.blob(sha256);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(format!("read {}", path.display()), e)),
        };
        let got = hex::encode(Sha256::digest(&data));
        if got != sha256 {
            return Err(StoreError::Damaged {
                key: format!("blob {name}"),
                what: format!("expected sha256 {sha256}, got {got}"),
                path,
            });
        }
        Ok(Some(data))
    }

    /// A step output's bytes, and the check of their sha256 against the
    /// sum its meta records, running on another thread: the caller may use
    /// the bytes at once but must [`Check::wait`] before anything made from
    /// them is kept (a damaged entry is never used).
    pub fn read_output(
        &self,
        key: &StepKey,
        name: &str,
    ) -> Result<(bytes::Bytes, Check), StoreError> {
        let meta = self.meta(key)?;
        let path = self.path(key).join(name);
        let Some(want) = meta.files.get(name) else {
            return Err(StoreError::Damaged {
                key: key.to_string(),
                what: format!("it has no {name}"),
                path: self.path(key),
            });
        };
        let file = File::open(&path).map_err(|e| self.io(format!("read {}", path.display()), e))?;
        // SAFETY: a step's outputs are never changed in place: they are
        // written under v1/tmp/, then the directory is renamed into steps/;
        // `store gc` and a damaged entry's replacement unlink them, which
        // leaves this mapping intact. Mapped, not read: no copy of the tar
        // in the process's memory (the tree's file contents point into it).
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| self.io(format!("map {}", path.display()), e))?;
        let data = bytes::Bytes::from_owner(map);
        let hashed = data.clone();
        let (name, want) = (name.to_string(), want.sha256.clone());
        let check = Check {
            key: key.to_string(),
            entry: self.path(key),
            checking: std::thread::spawn(move || {
                let got = hex::encode(Sha256::digest(&hashed));
                (got != want).then(|| format!("{name} has sha256 {got}, recorded {want}"))
            }),
        };
        Ok((data, check))
    }

    /// The store's scratch directory (same file system as the entries).
    pub fn tmp_dir(&self) -> PathBuf {
        self.base().join("tmp")
    }

    /// Where the blob with this sha256 lives (whether or not it is there).
    pub fn blob(&self, sha256: &str) -> PathBuf {
        self.base().join("blobs").join(sha256)
    }

    /// Every blob's name (its sha256 as named; not re-hashed).
    pub fn blobs(&self) -> Result<Vec<String>, StoreError> {
        let mut v: Vec<String> = fs::read_dir(self.base().join("blobs"))
            .map_err(|e| self.io("list blobs/", e))?
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        v.sort();
        Ok(v)
    }

    /// A temporary path for a blob being written.
    pub fn blob_tmp(&self, sha256: &str) -> PathBuf {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.base()
            .join("tmp")
            .join(format!("blob-{sha256}.{}.{n}", std::process::id()))
    }

    /// Move a verified temporary file into `blobs/` (atomic rename).
    pub fn put_blob(&self, tmp: &Path, sha256: &str) -> Result<PathBuf, StoreError> {
        use std::os::unix::fs::PermissionsExt;
        let dest = self.blob(sha256);
        // Read by apt as another uid in a rootless build: never the umask's.
        fs::set_permissions(tmp, fs::Permissions::from_mode(0o644))
            .map_err(|e| self.io(format!("set the mode of {}", tmp.display()), e))?;
        fs::rename(tmp, &dest).map_err(|e| self.io("rename into blobs/", e))?;
        Ok(dest)
    }

    /// Add a local file by content; returns its sha256.
    pub fn add_file(&self, path: &Path) -> Result<FileSum, StoreError> {
        let sum = hash_file(path).map_err(|e| self.io(format!("read {}", path.display()), e))?;
        let tmp = self.blob_tmp(&sum.sha256);
        fs::copy(path, &tmp).map_err(|e| self.io(format!("copy {}", path.display()), e))?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| self.io("sync blob", e))?;
        let again = hash_file(&tmp).map_err(|e| self.io("re-read blob", e))?;
        if again != sum {
            let _ = fs::remove_file(&tmp);
            return Err(self.io(
                format!("{} changed while it was copied", path.display()),
                io::Error::other("content changed"),
            ));
        }
        self.put_blob(&tmp, &sum.sha256)?;
        Ok(sum)
    }

    /// Re-hash every step output (files and trees) and blob; returns what
    /// is damaged.
    pub fn verify(&self) -> Result<Vec<String>, StoreError> {
        let mut bad = Vec::new();
        for key in self.keys()? {
            match self.meta(&key) {
                Ok(m) => {
                    let step = format!("step {} ({key})", m.label);
                    for (name, sum) in &m.files {
                        match hash_file(&self.path(&key).join(name)) {
                            Ok(s) if &s == sum => {}
                            Ok(s) => bad.push(format!(
                                "{step}: {name}: expected sha256 {}, got {}",
                                sum.sha256, s.sha256
                            )),
                            Err(e) => bad.push(format!("{step}: {name}: {e}")),
                        }
                    }
                    for name in m.trees.keys() {
                        if let Some(what) = self.tree_damage(&key, name, false) {
                            bad.push(format!("{step}: {what}"));
                        }
                    }
                }
                Err(e) => bad.push(e.to_string()),
            }
        }
        for b in self.blobs()? {
            match hash_file(&self.blob(&b)) {
                Ok(s) if s.sha256 == b => {}
                Ok(s) => bad.push(format!("blob {b}: content has sha256 {}", s.sha256)),
                Err(e) => bad.push(format!("blob {b}: {e}")),
            }
        }
        Ok(bad)
    }

    /// Remove a step or blob (for gc).
    pub fn remove_step(&self, key: &StepKey) {
        remove_all(&self.path(key));
        self.forget_checked(key);
    }

    /// Drop the check cache of `key`'s trees (see the layout: `checked/`).
    fn forget_checked(&self, key: &StepKey) {
        if let Ok(d) = fs::read_dir(self.base().join("checked")) {
            let prefix = format!("{key}.");
            for e in d.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    /// Remove a damaged step under its build lock, so that it is made again.
    pub fn remove_damaged(&self, key: &StepKey) -> Result<(), StoreError> {
        let _l = self.lock(key)?;
        remove_all(&self.path(key));
        self.forget_checked(key);
        if self.path(key).exists() {
            return Err(self.io(
                format!("remove the damaged entry {}", self.path(key).display()),
                io::Error::other("it is still there"),
            ));
        }
        Ok(())
    }

    pub fn remove_blob(&self, sha256: &str) {
        let _ = fs::remove_file(self.blob(sha256));
    }
}

impl Pending {
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Not committed (an error): leave nothing behind.
        if self.dir.exists() {
            remove_all(&self.dir);
        }
    }
}

fn remove_all(p: &Path) {
    if fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir()) {
        let _ = fs::remove_file(p);
        return;
    }
    // Trees extracted as root may hold read-only directories.
    let _ = make_writable(p);
    let _ = fs::remove_dir_all(p);
}

fn make_writable(p: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let md = fs::symlink_metadata(p)?;
    if md.is_dir() {
        let mut perm = md.permissions();
        perm.set_mode(perm.mode() | 0o700);
        crate::paths::set_permissions(p, perm)?;
        for e in fs::read_dir(p)? {
            make_writable(&e?.path())?;
        }
    }
    Ok(())
}

/// sha256 and size of each regular file directly named by a step (not of
/// trees such as the tools root, which are too many to list).
fn sum_tree(base: &Path, dir: &Path, out: &mut BTreeMap<String, FileSum>) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let ft = e.file_type()?;
        if ft.is_file() {
            let rel = e
                .path()
                .strip_prefix(base)
                .expect("under base")
                .to_string_lossy()
                .into_owned();
            out.insert(rel, hash_file(&e.path())?);
        }
    }
    Ok(())
}

/// Write `NAME.tree` beside each output directory `NAME/` of a step and
/// return name -> sha256 of that listing.
fn list_trees(dir: &Path) -> io::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            let name = e.file_name().to_string_lossy().into_owned();
            let text = tree_listing(&e.path())?;
            crate::paths::write(dir.join(format!("{name}.tree")), &text)?;
            out.insert(name, hex::encode(Sha256::digest(text.as_bytes())));
        }
    }
    Ok(out)
}

/// The listing of the tree at `root`: one line per entry below it, sorted
/// by path: `TYPE MODE UID:GID SHA256|TARGET|- PATH` (a path's `\` and
/// newlines escaped).
pub fn tree_listing(root: &Path) -> io::Result<String> {
    tree_listing_with(root, &Signatures::default()).map(|(t, _)| t)
}

/// Each file of a tree by path: its stat signature when it was hashed,
/// and the sha256 it had then.
#[derive(Debug, Default, PartialEq, Eq)]
struct Signatures(BTreeMap<String, (String, String)>);

impl Signatures {
    fn parse(text: &str) -> Signatures {
        Signatures(
            text.lines()
                .filter_map(|l| {
                    let mut f = l.splitn(3, '\t');
                    let (sig, sha, path) = (f.next()?, f.next()?, f.next()?);
                    Some((path.to_string(), (sig.to_string(), sha.to_string())))
                })
                .collect(),
        )
    }
    fn text(&self) -> String {
        let mut t = String::new();
        for (path, (sig, sha)) in &self.0 {
            t.push_str(&format!("{sig}\t{sha}\t{path}\n"));
        }
        t
    }
}

/// Device, inode, size, mtime and ctime (to the nanosecond): what any
/// write to the file, or its replacement, changes.
fn signature(md: &fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{}:{}:{}:{}.{}:{}.{}",
        md.dev(),
        md.ino(),
        md.size(),
        md.mtime(),
        md.mtime_nsec(),
        md.ctime(),
        md.ctime_nsec()
    )
}

/// [`tree_listing`], hashing only the files whose signature is not the
/// one in `known`; returns the signatures of every file too.
fn tree_listing_with(root: &Path, known: &Signatures) -> io::Result<(String, Signatures)> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = Signatures::default();
    let mut lines = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        for e in fs::read_dir(root.join(&rel))? {
            let e = e?;
            let rel = rel.join(e.file_name());
            let md = fs::symlink_metadata(e.path())?;
            let ft = md.file_type();
            let (kind, detail) = if ft.is_dir() {
                todo.push(rel.clone());
                ("d", "-".to_string())
            } else if ft.is_symlink() {
                let t = fs::read_link(e.path())?;
                ("l", escape(&t.to_string_lossy()))
            } else if ft.is_file() {
                let key = escape(&rel.to_string_lossy());
                let sig = signature(&md);
                let sha = match known.0.get(&key) {
                    Some((s, sha)) if *s == sig => sha.clone(),
                    _ => hash_file(&e.path())?.sha256,
                };
                seen.0.insert(key, (sig, sha.clone()));
                ("f", sha)
            } else {
                ("o", "-".to_string())
            };
            let path = escape(&rel.to_string_lossy());
            lines.push((
                path.clone(),
                format!(
                    "{path}\t{kind}\t{:04o}\t{}:{}\t{detail}",
                    md.mode() & 0o7777,
                    md.uid(),
                    md.gid()
                ),
            ));
        }
    }
    lines.sort();
    let mut text = String::new();
    for (_, l) in lines {
        text.push_str(&l);
        text.push('\n');
    }
    Ok((text, seen))
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
}

/// Which paths of tree `name` differ between two listings, for people.
fn listing_difference(name: &str, recorded: &str, now: &str) -> String {
    let parse = |t: &str| -> BTreeMap<String, String> {
        t.lines()
            .map(|l| {
                let path = l.split('\t').next().unwrap_or(l).to_string();
                (path, l.to_string())
            })
            .collect()
    };
    let (a, b) = (parse(recorded), parse(now));
    let mut paths: Vec<String> = Vec::new();
    for (p, l) in &a {
        match b.get(p) {
            None => paths.push(format!("{name}/{p} is missing")),
            Some(m) if m != l => paths.push(format!("{name}/{p} changed")),
            _ => {}
        }
    }
    for p in b.keys().filter(|p| !a.contains_key(*p)) {
        paths.push(format!("{name}/{p} was added"));
    }
    let n = paths.len();
    let mut shown: Vec<String> = paths.into_iter().take(5).collect();
    if n > 5 {
        shown.push(format!("and {} more", n - 5));
    }
    format!(
        "its tree {name}/ differs from {name}.tree: {}",
        shown.join(", ")
    )
}

/// sha256 and size of one file.
pub fn hash_file(p: &Path) -> io::Result<FileSum> {
    use sha2::{Digest, Sha256};
    let mut f = File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = io::Read::read(&mut f, &mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok(FileSum {
        sha256: hex::encode(h.finalize()),
        size,
    })
}

fn sync_tree(dir: &Path) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_file() {
            File::open(e.path())?.sync_all()?;
        }
    }
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{StepKey, StepKind};

    fn step(n: &str) -> Step {
        let mut inputs = BTreeMap::new();
        inputs.insert("n".into(), serde_json::json!(n));
        Step {
            kind: StepKind::Layer,
            label: n.into(),
            key: StepKey::compute("layer", &inputs),
            inputs,
            layers: vec![],
            detail: BTreeMap::new(),
        }
    }

    #[test]
    fn commit_is_all_or_nothing() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let st = step("a");
        assert!(!s.has(&st.key));
        {
            let _l = s.lock(&st.key).unwrap();
            let p = s.begin(&st.key).unwrap();
            fs::write(p.dir().join("layer.tar"), b"x").unwrap();
            // dropped without commit: as if the build failed
        }
        assert!(!s.has(&st.key));
        assert_eq!(fs::read_dir(d.path().join("v1/tmp")).unwrap().count(), 0);
        let _l = s.lock(&st.key).unwrap();
        let p = s.begin(&st.key).unwrap();
        fs::write(p.dir().join("layer.tar"), b"x").unwrap();
        let m = s.commit(p, &st, 0.1, serde_json::Value::Null).unwrap();
        assert!(s.has(&st.key));
        assert_eq!(m.files["layer.tar"].size, 1);
        assert_eq!(s.meta(&st.key).unwrap().files, m.files);
        assert_eq!(s.keys().unwrap(), vec![st.key.clone()]);
    }

    #[test]
    fn a_tree_check_rehashes_only_what_moved_and_still_finds_damage() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let st = step("tree");
        let _l = s.lock(&st.key).unwrap();
        let p = s.begin(&st.key).unwrap();
        fs::create_dir_all(p.dir().join("root/bin")).unwrap();
        fs::write(p.dir().join("root/bin/tool"), b"tool-1").unwrap();
        fs::write(p.dir().join("root/keep"), b"k").unwrap();
        s.commit(p, &st, 0.1, serde_json::Value::Null).unwrap();
        let cache = d.path().join(format!("v1/checked/{}.root", st.key));
        assert!(s.check_tree(&st.key, "root").wait().is_ok());
        let first = fs::read_to_string(&cache).expect("a clean check is remembered");
        assert!(first.contains("\tbin/tool\n") && first.contains("\tkeep\n"));
        // The cache is used: a file whose signature is unchanged is not
        // hashed again (a wrong sha256 in the cache shows through).
        let tool_sha = hex::encode(Sha256::digest(b"tool-1"));
        fs::write(&cache, first.replace(&tool_sha, &"0".repeat(64))).unwrap();
        assert!(s.check_tree(&st.key, "root").wait().is_err());
        assert!(!cache.exists(), "a failed check drops the cache");
        assert!(s.check_tree(&st.key, "root").wait().is_ok());
        // Same size, same mtime, other bytes: ctime moved, so it is hashed.
        let tool = s.path(&st.key).join("root/bin/tool");
        let mtime = fs::metadata(&tool).unwrap().modified().unwrap();
        fs::set_permissions(&tool, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&tool, b"tool-2").unwrap();
        fs::File::options()
            .write(true)
            .open(&tool)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let e = s
            .check_tree(&st.key, "root")
            .wait()
            .unwrap_err()
            .to_string();
        assert!(e.contains("root/bin/tool changed"), "{e}");
        // verify never trusts the cache; gc's removal drops it.
        assert!(!s.verify().unwrap().is_empty());
        s.remove_step(&st.key);
        assert!(!cache.exists());
    }

    #[test]
    fn leftovers_of_a_killed_build_are_cleared() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let st = step("b");
        let stale = d.path().join(format!("v1/tmp/{}.999.0", st.key));
        fs::create_dir_all(&stale).unwrap();
        let _l = s.lock(&st.key).unwrap();
        let _p = s.begin(&st.key).unwrap();
        assert!(!stale.exists());
    }
}
