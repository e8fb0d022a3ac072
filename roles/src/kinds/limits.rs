//! `limits`: how many open files (`nofile`) and processes (`nproc`) a user
//! or a unit may have. For a `user`, `/etc/security/limits.d/NAME.conf`
//! (pam_limits, read at each login); for a `unit`, a drop-in
//! `/etc/systemd/system/UNIT.d/limits-NAME.conf` with `LimitNOFILE=` and
//! `LimitNPROC=` (read when the unit starts: notify its service).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::systemd_fields::{check_unit_name, dropin_path};
use super::{Ensure, Kind, Resolver, check_name};

/// One side of a limit: a count or no limit at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LimitValue {
    Count(u64),
    Unlimited,
}

impl LimitValue {
    /// As limits.conf writes it.
    fn pam(self) -> String {
        match self {
            LimitValue::Count(count) => count.to_string(),
            LimitValue::Unlimited => "unlimited".into(),
        }
    }

    /// As a unit's `Limit…=` writes it.
    fn systemd(self) -> String {
        match self {
            LimitValue::Count(count) => count.to_string(),
            LimitValue::Unlimited => "infinity".into(),
        }
    }
}

impl Serialize for LimitValue {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            LimitValue::Count(count) => serializer.serialize_u64(*count),
            LimitValue::Unlimited => serializer.serialize_str("unlimited"),
        }
    }
}

/// What a limit may be written as, for messages.
const LIMIT_FORMS: &str = "a number, \"unlimited\", or { soft = 1024, hard = 65536 }";

impl<'de> Deserialize<'de> for LimitValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LimitVisitor).and_then(|limit| {
            if limit.soft == limit.hard {
                Ok(limit.soft)
            } else {
                Err(serde::de::Error::custom("expected one value, not soft and hard"))
            }
        })
    }
}

/// A soft and a hard limit; a role may write one value for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limit {
    pub soft: LimitValue,
    pub hard: LimitValue,
}

struct LimitVisitor;

impl<'de> serde::de::Visitor<'de> for LimitVisitor {
    type Value = Limit;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(LIMIT_FORMS)
    }
    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Limit, E> {
        Ok(Limit {
            soft: LimitValue::Count(value),
            hard: LimitValue::Count(value),
        })
    }
    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Limit, E> {
        u64::try_from(value)
            .map_err(|_| E::custom(format!("limit {value} is negative: write {LIMIT_FORMS}")))
            .and_then(|value| self.visit_u64(value))
    }
    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Limit, E> {
        if matches!(text, "unlimited" | "infinity") {
            Ok(Limit {
                soft: LimitValue::Unlimited,
                hard: LimitValue::Unlimited,
            })
        } else if let Ok(value) = text.parse::<u64>() {
            self.visit_u64(value)
        } else {
            Err(E::custom(format!(
                "invalid limit `{text}`: write {LIMIT_FORMS}"
            )))
        }
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Limit, A::Error> {
        let (mut soft, mut hard) = (None, None);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "soft" => soft = Some(map.next_value::<LimitValue>()?),
                "hard" => hard = Some(map.next_value::<LimitValue>()?),
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "unknown key `{other}` in a limit: write {LIMIT_FORMS}"
                    )));
                }
            }
        }
        match (soft, hard) {
            (Some(soft), Some(hard)) => Ok(Limit { soft, hard }),
            _ => Err(serde::de::Error::custom(format!(
                "a limit table needs both `soft` and `hard`: write {LIMIT_FORMS}"
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LimitVisitor)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceLimits {
    /// Names the file: `limits.d/NAME.conf`, or `UNIT.d/limits-NAME.conf`.
    pub name: String,
    #[serde(default)]
    pub ensure: Ensure,
    /// A user, `@group` or `*`, for logins (pam_limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A unit, for its processes (`LimitNOFILE=`, `LimitNPROC=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Open files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nofile: Option<Limit>,
    /// Processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nproc: Option<Limit>,
}

impl ResourceLimits {
    /// The file it owns.
    pub fn path(&self) -> String {
        match &self.unit {
            Some(unit) => dropin_path(unit, &format!("limits-{}", self.name)),
            None => format!("/etc/security/limits.d/{}.conf", self.name),
        }
    }

    /// The text of that file.
    pub fn file_text(&self) -> String {
        let mut text = format!(
            "# Written by cms for limits {}; local changes are overwritten.\n",
            self.name
        );
        let items = [("nofile", "NOFILE", self.nofile), ("nproc", "NPROC", self.nproc)];
        match (&self.unit, &self.user) {
            (Some(_), _) => {
                text.push_str("[Service]\n");
                for (_, setting, limit) in items {
                    if let Some(limit) = limit {
                        text.push_str(&format!(
                            "Limit{setting}={}:{}\n",
                            limit.soft.systemd(),
                            limit.hard.systemd()
                        ));
                    }
                }
            }
            (None, user) => {
                let user = user.as_deref().unwrap_or("*");
                for (item, _, limit) in items {
                    if let Some(limit) = limit {
                        text.push_str(&format!("{user} soft {item} {}\n", limit.soft.pam()));
                        text.push_str(&format!("{user} hard {item} {}\n", limit.hard.pam()));
                    }
                }
            }
        }
        text
    }
}

impl Kind for ResourceLimits {
    type Spec = ResourceLimits;
    const PATH_NAMED: bool = false;
    const REFRESHABLE: bool = false;

    fn name(&self) -> &str {
        &self.name
    }

    fn resolve(spec: ResourceLimits, cx: &mut Resolver<'_>) -> Option<ResourceLimits> {
        check_name(&spec.name, &mut cx.problems);
        if !spec
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
        {
            cx.problems.push((
                "name",
                format!("name `{}` names a file: use letters, digits and `-_.@`", spec.name),
            ));
        }
        match (&spec.user, &spec.unit) {
            (Some(_), Some(_)) => cx.problems.push((
                "unit",
                "limits are for a `user` or for a `unit`, not both: declare two resources".into(),
            )),
            (None, None) => cx.problems.push((
                "name",
                "limits need a `user` (a login, `@group` or `*`) or a `unit` (e.g. \"nginx.service\")".into(),
            )),
            (Some(user), None) => {
                let name = user.strip_prefix('@').unwrap_or(user);
                if user != "*"
                    && (name.is_empty()
                        || !name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
                {
                    cx.problems.push((
                        "user",
                        format!("user `{user}` is not a user name, `@group` or `*`"),
                    ));
                }
            }
            (None, Some(unit)) => check_unit_name(unit, "unit", true, &mut cx.problems),
        }
        if spec.ensure == Ensure::Present && spec.nofile.is_none() && spec.nproc.is_none() {
            cx.problems.push((
                "name",
                "limits need `nofile` or `nproc`, e.g. nofile = 65536".into(),
            ));
        }
        for (field, limit) in [("nofile", spec.nofile), ("nproc", spec.nproc)] {
            if let Some(limit) = limit
                && limit.soft > limit.hard
            {
                cx.problems.push((
                    field,
                    format!(
                        "{field}: the soft limit {} is above the hard limit {}; the soft limit may be at most the hard one",
                        limit.soft.pam(),
                        limit.hard.pam()
                    ),
                ));
            }
        }
        Some(spec)
    }

    fn summary(&self) -> String {
        let mut text = format!(" ensure={:?}", self.ensure).to_lowercase();
        if let Some(limit) = self.nofile {
            text.push_str(&format!(" nofile={}:{}", limit.soft.pam(), limit.hard.pam()));
        }
        if let Some(limit) = self.nproc {
            text.push_str(&format!(" nproc={}:{}", limit.soft.pam(), limit.hard.pam()));
        }
        text
    }

    fn written_files(&self) -> Vec<String> {
        vec![self.path()]
    }
}
