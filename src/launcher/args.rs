//! The command line of `unionfs run`, with options named as `docker run`
//! names them.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Args;

/// Arguments of `unionfs run [OPTIONS] LAYERS -- COMMAND [ARG...]`.
#[derive(Args, Debug, Default, Clone)]
pub struct RunArgs {
    /// Layer list as for mount, topmost first: the container layer (created
    /// if missing), then image layers, such as ./container:./image
    pub layers: String,

    /// Command to run as PID 1, and its arguments
    #[arg(
        required_unless_present = "image",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<OsString>,

    /// Container name, used for its cgroup and state directory
    /// (default: the first 12 digits of the container id)
    #[arg(long)]
    pub name: Option<String>,

    /// Host name inside the container (default: the container name)
    #[arg(long)]
    pub hostname: Option<String>,

    /// Set an environment variable; KEY alone copies it from this process
    /// (repeatable)
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// Working directory inside the container, created if missing
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,

    /// User and group to run as: numbers, or names from the container's
    /// /etc/passwd and /etc/group
    #[arg(short, long, value_name = "UID[:GID]")]
    pub user: Option<String>,

    /// Bind-mount a host path into the container (repeatable)
    #[arg(short, long = "volume", value_name = "HOST:CONTAINER[:ro]")]
    pub volume: Vec<String>,

    /// Memory limit in bytes, with an optional unit b, k, m, g or t (such as
    /// 100m), at least 6m
    #[arg(short, long, value_name = "BYTES")]
    pub memory: Option<String>,

    /// CPU quota in CPUs, such as 0.5 for half of one CPU
    #[arg(long, value_name = "CPUS")]
    pub cpus: Option<f64>,

    /// Relative CPU weight (cgroup v1 cpu.shares, default 1024)
    #[arg(long, value_name = "SHARES")]
    pub cpu_shares: Option<u64>,

    /// CPUs the container may run on, such as 0-1 or 0,2
    #[arg(long, value_name = "LIST")]
    pub cpuset_cpus: Option<String>,

    /// Maximum number of processes in the container
    #[arg(long, value_name = "COUNT")]
    pub pids_limit: Option<u64>,

    /// Network: none gives a new network namespace with only loopback up;
    /// host shares the host's network
    #[arg(
        long = "net",
        alias = "network",
        value_name = "none|host",
        default_value = "none"
    )]
    pub net: String,

    /// Allocate a pseudo-terminal for the container
    #[arg(short, long)]
    pub tty: bool,

    /// Keep stdin open (without it the container's stdin is /dev/null)
    #[arg(short, long)]
    pub interactive: bool,

    /// Delete the container layer after the container exits
    #[arg(long)]
    pub rm: bool,

    /// Add a capability to the default set, such as SYS_ADMIN, or ALL
    /// (repeatable)
    #[arg(long, value_name = "CAP")]
    pub cap_add: Vec<String>,

    /// Drop a capability from the default set, or ALL (repeatable)
    #[arg(long, value_name = "CAP")]
    pub cap_drop: Vec<String>,

    /// Seconds the container's PID 1 gets to exit after a forwarded SIGINT
    /// or SIGTERM before every process in the container is killed
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub stop_timeout: u64,

    /// Run on an OCI image layout: its layers go under LAYERS, and its
    /// config's Entrypoint, Cmd, Env, WorkingDir and User are defaults
    #[arg(long, value_name = "DIR")]
    pub image: Option<PathBuf>,

    /// Directory where --image unpacks each layer once, by digest
    /// (default: /var/lib/unionfs/layers)
    #[arg(long, value_name = "DIR", requires = "image")]
    pub image_cache: Option<PathBuf>,

    /// Run in the background: print the container id once the command has
    /// started, and keep its stdout and stderr for `unionfs logs`
    #[arg(short, long)]
    pub detach: bool,
}

/// Arguments of `unionfs exec [OPTIONS] CONTAINER -- COMMAND [ARG...]`.
#[derive(Args, Debug, Default, Clone)]
pub struct ExecArgs {
    /// Container id, id prefix or name
    pub container: String,

    /// Command to run in the container, and its arguments
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<OsString>,

    /// Set an environment variable on top of the container's; KEY alone
    /// copies it from this process (repeatable)
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// Working directory inside the container (default: the container's)
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,

    /// User and group to run as (default: the container's)
    #[arg(short, long, value_name = "UID[:GID]")]
    pub user: Option<String>,

    /// Allocate a pseudo-terminal for the command
    #[arg(short, long)]
    pub tty: bool,

    /// Keep stdin open (without it the command's stdin is /dev/null)
    #[arg(short, long)]
    pub interactive: bool,
}

/// Arguments of `unionfs stop [-t SECONDS] CONTAINER...`.
#[derive(Args, Debug, Default, Clone)]
pub struct StopArgs {
    /// Container ids, id prefixes or names
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,

    /// Seconds to wait after SIGTERM before sending SIGKILL
    #[arg(
        short = 't',
        long = "time",
        value_name = "SECONDS",
        default_value_t = 10
    )]
    pub time: u64,
}

/// Arguments of `unionfs rm [-f] CONTAINER...`.
#[derive(Args, Debug, Default, Clone)]
pub struct RmArgs {
    /// Container ids, id prefixes or names
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,

    /// Kill a running container (SIGKILL) and remove it, instead of
    /// rejecting it
    #[arg(short, long)]
    pub force: bool,
}
