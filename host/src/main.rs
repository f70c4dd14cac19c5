fn main() -> std::process::ExitCode {
    flowgym_host::cli::main()
}
