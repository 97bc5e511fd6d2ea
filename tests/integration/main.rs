//! Integration tests on real mounts: unionfs over FUSE, with kernel
//! overlayfs on identical copies of each layer stack as the oracle.
//! They need root, `/dev/fuse` and the overlay filesystem.

mod fixture;
mod snapshot;

mod aufs;
mod basics;
mod cli;
mod copyup;
mod demo;
mod fileio;
mod inodes;
mod lifecycle;
mod names;
mod passthrough;
mod rootfs;
mod safety;
