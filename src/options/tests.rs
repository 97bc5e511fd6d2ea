//! Unit tests of mount option and layer list parsing.

use super::*;

fn layer(path: &str, writable: bool) -> LayerSpec {
    LayerSpec {
        path: PathBuf::from(path),
        writable,
    }
}

fn opts(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| arg.to_string()).collect()
}

fn paths(layers: &[LayerSpec]) -> Vec<&str> {
    layers
        .iter()
        .map(|layer| layer.path.to_str().unwrap())
        .collect()
}

#[test]
fn layers_default_marks() {
    let layers = parse_layers("./container-layer:./image-layer4:./image-layer3").unwrap();
    let expected = [
        layer("./container-layer", true),
        layer("./image-layer4", false),
        layer("./image-layer3", false),
    ];
    assert_eq!(layers, expected);
}

#[test]
fn layers_single_entry_writable() {
    assert_eq!(parse_layers("a").unwrap(), [layer("a", true)]);
}

#[test]
fn layers_marks_any_case() {
    let layers = parse_layers("a=RW:b=Ro:c=ro").unwrap();
    assert_eq!(
        layers,
        [layer("a", true), layer("b", false), layer("c", false)]
    );
}

#[test]
fn layers_top_marked_ro() {
    assert_eq!(
        parse_layers("a=ro:b").unwrap(),
        [layer("a", false), layer("b", false)]
    );
}

#[test]
fn layers_escapes() {
    let layers = parse_layers(r"a\:b:c\=d:e\\f:g\,h").unwrap();
    assert_eq!(paths(&layers), ["a:b", "c=d", r"e\f", "g,h"]);
}

#[test]
fn layers_escaped_backslash_before_mark() {
    assert_eq!(parse_layers(r"a\\=ro").unwrap(), [layer(r"a\", false)]);
}

#[test]
fn layers_empty_string() {
    assert_eq!(parse_layers(""), Err(OptionsError::EmptyLayers));
}

/// Each case is a LAYERS string and fragments that its error message must contain.
#[test]
fn layers_invalid() {
    let cases: &[(&str, &[&str])] = &[
        (
            "a:b=rw",
            &[
                "'b=rw'",
                "entry 2",
                "only the topmost layer can be writable",
            ],
        ),
        ("a:b=rw:c", &["'b=rw'", "only the topmost layer"]),
        ("a=xyz", &["'a=xyz'", "'xyz'", "=rw", "=ro"]),
        ("a=", &["'a='", "''", "=rw"]),
        ("a=b=rw", &["'a=b=rw'", "'b=rw'", r"\="]),
        (r"a:b\", &[r"'b\'", "lone backslash"]),
        (r"a\nb", &[r"'a\nb'", r"'\n'", "invalid escape"]),
        ("a::b", &["entry 2 of LAYERS 'a::b'", "data-only layers"]),
        (":a", &["entry 1 of LAYERS ':a'", "data-only layers"]),
        ("a:", &["entry 2 of LAYERS 'a:'", "data-only layers"]),
        ("=rw:a", &["entry 1 of LAYERS '=rw:a'", "no directory"]),
        ("", &["LAYERS is empty"]),
    ];
    for (spec, fragments) in cases {
        let message = parse_layers(spec).unwrap_err().to_string();
        for fragment in *fragments {
            assert!(
                message.contains(fragment),
                "{spec:?}: {fragment:?} not in {message:?}"
            );
        }
    }
}

#[test]
fn resolve_layers_defaults() {
    let options = resolve(Some("a:b"), &[]).unwrap();
    assert_eq!(options.layers, [layer("a", true), layer("b", false)]);
    assert_eq!(options.upper(), Some(&layer("a", true)));
    assert_eq!(options.workdir, None);
    assert!(!options.read_only);
    assert!(!options.allow_other);
    assert!(!options.suid);
    assert!(!options.dev);
    assert!(options.exec);
    assert!(!options.noatime);
    assert!(!options.sync);
    assert!(!options.dirsync);
    assert_eq!(options.fsname, "a:b");
    assert_eq!(options.whiteout, Format::Overlay);
    assert!(!options.volatile);
    assert_eq!(options.threads, None);
}

#[test]
fn resolve_podman_form() {
    let args = ["lowerdir=/l/1:/l/2,upperdir=/u,workdir=/w,,volatile"];
    let options = resolve(Some("overlay"), &opts(&args)).unwrap();
    assert_eq!(
        options.layers,
        [
            layer("/u", true),
            layer("/l/1", false),
            layer("/l/2", false)
        ]
    );
    assert_eq!(options.workdir, Some(PathBuf::from("/w")));
    assert!(options.volatile);
    assert!(!options.read_only);
    assert_eq!(options.fsname, "overlay");
}

#[test]
fn resolve_mount_fuse3_form() {
    let args = ["rw,lowerdir=/l/1:/l/2,upperdir=/u,workdir=/w,dev,suid"];
    let options = resolve(Some("none"), &opts(&args)).unwrap();
    assert_eq!(
        options.layers,
        [
            layer("/u", true),
            layer("/l/1", false),
            layer("/l/2", false)
        ]
    );
    assert_eq!(options.workdir, Some(PathBuf::from("/w")));
    assert!(options.dev);
    assert!(options.suid);
    assert!(!options.read_only);
    assert_eq!(options.fsname, "none");
}

#[test]
fn resolve_lowerdir_only() {
    let options = resolve(None, &opts(&["lowerdir=/a:/b"])).unwrap();
    assert_eq!(options.layers, [layer("/a", false), layer("/b", false)]);
    assert!(options.read_only);
    assert_eq!(options.upper(), None);
    assert_eq!(options.fsname, "unionfs");
}

#[test]
fn resolve_lowerdir_escapes_no_marks() {
    let options = resolve(None, &opts(&[r"lowerdir=/a\:b:/c=rw:/d\,e"])).unwrap();
    assert_eq!(paths(&options.layers), ["/a:b", "/c=rw", "/d,e"]);
    assert!(options.layers.iter().all(|layer| !layer.writable));
}

#[test]
fn resolve_no_writable_layer() {
    let options = resolve(Some("a=ro:b"), &[]).unwrap();
    assert!(options.read_only);
    assert_eq!(options.upper(), None);
}

#[test]
fn resolve_ro_clears_writable() {
    let options = resolve(Some("a:b"), &opts(&["ro"])).unwrap();
    assert!(options.read_only);
    assert_eq!(options.layers, [layer("a", false), layer("b", false)]);
}

#[test]
fn resolve_ro_keeps_upperdir_workdir() {
    let options = resolve(None, &opts(&["ro,lowerdir=/l,upperdir=/u,workdir=/w"])).unwrap();
    assert!(options.read_only);
    assert_eq!(options.layers, [layer("/u", false), layer("/l", false)]);
    assert_eq!(options.workdir, Some(PathBuf::from("/w")));
}

#[test]
fn resolve_flags() {
    let args = [
        "allow_other,nosuid,nodev,noexec,noatime,sync,dirsync",
        "whiteout=aufs,threads=8",
    ];
    let options = resolve(Some("a"), &opts(&args)).unwrap();
    assert!(options.allow_other);
    assert!(!options.suid);
    assert!(!options.dev);
    assert!(!options.exec);
    assert!(options.noatime);
    assert!(options.sync);
    assert!(options.dirsync);
    assert_eq!(options.whiteout, Format::Aufs);
    assert_eq!(options.threads, Some(8));
}

#[test]
fn resolve_threads_bounds() {
    for count in [1, 1024] {
        let options = resolve(Some("a"), &[format!("threads={count}")]).unwrap();
        assert_eq!(options.threads, Some(count));
    }
}

#[test]
fn resolve_later_overrides_earlier() {
    let options = resolve(
        Some("a"),
        &opts(&["ro,suid,noatime,sync", "rw,nosuid,relatime,async"]),
    )
    .unwrap();
    assert!(!options.read_only);
    assert!(options.upper().is_some());
    assert!(!options.suid);
    assert!(!options.noatime);
    assert!(!options.sync);

    let options = resolve(Some("a"), &opts(&["rw,exec,dev", "ro,noexec,nodev"])).unwrap();
    assert!(options.read_only);
    assert!(!options.exec);
    assert!(!options.dev);

    let args = [
        "lowerdir=/x,fsname=one,whiteout=aufs",
        "lowerdir=/y,fsname=two,whiteout=overlay",
    ];
    let options = resolve(None, &opts(&args)).unwrap();
    assert_eq!(options.layers, [layer("/y", false)]);
    assert_eq!(options.fsname, "two");
    assert_eq!(options.whiteout, Format::Overlay);
}

#[test]
fn resolve_ignored_options() {
    let args = [
        "defaults,nofail,_netdev,auto,noauto,user,users,nouser,user=alice",
        "x-systemd.automount,x-gvfs-hide,default_permissions,comment=a b,subtype=unionfs,nodiratime",
    ];
    assert_eq!(
        resolve(Some("a"), &opts(&args)).unwrap(),
        resolve(Some("a"), &[]).unwrap()
    );
}

#[test]
fn resolve_skips_empty_options() {
    let options = resolve(Some("a"), &opts(&[",,allow_other,", ""])).unwrap();
    assert!(options.allow_other);
}

#[test]
fn resolve_escaped_comma() {
    let options = resolve(None, &opts(&[r"lowerdir=/a\,b,upperdir=/u\,v,fsname=x\,y"])).unwrap();
    assert_eq!(options.layers, [layer("/u,v", true), layer("/a,b", false)]);
    assert_eq!(options.fsname, "x,y");
}

#[test]
fn resolve_fsname_option() {
    let options = resolve(Some("a:b"), &opts(&["fsname=myfs"])).unwrap();
    assert_eq!(options.fsname, "myfs");
}

#[test]
fn resolve_empty_source_name() {
    let options = resolve(Some(""), &opts(&["lowerdir=/l"])).unwrap();
    assert_eq!(options.fsname, "unionfs");
}

/// Each case is SOURCE, one `-o` argument and fragments that the error message must contain.
#[test]
fn resolve_invalid() {
    let cases: &[(Option<&str>, &str, &[&str])] = &[
        (
            Some("a"),
            "allow_other,bogus",
            &["unknown mount option 'bogus'"],
        ),
        (Some("a"), "bogus=1", &["unknown mount option 'bogus=1'"]),
        (
            Some("a"),
            "whiteout=foo",
            &["'whiteout'", "'foo'", "overlay or aufs"],
        ),
        (Some("a"), "threads=0", &["'threads'", "'0'", "1 to 1024"]),
        (
            Some("a"),
            "threads=abc",
            &["'threads'", "'abc'", "1 to 1024"],
        ),
        (
            Some("a"),
            "threads=1025",
            &["'threads'", "'1025'", "1 to 1024"],
        ),
        (None, "lowerdir=", &["'lowerdir'", "''", "DIR[:DIR...]"]),
        (
            None,
            "lowerdir=/l,upperdir=",
            &["'upperdir'", "''", "directory"],
        ),
        (Some("a"), "fsname=", &["'fsname'", "''", "non-empty"]),
        (Some("a"), "ro=1", &["'ro=1'", "takes no value"]),
        (
            Some("a"),
            "lowerdir",
            &["'lowerdir' needs a value", "lowerdir=DIR[:DIR...]"],
        ),
        (Some("a"), "threads", &["'threads' needs a value"]),
        (
            Some("a"),
            "whiteout",
            &["'whiteout' needs a value", "overlay|aufs"],
        ),
        (
            None,
            "lowerdir=/a::/b",
            &["entry 2 of lowerdir '/a::/b'", "data-only layers"],
        ),
        (None, r"lowerdir=/a\", &[r"'/a\'", "lone backslash"]),
        (None, r"lowerdir=/l,fsname=a\b", &[r"'a\b'", r"'\b'"]),
        (Some("a"), "upperdir=/u", &["'/u'", "add -o lowerdir="]),
        (
            Some("a=ro:b"),
            "workdir=/w",
            &["'/w'", "no layer is writable"],
        ),
        (
            None,
            "lowerdir=/l,workdir=/w",
            &["'/w'", "no layer is writable"],
        ),
        (None, "allow_other", &["pass LAYERS", "-o lowerdir="]),
        (Some(""), "", &["LAYERS is empty"]),
    ];
    for (source, arg, fragments) in cases {
        let message = resolve(*source, &opts(&[arg])).unwrap_err().to_string();
        for fragment in *fragments {
            assert!(
                message.contains(fragment),
                "{arg:?}: {fragment:?} not in {message:?}"
            );
        }
    }
}

#[test]
fn resolve_id_mappings() {
    let options = resolve(
        Some("a"),
        &opts(&["uidmapping=:0:100000:65536,gidmapping=0:100000:65536"]),
    )
    .unwrap();
    let uid = options.uid_mapping.expect("uidmapping parsed");
    let gid = options.gid_mapping.expect("gidmapping parsed");
    assert_eq!(uid.to_host(0), Some(100000));
    assert_eq!(gid.to_stored(100000), Some(0));
    let plain = resolve(Some("a"), &opts(&[""])).unwrap();
    assert_eq!(plain.uid_mapping, None);
}

#[test]
fn resolve_invalid_id_mappings() {
    let cases = [
        (
            "uidmapping=0:1",
            "mount option uidmapping: invalid ID mapping \"0:1\"",
        ),
        ("gidmapping=0:0:0", "gidmapping"),
        ("uidmapping", "uidmapping=CONTAINER:HOST:SIZE"),
    ];
    for (arg, fragment) in cases {
        let message = resolve(Some("a"), &opts(&[arg])).unwrap_err().to_string();
        assert!(message.contains(fragment), "{arg}: {message}");
    }
}

#[test]
fn resolve_unsupported_options() {
    let args = [
        "squash_to_root",
        "squash_to_uid=1000",
        "squash_to_gid=1000",
        "static_nlink",
        "noacl",
        "xattr_permissions=1",
    ];
    for arg in args {
        let message = resolve(Some("a"), &opts(&[arg])).unwrap_err().to_string();
        assert!(
            message.contains(&format!("'{arg}' is not supported yet")),
            "{message}"
        );
    }
}
