//! `shoal`: every command lives in the library (`shoal_node::cli`); this only calls it.

fn main() -> std::process::ExitCode {
    shoal_node::cli::main()
}
