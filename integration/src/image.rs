//! The machine image: a Debian root file system built with `debootstrap`,
//! cached under `<cache>/images/` by a hash of its recipe, and "baked" with
//! the cms agent the way an operations team bakes an AMI.
//!
//! The base image is built once per recipe, atomically: into a temporary
//! directory, renamed into place when complete, under a lock file so that two
//! test processes never build the same image twice. Baking does not touch
//! the base image: it installs the agent's Debian package with `dpkg` inside
//! the image (chrooted, as an image build does: no systemd runs, so the
//! package enables its unit and starts nothing), then writes the agent's
//! configuration and the apt sources. Everything lands in a small layer of
//! its own (the upper directory of an overlay mount that lives in a private
//! mount namespace, so no other process sees it), which instances stack on
//! top of the base (as an overlayfs lower layer, or copied over a full copy).

use crate::filesystem::{ScratchDirectory, remove_tree, write_file_with_mode};
use crate::host_command::{host_tool, run_command_successfully};
use crate::settings::TestbedSettings;
use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bumped whenever the steps that turn a `debootstrap` tree into an image
/// change, so that images built by older steps are not reused.
const IMAGE_STEPS_VERSION: u32 = 1;

/// How long `debootstrap` may take; about a minute is usual.
const DEBOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// What goes into a base image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRecipe {
    /// The Debian release, e.g. `bookworm`.
    pub suite: String,
    /// The `debootstrap` variant, e.g. `minbase`.
    pub variant: String,
    /// Packages installed on top of the variant.
    pub include_packages: Vec<String>,
    /// Units masked in the image. The apt timers are masked by default: at a
    /// random moment they would take the dpkg lock from under a test.
    pub masked_units: Vec<String>,
}

impl ImageRecipe {
    /// Debian 12 minbase with systemd as init, dbus, iproute2 and CA
    /// certificates: the smallest image that boots like a cloud instance.
    pub fn debian_bookworm() -> ImageRecipe {
        ImageRecipe {
            suite: "bookworm".to_string(),
            variant: "minbase".to_string(),
            include_packages: [
                "systemd",
                "systemd-sysv",
                "dbus",
                "iproute2",
                "ca-certificates",
            ]
            .map(str::to_string)
            .to_vec(),
            masked_units: ["apt-daily.timer", "apt-daily-upgrade.timer"]
                .map(str::to_string)
                .to_vec(),
        }
    }

    /// The recipe as text: what the cache key hashes, and what the image
    /// records in `/etc/cms-testbed-image`.
    pub fn canonical_text(&self) -> String {
        format!(
            "cms testbed image, steps version {IMAGE_STEPS_VERSION}\n\
             suite: {}\nvariant: {}\ninclude: {}\nmasked: {}\n",
            self.suite,
            self.variant,
            self.include_packages.join(","),
            self.masked_units.join(",")
        )
    }

    /// The name of the image's cache directory: readable, and unique to the
    /// recipe. The mirror is left out: it changes where the packages come
    /// from, not what the image is.
    pub fn cache_key(&self) -> String {
        let digest = Sha256::digest(self.canonical_text().as_bytes());
        let hex: String = digest
            .iter()
            .take(8)
            .map(|byte| format!("{byte:02x}"))
            .collect();
        format!("debian-{}-{}-{hex}", self.suite, self.variant)
    }
}

/// Whether [`Image::build_or_reuse`] built the image or found it cached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageOrigin {
    /// Built by this call; `duration` is the whole build, debootstrap included.
    BuiltNow { duration: Duration },
    /// Found complete in the cache.
    ReusedFromCache,
}

/// A base image in the cache. Read-only: instances never write to it.
#[derive(Clone, Debug)]
pub struct Image {
    recipe: ImageRecipe,
    directory: PathBuf,
    origin: ImageOrigin,
    settings: TestbedSettings,
}

impl Image {
    /// Returns the cached image for `recipe`, building it first if the cache
    /// has none. Safe to call from several processes at once: one builds,
    /// the others wait for it and reuse its result.
    pub fn build_or_reuse(recipe: &ImageRecipe, settings: &TestbedSettings) -> Result<Image> {
        crate::check_prerequisites()?;
        let images_directory = settings.images_directory();
        std::fs::create_dir_all(&images_directory)
            .with_context(|| format!("Failed to create {}", images_directory.display()))?;
        let key = recipe.cache_key();
        let directory = images_directory.join(&key);
        let image = |origin| Image {
            recipe: recipe.clone(),
            directory: directory.clone(),
            origin,
            settings: settings.clone(),
        };
        // The directory appears only by the rename that completes a build,
        // so its existence means the image is complete.
        if directory.is_dir() {
            return Ok(image(ImageOrigin::ReusedFromCache));
        }

        let lock_path = images_directory.join(format!("{key}.lock"));
        let lock_file = File::create(&lock_path)
            .with_context(|| format!("Failed to open {}", lock_path.display()))?;
        lock_file
            .lock()
            .with_context(|| format!("Failed to lock {}", lock_path.display()))?;
        // Another process may have finished the build while we waited.
        if directory.is_dir() {
            return Ok(image(ImageOrigin::ReusedFromCache));
        }
        let started = Instant::now();
        let building_directory = images_directory.join(format!(".building-{key}"));
        // Only the holder of the lock builds, so a building directory here is
        // the remains of a build that crashed.
        remove_tree(&building_directory)?;
        std::fs::create_dir(&building_directory)
            .with_context(|| format!("Failed to create {}", building_directory.display()))?;
        build_root_file_system(recipe, settings, &building_directory).with_context(|| {
            format!(
                "Failed to build the {} image in {}",
                recipe.suite,
                building_directory.display()
            )
        })?;
        std::fs::rename(&building_directory, &directory).with_context(|| {
            format!(
                "Failed to move the finished image {} to {}",
                building_directory.display(),
                directory.display()
            )
        })?;
        Ok(image(ImageOrigin::BuiltNow {
            duration: started.elapsed(),
        }))
    }

    pub fn recipe(&self) -> &ImageRecipe {
        &self.recipe
    }

    pub fn origin(&self) -> &ImageOrigin {
        &self.origin
    }

    /// The image's root file system.
    pub fn root_directory(&self) -> PathBuf {
        self.directory.join("rootfs")
    }

    /// Bakes the agent into a new image layer: its Debian package installed
    /// with `dpkg -i` chrooted into the image (binary, unit enabled by the
    /// package's postinst, default configuration), then the configuration
    /// files under `/etc/cms/`, and apt sources naming only the internal
    /// package repository (trusted without a signature: `[trusted=yes]`, as
    /// the repository is not signed).
    pub fn bake(&self, bake: &AgentBake) -> Result<BakedImage> {
        let layer = ScratchDirectory::create(&self.settings.scratch_directory(), "bake")?;
        write_bake_layer(&self.root_directory(), layer.path(), bake).with_context(|| {
            format!(
                "Failed to bake {} into an image layer at {}",
                bake.agent_package.display(),
                layer.path().display()
            )
        })?;
        Ok(BakedImage {
            inner: Arc::new(BakedImageInner {
                base: self.clone(),
                layer,
            }),
        })
    }
}

/// What baking adds to an image: the agent's package, and its configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentBake {
    /// The `cms-agent` Debian package built by `scripts/package` on this
    /// host (Debian 12, like the image).
    pub agent_package: PathBuf,
    /// Files written under `/etc/cms/` after the package is installed, as an
    /// image build's provisioner writes them (replacing the package's
    /// defaults).
    pub config_files: Vec<AgentConfigFile>,
}

/// One configuration file of the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfigFile {
    /// A path relative to `/etc/cms/`, without `..`.
    pub relative_path: PathBuf,
    pub contents: String,
}

/// A base image with the agent baked in: what instances boot from. Cloning
/// is cheap; the layer is removed when the last clone (and the last
/// instance booted from it) is gone.
#[derive(Clone, Debug)]
pub struct BakedImage {
    inner: Arc<BakedImageInner>,
}

#[derive(Debug)]
struct BakedImageInner {
    base: Image,
    layer: ScratchDirectory,
}

impl BakedImage {
    pub fn base(&self) -> &Image {
        &self.inner.base
    }

    /// The directory holding only what baking added.
    pub fn layer_directory(&self) -> PathBuf {
        self.inner.layer.path().join(LAYER)
    }
}

fn build_root_file_system(
    recipe: &ImageRecipe,
    settings: &TestbedSettings,
    building_directory: &Path,
) -> Result<()> {
    let root = building_directory.join("rootfs");
    let log_path = building_directory.join("debootstrap.log");
    let mut debootstrap = host_tool("debootstrap");
    debootstrap
        .arg(format!("--variant={}", recipe.variant))
        .arg(format!("--include={}", recipe.include_packages.join(",")))
        .arg(&recipe.suite)
        .arg(&root)
        .arg(&settings.debian_mirror);
    let output = run_command_successfully(debootstrap, DEBOOTSTRAP_TIMEOUT);
    // Keep the log beside the image either way; on failure it is also in
    // the error.
    match output {
        Ok(output) => {
            std::fs::write(&log_path, format!("{}{}", output.stdout, output.stderr))
                .with_context(|| format!("Failed to write {}", log_path.display()))?;
        }
        Err(error) => return Err(error.context("Failed to run debootstrap")),
    }
    prepare_root_for_cloning(recipe, &root)?;
    std::fs::write(root.join("etc/cms-testbed-image"), recipe.canonical_text())
        .context("Failed to record the recipe in the image")?;
    Ok(())
}

/// Makes the tree a template for many instances, as cloud images are:
/// no machine id (each instance gets its own at boot), no downloaded
/// packages, no apt timers racing the tests.
fn prepare_root_for_cloning(recipe: &ImageRecipe, root: &Path) -> Result<()> {
    // An empty /etc/machine-id makes systemd generate one at boot; the dbus
    // copy would otherwise be found first and shared by every instance.
    std::fs::write(root.join("etc/machine-id"), "").context("Failed to empty /etc/machine-id")?;
    let dbus_machine_id = root.join("var/lib/dbus/machine-id");
    if std::fs::symlink_metadata(&dbus_machine_id).is_ok() {
        std::fs::remove_file(&dbus_machine_id)
            .context("Failed to remove /var/lib/dbus/machine-id")?;
    }
    std::os::unix::fs::symlink("/etc/machine-id", &dbus_machine_id)
        .context("Failed to link /var/lib/dbus/machine-id to /etc/machine-id")?;
    std::fs::write(root.join("etc/hostname"), "localhost\n")
        .context("Failed to reset /etc/hostname")?;
    let archives = root.join("var/cache/apt/archives");
    for entry in std::fs::read_dir(&archives)
        .with_context(|| format!("Failed to list {}", archives.display()))?
    {
        let path = entry?.path();
        if path.extension().is_some_and(|extension| extension == "deb") {
            std::fs::remove_file(&path)
                .with_context(|| format!("Failed to remove {}", path.display()))?;
        }
    }
    for unit in &recipe.masked_units {
        let unit_path = root.join("etc/systemd/system").join(unit);
        if std::fs::symlink_metadata(&unit_path).is_ok() {
            std::fs::remove_file(&unit_path)
                .with_context(|| format!("Failed to remove {}", unit_path.display()))?;
        }
        std::os::unix::fs::symlink("/dev/null", &unit_path)
            .with_context(|| format!("Failed to mask {unit}"))?;
        // Also drop the unit from the targets that want it.
        for wants in ["timers.target.wants", "multi-user.target.wants"] {
            let wanted = root.join("etc/systemd/system").join(wants).join(unit);
            if std::fs::symlink_metadata(&wanted).is_ok() {
                std::fs::remove_file(&wanted)
                    .with_context(|| format!("Failed to remove {}", wanted.display()))?;
            }
        }
    }
    Ok(())
}

/// The layer's directory inside the bake's scratch directory; `work/` beside
/// it is the overlay's work directory while the package is installed.
const LAYER: &str = "layer";

/// How long installing the agent's package may take.
const DPKG_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Where the package is put inside the image while dpkg installs it.
const PACKAGE_IN_IMAGE: &str = "tmp/cms-agent.deb";

fn write_bake_layer(base_root: &Path, scratch: &Path, bake: &AgentBake) -> Result<()> {
    let layer = scratch.join(LAYER);
    std::fs::create_dir(&layer).with_context(|| format!("Failed to create {}", layer.display()))?;
    if !bake.agent_package.is_file() {
        bail!(
            "Failed to find the agent's package {}",
            bake.agent_package.display()
        );
    }
    install_package_into_layer(base_root, scratch, &layer, &bake.agent_package)?;
    // Only directories under usr/, etc/ and var/: a top-level `lib` or `bin`
    // directory in this layer would hide the base image's merged-/usr
    // symlinks of the same name.
    for config_file in &bake.config_files {
        let relative_path = checked_relative_path(&config_file.relative_path)?;
        write_file_with_mode(
            &layer.join("etc/cms").join(relative_path),
            config_file.contents.as_bytes(),
            0o644,
        )?;
    }
    // The internal package repository is the image's only apt source. Its
    // address is the testbed's, chosen when a testbed starts, so each
    // instance is given it at boot (`Instance::start`); the image only
    // drops the mirror debootstrap used.
    let sources = "# The internal package repository, the only apt source of this image: \
                   /etc/apt/sources.list.d/internal-package-repository.list, written for each \
                   instance when it boots.\n";
    write_file_with_mode(
        &layer.join("etc/apt/sources.list"),
        sources.as_bytes(),
        0o644,
    )?;
    Ok(())
}

/// Runs `dpkg -i` chrooted into the image with `layer` catching every write:
/// the upper directory of an overlay over the base image, mounted in a
/// private mount namespace (`unshare`), so the mount is seen by no other
/// process and goes away with the command, even if this process dies.
/// Without overlayfs the layer is a full copy of the image instead.
fn install_package_into_layer(
    base_root: &Path,
    scratch: &Path,
    layer: &Path,
    package: &Path,
) -> Result<()> {
    let script = "set -eu\n\
        root=\"$1\"; package=\"$2\"; in_image=\"$3\"\n\
        if [ \"$4\" = overlay ]; then\n\
          mount -t overlay cmstb-bake -o \"lowerdir=$5,upperdir=$6,workdir=$7\" \"$root\"\n\
        fi\n\
        cp \"$package\" \"$root/$in_image\"\n\
        chroot \"$root\" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \\\n\
          DEBIAN_FRONTEND=noninteractive dpkg -i \"/$in_image\"\n\
        rm -f \"$root/$in_image\"\n";
    let mut command = host_tool("unshare");
    command.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        script,
        "bake",
    ]);
    if crate::filesystem::kernel_has_overlayfs() {
        let work = scratch.join("work");
        let merged = scratch.join("merged");
        for directory in [&work, &merged] {
            std::fs::create_dir(directory)
                .with_context(|| format!("Failed to create {}", directory.display()))?;
        }
        let paths = [base_root, layer, &work];
        if let Some(unusable) = paths
            .iter()
            .find(|path| path.to_string_lossy().contains([',', ':']))
        {
            bail!(
                "Failed to mount an overlay: the path {} contains `,` or `:`; choose another \
                 cache directory",
                unusable.display()
            );
        }
        command
            .arg(&merged)
            .arg(package)
            .arg(PACKAGE_IN_IMAGE)
            .arg("overlay")
            .arg(base_root)
            .arg(layer)
            .arg(&work);
        let result = run_command_successfully(command, DPKG_TIMEOUT);
        remove_tree(&work)?;
        remove_tree(&merged)?;
        result.context("Failed to install the agent's package with dpkg inside the image")?;
    } else {
        let mut copy = host_tool("cp");
        copy.args(["-a", "--reflink=auto"])
            .arg(base_root.join("."))
            .arg(layer);
        run_command_successfully(copy, DEBOOTSTRAP_TIMEOUT)?;
        command
            .arg(layer)
            .arg(package)
            .arg(PACKAGE_IN_IMAGE)
            .arg("copy");
        run_command_successfully(command, DPKG_TIMEOUT)
            .context("Failed to install the agent's package with dpkg inside the image")?;
    }
    Ok(())
}

/// `relative_path` if it stays inside the directory it is relative to.
fn checked_relative_path(relative_path: &Path) -> Result<&Path> {
    let stays_inside = relative_path
        .components()
        .all(|component| matches!(component, Component::Normal(_)));
    if !stays_inside || relative_path.as_os_str().is_empty() {
        bail!(
            "Failed to place agent configuration file {}: it must be a relative path inside \
             /etc/cms without `..`",
            relative_path.display()
        );
    }
    Ok(relative_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_key_names_the_release_and_changes_with_the_recipe() {
        let bookworm = ImageRecipe::debian_bookworm();
        let key = bookworm.cache_key();
        assert!(key.starts_with("debian-bookworm-minbase-"), "{key}");
        assert_eq!(key, ImageRecipe::debian_bookworm().cache_key());
        let mut with_java = bookworm.clone();
        with_java
            .include_packages
            .push("openjdk-17-jre-headless".to_string());
        assert_ne!(with_java.cache_key(), key);
    }

    #[test]
    fn config_files_cannot_escape_etc_cms() {
        for escaping in ["../passwd", "/etc/passwd", "", "a/../../b"] {
            assert!(
                checked_relative_path(Path::new(escaping)).is_err(),
                "{escaping}"
            );
        }
        assert!(checked_relative_path(Path::new("agent.toml")).is_ok());
        assert!(checked_relative_path(Path::new("tls/ca.pem")).is_ok());
    }
}
