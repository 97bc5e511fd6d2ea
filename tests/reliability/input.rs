//! Bad input: property tests of the LAYERS parser, the `-o` option parser
//! and the validation of `unionfs run`'s options. For any input they must
//! not panic, and every rejection must name the value it rejects; every
//! accepted layer list must survive being written back and parsed again.
//!
//! Also: layers on other filesystems are detected at mount time (a lower
//! layer that is a mountpoint, a mount inside a lower layer). The upper
//! layer on a read-only filesystem and a work dir on another filesystem are
//! covered in tests/integration/cli.rs.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use proptest::prelude::*;
use unionfs::launcher::RunArgs;
use unionfs::launcher::config::{ConfigError, RunConfig};
use unionfs::options::{self, LayerSpec, OptionsError};

use crate::fixture::{Mount, Scratch};
use crate::support::{self, read_view, tmpfs};

/// `cases` random inputs per property, with no failure file written into
/// the source tree: a failure prints its minimal input instead.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Characters that matter to the parsers, plus a few that do not.
const ALPHABET: &[char] = &[
    'a', 'b', '/', '.', ':', '=', ',', '\\', 'r', 'w', 'o', 'R', 'W', ' ', '\n', '\0', 'é', '-',
];

fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(ALPHABET), 0..max)
        .prop_map(|chars| chars.into_iter().collect())
}

/// Escapes a path as LAYERS needs it.
fn escape(path: &str) -> String {
    let mut escaped = String::new();
    for c in path.chars() {
        if matches!(c, '\\' | ':' | '=' | ',') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Writes parsed layers back as a LAYERS list with explicit marks.
fn write_back(layers: &[LayerSpec]) -> String {
    layers
        .iter()
        .map(|layer| {
            let mark = if layer.writable { "rw" } else { "ro" };
            format!("{}={mark}", escape(layer.path.to_str().unwrap()))
        })
        .collect::<Vec<_>>()
        .join(":")
}

/// Asserts the message of `error` names the part of `input` it rejects.
fn assert_names_value(error: &OptionsError, input: &str) {
    let message = error.to_string();
    let named: Vec<&str> = match error {
        OptionsError::MissingLayers | OptionsError::EmptyLayers => vec![],
        OptionsError::EmptyLayer { value, .. } => vec![value],
        OptionsError::UnknownMark { entry, mark } => vec![entry, mark],
        OptionsError::WritableNotTopmost { entry, .. } => vec![entry],
        OptionsError::TrailingBackslash { value } => vec![value],
        OptionsError::InvalidEscape { value, .. } => vec![value],
        OptionsError::UnknownOption { option } => vec![option],
        OptionsError::Unsupported { option } => vec![option],
        OptionsError::UnexpectedValue { option, value } => vec![option, value],
        OptionsError::MissingValue { option, .. } => vec![option],
        OptionsError::InvalidValue { option, .. } => vec![option],
        OptionsError::IdMapping { option, .. } => vec![option],
        OptionsError::UpperWithoutLower { .. } | OptionsError::WorkdirWithoutUpper { .. } => {
            vec![]
        }
    };
    for value in named {
        assert!(
            message.contains(value),
            "message {message:?} does not name {value:?}"
        );
        assert!(
            input.contains(value),
            "message {message:?} names {value:?}, which is not in the input {input:?}"
        );
    }
    assert!(!message.is_empty());
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn parse_layers_never_panics(spec in text(40)) {
        match options::parse_layers(&spec) {
            Ok(layers) => {
                prop_assert!(!layers.is_empty());
                prop_assert!(layers.iter().skip(1).all(|layer| !layer.writable));
                prop_assert!(layers.iter().all(|layer| !layer.path.as_os_str().is_empty()));
                let again = options::parse_layers(&write_back(&layers));
                prop_assert_eq!(again, Ok(layers));
            }
            Err(error) => assert_names_value(&error, &spec),
        }
    }

    #[test]
    fn resolve_never_panics(
        source in proptest::option::of(text(20)),
        opts in proptest::collection::vec(option_text(), 0..4),
    ) {
        match options::resolve(source.as_deref(), &opts) {
            Ok(mount) => {
                prop_assert!(!mount.layers.is_empty());
                prop_assert!(mount.layers.iter().skip(1).all(|layer| !layer.writable));
                prop_assert_eq!(mount.read_only, mount.upper().is_none());
                prop_assert!(!mount.fsname.is_empty());
                if let Some(threads) = mount.threads {
                    prop_assert!((1..=1024).contains(&threads));
                }
            }
            Err(error) => {
                let input = format!("{}\n{}", source.unwrap_or_default(), opts.join("\n"));
                assert_names_value(&error, &input);
            }
        }
    }
}

/// Generates one `-o` argument: options from the real vocabulary and random words,
/// with random values, joined by commas.
fn option_text() -> impl Strategy<Value = String> {
    let name = proptest::sample::select(vec![
        "lowerdir",
        "upperdir",
        "workdir",
        "ro",
        "rw",
        "suid",
        "nodev",
        "fsname",
        "whiteout",
        "threads",
        "volatile",
        "x-gvfs",
        "defaults",
        "uidmapping",
        "allow_other",
        "bogus",
        "",
    ]);
    let one = (name, proptest::option::of(text(12))).prop_map(|(name, value)| match value {
        Some(value) => format!("{name}={value}"),
        None => name.to_string(),
    });
    proptest::collection::vec(one, 0..5).prop_map(|options| options.join(","))
}

/// The `unionfs run` arguments a property test changes, one at a time.
#[derive(Clone, Debug)]
enum Change {
    Layers(String),
    Name(String),
    Hostname(String),
    Env(String),
    Volume(String),
    Memory(String),
    Cpus(f64),
    CpuShares(u64),
    CpusetCpus(String),
    PidsLimit(u64),
    Net(String),
    User(String),
    CapAdd(String),
    CapDrop(String),
    Workdir(String),
}

fn change() -> impl Strategy<Value = Change> {
    let word = || text(16);
    let number = || {
        proptest::sample::select(vec![
            "0",
            "1",
            "100m",
            "1g",
            "10x",
            "-1",
            "1.5k",
            "99999999999999999999t",
            "",
            "m",
            "0b",
            "0-1",
            "1,3",
            "0-",
            "3-1",
            "a",
        ])
        .prop_map(str::to_string)
    };
    prop_oneof![
        word().prop_map(Change::Layers),
        word().prop_map(Change::Name),
        word().prop_map(Change::Hostname),
        word().prop_map(Change::Env),
        word().prop_map(Change::Volume),
        prop_oneof![word(), number()].prop_map(Change::Memory),
        any::<f64>().prop_map(Change::Cpus),
        any::<u64>().prop_map(Change::CpuShares),
        prop_oneof![word(), number()].prop_map(Change::CpusetCpus),
        any::<u64>().prop_map(Change::PidsLimit),
        word().prop_map(Change::Net),
        prop_oneof![word(), number()].prop_map(Change::User),
        prop_oneof![
            word(),
            Just("SYS_ADMIN".to_string()),
            Just("ALL".to_string())
        ]
        .prop_map(Change::CapAdd),
        prop_oneof![word(), Just("CHOWN".to_string())].prop_map(Change::CapDrop),
        word().prop_map(Change::Workdir),
    ]
}

/// Applies `change` to valid arguments; returns them and the rejected value
/// as the message may show it (plain, and quoted as `{:?}` does).
fn run_args(change: &Change) -> (RunArgs, Vec<String>) {
    let mut args = RunArgs {
        layers: "/c:/i".to_string(),
        command: vec![OsString::from("true")],
        net: "none".to_string(),
        stop_timeout: 10,
        ..RunArgs::default()
    };
    let value = match change.clone() {
        Change::Layers(value) => {
            args.layers = value.clone();
            value
        }
        Change::Name(value) => {
            args.name = Some(value.clone());
            value
        }
        Change::Hostname(value) => {
            args.hostname = Some(value.clone());
            value
        }
        Change::Env(value) => {
            args.env = vec![value.clone()];
            value
        }
        Change::Volume(value) => {
            args.volume = vec![value.clone()];
            value
        }
        Change::Memory(value) => {
            args.memory = Some(value.clone());
            value
        }
        Change::Cpus(value) => {
            args.cpus = Some(value);
            format!("{value}")
        }
        Change::CpuShares(value) => {
            args.cpu_shares = Some(value);
            format!("{value}")
        }
        Change::CpusetCpus(value) => {
            args.cpuset_cpus = Some(value.clone());
            value
        }
        Change::PidsLimit(value) => {
            args.pids_limit = Some(value);
            format!("{value}")
        }
        Change::Net(value) => {
            args.net = value.clone();
            value
        }
        Change::User(value) => {
            args.user = Some(value.clone());
            value
        }
        Change::CapAdd(value) => {
            args.cap_add = vec![value.clone()];
            value
        }
        Change::CapDrop(value) => {
            args.cap_drop = vec![value.clone()];
            value
        }
        Change::Workdir(value) => {
            args.workdir = Some(PathBuf::from(&value));
            value
        }
    };
    let quoted = format!("{value:?}");
    (args, vec![value, quoted])
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn run_options_never_panic(change in change()) {
        let (args, shown) = run_args(&change);
        if let Err(error) = RunConfig::from_args(args, "abc123".to_string()) {
            let message = error.to_string();
            prop_assert!(!message.is_empty());
            // A LAYERS error names the entry, which may be a part of the value.
            let names_value = match &error {
                ConfigError::Layers(inner) => {
                    assert_names_value(inner, &shown[0]);
                    true
                }
                _ => shown.iter().any(|form| message.contains(form.as_str())),
            };
            prop_assert!(
                names_value,
                "{:?} was rejected with {:?}, which does not name the value",
                change,
                message
            );
        }
    }
}

/// A lower layer that is the root of a tmpfs, over a lower layer (also a
/// tmpfs) with another tmpfs mounted inside it. Files on the three
/// filesystems share real inode numbers; each name must still show its own
/// file, with its own st_ino. Kernel overlayfs does not cross mounts inside
/// a layer and shows `inner` as the directory the mount covers, which no
/// path from user space reaches; unionfs shows the mounted filesystem
/// (README, "Behaviour"). Everything outside `inner` matches the kernel.
#[test]
fn layers_on_other_filesystems() {
    let scratch = Scratch::new();
    let top = scratch.dir.path().join("top");
    let _top = tmpfs(&top, "size=4m");
    let bottom = scratch.dir.path().join("bottom");
    let _bottom = tmpfs(&bottom, "size=4m");
    let inner = bottom.join("inner");
    fs::create_dir(&inner).unwrap();
    let _inner = tmpfs(&inner, "size=4m");
    for index in 0..6 {
        fs::write(top.join(format!("t{index}")), format!("top {index}\n")).unwrap();
        fs::write(
            bottom.join(format!("b{index}")),
            format!("bottom {index}\n"),
        )
        .unwrap();
        fs::write(inner.join(format!("i{index}")), format!("inner {index}\n")).unwrap();
    }
    let lowers = vec![top.clone(), bottom.clone()];

    let union = Mount::unionfs(
        &scratch.dir.path().join("union"),
        Some(&scratch.path("upper")),
        Some(&scratch.path("work")),
        &lowers,
        &[],
    );
    // Read every file first: a wrong node shows up as wrong content.
    let mut contents = Vec::new();
    for index in 0..6 {
        for (name, expected) in [
            (format!("t{index}"), format!("top {index}\n")),
            (format!("b{index}"), format!("bottom {index}\n")),
        ] {
            let got = fs::read_to_string(union.root.join(&name)).unwrap();
            contents.push((name, got, expected));
        }
        let name = format!("inner/i{index}");
        let got = fs::read_to_string(union.root.join(&name)).unwrap_or_default();
        if !got.is_empty() {
            contents.push((name, got, format!("inner {index}\n")));
        }
    }
    let wrong: Vec<_> = contents
        .iter()
        .filter(|(_, got, expected)| got != expected)
        .collect();
    assert!(
        wrong.is_empty(),
        "names show another file's content: {wrong:?}"
    );

    let inner_files = (0..6)
        .filter(|index| union.root.join(format!("inner/i{index}")).exists())
        .count();
    assert_eq!(
        inner_files, 6,
        "unionfs shows the filesystem mounted at inner"
    );

    let outside_inner = |view: support::View| -> support::View {
        view.into_iter()
            .filter(|(path, _)| !path.starts_with(b"inner/"))
            .collect()
    };
    let view = outside_inner(read_view(&union.root).unwrap());
    let kernel = outside_inner(
        support::kernel_view(
            &scratch.path("kernel-upper"),
            &lowers,
            &scratch.dir.path().join("kernel"),
        )
        .unwrap(),
    );
    if let Some(diff) = support::difference(&view, &kernel) {
        panic!("unionfs and kernel overlayfs differ over mounted layers: {diff}");
    }

    let mut inodes: Vec<u64> = (0..6)
        .flat_map(|index| [format!("t{index}"), format!("b{index}")])
        .map(|name| fs::metadata(union.root.join(name)).unwrap().ino())
        .collect();
    inodes.sort();
    inodes.dedup();
    assert_eq!(
        inodes.len(),
        12,
        "files on two filesystems share inode numbers"
    );
}
