//! Integration tests of `unionfs run` on real namespaces, mounts and
//! cgroups, each reproducing a demo of the mechanism it checks. They need
//! root, `/dev/fuse` and the busybox root filesystem that
//! `scripts/rootfs.sh busybox` builds (the fixture builds it when missing).

mod fixture;

mod cgroups;
mod debian;
mod devices;
mod exits;
mod files;
mod input;
mod isolation;
mod lifecycle;
mod mounts;
mod security;
mod terminal;
