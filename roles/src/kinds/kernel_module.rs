//! `kernel_module`: a kernel module loaded now and at every boot
//! (`/etc/modules-load.d`), or unloaded and kept from loading
//! (`/etc/modprobe.d`).

use serde::{Deserialize, Serialize};

use super::{Kind, Resolver};

/// Whether a module is loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleEnsure {
    #[default]
    Loaded,
    Absent,
}

/// A kernel module as a role declares it and a catalog carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelModule {
    pub name: String,
    #[serde(default)]
    pub ensure: ModuleEnsure,
}

impl KernelModule {
    /// The name as `/proc/modules` and `/sys/module` write it: the kernel
    /// reads `-` and `_` alike and shows `_`.
    pub fn kernel_name(&self) -> String {
        self.name.replace('-', "_")
    }

    /// The file that loads it at boot.
    pub fn load_path(&self) -> String {
        format!("/etc/modules-load.d/{}.conf", self.name)
    }

    /// The file that keeps it from loading.
    pub fn blacklist_path(&self) -> String {
        format!("/etc/modprobe.d/cms-blacklist-{}.conf", self.name)
    }
}

impl Kind for KernelModule {
    type Spec = KernelModule;
    const PATH_NAMED: bool = false;
    const REFRESHABLE: bool = false;

    fn name(&self) -> &str {
        &self.name
    }

    fn resolve(spec: KernelModule, cx: &mut Resolver<'_>) -> Option<KernelModule> {
        let valid = !spec.name.is_empty()
            && spec
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            cx.problems.push((
                "name",
                format!(
                    "invalid kernel module name `{}`: write the module's name as modprobe takes it (letters, digits, `_` and `-`, e.g. br_netfilter), without a path or `.ko`",
                    spec.name
                ),
            ));
        }
        Some(spec)
    }

    fn summary(&self) -> String {
        match self.ensure {
            ModuleEnsure::Loaded => " ensure=loaded".into(),
            ModuleEnsure::Absent => " ensure=absent".into(),
        }
    }

    fn written_files(&self) -> Vec<String> {
        vec![self.load_path(), self.blacklist_path()]
    }
}
