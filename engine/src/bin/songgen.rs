//! `songgen`: the command-line tool (see `songgen --help`; the code is [`songgen_engine::cli`]).

fn main() -> std::process::ExitCode {
    songgen_engine::cli::main()
}
