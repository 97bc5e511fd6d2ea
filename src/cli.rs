//! Command-line interface.
//!
//! Besides its subcommands, `unionfs` takes the bare form that mount(8)'s
//! `mount.fuse3` helper and podman's `mount_program` use:
//! `unionfs [SOURCE] MOUNTPOINT -o OPTIONS`, where SOURCE is a layer list,
//! or only a name when `-o lowerdir=` lists the layers.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::logging;
use crate::mount::{self, MountRequest};
use crate::options;

#[derive(Parser, Debug)]
#[command(
    name = "unionfs",
    version,
    about = "Union filesystem (FUSE) that stacks image layers like kernel overlayfs",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    mount: MountArgs,

    /// Layer list (or, with -o lowerdir=, a name for the mount); with only
    /// one path given, that path is the mountpoint
    source: Option<String>,

    /// Directory to mount on
    mountpoint: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mount a layer stack: LAYERS is topmost first, colon-separated; each
    /// entry may end in =rw or =ro (default: first writable, rest read-only)
    #[command(allow_missing_positional = true)]
    Mount {
        /// Layer list such as ./container:./image2:./image1; leave it out
        /// when -o lowerdir= names the layers
        layers: Option<String>,
        /// Directory to mount on
        mountpoint: PathBuf,
        #[command(flatten)]
        args: MountArgs,
    },
    /// Unmount a unionfs mount and wait for its daemon to exit
    Umount {
        /// Mountpoint to unmount
        mountpoint: PathBuf,
        /// Detach the mount even while files in it are in use
        #[arg(short, long)]
        lazy: bool,
        /// Seconds to wait for the daemon to exit
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Run COMMAND in a container whose root filesystem is the union of
    /// LAYERS (the container layer first, then image layers)
    Run(Box<crate::launcher::RunArgs>),
    /// Import or export an OCI/Docker image layer tar
    #[command(subcommand)]
    Layer(crate::layer::cli::LayerCommand),
    /// List containers, running and exited, oldest first
    Ps {
        /// Show full ids and commands
        #[arg(long)]
        no_trunc: bool,
    },
    /// Print the stdout and stderr of a container started with run -d
    Logs {
        /// Container id, id prefix or name
        container: String,
        /// Keep printing new output until the container exits
        #[arg(short, long)]
        follow: bool,
    },
    /// Run a command in a running container, in all its namespaces and its cgroup
    Exec(Box<crate::launcher::args::ExecArgs>),
    /// Stop containers: SIGTERM to PID 1, SIGKILL after a timeout
    Stop(crate::launcher::args::StopArgs),
    /// Remove stopped containers: their records and logs
    Rm(crate::launcher::args::RmArgs),
}

#[derive(Args, Debug, Default)]
struct MountArgs {
    /// Mount options, comma-separated, as mount(8) takes them: lowerdir=,
    /// upperdir=, workdir=, ro, allow_other, suid, dev, fsname=,
    /// whiteout=overlay|aufs, volatile, threads=N (repeatable)
    #[arg(short = 'o', value_name = "OPT[,OPT...]")]
    options: Vec<String>,
    /// Stay in the foreground; SIGINT or SIGTERM unmounts
    #[arg(short, long)]
    foreground: bool,
    /// Log more: -v info, -vv debug, -vvv trace
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Log to this file when detached (default: syslog)
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
}

/// Runs the command line; returns the exit status.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(&err),
    };
    let result = match cli.command {
        Some(Command::Mount {
            layers,
            mountpoint,
            args,
        }) => {
            let layers_given = layers.is_some();
            run_mount(layers, mountpoint, args, layers_given)
        }
        Some(Command::Umount {
            mountpoint,
            lazy,
            timeout,
        }) => {
            logging::to_stderr(logging::level(0));
            mount::umount_command(&mountpoint, lazy, Duration::from_secs(timeout))
        }
        Some(Command::Run(args)) => return crate::launcher::main(*args),
        Some(Command::Layer(command)) => return crate::layer::cli::main(command),
        Some(Command::Ps { no_trunc }) => return crate::launcher::lifecycle::ps(no_trunc),
        Some(Command::Logs { container, follow }) => {
            return crate::launcher::lifecycle::logs(&container, follow);
        }
        Some(Command::Exec(args)) => return crate::launcher::exec::main(*args),
        Some(Command::Stop(args)) => return crate::launcher::lifecycle::stop(&args),
        Some(Command::Rm(args)) => return crate::launcher::lifecycle::rm(&args),
        None => match (cli.source, cli.mountpoint) {
            (Some(source), Some(mountpoint)) => {
                run_mount(Some(source), mountpoint, cli.mount, false)
            }
            (Some(mountpoint), None) => {
                run_mount(None, PathBuf::from(mountpoint), cli.mount, false)
            }
            _ => Err(anyhow::anyhow!("missing mountpoint; see unionfs --help")),
        },
    };
    match result {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("unionfs: {err:#}");
            1
        }
    }
}

fn run_mount(
    source: Option<String>,
    mountpoint: PathBuf,
    args: MountArgs,
    layers_given: bool,
) -> Result<()> {
    // mount(8) runs `mount -o remount,...` through mount.fuse3 as this form.
    let remount = args
        .options
        .iter()
        .flat_map(|opt| opt.split(','))
        .any(|opt| opt == "remount");
    if remount {
        logging::to_stderr(logging::level(args.verbose));
        return mount::remount(&mountpoint, &args.options);
    }
    let mut options = options::resolve(source.as_deref(), &args.options)?;
    if layers_given
        && args
            .options
            .iter()
            .any(|opt| opt.split(',').any(|o| o.starts_with("lowerdir=")))
    {
        bail!("layers given twice, as LAYERS and as -o lowerdir=; give them one way");
    }
    let level = logging::level(args.verbose);
    if args.foreground {
        logging::to_stderr(level);
    } else {
        logging::to_file_or_syslog(args.log_file.as_deref(), level)?;
    }
    crate::idmap::settle(&mut options).map_err(anyhow::Error::msg)?;
    mount::mount(MountRequest {
        options,
        mountpoint,
        foreground: args.foreground,
    })
}

/// Prints a command-line error and returns the exit status: 0 for --help
/// and --version, 125 for the container commands (docker's status for its
/// own errors, so a command's own statuses stay apart), 2 otherwise.
fn usage_error(err: &clap::Error) -> i32 {
    use clap::error::ErrorKind;
    let _ = err.print();
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        return 0;
    }
    let subcommand = std::env::args().nth(1).unwrap_or_default();
    if matches!(subcommand.as_str(), "run" | "exec") {
        crate::launcher::init::EXIT_LAUNCH_FAILED
    } else {
        2
    }
}
