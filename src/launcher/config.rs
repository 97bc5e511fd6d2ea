//! Validation of `unionfs run`'s arguments into a [`RunConfig`].
//!
//! Only syntax is checked here, so every check runs without root and before
//! anything is created. Checks that need the filesystem (layers and volume
//! sources that must exist) run in `container` before the first mount.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::args::RunArgs;
use super::capabilities::{self, Capabilities, CapabilityError};
use super::cgroup::{self, CgroupError, Limits};
use super::user::{self, UserSpec};
use crate::options::{self, LayerSpec, OptionsError};

/// `PATH` when `-e PATH=...` is not given, as Docker sets it.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Maximum length of a host name (`HOST_NAME_MAX` on Linux).
const MAX_HOSTNAME: usize = 64;

/// Maximum length of a container name; the cgroup directory is named after it.
const MAX_NAME: usize = 64;

/// The container's network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// A new network namespace with only `lo`, brought up.
    None,
    /// The host's network namespace.
    Host,
}

/// A bind mount of a host path into the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// Absolute path on the host.
    pub host: PathBuf,
    /// Absolute path inside the container, resolved inside its root.
    pub container: PathBuf,
    pub read_only: bool,
}

/// A validated `unionfs run` request.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The container id: 64 hex digits from the launcher, any text in tests.
    pub id: String,
    pub name: String,
    /// LAYERS as given, passed on to `unionfs mount` unchanged.
    pub layers: String,
    pub layer_specs: Vec<LayerSpec>,
    pub command: Vec<OsString>,
    pub hostname: String,
    /// `KEY=VALUE` entries, later ones overriding earlier ones with the same key.
    pub env: Vec<(String, OsString)>,
    pub workdir: PathBuf,
    pub user: UserSpec,
    /// `--user` as given, recorded for `unionfs exec`.
    pub user_text: Option<String>,
    pub volumes: Vec<Volume>,
    pub limits: Limits,
    pub network: Network,
    pub tty: bool,
    pub interactive: bool,
    pub remove: bool,
    pub capabilities: Capabilities,
    pub stop_timeout: Duration,
    /// `-d`: run in the background under a monitor process.
    pub detach: bool,
}

impl RunConfig {
    /// Returns the writable container layer, when the top layer is writable.
    pub fn container_layer(&self) -> Option<&Path> {
        self.layer_specs
            .first()
            .filter(|layer| layer.writable)
            .map(|layer| layer.path.as_path())
    }
}

/// An invalid `unionfs run` argument. Each message names the value and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid LAYERS: {0}")]
    Layers(#[from] OptionsError),
    #[error(
        "invalid container name {0:?}: use 1 to {MAX_NAME} letters, digits, '_', '.' or '-', starting with a letter or digit"
    )]
    Name(String),
    #[error("invalid --hostname {0:?}: use 1 to {MAX_HOSTNAME} letters, digits, '-' or '.'")]
    Hostname(String),
    #[error("invalid --env {0:?}: write KEY=VALUE, or KEY to copy it from this environment")]
    Env(String),
    #[error(
        "invalid --volume {0:?}: write HOST:CONTAINER or HOST:CONTAINER:ro, with an absolute CONTAINER path other than /"
    )]
    Volume(String),
    #[error("invalid --volume mode {mode:?} in {value:?}: use ro or rw")]
    VolumeMode { value: String, mode: String },
    #[error("invalid --workdir {0:?}: give an absolute path inside the container")]
    Workdir(PathBuf),
    #[error("invalid --net {0:?}: use none or host")]
    Network(String),
    #[error(transparent)]
    User(#[from] user::UserError),
    #[error(transparent)]
    Capability(#[from] CapabilityError),
    #[error(transparent)]
    Memory(CgroupError),
    #[error(transparent)]
    Limits(CgroupError),
    #[error("invalid container path {path:?} in --volume {value:?}: remove the '..' components")]
    VolumeParent { value: String, path: PathBuf },
}

impl RunConfig {
    /// Validates `args` for the container `id`. Without `--name`, the name
    /// is the id's first 12 characters, as Docker shows short ids.
    pub fn from_args(args: RunArgs, id: String) -> Result<RunConfig, ConfigError> {
        let layer_specs = options::parse_layers(&args.layers)?;
        let name = match &args.name {
            Some(name) => name.clone(),
            None => id.chars().take(12).collect(),
        };
        check_name(&name)?;
        let hostname = args.hostname.clone().unwrap_or_else(|| name.clone());
        check_hostname(&hostname)?;
        let workdir = args.workdir.clone().unwrap_or_else(|| PathBuf::from("/"));
        if !workdir.is_absolute() {
            return Err(ConfigError::Workdir(workdir));
        }
        let mut env = default_env(&hostname, args.tty);
        for entry in &args.env {
            if let Some((key, value)) = parse_env(entry)? {
                set_env(&mut env, key, value);
            }
        }
        let volumes = args
            .volume
            .iter()
            .map(|value| parse_volume(value))
            .collect::<Result<Vec<_>, _>>()?;
        let user = match &args.user {
            Some(text) => UserSpec::parse(text)?,
            None => UserSpec::root(),
        };
        let network = match args.net.as_str() {
            "none" => Network::None,
            "host" => Network::Host,
            other => return Err(ConfigError::Network(other.to_string())),
        };
        let capabilities = capabilities::resolve(&args.cap_add, &args.cap_drop)?;
        let limits = parse_limits(&args)?;
        Ok(RunConfig {
            id,
            name,
            layers: args.layers,
            layer_specs,
            command: args.command,
            hostname,
            env,
            workdir,
            user,
            user_text: args.user.clone(),
            volumes,
            limits,
            network,
            tty: args.tty,
            interactive: args.interactive,
            remove: args.rm,
            capabilities,
            stop_timeout: Duration::from_secs(args.stop_timeout),
            detach: args.detach,
        })
    }
}

fn check_name(name: &str) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(())
    } else {
        Err(ConfigError::Name(name.to_string()))
    }
}

fn check_hostname(hostname: &str) -> Result<(), ConfigError> {
    let valid = !hostname.is_empty()
        && hostname.len() <= MAX_HOSTNAME
        && hostname
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'));
    if valid {
        Ok(())
    } else {
        Err(ConfigError::Hostname(hostname.to_string()))
    }
}

/// Returns the environment a container starts with: `PATH`, `HOSTNAME`, and
/// `TERM=xterm` with a terminal. `HOME` is added from the user's passwd
/// entry when the container starts, unless `-e HOME=` sets it.
fn default_env(hostname: &str, tty: bool) -> Vec<(String, OsString)> {
    let mut env = vec![
        ("PATH".to_string(), OsString::from(DEFAULT_PATH)),
        ("HOSTNAME".to_string(), OsString::from(hostname)),
    ];
    if tty {
        env.push(("TERM".to_string(), OsString::from("xterm")));
    }
    env
}

/// Parses `KEY=VALUE`, or `KEY` alone, which takes the value from this
/// process's environment and is skipped when unset there (as Docker does).
pub fn parse_env(entry: &str) -> Result<Option<(String, OsString)>, ConfigError> {
    let (key, value) = match entry.split_once('=') {
        Some((key, value)) => (key, Some(OsString::from(value))),
        None => (entry, None),
    };
    if key.is_empty()
        || key.contains('\0')
        || value
            .as_ref()
            .is_some_and(|v| v.to_string_lossy().contains('\0'))
    {
        return Err(ConfigError::Env(entry.to_string()));
    }
    let value = match value {
        Some(value) => value,
        None => match std::env::var_os(key) {
            Some(value) => value,
            None => return Ok(None),
        },
    };
    Ok(Some((key.to_string(), value)))
}

/// Sets `key` in `env`, replacing an earlier value.
pub fn set_env(env: &mut Vec<(String, OsString)>, key: String, value: OsString) {
    match env.iter_mut().find(|(existing, _)| *existing == key) {
        Some(entry) => entry.1 = value,
        None => env.push((key, value)),
    }
}

/// Formats `env` as the `KEY=VALUE` strings that `execve` takes.
pub fn env_strings(env: &[(String, OsString)]) -> Vec<OsString> {
    env.iter()
        .map(|(key, value)| {
            let mut entry = OsString::from(key).into_vec();
            entry.push(b'=');
            entry.extend_from_slice(value.as_encoded_bytes());
            OsString::from_vec(entry)
        })
        .collect()
}

/// Parses `HOST:CONTAINER[:ro|rw]`. A relative HOST is taken from the
/// current directory.
fn parse_volume(value: &str) -> Result<Volume, ConfigError> {
    let parts: Vec<&str> = value.split(':').collect();
    let (host, container, mode) = match parts.as_slice() {
        [host, container] => (*host, *container, None),
        [host, container, mode] => (*host, *container, Some(*mode)),
        _ => return Err(ConfigError::Volume(value.to_string())),
    };
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(mode) => {
            return Err(ConfigError::VolumeMode {
                value: value.to_string(),
                mode: mode.to_string(),
            });
        }
    };
    let container = PathBuf::from(container);
    if host.is_empty() || !container.is_absolute() || container == Path::new("/") {
        return Err(ConfigError::Volume(value.to_string()));
    }
    if container.components().any(|c| c == Component::ParentDir) {
        return Err(ConfigError::VolumeParent {
            value: value.to_string(),
            path: container,
        });
    }
    let host = std::path::absolute(host).map_err(|_| ConfigError::Volume(value.to_string()))?;
    Ok(Volume {
        host,
        container,
        read_only,
    })
}

/// The smallest `--memory` accepted, as Docker's: below it the container's
/// first process is killed before the command starts.
const MIN_MEMORY: u64 = 6 << 20;

/// Parses `--memory`. A size below [`MIN_MEMORY`] is rejected here, with
/// the text as given, because `Limits::validate` only gets the bytes.
fn parse_memory_limit(text: &str) -> Result<u64, ConfigError> {
    let bytes = cgroup::parse_memory(text).map_err(ConfigError::Memory)?;
    if bytes < MIN_MEMORY {
        return Err(ConfigError::Memory(CgroupError::InvalidLimit {
            option: "--memory",
            value: text.to_string(),
            reason: "the limit must be at least 6m".to_string(),
        }));
    }
    Ok(bytes)
}

fn parse_limits(args: &RunArgs) -> Result<Limits, ConfigError> {
    let memory = match &args.memory {
        Some(text) => Some(parse_memory_limit(text)?),
        None => None,
    };
    let limits = Limits {
        memory,
        cpus: args.cpus,
        cpu_shares: args.cpu_shares,
        cpuset_cpus: args.cpuset_cpus.clone(),
        pids: args.pids_limit,
    };
    limits.validate().map_err(ConfigError::Limits)?;
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(layers: &str) -> RunArgs {
        RunArgs {
            layers: layers.to_string(),
            command: vec![OsString::from("true")],
            net: "none".to_string(),
            stop_timeout: 10,
            ..RunArgs::default()
        }
    }

    fn config(args: RunArgs) -> Result<RunConfig, ConfigError> {
        RunConfig::from_args(args, "abc123".to_string())
    }

    #[test]
    fn defaults() {
        let config = config(args("/c:/i")).unwrap();
        assert_eq!(config.name, "abc123");
        assert_eq!(config.hostname, "abc123");
        assert_eq!(config.workdir, PathBuf::from("/"));
        assert_eq!(config.network, Network::None);
        assert_eq!(config.container_layer(), Some(Path::new("/c")));
        assert_eq!(
            env_strings(&config.env),
            [
                OsString::from(format!("PATH={DEFAULT_PATH}")),
                OsString::from("HOSTNAME=abc123")
            ]
        );
        assert_eq!(config.limits.memory, None);
        assert!(!config.remove);
    }

    #[test]
    fn env_overrides_and_tty_term() {
        let mut run = args("/c");
        run.tty = true;
        run.env = vec!["PATH=/bin".into(), "A=1=2".into(), "EMPTY=".into()];
        let config = config(run).unwrap();
        let env = env_strings(&config.env);
        assert!(env.contains(&OsString::from("PATH=/bin")));
        assert!(env.contains(&OsString::from("A=1=2")));
        assert!(env.contains(&OsString::from("EMPTY=")));
        assert!(env.contains(&OsString::from("TERM=xterm")));
        assert_eq!(
            env.iter()
                .filter(|e| e.to_string_lossy().starts_with("PATH="))
                .count(),
            1
        );
    }

    #[test]
    fn env_key_alone_unset_skipped() {
        let mut run = args("/c");
        run.env = vec!["UNIONFS_TEST_SURELY_UNSET_VARIABLE".into()];
        let config = config(run).unwrap();
        assert_eq!(config.env.len(), 2);
    }

    #[test]
    fn volumes_parse() {
        let mut run = args("/c");
        run.volume = vec!["/data:/mnt/data:ro".into(), "/src:/src".into()];
        let config = config(run).unwrap();
        assert_eq!(
            config.volumes,
            [
                Volume {
                    host: "/data".into(),
                    container: "/mnt/data".into(),
                    read_only: true
                },
                Volume {
                    host: "/src".into(),
                    container: "/src".into(),
                    read_only: false
                },
            ]
        );
    }

    #[test]
    fn memory_parse() {
        let mut run = args("/c");
        run.memory = Some("100m".into());
        assert_eq!(config(run).unwrap().limits.memory, Some(100 << 20));
    }

    /// Each case changes one argument and lists fragments the message must contain.
    #[test]
    fn invalid_arguments() {
        type Change = fn(&mut RunArgs);
        let cases: &[(Change, &[&str])] = &[
            (|a| a.layers = String::new(), &["LAYERS is empty"]),
            (
                |a| a.memory = Some("10x".into()),
                &["memory size", "\"10x\""],
            ),
            (|a| a.memory = Some("100k".into()), &["100k", "at least 6m"]),
            (|a| a.name = Some("-bad".into()), &["\"-bad\"", "letters"]),
            (|a| a.name = Some("a/b".into()), &["\"a/b\""]),
            (|a| a.hostname = Some("a b".into()), &["--hostname \"a b\""]),
            (|a| a.hostname = Some("x".repeat(65)), &["--hostname", "64"]),
            (
                |a| a.env = vec!["=1".into()],
                &["--env \"=1\"", "KEY=VALUE"],
            ),
            (
                |a| a.volume = vec!["/a".into()],
                &["--volume \"/a\"", "HOST:CONTAINER"],
            ),
            (
                |a| a.volume = vec!["/a:rel".into()],
                &["\"/a:rel\"", "absolute"],
            ),
            (|a| a.volume = vec!["/a:/".into()], &["\"/a:/\""]),
            (
                |a| a.volume = vec!["/a:/b:rx".into()],
                &["mode \"rx\"", "ro or rw"],
            ),
            (|a| a.volume = vec!["/a:/b/../c".into()], &["'..'"]),
            (
                |a| a.workdir = Some("rel".into()),
                &["--workdir \"rel\"", "absolute"],
            ),
            (
                |a| a.net = "bridge".into(),
                &["--net \"bridge\"", "none or host"],
            ),
            (|a| a.cpus = Some(0.0), &["--cpus value 0", "0.01"]),
            (|a| a.cpus = Some(f64::NAN), &["--cpus value NaN"]),
            (
                |a| a.cpu_shares = Some(1),
                &["--cpu-shares value 1", "2 and 262144"],
            ),
            (|a| a.pids_limit = Some(0), &["--pids-limit value 0"]),
            (|a| a.memory = Some("0b".into()), &["--memory value 0b"]),
            (|a| a.memory = Some("0m".into()), &["--memory value 0m"]),
            (
                |a| a.cpuset_cpus = Some("0-x".into()),
                &["--cpuset-cpus value 0-x"],
            ),
            (|a| a.user = Some("".into()), &["--user"]),
            (|a| a.cap_add = vec!["NOT_A_CAP".into()], &["NOT_A_CAP"]),
        ];
        for (change, fragments) in cases {
            let mut run = args("/c:/i");
            change(&mut run);
            let message = config(run).unwrap_err().to_string();
            for fragment in *fragments {
                assert!(
                    message.contains(fragment),
                    "{fragment:?} not in {message:?}"
                );
            }
        }
    }
}
