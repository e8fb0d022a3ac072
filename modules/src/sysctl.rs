//! `sysctl`: a kernel parameter's running value (`/proc/sys/...`) and its
//! persisted one (`/etc/sysctl.d/90-cms-NAME.conf`, one file per
//! parameter, so that no two resources share a file and removing one
//! removes only its own).
//!
//! - `check` reads `/proc/sys` and compares values field by field (the
//!   kernel separates fields by tabs, a role by spaces), and checks the
//!   persisted file as a `file` resource would (`persisted: content`).
//! - `apply` writes the running value first and persists it only once the
//!   kernel took it, so that a value the kernel refuses is never applied
//!   at the next boot. A read-only parameter (in a container, everything
//!   outside its own namespaces, such as `kernel.*`) fails with a message
//!   saying so.
//! - `ensure = "absent"` removes the persisted file; the running value
//!   stays until the next boot.

use cms_roles::{Ensure, Sysctl};
use nix::errno::Errno;

use crate::parts::{GeneratedFile, Ownership};
use crate::{Change, Context, HostError, Provider, ProviderError};

const PERSISTED: &str = "persisted";

pub struct SysctlProvider<'a>(pub &'a Sysctl);

impl Provider for SysctlProvider<'_> {
    fn packages(&self) -> Vec<String> {
        Vec::new()
    }

    fn refreshed_by(&self, _changes: &[Change]) -> bool {
        false
    }

    fn check(&self, cx: &Context<'_>) -> Result<Vec<Change>, ProviderError> {
        let mut changes = Vec::new();
        if let (Ensure::Present, Some(wanted)) = (self.0.ensure, &self.0.value) {
            let running = self.running_value(cx)?;
            if normalized(&running) != normalized(&wanted.0) {
                changes.push(Change::new(
                    "value",
                    normalized(&running),
                    normalized(&wanted.0),
                ));
            }
        }
        changes.extend(self.persisted().check(PERSISTED, cx)?);
        Ok(changes)
    }

    fn apply(&self, changes: &[Change], cx: &Context<'_>) -> Result<(), ProviderError> {
        if let Some(value) = &self.0.value
            && changes.iter().any(|c| c.attribute == "value")
        {
            self.write_running_value(&normalized(&value.0), cx)?;
        }
        self.persisted().apply(PERSISTED, changes, cx)?;
        Ok(())
    }
}

impl SysctlProvider<'_> {
    fn persisted(&self) -> GeneratedFile {
        let sysctl = self.0;
        match (&sysctl.value, sysctl.ensure) {
            (Some(value), Ensure::Present) => GeneratedFile::present(
                sysctl.persisted_path(),
                format!(
                    "# Managed by cms (sysctl:{name}); changes here are replaced.\n{name} = {value}\n",
                    name = sysctl.name,
                    value = normalized(&value.0)
                )
                .into_bytes(),
                Ownership {
                    mode: Some(0o644),
                    ..Ownership::default()
                },
            ),
            _ => GeneratedFile::absent(sysctl.persisted_path()),
        }
    }

    fn running_value(&self, cx: &Context<'_>) -> Result<String, ProviderError> {
        let path = self.0.proc_path();
        if cx.host.status(&path)?.is_none() {
            return Err(ProviderError::Failed(format!(
                "Failed to read sysctl {}: {path} does not exist; this kernel has no such parameter (check the name with `sysctl -a`), or the module that provides it is not loaded",
                self.0.name
            )));
        }
        Ok(String::from_utf8_lossy(&cx.host.read_file(&path)?).into_owned())
    }

    fn write_running_value(&self, value: &str, cx: &Context<'_>) -> Result<(), ProviderError> {
        let path = self.0.proc_path();
        let Err(error) = cx
            .host
            .write_existing_file(&path, format!("{value}\n").as_bytes())
        else {
            return Ok(());
        };
        let name = &self.0.name;
        let errno = match &error {
            HostError::Io { source, .. } => source.raw_os_error().map(Errno::from_raw),
            _ => None,
        };
        Err(match errno {
            Some(Errno::EROFS | Errno::EACCES | Errno::EPERM) => ProviderError::Failed(format!(
                "Failed to set sysctl {name} = {value}: {path} is read-only here ({}); in a container only the parameters of its own namespaces (net.*) can be set: set it on the host, or remove this resource",
                crate::error_text(&error)
            )),
            Some(Errno::EINVAL) => ProviderError::Failed(format!(
                "Failed to set sysctl {name} = {value}: the kernel refused the value ({}); write a value {path} accepts",
                crate::error_text(&error)
            )),
            _ => error.into(),
        })
    }
}

/// Fields separated by one space: `/proc` separates them by tabs.
fn normalized(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}
