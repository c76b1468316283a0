//! `cms-oauth`: prints an OAuth token from a running cloud-mdir-sync's
//! credential socket in the form SMTP/IMAP clients want, or tries it against
//! a mail server. Compatible with the Python program's `cms-oauth`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};

use cloud_mdir_sync::credclient::{self, Output};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Proto {
    #[value(name = "SMTP")]
    Smtp,
    #[value(name = "IMAP")]
    Imap,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OutputArg {
    #[value(name = "xoauth2")]
    Xoauth2,
    #[value(name = "xoauth2-b64")]
    Xoauth2B64,
    #[value(name = "token")]
    Token,
}

/// Get an XOAUTH2 token from cloud-mdir-sync's CredentialServer socket.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The CredentialServer UNIX socket.
    #[arg(long = "cms_sock", alias = "cms-sock")]
    cms_sock: PathBuf,
    /// The account, e.g. user@domain.com.
    #[arg(long)]
    user: String,
    /// Protocol the token is for (selects the OAuth scope).
    #[arg(long, value_enum, default_value = "SMTP")]
    proto: Proto,
    /// Output format: xoauth2 (caller base64-encodes), xoauth2-b64 (what goes
    /// on the wire) or token (the bare access token).
    #[arg(long, value_enum, default_value = "xoauth2")]
    output: OutputArg,
    /// Do not print a newline after the output.
    #[arg(long = "no_newline", alias = "no-newline")]
    no_newline: bool,
    /// Log in to this SMTP server (HOST[:PORT], default port 587, STARTTLS) to test the token.
    #[arg(
        long = "test-smtp",
        value_name = "SMTP_SERVER",
        conflicts_with = "test_imap"
    )]
    test_smtp: Option<String>,
    /// Log in to this IMAP server (HOST[:PORT], default port 993, TLS) to test the token.
    #[arg(long = "test-imap", value_name = "IMAP_SERVER")]
    test_imap: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cms-oauth: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cms-oauth: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: &Args) -> Result<(), credclient::ClientError> {
    let proto = match (&args.test_smtp, &args.test_imap, args.proto) {
        (Some(_), _, _) => "SMTP",
        (_, Some(_), _) => "IMAP",
        (_, _, Proto::Smtp) => "SMTP",
        (_, _, Proto::Imap) => "IMAP",
    };
    let x = credclient::request(&args.cms_sock, proto, &args.user).await?;
    if let Some(server) = &args.test_smtp {
        let reply = credclient::test_smtp(server, &x).await?;
        println!("SMTP login to {server} succeeded: {reply}");
        return Ok(());
    }
    if let Some(server) = &args.test_imap {
        let reply = credclient::test_imap(server, &x).await?;
        println!("IMAP login to {server} succeeded: {reply}");
        return Ok(());
    }
    let output = match args.output {
        OutputArg::Xoauth2 => Output::Xoauth2,
        OutputArg::Xoauth2B64 => Output::Xoauth2B64,
        OutputArg::Token => Output::Token,
    };
    let mut out = credclient::format(&x, output);
    if !args.no_newline {
        out.push('\n');
    }
    let _ = std::io::stdout().write_all(out.as_bytes());
    Ok(())
}
