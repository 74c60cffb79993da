# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_node_agent_global_optspecs
    string join \n config= h/help V/version
end

function __fish_node_agent_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_node_agent_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_node_agent_using_subcommand
    set -l cmd (__fish_node_agent_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c node-agent -n "__fish_node_agent_needs_command" -l config -d 'Configuration file (TOML)' -r -F
complete -c node-agent -n "__fish_node_agent_needs_command" -s h -l help -d 'Print help'
complete -c node-agent -n "__fish_node_agent_needs_command" -s V -l version -d 'Print version'
complete -c node-agent -n "__fish_node_agent_needs_command" -f -a "check-config" -d 'Validate the configuration and exit 0, or 78 naming the bad key or value'
complete -c node-agent -n "__fish_node_agent_needs_command" -f -a "token" -d 'Manage tokens'
complete -c node-agent -n "__fish_node_agent_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c node-agent -n "__fish_node_agent_using_subcommand check-config" -l config -d 'Configuration file (TOML)' -r -F
complete -c node-agent -n "__fish_node_agent_using_subcommand check-config" -s h -l help -d 'Print help'
complete -c node-agent -n "__fish_node_agent_using_subcommand token; and not __fish_seen_subcommand_from new list help" -l config -d 'Configuration file (TOML)' -r -F
complete -c node-agent -n "__fish_node_agent_using_subcommand token; and not __fish_seen_subcommand_from new list help" -s h -l help -d 'Print help'
complete -c node-agent -n "__fish_node_agent_using_subcommand token; and not __fish_seen_subcommand_from new list help" -f -a "new" -d 'Print a fresh random token once, and the tokens-file entry holding its hash'
complete -c node-agent -n "__fish_node_agent_using_subcommand token; and not __fish_seen_subcommand_from new list help" -f -a "list" -d 'Show the names and roles in the configuration\'s tokens file (never the hashes)'
complete -c node-agent -n "__fish_node_agent_using_subcommand token; and not __fish_seen_subcommand_from new list help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c node-agent -n "__fish_node_agent_using_subcommand token; and __fish_seen_subcommand_from new" -l name -d 'The token\'s name, of its own in the tokens file (`token list` and the logs show it)' -r
complete -c node-agent -n "__fish_node_agent_using_subcommand token; and __fish_seen_subcommand_from new" -l role -d 'What the token may do: operator (every app, and the node) or user (the apps that --user-id owns or may act on through a team)' -r -f -a "operator\t''
user\t''"
complete -c node-agent -n "__fish_node_agent_using_subcommand token; and __fish_seen_subcommand_from new" -l user-id -d 'The user this token acts for (role user only)' -r
complete -c node-agent -n "__fish_node_agent_using_subcommand token; and __fish_seen_subcommand_from new" -l config -d 'Configuration file (TOML)' -r -F
complete -c node-agent -n "__fish_node_agent_using_subcommand token; and __fish_seen_subcommand_from new" -s h -l help -d 'Print help'
complete -c node-agent -n "__fish_node_agent_using_subcommand token; and __fish_seen_subcommand_from list" -l config -d 'Configuration file (TOML)' -r -F
complete -c node-agent -n "__fish_node_agent_using_subcommand token; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c node-agent -n "__fish_node_agent_using_subcommand token; and __fish_seen_subcommand_from help" -f -a "new" -d 'Print a fresh random token once, and the tokens-file entry holding its hash'
complete -c node-agent -n "__fish_node_agent_using_subcommand token; and __fish_seen_subcommand_from help" -f -a "list" -d 'Show the names and roles in the configuration\'s tokens file (never the hashes)'
complete -c node-agent -n "__fish_node_agent_using_subcommand token; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c node-agent -n "__fish_node_agent_using_subcommand help; and not __fish_seen_subcommand_from check-config token help" -f -a "check-config" -d 'Validate the configuration and exit 0, or 78 naming the bad key or value'
complete -c node-agent -n "__fish_node_agent_using_subcommand help; and not __fish_seen_subcommand_from check-config token help" -f -a "token" -d 'Manage tokens'
complete -c node-agent -n "__fish_node_agent_using_subcommand help; and not __fish_seen_subcommand_from check-config token help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c node-agent -n "__fish_node_agent_using_subcommand help; and __fish_seen_subcommand_from token" -f -a "new" -d 'Print a fresh random token once, and the tokens-file entry holding its hash'
complete -c node-agent -n "__fish_node_agent_using_subcommand help; and __fish_seen_subcommand_from token" -f -a "list" -d 'Show the names and roles in the configuration\'s tokens file (never the hashes)'
