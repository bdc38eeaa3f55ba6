fn main() {
    std::process::exit(worker::cli::main());
}
