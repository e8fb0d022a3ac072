//! `systemd_dropin`: a drop-in file of a unit (`UNIT.d/NAME.conf`), its
//! folder created when missing, systemd reloaded when it changed
//! ([`GeneratedFile`]). A service it changes learns of it through `notify`.

use cms_roles::SystemdDropin;

use crate::systemd::GeneratedFile;

/// The provider of a drop-in: its file, with the text the catalog carries.
pub fn dropin_provider(dropin: &SystemdDropin) -> GeneratedFile {
    GeneratedFile::new(dropin.path(), dropin.content.clone())
}
