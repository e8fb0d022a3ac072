//! `limits`: a user's limits in `/etc/security/limits.d/NAME.conf`, or a
//! unit's in a drop-in (`UNIT.d/limits-NAME.conf`, then daemon-reload);
//! the texts are `ResourceLimits::file_text`'s, the file a
//! [`GeneratedFile`].

use cms_roles::{Ensure, ResourceLimits};

use crate::systemd::GeneratedFile;

/// The provider of limits: their file.
pub fn limits_provider(limits: &ResourceLimits) -> GeneratedFile {
    let text = (limits.ensure == Ensure::Present).then(|| limits.file_text());
    GeneratedFile::new(limits.path(), text)
}
