//! The resource kinds: what a role declares (`[[package]]`) and what a
//! catalog carries, one file per kind, and the one registry that lists them.
//!
//! Each kind's file holds its spec (the fields a role writes), its catalog
//! type, its validation and its resolution, and implements [`Kind`]. The
//! [`registry!`] invocation below is the only list of kinds: it declares the
//! kinds' modules and generates [`ResourceKind`] (the catalog's tagged
//! enum), [`Spec`], [`ResourceType`], [`RESOURCE_TYPES`] and every match
//! over them. Every generated match is exhaustive, so a kind added to the
//! registry must be handled everywhere a match over kinds is written (in
//! `cms-modules`, its provider). A kind file is part of the crate only
//! through its registry line (which declares its module), and its
//! `impl Kind` needs the [`Named`] that line gives it: the name is written
//! once, and there is no list that can drift from a match.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

mod drain;
mod edit;
mod fields;
mod resolve;
mod systemd_fields;

pub(crate) use drain::check_drain;
pub use drain::{DRAIN_TIMEOUT_DEFAULT, Drain};
pub use edit::{EditSpec, EditedFile, KeyEdit};
pub use fields::{DurationError, Ensure, Mode, Seconds, parse_duration};
pub(crate) use fields::{check_name, check_path};
pub use resolve::{Problems, Resolver};
pub use systemd_fields::{UNIT_DIRECTORY, calendar_problem, dropin_path};

/// The name of a kind, as role files write it (`[[java_app]]`) and
/// references start (`java_app:api`). Implemented by [`registry!`] only, so
/// that the name is written once.
pub trait Named {
    const NAME: &'static str;
}

/// One resource kind, implemented by its catalog type.
pub trait Kind: Named + Sized {
    /// The fields as a role declares them; the catalog type itself when
    /// resolving changes nothing but checks.
    type Spec: DeserializeOwned + Clone + PartialEq + fmt::Debug;

    /// Whether the name part of its reference is a path (`file:/etc/x`):
    /// such resources are what a purging directory keeps.
    const PATH_NAMED: bool;

    /// Whether it does something when notified (restarts, runs).
    const REFRESHABLE: bool;

    /// Fields used as written, never rendered, even when they hold `{{`.
    const LITERAL_FIELDS: &'static [&'static str] = &[];

    /// Fields besides the name (or path) that land where anyone may read
    /// them on the instance (a unit file, a process's command line), so
    /// that no secret may be rendered into them.
    const PUBLIC_FIELDS: &'static [&'static str] = &[];

    /// The name part of its reference: a name, or a path for path-named
    /// kinds.
    fn name(&self) -> &str;

    /// Checks a declaration and turns it into the catalog resource, adding
    /// what it refers to (files, rendered templates) to the catalog's
    /// contents. Every problem goes to `cx.problems` with the field it is
    /// about; a resource with any problem is left out of the catalog.
    fn resolve(spec: Self::Spec, cx: &mut Resolver<'_>) -> Option<Self>;

    /// A short summary of what the resource asks for, for `cms-server
    /// check` (`" ensure=present"`); empty when the reference says it all.
    fn summary(&self) -> String;

    /// The path of the file it edits in place (`line`, `ini`, ...): such a
    /// file may not also be a `file` resource nor edited by another.
    fn edited_path(&self) -> Option<&str> {
        None
    }

    /// The files it writes whole itself (a drop-in, a unit, a file in
    /// `/etc/sysctl.d`): such a file may not also be a `file` resource nor
    /// another's.
    fn written_files(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Declares the kinds' modules and generates everything that lists kinds.
/// One line per kind: `Variant = "name" => module::CatalogType,`.
macro_rules! registry {
    ($($variant:ident = $name:literal => $module:ident :: $kind:ident,)+) => {
        $(
            mod $module;
            pub use self::$module::*;

            impl Named for $kind {
                const NAME: &'static str = $name;
            }
        )+

        /// The type of a resource, without its fields.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ResourceType {
            $($variant,)+
        }

        impl ResourceType {
            /// Every type, in registry order.
            pub const ALL: &'static [ResourceType] = &[$(ResourceType::$variant,)+];

            /// As role files and references write it.
            pub fn name(self) -> &'static str {
                match self {
                    $(ResourceType::$variant => <$kind as Named>::NAME,)+
                }
            }

            /// See [`Kind::PATH_NAMED`].
            pub fn path_named(self) -> bool {
                match self {
                    $(ResourceType::$variant => <$kind as Kind>::PATH_NAMED,)+
                }
            }

            /// See [`Kind::REFRESHABLE`].
            pub fn refreshable(self) -> bool {
                match self {
                    $(ResourceType::$variant => <$kind as Kind>::REFRESHABLE,)+
                }
            }

            /// See [`Kind::LITERAL_FIELDS`].
            pub fn literal_fields(self) -> &'static [&'static str] {
                match self {
                    $(ResourceType::$variant => <$kind as Kind>::LITERAL_FIELDS,)+
                }
            }

            /// See [`Kind::PUBLIC_FIELDS`].
            pub fn public_fields(self) -> &'static [&'static str] {
                match self {
                    $(ResourceType::$variant => <$kind as Kind>::PUBLIC_FIELDS,)+
                }
            }
        }

        /// The resource types, as named in role files (`[[package]]`) and
        /// references (`package:nginx`).
        pub const RESOURCE_TYPES: &[&str] = &[$($name,)+];

        /// A resolved resource of a catalog, tagged with its type.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type")]
        // A catalog holds tens to thousands of these, once: boxing the largest
        // variant would save little and change every match on it.
        #[allow(clippy::large_enum_variant)]
        pub enum ResourceKind {
            $(
                #[serde(rename = $name)]
                $variant($kind),
            )+
        }

        impl ResourceKind {
            pub fn resource_type(&self) -> ResourceType {
                match self {
                    $(ResourceKind::$variant(_) => ResourceType::$variant,)+
                }
            }

            /// The name part of the reference: the path for path-named types.
            pub fn name(&self) -> &str {
                match self {
                    $(ResourceKind::$variant(resource) => Kind::name(resource),)+
                }
            }

            /// See [`Kind::summary`].
            pub fn summary(&self) -> String {
                match self {
                    $(ResourceKind::$variant(resource) => Kind::summary(resource),)+
                }
            }

            /// See [`Kind::written_files`].
            pub fn written_files(&self) -> Vec<String> {
                match self {
                    $(ResourceKind::$variant(resource) => Kind::written_files(resource),)+
                }
            }

            /// See [`Kind::edited_path`].
            pub fn edited_path(&self) -> Option<&str> {
                match self {
                    $(ResourceKind::$variant(resource) => Kind::edited_path(resource),)+
                }
            }
        }

        /// A typed resource as a role declares it.
        #[derive(Debug, Clone, PartialEq)]
        // A role holds a few of these, once: boxing the largest variant
        // would save little and change every match on it.
        #[allow(clippy::large_enum_variant)]
        pub enum Spec {
            $($variant(<$kind as Kind>::Spec),)+
        }

        impl Spec {
            /// Deserializes the fields of a resource of `resource_type`.
            pub fn deserialize<'de, D>(
                resource_type: ResourceType,
                deserializer: D,
            ) -> Result<Spec, D::Error>
            where
                D: serde::Deserializer<'de>,
            {
                Ok(match resource_type {
                    $(ResourceType::$variant => Spec::$variant(
                        <<$kind as Kind>::Spec as Deserialize>::deserialize(deserializer)?,
                    ),)+
                })
            }

            /// See [`Kind::resolve`].
            pub fn resolve(self, cx: &mut Resolver<'_>) -> Option<ResourceKind> {
                match self {
                    $(Spec::$variant(spec) => {
                        <$kind as Kind>::resolve(spec, cx).map(ResourceKind::$variant)
                    })+
                }
            }
        }
    };
}

registry! {
    Package = "package" => package::Package,
    File = "file" => file::File,
    Directory = "directory" => directory::Directory,
    Symlink = "symlink" => symlink::Symlink,
    Service = "service" => service::Service,
    User = "user" => user::User,
    Group = "group" => group::Group,
    Exec = "exec" => exec::Exec,
    Repository = "repository" => repository::PackageRepository,
    JavaApp = "java_app" => java_app::JavaApp,
    Line = "line" => line::Line,
    Ini = "ini" => ini::Ini,
    Properties = "properties" => properties::Properties,
    Json = "json" => json::Json,
    Yaml = "yaml" => yaml::Yaml,
    SystemdTimer = "systemd_timer" => systemd_timer::SystemdTimer,
    SystemdDropin = "systemd_dropin" => systemd_dropin::SystemdDropin,
    Mount = "mount" => mount::Mount,
    Limits = "limits" => limits::ResourceLimits,
    Sysctl = "sysctl" => sysctl::Sysctl,
    KernelModule = "kernel_module" => kernel_module::KernelModule,
    AuthorizedKeys = "authorized_keys" => authorized_keys::AuthorizedKeys,
    JavaTruststore = "java_truststore" => java_truststore::JavaTruststore,
}

impl ResourceType {
    /// The type named `name`, if there is one.
    pub fn from_name(name: &str) -> Option<ResourceType> {
        ResourceType::ALL.iter().copied().find(|t| t.name() == name)
    }

    /// The refreshable types in words, `service, exec or java_app`, for
    /// messages that say what may be notified.
    pub fn refreshable_names() -> String {
        let names: Vec<&str> = ResourceType::ALL
            .iter()
            .filter(|t| t.refreshable())
            .map(|t| t.name())
            .collect();
        match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            Some((last, _)) => last.to_string(),
            None => String::new(),
        }
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl ResourceKind {
    pub fn type_name(&self) -> &'static str {
        self.resource_type().name()
    }

    /// `type:name`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.type_name(), self.name())
    }
}

/// Types whose name in a reference is a path.
pub fn is_path_type(type_name: &str) -> bool {
    ResourceType::from_name(type_name).is_some_and(ResourceType::path_named)
}

/// Types that do something when notified.
pub fn is_refreshable_type(type_name: &str) -> bool {
    ResourceType::from_name(type_name).is_some_and(ResourceType::refreshable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_lists_each_type_once_under_the_name_its_tag_uses() {
        for (resource_type, name) in ResourceType::ALL.iter().zip(RESOURCE_TYPES) {
            assert_eq!(resource_type.name(), *name);
            assert_eq!(ResourceType::from_name(name), Some(*resource_type));
        }
        assert_eq!(ResourceType::ALL.len(), RESOURCE_TYPES.len());
        let package = ResourceKind::Package(Package {
            name: "nginx".into(),
            ensure: PackageEnsure::Present,
            hold: Some(false),
        });
        let json = serde_json::to_string(&package).expect("serializes");
        assert_eq!(
            json,
            r#"{"type":"package","name":"nginx","ensure":"present"}"#
        );
        assert_eq!(
            ResourceType::refreshable_names(),
            "service, exec or java_app"
        );
    }
}
