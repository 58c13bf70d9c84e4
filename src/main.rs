fn main() {
    std::process::exit(pbvote::cli::main());
}
