//! Reproducible one-layer OCI image archives, and the recipe of the pidmap image.
//!
//! An [`Image`] is a set of files and directories plus an image config; [`Image::write_archive`]
//! writes it as an OCI image layout tar (`oci-layout`, `index.json`, `blobs/sha256/…`) that
//! `ctr images import`, `skopeo copy oci-archive:…` and `podman load` read. The same inputs
//! always give the same bytes, hence the same manifest digest: the index, manifest and config
//! are `oci-spec`'s typed documents written with every object's keys sorted, entries are sorted, every
//! mtime is [`Image::created`], owners are 0:0 without names, modes are fixed, and the layer
//! is stored uncompressed (`application/vnd.oci.image.layer.v1.tar`, so its digest is also
//! its diff id and no gzip header can carry a timestamp).
//!
//! [`write_index_archive`] writes several such images of one reference, one per platform
//! (`linux/amd64`, `linux/arm64`), as one archive whose `index.json` points at an image index
//! that lists each platform's manifest: what `docker buildx` writes for a multi-platform image,
//! and what containerd, skopeo and podman pick their own platform from.
//!
//! [`pidmap`] is the one definition of what goes into the agent's image, shared by
//! `cargo xtask image` (release binary) and the end-to-end test (debug binary).
//!
//! # Examples
//!
//! ```no_run
//! use oci_image::{Image, ImageConfig};
//!
//! let mut image = Image::new("localhost/hello:1", 0, ImageConfig {
//!     entrypoint: vec!["/hello".into()],
//!     ..ImageConfig::default()
//! });
//! image.add_file("/hello", "target/release/hello", 0o755)?;
//! image.add_dir("/tmp", 0o1777)?;
//! let written = image.write_archive("hello.tar".as_ref())?;
//! println!("{} {}", written.reference, written.manifest_digest);
//! # Ok::<(), oci_image::Error>(())
//! ```

pub mod pidmap;

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, Os, PlatformBuilder, RootFsBuilder,
};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// The annotation `ctr images import` names the image by (the full reference).
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI layout's reference annotation; like `ctr images export`, we put the tag there.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Why an image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A path in the image is not absolute, is the root, or has `.`/`..` components.
    #[error("image path {path:?} must be absolute and normal (no `.`, `..` or `//`)")]
    BadPath { path: String },
    /// A file that goes into the image could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The archive could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Serialising the image JSON failed.
    #[error("cannot serialise the image {what}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// An image document could not be put together (a digest or a required field).
    #[error("cannot build the image {what}")]
    Spec {
        what: &'static str,
        #[source]
        source: oci_spec::OciSpecError,
    },
    /// The images given for a multi-platform archive do not make one.
    #[error("cannot write a multi-platform archive: {detail}")]
    Platforms { detail: String },
    /// `ldd` could not tell the shared objects a binary needs.
    #[error("cannot list the shared objects of {}: {detail}", binary.display())]
    Ldd { binary: PathBuf, detail: String },
}

/// The runtime part of the image config (`config` in the OCI image config JSON).
#[derive(Clone, Debug, Default)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    /// `""` leaves it unset.
    pub user: String,
    /// `""` leaves it unset.
    pub working_dir: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    Dir {
        mode: u32,
    },
    /// Read (following symlinks) when the archive is written.
    File {
        source: PathBuf,
        mode: u32,
    },
    /// A symbolic link to `target` (as given: relative or absolute).
    Symlink {
        target: String,
    },
}

/// A one-layer image: files, directories and a config. See the [crate docs](crate).
#[derive(Clone, Debug)]
pub struct Image {
    reference: String,
    /// The OCI architecture (`amd64`, `arm64`): this machine's unless set.
    architecture: String,
    created: u64,
    config: ImageConfig,
    /// Keyed by path without the leading `/`: a parent sorts before its children.
    entries: BTreeMap<String, Entry>,
}

/// What [`Image::write_archive`] or [`write_index_archive`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The full reference, e.g. `localhost/pidmap:0.1.0`.
    pub reference: String,
    /// `sha256:…` of what `index.json` points at, the image's identity: the manifest of a
    /// one-platform archive, the image index of a multi-platform one.
    pub manifest_digest: String,
    /// Each platform's architecture and manifest digest, in the order written.
    pub platforms: Vec<(String, String)>,
    /// Size of the archive in bytes.
    pub archive_bytes: u64,
}

impl Image {
    /// An empty image named `reference` (e.g. `localhost/pidmap:0.1.0`) whose tar mtimes
    /// and config `created` are `created` (seconds since the epoch; 0 or `SOURCE_DATE_EPOCH`).
    pub fn new(reference: impl Into<String>, created: u64, config: ImageConfig) -> Self {
        Self {
            reference: reference.into(),
            architecture: oci_arch().to_owned(),
            created,
            config,
            entries: BTreeMap::new(),
        }
    }

    /// The full reference.
    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// Makes this the image of OCI architecture `arch` (`amd64`, `arm64`) instead of this
    /// machine's: its config and platform say so; its files are the caller's to match.
    pub fn set_architecture(&mut self, arch: &str) -> &mut Self {
        arch.clone_into(&mut self.architecture);
        self
    }

    /// The OCI architecture.
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// The tag part of the reference (`latest` when it has none).
    pub fn tag(&self) -> &str {
        let name = self.reference.rsplit('/').next().unwrap_or(&self.reference);
        name.rsplit_once(':').map_or("latest", |(_, tag)| tag)
    }

    /// Adds directory `path` (absolute) with `mode`, and its missing parents with 0755.
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<&mut Self, Error> {
        let key = self.add_parents(path)?;
        self.entries.insert(key, Entry::Dir { mode });
        Ok(self)
    }

    /// Adds regular file `path` (absolute) with `mode`, whose content is read from `source`
    /// (following symlinks) when the archive is written; missing parents get 0755.
    pub fn add_file(
        &mut self,
        path: &str,
        source: impl Into<PathBuf>,
        mode: u32,
    ) -> Result<&mut Self, Error> {
        let key = self.add_parents(path)?;
        let source = source.into();
        self.entries.insert(key, Entry::File { source, mode });
        Ok(self)
    }

    /// Adds symbolic link `path` (absolute) pointing at `target`, which is stored as given
    /// (relative to the link's directory, or absolute within the image); missing parents get
    /// 0755.
    pub fn add_symlink(
        &mut self,
        path: &str,
        target: impl Into<String>,
    ) -> Result<&mut Self, Error> {
        let key = self.add_parents(path)?;
        let target = target.into();
        if target.is_empty() {
            return Err(Error::BadPath {
                path: path.to_owned(),
            });
        }
        self.entries.insert(key, Entry::Symlink { target });
        Ok(self)
    }

    /// The image's paths (absolute), sorted as in the layer.
    pub fn paths(&self) -> impl Iterator<Item = String> + '_ {
        self.entries.keys().map(|k| format!("/{k}"))
    }

    fn add_parents(&mut self, path: &str) -> Result<String, Error> {
        let key = normal_key(path)?;
        let mut end = 0;
        while let Some(slash) = key[end..].find('/') {
            end += slash;
            self.entries
                .entry(key[..end].to_owned())
                .or_insert(Entry::Dir { mode: 0o755 });
            end += 1;
        }
        Ok(key)
    }

    /// Writes the OCI layout archive to `out` (replacing it) and says what it wrote.
    pub fn write_archive(&self, out: &Path) -> Result<Written, Error> {
        let (blobs, manifest) = self.blobs()?;
        let index = index_json(&manifest, &self.reference, self.tag())?;
        let bytes = layout_archive(self.created, blobs, &index)?;
        write_file(out, &bytes)?;
        Ok(Written {
            reference: self.reference.clone(),
            manifest_digest: manifest.digest().to_string(),
            platforms: vec![(self.architecture.clone(), manifest.digest().to_string())],
            archive_bytes: bytes.len() as u64,
        })
    }

    /// The layer, config and manifest blobs (path in the layout, bytes), and the manifest's
    /// descriptor with its platform.
    fn blobs(&self) -> Result<(Vec<Blob>, Descriptor), Error> {
        let layer = self.layer()?;
        let layer_digest = digest(&layer); // Uncompressed: the diff id is the digest.
        let config = self.config_json(&layer_digest)?;
        let config_digest = digest(&config);
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(descriptor(
                MediaType::ImageConfig,
                &config_digest,
                config.len(),
            )?)
            .layers(vec![descriptor(
                MediaType::ImageLayer,
                &layer_digest,
                layer.len(),
            )?])
            .build()
            .map_err(spec_err("manifest"))?;
        let manifest = to_vec("manifest", &manifest)?;
        let manifest_digest = digest(&manifest);
        let mut manifest_desc =
            descriptor(MediaType::ImageManifest, &manifest_digest, manifest.len())?;
        manifest_desc.set_platform(Some(
            PlatformBuilder::default()
                .architecture(Arch::from(self.architecture.as_str()))
                .os(Os::Linux)
                .build()
                .map_err(spec_err("platform"))?,
        ));
        let blobs = vec![
            (blob_path(&layer_digest), layer),
            (blob_path(&config_digest), config),
            (blob_path(&manifest_digest), manifest),
        ];
        Ok((blobs, manifest_desc))
    }

    /// The layer tar: every entry in path order.
    fn layer(&self) -> Result<Vec<u8>, Error> {
        let mut layer = tar::Builder::new(Vec::new());
        let mem_err = |source| Error::Write {
            path: PathBuf::from("(layer in memory)"),
            source,
        };
        for (path, entry) in &self.entries {
            match entry {
                Entry::Dir { mode } => {
                    let mut h = header(tar::EntryType::Directory, *mode, 0, self.created);
                    layer
                        .append_data(&mut h, path, io::empty())
                        .map_err(mem_err)?;
                }
                Entry::File { source, mode } => {
                    let data = fs::read(source).map_err(|e| Error::Read {
                        path: source.clone(),
                        source: e,
                    })?;
                    let mut h = header(
                        tar::EntryType::Regular,
                        *mode,
                        data.len() as u64,
                        self.created,
                    );
                    layer
                        .append_data(&mut h, path, data.as_slice())
                        .map_err(mem_err)?;
                }
                Entry::Symlink { target } => {
                    let mut h = header(tar::EntryType::Symlink, 0o777, 0, self.created);
                    layer.append_link(&mut h, path, target).map_err(mem_err)?;
                }
            }
        }
        layer.into_inner().map_err(mem_err)
    }

    fn config_json(&self, layer_digest: &str) -> Result<Vec<u8>, Error> {
        let c = &self.config;
        let mut runtime = ConfigBuilder::default()
            .entrypoint(c.entrypoint.clone())
            .cmd(c.cmd.clone())
            .env(c.env.clone())
            .labels(
                c.labels
                    .clone()
                    .into_iter()
                    .collect::<std::collections::HashMap<_, _>>(),
            );
        if !c.user.is_empty() {
            runtime = runtime.user(c.user.clone());
        }
        if !c.working_dir.is_empty() {
            runtime = runtime.working_dir(c.working_dir.clone());
        }
        let config = ImageConfigurationBuilder::default()
            .created(rfc3339(self.created))
            .architecture(Arch::from(self.architecture.as_str()))
            .os(Os::Linux)
            .config(runtime.build().map_err(spec_err("config"))?)
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(vec![layer_digest.to_owned()])
                    .build()
                    .map_err(spec_err("rootfs"))?,
            )
            .build()
            .map_err(spec_err("config"))?;
        to_vec("config", &config)
    }
}

/// Writes one archive holding `images`, one per platform, all of one reference and
/// creation time: `index.json` points at an image index listing each image's manifest with
/// its platform (see the [crate docs](crate)). Two images of one architecture are refused.
pub fn write_index_archive(images: &[Image], out: &Path) -> Result<Written, Error> {
    let first = images.first().ok_or(Error::Platforms {
        detail: "no image given".into(),
    })?;
    let mut blobs = Vec::new();
    let mut manifests = Vec::new();
    let mut platforms: Vec<(String, String)> = Vec::new();
    for image in images {
        if image.reference != first.reference || image.created != first.created {
            return Err(Error::Platforms {
                detail: format!(
                    "{} (created {}) and {} (created {}) differ",
                    first.reference, first.created, image.reference, image.created
                ),
            });
        }
        if platforms
            .iter()
            .any(|(arch, _)| *arch == image.architecture)
        {
            return Err(Error::Platforms {
                detail: format!("two images for linux/{}", image.architecture),
            });
        }
        let (image_blobs, manifest) = image.blobs()?;
        platforms.push((image.architecture.clone(), manifest.digest().to_string()));
        blobs.extend(image_blobs);
        manifests.push(manifest);
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .map_err(spec_err("image index"))?;
    let index = to_vec("image index", &index)?;
    let index_digest = digest(&index);
    let index_desc = descriptor(MediaType::ImageIndex, &index_digest, index.len())?;
    blobs.push((blob_path(&index_digest), index));
    let index_json = index_json(&index_desc, &first.reference, first.tag())?;
    let bytes = layout_archive(first.created, blobs, &index_json)?;
    write_file(out, &bytes)?;
    Ok(Written {
        reference: first.reference.clone(),
        manifest_digest: index_digest,
        platforms,
        archive_bytes: bytes.len() as u64,
    })
}

/// `index.json`: the one descriptor `target` (a manifest or an image index), named
/// `reference` for containerd and `tag` for the OCI layout.
fn index_json(target: &Descriptor, reference: &str, tag: &str) -> Result<Vec<u8>, Error> {
    let mut target = target.clone();
    target.set_annotations(Some(
        [
            (ANNOTATION_CONTAINERD_NAME, reference),
            (ANNOTATION_REF_NAME, tag),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
    ));
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![target])
        .build()
        .map_err(spec_err("index"))?;
    to_vec("index", &index)
}

/// A blob of the layout: its path (`blobs/sha256/<hex>`) and bytes.
type Blob = (String, Vec<u8>);

/// `blobs/sha256/<hex>` of `digest`.
fn blob_path(digest: &str) -> String {
    digest.replacen("sha256:", "blobs/sha256/", 1)
}

/// The OCI layout tar: `blobs/` (sorted, each once), `index.json`, `oci-layout`.
fn layout_archive(created: u64, mut blobs: Vec<Blob>, index: &[u8]) -> Result<Vec<u8>, Error> {
    blobs.sort_by(|a, b| a.0.cmp(&b.0));
    // Platforms may share a blob (an identical layer): stored once.
    blobs.dedup_by(|a, b| a.0 == b.0);
    let mut archive = tar::Builder::new(Vec::new());
    let result: io::Result<()> = (|| {
        for dir in ["blobs", "blobs/sha256"] {
            let mut h = header(tar::EntryType::Directory, 0o755, 0, created);
            archive.append_data(&mut h, dir, io::empty())?;
        }
        let mut add = add_regular(&mut archive, created);
        for (path, blob) in &blobs {
            add(path.clone(), blob)?;
        }
        add("index.json".into(), index)?;
        add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(())
    })();
    result
        .and_then(|()| archive.into_inner())
        .map_err(|source| Error::Write {
            path: PathBuf::from("(archive in memory)"),
            source,
        })
}

/// Writes `bytes` next to `out`, then renames: a reader never sees half an archive.
fn write_file(out: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = out.with_extension("tar.partial");
    fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, out))
        .map_err(|source| Error::Write {
            path: out.to_path_buf(),
            source,
        })
}

fn add_regular(
    archive: &mut tar::Builder<Vec<u8>>,
    mtime: u64,
) -> impl FnMut(String, &[u8]) -> io::Result<()> + '_ {
    move |path, data| {
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64, mtime);
        archive.append_data(&mut h, path, data)
    }
}

/// `/a/b` → `a/b`; refuses relative paths, the root, `.`, `..` and empty components.
fn normal_key(path: &str) -> Result<String, Error> {
    let bad = || Error::BadPath {
        path: path.to_owned(),
    };
    let key = path.strip_prefix('/').ok_or_else(bad)?;
    let key = key.strip_suffix('/').unwrap_or(key);
    if key.is_empty()
        || key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad());
    }
    Ok(key.to_owned())
}

/// A root-owned ustar header without user or group names.
fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h
}

/// `value` as JSON with every object's keys sorted, whatever order its maps iterate in:
/// oci-spec keeps labels and annotations in `HashMap`s, and the archive must be the same
/// bytes every time.
fn to_vec(what: &'static str, value: &impl Serialize) -> Result<Vec<u8>, Error> {
    let json_err = |source| Error::Json { what, source };
    let value = serde_json::to_value(value).map_err(json_err)?;
    serde_json::to_vec(&sorted(value)).map_err(json_err)
}

/// `value` with the keys of every object in sorted order (a no-op for serde_json's
/// default `BTreeMap` objects; needed if a dependency turns on `preserve_order`).
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

fn spec_err(what: &'static str) -> impl FnOnce(oci_spec::OciSpecError) -> Error {
    move |source| Error::Spec { what, source }
}

/// An OCI content descriptor.
fn descriptor(media_type: MediaType, digest: &str, size: usize) -> Result<Descriptor, Error> {
    let digest: oci_spec::image::Digest = digest.parse().map_err(spec_err("descriptor digest"))?;
    Ok(Descriptor::new(media_type, size as u64, digest))
}

/// `sha256:<hex>` of `blob`.
pub fn digest(blob: &[u8]) -> String {
    let hex: String = Sha256::digest(blob)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// The OCI (Go) name of this machine's architecture.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Seconds since the epoch as RFC 3339 UTC (`1970-01-01T00:00:00Z`).
pub fn rfc3339(secs: u64) -> String {
    // Days to civil date: Howard Hinnant's algorithm (proleptic Gregorian).
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The archive's files by path.
    fn files(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let mut files = BTreeMap::new();
        for entry in tar::Archive::new(archive).entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let path = entry.path().expect("path").display().to_string();
            let mut data = Vec::new();
            io::Read::read_to_end(&mut entry, &mut data).expect("read");
            files.insert(path, data);
        }
        files
    }

    #[test]
    fn a_multi_platform_archive_indexes_one_manifest_per_platform() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = |arch: &str, content: &str| {
            let source = dir.path().join(arch);
            fs::write(&source, content).expect("write");
            let mut image = Image::new("localhost/x:1", 0, ImageConfig::default());
            image
                .set_architecture(arch)
                .add_file("/bin/x", &source, 0o755)
                .expect("file");
            image
        };
        let images = [image("amd64", "x86 code"), image("arm64", "arm code")];
        let out = dir.path().join("index.tar");
        let written = write_index_archive(&images, &out).expect("write");
        let again = write_index_archive(&images, &dir.path().join("again.tar")).expect("again");
        assert_eq!(written, again);
        assert_eq!(
            fs::read(&out).expect("read"),
            fs::read(dir.path().join("again.tar")).expect("read")
        );

        let all = files(&fs::read(&out).expect("read"));
        let json = |path: &str| -> Value {
            serde_json::from_slice(&all[path]).unwrap_or_else(|e| panic!("{path}: {e}"))
        };
        let top = json("index.json");
        let pointer = &top["manifests"][0];
        assert_eq!(top["manifests"].as_array().map(Vec::len), Some(1));
        assert_eq!(
            pointer["mediaType"],
            "application/vnd.oci.image.index.v1+json"
        );
        assert_eq!(pointer["digest"], written.manifest_digest.as_str());
        assert_eq!(
            pointer["annotations"][ANNOTATION_CONTAINERD_NAME],
            "localhost/x:1"
        );
        let index = json(&blob_path(&written.manifest_digest));
        let manifests = index["manifests"].as_array().expect("manifests");
        assert_eq!(manifests.len(), 2);
        for (desc, (arch, content)) in manifests
            .iter()
            .zip([("amd64", "x86 code"), ("arm64", "arm code")])
        {
            assert_eq!(desc["platform"]["architecture"], arch);
            assert_eq!(desc["platform"]["os"], "linux");
            let manifest = json(&blob_path(desc["digest"].as_str().expect("digest")));
            let config = json(&blob_path(
                manifest["config"]["digest"].as_str().expect("config"),
            ));
            assert_eq!(config["architecture"], arch);
            let layer = &all[&blob_path(manifest["layers"][0]["digest"].as_str().expect("layer"))];
            assert_eq!(files(layer)["bin/x"], content.as_bytes());
        }
        assert_eq!(
            written
                .platforms
                .iter()
                .map(|(a, _)| a.as_str())
                .collect::<Vec<_>>(),
            ["amd64", "arm64"]
        );

        // One image per platform, one reference.
        assert!(write_index_archive(&[image("arm64", "a"), image("arm64", "b")], &out).is_err());
        let other = Image::new("localhost/y:1", 0, ImageConfig::default());
        assert!(write_index_archive(&[image("amd64", "a"), other], &out).is_err());
        assert!(write_index_archive(&[], &out).is_err());
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn paths_must_be_absolute_and_normal() {
        for bad in ["", "/", "rel", "/a/../b", "/a//b", "/./a"] {
            assert!(normal_key(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(normal_key("/a/b/").expect("normal"), "a/b");
    }

    #[test]
    fn parents_are_added_and_sorted_before_children() {
        let mut image = Image::new("localhost/x:1", 0, ImageConfig::default());
        image.add_dir("/tmp", 0o1777).expect("dir");
        image
            .add_file("/lib/x86_64-linux-gnu/libc.so.6", "/nonexistent", 0o755)
            .expect("file");
        image.add_dir("/lib-extra", 0o755).expect("dir");
        let paths: Vec<String> = image.paths().collect();
        assert_eq!(
            paths,
            [
                "/lib",
                "/lib-extra",
                "/lib/x86_64-linux-gnu",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/tmp"
            ]
        );
        assert_eq!(image.tag(), "1");
        assert_eq!(
            Image::new("localhost:5000/x", 0, ImageConfig::default()).tag(),
            "latest"
        );
    }

    #[test]
    fn symlinks_are_stored_with_their_target() {
        let mut image = Image::new("localhost/x:1", 7, ImageConfig::default());
        image
            .add_file("/bin/busybox", "/proc/self/exe", 0o755)
            .expect("file");
        image.add_symlink("/bin/sh", "busybox").expect("link");
        assert!(image.add_symlink("/bin/x", "").is_err());
        let layer = image.layer().expect("layer");
        let mut archive = tar::Archive::new(layer.as_slice());
        let links: Vec<(String, String, u64)> = archive
            .entries()
            .expect("entries")
            .map(|e| e.expect("entry"))
            .filter(|e| e.header().entry_type() == tar::EntryType::Symlink)
            .map(|e| {
                let path = e.path().expect("path").display().to_string();
                let target = e.link_name().expect("link").expect("target");
                (
                    path,
                    target.display().to_string(),
                    e.header().mtime().expect("mtime"),
                )
            })
            .collect();
        assert_eq!(links, [("bin/sh".to_owned(), "busybox".to_owned(), 7)]);
    }

    #[test]
    fn documents_are_the_same_bytes_whatever_the_map_order() {
        // oci-spec holds labels in a HashMap: each build iterates them in another order.
        let config = ImageConfig {
            entrypoint: vec!["/x".into()],
            labels: (0..32)
                .map(|i| (format!("label.{i:02}"), i.to_string()))
                .collect(),
            ..ImageConfig::default()
        };
        let image = Image::new("localhost/x:1", 0, config);
        let first = image.config_json("sha256:00").expect("config");
        for _ in 0..8 {
            assert_eq!(image.config_json("sha256:00").expect("config"), first);
        }
        let text = String::from_utf8(first).expect("utf-8");
        let at = |k: &str| {
            text.find(k)
                .unwrap_or_else(|| panic!("{k} missing in {text}"))
        };
        assert!(at("\"label.00\"") < at("\"label.01\"") && at("\"label.30\"") < at("\"label.31\""));
        assert!(at("\"architecture\"") < at("\"config\"") && at("\"created\"") < at("\"rootfs\""));
    }

    #[test]
    fn a_missing_source_names_the_file() {
        let mut image = Image::new("localhost/x:1", 0, ImageConfig::default());
        image
            .add_file("/f", "/nonexistent/pidmap-file", 0o644)
            .expect("file");
        let dir = tempfile::tempdir().expect("tempdir");
        let err = image
            .write_archive(&dir.path().join("x.tar"))
            .expect_err("must fail");
        assert!(
            err.to_string().contains("/nonexistent/pidmap-file"),
            "{err}"
        );
    }
}
