//! `kernel_module`: a kernel module loaded now and at boot, or unloaded
//! and kept from loading.
//!
//! - `check` reads `/proc/modules` (the loaded modules; a kernel without
//!   loadable modules has none) and `/sys/module` (a module built into the
//!   kernel has a folder there and no `initstate`; it counts as loaded and
//!   cannot be unloaded).
//! - `ensure = "loaded"`: `modprobe NAME` when it is not loaded, then
//!   `/etc/modules-load.d/NAME.conf` (part `load`), and no blacklist file.
//! - `ensure = "absent"`: `modprobe -r NAME` when it is loaded, then
//!   `/etc/modprobe.d/cms-blacklist-NAME.conf` (part `blacklist`:
//!   `blacklist NAME` keeps aliases from loading it, `install NAME
//!   /bin/false` keeps `modprobe` from loading it by name), and no load
//!   file.
//! - The running state changes first and the files only once it did, as
//!   `sysctl` does. A container has no `CAP_SYS_MODULE`: there a module the
//!   host has not loaded fails with a message saying so.

use std::time::Duration;

use cms_roles::{KernelModule, ModuleEnsure};

use crate::parts::{GeneratedFile, Ownership};
use crate::{Change, CommandSpec, Context, HostError, Provider, ProviderError};

const LOAD: &str = "load";
const BLACKLIST: &str = "blacklist";

pub struct KernelModuleProvider<'a>(pub &'a KernelModule);

/// Where a module is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Loaded,
    BuiltIn,
    NotLoaded,
}

impl Provider for KernelModuleProvider<'_> {
    fn packages(&self) -> Vec<String> {
        Vec::new()
    }

    fn refreshed_by(&self, _changes: &[Change]) -> bool {
        false
    }

    fn check(&self, cx: &Context<'_>) -> Result<Vec<Change>, ProviderError> {
        let module = self.0;
        let state = self.state(cx)?;
        let mut changes = Vec::new();
        match (module.ensure, state) {
            (ModuleEnsure::Loaded, State::NotLoaded) => {
                changes.push(Change::new("state", "not loaded", "loaded"))
            }
            (ModuleEnsure::Absent, State::Loaded) => {
                changes.push(Change::new("state", "loaded", "absent"))
            }
            (ModuleEnsure::Absent, State::BuiltIn) => {
                return Err(ProviderError::Failed(format!(
                    "Failed to unload kernel module {}: it is built into the kernel (/sys/module/{} without initstate) and cannot be unloaded; remove this resource, or disable it on the kernel command line",
                    module.name,
                    module.kernel_name()
                )));
            }
            _ => {}
        }
        let (load, blacklist) = self.files();
        changes.extend(load.check(LOAD, cx)?);
        changes.extend(blacklist.check(BLACKLIST, cx)?);
        Ok(changes)
    }

    fn apply(&self, changes: &[Change], cx: &Context<'_>) -> Result<(), ProviderError> {
        if changes.iter().any(|c| c.attribute == "state") {
            match self.0.ensure {
                ModuleEnsure::Loaded => self.modprobe(&[], cx)?,
                ModuleEnsure::Absent => self.modprobe(&["-r"], cx)?,
            }
        }
        let (load, blacklist) = self.files();
        load.apply(LOAD, changes, cx)?;
        blacklist.apply(BLACKLIST, changes, cx)?;
        Ok(())
    }
}

impl KernelModuleProvider<'_> {
    /// The load file and the blacklist file, each present or absent.
    fn files(&self) -> (GeneratedFile, GeneratedFile) {
        let module = self.0;
        let header = format!(
            "# Managed by cms (kernel_module:{}); changes here are replaced.\n",
            module.name
        );
        let file = |path: String, text: String| {
            GeneratedFile::present(
                path,
                format!("{header}{text}").into_bytes(),
                Ownership {
                    mode: Some(0o644),
                    ..Ownership::default()
                },
            )
        };
        match module.ensure {
            ModuleEnsure::Loaded => (
                file(module.load_path(), format!("{}\n", module.name)),
                GeneratedFile::absent(module.blacklist_path()),
            ),
            ModuleEnsure::Absent => (
                GeneratedFile::absent(module.load_path()),
                file(
                    module.blacklist_path(),
                    format!("blacklist {0}\ninstall {0} /bin/false\n", module.name),
                ),
            ),
        }
    }

    fn state(&self, cx: &Context<'_>) -> Result<State, ProviderError> {
        let kernel_name = self.0.kernel_name();
        // A kernel without loadable modules has no /proc/modules: only
        // built-in ones, in /sys/module.
        let modules = match cx.host.status("/proc/modules")? {
            Some(_) => String::from_utf8_lossy(&cx.host.read_file("/proc/modules")?).into_owned(),
            None => String::new(),
        };
        if modules
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .any(|name| name == kernel_name)
        {
            return Ok(State::Loaded);
        }
        let folder = format!("/sys/module/{kernel_name}");
        if cx.host.is_directory(&folder)
            && cx.host.status(&format!("{folder}/initstate"))?.is_none()
        {
            return Ok(State::BuiltIn);
        }
        Ok(State::NotLoaded)
    }

    fn modprobe(&self, options: &[&str], cx: &Context<'_>) -> Result<(), ProviderError> {
        let name = &self.0.name;
        let action = if options.is_empty() { "load" } else { "unload" };
        let mut argv = vec!["modprobe"];
        argv.extend_from_slice(options);
        argv.push(name);
        let spec = CommandSpec::new(argv.clone()).timeout(Duration::from_secs(60));
        let output = match cx.host.run(&spec) {
            Ok(output) => output,
            Err(HostError::Spawn { source, .. }) => {
                return Err(ProviderError::Failed(format!(
                    "Failed to {action} kernel module {name}: modprobe could not run ({source}); install the kmod package"
                )));
            }
            Err(error) => return Err(error.into()),
        };
        if output.success() {
            return Ok(());
        }
        Err(ProviderError::Failed(format!(
            "Failed to {action} kernel module {name}: `{}` exited with {}: {}; a container (no CAP_SYS_MODULE) cannot {action} modules: do it on the host, where the module must exist for its kernel (`modinfo {name}`)",
            argv.join(" "),
            output
                .code
                .map_or("a signal".to_string(), |code| format!("status {code}")),
            output.tail(3),
        )))
    }
}
