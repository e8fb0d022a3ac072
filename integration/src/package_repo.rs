//! The internal package repository: a flat apt repository (`Packages` and
//! `Release` beside the `.deb` files) that tests fill with small packages
//! built by `dpkg-deb` and with real Debian packages fetched by
//! `apt-get download`. [`crate::Testbed::serve_package_repo`] serves it on
//! the bridge; baked images name it as their only apt source, trusted
//! without a signature (`[trusted=yes]`): the repository is not signed.
//!
//! The index is rebuilt after every added package, so the repository is
//! always consistent, also while it is being served.

use crate::Image;
use crate::filesystem::{ScratchDirectory, write_file_atomically, write_file_with_mode};
use crate::host_command::{DEFAULT_COMMAND_TIMEOUT, host_tool, run_command_successfully};
use crate::settings::TestbedSettings;
use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A package for a test to build: its control fields and its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebPackageSpec {
    pub name: String,
    pub version: String,
    /// `all` for packages without machine code.
    pub architecture: String,
    pub description: String,
    /// Entries of the `Depends:` field, e.g. `adduser (>= 3.11)`.
    pub depends: Vec<String>,
    pub files: Vec<DebPackageFile>,
}

/// A file a built package installs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebPackageFile {
    /// Absolute path on the instance, e.g. `/usr/bin/hello-cms`.
    pub path: PathBuf,
    pub contents: Vec<u8>,
    pub mode: u32,
}

impl DebPackageSpec {
    /// A package of architecture `all` without dependencies or files.
    pub fn new(name: &str, version: &str) -> DebPackageSpec {
        DebPackageSpec {
            name: name.to_string(),
            version: version.to_string(),
            architecture: "all".to_string(),
            description: format!("{name}, a package built by the cms testbed"),
            depends: Vec::new(),
            files: Vec::new(),
        }
    }

    pub fn with_file(
        mut self,
        path: &str,
        contents: impl Into<Vec<u8>>,
        mode: u32,
    ) -> DebPackageSpec {
        self.files.push(DebPackageFile {
            path: PathBuf::from(path),
            contents: contents.into(),
            mode,
        });
        self
    }

    pub fn with_dependency(mut self, dependency: &str) -> DebPackageSpec {
        self.depends.push(dependency.to_string());
        self
    }

    fn control_file(&self) -> String {
        let mut control = format!(
            "Package: {}\nVersion: {}\nArchitecture: {}\nMaintainer: cms testbed <testbed@cms.invalid>\n",
            self.name, self.version, self.architecture
        );
        if !self.depends.is_empty() {
            control.push_str(&format!("Depends: {}\n", self.depends.join(", ")));
        }
        control.push_str(&format!("Description: {}\n", self.description));
        control
    }
}

/// The internal package repository's directory and contents.
#[derive(Debug)]
pub struct PackageRepo {
    directory: Arc<ScratchDirectory>,
    settings: TestbedSettings,
    package_files: Vec<PathBuf>,
}

impl PackageRepo {
    /// An empty repository (with an empty, valid index) in a new scratch
    /// directory.
    pub fn create(settings: &TestbedSettings) -> Result<PackageRepo> {
        crate::check_prerequisites()?;
        let directory = ScratchDirectory::create(&settings.scratch_directory(), "repo")?;
        let repo = PackageRepo {
            directory: Arc::new(directory),
            settings: settings.clone(),
            package_files: Vec::new(),
        };
        repo.rebuild_index()?;
        Ok(repo)
    }

    /// The directory the repository is served from.
    pub fn directory(&self) -> &Path {
        self.directory.path()
    }

    /// The `.deb` files added so far.
    pub fn package_files(&self) -> &[PathBuf] {
        &self.package_files
    }

    /// Copies a `.deb` file into the repository.
    pub fn add_deb_file(&mut self, deb_file: &Path) -> Result<PathBuf> {
        let file_name = deb_file
            .file_name()
            .with_context(|| format!("Failed to add {}: not a file name", deb_file.display()))?;
        let destination = self.directory().join(file_name);
        std::fs::copy(deb_file, &destination).with_context(|| {
            format!(
                "Failed to copy {} into the package repository",
                deb_file.display()
            )
        })?;
        self.added(destination)
    }

    /// Builds a package with `dpkg-deb --build` and adds it.
    pub fn build_package(&mut self, spec: &DebPackageSpec) -> Result<PathBuf> {
        let staging = ScratchDirectory::create(&self.settings.scratch_directory(), "deb-build")?;
        let control_path = staging.path().join("DEBIAN/control");
        write_file_with_mode(&control_path, spec.control_file().as_bytes(), 0o644)?;
        for file in &spec.files {
            let Ok(relative_path) = file.path.strip_prefix("/") else {
                bail!(
                    "Failed to build package {}: file path {} is not absolute",
                    spec.name,
                    file.path.display()
                );
            };
            write_file_with_mode(
                &staging.path().join(relative_path),
                &file.contents,
                file.mode,
            )?;
        }
        let deb_file = self.directory().join(format!(
            "{}_{}_{}.deb",
            spec.name, spec.version, spec.architecture
        ));
        let mut build = host_tool("dpkg-deb");
        build
            .args(["--root-owner-group", "--build"])
            .arg(staging.path())
            .arg(&deb_file);
        run_command_successfully(build, DEFAULT_COMMAND_TIMEOUT)
            .with_context(|| format!("Failed to build package {}", spec.name))?;
        self.added(deb_file)
    }

    /// Downloads a real Debian package with the host's `apt-get download`
    /// (from the host's apt sources, so the host's package lists must be
    /// current) and adds it. Its dependencies are not fetched.
    pub fn download_debian_package(&mut self, package_name: &str) -> Result<PathBuf> {
        let download = ScratchDirectory::create(&self.settings.scratch_directory(), "download")?;
        let mut apt_get = host_tool("apt-get");
        apt_get
            .args(["download", "--quiet", package_name])
            .current_dir(download.path());
        run_command_successfully(apt_get, DEFAULT_COMMAND_TIMEOUT).with_context(|| {
            format!(
                "Failed to download Debian package {package_name}\n\
                 hint: run `apt-get update` on the host so that its package lists are current"
            )
        })?;
        let downloaded: Vec<PathBuf> = std::fs::read_dir(download.path())
            .context("Failed to list the downloaded package")?
            .map(|entry| entry.map(|entry| entry.path()))
            .collect::<std::io::Result<_>>()
            .context("Failed to list the downloaded package")?;
        let [deb_file] = downloaded.as_slice() else {
            bail!(
                "Failed to download Debian package {package_name}: expected one .deb file, found \
                 {downloaded:?}"
            );
        };
        self.add_deb_file(deb_file)
    }

    /// Downloads real Debian packages with every dependency that `image`
    /// lacks, as the host's apt resolves them against the image's own dpkg
    /// status (`apt-get install --download-only`), and adds them all. This
    /// is how a test gets, say, nginx into the internal repository without
    /// fetching the whole of Debian.
    ///
    /// What one set of names downloads for one image is kept under the
    /// cache directory (`debs/<first 16 hex digits of the sha256 of the
    /// image's dpkg status and the names>`), so the next test adds the same
    /// files without the network.
    pub fn download_with_dependencies(
        &mut self,
        image: &Image,
        package_names: &[&str],
    ) -> Result<Vec<PathBuf>> {
        let status = image.root_directory().join("var/lib/dpkg/status");
        let mut key = Sha256::new();
        key.update(
            std::fs::read(&status)
                .with_context(|| format!("Failed to read {}", status.display()))?,
        );
        for name in package_names {
            key.update(b"\0");
            key.update(name.as_bytes());
        }
        let key: String = key.finalize()[..8]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        let cached = self.settings.cache_directory().join("debs").join(key);
        if !cached.is_dir() {
            let parent = cached.parent().context("the cache has a parent")?;
            std::fs::create_dir_all(parent)
                .with_context(|| format!("Failed to create {}", parent.display()))?;
            // Complete or absent: filled aside, then renamed into place.
            let staging =
                tempfile::tempdir_in(parent).context("Failed to stage the package cache")?;
            self.download_into(image, package_names, staging.path())?;
            let staging = staging.keep();
            if let Err(error) = std::fs::rename(&staging, &cached) {
                // Another test cached the same download meanwhile.
                let _ = std::fs::remove_dir_all(&staging);
                if !cached.is_dir() {
                    return Err(error).context("Failed to cache the downloaded packages");
                }
            }
        }
        let mut added = Vec::new();
        let mut debs: Vec<PathBuf> = std::fs::read_dir(&cached)
            .with_context(|| format!("Failed to list {}", cached.display()))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|extension| extension == "deb"))
            .collect();
        debs.sort();
        for deb in debs {
            let target = self
                .directory()
                .join(deb.file_name().context("a .deb has a name")?);
            std::fs::copy(&deb, &target)
                .with_context(|| format!("Failed to copy {}", deb.display()))?;
            if !self.package_files.contains(&target) {
                self.package_files.push(target.clone());
            }
            added.push(target);
        }
        self.rebuild_index()?;
        Ok(added)
    }

    /// `apt-get install --download-only` in a scratch folder; moves the
    /// downloaded files into `into`.
    fn download_into(&self, image: &Image, package_names: &[&str], into: &Path) -> Result<()> {
        let download = ScratchDirectory::create(&self.settings.scratch_directory(), "download")?;
        let archives = download.path().join("archives");
        std::fs::create_dir_all(archives.join("partial"))
            .context("Failed to create the download folder")?;
        let status = image.root_directory().join("var/lib/dpkg/status");
        let mut apt_get = host_tool("apt-get");
        apt_get
            .args([
                "install",
                "--download-only",
                "--no-install-recommends",
                "--yes",
                "--quiet",
            ])
            .arg("-o")
            .arg(format!("Dir::State::Status={}", status.display()))
            .arg("-o")
            .arg(format!("Dir::Cache::Archives={}", archives.display()))
            .arg("-o")
            .arg("Debug::NoLocking=true")
            .args(package_names)
            .env("DEBIAN_FRONTEND", "noninteractive");
        run_command_successfully(apt_get, DEFAULT_COMMAND_TIMEOUT).with_context(|| {
            format!(
                "Failed to download Debian packages {package_names:?} with their dependencies\n\
                 hint: run `apt-get update` on the host so that its package lists are current"
            )
        })?;
        let mut debs: Vec<PathBuf> = std::fs::read_dir(&archives)
            .context("Failed to list the downloaded packages")?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|extension| extension == "deb"))
            .collect();
        debs.sort();
        for deb in debs {
            let target = into.join(deb.file_name().context("a .deb has a name")?);
            std::fs::rename(&deb, &target)
                .or_else(|_| std::fs::copy(&deb, &target).map(drop))
                .with_context(|| format!("Failed to keep {}", deb.display()))?;
        }
        Ok(())
    }

    fn added(&mut self, deb_file: PathBuf) -> Result<PathBuf> {
        if !self.package_files.contains(&deb_file) {
            self.package_files.push(deb_file.clone());
        }
        self.rebuild_index()?;
        Ok(deb_file)
    }

    /// Writes `Packages` with `dpkg-scanpackages`, then `Release` with its
    /// SHA-256, each atomically, the index before the file naming its hash.
    fn rebuild_index(&self) -> Result<()> {
        let mut scan = host_tool("dpkg-scanpackages");
        scan.args(["--multiversion", ".", "/dev/null"])
            .current_dir(self.directory());
        let packages = run_command_successfully(scan, DEFAULT_COMMAND_TIMEOUT)
            .context("Failed to index the package repository")?
            .stdout;
        write_file_atomically(&self.directory().join("Packages"), packages.as_bytes())?;
        write_file_atomically(
            &self.directory().join("Release"),
            release_file(packages.as_bytes()).as_bytes(),
        )
    }

    pub(crate) fn shared_directory(&self) -> Arc<ScratchDirectory> {
        Arc::clone(&self.directory)
    }
}

/// The `Release` file of a flat repository whose only index is `Packages`.
fn release_file(packages: &[u8]) -> String {
    let digest: String = Sha256::digest(packages)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!(
        "Origin: cms-testbed\nLabel: cms testbed internal package repository\n\
         SHA256:\n {digest} {} Packages\n",
        packages.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_files_carry_the_fields_dpkg_needs() {
        let spec = DebPackageSpec::new("hello-cms", "1.0")
            .with_dependency("adduser")
            .with_file("/usr/bin/hello-cms", "#!/bin/sh\necho hello\n", 0o755);
        assert_eq!(
            spec.control_file(),
            "Package: hello-cms\nVersion: 1.0\nArchitecture: all\n\
             Maintainer: cms testbed <testbed@cms.invalid>\nDepends: adduser\n\
             Description: hello-cms, a package built by the cms testbed\n"
        );
    }

    #[test]
    fn the_release_file_lists_the_index_with_its_hash_and_size() {
        assert_eq!(
            release_file(b""),
            "Origin: cms-testbed\nLabel: cms testbed internal package repository\nSHA256:\n \
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 0 Packages\n"
        );
    }
}
