//! Command-line flags as every binary of the project reads them: a bad
//! flag is one line naming the problem and exit code 2, like a bad config
//! file.

use std::process::ExitCode;

use clap::error::ErrorKind;

/// Parses the command line into `C`. `--help` and `--version` print as
/// clap writes them (exit 0), and so does a missing subcommand (its help,
/// exit 2); any other mistake prints one line, `program: what is wrong
/// (see --help)`, and the exit code is 2.
pub fn parse<C: clap::Parser>(program: &str) -> Result<C, ExitCode> {
    C::try_parse().map_err(|e| match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(2)
        }
        _ => {
            eprintln!("{}", one_line(program, &e));
            ExitCode::from(2)
        }
    })
}

/// The first paragraph of clap's message, on one line (the rest is tips
/// and usage), for `program`: a missing argument's name and a value's
/// possible values are on the lines after the first.
fn one_line(program: &str, e: &clap::Error) -> String {
    let text = e.render().to_string();
    let what: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let what = what.join(" ");
    let what = what.strip_prefix("error: ").unwrap_or(&what);
    format!("{program}: {what} (see --help)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Flags {
        #[arg(long)]
        listen: std::net::SocketAddr,
    }

    #[test]
    fn mistakes_are_one_line_naming_them() {
        let e = Flags::try_parse_from(["x", "--listen", "127.0.0.1:1", "--nonsense"])
            .expect_err("unknown flag");
        let line = one_line("x", &e);
        assert!(
            line.starts_with("x: unexpected argument '--nonsense'"),
            "{line}"
        );
        assert!(!line.contains('\n'), "{line}");
        let e = Flags::try_parse_from(["x", "--listen", "nowhere"]).expect_err("bad value");
        let line = one_line("x", &e);
        assert!(
            line.contains("invalid value 'nowhere' for '--listen"),
            "{line}"
        );
        assert!(line.ends_with("(see --help)"), "{line}");
        let e = Flags::try_parse_from(["x"]).expect_err("missing");
        let line = one_line("x", &e);
        assert!(line.contains("not provided: --listen <LISTEN>"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }
}
