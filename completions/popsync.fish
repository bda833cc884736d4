# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_popsync_global_optspecs
    string join \n config= q/quiet v/verbose json h/help V/version
end

function __fish_popsync_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_popsync_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_popsync_using_subcommand
    set -l cmd (__fish_popsync_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c popsync -n "__fish_popsync_needs_command" -l config -d 'Config file [default: $POPSYNC_CONFIG, $XDG_CONFIG_HOME/popsync/config.toml]' -r -F
complete -c popsync -n "__fish_popsync_needs_command" -s q -l quiet -d 'Print errors only (nothing at all on success)'
complete -c popsync -n "__fish_popsync_needs_command" -s v -l verbose -d 'More output: -v one line per message, -vv the protocol dialogue (passwords redacted)'
complete -c popsync -n "__fish_popsync_needs_command" -l json -d 'One JSON object per account on stdout (JSON Lines)'
complete -c popsync -n "__fish_popsync_needs_command" -s h -l help -d 'Print help'
complete -c popsync -n "__fish_popsync_needs_command" -s V -l version -d 'Print version'
complete -c popsync -n "__fish_popsync_needs_command" -f -a "fetch" -d 'Download new mail and apply the retention policy'
complete -c popsync -n "__fish_popsync_needs_command" -f -a "check" -d 'Count new mail on the server; download and delete nothing (exit 0: new mail, 1: none)'
complete -c popsync -n "__fish_popsync_needs_command" -f -a "probe" -d 'Show server facts: TLS version, cipher and certificate, CAPA, SASL mechanisms'
complete -c popsync -n "__fish_popsync_needs_command" -f -a "peek" -d 'What waits on the server (TOP): size, Date, From, Subject; downloads and changes nothing'
complete -c popsync -n "__fish_popsync_needs_command" -f -a "accounts" -d 'List the accounts with their resolved settings (secrets hidden)'
complete -c popsync -n "__fish_popsync_needs_command" -f -a "seen" -d 'Inspect or edit the seen-store; import the state of fetchmail, getmail or mpop'
complete -c popsync -n "__fish_popsync_needs_command" -f -a "auth" -d 'OAuth2 tokens for accounts with oauth = {...}: log in once, fetch refreshes them'
complete -c popsync -n "__fish_popsync_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c popsync -n "__fish_popsync_using_subcommand fetch" -s j -l jobs -d 'Accounts fetched at the same time' -r
complete -c popsync -n "__fish_popsync_using_subcommand fetch" -l config -d 'Config file [default: $POPSYNC_CONFIG, $XDG_CONFIG_HOME/popsync/config.toml]' -r -F
complete -c popsync -n "__fish_popsync_using_subcommand fetch" -l all -d 'Every account in the config'
complete -c popsync -n "__fish_popsync_using_subcommand fetch" -l dry-run -d 'Connect and print the plan (ACTION UIDL SIZE REASON) without changing anything'
complete -c popsync -n "__fish_popsync_using_subcommand fetch" -l accept-uidl-reset -d 'Download again a mailbox whose UIDLs the server renumbered'
complete -c popsync -n "__fish_popsync_using_subcommand fetch" -s q -l quiet -d 'Print errors only (nothing at all on success)'
complete -c popsync -n "__fish_popsync_using_subcommand fetch" -s v -l verbose -d 'More output: -v one line per message, -vv the protocol dialogue (passwords redacted)'
complete -c popsync -n "__fish_popsync_using_subcommand fetch" -l json -d 'One JSON object per account on stdout (JSON Lines)'
complete -c popsync -n "__fish_popsync_using_subcommand fetch" -s h -l help -d 'Print help'
complete -c popsync -n "__fish_popsync_using_subcommand check" -s j -l jobs -d 'Accounts checked at the same time' -r
complete -c popsync -n "__fish_popsync_using_subcommand check" -l config -d 'Config file [default: $POPSYNC_CONFIG, $XDG_CONFIG_HOME/popsync/config.toml]' -r -F
complete -c popsync -n "__fish_popsync_using_subcommand check" -l all -d 'Every account in the config'
complete -c popsync -n "__fish_popsync_using_subcommand check" -s q -l quiet -d 'Print errors only (nothing at all on success)'
complete -c popsync -n "__fish_popsync_using_subcommand check" -s v -l verbose -d 'More output: -v one line per message, -vv the protocol dialogue (passwords redacted)'
complete -c popsync -n "__fish_popsync_using_subcommand check" -l json -d 'One JSON object per account on stdout (JSON Lines)'
complete -c popsync -n "__fish_popsync_using_subcommand check" -s h -l help -d 'Print help'
complete -c popsync -n "__fish_popsync_using_subcommand probe" -l config -d 'Config file [default: $POPSYNC_CONFIG, $XDG_CONFIG_HOME/popsync/config.toml]' -r -F
complete -c popsync -n "__fish_popsync_using_subcommand probe" -l login -d 'Also log in, to check the credentials'
complete -c popsync -n "__fish_popsync_using_subcommand probe" -s q -l quiet -d 'Print errors only (nothing at all on success)'
complete -c popsync -n "__fish_popsync_using_subcommand probe" -s v -l verbose -d 'More output: -v one line per message, -vv the protocol dialogue (passwords redacted)'
complete -c popsync -n "__fish_popsync_using_subcommand probe" -l json -d 'One JSON object per account on stdout (JSON Lines)'
complete -c popsync -n "__fish_popsync_using_subcommand probe" -s h -l help -d 'Print help'
complete -c popsync -n "__fish_popsync_using_subcommand peek" -l lines -d 'Also show the first N body lines' -r
complete -c popsync -n "__fish_popsync_using_subcommand peek" -l config -d 'Config file [default: $POPSYNC_CONFIG, $XDG_CONFIG_HOME/popsync/config.toml]' -r -F
complete -c popsync -n "__fish_popsync_using_subcommand peek" -l new -d 'Only messages popsync has not fetched yet'
complete -c popsync -n "__fish_popsync_using_subcommand peek" -s q -l quiet -d 'Print errors only (nothing at all on success)'
complete -c popsync -n "__fish_popsync_using_subcommand peek" -s v -l verbose -d 'More output: -v one line per message, -vv the protocol dialogue (passwords redacted)'
complete -c popsync -n "__fish_popsync_using_subcommand peek" -l json -d 'One JSON object per account on stdout (JSON Lines)'
complete -c popsync -n "__fish_popsync_using_subcommand peek" -s h -l help -d 'Print help'
complete -c popsync -n "__fish_popsync_using_subcommand accounts" -l config -d 'Config file [default: $POPSYNC_CONFIG, $XDG_CONFIG_HOME/popsync/config.toml]' -r -F
complete -c popsync -n "__fish_popsync_using_subcommand accounts" -s q -l quiet -d 'Print errors only (nothing at all on success)'
complete -c popsync -n "__fish_popsync_using_subcommand accounts" -s v -l verbose -d 'More output: -v one line per message, -vv the protocol dialogue (passwords redacted)'
complete -c popsync -n "__fish_popsync_using_subcommand accounts" -l json -d 'One JSON object per account on stdout (JSON Lines)'
complete -c popsync -n "__fish_popsync_using_subcommand accounts" -s h -l help -d 'Print help'
complete -c popsync -n "__fish_popsync_using_subcommand seen; and not __fish_seen_subcommand_from list forget import help" -l config -d 'Config file [default: $POPSYNC_CONFIG, $XDG_CONFIG_HOME/popsync/config.toml]' -r -F
complete -c popsync -n "__fish_popsync_using_subcommand seen; and not __fish_seen_subcommand_from list forget import help" -s q -l quiet -d 'Print errors only (nothing at all on success)'
complete -c popsync -n "__fish_popsync_using_subcommand seen; and not __fish_seen_subcommand_from list forget import help" -s v -l verbose -d 'More output: -v one line per message, -vv the protocol dialogue (passwords redacted)'
complete -c popsync -n "__fish_popsync_using_subcommand seen; and not __fish_seen_subcommand_from list forget import help" -l json -d 'One JSON object per account on stdout (JSON Lines)'
complete -c popsync -n "__fish_popsync_using_subcommand seen; and not __fish_seen_subcommand_from list forget import help" -s h -l help -d 'Print help'
complete -c popsync -n "__fish_popsync_using_subcommand seen; and not __fish_seen_subcommand_from list forget import help" -f -a "list" -d 'What popsync remembers of an account: UIDL, size, first seen, delivered, deleted, where'
complete -c popsync -n "__fish_popsync_using_subcommand seen; and not __fish_seen_subcommand_from list forget import help" -f -a "forget" -d 'Forget messages (all of the account\'s when no UIDL is given): the next fetch downloads them again'
complete -c popsync -n "__fish_popsync_using_subcommand seen; and not __fish_seen_subcommand_from list forget import help" -f -a "import" -d 'Take over what fetchmail, getmail or mpop already fetched, so popsync does not fetch it again'
complete -c popsync -n "__fish_popsync_using_subcommand seen; and not __fish_seen_subcommand_from list forget import help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c popsync -n "__fish_popsync_using_subcommand seen; and __fish_seen_subcommand_from list" -l config -d 'Config file [default: $POPSYNC_CONFIG, $XDG_CONFIG_HOME/popsync/config.toml]' -r -F
complete -c popsync -n "__fish_popsync_using_subcommand seen; and __fish_seen_subcommand_from list" -s q -l quiet -d 'Print errors only (nothing at all on success)'
complete -c popsync -n "__fish_popsync_using_subcommand seen; and __fish_seen_subcommand_from list" -s v -l verbose -d 'More output: -v one line per message, -vv the protocol dialogue (passwords redacted)'
complete -c popsync -n "__fish_popsync_using_subcommand seen; and __fish_seen_subcommand_from list" -l json -d 'One JSON object per account on stdout (JSON Lines)'
complete -c popsync -n "__fish_popsync_using_subcommand seen; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c popsync -n "__fish_popsync_using_subcommand seen; and __fish_seen_subcommand_from forget" -l config -d 'Config file [default: $POPSYNC_CONFIG, $XDG_CONFIG_HOME/popsync/config.toml]' -r -F
complete -c popsync -n "__fish_popsync_using_subcommand seen; and __fish_seen_subcommand_from forget" -s q -l quiet -d 'Print errors only (nothing at all on success)'
complete -c popsync -n "__fish_popsync_using_subcommand seen; and __fish_seen_subcommand_from forget" -s v -l verbose -d 'More output: -v one line per message, -vv the protocol dialogue (passwords redacted)'
complete -c popsync -n "__fish_popsync_using_subcommand seen; and __fish_seen_subcommand_from forget" -l json -d 'One JSON object per account on stdout (JSON Lines)'
complete -c popsync -n "__fish_popsync_using_subcommand seen; and __fish_seen_subcommand_from forget" -s h -l help -d 'Print help'
complete -c popsync -n "__fish_popsync_using_subcommand seen; and __fish_seen_subcommand_from import" -l from -d 'The tool that wrote FILE' -r -f -a "fetchmail\t''
getmail\t''
mpop\t''"
complete -c popsync -n "__fish_popsync_using_subcommand seen; and __fish_seen_subcommand_from import" -l config -d 'Config file [default: $POPSYNC_CONFIG, $XDG_CONFIG_HOME/popsync/config.toml]' -r -F
complete -c popsync -n "__fish_popsync_using_subcommand seen; and __fish_seen_subcommand_from import" -s q -l quiet -d 'Print errors only (nothing at all on success)'
complete -c popsync -n "__fish_popsync_using_subcommand seen; and __fish_seen_subcommand_from import" -s v -l verbose -d 'More output: -v one line per message, -vv the protocol dialogue (passwords redacted)'
complete -c popsync -n "__fish_popsync_using_subcommand seen; and __fish_seen_subcommand_from import" -l json -d 'One JSON object per account on stdout (JSON Lines)'
complete -c popsync -n "__fish_popsync_using_subcommand seen; and __fish_seen_subcommand_from import" -s h -l help -d 'Print help'
complete -c popsync -n "__fish_popsync_using_subcommand seen; and __fish_seen_subcommand_from help" -f -a "list" -d 'What popsync remembers of an account: UIDL, size, first seen, delivered, deleted, where'
complete -c popsync -n "__fish_popsync_using_subcommand seen; and __fish_seen_subcommand_from help" -f -a "forget" -d 'Forget messages (all of the account\'s when no UIDL is given): the next fetch downloads them again'
complete -c popsync -n "__fish_popsync_using_subcommand seen; and __fish_seen_subcommand_from help" -f -a "import" -d 'Take over what fetchmail, getmail or mpop already fetched, so popsync does not fetch it again'
complete -c popsync -n "__fish_popsync_using_subcommand seen; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c popsync -n "__fish_popsync_using_subcommand auth; and not __fish_seen_subcommand_from login status logout help" -l config -d 'Config file [default: $POPSYNC_CONFIG, $XDG_CONFIG_HOME/popsync/config.toml]' -r -F
complete -c popsync -n "__fish_popsync_using_subcommand auth; and not __fish_seen_subcommand_from login status logout help" -s q -l quiet -d 'Print errors only (nothing at all on success)'
complete -c popsync -n "__fish_popsync_using_subcommand auth; and not __fish_seen_subcommand_from login status logout help" -s v -l verbose -d 'More output: -v one line per message, -vv the protocol dialogue (passwords redacted)'
complete -c popsync -n "__fish_popsync_using_subcommand auth; and not __fish_seen_subcommand_from login status logout help" -l json -d 'One JSON object per account on stdout (JSON Lines)'
complete -c popsync -n "__fish_popsync_using_subcommand auth; and not __fish_seen_subcommand_from login status logout help" -s h -l help -d 'Print help'
complete -c popsync -n "__fish_popsync_using_subcommand auth; and not __fish_seen_subcommand_from login status logout help" -f -a "login" -d 'Log in and store the tokens: the device flow (open a URL anywhere and enter a code), or --browser'
complete -c popsync -n "__fish_popsync_using_subcommand auth; and not __fish_seen_subcommand_from login status logout help" -f -a "status" -d 'Per account: whether tokens are stored, when the access token expires, its scopes, whether a refresh token is stored'
complete -c popsync -n "__fish_popsync_using_subcommand auth; and not __fish_seen_subcommand_from login status logout help" -f -a "logout" -d 'Remove the account\'s stored tokens'
complete -c popsync -n "__fish_popsync_using_subcommand auth; and not __fish_seen_subcommand_from login status logout help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c popsync -n "__fish_popsync_using_subcommand auth; and __fish_seen_subcommand_from login" -l config -d 'Config file [default: $POPSYNC_CONFIG, $XDG_CONFIG_HOME/popsync/config.toml]' -r -F
complete -c popsync -n "__fish_popsync_using_subcommand auth; and __fish_seen_subcommand_from login" -l browser -d 'Use a browser on this machine instead: authorization code with PKCE, redirected to 127.0.0.1'
complete -c popsync -n "__fish_popsync_using_subcommand auth; and __fish_seen_subcommand_from login" -s q -l quiet -d 'Print errors only (nothing at all on success)'
complete -c popsync -n "__fish_popsync_using_subcommand auth; and __fish_seen_subcommand_from login" -s v -l verbose -d 'More output: -v one line per message, -vv the protocol dialogue (passwords redacted)'
complete -c popsync -n "__fish_popsync_using_subcommand auth; and __fish_seen_subcommand_from login" -l json -d 'One JSON object per account on stdout (JSON Lines)'
complete -c popsync -n "__fish_popsync_using_subcommand auth; and __fish_seen_subcommand_from login" -s h -l help -d 'Print help'
complete -c popsync -n "__fish_popsync_using_subcommand auth; and __fish_seen_subcommand_from status" -l config -d 'Config file [default: $POPSYNC_CONFIG, $XDG_CONFIG_HOME/popsync/config.toml]' -r -F
complete -c popsync -n "__fish_popsync_using_subcommand auth; and __fish_seen_subcommand_from status" -s q -l quiet -d 'Print errors only (nothing at all on success)'
complete -c popsync -n "__fish_popsync_using_subcommand auth; and __fish_seen_subcommand_from status" -s v -l verbose -d 'More output: -v one line per message, -vv the protocol dialogue (passwords redacted)'
complete -c popsync -n "__fish_popsync_using_subcommand auth; and __fish_seen_subcommand_from status" -l json -d 'One JSON object per account on stdout (JSON Lines)'
complete -c popsync -n "__fish_popsync_using_subcommand auth; and __fish_seen_subcommand_from status" -s h -l help -d 'Print help'
complete -c popsync -n "__fish_popsync_using_subcommand auth; and __fish_seen_subcommand_from logout" -l config -d 'Config file [default: $POPSYNC_CONFIG, $XDG_CONFIG_HOME/popsync/config.toml]' -r -F
complete -c popsync -n "__fish_popsync_using_subcommand auth; and __fish_seen_subcommand_from logout" -s q -l quiet -d 'Print errors only (nothing at all on success)'
complete -c popsync -n "__fish_popsync_using_subcommand auth; and __fish_seen_subcommand_from logout" -s v -l verbose -d 'More output: -v one line per message, -vv the protocol dialogue (passwords redacted)'
complete -c popsync -n "__fish_popsync_using_subcommand auth; and __fish_seen_subcommand_from logout" -l json -d 'One JSON object per account on stdout (JSON Lines)'
complete -c popsync -n "__fish_popsync_using_subcommand auth; and __fish_seen_subcommand_from logout" -s h -l help -d 'Print help'
complete -c popsync -n "__fish_popsync_using_subcommand auth; and __fish_seen_subcommand_from help" -f -a "login" -d 'Log in and store the tokens: the device flow (open a URL anywhere and enter a code), or --browser'
complete -c popsync -n "__fish_popsync_using_subcommand auth; and __fish_seen_subcommand_from help" -f -a "status" -d 'Per account: whether tokens are stored, when the access token expires, its scopes, whether a refresh token is stored'
complete -c popsync -n "__fish_popsync_using_subcommand auth; and __fish_seen_subcommand_from help" -f -a "logout" -d 'Remove the account\'s stored tokens'
complete -c popsync -n "__fish_popsync_using_subcommand auth; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c popsync -n "__fish_popsync_using_subcommand help; and not __fish_seen_subcommand_from fetch check probe peek accounts seen auth help" -f -a "fetch" -d 'Download new mail and apply the retention policy'
complete -c popsync -n "__fish_popsync_using_subcommand help; and not __fish_seen_subcommand_from fetch check probe peek accounts seen auth help" -f -a "check" -d 'Count new mail on the server; download and delete nothing (exit 0: new mail, 1: none)'
complete -c popsync -n "__fish_popsync_using_subcommand help; and not __fish_seen_subcommand_from fetch check probe peek accounts seen auth help" -f -a "probe" -d 'Show server facts: TLS version, cipher and certificate, CAPA, SASL mechanisms'
complete -c popsync -n "__fish_popsync_using_subcommand help; and not __fish_seen_subcommand_from fetch check probe peek accounts seen auth help" -f -a "peek" -d 'What waits on the server (TOP): size, Date, From, Subject; downloads and changes nothing'
complete -c popsync -n "__fish_popsync_using_subcommand help; and not __fish_seen_subcommand_from fetch check probe peek accounts seen auth help" -f -a "accounts" -d 'List the accounts with their resolved settings (secrets hidden)'
complete -c popsync -n "__fish_popsync_using_subcommand help; and not __fish_seen_subcommand_from fetch check probe peek accounts seen auth help" -f -a "seen" -d 'Inspect or edit the seen-store; import the state of fetchmail, getmail or mpop'
complete -c popsync -n "__fish_popsync_using_subcommand help; and not __fish_seen_subcommand_from fetch check probe peek accounts seen auth help" -f -a "auth" -d 'OAuth2 tokens for accounts with oauth = {...}: log in once, fetch refreshes them'
complete -c popsync -n "__fish_popsync_using_subcommand help; and not __fish_seen_subcommand_from fetch check probe peek accounts seen auth help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c popsync -n "__fish_popsync_using_subcommand help; and __fish_seen_subcommand_from seen" -f -a "list" -d 'What popsync remembers of an account: UIDL, size, first seen, delivered, deleted, where'
complete -c popsync -n "__fish_popsync_using_subcommand help; and __fish_seen_subcommand_from seen" -f -a "forget" -d 'Forget messages (all of the account\'s when no UIDL is given): the next fetch downloads them again'
complete -c popsync -n "__fish_popsync_using_subcommand help; and __fish_seen_subcommand_from seen" -f -a "import" -d 'Take over what fetchmail, getmail or mpop already fetched, so popsync does not fetch it again'
complete -c popsync -n "__fish_popsync_using_subcommand help; and __fish_seen_subcommand_from auth" -f -a "login" -d 'Log in and store the tokens: the device flow (open a URL anywhere and enter a code), or --browser'
complete -c popsync -n "__fish_popsync_using_subcommand help; and __fish_seen_subcommand_from auth" -f -a "status" -d 'Per account: whether tokens are stored, when the access token expires, its scopes, whether a refresh token is stored'
complete -c popsync -n "__fish_popsync_using_subcommand help; and __fish_seen_subcommand_from auth" -f -a "logout" -d 'Remove the account\'s stored tokens'
