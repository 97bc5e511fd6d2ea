fn main() {
    std::process::exit(unionfs::cli::main());
}
