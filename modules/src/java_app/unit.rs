//! The systemd unit a `java_app` runs as: `ExecStart` with the heap, JVM
//! options and arguments, the environment, restart policy and limits; and
//! the `-Xmx` option a heap given as a share of memory becomes on this host.
//!
//! Pure functions of the catalog's resource (and the host's memory), so the
//! unit's exact text is tested without a host.

use std::collections::BTreeMap;

use cms_roles::JavaApp;

use crate::systemd::{escape_quoted, exec_word};

/// A heap the host cannot turn into `-Xmx`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeapError {
    #[error("invalid heap percentage `{0}`")]
    InvalidPercentage(String),
    #[error(
        "heap `{0}` is a share of memory, but this host's memory is unknown (no MemTotal in /proc/meminfo)"
    )]
    MemoryUnknown(String),
    #[error("heap `{heap}` of {memory_mb} MiB is less than 1 MiB")]
    LessThanOneMib { heap: String, memory_mb: u64 },
}

/// `-Xmx…` for a heap of `512m`/`2g` or a percentage of `memory_mb`.
pub fn heap_option(heap: &str, memory_mb: Option<u64>) -> Result<String, HeapError> {
    let Some(percent) = heap.strip_suffix('%') else {
        return Ok(format!("-Xmx{heap}"));
    };
    let percent: u64 = percent
        .parse()
        .map_err(|_| HeapError::InvalidPercentage(heap.to_string()))?;
    let memory_mb = memory_mb.ok_or_else(|| HeapError::MemoryUnknown(heap.to_string()))?;
    let megabytes = memory_mb * percent / 100;
    if megabytes == 0 {
        return Err(HeapError::LessThanOneMib {
            heap: heap.to_string(),
            memory_mb,
        });
    }
    Ok(format!("-Xmx{megabytes}m"))
}

/// `MemTotal` of `/proc/meminfo` in whole MiB, as the `memory_mb` fact.
pub fn memory_mb_from_meminfo(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb / 1024)
}

/// The systemd unit of the app. `heap` is the `-Xmx` option, if any.
/// With `environment_file`, the catalog's environment is not written in
/// the unit but read from that file ([`environment_file`]): a sensitive
/// app's values stay out of the world-readable unit.
pub fn unit_file(app: &JavaApp, heap: Option<&str>, environment_file: Option<&str>) -> String {
    let mut out = format!(
        "# Written by cms for java_app {name}; local changes are overwritten.\n\
         [Unit]\n\
         Description=Java application {name} (managed by cms)\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         User={user}\n\
         Group={group}\n\
         WorkingDirectory={home}\n",
        name = app.name,
        user = app.user,
        group = app.group,
        home = app.home,
    );
    let mut environment: BTreeMap<&str, String> = match environment_file {
        Some(_) => BTreeMap::new(),
        None => app
            .environment
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect(),
    };
    if app.config_dir != format!("{}/config", app.home) {
        // Spring Boot finds `config/` of its working directory by itself;
        // elsewhere it is told.
        environment
            .entry("SPRING_CONFIG_ADDITIONAL_LOCATION")
            .or_insert_with(|| format!("file:{}/", app.config_dir));
    }
    for (key, value) in &environment {
        out.push_str(&format!(
            "Environment=\"{key}={}\"\n",
            escape_quoted(value, false)
        ));
    }
    if let Some(path) = environment_file {
        // Read by systemd (as root) at each start, before it drops to the
        // app's user; `%` is a specifier in a path.
        out.push_str(&format!("EnvironmentFile={}\n", path.replace('%', "%%")));
    }
    let mut command = vec![app.java.clone()];
    command.extend(heap.map(str::to_string));
    command.extend(app.jvm_options.iter().cloned());
    command.push("-jar".into());
    command.push(format!("{}/current", app.home));
    command.extend(app.args.iter().cloned());
    let command: Vec<String> = command.iter().map(|arg| exec_word(arg)).collect();
    out.push_str(&format!("ExecStart={}\n", command.join(" ")));
    out.push_str(&format!(
        "Restart={}\nRestartSec={}\n",
        app.restart, app.restart_delay.0
    ));
    // The JVM exits with 143 on SIGTERM: a normal stop.
    out.push_str("SuccessExitStatus=143\nTimeoutStopSec=30\n");
    if let Some(nofile) = app.limits.nofile {
        out.push_str(&format!("LimitNOFILE={nofile}\n"));
    }
    if let Some(nproc) = app.limits.nproc {
        out.push_str(&format!("LimitNPROC={nproc}\n"));
    }
    if let Some(memory) = &app.limits.memory {
        out.push_str(&format!("MemoryMax={}\n", memory.to_ascii_uppercase()));
    }
    out.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    out
}

/// The `EnvironmentFile=` of a sensitive app: one `KEY="value"` line per
/// variable of the catalog's environment, in key order. Inside the double
/// quotes systemd takes `\\`, `\"`, `\$` and `` \` `` as the character
/// itself, keeps newlines, and expands neither variables nor specifiers.
pub fn environment_file(app: &JavaApp) -> String {
    let mut out = format!(
        "# Written by cms for java_app {}; local changes are overwritten.\n",
        app.name
    );
    for (key, value) in &app.environment {
        out.push_str(key);
        out.push_str("=\"");
        for c in value.chars() {
            if matches!(c, '\\' | '"' | '$' | '`') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push_str("\"\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::java_app::tests::app;

    #[test]
    fn the_unit_runs_the_current_release_with_heap_options_environment_and_limits() {
        let unit = unit_file(&app(), Some("-Xmx1024m"), None);
        assert_eq!(
            unit,
            "# Written by cms for java_app orders; local changes are overwritten.\n\
             [Unit]\n\
             Description=Java application orders (managed by cms)\n\
             Wants=network-online.target\n\
             After=network-online.target\n\
             \n\
             [Service]\n\
             Type=simple\n\
             User=orders\n\
             Group=orders\n\
             WorkingDirectory=/opt/orders\n\
             Environment=\"SPRING_PROFILES_ACTIVE=prod\"\n\
             ExecStart=/usr/bin/java -Xmx1024m -XX:+UseG1GC \"-Dgreeting=hello world\" -jar /opt/orders/current --spring.main.banner-mode=off\n\
             Restart=on-failure\n\
             RestartSec=5\n\
             SuccessExitStatus=143\n\
             TimeoutStopSec=30\n\
             LimitNOFILE=65536\n\
             MemoryMax=2G\n\
             \n\
             [Install]\n\
             WantedBy=multi-user.target\n"
        );
    }

    #[test]
    fn unit_words_escape_quotes_specifiers_and_variables() {
        assert_eq!(exec_word("-Dx=100%"), "-Dx=100%%");
        assert_eq!(exec_word("$HOME"), "$$HOME");
        assert_eq!(exec_word("say \"hi\""), "\"say \\\"hi\\\"\"");
        assert_eq!(exec_word(""), "\"\"");
        assert_eq!(exec_word("a;b"), "\"a;b\"");
    }

    #[test]
    fn a_config_folder_outside_the_home_is_given_to_spring() {
        let mut moved = app();
        moved.config_dir = "/etc/orders".into();
        assert!(
            unit_file(&moved, None, None)
                .contains("Environment=\"SPRING_CONFIG_ADDITIONAL_LOCATION=file:/etc/orders/\"\n")
        );
        assert!(!unit_file(&app(), None, None).contains("SPRING_CONFIG"));
    }

    #[test]
    fn a_heap_percentage_is_that_share_of_memory_rounded_down_to_whole_mib() {
        assert_eq!(heap_option("50%", Some(7851)).as_deref(), Ok("-Xmx3925m"));
        assert_eq!(heap_option("60%", Some(4096)).as_deref(), Ok("-Xmx2457m"));
        assert_eq!(heap_option("100%", Some(512)).as_deref(), Ok("-Xmx512m"));
        assert_eq!(heap_option("512m", None).as_deref(), Ok("-Xmx512m"));
        assert!(heap_option("1%", Some(50)).is_err());
        assert!(heap_option("50%", None).is_err());
        assert_eq!(
            memory_mb_from_meminfo("MemTotal:        8039836 kB\nMemFree: 1 kB\n"),
            Some(7851)
        );
        assert_eq!(memory_mb_from_meminfo("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn a_sensitive_apps_environment_goes_to_its_file_and_not_into_the_unit() {
        let mut secret = app();
        secret
            .environment
            .insert("DB_PASSWORD".into(), "s3cr\"et$HOME`x`\\n".into());
        let unit = unit_file(&secret, None, Some("/opt/orders/config/orders.env"));
        assert!(!unit.contains("s3cr"), "{unit}");
        assert!(!unit.contains("Environment=\""), "{unit}");
        assert!(unit.contains("EnvironmentFile=/opt/orders/config/orders.env\n"));
        assert_eq!(
            environment_file(&secret),
            "# Written by cms for java_app orders; local changes are overwritten.\n\
             DB_PASSWORD=\"s3cr\\\"et\\$HOME\\`x\\`\\\\n\"\n\
             SPRING_PROFILES_ACTIVE=\"prod\"\n"
        );
    }
}
