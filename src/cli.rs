//! The command line (DESIGN.md "Command line"), clap derive only: doc comments
//! here are the `--help` text. No logic lives here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const AFTER_HELP: &str = "\
Exit codes (sysexits.h):
  0   every selected account synced
  64  usage error            66  config file not found
  69  server unreachable     70  internal error (a bug)
  74  local I/O error (delivery target, disk full, seen-store)
  75  temporary: lock held, [IN-USE], [LOGIN-DELAY], [SYS/TEMP], timeout
  76  the server broke the protocol
  77  authentication failed, or TLS certificate not trusted
  78  invalid configuration, or a secret that cannot be obtained
With several accounts: 75 only if every failure was temporary, otherwise the
code of the first other failure in config order.

Config: $POPSYNC_CONFIG, else $XDG_CONFIG_HOME/popsync/config.toml, else
~/.config/popsync/config.toml. Keys: host port tls ca_file tls_fingerprint user
password password_command password_file auth oauth deliver retention max_size
received_header filter allow_plaintext timeout command_timeout state_dir.
See `man popsync`.";

/// Fetch mail from POP3 servers over TLS into Maildir, mbox or an MDA, exactly once
#[derive(Debug, Parser)]
#[command(name = "popsync", version, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Cmd,
}

/// Options accepted before or after the subcommand.
#[derive(Debug, Args)]
pub struct Global {
    /// Config file [default: $POPSYNC_CONFIG, $XDG_CONFIG_HOME/popsync/config.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print errors only (nothing at all on success)
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// More output: -v one line per message, -vv the protocol dialogue (passwords redacted)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// One JSON object per account on stdout (JSON Lines)
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Download new mail and apply the retention policy
    Fetch(FetchArgs),
    /// Count new mail on the server; download and delete nothing (exit 0: new mail, 1: none)
    Check(CheckArgs),
    /// Show server facts: TLS version, cipher and certificate, CAPA, SASL mechanisms
    Probe(ProbeArgs),
    /// What waits on the server (TOP): size, Date, From, Subject; downloads and changes nothing
    Peek(PeekArgs),
    /// List the accounts with their resolved settings (secrets hidden)
    Accounts,
    /// Inspect or edit the seen-store; import the state of fetchmail, getmail or mpop
    #[command(subcommand)]
    Seen(SeenCmd),
    /// OAuth2 tokens for accounts with oauth = {...}: log in once, fetch refreshes them
    #[command(subcommand)]
    Auth(AuthCmd),
}

#[derive(Debug, Subcommand)]
pub enum AuthCmd {
    /// Log in and store the tokens: the device flow (open a URL anywhere and enter a code), or --browser
    Login {
        /// The account, as in the config's [accounts.NAME]
        #[arg(value_name = "ACCOUNT")]
        account: String,
        /// Use a browser on this machine instead: authorization code with PKCE, redirected to 127.0.0.1
        #[arg(long)]
        browser: bool,
    },
    /// Per account: whether tokens are stored, when the access token expires, its scopes, whether a refresh token is stored
    Status {
        /// Account names [default: every account with oauth]
        #[arg(value_name = "ACCOUNT")]
        accounts: Vec<String>,
    },
    /// Remove the account's stored tokens
    Logout {
        /// The account, as in the config's [accounts.NAME]
        #[arg(value_name = "ACCOUNT")]
        account: String,
    },
}

/// Which accounts a command works on.
#[derive(Debug, Args)]
pub struct Selection {
    /// Account names, as in the config's [accounts.NAME]
    #[arg(
        value_name = "ACCOUNT",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub accounts: Vec<String>,
    /// Every account in the config
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// Connect and print the plan (ACTION UIDL SIZE REASON) without changing anything
    #[arg(long)]
    pub dry_run: bool,
    /// Accounts fetched at the same time
    #[arg(long, short = 'j', value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
    /// Download again a mailbox whose UIDLs the server renumbered
    #[arg(long)]
    pub accept_uidl_reset: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// Accounts checked at the same time
    #[arg(long, short = 'j', value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The account, as in the config's [accounts.NAME]
    #[arg(value_name = "ACCOUNT")]
    pub account: String,
    /// Also log in, to check the credentials
    #[arg(long)]
    pub login: bool,
}

#[derive(Debug, Args)]
pub struct PeekArgs {
    /// The account, as in the config's [accounts.NAME]
    #[arg(value_name = "ACCOUNT")]
    pub account: String,
    /// Only messages popsync has not fetched yet
    #[arg(long)]
    pub new: bool,
    /// Also show the first N body lines
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub lines: u32,
}

#[derive(Debug, Subcommand)]
pub enum SeenCmd {
    /// What popsync remembers of an account: UIDL, size, first seen, delivered, deleted, where
    List {
        /// The account, as in the config's [accounts.NAME]
        #[arg(value_name = "ACCOUNT")]
        account: String,
    },
    /// Forget messages (all of the account's when no UIDL is given): the next fetch downloads them again
    Forget {
        /// The account, as in the config's [accounts.NAME]
        #[arg(value_name = "ACCOUNT")]
        account: String,
        /// UIDLs to forget
        #[arg(value_name = "UIDL")]
        uidls: Vec<String>,
    },
    /// Take over what fetchmail, getmail or mpop already fetched, so popsync does not fetch it again
    Import {
        /// The account, as in the config's [accounts.NAME]
        #[arg(value_name = "ACCOUNT")]
        account: String,
        /// The tool that wrote FILE
        #[arg(long, value_enum)]
        from: crate::import::Source,
        /// fetchmail: ~/.fetchids; getmail: ~/.config/getmail/ or ~/.getmail/ oldmail-HOST-PORT-USER; mpop: ~/.mpop_uidls/USER_at_HOST
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}
